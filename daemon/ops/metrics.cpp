// /metrics, /health and /ready over HTTP/1.1, served by the reactor itself: a scrape reads the
// reactor's plain counters on its own thread, so it never locks or stalls the data path.
// prometheus-cpp is not packaged for Debian 12, so the text exposition format (0.0.4) is
// written here; `promtool check metrics` validates it in the tests.
//
// Every metric is declared once, in kMetrics, with its type and help.

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <unordered_map>

#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"

namespace pgring {

namespace {

struct MetricDef {
  std::string_view name;
  std::string_view type;
  std::string_view help;
};

constexpr MetricDef kMetrics[] = {
    {"pgring_info", "gauge", "pgring build information"},
    {"pgring_clients", "gauge", "Client connections by pool and state"},
    {"pgring_login_clients", "gauge", "Client connections still logging in"},
    {"pgring_servers", "gauge", "Server connections by pool and state"},
    {"pgring_transactions_total", "counter", "Transactions (explicit and implicit) completed"},
    {"pgring_queries_total", "counter", "Query and Execute messages forwarded"},
    {"pgring_received_bytes_total", "counter", "Bytes received from clients"},
    {"pgring_sent_bytes_total", "counter", "Bytes received from servers for clients"},
    {"pgring_server_connects_total", "counter", "Server connections opened"},
    {"pgring_errors_total", "counter", "ErrorResponses from servers by SQLSTATE class"},
    {"pgring_wait_seconds", "histogram", "Time clients waited for a server connection"},
    {"pgring_query_seconds", "histogram", "Time from a request to its ReadyForQuery"},
    {"pgring_transaction_seconds", "histogram",
     "Time from a transaction's first request to ReadyForQuery idle"},
    {"pgring_disconnects_total", "counter", "Closed connections by close reason"},
    {"pgring_statement_cache_hits_total", "counter",
     "Parse messages answered from the statement cache"},
    {"pgring_statement_cache_parses_total", "counter",
     "Parse messages sent to servers for clients"},
    {"pgring_statement_cache_injected_total", "counter",
     "Parse messages injected before a Bind or Describe"},
    {"pgring_statement_cache_evictions_total", "counter",
     "Prepared statements closed to stay within prepared_statements"},
    {"pgring_statement_cache_retries_total", "counter",
     "Requests retried after a cached plan changed"},
    {"pgring_statement_cache_entries", "gauge", "Distinct statements in the registry"},
    {"pgring_reloads_total", "counter", "Configuration reloads applied"},
    {"pgring_reload_failures_total", "counter", "Configuration reloads refused (bad file)"},
    {"pgring_workers", "gauge", "Reactor threads serving connections"},
    {"pgring_io_uring_enters_total", "counter",
     "io_uring_enter calls (one per loop turn: submit and wait), i.e. wake-ups"},
    {"pgring_io_uring_sqes_total", "counter", "Operations submitted to the ring"},
    {"pgring_io_uring_cqes_total", "counter", "Completions reaped from the ring"},
    {"pgring_io_engine_reactors", "gauge",
     "Reactor threads by the I/O engine they run (io.engine: io_uring, or epoll where io_uring "
     "is not allowed); the io_uring counters count the epoll engine's waits and operations too"},
    {"pgring_socket_sends_total", "counter", "Send operations by peer (client, server)"},
    {"pgring_socket_receives_total", "counter",
     "Receive completions carrying bytes by peer (client, server)"},
};

void header(std::string& out, std::string_view name) {
  for (const MetricDef& m : kMetrics) {
    if (m.name != name) continue;
    out += "# HELP ";
    out += m.name;
    out += ' ';
    out += m.help;
    out += "\n# TYPE ";
    out += m.name;
    out += ' ';
    out += m.type;
    out += '\n';
    return;
  }
}

std::string escape(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out.push_back(c);
  }
  return out;
}

std::string labels(const Pool& p) {
  return "database=\"" + escape(p.database_) + "\",user=\"" + escape(p.user_name_) + "\"";
}

void sample(std::string& out, std::string_view name, const std::string& label_text, double value) {
  out += name;
  if (!label_text.empty()) out += "{" + label_text + "}";
  char buf[64];
  std::snprintf(buf, sizeof buf, " %.17g\n", value);
  out += buf;
}

void histogram(std::string& out, std::string_view name, const std::string& label_text,
               const Histogram& h) {
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < h.buckets.size(); ++i) {
    cumulative += h.buckets[i];
    char le[32];
    if (i < Histogram::kBounds.size())
      std::snprintf(le, sizeof le, "%g", Histogram::kBounds[i]);
    else
      std::snprintf(le, sizeof le, "+Inf");
    sample(out, std::string(name) + "_bucket", label_text + ",le=\"" + le + "\"",
           static_cast<double>(cumulative));
  }
  sample(out, std::string(name) + "_sum", label_text, h.sum);
  sample(out, std::string(name) + "_count", label_text, static_cast<double>(h.count));
}

}  // namespace

namespace {

// Every reactor's exposition made one: samples of the same series are added up (pgring_info,
// the same on each reactor, is kept once); families keep the order they first appear in.
std::string merge_expositions(const std::vector<std::string>& texts) {
  struct Family {
    std::vector<std::string> header;
    std::vector<std::string> series;
    std::unordered_map<std::string, double> values;
  };
  std::vector<std::string> order;
  std::unordered_map<std::string, Family> families;
  for (const std::string& text : texts) {
    std::string_view rest = text;
    std::string current;
    while (!rest.empty()) {
      std::size_t nl = rest.find('\n');
      std::string_view line = rest.substr(0, nl);
      rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
      if (line.empty()) continue;
      if (line.starts_with("# ")) {
        std::string_view name = line.substr(7);  // after "# HELP " / "# TYPE "
        current = std::string(name.substr(0, name.find(' ')));
        auto [it, fresh] = families.try_emplace(current);
        if (fresh) order.push_back(current);
        auto& header = it->second.header;
        if (std::find(header.begin(), header.end(), line) == header.end())
          header.emplace_back(line);
        continue;
      }
      std::size_t space = line.rfind(' ');
      if (space == std::string_view::npos) continue;
      Family& f = families[current];
      std::string series(line.substr(0, space));
      double value = std::strtod(std::string(line.substr(space + 1)).c_str(), nullptr);
      auto [it, fresh] = f.values.try_emplace(series, 0.0);
      if (fresh) f.series.push_back(series);
      it->second = current == "pgring_info" ? value : it->second + value;
    }
  }
  std::string out;
  for (const std::string& name : order) {
    const Family& f = families[name];
    for (const std::string& h : f.header) out += h + "\n";
    for (const std::string& series : f.series) {
      char buf[64];
      std::snprintf(buf, sizeof buf, " %.17g\n", f.values.at(series));
      out += series + buf;
    }
  }
  return out;
}

}  // namespace

std::string Reactor::metrics_text() {
  // The whole process: each reactor renders its own state on its own thread.
  std::string out =
      merge_expositions(gather<std::string>([](Reactor& r) { return r.metrics_text_local(); }));
  header(out, "pgring_workers");
  sample(out, "pgring_workers", "", static_cast<double>(shared_.workers()));
  return out;
}

std::string Reactor::metrics_text_local() {
  std::string out;
  header(out, "pgring_info");
  sample(out, "pgring_info", std::string("version=\"") + PGRING_VERSION + "\"", 1);

  header(out, "pgring_clients");
  for (auto& [key, pool] : pools_) {
    (void)key;
    std::string l = labels(*pool);
    sample(out, "pgring_clients", l + ",state=\"idle\"",
           static_cast<double>(pool->idle_clients_.size()));
    sample(out, "pgring_clients", l + ",state=\"waiting\"",
           static_cast<double>(pool->waiting_clients_.size()));
    sample(out, "pgring_clients", l + ",state=\"active\"",
           static_cast<double>(pool->active_clients_.size()));
  }
  header(out, "pgring_login_clients");
  sample(out, "pgring_login_clients", "", static_cast<double>(login_clients_.size()));

  header(out, "pgring_servers");
  for (auto& [key, pool] : pools_) {
    (void)key;
    std::string l = labels(*pool);
    sample(out, "pgring_servers", l + ",state=\"active\"",
           static_cast<double>(pool->active_servers_.size()));
    sample(out, "pgring_servers", l + ",state=\"idle\"",
           static_cast<double>(pool->idle_servers_.size()));
    sample(out, "pgring_servers", l + ",state=\"login\"",
           static_cast<double>(pool->connecting_servers_.size()));
    sample(out, "pgring_servers", l + ",state=\"resetting\"",
           static_cast<double>(pool->resetting_servers_.size() + pool->canceling_servers_.size()));
  }
  struct Counter {
    std::string_view name;
    std::uint64_t PoolStats::*field;
  };
  for (Counter c : {Counter{"pgring_transactions_total", &PoolStats::transactions},
                    Counter{"pgring_queries_total", &PoolStats::queries},
                    Counter{"pgring_received_bytes_total", &PoolStats::bytes_received},
                    Counter{"pgring_sent_bytes_total", &PoolStats::bytes_sent},
                    Counter{"pgring_server_connects_total", &PoolStats::server_connects}}) {
    header(out, c.name);
    for (auto& [key, pool] : pools_) {
      (void)key;
      sample(out, c.name, labels(*pool), static_cast<double>(pool->stats_.*c.field));
    }
  }
  header(out, "pgring_errors_total");
  for (auto& [key, pool] : pools_) {
    (void)key;
    for (const auto& [klass, n] : pool->stats_.errors_by_class)
      sample(out, "pgring_errors_total", labels(*pool) + ",class=\"" + escape(klass) + "\"",
             static_cast<double>(n));
  }
  for (auto [name, field] :
       {std::pair{std::string_view("pgring_wait_seconds"), &PoolStats::wait},
        std::pair{std::string_view("pgring_query_seconds"), &PoolStats::query},
        std::pair{std::string_view("pgring_transaction_seconds"), &PoolStats::transaction}}) {
    header(out, name);
    for (auto& [key, pool] : pools_) {
      (void)key;
      histogram(out, name, labels(*pool), pool->stats_.*field);
    }
  }
  header(out, "pgring_disconnects_total");
  for (std::size_t i = 0; i < kReasonCount; ++i)
    sample(out, "pgring_disconnects_total",
           "reason=\"" + std::string(name(static_cast<Reason>(i))) + "\"",
           static_cast<double>(disconnects_[i]));
  const StatementCounters& sc = statements_.counters;
  for (auto [metric, value] :
       {std::pair{std::string_view("pgring_statement_cache_hits_total"), sc.hits},
        std::pair{std::string_view("pgring_statement_cache_parses_total"), sc.parses_sent},
        std::pair{std::string_view("pgring_statement_cache_injected_total"), sc.injected},
        std::pair{std::string_view("pgring_statement_cache_evictions_total"), sc.evictions},
        std::pair{std::string_view("pgring_statement_cache_retries_total"), sc.retries},
        std::pair{std::string_view("pgring_reloads_total"), reloads_},
        std::pair{std::string_view("pgring_reload_failures_total"), reload_failures_}}) {
    header(out, metric);
    sample(out, metric, "", static_cast<double>(value));
  }
  header(out, "pgring_statement_cache_entries");
  sample(out, "pgring_statement_cache_entries", "", static_cast<double>(statements_.size()));
  header(out, "pgring_io_engine_reactors");
  sample(out, "pgring_io_engine_reactors", "engine=\"" + std::string(io_engine()) + "\"", 1);
  const RingCounters& rc = ring_counters_;
  for (auto [metric, value] :
       {std::pair{std::string_view("pgring_io_uring_enters_total"), rc.enters},
        std::pair{std::string_view("pgring_io_uring_sqes_total"), rc.sqes},
        std::pair{std::string_view("pgring_io_uring_cqes_total"), rc.cqes}}) {
    header(out, metric);
    sample(out, metric, "", static_cast<double>(value));
  }
  header(out, "pgring_socket_sends_total");
  sample(out, "pgring_socket_sends_total", "peer=\"client\"", static_cast<double>(rc.client_sends));
  sample(out, "pgring_socket_sends_total", "peer=\"server\"", static_cast<double>(rc.server_sends));
  header(out, "pgring_socket_receives_total");
  sample(out, "pgring_socket_receives_total", "peer=\"client\"",
         static_cast<double>(rc.client_receives));
  sample(out, "pgring_socket_receives_total", "peer=\"server\"",
         static_cast<double>(rc.server_receives));
  return out;
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
  int fd = listen_tcp(a, "metrics.listen", false, 128);
  std::string port = std::to_string(a.port);
  metrics_listener_.fd = fd;
  metrics_listener_.accept_op = Operation{Operation::Kind::http_accept, &metrics_listener_};
  metrics_listener_.name = a.host + ":" + port;
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
  if (conn.stream_.fd >= 0) ::close(conn.stream_.fd);
  conn.stream_.fd = -1;
  unlink(&conn);
  free_http_.push_back(&conn);
}

HttpConn::HttpConn(Reactor& reactor, int fd)
    : stream_(reactor.buffers(), Operation::Kind::http_recv, Operation::Kind::http_send, this) {
  stream_.fd = fd;
}

}  // namespace pgring
