#pragma once
// A pool: the server connections for one (database, user), the clients using them, and the
// clients waiting for one (FIFO). A connection's state is the list it is on here; every state
// change goes through Reactor::set_state() (pool/pool.cpp), which moves it to the list of its
// new state and stamps the time: counts, SHOW output and timeouts are walks over these lists.

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <chrono>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "config/config.hpp"
#include "daemon/conn/client.hpp"
#include "daemon/conn/server.hpp"
#include "daemon/core/list.hpp"
#include "daemon/pool/hosts.hpp"
#include "daemon/pool/stats.hpp"
#include "proto/sql.hpp"

namespace pgring {

class Reactor;
struct Budget;

class Pool {
 public:
  Pool(Reactor& reactor, const config::Database& db, const config::User* user,
       std::string user_name, config::PoolSettings settings);

  // Clients
  // A logged-in client joins the pool: session mode (or no welcome known yet) waits for a
  // server right away; transaction mode idles until it sends something.
  void add_client(Client& client);
  // An idle client sent something: queue it for a server.
  void request_server(Client& client);
  // Transaction over: the server goes back to the pool, the client idles.
  void release_link(Server& server);
  // A server became clean: idle (and offered to waiting clients), or parked while a cancel
  // aimed at its last request is still in flight.
  void server_ready(Server& server);
  // Servers
  // The database this pool's servers log in to.
  [[nodiscard]] const std::string& server_database() const {
    return db_.dbname.empty() ? db_.name : db_.dbname;
  }
  // A client is about to drop, rename or copy this pool's database, which PostgreSQL allows only
  // with no other session in it: close the idle servers, and open none for min_pool_size for a
  // while (PostgreSQL waits up to 5 s for the sessions to leave).
  void free_database();
  // Match waiting clients with idle servers; open connections while under pool_size.
  void maintain();
  // Session mode: PostgreSQL refused the startup parameters of `startup` (the login of a server
  // opened with them failed): the clients waiting with them get its error (`error`, an
  // ErrorResponse body) and go.
  void refuse_startup(const Startup& startup, std::string_view error, std::string_view message);
  // Open connections up to min_pool_size (from the timer sweep).
  void keep_warm();
  // A connection attempt or login failed (`sqlstate`: PostgreSQL's, when it answered with an
  // error): the pool is failing until a server logs in again (see failing_).
  void on_server_failed(Reason reason, std::string_view sqlstate, std::string_view message);
  // A client gives up on a failing pool: it gets the server's own error (or pgring's 08006 when
  // the server never answered).
  void fail_client(Client& client);
  // Failing with no server logged in (at most an attempt under way).
  [[nodiscard]] bool server_down() const {
    return failing_ && server_count() == static_cast<int>(connecting_servers_.size());
  }
  // A server could not connect to or log in at its host for a reason another host may not
  // share: that host is out for a while; true when another one can be tried at once (the pool
  // is then not failing: maintain() opens the next connection elsewhere).
  bool host_failed(Server& server, Reason reason, std::string_view sqlstate);
  // The hosts changed (a role, a host down or back, an address gone): servers that no longer
  // fit retire, idle ones now; a failing pool tries again at once.
  void hosts_changed();
  // A server logged in (or a reload changed the settings): not failing any more.
  void clear_failure() {
    failing_ = false;
    failed_attempts_ = 0;
  }
  [[nodiscard]] int server_count() const;
  // Clients logged in to this pool (idle, waiting or linked).
  [[nodiscard]] int client_count() const {
    return static_cast<int>(idle_clients_.size() + waiting_clients_.size() +
                            active_clients_.size());
  }
  // A reload changed this pool's database, user or settings: apply them. A changed server
  // address retires the connections to the old one (idle ones now, busy ones when released).
  void reconfigure(const config::Database& db, const config::User* user,
                   config::PoolSettings settings);

  // Pool limits are for the process (docs/operations.md, "Workers"): server connections are counted
  // in budgets shared by the reactors (Shared), this pool's and its database's.
  Budget* budget_ = nullptr;
  Budget* db_budget_ = nullptr;
  Budget* db_clients_ = nullptr;    // clients of this database, all reactors
  Budget* user_clients_ = nullptr;  // clients of this user, all reactors
  // Clients wait here because the pool's (or the database's) budget is used up: this reactor's
  // bit is set in that budget's `starving` mask until they are served or gone.
  void set_starving(bool pool_budget, bool database_budget);
  bool starving_pool_ = false;
  bool starving_db_ = false;
  // Slots move to the reactors whose clients wait (docs/operations.md, "Workers"). A reactor
  // starving for a slot of this pool gets one from this reactor
  // - released: as a server is released while clients wait here too, when this reactor holds at
  //   least two more than that one (a difference of one never moves, so two busy reactors do
  //   not trade a backend back and forth);
  // - unused: as a server goes idle with nobody waiting here, also when that one holds none;
  // - busy_sweep: clients wait here too, but that one holds none (the sweep: with fewer slots
  //   than busy reactors a slot must take turns, and this bounds how often a backend is closed
  //   and opened for it);
  // - idle_sweep: a server has idled here for kHandoffIdle, nobody waiting here (the sweep).
  // Returns that reactor, or -1.
  enum class Handoff { released, unused, busy_sweep, idle_sweep };
  [[nodiscard]] int slot_wanted_by(Handoff when) const;
  // Closes `server`; its slot goes to reactor `to` once it is gone (Reactor::maybe_free).
  void give_slot(Server& server, int to);
  // The sweep's and an idle server's check (see slot_wanted_by).
  void offer_idle_server(bool sweeping);
  static constexpr auto kHandoffIdle = std::chrono::milliseconds(20);
  // The sweep found a busy reactor holding none of this pool's slots: the next server released
  // here goes to it (unless it stopped starving meanwhile).
  int owed_to_ = -1;

  Reactor& reactor_;
  config::Database db_;   // a copy: a fallback ("*") database has no entry of its own
  std::string database_;  // the name clients use
  std::string user_name_;
  config::PoolSettings settings_;

  // Server login: who we log in as and with what secret (plain or "md5...", may be empty).
  std::string server_user_;
  std::string server_password_;
  // The user's SCRAM secret when it has no password: SCRAM pass-through.
  std::string server_secret_;

  // Where its servers go: the hosts of its databases: entry (shared by the reactors).
  std::shared_ptr<HostGroup> group_;
  std::string group_key_;  // its databases: entry ("*" for the fallback's databases)
  // The group's hosts as text ("pg-a:5432,pg-b:5432"): the same text, the same servers.
  [[nodiscard]] const std::string& address_text() const;

  // auth.query: clients logging in whose secret waits for a server of this pool to look it up.
  std::deque<Client*> lookups_;
  List<Client> idle_clients_;
  List<Client> waiting_clients_;
  List<Client> active_clients_;
  List<Server> connecting_servers_;  // connecting and login
  List<Server> idle_servers_;
  List<Server> active_servers_;
  List<Server> resetting_servers_;
  List<Server> canceling_servers_;  // transaction over, a cancel for it still in flight
  List<Server> listening_servers_;  // the listening connection (at most one), from its connect

  // LISTEN and NOTIFY shared (listen: shared; daemon/pool/listen.cpp). A lone `LISTEN ch`
  // between transactions makes the client a subscriber here instead of session state on a
  // server: one connection of this pool (counted in the database's budget, not pool_size)
  // LISTENs the union of its subscribers' channels, and each NotificationResponse it gets goes
  // to every subscriber of its channel: at once to an idle client, after its transaction to a
  // client in one (PostgreSQL's timing). The client's LISTEN is answered once this connection
  // has answered it (a NOTIFY the client sends right after must reach it).
  struct Listening {
    std::unordered_map<std::string, std::unordered_set<Client*>> channels;  // -> subscribers
    Server* server = nullptr;  // connecting, logging in or listening; null: none
    // LISTEN/UNLISTEN queries sent to `server` and answered (ReadyForQuery) since it logged in.
    std::uint64_t sent = 0;
    std::uint64_t answered = 0;
    // Those sent and not answered yet, in order: LISTEN (true) or UNLISTEN, the channel, and the
    // error PostgreSQL answered it with (SQLSTATE, message; empty: none so far).
    struct Sent {
      bool listen = false;
      std::string channel;
      std::pair<std::string, std::string> error;
    };
    std::deque<Sent> in_flight;
    // Clients whose LISTEN waits for `server`'s answer (Client::Listening::wait_for), in the
    // order they came: answers come in that order too, so those answered are at the front.
    std::deque<Client*> parked;
    Clock::time_point next_attempt{};  // reconnecting after the connection was lost
    // The connection was retired (RECONNECT, a reload, a host's role): its unit of the
    // database's budget goes to the next one when it is freed (reuse_listener_unit).
    bool hand_on_unit = false;
  };
  std::unique_ptr<Listening> listening_;
  // Whether a lone LISTEN/UNLISTEN of this pool's clients is taken over (listen: shared).
  [[nodiscard]] bool shares_listen() const {
    return settings_.listen == config::ListenPolicy::shared &&
           settings_.pool_mode != config::PoolMode::session && !replication_;
  }
  // `client` sent `command` (parse_listen) while idle: subscribe, unsubscribe, answer.
  void listen(Client& client, const proto::sql::Listen& command);
  // Its UNLISTEN (of a channel, or *) takes effect: nothing of it reaches the client any more.
  void unlisten(Client& client, const proto::sql::Listen& command);
  // Adds `channel` to `client`'s subscriptions (not there yet), and LISTENs if it is new here.
  void subscribe(Client& client, const std::string& channel);
  // The client leaves, sent UNLISTEN *, or its DISCARD ALL succeeded: no more subscriptions.
  void unsubscribe_all(Client& client);
  void listener_logged_in(Server& server);
  void on_listener_message(Server& server, char type, std::string_view body);
  // The listening connection is closing (Reactor::close): clients waiting for an answer get an
  // error; the subscriptions stay, and keep_listening() opens another.
  void listener_closed(Server& server, std::string_view message);
  // From the sweep: a listening connection when subscriptions need one and there is none, and
  // clients parked longer than query_wait get an error.
  void keep_listening();
  // The listening connection no longer fits (a reload moved the pool, its host went, RECONNECT):
  // it closes, and another opens at once and LISTENs again.
  void retire_listener(Reason reason, std::string_view message);
  // This pool's servers closed but not freed yet: their slots in the budgets come back soon.
  int servers_closing_ = 0;
  // Session mode: the startup packet of the client that got a server last, for the servers
  // min_pool_size opens ahead of demand and auth.query lookups (the next client most likely
  // sends the same).
  std::shared_ptr<const Startup> recent_startup_;

  // The parameters a fresh server reports (from the first login): the welcome for clients in
  // transaction mode, and the values restored on a server for clients that did not set them.
  std::vector<std::pair<std::string, std::string>> defaults_;
  bool have_defaults_ = false;

  // What PostgreSQL made of startup parameters clients sent, learned from servers that applied
  // them: the value it reports (client_encoding 'utf-8' is reported as 'UTF8'), or "" for a
  // parameter it does not report but accepted. A client whose every startup parameter is known
  // here is welcomed at once; the others go through a server first (Client::startup_known).
  [[nodiscard]] const std::string* learned(std::string_view name, std::string_view asked) const;
  void learn(std::string_view name, std::string_view asked, std::string_view reported);
  struct Learned {
    std::string name;
    std::string asked;
    std::string reported;
  };
  std::deque<Learned> learned_;
  static constexpr std::size_t kLearnedMax = 256;  // the oldest go first

  PoolStats stats_;
  // Its query families' key in QueryStats (a hash of database and user).
  std::uint64_t stats_key_ = 0;
  // hosts_changed() is closing the idle servers whose host no longer fits: nothing is linked.
  bool closing_misfits_ = false;
  // PAUSE: no new links; clients wait until RESUME.
  bool paused_ = false;
  // Served by the fallback database ("*"): the pool goes once unused for timeouts.autodb_idle.
  bool automatic_ = false;
  // Replication connections' pool (Reactor::pool_for): its servers are opened with the
  // client's `replication` parameter and never reused.
  bool replication_ = false;
  // What a replication pool's settings become (at creation and at every reconfigure).
  static void for_replication(config::PoolSettings& settings);
  Clock::time_point unused_since_{};  // when the sweep found it unused (epoch: in use)
  [[nodiscard]] bool unused() const {
    return client_count() == 0 && server_count() == 0 && servers_closing_ == 0 &&
           lookups_.empty() && listening_servers_.empty();
  }

  // After a failed connect or login the pool is failing: with no server left, one connection
  // at a time tries again, at next_attempt_ (a back-off from 250 ms doubling up to
  // timeouts.server_login_retry, less up to a quarter at random so that reactors and pgring
  // instances do not retry in step), and again after each failure; min_pool_size triggers the
  // attempts too. Clients wait meanwhile (up to query_wait, then fail_client) and are served
  // as soon as one logs in: a PostgreSQL restart costs them a pause, not an error. An error
  // that waiting does not cure (authentication, a database that does not exist, a login pgring
  // cannot do: final) goes to the waiting and new clients at once, and is retried every
  // server_login_retry.
  Clock::time_point next_attempt_{};
  int failed_attempts_ = 0;
  bool failing_ = false;
  bool failure_final_ = false;
  bool failing_waiting_ = false;  // fail_waiting() is running
  Reason last_error_reason_ = Reason::server_unreachable;
  std::string last_error_sqlstate_;  // PostgreSQL's, or "" when it never answered
  std::string last_error_message_;
  Clock::time_point no_warming_until_{};  // free_database

  // A listening connection of this pool was freed with its unit of the database's budget: the
  // next one opens with that unit when subscriptions still need one. True when it took it (at
  // max_db_connections under load, a unit set free would go to the waiting clients first, and
  // the subscribers would hear nothing until the load eased).
  bool reuse_listener_unit();

 private:
  // Finds group_ for db_ (the fallback's for an automatic pool).
  void find_group();
  // The idle server `client` may use, the most recently used first: any in transaction mode;
  // in session mode one opened with the client's own startup packet (Server::startup_).
  Server* idle_server_for(const Client& client);
  void link(Client& client, Server& server);
  // Session mode, the budget used up: close idle servers (opened for other startup parameters)
  // until `needed` slots are on their way back.
  void make_room(int needed);
  // While the server is down: auth.query lookups get the error, and the waiting clients too
  // when waiting would not cure it (failure_final_).
  void fail_waiting();
  // Opens the listening connection if subscriptions need one and the database has room
  // (`unit_held`: the caller holds a unit of the database's budget for it). True when it took
  // the unit (a connect started).
  bool open_listener(bool unit_held = false);
  // Sends `LISTEN ch` (or `UNLISTEN ch`) to the listening connection, if it is logged in.
  void send_listen(bool listen, const std::string& channel);
  // Answers the parked clients whose LISTEN the listening connection has answered: those at the
  // front of `parked`, or, when some were given an error (`errors`), any of them.
  void wake_parked(bool errors = false);
  // Nobody listens (or waits to): the listening connection goes.
  void drop_listener_if_unused();
  // Opens one server to see whether a failing server is back; false when no slot is free.
  bool try_again(int limit);
  void set_credentials(const config::Database& db, const config::User* user);
};

}  // namespace pgring
