// (split from core/reactor.cpp)
#include <arpa/inet.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "proto/builders.hpp"

namespace pgring {

// ---------------------------------------------------------------------------------------------
// Pools and servers

Pool& Reactor::pool_for(const config::Database& db, const config::User* user,
                        std::string_view user_name, bool replication) {
  // A database with a forced user has one pool, whoever the client is: its servers are all
  // alike (PgBouncer does the same), so pool_size counts them once and min_pool_size can open
  // them before any client came.
  if (db.user) {
    user_name = *db.user;
    user = config_->find_user(*db.user);
  }
  std::string key = db.name;
  key += '\0';
  key += user_name;
  if (replication) key += std::string_view("\0replication", 12);
  auto it = pools_.find(key);
  if (it != pools_.end()) return *it->second;
  config::PoolSettings settings = config_->resolve_pool(db, user);
  if (replication) Pool::for_replication(settings);
  auto pool = std::make_unique<Pool>(*this, db, user, std::string(user_name), std::move(settings));
  pool->replication_ = replication;
  pool->budget_ = &shared_.pool_budget(key);
  pool->db_budget_ = &database_budget(db.name);
  pool->db_clients_ = &shared_.database_clients(db.name);
  pool->user_clients_ = &shared_.user_clients(std::string(user_name));
  pool->paused_ = paused_all_ || paused_databases_.count(db.name) != 0;
  pool->automatic_ = config_->find_database(db.name) == nullptr;
  Pool& ref = *pool;
  pools_.emplace(std::move(key), std::move(pool));
  return ref;
}

void Reactor::open_warm_pools() {
  // min_pool_size before the first client: possible where the server login does not depend on
  // the client, a forced user's pool outside session mode (session mode logs in with a
  // client's startup parameters). Other pools warm up after their first login.
  for (const auto& [name, db] : config_->databases) {
    if (!db.user || name == config::kFallbackDatabase) continue;
    config::PoolSettings s = config_->resolve_pool(db, config_->find_user(*db.user));
    if (s.min_pool_size > 0 && s.pool_mode != config::PoolMode::session)
      pool_for(db, nullptr, *db.user).keep_warm();
  }
}

std::string Reactor::admit_client(Client& client, Pool& pool) {
  // Counted over the process: the client holds one unit of its database's and its own user's
  // client budgets until it closes.
  const config::PoolSettings& s = pool.settings_;
  std::string_view user = client.startup_message().user;
  Budget& user_clients =
      user == pool.user_name_ ? *pool.user_clients_ : shared_.user_clients(std::string(user));
  if (!pool.db_clients_->try_acquire(s.max_db_client_connections))
    return fmt::format(
        "too many client connections for database \"{}\" (max_db_client_connections {})",
        pool.database_, s.max_db_client_connections);
  if (!user_clients.try_acquire(s.max_user_client_connections)) {
    pool.db_clients_->release();
    return fmt::format(
        "too many client connections for user \"{}\" (max_user_client_connections {})", user,
        s.max_user_client_connections);
  }
  client.db_counted_ = pool.db_clients_;
  client.user_counted_ = &user_clients;
  return {};
}

bool Reactor::database_has_room(Pool& pool) {
  int limit = pool.settings_.max_db_connections;
  if (pool.db_budget_->acquire_for(index_, limit)) return true;  // (counted even without a limit)
  // Make room: an idle server of another pool of this database goes (its clients are not
  // waiting, ours are). The room appears once it is freed; maintain() runs again then.
  for (auto& [key, other] : pools_) {
    (void)key;
    if (other.get() == &pool || other->database_ != pool.database_ || other->idle_servers_.empty())
      continue;
    close(*other->idle_servers_.front(), Reason::server_evicted,
          "making room under max_db_connections");
    break;
  }
  return false;
}

bool Reactor::start_connect(Pool& pool, std::shared_ptr<const Startup> startup, bool listener) {
  // (Its pool and database budgets were acquired by the caller.)
  bool busy = false;
  std::shared_ptr<Endpoint> endpoint =
      pool.group_->pick(now_, config_->max_concurrent_server_logins, &busy, listener);
  if (busy) return false;
  auto* server = new Server(*this, pool, next_id());
  server->startup_ = std::move(startup);
  if (listener) {
    server->listener_ = true;
    pool.listening_->server = server;
  }
  ++pool.stats_.server_connects;
  // Retire connections at spread-out times, not all at once: lifetime minus up to 10%.
  if (pool.settings_.timeouts.server_lifetime.count() > 0) {
    std::uint32_t r = 0;
    RAND_bytes(reinterpret_cast<unsigned char*>(&r), sizeof r);
    auto lifetime = pool.settings_.timeouts.server_lifetime;
    server->retire_at_ =
        now_ + lifetime - std::chrono::milliseconds(lifetime.count() / 10 * (r % 1000) / 1000);
  }
  server->created_ = now_;
  set_state(*server, ServerState::connecting);
  server->endpoint_ = std::move(endpoint);
  if (server->endpoint_ == nullptr) {
    shared_.hosts->resolve_soon();
    close(*server, Reason::server_unreachable,
          "cannot resolve server address " + pool.address_text());
    return true;
  }
  const Endpoint& host = *server->endpoint_;
  ++server->endpoint_->connections;
  ++server->endpoint_->logins;
  server->logging_in_ = true;
  int fd = socket(host.address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    close(*server, Reason::server_unreachable, "socket: " + errno_text(errno));
    return true;
  }
  server->stream_.fd = fd;
  log::debug("S-{} connecting to {} for {}/{}", server->id_, host.text, pool.database_,
             pool.user_name_);
  ++server->ops_in_flight_;
  io_connect(server->connect_op_, fd, host.address, host.address_len);
  return true;
}

void Reactor::login_done(Client& client) {
  if (client.node_.list == &login_clients_) login_clients_.remove(&client);
  end_login(client);
}

int Reactor::login_share() const {
  // This reactor's share of the process's cap (each reactor accepts about as many clients).
  int cap = config_->max_concurrent_logins;
  return cap <= 0 ? 0 : std::max(1, (cap + shared_.workers() - 1) / shared_.workers());
}

bool Reactor::take_login_turn(Client& client) {
  using Turn = Client::Login::Turn;
  Client::Login& login = *client.login_;
  // A client refused by max_client_conn only reads its startup packet to hear why: no turn.
  int share = login_share();
  if (share == 0 || login.refused_too_many) return true;
  if (logins_running_ < share && login_queue_.empty()) {
    login.turn = Turn::running;
    ++logins_running_;
    return true;
  }
  login.turn = Turn::queued;
  login_queue_.push_back(&client);
  client.stream_.reading_paused_ = true;
  if (client.stream_.input_size() > 0) client.stream_.detach_input();
  return false;
}

void Reactor::end_login(Client& client) {
  using Turn = Client::Login::Turn;
  if (client.login_ == nullptr || client.login_->turn == Turn::none) return;
  if (client.login_->turn == Turn::queued)
    std::erase(login_queue_, &client);
  else
    --logins_running_;
  client.login_->turn = Turn::none;
}

void Reactor::admit_logins() {
  int share = login_share();
  while (!login_queue_.empty() && (share == 0 || logins_running_ < share)) {
    Client& client = *login_queue_.front();  // (a client that closed left the queue)
    login_queue_.pop_front();
    client.login_->turn = Client::Login::Turn::running;
    ++logins_running_;
    client.stream_.reading_paused_ = false;
    client.on_input();  // what it sent while it waited
    if (client.state_ == ClientState::closing) continue;
    if (client.state_ != ClientState::active && client.stream_.input_size() > 0)
      client.stream_.detach_input();
    arm_recv(client.stream_, client.ops_in_flight_);
  }
}

}  // namespace pgring
