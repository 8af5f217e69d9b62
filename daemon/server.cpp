#include "daemon/server.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <cctype>

#include "daemon/client.hpp"
#include "daemon/log.hpp"
#include "daemon/pool.hpp"
#include "daemon/reactor.hpp"
#include "daemon/tls.hpp"
#include "proto/builders.hpp"
#include "proto/bytes.hpp"
#include "proto/md5.hpp"
#include "proto/messages.hpp"

namespace pgring {

namespace {
// Messages pgring reads whole from a server (authentication, parameters, errors) are small;
// anything it only forwards may be up to PostgreSQL's 1 GiB and is streamed.
constexpr std::uint32_t kMaxInspected = 1u << 20;
constexpr std::uint32_t kMaxServerMessage = 0x7fffffffu;
}  // namespace

std::string_view to_string(ServerState state) {
  switch (state) {
    case ServerState::connecting: return "connecting";
    case ServerState::login: return "login";
    case ServerState::idle: return "idle";
    case ServerState::active: return "active";
    case ServerState::resetting: return "resetting";
    case ServerState::canceling: return "canceling";
    case ServerState::lookup: return "lookup";
    case ServerState::closing: return "closing";
  }
  return "?";
}

Server::Server(Reactor& reactor, Pool& pool, std::uint64_t id)
    : reactor_(reactor),
      pool_(pool),
      id_(id),
      stream_(reactor.buffers(), Operation::Kind::server_recv, Operation::Kind::server_send, this),
      connect_op_{Operation::Kind::server_connect, this} {}

void Server::on_connected() {
  pool_.set_state(*this, ServerState::login);
  login_ = std::make_unique<LoginState>();
  const config::ServerTls& tls = reactor_.config().tls_server;
  bool unix_socket = !pool_.db_->host.empty() && pool_.db_->host[0] == '/';
  if (tls.mode != config::ServerTlsMode::disable && !unix_socket && reactor_.tls().server_side != nullptr) {
    (void)stream_.emit([](std::string& out) { return proto::build::ssl_request(out); });
    tls_step_ = TlsStep::requested;
    reactor_.want_send(stream_);
    return;
  }
  send_startup();
}

bool Server::negotiate_tls() {
  const config::ServerTls& tls = reactor_.config().tls_server;
  if (tls_step_ == TlsStep::requested) {
    if (stream_.input_size() < 1) return false;
    char answer = 0;
    stream_.peek(&answer, 1);
    stream_.consume(1);
    if (stream_.input_size() != 0) {
      // Anything after the one-byte answer was sent before TLS: never take it as part of the
      // encrypted session (CVE-2021-23222).
      reactor_.close(*this, Reason::server_protocol_error, "server sent unencrypted data after its TLS answer");
      return false;
    }
    if (answer == 'N') {
      if (tls.mode != config::ServerTlsMode::prefer) {
        reactor_.close(*this, Reason::server_login_failed,
                       fmt::format("server does not support TLS (tls.server.mode {})", config::to_string(tls.mode)));
        return false;
      }
      tls_step_ = TlsStep::none;
      send_startup();
      return false;
    }
    if (answer != 'S') {
      // An error here is not shown: it came before the server was authenticated (CVE-2024-10977).
      reactor_.close(*this, Reason::server_protocol_error, "server answered the SSLRequest with something else");
      return false;
    }
    std::unique_ptr<TlsSession> session =
        TlsSession::connect(reactor_.tls().server_side.get(), pool_.db_->host, tls.mode);
    if (session == nullptr || !stream_.start_tls(std::move(session))) {
      reactor_.close(*this, Reason::server_login_failed, "cannot start TLS");
      return false;
    }
    tls_step_ = TlsStep::handshake;
    reactor_.want_send(stream_);
    return false;
  }
  if (!stream_.tls()->handshake_done()) return false;
  tls_step_ = TlsStep::none;
  log::debug("S-{} TLS {} with {}", id_, stream_.tls()->version(), pool_.address_text_);
  send_startup();
  return true;
}

void Server::send_startup() {
  std::vector<std::pair<std::string_view, std::string_view>> params{
      {"user", pool_.server_user_},
      {"database", pool_.db_->dbname.empty() ? pool_.db_->name : pool_.db_->dbname},
  };
  if (!stream_.emit([&](std::string& out) { return proto::build::startup_message(out, proto::kProtocol30, params); })) {
    reactor_.close(*this, Reason::server_login_failed, "cannot encode the startup packet");
    return;
  }
  reactor_.want_send(stream_);
}

void Server::set_param(std::string_view name, std::string_view value) {
  // A reported parameter is tracked here from now on, never as a replayed setting.
  for (auto it = settings_.begin(); it != settings_.end(); ++it) {
    if (it->first.size() == name.size() &&
        std::equal(name.begin(), name.end(), it->first.begin(), [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
        })) {
      settings_.erase(it);
      break;
    }
  }
  for (auto& [k, v] : params_) {
    if (k == name) {
      v.assign(value);
      return;
    }
  }
  params_.emplace_back(std::string(name), std::string(value));
}

void Server::on_input() {
  if (state_ == ServerState::active) {
    forward_to_client();
    return;
  }
  if (tls_step_ != TlsStep::none && !negotiate_tls()) return;
  // Login, reset and idle: every message is read whole and handled here.
  while (state_ == ServerState::login || state_ == ServerState::resetting || state_ == ServerState::idle ||
         state_ == ServerState::canceling || state_ == ServerState::lookup) {
    if (stream_.input_size() < 5) return;
    char header[5];
    stream_.peek(header, 5);
    proto::Frame frame = proto::frame_message(std::string_view(header, 5), kMaxInspected);
    if (frame.status == proto::FrameStatus::invalid_length || frame.status == proto::FrameStatus::too_large) {
      reactor_.close(*this, Reason::server_protocol_error, "invalid message from server");
      return;
    }
    if (stream_.input_size() < frame.size) return;
    std::string_view body = stream_.contiguous(frame.size).substr(5);
    ServerState before = state_;
    if (before == ServerState::login) handle_login_message(frame.type, body);
    else if (before == ServerState::resetting) handle_reset_message(frame.type, body);
    else if (before == ServerState::lookup) handle_lookup_message(frame.type, body);
    else handle_idle_message(frame.type, body);
    if (state_ == ServerState::closing) return;
    stream_.consume(frame.size);
    if (state_ == ServerState::active && stream_.input_size() > 0) {
      forward_to_client();
      return;
    }
  }
}

// ---- login -----------------------------------------------------------------------------------

void Server::handle_login_message(char type, std::string_view body) {
  using proto::AuthCode;
  switch (type) {
    case proto::backend::kAuthentication: {
      auto auth = proto::parse_authentication(body);
      if (!auth) {
        reactor_.close(*this, Reason::server_protocol_error, "malformed authentication request");
        return;
      }
      const std::string& password = pool_.server_password_;
      bool is_md5_secret = proto::md5::is_md5_secret(password);
      auto need_plain = [&](std::string_view method) {
        if (!password.empty() && !is_md5_secret) return true;
        reactor_.close(*this, Reason::server_login_failed,
                       fmt::format("server asks for {} authentication for user \"{}\" but no plain password is "
                                   "configured for it",
                                   method, pool_.server_user_));
        return false;
      };
      switch (auth->code) {
        case AuthCode::ok:
          if (login_->expected_server_signature != proto::scram::Key{} && !login_->scram_final_checked) {
            reactor_.close(*this, Reason::server_protocol_error, "server skipped SCRAM server-final-message");
          }
          return;
        case AuthCode::cleartext_password:
          if (!need_plain("password")) return;
          (void)stream_.emit([&](std::string& out) { return proto::build::password_message(out, password); });
          break;
        case AuthCode::md5_password: {
          if (password.empty()) {
            need_plain("md5");
            return;
          }
          proto::md5::Salt salt;
          std::copy(auth->data.begin(), auth->data.end(), salt.begin());
          std::string response = is_md5_secret ? proto::md5::response_from_secret(password, salt)
                                               : proto::md5::response(pool_.server_user_, password, salt);
          (void)stream_.emit([&](std::string& out) { return proto::build::password_message(out, response); });
          break;
        }
        case AuthCode::sasl: {
          if (!proto::sasl_offers(auth->data, proto::scram::kMechanism)) {
            reactor_.close(*this, Reason::server_login_failed, "server offers no SASL mechanism pgring supports");
            return;
          }
          if (password.empty() && !pool_.server_secret_.empty()) {
            // Only the SCRAM secret is configured: pass through the ClientKey of a client of
            // this user that logged in to pgring (PostgreSQL must store the same secret).
            login_->client_key = reactor_.shared().client_key(pool_.server_user_, pool_.server_secret_);
            if (!login_->client_key) {
              reactor_.close(*this, Reason::server_login_failed,
                             fmt::format("server asks for SCRAM-SHA-256 for user \"{}\"; pgring has its SCRAM secret "
                                         "only, and no client of this user has logged in with SCRAM yet (pass-through)",
                                         pool_.server_user_));
              return;
            }
          } else if (!need_plain("SCRAM-SHA-256")) {
            return;
          }
          // Over TLS, bind the exchange to the server's certificate when it offers -PLUS: a man
          // in the middle (tls.server.mode prefer/require check no certificate) cannot relay
          // it. Otherwise say "y": a server that did offer it sees the offer was tampered with.
          if (TlsSession* tls = stream_.tls()) {
            login_->end_point = tls->peer_end_point_hash();
            bool plus = proto::sasl_offers(auth->data, proto::scram::kMechanismPlus) && !login_->end_point.empty();
            login_->binding = plus ? proto::scram::Binding::bind : proto::scram::Binding::could;
          }
          unsigned char raw[18];
          RAND_bytes(raw, sizeof raw);
          std::string nonce = proto::scram::base64_encode(std::string_view(reinterpret_cast<char*>(raw), sizeof raw));
          std::string first = proto::scram::client_first(nonce, login_->binding);
          login_->scram_client_first_bare = first.substr(proto::scram::gs2_header(login_->binding).size());
          std::string_view mechanism = login_->binding == proto::scram::Binding::bind ? proto::scram::kMechanismPlus
                                                                                        : proto::scram::kMechanism;
          log::debug("S-{} SCRAM login with {}", id_, mechanism);
          (void)stream_.emit([&](std::string& out) {
            return proto::build::sasl_initial_response(out, mechanism, first);
          });
          break;
        }
        case AuthCode::sasl_continue: {
          std::optional<proto::scram::ClientFinal> final_message;
          if (login_->client_key) {
            auto secret = proto::scram::parse_secret(pool_.server_secret_);
            if (secret)
              final_message = proto::scram::client_final_from_keys(*login_->client_key, *secret,
                                                                   login_->scram_client_first_bare, auth->data,
                                                                   login_->binding, login_->end_point);
            if (!final_message) {
              reactor_.close(*this, Reason::server_login_failed,
                             fmt::format("SCRAM pass-through for user \"{}\" needs the server to store the same secret "
                                         "(salt and iterations) as users.{}.password",
                                         pool_.server_user_, pool_.server_user_));
              return;
            }
          } else {
            final_message = proto::scram::client_final(password, login_->scram_client_first_bare, auth->data,
                                                       login_->binding, login_->end_point);
          }
          if (!final_message) {
            reactor_.close(*this, Reason::server_protocol_error, "malformed SCRAM server-first-message");
            return;
          }
          login_->expected_server_signature = final_message->expected_server_signature;
          (void)stream_.emit([&](std::string& out) { return proto::build::sasl_response(out, final_message->message); });
          break;
        }
        case AuthCode::sasl_final:
          // The server proves it knows the password too: never trust a server that cannot.
          if (!proto::scram::verify_server_final(auth->data, login_->expected_server_signature)) {
            reactor_.close(*this, Reason::server_protocol_error, "server's SCRAM signature is invalid");
            return;
          }
          login_->scram_final_checked = true;
          return;
        default:
          reactor_.close(*this, Reason::server_login_failed,
                         fmt::format("server asks for an authentication method pgring does not support ({})",
                                     static_cast<int>(auth->code)));
          return;
      }
      reactor_.want_send(stream_);
      return;
    }
    case proto::backend::kParameterStatus:
      if (auto p = proto::parse_parameter_status(body)) set_param(p->name, p->value);
      return;
    case proto::backend::kBackendKeyData:
      if (auto k = proto::parse_backend_key_data(body)) {
        backend_pid_ = k->pid;
        backend_secret_.assign(k->secret);
      }
      return;
    case proto::backend::kNegotiateProtocolVersion:
    case proto::backend::kNoticeResponse:
      return;
    case proto::backend::kErrorResponse: {
      auto e = proto::parse_error_fields(body);
      std::string message = e ? fmt::format("server login failed: {} (SQLSTATE {})", e->message, e->sqlstate)
                              : std::string("server login failed");
      reactor_.close(*this, Reason::server_login_failed, message);
      return;
    }
    case proto::backend::kReadyForQuery: {
      login_.reset();
      transaction_status_ = body.empty() ? 'I' : body[0];
      pool_.failing_ = false;
      if (!pool_.have_defaults_) {
        pool_.defaults_ = params_;
        pool_.have_defaults_ = true;
      }
      log::debug("S-{} logged in to {} as {} (backend pid {})", id_, pool_.address_text_, pool_.server_user_,
                 backend_pid_);
      pool_.set_state(*this, ServerState::idle);
      pool_.maintain();
      return;
    }
    default:
      reactor_.close(*this, Reason::server_protocol_error, fmt::format("unexpected message '{}' during login", type));
      return;
  }
}

// ---- auth.query ------------------------------------------------------------------------------

void Server::start_lookup(Client& client) {
  if (!reactor_.config().auth_query) {  // removed by a reload meanwhile
    reactor_.close(client, Reason::auth_query_failed, "authentication failed: auth.query was removed");
    pool_.server_ready(*this);
    return;
  }
  const config::AuthQuery& q = *reactor_.config().auth_query;
  lookup_client_ = &client;
  client.lookup_server_ = this;
  lookup_secret_.reset();
  lookup_error_.clear();
  lookup_row_seen_ = false;
  // The unnamed statement is about to be replaced: no client's copy lives here any more.
  unnamed_client_ = 0;
  if (!stream_.emit([&](std::string& out) {
        return proto::build::query_with_params(out, q.query, {client.startup_message_.user});
      })) {
    lookup_client_ = nullptr;
    client.lookup_server_ = nullptr;
    reactor_.close(client, Reason::auth_query_failed, "cannot encode auth.query");
    pool_.server_ready(*this);
    return;
  }
  pool_.set_state(*this, ServerState::lookup);
  reactor_.want_send(stream_);
}

void Server::handle_lookup_message(char type, std::string_view body) {
  switch (type) {
    case proto::backend::kDataRow:
      // The secret is the second column (PgBouncer's convention: usename, passwd); the first
      // row wins.
      if (auto row = proto::parse_data_row(body); row && !lookup_row_seen_) {
        lookup_row_seen_ = true;
        if (row->size() >= 2 && (*row)[1]) lookup_secret_ = std::string(*(*row)[1]);
      }
      return;
    case proto::backend::kErrorResponse:
      if (auto e = proto::parse_error_fields(body)) lookup_error_ = fmt::format("{} (SQLSTATE {})", e->message, e->sqlstate);
      else lookup_error_ = "malformed error";
      return;
    case proto::backend::kParameterStatus:
      if (auto p = proto::parse_parameter_status(body)) set_param(p->name, p->value);
      return;
    case proto::backend::kReadyForQuery: {
      transaction_status_ = body.empty() ? 'I' : body[0];
      Client* client = lookup_client_;
      lookup_client_ = nullptr;
      std::optional<std::string> secret = std::move(lookup_secret_);
      std::string error = std::move(lookup_error_);
      lookup_secret_.reset();
      pool_.server_ready(*this);
      if (client != nullptr) {
        client->lookup_server_ = nullptr;
        client->on_lookup_done(std::move(secret), error);
      }
      return;
    }
    default:
      return;  // ParseComplete, BindComplete, RowDescription, CommandComplete, notices
  }
}

// ---- release and reset -----------------------------------------------------------------------

void Server::release(bool session_reset) {
  // The client is gone. Only a connection whose every request was answered can be reused.
  // The rest of a reply that was on its way to the client is swallowed.
  swallow_remaining_ += forward_remaining_;
  forward_remaining_ = 0;
  if (requests_in_flight() > 0 || unsynced_ || copy_in_ || restore_replies_pending_ > 0 || stream_.input_size() > 0 ||
      swallow_remaining_ > 0) {
    start_draining(session_reset);
    return;
  }
  pending_settings_.clear();
  transaction_failed_ = false;
  // The departed client's last changes are not known to be mirrored anywhere: compute the
  // next restore in full.
  session_fingerprint_ = kUnknownSession;
  reset_replies_pending_ = 0;
  reset_failed_ = false;
  if (transaction_status_ != 'I') {
    (void)stream_.emit([](std::string& out) { return proto::build::query(out, "ROLLBACK"); });
    ++reset_replies_pending_;
  }
  const std::string& reset = pool_.settings_.server_reset_query;
  if (session_reset) {
    if (reset.empty()) {
      // Session state and no reset query to clear it: the connection cannot be shared.
      if (reset_replies_pending_ == 0 && pool_.settings_.pool_mode != config::PoolMode::session) {
        reactor_.close(*this, Reason::server_dirty, "session state and no server_reset_query");
        return;
      }
    } else {
      // Sent as its own Query: DISCARD ALL cannot run inside a multi-statement string.
      if (!stream_.emit([&](std::string& out) { return proto::build::query(out, reset); })) {
        reactor_.close(*this, Reason::server_reset_failed, "cannot encode server_reset_query");
        return;
      }
      ++reset_replies_pending_;
      settings_.clear();  // DISCARD ALL / RESET ALL: back to the defaults
      prepared_.clear();
    }
  }
  if (reset_replies_pending_ == 0) {
    pool_.server_ready(*this);
    return;
  }
  reactor_.want_send(stream_);
  pool_.set_state(*this, ServerState::resetting);
}

void Server::start_draining(bool session_reset) {
  // The client left with work in flight. Rather than dropping the connection (and leaving a
  // long query running on the server), cancel what runs, finish the protocol ourselves and
  // swallow the replies; the connection then goes back to the pool clean. Bounded by
  // timeouts.cancel_wait: a server that does not come back in time is closed.
  draining_ = true;
  drain_session_reset_ = session_reset;
  drain_since_ = reactor_.now();
  // Reading may have been paused for the departed client's sake (flow control): drain needs it.
  if (stream_.reading_paused_) {
    stream_.reading_paused_ = false;
    reactor_.arm_recv_for(*this);
  }
  if (copy_in_) end_copy_in();
  if (unsynced_) {
    (void)stream_.emit([](std::string& out) { return proto::build::sync(out); });
    expect('S');
    unsynced_ = false;
  }
  reactor_.want_send(stream_);
  if (requests_in_flight() > 0 && restore_replies_pending_ == 0) reactor_.start_cancel(*this);
  log::debug("S-{} draining after its client left", id_);
  drain();
}

void Server::end_copy_in() {
  // COPY FROM STDIN without a client: fail it (the server answers with an error), and Sync in
  // case it ran through the extended protocol (a spare Sync only adds a ReadyForQuery).
  (void)stream_.emit([](std::string& out) { return proto::build::copy_fail(out, "pgring: client disconnected"); });
  expect('c');
  (void)stream_.emit([](std::string& out) { return proto::build::sync(out); });
  expect('S');
  unsynced_ = false;
}

void Server::drain() {
  while (state_ == ServerState::active && draining_) {
    if (swallow_remaining_ > 0 || forward_remaining_ > 0) {
      std::size_t left = swallow_remaining_ + forward_remaining_;
      std::size_t n = std::min(left, stream_.input_size());
      if (n == 0) return;
      stream_.consume(n);
      swallow_remaining_ = left - n;
      forward_remaining_ = 0;
      continue;
    }
    if (stream_.input_size() < 5) return;
    char header[5];
    stream_.peek(header, 5);
    proto::Frame frame = proto::frame_message(std::string_view(header, 5), kMaxServerMessage);
    if (frame.status == proto::FrameStatus::invalid_length) {
      reactor_.close(*this, Reason::server_protocol_error, "invalid message length from server");
      return;
    }
    char type = frame.type;
    if (frame.size > kMaxInspected) {  // rows and data: nobody to give them to
      std::size_t n = std::min<std::size_t>(frame.size, stream_.input_size());
      stream_.consume(n);
      swallow_remaining_ = frame.size - n;
      continue;
    }
    if (stream_.input_size() < frame.size) return;
    std::string_view body = stream_.contiguous(frame.size).substr(5);
    if (restore_replies_pending_ > 0) {
      handle_restore_message(type, body);
      if (state_ != ServerState::active) return;
    } else {
      switch (type) {
        case proto::backend::kReadyForQuery:
          if (auto status = proto::parse_ready_for_query(body)) on_ready_for_query(*status);
          break;
        case proto::backend::kErrorResponse: on_error_response(); break;
        case proto::backend::kCommandComplete:
          if (auto tag = proto::parse_query(body)) on_command_complete(*tag);
          break;
        case proto::backend::kEmptyQueryResponse:
        case proto::backend::kPortalSuspended: on_command_complete({}); break;
        case proto::backend::kParseComplete: (void)pop_reply('P'); break;
        case proto::backend::kBindComplete: (void)pop_reply('B'); break;
        case proto::backend::kCloseComplete: (void)pop_reply('C'); break;
        case proto::backend::kNoData:
        case proto::backend::kRowDescription: (void)pop_reply('D'); break;
        case proto::backend::kParameterStatus:
          if (auto p = proto::parse_parameter_status(body)) set_param(p->name, p->value);
          break;
        case proto::backend::kCopyInResponse:
          copy_in_ = true;
          end_copy_in();
          reactor_.want_send(stream_);
          break;
        default: break;
      }
    }
    stream_.consume(frame.size);
    // Fake replies for a client that is gone: just drop them.
    while (expected_head_ < expected_.size() && std::string_view("pxed").find(expected_[expected_head_].kind) != std::string_view::npos)
      ++expected_head_;
    if (requests_in_flight() == 0 && !copy_in_ && !unsynced_ && restore_replies_pending_ == 0) {
      draining_ = false;
      log::debug("S-{} drained", id_);
      release(drain_session_reset_);
      return;
    }
  }
}

void Server::maybe_release() {
  // Transaction and statement mode: the link ends when the server is idle again and the client
  // has nothing half-sent. A pinned client keeps its server.
  if (client_ == nullptr || pool_.settings_.pool_mode == config::PoolMode::session) return;
  Client& client = *client_;
  if (client.pinned_state_ != 0 || restore_replies_pending_ > 0 || !idle_in_protocol()) return;
  if (client.forward_remaining_ > 0 || client.stream_.input_size() > 0) return;
  pool_.release_link(*this);
}

Server::Expected& Server::expect(char kind) {
  if (expected_head_ == expected_.size()) {
    // The server becomes busy now: the query timeout counts from here.
    busy_since_ = reactor_.now();
    if (transaction_status_ == 'I') transaction_start_ = busy_since_;
    query_timeout_canceled_ = false;
    expected_.clear();
    expected_head_ = 0;
  } else if (expected_head_ > 64 && expected_head_ * 2 > expected_.size()) {
    expected_.erase(expected_.begin(), expected_.begin() + static_cast<std::ptrdiff_t>(expected_head_));
    expected_head_ = 0;
  }
  expected_.emplace_back();
  expected_.back().kind = kind;
  return expected_.back();
}

void Server::expect(char kind, std::uint8_t session_state, std::unique_ptr<proto::sql::SetStatement> set) {
  Expected& e = expect(kind);
  e.session_state = session_state;
  e.set = std::move(set);
}

namespace {
bool is_fake(char kind) { return kind == 'p' || kind == 'x' || kind == 'e' || kind == 'd'; }
}  // namespace

void Server::flush_fakes() {
  if (client_ == nullptr) return;
  Client& client = *client_;
  bool sent = false;
  while (expected_head_ < expected_.size() && is_fake(expected_[expected_head_].kind)) {
    Expected& e = expected_[expected_head_];
    switch (e.kind) {
      case 'p': (void)client.stream_.emit([](std::string& out) { return proto::build::parse_complete(out); }); break;
      case 'x': (void)client.stream_.emit([](std::string& out) { return proto::build::close_complete(out); }); break;
      case 'e': client.stream_.emit_bytes(e.fake); break;
      case 'd':
        (void)client.stream_.emit([](std::string& out) { return proto::build::command_complete(out, "DEALLOCATE"); });
        (void)client.stream_.emit([&](std::string& out) { return proto::build::ready_for_query(out, transaction_status_); });
        break;
      default: break;
    }
    ++expected_head_;
    sent = true;
  }
  if (sent) reactor_.want_send(client.stream_);
}

void Server::pop_expected_until_ready() {
  // ReadyForQuery answers the first Query, Sync or FunctionCall; Executes before it that got no
  // reply of their own were skipped by the server after an error.
  while (expected_head_ < expected_.size()) {
    Expected& e = expected_[expected_head_];
    char kind = e.kind;
    if (kind == 'P' && e.statement != nullptr) prepared_.remove(e.statement->id);  // skipped: not prepared
    e.set.reset();
    ++expected_head_;
    if (kind == 'Q' || kind == 'S' || kind == 'F') break;
  }
}

void Server::drop_expected(std::size_t index) {
  expected_.erase(expected_.begin() + static_cast<std::ptrdiff_t>(index));
}

bool Server::pop_reply(char request_kind) {
  if (request_kind == 'E') executed_in_batch_ = true;
  if (expected_head_ >= expected_.size() || expected_[expected_head_].kind != request_kind) return false;
  Expected& e = expected_[expected_head_];
  bool skip = e.skip;
  e.set.reset();
  ++expected_head_;
  return skip;
}

bool Server::retry_after_error(const proto::ErrorFields& error) {
  // A cached statement whose plan no longer fits (DDL changed its result type), or that the
  // server lost, fails at Bind, or at a Describe of the statement. Outside an explicit
  // transaction, and before anything of its batch ran, pgring re-prepares it and replays the
  // batch once: the client sees no error. Inside a transaction the error is the client's,
  // exactly as PostgreSQL gives it.
  //
  // A Describe fails this way when the client's Parse was answered from a statement this server
  // prepared before the DDL: PostgreSQL would have prepared afresh, so the error is pgring's
  // and is always retried while the client has not been told a result type. A client that was
  // told one gets the error (its description is stale, as PostgreSQL would say).
  bool plan_changed = error.sqlstate == "0A000" && error.message.find("cached plan must not change result type") !=
                                                       std::string_view::npos;
  bool lost = error.sqlstate == "26000";
  if ((!plan_changed && !lost) || client_ == nullptr || expected_head_ >= expected_.size()) return false;
  Expected& head = expected_[expected_head_];
  Client& client = *client_;
  if ((head.kind != 'B' && head.kind != 'D') || head.statement == nullptr || transaction_status_ != 'I' ||
      executed_in_batch_)
    return false;
  if (head.kind == 'D' && !head.shape_check && client.has_described(*head.statement)) return false;
  if (head.kind == 'D' && expected_head_ + 1 == expected_.size()) {
    // Parse + Describe + Flush (asyncpg prepares so), or pgring's own shape check: nothing
    // after the Describe has reached the server. pgring ends the failed implicit transaction
    // with its own Sync, prepares the statement afresh and describes it again (a check stays a
    // check: its answer is compared with the client's description); one more round trip.
    const PreparedStatement& statement = *head.statement;
    bool check = head.shape_check;
    log::info("S-{} {} describing {}: re-preparing and retrying once", id_, error.message, statement.server_name);
    expected_.pop_back();
    (void)stream_.emit([&](std::string& out) {
      proto::Writer w(out);
      w.begin(proto::frontend::kSync).end();
      return w.ok() && proto::build::close_statement(out, statement.server_name) &&
             proto::build::parse(out, statement.server_name, statement.parse_tail);
    });
    expect('S').skip = true;
    expect('C').skip = true;
    Expected& parse = expect('P');
    parse.skip = true;
    parse.statement = &statement;
    prepared_.add(statement.id);
    (void)stream_.emit([&](std::string& out) {
      proto::Writer w(out);
      w.begin(proto::frontend::kDescribe).u8('S').cstring(statement.server_name).end();
      w.begin(proto::frontend::kFlush).end();
      return w.ok();
    });
    Expected& describe = expect('D');
    describe.statement = &statement;
    describe.skip = check;
    describe.shape_check = check;
    ++reactor_.statements().counters.retries;
    reactor_.want_send(stream_);
    return true;
  }
  // Only the last batch sent, kept whole by the client, and not retried before.
  if (expected_.back().kind != 'S' || !client.inflight_batch_ok_ || client.inflight_batch_seq_ != head.batch_seq ||
      expected_.back().batch_seq != head.batch_seq || retried_batch_seq_ == head.batch_seq + 1)
    return false;
  for (std::size_t i = expected_head_ + 1; i + 1 < expected_.size(); ++i) {
    char k = expected_[i].kind;
    if (k == 'P' || k == 'p' || k == 'x' || k == 'e' || k == 'd') return false;  // not replayable as copied
  }
  if (head.replay_offset > client.inflight_batch_.size()) return false;
  std::string_view replay = std::string_view(client.inflight_batch_).substr(head.replay_offset);
  // The replay must hold only messages whose replies pgring can track again, and the client
  // must learn the new result shape: a Describe before the first Execute (libpq's
  // PQexecPrepared sends one). A driver that reuses a row description it cached (asyncpg) gets
  // the error instead, which it handles itself by re-preparing.
  bool described = false, executed = false;
  for (std::string_view rest = replay; !rest.empty();) {
    proto::Frame f = proto::frame_message(rest, 1u << 30);
    if (f.status != proto::FrameStatus::complete) return false;
    char t = rest[0];
    if (t != 'B' && t != 'D' && t != 'E' && t != 'S' && t != 'H' && t != 'C') return false;
    if (t == 'D' && !executed) described = true;
    if (t == 'E') executed = true;
    rest.remove_prefix(f.size);
  }
  if (executed && !described) return false;
  const PreparedStatement& statement = *head.statement;
  std::uint64_t seq = head.batch_seq;
  log::info("S-{} {} for {}: re-preparing and retrying once", id_, error.message, statement.server_name);
  // The server skips the rest of the batch; its ReadyForQuery is swallowed.
  expected_.erase(expected_.begin() + static_cast<std::ptrdiff_t>(expected_head_), expected_.end() - 1);
  expected_.back().skip = true;
  // Then: Close + Parse (both swallowed), and the batch again from the failed Bind.
  (void)stream_.emit([&](std::string& out) { return proto::build::close_statement(out, statement.server_name); });
  expect('C').skip = true;
  (void)stream_.emit([&](std::string& out) {
    return proto::build::parse(out, statement.server_name, statement.parse_tail);
  });
  Expected& parse = expect('P');
  parse.skip = true;
  parse.statement = &statement;
  prepared_.add(statement.id);
  for (std::string_view rest = replay; !rest.empty();) {
    proto::Frame f = proto::frame_message(rest, 1u << 30);
    char t = rest[0];
    stream_.emit_bytes(rest.substr(0, f.size));
    if (t != 'H') {
      Expected& e = expect(t == 'B' ? 'B' : t == 'D' ? 'D' : t == 'E' ? 'E' : t == 'C' ? 'C' : 'S');
      e.batch_seq = seq;
      if (t == 'B') e.statement = &statement;
      // A Describe of this statement records the shape the client is told (not a portal's).
      if (t == 'D') {
        proto::Reader d(rest.substr(5, f.size - 5));
        char kind = static_cast<char>(d.u8());
        if (d.cstring() == statement.server_name && d.ok() && kind == 'S') e.statement = &statement;
      }
    }
    rest.remove_prefix(f.size);
  }
  retried_batch_seq_ = seq + 1;
  ++reactor_.statements().counters.retries;
  reactor_.want_send(stream_);
  return true;
}

void Server::on_error_response() {
  transaction_failed_ = true;
  if (expected_head_ < expected_.size()) {
    Expected& head = expected_[expected_head_];
    char kind = head.kind;
    if (kind == 'P' || kind == 'B' || kind == 'D' || kind == 'C' || kind == 'E') {
      // An extended-protocol request failed: the server now skips everything up to the next
      // Sync, so those requests (and fake replies queued among them) will never be answered.
      // Statements those skipped Parses would have prepared do not exist.
      std::size_t i = expected_head_;
      while (i < expected_.size() && expected_[i].kind != 'S') {
        if (expected_[i].kind == 'P' && expected_[i].statement != nullptr) prepared_.remove(expected_[i].statement->id);
        ++i;
      }
      expected_.erase(expected_.begin() + static_cast<std::ptrdiff_t>(expected_head_),
                      expected_.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }
  if (copy_in_) {
    // An error ends COPY FROM STDIN; Syncs sent during it were ignored.
    copy_in_ = false;
    for (std::size_t i = expected_head_; i < expected_.size(); ++i) {
      if (expected_[i].kind == 'c') {
        drop_expected(i);
        break;
      }
      if (expected_[i].kind == 'S') drop_expected(i--);
    }
  }
}

void Server::on_command_complete(std::string_view tag) {
  // The request this completes: an Execute (popped now), or the Query still running.
  std::unique_ptr<proto::sql::SetStatement> set;
  if (expected_head_ < expected_.size()) {
    Expected& head = expected_[expected_head_];
    if (head.kind == 'E') {
      set = std::move(head.set);
      ++expected_head_;
      executed_in_batch_ = true;
    } else if (head.kind == 'Q' && head.set) {
      set = std::make_unique<proto::sql::SetStatement>(*head.set);
    }
  }
  if (copy_in_) {
    // COPY FROM STDIN is over. The server ignored every Sync sent during the copy: forget them,
    // and the CopyDone/CopyFail that ended it.
    copy_in_ = false;
    for (std::size_t i = expected_head_; i < expected_.size(); ++i) {
      if (expected_[i].kind == 'c') {
        drop_expected(i);
        break;
      }
      if (expected_[i].kind == 'S') drop_expected(i--);
    }
  }
  if ((tag == "SET" || tag == "RESET") && set) {
    // A reported parameter is tracked through ParameterStatus; other settings are replayed.
    bool reported = false;
    for (const auto& [name, value] : params_) {
      (void)value;
      reported |= name.size() == set->name.size() &&
                  std::equal(name.begin(), name.end(), set->name.begin(),
                             [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; });
    }
    // A RESET matters even for a reported parameter: it returns to the startup value.
    if (!reported || set->kind != proto::sql::SetStatement::Kind::set) pending_settings_.push_back(*set);
  } else if (tag == "DISCARD ALL") {
    pending_settings_.push_back(proto::sql::SetStatement{proto::sql::SetStatement::Kind::reset_all, {}, {}});
    // Every prepared statement of the session is gone: the client's and pgring's.
    prepared_.clear();
    if (client_ != nullptr) client_->statements_.clear();
  } else if (tag == "DEALLOCATE ALL") {
    prepared_.clear();
  } else if (tag == "PREPARE") {
    if (client_ != nullptr) client_->note_session_state(proto::sql::kSqlPrepare);
  } else if (tag == "LISTEN") {
    if (client_ != nullptr) client_->note_session_state(proto::sql::kListen);
  } else if (tag == "ROLLBACK") {
    transaction_failed_ = true;
  }
}

bool Server::reset_pending(std::string_view name) const {
  for (const auto& set : pending_settings_) {
    if (set.kind == proto::sql::SetStatement::Kind::reset_all) return true;
    if (set.kind == proto::sql::SetStatement::Kind::reset && set.name.size() == name.size() &&
        std::equal(name.begin(), name.end(), set.name.begin(),
                   [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; }))
      return true;
  }
  return false;
}

void Server::on_ready_for_query(char status) {
  executed_in_batch_ = false;
  if (status != 'I' && transaction_status_ == 'I') transaction_since_ = reactor_.now();
  pool_.stats_.query.observe(reactor_.now() - busy_since_);
  if (status == 'I') {
    ++pool_.stats_.transactions;
    pool_.stats_.transaction.observe(reactor_.now() - transaction_start_);
  }
  transaction_status_ = status;
  last_ready_ = reactor_.now();
  pop_expected_until_ready();
  // Pipelined requests still queued: the next one is running from now on.
  if (expected_head_ < expected_.size()) {
    busy_since_ = reactor_.now();
    query_timeout_canceled_ = false;
  }
  if (status == 'I') {
    // The transaction ended: its replayable SETs take effect unless it rolled back.
    if (!transaction_failed_ && client_ != nullptr) {
      // Both sides change the same way, except RESET ALL: the server returns to its defaults,
      // the client to its startup values (the next restore re-applies those).
      for (const proto::sql::SetStatement& set : pending_settings_) {
        client_->apply_setting(set);
        // A RESET returns the client to its startup values but the server to its defaults:
        // the two sessions differ until the next restore.
        if (set.kind != proto::sql::SetStatement::Kind::set) session_diverged_ = true;
        switch (set.kind) {
          case proto::sql::SetStatement::Kind::set: {
            bool found = false;
            for (auto& [k, v] : settings_)
              if (k == set.name) {
                v = set.value;
                found = true;
              }
            if (!found) settings_.emplace_back(set.name, set.value);
            break;
          }
          case proto::sql::SetStatement::Kind::reset:
            std::erase_if(settings_, [&](const auto& kv) { return kv.first == set.name; });
            break;
          case proto::sql::SetStatement::Kind::reset_all: settings_.clear(); break;
        }
      }
    }
    pending_settings_.clear();
    transaction_failed_ = false;
  }
}

void Server::handle_restore_message(char type, std::string_view body) {
  switch (type) {
    case proto::backend::kParameterStatus:
      if (auto p = proto::parse_parameter_status(body)) {
        set_param(p->name, p->value);
        if (client_ != nullptr) client_->on_server_parameter(p->name, p->value);
      }
      return;
    case proto::backend::kErrorResponse: {
      auto e = proto::parse_error_fields(body);
      restore_failed_ = true;
      restore_error_ = e ? fmt::format("{} (SQLSTATE {})", e->message, e->sqlstate) : "error";
      return;
    }
    case proto::backend::kReadyForQuery:
      transaction_status_ = body.empty() ? '?' : body[0];
      if (--restore_replies_pending_ > 0) return;
      if (restore_failed_ || transaction_status_ != 'I') {
        // The server's session is not what anyone expects: neither side may continue with it.
        std::string message = "could not apply session settings: " + restore_error_;
        if (client_ != nullptr) {
          Client* client = client_;
          client_ = nullptr;
          client->server_ = nullptr;
          reactor_.close(*client, Reason::server_reset_failed, message);
        }
        reactor_.close(*this, Reason::server_reset_failed, message);
        return;
      }
      if (client_ != nullptr) client_->on_restored();
      return;
    default:
      return;  // CommandComplete of our SETs, notices: swallowed
  }
}

void Server::handle_reset_message(char type, std::string_view body) {
  switch (type) {
    case proto::backend::kParameterStatus:
      if (auto p = proto::parse_parameter_status(body)) set_param(p->name, p->value);
      return;
    case proto::backend::kErrorResponse: {
      auto e = proto::parse_error_fields(body);
      reset_failed_ = true;
      if (e && e->is_fatal()) reactor_.close(*this, Reason::server_reset_failed, e->message);
      return;
    }
    case proto::backend::kReadyForQuery: {
      transaction_status_ = body.empty() ? '?' : body[0];
      if (--reset_replies_pending_ > 0) return;
      if (reset_failed_ || transaction_status_ != 'I') {
        reactor_.close(*this, Reason::server_reset_failed, "server_reset_query failed");
        return;
      }
      pool_.server_ready(*this);
      return;
    }
    default:
      return;  // CommandComplete, notices: the reset's own replies, swallowed
  }
}

void Server::handle_idle_message(char type, std::string_view body) {
  switch (type) {
    case proto::backend::kParameterStatus:
      if (auto p = proto::parse_parameter_status(body)) set_param(p->name, p->value);
      return;
    case proto::backend::kNoticeResponse:
    case proto::backend::kNotificationResponse:
      return;  // nobody to tell while idle
    case proto::backend::kErrorResponse: {
      // Typically FATAL 57P01 "terminating connection due to administrator command".
      auto e = proto::parse_error_fields(body);
      reactor_.close(*this, Reason::server_eof, e ? std::string(e->message) : std::string("error while idle"));
      return;
    }
    default:
      reactor_.close(*this, Reason::server_protocol_error, fmt::format("unexpected message '{}' while idle", type));
      return;
  }
}

// ---- active: server -> client ----------------------------------------------------------------

void Server::forward_to_client() {
  if (draining_) {
    drain();
    return;
  }
  for (;;) {
    if (client_ == nullptr || state_ != ServerState::active) return;
    Client& client = *client_;
    if (forward_remaining_ > 0) {
      std::size_t n = std::min(forward_remaining_, stream_.input_size());
      if (n == 0) break;
      stream_.forward(n, client.stream_);
      forward_remaining_ -= n;
      continue;
    }
    if (swallow_remaining_ > 0) {
      std::size_t n = std::min(swallow_remaining_, stream_.input_size());
      if (n == 0) break;
      stream_.consume(n);
      swallow_remaining_ -= n;
      continue;
    }
    if (stream_.input_size() < 5) break;
    char header[5];
    stream_.peek(header, 5);
    proto::Frame frame = proto::frame_message(std::string_view(header, 5), kMaxServerMessage);
    if (frame.status == proto::FrameStatus::invalid_length) {
      reactor_.close(*this, Reason::server_protocol_error, "invalid message length from server");
      return;
    }
    if (restore_replies_pending_ > 0) {
      // Replies to the settings pgring restored: read whole and swallowed.
      if (frame.size > kMaxInspected) {
        reactor_.close(*this, Reason::server_protocol_error, "oversized reply while restoring settings");
        return;
      }
      if (stream_.input_size() < frame.size) break;
      handle_restore_message(frame.type, stream_.contiguous(frame.size).substr(5));
      if (state_ == ServerState::closing) return;
      stream_.consume(frame.size);
      continue;
    }
    // The few messages pgring tracks are read whole; everything else streams through.
    char type = frame.type;
    bool inspect = type == proto::backend::kReadyForQuery || type == proto::backend::kParameterStatus ||
                   type == proto::backend::kCommandComplete || type == proto::backend::kErrorResponse;
    bool swallow = false;
    bool incomplete = false;  // must wait for the rest of this message
    bool consumed = false;    // already taken out of the input
    if (inspect && frame.size <= kMaxInspected) {
      if (stream_.input_size() < frame.size) break;
      std::string_view body = stream_.contiguous(frame.size).substr(5);
      if (type == proto::backend::kReadyForQuery) {
        auto status = proto::parse_ready_for_query(body);
        if (!status) {
          reactor_.close(*this, Reason::server_protocol_error, "malformed ReadyForQuery");
          return;
        }
        if (pool_.settings_.pool_mode == config::PoolMode::statement && *status != 'I' && client.pinned_state_ == 0) {
          refuse_transaction_block(frame.size);
          continue;
        }
        // The ReadyForQuery of a batch pgring is retrying belongs to pgring.
        swallow = expected_head_ < expected_.size() && expected_[expected_head_].kind == 'S' &&
                  expected_[expected_head_].skip;
        on_ready_for_query(*status);
      } else if (type == proto::backend::kErrorResponse) {
        auto fields = proto::parse_error_fields(body);
        if (expected_head_ < expected_.size() && expected_[expected_head_].kind == 'E' &&
            !expected_[expected_head_].fake.empty()) {
          // An error pgring provoked on purpose: the client gets the one it stands for.
          client.stream_.emit_bytes(expected_[expected_head_].fake);
          on_error_response();
          swallow = true;
        } else if (fields && retry_after_error(*fields)) {
          swallow = true;
        } else {
          if (fields && fields->sqlstate == "0A000" &&
              fields->message.find("cached plan must not change result type") != std::string_view::npos &&
              expected_head_ < expected_.size() && expected_[expected_head_].statement != nullptr) {
            // Not retried (inside a transaction, or a driver with its own row description):
            // the client gets the error, and its next Parse of this text prepares afresh.
            reactor_.statements().retire(*expected_[expected_head_].statement);
          }
          // (An error of an earlier pipelined batch may arrive while a check is pending: only
          // the check's own Parse or Describe failing ends the check.)
          bool check_failed = client.shape_check_pending_ && expected_head_ < expected_.size() &&
                              expected_[expected_head_].shape_check;
          on_error_response();
          if (check_failed) {
            // The shape check's Parse or Describe failed (in a failed transaction: 25P02): the
            // error stands for the held request, as PostgreSQL would give it, and the server
            // skips to the client's Sync.
            client.on_shape_check_failed();
            if (client_ == nullptr || client.state_ == ClientState::closing) return;
          }
          std::string klass = fields && fields->sqlstate.size() >= 2 ? std::string(fields->sqlstate.substr(0, 2)) : "??";
          ++pool_.stats_.errors_by_class[klass];
        }
      } else if (type == proto::backend::kParameterStatus) {
        if (auto p = proto::parse_parameter_status(body)) {
          set_param(p->name, p->value);
          const std::string* startup = reset_pending(p->name) ? client.startup_value(p->name) : nullptr;
          if (startup != nullptr && *startup != p->value) {
            // RESET ALL / DISCARD ALL: PostgreSQL returns to the session's startup values, this
            // server to its own defaults. The client is told its startup value, which the next
            // restore applies again.
            std::string value = *startup;
            std::string name(p->name);
            client.on_server_parameter(name, value);
            (void)client.stream_.emit([&](std::string& out) { return proto::build::parameter_status(out, name, value); });
            swallow = true;
          } else {
            client.on_server_parameter(p->name, p->value);
          }
        }
      } else if (auto tag = proto::parse_query(body)) {  // CommandComplete: String tag
        on_command_complete(*tag);
        if (client_ == nullptr || client.state_ == ClientState::closing) return;
      }
    } else {
      switch (type) {
        case proto::backend::kParseComplete: swallow = pop_reply('P'); break;
        case proto::backend::kBindComplete: swallow = pop_reply('B'); break;
        case proto::backend::kCloseComplete: swallow = pop_reply('C'); break;
        case proto::backend::kParameterDescription:
          swallow = expected_head_ < expected_.size() && expected_[expected_head_].kind == 'D' &&
                    expected_[expected_head_].skip;
          break;
        case proto::backend::kNoData:
        case proto::backend::kRowDescription: {  // Describe's; a Query's pops nothing
          if (expected_head_ >= expected_.size() || expected_[expected_head_].kind != 'D') break;
          const PreparedStatement* statement = expected_[expected_head_].statement;
          bool check = expected_[expected_head_].shape_check;
          Shape shape = 0;
          if (statement != nullptr) {
            if (type == proto::backend::kNoData) {
              shape = shape_of("n");
            } else if (frame.size <= kMaxInspected) {  // a huge RowDescription is not compared
              if (stream_.input_size() < frame.size) {
                incomplete = true;
                break;
              }
              shape = shape_of(stream_.contiguous(frame.size).substr(5));
            }
            if (shape != 0) prepared_.set_shape(statement->id, shape);
          }
          swallow = pop_reply('D');
          if (statement != nullptr && !check) client.on_described(*statement, shape);
          if (check && statement != nullptr) {
            std::size_t have = std::min<std::size_t>(frame.size, stream_.input_size());
            stream_.consume(have);
            swallow_remaining_ = frame.size - have;  // only a huge RowDescription arrives in parts
            client.on_shape_checked(*statement, shape);
            consumed = true;
          }
          break;
        }
        case proto::backend::kErrorResponse:  // too large to read whole: not retried
          on_error_response();
          ++pool_.stats_.errors_by_class["??"];
          break;
        case proto::backend::kEmptyQueryResponse:
        case proto::backend::kPortalSuspended: on_command_complete({}); break;
        case proto::backend::kCopyInResponse: copy_in_ = true; break;
        default: break;
      }
    }
    if (incomplete) break;  // a RowDescription to compare has not fully arrived
    if (consumed) {
      // The shape check's RowDescription, already consumed; the client resumed (or failed).
      if (client_ == nullptr || state_ != ServerState::active) return;
      continue;
    }
    std::size_t n = std::min<std::size_t>(frame.size, stream_.input_size());
    if (swallow) {
      stream_.consume(n);
    } else {
      stream_.forward(n, client.stream_);
    }
    forward_remaining_ = swallow ? 0 : frame.size - n;
    if (swallow && n < frame.size) swallow_remaining_ = frame.size - n;
    flush_fakes();
    if (type == proto::backend::kReadyForQuery && n == frame.size) {
      reactor_.want_send(client.stream_);
      maybe_release();
      if (client_ == nullptr) return;  // released: anything further is not this client's
    }
  }
  if (client_ != nullptr) {
    reactor_.want_send(client_->stream_);
    reactor_.apply_backpressure(stream_, client_->stream_);
  }
}

void Server::refuse_transaction_block(std::size_t ready_size) {
  // Statement mode: the statement opened a transaction block. The client gets an error instead
  // of this ReadyForQuery; pgring rolls the block back on its own.
  Client& client = *client_;
  stream_.consume(ready_size);
  pop_expected_until_ready();
  (void)client.stream_.emit([](std::string& out) {
    return proto::build::error_response(out, "ERROR", "0A000",
                                        "pgring: transaction blocks are not allowed in statement pooling mode");
  });
  (void)client.stream_.emit([](std::string& out) { return proto::build::ready_for_query(out, 'I'); });
  reactor_.want_send(client.stream_);
  (void)stream_.emit([](std::string& out) { return proto::build::query(out, "ROLLBACK"); });
  ++restore_replies_pending_;
  reactor_.want_send(stream_);
  transaction_status_ = 'I';
}

}  // namespace pgring
