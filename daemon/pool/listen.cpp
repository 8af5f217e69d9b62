// LISTEN and NOTIFY in transaction and statement mode without pinning (listen: shared;
// docs/transaction-pooling.md, "LISTEN and NOTIFY"). A client's lone LISTEN between transactions
// becomes a subscription of the pool on this reactor; one server connection per pool and reactor
// LISTENs every channel somebody subscribed to and passes each notification on.

#include <algorithm>

#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/core/shared.hpp"
#include "daemon/pool/pool.hpp"
#include "proto/builders.hpp"
#include "proto/messages.hpp"

namespace pgring {

namespace {
constexpr auto kListenerRetry = std::chrono::seconds(1);

void erase_one(std::vector<Client*>& clients, const Client* client) {
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
    if (!might_be_listen(frame) || !take_listen(frame)) return true;
    if (state_ != ClientState::idle) return false;  // (closed; or the rest was read meanwhile)
  }
}

bool Client::take_listen(const proto::Frame& frame) {
  // Only a whole, small Query (a LISTEN that arrived in pieces goes the pinning way).
  if (!pool_->shares_listen()) return false;
  std::string_view body = stream_.contiguous(frame.size).substr(5);
  std::optional<std::string_view> text = proto::parse_query(body);
  if (!text) return false;
  std::optional<proto::sql::Listen> command = proto::sql::parse_listen(*text);
  if (!command) return false;
  stream_.consume(frame.size);
  ++pool_->stats_.queries;
  pool_->listen(*this, *command);
  return true;
}

void Client::answer_listen(std::string_view tag, std::string_view error) {
  if (state_ == ClientState::closing) return;
  if (error.empty())
    (void)stream_.emit([&](std::string& out) { return proto::build::command_complete(out, tag); });
  else
    (void)stream_.emit([&](std::string& out) {
      return proto::build::error_response(out, "ERROR", "08006", error);
    });
  (void)stream_.emit([](std::string& out) { return proto::build::ready_for_query(out, 'I'); });
  reactor_.want_send(stream_);
}

void Client::notify(std::int32_t pid, std::string_view channel, std::string_view payload) {
  if (state_ == ClientState::closing) return;
  Listening& l = *listening_;
  // Its own NOTIFY (run on the server it was linked to last) carries the pid it was told in
  // BackendKeyData, as PostgreSQL's would: drivers tell their own notifications by it.
  if (pid == l.last_server_pid && l.last_server_pid != 0 && cancel_pid_ != 0) pid = cancel_pid_;
  if (state_ == ClientState::idle && !l.parked && l.held.empty()) {
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
  if (l.held.empty() || l.parked || state_ != ClientState::idle) return;
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
  using Kind = proto::sql::Listen::Kind;
  if (command.kind == Kind::unlisten_all) {
    unsubscribe_all(client);
    client.answer_listen("UNLISTEN", {});
    return;
  }
  const std::string& channel = command.channel;
  auto subscribed = std::find(mine.channels.begin(), mine.channels.end(), channel);
  if (command.kind == Kind::unlisten) {
    // From now on nothing of this channel reaches the client, as after PostgreSQL's UNLISTEN.
    if (subscribed != mine.channels.end()) {
      mine.channels.erase(subscribed);
      auto it = pool.channels.find(channel);
      if (it != pool.channels.end()) {
        erase_one(it->second, &client);
        if (it->second.empty()) {
          pool.channels.erase(it);
          send_listen("UNLISTEN", channel);
        }
      }
    }
    client.answer_listen("UNLISTEN", {});
    drop_listener_if_unused();
    return;
  }
  if (subscribed == mine.channels.end()) {
    mine.channels.push_back(channel);
    std::vector<Client*>& subscribers = pool.channels[channel];
    subscribers.push_back(&client);
    if (subscribers.size() == 1) send_listen("LISTEN", channel);
  }
  bool listening = pool.server != nullptr && pool.server->state_ == ServerState::listening;
  if (listening && pool.answered == pool.sent) {
    client.answer_listen("LISTEN", {});
    return;
  }
  // Answered once the listening connection has answered everything sent so far (this LISTEN,
  // or one of the same channel on its way), or, while it logs in, what it sends then.
  mine.parked = true;
  mine.wait_for = listening ? pool.sent : 0;
  mine.waiting_channel = channel;
  pool.parked.push_back(&client);
  client.stream_.reading_paused_ = true;
  client.stream_.detach_input();  // (a waiting client holds no ring buffer)
  if (pool.server == nullptr) open_listener();
}

void Pool::unsubscribe_all(Client& client) {
  if (!client.listening_ || !listening_) return;
  Listening& pool = *listening_;
  Client::Listening& mine = *client.listening_;
  for (const std::string& channel : mine.channels) {
    auto it = pool.channels.find(channel);
    if (it == pool.channels.end()) continue;
    erase_one(it->second, &client);
    if (it->second.empty()) {
      pool.channels.erase(it);
      send_listen("UNLISTEN", channel);
    }
  }
  mine.channels.clear();
  if (mine.parked) {
    mine.parked = false;
    erase_one(pool.parked, &client);
  }
  drop_listener_if_unused();
}

void Pool::send_listen(std::string_view command, const std::string& channel) {
  Listening& pool = *listening_;
  Server* server = pool.server;
  if (server == nullptr || server->state_ != ServerState::listening) return;  // at login
  std::string sql = fmt::format("{} {}", command, proto::sql::quote_identifier(channel));
  if (!server->stream_.emit([&](std::string& out) { return proto::build::query(out, sql); })) {
    reactor_.close(*server, Reason::server_protocol_error, "cannot encode " + sql);
    return;
  }
  ++pool.sent;
  reactor_.want_send(server->stream_);
}

void Pool::open_listener() {
  Listening& pool = *listening_;
  if (pool.server != nullptr || (pool.channels.empty() && pool.parked.empty())) return;
  if (reactor_.shutting_down() || reactor_.now() < pool.next_attempt) return;
  if (!db_budget_->acquire_for(reactor_.index(), settings_.max_db_connections)) {
    pool.next_attempt = reactor_.now() + kListenerRetry;
    wake_parked(
        fmt::format("no room for the listening connection: database \"{}\" is at "
                    "max_db_connections ({})",
                    database_, settings_.max_db_connections));
    return;
  }
  if (!reactor_.start_connect(*this, nullptr, /*listener=*/true)) {
    db_budget_->release_from(reactor_.index());
    pool.next_attempt = reactor_.now() + std::chrono::milliseconds(100);  // a login turn
  }
}

void Pool::listener_logged_in(Server& server) {
  Listening& pool = *listening_;
  reactor_.set_state(server, ServerState::listening);
  log::info("S-{} listens for the clients of {}/{} ({} channels)", server.id_, database_,
            user_name_, pool.channels.size());
  pool.sent = pool.answered = 0;
  for (const auto& [channel, subscribers] : pool.channels) {
    (void)subscribers;
    send_listen("LISTEN", channel);
    if (server.state_ == ServerState::closing) return;
  }
  // Clients that subscribed while it logged in are answered once all of that is.
  for (Client* client : pool.parked)
    if (client->listening_->wait_for == 0) client->listening_->wait_for = pool.sent;
  wake_parked({});
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
      std::vector<Client*> subscribers = it->second;
      for (Client* client : subscribers) client->notify(n->pid, n->channel, n->payload);
      return;
    }
    case proto::backend::kReadyForQuery:
      ++pool.answered;
      wake_parked({});
      return;
    case proto::backend::kErrorResponse: {
      auto e = proto::parse_error_fields(body);
      pool.error = e ? std::string(e->message) : std::string("LISTEN failed");
      log::warning("S-{} (listening for {}/{}): {}", server.id_, database_, user_name_, pool.error);
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

void Pool::wake_parked(std::string_view error) {
  Listening& pool = *listening_;
  bool listening = pool.server != nullptr && pool.server->state_ == ServerState::listening;
  std::vector<Client*> ready;
  for (auto it = pool.parked.begin(); it != pool.parked.end();) {
    Client::Listening& l = *(*it)->listening_;
    bool answered = listening && l.wait_for != 0 && l.wait_for <= pool.answered;
    if (!answered && error.empty()) {
      ++it;
      continue;
    }
    l.parked = false;
    ready.push_back(*it);
    it = pool.parked.erase(it);
  }
  std::string failed = error.empty() ? pool.error : std::string(error);
  if (pool.parked.empty()) pool.error.clear();
  for (Client* client : ready) {
    Client::Listening& l = *client->listening_;
    if (!failed.empty()) {
      // Not listening after all: as after PostgreSQL's failed LISTEN.
      auto mine = std::find(l.channels.begin(), l.channels.end(), l.waiting_channel);
      if (mine != l.channels.end()) {
        l.channels.erase(mine);
        auto it = pool.channels.find(l.waiting_channel);
        if (it != pool.channels.end()) {
          erase_one(it->second, client);
          if (it->second.empty()) pool.channels.erase(it);
        }
      }
    }
    client->answer_listen("LISTEN", failed.empty() ? std::string_view() : failed);
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
  pool.next_attempt = reactor_.now() + kListenerRetry;
  if (!pool.channels.empty() && !reactor_.shutting_down())
    log::warning(
        "{}/{}: the listening connection closed ({}); notifications until it is back "
        "are lost",
        database_, user_name_, message);
  if (!pool.parked.empty())
    wake_parked(fmt::format("the listening connection closed: {}",
                            message.empty() ? std::string_view("connection lost") : message));
}

void Pool::keep_listening() {
  if (!listening_->channels.empty() && listening_->server == nullptr) open_listener();
}

void Pool::drop_listener_if_unused() {
  Listening& pool = *listening_;
  if (pool.server == nullptr || !pool.channels.empty() || !pool.parked.empty()) return;
  Server* server = pool.server;
  reactor_.close(*server, Reason::listen_ended, "no client listens any more");
}

}  // namespace pgring
