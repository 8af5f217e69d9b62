#pragma once
// The io_uring reactor: one per worker thread, owning its ring, listeners, connections, pools
// and buffers. Handlers (Client/Server) decide what to do with bytes; the reactor does the I/O:
// it arms receives, sends each stream's queued batch with one sendmsg per loop turn, runs the
// timer sweep and frees closed connections at the end of a turn.

#include <liburing.h>

#include <array>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"
#include "daemon/cache/statements.hpp"
#include "daemon/cancel/cancel.hpp"
#include "daemon/conn/client.hpp"
#include "daemon/conn/server.hpp"
#include "daemon/core/close_reason.hpp"
#include "daemon/core/epoll.hpp"
#include "daemon/core/list.hpp"
#include "daemon/core/shared.hpp"
#include "daemon/core/stream.hpp"
#include "daemon/net/tls.hpp"
#include "daemon/ops/queries.hpp"
#include "daemon/pool/pool.hpp"
#include "proto/handover.hpp"

namespace prometheus {
struct MetricFamily;
}

namespace pgring {

// strerror(err), for logs and close messages.
[[nodiscard]] std::string errno_text(int err);

// A listening TCP socket on `address` ("" host: every address); `what` names its YAML key in
// errors (thrown: listeners open at start and reload only).
// tcp: keepalive and user timeout on a TCP socket (accepted sockets inherit a listener's).
void apply_tcp_options(int fd, const config::Config::Tcp& tcp);
[[nodiscard]] int listen_tcp(const config::ListenAddress& address, std::string_view what,
                             bool reuse_port, int backlog);

// Rows of text columns (the admin console's results).
using Rows = std::vector<std::vector<std::string>>;

// One HTTP request on the metrics port: read the request head, answer, close.
struct HttpConn {
  HttpConn(Reactor& reactor, int fd);
  ListNode<HttpConn> node_;
  Stream stream_;
  std::string request_;
  Clock::time_point started_;
  int ops_in_flight_ = 0;
  bool responded_ = false;
  bool done_ = false;
  bool freed_ = false;
};

class Reactor {
 public:
  // handover: an upgrade in place (daemon/ops/upgrade.hpp): idle clients go to the new process,
  // the others when they can or at timeouts.shutdown, as in graceful.
  enum class ShutdownMode { none, graceful, handover, immediate };
  // Reactor `index` of shared.workers(); it must be created on the thread that runs it (the
  // ring is SINGLE_ISSUER). Reactor 0 also reads the signals and serves the metrics port.
  Reactor(Shared& shared, int index, std::shared_ptr<const config::Config> config,
          std::shared_ptr<const TlsContexts> tls, std::string config_path);
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  // Opens the listeners (throws with a clear message on failure), or takes over those an
  // upgrade handed this process.
  void listen();
  // A client an upgrade handed over (Upgrade::adopt_loop): it goes on here, idle, as if it had
  // always been here. `fd` is its socket.
  void adopt(proto::handover::Client record, int fd);
  // Runs until shut down. Returns the process exit code.
  int run();
  void run_once();

  [[nodiscard]] const config::Config& config() const { return *config_; }
  [[nodiscard]] const TlsContexts& tls() const { return *tls_; }
  [[nodiscard]] Clock::time_point now() const { return now_; }
  [[nodiscard]] BufferRing& buffers() { return *buffers_; }
  // The I/O engine this reactor runs (io.engine): "io_uring" or "epoll".
  [[nodiscard]] std::string_view io_engine() const { return epoll_ ? "epoll" : "io_uring"; }
  [[nodiscard]] StatementRegistry& statements() { return statements_; }
  [[nodiscard]] StartupTable& startups() { return startups_; }
  [[nodiscard]] Spares<Client::Batch>& spare_batches() { return spare_batches_; }
  [[nodiscard]] int index() const { return index_; }
  [[nodiscard]] Shared& shared() { return shared_; }

  // ---- between reactors ----
  // Runs `task` on this reactor's thread at its next loop turn. Any thread may call it.
  void post(std::function<void(Reactor&)> task);
  // Runs `fn` on every reactor (this one directly, the others through their mailboxes) and
  // returns the results in reactor order. While it waits, this reactor runs what was posted to
  // it, so two reactors gathering at once do not deadlock; a reactor that does not answer
  // within a second (stopped) contributes T{}. For the admin console and /metrics only.
  template <typename T>
  std::vector<T> gather(const std::function<T(Reactor&)>& fn);
  // Every reactor, this one included (directly), runs `task`.
  void broadcast(const std::function<void(Reactor&)>& task);
  // The hosts of databases: entry `database` changed (posted by the HostDirectory's monitor).
  void hosts_changed(const std::string& database);
  // A server slot of `database` was freed on another reactor: waiting clients may use it.
  void retry_database(const std::string& database);
  // `database` on the server at `address` is about to be dropped, renamed or copied: every
  // reactor closes its idle servers of it (Pool::free_database).
  void free_database(const std::string& address, const std::string& database);

  // ---- services for handlers ----
  // The one way a connection changes state: unlink, move to the new state's list, stamp the
  // time (pool/pool.cpp).
  void set_state(Client& client, ClientState state);
  void set_state(Server& server, ServerState state);
  // A waiting client was linked: its input is forwarded by forward_linked() this loop turn.
  void forward_later(Client& client) { linked_.push_back(&client); }
  // Forwards what those clients queued (run_once does, after the completions and the sweep;
  // the handler tests and fuzz_handlers call it after each step).
  void forward_linked();
  // The one way out of a connection. `message` is appended to the client-facing error text.
  // A client closed for `reason` gets a FATAL error with the reason's SQLSTATE and "pgring: "
  // before `message`; with `server_sqlstate`, the error is PostgreSQL's own, passed through.
  void close(Client& client, Reason reason, std::string_view message = {},
             std::string_view server_sqlstate = {});
  void close(Server& server, Reason reason, std::string_view message = {});
  // Queue the stream for sending in this loop turn.
  void want_send(Stream& stream);
  // Flow control: pause `reader` when `writer` holds too much unsent output.
  void apply_backpressure(Stream& reader, const Stream& writer);
  // The pool a client of `user_name` (`user`: its users: entry, if any) joins in `db`.
  // `replication`: the pool of that database and user's replication connections (walsender
  // sessions): session mode, every server opened for one client and closed when it leaves,
  // no query or transaction timeouts; pool_size limits them, max_db_connections counts them.
  [[nodiscard]] Pool& pool_for(const config::Database& db, const config::User* user,
                               std::string_view user_name, bool replication = false);
  // The pools min_pool_size keeps open before any client came (at start and after a reload).
  void open_warm_pools();
  // A new server connection for `pool`, logging in with `startup`'s parameters (session mode)
  // or pgring's own startup packet (null).
  // Opens a server connection for `pool` (whose budgets the caller acquired); false when the
  // host it would go to is at max_concurrent_server_logins: nothing was done, the caller gives
  // the budgets back and the pool tries again later.
  // `listener`: the pool's listening connection (Pool::Listening).
  bool start_connect(Pool& pool, std::shared_ptr<const Startup> startup = nullptr,
                     bool listener = false);
  // max_db_connections: may `pool` open one more server connection to its database? When the
  // database is at its limit, an idle server of another pool of it is closed to make room.
  [[nodiscard]] bool database_has_room(Pool& pool);
  // Count `client` in its database's and user's client budgets (max_db_client_connections,
  // max_user_client_connections) and return "", or why it may not join `pool`.
  [[nodiscard]] std::string admit_client(Client& client, Pool& pool);
  [[nodiscard]] const proto::scram::Secret& scram_secret_for(const config::User& user);
  // auth.query: a user's looked-up secret while it is fresh (auth.query.cache), else null.
  // Secrets belong to the database they were looked up in (auth.query.database, or each
  // database its own: two databases may be two clusters with different passwords).
  [[nodiscard]] const config::User* cached_lookup(std::string_view database,
                                                  std::string_view name) const;
  // Queue `client` for a lookup of its secret on a server of the auth.query pool.
  void look_up(Client& client);
  // Keep a looked-up secret. The entry lives as long as the reactor (pools and clients point
  // at it); a later lookup updates it in place, and the pools of that user log in with it.
  const config::User& store_lookup(std::string_view database, std::string_view name,
                                   std::string secret, config::SecretKind kind);
  // A SCRAM secret nobody knows, salted per user name (stable for the process, as a real
  // secret's salt is): the exchange a user without a usable secret goes through.
  [[nodiscard]] proto::scram::Secret mock_secret(std::string_view name) const;
  // users: or, for users whose secret auth.query gives, the entry looked up for `database`.
  [[nodiscard]] const config::User* find_user(std::string_view database,
                                              std::string_view name) const;
  // auth.query gives `name`'s secret: the user is not in users:, or its entry there has no
  // password (only pool settings, as PgBouncer's [users] section; they apply to the lookup).
  [[nodiscard]] bool secret_looked_up(std::string_view name) const;
  // A TLS handshake began (the sweep trims the heap after a burst of them).
  void note_tls_handshake() { ++tls_handshakes_since_trim_; }
  // Reading a client resumes (after an auth.query lookup held it).
  void resume_reading(Client& client);
  void register_cancel_key(Client& client);
  // A client taken over by an upgrade keeps the key it was given (logged when another client
  // here has it already: that one's cancels win).
  void adopt_cancel_key(Client& client);
  void forget_cancel_key(Client& client);  // it closes (or takes its server's pid)
  // Session mode: the client's BackendKeyData carries its server's pid (cancel.cpp).
  void use_server_pid(Client& client, std::int32_t pid);
  // A CancelRequest with pgring's key (pid, secret) arrived on another connection.
  void cancel(std::int32_t pid, std::string_view secret);
  // Cancel the request running on `server` for its linked client (timeouts use this too).
  void start_cancel(Server& server);
  void login_done(Client& client);  // leaves the login list
  // Query families (stats.fingerprints): this reactor's statistics.
  QueryStats& queries() { return queries_; }
  // max_concurrent_logins: a client's first bytes start its login (TLS handshake, startup,
  // authentication) if a turn is free; else it waits, its bytes kept and its reading paused,
  // and false. A connection that sends nothing holds no turn.
  bool take_login_turn(Client& client);
  // Its login ended (authenticated, or the client closed): the turn is free again.
  void end_login(Client& client);
  // Gives free turns to the longest-waiting clients (each loop turn).
  void admit_logins();
  [[nodiscard]] int login_share() const;
  // Admin console (admin.cpp): one simple Query from an admin or stats user.
  void admin_query(Client& client, std::string_view sql);
  // Reload the configuration file: "" when applied (on every reactor), else why not (the
  // running config stays).
  std::string reload();
  // Take a configuration another reactor loaded.
  void apply_config(std::shared_ptr<const config::Config> fresh,
                    std::shared_ptr<const TlsContexts> tls);
  // Metrics (metrics.cpp).
  void listen_metrics();
  // The whole process (gathered from every reactor) in the text exposition format, and this
  // reactor's share as prometheus-cpp metric families.
  [[nodiscard]] std::string metrics_text();
  [[nodiscard]] std::vector<prometheus::MetricFamily> metric_families() const;
  [[nodiscard]] bool ready();
  // 0: no pools here, 1: a pool here has a working server, 2: every pool here is failing.
  [[nodiscard]] int pools_up() const;
  // SHOW DATABASES: the configured databases, then those the fallback entry ("*") serves now
  // (a pool on any reactor), by name.
  std::vector<config::Database> databases_to_show();
  void kill_database(std::string_view database);
  // Console commands that answer once something holds over every reactor (checked now and by
  // each sweep): PAUSE once no server of the paused database(s) is in use, WAIT_CLOSE once no
  // server is retired but still open (RECONNECT, a reload that moved the pool).
  struct AdminWait {
    std::uint64_t client_id = 0;
    enum Until { paused, closed } until = paused;
    std::string database;  // "" = all
  };
  void wait_admin(Client& client, AdminWait::Until until, const std::string& database);
  void check_admin_waits();
  [[nodiscard]] int servers_in_the_way(AdminWait::Until until, const std::string& database) const;
  // KILL_CLIENT: closes client `id` if it is on this reactor; true when it was.
  bool kill_client(std::uint64_t id);
  // RECONNECT (database "" = all): every server connection is replaced, idle ones now, busy
  // ones when their client releases them.
  void reconnect(const std::string& database);
  // DISABLE / ENABLE db: new clients of it are refused (55000); those connected stay.
  void disable(const std::string& database, bool disable);
  [[nodiscard]] bool disabled(std::string_view database) const {
    return disabled_databases_.count(database) != 0;
  }
  // PAUSE / RESUME (database "" = all), on this reactor's pools.
  void pause(const std::string& database, bool pause);
  // This reactor's rows of SHOW pools|clients|servers|stats|statements (the console merges them).
  [[nodiscard]] Rows admin_rows(std::string_view what);
  // The console on database "pgbouncer": SHOW `what` in PgBouncer's columns (false: not one of
  // those), and this reactor's rows for it (ops/admin_pgbouncer.cpp).
  bool pgbouncer_show(Client& client, std::string_view what);
  [[nodiscard]] Rows pgbouncer_rows(std::string_view what);
  void arm_recv_for(Client& client) { arm_recv(client.stream_, client.ops_in_flight_); }
  void arm_recv_for(Server& server) { arm_recv(server.stream_, server.ops_in_flight_); }
  [[nodiscard]] std::uint64_t next_id() {
    return shared_.last_id.fetch_add(1, std::memory_order_relaxed) + 1;
  }
  [[nodiscard]] bool shutting_down() const { return shutdown_ != ShutdownMode::none; }
  [[nodiscard]] bool handing_over() const { return shutdown_ == ShutdownMode::handover; }
  // A client went idle while this process hands its clients over (Pool::release_link,
  // add_client, adopt). Out of line: those run every transaction, a handover is rare.
  [[gnu::noinline, gnu::cold]] void note_handover_candidate(Client& client) {
    handover_candidates_.push_back(&client);
  }

  List<Client> login_clients_;
  int logins_running_ = 0;           // max_concurrent_logins: this reactor's logins under way
  std::deque<Client*> login_queue_;  // accepted clients waiting for a turn, oldest first
  List<Client> closing_clients_;
  List<Server> closing_servers_;
  List<Canceller> cancellers_;
  List<Client> admin_clients_;
  std::uint64_t reloads_ = 0;
  std::uint64_t reload_failures_ = 0;
  // TLS handshakes completed, by peer ("client", "server") and protocol version
  // (pgring_tls_handshakes_total); a failed one is a tls_error close.
  std::map<std::pair<std::string_view, std::string>, std::uint64_t> tls_handshakes_;

 private:
  struct Listener {
    int fd = -1;
    std::string name;
    Operation accept_op{Operation::Kind::accept, nullptr};
    bool armed = false;
    // Out of descriptors (EMFILE, ENFILE) or memory: accepting again at once would fail again
    // every loop turn; the sweep re-arms it once a sweep interval has passed.
    bool resting = false;
  };

  // The loop turn's steps (run_once reads as their table of contents).
  void submit();
  void wait_for_completions();
  void run_completions();
  void free_closed();
  io_uring_sqe* get_sqe();
  // The I/O operations, on whichever engine runs (core/io.cpp): each ends with one completion
  // of `op` (multishot ones deliver more before it), handled in run_completions().
  void start_engine();  // io.engine: the io_uring ring, or the epoll engine
  void io_recv(Operation& op, int fd, bool multishot);
  void io_send(Operation& op, int fd, msghdr& msg);
  void io_connect(Operation& op, int fd, const sockaddr_storage& address, socklen_t length);
  void io_accept(Operation& op, int fd);
  void io_read(Operation& op, int fd, void* buffer, unsigned length);
  void io_cancel(Operation& target, int fd);  // its completion says -ECANCELED if it was running
  void io_cancel_fd(int fd);                  // every operation on fd
  void dispatch(Operation* op, int res, unsigned flags);
  void arm_accept(Listener& listener);
  void arm_recv(Stream& stream, int& ops);
  void arm_signal();
  void submit_sends();
  void rearm_starved();
  // Closes the socket of a connection being freed (no operation in flight) and forgets it.
  void release_stream(Stream& stream);
  void on_accept(Listener& listener, int result, unsigned flags);
  // A receive completed: its buffer joins the stream's input (dropped when the connection is
  // closing), then what the result means; `starved` re-arms later (rearm_starved).
  enum class Received { bytes, starved, canceled, eof, error, tls_failed, closing };
  Received receive(Stream& stream, int& ops, int result, unsigned flags, bool closing);
  void on_client_recv(Client& client, int result, unsigned flags);
  // A client being handed over: the receive cancelled for it ends (what arrived meanwhile goes
  // with it), or the client left after all.
  void on_handover_recv(Client& client, int result, unsigned flags);
  // Clients that went idle this turn during a handover: each goes now if it still can.
  void hand_over_idle();
  // A handed-over client's last operation completed: its record and socket go to the upgrade.
  void send_handed_over(Client& client);
  // A send completed: its bytes leave the stream's output; `more` when some are still queued.
  enum class Sent { failed, more, done };
  Sent sent(Stream& stream, int& ops, int result);
  void on_client_send(Client& client, int result);
  void on_server_recv(Server& server, int result, unsigned flags);
  void on_server_send(Server& server, int result);
  void on_server_connect(Server& server, int result);
  void on_signal(int result);
  void on_cancel_connect(Canceller& canceller, int result);
  void on_cancel_send(Canceller& canceller, int result);
  void on_cancel_recv(Canceller& canceller, int result, unsigned flags);
  void finish_cancel(Canceller& canceller);
  void arm_http_accept();
  void on_http_accept(int result, unsigned flags);
  void on_http_recv(HttpConn& conn, int result, unsigned flags);
  void on_http_send(HttpConn& conn, int result);
  void finish_http(HttpConn& conn);
  void resume_peer_reading(Stream& writer);
  void finish_close(Client& client);
  void finish_close(Server& server);
  void maybe_free(Client& client);
  void maybe_free(Server& server);
  // A slot of these budgets was released: the other reactors starving for one try again.
  void slot_freed(const Budget& pool_budget, const Budget& db_budget, const std::string& database);
  void sweep();
  void sweep_active(Pool& pool);
  // Reactor 0: WATCHDOG=1, if every reactor's loop turned recently.
  void feed_watchdog();
  void drop_unused_automatic_pools();
  // Stops accepting. `keep_sockets`: an upgrade handed the sockets on, so they are only closed
  // here (no shutdown(2), which would reset the new process's backlog).
  void close_listeners(bool keep_sockets = false);
  void arm_mailbox();
  void run_mailbox();

 public:
  void begin_shutdown(ShutdownMode mode);
  // An upgrade's new process died after it took the listening sockets: serve again, on fresh
  // listeners, as if no upgrade had begun.
  void resume_service();

 private:
  Shared& shared_;
  const int index_;
  std::shared_ptr<const config::Config> config_;
  std::shared_ptr<const TlsContexts> tls_;  // sessions hold their own SSL_CTX reference
  std::string config_path_;
  std::mutex mailbox_mutex_;
  std::vector<std::function<void(Reactor&)>> mailbox_;
  int mailbox_fd_ = -1;  // eventfd: the doorbell other threads ring after posting
  std::uint64_t mailbox_count_ = 0;
  Operation mailbox_op_{Operation::Kind::mailbox, nullptr};
  // Configurations replaced by reloads stay alive: clients keep pointers to their users.
  std::vector<std::shared_ptr<const config::Config>> retired_configs_;
  bool paused_all_ = false;
  std::set<std::string, std::less<>> paused_databases_;
  std::set<std::string, std::less<>> disabled_databases_;
  std::vector<AdminWait> admin_waits_;
  QueryStats queries_;
  io_uring ring_{};
  std::unique_ptr<EpollEngine> epoll_;  // the epoll engine, when it runs instead of ring_
  std::unique_ptr<BufferRing> buffers_;
  StatementRegistry statements_;
  StartupTable startups_;
  Spares<Client::Batch> spare_batches_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::map<std::string, std::unique_ptr<Pool>, std::less<>> pools_;
  // Parsed (or, from plain passwords, derived) SCRAM secrets by user entry: configured users
  // (cleared at reload) and looked-up ones (replaced when their secret changes).
  std::unordered_map<const config::User*, proto::scram::Secret> scram_secrets_;
  struct LookedUp {
    config::User user;
    Clock::time_point fetched;
  };
  std::unordered_map<std::string, std::unique_ptr<LookedUp>> looked_up_;
  // The key of a looked-up secret: the database it belongs to ("" with auth.query.database,
  // which serves every database) and the user.
  [[nodiscard]] std::string lookup_key(std::string_view database, std::string_view name) const;
  // TLS handshakes since the heap was last trimmed (sweep).
  int tls_handshakes_since_trim_ = 0;
  static constexpr int kTrimAfterHandshakes = 256;
  std::unordered_map<std::uint64_t, Client*> cancel_keys_;
  // Server connections per database (all pools of it, until each is freed): max_db_connections.
  // (Budgets in Shared, looked up once per database.)
  std::unordered_map<std::string, Budget*> database_budgets_;

 public:
  [[nodiscard]] Budget& database_budget(const std::string& database);

 private:
  std::vector<Client*> handover_candidates_;  // went idle this turn, while handing over
  std::vector<Client*> linked_;  // linked this turn, input not forwarded yet (forward_later)
  std::vector<Stream*> flush_list_;
  std::vector<std::pair<Stream*, int*>> starved_;
  std::vector<Client*> free_clients_;
  std::vector<Server*> free_servers_;
  std::vector<Canceller*> free_cancellers_;
  Listener metrics_listener_;
  List<HttpConn> http_conns_;
  std::vector<HttpConn*> free_http_;

 public:
  // Client and server disconnects by Reason (metrics: pgring_disconnects_total{reason}).
  std::array<std::uint64_t, kReasonCount> disconnects_{};
  // What the ring costs (metrics: pgring_io_uring_*, pgring_socket_*): a sidecar's CPU goes
  // to wake-ups and system calls, so they are counted where they happen.
  struct RingCounters {
    std::uint64_t enters = 0;           // io_uring_enter calls: one per loop turn, plus a full SQ
    std::uint64_t sqes = 0;             // operations handed to the kernel
    std::uint64_t cqes = 0;             // completions reaped
    std::uint64_t client_sends = 0;     // send operations to clients
    std::uint64_t server_sends = 0;     // ... and to servers
    std::uint64_t client_receives = 0;  // receive completions with bytes from clients
    std::uint64_t server_receives = 0;  // ... and from servers
  };
  RingCounters ring_counters_;

 private:
  Clock::time_point now_;
  Clock::time_point next_sweep_;
  std::chrono::microseconds watchdog_interval_{0};
  Clock::time_point next_watchdog_{};
  bool watchdog_withheld_ = false;  // a reactor stalled: logged once, until all turn again
  int client_count_ = 0;            // this reactor's; Shared::clients counts the process's

  int signal_fd_ = -1;
  Operation signal_op_{Operation::Kind::signal, nullptr};
  char signal_buffer_[128]{};
  Operation ignore_op_{Operation::Kind::ignore, nullptr};

  ShutdownMode shutdown_ = ShutdownMode::none;
  Clock::time_point shutdown_deadline_;
  bool stopped_ = false;
};

template <typename T>
std::vector<T> Reactor::gather(const std::function<T(Reactor&)>& fn) {
  struct Pending {
    std::vector<T> results;
    std::atomic<int> remaining{0};
  };
  auto pending = std::make_shared<Pending>();
  int n = shared_.workers();
  pending->results.resize(static_cast<std::size_t>(n));
  pending->remaining = n - 1;
  for (int i = 0; i < n; ++i) {
    Reactor* r = shared_.reactors[static_cast<std::size_t>(i)].load();
    if (i == index_ || r == nullptr) {
      if (i != index_) pending->remaining.fetch_sub(1);
      continue;
    }
    r->post([pending, fn, i](Reactor& self) {
      pending->results[static_cast<std::size_t>(i)] = fn(self);
      pending->remaining.fetch_sub(1, std::memory_order_release);
    });
  }
  pending->results[static_cast<std::size_t>(index_)] = fn(*this);
  auto deadline = Clock::now() + std::chrono::seconds(1);
  while (pending->remaining.load(std::memory_order_acquire) > 0 && Clock::now() < deadline) {
    run_mailbox();
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  if (pending->remaining.load(std::memory_order_acquire) > 0)
    return {pending->results[static_cast<std::size_t>(index_)]};
  return pending->results;
}

}  // namespace pgring
