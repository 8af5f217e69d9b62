#include "daemon/server.hpp"

#include <openssl/rand.h>

#include "daemon/client.hpp"
#include "daemon/log.hpp"
#include "daemon/pool.hpp"
#include "daemon/reactor.hpp"
#include "proto/builders.hpp"
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
  // Login, reset and idle: every message is read whole and handled here.
  while (state_ == ServerState::login || state_ == ServerState::resetting || state_ == ServerState::idle) {
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
          if (!need_plain("SCRAM-SHA-256")) return;
          unsigned char raw[18];
          RAND_bytes(raw, sizeof raw);
          std::string nonce = proto::scram::base64_encode(std::string_view(reinterpret_cast<char*>(raw), sizeof raw));
          std::string first = proto::scram::client_first(nonce);
          login_->scram_client_first_bare = first.substr(3);  // after the gs2 header "n,,"
          (void)stream_.emit([&](std::string& out) {
            return proto::build::sasl_initial_response(out, proto::scram::kMechanism, first);
          });
          break;
        }
        case AuthCode::sasl_continue: {
          auto final_message = proto::scram::client_final(password, login_->scram_client_first_bare, auth->data);
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

// ---- release and reset -----------------------------------------------------------------------

void Server::release() {
  // The client is gone. Only a connection whose every request was answered can be reused.
  forward_remaining_ = 0;
  if (requests_in_flight_ > 0 || unsynced_ || stream_.input_size() > 0) {
    reactor_.close(*this, Reason::server_dirty, "client left with a request in flight");
    return;
  }
  reset_replies_pending_ = 0;
  reset_failed_ = false;
  if (transaction_status_ != 'I') {
    (void)stream_.emit([](std::string& out) { return proto::build::query(out, "ROLLBACK"); });
    ++reset_replies_pending_;
  }
  const std::string& reset = pool_.settings_.server_reset_query;
  if (!reset.empty()) {
    // Sent as its own Query: DISCARD ALL cannot run inside a multi-statement string.
    if (!stream_.emit([&](std::string& out) { return proto::build::query(out, reset); })) {
      reactor_.close(*this, Reason::server_reset_failed, "cannot encode server_reset_query");
      return;
    }
    ++reset_replies_pending_;
  }
  if (reset_replies_pending_ == 0) {
    pool_.set_state(*this, ServerState::idle);
    pool_.maintain();
    return;
  }
  reactor_.want_send(stream_);
  pool_.set_state(*this, ServerState::resetting);
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
      pool_.set_state(*this, ServerState::idle);
      pool_.maintain();
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
  Client& client = *client_;
  for (;;) {
    if (forward_remaining_ > 0) {
      std::size_t n = std::min(forward_remaining_, stream_.input_size());
      if (n == 0) break;
      stream_.forward(n, client.stream_);
      forward_remaining_ -= n;
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
    // The few messages pgring tracks are read whole; everything else streams through.
    bool inspect = frame.type == proto::backend::kReadyForQuery || frame.type == proto::backend::kParameterStatus;
    if (inspect && frame.size <= kMaxInspected) {
      if (stream_.input_size() < frame.size) break;
      std::string_view body = stream_.contiguous(frame.size).substr(5);
      if (frame.type == proto::backend::kReadyForQuery) {
        auto status = proto::parse_ready_for_query(body);
        if (!status) {
          reactor_.close(*this, Reason::server_protocol_error, "malformed ReadyForQuery");
          return;
        }
        transaction_status_ = *status;
        if (requests_in_flight_ > 0) --requests_in_flight_;
      } else if (auto p = proto::parse_parameter_status(body)) {
        set_param(p->name, p->value);
      }
    }
    std::size_t n = std::min<std::size_t>(frame.size, stream_.input_size());
    stream_.forward(n, client.stream_);
    forward_remaining_ = frame.size - n;
  }
  reactor_.want_send(client.stream_);
  reactor_.apply_backpressure(stream_, client.stream_);
}

}  // namespace pgring
