#pragma once
// SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, as pure functions.
// Both sides: pgring is the SCRAM server for its clients and the SCRAM client for Postgres.
// Nonces are passed in (the daemon draws them from a CSPRNG) so every function is testable
// with the RFC 7677 vectors. Every field is bounds-checked: malformed input gives nullopt,
// never a crash (SCRAM parsing is where poolers keep shipping CVEs).

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pgring::proto::scram {

inline constexpr std::string_view kMechanism = "SCRAM-SHA-256";
// With channel binding over TLS; PostgreSQL (and pgring) bind with tls-server-end-point only.
inline constexpr std::string_view kMechanismPlus = "SCRAM-SHA-256-PLUS";
inline constexpr std::string_view kEndPointHeader = "p=tls-server-end-point,,";
inline constexpr int kDefaultIterations = 4096;

using Key = std::array<std::uint8_t, 32>;

// What a server stores: "SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>".
struct Secret {
  int iterations = 0;
  std::string salt;  // raw bytes
  Key stored_key{};
  Key server_key{};
};

[[nodiscard]] std::optional<Secret> parse_secret(std::string_view text);
[[nodiscard]] std::string format_secret(const Secret& secret);
// PBKDF2 over the password (SASLprep is not applied: ASCII passwords are unchanged by it,
// and PostgreSQL itself falls back to the raw bytes when SASLprep fails).
[[nodiscard]] Secret make_secret(std::string_view password, std::string_view salt, int iterations);

[[nodiscard]] std::string base64_encode(std::string_view raw);
[[nodiscard]] std::optional<std::string> base64_decode(std::string_view text);

// Constant-time comparison of equal-length secrets.
[[nodiscard]] bool timing_safe_equal(std::string_view a, std::string_view b);

// ---- server side (pgring checks a client) ----

// client-first-message: gs2-header "n,," (client cannot bind), "y,," (it could, but thinks
// we cannot) or "p=tls-server-end-point,," (it binds), then client-first-bare "n=<user>,r=<nonce>".
// PostgreSQL ignores the SCRAM user name.
struct ClientFirst {
  std::string gs2_header;  // e.g. "n,,"
  [[nodiscard]] bool binds() const { return gs2_header.starts_with("p="); }
  [[nodiscard]] bool could_bind() const { return gs2_header.starts_with("y"); }
  std::string client_first_bare;  // e.g. "n=,r=rOprNGfwEbeRWgbNEkqO"
  std::string client_nonce;
};
[[nodiscard]] std::optional<ClientFirst> parse_client_first(std::string_view message);

// server-first-message "r=<client nonce><server nonce>,s=<b64 salt>,i=<iterations>".
[[nodiscard]] std::string server_first(const ClientFirst& first, std::string_view server_nonce,
                                       const Secret& secret);

// Checks client-final-message "c=<b64 gs2 header>,r=<nonce>,p=<b64 proof>" against the
// exchange so far. On success returns the server-final-message "v=<b64 ServerSignature>"
// and, through client_key_out (if non-null), the ClientKey the proof revealed (for SCRAM
// pass-through to the server later). nullopt when the proof, nonce or binding is wrong.
// `channel_binding` is the tls-server-end-point data of our certificate when the client binds.
[[nodiscard]] std::optional<std::string> verify_client_final(const ClientFirst& first,
                                                             std::string_view server_first_message,
                                                             std::string_view client_final_message,
                                                             const Secret& secret,
                                                             Key* client_key_out = nullptr,
                                                             std::string_view channel_binding = {});

// ---- client side (pgring logs in to Postgres) ----

// How pgring, as a SCRAM client, speaks of channel binding (the gs2 header it sends):
//   none  "n,,"  (no TLS)
//   could "y,,"  (TLS, but the server did not offer -PLUS: tells a server that did that someone
//                 removed it on the way)
//   bind  "p=tls-server-end-point,," (SCRAM-SHA-256-PLUS, with the server certificate's hash)
enum class Binding { none, could, bind };
[[nodiscard]] std::string_view gs2_header(Binding binding);

// "<gs2 header>n=,r=<client nonce>"
[[nodiscard]] std::string client_first(std::string_view client_nonce,
                                       Binding binding = Binding::none);

struct ClientFinal {
  std::string message;            // "c=biws,r=...,p=..."
  Key expected_server_signature;  // to check the server's "v=" with
};
// From the password, the client-first-bare we sent and the server-first we got. nullopt when
// server-first is malformed, its nonce does not extend ours, or iterations are out of range
// (1..10,000,000). `binding` as in client_first; `end_point` is the server certificate's
// tls-server-end-point hash with Binding::bind.
[[nodiscard]] std::optional<ClientFinal> client_final(std::string_view password,
                                                      std::string_view client_first_bare,
                                                      std::string_view server_first_message,
                                                      Binding binding = Binding::none,
                                                      std::string_view end_point = {});

// SCRAM pass-through: log in with the ClientKey a client revealed when it logged in to us
// (verify_client_final) instead of a password. Works only when the server stores the same
// secret as ours: nullopt also when server-first names another salt or iteration count.
[[nodiscard]] std::optional<ClientFinal> client_final_from_keys(
    const Key& client_key, const Secret& secret, std::string_view client_first_bare,
    std::string_view server_first_message, Binding binding = Binding::none,
    std::string_view end_point = {});

// Checks server-final-message "v=<b64>" (an "e=<error>" message is a failure).
[[nodiscard]] bool verify_server_final(std::string_view server_final_message,
                                       const Key& expected_server_signature);

}  // namespace pgring::proto::scram
