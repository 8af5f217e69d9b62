// (split from conn/server.cpp)
#include <openssl/rand.h>

#include <algorithm>
#include <cctype>

#include "daemon/conn/client.hpp"
#include "daemon/conn/server.hpp"
#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/net/tls.hpp"
#include "daemon/pool/pool.hpp"
#include "proto/builders.hpp"
#include "proto/bytes.hpp"
#include "proto/md5.hpp"
#include "proto/messages.hpp"

namespace pgring {

void Server::on_connected() {
  reactor_.set_state(*this, ServerState::login);
  login_ = std::make_unique<LoginState>();
  const config::ServerTls& tls = reactor_.config().tls_server;
  bool unix_socket = endpoint_->unix_socket();
  if (tls.mode != config::ServerTlsMode::disable && !unix_socket &&
      reactor_.tls().server_side != nullptr) {
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
      reactor_.close(*this, Reason::server_protocol_error,
                     "server sent unencrypted data after its TLS answer");
      return false;
    }
    if (answer == 'N') {
      if (tls.mode != config::ServerTlsMode::prefer) {
        reactor_.close(*this, Reason::server_login_failed,
                       fmt::format("server does not support TLS (tls.server.mode {})",
                                   config::to_string(tls.mode)));
        return false;
      }
      tls_step_ = TlsStep::none;
      send_startup();
      return false;
    }
    if (answer != 'S') {
      // An error here is not shown: it came before the server was authenticated (CVE-2024-10977).
      reactor_.close(*this, Reason::server_protocol_error,
                     "server answered the SSLRequest with something else");
      return false;
    }
    std::unique_ptr<TlsSession> session =
        TlsSession::connect(reactor_.tls().server_side.get(), endpoint_->name, tls.mode);
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
  ++reactor_.tls_handshakes_[{"server", std::string(stream_.tls()->version())}];
  log::debug("S-{} TLS {} with {}", id_, stream_.tls()->version(), endpoint_->text);
  send_startup();
  return true;
}

void Server::send_startup() {
  std::vector<std::pair<std::string_view, std::string_view>> params{
      {"user", pool_.server_user_},
      {"database", pool_.server_database()},
  };
  if (startup_) {
    // Session mode: the clients' own parameters, `options` included, as they sent them.
    params.insert(params.end(), startup_->server_params.begin(), startup_->server_params.end());
    // A replication connection: the walsender session the client asked for.
    if (pool_.replication_)
      params.emplace_back("replication", startup_->message.find("replication"));
  }
  if (!stream_.emit([&](std::string& out) {
        return proto::build::startup_message(out, proto::kProtocol30, params);
      })) {
    reactor_.close(*this, Reason::server_login_failed, "cannot encode the startup packet");
    return;
  }
  reactor_.want_send(stream_);
}

// ---- login -----------------------------------------------------------------------------------

void Server::handle_login_message(char type, std::string_view body) {
  using proto::AuthCode;
  if (login_->role_check) {
    check_role(type, body);
    return;
  }
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
        reactor_.close(
            *this, Reason::server_login_failed,
            fmt::format(
                "server asks for {} authentication for user \"{}\" but no plain password is "
                "configured for it",
                method, pool_.server_user_));
        return false;
      };
      switch (auth->code) {
        case AuthCode::ok:
          if (login_->expected_server_signature != proto::scram::Key{} &&
              !login_->scram_final_checked) {
            reactor_.close(*this, Reason::server_protocol_error,
                           "server skipped SCRAM server-final-message");
          }
          return;
        case AuthCode::cleartext_password:
          if (!need_plain("password")) return;
          (void)stream_.emit(
              [&](std::string& out) { return proto::build::password_message(out, password); });
          break;
        case AuthCode::md5_password: {
          if (password.empty()) {
            need_plain("md5");
            return;
          }
          proto::md5::Salt salt;
          std::copy(auth->data.begin(), auth->data.end(), salt.begin());
          std::string response = is_md5_secret
                                     ? proto::md5::response_from_secret(password, salt)
                                     : proto::md5::response(pool_.server_user_, password, salt);
          (void)stream_.emit(
              [&](std::string& out) { return proto::build::password_message(out, response); });
          break;
        }
        case AuthCode::sasl: {
          if (!proto::sasl_offers(auth->data, proto::scram::kMechanism)) {
            reactor_.close(*this, Reason::server_login_failed,
                           "server offers no SASL mechanism pgring supports");
            return;
          }
          if (password.empty() && !pool_.server_secret_.empty()) {
            // Only the SCRAM secret is configured: pass through the ClientKey of a client of
            // this user that logged in to pgring (PostgreSQL must store the same secret).
            login_->client_key =
                reactor_.shared().client_key(pool_.server_user_, pool_.server_secret_);
            if (!login_->client_key) {
              reactor_.close(
                  *this, Reason::server_login_failed,
                  fmt::format(
                      "server asks for SCRAM-SHA-256 for user \"{}\"; pgring has its SCRAM secret "
                      "only, and no client of this user has logged in with SCRAM yet "
                      "(pass-through)",
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
            bool plus = proto::sasl_offers(auth->data, proto::scram::kMechanismPlus) &&
                        !login_->end_point.empty();
            login_->binding = plus ? proto::scram::Binding::bind : proto::scram::Binding::could;
          }
          unsigned char raw[18];
          RAND_bytes(raw, sizeof raw);
          std::string nonce = proto::scram::base64_encode(
              std::string_view(reinterpret_cast<char*>(raw), sizeof raw));
          std::string first = proto::scram::client_first(nonce, login_->binding);
          login_->scram_client_first_bare =
              first.substr(proto::scram::gs2_header(login_->binding).size());
          std::string_view mechanism = login_->binding == proto::scram::Binding::bind
                                           ? proto::scram::kMechanismPlus
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
              final_message = proto::scram::client_final_from_keys(
                  *login_->client_key, *secret, login_->scram_client_first_bare, auth->data,
                  login_->binding, login_->end_point);
            if (!final_message) {
              reactor_.close(*this, Reason::server_login_failed,
                             fmt::format("SCRAM pass-through for user \"{}\" needs the server to "
                                         "store the same secret "
                                         "(salt and iterations) as users.{}.password",
                                         pool_.server_user_, pool_.server_user_));
              return;
            }
          } else {
            final_message =
                proto::scram::client_final(password, login_->scram_client_first_bare, auth->data,
                                           login_->binding, login_->end_point);
          }
          if (!final_message) {
            reactor_.close(*this, Reason::server_protocol_error,
                           "malformed SCRAM server-first-message");
            return;
          }
          login_->expected_server_signature = final_message->expected_server_signature;
          (void)stream_.emit([&](std::string& out) {
            return proto::build::sasl_response(out, final_message->message);
          });
          break;
        }
        case AuthCode::sasl_final:
          // The server proves it knows the password too: never trust a server that cannot.
          if (!proto::scram::verify_server_final(auth->data, login_->expected_server_signature)) {
            reactor_.close(*this, Reason::server_protocol_error,
                           "server's SCRAM signature is invalid");
            return;
          }
          login_->scram_final_checked = true;
          return;
        default:
          reactor_.close(
              *this, Reason::server_login_failed,
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
      if (e) {
        login_error_sqlstate_ = std::string(e->sqlstate);
        login_error_message_ = std::string(e->message);
      }
      if (startup_ && e && proto::refuses_setting(e->sqlstate, e->message)) {
        // PostgreSQL refused the clients' own startup parameters: their logins fail with its
        // error, as they would without pgring; the server is fine for everyone else.
        // (Copied first: closing discards the input `body` views.)
        std::string error(body), message(e->message);
        pool_.refuse_startup(*startup_, error, message);
        reactor_.close(*this, Reason::startup_rejected, message);
        return;
      }
      std::string message =
          e ? fmt::format("server login failed: {} (SQLSTATE {})", e->message, e->sqlstate)
            : std::string("server login failed");
      reactor_.close(*this, Reason::server_login_failed, message);
      return;
    }
    case proto::backend::kReadyForQuery: {
      // (Not on a replication connection: a physical walsender runs no SQL. Its host was chosen
      // by the roles the health checks saw.)
      if (pool_.group_->needs_role() && !pool_.replication_) {
        // The database asks for a primary or a replica: what is this host now? (A role seen
        // by the health checks may be seconds old; a server's own answer at login is not.)
        login_->role_check = true;
        (void)stream_.emit([](std::string& out) {
          return proto::build::query(out, "SELECT pg_is_in_recovery()");
        });
        reactor_.want_send(stream_);
        return;
      }
      logged_in(body);
      return;
    }
    default:
      reactor_.close(*this, Reason::server_protocol_error,
                     fmt::format("unexpected message '{}' during login", type));
      return;
  }
}

void Server::check_role(char type, std::string_view body) {
  switch (type) {
    case proto::backend::kDataRow: {
      // One column: 't' or 'f'.
      auto row = proto::parse_data_row(body);
      if (row && row->size() == 1 && (*row)[0] && !(*row)[0]->empty())
        login_->in_recovery = (*row)[0]->front() == 't';
      return;
    }
    case proto::backend::kParameterStatus:
      if (auto p = proto::parse_parameter_status(body)) set_param(p->name, p->value);
      return;
    case proto::backend::kRowDescription:
    case proto::backend::kCommandComplete:
    case proto::backend::kNoticeResponse:
      return;
    case proto::backend::kErrorResponse: {
      auto e = proto::parse_error_fields(body);
      reactor_.close(*this, Reason::server_protocol_error,
                     fmt::format("pg_is_in_recovery() failed: {}",
                                 e ? std::string(e->message) : std::string("?")));
      return;
    }
    case proto::backend::kReadyForQuery: {
      if (!login_->in_recovery) {
        reactor_.close(*this, Reason::server_protocol_error, "pg_is_in_recovery() gave no answer");
        return;
      }
      Endpoint& endpoint = *endpoint_;
      if (pool_.group_->learned_role(endpoint, *login_->in_recovery)) {
        log::info("hosts: {} of database {} is a {}", endpoint.text, pool_.database_,
                  *login_->in_recovery ? "replica" : "primary");
        reactor_.shared().hosts->notify(pool_.group_key_);
      }
      if (!pool_.group_->fits(endpoint, listener_)) {
        reactor_.close(*this, Reason::server_wrong_role,
                       fmt::format("{} is a {}; database {} has target {}", endpoint.text,
                                   to_string(endpoint.role.load()), pool_.database_,
                                   config::to_string(pool_.group_->target())));
        return;
      }
      logged_in(body);
      return;
    }
    default:
      reactor_.close(*this, Reason::server_protocol_error,
                     fmt::format("unexpected message '{}' answering pg_is_in_recovery()", type));
      return;
  }
}

void Server::end_login_count() {
  if (!logging_in_) return;
  logging_in_ = false;
  --endpoint_->logins;
}

void Server::logged_in(std::string_view ready_body) {
  end_login_count();
  login_.reset();
  transaction_status_ = ready_body.empty() ? 'I' : ready_body[0];
  (void)pool_.group_->logged_in(*endpoint_);
  pool_.clear_failure();
  take_startup_state();
  if (!pool_.have_defaults_ && !startup_) {
    pool_.defaults_ = params_;
    pool_.have_defaults_ = true;
  }
  log::debug("S-{} logged in to {} as {} (backend pid {})", id_, endpoint_->text,
             pool_.server_user_, backend_pid_);
  if (listener_) {
    pool_.listener_logged_in(*this);
    return;
  }
  reactor_.set_state(*this, ServerState::idle);
  pool_.maintain();
}

}  // namespace pgring
