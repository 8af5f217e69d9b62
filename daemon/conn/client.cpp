#include "daemon/conn/client.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include "daemon/conn/server.hpp"
#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/net/tls.hpp"
#include "daemon/pool/pool.hpp"
#include "proto/builders.hpp"
#include "proto/bytes.hpp"
#include "proto/md5.hpp"
#include "proto/messages.hpp"
#include "proto/sql.hpp"

namespace pgring {

std::string_view to_string(ClientState state) {
  switch (state) {
    case ClientState::startup:
      return "startup";
    case ClientState::auth:
      return "auth";
    case ClientState::idle:
      return "idle";
    case ClientState::waiting:
      return "waiting";
    case ClientState::active:
      return "active";
    case ClientState::closing:
      return "closing";
  }
  return "?";
}

Client::Client(Reactor& reactor, std::uint64_t id, int fd, std::string peer)
    : reactor_(reactor),
      id_(id),
      stream_(reactor.buffers(), Operation::Kind::client_recv, Operation::Kind::client_send, this),
      peer_(std::move(peer)) {
  stream_.fd = fd;
  connected_ = reactor.now();
}

bool Client::frame_next(proto::Frame& frame, std::uint32_t max_size) {
  frame = stream_.next_frame(max_size);
  if (frame.bad()) refuse_frame(frame, max_size);
  return frame.status == proto::FrameStatus::complete;
}

void Client::refuse_frame(const proto::Frame& frame, std::uint32_t max_size) {
  if (frame.status == proto::FrameStatus::too_large) {
    // Name the setting when it is the limit (authentication messages have a fixed one).
    bool configured = max_size == reactor_.config().max_message_size;
    reactor_.close(*this, Reason::message_too_large,
                   fmt::format("message of {} bytes is larger than {} ({})", frame.size,
                               configured ? "max_message_size" : "the limit", max_size));
  } else {
    reactor_.close(*this, Reason::protocol_violation, "invalid message length");
  }
}

void Client::on_input() {
  switch (state_) {
    case ClientState::startup:
      handle_startup();
      break;
    case ClientState::auth:
      handle_auth();
      break;
    case ClientState::idle:
      if (admin_ != AdminRole::none) {
        handle_admin();
        break;
      }
      // Transaction mode: the first byte of a new request asks for a server, unless it is a
      // lone LISTEN/UNLISTEN taken over here (listen: shared).
      {
        proto::Frame frame = stream_.next_frame(reactor_.config().max_message_size);
        if (frame.type == proto::frontend::kTerminate) {
          reactor_.close(*this, Reason::client_terminate);
          return;
        }
        if ((listening_ || might_be_listen(frame)) && !take_listens()) [[unlikely]]
          return;
      }
      pool_->request_server(*this);  // links an idle server at once, if there is one
      if (state_ == ClientState::active)
        forward_to_server();
      else if (state_ == ClientState::waiting)
        hold_while_waiting();
      break;
    case ClientState::waiting:
      hold_while_waiting();
      break;
    case ClientState::active:
      forward_to_server();
      break;
    case ClientState::closing:
      stream_.discard_all();
      break;
  }
}

void Client::on_linked(Server& server) {
  log::debug("C-{} linked to S-{}", id_, server.id_);
  // The common case costs one comparison: this server's session already is this client's
  // (same client again, or clients that set the same things).
  std::string sql =
      server.session_fingerprint_ == session_fingerprint() ? std::string() : restore_sql(server);
  if (!sql.empty()) {
    if (!server.stream_.emit([&](std::string& out) { return proto::build::query(out, sql); })) {
      reactor_.close(*this, Reason::protocol_violation, "cannot encode the session settings");
      return;
    }
    log::debug("C-{} restoring its session on S-{}: {}", id_, server.id_, sql);
    ++server.restore_replies_pending_;
    server.settings_before_restore_ = std::move(server.settings_);
    server.settings_ = settings_;
    reactor_.want_send(server.stream_);
  } else {
    on_restored();
  }
  stream_.reading_paused_ = false;
  // What it sent while waiting goes on after this loop turn's completions (forward_linked),
  // never on the stack of whoever freed the server (another client's read loop, say).
  reactor_.forward_later(*this);
}

void Client::hold_while_waiting() {
  // Nothing is forwarded until a server is linked; do not let a client pile up unbounded bytes
  // meanwhile.
  if (stream_.input_size() > (64u << 10)) stream_.reading_paused_ = true;
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
    return proto::build::error_response(out, "ERROR", "57014",
                                        "canceling statement due to user request");
  });
  (void)stream_.emit([](std::string& out) { return proto::build::ready_for_query(out, 'I'); });
  reactor_.want_send(stream_);
  reactor_.set_state(*this, ClientState::idle);
  if (listening_) flush_notifications();
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
                               proto::sql::describe_session_state(fresh),
                               config::to_string(pool_->settings_.pool_mode)));
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
  const bool cache = uses_statement_cache();
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
    if (shape_check_pending()) break;
    proto::Frame frame = stream_.next_frame(max_size);
    if (frame.bad()) {
      refuse_frame(frame, max_size);
      return;
    }
    if (!frame.header_known()) break;
    const Verdict verdict = on_request(frame, server, cache);
    if (verdict == Verdict::wait) break;
    if (verdict == Verdict::stop) return;
    std::size_t n = std::min<std::size_t>(frame.size, stream_.input_size());
    if (verdict == Verdict::drop) {
      stream_.consume(n);
      discard_remaining_ = frame.size - n;
    } else {
      if (cache && proto::frontend::is_extended(frame.type)) {
        if (n == frame.size)
          record_batch(stream_.contiguous(n));  // kept for a retry of this batch
        else
          batch().copy_ok = false;
      }
      stream_.forward(n, server.stream_);
      forward_remaining_ = frame.size - n;
    }
    if (frame.type == proto::frontend::kSync) end_batch();
  }
  // Replies pgring owes with nothing before them in the queue go out now.
  server.flush_fakes();
  reactor_.want_send(server.stream_);
  reactor_.apply_backpressure(stream_, server.stream_);
  if (state_ == ClientState::active && server.requests_in_flight() == 0) server.maybe_release();
}

bool Client::uses_statement_cache() const {
  return pool_->settings_.pool_mode != config::PoolMode::session &&
         pool_->settings_.prepared_statements > 0;
}

Verdict Client::on_request(const proto::Frame& frame, Server& server, bool cache) {
  const char type = frame.type;
  if (type == proto::frontend::kTerminate) {
    // Never forwarded: the server stays in the pool.
    reactor_.close(*this, Reason::client_terminate);
    return Verdict::stop;
  }
  // After an error pgring raised in the extended protocol, the client's messages up to its Sync
  // are dropped, as PostgreSQL drops them after an error of its own.
  if (batch_ && batch_->skip_until_sync && type != proto::frontend::kSync) return Verdict::drop;
  // Messages read whole: Query and Parse texts (up to kMaxInspectedQuery) to see session state;
  // with the statement cache, every message that names a statement.
  const bool statement_message =
      cache && (type == proto::frontend::kParse || type == proto::frontend::kBind ||
                type == proto::frontend::kDescribe || type == proto::frontend::kClose);
  const bool inspect =
      statement_message || ((type == proto::frontend::kQuery || type == proto::frontend::kParse) &&
                            frame.size <= kMaxInspectedQuery);
  if (inspect && stream_.input_size() < frame.size) return Verdict::wait;
  std::string_view body = inspect ? stream_.contiguous(frame.size).substr(5) : std::string_view();
  bool handled = false;  // true: the message was answered or rewritten here
  switch (type) {
    case proto::frontend::kQuery: {
      std::uint8_t state = 0;
      std::uint8_t release = 0;
      std::unique_ptr<proto::sql::SetStatement> set;
      std::optional<SqlText> rewritten;  // SQL-level PREPARE / EXECUTE, sent as pgring's text
      // The text, read once for the session-state checks and the query family.
      std::optional<std::string_view> text =
          inspect ? proto::parse_query(body) : std::optional<std::string_view>();
      if (text) {
        std::uint8_t mentioned = proto::sql::mentions(*text);  // one pass for the checks below
        if ((mentioned & proto::sql::kMentionsNotify) != 0 && listening_) [[unlikely]]
          listening_->noted_notify(server.backend_pid_, reactor_.now());
        state = proto::sql::scan_session_state(*text, mentioned);
        if (pinned_state_ != 0 || listening_) release = proto::sql::scan_session_release(*text);
        if (auto s = proto::sql::parse_set_statement(*text, mentioned)) {
          set = std::make_unique<proto::sql::SetStatement>(std::move(*s));
          state &= static_cast<std::uint8_t>(~proto::sql::kUntrackedSet);
        }
        if (cache && deallocate(server, *text, mentioned)) return Verdict::drop;
        if (cache && (mentioned & (proto::sql::kMentionsSessionWord | proto::sql::kMentionsExecute |
                                   proto::sql::kMentionsDeallocate)) != 0) [[unlikely]] {
          rewritten = rewrite_sql_statement(server, *text, mentioned);
          if (state_ == ClientState::closing) return Verdict::stop;
          // A lone PREPARE shared through the statement cache pins nothing.
          if (rewritten) state &= static_cast<std::uint8_t>(~proto::sql::kSqlPrepare);
        }
        // DROP DATABASE x and the like fail while pgring's idle servers sit in x.
        if (auto database = proto::sql::database_needed_alone(*text))
          reactor_.free_database(pool_->address_text(), *database);
      }
      // Session state is judged before anything is queued: a refused Query is never sent.
      if (state != 0) {
        note_session_state(state);
        if (state_ == ClientState::closing) return Verdict::stop;
      }
      ++pool_->stats_.queries;
      // A simple Query destroys the unnamed statement, on the server and in the session.
      if (statements_) statements_->unnamed_parse_tail.clear();
      server.unnamed_client_ = 0;
      RequestQueue::Entry& query = server.requests_.push(Request::query, reactor_.now());
      if (QueryStats& stats = reactor_.queries(); stats.on() && text)
        query.fingerprint = stats.family(*pool_, *text);
      query.session_state = state;
      query.session_release = release;
      query.set = std::move(set);
      if (rewritten) [[unlikely]] {
        query.statement = rewritten->statement;
        query.sql = std::move(rewritten->sql);
        query.fake = std::move(rewritten->fake);
        if (!server.stream_.emit(
                [&](std::string& out) { return proto::build::query(out, rewritten->text); })) {
          reactor_.close(*this, Reason::protocol_violation, "cannot encode Query");
          return Verdict::stop;
        }
        return Verdict::drop;
      }
      return Verdict::forward;
    }
    case proto::frontend::kParse: {
      std::string rewritten;  // the body sent instead: a Parse of `EXECUTE name` (statement cache)
      std::unique_ptr<NamedStatement::Runs> runs;
      if (inspect) {
        if (auto parse = proto::parse_parse(body)) {
          std::string_view text = parse->query;
          std::uint8_t mentioned = proto::sql::mentions(text);
          if (statement_message && (mentioned & proto::sql::kMentionsExecute) != 0 && statements_ &&
              !statements_->named.empty()) [[unlikely]] {
            rewritten = rewrite_parse_execute(server, *parse, mentioned, runs);
            if (state_ == ClientState::closing) return Verdict::stop;
          }
          if ((mentioned & proto::sql::kMentionsNotify) != 0 && listening_) [[unlikely]]
            listening_->noted_notify(server.backend_pid_, reactor_.now());
          std::uint8_t state = proto::sql::scan_session_state(text, mentioned);
          // A lone LISTEN/UNLISTEN changes the session only when a Bind runs it: the statement
          // cache sees that Bind (bind_runs_listen), so its Parse pins nothing.
          if ((state & proto::sql::kListen) != 0 && statement_message &&
              proto::sql::parse_listen(text)) [[unlikely]] {
            state &= static_cast<std::uint8_t>(~proto::sql::kListen);
            statements().has_listen = true;
          }
          // A lone SET sent through the extended protocol is replayed like a simple one: it
          // rides on the next Execute.
          last_parse_set_.reset();
          if (auto set = proto::sql::parse_set_statement(text, mentioned)) {
            last_parse_set_ = std::make_unique<proto::sql::SetStatement>(std::move(*set));
            state &= static_cast<std::uint8_t>(~proto::sql::kUntrackedSet);
          }
          if (state != 0) {
            note_session_state(state);
            if (state_ == ClientState::closing) return Verdict::stop;
          }
        }
      }
      server.requests_.unsynced_ = true;
      if (QueryStats& stats = reactor_.queries(); stats.on())
        if (auto parse = proto::parse_parse(body))
          batch().fingerprint = stats.family(*pool_, parse->query);
      if (statement_message) {
        handled = cached_parse(server, rewritten.empty() ? body : std::string_view(rewritten),
                               std::move(runs));
        if (state_ == ClientState::closing) return Verdict::stop;
      }
      bool sent_here = false;
      if (!handled && !rewritten.empty()) [[unlikely]] {
        // The unnamed statement: cached_parse remembered it (as rewritten); sent here.
        bool ok = server.stream_.emit([&](std::string& out) {
          std::size_t start = out.size();
          if (!proto::build::message(out, proto::frontend::kParse, rewritten)) return false;
          record_batch(std::string_view(out).substr(start));
          return true;
        });
        if (!ok) {
          reactor_.close(*this, Reason::protocol_violation, "cannot encode Parse");
          return Verdict::stop;
        }
        handled = sent_here = true;
        statements().unnamed_runs = true;
      }
      if (!handled || sent_here) server.requests_.push(Request::parse, reactor_.now());
      break;
    }
    case proto::frontend::kBind:
      server.requests_.unsynced_ = true;
      if (statement_message) {
        handled = cached_bind(server, body);
        if (state_ == ClientState::closing) return Verdict::stop;
      }
      if (!handled && !shape_check_pending()) server.requests_.push(Request::bind, reactor_.now());
      break;
    case proto::frontend::kDescribe:
      server.requests_.unsynced_ = true;
      if (statement_message) {
        handled = cached_describe(server, body);
        if (state_ == ClientState::closing) return Verdict::stop;
      }
      if (!handled && !shape_check_pending())
        server.requests_.push(Request::describe, reactor_.now());
      break;
    case proto::frontend::kClose:
      server.requests_.unsynced_ = true;
      if (statement_message) handled = cached_close(server, body);
      if (!handled) server.requests_.push(Request::close, reactor_.now());
      break;
    case proto::frontend::kSync:
      if (batch_) batch_->skip_until_sync = false;
      {
        RequestQueue::Entry& sync = server.requests_.push(Request::sync, reactor_.now());
        sync.batch_seq = batch_seq_;
        if (batch_) {
          sync.fingerprint = batch_->fingerprint;
          batch_->fingerprint = 0;
        }
      }
      server.requests_.unsynced_ = false;
      break;
    case proto::frontend::kFunctionCall:
      server.requests_.push(Request::function_call, reactor_.now());
      break;
    case proto::frontend::kExecute:
      ++pool_->stats_.queries;
      server.requests_.push(Request::execute, reactor_.now()).set = std::move(last_parse_set_);
      server.requests_.unsynced_ = true;
      break;
    case proto::frontend::kFlush:
      server.requests_.unsynced_ = true;
      break;
    case proto::frontend::kCopyDone:
    case proto::frontend::kCopyFail:
      // Only meaningful while the server is in COPY FROM STDIN; otherwise it ignores them.
      if (server.requests_.copy_in_) server.requests_.push(Request::copy_end, reactor_.now());
      break;
    default:
      break;
  }
  if (shape_check_pending()) return Verdict::wait;  // this message waits for the check's answer
  return handled ? Verdict::drop : Verdict::forward;
}

void Client::record_batch(std::string_view bytes) {
  constexpr std::size_t kMaxBatchCopy = 64u << 10;  // larger batches are not retried
  Batch& b = batch();
  if (!b.copy_ok) return;
  if (b.copy.size() + bytes.size() > kMaxBatchCopy) {
    b.copy_ok = false;
    b.copy.clear();
    return;
  }
  b.copy.append(bytes);
}

void Client::end_batch() {
  Batch& b = batch();
  b.inflight.swap(b.copy);
  b.inflight_ok = b.copy_ok;
  b.inflight_seq = batch_seq_++;
  b.copy.clear();
  b.copy_ok = true;
  if (b.inflight.capacity() > (64u << 10)) b.inflight.shrink_to_fit();
}

Client::Batch& Client::batch() {
  if (!batch_) batch_ = reactor_.spare_batches().take();
  return *batch_;
}

void Client::Batch::reset() {
  skip_until_sync = false;
  shape_check_pending = false;
  shape_check_expected = 0;
  copy_ok = true;
  fingerprint = 0;
  inflight_ok = false;
  inflight_seq = 0;
  // The buffers' capacity is kept for the next batch, unless a large one grew them.
  copy.clear();
  inflight.clear();
  if (copy.capacity() > 4096) std::string().swap(copy);
  if (inflight.capacity() > 4096) std::string().swap(inflight);
}

void Client::trim() {
  stream_.trim();  // when its last reply is already out (else once it is: Reactor::sent)
  // A batch at rest (no error being skipped, no shape check held) is over once idle: its copy
  // was only for a retry before the ReadyForQuery that released the server.
  if (batch_ && !batch_->skip_until_sync && !batch_->shape_check_pending)
    reactor_.spare_batches().give_back(std::move(batch_));
  if (statements_ && statements_->named.empty() && statements_->unnamed_parse_tail.empty())
    statements_.reset();
}

}  // namespace pgring
