#include "daemon/conn/server.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <cctype>

#include "daemon/conn/client.hpp"
#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/net/tls.hpp"
#include "daemon/pool/pool.hpp"
#include "proto/ascii.hpp"
#include "proto/builders.hpp"
#include "proto/bytes.hpp"
#include "proto/md5.hpp"
#include "proto/messages.hpp"

namespace pgring {

std::string_view to_string(ServerState state) {
  switch (state) {
    case ServerState::connecting:
      return "connecting";
    case ServerState::login:
      return "login";
    case ServerState::idle:
      return "idle";
    case ServerState::active:
      return "active";
    case ServerState::resetting:
      return "resetting";
    case ServerState::canceling:
      return "canceling";
    case ServerState::lookup:
      return "lookup";
    case ServerState::listening:
      return "listening";
    case ServerState::closing:
      return "closing";
  }
  return "?";
}

Server::Server(Reactor& reactor, Pool& pool, std::uint64_t id)
    : reactor_(reactor),
      pool_(pool),
      id_(id),
      stream_(reactor.buffers(), Operation::Kind::server_recv, Operation::Kind::server_send, this),
      connect_op_{Operation::Kind::server_connect, this} {}

void Server::set_param(std::string_view name, std::string_view value) {
  // A reported parameter is tracked here from now on, never as a replayed setting.
  for (auto it = settings_.begin(); it != settings_.end(); ++it) {
    if (proto::iequals(it->first, name)) {
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
  while (state_ == ServerState::login || state_ == ServerState::resetting ||
         state_ == ServerState::idle || state_ == ServerState::canceling ||
         state_ == ServerState::lookup || state_ == ServerState::listening) {
    proto::Frame frame = stream_.next_frame(kMaxInspected);
    if (frame.bad()) {
      reactor_.close(*this, Reason::server_protocol_error, "invalid message from server");
      return;
    }
    if (frame.status != proto::FrameStatus::complete) return;
    std::string_view body = stream_.contiguous(frame.size).substr(5);
    ServerState before = state_;
    if (before == ServerState::login)
      handle_login_message(frame.type, body);
    else if (before == ServerState::resetting)
      handle_reset_message(frame.type, body);
    else if (before == ServerState::lookup)
      handle_lookup_message(frame.type, body);
    else if (before == ServerState::listening)
      pool_.on_listener_message(*this, frame.type, body);
    else
      handle_idle_message(frame.type, body);
    if (state_ == ServerState::closing) return;
    stream_.consume(frame.size);
    if (state_ == ServerState::active && stream_.input_size() > 0) {
      forward_to_client();
      return;
    }
  }
}

void Server::close_statement(std::uint64_t id) {
  std::string name = "pgring_" + std::to_string(id);
  (void)stream_.emit([&](std::string& out) { return proto::build::close_statement(out, name); });
  RequestQueue::Entry& e = requests_.push(Request::close, reactor_.now());
  e.skip = true;
  e.closes = id;
  prepared_.remove(id);
}

void Server::before_preparing(std::uint64_t id) {
  auto it = std::find(unclosed_.begin(), unclosed_.end(), id);
  if (it == unclosed_.end()) return;
  unclosed_.erase(it);
  close_statement(id);
}

RequestQueue::Entry* Server::inject_parse(const PreparedStatement& statement, bool shape_check) {
  before_preparing(statement.id);
  if (statement.sql) {
    // An SQL-level statement names its parameter types, which a Parse cannot: its PREPARE runs
    // through the unnamed statement and portal, every reply swallowed (an error is the client's,
    // as for a Parse). The entry returned is the Execute's.
    std::string text = fmt::format("PREPARE {} {}", statement.server_name, statement.parse_tail);
    if (!stream_.emit([&](std::string& out) { return proto::build::run_unnamed(out, text, {}); }))
      return nullptr;
    // (Each of the three may be the one that fails: each ends a shape check it is part of.)
    for (Request kind : {Request::parse, Request::bind}) {
      RequestQueue::Entry& step = requests_.push(kind, reactor_.now());
      step.skip = true;
      step.shape_check = shape_check;
    }
    RequestQueue::Entry& e = requests_.push(Request::execute, reactor_.now());
    e.skip = true;
    e.statement = &statement;
    e.shape_check = shape_check;
    unnamed_client_ = 0;  // (ensure_unnamed prepares the client's again where it needs it)
    prepared_.add(statement.id);
    return &e;
  }
  if (!stream_.emit([&](std::string& out) {
        return proto::build::parse(out, statement.server_name, statement.parse_tail);
      }))
    return nullptr;
  RequestQueue::Entry& e = requests_.push(Request::parse, reactor_.now());
  e.skip = true;
  e.statement = &statement;
  e.shape_check = shape_check;
  prepared_.add(statement.id);
  return &e;
}

void Server::flush_fakes() {
  if (client_ == nullptr) return;
  Stream& out = client_->stream_;
  bool sent = false;
  requests_.take_owed([&](const RequestQueue::Entry& e) {
    sent = true;
    switch (e.kind) {
      case Request::owed_parse_complete:
        (void)out.emit([](std::string& o) { return proto::build::parse_complete(o); });
        break;
      case Request::owed_close_complete:
        (void)out.emit([](std::string& o) { return proto::build::close_complete(o); });
        break;
      case Request::owed_error:
        out.emit_bytes(e.fake);
        break;
      case Request::owed_deallocate:
        (void)out.emit(
            [](std::string& o) { return proto::build::command_complete(o, "DEALLOCATE"); });
        (void)out.emit(
            [&](std::string& o) { return proto::build::ready_for_query(o, transaction_status_); });
        break;
      default:
        break;
    }
  });
  if (sent) reactor_.want_send(out);
}

void Server::pop_expected_until_ready() {
  // Executes before the answered Query/Sync/FunctionCall that got no reply of their own were
  // skipped by the server after an error: a skipped Parse prepared nothing.
  // (Most entries name no statement: the call stays off the per-transaction path.)
  requests_.pop_until_ready([&](const RequestQueue::Entry& e) {
    if (e.statement != nullptr || e.closes != 0) [[unlikely]]
      forget_unprepared(e, e.server_skips);
  });
}

void Server::forget_unprepared(const RequestQueue::Entry& e, bool skipped) {
  if (e.kind == Request::close && e.closes != 0 && skipped) {
    // pgring's Close did not run: the statement is still there, though prepared_ no longer
    // says so; it is closed again before it is next prepared here (else: 42P05).
    unclosed_.push_back(e.closes);
    return;
  }
  if (e.statement == nullptr) return;
  if (e.kind == Request::query) {
    // A Query pgring rewrote that the server skipped (sent after an extended-protocol error,
    // before the Sync): its PREPARE did not run.
    if (skipped && e.sql) {
      if (e.sql->prepares || e.sql->hidden_completes > 0) prepared_.remove(e.statement->id);
      if (e.sql->prepares && client_ != nullptr)
        client_->forget_statement(e.sql->client_name, *e.statement);
      if (e.sql->deallocates && client_ != nullptr)
        client_->restore_statement(e.sql->client_name, *e.statement);
    }
    return;
  }
  if (e.kind == Request::parse || (e.kind == Request::execute && e.skip))
    prepared_.remove(e.statement->id);
  else if (e.kind != Request::owed_parse_complete)  // answered by pgring: the server has it
    return;
  // PostgreSQL forgets a name whose Parse failed (or was skipped): so does the client's session,
  // or preparing the name again would be refused with 42P05.
  if (!e.client_name.empty() && client_ != nullptr)
    client_->forget_statement(e.client_name, *e.statement);
}

bool Server::pop_reply(Request request_kind) {
  if (request_kind == Request::execute) executed_in_batch_ = true;
  return requests_.pop_reply(request_kind);
}

void Server::on_error_response() {
  transaction_failed_ = true;
  if (RequestQueue::Entry* head = requests_.head();
      head != nullptr && head->kind == Request::query && head->sql) [[unlikely]]
    forget_failed_prepare(*head);
  // The failed Parse, and those skipped after the error, prepared nothing.
  requests_.on_error([&](const RequestQueue::Entry& e) { forget_unprepared(e, true); });
}

void Server::forget_failed_prepare(RequestQueue::Entry& query) {
  // A Query pgring rewrote failed before its PREPARE (the client's, or pgring's own before an
  // EXECUTE) completed: the server does not have the statement, and PostgreSQL forgets a name
  // whose PREPARE failed.
  RequestQueue::Entry::SqlRewrite& sql = *query.sql;
  if (sql.deallocates && query.statement != nullptr && client_ != nullptr) {
    // The client's DEALLOCATE failed (25P02): PostgreSQL keeps the statement.
    client_->restore_statement(sql.client_name, *query.statement);
    sql.deallocates = false;
  }
  if ((!sql.prepares && sql.hidden_completes == 0) || query.statement == nullptr) return;
  // (A pipelined request after this one may prepare it again: that one settles it.)
  bool again = false;
  for (std::size_t i = 1; i < requests_.size() && !again; ++i) {
    const RequestQueue::Entry& e = requests_.at(i);
    again = e.statement == query.statement &&
            (e.kind == Request::parse || (e.kind == Request::execute && e.skip) ||
             (e.kind == Request::query && e.sql && (e.sql->prepares || e.sql->hidden_completes)));
  }
  if (!again) prepared_.remove(query.statement->id);
  if (sql.prepares && client_ != nullptr)
    client_->forget_statement(sql.client_name, *query.statement);
  sql.prepares = false;
  sql.hidden_completes = 0;
}

bool Server::hidden_complete() {
  RequestQueue::Entry* head = requests_.head();
  if (head == nullptr) return false;
  if (head->kind == Request::query && head->sql && head->sql->hidden_completes > 0) {
    --head->sql->hidden_completes;  // pgring's PREPARE before the client's EXECUTE
    return true;
  }
  if (head->kind == Request::execute && head->skip) {
    (void)requests_.on_command_complete();  // pgring's SQL PREPARE (inject_parse): popped
    return true;
  }
  return false;
}

void Server::on_command_complete(std::string_view tag) {
  // The request this completes: an Execute (popped now), or the Query still running.
  RequestQueue::Completed done = requests_.on_command_complete();
  if (reactor_.queries().on()) answer_.rows += proto::command_rows(tag);
  if (done.execute) executed_in_batch_ = true;
  // UNLISTEN *, DISCARD ALL and the like: the state that pinned the client is gone, and the
  // link ends at this transaction's end like any other.
  if (done.session_release != 0 && client_ != nullptr) {
    client_->pinned_state_ &= static_cast<std::uint8_t>(~done.session_release);
    // ... and its shared subscriptions end too (listen: shared).
    if ((done.session_release & proto::sql::kListen) != 0 && client_->listening_)
      pool_.unsubscribe_all(*client_);
  }
  std::unique_ptr<proto::sql::SetStatement>& set = done.set;
  if ((tag == "SET" || tag == "RESET") && set) {
    // A reported parameter is tracked through ParameterStatus; other settings are replayed.
    bool reported = false;
    for (const auto& [name, value] : params_) {
      (void)value;
      reported |= proto::iequals(name, set->name);
    }
    // A RESET matters even for a reported parameter: it returns to the startup value.
    if (!reported || set->kind != proto::sql::SetStatement::Kind::set)
      pending_settings_.push_back(*set);
  } else if (tag == "DISCARD ALL") {
    pending_settings_.push_back(
        proto::sql::SetStatement{proto::sql::SetStatement::Kind::reset_all, {}, {}});
    // Every prepared statement of the session is gone: the client's and pgring's.
    prepared_.clear();
    unclosed_.clear();
    if (client_ != nullptr && client_->statements_) client_->statements_->named.clear();
  } else if (proto::command_changes_types(tag)) {
    // A parameter type of a cached statement may be gone (its OID is fixed when prepared: the
    // server would answer "cache lookup failed for type", or describe a type that no longer
    // exists): every reactor prepares each text afresh from now on.
    log::info("S-{} {}: prepared statements are prepared afresh from now on", id_, tag);
    reactor_.broadcast([](Reactor& r) { r.statements().retire_all(); });
  } else if (tag == "DEALLOCATE ALL") {
    prepared_.clear();
    unclosed_.clear();
  } else if (tag == "DEALLOCATE") {
    // The client's DEALLOCATE run on pgring's name (behind requests that were in flight): the
    // server no longer has the statement; the client's name went when it was sent.
    RequestQueue::Entry* head = requests_.head();
    if (head != nullptr && head->kind == Request::query && head->sql && head->sql->deallocates &&
        head->statement != nullptr) {
      prepared_.remove(head->statement->id);
      head->sql->deallocates = false;
    }
  } else if (tag == "PREPARE") {
    RequestQueue::Entry* head = requests_.head();
    if (head != nullptr && head->kind == Request::query && head->sql && head->sql->prepares) {
      head->sql->prepares = false;  // the client's PREPARE, shared through the statement cache
      if (client_ != nullptr && head->statement != nullptr)
        client_->statement_prepared(head->sql->client_name, *head->statement);
    } else if (client_ != nullptr)
      client_->note_session_state(proto::sql::kSqlPrepare);
  } else if (tag == "LISTEN") {
    if (client_ != nullptr) client_->note_session_state(proto::sql::kListen);
  } else if (tag == "ROLLBACK") {
    transaction_failed_ = true;
  }
}

bool Server::reset_pending(std::string_view name) const {
  for (const auto& set : pending_settings_) {
    if (set.kind == proto::sql::SetStatement::Kind::reset_all) return true;
    if (set.kind == proto::sql::SetStatement::Kind::reset && proto::iequals(name, set.name))
      return true;
  }
  return false;
}

void Server::report_resets(Client& client) {
  // A committed RESET of a reported parameter whose server default it already had: the server
  // reports nothing, but the client's value changed, to its startup value.
  for (const auto& param : params_) {
    const std::string& name = param.first;  // (clang 14 cannot capture a structured binding)
    if (!reset_pending(name)) continue;
    const std::string* startup = client.startup_value(name);
    if (startup == nullptr) continue;  // back to the server's default: reported by the server
    const std::string* told = find_value(client.params_, name);
    if (told != nullptr && *told == *startup) continue;
    client.on_server_parameter(name, *startup);
    (void)client.stream_.emit(
        [&](std::string& out) { return proto::build::parameter_status(out, name, *startup); });
  }
}

void Server::count_answer(QueryStats& stats) {
  // The request this answers: the first Query, Sync or FunctionCall still unanswered.
  for (std::size_t i = 0; i < requests_.size(); ++i) {
    const RequestQueue::Entry& e = requests_.at(i);
    if (e.kind != Request::query && e.kind != Request::sync && e.kind != Request::function_call)
      continue;
    if (e.fingerprint != 0) {
      answer_.server = reactor_.now() - requests_.busy_since();
      stats.record(pool_, e.fingerprint, answer_);
      if (answer_.server >= stats.slow_query() && stats.slow_query().count() > 0)
        log_slow_query(e.fingerprint, stats.text(pool_, e.fingerprint));
      answer_.wait = {};
    }
    break;
  }
  answer_ = Answer{.wait = answer_.wait};  // the next request's answer starts here
}

void Server::log_slow_query(std::uint64_t fingerprint, std::string_view text) {
  using Ms = std::chrono::duration<double, std::milli>;
  double server_ms = Ms(answer_.server).count(), wait_ms = Ms(answer_.wait).count();
  std::string id = fmt::format("{:016x}", fingerprint);
  log::Fields fields{.event = "slow_query",
                     .client = client_ != nullptr ? client_->id_ : 0,
                     .server = id_,
                     .database = pool_.database_,
                     .user = pool_.user_name_,
                     .peer = client_ != nullptr ? std::string_view(client_->peer_) : "",
                     .fingerprint = id,
                     .query = text,
                     .duration_ms = server_ms,
                     .wait_ms = wait_ms};
  log::event(config::LogLevel::warning, fields,
             "slow query: {:.1f} ms in PostgreSQL, {:.1f} ms waiting for a server, family {}: {}",
             server_ms, wait_ms, id, text);
}

void Server::on_ready_for_query(char status) {
  executed_in_batch_ = false;
  // The cycle this answers began the transaction when the server was idle before it.
  if (transaction_status_ == 'I') transaction_start_ = requests_.busy_since();
  if (status != 'I' && transaction_status_ == 'I') transaction_since_ = reactor_.now();
  pool_.stats_.query.observe(reactor_.now() - requests_.busy_since());
  if (QueryStats& stats = reactor_.queries(); stats.on()) count_answer(stats);
  if (status == 'I') {
    ++pool_.stats_.transactions;
    pool_.stats_.transaction.observe(reactor_.now() - transaction_start_);
  }
  transaction_status_ = status;
  last_ready_ = reactor_.now();
  pop_expected_until_ready();
  // Pipelined requests still queued: the next one is running from now on.
  requests_.restart_busy(reactor_.now());
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
          case proto::sql::SetStatement::Kind::reset_all:
            settings_.clear();
            break;
        }
      }
    }
    pending_settings_.clear();
    transaction_failed_ = false;
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
    proto::Frame frame = stream_.next_frame(kMaxServerMessage);
    if (frame.bad()) {
      reactor_.close(*this, Reason::server_protocol_error, "invalid message length from server");
      return;
    }
    if (!frame.header_known()) break;
    if (restore_replies_pending_ > 0) {
      // Replies to the settings pgring restored: read whole and swallowed.
      if (frame.size > kMaxInspected) {
        reactor_.close(*this, Reason::server_protocol_error,
                       "oversized reply while restoring settings");
        return;
      }
      if (stream_.input_size() < frame.size) break;
      handle_restore_message(frame.type, stream_.contiguous(frame.size).substr(5));
      if (state_ == ServerState::closing) return;
      stream_.consume(frame.size);
      if (restore_refused_) {
        refuse_restored_client();  // the link ends here
        return;
      }
      continue;
    }
    const Verdict verdict = on_reply(frame, client);
    if (verdict == Verdict::wait) break;
    if (verdict == Verdict::stop) return;
    // (A ReadyForQuery ends the answer it was counted for: its own bytes are not the next's.)
    if (frame.type != proto::backend::kReadyForQuery && reactor_.queries().on())
      answer_.bytes += frame.size;
    if (verdict == Verdict::taken) {
      if (client_ == nullptr || state_ != ServerState::active) return;
      continue;
    }
    std::size_t n = std::min<std::size_t>(frame.size, stream_.input_size());
    if (verdict == Verdict::drop) {
      stream_.consume(n);
      swallow_remaining_ = frame.size - n;
    } else {
      stream_.forward(n, client.stream_);
      forward_remaining_ = frame.size - n;
    }
    flush_fakes();
    if (frame.type == proto::backend::kReadyForQuery && n == frame.size) {
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

Verdict Server::on_reply(const proto::Frame& frame, Client& client) {
  // The few messages pgring tracks are read whole; everything else streams through.
  const char type = frame.type;
  const bool inspect =
      type == proto::backend::kReadyForQuery || type == proto::backend::kParameterStatus ||
      type == proto::backend::kCommandComplete || type == proto::backend::kErrorResponse ||
      type == proto::backend::kNotificationResponse;
  bool swallow = false;  // pgring's own reply, or one replaced by what pgring sent
  if (inspect && frame.size <= kMaxInspected) {
    if (stream_.input_size() < frame.size) return Verdict::wait;
    std::string_view body = stream_.contiguous(frame.size).substr(5);
    if (type == proto::backend::kReadyForQuery) {
      auto status = proto::parse_ready_for_query(body);
      if (!status) {
        reactor_.close(*this, Reason::server_protocol_error, "malformed ReadyForQuery");
        return Verdict::stop;
      }
      if (pool_.settings_.pool_mode == config::PoolMode::statement && *status != 'I' &&
          client.pinned_state_ == 0) {
        refuse_transaction_block(frame.size);
        return Verdict::taken;
      }
      // The ReadyForQuery of a batch pgring is retrying belongs to pgring.
      swallow = requests_.head_is(Request::sync) && requests_.head()->skip;
      if (*status == 'I' && !pending_settings_.empty() && startup_ == nullptr &&
          !transaction_failed_)
        report_resets(client);
      on_ready_for_query(*status);
    } else if (type == proto::backend::kErrorResponse) {
      auto fields = proto::parse_error_fields(body);
      const RequestQueue::Entry* head = requests_.head();
      // (A Query at the head stays there through the error; its rewrite is on the heap.)
      const proto::build::QueryRename* rename =
          head != nullptr && head->kind == Request::query && head->sql ? &head->sql->rename
                                                                       : nullptr;
      const bool provoked =
          head != nullptr && !head->fake.empty() &&
          (head->kind == Request::execute ||
           // (the DO block pgring sent raises 42P05; anything else, a failed transaction's
           // 25P02, a cancel, a FATAL, is the server's own)
           (head->kind == Request::query && fields && fields->sqlstate == "42P05"));
      if (provoked) {
        // An error pgring provoked on purpose: the client gets the one it stands for.
        client.stream_.emit_bytes(head->fake);
        on_error_response();
        swallow = true;
      } else if (fields && retry_after_error(*fields)) {
        swallow = true;
      } else {
        if (fields && fields->sqlstate == "0A000" &&
            fields->message.find("cached plan must not change result type") !=
                std::string_view::npos &&
            head != nullptr && head->statement != nullptr) {
          // Not retried (inside a transaction, or a driver with its own row description):
          // the client gets the error, and its next Parse of this text prepares afresh.
          reactor_.statements().retire(*head->statement);
        }
        // (An error of an earlier pipelined batch may arrive while a check is pending: only
        // the check's own Parse or Describe failing ends the check.)
        bool check_failed = client.shape_check_pending() && head != nullptr && head->shape_check;
        on_error_response();
        if (check_failed) {
          // The shape check's Parse or Describe failed (in a failed transaction: 25P02): the
          // error stands for the held request, as PostgreSQL would give it, and the server
          // skips to the client's Sync.
          client.on_shape_check_failed();
          if (client_ == nullptr || client.state_ == ClientState::closing) return Verdict::stop;
        }
        // PostgreSQL ends the session (pg_terminate_backend, a shutdown): the client has its
        // error, and gets no second one from pgring when the connection then closes.
        if (fields && fields->is_fatal()) fatal_forwarded_ = true;
        std::string klass = fields && fields->sqlstate.size() >= 2
                                ? std::string(fields->sqlstate.substr(0, 2))
                                : "??";
        ++pool_.stats_.errors_by_class[klass];
        if (answer_.error_class[0] == 0) {
          answer_.error_class[0] = klass[0];
          answer_.error_class[1] = klass[1];
        }
        if (rename != nullptr) [[unlikely]] {
          // The error of a PREPARE / EXECUTE pgring rewrote: in the client's terms (its
          // statement name, positions in its text), as a direct session would have raised it.
          std::string renamed;
          if (proto::build::renamed_fields(renamed, type, body, *rename)) {
            client.stream_.emit_bytes(renamed);
            swallow = true;
          }
        }
      }
    } else if (type == proto::backend::kParameterStatus) {
      if (auto p = proto::parse_parameter_status(body)) {
        set_param(p->name, p->value);
        // (A server opened with its client's startup packet resets to the right values itself.)
        const std::string* startup =
            startup_ == nullptr && reset_pending(p->name) ? client.startup_value(p->name) : nullptr;
        if (startup != nullptr && *startup != p->value) {
          // RESET ALL / DISCARD ALL: PostgreSQL returns to the session's startup values, this
          // server to its own defaults. The client is told its startup value, which the next
          // restore applies again.
          std::string value = *startup;
          std::string name(p->name);
          client.on_server_parameter(name, value);
          (void)client.stream_.emit(
              [&](std::string& out) { return proto::build::parameter_status(out, name, value); });
          swallow = true;
        } else {
          client.on_server_parameter(p->name, p->value);
        }
      }
    } else if (type == proto::backend::kNotificationResponse) {
      // A NOTIFY of the client's own session (on the server it is linked to) carries that
      // server's pid; PostgreSQL would give the pid the client was told in BackendKeyData, which
      // drivers compare to tell their own notifications from others'.
      auto n = proto::parse_notification(body);
      if (n && n->pid == backend_pid_ && client.cancel_pid_ != 0) {
        (void)client.stream_.emit([&](std::string& out) {
          return proto::build::notification_response(out, client.cancel_pid_, n->channel,
                                                     n->payload);
        });
        swallow = true;
      }
    } else if (auto tag = proto::parse_query(body)) {  // CommandComplete: String tag
      if (hidden_complete()) {
        swallow = true;
      } else {
        on_command_complete(*tag);
        if (client_ == nullptr || client.state_ == ClientState::closing) return Verdict::stop;
      }
    }
  } else {
    switch (type) {
      case proto::backend::kParseComplete:
        swallow = pop_reply(Request::parse);
        break;
      case proto::backend::kBindComplete:
        swallow = pop_reply(Request::bind);
        break;
      case proto::backend::kCloseComplete:
        swallow = pop_reply(Request::close);
        break;
      case proto::backend::kParameterDescription:
        swallow = requests_.head_is(Request::describe) && requests_.head()->skip;
        break;
      case proto::backend::kNoData:
      case proto::backend::kRowDescription: {  // Describe's; a Query's pops nothing
        if (!requests_.head_is(Request::describe)) break;
        const PreparedStatement* statement = requests_.head()->statement;
        bool check = requests_.head()->shape_check;
        Shape shape = 0;
        if (statement != nullptr) {
          if (type == proto::backend::kNoData) {
            shape = shape_of("n");
          } else if (frame.size <= kMaxInspected) {  // a huge RowDescription is not compared
            // A RowDescription to compare that has not fully arrived.
            if (stream_.input_size() < frame.size) return Verdict::wait;
            shape = shape_of(stream_.contiguous(frame.size).substr(5));
          }
          if (shape != 0) prepared_.set_shape(statement->id, shape);
        }
        swallow = pop_reply(Request::describe);
        if (statement != nullptr && !check) client.on_described(*statement, shape);
        if (check && statement != nullptr) {
          std::size_t have = std::min<std::size_t>(frame.size, stream_.input_size());
          stream_.consume(have);
          swallow_remaining_ = frame.size - have;  // only a huge RowDescription arrives in parts
          client.on_shape_checked(*statement, shape);
          return Verdict::taken;  // the client resumed (or failed)
        }
        break;
      }
      case proto::backend::kErrorResponse:  // too large to read whole: not retried
        on_error_response();
        ++pool_.stats_.errors_by_class["??"];
        if (answer_.error_class[0] == 0) answer_.error_class[0] = answer_.error_class[1] = '?';
        break;
      case proto::backend::kEmptyQueryResponse:
      case proto::backend::kPortalSuspended:
        on_command_complete({});
        break;
      case proto::backend::kCopyInResponse:
        requests_.copy_in_ = true;
        break;
      default:
        break;
    }
  }
  return swallow ? Verdict::drop : Verdict::forward;
}

void Server::maybe_release() {
  // Transaction and statement mode: the link ends when the server is idle again and the client
  // has nothing half-sent. A pinned client keeps its server.
  if (client_ == nullptr || pool_.settings_.pool_mode == config::PoolMode::session) return;
  Client& client = *client_;
  if (client.pinned_state_ != 0 && client.listening_ && idle_in_protocol() &&
      transaction_status_ == 'I') [[unlikely]]
    client.flush_notifications();  // (a pinned subscriber between transactions)
  if (client.pinned_state_ != 0 || restore_replies_pending_ > 0 || !idle_in_protocol()) return;
  if (client.forward_remaining_ > 0 || client.stream_.input_size() > 0) return;
  pool_.release_link(*this);
}

void Server::refuse_transaction_block(std::size_t ready_size) {
  // Statement mode: the statement opened a transaction block. The client gets an error instead
  // of this ReadyForQuery; pgring rolls the block back on its own.
  Client& client = *client_;
  stream_.consume(ready_size);
  pop_expected_until_ready();
  (void)client.stream_.emit([](std::string& out) {
    return proto::build::error_response(
        out, "ERROR", "0A000",
        "pgring: transaction blocks are not allowed in statement pooling mode");
  });
  (void)client.stream_.emit(
      [](std::string& out) { return proto::build::ready_for_query(out, 'I'); });
  reactor_.want_send(client.stream_);
  (void)stream_.emit([](std::string& out) { return proto::build::query(out, "ROLLBACK"); });
  ++restore_replies_pending_;
  reactor_.want_send(stream_);
  transaction_status_ = 'I';
}

}  // namespace pgring
