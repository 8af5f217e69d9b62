// /metrics, /health and /ready over HTTP/1.1, served by the reactor itself. The counters are
// plain fields of each reactor, bumped on its own thread with no atomics; a scrape gathers them
// from every reactor as prometheus-cpp metric families (a prometheus::Collectable), adds them
// up, and prometheus-cpp's TextSerializer writes the exposition. prometheus-cpp's Registry and
// its Counter/Histogram objects are not used: they are atomics updated per event, the cost the
// reactors avoid; its civetweb exposer neither: it runs threads of its own, and /metrics already
// has a home on reactor 0 (docs/operations.md, "Metrics and probes").
//
// Every metric is declared once, in kMetrics, with its type and help.

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <string>

#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/core/shared.hpp"
#include "daemon/ops/upgrade.hpp"
#include "daemon/pool/hosts.hpp"

namespace pgring {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

struct MetricDef {
  std::string_view name;
  MetricType type;
  std::string_view help;
};

constexpr MetricDef kMetrics[] = {
    {"pgring_info", MetricType::Gauge, "pgring build information"},
    {"pgring_workers", MetricType::Gauge, "Reactor threads serving connections"},
    {"pgring_clients", MetricType::Gauge, "Client connections by pool and state"},
    {"pgring_login_clients", MetricType::Gauge, "Client connections still logging in"},
    {"pgring_login_waiting_clients", MetricType::Gauge,
     "Clients whose login waits for a turn (max_concurrent_logins)"},
    {"pgring_servers", MetricType::Gauge, "Server connections by pool and state"},
    {"pgring_pool_size", MetricType::Gauge,
     "Server connections a pool may open (pool_size, for the process)"},
    {"pgring_transactions_total", MetricType::Counter,
     "Transactions (explicit and implicit) completed"},
    {"pgring_queries_total", MetricType::Counter, "Query and Execute messages forwarded"},
    {"pgring_received_bytes_total", MetricType::Counter, "Bytes received from clients"},
    {"pgring_sent_bytes_total", MetricType::Counter, "Bytes received from servers for clients"},
    {"pgring_server_connects_total", MetricType::Counter, "Server connections opened"},
    {"pgring_errors_total", MetricType::Counter, "ErrorResponses from servers by SQLSTATE class"},
    {"pgring_wait_seconds", MetricType::Histogram, "Time clients waited for a server connection"},
    {"pgring_query_seconds", MetricType::Histogram, "Time from a request to its ReadyForQuery"},
    {"pgring_transaction_seconds", MetricType::Histogram,
     "Time from a transaction's first request to ReadyForQuery idle"},
    {"pgring_disconnects_total", MetricType::Counter, "Closed connections by close reason"},
    {"pgring_statement_cache_hits_total", MetricType::Counter,
     "Parse messages answered from the statement cache"},
    {"pgring_statement_cache_parses_total", MetricType::Counter,
     "Parse messages sent to servers for clients"},
    {"pgring_statement_cache_injected_total", MetricType::Counter,
     "Parse messages injected before a Bind or Describe"},
    {"pgring_statement_cache_evictions_total", MetricType::Counter,
     "Prepared statements closed to stay within prepared_statements"},
    {"pgring_statement_cache_retries_total", MetricType::Counter,
     "Requests retried after a cached plan changed"},
    {"pgring_statement_cache_entries", MetricType::Gauge, "Distinct statements in the registry"},
    {"pgring_reloads_total", MetricType::Counter, "Configuration reloads applied"},
    {"pgring_reload_failures_total", MetricType::Counter,
     "Configuration reloads refused (bad file)"},
    {"pgring_io_uring_enters_total", MetricType::Counter,
     "io_uring_enter calls (one per loop turn: submit and wait), i.e. wake-ups"},
    {"pgring_io_uring_sqes_total", MetricType::Counter, "Operations submitted to the ring"},
    {"pgring_io_uring_cqes_total", MetricType::Counter, "Completions reaped from the ring"},
    {"pgring_io_engine_reactors", MetricType::Gauge,
     "Reactor threads by the I/O engine they run (io.engine: io_uring, or epoll where io_uring "
     "is not allowed); the io_uring counters count the epoll engine's waits and operations too"},
    {"pgring_socket_sends_total", MetricType::Counter, "Send operations by peer (client, server)"},
    {"pgring_socket_receives_total", MetricType::Counter,
     "Receive completions carrying bytes by peer (client, server)"},
    {"pgring_host_up", MetricType::Gauge,
     "1 while a host of a database is in service, 0 while it is taken out (failed connect or "
     "health check)"},
    {"pgring_host_role", MetricType::Gauge,
     "1 for the role a host last reported (primary, replica; unknown before the first check)"},
    {"pgring_host_replica_lag_seconds", MetricType::Gauge,
     "Replay lag of a replica at its last health check"},
    {"pgring_host_connections", MetricType::Gauge, "Server connections to a host"},
    {"pgring_host_checks_total", MetricType::Counter, "Health checks run on a host"},
    {"pgring_host_checks_failed_total", MetricType::Counter, "Health checks a host failed"},
    {"pgring_tls_handshakes_total", MetricType::Counter,
     "TLS handshakes completed by peer (client, server) and protocol version; failures are "
     "pgring_disconnects_total{reason=\"tls_error\"}"},
    {"pgring_query_family_info", MetricType::Gauge,
     "A query family's normal text (first 120 bytes), once per fingerprint (stats.fingerprints)"},
    {"pgring_query_family_seconds", MetricType::Histogram,
     "Time in PostgreSQL (first byte sent .. ReadyForQuery) per call of a query family"},
    {"pgring_query_family_wait_seconds_total", MetricType::Counter,
     "Time clients waited for a server before a query family's calls"},
    {"pgring_query_family_rows_total", MetricType::Counter,
     "Rows a query family's commands reported (SELECT n, UPDATE n, ...)"},
    {"pgring_query_family_bytes_total", MetricType::Counter,
     "Bytes of the servers' answers to a query family"},
    {"pgring_query_family_errors_total", MetricType::Counter,
     "ErrorResponses to a query family's calls by SQLSTATE class"},
};

using Labels = std::vector<ClientMetric::Label>;

// The families of one reactor, in kMetrics order, each created by its first sample.
class Families {
 public:
  void add(std::string_view name, Labels labels, double value) {
    MetricFamily& f = family(name);
    ClientMetric& m = f.metric.emplace_back();
    m.label = std::move(labels);
    (f.type == MetricType::Counter ? m.counter.value : m.gauge.value) = value;
  }
  void add(std::string_view name, Labels labels, const Histogram& h) {
    ClientMetric& m = family(name).metric.emplace_back();
    m.label = std::move(labels);
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < h.buckets.size(); ++i) {
      cumulative += h.buckets[i];
      double bound = i < Histogram::kBounds.size() ? Histogram::kBounds[i]
                                                   : std::numeric_limits<double>::infinity();
      m.histogram.bucket.push_back({cumulative, bound});
    }
    m.histogram.sample_count = h.count;
    m.histogram.sample_sum = h.sum;
  }
  // A family with no sample still appears (HELP and TYPE), as before any pool exists.
  void declare(std::string_view name) { (void)family(name); }
  std::vector<MetricFamily> take() {
    std::vector<MetricFamily> out;
    for (const MetricDef& d : kMetrics)
      if (auto it = families_.find(d.name); it != families_.end())
        out.push_back(std::move(it->second));
    return out;
  }

 private:
  MetricFamily& family(std::string_view name) {
    auto it = families_.find(name);
    if (it != families_.end()) return it->second;
    for (const MetricDef& d : kMetrics)
      if (d.name == name) {
        MetricFamily f;
        f.name = std::string(d.name);
        f.help = std::string(d.help);
        f.type = d.type;
        return families_.emplace(std::string(name), std::move(f)).first->second;
      }
    throw std::logic_error("metric not declared in kMetrics: " + std::string(name));
  }
  std::map<std::string, MetricFamily, std::less<>> families_;
};

Labels pool_labels(const Pool& p, std::initializer_list<ClientMetric::Label> more = {}) {
  Labels l{{"database", p.database_}, {"user", p.user_name_}};
  l.insert(l.end(), more.begin(), more.end());
  return l;
}

// Every reactor's families made one: samples of the same series (family, labels) are added up,
// histograms bucket by bucket; pgring_info and pgring_pool_size, the same on each reactor, are
// kept once.
std::vector<MetricFamily> merge(std::vector<std::vector<MetricFamily>> parts) {
  std::vector<MetricFamily> out;
  for (auto& part : parts) {
    for (MetricFamily& f : part) {
      auto same_name = [&](const MetricFamily& o) { return o.name == f.name; };
      auto into = std::find_if(out.begin(), out.end(), same_name);
      if (into == out.end()) {
        out.push_back(std::move(f));
        continue;
      }
      for (ClientMetric& m : f.metric) {
        auto series = std::find_if(into->metric.begin(), into->metric.end(),
                                   [&](const ClientMetric& o) { return o.label == m.label; });
        if (series == into->metric.end()) {
          into->metric.push_back(std::move(m));
        } else if (f.name == "pgring_info" || f.name == "pgring_pool_size") {
          // The same on every reactor (a setting, not a count): kept once.
        } else if (f.type == MetricType::Histogram) {
          series->histogram.sample_count += m.histogram.sample_count;
          series->histogram.sample_sum += m.histogram.sample_sum;
          for (std::size_t i = 0; i < series->histogram.bucket.size(); ++i)
            series->histogram.bucket[i].cumulative_count += m.histogram.bucket[i].cumulative_count;
        } else {
          series->counter.value += m.counter.value;
          series->gauge.value += m.gauge.value;
        }
      }
    }
  }
  return out;
}

// The process's metrics at the moment prometheus-cpp asks: one gather over the reactors.
class ProcessMetrics final : public prometheus::Collectable {
 public:
  explicit ProcessMetrics(Reactor& reactor) : reactor_(reactor) {}
  std::vector<MetricFamily> Collect() const override {
    std::vector<MetricFamily> out = merge(
        reactor_.gather<std::vector<MetricFamily>>([](Reactor& r) { return r.metric_families(); }));
    Families process;
    process.add("pgring_workers", {}, static_cast<double>(reactor_.shared().workers()));
    for (MetricFamily& f : process.take()) out.insert(out.begin() + 1, std::move(f));
    Families hosts;
    auto now = std::chrono::steady_clock::now();
    for (const auto& [database, group] : reactor_.shared().hosts->groups()) {
      for (const auto& e : group->endpoints()) {
        Labels labels{{"database", database}, {"host", e->text}};
        hosts.add("pgring_host_up", labels, e->down(now) ? 0 : 1);
        Labels role = labels;
        role.push_back({"role", std::string(to_string(e->role.load()))});
        hosts.add("pgring_host_role", role, 1);
        hosts.add("pgring_host_replica_lag_seconds", labels,
                  static_cast<double>(e->lag_ms.load()) / 1000.0);
        hosts.add("pgring_host_connections", labels, e->connections.load());
        hosts.add("pgring_host_checks_total", labels, static_cast<double>(e->checks.load()));
        hosts.add("pgring_host_checks_failed_total", labels,
                  static_cast<double>(e->checks_failed.load()));
      }
    }
    for (MetricFamily& f : hosts.take()) out.push_back(std::move(f));
    for (MetricFamily& f : query_families().take()) out.push_back(std::move(f));
    return out;
  }

 private:
  // stats.fingerprints: the stats.fingerprint_metrics families with the most time in
  // PostgreSQL over all reactors (the label set stays bounded, whatever the traffic).
  Families query_families() const {
    Families f;
    std::size_t limit = static_cast<std::size_t>(reactor_.config().stats_fingerprint_metrics);
    if (limit == 0) return f;
    std::vector<QueryFamily> families = merge_families(reactor_.gather<std::vector<QueryFamily>>(
        [](Reactor& r) { return r.queries().families(); }));
    if (families.empty()) return f;
    std::size_t shown = std::min(limit, families.size());
    std::partial_sort(
        families.begin(), families.begin() + static_cast<std::ptrdiff_t>(shown), families.end(),
        [](const QueryFamily& a, const QueryFamily& b) { return a.server.sum > b.server.sum; });
    families.resize(shown);
    for (const QueryFamily& q : families) {
      std::string id = q.other() ? "other" : fmt::format("{:016x}", q.id);
      Labels labels{{"database", q.database}, {"user", q.user}, {"fingerprint", id}};
      Labels info = labels;
      info.push_back({"query", std::string(utf8_prefix(q.text, 120))});
      f.add("pgring_query_family_info", info, 1);
      f.add("pgring_query_family_seconds", labels, q.server);
      f.add("pgring_query_family_wait_seconds_total", labels, static_cast<double>(q.wait_us) / 1e6);
      f.add("pgring_query_family_rows_total", labels, static_cast<double>(q.rows));
      f.add("pgring_query_family_bytes_total", labels, static_cast<double>(q.bytes));
      for (const auto& [klass, n] : q.errors) {
        Labels by_class = labels;
        by_class.push_back({"class", klass});
        f.add("pgring_query_family_errors_total", by_class, static_cast<double>(n));
      }
    }
    return f;
  }

  Reactor& reactor_;
};

}  // namespace

std::string Reactor::metrics_text() {
  return prometheus::TextSerializer().Serialize(ProcessMetrics(*this).Collect());
}

std::vector<MetricFamily> Reactor::metric_families() const {
  Families f;
  f.add("pgring_info", {{"version", PGRING_VERSION}}, 1);
  f.declare("pgring_clients");
  f.declare("pgring_servers");
  for (const auto& [key, pool] : pools_) {
    (void)key;
    const Pool& p = *pool;
    for (auto [state, n] : {std::pair{"idle", p.idle_clients_.size()},
                            std::pair{"waiting", p.waiting_clients_.size()},
                            std::pair{"active", p.active_clients_.size()}})
      f.add("pgring_clients", pool_labels(p, {{"state", state}}), static_cast<double>(n));
    for (auto [state, n] :
         {std::pair{"active", p.active_servers_.size()}, std::pair{"idle", p.idle_servers_.size()},
          std::pair{"login", p.connecting_servers_.size()},
          std::pair{"resetting", p.resetting_servers_.size() + p.canceling_servers_.size()},
          std::pair{"listening", p.listening_servers_.size()}})
      f.add("pgring_servers", pool_labels(p, {{"state", state}}), static_cast<double>(n));
    f.add("pgring_pool_size", pool_labels(p), static_cast<double>(p.settings_.pool_size));
  }
  f.add("pgring_login_clients", {}, static_cast<double>(login_clients_.size()));
  f.add("pgring_login_waiting_clients", {}, static_cast<double>(login_queue_.size()));
  struct Counter {
    std::string_view name;
    std::uint64_t PoolStats::*field;
  };
  for (Counter c : {Counter{"pgring_transactions_total", &PoolStats::transactions},
                    Counter{"pgring_queries_total", &PoolStats::queries},
                    Counter{"pgring_received_bytes_total", &PoolStats::bytes_received},
                    Counter{"pgring_sent_bytes_total", &PoolStats::bytes_sent},
                    Counter{"pgring_server_connects_total", &PoolStats::server_connects}}) {
    f.declare(c.name);
    for (const auto& [key, pool] : pools_) {
      (void)key;
      f.add(c.name, pool_labels(*pool), static_cast<double>(pool->stats_.*c.field));
    }
  }
  f.declare("pgring_errors_total");
  for (const auto& [key, pool] : pools_) {
    (void)key;
    for (const auto& [klass, n] : pool->stats_.errors_by_class)
      f.add("pgring_errors_total", pool_labels(*pool, {{"class", klass}}), static_cast<double>(n));
  }
  for (auto [name, field] :
       {std::pair{std::string_view("pgring_wait_seconds"), &PoolStats::wait},
        std::pair{std::string_view("pgring_query_seconds"), &PoolStats::query},
        std::pair{std::string_view("pgring_transaction_seconds"), &PoolStats::transaction}}) {
    f.declare(name);
    for (const auto& [key, pool] : pools_) {
      (void)key;
      f.add(name, pool_labels(*pool), pool->stats_.*field);
    }
  }
  for (std::size_t i = 0; i < kReasonCount; ++i)
    f.add("pgring_disconnects_total", {{"reason", std::string(name(static_cast<Reason>(i)))}},
          static_cast<double>(disconnects_[i]));
  const StatementCounters& sc = statements_.counters;
  for (auto [metric, value] :
       {std::pair{std::string_view("pgring_statement_cache_hits_total"), sc.hits},
        std::pair{std::string_view("pgring_statement_cache_parses_total"), sc.parses_sent},
        std::pair{std::string_view("pgring_statement_cache_injected_total"), sc.injected},
        std::pair{std::string_view("pgring_statement_cache_evictions_total"), sc.evictions},
        std::pair{std::string_view("pgring_statement_cache_retries_total"), sc.retries},
        std::pair{std::string_view("pgring_reloads_total"), reloads_},
        std::pair{std::string_view("pgring_reload_failures_total"), reload_failures_}})
    f.add(metric, {}, static_cast<double>(value));
  f.add("pgring_statement_cache_entries", {}, static_cast<double>(statements_.size()));
  f.declare("pgring_tls_handshakes_total");
  for (const auto& [key, n] : tls_handshakes_)
    f.add("pgring_tls_handshakes_total",
          {{"peer", std::string(key.first)}, {"version", key.second}}, static_cast<double>(n));
  f.add("pgring_io_engine_reactors", {{"engine", std::string(io_engine())}}, 1);
  const RingCounters& rc = ring_counters_;
  for (auto [metric, value] :
       {std::pair{std::string_view("pgring_io_uring_enters_total"), rc.enters},
        std::pair{std::string_view("pgring_io_uring_sqes_total"), rc.sqes},
        std::pair{std::string_view("pgring_io_uring_cqes_total"), rc.cqes}})
    f.add(metric, {}, static_cast<double>(value));
  for (auto [peer, sends, receives] : {std::tuple{"client", rc.client_sends, rc.client_receives},
                                       std::tuple{"server", rc.server_sends, rc.server_receives}}) {
    f.add("pgring_socket_sends_total", {{"peer", peer}}, static_cast<double>(sends));
    f.add("pgring_socket_receives_total", {{"peer", peer}}, static_cast<double>(receives));
  }
  return f.take();
}

bool Reactor::ready() {
  // Ready: accepting, and not every pool's server is known to be down (over all reactors).
  if (shutting_down()) return false;
  auto answers = gather<int>([](Reactor& r) { return r.pools_up(); });
  bool any_pool = std::any_of(answers.begin(), answers.end(), [](int a) { return a != 0; });
  bool any_up = std::any_of(answers.begin(), answers.end(), [](int a) { return a == 1; });
  return !any_pool || any_up;
}

std::vector<config::Database> Reactor::databases_to_show() {
  std::vector<config::Database> out;
  for (const auto& [name, db] : config_->databases) out.push_back(db);
  std::set<std::string> automatic;
  for (auto& names : gather<std::vector<std::string>>([](Reactor& r) {
         std::vector<std::string> mine;
         for (const auto& [key, pool] : r.pools_) {
           (void)key;
           if (pool->automatic_) mine.push_back(pool->database_);
         }
         return mine;
       }))
    automatic.insert(names.begin(), names.end());
  for (const std::string& name : automatic)
    if (auto db = config_->database_for(name)) out.push_back(std::move(*db));
  return out;
}

int Reactor::pools_up() const {
  bool any_pool = false, any_up = false;
  for (const auto& [key, pool] : pools_) {
    (void)key;
    any_pool = true;
    any_up |= !pool->failing_;
  }
  return !any_pool ? 0 : any_up ? 1 : 2;
}

// ---- HTTP ------------------------------------------------------------------------------------

void Reactor::listen_metrics() {
  if (!config_->metrics_listen) return;
  const config::ListenAddress& a = *config_->metrics_listen;
  std::string name = a.host + ":" + std::to_string(a.port);
  // (An upgrade hands the metrics socket over too: the probes never see it refused.)
  std::vector<int> inherited;
  if (shared_.upgrade != nullptr)
    inherited = shared_.upgrade->take_listeners("metrics " + name, index_, shared_.workers());
  for (std::size_t i = 1; i < inherited.size(); ++i) ::close(inherited[i]);
  int fd = !inherited.empty() ? inherited.front() : listen_tcp(a, "metrics.listen", false, 128);
  if (shared_.upgrade != nullptr) shared_.upgrade->add_listener("metrics " + name, index_, fd);
  metrics_listener_.fd = fd;
  metrics_listener_.accept_op = Operation{Operation::Kind::http_accept, &metrics_listener_};
  metrics_listener_.name = name;
  arm_http_accept();
  log::info("metrics on http://{}/metrics", metrics_listener_.name);
}

void Reactor::arm_http_accept() {
  io_accept(metrics_listener_.accept_op, metrics_listener_.fd);
  metrics_listener_.armed = true;
}

void Reactor::on_http_accept(int result, unsigned flags) {
  if (!(flags & IORING_CQE_F_MORE)) {
    metrics_listener_.armed = false;
    if (metrics_listener_.fd >= 0 && !stopped_) arm_http_accept();
  }
  if (result < 0) return;
  auto* conn = new HttpConn(*this, result);
  conn->started_ = now_;
  http_conns_.push_back(conn);
  arm_recv(conn->stream_, conn->ops_in_flight_);
}

void Reactor::on_http_recv(HttpConn& conn, int result, unsigned flags) {
  --conn.ops_in_flight_;
  conn.stream_.recv_armed_ = false;
  if (flags & IORING_CQE_F_BUFFER)
    conn.stream_.on_received(static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT),
                             static_cast<std::uint32_t>(result > 0 ? result : 0));
  if (result <= 0 || conn.responded_) {
    finish_http(conn);
    return;
  }
  // Collect the request head (small; a client sending more than 8 KiB is cut off).
  std::size_t n = conn.stream_.input_size();
  conn.request_.append(conn.stream_.contiguous(n));
  conn.stream_.consume(n);
  if (conn.request_.find("\r\n\r\n") == std::string::npos) {
    if (conn.request_.size() > 8192)
      finish_http(conn);
    else
      arm_recv(conn.stream_, conn.ops_in_flight_);
    return;
  }
  std::string_view req = conn.request_;
  std::string_view line = req.substr(0, req.find("\r\n"));
  std::string status = "200 OK", type = "text/plain; charset=utf-8", body;
  auto path_is = [&](std::string_view p) {
    return line.starts_with(std::string("GET ") + std::string(p) + " ") ||
           line.starts_with(std::string("GET ") + std::string(p) + "?");
  };
  if (path_is("/metrics")) {
    type = "text/plain; version=0.0.4; charset=utf-8";
    body = metrics_text();
  } else if (path_is("/health")) {
    body = "ok\n";
  } else if (path_is("/ready")) {
    if (ready())
      body = "ready\n";
    else {
      status = "503 Service Unavailable";
      body = "not ready\n";
    }
  } else if (!line.starts_with("GET ")) {
    status = "405 Method Not Allowed";
    body = "only GET\n";
  } else {
    status = "404 Not Found";
    body = "try /metrics, /health or /ready\n";
  }
  std::string head = "HTTP/1.1 " + status + "\r\nContent-Type: " + type +
                     "\r\nContent-Length: " + std::to_string(body.size()) +
                     "\r\nConnection: close\r\n\r\n";
  conn.stream_.emit_bytes(head);
  conn.stream_.emit_bytes(body);
  conn.responded_ = true;
  want_send(conn.stream_);
  arm_recv(conn.stream_, conn.ops_in_flight_);  // notices the peer closing
}

void Reactor::on_http_send(HttpConn& conn, int result) {
  --conn.ops_in_flight_;
  if (result < 0) {
    conn.stream_.send_failed();
    finish_http(conn);
    return;
  }
  if (!conn.stream_.on_sent(static_cast<std::uint32_t>(result)) || conn.stream_.has_output()) {
    want_send(conn.stream_);
    return;
  }
  finish_http(conn);
}

void Reactor::finish_http(HttpConn& conn) {
  if (!conn.done_) {
    conn.done_ = true;
    conn.stream_.discard_all();
    if (conn.stream_.fd >= 0) ::shutdown(conn.stream_.fd, SHUT_RDWR);
  }
  if (conn.ops_in_flight_ > 0 || conn.freed_) return;
  conn.freed_ = true;
  release_stream(conn.stream_);
  unlink(&conn);
  free_http_.push_back(&conn);
}

HttpConn::HttpConn(Reactor& reactor, int fd)
    : stream_(reactor.buffers(), Operation::Kind::http_recv, Operation::Kind::http_send, this) {
  stream_.fd = fd;
}

}  // namespace pgring
