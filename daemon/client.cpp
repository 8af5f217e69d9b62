#include "daemon/client.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include "daemon/log.hpp"
#include "daemon/pool.hpp"
#include "daemon/reactor.hpp"
#include "daemon/server.hpp"
#include "daemon/tls.hpp"
#include "proto/builders.hpp"
#include "proto/md5.hpp"
#include "proto/messages.hpp"
#include "proto/bytes.hpp"
#include "proto/sql.hpp"

namespace pgring {

namespace {
// Authentication messages are small; PostgreSQL caps them at 65535 (PG_MAX_AUTH_TOKEN_LENGTH).
constexpr std::uint32_t kMaxAuthMessage = 65536;
// Query and Parse messages up to this size are read whole to look for session state; larger
// ones (bulk INSERTs) stream through unread.
constexpr std::uint32_t kMaxInspectedQuery = 64u << 10;
constexpr std::string_view kAdminDatabase = "pgring";
}  // namespace

std::string_view to_string(ClientState state) {
  switch (state) {
    case ClientState::startup: return "startup";
    case ClientState::auth: return "auth";
    case ClientState::idle: return "idle";
    case ClientState::waiting: return "waiting";
    case ClientState::active: return "active";
    case ClientState::closing: return "closing";
  }
  return "?";
}

Client::Client(Reactor& reactor, std::uint64_t id, int fd, std::string peer)
    : reactor_(reactor),
      id_(id),
      stream_(reactor.buffers(), Operation::Kind::client_recv, Operation::Kind::client_send, this),
      peer_(std::move(peer)) {
  stream_.fd = fd;
}

bool Client::frame_next(proto::Frame& frame, std::uint32_t max_size) {
  if (stream_.input_size() < 5) return false;
  char header[5];
  stream_.peek(header, 5);
  frame = proto::frame_message(std::string_view(header, 5), max_size);
  if (frame.status == proto::FrameStatus::invalid_length) {
    reactor_.close(*this, Reason::protocol_violation, "invalid message length");
    return false;
  }
  if (frame.status == proto::FrameStatus::too_large) {
    reactor_.close(*this, Reason::message_too_large,
                   fmt::format("message of {} bytes is larger than the limit of {}", frame.size, max_size));
    return false;
  }
  return stream_.input_size() >= frame.size;
}

// ---- startup ---------------------------------------------------------------------------------

void Client::handle_startup() {
  // Direct TLS (PostgreSQL 17): a TLS ClientHello instead of a startup packet. Its first byte,
  // 0x16, cannot begin a startup packet's length (that would be over 350 MB).
  if (stream_.tls() == nullptr && startup_packet_.empty() && stream_.input_size() > 0) {
    char first = 0;
    stream_.peek(&first, 1);
    if (first == 0x16) {
      begin_tls(true);
      return;
    }
  }
  if (TlsSession* tls = stream_.tls()) {
    if (!tls->handshake_done()) return;
    if (direct_tls_ && tls->alpn() != "postgresql") {
      // Without ALPN the client could be speaking anything over TLS (PostgreSQL refuses too).
      reactor_.close(*this, Reason::tls_error, "direct TLS connection without ALPN protocol \"postgresql\"");
      return;
    }
    peer_info_.tls = true;
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
                     fmt::format("startup packet of {} bytes is larger than the limit of {}", frame.size,
                                 proto::kMaxStartupPacket));
      return;
    }
    if (stream_.input_size() < frame.size) return;
    startup_packet_.assign(stream_.contiguous(frame.size));
    stream_.consume(frame.size);
    proto::StartupPacket packet = proto::classify_startup(startup_packet_);
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
      case proto::StartupKind::cancel_request: {
        // This connection only carries the request; like PostgreSQL, pgring answers nothing
        // and closes it.
        if (auto request = proto::parse_cancel_request(packet)) reactor_.cancel(request->pid, request->secret);
        reactor_.close(*this, Reason::cancel_request);
        return;
      }
      case proto::StartupKind::unknown:
        reactor_.close(*this, Reason::unsupported_protocol,
                       fmt::format("unsupported frontend protocol {}.{}", packet.code >> 16, packet.code & 0xffff));
        return;
      case proto::StartupKind::startup: break;
    }
    auto message = proto::parse_startup_message(packet);
    if (!message) {
      reactor_.close(*this, Reason::protocol_violation, "invalid startup packet");
      return;
    }
    startup_message_ = *message;
    if (refused_too_many_) {
      reactor_.close(*this, Reason::too_many_clients,
                     fmt::format("no more connections allowed (max_client_conn {})", reactor_.config().max_client_conn));
      return;
    }
    if (stream_.input_size() != 0) {
      // Nothing may follow the startup packet before we answer it.
      reactor_.close(*this, Reason::protocol_violation, "unexpected data after the startup packet");
      return;
    }
    if (reactor_.config().tls_client.mode == config::ClientTlsMode::require && stream_.tls() == nullptr &&
        !peer_info_.local) {
      reactor_.close(*this, Reason::tls_required, "TLS is required (tls.client.mode require); connect with sslmode=require");
      return;
    }
    // We speak 3.0. A newer minor or protocol extensions (_pq_.*) are negotiated down, as
    // PostgreSQL does, instead of failing the client.
    std::vector<std::string_view> unsupported;
    for (const auto& [name, value] : startup_message_.params)
      if (name.starts_with("_pq_.")) unsupported.push_back(name);
    if (startup_message_.version != proto::kProtocol30 || !unsupported.empty())
      (void)stream_.emit([&](std::string& out) {
        return proto::build::negotiate_protocol_version(out, proto::kProtocol30, unsupported);
      });
    log::debug("C-{} startup user={} database={}{}", id_, startup_message_.user, startup_message_.database,
               stream_.tls() != nullptr ? fmt::format(" ({})", stream_.tls()->version()) : std::string());
    start_auth();
  }
}

void Client::begin_tls(bool direct) {
  SSL_CTX* ctx = reactor_.tls().client_side.get();
  if (ctx == nullptr) {
    // tls.client.mode disable: the bytes cannot be a startup packet either.
    reactor_.close(*this, Reason::tls_error, "direct TLS connection, but TLS is not enabled (tls.client.mode)");
    return;
  }
  if (stream_.input_size() != 0 && !direct) {
    // Bytes sent before our 'S' was read could be injected by a man in the middle and would be
    // taken as coming through TLS (CVE-2021-23222).
    reactor_.close(*this, Reason::protocol_violation, "received unencrypted data after SSLRequest");
    return;
  }
  direct_tls_ = direct;
  reactor_.note_tls_handshake();
  std::unique_ptr<TlsSession> session = TlsSession::accept(ctx);
  bool ok = session != nullptr && stream_.start_tls(std::move(session));
  reactor_.want_send(stream_);
  if (!ok) {
    reactor_.close(*this, Reason::tls_error,
                   stream_.tls() != nullptr ? stream_.tls()->error() : std::string("cannot start TLS"));
    return;
  }
  if (stream_.input_size() > 0) handle_startup();  // the handshake finished with the first bytes
}

// ---- authentication --------------------------------------------------------------------------

void Client::start_auth() {
  const config::Config& cfg = reactor_.config();
  std::string_view user_name = startup_message_.user;
  config::Config::AuthChoice choice = cfg.choose_auth(startup_message_.database, user_name, peer_info_);
  user_ = cfg.find_user(user_name);
  state_ = ClientState::auth;
  state_since_ = reactor_.now();
  switch (choice.method) {
    case config::AuthMethod::reject:
      reactor_.close(*this, Reason::auth_rejected,
                     choice.rule.empty()
                         ? fmt::format("no auth rule allows user \"{}\" to database \"{}\" from {}{}", user_name,
                                       startup_message_.database, peer_info_.local ? "the unix socket" : peer_,
                                       peer_info_.tls ? " with TLS" : " without TLS")
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
        std::string name = stream_.tls() != nullptr ? stream_.tls()->verified_peer_name() : std::string();
        if (name.empty() || name != user_name) {
          reactor_.close(*this, Reason::cert_auth_failed,
                         fmt::format("certificate authentication failed for user \"{}\"{}", user_name,
                                     name.empty() ? ": no valid client certificate" : ""));
          return;
        }
      }
      auth_ok();
      return;
    case config::AuthMethod::md5:
    case config::AuthMethod::scram_sha_256:
      auth_method_ = choice.method;
      // Not in users: its secret comes from the server (auth.query), cached for a while. The
      // admin console never trusts a looked-up role: its users must be configured.
      if (user_ == nullptr && cfg.auth_query && startup_message_.database != kAdminDatabase) {
        if (const config::User* cached = reactor_.cached_lookup(startup_message_.database, user_name)) {
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
  std::string_view user_name = startup_message_.user;
  reactor_.resume_reading(*this);  // the password may already be waiting
  if (!error.empty()) {
    // The details are for the operator: the client has not proven anything yet.
    log::warning("C-{} auth.query for user \"{}\" failed: {}", id_, user_name, error);
    reactor_.close(*this, Reason::auth_query_failed, "authentication failed: the user could not be looked up");
    return;
  }
  config::SecretKind kind = secret ? config::classify_secret(*secret) : config::SecretKind::none;
  if (kind == config::SecretKind::scram && !proto::scram::parse_secret(*secret)) kind = config::SecretKind::none;
  if (secret && !secret->empty() && kind == config::SecretKind::none)
    log::warning("C-{} auth.query returned a malformed SCRAM secret for user \"{}\"", id_, user_name);
  if (!secret || secret->empty() || kind == config::SecretKind::none) {
    // No such user, no password, or a secret pgring cannot use: go through the motions with a
    // secret nobody knows, so that a stranger cannot tell which roles exist.
    user_ = nullptr;
    start_password_auth(auth_method_);
    return;
  }
  user_ = &reactor_.store_lookup(startup_message_.database, user_name, std::move(*secret), kind);
  start_password_auth(auth_method_);
}

void Client::start_password_auth(config::AuthMethod method) {
  if (user_ != nullptr && user_->secret_kind == config::SecretKind::md5 && method == config::AuthMethod::scram_sha_256) {
    // Like PostgreSQL: an md5 secret cannot answer scram-sha-256. The client learns no more
    // than from a wrong password.
    log::info("C-{} user \"{}\" has an md5 secret, which auth method scram-sha-256 cannot use", id_, user_->name);
    user_ = nullptr;
  }
  auth_ = std::make_unique<AuthState>();
  if (user_ == nullptr) {
    // The mock exchange: a SCRAM secret nobody knows, salted per user name like a real one.
    auth_->mock = reactor_.mock_secret(startup_message_.user);
  } else {
    auth_->secret = user_->password;
  }
  // Use what the stored secret allows: an MD5 secret cannot answer SCRAM and a SCRAM secret
  // cannot answer MD5 (PostgreSQL makes the same choice).
  bool use_scram = user_ == nullptr || user_->secret_kind == config::SecretKind::scram ||
                   (method == config::AuthMethod::scram_sha_256 && user_->secret_kind != config::SecretKind::md5);
  if (use_scram) {
    auth_->step = AuthState::Step::scram_first;
    // Over TLS, channel binding is offered first: a client that can bind will.
    auth_->offered_plus = stream_.tls() != nullptr;
    (void)stream_.emit([&](std::string& out) {
      return auth_->offered_plus
                 ? proto::build::authentication_sasl(out, proto::scram::kMechanismPlus, proto::scram::kMechanism)
                 : proto::build::authentication_sasl(out, proto::scram::kMechanism);
    });
  } else {
    auth_->step = AuthState::Step::md5;
    RAND_bytes(reinterpret_cast<unsigned char*>(auth_->md5_salt.data()), 4);
    (void)stream_.emit([&](std::string& out) {
      return proto::build::authentication_md5(out, std::string_view(auth_->md5_salt.data(), 4));
    });
  }
  reactor_.want_send(stream_);
}

void Client::handle_auth() {
  if (auth_ == nullptr) return;  // auth.query still running: the password waits in the input
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
    std::string_view user_name = startup_message_.user;
    switch (auth_->step) {
      case AuthState::Step::md5: {
        auto password = proto::parse_password_message(body);
        std::string expected = user_->secret_kind == config::SecretKind::md5
                                   ? proto::md5::response_from_secret(auth_->secret, auth_->md5_salt)
                                   : proto::md5::response(user_name, auth_->secret, auth_->md5_salt);
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
        bool plus = initial && initial->mechanism == proto::scram::kMechanismPlus && auth_->offered_plus;
        if (initial && (initial->mechanism == proto::scram::kMechanism || plus))
          first = proto::scram::parse_client_first(initial->data);
        stream_.consume(frame.size);
        if (!first || first->binds() != plus) {
          reactor_.close(*this, Reason::protocol_violation,
                         first ? "SCRAM channel binding does not match the mechanism chosen"
                               : "malformed SCRAM client-first-message");
          return;
        }
        if (first->could_bind() && auth_->offered_plus) {
          // The client can bind and we offered it: someone removed -PLUS from our offer.
          reactor_.close(*this, Reason::auth_failed, "SCRAM channel binding was offered but the client says it was not");
          return;
        }
        unsigned char nonce_raw[18];
        RAND_bytes(nonce_raw, sizeof nonce_raw);
        std::string server_nonce =
            proto::scram::base64_encode(std::string_view(reinterpret_cast<char*>(nonce_raw), sizeof nonce_raw));
        const proto::scram::Secret& secret = auth_->mock ? *auth_->mock : reactor_.scram_secret_for(*user_);
        auth_->scram_first = std::move(*first);
        auth_->server_first = proto::scram::server_first(auth_->scram_first, server_nonce, secret);
        auth_->step = AuthState::Step::scram_final;
        (void)stream_.emit([&](std::string& out) {
          return proto::build::authentication_sasl_continue(out, auth_->server_first);
        });
        reactor_.want_send(stream_);
        break;
      }
      case AuthState::Step::scram_final: {
        const proto::scram::Secret& secret = auth_->mock ? *auth_->mock : reactor_.scram_secret_for(*user_);
        std::string binding;
        if (auth_->scram_first.binds() && stream_.tls() != nullptr) binding = stream_.tls()->end_point_hash();
        proto::scram::Key client_key{};
        auto final_message =
            proto::scram::verify_client_final(auth_->scram_first, auth_->server_first, body, secret, &client_key, binding);
        stream_.consume(frame.size);
        if (!final_message || auth_->mock) {  // a mock exchange fails, whatever came (by construction)
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

void Client::auth_ok() {
  auth_.reset();
  (void)stream_.emit([](std::string& out) { return proto::build::authentication_ok(out); });
  reactor_.want_send(stream_);
  const config::Config& cfg = reactor_.config();
  // The database is checked after authentication so that unauthenticated clients cannot probe
  // which databases exist.
  if (startup_message_.database == kAdminDatabase) {
    admin_login();
    return;
  }
  const config::Database* db = cfg.find_database(startup_message_.database);
  if (db == nullptr) {
    reactor_.close(*this, Reason::unknown_database,
                   fmt::format("database \"{}\" does not exist", startup_message_.database));
    return;
  }
  if (!startup_message_.find("replication").empty()) {
    reactor_.close(*this, Reason::feature_not_supported, "replication connections are not supported");
    return;
  }
  take_startup_settings();
  reactor_.login_done(*this);
  reactor_.register_cancel_key(*this);
  log::info("C-{} login db={} user={} from {}", id_, db->name, startup_message_.user, peer_);
  Pool& pool = reactor_.pool_for(*db, user_, startup_message_.user);
  if (std::string refusal = reactor_.admit_client(*this, pool); !refusal.empty()) {
    reactor_.close(*this, Reason::too_many_clients, refusal);
    return;
  }
  pool.add_client(*this);
}

void Client::admin_login() {
  const config::Config& cfg = reactor_.config();
  auto listed = [&](const std::vector<std::string>& users) {
    return std::find(users.begin(), users.end(), startup_message_.user) != users.end();
  };
  if (listed(cfg.admin_users)) admin_ = AdminRole::admin;
  else if (listed(cfg.stats_users)) admin_ = AdminRole::stats;
  else {
    reactor_.close(*this, Reason::admin_denied,
                   fmt::format("user \"{}\" may not use the admin console (admin.users, admin.stats_users)",
                               startup_message_.user));
    return;
  }
  reactor_.login_done(*this);
  reactor_.register_cancel_key(*this);
  log::info("C-{} admin login user={} from {}", id_, startup_message_.user, peer_);
  state_ = ClientState::idle;
  state_since_ = reactor_.now();
  reactor_.admin_clients_.push_back(this);
  send_welcome({{"server_version", "15.0 (pgring " PGRING_VERSION ")"}, {"server_encoding", "UTF8"},
                {"client_encoding", "UTF8"}, {"DateStyle", "ISO, MDY"}, {"integer_datetimes", "on"},
                {"standard_conforming_strings", "on"}, {"TimeZone", "UTC"}, {"application_name", ""}});
}

void Client::handle_admin() {
  // Simple Query only; anything else gets an error, then ReadyForQuery at its Sync.
  proto::Frame frame;
  while (state_ == ClientState::idle && frame_next(frame, kMaxInspectedQuery)) {
    std::string_view body = stream_.contiguous(frame.size).substr(5);
    switch (frame.type) {
      case proto::frontend::kTerminate:
        stream_.consume(frame.size);
        reactor_.close(*this, Reason::client_terminate);
        return;
      case proto::frontend::kQuery: {
        auto sql = proto::parse_query(body);
        std::string text(sql.value_or(""));
        stream_.consume(frame.size);
        reactor_.admin_query(*this, text);
        break;
      }
      case proto::frontend::kSync:
        stream_.consume(frame.size);
        (void)stream_.emit([](std::string& out) { return proto::build::ready_for_query(out, 'I'); });
        reactor_.want_send(stream_);
        break;
      default:
        stream_.consume(frame.size);
        if (!admin_error_sent_) {
          admin_error_sent_ = true;
          (void)stream_.emit([](std::string& out) {
            return proto::build::error_response(out, "ERROR", "0A000",
                                                "pgring: the admin console speaks the simple query protocol only");
          });
          reactor_.want_send(stream_);
        }
        continue;
    }
    admin_error_sent_ = false;
  }
}

namespace {
char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c | 0x20) : c; }

bool iequal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  return true;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = ascii_lower(c);
  return out;
}

// Order-independent fingerprint of a session: equal sessions, equal fingerprints.
std::uint64_t fingerprint(const std::vector<std::pair<std::string, std::string>>& params,
                          const std::vector<std::pair<std::string, std::string>>& settings) {
  std::uint64_t h = 0;
  auto mix = [](std::string_view name, std::string_view value, std::uint64_t salt) {
    std::uint64_t x = 1469598103934665603ull ^ salt;  // FNV-1a over lower(name) '=' value
    for (char c : name) x = (x ^ static_cast<unsigned char>(ascii_lower(c))) * 1099511628211ull;
    x = (x ^ '=') * 1099511628211ull;
    for (char c : value) x = (x ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    return x;
  };
  for (const auto& [n, v] : params) h ^= mix(n, v, 0x5151);
  for (const auto& [n, v] : settings) h ^= mix(n, v, 0xa3a3);
  return h;
}

using NameValues = std::vector<std::pair<std::string, std::string>>;

const std::string* find_value(const NameValues& list, std::string_view name) {
  for (const auto& [k, v] : list)
    if (iequal(k, name)) return &v;
  return nullptr;
}

void put_value(NameValues& list, std::string_view name, std::string_view value) {
  for (auto& [k, v] : list) {
    if (iequal(k, name)) {
      v.assign(value);
      return;
    }
  }
  list.emplace_back(std::string(name), std::string(value));
}

// Reported parameters that describe the server or the login itself: never SET by pgring.
bool restorable(std::string_view name) {
  for (std::string_view fixed : {"server_version", "server_encoding", "integer_datetimes", "is_superuser",
                                 "session_authorization", "in_hot_standby", "scram_iterations"})
    if (iequal(name, fixed)) return false;
  return true;
}

// The startup `options` parameter: backend command-line switches, space separated, with
// backslash escapes. pgring honours "-c name=value" and "--name=value".
std::vector<std::pair<std::string, std::string>> parse_options(std::string_view options) {
  std::vector<std::string> words;
  std::string word;
  bool have = false;
  for (std::size_t i = 0; i < options.size(); ++i) {
    char c = options[i];
    if (c == '\\' && i + 1 < options.size()) {
      word.push_back(options[++i]);
      have = true;
    } else if (c == ' ' || c == '\t') {
      if (have) words.push_back(std::move(word));
      word.clear();
      have = false;
    } else {
      word.push_back(c);
      have = true;
    }
  }
  if (have) words.push_back(std::move(word));
  std::vector<std::pair<std::string, std::string>> out;
  for (std::size_t i = 0; i < words.size(); ++i) {
    std::string_view setting;
    if (words[i] == "-c" && i + 1 < words.size()) setting = words[++i];
    else if (words[i].starts_with("-c")) setting = std::string_view(words[i]).substr(2);
    else if (words[i].starts_with("--")) setting = std::string_view(words[i]).substr(2);
    else continue;
    auto eq = setting.find('=');
    if (eq == std::string_view::npos || eq == 0) continue;
    std::string name = lower(setting.substr(0, eq));
    for (char& c : name)
      if (c == '-') c = '_';
    out.emplace_back(std::move(name), std::string(setting.substr(eq + 1)));
  }
  return out;
}
}  // namespace

void Client::take_startup_settings() {
  // Every other startup parameter is a setting for the session (as PostgreSQL treats them):
  // applied with SET on the first server, then tracked like any SET of the client.
  auto add = [&](std::string_view name, std::string_view value) {
    put_value(settings_, lower(name), proto::sql::quote_literal(value));
    put_value(params_, name, value);  // for the welcome; the server's report replaces it
    put_value(startup_values_, name, value);
  };
  // RESET ALL and DISCARD ALL return to these, as PostgreSQL returns to the startup values.
  for (const auto& [name, value] : startup_message_.params) {
    if (name == "options") {
      for (const auto& [n, v] : parse_options(value)) add(n, v);
    } else if (name != "replication" && !name.starts_with("_pq_.")) {
      add(name, value);
    }
  }
  startup_settings_ = settings_;
}

void Client::send_welcome(const std::vector<std::pair<std::string, std::string>>& base) {
  welcomed_ = true;
  bool ok = true;
  // The server's values, overlaid with what this client asked for.
  for (const auto& [name, value] : base) {
    const std::string* mine = find_value(params_, name);
    const std::string& v = mine != nullptr ? *mine : value;
    ok &= stream_.emit([&](std::string& out) { return proto::build::parameter_status(out, name, v); });
  }
  ok &= stream_.emit([&](std::string& out) {
    return proto::build::backend_key_data(out, cancel_pid_, std::string_view(cancel_secret_.data(), 4));
  });
  ok &= stream_.emit([&](std::string& out) { return proto::build::ready_for_query(out, 'I'); });
  reactor_.want_send(stream_);
  if (!ok) reactor_.close(*this, Reason::protocol_violation, "cannot encode the session parameters");
}

// ---- linked ----------------------------------------------------------------------------------

std::string Client::restore_sql(const Server& server) const {
  // Make the server's session this client's: settings the server has that this client does not
  // are RESET, the client's own are SET, then reported parameters are brought to the client's
  // values (or the pool's defaults where the client set nothing).
  std::string sql;
  for (const auto& [name, value] : server.settings_) {
    (void)value;
    if (find_value(settings_, name) == nullptr) sql += "RESET " + proto::sql::quote_identifier(name) + ";";
  }
  for (const auto& [name, value] : settings_) {
    const std::string* have = find_value(server.settings_, name);
    if (have == nullptr || *have != value) sql += "SET " + proto::sql::quote_identifier(name) + " TO " + value + ";";
  }
  auto check_param = [&](const std::string& name, const std::string& want) {
    if (!restorable(name)) return;
    const std::string* have = find_value(server.params_, name);
    if (have != nullptr && *have == want) return;
    // A setting restored above already covers this name.
    if (find_value(settings_, lower(name)) != nullptr) return;
    sql += "SET " + proto::sql::quote_identifier(lower(name)) + " TO " + proto::sql::quote_literal(want) + ";";
  };
  for (const auto& [name, value] : pool_->defaults_) {
    const std::string* mine = find_value(params_, name);
    check_param(name, mine != nullptr ? *mine : value);
  }
  for (const auto& [name, value] : params_)
    if (find_value(pool_->defaults_, name) == nullptr) check_param(name, value);
  return sql;
}

void Client::on_linked(Server& server) {
  log::debug("C-{} linked to S-{}", id_, server.id_);
  // The common case costs one comparison: this server's session already is this client's
  // (same client again, or clients that set the same things).
  std::string sql = server.session_fingerprint_ == session_fingerprint() ? std::string() : restore_sql(server);
  if (!sql.empty()) {
    if (!server.stream_.emit([&](std::string& out) { return proto::build::query(out, sql); })) {
      reactor_.close(*this, Reason::protocol_violation, "cannot encode the session settings");
      return;
    }
    log::debug("C-{} restoring its session on S-{}: {}", id_, server.id_, sql);
    ++server.restore_replies_pending_;
    server.settings_ = settings_;
    reactor_.want_send(server.stream_);
  } else {
    on_restored();
  }
  stream_.reading_paused_ = false;
  if (stream_.input_size() > 0) forward_to_server();
  if (state_ == ClientState::active) reactor_.arm_recv_for(*this);
}

std::uint64_t Client::session_fingerprint() const { return fingerprint(params_, settings_); }

void Client::on_restored() {
  if (server_ != nullptr) server_->session_fingerprint_ = session_fingerprint();
  // The first server of a client that had no welcome yet (session mode, or a pool that had
  // never logged in) gives it: its parameters are exactly this client's session now.
  if (!welcomed_) send_welcome(server_->params_);
  if (state_ == ClientState::active) server_->maybe_release();
}

void Client::on_input() {
  switch (state_) {
    case ClientState::startup: handle_startup(); break;
    case ClientState::auth: handle_auth(); break;
    case ClientState::idle:
      if (admin_ != AdminRole::none) {
        handle_admin();
        break;
      }
      // Transaction mode: the first byte of a new request asks for a server.
      if (stream_.input_size() >= 5) {
        char header[5];
        stream_.peek(header, 5);
        if (header[0] == proto::frontend::kTerminate) {
          reactor_.close(*this, Reason::client_terminate);
          return;
        }
      }
      pool_->request_server(*this);
      if (state_ == ClientState::waiting) on_input();
      break;
    case ClientState::waiting:
      // Nothing is forwarded until a server is linked; do not let a client pile up unbounded
      // bytes meanwhile.
      if (stream_.input_size() > (64u << 10)) stream_.reading_paused_ = true;
      break;
    case ClientState::active: forward_to_server(); break;
    case ClientState::closing: stream_.discard_all(); break;
  }
}

void Client::cancel_while_waiting() {
  if (!welcomed_) {
    reactor_.close(*this, Reason::query_canceled, "canceling statement due to user request");
    return;
  }
  // The queued request never reached a server: drop it and answer as PostgreSQL would.
  stream_.discard_all();
  forward_remaining_ = 0;
  (void)stream_.emit([](std::string& out) {
    return proto::build::error_response(out, "ERROR", "57014", "canceling statement due to user request");
  });
  (void)stream_.emit([](std::string& out) { return proto::build::ready_for_query(out, 'I'); });
  reactor_.want_send(stream_);
  pool_->set_state(*this, ClientState::idle);
  if (stream_.reading_paused_) {
    stream_.reading_paused_ = false;
    reactor_.arm_recv_for(*this);
  }
}

void Client::note_session_state(std::uint8_t flags) {
  std::uint8_t fresh = flags & ~pinned_state_;
  if (fresh == 0) return;
  pinned_state_ |= flags;
  if (pool_->settings_.pool_mode == config::PoolMode::session) return;
  if (pool_->settings_.session_state == config::SessionStatePolicy::error) {
    reactor_.close(*this, Reason::feature_not_supported,
                   fmt::format("{} cannot be used in {} pooling mode (session_state: error)",
                               proto::sql::describe_session_state(fresh), config::to_string(pool_->settings_.pool_mode)));
    return;
  }
  log::info("C-{} pinned to its server: {}", id_, proto::sql::describe_session_state(fresh));
}

void Client::forward_to_server() {
  Server& server = *server_;
  if (server.cancels_in_flight_ > 0) {
    // PostgreSQL signals a cancelled backend more than once until it closes the cancel
    // connection; a request sent before that could be cancelled too. Hold it (libpq's PQcancel
    // waits for the same close); Reactor::finish_cancel resumes.
    if (stream_.input_size() > (64u << 10)) stream_.reading_paused_ = true;
    return;
  }
  const std::uint32_t max_size = reactor_.config().max_message_size;
  // The statement cache renames named statements in transaction and statement mode.
  const bool cache = pool_->settings_.pool_mode != config::PoolMode::session && pool_->settings_.prepared_statements > 0;
  for (;;) {
    if (forward_remaining_ > 0) {
      // The rest of a large message, streamed as it arrives.
      std::size_t n = std::min(forward_remaining_, stream_.input_size());
      if (n == 0) break;
      stream_.forward(n, server.stream_);
      forward_remaining_ -= n;
      continue;
    }
    if (discard_remaining_ > 0) {
      std::size_t n = std::min(discard_remaining_, stream_.input_size());
      if (n == 0) break;
      stream_.consume(n);
      discard_remaining_ -= n;
      continue;
    }
    if (shape_check_pending_ || stream_.input_size() < 5) break;
    char header[5];
    stream_.peek(header, 5);
    proto::Frame frame = proto::frame_message(std::string_view(header, 5), max_size);
    if (frame.status == proto::FrameStatus::invalid_length) {
      reactor_.close(*this, Reason::protocol_violation, "invalid message length");
      return;
    }
    if (frame.status == proto::FrameStatus::too_large) {
      reactor_.close(*this, Reason::message_too_large,
                     fmt::format("message of {} bytes is larger than max_message_size ({})", frame.size, max_size));
      return;
    }
    const char type = frame.type;
    if (type == proto::frontend::kTerminate) {
      // Never forwarded: the server stays in the pool.
      stream_.consume(std::min<std::size_t>(frame.size, stream_.input_size()));
      reactor_.close(*this, Reason::client_terminate);
      return;
    }
    if (skip_until_sync_ && type != proto::frontend::kSync) {
      // After an error pgring raised in the extended protocol, the client's messages up to its
      // Sync are dropped, as PostgreSQL drops them after an error of its own.
      discard_remaining_ = frame.size;
      continue;
    }
    // Messages read whole: Query and Parse texts (up to kMaxInspectedQuery) to see session
    // state; with the statement cache, every message that names a statement.
    bool statement_message = cache && (type == proto::frontend::kParse || type == proto::frontend::kBind ||
                                       type == proto::frontend::kDescribe || type == proto::frontend::kClose);
    bool inspect = statement_message || ((type == proto::frontend::kQuery || type == proto::frontend::kParse) &&
                                         frame.size <= kMaxInspectedQuery);
    if (inspect && stream_.input_size() < frame.size) break;
    std::string_view body = inspect ? stream_.contiguous(frame.size).substr(5) : std::string_view();
    bool handled = false;  // true: the message was consumed (rewritten or answered here)
    switch (type) {
      case proto::frontend::kQuery: {
        std::uint8_t state = 0;
        std::unique_ptr<proto::sql::SetStatement> set;
        if (inspect) {
          if (auto text = proto::parse_query(body)) {
            state = proto::sql::scan_session_state(*text);
            if (auto s = proto::sql::parse_set_statement(*text)) {
              set = std::make_unique<proto::sql::SetStatement>(std::move(*s));
              state &= static_cast<std::uint8_t>(~proto::sql::kUntrackedSet);
            }
            if (cache) handled = deallocate(*text);
          }
        }
        if (handled) break;
        // Session state is judged before anything is queued: a refused Query is never sent.
        if (state != 0) {
          note_session_state(state);
          if (state_ == ClientState::closing) return;
        }
        ++pool_->stats_.queries;
        // A simple Query destroys the unnamed statement, on the server and in the session.
        unnamed_parse_tail_.clear();
        server.unnamed_client_ = 0;
        server.expect('Q', state, std::move(set));
        break;
      }
      case proto::frontend::kParse: {
        if (inspect) {
          proto::Reader r(body);
          (void)r.cstring();
          std::string_view text = r.cstring();
          if (r.ok()) {
            std::uint8_t state = proto::sql::scan_session_state(text);
            // A lone SET sent through the extended protocol is replayed like a simple one: it
            // rides on the next Execute.
            last_parse_set_.reset();
            if (auto set = proto::sql::parse_set_statement(text)) {
              last_parse_set_ = std::make_unique<proto::sql::SetStatement>(std::move(*set));
              state &= static_cast<std::uint8_t>(~proto::sql::kUntrackedSet);
            }
            if (state != 0) {
              note_session_state(state);
              if (state_ == ClientState::closing) return;
            }
          }
        }
        server.unsynced_ = true;
        if (statement_message) {
          handled = cached_parse(server, body);
          if (state_ == ClientState::closing) return;
        }
        if (!handled) server.expect('P');
        break;
      }
      case proto::frontend::kBind:
        server.unsynced_ = true;
        if (statement_message) {
          handled = cached_bind(server, body);
          if (state_ == ClientState::closing) return;
        }
        if (!handled && !shape_check_pending_) server.expect('B');
        break;
      case proto::frontend::kDescribe:
        server.unsynced_ = true;
        if (statement_message) {
          handled = cached_describe(server, body);
          if (state_ == ClientState::closing) return;
        }
        if (!handled && !shape_check_pending_) server.expect('D');
        break;
      case proto::frontend::kClose:
        server.unsynced_ = true;
        if (statement_message) handled = cached_close(server, body);
        if (!handled) server.expect('C');
        break;
      case proto::frontend::kSync:
        skip_until_sync_ = false;
        server.expect('S').batch_seq = batch_seq_;
        server.unsynced_ = false;
        break;
      case proto::frontend::kFunctionCall:
        server.expect('F');
        break;
      case proto::frontend::kExecute:
        ++pool_->stats_.queries;
        server.expect('E', 0, std::move(last_parse_set_));
        server.unsynced_ = true;
        break;
      case proto::frontend::kFlush:
        server.unsynced_ = true;
        break;
      case proto::frontend::kCopyDone:
      case proto::frontend::kCopyFail:
        // Only meaningful while the server is in COPY FROM STDIN; otherwise it ignores them.
        if (server.copy_in_) server.expect('c');
        break;
      default: break;
    }
    if (shape_check_pending_) break;  // this message waits for the check's answer
    if (handled) {
      stream_.consume(frame.size);
      if (type == proto::frontend::kSync) end_batch();
      continue;
    }
    std::size_t n = std::min<std::size_t>(frame.size, stream_.input_size());
    bool extended = type == proto::frontend::kBind || type == proto::frontend::kDescribe ||
                    type == proto::frontend::kExecute || type == proto::frontend::kSync ||
                    type == proto::frontend::kFlush || type == proto::frontend::kClose ||
                    type == proto::frontend::kParse;
    if (cache && extended) {
      if (n == frame.size) record_batch(stream_.contiguous(n));
      else batch_copy_ok_ = false;
    }
    stream_.forward(n, server.stream_);
    forward_remaining_ = frame.size - n;
    if (type == proto::frontend::kSync) end_batch();
  }
  // Replies pgring owes with nothing before them in the queue go out now.
  server.flush_fakes();
  reactor_.want_send(server.stream_);
  reactor_.apply_backpressure(stream_, server.stream_);
  if (state_ == ClientState::active && server.requests_in_flight() == 0) server.maybe_release();
}

void Client::record_batch(std::string_view bytes) {
  constexpr std::size_t kMaxBatchCopy = 64u << 10;  // larger batches are not retried
  if (!batch_copy_ok_) return;
  if (batch_copy_.size() + bytes.size() > kMaxBatchCopy) {
    batch_copy_ok_ = false;
    batch_copy_.clear();
    return;
  }
  batch_copy_.append(bytes);
}

void Client::end_batch() {
  inflight_batch_.swap(batch_copy_);
  inflight_batch_ok_ = batch_copy_ok_;
  inflight_batch_seq_ = batch_seq_++;
  batch_copy_.clear();
  batch_copy_ok_ = true;
  if (inflight_batch_.capacity() > (64u << 10)) inflight_batch_.shrink_to_fit();
}

// ---- the statement cache (DESIGN.md section 5) ------------------------------------------------

void Client::fake_error(Server& server, std::string_view sqlstate, std::string message) {
  Server::Expected& e = server.expect('e');
  (void)proto::build::error_response(e.fake, "ERROR", sqlstate, message);
  skip_until_sync_ = true;
}

bool Client::ensure_prepared(Server& server, const PreparedStatement& statement) {
  if (server.prepared_.contains(statement.id)) {
    server.prepared_.touch(statement.id);
    return true;
  }
  // The server lacks it (another connection, or evicted): prepare it first and swallow the
  // ParseComplete. An error from this Parse reaches the client as the error of its request.
  if (!server.stream_.emit([&](std::string& out) {
        return proto::build::parse(out, statement.server_name, statement.parse_tail);
      }))
    return false;
  Server::Expected& e = server.expect('P');
  e.skip = true;
  e.statement = &statement;
  server.prepared_.add(statement.id);
  ++reactor_.statements().counters.injected;
  evict_statements(server, statement.id);
  return true;
}

bool Client::start_shape_check(Server& server, const NamedStatement& named) {
  const PreparedStatement& statement = *named.entry;
  if (named.shape == 0) return false;  // this client never saw a result type: nothing to hold to
  bool prepared = server.prepared_.contains(statement.id);
  if (prepared && server.prepared_.shape(statement.id) == named.shape) return false;
  // The statement is new to this connection, or was prepared here by a Parse nobody described,
  // or has another shape here: ask the server (Parse when needed, Describe, both swallowed, and
  // Flush), then hold this client's messages until the answer. One round trip, at most once
  // per statement and connection; a shape that differs is confirmed by the server itself.
  if (!prepared) {
    (void)server.stream_.emit([&](std::string& out) {
      return proto::build::parse(out, statement.server_name, statement.parse_tail);
    });
    Server::Expected& p = server.expect('P');
    p.skip = true;
    p.statement = &statement;
    p.shape_check = true;  // (its error would be the check's: see Server, ErrorResponse)
    server.prepared_.add(statement.id);
    ++reactor_.statements().counters.injected;
    evict_statements(server, statement.id);
  }
  (void)server.stream_.emit([&](std::string& out) {
    proto::Writer w(out);
    w.begin(proto::frontend::kDescribe).u8('S').cstring(statement.server_name).end();
    w.begin(proto::frontend::kFlush).end();
    return w.ok();
  });
  Server::Expected& d = server.expect('D');
  d.skip = true;
  d.statement = &statement;
  d.shape_check = true;
  shape_check_pending_ = true;
  shape_check_expected_ = named.shape;
  reactor_.want_send(server.stream_);
  return true;
}

bool Client::has_described(const PreparedStatement& statement) const {
  for (const auto& [name, named] : statements_)
    if (named.entry == &statement && named.shape != 0) return true;
  return false;
}

void Client::on_described(const PreparedStatement& statement, Shape shape) {
  for (auto& [name, named] : statements_)
    if (named.entry == &statement && named.shape == 0) named.shape = shape;
}

void Client::on_shape_checked(const PreparedStatement& statement, Shape shape) {
  shape_check_pending_ = false;
  bool same = shape == 0 || shape == shape_check_expected_;
  if (!same && server_ != nullptr) {
    // DDL changed the result under this client's description: PostgreSQL would refuse the
    // Bind, so pgring does. The stale entry is retired (a new Parse prepares afresh) and this
    // server forgets its new-shaped copy, so others naming the old entry are checked too.
    Server& server = *server_;
    log::info("C-{} statement {} changed its result type; refusing it as PostgreSQL would", id_,
              statement.server_name);
    reactor_.statements().retire(statement);
    (void)server.stream_.emit([&](std::string& out) { return proto::build::close_statement(out, statement.server_name); });
    server.expect('C').skip = true;
    server.prepared_.remove(statement.id);
    // The server raises the error itself, so its transaction state is exactly PostgreSQL's
    // (an explicit block becomes failed, an implicit one rolls back at Sync). It runs as the
    // unnamed statement, which therefore no longer holds any client's.
    static constexpr std::string_view kRaise =
        "DO $pgring$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', "
        "MESSAGE = 'cached plan must not change result type'; END$pgring$";
    (void)server.stream_.emit([&](std::string& out) {
      proto::Writer w(out);
      w.begin(proto::frontend::kParse).cstring("").cstring(kRaise).i16(0).end();
      w.begin(proto::frontend::kBind).cstring("").cstring("").i16(0).i16(0).i16(0).end();
      w.begin(proto::frontend::kExecute).cstring("").i32(0).end();
      return w.ok();
    });
    server.expect('P').skip = true;
    server.expect('B').skip = true;
    // Its ErrorResponse is replaced by PostgreSQL's own for this case: drivers recognise it by
    // the routine field (asyncpg: RevalidateCachedQuery -> InvalidCachedStatementError).
    Server::Expected& raise = server.expect('E');
    proto::Writer w(raise.fake);
    w.begin(proto::backend::kErrorResponse);
    w.u8('S').cstring("ERROR").u8('V').cstring("ERROR").u8('C').cstring("0A000");
    w.u8('M').cstring("cached plan must not change result type");
    w.u8('F').cstring("plancache.c").u8('R').cstring("RevalidateCachedQuery").u8(0).end();
    server.unnamed_client_ = 0;
    skip_until_sync_ = true;  // the held Bind and what follows, up to the client's Sync
    reactor_.want_send(server.stream_);
  }
  if (state_ == ClientState::active) on_input();
}

void Client::on_shape_check_failed() {
  shape_check_pending_ = false;
  skip_until_sync_ = true;  // the held request and the rest of the batch; the Sync goes on
  if (state_ == ClientState::active) on_input();
}

void Client::evict_statements(Server& server, std::uint64_t keep) {
  auto limit = static_cast<std::size_t>(pool_->settings_.prepared_statements);
  while (auto victim = server.prepared_.victim(limit, keep)) {
    std::string name = "pgring_" + std::to_string(*victim);
    (void)server.stream_.emit([&](std::string& out) { return proto::build::close_statement(out, name); });
    server.expect('C').skip = true;
    server.prepared_.remove(*victim);
    ++reactor_.statements().counters.evictions;
  }
}

bool Client::cached_parse(Server& server, std::string_view body) {
  proto::Reader r(body);
  std::string_view name = r.cstring();
  std::string_view tail = r.rest();
  if (!r.ok()) return false;
  if (name.empty()) {
    // The unnamed statement passes through; remember it in case the next Bind lands elsewhere.
    unnamed_parse_tail_.assign(tail);
    server.unnamed_client_ = id_;
    server.unnamed_seq_ = ++unnamed_seq_;
    return false;
  }
  if (statements_.count(std::string(name)) != 0) {
    fake_error(server, "42P05", fmt::format("prepared statement \"{}\" already exists", name));
    return true;
  }
  const PreparedStatement& statement = reactor_.statements().intern(tail);
  statements_.emplace(std::string(name), NamedStatement{&statement});
  if (server.prepared_.contains(statement.id)) {
    // Already prepared on this connection: ParseComplete comes from pgring, in its place.
    server.prepared_.touch(statement.id);
    server.expect('p');
    ++reactor_.statements().counters.hits;
    return true;
  }
  if (!server.stream_.emit([&](std::string& out) {
        return proto::build::parse(out, statement.server_name, statement.parse_tail);
      })) {
    reactor_.close(*this, Reason::protocol_violation, "cannot encode Parse");
    return true;
  }
  Server::Expected& e = server.expect('P');
  e.statement = &statement;
  server.prepared_.add(statement.id);
  ++reactor_.statements().counters.parses_sent;
  evict_statements(server, statement.id);
  return true;
}

const Client::NamedStatement* Client::find_statement(Server& server, std::string_view name) {
  auto it = statements_.find(std::string(name));
  if (it != statements_.end()) return &it->second;
  fake_error(server, "26000", fmt::format("prepared statement \"{}\" does not exist", name));
  return nullptr;
}

bool Client::ensure_unnamed(Server& server) {
  if (unnamed_parse_tail_.empty() || (server.unnamed_client_ == id_ && server.unnamed_seq_ == unnamed_seq_)) return true;
  // This server holds someone else's unnamed statement (or none): prepare ours first.
  if (!server.stream_.emit([&](std::string& out) { return proto::build::parse(out, "", unnamed_parse_tail_); }))
    return false;
  server.expect('P').skip = true;
  server.unnamed_client_ = id_;
  server.unnamed_seq_ = unnamed_seq_;
  ++reactor_.statements().counters.injected;
  return true;
}

bool Client::cached_bind(Server& server, std::string_view body) {
  proto::Reader r(body);
  std::string_view portal = r.cstring();
  std::string_view name = r.cstring();
  std::string_view rest = r.rest();
  if (!r.ok()) return false;
  if (name.empty()) {
    if (!ensure_unnamed(server)) reactor_.close(*this, Reason::protocol_violation, "cannot encode Parse");
    return false;
  }
  const NamedStatement* named = find_statement(server, name);
  if (named == nullptr) return true;
  if (start_shape_check(server, *named)) return false;  // held (see forward_to_server)
  const PreparedStatement* statement = named->entry;
  if (!ensure_prepared(server, *statement)) {
    reactor_.close(*this, Reason::protocol_violation, "cannot encode Parse");
    return true;
  }
  // The parameters are copied once into the rewritten Bind.
  std::size_t offset = batch_copy_.size();
  std::size_t start = 0;
  bool ok = server.stream_.emit([&](std::string& out) {
    start = out.size();
    proto::Writer b(out, std::size_t{1} << 31);
    b.begin(proto::frontend::kBind).cstring(portal).cstring(statement->server_name).bytes(rest).end();
    if (b.ok()) record_batch(std::string_view(out).substr(start));
    return b.ok();
  });
  if (!ok) {
    reactor_.close(*this, Reason::protocol_violation, "cannot encode Bind");
    return true;
  }
  Server::Expected& e = server.expect('B');
  e.statement = statement;
  e.batch_seq = batch_seq_;
  e.replay_offset = offset;
  return true;
}

bool Client::cached_describe(Server& server, std::string_view body) {
  proto::Reader r(body);
  char kind = static_cast<char>(r.u8());
  std::string_view name = r.cstring();
  if (!r.ok() || kind != 'S') return false;
  if (name.empty()) {
    if (!ensure_unnamed(server)) reactor_.close(*this, Reason::protocol_violation, "cannot encode Parse");
    return false;
  }
  const NamedStatement* named = find_statement(server, name);
  if (named == nullptr) return true;
  if (start_shape_check(server, *named)) return false;  // held (see forward_to_server)
  const PreparedStatement* statement = named->entry;
  if (!ensure_prepared(server, *statement)) {
    reactor_.close(*this, Reason::protocol_violation, "cannot encode Parse");
    return true;
  }
  std::size_t offset = batch_copy_.size();
  (void)server.stream_.emit([&](std::string& out) {
    std::size_t start = out.size();
    proto::Writer w(out);
    w.begin(proto::frontend::kDescribe).u8('S').cstring(statement->server_name).end();
    if (w.ok()) record_batch(std::string_view(out).substr(start));
    return w.ok();
  });
  Server::Expected& e = server.expect('D');
  e.statement = statement;  // its reply records the shape the client is told
  e.batch_seq = batch_seq_;
  e.replay_offset = offset;
  return true;
}

bool Client::cached_close(Server& server, std::string_view body) {
  proto::Reader r(body);
  char kind = static_cast<char>(r.u8());
  std::string_view name = r.cstring();
  if (!r.ok() || kind != 'S') return false;
  if (name.empty()) {
    unnamed_parse_tail_.clear();
    if (server.unnamed_client_ == id_) server.unnamed_client_ = 0;
    return false;
  }
  // The client forgets its name; the server keeps the statement for whoever uses it next.
  statements_.erase(std::string(name));
  server.expect('x');
  return true;
}

bool Client::deallocate(std::string_view query) {
  auto d = proto::sql::parse_deallocate(query);
  if (!d) return false;
  if (d->all) {
    // Forwarded: it also drops the client's SQL-level statements. The tag clears the caches.
    statements_.clear();
    return false;
  }
  if (statements_.erase(d->name) == 0) return false;  // an SQL-level statement: the server's business
  server_->expect('d');
  return true;
}

const std::string* Client::startup_value(std::string_view name) const { return find_value(startup_values_, name); }

void Client::on_server_parameter(std::string_view name, std::string_view value) {
  put_value(params_, name, value);
  // The server reports it from now on: a SET of the same name from startup is superseded.
  for (auto it = settings_.begin(); it != settings_.end(); ++it) {
    if (iequal(it->first, name)) {
      settings_.erase(it);
      break;
    }
  }
}

void Client::apply_setting(const proto::sql::SetStatement& set) {
  switch (set.kind) {
    case proto::sql::SetStatement::Kind::set: put_value(settings_, set.name, set.value); break;
    case proto::sql::SetStatement::Kind::reset:
      for (auto it = settings_.begin(); it != settings_.end(); ++it) {
        if (iequal(it->first, set.name)) {
          settings_.erase(it);
          break;
        }
      }
      // RESET returns to the startup value, as PostgreSQL does; the next restore applies it.
      if (const std::string* startup = find_value(startup_settings_, set.name)) put_value(settings_, set.name, *startup);
      break;
    case proto::sql::SetStatement::Kind::reset_all:
      // The server went back to its own defaults; this client's session goes back to its
      // startup values, which the next restore applies again.
      settings_ = startup_settings_;
      break;
  }
}

}  // namespace pgring
