// An upgrade in place, the clients' side (daemon/ops/upgrade.hpp has the whole sequence): a
// client idle between transactions leaves the old process with its socket and its session, and
// the new process adopts it as if it had always been there.

#include <unistd.h>

#include "daemon/conn/client.hpp"
#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/ops/upgrade.hpp"
#include "daemon/pool/pool.hpp"

namespace pgring {

bool Client::can_hand_over() const {
  // Only a session pgring can rebuild elsewhere from what it knows: its settings, its statement
  // names, its cancel key. A TLS session's keys cannot move; a session-mode or pinned client
  // has state only its server holds. (Subscriptions of listen: shared go along.) A statement
  // that runs `EXECUTE pgring_<id>` names an id of this process only.
  if (statements_) {
    if (statements_->unnamed_runs) return false;
    for (const auto& [name, named] : statements_->named)
      if (named.runs) return false;
  }
  return state_ == ClientState::idle && pool_ != nullptr &&
         (!listening_ || (!listening_->parked && listening_->held.empty())) &&
         pool_->settings_.pool_mode != config::PoolMode::session && !pool_->replication_ &&
         pinned_state_ == 0 && admin_ == AdminRole::none && stream_.tls() == nullptr &&
         startup_ != nullptr && login_ == nullptr && server_ == nullptr && welcomed_ &&
         forward_remaining_ == 0 && discard_remaining_ == 0 && !shape_check_pending() &&
         !shut_down_;
}

void Reactor::hand_over_idle() {
  // (Clients freed this turn are still allocated: free_closed() runs after this.)
  std::vector<Client*> candidates;
  candidates.swap(handover_candidates_);
  for (Client* c : candidates)
    if (c->can_hand_over()) close(*c, Reason::handed_over);
}

void Reactor::send_handed_over(Client& client) {
  proto::handover::Client record;
  record.id = client.id_;
  record.peer = client.peer_;
  record.age_ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now_ - client.connected_).count());
  record.startup_packet = client.startup_->packet;
  record.cancel_pid = client.cancel_pid_;
  record.cancel_secret.assign(client.cancel_secret_.data(), client.cancel_secret_size_);
  // auth.query: the new process has not looked this user up yet, and its servers need the
  // secret to log in.
  if (client.user_ != nullptr && secret_looked_up(client.startup_message().user)) {
    record.lookup_secret = client.user_->password;
    record.lookup_kind = static_cast<std::uint8_t>(client.user_->secret_kind);
  }
  record.params = client.params_;
  record.settings = client.settings_;
  if (client.listening_) record.channels = client.listening_->channels;
  if (client.statements_) {
    for (const auto& [name, named] : client.statements_->named)
      record.statements.push_back({name, named.entry->parse_tail, named.shape});
    record.unnamed_parse_tail = client.statements_->unnamed_parse_tail;
  }
  // What it sent after its last reply (the start of its next transaction, say).
  record.input.resize(client.stream_.input_size());
  if (!record.input.empty()) client.stream_.peek(record.input.data(), record.input.size());
  client.stream_.discard_all();
  int fd = client.stream_.fd;
  client.stream_.fd = -1;  // the new process's now (release_stream closes nothing)
  if (shared_.upgrade == nullptr) {
    ::close(fd);
    return;
  }
  std::string encoded = proto::handover::encode(record);
  if (encoded.size() > proto::handover::kMaxBody) {
    log::warning("C-{} could not be handed over: its {} bytes of statements are too many; closed",
                 client.id_, encoded.size());
    ::close(fd);
    return;
  }
  log::debug("C-{} handed over ({} statements, {} bytes unread)", client.id_,
             record.statements.size(), record.input.size());
  shared_.upgrade->hand_over(std::move(encoded), fd);
}

void Reactor::adopt(proto::handover::Client record, int fd) {
  auto* client = new Client(*this, next_id(), fd, std::move(record.peer));
  client->login_.reset();  // it logged in long ago, in the old process
  client->connected_ = now_ - std::chrono::milliseconds(record.age_ms);
  client->last_activity_ = now_;
  ++client_count_;
  shared_.clients.fetch_add(1, std::memory_order_relaxed);
  set_state(*client, ClientState::auth);  // (on the login list until it joins its pool)
  client->startup_ = startups_.intern(record.startup_packet);
  if (client->startup_ == nullptr || record.cancel_secret.size() > client->cancel_secret_.size() ||
      record.cancel_pid == 0 ||
      record.lookup_kind > static_cast<std::uint8_t>(config::SecretKind::scram)) {
    close(*client, Reason::protocol_violation, "the upgrade's record of this client is unusable");
    return;
  }
  const std::string_view database = client->startup_message().database;
  const std::string_view user = client->startup_message().user;
  std::optional<config::Database> db = config_->database_for(database);
  if (!db) {
    // The new configuration dropped its database.
    close(*client, Reason::unknown_database,
          fmt::format("database \"{}\" does not exist", database));
    return;
  }
  client->user_ = !record.lookup_secret.empty() && secret_looked_up(user)
                      ? &store_lookup(database, user, std::move(record.lookup_secret),
                                      static_cast<config::SecretKind>(record.lookup_kind))
                      : config_->find_user(user);
  // Its cancel key stays what it was told at login (the secret's first byte named this
  // reactor's index in the old process: Upgrade::adopt_loop chose this reactor by it).
  client->cancel_pid_ = record.cancel_pid;
  client->cancel_secret_size_ = static_cast<std::uint8_t>(record.cancel_secret.size());
  std::copy(record.cancel_secret.begin(), record.cancel_secret.end(),
            client->cancel_secret_.begin());
  adopt_cancel_key(*client);
  client->params_ = std::move(record.params);
  client->settings_ = std::move(record.settings);
  client->session_changed();
  client->welcomed_ = true;
  if (!record.statements.empty() || !record.unnamed_parse_tail.empty()) {
    Client::Statements& statements = client->statements();
    for (proto::handover::Client::Statement& s : record.statements)
      statements.named.emplace(
          std::move(s.name),
          Client::NamedStatement{&statements_.intern(s.parse_tail), s.shape, false, nullptr});
    statements.unnamed_parse_tail = std::move(record.unnamed_parse_tail);
    // (So that a batch binding a LISTEN statement is still answered here.)
    for (const auto& [name, named] : statements.named) statements.has_listen |= named.entry->listen;
    statements.has_listen |=
        proto::sql::parse_listen(statements.unnamed_parse_tail.c_str()).has_value();
  }
  login_done(*client);
  Pool& pool = pool_for(*db, client->user_, user);
  if (std::string refusal = admit_client(*client, pool); !refusal.empty()) {
    close(*client, Reason::too_many_clients, refusal);
    return;
  }
  client->pool_ = &pool;
  if (client->statement_count() > 0 && !client->uses_statement_cache()) {
    // The new configuration runs this pool in session mode (or without the statement cache):
    // its statement names would reach servers that never prepared them.
    close(*client, Reason::config_changed,
          "the upgrade's configuration runs this pool without the statement cache");
    return;
  }
  if (!record.channels.empty() && !pool.shares_listen()) {
    // (Its LISTENs would have to be session state on a server: nothing can restore that.)
    close(*client, Reason::config_changed,
          "the upgrade's configuration runs this pool without listen: shared");
    return;
  }
  set_state(*client, ClientState::idle);
  // Its subscriptions: the listening connection here LISTENs them (notifications sent while the
  // client moved are lost).
  for (const std::string& channel : record.channels) {
    const auto& mine =
        client->listening_ ? client->listening_->channels : std::vector<std::string>();
    if (std::find(mine.begin(), mine.end(), channel) == mine.end())
      pool.subscribe(*client, channel);
  }
  if (handing_over()) note_handover_candidate(*client);  // (this process is upgraded too)
  log::event(config_->log_connections ? config::LogLevel::info : config::LogLevel::debug,
             {.event = "client_login",
              .client = client->id_,
              .server = 0,
              .database = db->name,
              .user = user,
              .peer = client->peer_,
              .reason = {},
              .sqlstate = {},
              .duration_ms = -1},
             "C-{} taken over (was C-{} in the old process) db={} user={} from {}", client->id_,
             record.id, db->name, user, client->peer_);
  if (!record.input.empty()) {
    client->stream_.receive_bytes(record.input);
    client->on_input();
    if (client->state_ == ClientState::closing) return;
    if (client->state_ != ClientState::active && client->stream_.input_size() > 0)
      client->stream_.detach_input();
  }
  arm_recv(client->stream_, client->ops_in_flight_);
}

}  // namespace pgring
