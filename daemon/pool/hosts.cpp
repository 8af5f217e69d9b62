#include "daemon/pool/hosts.hpp"

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <netdb.h>
#include <openssl/rand.h>
#include <sys/un.h>

#include <algorithm>
#include <cstring>

#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/core/shared.hpp"

namespace pgring {

using SteadyClock = std::chrono::steady_clock;

std::string_view to_string(HostRole role) {
  switch (role) {
    case HostRole::primary:
      return "primary";
    case HostRole::replica:
      return "replica";
    case HostRole::unknown:
      break;
  }
  return "unknown";
}

bool role_fits(HostRole role, config::Target target) {
  switch (target) {
    case config::Target::any:
    case config::Target::prefer_replica:
      return true;
    case config::Target::primary:
      return role != HostRole::replica;
    case config::Target::replica:
      return role != HostRole::primary;
  }
  return true;
}

int choose_endpoint(const std::vector<Candidate>& candidates, config::Target target,
                    config::LoadBalance policy, std::int64_t max_lag_ms, std::uint64_t turn) {
  // Tier of a candidate for the target: lower is better; -1 never.
  auto tier = [&](const Candidate& c) {
    bool lagging = max_lag_ms > 0 && c.lag_ms > max_lag_ms;
    switch (target) {
      case config::Target::any:
        return 0;
      case config::Target::primary:
        return c.role == HostRole::primary ? 0 : c.role == HostRole::unknown ? 1 : 2;
      case config::Target::replica:
        return c.role == HostRole::replica   ? (lagging ? -1 : 0)
               : c.role == HostRole::unknown ? 1
                                             : -1;
      case config::Target::prefer_replica:
        return c.role == HostRole::replica   ? (lagging ? 3 : 0)
               : c.role == HostRole::unknown ? 1
                                             : 2;
    }
    return -1;
  };
  int best_tier = -1;
  for (const Candidate& c : candidates) {
    int t = tier(c);
    if (c.gone || c.down || t < 0) continue;
    if (best_tier < 0 || t < best_tier) best_tier = t;
  }
  if (best_tier < 0) {
    // Every fitting host is down: the one whose back-off ends first.
    int first = -1;
    for (std::size_t i = 0; i < candidates.size(); ++i) {
      const Candidate& c = candidates[i];
      if (c.gone || tier(c) < 0) continue;
      if (first < 0 || c.down_until_ns < candidates[static_cast<std::size_t>(first)].down_until_ns)
        first = static_cast<int>(i);
    }
    return first;
  }
  // Of several primaries up, only the one promoted last.
  std::int64_t newest = 0;
  for (const Candidate& c : candidates)
    if (!c.gone && !c.down && c.role == HostRole::primary) newest = std::max(newest, c.promoted_ns);
  std::vector<int> fitting;
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    const Candidate& c = candidates[i];
    bool superseded = c.role == HostRole::primary && c.promoted_ns < newest;
    if (!c.gone && !c.down && !superseded && tier(c) == best_tier)
      fitting.push_back(static_cast<int>(i));
  }
  if (fitting.empty()) return -1;
  if (policy == config::LoadBalance::round_robin)
    return fitting[static_cast<std::size_t>(turn % fitting.size())];
  int fewest = candidates[static_cast<std::size_t>(fitting.front())].connections;
  for (int i : fitting)
    fewest = std::min(fewest, candidates[static_cast<std::size_t>(i)].connections);
  std::vector<int> least;
  for (int i : fitting)
    if (candidates[static_cast<std::size_t>(i)].connections == fewest) least.push_back(i);
  return least[static_cast<std::size_t>(turn % least.size())];
}

// ---- HostGroup ---------------------------------------------------------------------------------

namespace {

std::string host_text(const config::Host& host) {
  if (host.host.starts_with('/')) return host.host + "/.s.PGSQL." + std::to_string(host.port);
  if (host.host.find(':') != std::string::npos)
    return "[" + host.host + "]:" + std::to_string(host.port);
  return host.host + ":" + std::to_string(host.port);
}

std::string numeric_address(const sockaddr* address) {
  char text[INET6_ADDRSTRLEN] = "?";
  if (address->sa_family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(address)->sin_addr, text, sizeof text);
  else if (address->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(address)->sin6_addr, text,
              sizeof text);
  return text;
}

bool same_address(const Endpoint& a, const Endpoint& b) {
  return a.address_len == b.address_len && std::memcmp(&a.address, &b.address, a.address_len) == 0;
}

}  // namespace

HostGroup::HostGroup(const config::Database& db)
    : hosts_(db.hosts),
      target_(db.target),
      policy_(db.load_balance),
      max_lag_ms_(db.max_replica_lag.count()),
      endpoints_(db.hosts.size()) {
  for (const config::Host& h : hosts_) {
    if (!text_.empty()) text_ += ',';
    text_ += host_text(h);
  }
}

void HostGroup::set_policy(const config::Database& db) {
  target_ = db.target;
  policy_ = db.load_balance;
  max_lag_ms_ = db.max_replica_lag.count();
}

std::vector<std::shared_ptr<Endpoint>> HostGroup::endpoints() const {
  std::lock_guard lock(mutex_);
  std::vector<std::shared_ptr<Endpoint>> out;
  for (const auto& list : endpoints_) out.insert(out.end(), list.begin(), list.end());
  return out;
}

std::shared_ptr<Endpoint> HostGroup::pick(SteadyClock::time_point now, int login_cap, bool* busy,
                                          bool listener) {
  std::lock_guard lock(mutex_);
  std::vector<Endpoint*> all;
  std::vector<Candidate> candidates;
  for (const auto& list : endpoints_) {
    for (const auto& e : list) {
      all.push_back(e.get());
      candidates.push_back(Candidate{e->role.load(), e->down(now), e->gone.load(), e->lag_ms.load(),
                                     e->connections.load(), e->down_until_ns.load(),
                                     e->promoted_ns.load()});
    }
  }
  config::Target target = target_.load();
  if (listener && target != config::Target::replica) target = config::Target::primary;
  int i = choose_endpoint(candidates, target, policy_.load(), max_lag_ms_.load(), turn_++);
  if (i < 0) return nullptr;
  for (const auto& list : endpoints_)
    for (const auto& e : list)
      if (e.get() == all[static_cast<std::size_t>(i)]) {
        // (Checked and taken in two steps: several reactors may pass the cap by a login or
        // two, which is harmless.)
        if (login_cap > 0 && e->logins.load(std::memory_order_relaxed) >= login_cap) {
          if (busy != nullptr) *busy = true;
          return nullptr;
        }
        return e;
      }
  return nullptr;
}

bool HostGroup::connect_failed(Endpoint& endpoint, SteadyClock::time_point now,
                               std::chrono::milliseconds cap) {
  int failures = endpoint.failures.fetch_add(1) + 1;
  std::chrono::milliseconds backoff(250LL << std::min(failures - 1, 16));
  if (cap.count() > 0) backoff = std::min(backoff, cap);
  // Less up to a quarter at random: reactors and pgring instances do not retry in step.
  std::uint32_t r = 0;
  RAND_bytes(reinterpret_cast<unsigned char*>(&r), sizeof r);
  backoff -= std::chrono::milliseconds(backoff.count() / 4 * (r % 1000) / 1000);
  std::int64_t until = (now + backoff).time_since_epoch().count();
  std::int64_t before = endpoint.down_until_ns.exchange(until);
  return before <= now.time_since_epoch().count();
}

bool HostGroup::logged_in(Endpoint& endpoint) {
  endpoint.failures = 0;
  return endpoint.down_until_ns.exchange(0) != 0;
}

bool HostGroup::learned_role(Endpoint& endpoint, bool in_recovery, SteadyClock::time_point now) {
  HostRole role = in_recovery ? HostRole::replica : HostRole::primary;
  HostRole was = endpoint.role.exchange(role);
  if (was == HostRole::replica && role == HostRole::primary)
    endpoint.promoted_ns = now.time_since_epoch().count();
  return was != role;
}

bool HostGroup::fits(const Endpoint& endpoint, bool listener) const {
  if (endpoint.gone.load()) return false;
  config::Target target = target_.load();
  if (listener && target != config::Target::replica) {
    // The connection that LISTENs (see pick): a primary; a replica only while no primary is up.
    if (endpoint.role.load() != HostRole::replica)
      return fits_as(endpoint, config::Target::primary);
    auto now = SteadyClock::now();
    std::lock_guard lock(mutex_);
    for (const auto& list : endpoints_)
      for (const auto& e : list)
        if (!e->gone && !e->down(now) && e->role.load() == HostRole::primary) return false;
    return true;
  }
  return fits_as(endpoint, target);
}

bool HostGroup::fits_as(const Endpoint& endpoint, config::Target target) const {
  if (target == config::Target::prefer_replica && endpoint.role.load() == HostRole::primary) {
    // Served by the primary while no replica was up: back to a replica once one is.
    auto now = SteadyClock::now();
    std::lock_guard lock(mutex_);
    for (const auto& list : endpoints_)
      for (const auto& e : list)
        if (!e->gone && !e->down(now) && e->role.load() == HostRole::replica &&
            (max_lag_ms_.load() <= 0 || e->lag_ms.load() <= max_lag_ms_.load()))
          return false;
    return true;
  }
  if (endpoint.role.load() == HostRole::primary && target != config::Target::replica) {
    // Superseded by a primary promoted after it?
    auto now = SteadyClock::now();
    std::lock_guard lock(mutex_);
    for (const auto& list : endpoints_)
      for (const auto& e : list)
        if (e.get() != &endpoint && !e->gone && !e->down(now) &&
            e->role.load() == HostRole::primary &&
            e->promoted_ns.load() > endpoint.promoted_ns.load())
          return false;
  }
  if (lagging(endpoint) && target != config::Target::any) return false;
  return role_fits(endpoint.role.load(), target);
}

bool HostGroup::replace(std::size_t index, std::vector<std::shared_ptr<Endpoint>> found) {
  std::lock_guard lock(mutex_);
  auto& list = endpoints_[index];
  bool changed = found.size() != list.size();
  for (auto& f : found) {
    // An address already known keeps its state (role, connections, back-off).
    auto same =
        std::find_if(list.begin(), list.end(), [&](const auto& e) { return same_address(*e, *f); });
    if (same != list.end())
      f = *same;
    else
      changed = true;
  }
  for (auto& e : list) {
    bool kept = std::any_of(found.begin(), found.end(), [&](const auto& f) { return f == e; });
    if (!kept) e->gone = true;  // its servers retire; SHOW HOSTS no longer lists it
  }
  list = std::move(found);
  return changed;
}

// ---- HostDirectory -----------------------------------------------------------------------------

struct HostDirectory::Checker {
  PGconn* conn = nullptr;
  SteadyClock::time_point next{};
  ~Checker() {
    if (conn != nullptr) PQfinish(conn);
  }
};

HostDirectory::HostDirectory(Shared& shared) : shared_(shared) {}

HostDirectory::~HostDirectory() {
  stop();
}

void HostDirectory::configure(const config::Config& config) {
  std::lock_guard lock(mutex_);
  std::map<std::string, std::shared_ptr<HostGroup>, std::less<>> fresh;
  check_logins_.clear();
  check_dbnames_.clear();
  for (const auto& [name, db] : config.databases) {
    auto old = groups_.find(name);
    if (old != groups_.end() && old->second->hosts() == db.hosts) {
      old->second->set_policy(db);
      fresh.emplace(name, old->second);
    } else {
      fresh.emplace(name, std::make_shared<HostGroup>(db));
    }
    // Who the health checks log in as: health_check.user, else the database's forced user;
    // a plain password only (libpq cannot use a stored md5 or SCRAM secret).
    std::string user = config.health_check.user;
    std::string password = config.health_check.password;
    if (user.empty() && db.user) {
      user = *db.user;
      if (db.password) {
        password = *db.password;
      } else if (const config::User* u = config.find_user(*db.user)) {
        password = u->secret_kind == config::SecretKind::plain ? u->password : "";
      }
    }
    if (!user.empty()) check_logins_[name] = {user, password};
    check_dbnames_[name] = db.dbname.empty() ? "postgres" : db.dbname;
  }
  groups_ = std::move(fresh);
  health_ = config.health_check;
  ttl_ = config.dns.ttl;
  tls_ = config.tls_server;
  resolve_requested_ = true;
  wake_.notify_all();
}

std::shared_ptr<HostGroup> HostDirectory::group(std::string_view database) const {
  std::lock_guard lock(mutex_);
  auto it = groups_.find(database);
  return it == groups_.end() ? nullptr : it->second;
}

std::vector<std::pair<std::string, std::shared_ptr<HostGroup>>> HostDirectory::groups() const {
  std::lock_guard lock(mutex_);
  return {groups_.begin(), groups_.end()};
}

void HostDirectory::resolve_soon() {
  std::lock_guard lock(mutex_);
  resolve_requested_ = true;
  wake_.notify_all();
}

bool HostDirectory::resolve(HostGroup& group, std::size_t i) {
  const config::Host& host = group.hosts()[i];
  std::vector<std::shared_ptr<Endpoint>> found;
  if (host.host.starts_with('/')) {
    auto e = std::make_shared<Endpoint>();
    e->name = host.host;
    e->port = host.port;
    e->text = host_text(host);
    e->numeric = host.host;
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    if (e->text.size() >= sizeof sun.sun_path) {
      log::error("hosts: {} is too long for a unix socket path", e->text);
      return false;
    }
    std::memcpy(sun.sun_path, e->text.c_str(), e->text.size() + 1);
    std::memcpy(&e->address, &sun, sizeof sun);
    e->address_len = sizeof sun;
    found.push_back(std::move(e));
    return group.replace(i, std::move(found));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port = std::to_string(host.port);
  int rc = getaddrinfo(host.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    // The last addresses that worked stay (a DNS hiccup is no reason to stop serving).
    log::warning("hosts: cannot resolve {}: {}", host_text(host), gai_strerror(rc));
    return false;
  }
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    auto e = std::make_shared<Endpoint>();
    e->name = host.host;
    e->port = host.port;
    std::string address = numeric_address(a->ai_addr);
    e->numeric = address;
    e->text = address == host.host ? host_text(host) : host_text(host) + " (" + address + ")";
    std::memcpy(&e->address, a->ai_addr, a->ai_addrlen);
    e->address_len = a->ai_addrlen;
    bool duplicate = std::any_of(found.begin(), found.end(),
                                 [&](const auto& other) { return same_address(*other, *e); });
    if (!duplicate) found.push_back(std::move(e));
  }
  freeaddrinfo(res);
  bool changed = group.replace(i, std::move(found));
  bool numeric = true;  // (an address stays itself: nothing to say)
  for (const auto& e : group.endpoints())
    if (e->name == host.host && e->port == host.port && e->numeric != host.host) numeric = false;
  if (changed && !numeric) {
    std::string list;
    for (const auto& e : group.endpoints())
      if (e->name == host.host && e->port == host.port)
        list += (list.empty() ? "" : ", ") + e->text;
    log::info("hosts: {} is {}", host_text(host), list);
  }
  return changed;
}

void HostDirectory::resolve_all() {
  std::vector<std::shared_ptr<HostGroup>> groups;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [name, g] : groups_) groups.push_back(g);
  }
  for (const auto& g : groups)
    for (std::size_t i = 0; i < g->hosts().size(); ++i) (void)resolve(*g, i);
}

void HostDirectory::check_all() {
  std::vector<std::pair<std::string, std::shared_ptr<HostGroup>>> groups;
  {
    std::lock_guard lock(mutex_);
    groups.assign(groups_.begin(), groups_.end());
  }
  for (const auto& [name, group] : groups) {
    if (!group->monitored()) continue;
    for (const auto& e : group->endpoints()) {
      auto& checker = checkers_[e.get()];
      if (!checker) checker = std::make_unique<Checker>();
      (void)check(name, *group, *e);
      checker->next = SteadyClock::now() + health_.interval;
    }
  }
}

void HostDirectory::start() {
  thread_ = std::thread([this] { run(); });
}

void HostDirectory::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    wake_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
  checkers_.clear();
}

void HostDirectory::notify(const std::string& database) {
  for (int i = 0; i < shared_.workers(); ++i) {
    if (Reactor* r = shared_.reactors[static_cast<std::size_t>(i)].load())
      r->post([database](Reactor& self) { self.hosts_changed(database); });
  }
}

void HostDirectory::run() {
  pthread_setname_np(pthread_self(), "hosts");
  // When each name was last looked up (by group and index).
  std::map<std::pair<const HostGroup*, std::size_t>, SteadyClock::time_point> resolved;
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    auto now = SteadyClock::now();
    bool requested = resolve_requested_;
    resolve_requested_ = false;
    std::vector<std::pair<std::string, std::shared_ptr<HostGroup>>> groups(groups_.begin(),
                                                                           groups_.end());
    config::Duration ttl = ttl_;
    config::Duration interval = health_.interval;
    lock.unlock();

    SteadyClock::time_point next = now + std::chrono::seconds(1);
    for (const auto& [name, group] : groups) {
      bool changed = false;
      for (std::size_t i = 0; i < group->hosts().size(); ++i) {
        auto key = std::make_pair(group.get(), i);
        auto it = resolved.find(key);
        // Asked for (a failed connect, a reload) at most once a second per name.
        bool due = it == resolved.end() || now >= it->second + ttl ||
                   (requested && now >= it->second + std::chrono::seconds(1));
        if (!due) continue;
        changed |= resolve(*group, i);
        resolved[key] = now;
      }
      if (group->monitored()) {
        for (const auto& e : group->endpoints()) {
          auto& checker = checkers_[e.get()];
          if (!checker) checker = std::make_unique<Checker>();
          if (now < checker->next) {
            next = std::min(next, checker->next);
            continue;
          }
          changed |= check(name, *group, *e);
          // A host that failed is checked again after its back-off, not a whole interval.
          auto after = SteadyClock::now();
          checker->next = after + interval;
          if (e->down(after))
            checker->next = std::min(
                checker->next, SteadyClock::time_point(SteadyClock::duration(e->down_until_ns)));
          next = std::min(next, checker->next);
        }
      }
      if (changed) notify(name);
    }
    // Forget what left the configuration or the DNS.
    std::erase_if(checkers_, [&](const auto& entry) {
      for (const auto& [name, group] : groups)
        for (const auto& e : group->endpoints())
          if (e.get() == entry.first) return false;
      return true;
    });
    std::erase_if(resolved, [&](const auto& entry) {
      return std::none_of(groups.begin(), groups.end(),
                          [&](const auto& g) { return g.second.get() == entry.first.first; });
    });

    lock.lock();
    if (stopping_ || resolve_requested_) continue;
    wake_.wait_until(lock, next);
  }
}

bool HostDirectory::check(const std::string& database, HostGroup& group, Endpoint& endpoint) {
  std::string user, password, dbname, query;
  config::Duration timeout;
  config::Duration interval;
  config::ServerTls tls;
  {
    std::lock_guard lock(mutex_);
    auto login = check_logins_.find(database);
    if (login == check_logins_.end()) return false;  // no one to log in as: login-time checks only
    std::tie(user, password) = login->second;
    dbname = check_dbnames_[database];
    query = health_.query;
    timeout = health_.timeout;
    interval = health_.interval;
    tls = tls_;
  }
  auto& checker = checkers_[&endpoint];
  auto now = SteadyClock::now();
  ++endpoint.checks;
  if (checker->conn == nullptr || PQstatus(checker->conn) != CONNECTION_OK) {
    if (checker->conn != nullptr) PQfinish(checker->conn);
    const std::string& host = endpoint.name;
    std::string hostaddr =
        endpoint.unix_socket()
            ? ""
            : numeric_address(reinterpret_cast<const sockaddr*>(&endpoint.address));
    std::string port = std::to_string(endpoint.port);
    // libpq's connect_timeout is in whole seconds, at least 2.
    std::string connect_timeout =
        std::to_string(std::max<long long>(2, (timeout.count() + 999) / 1000));
    std::string options = "-c statement_timeout=" + std::to_string(timeout.count());
    std::string user_timeout = std::to_string(timeout.count());
    std::string sslmode(config::to_string(tls.mode));
    std::vector<const char*> keys{"host",
                                  "port",
                                  "user",
                                  "dbname",
                                  "connect_timeout",
                                  "options",
                                  "sslmode",
                                  "application_name",
                                  "tcp_user_timeout"};
    std::vector<const char*> values{host.c_str(),
                                    port.c_str(),
                                    user.c_str(),
                                    dbname.c_str(),
                                    connect_timeout.c_str(),
                                    options.c_str(),
                                    sslmode.c_str(),
                                    "pgring health check",
                                    user_timeout.c_str()};
    if (!hostaddr.empty()) {
      keys.push_back("hostaddr");
      values.push_back(hostaddr.c_str());
    }
    if (!password.empty()) {
      keys.push_back("password");
      values.push_back(password.c_str());
    }
    if (!tls.ca.empty()) {
      keys.push_back("sslrootcert");
      values.push_back(tls.ca.c_str());
    }
    if (!tls.cert.empty()) {
      keys.push_back("sslcert");
      values.push_back(tls.cert.c_str());
      keys.push_back("sslkey");
      values.push_back(tls.key.c_str());
    }
    keys.push_back(nullptr);
    values.push_back(nullptr);
    checker->conn = PQconnectdbParams(keys.data(), values.data(), 0);
    // libpq prints a server's notices (e.g. "WARNING: terminating connection due to immediate
    // shutdown command") on stderr by default: they become debug lines of pgring's own log.
    PQsetNoticeProcessor(
        checker->conn,
        [](void*, const char* text) { log::debug("hosts: health check notice: {}", text); },
        nullptr);
  }
  std::string problem;
  bool in_recovery = false;
  std::int64_t lag_ms = 0;
  if (PQstatus(checker->conn) != CONNECTION_OK) {
    problem = PQerrorMessage(checker->conn);
  } else {
    // Lag: zero when everything received is replayed (an idle primary is not "behind"; after a
    // restart the receive position may start behind the replayed one); else the age of the
    // last transaction replayed (none since the start: the time since the start).
    PGresult* r = PQexec(checker->conn,
                         "SELECT pg_is_in_recovery(), CASE WHEN NOT pg_is_in_recovery() OR "
                         "pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 ELSE "
                         "GREATEST(0, 1000 * EXTRACT(EPOCH FROM now() - COALESCE("
                         "pg_last_xact_replay_timestamp(), pg_postmaster_start_time()))) "
                         "END::bigint");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
      problem = PQerrorMessage(checker->conn);
    } else {
      in_recovery = PQgetvalue(r, 0, 0)[0] == 't';
      lag_ms = std::strtoll(PQgetvalue(r, 0, 1), nullptr, 10);
    }
    PQclear(r);
    if (problem.empty() && !query.empty()) {
      r = PQexec(checker->conn, query.c_str());
      ExecStatusType status = PQresultStatus(r);
      if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK)
        problem = "health_check.query failed: " + std::string(PQerrorMessage(checker->conn));
      PQclear(r);
    }
  }
  while (!problem.empty() && (problem.back() == '\n' || problem.back() == ' ')) problem.pop_back();
  if (!problem.empty()) {
    ++endpoint.checks_failed;
    PQfinish(checker->conn);
    checker->conn = nullptr;
    bool taken_out = group.connect_failed(endpoint, now, interval * 12);
    if (taken_out)
      log::warning("hosts: {} of database {} failed its health check: {}", endpoint.text, database,
                   problem);
    return taken_out;
  }
  bool was_lagging = group.lagging(endpoint);
  endpoint.lag_ms = lag_ms;
  bool lag_changed = group.lagging(endpoint) != was_lagging;
  if (lag_changed)
    log::info("hosts: {} of database {} is {} max_replica_lag ({} ms behind)", endpoint.text,
              database, was_lagging ? "within" : "beyond", lag_ms);
  bool back = group.logged_in(endpoint);
  if (back) log::info("hosts: {} of database {} is back", endpoint.text, database);
  bool role_changed = group.learned_role(endpoint, in_recovery);
  if (role_changed)
    log::info("hosts: {} of database {} is a {}", endpoint.text, database,
              in_recovery ? "replica" : "primary");
  return back || role_changed || lag_changed;
}

}  // namespace pgring
