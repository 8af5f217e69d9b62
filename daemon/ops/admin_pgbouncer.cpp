// The admin console in PgBouncer's columns: a client that connects to database "pgbouncer"
// (unless a database of that name is configured) gets SHOW POOLS, STATS (and STATS_TOTALS,
// STATS_AVERAGES, TOTALS), DATABASES, USERS, CLIENTS, SERVERS, LISTS, CONFIG, STATE and VERSION
// with PgBouncer 1.25's column names and meanings, so that
// pgbouncer_exporter and dashboards built on them keep working. Where pgring has no such number
// the column is 0 (docs/migrating-from-pgbouncer.md lists them); the other commands are the
// console's own (ops/admin.cpp).

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <string>
#include <vector>

#include "daemon/core/reactor.hpp"
#include "daemon/net/tls.hpp"
#include "daemon/ops/admin_result.hpp"

namespace pgring {

namespace {
// PgBouncer's `replication` column: none, logical (replication=database) or physical.
std::string replication_kind(bool replication, const Startup* startup) {
  if (!replication || startup == nullptr) return "none";
  return startup->message.find("replication") == "database" ? "logical" : "physical";
}
}  // namespace

namespace {

std::string us(double seconds) {
  return std::to_string(static_cast<long long>(seconds * 1e6));
}

std::string count(std::size_t n) {
  return std::to_string(n);
}

// "ip:port" -> {ip, port}; a unix socket peer has no port.
std::pair<std::string, std::string> split_peer(const std::string& peer) {
  auto colon = peer.rfind(':');
  if (colon == std::string::npos) return {peer, "0"};
  std::string host = peer.substr(0, colon);
  if (host.size() > 1 && host.front() == '[') host = host.substr(1, host.size() - 2);
  return {host, peer.substr(colon + 1)};
}

// A steady-clock time as PgBouncer prints times: "2026-12-04 21:50:00 UTC".
std::string wall_time(Clock::time_point t, Clock::time_point now) {
  auto wall = std::chrono::system_clock::now() -
              std::chrono::duration_cast<std::chrono::system_clock::duration>(now - t);
  std::time_t secs = std::chrono::system_clock::to_time_t(wall);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return text;
}

std::string seconds(config::Duration d) {
  return fmt::format("{}", static_cast<double>(d.count()) / 1000.0);  // 15, 0.25
}

constexpr std::size_t kPoolsMaxwaitUs = 14;  // total µs while merging; split afterwards

}  // namespace

bool Reactor::pgbouncer_show(Client& client, std::string_view what) {
  Stream& out = client.stream_;
  auto rows = [&](std::string_view which) {
    return gather<Rows>(
        [which = std::string(which)](Reactor& r) { return r.pgbouncer_rows(which); });
  };
  if (what == "pools") {
    Result r({"database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
              "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled",
              "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us", "pool_mode",
              "load_balance_hosts"});
    r.rows() =
        merge_rows(rows("pools"), 2, {2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {kPoolsMaxwaitUs});
    for (auto& row : r.rows()) {
      long long total = std::stoll(row[kPoolsMaxwaitUs]);
      row[kPoolsMaxwaitUs - 1] = std::to_string(total / 1'000'000);
      row[kPoolsMaxwaitUs] = std::to_string(total % 1'000'000);
    }
    return r.emit(out, "SHOW");
  }
  if (what == "stats" || what == "stats_totals" || what == "stats_averages" || what == "totals") {
    // Per database, as PgBouncer keeps them. Its avg_* are the last stats_period's; these are
    // over pgring's lifetime (rates per second, times per transaction, query and wait).
    static constexpr std::array<std::string_view, 22> kNames = {"total_server_assignment_count",
                                                                "total_xact_count",
                                                                "total_query_count",
                                                                "total_received",
                                                                "total_sent",
                                                                "total_xact_time",
                                                                "total_query_time",
                                                                "total_wait_time",
                                                                "total_client_parse_count",
                                                                "total_server_parse_count",
                                                                "total_bind_count",
                                                                "avg_server_assignment_count",
                                                                "avg_xact_count",
                                                                "avg_query_count",
                                                                "avg_recv",
                                                                "avg_sent",
                                                                "avg_xact_time",
                                                                "avg_query_time",
                                                                "avg_wait_time",
                                                                "avg_client_parse_count",
                                                                "avg_server_parse_count",
                                                                "avg_bind_count"};
    Rows stats = merge_rows(rows("stats"), 1, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
    if (what == "totals") {
      // SHOW TOTALS: the same over all databases (one name and value per row, below).
      std::vector<std::string> sum(12, "0");
      for (const auto& row : stats)
        for (std::size_t c = 1; c < sum.size(); ++c)
          sum[c] = std::to_string(std::stoll(sum[c]) + std::stoll(row[c]));
      stats = {std::move(sum)};
    }
    double uptime =
        std::max(1.0, std::chrono::duration<double>(Clock::now() - shared_.started).count());
    for (auto& row : stats) {
      auto total = [&](std::size_t c) { return std::stoll(row[c]); };
      auto per = [](long long a, long long b) { return std::to_string(b == 0 ? 0 : a / b); };
      auto rate = [&](std::size_t c) {
        return std::to_string(static_cast<long long>(static_cast<double>(total(c)) / uptime));
      };
      row.resize(23);
      row[12] = rate(1);
      row[13] = rate(2);
      row[14] = rate(3);
      row[15] = rate(4);
      row[16] = rate(5);
      row[17] = per(total(6), total(2));
      row[18] = per(total(7), total(3));
      row[19] = per(total(8), total(1));
      row[20] = rate(9);
      row[21] = rate(10);
      row[22] = rate(11);
    }
    if (what == "totals") {
      Result r({"name", "value"});
      for (std::size_t c = 0; c < kNames.size(); ++c)
        r.row({std::string(kNames[c]), stats[0][c + 1]});
      return r.emit(out, "SHOW");
    }
    // STATS_TOTALS and STATS_AVERAGES: the database and the total_* or avg_* columns.
    std::size_t first = what == "stats_averages" ? 11 : 0;
    std::size_t last = what == "stats_totals" ? 11 : kNames.size();
    std::vector<std::string_view> columns{"database"};
    columns.insert(columns.end(), kNames.begin() + static_cast<std::ptrdiff_t>(first),
                   kNames.begin() + static_cast<std::ptrdiff_t>(last));
    Result r(std::move(columns));
    for (auto& row : stats) {
      std::vector<std::string> picked{row[0]};
      picked.insert(picked.end(), row.begin() + static_cast<std::ptrdiff_t>(first + 1),
                    row.begin() + static_cast<std::ptrdiff_t>(last + 1));
      r.row(std::move(picked));
    }
    return r.emit(out, "SHOW");
  }
  if (what == "users") {
    // Users of users: (with their own settings; empty where the user sets none) and those a
    // pool exists for. pgring has no max_user_connections: 0.
    Rows servers = merge_rows(rows("users"), 1, {1});
    std::vector<std::string> names;
    for (const auto& [name, user] : config_->users) names.push_back(name);
    for (const auto& row : servers)
      if (std::find(names.begin(), names.end(), row[0]) == names.end()) names.push_back(row[0]);
    Result r({"name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
              "current_connections", "max_user_client_connections", "current_client_connections"});
    for (const std::string& name : names) {
      const config::User* user = config_->find_user(name);
      const config::PoolOverrides none;
      const config::PoolOverrides& set = user != nullptr ? user->pool : none;
      config::PoolSettings effective = config_->defaults;
      effective.apply(set);
      auto row =
          std::find_if(servers.begin(), servers.end(), [&](const auto& r) { return r[0] == name; });
      r.row({name, set.pool_size ? std::to_string(*set.pool_size) : "",
             set.reserve_pool_size ? std::to_string(*set.reserve_pool_size) : "",
             set.pool_mode ? std::string(config::to_string(*set.pool_mode)) : "", "0",
             row != servers.end() ? (*row)[1] : "0",
             std::to_string(effective.max_user_client_connections),
             std::to_string(shared_.user_clients(name).servers.load())});
    }
    return r.emit(out, "SHOW");
  }
  if (what == "state") {
    Result r({"key", "value"});
    r.row({"active", paused_all_ ? "no" : "yes"});
    r.row({"paused", paused_all_ ? "yes" : "no"});
    r.row({"suspended", "no"});
    return r.emit(out, "SHOW");
  }
  if (what == "clients" || what == "servers") {
    Result r({"type",
              "user",
              "database",
              "replication",
              "state",
              "addr",
              "port",
              "local_addr",
              "local_port",
              "connect_time",
              "request_time",
              "wait",
              "wait_us",
              "close_needed",
              "ptr",
              "link",
              "remote_pid",
              "tls",
              "application_name",
              "prepared_statements",
              "id"});
    r.rows() = merge_rows(rows(what), 0);
    return r.emit(out, "SHOW");
  }
  if (what == "databases") {
    Result r({"name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
              "reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts",
              "max_connections", "current_connections", "max_client_connections",
              "current_client_connections", "paused", "disabled"});
    for (const config::Database& db : databases_to_show()) {
      const std::string& name = db.name;
      config::PoolSettings s = config_->resolve_pool(db, nullptr);
      bool paused = paused_all_ || paused_databases_.contains(name);
      r.row({name, db.host, std::to_string(db.port), db.dbname.empty() ? name : db.dbname,
             db.user.value_or(""), std::to_string(s.pool_size), std::to_string(s.min_pool_size),
             std::to_string(s.reserve_pool_size), seconds(s.timeouts.server_lifetime),
             std::string(config::to_string(s.pool_mode)), "disable",
             std::to_string(s.max_db_connections),
             std::to_string(database_budget(name).servers.load()),
             std::to_string(s.max_db_client_connections),
             std::to_string(shared_.database_clients(name).servers.load()), paused ? "1" : "0",
             "0"});
    }
    return r.emit(out, "SHOW");
  }
  if (what == "lists") {
    Rows merged = merge_rows(rows("lists"), 1, {1});
    Result r({"list", "items"});
    r.row({"databases", count(config_->databases.size())});
    r.row({"users", count(config_->users.size())});
    for (auto& row : merged) r.row(std::move(row));
    for (std::string_view dns : {"dns_names", "dns_zones", "dns_queries", "dns_pending"})
      r.row({std::string(dns), "0"});
    return r.emit(out, "SHOW");
  }
  if (what == "config") {
    const config::Config& c = *config_;
    const config::Timeouts& t = c.timeouts;
    Result r({"key", "value", "default", "changeable"});
    auto add = [&](std::string key, std::string value, std::string fallback) {
      r.row({std::move(key), std::move(value), std::move(fallback), "yes"});
    };
    add("max_client_conn", std::to_string(c.max_client_conn), "10000");
    add("default_pool_size", std::to_string(c.defaults.pool_size), "20");
    add("min_pool_size", std::to_string(c.defaults.min_pool_size), "0");
    add("reserve_pool_size", std::to_string(c.defaults.reserve_pool_size), "0");
    add("max_db_connections", std::to_string(c.defaults.max_db_connections), "0");
    add("max_user_connections", "0", "0");
    add("pool_mode", std::string(config::to_string(c.defaults.pool_mode)), "transaction");
    add("server_reset_query", c.defaults.server_reset_query, "DISCARD ALL");
    add("max_prepared_statements", std::to_string(c.defaults.prepared_statements), "200");
    add("auth_type", std::string(config::to_string(c.auth_method)), "scram-sha-256");
    add("server_lifetime", seconds(t.server_lifetime), "3600");
    add("server_idle_timeout", seconds(t.server_idle), "600");
    add("server_connect_timeout", seconds(t.server_connect), "15");
    add("server_login_retry", seconds(t.server_login_retry), "15");
    add("client_login_timeout", seconds(t.client_login), "60");
    add("query_timeout", seconds(t.query), "0");
    add("query_wait_timeout", seconds(t.query_wait), "120");
    add("client_idle_timeout", seconds(t.client_idle), "0");
    add("idle_transaction_timeout", seconds(t.idle_transaction), "0");
    add("transaction_timeout", seconds(t.transaction), "0");
    add("reserve_pool_timeout", seconds(t.reserve_pool), "5");
    add("cancel_wait_timeout", seconds(t.cancel_wait), "10");
    return r.emit(out, "SHOW");
  }
  if (what == "version") {
    // Tools read PgBouncer's version number here to know which columns to expect.
    Result r({"version"});
    r.row({std::string("PgBouncer 1.25.0 (pgring ") + PGRING_VERSION + ")"});
    return r.emit(out, "SHOW");
  }
  return false;
}

Rows Reactor::pgbouncer_rows(std::string_view what) {
  Rows rows;
  if (what == "pools") {
    for (auto& [key, pool] : pools_) {
      (void)key;
      Pool& p = *pool;
      Clock::duration maxwait{};
      if (Client* oldest = p.waiting_clients_.front()) maxwait = now_ - oldest->state_since_;
      rows.push_back(
          {p.database_, p.user_name_, count(p.idle_clients_.size() + p.active_clients_.size()),
           count(p.waiting_clients_.size()), "0", "0", count(p.active_servers_.size()), "0",
           count(p.canceling_servers_.size()), count(p.idle_servers_.size()), "0",
           count(p.resetting_servers_.size()), count(p.connecting_servers_.size()), "0",
           std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(maxwait).count()),
           std::string(config::to_string(p.settings_.pool_mode)), "disable"});
    }
  } else if (what == "stats") {
    for (auto& [key, pool] : pools_) {
      (void)key;
      const PoolStats& st = pool->stats_;
      rows.push_back({pool->database_, std::to_string(st.wait.count),
                      std::to_string(st.transactions), std::to_string(st.queries),
                      std::to_string(st.bytes_received), std::to_string(st.bytes_sent),
                      us(st.transaction.sum), us(st.query.sum), us(st.wait.sum), "0", "0", "0"});
    }
  } else if (what == "users") {
    for (auto& [key, pool] : pools_) {
      (void)key;
      rows.push_back({pool->server_user_, count(static_cast<std::size_t>(pool->server_count()))});
    }
  } else if (what == "clients") {
    auto add = [&](const Client& c, std::string_view state) {
      auto [addr, port] = split_peer(c.peer_);
      bool waiting = c.state_ == ClientState::waiting;
      auto wait = std::chrono::duration_cast<std::chrono::microseconds>(now_ - c.state_since_);
      const std::string* app =
          c.startup_ ? find_value(c.startup_->values, "application_name") : nullptr;
      rows.push_back(
          {"C",
           std::string(c.startup_message().user),
           c.pool_ != nullptr ? c.pool_->database_ : std::string(c.startup_message().database),
           replication_kind(c.pool_ != nullptr && c.pool_->replication_, c.startup_.get()),
           std::string(state),
           addr,
           port,
           "",
           "0",
           wall_time(c.state_since_, now_),
           wall_time(c.last_activity_, now_),
           waiting ? std::to_string(wait.count() / 1'000'000) : "0",
           waiting ? std::to_string(wait.count() % 1'000'000) : "0",
           "0",
           "C-" + std::to_string(c.id_),
           c.server_ != nullptr ? "S-" + std::to_string(c.server_->id_) : "",
           "0",
           c.stream_.tls() != nullptr ? std::string(c.stream_.tls()->version()) : "",
           app != nullptr ? *app : "",
           std::to_string(c.statement_count()),
           std::to_string(c.id_)});
    };
    for (Client* c = login_clients_.front(); c != nullptr; c = List<Client>::next(c))
      add(*c, "login");
    for (Client* c = admin_clients_.front(); c != nullptr; c = List<Client>::next(c))
      add(*c, "active");
    for (auto& [key, pool] : pools_) {
      (void)key;
      for (Client* c = pool->active_clients_.front(); c; c = List<Client>::next(c))
        add(*c, "active");
      for (Client* c = pool->idle_clients_.front(); c; c = List<Client>::next(c)) add(*c, "active");
      for (Client* c = pool->waiting_clients_.front(); c; c = List<Client>::next(c))
        add(*c, "waiting");
    }
  } else if (what == "servers") {
    for (auto& entry : pools_) {
      // (Plain names: clang 14 cannot capture structured bindings in the lambda.)
      Pool* pool = entry.second.get();
      auto add = [&](const Server& s, std::string_view state) {
        const std::string addr = s.endpoint_->numeric;
        const std::string port = std::to_string(s.endpoint_->port);
        rows.push_back({"S",
                        pool->server_user_,
                        pool->server_database(),
                        replication_kind(pool->replication_, s.startup_.get()),
                        std::string(state),
                        addr,
                        port,
                        "",
                        "0",
                        wall_time(s.created_, now_),
                        wall_time(s.state_since_, now_),
                        "0",
                        "0",
                        s.retire_ ? "1" : "0",
                        "S-" + std::to_string(s.id_),
                        s.client_ != nullptr ? "C-" + std::to_string(s.client_->id_) : "",
                        std::to_string(s.backend_pid_),
                        s.stream_.tls() != nullptr ? std::string(s.stream_.tls()->version()) : "",
                        "",
                        std::to_string(s.prepared_.size()),
                        std::to_string(s.id_)});
      };
      for (Server* s = pool->active_servers_.front(); s; s = List<Server>::next(s))
        add(*s, "active");
      for (Server* s = pool->canceling_servers_.front(); s; s = List<Server>::next(s))
        add(*s, "being_canceled");
      for (Server* s = pool->idle_servers_.front(); s; s = List<Server>::next(s)) add(*s, "idle");
      for (Server* s = pool->resetting_servers_.front(); s; s = List<Server>::next(s))
        add(*s, "tested");
      for (Server* s = pool->connecting_servers_.front(); s; s = List<Server>::next(s))
        add(*s, "new");
    }
  } else if (what == "lists") {
    std::size_t servers = 0, clients = 0;
    for (auto& [key, pool] : pools_) {
      (void)key;
      servers += static_cast<std::size_t>(pool->server_count());
      clients += static_cast<std::size_t>(pool->client_count());
    }
    rows.push_back({"pools", count(pools_.size())});
    rows.push_back({"free_clients", "0"});
    rows.push_back({"used_clients", count(clients + admin_clients_.size())});
    rows.push_back({"login_clients", count(login_clients_.size())});
    rows.push_back({"free_servers", "0"});
    rows.push_back({"used_servers", count(servers)});
  }
  return rows;
}

}  // namespace pgring
