// loadgen: the small load generator of pgring's benchmark suite (loadtest/run.sh).
//
// Two modes, both built on libpq's asynchronous API (PQconnectStart/PQconnectPoll, PQsendQuery)
// driven by one epoll loop, so tens of thousands of connections cost one thread:
//
//   loadgen idle  -n 10000 [-k 500] [-q "SELECT 1"] CONNINFO
//       Logs N clients in (at most K logins in flight), runs QUERY once on each if given, then
//       keeps them idle. Prints "ready ..." when all are in, then watches them (a connection the
//       proxy closes is counted as dropped) until SIGTERM/SIGINT or --hold seconds, and prints
//       "done alive=... dropped=...".
//
//   loadgen storm -n 5000 [-q "SELECT 1"] CONNINFO
//       Starts N connections at once (-k defaults to N); each runs QUERY once. Prints the time
//       from the first connect until every client has its result, and per-client percentiles.
//       All connections stay open until the last one is done, then are closed.
//
// Output is one line of key=value pairs per event, for the shell to parse. Exit status: 0 when
// every client succeeded, 1 when some failed, 2 on usage errors.
//
// Build: g++ -O2 -std=c++20 -o loadgen loadgen.cpp -I/usr/include/postgresql -lpq

#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

volatile sig_atomic_t g_stop = 0;
void on_signal(int) {
  g_stop = 1;
}

enum class State { Pending, Connecting, Querying, Idle, Done, Failed };

struct Conn {
  PGconn* pg = nullptr;
  int fd = -1;  // socket registered with epoll, -1 if none
  State state = State::Pending;
  Clock::time_point started;
  double done_ms = 0;  // connect + query, from this client's start
};

struct Options {
  std::string mode;
  std::string conninfo;
  int n = 0;
  int concurrency = 0;  // 0: idle 500, storm n
  std::string query;
  bool query_set = false;
  double hold = 0;       // idle: seconds to hold before exiting on its own (0: until a signal)
  double timeout = 300;  // give up on clients not done after this many seconds
};

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: loadgen idle|storm -n N [-k CONCURRENCY] [-q QUERY] [--hold SECONDS]\n"
               "               [--timeout SECONDS] CONNINFO\n"
               "  idle   log N clients in (K logins in flight, default 500), run QUERY once each\n"
               "         (default: none), keep them idle until SIGTERM/SIGINT or --hold\n"
               "  storm  connect N clients at once (K default N), each runs QUERY once\n"
               "         (default SELECT 1); report the time until all are done\n");
  std::exit(2);
}

class Loadgen {
 public:
  explicit Loadgen(Options o) : opt_(std::move(o)), conns_(opt_.n) {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) {
      std::perror("epoll_create1");
      std::exit(1);
    }
  }

  // Drives every client to Idle/Done/Failed. Returns false on timeout or signal.
  bool run_logins() {
    t0_ = Clock::now();
    const auto deadline = t0_ + std::chrono::duration<double>(opt_.timeout);
    std::vector<epoll_event> events(4096);
    fill();
    while (finished_ < opt_.n) {
      if (g_stop || Clock::now() > deadline) return false;
      int n = epoll_wait(ep_, events.data(), static_cast<int>(events.size()), 100);
      if (n < 0) {
        if (errno == EINTR) continue;
        std::perror("epoll_wait");
        std::exit(1);
      }
      for (int i = 0; i < n; ++i) step(events[i].data.u32);
      fill();
    }
    return true;
  }

  // Idle mode, after the logins: watch the connections until a signal (or --hold).
  void watch() {
    const auto start = Clock::now();
    std::vector<epoll_event> events(1024);
    for (std::size_t i = 0; i < conns_.size(); ++i) {
      Conn& c = conns_[i];
      if (c.state != State::Idle) continue;
      arm(static_cast<unsigned>(i), EPOLLIN | EPOLLRDHUP);
    }
    while (!g_stop) {
      if (opt_.hold > 0 && std::chrono::duration<double>(Clock::now() - start).count() >= opt_.hold)
        break;
      int n = epoll_wait(ep_, events.data(), static_cast<int>(events.size()), 200);
      if (n < 0) {
        if (errno == EINTR) continue;
        std::perror("epoll_wait");
        std::exit(1);
      }
      for (int i = 0; i < n; ++i) {
        Conn& c = conns_[events[i].data.u32];
        if (c.state != State::Idle) continue;
        // An idle client should receive nothing: read whatever came (a notice, an error before
        // a close) and count the client as dropped if the connection is gone.
        bool ok = PQconsumeInput(c.pg) == 1 && PQstatus(c.pg) == CONNECTION_OK;
        while (ok && !PQisBusy(c.pg)) {
          PGresult* r = PQgetResult(c.pg);
          if (!r) break;
          if (PQresultStatus(r) == PGRES_FATAL_ERROR) note_error(PQresultErrorMessage(r));
          PQclear(r);
        }
        if (!ok || (events[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
          note_error(PQerrorMessage(c.pg));
          disarm(c);
          c.state = State::Failed;
          ++dropped_;
        }
      }
    }
  }

  void close_all() {
    for (Conn& c : conns_) {
      if (c.pg) PQfinish(c.pg);
      c.pg = nullptr;
    }
  }

  int ok() const { return ok_; }
  int failed() const { return failed_; }
  int dropped() const { return dropped_; }
  int alive() const {
    int a = 0;
    for (const Conn& c : conns_) a += c.state == State::Idle;
    return a;
  }
  // Until the last client was done; when some never were, until now.
  double elapsed_s() const {
    auto end = finished_ == opt_.n ? last_done_ : Clock::now();
    return std::chrono::duration<double>(end - t0_).count();
  }
  // Clients still logging in / waiting for their query's result (non-zero after a timeout).
  int count(State st) const {
    int k = 0;
    for (const Conn& c : conns_) k += c.state == st;
    return k;
  }
  const std::string& first_error() const { return first_error_; }
  std::vector<double> done_ms() const {
    std::vector<double> v;
    for (const Conn& c : conns_)
      if (c.state == State::Idle || c.state == State::Done) v.push_back(c.done_ms);
    std::sort(v.begin(), v.end());
    return v;
  }

 private:
  void note_error(const char* msg) {
    if (!first_error_.empty() || !msg || !*msg) return;
    first_error_ = msg;
    for (char& ch : first_error_)
      if (ch == '\n' || ch == '\t') ch = ' ';
    while (!first_error_.empty() && first_error_.back() == ' ') first_error_.pop_back();
  }

  // Starts pending clients while fewer than `concurrency` are in flight.
  void fill() {
    while (next_ < opt_.n && in_flight_ < opt_.concurrency) {
      unsigned i = static_cast<unsigned>(next_++);
      Conn& c = conns_[i];
      c.started = Clock::now();
      c.pg = PQconnectStart(opt_.conninfo.c_str());
      ++in_flight_;
      if (!c.pg || PQstatus(c.pg) == CONNECTION_BAD) {
        fail(i);
        continue;
      }
      c.state = State::Connecting;
      // "Consider PQconnectPoll as initially returning PGRES_POLLING_WRITING."
      wait_for(i, PGRES_POLLING_WRITING);
    }
  }

  void arm(unsigned i, uint32_t ev) {
    Conn& c = conns_[i];
    int fd = PQsocket(c.pg);
    epoll_event e{};
    e.events = ev;
    e.data.u32 = i;
    if (c.fd != fd) {
      if (c.fd >= 0) epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);  // may be closed already
      c.fd = fd;
      if (fd < 0 || epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &e) != 0) {
        c.fd = -1;
        fail(i);
      }
      return;
    }
    if (epoll_ctl(ep_, EPOLL_CTL_MOD, fd, &e) != 0) fail(i);
  }

  void disarm(Conn& c) {
    if (c.fd >= 0) epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
    c.fd = -1;
  }

  void wait_for(unsigned i, PostgresPollingStatusType st) {
    arm(i, st == PGRES_POLLING_READING ? EPOLLIN : EPOLLOUT);
  }

  void fail(unsigned i) {
    Conn& c = conns_[i];
    if (c.state == State::Failed) return;
    if (c.pg) note_error(PQerrorMessage(c.pg));
    disarm(c);
    if (c.pg) PQfinish(c.pg);
    c.pg = nullptr;
    c.state = State::Failed;
    ++failed_;
    ++finished_;
    --in_flight_;
  }

  void succeed(unsigned i) {
    Conn& c = conns_[i];
    auto now = Clock::now();
    c.done_ms = std::chrono::duration<double, std::milli>(now - c.started).count();
    last_done_ = now;
    c.state = opt_.mode == "idle" ? State::Idle : State::Done;
    // Stop watching until the idle phase re-arms it (keeps the epoll loop quiet: even with no
    // events requested, epoll would keep reporting a hang-up).
    disarm(c);
    ++ok_;
    ++finished_;
    --in_flight_;
  }

  void step(unsigned i) {
    Conn& c = conns_[i];
    if (c.state == State::Connecting) {
      PostgresPollingStatusType st = PQconnectPoll(c.pg);
      if (st == PGRES_POLLING_FAILED) return fail(i);
      if (st != PGRES_POLLING_OK) return wait_for(i, st);
      if (opt_.query.empty()) return succeed(i);
      if (PQsetnonblocking(c.pg, 1) != 0 || PQsendQuery(c.pg, opt_.query.c_str()) != 1)
        return fail(i);
      c.state = State::Querying;
      int f = PQflush(c.pg);
      if (f < 0) return fail(i);
      return arm(i, f == 1 ? (EPOLLIN | EPOLLOUT) : EPOLLIN);
    }
    if (c.state == State::Querying) {
      int f = PQflush(c.pg);
      if (f < 0) return fail(i);
      if (PQconsumeInput(c.pg) != 1) return fail(i);
      bool bad = false;
      while (!PQisBusy(c.pg)) {
        PGresult* r = PQgetResult(c.pg);
        if (!r) {
          if (bad) return fail(i);
          return succeed(i);
        }
        ExecStatusType s = PQresultStatus(r);
        if (s != PGRES_TUPLES_OK && s != PGRES_COMMAND_OK) {
          note_error(PQresultErrorMessage(r));
          bad = true;
        }
        PQclear(r);
      }
      return arm(i, f == 1 ? (EPOLLIN | EPOLLOUT) : EPOLLIN);
    }
  }

  Options opt_;
  std::vector<Conn> conns_;
  int ep_ = -1;
  int next_ = 0, in_flight_ = 0, finished_ = 0, ok_ = 0, failed_ = 0, dropped_ = 0;
  Clock::time_point t0_, last_done_;
  std::string first_error_;
};

double pct(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  std::size_t k =
      static_cast<std::size_t>(p / 100.0 * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(k, sorted.size() - 1)];
}

long rss_kib() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  long kib = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, "VmRSS:", 6) == 0) kib = std::strtol(line + 6, nullptr, 10);
  std::fclose(f);
  return kib;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (argc < 2) usage();
  o.mode = argv[1];
  if (o.mode != "idle" && o.mode != "storm") usage();
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage();
      return argv[++i];
    };
    if (a == "-n")
      o.n = std::atoi(val().c_str());
    else if (a == "-k")
      o.concurrency = std::atoi(val().c_str());
    else if (a == "-q")
      o.query = val(), o.query_set = true;
    else if (a == "--hold")
      o.hold = std::atof(val().c_str());
    else if (a == "--timeout")
      o.timeout = std::atof(val().c_str());
    else if (a == "-h" || a == "--help")
      usage();
    else if (!a.empty() && a[0] == '-')
      usage();
    else
      o.conninfo = a;
  }
  if (o.n <= 0 || o.conninfo.empty()) usage();
  if (!o.query_set && o.mode == "storm") o.query = "SELECT 1";
  if (o.concurrency <= 0) o.concurrency = o.mode == "idle" ? std::min(o.n, 500) : o.n;

  // One descriptor per client, plus a few.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < static_cast<rlim_t>(o.n) + 16)
    std::fprintf(stderr, "loadgen: warning: open files limit %llu is below %d clients\n",
                 static_cast<unsigned long long>(rl.rlim_cur), o.n);

  struct sigaction sa {};
  sa.sa_handler = on_signal;  // no SA_RESTART: epoll_wait returns EINTR
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  Loadgen lg(o);
  bool complete = lg.run_logins();
  auto t = lg.done_ms();
  std::printf(
      "%s n=%d ok=%d failed=%d complete=%d seconds=%.3f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f "
      "stuck_logging_in=%d stuck_in_query=%d not_started=%d loadgen_rss_kib=%ld error=\"%s\"\n",
      o.mode == "idle" ? "ready" : "storm", o.n, lg.ok(), lg.failed(), complete ? 1 : 0,
      lg.elapsed_s(), pct(t, 50), pct(t, 99), t.empty() ? 0.0 : t.back(),
      lg.count(State::Connecting), lg.count(State::Querying), lg.count(State::Pending), rss_kib(),
      lg.first_error().c_str());
  std::fflush(stdout);
  if (o.mode == "idle" && complete) {
    lg.watch();
    std::printf("done alive=%d dropped=%d error=\"%s\"\n", lg.alive(), lg.dropped(),
                lg.first_error().c_str());
    std::fflush(stdout);
  }
  lg.close_all();
  return (complete && lg.failed() == 0 && lg.dropped() == 0) ? 0 : 1;
}
