#include "daemon/core/reactor.hpp"

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
#include "proto/builders.hpp"

namespace pgring {

namespace {
// The sweep (timeouts, budgets, the watchdog) runs this often.
constexpr auto kSweepInterval = std::chrono::milliseconds(100);
}  // namespace

std::string errno_text(int err) {
  return std::strerror(err);
}

Reactor::Reactor(Shared& shared, int index, std::shared_ptr<const config::Config> config,
                 std::shared_ptr<const TlsContexts> tls, std::string config_path)
    : shared_(shared),
      index_(index),
      config_(std::move(config)),
      tls_(std::move(tls)),
      config_path_(std::move(config_path)) {
  queries_.configure(*config_);
  start_engine();
  startups_.set_ignored(config_->ignore_startup_parameters);
  now_ = Clock::now();
  next_sweep_ = now_ + kSweepInterval;
  shared_.turned[static_cast<std::size_t>(index_)].store(now_.time_since_epoch().count(),
                                                         std::memory_order_relaxed);
  std::uint64_t watchdog_usec = 0;
  if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0)
    watchdog_interval_ = std::chrono::microseconds(watchdog_usec / 2);

  mailbox_fd_ = eventfd(0, EFD_CLOEXEC);
  if (mailbox_fd_ < 0) throw std::runtime_error("eventfd: " + errno_text(errno));
  arm_mailbox();
  if (index_ != 0) return;
  // Signals go to reactor 0, which tells the others.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigaddset(&mask, SIGUSR1);
  sigaddset(&mask, SIGUSR2);
  signal_fd_ = signalfd(-1, &mask, SFD_CLOEXEC);
  if (signal_fd_ < 0) throw std::runtime_error("signalfd: " + errno_text(errno));
  arm_signal();
}

// ---------------------------------------------------------------------------------------------
// Between reactors: a mailbox of tasks, rung with an eventfd read by the ring.

void Reactor::post(std::function<void(Reactor&)> task) {
  {
    std::lock_guard lock(mailbox_mutex_);
    mailbox_.push_back(std::move(task));
  }
  std::uint64_t one = 1;
  (void)!::write(mailbox_fd_, &one, sizeof one);
}

void Reactor::arm_mailbox() {
  io_read(mailbox_op_, mailbox_fd_, &mailbox_count_, sizeof mailbox_count_);
}

void Reactor::run_mailbox() {
  // (A task may post again, or gather: gathering runs the later tasks itself.)
  std::vector<std::function<void(Reactor&)>> tasks;
  {
    std::lock_guard lock(mailbox_mutex_);
    tasks.swap(mailbox_);
  }
  for (auto& task : tasks) task(*this);
}

void Reactor::broadcast(const std::function<void(Reactor&)>& task) {
  for (int i = 0; i < shared_.workers(); ++i) {
    Reactor* r = shared_.reactors[static_cast<std::size_t>(i)].load();
    if (r == nullptr) continue;
    if (r == this)
      task(*this);
    else
      r->post(task);
  }
}

void Reactor::free_database(const std::string& address, const std::string& database) {
  // The other reactors' closes run while the command is on its way: PostgreSQL waits for the
  // sessions to leave (up to 5 s), so they are in time.
  broadcast([address, database](Reactor& r) {
    for (auto& [key, pool] : r.pools_) {
      (void)key;
      if (pool->address_text() == address && pool->server_database() == database)
        pool->free_database();
    }
  });
}

void Reactor::hosts_changed(const std::string& database) {
  // (An automatic pool follows the fallback entry "*".)
  for (auto& [key, pool] : pools_) {
    (void)key;
    bool ours =
        pool->automatic_ ? database == config::kFallbackDatabase : pool->db_.name == database;
    if (ours) pool->hosts_changed();
  }
}

void Reactor::retry_database(const std::string& database) {
  for (auto& [key, pool] : pools_) {
    (void)key;
    if (pool->database_ == database && !pool->waiting_clients_.empty()) pool->maintain();
  }
  // Slots another reactor gave this one that no pool here took (its clients were served
  // meanwhile, or left) go back to whoever starves for them.
  Budget& db_budget = database_budget(database);
  for (auto& [key, pool] : pools_) {
    (void)key;
    if (pool->database_ == database && pool->budget_->gifts[static_cast<std::size_t>(index_)].load(
                                           std::memory_order_relaxed) > 0) {
      pool->budget_->return_gifts(index_);
      slot_freed(*pool->budget_, db_budget, database);
    }
  }
  if (db_budget.return_gifts(index_) > 0) slot_freed(db_budget, db_budget, database);
}

Budget& Reactor::database_budget(const std::string& database) {
  Budget*& b = database_budgets_[database];
  if (b == nullptr) b = &shared_.database_budget(database);
  return *b;
}

Reactor::~Reactor() {
  close_listeners();
  if (metrics_listener_.fd >= 0) ::close(metrics_listener_.fd);
  if (mailbox_fd_ >= 0) ::close(mailbox_fd_);
  // Exiting the ring cancels and waits for every request still in flight, so no kernel
  // operation refers to a connection or buffer after this point. (The epoll engine does
  // nothing behind our back: dropping it is enough.)
  if (epoll_)
    epoll_.reset();
  else
    io_uring_queue_exit(&ring_);
  auto free_clients = [](List<Client>& list) {
    while (Client* c = list.pop_front()) {
      if (c->stream_.fd >= 0) ::close(c->stream_.fd);
      c->stream_.fd = -1;
      delete c;
    }
  };
  auto free_servers = [](List<Server>& list) {
    while (Server* s = list.pop_front()) {
      if (s->stream_.fd >= 0) ::close(s->stream_.fd);
      s->stream_.fd = -1;
      delete s;
    }
  };
  free_clients(login_clients_);
  free_clients(admin_clients_);
  free_clients(closing_clients_);
  free_servers(closing_servers_);
  for (auto& [key, pool] : pools_) {
    (void)key;
    free_clients(pool->idle_clients_);
    free_clients(pool->waiting_clients_);
    free_clients(pool->active_clients_);
    free_servers(pool->connecting_servers_);
    free_servers(pool->idle_servers_);
    free_servers(pool->active_servers_);
    free_servers(pool->resetting_servers_);
    free_servers(pool->canceling_servers_);
    free_servers(pool->listening_servers_);
  }
  for (Client* c : free_clients_) delete c;
  for (Server* s : free_servers_) delete s;
  while (Canceller* c = cancellers_.pop_front()) {
    if (c->stream_.fd >= 0) ::close(c->stream_.fd);
    c->stream_.fd = -1;
    delete c;
  }
  for (Canceller* c : free_cancellers_) delete c;
  while (HttpConn* h = http_conns_.pop_front()) {
    if (h->stream_.fd >= 0) ::close(h->stream_.fd);
    h->stream_.fd = -1;
    delete h;
  }
  for (HttpConn* h : free_http_) delete h;
  pools_.clear();
  buffers_.reset();
  if (signal_fd_ >= 0) ::close(signal_fd_);
}

// ---------------------------------------------------------------------------------------------
// The loop

int Reactor::run() {
  open_warm_pools();
  while (!stopped_) run_once();
  // Let cancelled operations complete before the listeners and buffers go away.
  if (!epoll_) io_uring_submit(&ring_);
  return 0;
}

void Reactor::run_once() {
  submit();                // every stream's queued output in one send; starved receives re-armed
  wait_for_completions();  // at least one, or until the next sweep is due
  run_completions();       // reap the batch, advance the CQ once, then run the handlers
  if (!login_queue_.empty()) admit_logins();  // max_concurrent_logins: turns freed meanwhile
  forward_linked();  // clients that got a server meanwhile send what they queued
  if (now_ >= next_sweep_) {
    sweep();  // timeouts, budgets, the watchdog: one walk over the state lists
    next_sweep_ = now_ + kSweepInterval;
  }
  if (!handover_candidates_.empty()) hand_over_idle();  // an upgrade: clients that went idle
  free_closed();  // connections whose last operation completed during this turn
}

void Reactor::submit() {
  forward_linked();  // links made by the sweep (or outside a completion) go out in this batch
  buffers_->publish();
  rearm_starved();
  submit_sends();
}

void Reactor::wait_for_completions() {
  auto wait = std::chrono::duration_cast<std::chrono::nanoseconds>(next_sweep_ - Clock::now());
  if (wait.count() < 0) wait = std::chrono::nanoseconds(0);
  __kernel_timespec ts{};
  ts.tv_sec = wait.count() / 1000000000;
  ts.tv_nsec = wait.count() % 1000000000;
  ++ring_counters_.enters;
  if (epoll_) {
    epoll_->run(wait);
    now_ = Clock::now();
    return;
  }
  io_uring_cqe* cqe = nullptr;
  int rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
  if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
    log::error("io_uring wait failed: {}", errno_text(-rc));
  now_ = Clock::now();
}

void Reactor::run_completions() {
  if (epoll_) {
    // This turn's completions (handlers may add more: they wait for the next turn).
    std::vector<EpollEngine::Completion> done;
    done.swap(epoll_->completions());
    ring_counters_.cqes += done.size();
    for (const EpollEngine::Completion& c : done) dispatch(c.op, c.res, c.flags);
    return;
  }
  constexpr unsigned kBatch = 256;
  io_uring_cqe* batch[kBatch];
  // What a handler needs of a completion, copied first: handlers may submit, and the CQ slots
  // are reused once advanced.
  struct Done {
    Operation* op;
    int res;
    unsigned flags;
  } done[kBatch];
  for (;;) {
    unsigned n = io_uring_peek_batch_cqe(&ring_, batch, kBatch);
    if (n == 0) break;
    ring_counters_.cqes += n;
    for (unsigned i = 0; i < n; ++i)
      done[i] = {static_cast<Operation*>(io_uring_cqe_get_data(batch[i])), batch[i]->res,
                 batch[i]->flags};
    io_uring_cq_advance(&ring_, n);
    for (unsigned i = 0; i < n; ++i) dispatch(done[i].op, done[i].res, done[i].flags);
    if (n < kBatch) break;
  }
}

void Reactor::dispatch(Operation* op, int res, unsigned flags) {
  if (op == nullptr) return;
  // Each kind of operation has one handler; its owner is the connection that submitted it.
  switch (op->kind) {
    case Operation::Kind::client_recv:
      on_client_recv(*static_cast<Client*>(op->owner), res, flags);
      break;
    case Operation::Kind::client_send:
      on_client_send(*static_cast<Client*>(op->owner), res);
      break;
    case Operation::Kind::server_recv:
      on_server_recv(*static_cast<Server*>(op->owner), res, flags);
      break;
    case Operation::Kind::server_send:
      on_server_send(*static_cast<Server*>(op->owner), res);
      break;
    case Operation::Kind::accept:
      on_accept(*static_cast<Listener*>(op->owner), res, flags);
      break;
    case Operation::Kind::server_connect:
      on_server_connect(*static_cast<Server*>(op->owner), res);
      break;
    case Operation::Kind::cancel_connect:
      on_cancel_connect(*static_cast<Canceller*>(op->owner), res);
      break;
    case Operation::Kind::cancel_send:
      on_cancel_send(*static_cast<Canceller*>(op->owner), res);
      break;
    case Operation::Kind::cancel_recv:
      on_cancel_recv(*static_cast<Canceller*>(op->owner), res, flags);
      break;
    case Operation::Kind::http_accept:
      on_http_accept(res, flags);
      break;
    case Operation::Kind::http_recv:
      on_http_recv(*static_cast<HttpConn*>(op->owner), res, flags);
      break;
    case Operation::Kind::http_send:
      on_http_send(*static_cast<HttpConn*>(op->owner), res);
      break;
    case Operation::Kind::signal:
      on_signal(res);
      break;
    case Operation::Kind::mailbox:
      run_mailbox();
      if (!stopped_) arm_mailbox();
      break;
    case Operation::Kind::ignore:
      break;
  }
}

void Reactor::forward_linked() {
  // Indexed: forwarding can end a link, and the freed server can link the next client (pushed
  // here while we walk). Closed clients are freed only after this (free_closed).
  for (std::size_t i = 0; i < linked_.size(); ++i) {
    Client& client = *linked_[i];
    if (client.state_ != ClientState::active || client.server_ == nullptr) continue;
    if (client.stream_.input_size() > 0) client.forward_to_server();
    if (client.state_ == ClientState::active) arm_recv_for(client);
  }
  linked_.clear();
}

void Reactor::free_closed() {
  for (Client* c : free_clients_) delete c;
  free_clients_.clear();
  for (Server* s : free_servers_) delete s;
  free_servers_.clear();
  for (Canceller* c : free_cancellers_) delete c;
  free_cancellers_.clear();
  for (HttpConn* h : free_http_) delete h;
  free_http_.clear();
}

io_uring_sqe* Reactor::get_sqe() {
  ++ring_counters_.sqes;
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    // The submission queue is full: hand what we have to the kernel and take a fresh slot.
    ++ring_counters_.enters;
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

// ---- receives and sends of client and server connections -------------------------------------

Reactor::Received Reactor::receive(Stream& stream, int& ops, int result, unsigned flags,
                                   bool closing) {
  // A multishot receive stays armed while the kernel says more will come.
  const bool more = (flags & IORING_CQE_F_MORE) != 0;
  if (!more) {
    --ops;
    stream.recv_armed_ = false;
  }
  if (flags & IORING_CQE_F_BUFFER) {
    auto bid = static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
    stream.on_received(bid, static_cast<std::uint32_t>(result > 0 ? result : 0));
  }
  if (closing) {
    stream.discard_all();
    return Received::closing;
  }
  if (!more && stream.recv_canceling_) {
    // The receive pgring cancelled (reading paused) ended, by the cancel or on its own.
    stream.recv_canceling_ = false;
    if (result == -ECANCELED) return Received::canceled;
  }
  if (result == -ENOBUFS) {
    // The ring ran dry: re-armed when buffers come back (rearm_starved), not an error.
    stream.starved_ = true;
    starved_.emplace_back(&stream, &ops);
    return Received::starved;
  }
  if (result == 0) return Received::eof;
  if (result < 0) return Received::error;
  if (more && stream.reading_paused_ && !stream.recv_canceling_) {
    // Flow control paused this stream's reading: a single-shot receive would simply not be
    // armed again; a multishot one is cancelled (these bytes, and any already on their way,
    // are kept: at most a buffer or two).
    io_cancel(stream.recv_op_, stream.fd);
    stream.recv_canceling_ = true;
  }
  if (stream.tls() != nullptr) {
    if (stream.tls_failed()) return Received::tls_failed;
    if (stream.has_output()) want_send(stream);  // handshake records, alerts
  }
  return Received::bytes;
}

void Reactor::on_client_recv(Client& client, int result, unsigned flags) {
  if (client.handover_) {
    on_handover_recv(client, result, flags);
    return;
  }
  switch (receive(client.stream_, client.ops_in_flight_, result, flags,
                  client.state_ == ClientState::closing)) {
    case Received::closing:
      if (result > 0 && !client.shut_down_)
        arm_recv(client.stream_, client.ops_in_flight_);  // drain until EOF
      maybe_free(client);
      return;
    case Received::starved:
      return;
    case Received::canceled:
      arm_recv(client.stream_, client.ops_in_flight_);  // unless still paused
      return;
    case Received::eof:
      close(client, Reason::client_eof);
      return;
    case Received::error:
      close(client, Reason::client_io_error, errno_text(-result));
      return;
    case Received::tls_failed: {
      TlsSession& tls = *client.stream_.tls();
      if (tls.peer_closed()) {
        client.on_input();  // what came before close_notify (a Terminate, say) still counts
        if (client.state_ != ClientState::closing) close(client, Reason::client_eof);
      } else {
        close(client, Reason::tls_error, tls.error());
      }
      return;
    }
    case Received::bytes:
      break;
  }
  ++ring_counters_.client_receives;
  client.last_activity_ = now_;
  if (client.pool_ != nullptr)
    client.pool_->stats_.bytes_received += static_cast<std::uint64_t>(result);
  // A login starts with its first bytes, when max_concurrent_logins has a turn free.
  if (client.login_ != nullptr && client.login_->turn == Client::Login::Turn::none &&
      client.state_ == ClientState::startup && !take_login_turn(client))
    return;
  // The data path goes straight to the forwarding loop; every other state through on_input.
  if (client.state_ == ClientState::active)
    client.forward_to_server();
  else
    client.on_input();
  if (client.state_ == ClientState::closing) return;
  // Bytes that are not moving on (a client waiting for a server) leave the shared ring now.
  if (client.state_ != ClientState::active && client.stream_.input_size() > 0)
    client.stream_.detach_input();
  arm_recv(client.stream_, client.ops_in_flight_);
}

void Reactor::on_handover_recv(Client& client, int result, unsigned flags) {
  switch (receive(client.stream_, client.ops_in_flight_, result, flags, false)) {
    case Received::eof:
    case Received::error:
    case Received::tls_failed:
      // It left (or broke) before its socket moved: nothing to hand over.
      client.handover_ = false;
      finish_close(client);
      break;
    case Received::bytes:
    case Received::canceled:
    case Received::starved:
    case Received::closing:
      break;  // (bytes stay in its input; nothing re-arms: reading is paused)
  }
  maybe_free(client);
}

Reactor::Sent Reactor::sent(Stream& stream, int& ops, int result) {
  --ops;
  if (result < 0) {
    stream.send_failed();
    return Sent::failed;
  }
  bool done = stream.on_sent(static_cast<std::uint32_t>(result));
  return !done || stream.has_output() ? Sent::more : Sent::done;
}

void Reactor::on_client_send(Client& client, int result) {
  switch (sent(client.stream_, client.ops_in_flight_, result)) {
    case Sent::failed:
      if (client.state_ != ClientState::closing)
        close(client, Reason::client_io_error, errno_text(-result));
      else
        finish_close(client);
      maybe_free(client);
      return;
    case Sent::more:
      want_send(client.stream_);
      break;
    case Sent::done:
      if (client.state_ == ClientState::closing && !client.handover_) finish_close(client);
      if (client.state_ == ClientState::idle) client.stream_.trim();  // its last reply is out
      break;
  }
  if (client.state_ != ClientState::closing) resume_peer_reading(client.stream_);
  maybe_free(client);
}

void Reactor::on_server_recv(Server& server, int result, unsigned flags) {
  switch (receive(server.stream_, server.ops_in_flight_, result, flags,
                  server.state_ == ServerState::closing)) {
    case Received::closing:
      if (result > 0 && !server.shut_down_) {
        server.stream_.reading_paused_ = false;  // read (and drop) until PostgreSQL closes its end
        arm_recv(server.stream_, server.ops_in_flight_);
      } else if (result <= 0 && result != -ENOBUFS) {
        finish_close(server);  // EOF after our Terminate
      }
      maybe_free(server);
      return;
    case Received::starved:
      return;
    case Received::canceled:
      arm_recv(server.stream_, server.ops_in_flight_);  // unless still paused
      return;
    case Received::eof:
      close(server, Reason::server_eof, "server closed the connection unexpectedly");
      return;
    case Received::error:
      close(server, Reason::server_io_error, errno_text(-result));
      return;
    case Received::tls_failed: {
      TlsSession& tls = *server.stream_.tls();
      if (tls.peer_closed()) {
        server.on_input();  // PostgreSQL sends its FATAL error before close_notify
        if (server.state_ != ServerState::closing)
          close(server, Reason::server_eof, "server closed the TLS session");
      } else {
        close(server,
              server.state_ == ServerState::login ? Reason::server_login_failed
                                                  : Reason::server_io_error,
              tls.error());
      }
      return;
    }
    case Received::bytes:
      break;
  }
  ++ring_counters_.server_receives;
  server.pool_.stats_.bytes_sent += static_cast<std::uint64_t>(result);
  if (server.state_ == ServerState::active)
    server.forward_to_client();
  else
    server.on_input();
  if (server.state_ != ServerState::closing) arm_recv(server.stream_, server.ops_in_flight_);
}

void Reactor::on_server_send(Server& server, int result) {
  Sent outcome = sent(server.stream_, server.ops_in_flight_, result);
  if (outcome == Sent::failed) {
    if (server.state_ != ServerState::closing)
      close(server, Reason::server_io_error, errno_text(-result));
    else
      finish_close(server);
    maybe_free(server);
    return;
  }
  if (outcome == Sent::more) {
    want_send(server.stream_);
  } else if (server.state_ == ServerState::closing) {
    // Terminate sent to an idle server: wait for PostgreSQL to close its end. By then the backend
    // has left pg_stat_activity, so the slot this connection frees is really free (pool_size counts
    // what the server sees, also when the slot moves to another reactor). kClosingGrace bounds
    // the wait.
    if (server.await_eof_ && !server.stream_.recv_armed_) {
      server.stream_.reading_paused_ = false;
      arm_recv(server.stream_, server.ops_in_flight_);
    }
    if (!server.await_eof_ || !server.stream_.recv_armed_) finish_close(server);
  }
  if (server.state_ != ServerState::closing) resume_peer_reading(server.stream_);
  maybe_free(server);
}

void Reactor::on_server_connect(Server& server, int result) {
  --server.ops_in_flight_;
  if (server.state_ == ServerState::closing) {
    maybe_free(server);
    return;
  }
  if (result < 0) {
    close(server, Reason::server_unreachable,
          fmt::format("could not connect to server {}: {}", server.endpoint_->text,
                      errno_text(-result)));
    return;
  }
  int one = 1;
  setsockopt(server.stream_.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (!server.endpoint_->unix_socket()) apply_tcp_options(server.stream_.fd, config().tcp);
  server.on_connected();
  if (server.state_ != ServerState::closing) arm_recv(server.stream_, server.ops_in_flight_);
}

void Reactor::want_send(Stream& stream) {
  if (stream.flush_queued_) return;
  stream.flush_queued_ = true;
  flush_list_.push_back(&stream);
}

void Reactor::submit_sends() {
  std::vector<Stream*> tls_failed;
  for (Stream* s : flush_list_) {
    s->flush_queued_ = false;
    if (s->fd < 0 || s->send_in_flight() || !s->has_output()) continue;
    msghdr* batch = s->prepare_send();
    if (s->tls() != nullptr && s->tls_failed()) tls_failed.push_back(s);  // encrypting failed
    if (batch == nullptr) continue;
    io_send(s->send_op_, s->fd, *batch);
    // The owner counts the operation: it may not be freed before the send completes.
    switch (s->send_op_.kind) {
      case Operation::Kind::client_send:
        ++static_cast<Client*>(s->send_op_.owner)->ops_in_flight_;
        ++ring_counters_.client_sends;
        break;
      case Operation::Kind::server_send:
        ++static_cast<Server*>(s->send_op_.owner)->ops_in_flight_;
        ++ring_counters_.server_sends;
        break;
      case Operation::Kind::http_send:
        ++static_cast<HttpConn*>(s->send_op_.owner)->ops_in_flight_;
        break;
      default:
        ++static_cast<Canceller*>(s->send_op_.owner)->ops_in_flight_;
        break;
    }
  }
  flush_list_.clear();
  // Closed after the loop: closing queues sends of its own (an error, a Terminate).
  for (Stream* s : tls_failed) {
    if (s->send_op_.kind == Operation::Kind::client_send) {
      auto* client = static_cast<Client*>(s->send_op_.owner);
      if (client->state_ != ClientState::closing)
        close(*client, Reason::tls_error, s->tls()->error());
    } else if (s->send_op_.kind == Operation::Kind::server_send) {
      auto* server = static_cast<Server*>(s->send_op_.owner);
      if (server->state_ != ServerState::closing)
        close(*server, Reason::server_io_error, s->tls()->error());
    }
  }
}

void Reactor::arm_recv(Stream& stream, int& ops) {
  if (stream.recv_armed_ || stream.fd < 0 || stream.reading_paused_) return;
  // Client and server connections receive multishot: one request keeps delivering (its poll
  // stays armed) until EOF, an error, an empty ring or a cancel, instead of a new request per
  // message. The others (HTTP, cancel requests) read a request or two: single-shot.
  const bool multishot = stream.recv_op_.kind == Operation::Kind::client_recv ||
                         stream.recv_op_.kind == Operation::Kind::server_recv;
  io_recv(stream.recv_op_, stream.fd, multishot);
  stream.recv_armed_ = true;
  ++ops;
}

void Reactor::release_stream(Stream& stream) {
  // The one place a connection's socket is closed once its last operation completed. A stream
  // the ring starved is on starved_ with no operation in flight: it leaves the list here, or
  // rearm_starved would arm a receive on freed memory.
  if (stream.starved_) {
    std::erase_if(starved_, [&](const auto& entry) { return entry.first == &stream; });
    stream.starved_ = false;
  }
  // Likewise a stream queued for this turn's sends (want_send after its last operation).
  if (stream.flush_queued_) {
    std::erase(flush_list_, &stream);
    stream.flush_queued_ = false;
  }
  if (stream.fd >= 0) ::close(stream.fd);
  stream.fd = -1;
}

void Reactor::rearm_starved() {
  if (starved_.empty() || buffers_->available() < buffers_->count() / 8) return;
  auto starved = std::move(starved_);
  starved_.clear();
  for (auto [stream, ops] : starved) {
    stream->starved_ = false;
    arm_recv(*stream, *ops);
  }
}

void Reactor::arm_accept(Listener& listener) {
  io_accept(listener.accept_op, listener.fd);
  listener.armed = true;
}

void Reactor::arm_signal() {
  io_read(signal_op_, signal_fd_, signal_buffer_, sizeof(signalfd_siginfo));
}

}  // namespace pgring
