#include "daemon/net/tls.hpp"

#include <arpa/inet.h>
#include <openssl/buffer.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

#include <array>

namespace pgring {

namespace {

// The last OpenSSL error as text, and the queue cleared (it is per thread: a stale entry would
// be blamed on the next connection).
std::string openssl_error() {
  std::string text;
  while (unsigned long code = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(code, buffer, sizeof buffer);
    if (!text.empty()) text += "; ";
    text += buffer;
  }
  return text.empty() ? std::string("unknown TLS error") : text;
}

[[noreturn]] void fail_path(const std::string& path, const std::string& what) {
  std::string error = openssl_error();
  throw config::ConfigError(path, 0, what + ": " + error);
}

// PostgreSQL's ALPN protocol name (RFC 7301 wire format: length, then the name).
constexpr unsigned char kAlpn[] = "\x0apostgresql";
constexpr unsigned int kAlpnLength = sizeof kAlpn - 1;

int select_alpn(SSL*, const unsigned char** out, unsigned char* out_length, const unsigned char* in,
                unsigned int in_length, void*) {
  // A client that offers ALPN but not "postgresql" is talking some other protocol to us: stop
  // the handshake (PostgreSQL 17 does the same). No ALPN at all is allowed after SSLRequest;
  // direct TLS checks for it after the handshake.
  unsigned char* chosen = nullptr;
  if (SSL_select_next_proto(&chosen, out_length, kAlpn, kAlpnLength, in, in_length) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  *out = chosen;
  return SSL_TLSEXT_ERR_OK;
}

// min_version and ciphers of one side (`path`: "tls.client" or "tls.server").
void common_options(SSL_CTX* ctx, const std::string& path, const std::string& min_version,
                    const std::string& ciphers) {
  SSL_CTX_set_min_proto_version(ctx, min_version == "TLSv1.3" ? TLS1_3_VERSION : TLS1_2_VERSION);
  if (!ciphers.empty() && SSL_CTX_set_cipher_list(ctx, ciphers.c_str()) != 1)
    fail_path(path + ".ciphers", "no usable cipher in \"" + ciphers + "\"");
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  // Idle connections keep no record buffers: thousands of idle TLS clients stay small.
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
}

// tls-server-end-point (RFC 5929): our certificate hashed with its signature's digest, SHA-256
// when that is MD5 or SHA-1 (or has none, like Ed25519, where PostgreSQL also uses SHA-256).
std::string certificate_hash(X509* cert) {
  if (cert == nullptr) return {};
  int digest_nid = NID_undef;
  if (!OBJ_find_sigid_algs(X509_get_signature_nid(cert), &digest_nid, nullptr) ||
      digest_nid == NID_md5 || digest_nid == NID_sha1 || digest_nid == NID_undef)
    digest_nid = NID_sha256;
  const EVP_MD* md = EVP_get_digestbynid(digest_nid);
  if (md == nullptr) md = EVP_sha256();
  std::array<unsigned char, EVP_MAX_MD_SIZE> hash{};
  unsigned int length = 0;
  if (X509_digest(cert, md, hash.data(), &length) != 1) return {};
  return std::string(reinterpret_cast<const char*>(hash.data()), length);
}

}  // namespace

std::shared_ptr<const TlsContexts> build_tls(const config::Config& config) {
  auto contexts = std::make_shared<TlsContexts>();
  const config::ClientTls& c = config.tls_client;
  if (c.mode != config::ClientTlsMode::disable) {
    SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
    if (!ctx) fail_path("tls.client", "cannot create a TLS context");
    common_options(ctx.get(), "tls.client", c.min_version, c.ciphers);
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), c.cert.c_str()) != 1)
      fail_path("tls.client.cert", "cannot load " + c.cert);
    if (SSL_CTX_use_PrivateKey_file(ctx.get(), c.key.c_str(), SSL_FILETYPE_PEM) != 1)
      fail_path("tls.client.key", "cannot load " + c.key);
    if (SSL_CTX_check_private_key(ctx.get()) != 1)
      fail_path("tls.client.key", "does not match tls.client.cert");
    if (!c.ca.empty()) {
      if (SSL_CTX_load_verify_locations(ctx.get(), c.ca.c_str(), nullptr) != 1)
        fail_path("tls.client.ca", "cannot load " + c.ca);
      // Ask for a certificate, check any that comes, but let clients without one in: whether
      // one is needed is the auth rule's business (method cert).
      SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
      if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(c.ca.c_str()))
        SSL_CTX_set_client_CA_list(ctx.get(), names);
    }
    static constexpr unsigned char kSessionContext[] = "pgring";
    SSL_CTX_set_session_id_context(ctx.get(), kSessionContext, sizeof kSessionContext - 1);
    // libpq never resumes a session: like PostgreSQL, keep no session cache and issue no
    // tickets (each would cost an encryption per handshake and memory per client).
    SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx.get(), SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(ctx.get(), 0);
    SSL_CTX_set_alpn_select_cb(ctx.get(), select_alpn, nullptr);
    contexts->client_side = std::move(ctx);
  }
  const config::ServerTls& s = config.tls_server;
  if (s.mode != config::ServerTlsMode::disable) {
    SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
    if (!ctx) fail_path("tls.server", "cannot create a TLS context");
    common_options(ctx.get(), "tls.server", s.min_version, s.ciphers);
    if (!s.ca.empty() && SSL_CTX_load_verify_locations(ctx.get(), s.ca.c_str(), nullptr) != 1)
      fail_path("tls.server.ca", "cannot load " + s.ca);
    if (!s.cert.empty()) {
      if (SSL_CTX_use_certificate_chain_file(ctx.get(), s.cert.c_str()) != 1)
        fail_path("tls.server.cert", "cannot load " + s.cert);
      if (SSL_CTX_use_PrivateKey_file(ctx.get(), s.key.c_str(), SSL_FILETYPE_PEM) != 1)
        fail_path("tls.server.key", "cannot load " + s.key);
    }
    bool verify =
        s.mode == config::ServerTlsMode::verify_ca || s.mode == config::ServerTlsMode::verify_full;
    SSL_CTX_set_verify(ctx.get(), verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
    SSL_CTX_set_alpn_protos(ctx.get(), kAlpn, kAlpnLength);
    contexts->server_side = std::move(ctx);
  }
  ERR_clear_error();
  return contexts;
}

// ---------------------------------------------------------------------------------------------

TlsSession::TlsSession(SSL* ssl)
    : ssl_(ssl), in_(BIO_new(BIO_s_mem())), out_(BIO_new(BIO_s_mem())) {
  // An empty read BIO means "no more yet", not end of file.
  BIO_set_mem_eof_return(in_, -1);
  SSL_set_bio(ssl_, in_, out_);
}

TlsSession::~TlsSession() {
  SSL_free(ssl_);
}

std::unique_ptr<TlsSession> TlsSession::accept(SSL_CTX* ctx) {
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return nullptr;
  std::unique_ptr<TlsSession> session(new TlsSession(ssl));
  SSL_set_accept_state(ssl);
  return session;
}

std::unique_ptr<TlsSession> TlsSession::connect(SSL_CTX* ctx, const std::string& host,
                                                config::ServerTlsMode mode) {
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return nullptr;
  std::unique_ptr<TlsSession> session(new TlsSession(ssl));
  SSL_set_connect_state(ssl);
  unsigned char probe[16];
  bool is_address =
      inet_pton(AF_INET, host.c_str(), probe) == 1 || inet_pton(AF_INET6, host.c_str(), probe) == 1;
  // SNI carries names only (RFC 6066).
  if (!is_address) SSL_set_tlsext_host_name(ssl, host.c_str());
  if (mode == config::ServerTlsMode::verify_full) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    int ok = is_address ? X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str())
                        : SSL_set1_host(ssl, host.c_str());
    if (ok != 1) return nullptr;
  }
  // The ClientHello, ready to send.
  ERR_clear_error();
  int rc = SSL_do_handshake(ssl);
  if (rc != 1 && SSL_get_error(ssl, rc) != SSL_ERROR_WANT_READ) return nullptr;
  return session;
}

bool TlsSession::fail(std::string_view what) {
  error_.assign(what);
  long verify = SSL_get_verify_result(ssl_);
  std::string detail = openssl_error();
  if (verify != X509_V_OK)
    detail = std::string("certificate verify failed: ") + X509_verify_cert_error_string(verify);
  error_ += ": " + detail;
  return false;
}

bool TlsSession::receive(std::string_view ciphertext, std::string& plaintext) {
  ERR_clear_error();
  while (!ciphertext.empty()) {
    int n = BIO_write(in_, ciphertext.data(), static_cast<int>(ciphertext.size()));
    if (n <= 0) return fail("TLS buffer");
    ciphertext.remove_prefix(static_cast<std::size_t>(n));
  }
  if (!handshake_done_) {
    int rc = SSL_do_handshake(ssl_);
    if (rc != 1) {
      int error = SSL_get_error(ssl_, rc);
      if (error == SSL_ERROR_WANT_READ) return true;
      return fail("TLS handshake failed");
    }
    handshake_done_ = true;
  }
  for (;;) {
    // One record at most per call; read into a scratch buffer rather than growing (and
    // zero-filling) `plaintext` by a record's worth each time.
    char record[16384];
    std::size_t got = 0;
    int rc = SSL_read_ex(ssl_, record, sizeof record, &got);
    if (rc == 1) {
      plaintext.append(record, got);
      continue;
    }
    int error = SSL_get_error(ssl_, rc);
    if (error == SSL_ERROR_WANT_READ) return true;
    if (error == SSL_ERROR_ZERO_RETURN) {
      peer_closed_ = true;
      error_ = "peer closed the TLS session";
      return false;
    }
    return fail("TLS error");
  }
}

bool TlsSession::send(std::string_view plaintext) {
  ERR_clear_error();
  while (!plaintext.empty()) {
    std::size_t written = 0;
    if (SSL_write_ex(ssl_, plaintext.data(), plaintext.size(), &written) != 1)
      return fail("TLS write");
    plaintext.remove_prefix(written);
  }
  return true;
}

bool TlsSession::has_output() const {
  return BIO_ctrl_pending(out_) > 0;
}

void TlsSession::trim() {
  constexpr std::size_t kKeep = 1024;
  auto large_and_empty = [](BIO* bio) {
    BUF_MEM* mem = nullptr;
    BIO_get_mem_ptr(bio, &mem);
    return mem != nullptr && mem->max > kKeep && BIO_ctrl_pending(bio) == 0;
  };
  if (large_and_empty(in_)) {
    BIO* fresh = BIO_new(BIO_s_mem());
    if (fresh != nullptr) {
      BIO_set_mem_eof_return(fresh, -1);
      SSL_set0_rbio(ssl_, fresh);  // frees the old one
      in_ = fresh;
    }
  }
  if (large_and_empty(out_)) {
    BIO* fresh = BIO_new(BIO_s_mem());
    if (fresh != nullptr) {
      SSL_set0_wbio(ssl_, fresh);
      out_ = fresh;
    }
  }
}

void TlsSession::take_output(std::string& out) {
  std::size_t pending = BIO_ctrl_pending(out_);
  if (pending == 0) return;
  std::size_t start = out.size();
  out.resize(start + pending);
  int n = BIO_read(out_, out.data() + start, static_cast<int>(pending));
  out.resize(start + static_cast<std::size_t>(n > 0 ? n : 0));
}

std::string TlsSession::alpn() const {
  const unsigned char* data = nullptr;
  unsigned int length = 0;
  SSL_get0_alpn_selected(ssl_, &data, &length);
  return data == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(data), length);
}

std::string TlsSession::end_point_hash() const {
  return certificate_hash(SSL_get_certificate(ssl_));
}

std::string TlsSession::peer_end_point_hash() const {
  return certificate_hash(SSL_get0_peer_certificate(ssl_));
}

std::string_view TlsSession::version() const {
  return SSL_get_version(ssl_);
}

std::string TlsSession::verified_peer_name() const {
  X509* peer = SSL_get0_peer_certificate(ssl_);
  if (peer == nullptr || SSL_get_verify_result(ssl_) != X509_V_OK) return {};
  char name[256] = {};
  int n = X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, name, sizeof name);
  return n > 0 ? std::string(name, static_cast<std::size_t>(n)) : std::string();
}

}  // namespace pgring
