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

// ---------------------------------------------------------------------------------------------
// Closing: one way out

void Reactor::close(Client& client, Reason reason, std::string_view message,
                    std::string_view server_sqlstate) {
  if (client.state_ == ClientState::closing) return;
  ++disconnects_[static_cast<std::size_t>(reason)];
  if (client.db_counted_ != nullptr) {
    client.db_counted_->release();
    client.user_counted_->release();
    client.db_counted_ = client.user_counted_ = nullptr;
  }
  end_login(client);  // (a turn of max_concurrent_logins goes to the next client)
  if (Client::Login* login = client.login_.get()) {
    if (Pool* lookups = login->lookup_pool) {
      std::erase(lookups->lookups_, &client);
      login->lookup_pool = nullptr;
    }
    if (Server* lookup = login->lookup_server) {
      lookup->lookup_client_ = nullptr;  // the lookup finishes on its own; nobody waits for it
      login->lookup_server = nullptr;
    }
  }
  std::string_view state = server_sqlstate.empty() ? sqlstate(reason) : server_sqlstate;
  // log.disconnections: every close at info with its reason (PgBouncer's default), else only
  // those a client did not ask for (an ordinary goodbye at debug). A cancel request's own
  // connection is no session: always debug.
  bool ordinary = reason == Reason::client_eof || reason == Reason::client_terminate ||
                  reason == Reason::handed_over;
  bool quiet = reason == Reason::cancel_request || (ordinary && !config_->log_disconnections);
  log::Fields fields{
      .event = "client_close",
      .client = client.id_,
      .server = 0,
      .database = client.pool_ != nullptr ? std::string_view(client.pool_->database_)
                                          : client.startup_message().database,
      .user = client.startup_message().user,
      .peer = client.peer_,
      .reason = name(reason),
      .sqlstate = state,
      .duration_ms = std::chrono::duration<double, std::milli>(now_ - client.connected_).count()};
  log::event(quiet ? config::LogLevel::debug : config::LogLevel::info, fields,
             "C-{} closed: {}{}{}", client.id_, name(reason), message.empty() ? "" : ": ", message);
  // No error in the middle of a message being streamed to the client: it would be read as
  // part of that message. The client sees the connection end instead.
  bool mid_message = client.server_ != nullptr && client.server_->forward_remaining_ > 0;
  // Before (or after a broken) TLS handshake nothing the client could read can be sent.
  bool tls_broken = client.stream_.tls() != nullptr &&
                    (!client.stream_.tls()->handshake_done() || client.stream_.tls_failed());
  if (!state.empty() && reason != Reason::client_io_error && !mid_message && !tls_broken &&
      !client.error_forwarded_) {
    std::string text = server_sqlstate.empty() ? "pgring: " : "";
    text += message.empty() ? name(reason) : message;
    (void)client.stream_.emit(
        [&](std::string& out) { return proto::build::error_response(out, "FATAL", state, text); });
    want_send(client.stream_);
  }
  // Unlink the server first: it goes back to the pool (reset) or is closed if not clean.
  if (Server* server = client.server_) {
    client.server_ = nullptr;
    server->client_ = nullptr;
    if (server->state_ == ServerState::active) {
      if (client.forward_remaining_ > 0)
        // Half a message sent: the connection cannot be reused.
        close(*server, Reason::server_dirty, "client left in the middle of a message");
      else
        server->release(client.pool_->settings_.pool_mode == config::PoolMode::session ||
                        client.pinned_state_ != 0);
    }
  }
  if (client.cancel_pid_ != 0) forget_cancel_key(client);
  Pool* pool = client.pool_;
  set_state(client, ClientState::closing);
  if (client.listening_ && pool != nullptr) {
    // (A client handed over takes its subscriptions along: the record is written later.)
    std::vector<std::string> channels;
    if (reason == Reason::handed_over) channels = client.listening_->channels;
    pool->unsubscribe_all(client);
    client.listening_->channels = std::move(channels);
  }
  --client_count_;
  shared_.clients.fetch_sub(1, std::memory_order_relaxed);
  client.stream_.reading_paused_ = true;
  if (reason == Reason::handed_over) {
    // Its socket goes to the new process once nothing is in flight: the multishot receive is
    // cancelled (bytes that arrive meanwhile are kept and go along), its last reply sent.
    client.handover_ = true;
    if (client.stream_.recv_armed_ && !client.stream_.recv_canceling_) {
      io_cancel(client.stream_.recv_op_, client.stream_.fd);
      client.stream_.recv_canceling_ = true;
    }
    if (client.stream_.has_output()) want_send(client.stream_);
    if (pool != nullptr) pool->maintain();
    maybe_free(client);
    return;
  }
  if (client.stream_.has_output())
    want_send(client.stream_);  // the error, or a TLS alert
  else if (!client.stream_.send_in_flight())
    finish_close(client);
  if (pool != nullptr) pool->maintain();
  maybe_free(client);
}

void Reactor::close(Server& server, Reason reason, std::string_view message) {
  if (server.state_ == ServerState::closing) return;
  ++disconnects_[static_cast<std::size_t>(reason)];
  log::event(
      config::LogLevel::info,
      {.event = "server_close",
       .client = 0,
       .server = server.id_,
       .database = server.pool_.database_,
       .user = server.pool_.user_name_,
       .peer = {},
       .reason = name(reason),
       .sqlstate = {},
       .duration_ms = std::chrono::duration<double, std::milli>(now_ - server.created_).count()},
      "S-{} closed ({}/{}): {}{}{}", server.id_, server.pool_.database_, server.pool_.user_name_,
      name(reason), message.empty() ? "" : ": ", message);
  ServerState was = server.state_;
  Pool& pool = server.pool_;
  server.end_login_count();
  if (server.listener_) pool.listener_closed(server, message);
  if (Client* client = server.lookup_client_) {
    server.lookup_client_ = nullptr;
    client->login_->lookup_server = nullptr;
    close(*client, Reason::auth_query_failed,
          fmt::format("auth.query failed: server connection lost{}{}", message.empty() ? "" : ": ",
                      message));
  }
  if (Client* client = server.client_) {
    // Session state is gone with the server: the client cannot go on.
    server.client_ = nullptr;
    client->server_ = nullptr;
    if (server.fatal_forwarded_)
      close(*client, Reason::server_terminated, message);
    else
      close(*client, Reason::server_connection_lost,
            message.empty() ? std::string("server connection lost")
                            : "server connection lost: " + std::string(message));
  }
  set_state(server, ServerState::closing);
  server.stream_.reading_paused_ = true;
  server.stream_.discard_all();
  // A healthy server gets a polite Terminate; one that failed gets its socket shut down.
  bool polite = (was == ServerState::idle || was == ServerState::listening ||
                 reason == Reason::server_idle_timeout || reason == Reason::server_lifetime ||
                 reason == Reason::shutdown || reason == Reason::server_dirty ||
                 reason == Reason::replication_ended) &&
                reason != Reason::server_eof && reason != Reason::server_io_error;
  if (polite && server.stream_.fd >= 0 && was != ServerState::connecting) {
    // An idle server reads the Terminate at once: wait for it to close its end (below).
    server.await_eof_ = was == ServerState::idle || was == ServerState::listening;
    (void)server.stream_.emit([](std::string& out) { return proto::build::terminate(out); });
    want_send(server.stream_);
  } else {
    finish_close(server);
  }
  // (A refused startup parameter is its clients' failure, not the server's; a listening
  // connection retired on its way in failed at nothing.)
  bool deliberate =
      reason == Reason::startup_rejected || reason == Reason::listen_ended ||
      (server.listener_ && (reason == Reason::config_changed || reason == Reason::admin_reconnect ||
                            reason == Reason::shutdown));
  if ((was == ServerState::connecting || was == ServerState::login) && !deliberate &&
      !pool.host_failed(server, reason, server.login_error_sqlstate_)) {
    if (server.login_error_sqlstate_.empty())
      pool.on_server_failed(reason, {}, message);
    else
      pool.on_server_failed(reason, server.login_error_sqlstate_, server.login_error_message_);
  }
  pool.maintain();
  maybe_free(server);
}

void Reactor::finish_close(Client& client) {
  if (client.handover_) {
    // Its handover cannot complete (a send failed, or it would not read its last reply within
    // the closing grace): it is closed here instead, and sees its connection end.
    log::warning("C-{} could not be handed over: closed", client.id_);
    client.handover_ = false;
  }
  if (client.shut_down_) return;
  client.shut_down_ = true;
  // shutdown() wakes an armed recv (it completes with 0); close() alone would not.
  if (client.stream_.fd >= 0) ::shutdown(client.stream_.fd, SHUT_RDWR);
}

void Reactor::finish_close(Server& server) {
  if (server.shut_down_) return;
  server.shut_down_ = true;
  if (server.stream_.fd < 0) return;
  if (server.state_ == ServerState::closing && server.ops_in_flight_ > 0) {
    // A connect in flight is not woken by shutdown(): cancel every request on the socket.
    io_cancel_fd(server.stream_.fd);
  }
  ::shutdown(server.stream_.fd, SHUT_RDWR);
}

void Reactor::maybe_free(Client& client) {
  if (client.state_ != ClientState::closing || client.ops_in_flight_ > 0) return;
  if (client.freed_) return;
  if (client.handover_) {
    if (client.stream_.has_output()) return;  // its last reply goes out first
    send_handed_over(client);                 // (the socket is the new process's now: fd is -1)
  } else if (!client.shut_down_) {
    return;
  }
  client.freed_ = true;
  if (!handover_candidates_.empty()) std::erase(handover_candidates_, &client);
  release_stream(client.stream_);
  unlink(&client);
  free_clients_.push_back(&client);
}

void Reactor::maybe_free(Server& server) {
  if (server.state_ != ServerState::closing || server.ops_in_flight_ > 0 || !server.shut_down_)
    return;
  if (server.cancels_in_flight_ > 0) return;  // a Canceller still points here
  if (server.freed_) return;
  server.freed_ = true;
  release_stream(server.stream_);
  unlink(&server);
  free_servers_.push_back(&server);
  // The server's slots in the pool's and the database's budgets: given to the reactor it was
  // closed for (Pool::give_slot), or free for the pools of this database with waiting clients,
  // here and on the reactors that said they starve for one.
  Pool& pool = server.pool_;
  if (server.endpoint_ != nullptr) --server.endpoint_->connections;
  --pool.servers_closing_;
  int to = server.slot_for_;
  if (server.listener_) {
    // (Counted in the database's budget only.) Its successor, if the subscribers need one,
    // opens with this unit.
    if (pool.reuse_listener_unit()) return;
    pool.db_budget_->release_from(index_);
    slot_freed(*pool.db_budget_, *pool.db_budget_, pool.database_);
    retry_database(pool.database_);
    return;
  }
  if (to >= 0) {
    if (server.slot_for_pool_)
      pool.budget_->give(to);
    else
      pool.budget_->release_from(index_);
    pool.db_budget_->give(to);
    if (Reactor* r = shared_.reactors[static_cast<std::size_t>(to)].load())
      r->post([database = pool.database_](Reactor& other) { other.retry_database(database); });
    if (server.slot_for_pool_) return;
  } else {
    pool.budget_->release_from(index_);
    pool.db_budget_->release_from(index_);
  }
  slot_freed(*pool.budget_, *pool.db_budget_, pool.database_);
  retry_database(pool.database_);
}

void Reactor::slot_freed(const Budget& pool_budget, const Budget& db_budget,
                         const std::string& database) {
  std::uint64_t starving = (pool_budget.starving.load(std::memory_order_relaxed) |
                            db_budget.starving.load(std::memory_order_relaxed)) &
                           ~(std::uint64_t{1} << index_);
  for (int i = 0; starving != 0 && i < shared_.workers(); ++i) {
    if ((starving & (std::uint64_t{1} << i)) == 0) continue;
    if (Reactor* r = shared_.reactors[static_cast<std::size_t>(i)].load())
      r->post([database](Reactor& other) { other.retry_database(database); });
  }
}

}  // namespace pgring
