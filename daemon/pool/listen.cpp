// LISTEN and NOTIFY in transaction and statement mode without pinning (listen: shared;
// docs/transaction-pooling.md, "LISTEN and NOTIFY"). A client's lone LISTEN between transactions
// becomes a subscription of the pool on this reactor; one server connection per pool and reactor
// LISTENs every channel somebody subscribed to and passes each notification on.

#include <algorithm>
#include <cstdlib>
#include <unordered_set>
#include <utility>

#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/core/shared.hpp"
#include "daemon/pool/pool.hpp"
#include "proto/builders.hpp"
#include "proto/listen_batch.hpp"
#include "proto/messages.hpp"

namespace pgring {

namespace {
constexpr auto kListenerRetry = std::chrono::seconds(1);

void erase_one(std::deque<Client*>& clients, const Client* client) {
  auto it = std::find(clients.begin(), clients.end(), client);
  if (it != clients.end()) clients.erase(it);
}
}  // namespace

// ---- the client's side ----

bool Client::take_listens() {
  for (;;) {
    if (stream_.input_size() == 0 || (listening_ && listening_->parked)) return false;
    proto::Frame frame = stream_.next_frame(reactor_.config().max_message_size);
    if (frame.type == proto::frontend::kTerminate) {
      reactor_.close(*this, Reason::client_terminate);
      return false;
    }
    if (!might_be_listen(frame)) return true;
    switch (take_listen(frame)) {
      case Takeover::no:
        return true;
      case Takeover::wait:
        return false;  // (the rest of its batch comes with the next read)
      case Takeover::taken:
        break;
    }
    if (state_ != ClientState::idle) return false;  // (closed; or the rest was read meanwhile)
    // An upgrade in place: it may move now (its subscriptions go along).
    if (reactor_.handing_over() && (!listening_ || !listening_->parked))
      reactor_.note_handover_candidate(*this);
  }
}

Client::Takeover Client::take_listen(const proto::Frame& frame) {
  if (frame.type != proto::frontend::kQuery) return take_extended_listen();
  bool shared = pool_->shares_listen();
  // (After a reload to listen: pin, the client's shared subscriptions can still be ended.)
  if (!shared && (!listening_ || listening_->channels.empty())) return Takeover::no;
  std::string_view body = stream_.contiguous(frame.size).substr(5);
  std::optional<std::string_view> text = proto::parse_query(body);
  if (!text) return Takeover::no;
  std::optional<proto::sql::Listen> command = proto::sql::parse_listen(*text);
  if (!command) return Takeover::no;
  if (!shared && (command->kind != proto::sql::Listen::Kind::unlisten ||
                  std::find(listening_->channels.begin(), listening_->channels.end(),
                            command->channel) == listening_->channels.end()))
    return Takeover::no;
  stream_.consume(frame.size);
  ++pool_->stats_.queries;
  // A simple Query destroys the unnamed statement, this one too.
  if (statements_) statements_->unnamed_parse_tail.clear();
  pool_->listen(*this, *command);
  return Takeover::taken;
}

Client::Takeover Client::take_extended_listen() {
  // Only with the statement cache, which keeps the client's statement names in pgring (without
  // it they live on a server, and a LISTEN through them pins as before).
  if (!uses_statement_cache() || !pool_->shares_listen()) return Takeover::no;
  // A batch that starts with a Bind or Describe: only one of a LISTEN statement is read on
  // (and waited for: another may be a COPY, whose client waits for an answer before its Sync).
  proto::Frame first = stream_.next_frame(proto::kMaxListenBatch);
  if (first.type != proto::frontend::kParse) {
    std::string_view body = stream_.contiguous(first.size).substr(5);
    std::optional<std::string_view> name;
    if (first.type == proto::frontend::kBind) {
      if (auto bind = proto::parse_bind(body)) name = bind->statement;
    } else if (auto describe = proto::parse_describe(body); describe && describe->statement()) {
      name = describe->name;
    }
    if (!name || !listen_statement(*name)) return Takeover::no;
  }
  std::size_t n = std::min(stream_.input_size(), proto::kMaxListenBatch);
  proto::ListenBatch batch;
  switch (proto::read_listen_batch(stream_.contiguous(n), batch)) {
    case proto::ListenBatchStatus::no:
      return Takeover::no;
    case proto::ListenBatchStatus::incomplete:
      // Safe to wait: until its Sync or Flush the client expects no answer.
      return Takeover::wait;
    case proto::ListenBatchStatus::yes:
      break;
  }
  std::optional<proto::sql::Listen> command = std::move(batch.parsed);
  if (command) {
    // A name in use gets PostgreSQL's 42P05 the usual way.
    if (!batch.statement.empty() && statements_ &&
        statements_->named.count(std::string(batch.statement)) != 0)
      return Takeover::no;
    Statements& mine = statements();
    if (batch.statement.empty()) {
      mine.unnamed_parse_tail.assign(batch.parse_tail);
      mine.unnamed_runs = false;
      ++unnamed_seq_;  // no server holds it: prepared where a later Bind of it lands
    } else {
      const PreparedStatement& statement = reactor_.statements().intern(batch.parse_tail);
      mine.named.emplace(std::string(batch.statement), NamedStatement{&statement, 0, false, {}});
    }
    mine.has_listen = true;
  } else {
    command = listen_statement(batch.statement);
    if (!command) return Takeover::no;
  }
  std::string replies = std::move(batch.replies);
  stream_.consume(batch.length);  // (the batch's views end here)
  for (char reply : replies) {
    (void)stream_.emit([&](std::string& out) {
      switch (reply) {
        case '1':
          return proto::build::parse_complete(out);
        case 't':  // no parameters, no rows
          return proto::build::message(out, proto::backend::kParameterDescription,
                                       std::string_view("\0\0", 2)) &&
                 proto::build::message(out, proto::backend::kNoData, {});
        case 'n':
          return proto::build::message(out, proto::backend::kNoData, {});
        case '2':
          return proto::build::message(out, proto::backend::kBindComplete, {});
        default:  // 'C': the Execute's, below
          return true;
      }
    });
  }
  if (batch.executes) {
    // Answered with its Sync's ReadyForQuery, as a simple LISTEN is.
    ++pool_->stats_.queries;
    pool_->listen(*this, *command);
  } else if (batch.sync) {
    (void)stream_.emit([](std::string& out) { return proto::build::ready_for_query(out, 'I'); });
  }
  reactor_.want_send(stream_);
  return Takeover::taken;
}

std::optional<proto::sql::Listen> Client::listen_statement(std::string_view name) const {
  if (!statements_) return std::nullopt;
  if (name.empty()) {
    if (statements_->unnamed_runs) return std::nullopt;
    return proto::sql::parse_listen(statements_->unnamed_parse_tail.c_str());
  }
  auto it = statements_->named.find(std::string(name));
  if (it == statements_->named.end() || !it->second.entry->listen || it->second.runs)
    return std::nullopt;
  return proto::sql::parse_listen(it->second.entry->query());
}

void Client::bind_runs_listen(std::string_view query) {
  std::optional<proto::sql::Listen> command = proto::sql::parse_listen(query);
  if (!command) return;
  if (command->kind == proto::sql::Listen::Kind::listen)
    note_session_state(proto::sql::kListen);  // it LISTENs on that server: session state
  else if (listening_ && server_ != nullptr && server_->transaction_status_ == 'I')
    pool_->unlisten(*this, *command);  // (in a transaction block it may yet roll back: kept)
}

void Client::answer_listen(std::string_view tag, std::string_view sqlstate,
                           std::string_view message) {
  if (state_ == ClientState::closing) return;
  if (sqlstate.empty())
    (void)stream_.emit([&](std::string& out) { return proto::build::command_complete(out, tag); });
  else
    (void)stream_.emit([&](std::string& out) {
      return proto::build::error_response(out, "ERROR", sqlstate, message);
    });
  (void)stream_.emit([](std::string& out) { return proto::build::ready_for_query(out, 'I'); });
  reactor_.want_send(stream_);
}

void Client::notify(std::int32_t pid, std::string_view channel, std::string_view payload) {
  if (state_ == ClientState::closing) return;
  Listening& l = *listening_;
  // Its own NOTIFY (sent on the server where it last notified) carries the pid it was told in
  // BackendKeyData, as PostgreSQL's would: drivers tell their own notifications by it.
  if (cancel_pid_ != 0 && l.own_notification(pid, reactor_.now())) pid = cancel_pid_;
  // Between transactions: idle, or linked (pinned) with its server idle at 'I'.
  bool between = state_ == ClientState::idle ||
                 (state_ == ClientState::active && server_ != nullptr &&
                  server_->idle_in_protocol() && server_->forward_remaining_ == 0);
  if (between && !l.parked && l.held.empty()) {
    (void)stream_.emit([&](std::string& out) {
      return proto::build::notification_response(out, pid, channel, payload);
    });
    reactor_.want_send(stream_);
    if (stream_.pending_bytes() > kMaxHeldNotifications)
      reactor_.close(*this, Reason::notification_backlog,
                     "more notifications unread than 8 MiB: the client does not read them");
    return;
  }
  // In a transaction (or waiting for its LISTEN's answer): PostgreSQL too delivers only between
  // transactions.
  if (!proto::build::notification_response(l.held, pid, channel, payload) ||
      l.held.size() > kMaxHeldNotifications)
    reactor_.close(*this, Reason::notification_backlog,
                   "more notifications held during its transaction than 8 MiB");
}

void Client::flush_notifications() {
  Listening& l = *listening_;
  if (l.held.empty() || l.parked || state_ == ClientState::closing) return;
  stream_.emit_bytes(l.held);
  l.held.clear();
  l.held.shrink_to_fit();
  reactor_.want_send(stream_);
}

// ---- the pool's side ----

void Pool::listen(Client& client, const proto::sql::Listen& command) {
  if (!listening_) listening_ = std::make_unique<Listening>();
  if (!client.listening_) client.listening_ = std::make_unique<Client::Listening>();
  Listening& pool = *listening_;
  Client::Listening& mine = *client.listening_;
  if (command.kind != proto::sql::Listen::Kind::listen) {
    unlisten(client, command);
    client.answer_listen("UNLISTEN");
    return;
  }
  const std::string& channel = command.channel;
  auto subscribed = std::find(mine.channels.begin(), mine.channels.end(), channel);
  if (reactor_.shutting_down() && !reactor_.handing_over()) {
    client.answer_listen("LISTEN", "57P01", "pgring is shutting down");
    return;
  }
  if (subscribed == mine.channels.end()) subscribe(client, channel);
  bool listening = pool.server != nullptr && pool.server->state_ == ServerState::listening;
  if (listening && pool.answered == pool.sent) {
    client.answer_listen("LISTEN");
    return;
  }
  // Answered once the listening connection has answered everything sent so far (this LISTEN,
  // or one of the same channel on its way), or, while it logs in, what it sends then.
  mine.parked = true;
  mine.wait_for = listening ? pool.sent : 0;
  mine.waiting_channel = channel;
  mine.parked_since = reactor_.now();
  mine.error = {};
  pool.parked.push_back(&client);
  client.stream_.reading_paused_ = true;
  client.stream_.detach_input();  // (a waiting client holds no ring buffer)
}

void Pool::unlisten(Client& client, const proto::sql::Listen& command) {
  if (!client.listening_ || !listening_) return;
  if (command.kind == proto::sql::Listen::Kind::unlisten_all) {
    unsubscribe_all(client);
    return;
  }
  // From now on nothing of this channel reaches the client, as after PostgreSQL's UNLISTEN.
  std::vector<std::string>& mine = client.listening_->channels;
  auto subscribed = std::find(mine.begin(), mine.end(), command.channel);
  if (subscribed == mine.end()) return;
  mine.erase(subscribed);
  auto it = listening_->channels.find(command.channel);
  if (it != listening_->channels.end()) {
    it->second.erase(&client);
    if (it->second.empty()) {
      listening_->channels.erase(it);
      send_listen(false, command.channel);
    }
  }
  drop_listener_if_unused();
}

void Pool::subscribe(Client& client, const std::string& channel) {
  if (!listening_) listening_ = std::make_unique<Listening>();
  if (!client.listening_) client.listening_ = std::make_unique<Client::Listening>();
  client.listening_->channels.push_back(channel);
  std::unordered_set<Client*>& subscribers = listening_->channels[channel];
  subscribers.insert(&client);
  if (subscribers.size() == 1) send_listen(true, channel);
  if (listening_->server == nullptr) open_listener();
}

void Pool::unsubscribe_all(Client& client) {
  if (!client.listening_ || !listening_) return;
  Listening& pool = *listening_;
  Client::Listening& mine = *client.listening_;
  for (const std::string& channel : mine.channels) {
    auto it = pool.channels.find(channel);
    if (it == pool.channels.end()) continue;
    it->second.erase(&client);
    if (it->second.empty()) {
      pool.channels.erase(it);
      send_listen(false, channel);
    }
  }
  mine.channels.clear();
  if (mine.parked) {
    mine.parked = false;
    erase_one(pool.parked, &client);
  }
  drop_listener_if_unused();
}

void Pool::send_listen(bool listen, const std::string& channel) {
  Listening& pool = *listening_;
  Server* server = pool.server;
  if (server == nullptr || server->state_ != ServerState::listening) return;  // at login
  std::string sql =
      fmt::format("{} {}", listen ? "LISTEN" : "UNLISTEN", proto::sql::quote_channel(channel));
  if (!server->stream_.emit([&](std::string& out) { return proto::build::query(out, sql); })) {
    reactor_.close(*server, Reason::server_protocol_error, "cannot encode " + sql);
    return;
  }
  ++pool.sent;
  pool.in_flight.push_back({listen, channel, {}});
  reactor_.want_send(server->stream_);
}

bool Pool::open_listener(bool unit_held) {
  Listening& pool = *listening_;
  if (pool.server != nullptr || (pool.channels.empty() && pool.parked.empty())) return false;
  if ((reactor_.shutting_down() && !reactor_.handing_over()) || paused_) return false;
  // While the server is down, the pool's own back-off paces the attempts (a unit handed on
  // from the connection before waits only for that).
  Clock::time_point due = failing_ ? next_attempt_ : Clock::time_point{};
  if (!unit_held) due = std::max(due, pool.next_attempt);
  if (reactor_.now() < due) return false;
  // A slot of the database's budget of its own (never one another reactor gave for waiting
  // clients); when the database is full, the sweep tries again (parked clients wait up to
  // query_wait).
  if (!unit_held && !db_budget_->acquire_own(reactor_.index(), settings_.max_db_connections)) {
    pool.next_attempt = reactor_.now() + kListenerRetry;
    return false;
  }
  if (!reactor_.start_connect(*this, nullptr, /*listener=*/true)) {
    if (!unit_held) db_budget_->release_from(reactor_.index());
    pool.next_attempt = reactor_.now() + std::chrono::milliseconds(100);  // a login turn
    return false;
  }
  return true;
}

bool Pool::reuse_listener_unit() {
  if (!listening_ || !std::exchange(listening_->hand_on_unit, false)) return false;
  return open_listener(/*unit_held=*/true);
}

void Pool::listener_logged_in(Server& server) {
  Listening& pool = *listening_;
  reactor_.set_state(server, ServerState::listening);
  log::info("S-{} listens for the clients of {}/{} ({} channels)", server.id_, database_,
            user_name_, pool.channels.size());
  pool.sent = pool.answered = 0;
  pool.in_flight.clear();
  // It sits idle by design: a server-wide idle_session_timeout (PostgreSQL 14 and later) would
  // end it, losing the notifications until it is back.
  const std::string* version = find_value(server.params_, "server_version");
  if (version != nullptr && std::atoi(version->c_str()) >= 14) {
    if (!server.stream_.emit([](std::string& out) {
          return proto::build::query(out, "SET idle_session_timeout = 0");
        })) {
      reactor_.close(server, Reason::server_protocol_error, "cannot encode SET");
      return;
    }
    ++pool.sent;
    pool.in_flight.push_back({false, {}, {}});  // (answered like an UNLISTEN: nothing to tell)
    reactor_.want_send(server.stream_);
  }
  for (const auto& [channel, subscribers] : pool.channels) {
    (void)subscribers;
    send_listen(true, channel);
    if (server.state_ == ServerState::closing) return;
  }
  // Clients that subscribed while it logged in are answered once all of that is.
  for (Client* client : pool.parked)
    if (client->listening_->wait_for == 0) client->listening_->wait_for = pool.sent;
  wake_parked();
  drop_listener_if_unused();
}

void Pool::on_listener_message(Server& server, char type, std::string_view body) {
  Listening& pool = *listening_;
  switch (type) {
    case proto::backend::kNotificationResponse: {
      auto n = proto::parse_notification(body);
      if (!n) {
        reactor_.close(server, Reason::server_protocol_error, "malformed NotificationResponse");
        return;
      }
      auto it = pool.channels.find(std::string(n->channel));
      if (it == pool.channels.end()) return;  // UNLISTENed meanwhile
      // (A client closed for its backlog leaves the list at once: walk a copy.)
      std::vector<Client*> subscribers(it->second.begin(), it->second.end());
      for (Client* client : subscribers) client->notify(n->pid, n->channel, n->payload);
      return;
    }
    case proto::backend::kReadyForQuery: {
      ++pool.answered;
      if (pool.in_flight.empty()) return;
      Listening::Sent done = std::move(pool.in_flight.front());
      pool.in_flight.pop_front();
      if (done.listen && !done.error.first.empty()) {
        // PostgreSQL refused this LISTEN: the clients that asked for the channel get its error
        // and are not subscribed (those already answered keep theirs: the connection was lost
        // and this is the LISTEN again; they stay subscribed for the next one).
        log::warning("S-{} (listening for {}/{}): LISTEN {} failed: {}", server.id_, database_,
                     user_name_, done.channel, done.error.second);
        for (Client* client : pool.parked)
          if (client->listening_->waiting_channel == done.channel)
            client->listening_->error = done.error;
        wake_parked(/*errors=*/true);
        return;
      }
      wake_parked();
      return;
    }
    case proto::backend::kErrorResponse: {
      auto e = proto::parse_error_fields(body);
      std::pair<std::string, std::string> error{
          e && !e->sqlstate.empty() ? std::string(e->sqlstate) : std::string("XX000"),
          e ? std::string(e->message) : std::string("LISTEN failed")};
      if (pool.in_flight.empty()) {
        // Not an answer to a query: PostgreSQL ends the session (57P01 and the like).
        reactor_.close(server, Reason::server_eof, error.second);
        return;
      }
      pool.in_flight.front().error = std::move(error);
      return;
    }
    case proto::backend::kCommandComplete:
    case proto::backend::kNoticeResponse:
    case proto::backend::kParameterStatus:  // (nobody's session: nothing to follow)
      return;
    default:
      reactor_.close(server, Reason::server_protocol_error,
                     fmt::format("unexpected message '{}' on the listening connection", type));
      return;
  }
}

void Pool::wake_parked(bool errors) {
  Listening& pool = *listening_;
  bool listening = pool.server != nullptr && pool.server->state_ == ServerState::listening;
  auto answered = [&](const Client::Listening& l) {
    return listening && l.wait_for != 0 && l.wait_for <= pool.answered;
  };
  std::vector<Client*> ready;
  if (!errors) {
    // Each waits for a count of answers no lower than those parked before it (or all for the
    // login): one answer wakes a run at the front, never one further back. (No scan of
    // everyone parked per answer: 50,000 clients LISTENing at once to channels of their own.)
    while (!pool.parked.empty() && answered(*pool.parked.front()->listening_)) {
      pool.parked.front()->listening_->parked = false;
      ready.push_back(pool.parked.front());
      pool.parked.pop_front();
    }
  } else {
    for (auto it = pool.parked.begin(); it != pool.parked.end();) {
      Client::Listening& l = *(*it)->listening_;
      if (!answered(l) && l.error.first.empty()) {
        ++it;
        continue;
      }
      l.parked = false;
      ready.push_back(*it);
      it = pool.parked.erase(it);
    }
  }
  for (Client* client : ready) {
    Client::Listening& l = *client->listening_;
    if (!l.error.first.empty()) {
      // Not listening after all: as after PostgreSQL's failed LISTEN.
      auto mine = std::find(l.channels.begin(), l.channels.end(), l.waiting_channel);
      if (mine != l.channels.end()) {
        l.channels.erase(mine);
        auto it = pool.channels.find(l.waiting_channel);
        if (it != pool.channels.end()) {
          it->second.erase(client);
          if (it->second.empty()) pool.channels.erase(it);  // (PostgreSQL does not listen)
        }
      }
    }
    client->answer_listen("LISTEN", l.error.first, l.error.second);
    l.error = {};
    client->flush_notifications();
    if (client->state_ == ClientState::closing) continue;
    // What the client sent after its LISTEN is read now.
    client->stream_.reading_paused_ = false;
    reactor_.arm_recv_for(*client);
    if (client->stream_.input_size() > 0) client->on_input();
  }
  drop_listener_if_unused();
}

void Pool::listener_closed(Server& server, std::string_view message) {
  Listening& pool = *listening_;
  if (pool.server != &server) return;
  pool.server = nullptr;
  pool.in_flight.clear();
  pool.next_attempt = reactor_.now() + kListenerRetry;
  // Clients parked for its answers wait for the next one's login (then LISTENs all again).
  for (Client* client : pool.parked) client->listening_->wait_for = 0;
  if (!pool.channels.empty() && !reactor_.shutting_down())
    log::warning(
        "{}/{}: the listening connection closed ({}); notifications until it is back "
        "are lost",
        database_, user_name_, message);
}

void Pool::retire_listener(Reason reason, std::string_view message) {
  if (!listening_ || listening_->server == nullptr) return;
  listening_->hand_on_unit = true;
  reactor_.close(*listening_->server, reason, message);
  listening_->next_attempt = {};  // another at once
  open_listener();
}

void Pool::keep_listening() {
  Listening& pool = *listening_;
  if (pool.server == nullptr) open_listener();
  // Parked clients wait up to query_wait, as for a server (the database full, PostgreSQL down).
  auto limit = settings_.timeouts.query_wait;
  if (limit.count() <= 0 || pool.parked.empty()) return;
  bool expired = false;
  for (Client* client : pool.parked) {
    Client::Listening& l = *client->listening_;
    if (reactor_.now() - l.parked_since >= limit) {
      l.error = {"57014", "pgring: query_wait timeout: no listening connection could be opened"};
      expired = true;
    }
  }
  if (expired) wake_parked(/*errors=*/true);
}

void Pool::drop_listener_if_unused() {
  Listening& pool = *listening_;
  if (pool.server == nullptr || !pool.channels.empty() || !pool.parked.empty()) return;
  // (One still logging in is dropped once it is in: a close now would count as a failed
  // connect, and take its host out.)
  if (pool.server->state_ != ServerState::listening) return;
  reactor_.close(*pool.server, Reason::listen_ended, "no client listens any more");
}

}  // namespace pgring
