// SCRAM-SHA-256 (RFC 5802 / RFC 7677) for both sides of the pooler.
//
// Parsing is deliberately stricter than PostgreSQL's own: every attribute is checked against
// the RFC 5802 grammar, in order, with explicit length caps, because a pooler parses untrusted
// bytes from both clients and servers, and SCRAM parsing is where poolers keep shipping CVEs.
//
// Everything here is a pure function over its arguments; nonces come from the caller.

#include "proto/scram.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <climits>
#include <cstddef>
#include <cstring>

namespace pgring::proto::scram {
namespace {

constexpr int kMinIterations = 1;
// PBKDF2 cost is linear in the count; a hostile server could otherwise make us spin for minutes.
constexpr int kMaxIterations = 10'000'000;
// Caps on attacker-controlled sizes. PostgreSQL caps a whole SASL token at 65535 bytes
// (PG_MAX_AUTH_TOKEN_LENGTH); nonces and salts are 18-ish bytes in practice.
constexpr std::size_t kMaxMessageLength = 65535;
constexpr std::size_t kMaxNonceLength = 1024;
constexpr std::size_t kMaxSaltLength = 1024;
constexpr std::size_t kKeyLength = 32;

constexpr std::string_view kClientKeyLabel = "Client Key";
constexpr std::string_view kServerKeyLabel = "Server Key";

// ---- base64 (RFC 4648, standard alphabet, padded) ----

constexpr char kB64Alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int b64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// ---- crypto primitives; each returns false only if libcrypto itself fails ----

[[nodiscard]] bool sha256(std::string_view data, Key& out) {
  unsigned int len = 0;
  return EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr) == 1 &&
         len == kKeyLength;
}

[[nodiscard]] bool hmac_sha256(const std::uint8_t* key, std::size_t key_len, std::string_view data,
                               Key& out) {
  if (key_len > static_cast<std::size_t>(INT_MAX)) return false;
  unsigned int len = 0;
  const unsigned char* result =
      HMAC(EVP_sha256(), key, static_cast<int>(key_len),
           reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(), &len);
  return result != nullptr && len == kKeyLength;
}

[[nodiscard]] bool hmac_sha256(const Key& key, std::string_view data, Key& out) {
  return hmac_sha256(key.data(), key.size(), data, out);
}

[[nodiscard]] bool salted_password(std::string_view password, std::string_view salt, int iterations,
                                   Key& out) {
  if (password.size() > static_cast<std::size_t>(INT_MAX) ||
      salt.size() > static_cast<std::size_t>(INT_MAX) || iterations < kMinIterations ||
      iterations > kMaxIterations) {
    return false;
  }
  return PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()),
                           reinterpret_cast<const unsigned char*>(salt.data()),
                           static_cast<int>(salt.size()), iterations, EVP_sha256(),
                           static_cast<int>(out.size()), out.data()) == 1;
}

std::string_view as_view(const Key& key) {
  return {reinterpret_cast<const char*>(key.data()), key.size()};
}

[[nodiscard]] bool to_key(std::string_view raw, Key& out) {
  if (raw.size() != out.size()) return false;
  std::memcpy(out.data(), raw.data(), out.size());
  return true;
}

// ---- RFC 5802 grammar helpers ----

// A cursor over one comma-separated SCRAM message. Failure is sticky: once a field is
// malformed every later read fails too, so callers can check once at the end.
class AttrReader {
 public:
  explicit AttrReader(std::string_view text) : rest_(text) {}

  // Reads "<name>=<value>" up to the next ',' (or the end), consuming the ','. The value may be
  // empty; callers that need it non-empty check that themselves.
  [[nodiscard]] std::optional<std::string_view> attr(char name) {
    if (failed_ || rest_.size() < 2 || rest_[0] != name || rest_[1] != '=') {
      failed_ = true;
      return std::nullopt;
    }
    std::size_t comma = rest_.find(',', 2);
    std::string_view value =
        rest_.substr(2, comma == std::string_view::npos ? rest_.npos : comma - 2);
    // No attribute value may hold a NUL (RFC 5802 "value-char"); PostgreSQL's parser would stop
    // at one, so letting it through would make our view and the server's differ.
    if (value.find('\0') != std::string_view::npos) {
      failed_ = true;
      return std::nullopt;
    }
    rest_ = comma == std::string_view::npos ? std::string_view{} : rest_.substr(comma + 1);
    trailing_comma_ = comma != std::string_view::npos;
    return value;
  }

  // extensions = attr-val *("," attr-val); attr-val = ALPHA "=" value; value = 1*value-char.
  // Accepted (the grammar allows them) but ignored, as PostgreSQL does.
  [[nodiscard]] bool skip_extensions() {
    while (!failed_ && (!rest_.empty() || trailing_comma_)) {
      if (rest_.size() < 3 || !is_alpha(rest_[0]) || rest_[1] != '=' || rest_[2] == ',') {
        failed_ = true;
        break;
      }
      (void)attr(rest_[0]);
    }
    return !failed_;
  }

  // The whole message was consumed without a dangling ','.
  [[nodiscard]] bool done() const { return !failed_ && rest_.empty() && !trailing_comma_; }
  [[nodiscard]] bool failed() const { return failed_; }

 private:
  static bool is_alpha(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }

  std::string_view rest_;
  bool failed_ = false;
  bool trailing_comma_ = false;
};

// printable = %x21-2B / %x2D-7E (visible ASCII except ',').
[[nodiscard]] bool printable(std::string_view text) {
  for (char c : text) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x21 || u > 0x7e || c == ',') return false;
  }
  return true;
}

// One party's share of a nonce.
[[nodiscard]] bool valid_nonce(std::string_view nonce) {
  return !nonce.empty() && nonce.size() <= kMaxNonceLength && printable(nonce);
}

// saslname = *(value-safe-char / "=2C" / "=3D"). RFC 5802 wants at least one character, but
// PostgreSQL clients send an empty one ("n=,") since the startup packet carries the user.
[[nodiscard]] bool valid_saslname(std::string_view name) {
  for (std::size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    if (c == '\0' || c == ',') return false;
    if (c == '=') {
      if (name.substr(i + 1, 2) != "2C" && name.substr(i + 1, 2) != "3D") return false;
      i += 2;
    }
  }
  return true;
}

// posit-number = %x31-39 *DIGIT, within [kMinIterations, kMaxIterations].
std::optional<int> parse_iterations(std::string_view text) {
  if (text.empty() || text.size() > 8 || text[0] < '1' || text[0] > '9') return std::nullopt;
  int value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + (c - '0');  // at most 8 digits: cannot overflow
  }
  if (value < kMinIterations || value > kMaxIterations) return std::nullopt;
  return value;
}

std::optional<std::string> decode_salt(std::string_view b64) {
  auto salt = base64_decode(b64);
  if (!salt || salt->empty() || salt->size() > kMaxSaltLength) return std::nullopt;
  return salt;
}

std::optional<Key> decode_key(std::string_view b64) {
  // 32 bytes encode to exactly 44 characters; checking first avoids decoding junk.
  if (b64.size() != 44) return std::nullopt;
  auto raw = base64_decode(b64);
  Key key{};
  if (!raw || !to_key(*raw, key)) return std::nullopt;
  return key;
}

// client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions].
// Returns the client nonce. "m=" (mandatory extensions) must be refused per RFC 5802 §5.1.
std::optional<std::string_view> parse_client_first_bare(std::string_view bare) {
  AttrReader reader(bare);
  auto user = reader.attr('n');
  auto nonce = reader.attr('r');
  if (reader.failed() || !valid_saslname(*user) || !valid_nonce(*nonce)) return std::nullopt;
  if (!reader.skip_extensions() || !reader.done()) return std::nullopt;
  return nonce;
}

struct ServerFirst {
  std::string_view nonce;  // client nonce + server nonce
  std::string salt;        // raw bytes
  int iterations = 0;
};

// server-first-message = [reserved-mext ","] nonce "," salt "," iteration-count
//                        ["," extensions]; "m=" is refused.
std::optional<ServerFirst> parse_server_first(std::string_view message) {
  if (message.size() > kMaxMessageLength) return std::nullopt;
  AttrReader reader(message);
  auto nonce = reader.attr('r');
  auto salt_b64 = reader.attr('s');
  auto iter_text = reader.attr('i');
  if (reader.failed() || !reader.skip_extensions() || !reader.done()) return std::nullopt;
  // Where the client's share ends is only known to the caller (nonce_extends() checks that and
  // the server's share); here the characters and the cap on both shares together.
  if (nonce->empty() || nonce->size() > 2 * kMaxNonceLength || !printable(*nonce)) {
    return std::nullopt;
  }
  ServerFirst out;
  out.nonce = *nonce;
  auto salt = decode_salt(*salt_b64);
  auto iterations = parse_iterations(*iter_text);
  if (!salt || !iterations) return std::nullopt;
  out.salt = std::move(*salt);
  out.iterations = *iterations;
  return out;
}

// The server nonce must be a non-empty extension of the client's, with its own part capped.
[[nodiscard]] bool nonce_extends(std::string_view combined, std::string_view client_nonce) {
  return combined.size() > client_nonce.size() &&
         combined.size() - client_nonce.size() <= kMaxNonceLength &&
         combined.substr(0, client_nonce.size()) == client_nonce;
}

std::string auth_message(std::string_view client_first_bare, std::string_view server_first,
                         std::string_view client_final_without_proof) {
  std::string msg;
  msg.reserve(client_first_bare.size() + server_first.size() + client_final_without_proof.size() +
              2);
  msg.append(client_first_bare).append(",").append(server_first).append(",");
  msg.append(client_final_without_proof);
  return msg;
}

}  // namespace

// ---- base64 ----

std::string base64_encode(std::string_view raw) {
  std::string out;
  out.reserve((raw.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= raw.size(); i += 3) {
    std::uint32_t n = static_cast<std::uint32_t>(static_cast<unsigned char>(raw[i])) << 16 |
                      static_cast<std::uint32_t>(static_cast<unsigned char>(raw[i + 1])) << 8 |
                      static_cast<unsigned char>(raw[i + 2]);
    out.push_back(kB64Alphabet[(n >> 18) & 63]);
    out.push_back(kB64Alphabet[(n >> 12) & 63]);
    out.push_back(kB64Alphabet[(n >> 6) & 63]);
    out.push_back(kB64Alphabet[n & 63]);
  }
  std::size_t left = raw.size() - i;
  if (left > 0) {
    std::uint32_t n = static_cast<std::uint32_t>(static_cast<unsigned char>(raw[i])) << 16;
    if (left == 2) n |= static_cast<std::uint32_t>(static_cast<unsigned char>(raw[i + 1])) << 8;
    out.push_back(kB64Alphabet[(n >> 18) & 63]);
    out.push_back(kB64Alphabet[(n >> 12) & 63]);
    out.push_back(left == 2 ? kB64Alphabet[(n >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

// Strict: length a multiple of 4, only the standard alphabet, '=' only as the last one or two
// characters, and the unused bits before padding zero (so every value has one encoding —
// otherwise two different "c=" strings could decode to the same gs2 header).
std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    bool last = i + 4 == text.size();
    int pad = 0;
    if (last && text[i + 3] == '=') pad = text[i + 2] == '=' ? 2 : 1;
    int v[4] = {0, 0, 0, 0};
    for (int j = 0; j < 4 - pad; ++j) {
      v[j] = b64_value(text[i + j]);
      if (v[j] < 0) return std::nullopt;
    }
    std::uint32_t n = static_cast<std::uint32_t>(v[0]) << 18 |
                      static_cast<std::uint32_t>(v[1]) << 12 |
                      static_cast<std::uint32_t>(v[2]) << 6 | static_cast<std::uint32_t>(v[3]);
    out.push_back(static_cast<char>((n >> 16) & 0xff));
    if (pad == 2) {
      if ((n & 0xffff) != 0) return std::nullopt;
      break;
    }
    out.push_back(static_cast<char>((n >> 8) & 0xff));
    if (pad == 1) {
      if ((n & 0xff) != 0) return std::nullopt;
      break;
    }
    out.push_back(static_cast<char>(n & 0xff));
  }
  return out;
}

bool timing_safe_equal(std::string_view a, std::string_view b) {
  // Lengths are public (fixed 32-byte keys); only the contents must not leak through timing.
  if (a.size() != b.size()) return false;
  if (a.empty()) return true;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

// ---- secrets ----

std::optional<Secret> parse_secret(std::string_view text) {
  constexpr std::string_view kPrefix = "SCRAM-SHA-256$";
  if (text.size() > kMaxMessageLength || text.substr(0, kPrefix.size()) != kPrefix) {
    return std::nullopt;
  }
  text.remove_prefix(kPrefix.size());
  // <iter>:<salt>$<StoredKey>:<ServerKey>; none of these contain ':' or '$' (base64 has neither).
  std::size_t colon1 = text.find(':');
  std::size_t dollar = text.find('$');
  if (colon1 == text.npos || dollar == text.npos || dollar < colon1) return std::nullopt;
  std::size_t colon2 = text.find(':', dollar + 1);
  if (colon2 == text.npos) return std::nullopt;
  std::string_view iter_text = text.substr(0, colon1);
  std::string_view salt_b64 = text.substr(colon1 + 1, dollar - colon1 - 1);
  std::string_view stored_b64 = text.substr(dollar + 1, colon2 - dollar - 1);
  std::string_view server_b64 = text.substr(colon2 + 1);

  auto iterations = parse_iterations(iter_text);
  auto salt = decode_salt(salt_b64);
  auto stored = decode_key(stored_b64);
  auto server = decode_key(server_b64);
  if (!iterations || !salt || !stored || !server) return std::nullopt;
  Secret secret;
  secret.iterations = *iterations;
  secret.salt = std::move(*salt);
  secret.stored_key = *stored;
  secret.server_key = *server;
  return secret;
}

std::string format_secret(const Secret& secret) {
  std::string out(kMechanism);
  out.append("$").append(std::to_string(secret.iterations)).append(":");
  out.append(base64_encode(secret.salt)).append("$");
  out.append(base64_encode(as_view(secret.stored_key))).append(":");
  out.append(base64_encode(as_view(secret.server_key)));
  return out;
}

// On bad input (iterations out of range, oversized password) or a libcrypto failure this
// returns a Secret with iterations == 0, which verify_client_final refuses: no key derived from
// a failed PBKDF2 can ever authenticate anybody.
Secret make_secret(std::string_view password, std::string_view salt, int iterations) {
  Secret secret;
  // An empty or huge salt would produce a secret parse_secret refuses; refuse it here too.
  if (salt.empty() || salt.size() > kMaxSaltLength) return secret;
  Key salted{};
  Key client_key{};
  Key stored{};
  Key server{};
  if (!salted_password(password, salt, iterations, salted) ||
      !hmac_sha256(salted, kClientKeyLabel, client_key) || !sha256(as_view(client_key), stored) ||
      !hmac_sha256(salted, kServerKeyLabel, server)) {
    OPENSSL_cleanse(salted.data(), salted.size());
    OPENSSL_cleanse(client_key.data(), client_key.size());
    return secret;
  }
  secret.iterations = iterations;
  secret.salt = std::string(salt);
  secret.stored_key = stored;
  secret.server_key = server;
  OPENSSL_cleanse(salted.data(), salted.size());
  OPENSSL_cleanse(client_key.data(), client_key.size());
  return secret;
}

// ---- server side ----

std::optional<ClientFirst> parse_client_first(std::string_view message) {
  if (message.size() > kMaxMessageLength) return std::nullopt;
  // gs2-header = gs2-cbind-flag "," [authzid] ",". "n" (client cannot bind), "y" (client can,
  // but believes we cannot) and "p=tls-server-end-point" (the only binding PostgreSQL knows)
  // are accepted; an authzid is refused because PostgreSQL has no use for one.
  std::string_view header = message.substr(0, 3);
  if (message.starts_with(kEndPointHeader))
    header = message.substr(0, kEndPointHeader.size());
  else if (header != "n,," && header != "y,,")
    return std::nullopt;
  std::string_view bare = message.substr(header.size());
  auto nonce = parse_client_first_bare(bare);
  if (!nonce) return std::nullopt;
  ClientFirst first;
  first.gs2_header = std::string(header);
  first.client_first_bare = std::string(bare);
  first.client_nonce = std::string(*nonce);
  return first;
}

std::string server_first(const ClientFirst& first, std::string_view server_nonce,
                         const Secret& secret) {
  std::string out = "r=";
  out.append(first.client_nonce).append(server_nonce);
  out.append(",s=").append(base64_encode(secret.salt));
  out.append(",i=").append(std::to_string(secret.iterations));
  return out;
}

std::optional<std::string> verify_client_final(const ClientFirst& first,
                                               std::string_view server_first_message,
                                               std::string_view client_final_message,
                                               const Secret& secret, Key* client_key_out,
                                               std::string_view channel_binding) {
  if (secret.iterations < kMinIterations || client_final_message.size() > kMaxMessageLength) {
    return std::nullopt;
  }
  // We produced server_first_message, but re-parse it rather than trust the caller to pass the
  // matching nonce separately: the AuthMessage must use these exact bytes anyway.
  auto sent = parse_server_first(server_first_message);
  if (!sent || !nonce_extends(sent->nonce, first.client_nonce)) return std::nullopt;

  // client-final-message = channel-binding "," nonce ["," extensions] "," proof, and proof is
  // last; base64 has no ',', so the proof starts after the last ','.
  std::size_t last_comma = client_final_message.rfind(',');
  if (last_comma == client_final_message.npos) return std::nullopt;
  std::string_view without_proof = client_final_message.substr(0, last_comma);
  std::string_view proof_attr = client_final_message.substr(last_comma + 1);
  if (proof_attr.substr(0, 2) != "p=") return std::nullopt;

  AttrReader reader(without_proof);
  auto binding_b64 = reader.attr('c');
  auto nonce = reader.attr('r');
  if (reader.failed() || !reader.skip_extensions() || !reader.done()) return std::nullopt;
  // "c=" carries the gs2 header we saw in client-first, followed by the binding data when the
  // client binds; a mismatch means someone tampered with the header (e.g. downgraded "y" to
  // "n") or the client saw another certificate than ours (a man in the middle).
  auto binding = base64_decode(*binding_b64);
  if (first.binds() && channel_binding.empty()) return std::nullopt;
  std::string expected_binding = first.gs2_header;
  if (first.binds()) expected_binding.append(channel_binding);
  if (!binding || !timing_safe_equal(*binding, expected_binding)) return std::nullopt;
  if (*nonce != sent->nonce) return std::nullopt;

  auto proof_raw = base64_decode(proof_attr.substr(2));
  Key proof{};
  if (!proof_raw || !to_key(*proof_raw, proof)) return std::nullopt;

  std::string auth = auth_message(first.client_first_bare, server_first_message, without_proof);
  Key client_signature{};
  Key client_key{};
  Key client_stored{};
  Key server_signature{};
  if (!hmac_sha256(secret.stored_key, auth, client_signature)) return std::nullopt;
  for (std::size_t i = 0; i < kKeyLength; ++i) client_key[i] = proof[i] ^ client_signature[i];
  bool ok = sha256(as_view(client_key), client_stored) &&
            timing_safe_equal(as_view(client_stored), as_view(secret.stored_key)) &&
            hmac_sha256(secret.server_key, auth, server_signature);
  if (ok && client_key_out != nullptr) *client_key_out = client_key;
  OPENSSL_cleanse(client_key.data(), client_key.size());
  if (!ok) return std::nullopt;
  return "v=" + base64_encode(as_view(server_signature));
}

// ---- client side ----

std::string_view gs2_header(Binding binding) {
  switch (binding) {
    case Binding::none:
      return "n,,";
    case Binding::could:
      return "y,,";
    case Binding::bind:
      return kEndPointHeader;
  }
  return "n,,";
}

std::string client_first(std::string_view client_nonce, Binding binding) {
  std::string out(gs2_header(binding));
  out.append("n=,r=").append(client_nonce);
  return out;
}

namespace {
// client-final-without-proof: "c=" carries the gs2 header (and, when binding, the data).
std::string final_without_proof(Binding binding, std::string_view end_point,
                                std::string_view nonce) {
  std::string c(gs2_header(binding));
  if (binding == Binding::bind) c.append(end_point);
  std::string out = "c=" + base64_encode(c) + ",r=";
  out.append(nonce);
  return out;
}

// The server-first pgring (as SCRAM client) got, checked against the client-first-bare it sent.
std::optional<ServerFirst> answer_to(std::string_view client_first_bare,
                                     std::string_view server_first_message, Binding binding,
                                     std::string_view end_point) {
  if (binding == Binding::bind && end_point.empty()) return std::nullopt;
  auto our_nonce = parse_client_first_bare(client_first_bare);
  if (!our_nonce) return std::nullopt;
  auto server = parse_server_first(server_first_message);
  if (!server || !nonce_extends(server->nonce, *our_nonce)) return std::nullopt;
  return server;
}
}  // namespace

std::optional<ClientFinal> client_final(std::string_view password,
                                        std::string_view client_first_bare,
                                        std::string_view server_first_message, Binding binding,
                                        std::string_view end_point) {
  auto server = answer_to(client_first_bare, server_first_message, binding, end_point);
  if (!server) return std::nullopt;

  Key salted{};
  Key client_key{};
  Key stored{};
  Key server_key{};
  Key client_signature{};
  ClientFinal out;
  std::string without_proof = final_without_proof(binding, end_point, server->nonce);
  std::string auth = auth_message(client_first_bare, server_first_message, without_proof);
  bool ok = salted_password(password, server->salt, server->iterations, salted) &&
            hmac_sha256(salted, kClientKeyLabel, client_key) &&
            sha256(as_view(client_key), stored) &&
            hmac_sha256(salted, kServerKeyLabel, server_key) &&
            hmac_sha256(stored, auth, client_signature) &&
            hmac_sha256(server_key, auth, out.expected_server_signature);
  Key proof{};
  for (std::size_t i = 0; i < kKeyLength; ++i) proof[i] = client_key[i] ^ client_signature[i];
  OPENSSL_cleanse(salted.data(), salted.size());
  OPENSSL_cleanse(client_key.data(), client_key.size());
  OPENSSL_cleanse(server_key.data(), server_key.size());
  if (!ok) return std::nullopt;
  out.message = std::move(without_proof);
  out.message.append(",p=").append(base64_encode(as_view(proof)));
  return out;
}

std::optional<ClientFinal> client_final_from_keys(const Key& client_key, const Secret& secret,
                                                  std::string_view client_first_bare,
                                                  std::string_view server_first_message,
                                                  Binding binding, std::string_view end_point) {
  auto server = answer_to(client_first_bare, server_first_message, binding, end_point);
  if (!server) return std::nullopt;
  if (server->iterations != secret.iterations || !timing_safe_equal(server->salt, secret.salt))
    return std::nullopt;
  Key client_signature{};
  ClientFinal out;
  std::string without_proof = final_without_proof(binding, end_point, server->nonce);
  std::string auth = auth_message(client_first_bare, server_first_message, without_proof);
  if (!hmac_sha256(secret.stored_key, auth, client_signature) ||
      !hmac_sha256(secret.server_key, auth, out.expected_server_signature))
    return std::nullopt;
  Key proof{};
  for (std::size_t i = 0; i < kKeyLength; ++i) proof[i] = client_key[i] ^ client_signature[i];
  out.message = std::move(without_proof);
  out.message.append(",p=").append(base64_encode(as_view(proof)));
  return out;
}

bool verify_server_final(std::string_view server_final_message,
                         const Key& expected_server_signature) {
  // server-final-message = (server-error / verifier) ["," extensions]; "e=" is a failure.
  if (server_final_message.size() > kMaxMessageLength) return false;
  AttrReader reader(server_final_message);
  auto verifier = reader.attr('v');
  if (reader.failed() || !reader.skip_extensions() || !reader.done()) return false;
  auto signature = base64_decode(*verifier);
  return signature.has_value() && signature->size() == kKeyLength &&
         timing_safe_equal(*signature, as_view(expected_server_signature));
}

}  // namespace pgring::proto::scram
