#pragma once
// What the reactors of one process share (docs/operations.md, "Workers"), kept small and explicit.
// Nothing here is touched per message: a budget changes when a server connection opens or is freed,
// the client count when a client connects or leaves; cross-reactor requests (cancel routing,
// reload, shutdown, admin and metrics snapshots, "a server slot is free") go through each
// reactor's mailbox.

#include <openssl/rand.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace pgring {

class Reactor;
class HostDirectory;
class Upgrade;

// Most reactors a process runs: a reactor is one bit in Budget::starving and the low bits of the
// cancel keys it hands out.
inline constexpr int kMaxWorkers = 64;

// The server connections of one pool, or of one database, over all reactors: pool_size and
// max_db_connections are limits for the process, not per thread. (Client budgets use only
// `servers`, as a count of clients, with try_acquire and release.)
struct Budget {
  std::atomic<int> servers{0};
  // Reactors (bit = index) with clients waiting because this budget is used up. Another reactor
  // holding more than its share gives them a slot (Pool::slot_wanted_by).
  std::atomic<std::uint64_t> starving{0};
  // The units each reactor holds (its open servers, and those closing that still count), and
  // units given to a reactor that it has not taken yet. A slot that moves between reactors is
  // given, never released: released, the reactor that freed it would usually take it back at
  // once (its own clients wait too), and a server would be closed and opened for nothing.
  std::array<std::atomic<int>, kMaxWorkers> held{};
  std::array<std::atomic<int>, kMaxWorkers> gifts{};

  // One more unit, if `limit` allows (limit <= 0: counted, never refused).
  bool try_acquire(int limit) {
    int n = servers.load(std::memory_order_relaxed);
    do {
      if (limit > 0 && n >= limit) return false;
    } while (!servers.compare_exchange_weak(n, n + 1, std::memory_order_relaxed));
    return true;
  }
  void release() { servers.fetch_sub(1, std::memory_order_relaxed); }

  // A server slot for `reactor`: one given to it first (already counted), else a new one.
  bool acquire_for(int reactor, int limit) {
    std::atomic<int>& gift = gifts[static_cast<std::size_t>(reactor)];
    int n = gift.load(std::memory_order_relaxed);
    while (n > 0)
      if (gift.compare_exchange_weak(n, n - 1, std::memory_order_relaxed)) return true;
    if (!try_acquire(limit)) return false;
    held[static_cast<std::size_t>(reactor)].fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  // A slot for `reactor` that no other reactor gave it (the pool's listening connection).
  bool acquire_own(int reactor, int limit) {
    if (!try_acquire(limit)) return false;
    held[static_cast<std::size_t>(reactor)].fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  void release_from(int reactor) {
    held[static_cast<std::size_t>(reactor)].fetch_sub(1, std::memory_order_relaxed);
    release();
  }
  [[nodiscard]] int held_by(int reactor) const {
    return held[static_cast<std::size_t>(reactor)].load(std::memory_order_relaxed);
  }
  // A slot `from` holds is promised to `to` (counted as `to`'s from now on, so that neither
  // promises more than the difference); give() hands it over once its server is gone.
  void promise(int from, int to) {
    held[static_cast<std::size_t>(from)].fetch_sub(1, std::memory_order_relaxed);
    held[static_cast<std::size_t>(to)].fetch_add(1, std::memory_order_relaxed);
  }
  void give(int to) { gifts[static_cast<std::size_t>(to)].fetch_add(1, std::memory_order_relaxed); }
  // Gifts `reactor` found no use for (its clients left, or were served meanwhile) are released;
  // returns how many.
  int return_gifts(int reactor) {
    int n = gifts[static_cast<std::size_t>(reactor)].exchange(0, std::memory_order_relaxed);
    for (int i = 0; i < n; ++i) release_from(reactor);
    return n;
  }
};

class Shared {
 public:
  explicit Shared(int workers)
      : reactors(static_cast<std::size_t>(workers)), turned(static_cast<std::size_t>(workers)) {
    RAND_bytes(mock_nonce.data(), static_cast<int>(mock_nonce.size()));
  }
  [[nodiscard]] int workers() const { return static_cast<int>(reactors.size()); }

  // Filled in as the reactor threads start, before any of them accepts a connection.
  std::vector<std::atomic<Reactor*>> reactors;
  // When each reactor last ran its sweep (steady clock, ns): reactor 0 pings systemd's watchdog
  // only while every reactor turns, so one stalled reactor of several is noticed.
  std::vector<std::atomic<std::int64_t>> turned;
  // Where server connections go: every database's hosts (daemon/pool/hosts.hpp). Set before
  // the reactors start.
  HostDirectory* hosts = nullptr;
  // The upgrade's control socket and a takeover under way (daemon/ops/upgrade.hpp); null when
  // upgrade.socket is off. Set before the reactors start.
  Upgrade* upgrade = nullptr;
  std::atomic<int> clients{0};            // max_client_conn is for the process
  std::atomic<std::uint64_t> last_id{0};  // C-<id> and S-<id> are unique in the process
  // When the process started: SHOW STATS's rates per second on the "pgbouncer" console.
  const std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  // Salts the mock SCRAM exchange of unknown users (the same on every reactor; never changes).
  std::array<unsigned char, 32> mock_nonce{};

  // Budgets live as long as the process (pools keep plain pointers to them).
  Budget& pool_budget(const std::string& key) { return find(pools_, key); }
  Budget& database_budget(const std::string& name) { return find(databases_, name); }
  // Logged-in clients per database and per user (max_db_client_connections,
  // max_user_client_connections), counted the same way.
  Budget& database_clients(const std::string& name) { return find(database_clients_, name); }
  Budget& user_clients(const std::string& name) { return find(user_clients_, name); }

  // SCRAM pass-through: the ClientKey a client revealed when it logged in to pgring with SCRAM,
  // kept per user together with the secret it was checked against (the key is good for that
  // secret only). Server connections of that user log in with it: no password is stored
  // anywhere. Written at a client's login, read at a server's login: both rare.
  void remember_client_key(const std::string& user, const std::string& secret,
                           const std::array<std::uint8_t, 32>& key) {
    std::lock_guard lock(mutex_);
    client_keys_[user] = {secret, key};
    ++client_keys_version_;
  }
  // Every remembered key, and a number that changes when one is added: an upgrade hands them
  // to the new process before the clients that may need them.
  struct ClientKey {
    std::string user;
    std::string secret;
    std::array<std::uint8_t, 32> key;
  };
  std::vector<ClientKey> client_keys(std::uint64_t& version) {
    std::lock_guard lock(mutex_);
    version = client_keys_version_;
    std::vector<ClientKey> keys;
    for (const auto& [user, entry] : client_keys_)
      keys.push_back({user, entry.first, entry.second});
    return keys;
  }
  [[nodiscard]] std::optional<std::array<std::uint8_t, 32>> client_key(const std::string& user,
                                                                       const std::string& secret) {
    std::lock_guard lock(mutex_);
    auto it = client_keys_.find(user);
    if (it == client_keys_.end() || it->second.first != secret) return std::nullopt;
    return it->second.second;
  }

 private:
  Budget& find(std::unordered_map<std::string, std::unique_ptr<Budget>>& map,
               const std::string& key) {
    std::lock_guard lock(mutex_);  // only when a reactor creates a pool
    auto& slot = map[key];
    if (!slot) slot = std::make_unique<Budget>();
    return *slot;
  }
  std::mutex mutex_;
  std::unordered_map<std::string, std::unique_ptr<Budget>> pools_;
  std::unordered_map<std::string, std::unique_ptr<Budget>> databases_;
  std::unordered_map<std::string, std::unique_ptr<Budget>> database_clients_;
  std::unordered_map<std::string, std::unique_ptr<Budget>> user_clients_;
  std::unordered_map<std::string, std::pair<std::string, std::array<std::uint8_t, 32>>>
      client_keys_;
  std::uint64_t client_keys_version_ = 0;
};

}  // namespace pgring
