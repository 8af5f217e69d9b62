#pragma once
// TLS driven by the reactor: OpenSSL never touches a socket. Ciphertext the ring received is
// written into a session's read BIO, plaintext comes out of SSL_read; records OpenSSL produces
// (handshake, data, alerts, TLS 1.3 tickets) are taken out of its write BIO and sent by the
// Stream like any other bytes. One SSL per connection, owned by its reactor's thread.
//
// The contexts are built once per configuration load (startup, SIGHUP, RELOAD): a bad
// certificate fails the load with the YAML path, and the running contexts stay. Sessions keep
// a reference to the context they started with, so a reload never disturbs a connected client.

#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <string_view>

#include "config/config.hpp"

namespace pgring {

struct SslCtxFree {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;

// Everything TLS one configuration needs. Shared (read-only) by every reactor.
struct TlsContexts {
  SslCtxPtr client_side;  // pgring as the server its clients talk to (tls.client); may be null
  SslCtxPtr server_side;  // pgring as a client of PostgreSQL (tls.server); may be null
};

// Loads the certificates and keys the configuration names. Throws config::ConfigError naming
// the YAML path when a file cannot be used.
[[nodiscard]] std::shared_ptr<const TlsContexts> build_tls(const config::Config& config);

class TlsSession {
 public:
  // Accept (pgring is the TLS server) or connect (pgring is the client of `host`).
  static std::unique_ptr<TlsSession> accept(SSL_CTX* ctx);
  static std::unique_ptr<TlsSession> connect(SSL_CTX* ctx, const std::string& host,
                                             config::ServerTlsMode mode);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // Ciphertext received: decrypt what can be; plaintext is appended to `plaintext`. False on a
  // TLS error (error() says which): the connection cannot go on.
  bool receive(std::string_view ciphertext, std::string& plaintext);
  // Plaintext to send: encrypted into the pending output.
  bool send(std::string_view plaintext);
  // Moves every record produced so far to the end of `out`.
  void take_output(std::string& out);
  [[nodiscard]] bool has_output() const;
  // Nothing in flight: give back BIO buffers a handshake or a large result left behind, so an
  // idle TLS connection stays small.
  void trim();
  [[nodiscard]] bool handshake_done() const { return handshake_done_; }
  [[nodiscard]] const std::string& error() const { return error_; }
  [[nodiscard]] bool peer_closed() const { return peer_closed_; }  // close_notify: an orderly EOF
  // After the handshake: the ALPN protocol agreed on ("" if none), the version, the client
  // certificate's common name ("" without a verified certificate).
  [[nodiscard]] std::string alpn() const;
  [[nodiscard]] std::string_view version() const;
  [[nodiscard]] std::string verified_peer_name() const;
  // SCRAM-SHA-256-PLUS binding data (tls-server-end-point, RFC 5929): the hash of the
  // certificate this session presented (the one loaded when it began, also after a reload).
  [[nodiscard]] std::string end_point_hash() const;
  // The same of the peer's certificate (pgring as a client: PostgreSQL's), "" without one.
  [[nodiscard]] std::string peer_end_point_hash() const;

 private:
  explicit TlsSession(SSL* ssl);
  bool fail(std::string_view what);
  SSL* ssl_;
  BIO* in_;   // owned by ssl_
  BIO* out_;  // owned by ssl_
  bool handshake_done_ = false;
  bool peer_closed_ = false;
  std::string error_;
};

}  // namespace pgring
