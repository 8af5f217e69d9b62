// libFuzzer target for proto/scram: every parser sees every input, in each role an attacker can
// play (client sending client-first/client-final, server sending server-first/server-final, a
// corrupted secret in the auth file or pg_authid). Besides "no crash, no sanitizer report" it
// checks properties that strict parsing promises: accepted input re-encodes to the same bytes,
// and only the genuine RFC 7677 messages ever authenticate.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "proto/scram.hpp"

namespace scram = pgring::proto::scram;

namespace {

constexpr std::string_view kSecret =
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
constexpr std::string_view kClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kClientFirstBare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kServerFirst =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
constexpr std::string_view kClientFinal =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
constexpr std::string_view kServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

// PBKDF2 with up to 10,000,000 iterations is legal and takes seconds; the fuzzer would spend
// its time there instead of in the parsers. Skip client_final when any ",i=" count is large
// (the real parser only looks at the one after ",", so this covers every case it accepts).
constexpr long kMaxFuzzIterations = 4096;

bool cheap_iterations(std::string_view text) {
  for (std::size_t at = text.find(",i="); at != text.npos; at = text.find(",i=", at + 1)) {
    long value = 0;
    for (std::size_t i = at + 3; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
      value = value * 10 + (text[i] - '0');
      if (value > kMaxFuzzIterations) return false;
    }
  }
  return true;
}

void check(bool ok) {
  if (!ok) __builtin_trap();
}

struct Fixture {
  scram::Secret secret;
  scram::ClientFirst first;
  scram::Key server_signature{};
};

const Fixture& fixture() {
  static const Fixture f = [] {
    Fixture out;
    auto secret = scram::parse_secret(kSecret);
    auto first = scram::parse_client_first(kClientFirst);
    auto final_msg = scram::client_final("pencil", kClientFirstBare, kServerFirst);
    check(secret.has_value() && first.has_value() && final_msg.has_value());
    out.secret = *secret;
    out.first = *first;
    out.server_signature = final_msg->expected_server_signature;
    return out;
  }();
  return f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const Fixture& fx = fixture();
  std::string_view input(reinterpret_cast<const char*>(data), size);

  // Strict base64 means one encoding per value.
  if (auto raw = scram::base64_decode(input)) check(scram::base64_encode(*raw) == input);

  // A secret from a userlist or an auth_query result.
  if (auto secret = scram::parse_secret(input)) check(scram::format_secret(*secret) == input);

  // A client's first message; if accepted, carry on as the server would.
  if (auto first = scram::parse_client_first(input)) {
    check(first->gs2_header + first->client_first_bare == input);
    std::string sf = scram::server_first(*first, "srvNonce", fx.secret);
    auto result = scram::verify_client_final(*first, sf, kClientFinal, fx.secret);
    check(!result.has_value());  // the RFC proof is bound to the RFC nonce, never "srvNonce"
  }

  // A client's final message against the RFC exchange: only the genuine one may pass.
  scram::Key client_key{};
  if (auto final_msg =
          scram::verify_client_final(fx.first, kServerFirst, input, fx.secret, &client_key)) {
    check(input == kClientFinal && *final_msg == kServerFinal);
  }
  // The input as the server-first we supposedly sent, with the genuine client-final.
  if (scram::verify_client_final(fx.first, input, kClientFinal, fx.secret)) {
    check(input == kServerFirst);
  }

  // A server's first message to pgring as SCRAM client.
  if (cheap_iterations(input)) {
    if (auto final_msg = scram::client_final("pencil", kClientFirstBare, input)) {
      check(final_msg->message.substr(0, 9) == "c=biws,r=");
    }
  }

  // SCRAM pass-through: a server-first against our secret and a known ClientKey. Only the
  // RFC's salt and iteration count can be used (else nullopt), and the proof is well formed.
  // (No PBKDF2 here: any iteration count is cheap.)
  if (auto final_msg =
          scram::client_final_from_keys(scram::Key{}, fx.secret, kClientFirstBare, input)) {
    check(final_msg->message.substr(0, 9) == "c=biws,r=");
  }
  // Channel binding: the input as the binding data for a client that binds to other data.
  if (auto bound = scram::parse_client_first("p=tls-server-end-point,,n=,r=abc")) {
    std::string sf = scram::server_first(*bound, "XYZ", fx.secret);
    check(!scram::verify_client_final(*bound, sf,
                                      "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCwsAAAA,r=abcXYZ,p=AAAA",
                                      fx.secret, nullptr, input));
  }

  // A server's final message: only the genuine signature (plus ignorable extensions) passes.
  if (scram::verify_server_final(input, fx.server_signature)) {
    check(input.substr(0, kServerFinal.size()) == kServerFinal);
  }
  return 0;
}
