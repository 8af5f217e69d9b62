// SCRAM-SHA-256: the RFC 7677 §3 vector end to end, a secret made by a real PostgreSQL 15, and
// hostile input (truncated, reordered, oversized, mutated) that must fail without crashing.

#include "proto/scram.hpp"

#include <doctest/doctest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <string>
#include <string_view>

namespace scram = pgring::proto::scram;

namespace {

// RFC 7677 §3.
constexpr std::string_view kRfcPassword = "pencil";
constexpr std::string_view kRfcClientNonce = "rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
constexpr std::string_view kRfcSaltB64 = "W22ZaJ0SNY7soEsUEjb6gQ==";
constexpr std::string_view kRfcClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcClientFirstBare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcServerFirst =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
constexpr std::string_view kRfcClientFinal =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
constexpr std::string_view kRfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
// StoredKey/ServerKey and ClientKey for the vector, derived independently with Python's
// hashlib.pbkdf2_hmac + hmac (the RFC does not list them).
constexpr std::string_view kRfcSecret =
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
constexpr std::string_view kRfcClientKeyB64 = "pg/JI9Z+hkSpLRa5btpe9GVrDHJcSEN0viVTVXaZbos=";

// rolpassword of `CREATE ROLE u PASSWORD 'pencil'` with password_encryption=scram-sha-256 on
// PostgreSQL 15.18 (random salt, so it differs from the RFC vector).
constexpr std::string_view kPostgresSecret =
    "SCRAM-SHA-256$4096:NSYGGHlLyUyg76Dw4TJxrQ==$56yeAsCIknZmLUzJmQnLYtxigEIvFNMom2NoZX6Yiww=:"
    "uMVYPbu8iUKbevq8f3+/7LtK+wpZjIOPRRdRXnUX9OQ=";

std::string key_bytes(const scram::Key& key) {
  return {reinterpret_cast<const char*>(key.data()), key.size()};
}

scram::Secret rfc_secret() {
  auto secret = scram::parse_secret(kRfcSecret);
  REQUIRE(secret.has_value());
  return *secret;
}

// A full PostgreSQL-style exchange (empty SCRAM user name) against `secret`; returns whether
// the server accepted the proof and the client accepted the server's signature.
bool login(std::string_view password, const scram::Secret& secret) {
  std::string first_msg = scram::client_first("fyko+d2lbbFgONRv9qkxdawL");
  auto first = scram::parse_client_first(first_msg);
  REQUIRE(first.has_value());
  std::string sf = scram::server_first(*first, "3rfcNHYJY1ZVvWVs7j", secret);
  auto cf = scram::client_final(password, first->client_first_bare, sf);
  REQUIRE(cf.has_value());
  auto final_msg = scram::verify_client_final(*first, sf, cf->message, secret);
  return final_msg.has_value() &&
         scram::verify_server_final(*final_msg, cf->expected_server_signature);
}

// A client-final-message built by hand from the RFC vector's ClientKey, for shapes our own
// client_final() never sends ("y,," binding, extensions). Independent of proto/scram's HMAC use.
std::string hand_made_client_final(std::string_view client_first_bare,
                                   std::string_view server_first, std::string_view without_proof) {
  auto client_key = scram::base64_decode(kRfcClientKeyB64);
  REQUIRE(client_key.has_value());
  unsigned char stored[32];
  unsigned int len = 0;
  REQUIRE(EVP_Digest(client_key->data(), client_key->size(), stored, &len, EVP_sha256(), nullptr) ==
          1);
  std::string auth = std::string(client_first_bare) + "," + std::string(server_first) + "," +
                     std::string(without_proof);
  unsigned char signature[32];
  REQUIRE(HMAC(EVP_sha256(), stored, 32, reinterpret_cast<const unsigned char*>(auth.data()),
               auth.size(), signature, &len) != nullptr);
  std::string proof(32, '\0');
  for (std::size_t i = 0; i < 32; ++i) {
    proof[i] = static_cast<char>(static_cast<unsigned char>((*client_key)[i]) ^ signature[i]);
  }
  return std::string(without_proof) + ",p=" + scram::base64_encode(proof);
}

}  // namespace

TEST_CASE("scram: base64 known values (RFC 4648 §10)") {
  CHECK(scram::base64_encode("") == "");
  CHECK(scram::base64_encode("f") == "Zg==");
  CHECK(scram::base64_encode("fo") == "Zm8=");
  CHECK(scram::base64_encode("foo") == "Zm9v");
  CHECK(scram::base64_encode("foobar") == "Zm9vYmFy");
  CHECK(scram::base64_encode("n,,") == "biws");
  CHECK(scram::base64_encode("y,,") == "eSws");
  CHECK(scram::base64_encode(std::string("\xff\xfe\x00", 3)) == "//4A");

  CHECK(scram::base64_decode("") == std::string());
  CHECK(scram::base64_decode("Zg==") == std::string("f"));
  CHECK(scram::base64_decode("Zm8=") == std::string("fo"));
  CHECK(scram::base64_decode("Zm9vYmFy") == std::string("foobar"));
  CHECK(scram::base64_decode("//4A") == std::string("\xff\xfe\x00", 3));

  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  for (std::size_t n = 0; n <= all.size(); ++n) {
    std::string raw = all.substr(0, n);
    CHECK(scram::base64_decode(scram::base64_encode(raw)) == raw);
  }
}

TEST_CASE("scram: base64_decode is strict") {
  for (std::string_view bad :
       {"Zg", "Zg=", "Zm9vY", "Z===", "====", "=Zm9", "Zm=v", "Zg==Zm9v", "Zm9v====", "Zm9v\n",
        "Zm 9v", " Zm9v", "Zm9v-_==", "Zm9.", "Zm9v!"}) {
    CAPTURE(bad);
    CHECK_FALSE(scram::base64_decode(bad).has_value());
  }
  // Non-zero bits under the padding: another spelling of "f"/"fo"; refused so every value has
  // exactly one encoding.
  CHECK_FALSE(scram::base64_decode("Zh==").has_value());
  CHECK_FALSE(scram::base64_decode("Zm9=").has_value());
  CHECK_FALSE(scram::base64_decode(std::string("Zm9v\0\0\0\0", 8)).has_value());
  CHECK_FALSE(scram::base64_decode("Zm9v\xc3\xa9\xc3\xa9").has_value());
}

TEST_CASE("scram: timing_safe_equal") {
  CHECK(scram::timing_safe_equal("", ""));
  CHECK(scram::timing_safe_equal("abc", "abc"));
  CHECK_FALSE(scram::timing_safe_equal("abc", "abd"));
  CHECK_FALSE(scram::timing_safe_equal("abc", "ab"));
  CHECK_FALSE(scram::timing_safe_equal("", "a"));
}

TEST_CASE("scram: make_secret derives the RFC 7677 keys, and the secret text round-trips") {
  auto salt = scram::base64_decode(kRfcSaltB64);
  REQUIRE(salt.has_value());
  scram::Secret made = scram::make_secret(kRfcPassword, *salt, 4096);
  CHECK(made.iterations == 4096);
  CHECK(made.salt == *salt);
  CHECK(scram::format_secret(made) == kRfcSecret);

  auto parsed = scram::parse_secret(kRfcSecret);
  REQUIRE(parsed.has_value());
  CHECK(parsed->iterations == 4096);
  CHECK(parsed->salt == *salt);
  CHECK(parsed->stored_key == made.stored_key);
  CHECK(parsed->server_key == made.server_key);
  CHECK(scram::format_secret(*parsed) == kRfcSecret);
}

TEST_CASE("scram: make_secret refuses parameters no secret can have") {
  CHECK(scram::make_secret("pencil", "salt", 0).iterations == 0);
  CHECK(scram::make_secret("pencil", "salt", -1).iterations == 0);
  CHECK(scram::make_secret("pencil", "salt", 10'000'001).iterations == 0);
  CHECK(scram::make_secret("pencil", "", 4096).iterations == 0);
  // And verify_client_final refuses such a secret whatever the proof.
  auto first = scram::parse_client_first(kRfcClientFirst);
  REQUIRE(first.has_value());
  scram::Secret broken = rfc_secret();
  broken.iterations = 0;
  CHECK_FALSE(scram::verify_client_final(*first, kRfcServerFirst, kRfcClientFinal, broken));
}

TEST_CASE("scram: client side reproduces the RFC 7677 exchange") {
  auto cf = scram::client_final(kRfcPassword, kRfcClientFirstBare, kRfcServerFirst);
  REQUIRE(cf.has_value());
  CHECK(cf->message == kRfcClientFinal);
  CHECK(scram::verify_server_final(kRfcServerFinal, cf->expected_server_signature));
  CHECK_FALSE(scram::verify_server_final("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                                         cf->expected_server_signature));
  CHECK_FALSE(scram::verify_server_final("e=invalid-proof", cf->expected_server_signature));

  auto wrong = scram::client_final("wrong", kRfcClientFirstBare, kRfcServerFirst);
  REQUIRE(wrong.has_value());
  CHECK(wrong->message != kRfcClientFinal);
  CHECK_FALSE(scram::verify_server_final(kRfcServerFinal, wrong->expected_server_signature));
}

TEST_CASE("scram: server side reproduces the RFC 7677 exchange") {
  scram::Secret secret = rfc_secret();
  auto first = scram::parse_client_first(kRfcClientFirst);
  REQUIRE(first.has_value());
  CHECK(first->gs2_header == "n,,");
  CHECK(first->client_first_bare == kRfcClientFirstBare);
  CHECK(first->client_nonce == kRfcClientNonce);

  std::string sf = scram::server_first(*first, kRfcServerNonce, secret);
  CHECK(sf == kRfcServerFirst);

  scram::Key client_key{};
  auto final_msg = scram::verify_client_final(*first, sf, kRfcClientFinal, secret, &client_key);
  REQUIRE(final_msg.has_value());
  CHECK(*final_msg == kRfcServerFinal);
  CHECK(scram::base64_encode(key_bytes(client_key)) == kRfcClientKeyB64);
  // Without the out-pointer too.
  CHECK(scram::verify_client_final(*first, sf, kRfcClientFinal, secret) ==
        std::string(kRfcServerFinal));
}

TEST_CASE("scram: PostgreSQL-style round trip (empty user name)") {
  auto salt = scram::base64_decode(kRfcSaltB64);
  REQUIRE(salt.has_value());
  scram::Secret secret = scram::make_secret("correct horse", *salt, 4096);

  std::string first_msg = scram::client_first("abcDEF123");
  CHECK(first_msg == "n,,n=,r=abcDEF123");
  auto first = scram::parse_client_first(first_msg);
  REQUIRE(first.has_value());
  CHECK(first->client_first_bare == "n=,r=abcDEF123");
  CHECK(first->client_nonce == "abcDEF123");

  std::string sf = scram::server_first(*first, "srvNONCE456", secret);
  CHECK(sf == "r=abcDEF123srvNONCE456,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
  auto cf = scram::client_final("correct horse", first->client_first_bare, sf);
  REQUIRE(cf.has_value());
  CHECK(cf->message.substr(0, 30) == "c=biws,r=abcDEF123srvNONCE456,");

  scram::Key client_key{};
  auto final_msg = scram::verify_client_final(*first, sf, cf->message, secret, &client_key);
  REQUIRE(final_msg.has_value());
  CHECK(scram::verify_server_final(*final_msg, cf->expected_server_signature));
  // The recovered ClientKey is what StoredKey was made from (what SCRAM pass-through relies on).
  scram::Secret again = scram::make_secret("correct horse", *salt, 4096);
  CHECK(again.stored_key == secret.stored_key);

  CHECK(login("correct horse", secret));
  CHECK_FALSE(login("correct horsE", secret));
  CHECK_FALSE(login("", secret));
}

TEST_CASE("scram: a secret generated by PostgreSQL 15") {
  auto secret = scram::parse_secret(kPostgresSecret);
  REQUIRE(secret.has_value());
  CHECK(secret->iterations == 4096);
  CHECK(secret->salt.size() == 16);
  CHECK(scram::format_secret(*secret) == kPostgresSecret);
  CHECK(scram::format_secret(scram::make_secret("pencil", secret->salt, 4096)) == kPostgresSecret);

  CHECK(login("pencil", *secret));
  CHECK_FALSE(login("wrong", *secret));
  CHECK_FALSE(login("pencil ", *secret));
}

TEST_CASE("scram: gs2 header and channel binding") {
  scram::Secret secret = rfc_secret();

  auto y = scram::parse_client_first("y,,n=,r=abc");
  REQUIRE(y.has_value());
  CHECK(y->gs2_header == "y,,");
  CHECK(y->client_first_bare == "n=,r=abc");

  // A client that said "y" must repeat it in c= (eSws); "biws" there means the header was
  // altered on the way (a downgrade), so the proof is refused even if it is right.
  std::string sf = scram::server_first(*y, "XYZ", secret);
  auto cf = scram::client_final(kRfcPassword, y->client_first_bare, sf);
  REQUIRE(cf.has_value());
  CHECK(cf->message.substr(0, 7) == "c=biws,");
  CHECK_FALSE(scram::verify_client_final(*y, sf, cf->message, secret));

  // libpq sends "y,," over TLS when the server does not offer SCRAM-SHA-256-PLUS; such a
  // client then sends c=eSws, which must verify.
  std::string y_final = hand_made_client_final(y->client_first_bare, sf, "c=eSws,r=abcXYZ");
  CHECK(scram::verify_client_final(*y, sf, y_final, secret).has_value());
  // And the hand-made construction agrees with the RFC vector for "n,,".
  CHECK(hand_made_client_final(kRfcClientFirstBare, kRfcServerFirst,
                               "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0") ==
        kRfcClientFinal);

  CHECK_FALSE(scram::parse_client_first("p=tls-unique,,n=,r=abc"));
  CHECK_FALSE(scram::parse_client_first("p=,,n=,r=abc"));
  CHECK_FALSE(scram::parse_client_first("n,a=admin,n=,r=abc"));
  CHECK_FALSE(scram::parse_client_first("y,a=admin,n=,r=abc"));
  CHECK_FALSE(scram::parse_client_first("n,a=,n=,r=abc"));
  CHECK_FALSE(scram::parse_client_first("x,,n=,r=abc"));
  CHECK_FALSE(scram::parse_client_first("N,,n=,r=abc"));
  CHECK_FALSE(scram::parse_client_first("n,n=,r=abc"));
  CHECK_FALSE(scram::parse_client_first(",,n=,r=abc"));
}

TEST_CASE("scram: tls-server-end-point channel binding") {
  scram::Secret secret = rfc_secret();
  auto p = scram::parse_client_first("p=tls-server-end-point,,n=,r=abc");
  REQUIRE(p.has_value());
  CHECK(p->binds());
  CHECK_FALSE(p->could_bind());
  CHECK(p->client_first_bare == "n=,r=abc");
  std::string sf = scram::server_first(*p, "XYZ", secret);
  const std::string hash(32, '\x5a');
  std::string c = "c=" + scram::base64_encode("p=tls-server-end-point,," + hash) + ",r=abcXYZ";
  std::string final_message = hand_made_client_final(p->client_first_bare, sf, c);
  CHECK(scram::verify_client_final(*p, sf, final_message, secret, nullptr, hash).has_value());
  // Another certificate seen by the client (a man in the middle), or no binding data at all.
  CHECK_FALSE(
      scram::verify_client_final(*p, sf, final_message, secret, nullptr, std::string(32, '\x5b')));
  CHECK_FALSE(scram::verify_client_final(*p, sf, final_message, secret));
  // A client that binds must send the binding data, not only the header.
  std::string bare_header =
      hand_made_client_final(p->client_first_bare, sf,
                             "c=" + scram::base64_encode("p=tls-server-end-point,,") + ",r=abcXYZ");
  CHECK_FALSE(scram::verify_client_final(*p, sf, bare_header, secret, nullptr, hash));
}

TEST_CASE("scram: pgring as client binds, and its own server side accepts it") {
  scram::Secret secret = rfc_secret();
  const std::string hash(32, '\x33');
  for (auto binding : {scram::Binding::none, scram::Binding::could, scram::Binding::bind}) {
    std::string first = scram::client_first("clientNonce", binding);
    CHECK(first.starts_with(scram::gs2_header(binding)));
    auto parsed = scram::parse_client_first(first);
    REQUIRE(parsed.has_value());
    std::string sf = scram::server_first(*parsed, "srv", secret);
    auto cf = scram::client_final(kRfcPassword, parsed->client_first_bare, sf, binding, hash);
    REQUIRE(cf.has_value());
    scram::Key client_key{};
    auto verified =
        scram::verify_client_final(*parsed, sf, cf->message, secret, &client_key,
                                   binding == scram::Binding::bind ? std::string_view(hash) : "");
    REQUIRE(verified.has_value());
    CHECK(scram::verify_server_final(*verified, cf->expected_server_signature));
    // Pass-through with the ClientKey the exchange revealed produces the same proof.
    auto again = scram::client_final_from_keys(client_key, secret, parsed->client_first_bare, sf,
                                               binding, hash);
    REQUIRE(again.has_value());
    CHECK(again->message == cf->message);
  }
  // Binding without the certificate's hash is refused rather than sent empty.
  CHECK_FALSE(scram::client_final(kRfcPassword, "n=,r=abc", "r=abcdef,s=c2FsdA==,i=4096",
                                  scram::Binding::bind, ""));
}

TEST_CASE("scram: parse_client_first grammar") {
  CHECK(scram::parse_client_first("n,,n=,r=a"));
  CHECK(scram::parse_client_first("n,,n=*,r=a"));
  CHECK(scram::parse_client_first("n,,n=us=2Cer=3D,r=a"));
  CHECK(scram::parse_client_first("n,,n=,r=a,x=ext"));  // extensions are allowed and ignored
  CHECK(scram::parse_client_first("n,,n=,r=a,x=ext,y=more"));
  CHECK(scram::parse_client_first(std::string("n,,n=,r=") + std::string(1024, 'N')));

  for (std::string_view bad : {
           "",
           "n",
           "n,",
           "n,,",
           "n,,n",
           "n,,n=",
           "n,,n=,",
           "n,,n=,r",
           "n,,n=,r=",
           "n,,r=abc",            // no user name attribute
           "n,,r=abc,n=",         // wrong order
           "n,,m=ext,n=,r=abc",   // mandatory extension: must be refused
           "n,,n=,r=abc,",        // dangling comma
           "n,,n=,r=abc,x",       // extension without '='
           "n,,n=,r=abc,x=",      // extension without a value
           "n,,n=,r=abc,1=v",     // extension name not ALPHA
           "n,,n=,r=abc,,x=v",    // empty attribute
           "n,,n=,r=a b",         // space is not printable
           "n,,n=,r=a\x7f",       // DEL
           "n,,n=,r=\xc3\xa9",    // non-ASCII
           "n,,n=u=,r=abc",       // bad escape
           "n,,n=u=2X,r=abc",     // bad escape
           "n,,n=u=2,r=abc",      // truncated escape
           "n,,n=,s=abc",         // wrong attribute
           "n,,n=,r=abc,r=def,",  // dangling after duplicate
           "n,,n=,,r=abc",
       }) {
    CAPTURE(bad);
    CHECK_FALSE(scram::parse_client_first(bad).has_value());
  }
  CHECK_FALSE(scram::parse_client_first(std::string("n,,n=,r=") + std::string(1025, 'N')));
  CHECK_FALSE(scram::parse_client_first(std::string("n,,n=,r=ab\0c", 12)));
  CHECK_FALSE(scram::parse_client_first(std::string("n,,n=\0,r=abc", 12)));
  CHECK_FALSE(scram::parse_client_first("n,,n=" + std::string(70000, 'u') + ",r=abc"));
}

TEST_CASE("scram: parse_secret refuses malformed secrets") {
  CHECK(scram::parse_secret(
      "SCRAM-SHA-256$10000000:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="
      ":wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="));
  CHECK(scram::parse_secret(
      "SCRAM-SHA-256$1:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="
      ":wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="));

  const std::string stored = "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=";
  const std::string server = "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
  const std::string key31 = scram::base64_encode(std::string(31, 'k'));
  const std::string key33 = scram::base64_encode(std::string(33, 'k'));
  const std::string salt = "W22ZaJ0SNY7soEsUEjb6gQ==";
  for (const std::string& bad : {
           std::string(""),
           std::string("SCRAM-SHA-256"),
           std::string("SCRAM-SHA-256$"),
           "SCRAM-SHA-1$4096:" + salt + "$" + stored + ":" + server,
           "scram-sha-256$4096:" + salt + "$" + stored + ":" + server,
           "SCRAM-SHA-256$0:" + salt + "$" + stored + ":" + server,
           "SCRAM-SHA-256$10000001:" + salt + "$" + stored + ":" + server,
           "SCRAM-SHA-256$99999999999999999999:" + salt + "$" + stored + ":" + server,
           "SCRAM-SHA-256$-4096:" + salt + "$" + stored + ":" + server,
           "SCRAM-SHA-256$+4096:" + salt + "$" + stored + ":" + server,
           "SCRAM-SHA-256$04096:" + salt + "$" + stored + ":" + server,
           "SCRAM-SHA-256$ 4096:" + salt + "$" + stored + ":" + server,
           "SCRAM-SHA-256$4096x:" + salt + "$" + stored + ":" + server,
           "SCRAM-SHA-256$:" + salt + "$" + stored + ":" + server,
           "SCRAM-SHA-256$4096:$" + stored + ":" + server,                         // empty salt
           "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ=$" + stored + ":" + server,  // bad b64
           "SCRAM-SHA-256$4096:" + salt + "$" + key31 + ":" + server,
           "SCRAM-SHA-256$4096:" + salt + "$" + stored + ":" + key33,
           "SCRAM-SHA-256$4096:" + salt + "$" + stored,
           "SCRAM-SHA-256$4096:" + salt + "$" + stored + ":",
           "SCRAM-SHA-256$4096:" + salt + "$" + stored + ":" + server + ":",
           "SCRAM-SHA-256$4096:" + salt + "$" + stored + ":" + server + "x",
           "SCRAM-SHA-256$4096:" + salt + "$" + stored + ":" + server + "\n",
           "SCRAM-SHA-256$4096$" + salt + ":" + stored + ":" + server,
           "SCRAM-SHA-256$4096:" + salt + ":" + stored + "$" + server,
           "SCRAM-SHA-256$4096:" + salt + "$" + stored + "$" + server,
           std::string("md56a422f785c9e20873908ce25d1736ae2"),
       }) {
    CAPTURE(bad);
    CHECK_FALSE(scram::parse_secret(bad).has_value());
  }
  // Every truncation of a valid secret is refused.
  for (std::size_t n = 0; n < kPostgresSecret.size(); ++n) {
    CAPTURE(n);
    CHECK_FALSE(scram::parse_secret(kPostgresSecret.substr(0, n)).has_value());
  }
}

TEST_CASE("scram: client_final refuses a hostile server-first") {
  const std::string bare = "n=,r=abc";
  CHECK(scram::client_final("pw", bare, "r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1"));
  CHECK(scram::client_final("pw", bare, "r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1,x=ext"));
  CHECK(scram::client_final("pw", bare, "r=abc" + std::string(1024, 'S') + ",s=c2FsdA==,i=1"));

  for (const std::string& bad : {
           std::string(""),
           std::string("r=abcdef"),
           std::string("r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ=="),
           std::string("r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i="),
           std::string("r=abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),     // no server share
           std::string("r=abXdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),  // does not extend ours
           std::string("r=ab,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
           std::string("r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0"),
           std::string("r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000001"),
           std::string("r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4294967297"),
           std::string("r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1"),
           std::string("r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096x"),
           std::string("r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"),
           std::string("r=abcdef,s=,i=4096"),                        // empty salt
           std::string("r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ,i=4096"),  // unpadded
           std::string("r=abcdef,s=W22Z*J0SNY7soEsUEjb6gQ==,i=4096"),
           std::string("r=abcdef,i=4096,s=W22ZaJ0SNY7soEsUEjb6gQ=="),  // wrong order
           std::string("m=ext,r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
           std::string("e=other-error"),
           std::string("r=abc def,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
           std::string("r=abcdef\0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", 43),
           "r=abc" + std::string(1025, 'S') + ",s=c2FsdA==,i=1",  // server share too long
           "r=abcdef,s=" + scram::base64_encode(std::string(1025, 's')) + ",i=1",
       }) {
    CAPTURE(bad);
    CHECK_FALSE(scram::client_final("pw", bare, bad).has_value());
  }
  // Our own bare must be well-formed too (we parse our nonce back out of it).
  CHECK_FALSE(scram::client_final("pw", "r=abc", "r=abcdef,s=c2FsdA==,i=1"));
  CHECK_FALSE(scram::client_final("pw", "n=,r=", "r=abcdef,s=c2FsdA==,i=1"));
  CHECK_FALSE(scram::client_final("pw", "", "r=abcdef,s=c2FsdA==,i=1"));

  // Truncations of the RFC server-first: only those that end inside the iteration count's
  // digits ("i=4", "i=40", "i=409") are still grammatical.
  for (std::size_t n = 0; n + 3 < kRfcServerFirst.size(); ++n) {
    CAPTURE(n);
    CHECK_FALSE(scram::client_final(kRfcPassword, kRfcClientFirstBare, kRfcServerFirst.substr(0, n))
                    .has_value());
  }
}

TEST_CASE("scram: verify_client_final refuses anything but the exact proof") {
  scram::Secret secret = rfc_secret();
  auto first = scram::parse_client_first(kRfcClientFirst);
  REQUIRE(first.has_value());
  const std::string sf(kRfcServerFirst);
  const std::string nonce = std::string(kRfcClientNonce) + std::string(kRfcServerNonce);
  const std::string proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

  for (const std::string& bad : {
           std::string(""),
           std::string(","),
           std::string("p="),
           "c=eSws,r=" + nonce + "," + proof,  // binding says "y,," but client-first said "n,,"
           "c=,r=" + nonce + "," + proof,
           "c=biws=,r=" + nonce + "," + proof,
           "c=bi ws,r=" + nonce + "," + proof,
           "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r=" + nonce + "," + proof,  // p=...,, binding
           "r=" + nonce + ",c=biws," + proof,                              // wrong order
           "c=biws," + proof,                                              // no nonce
           "c=biws,r=" + nonce,                                            // no proof
           "c=biws,r=" + nonce + ",p=",
           "c=biws,r=" + nonce + "X," + proof,  // nonce longer than sent
           "c=biws,r=" + nonce.substr(0, nonce.size() - 1) + "," + proof,
           "c=biws,r=" + std::string(kRfcClientNonce) + "," + proof,
           "c=biws,r=" + nonce + "," + proof + ",x=ext",  // proof must be last
           "c=biws,r=" + nonce + "," + proof + ",",
           "c=biws,r=" + nonce + ",," + proof,
           "c=biws,r=" + nonce + ",x=ext," + proof,  // grammatical, but the proof is over the rest
           "c=biws,r=" + nonce + ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ",  // unpadded
           "c=biws,r=" + nonce + ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=A",
           "c=biws,r=" + nonce + ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndQ==",  // 31 bytes
           "c=biws,r=" + nonce + ",p=" + scram::base64_encode(std::string(32, '\0')),
           "c=biws,r=" + nonce + ",p=" + scram::base64_encode(std::string(33, 'p')),
           "c=biws,r=" + nonce + ",p=" + std::string(70000, 'A'),
       }) {
    CAPTURE(bad);
    CHECK_FALSE(scram::verify_client_final(*first, sf, bad, secret).has_value());
  }

  // Extensions before the proof are allowed, and covered by the proof (they are part of the
  // AuthMessage): the same extension with a proof made without it fails.
  std::string with_ext =
      hand_made_client_final(kRfcClientFirstBare, sf, "c=biws,r=" + nonce + ",x=ext");
  auto ext_final = scram::verify_client_final(*first, sf, with_ext, secret);
  REQUIRE(ext_final.has_value());
  CHECK(*ext_final != kRfcServerFinal);  // ServerSignature covers the extension too
  CHECK_FALSE(
      scram::verify_client_final(*first, sf, "c=biws,r=" + nonce + ",x=ext," + proof, secret));
  // A proof that is right for its AuthMessage but carries a nonce other than the one we sent
  // (a replay from another session) is refused by the nonce check alone.
  for (const std::string& other_nonce :
       {std::string(kRfcClientNonce) + "otherServerNonce", nonce + "x", nonce.substr(0, 25)}) {
    CAPTURE(other_nonce);
    std::string replay = hand_made_client_final(kRfcClientFirstBare, sf, "c=biws,r=" + other_nonce);
    CHECK_FALSE(scram::verify_client_final(*first, sf, replay, secret).has_value());
  }
  // Every truncation and every single-byte change of the genuine message is refused.
  const std::string good(kRfcClientFinal);
  REQUIRE(scram::verify_client_final(*first, sf, good, secret));
  for (std::size_t n = 0; n < good.size(); ++n) {
    CAPTURE(n);
    CHECK_FALSE(scram::verify_client_final(*first, sf, good.substr(0, n), secret).has_value());
    std::string flipped = good;
    flipped[n] = static_cast<char>(flipped[n] ^ 0x01);
    CHECK_FALSE(scram::verify_client_final(*first, sf, flipped, secret).has_value());
  }

  // The server-first we pass must be the one the client saw: another salt or count changes the
  // AuthMessage, another nonce breaks the r= check, and a malformed one is refused outright.
  CHECK_FALSE(scram::verify_client_final(*first, std::string(sf) + "0", good, secret));
  CHECK_FALSE(scram::verify_client_final(*first, "", good, secret));
  CHECK_FALSE(scram::verify_client_final(
      *first, "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=AAAA,i=4096", good, secret));
  scram::ClientFirst other = *first;
  other.client_nonce = "someoneElse";
  CHECK_FALSE(scram::verify_client_final(other, sf, good, secret));
  other = *first;
  other.client_first_bare = "n=,r=rOprNGfwEbeRWgbNEkqO";  // changes the AuthMessage
  CHECK_FALSE(scram::verify_client_final(other, sf, good, secret));

  // A different secret (another password) refuses the RFC proof.
  auto salt = scram::base64_decode(kRfcSaltB64);
  REQUIRE(salt.has_value());
  CHECK_FALSE(
      scram::verify_client_final(*first, sf, good, scram::make_secret("pencil2", *salt, 4096)));

  // A failed check leaves client_key_out alone.
  scram::Key untouched{};
  untouched.fill(0x5a);
  scram::Key out = untouched;
  CHECK_FALSE(scram::verify_client_final(*first, sf, good + "x", secret, &out));
  CHECK(out == untouched);
}

TEST_CASE("scram: verify_server_final") {
  scram::Key expected{};
  auto raw = scram::base64_decode("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
  REQUIRE(raw.has_value());
  REQUIRE(raw->size() == expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i)
    expected[i] = static_cast<std::uint8_t>((*raw)[i]);

  CHECK(scram::verify_server_final(kRfcServerFinal, expected));
  CHECK(scram::verify_server_final(std::string(kRfcServerFinal) + ",x=ext", expected));
  for (std::string_view bad : {
           "",
           "v",
           "v=",
           "e=invalid-proof",
           "e=other-error,v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
           "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4",
           "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,",
           "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,x",
           "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G5=",
           "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95A==",
           " v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
       }) {
    CAPTURE(bad);
    CHECK_FALSE(scram::verify_server_final(bad, expected));
  }
  for (std::size_t n = 0; n < kRfcServerFinal.size(); ++n) {
    CHECK_FALSE(scram::verify_server_final(kRfcServerFinal.substr(0, n), expected));
  }
}
