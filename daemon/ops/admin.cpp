// The admin console: database "pgring", simple Query protocol, for admin_users (everything)
// and stats_users (SHOW only). Results are text columns, built here and sent as one batch.

#include <algorithm>
#include <cctype>
#include <charconv>
#include <string>
#include <vector>

#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/core/shared.hpp"
#include "daemon/net/tls.hpp"
#include "daemon/ops/admin_result.hpp"
#include "daemon/pool/hosts.hpp"
#include "proto/ascii.hpp"
#include "proto/builders.hpp"

namespace pgring {

namespace {

// The TLS version a connection speaks ("" in plain text): SHOW CLIENTS / SHOW SERVERS.
std::string tls_version(const Stream& stream) {
  return stream.tls() != nullptr ? std::string(stream.tls()->version()) : std::string();
}

std::vector<std::string> words_of(std::string_view sql) {
  std::vector<std::string> words;
  std::string word;
  for (char c : sql) {
    if (std::isspace(static_cast<unsigned char>(c)) || c == ';') {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
    } else {
      word.push_back(proto::ascii_lower(c));
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  return words;
}

std::string ms(Clock::duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
}

constexpr std::string_view kHelp[] = {
    "SHOW HELP|POOLS|CLIENTS|SERVERS|STATS|DATABASES|HOSTS|SOCKETS|CONFIG|STATEMENTS|VERSION",
    "SHOW QUERIES [total|mean|p99|wait|calls|errors|rows]",
    "PAUSE [db] (answers once transactions under way are over)",
    "WAIT_CLOSE [db]",
    "RESUME [db]",
    "DISABLE db",
    "ENABLE db",
    "RECONNECT [db]",
    "RELOAD",
    "KILL db",
    "KILL_CLIENT id",
    "SHUTDOWN"};

}  // namespace

void Reactor::admin_query(Client& client, std::string_view sql) {
  Stream& out = client.stream_;
  auto words = words_of(sql);
  auto error = [&](std::string_view sqlstate, std::string message) {
    (void)out.emit([&](std::string& o) {
      return proto::build::error_response(o, "ERROR", sqlstate, "pgring: " + message);
    });
  };
  auto done = [&] {
    (void)out.emit([](std::string& o) { return proto::build::ready_for_query(o, 'I'); });
    want_send(out);
  };
  if (words.empty()) {
    (void)out.emit([](std::string& o) {
      o.append("I\0\0\0\4", 5);  // EmptyQueryResponse
      return true;
    });
    done();
    return;
  }
  const std::string& verb = words[0];
  bool is_show = verb == "show";
  if (!is_show && client.admin_ != Client::AdminRole::admin) {
    error("42501", "permission denied: \"" + verb + "\" needs an admin user (admin.users)");
    done();
    return;
  }
  std::string what = words.size() > 1 ? words[1] : "";
  bool ok = true;
  if (is_show && client.startup_message().database == kPgBouncerConsole &&
      (what == "pools" || what == "stats" || what == "stats_totals" || what == "stats_averages" ||
       what == "totals" || what == "users" || what == "state" || what == "databases" ||
       what == "clients" || what == "servers" || what == "lists" || what == "config" ||
       what == "version")) {
    ok = pgbouncer_show(client, what);
  } else if (is_show && (what == "help" || what.empty())) {
    Result r({"command"});
    for (auto line : kHelp) r.row({std::string(line)});
    ok = r.emit(out, "SHOW");
  } else if (is_show && what == "version") {
    Result r({"version"});
    r.row({std::string("pgring ") + PGRING_VERSION});
    ok = r.emit(out, "SHOW");
  } else if (is_show && (what == "pools" || what == "clients" || what == "servers" ||
                         what == "stats" || what == "sockets")) {
    // The whole process: every reactor's rows, merged.
    auto parts = gather<Rows>([what](Reactor& r) { return r.admin_rows(what); });
    Result r =
        what == "pools"     ? Result({"database", "user", "pool_mode", "cl_idle", "cl_waiting",
                                      "cl_active", "sv_active", "sv_idle", "sv_login", "sv_resetting",
                                      "pool_size", "maxwait_ms", "paused"})
        : what == "clients" ? Result({"id", "database", "user", "state", "addr", "state_ms",
                                      "server", "pinned", "statements", "worker", "tls"})
        : what == "servers"
            ? Result({"id", "database", "user", "state", "addr", "backend_pid", "client", "age_ms",
                      "state_ms", "prepared", "transaction_status", "worker", "tls"})
        : what == "sockets"
            ? Result({"id", "type", "fd", "database", "user", "state", "peer", "recv_queued",
                      "send_queued", "worker", "tls"})
            : Result({"database", "user", "transactions", "queries", "bytes_received", "bytes_sent",
                      "server_connects", "avg_wait_us", "avg_query_us", "avg_xact_us", "errors"});
    if (what == "pools")
      r.rows() = merge_rows(std::move(parts), 2, {3, 4, 5, 6, 7, 8, 9}, {11});
    else if (what == "stats")
      r.rows() = merge_rows(std::move(parts), 2, {2, 3, 4, 5, 6, 10}, {7, 8, 9});
    else
      r.rows() = merge_rows(std::move(parts), 0);
    ok = r.emit(out, "SHOW");
  } else if (is_show && what == "databases") {
    Result r({"name", "host", "port", "dbname", "pool_mode", "pool_size", "max_db_connections",
              "current_connections"});
    for (const config::Database& db : databases_to_show()) {
      const std::string& name = db.name;
      config::PoolSettings s = config_->resolve_pool(db, nullptr);
      r.row({name, db.host, std::to_string(db.port), db.dbname.empty() ? name : db.dbname,
             std::string(config::to_string(s.pool_mode)), std::to_string(s.pool_size),
             std::to_string(s.max_db_connections),
             std::to_string(database_budget(name).servers.load())});
    }
    ok = r.emit(out, "SHOW");
  } else if (is_show && what == "hosts") {
    // Every address of every databases: entry's hosts, as the reactors and health checks see
    // it (process-wide: no gather).
    Result r({"database", "host", "address", "port", "role", "state", "lag_ms", "connections",
              "checks", "checks_failed", "failures", "target"});
    auto now = std::chrono::steady_clock::now();
    for (const auto& [database, group] : shared_.hosts->groups()) {
      for (const auto& e : group->endpoints()) {
        std::string state = e->down(now) ? "down" : group->lagging(*e) ? "lagging" : "up";
        r.row({database, e->text, e->numeric, std::to_string(e->port),
               std::string(to_string(e->role.load())), state, std::to_string(e->lag_ms.load()),
               std::to_string(e->connections.load()), std::to_string(e->checks.load()),
               std::to_string(e->checks_failed.load()), std::to_string(e->failures.load()),
               std::string(config::to_string(group->target()))});
      }
    }
    ok = r.emit(out, "SHOW");
  } else if (is_show && what == "config") {
    Result r({"key", "value"});
    const config::Config& c = *config_;
    const config::Timeouts& t = c.timeouts;
    r.row({"config_file", config_path_});
    r.row({"workers", c.workers == 0 ? "auto" : std::to_string(c.workers)});
    r.row({"max_client_conn", std::to_string(c.max_client_conn)});
    r.row({"max_message_size", std::to_string(c.max_message_size)});
    r.row({"stats.fingerprints", std::to_string(c.stats_fingerprints)});
    r.row({"log.slow_query", std::to_string(c.log_slow_query.count()) + "ms"});
    r.row({"auth.method", std::string(config::to_string(c.auth_method))});
    r.row({"auth.rules", std::to_string(c.auth_rules.size())});
    r.row({"auth.query", c.auth_query ? "user " + c.auth_query->user : std::string("off")});
    r.row({"tls.client.mode", std::string(config::to_string(c.tls_client.mode))});
    r.row({"tls.server.mode", std::string(config::to_string(c.tls_server.mode))});
    r.row({"defaults.pool_mode", std::string(config::to_string(c.defaults.pool_mode))});
    r.row({"defaults.pool_size", std::to_string(c.defaults.pool_size)});
    r.row({"defaults.min_pool_size", std::to_string(c.defaults.min_pool_size)});
    r.row({"defaults.reserve_pool_size", std::to_string(c.defaults.reserve_pool_size)});
    r.row({"defaults.max_db_connections", std::to_string(c.defaults.max_db_connections)});
    r.row({"defaults.server_reset_query", c.defaults.server_reset_query});
    r.row({"defaults.prepared_statements", std::to_string(c.defaults.prepared_statements)});
    r.row({"defaults.session_state", std::string(config::to_string(c.defaults.session_state))});
    for (auto [name, value] : std::initializer_list<std::pair<std::string_view, config::Duration>>{
             {"client_login", t.client_login},
             {"server_connect", t.server_connect},
             {"server_login_retry", t.server_login_retry},
             {"query_wait", t.query_wait},
             {"reserve_pool", t.reserve_pool},
             {"query", t.query},
             {"transaction", t.transaction},
             {"idle_transaction", t.idle_transaction},
             {"client_idle", t.client_idle},
             {"server_idle", t.server_idle},
             {"server_lifetime", t.server_lifetime},
             {"cancel_wait", t.cancel_wait},
             {"shutdown", t.shutdown},
             {"autodb_idle", t.autodb_idle}})
      r.row({"timeouts." + std::string(name), std::to_string(value.count()) + "ms"});
    ok = r.emit(out, "SHOW");
  } else if (is_show && what == "queries") {
    // Every reactor's families merged; SHOW QUERIES [total|mean|p99|wait|calls|errors|rows]
    // orders by that column, largest first (total time in PostgreSQL by default).
    std::string order = words.size() > 2 ? words[2] : "total";
    std::vector<QueryFamily> families = merge_families(
        gather<std::vector<QueryFamily>>([](Reactor& rr) { return rr.queries().families(); }));
    using Key = double (*)(const QueryFamily&);
    static const std::pair<std::string_view, Key> kOrders[] = {
        {"total", [](const QueryFamily& f) { return f.server.sum; }},
        {"mean",
         [](const QueryFamily& f) {
           return f.server.count > 0 ? f.server.sum / static_cast<double>(f.server.count) : 0.0;
         }},
        {"p99", [](const QueryFamily& f) { return f.server.quantile(0.99); }},
        {"wait", [](const QueryFamily& f) { return static_cast<double>(f.wait_us); }},
        {"calls", [](const QueryFamily& f) { return static_cast<double>(f.server.count); }},
        {"errors", [](const QueryFamily& f) { return static_cast<double>(f.error_count()); }},
        {"rows", [](const QueryFamily& f) { return static_cast<double>(f.rows); }}};
    auto by = std::find_if(std::begin(kOrders), std::end(kOrders),
                           [&](const auto& o) { return o.first == order; });
    if (by == std::end(kOrders)) {
      error("42601",
            "SHOW QUERIES orders by total, mean, p99, wait, calls, errors or rows, not \"" + order +
                "\"");
      done();
      return;
    }
    Key key = by->second;
    std::stable_sort(families.begin(), families.end(),
                     [&](const QueryFamily& a, const QueryFamily& b) { return key(a) > key(b); });
    Result r({"id", "database", "user", "calls", "total_ms", "mean_ms", "p99_ms", "wait_ms",
              "errors", "rows", "bytes", "query"});
    auto ms3 = [](double ms) { return fmt::format("{:.3f}", ms); };
    for (const QueryFamily& f : families) {
      double total_ms = f.server.sum * 1000.0;
      std::uint64_t calls = f.server.count;
      r.row({fmt::format("{:016x}", f.id), f.database, f.user, std::to_string(calls), ms3(total_ms),
             ms3(calls > 0 ? total_ms / static_cast<double>(calls) : 0.0),
             ms3(f.server.quantile(0.99) * 1000.0), ms3(static_cast<double>(f.wait_us) / 1000.0),
             std::to_string(f.error_count()), std::to_string(f.rows), std::to_string(f.bytes),
             f.text});
    }
    ok = r.emit(out, "SHOW");
  } else if (is_show && what == "statements") {
    Result r({"id", "server_name", "query", "prepared_on_servers"});
    r.rows() = merge_rows(gather<Rows>([](Reactor& rr) { return rr.admin_rows("statements"); }), 0);
    ok = r.emit(out, "SHOW");
  } else if (is_show) {
    error("42601", "unknown SHOW command \"" + what + "\"; try SHOW HELP");
  } else if (verb == "pause" || verb == "resume") {
    bool pause = verb == "pause";
    if (!what.empty() && !config_->database_for(what)) {
      error("3D000", "no such database \"" + what + "\"");
    } else {
      broadcast([pause, what](Reactor& r) { r.pause(what, pause); });
      log::info("admin C-{}: {} {}", client.id_, verb, what.empty() ? "all" : what);
      if (pause) {
        // As PgBouncer's: PAUSE answers once the transactions under way are over.
        wait_admin(client, AdminWait::paused, what);
        return;
      }
      ok = out.emit([](std::string& o) { return proto::build::command_complete(o, "RESUME"); });
    }
  } else if (verb == "wait_close") {
    if (!what.empty() && !config_->database_for(what)) {
      error("3D000", "no such database \"" + what + "\"");
    } else {
      wait_admin(client, AdminWait::closed, what);
      return;
    }
  } else if (verb == "disable" || verb == "enable") {
    bool off = verb == "disable";
    if (what.empty() || !config_->database_for(what)) {
      error("3D000",
            fmt::format("{} needs a configured database name", off ? "DISABLE" : "ENABLE"));
    } else {
      broadcast([off, what](Reactor& r) { r.disable(what, off); });
      log::info("admin C-{}: {} {}", client.id_, verb, what);
      ok = out.emit([&](std::string& o) {
        return proto::build::command_complete(o, off ? "DISABLE" : "ENABLE");
      });
    }
  } else if (verb == "reconnect") {
    if (!what.empty() && !config_->database_for(what)) {
      error("3D000", "no such database \"" + what + "\"");
    } else {
      broadcast([what](Reactor& r) { r.reconnect(what); });
      log::info("admin C-{}: RECONNECT {}", client.id_, what.empty() ? "all" : what);
      ok = out.emit([](std::string& o) { return proto::build::command_complete(o, "RECONNECT"); });
    }
  } else if (verb == "kill_client") {
    // "C-12" as SHOW CLIENTS prints it, or just 12.
    std::string_view id_text = what;
    if (id_text.starts_with("c-")) id_text.remove_prefix(2);
    std::uint64_t id = 0;
    auto [end, ec] = std::from_chars(id_text.data(), id_text.data() + id_text.size(), id);
    if (id_text.empty() || ec != std::errc() || end != id_text.data() + id_text.size()) {
      error("42601", "KILL_CLIENT needs a client id (C-12, as SHOW CLIENTS gives it)");
    } else if (id == client.id_) {
      error("42601", "KILL_CLIENT: that is this console's own connection");
    } else {
      auto found = gather<int>([id](Reactor& r) { return r.kill_client(id) ? 1 : 0; });
      if (std::count(found.begin(), found.end(), 1) == 0) {
        error("42704", "no client C-" + std::to_string(id));
      } else {
        log::info("admin C-{}: KILL_CLIENT C-{}", client.id_, id);
        ok = out.emit(
            [](std::string& o) { return proto::build::command_complete(o, "KILL_CLIENT"); });
      }
    }
  } else if (verb == "reload") {
    std::string problem = reload();
    if (problem.empty())
      ok = out.emit([](std::string& o) { return proto::build::command_complete(o, "RELOAD"); });
    else
      error("F0000", "reload failed, the running configuration stays: " + problem);
  } else if (verb == "kill") {
    if (what.empty() || !config_->database_for(what)) {
      error("3D000", "KILL needs a configured database name");
    } else {
      broadcast([what](Reactor& r) { r.kill_database(what); });
      ok = out.emit([](std::string& o) { return proto::build::command_complete(o, "KILL"); });
    }
  } else if (verb == "shutdown") {
    log::info("admin C-{}: SHUTDOWN", client.id_);
    ok = out.emit([](std::string& o) { return proto::build::command_complete(o, "SHUTDOWN"); });
    broadcast([](Reactor& r) { r.begin_shutdown(ShutdownMode::graceful); });
  } else {
    error("42601", "unknown command \"" + verb + "\"; try SHOW HELP");
  }
  if (!ok) error("XX000", "could not encode the result");
  done();
}

void Reactor::pause(const std::string& database, bool pause) {
  for (auto& [key, pool] : pools_) {
    (void)key;
    if (!database.empty() && pool->database_ != database) continue;
    pool->paused_ = pause;
    if (!pause) pool->maintain();
  }
  if (database.empty())
    paused_all_ = pause;
  else if (pause)
    paused_databases_.insert(database);
  else
    paused_databases_.erase(database);
}

void Reactor::wait_admin(Client& client, AdminWait::Until until, const std::string& database) {
  // Nothing more is read from the console until the answer is out (its next command must not
  // overtake this one).
  client.stream_.reading_paused_ = true;
  admin_waits_.push_back({client.id_, until, database});
  check_admin_waits();
}

int Reactor::servers_in_the_way(AdminWait::Until until, const std::string& database) const {
  int n = 0;
  for (const auto& [key, pool] : pools_) {
    (void)key;
    if (!database.empty() && pool->database_ != database) continue;
    if (until == AdminWait::paused) {
      n += static_cast<int>(pool->active_servers_.size() + pool->resetting_servers_.size() +
                            pool->canceling_servers_.size());
      continue;
    }
    for (List<Server>* l :
         {&pool->active_servers_, &pool->resetting_servers_, &pool->canceling_servers_,
          &pool->connecting_servers_, &pool->idle_servers_})
      for (Server* s = l->front(); s != nullptr; s = List<Server>::next(s)) n += s->retire_ ? 1 : 0;
  }
  return n;
}

void Reactor::check_admin_waits() {
  for (std::size_t i = 0; i < admin_waits_.size();) {
    AdminWait wait = admin_waits_[i];
    Client* client = nullptr;
    for (Client* c = admin_clients_.front(); c != nullptr; c = List<Client>::next(c))
      if (c->id_ == wait.client_id) client = c;
    if (client == nullptr) {  // the console left meanwhile
      admin_waits_.erase(admin_waits_.begin() + static_cast<std::ptrdiff_t>(i));
      continue;
    }
    auto counts =
        gather<int>([wait](Reactor& r) { return r.servers_in_the_way(wait.until, wait.database); });
    int left = 0;
    for (int n : counts) left += n;
    if (left > 0) {
      ++i;
      continue;
    }
    admin_waits_.erase(admin_waits_.begin() + static_cast<std::ptrdiff_t>(i));
    Stream& out = client->stream_;
    (void)out.emit([&](std::string& o) {
      return proto::build::command_complete(
          o, wait.until == AdminWait::paused ? "PAUSE" : "WAIT_CLOSE");
    });
    (void)out.emit([](std::string& o) { return proto::build::ready_for_query(o, 'I'); });
    want_send(out);
    out.reading_paused_ = false;
    if (out.input_size() > 0) client->on_input();  // a command sent meanwhile
    if (client->state_ != ClientState::closing) arm_recv_for(*client);
  }
}

bool Reactor::kill_client(std::uint64_t id) {
  auto matches = [id](Client* c) { return c->id_ == id; };
  std::vector<List<Client>*> lists{&login_clients_, &admin_clients_};
  for (auto& [key, pool] : pools_) {
    (void)key;
    lists.insert(lists.end(),
                 {&pool->active_clients_, &pool->waiting_clients_, &pool->idle_clients_});
  }
  for (List<Client>* l : lists)
    for (Client* c = l->front(); c != nullptr; c = List<Client>::next(c))
      if (matches(c)) {
        close(*c, Reason::admin_kill, "connection killed by the administrator (KILL_CLIENT)");
        return true;
      }
  return false;
}

void Reactor::reconnect(const std::string& database) {
  for (auto& [key, pool] : pools_) {
    (void)key;
    if (!database.empty() && pool->database_ != database) continue;
    for (List<Server>* l : {&pool->active_servers_, &pool->resetting_servers_,
                            &pool->canceling_servers_, &pool->connecting_servers_})
      for (Server* s = l->front(); s != nullptr; s = List<Server>::next(s)) {
        s->retire_ = true;
        s->retire_reason_ = Reason::admin_reconnect;
      }
    while (Server* s = pool->idle_servers_.front()) close(*s, Reason::admin_reconnect);
    pool->retire_listener(Reason::admin_reconnect, "RECONNECT");
  }
}

void Reactor::disable(const std::string& database, bool disable) {
  if (disable)
    disabled_databases_.insert(database);
  else
    disabled_databases_.erase(database);
}

Rows Reactor::admin_rows(std::string_view what) {
  Rows rows;
  auto row = [&](std::vector<std::string> values) { rows.push_back(std::move(values)); };
  if (what == "pools") {
    for (auto& [key, pool] : pools_) {
      (void)key;
      Pool& p = *pool;
      Clock::duration maxwait{};
      if (Client* oldest = p.waiting_clients_.front()) maxwait = now_ - oldest->state_since_;
      row({p.database_, p.user_name_, std::string(config::to_string(p.settings_.pool_mode)),
           std::to_string(p.idle_clients_.size()), std::to_string(p.waiting_clients_.size()),
           std::to_string(p.active_clients_.size()), std::to_string(p.active_servers_.size()),
           std::to_string(p.idle_servers_.size()), std::to_string(p.connecting_servers_.size()),
           std::to_string(p.resetting_servers_.size() + p.canceling_servers_.size()),
           std::to_string(p.settings_.pool_size), ms(maxwait), p.paused_ ? "yes" : "no"});
    }
  } else if (what == "clients") {
    auto add = [&](const Client& c) {
      row({"C-" + std::to_string(c.id_),
           c.pool_ != nullptr ? c.pool_->database_ : std::string(c.startup_message().database),
           std::string(c.startup_message().user), std::string(to_string(c.state_)), c.peer_,
           ms(now_ - c.state_since_),
           c.server_ != nullptr ? "S-" + std::to_string(c.server_->id_) : "",
           proto::sql::describe_session_state(c.pinned_state_), std::to_string(c.statement_count()),
           std::to_string(index_), tls_version(c.stream_)});
    };
    for (Client* c = login_clients_.front(); c != nullptr; c = List<Client>::next(c)) add(*c);
    for (Client* c = admin_clients_.front(); c != nullptr; c = List<Client>::next(c)) add(*c);
    for (auto& [key, pool] : pools_) {
      (void)key;
      for (List<Client>* l :
           {&pool->active_clients_, &pool->waiting_clients_, &pool->idle_clients_})
        for (Client* c = l->front(); c != nullptr; c = List<Client>::next(c)) add(*c);
    }
  } else if (what == "servers") {
    for (auto& [key, pool] : pools_) {
      (void)key;
      for (List<Server>* l :
           {&pool->active_servers_, &pool->idle_servers_, &pool->connecting_servers_,
            &pool->resetting_servers_, &pool->canceling_servers_, &pool->listening_servers_})
        for (Server* s = l->front(); s != nullptr; s = List<Server>::next(s))
          row({"S-" + std::to_string(s->id_), pool->database_, pool->server_user_,
               std::string(to_string(s->state_)), s->endpoint_->text,
               std::to_string(s->backend_pid_),
               s->client_ != nullptr ? "C-" + std::to_string(s->client_->id_) : "",
               ms(now_ - s->created_), ms(now_ - s->state_since_),
               std::to_string(s->prepared_.size()), std::string(1, s->transaction_status_),
               std::to_string(index_), tls_version(s->stream_)});
    }
  } else if (what == "sockets") {
    // Every connection's socket: what SHOW FDS / SHOW SOCKETS give PgBouncer users.
    auto add = [&](std::string id, std::string_view type, const Stream& stream,
                   std::string_view database, std::string_view user, std::string_view state,
                   const std::string& peer) {
      row({std::move(id), std::string(type), std::to_string(stream.fd), std::string(database),
           std::string(user), std::string(state), peer, std::to_string(stream.input_size()),
           std::to_string(stream.pending_bytes()), std::to_string(index_), tls_version(stream)});
    };
    auto add_client = [&](const Client& c) {
      add("C-" + std::to_string(c.id_), "client", c.stream_,
          c.pool_ != nullptr ? std::string_view(c.pool_->database_) : c.startup_message().database,
          c.startup_message().user, to_string(c.state_), c.peer_);
    };
    for (Client* c = login_clients_.front(); c != nullptr; c = List<Client>::next(c))
      add_client(*c);
    for (Client* c = admin_clients_.front(); c != nullptr; c = List<Client>::next(c))
      add_client(*c);
    for (auto& [key, pool] : pools_) {
      (void)key;
      for (List<Client>* l :
           {&pool->active_clients_, &pool->waiting_clients_, &pool->idle_clients_})
        for (Client* c = l->front(); c != nullptr; c = List<Client>::next(c)) add_client(*c);
      for (List<Server>* l :
           {&pool->active_servers_, &pool->idle_servers_, &pool->connecting_servers_,
            &pool->resetting_servers_, &pool->canceling_servers_, &pool->listening_servers_})
        for (Server* s = l->front(); s != nullptr; s = List<Server>::next(s))
          add("S-" + std::to_string(s->id_), "server", s->stream_, pool->database_,
              pool->server_user_, to_string(s->state_), s->endpoint_->text);
    }
  } else if (what == "stats") {
    auto avg_us = [](const Histogram& h) {
      return std::to_string(
          h.count == 0 ? 0 : static_cast<long long>(h.sum / static_cast<double>(h.count) * 1e6));
    };
    for (auto& [key, pool] : pools_) {
      (void)key;
      const PoolStats& st = pool->stats_;
      std::uint64_t errors = 0;
      for (const auto& [klass, n] : st.errors_by_class) {
        (void)klass;
        errors += n;
      }
      row({pool->database_, pool->user_name_, std::to_string(st.transactions),
           std::to_string(st.queries), std::to_string(st.bytes_received),
           std::to_string(st.bytes_sent), std::to_string(st.server_connects), avg_us(st.wait),
           avg_us(st.query), avg_us(st.transaction), std::to_string(errors)});
    }
  } else if (what == "statements") {
    std::vector<const PreparedStatement*> all;
    for (const auto& [tail, st] : statements_.entries()) {
      (void)tail;
      all.push_back(st.get());
    }
    std::sort(all.begin(), all.end(), [](auto* a, auto* b) { return a->id < b->id; });
    for (const PreparedStatement* st : all) {
      int on = 0;
      for (auto& [key, pool] : pools_) {
        (void)key;
        for (List<Server>* l : {&pool->active_servers_, &pool->idle_servers_})
          for (Server* s = l->front(); s != nullptr; s = List<Server>::next(s))
            on += s->prepared_.contains(st->id);
      }
      row({std::to_string(st->id), st->server_name, std::string(st->query().substr(0, 200)),
           std::to_string(on)});
    }
  }
  return rows;
}

void Reactor::kill_database(std::string_view database) {
  log::info("KILL {}: closing its clients and servers", database);
  for (auto& [key, pool] : pools_) {
    (void)key;
    if (pool->database_ != database) continue;
    for (List<Client>* l :
         {&pool->active_clients_, &pool->waiting_clients_, &pool->idle_clients_}) {
      while (Client* c = l->front())
        close(*c, Reason::admin_kill, "connection killed by the administrator");
    }
    for (List<Server>* l :
         {&pool->idle_servers_, &pool->active_servers_, &pool->connecting_servers_,
          &pool->resetting_servers_, &pool->canceling_servers_, &pool->listening_servers_}) {
      while (Server* s = l->front()) close(*s, Reason::admin_kill);
    }
  }
}

void Client::admin_login() {
  const config::Config& cfg = reactor_.config();
  auto listed = [&](const std::vector<std::string>& users) {
    return std::find(users.begin(), users.end(), startup_message().user) != users.end();
  };
  if (listed(cfg.admin_users))
    admin_ = AdminRole::admin;
  else if (listed(cfg.stats_users))
    admin_ = AdminRole::stats;
  else {
    reactor_.close(
        *this, Reason::admin_denied,
        fmt::format("user \"{}\" may not use the admin console (admin.users, admin.stats_users)",
                    startup_message().user));
    return;
  }
  reactor_.login_done(*this);
  reactor_.register_cancel_key(*this);
  log::info("C-{} admin login user={} from {}", id_, startup_message().user, peer_);
  reactor_.set_state(*this, ClientState::idle);  // on the admin list: no pool
  send_welcome({{"server_version", "15.0 (pgring " PGRING_VERSION ")"},
                {"server_encoding", "UTF8"},
                {"client_encoding", "UTF8"},
                {"DateStyle", "ISO, MDY"},
                {"integer_datetimes", "on"},
                {"standard_conforming_strings", "on"},
                {"TimeZone", "UTC"},
                {"application_name", ""}});
}

void Client::handle_admin() {
  // Simple Query only; anything else gets an error, then ReadyForQuery at its Sync.
  proto::Frame frame;
  while (state_ == ClientState::idle && frame_next(frame, kMaxInspectedQuery)) {
    std::string_view body = stream_.contiguous(frame.size).substr(5);
    switch (frame.type) {
      case proto::frontend::kTerminate:
        stream_.consume(frame.size);
        reactor_.close(*this, Reason::client_terminate);
        return;
      case proto::frontend::kQuery: {
        auto sql = proto::parse_query(body);
        std::string text(sql.value_or(""));
        stream_.consume(frame.size);
        reactor_.admin_query(*this, text);
        break;
      }
      case proto::frontend::kSync:
        stream_.consume(frame.size);
        (void)stream_.emit(
            [](std::string& out) { return proto::build::ready_for_query(out, 'I'); });
        reactor_.want_send(stream_);
        break;
      default:
        stream_.consume(frame.size);
        if (!admin_error_sent_) {
          admin_error_sent_ = true;
          (void)stream_.emit([](std::string& out) {
            return proto::build::error_response(
                out, "ERROR", "0A000",
                "pgring: the admin console speaks the simple query protocol only");
          });
          reactor_.want_send(stream_);
        }
        continue;
    }
    admin_error_sent_ = false;
  }
}

}  // namespace pgring
