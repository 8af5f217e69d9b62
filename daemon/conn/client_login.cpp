// (split from conn/client.cpp)
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include "daemon/conn/client.hpp"
#include "daemon/conn/server.hpp"
#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/net/tls.hpp"
#include "daemon/pool/pool.hpp"
#include "proto/ascii.hpp"
#include "proto/builders.hpp"
#include "proto/bytes.hpp"
#include "proto/md5.hpp"
#include "proto/messages.hpp"
#include "proto/sql.hpp"

namespace pgring {

namespace {
// Authentication messages are small; PostgreSQL caps them at 65535 (PG_MAX_AUTH_TOKEN_LENGTH).
constexpr std::uint32_t kMaxAuthMessage = 65536;
}  // namespace

// ---- startup ---------------------------------------------------------------------------------

void Client::handle_startup() {
  // Direct TLS (PostgreSQL 17): a TLS ClientHello instead of a startup packet. Its first byte,
  // 0x16, cannot begin a startup packet's length (that would be over 350 MB).
  if (stream_.tls() == nullptr && !login_->negotiated && startup_ == nullptr &&
      stream_.input_size() > 0) {
    char first = 0;
    stream_.peek(&first, 1);
    if (first == 0x16) {
      begin_tls(true);
      return;
    }
  }
  if (TlsSession* tls = stream_.tls()) {
    if (!tls->handshake_done()) return;
    if (login_->direct_tls && tls->alpn() != "postgresql") {
      // Without ALPN the client could be speaking anything over TLS (PostgreSQL refuses too).
      reactor_.close(*this, Reason::tls_error,
                     "direct TLS connection without ALPN protocol \"postgresql\"");
      return;
    }
    if (!login_->peer.tls) ++reactor_.tls_handshakes_[{"client", std::string(tls->version())}];
    login_->peer.tls = true;
  }
  while (state_ == ClientState::startup && stream_.input_size() >= 4) {
    char header[4];
    stream_.peek(header, 4);
    proto::Frame frame = proto::frame_startup(std::string_view(header, 4));
    if (frame.status == proto::FrameStatus::invalid_length) {
      reactor_.close(*this, Reason::protocol_violation, "invalid startup packet length");
      return;
    }
    if (frame.status == proto::FrameStatus::too_large) {
      reactor_.close(*this, Reason::message_too_large,
                     fmt::format("startup packet of {} bytes is larger than the limit of {}",
                                 frame.size, proto::kMaxStartupPacket));
      return;
    }
    if (stream_.input_size() < frame.size) return;
    std::string_view bytes = stream_.contiguous(frame.size);
    proto::StartupPacket packet = proto::classify_startup(bytes);
    if (packet.kind != proto::StartupKind::startup) {
      login_->negotiated = true;
      if (packet.kind == proto::StartupKind::cancel_request) {
        // This connection only carries the request; like PostgreSQL, pgring answers nothing
        // and closes it.
        if (auto request = proto::parse_cancel_request(packet))
          reactor_.cancel(request->pid, request->secret);
        reactor_.close(*this, Reason::cancel_request);
        return;
      }
      stream_.consume(frame.size);
    }
    switch (packet.kind) {
      case proto::StartupKind::ssl_request:
        if (stream_.tls() != nullptr) {
          reactor_.close(*this, Reason::protocol_violation, "SSLRequest inside TLS");
          return;
        }
        if (reactor_.tls().client_side == nullptr) {
          stream_.emit_bytes("N");  // tls.client.mode disable: the client goes on in plain text
          reactor_.want_send(stream_);
          continue;
        }
        stream_.emit_bytes("S");
        begin_tls(false);
        return;
      case proto::StartupKind::gssenc_request:
        // No GSSAPI encryption: 'N', and the client may go on with an SSLRequest or in clear.
        stream_.emit_bytes("N");
        reactor_.want_send(stream_);
        continue;
      case proto::StartupKind::cancel_request:  // answered above
      case proto::StartupKind::unknown:
        reactor_.close(*this, Reason::unsupported_protocol,
                       fmt::format("unsupported frontend protocol {}.{}", packet.code >> 16,
                                   packet.code & 0xffff));
        return;
      case proto::StartupKind::startup:
        break;
    }
    startup_ = reactor_.startups().intern(bytes);
    stream_.consume(frame.size);
    if (startup_ == nullptr) {
      reactor_.close(*this, Reason::protocol_violation, "invalid startup packet");
      return;
    }
    if (login_->refused_too_many) {
      reactor_.close(*this, Reason::too_many_clients,
                     fmt::format("no more connections allowed (max_client_conn {})",
                                 reactor_.config().max_client_conn));
      return;
    }
    if (stream_.input_size() != 0) {
      // A client that gives up at once (a Terminate right behind its startup packet) leaves
      // cleanly, as it would from PostgreSQL. Nothing else may follow the startup packet before
      // we answer it.
      proto::Frame next = stream_.next_frame(kMaxAuthMessage);
      if (next.type == proto::frontend::kTerminate && next.size == stream_.input_size()) {
        reactor_.close(*this, Reason::client_terminate);
        return;
      }
      reactor_.close(*this, Reason::protocol_violation, "unexpected data after the startup packet");
      return;
    }
    if (reactor_.config().tls_client.mode == config::ClientTlsMode::require &&
        stream_.tls() == nullptr && !login_->peer.local) {
      reactor_.close(*this, Reason::tls_required,
                     "TLS is required (tls.client.mode require); connect with sslmode=require");
      return;
    }
    // We speak 3.0 and 3.2 (whose only change is a longer cancel key). Another minor or
    // protocol extensions (_pq_.*) are negotiated down, as PostgreSQL does, instead of failing
    // the client. (Servers are spoken to in 3.0 whatever the client's version.)
    std::vector<std::string_view> unsupported;
    for (const auto& [name, value] : startup_message().params)
      if (name.starts_with("_pq_.")) unsupported.push_back(name);
    std::uint32_t version = proto::negotiated_version(startup_message().version);
    cancel_secret_size_ = version == proto::kProtocol32 ? kLongCancelSecret : 4;
    if (startup_message().version != version || !unsupported.empty())
      (void)stream_.emit([&](std::string& out) {
        return proto::build::negotiate_protocol_version(out, version, unsupported);
      });
    log::debug(
        "C-{} startup user={} database={}{}", id_, startup_message().user,
        startup_message().database,
        stream_.tls() != nullptr ? fmt::format(" ({})", stream_.tls()->version()) : std::string());
    start_auth();
  }
}

void Client::begin_tls(bool direct) {
  SSL_CTX* ctx = reactor_.tls().client_side.get();
  if (ctx == nullptr) {
    // tls.client.mode disable: the bytes cannot be a startup packet either.
    reactor_.close(*this, Reason::tls_error,
                   "direct TLS connection, but TLS is not enabled (tls.client.mode)");
    return;
  }
  if (stream_.input_size() != 0 && !direct) {
    // Bytes sent before our 'S' was read could be injected by a man in the middle and would be
    // taken as coming through TLS (CVE-2021-23222).
    reactor_.close(*this, Reason::protocol_violation, "received unencrypted data after SSLRequest");
    return;
  }
  login_->direct_tls = direct;
  reactor_.note_tls_handshake();
  std::unique_ptr<TlsSession> session = TlsSession::accept(ctx);
  bool ok = session != nullptr && stream_.start_tls(std::move(session));
  reactor_.want_send(stream_);
  if (!ok) {
    reactor_.close(
        *this, Reason::tls_error,
        stream_.tls() != nullptr ? stream_.tls()->error() : std::string("cannot start TLS"));
    return;
  }
  if (stream_.input_size() > 0) handle_startup();  // the handshake finished with the first bytes
}

// ---- authentication --------------------------------------------------------------------------

void Client::start_auth() {
  const config::Config& cfg = reactor_.config();
  std::string_view user_name = startup_message().user;
  config::Config::AuthChoice choice =
      // (The console's "pgbouncer" name is matched as "pgring": one set of rules guards it.)
      cfg.choose_auth(admin_database(cfg) ? kAdminDatabase : startup_message().database, user_name,
                      login_->peer);
  user_ = cfg.find_user(user_name);
  reactor_.set_state(*this, ClientState::auth);
  switch (choice.method) {
    case config::AuthMethod::reject:
      reactor_.close(
          *this, Reason::auth_rejected,
          choice.rule.empty()
              ? fmt::format("no auth rule allows user \"{}\" to database \"{}\" from {}{}",
                            user_name, startup_message().database,
                            login_->peer.local ? "the unix socket" : peer_,
                            login_->peer.tls ? " with TLS" : " without TLS")
              : fmt::format("{} rejects user \"{}\"", choice.rule, user_name));
      return;
    case config::AuthMethod::trust:
    case config::AuthMethod::cert:
      // Without a password to check, only configured users may log in, unless none are.
      if (user_ == nullptr && !cfg.users.empty()) {
        reactor_.close(*this, Reason::unknown_user, fmt::format("no such user \"{}\"", user_name));
        return;
      }
      if (choice.method == config::AuthMethod::cert) {
        std::string name =
            stream_.tls() != nullptr ? stream_.tls()->verified_peer_name() : std::string();
        if (name.empty() || name != user_name) {
          reactor_.close(
              *this, Reason::cert_auth_failed,
              fmt::format("certificate authentication failed for user \"{}\"{}", user_name,
                          name.empty() ? ": no valid client certificate" : ""));
          return;
        }
      }
      auth_ok();
      return;
    case config::AuthMethod::md5:
    case config::AuthMethod::scram_sha_256:
      login_->auth_method = choice.method;
      // Not in users: (or there without a password) its secret comes from the server
      // (auth.query), cached for a while. The admin console never trusts a looked-up role: its
      // users must be configured with a password.
      if (reactor_.secret_looked_up(user_name) && !admin_database(cfg)) {
        if (const config::User* cached =
                reactor_.cached_lookup(startup_message().database, user_name)) {
          user_ = cached;
        } else {
          reactor_.look_up(*this);
          return;
        }
      }
      if (user_ == nullptr) {
        reactor_.close(*this, Reason::unknown_user, fmt::format("no such user \"{}\"", user_name));
        return;
      }
      if (user_->password.empty()) {
        reactor_.close(*this, Reason::auth_failed,
                       fmt::format("password authentication failed for user \"{}\"", user_name));
        return;
      }
      start_password_auth(choice.method);
      return;
  }
}

void Client::on_lookup_done(std::optional<std::string> secret, const std::string& error) {
  std::string_view user_name = startup_message().user;
  reactor_.resume_reading(*this);  // the password may already be waiting
  if (!error.empty()) {
    // The details are for the operator: the client has not proven anything yet.
    log::warning("C-{} auth.query for user \"{}\" failed: {}", id_, user_name, error);
    reactor_.close(*this, Reason::auth_query_failed,
                   "authentication failed: the user could not be looked up");
    return;
  }
  config::SecretKind kind = secret ? config::classify_secret(*secret) : config::SecretKind::none;
  if (kind == config::SecretKind::scram && !proto::scram::parse_secret(*secret))
    kind = config::SecretKind::none;
  if (secret && !secret->empty() && kind == config::SecretKind::none)
    log::warning("C-{} auth.query returned a malformed SCRAM secret for user \"{}\"", id_,
                 user_name);
  if (!secret || secret->empty() || kind == config::SecretKind::none) {
    // No such user, no password, or a secret pgring cannot use: go through the motions with a
    // secret nobody knows, so that a stranger cannot tell which roles exist.
    user_ = nullptr;
    start_password_auth(login_->auth_method);
    return;
  }
  user_ = &reactor_.store_lookup(startup_message().database, user_name, std::move(*secret), kind);
  start_password_auth(login_->auth_method);
}

void Client::start_password_auth(config::AuthMethod method) {
  if (user_ != nullptr && user_->secret_kind == config::SecretKind::md5 &&
      method == config::AuthMethod::scram_sha_256) {
    // Like PostgreSQL: an md5 secret cannot answer scram-sha-256. The client learns no more
    // than from a wrong password.
    log::info("C-{} user \"{}\" has an md5 secret, which auth method scram-sha-256 cannot use", id_,
              user_->name);
    user_ = nullptr;
  }
  login_->auth = std::make_unique<AuthState>();
  AuthState& auth = *login_->auth;
  if (user_ == nullptr) {
    // The mock exchange: a SCRAM secret nobody knows, salted per user name like a real one.
    auth.mock = reactor_.mock_secret(startup_message().user);
  } else {
    auth.secret = user_->password;
  }
  // Use what the stored secret allows: an MD5 secret cannot answer SCRAM and a SCRAM secret
  // cannot answer MD5 (PostgreSQL makes the same choice).
  bool use_scram = user_ == nullptr || user_->secret_kind == config::SecretKind::scram ||
                   (method == config::AuthMethod::scram_sha_256 &&
                    user_->secret_kind != config::SecretKind::md5);
  if (use_scram) {
    auth.step = AuthState::Step::scram_first;
    // Over TLS, channel binding is offered first: a client that can bind will.
    auth.offered_plus = stream_.tls() != nullptr;
    (void)stream_.emit([&](std::string& out) {
      return auth.offered_plus ? proto::build::authentication_sasl(
                                     out, proto::scram::kMechanismPlus, proto::scram::kMechanism)
                               : proto::build::authentication_sasl(out, proto::scram::kMechanism);
    });
  } else {
    auth.step = AuthState::Step::md5;
    RAND_bytes(reinterpret_cast<unsigned char*>(auth.md5_salt.data()), 4);
    (void)stream_.emit([&](std::string& out) {
      return proto::build::authentication_md5(out, std::string_view(auth.md5_salt.data(), 4));
    });
  }
  reactor_.want_send(stream_);
}

void Client::handle_auth() {
  // Null while auth.query still runs: the password waits in the input.
  if (login_->auth == nullptr) return;
  AuthState& auth = *login_->auth;
  proto::Frame frame;
  while (state_ == ClientState::auth && frame_next(frame, kMaxAuthMessage)) {
    std::string_view whole = stream_.contiguous(frame.size);
    std::string_view body = whole.substr(5);
    if (frame.type != proto::frontend::kPassword) {
      if (frame.type == proto::frontend::kTerminate) {
        reactor_.close(*this, Reason::client_terminate);
        return;
      }
      reactor_.close(*this, Reason::protocol_violation,
                     fmt::format("expected a password message, got '{}'", frame.type));
      return;
    }
    std::string_view user_name = startup_message().user;
    switch (auth.step) {
      case AuthState::Step::md5: {
        auto password = proto::parse_password_message(body);
        std::string expected = user_->secret_kind == config::SecretKind::md5
                                   ? proto::md5::response_from_secret(auth.secret, auth.md5_salt)
                                   : proto::md5::response(user_name, auth.secret, auth.md5_salt);
        bool good = password && proto::scram::timing_safe_equal(*password, expected);
        stream_.consume(frame.size);
        if (!good) {
          reactor_.close(*this, Reason::auth_failed,
                         fmt::format("password authentication failed for user \"{}\"", user_name));
          return;
        }
        auth_ok();
        return;
      }
      case AuthState::Step::scram_first: {
        auto initial = proto::parse_sasl_initial_response(body);
        std::optional<proto::scram::ClientFirst> first;
        bool plus =
            initial && initial->mechanism == proto::scram::kMechanismPlus && auth.offered_plus;
        if (initial && (initial->mechanism == proto::scram::kMechanism || plus))
          first = proto::scram::parse_client_first(initial->data);
        stream_.consume(frame.size);
        if (!first || first->binds() != plus) {
          reactor_.close(*this, Reason::protocol_violation,
                         first ? "SCRAM channel binding does not match the mechanism chosen"
                               : "malformed SCRAM client-first-message");
          return;
        }
        if (first->could_bind() && auth.offered_plus) {
          // The client can bind and we offered it: someone removed -PLUS from our offer.
          reactor_.close(*this, Reason::auth_failed,
                         "SCRAM channel binding was offered but the client says it was not");
          return;
        }
        unsigned char nonce_raw[18];
        RAND_bytes(nonce_raw, sizeof nonce_raw);
        std::string server_nonce = proto::scram::base64_encode(
            std::string_view(reinterpret_cast<char*>(nonce_raw), sizeof nonce_raw));
        const proto::scram::Secret& secret =
            auth.mock ? *auth.mock : reactor_.scram_secret_for(*user_);
        auth.scram_first = std::move(*first);
        auth.server_first = proto::scram::server_first(auth.scram_first, server_nonce, secret);
        auth.step = AuthState::Step::scram_final;
        (void)stream_.emit([&](std::string& out) {
          return proto::build::authentication_sasl_continue(out, auth.server_first);
        });
        reactor_.want_send(stream_);
        break;
      }
      case AuthState::Step::scram_final: {
        const proto::scram::Secret& secret =
            auth.mock ? *auth.mock : reactor_.scram_secret_for(*user_);
        std::string binding;
        if (auth.scram_first.binds() && stream_.tls() != nullptr)
          binding = stream_.tls()->end_point_hash();
        proto::scram::Key client_key{};
        auto final_message = proto::scram::verify_client_final(auth.scram_first, auth.server_first,
                                                               body, secret, &client_key, binding);
        stream_.consume(frame.size);
        // A mock exchange fails, whatever came (by construction).
        if (!final_message || auth.mock) {
          reactor_.close(*this, Reason::auth_failed,
                         fmt::format("password authentication failed for user \"{}\"", user_name));
          return;
        }
        // Checked against a stored SCRAM secret: the ClientKey is what logs in to the server.
        if (user_ != nullptr && user_->secret_kind == config::SecretKind::scram)
          reactor_.shared().remember_client_key(user_->name, user_->password, client_key);
        OPENSSL_cleanse(client_key.data(), client_key.size());
        (void)stream_.emit([&](std::string& out) {
          return proto::build::authentication_sasl_final(out, *final_message);
        });
        auth_ok();
        return;
      }
    }
  }
}

namespace {
// The `replication` startup parameter: false as PostgreSQL's parse_bool reads it (f, fa, ...,
// false, n, no, of, off, 0, any case) is an ordinary connection; true, "database" or anything
// else asks for a walsender (PostgreSQL itself refuses a value it cannot read, at login).
bool asks_replication(std::string_view value) {
  if (value.empty()) return false;
  std::string v(value);
  for (char& c : v) c = static_cast<char>(proto::ascii_lower(c));
  auto prefix_of = [&](std::string_view word, std::size_t min) {
    return v.size() >= min && v.size() <= word.size() && word.substr(0, v.size()) == v;
  };
  bool is_false = prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || v == "0";
  return !is_false;
}
}  // namespace

void Client::auth_ok() {
  reactor_.end_login(*this);  // authenticated: its turn of max_concurrent_logins is over
  login_.reset();  // logged in: the peer, the auth rule's choice and the exchange are done with
  (void)stream_.emit([](std::string& out) { return proto::build::authentication_ok(out); });
  reactor_.want_send(stream_);
  const config::Config& cfg = reactor_.config();
  // The database is checked after authentication so that unauthenticated clients cannot probe
  // which databases exist.
  if (admin_database(cfg)) {
    admin_login();
    return;
  }
  std::optional<config::Database> db = cfg.database_for(startup_message().database);
  if (!db) {
    reactor_.close(*this, Reason::unknown_database,
                   fmt::format("database \"{}\" does not exist", startup_message().database));
    return;
  }
  if (reactor_.disabled(db->name)) {
    // As PostgreSQL answers for a database with datallowconn false.
    reactor_.close(
        *this, Reason::database_disabled,
        fmt::format("database \"{}\" is not currently accepting connections (DISABLE)", db->name));
    return;
  }
  // replication=true|database (pg_receivewal, logical replication clients): passed through on
  // a server connection of its own (false, off, no, 0: an ordinary connection, as PostgreSQL
  // takes them).
  bool replicates = asks_replication(startup_message().find("replication"));
  take_startup_settings();
  reactor_.login_done(*this);
  reactor_.register_cancel_key(*this);
  log::event(cfg.log_connections ? config::LogLevel::info : config::LogLevel::debug,
             {.event = "client_login",
              .client = id_,
              .server = 0,
              .database = db->name,
              .user = startup_message().user,
              .peer = peer_,
              .reason = {},
              .sqlstate = {},
              .duration_ms =
                  std::chrono::duration<double, std::milli>(reactor_.now() - connected_).count()},
             "C-{} login db={} user={} from {}", id_, db->name, startup_message().user, peer_);
  Pool& pool = reactor_.pool_for(*db, user_, startup_message().user, replicates);
  if (std::string refusal = reactor_.admit_client(*this, pool); !refusal.empty()) {
    reactor_.close(*this, Reason::too_many_clients, refusal);
    return;
  }
  pool.add_client(*this);
}

}  // namespace pgring
