#pragma once
// Where server connections go (docs/operations.md, "Hosts, roles and failover"): each
// databases: entry has a HostGroup of endpoints, one per address its `hosts:` resolve to. The
// reactors pick an endpoint when they open a server connection and report what they learn
// (connect failed, logged in, pg_is_in_recovery()); the monitor thread looks the names up again
// every dns.ttl and checks every endpoint every health_check.interval, off the reactor threads.
// A change that matters (a role, a host down or back, an address gone) is posted to every
// reactor, which retires the server connections that no longer fit and retries at once.
//
// Nothing here is touched per message: a pick is one short lock per server connection opened.

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "config/config.hpp"

namespace pgring {

class Shared;

enum class HostRole : std::uint8_t { unknown, primary, replica };
[[nodiscard]] std::string_view to_string(HostRole role);

// One address of a hosts: entry.
struct Endpoint {
  // Set when made, never changed.
  std::string name;  // the hosts: entry's host ("pg-a", "10.0.0.7", "/run/postgresql")
  std::uint16_t port = 0;
  std::string text;     // "pg-a:5432 (10.0.0.7)", "10.0.0.7:5432", "/run/postgresql/.s.PGSQL.5432"
  std::string numeric;  // "10.0.0.7", or the socket directory
  sockaddr_storage address{};
  socklen_t address_len = 0;
  [[nodiscard]] bool unix_socket() const { return address.ss_family == AF_UNIX; }

  // Shared by the reactors and the monitor.
  std::atomic<HostRole> role{HostRole::unknown};
  std::atomic<std::int64_t> lag_ms{0};  // replay lag (replicas), from health checks
  std::atomic<int> connections{0};      // server connections to it, all reactors
  std::atomic<int> logins{0};  // of which logging in, all reactors (max_concurrent_server_logins)
  std::atomic<std::int64_t> down_until_ns{0};   // steady clock; 0: up
  std::atomic<int> failures{0};                 // in a row: connects and checks
  std::atomic<std::uint64_t> checks{0};         // health checks run
  std::atomic<std::uint64_t> checks_failed{0};  // health checks failed
  std::atomic<bool> gone{false};                // its name no longer resolves to it
  // When it was seen to turn from replica to primary (steady clock; 0: never). Of two hosts
  // that both say they are the primary (a promotion before the old primary stopped), the one
  // promoted last is the primary: writes never go back to the old one.
  std::atomic<std::int64_t> promoted_ns{0};

  [[nodiscard]] bool down(std::chrono::steady_clock::time_point now) const {
    return down_until_ns.load(std::memory_order_relaxed) > now.time_since_epoch().count();
  }
};

// A snapshot of an endpoint's state, for choosing (pure: tests/unit).
struct Candidate {
  HostRole role = HostRole::unknown;
  bool down = false;
  bool gone = false;
  std::int64_t lag_ms = 0;
  int connections = 0;
  std::int64_t down_until_ns = 0;
  std::int64_t promoted_ns = 0;
};

// Which candidate a new server connection of a database with this target goes to, or -1: the
// best tier that has one up (for `primary`: the primary, else hosts of unknown role, else
// replicas, whose role may have changed unseen; for `replica`: replicas within the lag, else
// unknown ones; `prefer_replica` adds the primary last), then by policy within it. With every
// fitting host down, the one that comes back first: a failing pool's retry is what finds a
// host back.
[[nodiscard]] int choose_endpoint(const std::vector<Candidate>& candidates, config::Target target,
                                  config::LoadBalance policy, std::int64_t max_lag_ms,
                                  std::uint64_t turn);
// Whether a server on an endpoint of this role may serve a pool with this target.
[[nodiscard]] bool role_fits(HostRole role, config::Target target);

class HostGroup {
 public:
  explicit HostGroup(const config::Database& db);

  // Where the next server connection goes; null when no name resolved (yet). With
  // `login_cap` > 0 and that host already at the cap of logins under way, null and `busy`:
  // the connection waits for a login to finish (the pool tries again from its sweep).
  // `listener`: for the connection that LISTENs for a pool's subscribers (NOTIFY is sent on
  // the primary, and a standby refuses LISTEN), a primary unless the target is replica.
  [[nodiscard]] std::shared_ptr<Endpoint> pick(std::chrono::steady_clock::time_point now,
                                               int login_cap = 0, bool* busy = nullptr,
                                               bool listener = false);
  // A server connection to `endpoint` could not connect or log in for a network reason: out
  // for a jittered back-off (250 ms doubling up to `cap`), and its name is looked up again.
  // True when this took it out.
  bool connect_failed(Endpoint& endpoint, std::chrono::steady_clock::time_point now,
                      std::chrono::milliseconds cap);
  // Logged in: up again. True when it was down.
  bool logged_in(Endpoint& endpoint);
  // What pg_is_in_recovery() said. True when the role changed.
  bool learned_role(Endpoint& endpoint, bool in_recovery,
                    std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now());
  // Whether a server on `endpoint` may keep serving this group's pools.
  // `listener`: judged as pick judges the listening connection's host.
  [[nodiscard]] bool fits(const Endpoint& endpoint, bool listener = false) const;
  // A replica further behind than max_replica_lag.
  [[nodiscard]] bool lagging(const Endpoint& endpoint) const {
    return max_lag_ms_.load() > 0 && endpoint.role.load() == HostRole::replica &&
           endpoint.lag_ms.load() > max_lag_ms_.load();
  }
  [[nodiscard]] bool needs_role() const { return target_.load() != config::Target::any; }
  // Health checks and role checks run for a database with a target or several hosts.
  [[nodiscard]] bool monitored() const { return needs_role() || hosts_.size() > 1; }
  [[nodiscard]] std::vector<std::shared_ptr<Endpoint>> endpoints() const;
  [[nodiscard]] const std::vector<config::Host>& hosts() const { return hosts_; }
  // "pg-a:5432,pg-b:5432": the same text means the same servers.
  [[nodiscard]] const std::string& text() const { return text_; }
  [[nodiscard]] config::Target target() const { return target_.load(); }
  // A reload changed target, load_balance or max_replica_lag (hosts unchanged).
  void set_policy(const config::Database& db);

 private:
  friend class HostDirectory;
  // The monitor's lookup of hosts_[index]: the endpoints of that name become `found` (kept
  // where the address is the same). True when something changed.
  bool replace(std::size_t index, std::vector<std::shared_ptr<Endpoint>> found);
  [[nodiscard]] bool fits_as(const Endpoint& endpoint, config::Target target) const;

  const std::vector<config::Host> hosts_;
  std::string text_;
  std::atomic<config::Target> target_;
  std::atomic<config::LoadBalance> policy_;
  std::atomic<std::int64_t> max_lag_ms_;
  mutable std::mutex mutex_;
  // Per hosts_ entry, its addresses' endpoints.
  std::vector<std::vector<std::shared_ptr<Endpoint>>> endpoints_;
  std::uint64_t turn_ = 0;  // round robin, and ties of least_connections
};

// Every database's HostGroup, and the monitor thread. One per process.
class HostDirectory {
 public:
  explicit HostDirectory(Shared& shared);
  ~HostDirectory();
  HostDirectory(const HostDirectory&) = delete;
  HostDirectory& operator=(const HostDirectory&) = delete;

  // From the configuration, at startup and at every reload (reactor 0): groups for new or
  // changed hosts; the others keep their state and take the new policy. Does not block: names
  // are looked up by the monitor.
  void configure(const config::Config& config);
  // Startup, before the reactors run: look every name up now, and check every host of a
  // database with a target or several hosts (the first clients need them and their roles).
  void resolve_all();
  void check_all();
  // The group of a databases: entry (its name, or "*" for the fallback's databases).
  [[nodiscard]] std::shared_ptr<HostGroup> group(std::string_view database) const;
  // Every databases: entry's group (SHOW HOSTS, /metrics).
  [[nodiscard]] std::vector<std::pair<std::string, std::shared_ptr<HostGroup>>> groups() const;
  void start();
  void stop();
  // A name is worth looking up again now (a connection to one of its addresses failed).
  void resolve_soon();
  // Tells every reactor that `database`'s hosts changed (Reactor::hosts_changed).
  void notify(const std::string& database);

 private:
  struct Checker;  // a libpq connection per endpoint, owned by the monitor thread
  void run();
  // Looks hosts_[i] of `group` up; true when the endpoints changed.
  static bool resolve(HostGroup& group, std::size_t i);
  // One health check; true when the endpoint's role or up/down changed.
  bool check(const std::string& database, HostGroup& group, Endpoint& endpoint);

  Shared& shared_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  bool resolve_requested_ = false;
  std::map<std::string, std::shared_ptr<HostGroup>, std::less<>> groups_;
  // Copied at configure(): what the monitor needs of the configuration.
  config::Config::HealthCheck health_{};
  config::Duration ttl_{std::chrono::seconds(30)};
  config::ServerTls tls_{};
  std::map<std::string, std::pair<std::string, std::string>, std::less<>> check_logins_;
  std::map<std::string, std::string, std::less<>> check_dbnames_;
  std::thread thread_;
  // Monitor-private.
  std::map<const Endpoint*, std::unique_ptr<Checker>> checkers_;
};

}  // namespace pgring
