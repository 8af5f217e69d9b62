// (split from core/reactor.cpp)
#include <arpa/inet.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "proto/builders.hpp"

namespace pgring {

namespace {
// A closing connection that cannot drain its last error within this time is cut off.
constexpr auto kClosingGrace = std::chrono::seconds(5);
}  // namespace

// ---------------------------------------------------------------------------------------------
// Timers: a sweep of the state lists, a few times a second. No syscall or allocation per
// armed timeout: a deadline is the time a connection entered its list plus the configured limit.

void Reactor::sweep() {
  const config::Timeouts& t = config_->timeouts;
  shared_.turned[static_cast<std::size_t>(index_)].store(now_.time_since_epoch().count(),
                                                         std::memory_order_relaxed);
  if (index_ == 0 && watchdog_interval_.count() > 0 && now_ >= next_watchdog_) feed_watchdog();
  auto expired = [&](Clock::time_point since, config::Duration limit) {
    return limit.count() > 0 && now_ - since >= limit;
  };
  for (auto& listener : listeners_) {
    if (!listener->resting) continue;
    listener->resting = false;
    if (listener->fd >= 0 && !listener->armed && !shutting_down()) arm_accept(*listener);
  }
  // A burst of TLS handshakes leaves tens of KiB of freed heap per handshake behind (OpenSSL's
  // transient state); once the burst is over, give it back so idle clients cost what they hold.
  if (tls_handshakes_since_trim_ >= kTrimAfterHandshakes && login_clients_.empty()) {
    malloc_trim(0);
    tls_handshakes_since_trim_ = 0;
  }
  // Each list is in the order its connections entered it (set_state appends): a walk by the
  // time of entry stops at the first that has not expired.
  while (Client* c = login_clients_.front()) {
    if (!expired(c->state_since_, t.client_login)) break;
    close(*c, Reason::login_timeout, "client login timeout");
  }
  if (!admin_waits_.empty()) check_admin_waits();
  for (auto& [key, pool] : pools_) {
    (void)key;
    // With the database's and user's overrides.
    const config::Timeouts& pt = pool->settings_.timeouts;
    while (Client* c = pool->waiting_clients_.front()) {
      if (!expired(c->state_since_, pt.query_wait)) break;
      // Waiting for a server that is down: the client gets why.
      if (pool->server_down())
        pool->fail_client(*c);
      else
        close(*c, Reason::query_wait_timeout, "query_wait timeout");
    }
    for (Server* s = pool->connecting_servers_.front(); s != nullptr;) {
      Server* next = List<Server>::next(s);
      if (expired(s->state_since_, pt.server_connect))
        close(*s, Reason::server_unreachable,
              fmt::format("server {} did not answer within server_connect ({} ms)",
                          s->endpoint_->text, pt.server_connect.count()));
      s = next;
    }
    if (pool->listening_) {
      // The listening connection: connect and login within server_connect, and another one
      // when it was lost while clients listen.
      Server* s = pool->listening_->server;
      if (s != nullptr && s->state_ != ServerState::listening &&
          expired(s->state_since_, pt.server_connect))
        close(*s, Reason::server_unreachable,
              fmt::format("server {} did not answer within server_connect ({} ms)",
                          s->endpoint_->text, pt.server_connect.count()));
      pool->keep_listening();
    }
    for (Server* s = pool->idle_servers_.front(); s != nullptr;) {
      Server* next = List<Server>::next(s);
      if (expired(s->state_since_, pt.server_idle))
        close(*s, Reason::server_idle_timeout);
      else if (pt.server_lifetime.count() > 0 && now_ >= s->retire_at_)
        close(*s, Reason::server_lifetime);
      s = next;
    }
    sweep_active(*pool);
    if (pt.client_idle.count() > 0) {
      // Idle since it went idle (its last transaction's end) and nothing received since (half
      // a message). The list is in the order clients went idle, so the walk stops at the first
      // that has not idled long enough: 10,000 idle clients cost a sweep nothing.
      for (Client* c = pool->idle_clients_.front(); c != nullptr;) {
        Client* next = List<Client>::next(c);
        if (!expired(c->state_since_, pt.client_idle)) break;
        if (expired(c->last_activity_, pt.client_idle))
          close(*c, Reason::client_idle_timeout, "idle-session timeout");
        c = next;
      }
    }
    // Waiting clients may now qualify for the reserve pool, or a failing server for a retry.
    if (!pool->waiting_clients_.empty())
      pool->maintain();
    else if (pool->starving_pool_ || pool->starving_db_)
      pool->set_starving(false, false);
    // Servers idle here while another reactor's clients starve for the slot.
    pool->offer_idle_server(true);
    // Over the limit for the process (a reload shrank pool_size while other reactors hold
    // servers too): one idle server per sweep goes, so the reactors converge without all
    // closing at once.
    if (!pool->idle_servers_.empty() &&
        pool->budget_->servers.load(std::memory_order_relaxed) >
            pool->settings_.pool_size + pool->settings_.reserve_pool_size)
      close(*pool->idle_servers_.front(), Reason::config_changed, "pool_size shrank");
    pool->keep_warm();
  }
  drop_unused_automatic_pools();
  // An HTTP client gets 5 seconds to send its request and read the answer.
  for (HttpConn* h = http_conns_.front(); h != nullptr;) {
    HttpConn* next = List<HttpConn>::next(h);
    if (now_ - h->started_ > std::chrono::seconds(5)) finish_http(*h);
    h = next;
  }
  // cancel_wait: a cancel connection PostgreSQL does not close in time is given up.
  for (Canceller* c = cancellers_.front(); c != nullptr;) {
    Canceller* next = List<Canceller>::next(c);
    if (expired(c->started_, t.cancel_wait) && !c->done_) {
      log::warning("cancel request not completed within cancel_wait ({} ms)",
                   t.cancel_wait.count());
      finish_cancel(*c);
    }
    c = next;
  }
  // Connections that could not drain their last bytes are cut off.
  for (Client* c = closing_clients_.front(); c != nullptr;) {
    Client* next = List<Client>::next(c);
    // (A client an upgrade hands over may read its last reply until timeouts.shutdown.)
    bool grace_over =
        c->handover_ ? now_ >= shutdown_deadline_ : now_ - c->state_since_ > kClosingGrace;
    if (grace_over) {
      finish_close(*c);
      maybe_free(*c);
    }
    c = next;
  }
  for (Server* s = closing_servers_.front(); s != nullptr;) {
    Server* next = List<Server>::next(s);
    if (now_ - s->state_since_ > kClosingGrace) {
      finish_close(*s);
      maybe_free(*s);
    }
    s = next;
  }

  if (shutdown_ != ShutdownMode::none) begin_shutdown(shutdown_);
}

void Reactor::sweep_active(Pool& pool) {
  // Timeouts of linked clients: query, transaction, idle in transaction, and (session mode or
  // pinned) client idle. After each the server connection is left clean: the query cancelled,
  // the transaction rolled back by release(), or the connection closed.
  const config::Timeouts& t = pool.settings_.timeouts;
  const config::Duration cancel_wait = config_->timeouts.cancel_wait;  // process-wide
  auto expired = [&](Clock::time_point since, config::Duration limit) {
    return limit.count() > 0 && now_ - since >= limit;
  };
  for (Server* s = pool.active_servers_.front(); s != nullptr;) {
    Server* next = List<Server>::next(s);
    Client* c = s->client_;
    bool busy = s->requests_in_flight() > 0;
    if (c == nullptr) {
      if (s->state_ == ServerState::lookup &&
          expired(s->state_since_, config_->timeouts.client_login)) {
        close(*s, Reason::server_dirty, "auth.query did not finish within timeouts.client_login");
        s = next;
        continue;
      }
      // Draining after its client left: the cancel had cancel_wait to work.
      if (s->draining_ && now_ - s->drain_since_ > cancel_wait + std::chrono::seconds(1))
        close(*s, Reason::server_dirty, "did not finish after its client left");
      s = next;
      continue;
    }
    const Clock::time_point busy_since = s->requests_.busy_since();
    if (busy && expired(busy_since, t.query)) {
      if (s->query_timeout_canceled_for_ != busy_since) {
        s->query_timeout_canceled_for_ = busy_since;
        log::info("C-{} query timeout ({} ms): canceling on S-{}", c->id_, t.query.count(), s->id_);
        start_cancel(*s);
      } else if (expired(busy_since, t.query + cancel_wait)) {
        close(*c, Reason::query_timeout, "query timeout");
      }
    } else if (s->transaction_status_ != 'I' && expired(s->transaction_since_, t.transaction)) {
      close(*c, Reason::transaction_timeout, "terminating connection due to transaction timeout");
    } else if (!busy && s->transaction_status_ != 'I' &&
               expired(s->last_ready_, t.idle_transaction)) {
      close(*c, Reason::idle_transaction_timeout,
            "terminating connection due to idle-in-transaction timeout");
    } else if (!busy && s->idle_in_protocol() && c->stream_.input_size() == 0 &&
               expired(c->last_activity_, t.client_idle)) {
      // (A client linked this turn whose request is not forwarded yet is not idle.)
      close(*c, Reason::client_idle_timeout, "terminating connection due to idle-session timeout");
    }
    s = next;
  }
}

void Reactor::drop_unused_automatic_pools() {
  // The fallback database ("*") serves any name a client asks for: its pools go once unused for
  // timeouts.autodb_idle, so that the names tried once do not stay for ever.
  for (auto it = pools_.begin(); it != pools_.end();) {
    Pool& pool = *it->second;
    if (!pool.automatic_ || !pool.unused()) {
      pool.unused_since_ = {};
      ++it;
      continue;
    }
    if (pool.unused_since_ == Clock::time_point{}) pool.unused_since_ = now_;
    bool closing_client = false;  // a closing client still points at its pool
    for (Client* c = closing_clients_.front(); c != nullptr; c = List<Client>::next(c))
      closing_client |= c->pool_ == &pool;
    if (now_ - pool.unused_since_ < config_->timeouts.autodb_idle || closing_client) {
      ++it;
      continue;
    }
    log::info("pool {}/{}: unused for timeouts.autodb_idle; dropped", pool.database_,
              pool.user_name_);
    it = pools_.erase(it);
  }
}

void Reactor::feed_watchdog() {
  // systemd's watchdog is fed from reactor 0's loop, and only while every reactor's loop turns:
  // a reactor stuck for half the watchdog's timeout stops the pings (systemd then restarts
  // pgring, which is what a pooler with a frozen share of the clients needs). From STOPPING=1 on,
  // systemd no longer watches (and stopped reactors no longer turn).
  if (shutting_down()) return;
  for (int i = 0; i < shared_.workers(); ++i) {
    auto turned = Clock::time_point(Clock::duration(
        shared_.turned[static_cast<std::size_t>(i)].load(std::memory_order_relaxed)));
    if (now_ - turned > watchdog_interval_) {
      if (!watchdog_withheld_)
        log::error("reactor {} has not turned for {} ms: systemd's watchdog is not fed", i,
                   std::chrono::duration_cast<std::chrono::milliseconds>(now_ - turned).count());
      watchdog_withheld_ = true;
      return;
    }
  }
  if (watchdog_withheld_) log::info("every reactor turns again: feeding systemd's watchdog");
  watchdog_withheld_ = false;
  sd_notify(0, "WATCHDOG=1");
  next_watchdog_ = now_ + watchdog_interval_;
}

void Reactor::resume_service() {
  if (shutdown_ != ShutdownMode::handover) return;
  shutdown_ = ShutdownMode::none;
  try {
    listen();
    if (index_ == 0 && config_->metrics_listen && metrics_listener_.fd < 0) listen_metrics();
  } catch (const std::exception& e) {
    log::error("upgrade failed and listening again failed too: {}", e.what());
  }
  if (index_ == 0)
    sd_notify(0,
              fmt::format("READY=1\nSTATUS=accepting connections\nMAINPID={}", getpid()).c_str());
}

void Reactor::begin_shutdown(ShutdownMode mode) {
  const bool handover = mode == ShutdownMode::handover || shutdown_ == ShutdownMode::handover;
  if (shutdown_ == ShutdownMode::none) {
    // systemd learns at once that the service is stopping (not once the drain is over). An
    // upgrade's old process is not: the new one is the service now.
    if (index_ == 0 && !handover) sd_notify(0, "STOPPING=1");
    shutdown_deadline_ =
        now_ + (mode == ShutdownMode::immediate ? config::Duration(0) : config_->timeouts.shutdown);
    // (An upgrade with timeouts.shutdown 0 still hands its idle clients over: their sockets
    // move once their receive is cancelled, within this second.)
    if (handover) shutdown_deadline_ = std::max(shutdown_deadline_, now_ + std::chrono::seconds(1));
    close_listeners(handover);  // (an upgrade: the new process accepts on the same sockets)
  }
  if (mode == ShutdownMode::immediate || now_ >= shutdown_deadline_)
    shutdown_ = ShutdownMode::immediate;
  else
    shutdown_ = handover ? ShutdownMode::handover : ShutdownMode::graceful;
  bool immediate = shutdown_ == ShutdownMode::immediate;
  // Handing over, clients logging in or waiting for a server are served here and go once idle;
  // TLS, session-mode and pinned clients stay until they leave or timeouts.shutdown passes.
  bool handing_over = shutdown_ == ShutdownMode::handover;

  for (List<Client>* list : {&login_clients_, &admin_clients_}) {
    if (handing_over && list == &login_clients_) continue;
    for (Client* c = list->front(); c != nullptr;) {
      Client* next = List<Client>::next(c);
      close(*c, Reason::shutdown, "shutting down");
      c = next;
    }
  }
  for (auto& [key, pool] : pools_) {
    (void)key;
    for (List<Client>* list : {&pool->waiting_clients_, &pool->idle_clients_}) {
      for (Client* c = list->front(); c != nullptr;) {
        Client* next = List<Client>::next(c);
        if (!handing_over)
          close(*c, Reason::shutdown, "shutting down");
        else if (c->can_hand_over())
          close(*c, Reason::handed_over);
        c = next;
      }
    }
    for (Client* c = pool->active_clients_.front(); c != nullptr;) {
      Client* next = List<Client>::next(c);
      if (handing_over) break;
      // Graceful: a client whose server is between transactions may go now; others finish.
      Server* s = c->server_;
      // (Input not forwarded yet: a request linked this turn, about to run.)
      bool between = s == nullptr || (s->idle_in_protocol() && s->restore_replies_pending_ == 0 &&
                                      c->stream_.input_size() == 0);
      if (immediate || between) close(*c, Reason::shutdown, "shutting down");
      c = next;
    }
  }
  bool clients_left = client_count_ > 0;
  for (auto& [key, pool] : pools_) {
    (void)key;
    for (Server* s = pool->idle_servers_.front(); s != nullptr;) {
      Server* next = List<Server>::next(s);
      close(*s, Reason::shutdown);
      s = next;
    }
    if (!clients_left || immediate) {
      for (List<Server>* list :
           {&pool->connecting_servers_, &pool->resetting_servers_, &pool->active_servers_,
            &pool->canceling_servers_, &pool->listening_servers_}) {
        for (Server* s = list->front(); s != nullptr;) {
          Server* next = List<Server>::next(s);
          close(*s, Reason::shutdown);
          s = next;
        }
      }
    }
  }
  bool servers_left = false;
  for (auto& [key, pool] : pools_) {
    (void)key;
    servers_left |= pool->server_count() > 0;
  }
  if (!clients_left && !servers_left && closing_clients_.empty() && closing_servers_.empty() &&
      cancellers_.empty() && http_conns_.empty())
    stopped_ = true;
  // Immediate mode waits at most a second for peers to read their last bytes.
  if (immediate && now_ >= shutdown_deadline_ + std::chrono::seconds(1)) {
    if (!stopped_)
      log::warning(
          "shutdown: stopping with {} clients, {} closing clients, {} closing servers, {} cancels "
          "left",
          client_count_, closing_clients_.size(), closing_servers_.size(), cancellers_.size());
    stopped_ = true;
  }
}

}  // namespace pgring
