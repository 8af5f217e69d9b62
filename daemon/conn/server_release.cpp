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

// ---- release and reset -----------------------------------------------------------------------

void Server::release(bool session_reset) {
  if (pool_.replication_) {
    // A walsender session is its client's alone: it ends with it (never reset, never reused).
    reactor_.close(*this, Reason::replication_ended);
    return;
  }
  end_flow_control();
  // The client is gone. Only a connection whose every request was answered can be reused.
  // The rest of a reply that was on its way to the client is swallowed.
  swallow_remaining_ += forward_remaining_;
  forward_remaining_ = 0;
  if (!requests_.idle() || restore_replies_pending_ > 0 || stream_.input_size() > 0 ||
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
      // DISCARD ALL / RESET ALL: back to the session's start. For a connection opened with its
      // clients' startup parameters that is exactly a new client's session: it goes to the next
      // one without a restore.
      if (startup_)
        take_startup_state();
      else
        settings_.clear();
      prepared_.clear();
      unclosed_.clear();
    }
  }
  if (reset_replies_pending_ == 0) {
    pool_.server_ready(*this);
    return;
  }
  reactor_.want_send(stream_);
  reactor_.set_state(*this, ServerState::resetting);
}

void Server::take_startup_state() {
  settings_ = startup_ ? startup_->settings : NameValues{};
  session_fingerprint_ = startup_ ? session_fingerprint(startup_->values, startup_->settings) : 0;
}

void Server::end_flow_control() {
  // Flow control paused reading for the linked client's sake: that ends with the link (the
  // drain, the reset and the next client all need the replies). With a multishot receive the
  // pause can outlive the reply that ended the link: the bytes after the pause came in
  // completions of their own, the ReadyForQuery among them.
  if (!stream_.reading_paused_) return;
  stream_.reading_paused_ = false;
  reactor_.arm_recv_for(*this);  // (still armed, or armed again once its cancel completes)
}

void Server::start_draining(bool session_reset) {
  // The client left with work in flight. Rather than dropping the connection (and leaving a
  // long query running on the server), cancel what runs, finish the protocol ourselves and
  // swallow the replies; the connection then goes back to the pool clean. Bounded by
  // timeouts.cancel_wait: a server that does not come back in time is closed.
  draining_ = true;
  drain_session_reset_ = session_reset;
  drain_since_ = reactor_.now();
  if (requests_.copy_in_) end_copy_in();
  if (requests_.unsynced_) {
    (void)stream_.emit([](std::string& out) { return proto::build::sync(out); });
    requests_.push(Request::sync, reactor_.now());
    requests_.unsynced_ = false;
  }
  reactor_.want_send(stream_);
  if (requests_in_flight() > 0 && restore_replies_pending_ == 0) reactor_.start_cancel(*this);
  log::debug("S-{} draining after its client left", id_);
  drain();
}

void Server::end_copy_in() {
  // COPY FROM STDIN without a client: fail it (the server answers with an error), and Sync in
  // case it ran through the extended protocol (a spare Sync only adds a ReadyForQuery).
  (void)stream_.emit(
      [](std::string& out) { return proto::build::copy_fail(out, "pgring: client disconnected"); });
  requests_.push(Request::copy_end, reactor_.now());
  (void)stream_.emit([](std::string& out) { return proto::build::sync(out); });
  requests_.push(Request::sync, reactor_.now());
  requests_.unsynced_ = false;
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
    proto::Frame frame = stream_.next_frame(kMaxServerMessage);
    if (frame.bad()) {
      reactor_.close(*this, Reason::server_protocol_error, "invalid message length from server");
      return;
    }
    if (!frame.header_known()) return;
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
        case proto::backend::kErrorResponse:
          on_error_response();
          break;
        case proto::backend::kCommandComplete:
          if (auto tag = proto::parse_query(body)) on_command_complete(*tag);
          break;
        case proto::backend::kEmptyQueryResponse:
        case proto::backend::kPortalSuspended:
          on_command_complete({});
          break;
        case proto::backend::kParseComplete:
          (void)pop_reply(Request::parse);
          break;
        case proto::backend::kBindComplete:
          (void)pop_reply(Request::bind);
          break;
        case proto::backend::kCloseComplete:
          (void)pop_reply(Request::close);
          break;
        case proto::backend::kNoData:
        case proto::backend::kRowDescription:
          (void)pop_reply(Request::describe);
          break;
        case proto::backend::kParameterStatus:
          if (auto p = proto::parse_parameter_status(body)) set_param(p->name, p->value);
          break;
        case proto::backend::kCopyInResponse:
          requests_.copy_in_ = true;
          end_copy_in();
          reactor_.want_send(stream_);
          break;
        default:
          break;
      }
    }
    stream_.consume(frame.size);
    // Replies owed to a client that is gone: just drop them.
    requests_.take_owed([](const RequestQueue::Entry&) {});
    if (requests_.idle() && restore_replies_pending_ == 0) {
      draining_ = false;
      log::debug("S-{} drained", id_);
      release(drain_session_reset_);
      return;
    }
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
      restore_sqlstate_ = e ? std::string(e->sqlstate) : std::string();
      restore_error_ = e ? std::string(e->message) : std::string("error");
      return;
    }
    case proto::backend::kReadyForQuery:
      transaction_status_ = body.empty() ? '?' : body[0];
      if (--restore_replies_pending_ > 0) return;
      if (restore_failed_ || transaction_status_ != 'I') {
        restore_failed_ = false;
        if (transaction_status_ != 'I') {
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
        // PostgreSQL refused one of the client's settings and rolled the whole restore back:
        // this connection is as it was. The client is closed once this ReadyForQuery is
        // consumed (refuse_restored_client); the server then goes back to the pool.
        settings_ = std::move(settings_before_restore_);
        session_fingerprint_ = kUnknownSession;
        restore_refused_ = client_ != nullptr;
        return;
      }
      if (client_ != nullptr) client_->on_restored();
      return;
    default:
      return;  // CommandComplete of our SETs, notices: swallowed
  }
}

void Server::refuse_restored_client() {
  restore_refused_ = false;
  Client& client = *client_;
  if (!client.welcomed_)
    // A startup parameter PostgreSQL refuses: the login fails with PostgreSQL's own error, as it
    // would without pgring.
    reactor_.close(client, Reason::startup_rejected, restore_error_, restore_sqlstate_);
  else
    reactor_.close(client, Reason::server_reset_failed,
                   fmt::format("could not apply session settings: {} (SQLSTATE {})", restore_error_,
                               restore_sqlstate_));
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
      reactor_.close(*this, Reason::server_eof,
                     e ? std::string(e->message) : std::string("error while idle"));
      return;
    }
    default:
      reactor_.close(*this, Reason::server_protocol_error,
                     fmt::format("unexpected message '{}' while idle", type));
      return;
  }
}

}  // namespace pgring
