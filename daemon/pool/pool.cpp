#include "daemon/pool/pool.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <openssl/rand.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/core/shared.hpp"
#include "proto/ascii.hpp"
#include "proto/builders.hpp"

namespace pgring {

Pool::Pool(Reactor& reactor, const config::Database& db, const config::User* user,
           std::string user_name, config::PoolSettings settings)
    : reactor_(reactor),
      db_(db),
      database_(db.name),
      user_name_(std::move(user_name)),
      settings_(std::move(settings)) {
  set_credentials(db, user);
  find_group();
  stats_key_ = std::hash<std::string>{}(database_ + '\0' + user_name_);
}

void Pool::set_credentials(const config::Database& db, const config::User* user) {
  // Whom we log in as: the database's forced user if set, else the client's own user.
  server_password_.clear();
  server_secret_.clear();
  if (db.user) {
    server_user_ = *db.user;
    if (db.password) {
      server_password_ = *db.password;
    } else if (const config::User* forced = reactor_.config().find_user(*db.user)) {
      // No password with the forced user: the one users: gives that user.
      if (forced->secret_kind == config::SecretKind::scram)
        server_secret_ = forced->password;
      else
        server_password_ = forced->password;
    }
  } else {
    server_user_ = user_name_;
    if (user != nullptr && user->secret_kind != config::SecretKind::scram)
      server_password_ = user->password;
    if (user != nullptr && user->secret_kind == config::SecretKind::scram)
      server_secret_ = user->password;
  }
}

void Pool::for_replication(config::PoolSettings& settings) {
  // A walsender session streams for as long as its client wants: no timeout of a query or a
  // transaction applies, and the server is the client's alone (Server::release closes it).
  settings.pool_mode = config::PoolMode::session;
  settings.min_pool_size = 0;
  settings.timeouts.query = settings.timeouts.transaction = settings.timeouts.idle_transaction =
      settings.timeouts.client_idle = config::Duration(0);
}

void Pool::reconfigure(const config::Database& db, const config::User* user,
                       config::PoolSettings settings) {
  if (replication_) for_replication(settings);  // (a reload keeps them replication's)
  bool moved = db.hosts != db_.hosts || db.dbname != db_.dbname || db.user != db_.user ||
               db.password != db_.password;
  // Session mode's servers carry their clients' startup parameters, the others pgring's own:
  // neither kind may serve the other mode.
  bool mode_changed = (settings.pool_mode == config::PoolMode::session) !=
                      (settings_.pool_mode == config::PoolMode::session);
  db_ = db;
  settings_ = std::move(settings);
  set_credentials(db, user);
  clear_failure();  // the new settings deserve an attempt at once
  if (moved) {
    learned_.clear();  // another server may accept or report other things
    log::info("pool {}/{}: server moved to {}; retiring old connections", database_, user_name_,
              address_text());
  } else if (mode_changed) {
    log::info("pool {}/{}: pool_mode is {} now; retiring old connections", database_, user_name_,
              config::to_string(settings_.pool_mode));
  }
  find_group();  // a reload may have made a new one (other hosts) or changed its target
  if (moved || mode_changed) {
    for (List<Server>* l :
         {&active_servers_, &resetting_servers_, &canceling_servers_, &connecting_servers_})
      for (Server* s = l->front(); s != nullptr; s = List<Server>::next(s)) s->retire_ = true;
    while (Server* s = idle_servers_.front()) reactor_.close(*s, Reason::config_changed);
    // The listening connection follows at once (notifications sent meanwhile are lost); a pool
    // no longer shared at all lets its subscribers keep the one they have.
    if (moved) retire_listener(Reason::config_changed, "server moved");
  }
  // A smaller pool_size: surplus idle connections go now, busy ones are not interrupted.
  while (server_count() > settings_.pool_size + settings_.reserve_pool_size &&
         !idle_servers_.empty())
    reactor_.close(*idle_servers_.front(), Reason::config_changed);
  maintain();
}

void Pool::find_group() {
  // Pools of the fallback's databases share its hosts; a reload that dropped the entry leaves
  // the group the pool had (its servers stay where they are until the pool goes).
  std::string_view key = automatic_ || reactor_.config().find_database(db_.name) == nullptr
                             ? config::kFallbackDatabase
                             : std::string_view(db_.name);
  group_key_ = std::string(key);
  if (auto group = reactor_.shared().hosts->group(key)) group_ = std::move(group);
  if (group_ == nullptr) {
    // (Not configured through a HostDirectory: a pool made for a database a reload removed
    // while its clients were on their way in.)
    group_ = std::make_shared<HostGroup>(db_);
    reactor_.shared().hosts->resolve_soon();
  }
}

const std::string& Pool::address_text() const {
  return group_->text();
}

bool Pool::host_failed(Server& server, Reason reason, std::string_view sqlstate) {
  if (server.endpoint_ == nullptr) return false;
  // A login PostgreSQL refused for the user or database fails on every host alike; so does a
  // login pgring cannot do.
  bool host_specific = sqlstate.empty() ? reason != Reason::server_login_failed
                                        : !(sqlstate.starts_with("28") || sqlstate == "3D000" ||
                                            sqlstate == "42501");
  if (!host_specific) return false;
  if (reason != Reason::server_wrong_role &&
      group_->connect_failed(*server.endpoint_, reactor_.now(),
                             settings_.timeouts.server_login_retry)) {
    log::warning("pool {}/{}: host {} taken out: {}", database_, user_name_, server.endpoint_->text,
                 name(reason));
    reactor_.shared().hosts->resolve_soon();  // its address may have moved
  }
  // Another host to try at once?
  auto now = reactor_.now();
  for (const auto& e : group_->endpoints())
    if (e != server.endpoint_ && !e->gone && !e->down(now) && group_->fits(*e)) return true;
  return false;
}

void Pool::hosts_changed() {
  auto fits = [&](const Server& s) {
    const Endpoint* e = s.endpoint_.get();
    return e == nullptr || (group_->fits(*e) && !e->down(reactor_.now()));
  };
  // Busy servers that no longer fit finish their transaction, then close. (A server still
  // logging in is judged by its own role check.)
  for (List<Server>* l : {&active_servers_, &resetting_servers_, &canceling_servers_})
    for (Server* s = l->front(); s != nullptr; s = List<Server>::next(s))
      if (!fits(*s)) {
        s->retire_ = true;
        s->retire_reason_ = Reason::server_wrong_role;
      }
  // Idle ones close now, with no client linked to one meanwhile (a close runs maintain()).
  closing_misfits_ = true;
  for (;;) {
    Server* misfit = idle_servers_.front();
    while (misfit != nullptr && fits(*misfit)) misfit = List<Server>::next(misfit);
    if (misfit == nullptr) break;
    reactor_.close(*misfit, Reason::server_wrong_role, misfit->endpoint_->text);
  }
  closing_misfits_ = false;
  if (listening_ && listening_->server != nullptr && listening_->server->endpoint_ != nullptr &&
      listening_->server->state_ == ServerState::listening &&
      !group_->fits(*listening_->server->endpoint_, /*listener=*/true))  // (not when down)
    retire_listener(Reason::server_wrong_role, listening_->server->endpoint_->text);
  if (failing_ && !failure_final_) next_attempt_ = reactor_.now();
  maintain();
}

// The one place a connection changes state: its state is the list it is on (a pool's, or the
// reactor's for logins, the admin console and closing), and the time it got there is stamped
// for timeouts and SHOW. Nothing else writes state_.

void Reactor::set_state(Client& client, ClientState state) {
  unlink(&client);
  client.state_ = state;
  client.state_since_ = now_;
  Pool* pool = client.pool_;  // null while logging in, and for the admin console
  switch (state) {
    case ClientState::startup:
    case ClientState::auth:
      login_clients_.push_back(&client);
      break;
    case ClientState::idle:
      (pool != nullptr ? pool->idle_clients_ : admin_clients_).push_back(&client);
      client.trim();  // idle clients keep only what they need to resume
      break;
    case ClientState::waiting:
      pool->waiting_clients_.push_back(&client);
      break;
    case ClientState::active:
      pool->active_clients_.push_back(&client);
      break;
    case ClientState::closing:
      closing_clients_.push_back(&client);
      break;
  }
}

void Reactor::set_state(Server& server, ServerState state) {
  unlink(&server);
  server.state_ = state;
  server.state_since_ = now_;
  Pool& pool = server.pool_;
  switch (state) {
    case ServerState::connecting:
    case ServerState::login:
      if (server.listener_)
        pool.listening_servers_.push_back(&server);
      else
        pool.connecting_servers_.push_back(&server);
      break;
    case ServerState::listening:
      pool.listening_servers_.push_back(&server);
      break;
    case ServerState::idle:
      pool.idle_servers_.push_back(&server);
      break;
    case ServerState::active:
    case ServerState::lookup:
      pool.active_servers_.push_back(&server);
      break;
    case ServerState::resetting:
      pool.resetting_servers_.push_back(&server);
      break;
    case ServerState::canceling:
      pool.canceling_servers_.push_back(&server);
      break;
    case ServerState::closing:
      closing_servers_.push_back(&server);
      ++pool.servers_closing_;
      break;
  }
}

void Pool::add_client(Client& client) {
  client.pool_ = this;
  if (settings_.pool_mode != config::PoolMode::session && have_defaults_ &&
      client.startup_known()) {
    client.send_welcome(defaults_);
    reactor_.set_state(client, ClientState::idle);
    if (reactor_.handing_over()) [[unlikely]]
      reactor_.note_handover_candidate(client);  // (logged in meanwhile: goes at once)
    return;
  }
  reactor_.set_state(client, ClientState::waiting);
  maintain();
}

const std::string* Pool::learned(std::string_view name, std::string_view asked) const {
  for (const Learned& l : learned_)
    if (l.asked == asked && proto::iequals(l.name, name)) return &l.reported;
  return nullptr;
}

void Pool::learn(std::string_view name, std::string_view asked, std::string_view reported) {
  for (Learned& l : learned_) {
    if (l.asked == asked && proto::iequals(l.name, name)) {
      l.reported.assign(reported);
      return;
    }
  }
  if (learned_.size() == kLearnedMax) learned_.pop_front();
  learned_.push_back({std::string(name), std::string(asked), std::string(reported)});
}

void Pool::request_server(Client& client) {
  reactor_.set_state(client, ClientState::waiting);
  maintain();
}

void Pool::release_link(Server& server) {
  Client& client = *server.client_;
  // Everything that changed the session while linked changed both sides alike.
  server.session_fingerprint_ =
      server.session_diverged_ ? Server::kUnknownSession : client.session_fingerprint();
  server.session_diverged_ = false;
  server.client_ = nullptr;
  client.server_ = nullptr;
  server.end_flow_control();
  if (client.stream_.reading_paused_) {  // paused for the server's sake: over with the link too
    client.stream_.reading_paused_ = false;
    reactor_.arm_recv_for(client);
  }
  reactor_.set_state(client, ClientState::idle);
  if (client.listening_) [[unlikely]]
    client.flush_notifications();
  // An upgrade in place: a client between transactions goes to the new process at the end of
  // this turn (unless it sent its next request meanwhile).
  if (reactor_.handing_over()) [[unlikely]]
    reactor_.note_handover_candidate(client);
  server_ready(server);
}

void Pool::server_ready(Server& server) {
  if (server.retire_ || budget_->servers.load(std::memory_order_relaxed) >
                            settings_.pool_size + settings_.reserve_pool_size) {
    reactor_.close(server, server.retire_ ? server.retire_reason_ : Reason::config_changed);
    return;
  }
  if (server.cancels_in_flight_ > 0) {
    reactor_.set_state(server, ServerState::canceling);
    return;
  }
  if (replication_ && waiting_clients_.empty()) {
    // A walsender session whose client left before it was linked: nobody else may use it.
    reactor_.close(server, Reason::replication_ended);
    return;
  }
  if (!waiting_clients_.empty()) {
    // This reactor's clients wait, and another's may wait more (slot_wanted_by).
    // The sweep found a starving reactor with no slot: asked again now (it may have one since).
    bool owed = std::exchange(owed_to_, -1) >= 0;
    int to = slot_wanted_by(owed ? Handoff::busy_sweep : Handoff::released);
    if (to >= 0) {
      // Idle first: the close then says Terminate and waits for the backend to end, so that
      // PostgreSQL never sees more than pool_size backends while the slot moves.
      reactor_.set_state(server, ServerState::idle);
      give_slot(server, to);
      return;
    }
  }
  reactor_.set_state(server, ServerState::idle);
  maintain();
  offer_idle_server(false);
}

void Pool::set_starving(bool pool_budget, bool database_budget) {
  std::uint64_t bit = std::uint64_t{1} << reactor_.index();
  if (pool_budget != starving_pool_) {
    if (pool_budget)
      budget_->starving.fetch_or(bit, std::memory_order_relaxed);
    else
      budget_->starving.fetch_and(~bit, std::memory_order_relaxed);
    starving_pool_ = pool_budget;
  }
  if (database_budget != starving_db_) {
    if (database_budget)
      db_budget_->starving.fetch_or(bit, std::memory_order_relaxed);
    else
      db_budget_->starving.fetch_and(~bit, std::memory_order_relaxed);
    starving_db_ = database_budget;
  }
}

int Pool::slot_wanted_by(Handoff when) const {
  int me = reactor_.index();
  std::uint64_t mine = std::uint64_t{1} << me;
  std::uint64_t pool_others = budget_->starving.load(std::memory_order_relaxed) & ~mine;
  std::uint64_t db_others = db_budget_->starving.load(std::memory_order_relaxed) & ~mine;
  std::uint64_t others = pool_others | db_others;
  if (others == 0) [[likely]]
    return -1;
  // The starving reactor holding the fewest of the budget it starves for (the first after
  // this one among equals, so that several take turns).
  int to = -1, theirs = 0;
  for (std::uint64_t rest = std::rotr(others, me + 1); rest != 0; rest &= rest - 1) {
    int i = (std::countr_zero(rest) + me + 1) % kMaxWorkers;
    const Budget& b = (pool_others >> i & 1) != 0 ? *budget_ : *db_budget_;
    int n = b.held_by(i);
    if (to < 0 || n < theirs) {
      to = i;
      theirs = n;
    }
  }
  const Budget& budget = (pool_others >> to & 1) != 0 ? *budget_ : *db_budget_;
  int held = budget.held_by(me);
  if (held == 0) return -1;  // (its slots are another pool's of this database)
  switch (when) {
    case Handoff::released:
      return held > theirs + 1 ? to : -1;
    case Handoff::unused:
    case Handoff::busy_sweep:
      return held > theirs + 1 || theirs == 0 ? to : -1;
    case Handoff::idle_sweep:
      return to;
  }
  return -1;
}

void Pool::give_slot(Server& server, int to) {
  int me = reactor_.index();
  // The database's unit goes in any case; the pool's when that reactor starves for this pool's
  // (else it waits for another pool of the database, and this pool's unit is released).
  server.slot_for_ = to;
  server.slot_for_pool_ = (budget_->starving.load(std::memory_order_relaxed) >> to & 1) != 0;
  if (server.slot_for_pool_) budget_->promise(me, to);
  db_budget_->promise(me, to);
  reactor_.close(server, Reason::server_handed_over, "another worker's clients need the slot");
}

void Pool::offer_idle_server(bool sweeping) {
  if (idle_servers_.empty()) {
    // Busy here: a reactor holding none gets the next server released (server_ready).
    if (sweeping && !waiting_clients_.empty()) owed_to_ = slot_wanted_by(Handoff::busy_sweep);
    return;
  }
  if (!waiting_clients_.empty()) return;  // (session mode: servers for other startup packets)
  // (Nobody starving, the common case, is seen here without a call.)
  if (((budget_->starving.load(std::memory_order_relaxed) |
        db_budget_->starving.load(std::memory_order_relaxed)) &
       ~(std::uint64_t{1} << reactor_.index())) == 0)
    return;
  bool idled = sweeping && reactor_.now() - idle_servers_.front()->state_since_ >= kHandoffIdle;
  int to = slot_wanted_by(idled ? Handoff::idle_sweep : Handoff::unused);
  if (to >= 0) give_slot(*idle_servers_.front(), to);
}

int Pool::server_count() const {
  return static_cast<int>(connecting_servers_.size() + idle_servers_.size() +
                          active_servers_.size() + resetting_servers_.size() +
                          canceling_servers_.size());
}

void Pool::maintain() {
  if (closing_misfits_) return;  // hosts_changed() runs it once it is done
  // auth.query lookups first: a client cannot even log in until its lookup ran.
  while (!lookups_.empty() && !idle_servers_.empty()) {
    Client* client = lookups_.front();
    lookups_.pop_front();
    client->login_->lookup_pool = nullptr;
    idle_servers_.back()->start_lookup(*client);
  }
  // The longest-waiting client first (FIFO) gets the most recently used idle server (LIFO, as
  // PgBouncer does by default): its backend's caches are warm and its session most likely
  // already the client's, a few servers do the work of a quiet pool while the rest age out
  // from the front (server_idle_timeout), and one client is not passed round every backend.
  // In session mode a client passes over the idle servers opened for other startup parameters,
  // and a later client may go first when only its parameters have a server.
  while (!paused_ && !idle_servers_.empty()) {
    Server* server = nullptr;
    Client* client = waiting_clients_.front();
    for (; client != nullptr; client = List<Client>::next(client))
      if ((server = idle_server_for(*client)) != nullptr) break;
    if (client == nullptr) break;
    link(*client, *server);
  }
  if (waiting_clients_.empty() && (starving_pool_ || starving_db_)) set_starving(false, false);
  int demand = static_cast<int>(waiting_clients_.size() + lookups_.size());
  // (An upgrade's old process still serves the clients it has: they go once idle.)
  if (paused_ || demand == 0 || (reactor_.shutting_down() && !reactor_.handing_over())) {
    // (A paused pool would not use a slot given to it.)
    if (starving_pool_ || starving_db_) set_starving(false, false);
    return;
  }

  // Open connections for clients that no connecting server will serve, up to pool_size; the
  // reserve pool joins when the longest-waiting client has waited timeouts.reserve_pool.
  int limit = settings_.pool_size;
  if (settings_.reserve_pool_size > 0 && !waiting_clients_.empty() &&
      reactor_.now() - waiting_clients_.front()->state_since_ >= settings_.timeouts.reserve_pool)
    limit += settings_.reserve_pool_size;
  if (failing_) {
    // The last attempt failed: one attempt at a time, when it is due; clients wait for it (or
    // for a server that is still there). (Also what keeps a connect that fails at once, out of
    // file descriptors, from being retried on the stack of its own failure.)
    // (Nor would a failing one, before its next attempt.)
    if (starving_pool_ || starving_db_) set_starving(false, false);
    if (!connecting_servers_.empty()) return;
    if (reactor_.now() < next_attempt_) {
      if (server_down()) fail_waiting();
      return;
    }
    (void)try_again(limit);
    return;
  }
  bool short_pool = false, short_database = false;
  // Opens one server with `startup` (null: pgring's own); false when no slot is free.
  auto open = [&](const std::shared_ptr<const Startup>& startup) {
    if (!budget_->acquire_for(reactor_.index(), limit)) {
      short_pool = true;
      return false;
    }
    if (!reactor_.database_has_room(*this)) {
      budget_->release_from(reactor_.index());
      short_database = true;
      return false;
    }
    if (!reactor_.start_connect(*this, startup)) {
      budget_->release_from(reactor_.index());
      db_budget_->release_from(reactor_.index());
      return false;  // the host is at max_concurrent_server_logins: the sweep tries again
    }
    return true;
  };
  if (settings_.pool_mode != config::PoolMode::session) {
    for (int wanted = demand - static_cast<int>(connecting_servers_.size()); wanted > 0; --wanted)
      if (!open(nullptr)) break;
  } else {
    // A server for each waiting client that none of the servers on their way to idle
    // (connecting, or resetting after their last client, opened with its startup packet) will
    // serve; auth.query lookups take any server.
    std::vector<const Startup*> connecting;
    for (List<Server>* l : {&connecting_servers_, &resetting_servers_, &canceling_servers_})
      for (Server* s = l->front(); s != nullptr; s = List<Server>::next(s))
        connecting.push_back(s->startup_.get());
    int unserved = 0;
    for (Client* c = waiting_clients_.front(); c != nullptr; c = List<Client>::next(c)) {
      auto it = std::find(connecting.begin(), connecting.end(), c->startup_.get());
      if (it != connecting.end()) {
        connecting.erase(it);
      } else if (unserved > 0 || !open(c->startup_)) {
        ++unserved;  // counted on once the budget is used up
      }
    }
    for (int n = static_cast<int>(lookups_.size() - std::min(lookups_.size(), connecting.size()));
         n > 0 && unserved == 0; --n)
      if (!open(recent_startup_)) ++unserved;
    if ((short_pool || short_database) && unserved > 0) make_room(unserved);
  }
  set_starving(short_pool, short_database);
}

Server* Pool::idle_server_for(const Client& client) {
  if (settings_.pool_mode != config::PoolMode::session) return idle_servers_.back();
  for (Server* s = idle_servers_.back(); s != nullptr; s = List<Server>::prev(s))
    if (s->startup_ == client.startup_) return s;
  return nullptr;
}

void Pool::link(Client& client, Server& server) {
  stats_.wait.observe(reactor_.now() - client.state_since_);
  server.answer_.wait = reactor_.now() - client.state_since_;
  reactor_.set_state(server, ServerState::active);
  reactor_.set_state(client, ClientState::active);
  ++server.link_generation_;
  server.transaction_failed_ = false;
  server.pending_settings_.clear();
  server.client_ = &client;
  client.server_ = &server;
  if (settings_.pool_mode == config::PoolMode::session) recent_startup_ = client.startup_;
  client.on_linked(server);
}

void Pool::make_room(int needed) {
  // The least recently used idle servers go. (Closing one runs maintain() again, which may
  // close more: servers_closing_ counts them all.)
  while (servers_closing_ < needed && !idle_servers_.empty())
    reactor_.close(*idle_servers_.front(), Reason::server_evicted,
                   "making room for a session with other startup parameters");
}

void Pool::refuse_startup(const Startup& startup, std::string_view error,
                          std::string_view message) {
  // min_pool_size and auth.query lookups must not open servers with it again.
  if (recent_startup_.get() == &startup) recent_startup_.reset();
  std::vector<Client*> refused;
  for (Client* c = waiting_clients_.front(); c != nullptr; c = List<Client>::next(c))
    if (c->startup_.get() == &startup) refused.push_back(c);
  for (Client* c : refused) {
    if (c->state_ != ClientState::waiting) continue;  // (closing one may have moved another)
    c->error_forwarded_ =
        c->stream_.emit([&](std::string& out) { return proto::build::message(out, 'E', error); });
    reactor_.close(*c, Reason::startup_rejected, message);
  }
}

void Pool::free_database() {
  no_warming_until_ = reactor_.now() + std::chrono::seconds(6);
  while (Server* s = idle_servers_.front()) reactor_.close(*s, Reason::database_command);
}

void Pool::keep_warm() {
  // min_pool_size: open connections ahead of demand.
  if (reactor_.shutting_down() || reactor_.now() < no_warming_until_) return;
  // Session mode opens servers with a client's startup parameters: none before the first.
  bool session = settings_.pool_mode == config::PoolMode::session;
  if (session && !recent_startup_) return;
  if (failing_) {
    // One attempt at a time while the server is down, whether or not a client asks: /ready
    // (and SHOW POOLS) must see a server that answers again, or a readiness gate in front of
    // pgring would never let through the client whose login would find out. The pool fills
    // once one logged in. A refusal (wrong password, no such role or database) is the server
    // answering: that pool waits for a client to try again, not probed for ever.
    bool probe = settings_.min_pool_size > 0 || !failure_final_;
    if (probe && server_count() == 0 && reactor_.now() >= next_attempt_)
      (void)try_again(std::max(1, settings_.min_pool_size));
    return;
  }
  if (settings_.min_pool_size <= 0) return;
  // (A connect that fails at once, out of file descriptors, sets failing_: stop there.)
  while (!failing_ && budget_->acquire_for(reactor_.index(), settings_.min_pool_size)) {
    if (!reactor_.database_has_room(*this)) {
      budget_->release_from(reactor_.index());
      break;
    }
    if (!reactor_.start_connect(*this, session ? recent_startup_ : nullptr)) {
      budget_->release_from(reactor_.index());
      db_budget_->release_from(reactor_.index());
      break;
    }
  }
}

void Pool::on_server_failed(Reason reason, std::string_view sqlstate, std::string_view message) {
  // The servers opened together before the first failure was known fail together: one step of
  // the back-off for them all.
  if (!failing_ || connecting_servers_.empty()) ++failed_attempts_;
  failing_ = true;
  last_error_reason_ = reason;
  last_error_sqlstate_ = std::string(sqlstate);
  last_error_message_ = std::string(message);
  // Waiting does not cure a wrong password, a role or database that does not exist, a missing
  // CONNECT privilege, or a login pgring itself cannot do (a method it lacks, a secret that
  // does not match the server's, TLS the server refuses: server_login_failed of its own).
  failure_final_ = sqlstate.empty()
                       ? reason == Reason::server_login_failed
                       : sqlstate.starts_with("28") || sqlstate == "3D000" || sqlstate == "42501";
  auto retry = settings_.timeouts.server_login_retry;
  auto delay = retry;
  if (!failure_final_ && failed_attempts_ < 16)
    delay = std::min(retry, config::Duration(250) * (1 << (failed_attempts_ - 1)));
  std::uint32_t r = 0;
  RAND_bytes(reinterpret_cast<unsigned char*>(&r), sizeof r);
  delay -= config::Duration(delay.count() / 4 * (r % 1000) / 1000);
  next_attempt_ = reactor_.now() + delay;
  log::event(config::LogLevel::warning,
             {.event = "server_unavailable",
              .client = 0,
              .server = 0,
              .database = database_,
              .user = user_name_,
              .peer = {},
              .reason = name(reason),
              .sqlstate = sqlstate},
             "pool {}/{}: server unavailable ({}{}{}): {}; next attempt in {} ms", database_,
             user_name_, name(reason), sqlstate.empty() ? "" : ", SQLSTATE ", sqlstate, message,
             delay.count());
  if (server_count() > 0) return;  // other servers may still serve the waiting clients
  fail_waiting();
}

void Pool::fail_waiting() {
  // (Closing a client runs maintain(), which would come back here for the next one: one call
  // does them all.)
  if (failing_waiting_) return;
  failing_waiting_ = true;
  // A client logging in (its auth.query lookup) is not kept waiting for a server that is down.
  while (!lookups_.empty())
    reactor_.close(*lookups_.front(), Reason::auth_query_failed, last_error_message_);
  if (failure_final_)  // else logged-in clients wait for the next attempt
    while (Client* c = waiting_clients_.front()) fail_client(*c);
  failing_waiting_ = false;
}

void Pool::fail_client(Client& client) {
  if (!last_error_sqlstate_.empty())
    // PostgreSQL's own error, as the client would have had it without pgring.
    reactor_.close(client, Reason::server_login_failed, last_error_message_, last_error_sqlstate_);
  else
    reactor_.close(client, last_error_reason_, last_error_message_);
}

bool Pool::try_again(int limit) {
  if (!budget_->acquire_for(reactor_.index(), limit)) return false;
  if (!reactor_.database_has_room(*this)) {
    budget_->release_from(reactor_.index());
    return false;
  }
  bool session = settings_.pool_mode == config::PoolMode::session;
  const Client* first = waiting_clients_.front();
  if (!reactor_.start_connect(*this, !session           ? nullptr
                                     : first != nullptr ? first->startup_
                                                        : recent_startup_)) {
    budget_->release_from(reactor_.index());
    db_budget_->release_from(reactor_.index());
    return false;
  }
  return true;
}

}  // namespace pgring
