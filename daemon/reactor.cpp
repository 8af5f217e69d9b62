#include "daemon/reactor.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <malloc.h>
#include <openssl/sha.h>
#include <stdexcept>

#include <openssl/rand.h>
#include <systemd/sd-daemon.h>

#include "daemon/log.hpp"
#include "proto/builders.hpp"

namespace pgring {

namespace {
constexpr unsigned kRingEntries = 4096;
constexpr unsigned kCqEntries = 16384;
constexpr std::uint32_t kBufferSize = 16384;
constexpr std::uint32_t kBufferCount = 1024;
constexpr std::uint16_t kBufferGroup = 0;
// Flow control watermarks on a peer's unsent output (bytes, and pinned ring buffers so one slow
// reader can never hold the whole ring).
constexpr std::size_t kHighWatermarkBytes = 1u << 20;
constexpr std::size_t kLowWatermarkBytes = 256u << 10;
constexpr std::size_t kHighWatermarkBuffers = 128;
constexpr std::size_t kLowWatermarkBuffers = 32;
constexpr auto kSweepInterval = std::chrono::milliseconds(100);
// A closing connection that cannot drain its last error within this time is cut off.
constexpr auto kClosingGrace = std::chrono::seconds(5);

std::string errno_text(int err) { return std::strerror(err); }
}  // namespace

Reactor::Reactor(Shared& shared, int index, std::shared_ptr<const config::Config> config,
                 std::shared_ptr<const TlsContexts> tls, std::string config_path)
    : shared_(shared), index_(index), config_(std::move(config)), tls_(std::move(tls)), config_path_(std::move(config_path)) {
  io_uring_params params{};
  params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL |
                 IORING_SETUP_CQSIZE;
  params.cq_entries = kCqEntries;
  int rc = io_uring_queue_init_params(kRingEntries, &ring_, &params);
  if (rc == -EINVAL) {
    // Older kernels (before 6.1) lack DEFER_TASKRUN / SINGLE_ISSUER: run without them.
    params = {};
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = kCqEntries;
    rc = io_uring_queue_init_params(kRingEntries, &ring_, &params);
  }
  if (rc < 0) {
    throw std::runtime_error("io_uring setup failed: " + errno_text(-rc) +
                             (rc == -EPERM || rc == -ENOSYS
                                  ? " (is io_uring disabled? check sysctl kernel.io_uring_disabled, or the "
                                    "container's seccomp profile)"
                                  : ""));
  }
  io_uring_register_ring_fd(&ring_);
  buffers_ = std::make_unique<BufferRing>(ring_, kBufferGroup, kBufferSize, kBufferCount);
  now_ = Clock::now();
  next_sweep_ = now_ + kSweepInterval;
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
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_read(sqe, mailbox_fd_, &mailbox_count_, sizeof mailbox_count_, 0);
  io_uring_sqe_set_data(sqe, &mailbox_op_);
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
    if (r == this) task(*this);
    else r->post(task);
  }
}

void Reactor::retry_database(const std::string& database) {
  for (auto& [key, pool] : pools_) {
    (void)key;
    if (pool->database_ == database && !pool->waiting_clients_.empty()) pool->maintain();
  }
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
  // operation refers to a connection or buffer after this point.
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
// Setup

void Reactor::listen() {
  for (const config::ListenAddress& address : config_->listen) {
    // TCP addresses: every reactor has its own SO_REUSEPORT socket and the kernel spreads the
    // connections. A unix socket path can be bound once: reactor 0 takes those.
    if (!address.unix_dir.empty() && index_ != 0) continue;
    auto listener = std::make_unique<Listener>();
    listener->accept_op.owner = listener.get();
    int fd = -1;
    if (!address.unix_dir.empty()) {
      std::uint16_t port = 6432;
      for (const auto& a : config_->listen)
        if (a.unix_dir.empty()) {
          port = a.port;
          break;
        }
      std::string path = address.unix_dir + "/.s.PGSQL." + std::to_string(port);
      sockaddr_un sun{};
      sun.sun_family = AF_UNIX;
      if (path.size() >= sizeof sun.sun_path) throw std::runtime_error("unix socket path too long: " + path);
      std::memcpy(sun.sun_path, path.c_str(), path.size() + 1);
      fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      ::unlink(path.c_str());  // a stale socket from a previous run
      if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0 || ::listen(fd, 4096) != 0)
        throw std::runtime_error("cannot listen on " + path + ": " + errno_text(errno));
      chmod(path.c_str(), 0777);
      listener->name = path;
    } else {
      addrinfo hints{};
      hints.ai_family = AF_UNSPEC;
      hints.ai_socktype = SOCK_STREAM;
      hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
      addrinfo* res = nullptr;
      std::string port = std::to_string(address.port);
      int gai = getaddrinfo(address.host.empty() ? nullptr : address.host.c_str(), port.c_str(), &hints, &res);
      if (gai != 0) throw std::runtime_error("cannot resolve listen address " + address.host + ": " + gai_strerror(gai));
      fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
      int one = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      // One listener per reactor on the same port; the kernel spreads connections.
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
      // Accepted sockets inherit TCP_NODELAY from the listener: no setsockopt per accept.
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      int ok = bind(fd, res->ai_addr, res->ai_addrlen);
      freeaddrinfo(res);
      if (ok != 0 || ::listen(fd, 4096) != 0)
        throw std::runtime_error("cannot listen on " + address.host + ":" + port + ": " + errno_text(errno));
      listener->name = (address.host.find(':') != std::string::npos ? "[" + address.host + "]" : address.host) +
                       ":" + port;
    }
    listener->fd = fd;
    arm_accept(*listener);
    log::info("listening on {}", listener->name);
    listeners_.push_back(std::move(listener));
  }
}

void Reactor::close_listeners() {
  for (auto& l : listeners_) {
    if (l->fd < 0) continue;
    if (l->armed && !stopped_) {
      io_uring_sqe* sqe = get_sqe();
      io_uring_prep_cancel(sqe, &l->accept_op, 0);
      io_uring_sqe_set_data(sqe, &ignore_op_);
    }
    ::shutdown(l->fd, SHUT_RDWR);
    ::close(l->fd);
    l->fd = -1;
  }
}

// ---------------------------------------------------------------------------------------------
// The loop

int Reactor::run() {
  while (!stopped_) run_once();
  // Let cancelled operations complete before the listeners and buffers go away.
  io_uring_submit(&ring_);
  return 0;
}

void Reactor::run_once() {
  // 1. Submit: every stream with queued output gets one sendmsg; starved receives re-armed.
  buffers_->publish();
  rearm_starved();
  submit_sends();

  // 2. Wait for at least one completion or the next sweep.
  auto wait = std::chrono::duration_cast<std::chrono::nanoseconds>(next_sweep_ - Clock::now());
  if (wait.count() < 0) wait = std::chrono::nanoseconds(0);
  __kernel_timespec ts{};
  ts.tv_sec = wait.count() / 1000000000;
  ts.tv_nsec = wait.count() % 1000000000;
  io_uring_cqe* cqe = nullptr;
  int rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
  if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
    log::error("io_uring wait failed: {}", errno_text(-rc));
  now_ = Clock::now();

  // 3. Reap the batch, advance the CQ once, then run the handlers.
  io_uring_cqe* batch[256];
  for (;;) {
    unsigned n = io_uring_peek_batch_cqe(&ring_, batch, 256);
    if (n == 0) break;
    // Copy what we need first: handlers may submit, and the CQ slots are reused once advanced.
    struct Done {
      void* data;
      int res;
      unsigned flags;
    } done[256];
    for (unsigned i = 0; i < n; ++i) done[i] = {io_uring_cqe_get_data(batch[i]), batch[i]->res, batch[i]->flags};
    io_uring_cq_advance(&ring_, n);
    for (unsigned i = 0; i < n; ++i) {
      io_uring_cqe c{};
      c.user_data = reinterpret_cast<std::uint64_t>(done[i].data);
      c.res = done[i].res;
      c.flags = done[i].flags;
      dispatch(&c);
    }
    if (n < 256) break;
  }

  // 4. Timers: one sweep of the state lists every kSweepInterval.
  if (now_ >= next_sweep_) {
    sweep();
    next_sweep_ = now_ + kSweepInterval;
  }

  // 5. Free connections whose last operation completed during this turn.
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
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    // The submission queue is full: hand what we have to the kernel and take a fresh slot.
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void Reactor::dispatch(io_uring_cqe* cqe) {
  auto* op = static_cast<Operation*>(io_uring_cqe_get_data(cqe));
  if (op == nullptr) return;
  switch (op->kind) {
    case Operation::Kind::accept:
      on_accept(*static_cast<Listener*>(op->owner), cqe->res, cqe->flags);
      break;
    case Operation::Kind::client_recv:
      on_client_recv(*static_cast<Client*>(op->owner), cqe->res, cqe->flags);
      break;
    case Operation::Kind::client_send:
      on_client_send(*static_cast<Client*>(op->owner), cqe->res);
      break;
    case Operation::Kind::server_recv:
      on_server_recv(*static_cast<Server*>(op->owner), cqe->res, cqe->flags);
      break;
    case Operation::Kind::server_send:
      on_server_send(*static_cast<Server*>(op->owner), cqe->res);
      break;
    case Operation::Kind::server_connect:
      on_server_connect(*static_cast<Server*>(op->owner), cqe->res);
      break;
    case Operation::Kind::cancel_connect:
      on_cancel_connect(*static_cast<Canceller*>(op->owner), cqe->res);
      break;
    case Operation::Kind::cancel_send:
      on_cancel_send(*static_cast<Canceller*>(op->owner), cqe->res);
      break;
    case Operation::Kind::cancel_recv:
      on_cancel_recv(*static_cast<Canceller*>(op->owner), cqe->res, cqe->flags);
      break;
    case Operation::Kind::http_accept:
      on_http_accept(cqe->res, cqe->flags);
      break;
    case Operation::Kind::http_recv:
      on_http_recv(*static_cast<HttpConn*>(op->owner), cqe->res, cqe->flags);
      break;
    case Operation::Kind::http_send:
      on_http_send(*static_cast<HttpConn*>(op->owner), cqe->res);
      break;
    case Operation::Kind::signal:
      on_signal(cqe->res);
      break;
    case Operation::Kind::mailbox:
      run_mailbox();
      if (!stopped_) arm_mailbox();
      break;
    case Operation::Kind::ignore:
      break;
  }
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
    io_uring_sqe* sqe = get_sqe();
    bool prepared = s->prepare_send(sqe);
    if (s->tls() != nullptr && s->tls_failed()) tls_failed.push_back(s);  // encrypting failed
    if (!prepared) {
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data(sqe, &ignore_op_);
      continue;
    }
    // The owner counts the operation: it may not be freed before the send completes.
    switch (s->send_op_.kind) {
      case Operation::Kind::client_send: ++static_cast<Client*>(s->send_op_.owner)->ops_in_flight_; break;
      case Operation::Kind::server_send: ++static_cast<Server*>(s->send_op_.owner)->ops_in_flight_; break;
      case Operation::Kind::http_send: ++static_cast<HttpConn*>(s->send_op_.owner)->ops_in_flight_; break;
      default: ++static_cast<Canceller*>(s->send_op_.owner)->ops_in_flight_; break;
    }
  }
  flush_list_.clear();
  // Closed after the loop: closing queues sends of its own (an error, a Terminate).
  for (Stream* s : tls_failed) {
    if (s->send_op_.kind == Operation::Kind::client_send) {
      auto* client = static_cast<Client*>(s->send_op_.owner);
      if (client->state_ != ClientState::closing) close(*client, Reason::tls_error, s->tls()->error());
    } else if (s->send_op_.kind == Operation::Kind::server_send) {
      auto* server = static_cast<Server*>(s->send_op_.owner);
      if (server->state_ != ServerState::closing) close(*server, Reason::server_io_error, s->tls()->error());
    }
  }
}

void Reactor::arm_recv(Stream& stream, int& ops) {
  if (stream.recv_armed_ || stream.fd < 0 || stream.reading_paused_) return;
  io_uring_sqe* sqe = get_sqe();
  // No buffer until bytes arrive: the kernel picks one from the ring then.
  io_uring_prep_recv(sqe, stream.fd, nullptr, buffers_->buffer_size(), 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = buffers_->group();
  io_uring_sqe_set_data(sqe, &stream.recv_op_);
  stream.recv_armed_ = true;
  ++ops;
}

void Reactor::rearm_starved() {
  if (starved_.empty() || buffers_->available() < kBufferCount / 8) return;
  auto starved = std::move(starved_);
  starved_.clear();
  for (auto [stream, ops] : starved) {
    stream->starved_ = false;
    arm_recv(*stream, *ops);
  }
}

void Reactor::arm_accept(Listener& listener) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_multishot_accept(sqe, listener.fd, nullptr, nullptr, SOCK_CLOEXEC);
  io_uring_sqe_set_data(sqe, &listener.accept_op);
  listener.armed = true;
}

void Reactor::arm_signal() {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_read(sqe, signal_fd_, signal_buffer_, sizeof(signalfd_siginfo), 0);
  io_uring_sqe_set_data(sqe, &signal_op_);
}

// ---------------------------------------------------------------------------------------------
// Flow control

void Reactor::apply_backpressure(Stream& reader, const Stream& writer) {
  if (writer.pending_bytes() > kHighWatermarkBytes || writer.pending_buffers() > kHighWatermarkBuffers)
    reader.reading_paused_ = true;
}

void Reactor::resume_peer_reading(Stream& writer) {
  if (writer.pending_bytes() > kLowWatermarkBytes || writer.pending_buffers() > kLowWatermarkBuffers) return;
  if (writer.send_op_.kind == Operation::Kind::client_send) {
    auto* client = static_cast<Client*>(writer.send_op_.owner);
    Server* server = client->server_;
    if (server != nullptr && server->stream_.reading_paused_) {
      server->stream_.reading_paused_ = false;
      server->on_input();  // bytes may already be waiting
      if (!server->stream_.reading_paused_ && server->state_ != ServerState::closing)
        arm_recv(server->stream_, server->ops_in_flight_);
    }
  } else {
    auto* server = static_cast<Server*>(writer.send_op_.owner);
    Client* client = server->client_;
    if (client != nullptr && client->stream_.reading_paused_) {
      client->stream_.reading_paused_ = false;
      client->on_input();
      if (!client->stream_.reading_paused_ && client->state_ != ClientState::closing)
        arm_recv(client->stream_, client->ops_in_flight_);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Completions

void Reactor::on_accept(Listener& listener, int result, unsigned flags) {
  if (!(flags & IORING_CQE_F_MORE)) {
    listener.armed = false;
    if (listener.fd >= 0 && !shutting_down()) arm_accept(listener);
  }
  if (result < 0) {
    if (result != -ECANCELED) log::warning("accept on {} failed: {}", listener.name, errno_text(-result));
    return;
  }
  if (shutting_down()) {
    ::close(result);
    return;
  }
  std::string peer = "unix";
  config::Peer peer_info;
  peer_info.local = true;
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (getpeername(result, reinterpret_cast<sockaddr*>(&addr), &len) == 0 && addr.ss_family != AF_UNIX) {
    peer_info.local = false;
    peer_info.family = addr.ss_family;
    if (addr.ss_family == AF_INET)
      std::memcpy(peer_info.address.data(), &reinterpret_cast<sockaddr_in*>(&addr)->sin_addr, 4);
    else if (addr.ss_family == AF_INET6)
      std::memcpy(peer_info.address.data(), &reinterpret_cast<sockaddr_in6*>(&addr)->sin6_addr, 16);
    // An IPv4 client on a dual-stack listener arrives as ::ffff:a.b.c.d: the auth rules see it
    // as the IPv4 address it is.
    if (addr.ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&reinterpret_cast<sockaddr_in6*>(&addr)->sin6_addr)) {
      peer_info.family = AF_INET;
      std::memmove(peer_info.address.data(), peer_info.address.data() + 12, 4);
    }
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (addr.ss_family == AF_INET) {
      auto* in = reinterpret_cast<sockaddr_in*>(&addr);
      inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
      port = ntohs(in->sin_port);
    } else if (addr.ss_family == AF_INET6) {
      auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
      inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
      port = ntohs(in6->sin6_port);
    }
    peer = std::string(host) + ":" + std::to_string(port);
  }
  auto* client = new Client(*this, next_id(), result, std::move(peer));
  client->peer_info_ = peer_info;
  ++client_count_;
  int clients = shared_.clients.fetch_add(1, std::memory_order_relaxed) + 1;
  login_clients_.push_back(client);
  client->state_since_ = now_;
  client->last_activity_ = now_;
  log::debug("C-{} connected from {}", client->id_, client->peer_);
  // Over max_client_conn: still read the startup packet (answering an SSLRequest 'N') so the
  // client sees the 53300 error; the login timeout bounds how long such a client may stay.
  if (clients > config_->max_client_conn) client->refused_too_many_ = true;
  arm_recv(client->stream_, client->ops_in_flight_);
}

void Reactor::on_client_recv(Client& client, int result, unsigned flags) {
  --client.ops_in_flight_;
  client.stream_.recv_armed_ = false;
  if (flags & IORING_CQE_F_BUFFER) {
    auto bid = static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
    client.stream_.on_received(bid, static_cast<std::uint32_t>(result > 0 ? result : 0));
  }
  if (client.state_ == ClientState::closing) {
    client.stream_.discard_all();
    if (result > 0 && !client.shut_down_) arm_recv(client.stream_, client.ops_in_flight_);  // drain until EOF
    maybe_free(client);
    return;
  }
  if (result == -ENOBUFS) {
    client.stream_.starved_ = true;
    starved_.emplace_back(&client.stream_, &client.ops_in_flight_);
    return;
  }
  if (result == 0) {
    close(client, Reason::client_eof);
    return;
  }
  if (result < 0) {
    close(client, Reason::client_io_error, errno_text(-result));
    return;
  }
  if (client.stream_.tls() != nullptr) {
    if (client.stream_.tls_failed()) {
      TlsSession& tls = *client.stream_.tls();
      if (tls.peer_closed()) {
        client.on_input();  // what came before close_notify (a Terminate, say) still counts
        if (client.state_ != ClientState::closing) close(client, Reason::client_eof);
      } else {
        close(client, Reason::tls_error, tls.error());
      }
      return;
    }
    if (client.stream_.has_output()) want_send(client.stream_);  // handshake records, tickets
  }
  client.last_activity_ = now_;
  if (client.pool_ != nullptr) client.pool_->stats_.bytes_received += static_cast<std::uint64_t>(result);
  client.on_input();
  if (client.state_ == ClientState::closing) return;
  // Bytes that are not moving on (a client waiting for a server) leave the shared ring now.
  if (client.state_ != ClientState::active && client.stream_.input_size() > 0) client.stream_.detach_input();
  arm_recv(client.stream_, client.ops_in_flight_);
}

void Reactor::on_client_send(Client& client, int result) {
  --client.ops_in_flight_;
  if (result < 0) {
    client.stream_.send_failed();
    if (client.state_ != ClientState::closing) close(client, Reason::client_io_error, errno_text(-result));
    else finish_close(client);
    maybe_free(client);
    return;
  }
  bool done = client.stream_.on_sent(static_cast<std::uint32_t>(result));
  if (!done || client.stream_.has_output()) {
    want_send(client.stream_);
  } else if (client.state_ == ClientState::closing) {
    finish_close(client);
  }
  if (client.state_ != ClientState::closing) resume_peer_reading(client.stream_);
  maybe_free(client);
}

void Reactor::on_server_recv(Server& server, int result, unsigned flags) {
  --server.ops_in_flight_;
  server.stream_.recv_armed_ = false;
  if (flags & IORING_CQE_F_BUFFER) {
    auto bid = static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
    server.stream_.on_received(bid, static_cast<std::uint32_t>(result > 0 ? result : 0));
  }
  if (server.state_ == ServerState::closing) {
    server.stream_.discard_all();
    if (result > 0 && !server.shut_down_) {
      server.stream_.reading_paused_ = false;  // read (and drop) until PostgreSQL closes its end
      arm_recv(server.stream_, server.ops_in_flight_);
    } else if (result <= 0 && result != -ENOBUFS) {
      finish_close(server);  // EOF after our Terminate
    }
    maybe_free(server);
    return;
  }
  if (result == -ENOBUFS) {
    server.stream_.starved_ = true;
    starved_.emplace_back(&server.stream_, &server.ops_in_flight_);
    return;
  }
  if (result == 0) {
    close(server, Reason::server_eof, "server closed the connection unexpectedly");
    return;
  }
  if (result < 0) {
    close(server, Reason::server_io_error, errno_text(-result));
    return;
  }
  if (server.stream_.tls() != nullptr) {
    if (server.stream_.tls_failed()) {
      TlsSession& tls = *server.stream_.tls();
      if (tls.peer_closed()) {
        server.on_input();  // PostgreSQL sends its FATAL error before close_notify
        if (server.state_ != ServerState::closing) close(server, Reason::server_eof, "server closed the TLS session");
      } else {
        close(server, server.state_ == ServerState::login ? Reason::server_login_failed : Reason::server_io_error,
              tls.error());
      }
      return;
    }
    if (server.stream_.has_output()) want_send(server.stream_);
  }
  server.pool_.stats_.bytes_sent += static_cast<std::uint64_t>(result);
  server.on_input();
  if (server.state_ != ServerState::closing) arm_recv(server.stream_, server.ops_in_flight_);
}

void Reactor::on_server_send(Server& server, int result) {
  --server.ops_in_flight_;
  if (result < 0) {
    server.stream_.send_failed();
    if (server.state_ != ServerState::closing) close(server, Reason::server_io_error, errno_text(-result));
    else finish_close(server);
    maybe_free(server);
    return;
  }
  bool done = server.stream_.on_sent(static_cast<std::uint32_t>(result));
  if (!done || server.stream_.has_output()) {
    want_send(server.stream_);
  } else if (server.state_ == ServerState::closing) {
    // Terminate sent to an idle server: wait for PostgreSQL to close its end. By then the backend has left
    // pg_stat_activity, so the slot this connection frees is really free (pool_size counts
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
          fmt::format("could not connect to server {}: {}", server.pool_.address_text_, errno_text(-result)));
    return;
  }
  int one = 1;
  setsockopt(server.stream_.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  server.on_connected();
  if (server.state_ != ServerState::closing) arm_recv(server.stream_, server.ops_in_flight_);
}

void Reactor::on_signal(int result) {
  if (result == static_cast<int>(sizeof(signalfd_siginfo))) {
    signalfd_siginfo info;
    std::memcpy(&info, signal_buffer_, sizeof info);
    switch (info.ssi_signo) {
      case SIGTERM:
        log::info("SIGTERM: graceful shutdown (waiting up to {} ms for transactions)",
                  config_->timeouts.shutdown.count());
        broadcast([](Reactor& r) { r.begin_shutdown(ShutdownMode::graceful); });
        break;
      case SIGINT:
        log::info("SIGINT: immediate shutdown");
        broadcast([](Reactor& r) { r.begin_shutdown(ShutdownMode::immediate); });
        break;
      case SIGHUP: {
        sd_notify(0, "RELOADING=1");
        std::string problem = reload();
        sd_notify(0, "READY=1");
        (void)problem;  // reload() logged it
        break;
      }
      default: break;
    }
  }
  if (!stopped_) arm_signal();
}

// ---------------------------------------------------------------------------------------------
// Closing: one way out

void Reactor::close(Client& client, Reason reason, std::string_view message) {
  if (client.state_ == ClientState::closing) return;
  ++disconnects_[static_cast<std::size_t>(reason)];
  if (Pool* counted = client.counted_in_) {
    counted->db_clients_->release();
    counted->user_clients_->release();
    client.counted_in_ = nullptr;
  }
  if (Pool* lookups = client.lookup_pool_) {
    std::erase(lookups->lookups_, &client);
    client.lookup_pool_ = nullptr;
  }
  if (Server* lookup = client.lookup_server_) {
    lookup->lookup_client_ = nullptr;  // the lookup finishes on its own; nobody waits for it
    client.lookup_server_ = nullptr;
  }
  std::string_view state = sqlstate(reason);
  if (reason == Reason::client_eof || reason == Reason::client_terminate || reason == Reason::cancel_request)
    log::debug("C-{} closed: {}", client.id_, name(reason));
  else
    log::info("C-{} closed: {}{}{}", client.id_, name(reason), message.empty() ? "" : ": ", message);
  // No error in the middle of a message being streamed to the client: it would be read as
  // part of that message. The client sees the connection end instead.
  bool mid_message = client.server_ != nullptr && client.server_->forward_remaining_ > 0;
  // Before (or after a broken) TLS handshake nothing the client could read can be sent.
  bool tls_broken = client.stream_.tls() != nullptr && (!client.stream_.tls()->handshake_done() || client.stream_.tls_failed());
  if (!state.empty() && reason != Reason::client_io_error && !mid_message && !tls_broken) {
    std::string text = "pgring: ";
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
        close(*server, Reason::server_dirty, "client left in the middle of a message");  // half a message sent
      else
        server->release(client.pool_->settings_.pool_mode == config::PoolMode::session || client.pinned_state_ != 0);
    }
  }
  if (client.cancel_pid_ != 0) {
    std::uint64_t key = (std::uint64_t(std::uint32_t(client.cancel_pid_)) << 32);
    std::uint32_t secret;
    std::memcpy(&secret, client.cancel_secret_.data(), 4);
    cancel_keys_.erase(key | secret);
  }
  Pool* pool = client.pool_;
  unlink(&client);
  client.state_ = ClientState::closing;
  client.state_since_ = now_;
  closing_clients_.push_back(&client);
  --client_count_;
  shared_.clients.fetch_sub(1, std::memory_order_relaxed);
  client.stream_.reading_paused_ = true;
  if (client.stream_.has_output()) want_send(client.stream_);  // the error, or a TLS alert
  else if (!client.stream_.send_in_flight()) finish_close(client);
  if (pool != nullptr) pool->maintain();
  maybe_free(client);
}

void Reactor::close(Server& server, Reason reason, std::string_view message) {
  if (server.state_ == ServerState::closing) return;
  ++disconnects_[static_cast<std::size_t>(reason)];
  log::info("S-{} closed ({}/{}): {}{}{}", server.id_, server.pool_.database_, server.pool_.user_name_, name(reason),
            message.empty() ? "" : ": ", message);
  ServerState was = server.state_;
  Pool& pool = server.pool_;
  if (Client* client = server.lookup_client_) {
    server.lookup_client_ = nullptr;
    client->lookup_server_ = nullptr;
    close(*client, Reason::auth_query_failed,
          fmt::format("auth.query failed: server connection lost{}{}", message.empty() ? "" : ": ", message));
  }
  if (Client* client = server.client_) {
    // Session state is gone with the server: the client cannot go on.
    server.client_ = nullptr;
    client->server_ = nullptr;
    close(*client, Reason::server_connection_lost,
          message.empty() ? std::string("server connection lost") : "server connection lost: " + std::string(message));
  }
  unlink(&server);
  server.state_ = ServerState::closing;
  server.state_since_ = now_;
  closing_servers_.push_back(&server);
  server.stream_.reading_paused_ = true;
  server.stream_.discard_all();
  // A healthy server gets a polite Terminate; one that failed gets its socket shut down.
  bool polite = (was == ServerState::idle || reason == Reason::server_idle_timeout ||
                 reason == Reason::server_lifetime || reason == Reason::shutdown || reason == Reason::server_dirty) &&
                reason != Reason::server_eof && reason != Reason::server_io_error;
  if (polite && server.stream_.fd >= 0 && was != ServerState::connecting) {
    // An idle server reads the Terminate at once: wait for it to close its end (below).
    server.await_eof_ = was == ServerState::idle;
    (void)server.stream_.emit([](std::string& out) { return proto::build::terminate(out); });
    want_send(server.stream_);
  } else {
    finish_close(server);
  }
  if (was == ServerState::connecting || was == ServerState::login) {
    std::string sqlstate_text(sqlstate(reason));
    pool.on_server_failed(reason, sqlstate_text, message);
  }
  pool.maintain();
  maybe_free(server);
}

void Reactor::finish_close(Client& client) {
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
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_cancel_fd(sqe, server.stream_.fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data(sqe, &ignore_op_);
  }
  ::shutdown(server.stream_.fd, SHUT_RDWR);
}

void Reactor::maybe_free(Client& client) {
  if (client.state_ != ClientState::closing || client.ops_in_flight_ > 0 || !client.shut_down_) return;
  if (client.freed_) return;
  client.freed_ = true;
  if (client.stream_.fd >= 0) ::close(client.stream_.fd);
  client.stream_.fd = -1;
  unlink(&client);
  free_clients_.push_back(&client);
}

void Reactor::maybe_free(Server& server) {
  if (server.state_ != ServerState::closing || server.ops_in_flight_ > 0 || !server.shut_down_) return;
  if (server.cancels_in_flight_ > 0) return;  // a Canceller still points here
  if (server.freed_) return;
  server.freed_ = true;
  if (server.stream_.fd >= 0) ::close(server.stream_.fd);
  server.stream_.fd = -1;
  unlink(&server);
  free_servers_.push_back(&server);
  // A server slot of this pool and database is free: pools of it with waiting clients may use
  // it, here and on the reactors that said they starve for one.
  Pool& pool = server.pool_;
  pool.budget_->release();
  pool.db_budget_->release();
  std::uint64_t starving = (pool.budget_->starving.load(std::memory_order_relaxed) |
                            pool.db_budget_->starving.load(std::memory_order_relaxed)) &
                           ~(std::uint64_t{1} << index_);
  for (int i = 0; starving != 0 && i < shared_.workers(); ++i) {
    if ((starving & (std::uint64_t{1} << i)) == 0) continue;
    if (Reactor* r = shared_.reactors[static_cast<std::size_t>(i)].load())
      r->post([database = pool.database_](Reactor& other) { other.retry_database(database); });
  }
  retry_database(pool.database_);
}

// ---------------------------------------------------------------------------------------------
// Pools and servers

Pool& Reactor::pool_for(const config::Database& db, const config::User* user, std::string_view user_name) {
  std::string key = db.name;
  key += '\0';
  key += user_name;
  auto it = pools_.find(key);
  if (it != pools_.end()) return *it->second;
  auto pool = std::make_unique<Pool>(*this, db, user, std::string(user_name), config_->resolve_pool(db, user));
  pool->budget_ = &shared_.pool_budget(key);
  pool->db_budget_ = &database_budget(db.name);
  pool->db_clients_ = &shared_.database_clients(db.name);
  pool->user_clients_ = &shared_.user_clients(std::string(user_name));
  pool->paused_ = paused_all_ || paused_databases_.count(db.name) != 0;
  Pool& ref = *pool;
  pools_.emplace(std::move(key), std::move(pool));
  return ref;
}

std::string Reactor::lookup_key(std::string_view database, std::string_view name) const {
  std::string key;
  if (config_->auth_query && config_->auth_query->database.empty()) key = database;
  key += '\0';
  key += name;
  return key;
}

const config::User* Reactor::cached_lookup(std::string_view database, std::string_view name) const {
  auto it = looked_up_.find(lookup_key(database, name));
  if (it == looked_up_.end() || !config_->auth_query || now_ - it->second->fetched >= config_->auth_query->cache)
    return nullptr;
  return &it->second->user;
}

const config::User* Reactor::find_user(std::string_view database, std::string_view name) const {
  if (const config::User* user = config_->find_user(name)) return user;
  auto it = looked_up_.find(lookup_key(database, name));
  return it == looked_up_.end() ? nullptr : &it->second->user;
}

void Reactor::look_up(Client& client) {
  const config::AuthQuery& q = *config_->auth_query;
  // The lookup runs in the database the client asked for unless auth.query names one, over
  // the auth user's own pool (never with the client's startup settings: CVE-2025-12819).
  std::string_view db_name = q.database.empty() ? std::string_view(client.startup_message_.database) : q.database;
  const config::Database* db = config_->find_database(db_name);
  if (db == nullptr) {
    // Unknown databases are revealed only after authentication: fail like a wrong password.
    client.on_lookup_done(std::nullopt, {});
    return;
  }
  Pool& pool = pool_for(*db, config_->find_user(q.user), q.user);
  pool.lookups_.push_back(&client);
  client.lookup_pool_ = &pool;
  // Nothing the client sends matters until the lookup answers: do not let it pile up.
  client.stream_.reading_paused_ = true;
  log::debug("C-{} looking up user {} with auth.query", client.id_, client.startup_message_.user);
  pool.maintain();
}

void Reactor::resume_reading(Client& client) {
  if (!client.stream_.reading_paused_ || client.state_ == ClientState::closing) return;
  client.stream_.reading_paused_ = false;
  arm_recv(client.stream_, client.ops_in_flight_);
}

const config::User& Reactor::store_lookup(std::string_view database, std::string_view name, std::string secret,
                                          config::SecretKind kind) {
  auto& slot = looked_up_[lookup_key(database, name)];
  if (!slot) slot = std::make_unique<LookedUp>();
  bool changed = slot->user.password != secret;
  slot->user.name = std::string(name);
  slot->user.password = std::move(secret);
  slot->user.secret_kind = kind;
  slot->fetched = now_;
  if (changed) {
    scram_secrets_.erase(&slot->user);
    // The user's pools for this database (or all, with auth.query.database) log in with the
    // new secret from now on.
    bool every_database = config_->auth_query && !config_->auth_query->database.empty();
    for (auto& [key, pool] : pools_) {
      (void)key;
      if (pool->user_name_ == name && config_->find_user(name) == nullptr &&
          (every_database || pool->database_ == database))
        pool->reconfigure(*pool->db_, &slot->user, config_->resolve_pool(*pool->db_, &slot->user));
    }
  }
  return slot->user;
}

proto::scram::Secret Reactor::mock_secret(std::string_view name) const {
  // Like PostgreSQL's scram_mock_salt: a hash of a process secret and the name, so asking twice
  // for the same unknown user shows the same salt, as a real user's would.
  std::string input(reinterpret_cast<const char*>(shared_.mock_nonce.data()), shared_.mock_nonce.size());
  input.append(name);
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(input.data()), input.size(), digest);
  proto::scram::Secret secret;
  secret.iterations = proto::scram::kDefaultIterations;
  secret.salt.assign(reinterpret_cast<const char*>(digest), 16);
  RAND_bytes(secret.stored_key.data(), static_cast<int>(secret.stored_key.size()));
  RAND_bytes(secret.server_key.data(), static_cast<int>(secret.server_key.size()));
  return secret;
}

std::string Reactor::admit_client(Client& client, Pool& pool) {
  // Counted over the process: the client holds one unit of its database's and its user's
  // client budgets until it closes.
  const config::PoolSettings& s = pool.settings_;
  if (!pool.db_clients_->try_acquire(s.max_db_client_connections))
    return fmt::format("too many client connections for database \"{}\" (max_db_client_connections {})",
                       pool.database_, s.max_db_client_connections);
  if (!pool.user_clients_->try_acquire(s.max_user_client_connections)) {
    pool.db_clients_->release();
    return fmt::format("too many client connections for user \"{}\" (max_user_client_connections {})",
                       pool.user_name_, s.max_user_client_connections);
  }
  client.counted_in_ = &pool;
  return {};
}

bool Reactor::database_has_room(Pool& pool) {
  int limit = pool.settings_.max_db_connections;
  if (pool.db_budget_->try_acquire(limit)) return true;  // (counted even without a limit)
  // Make room: an idle server of another pool of this database goes (its clients are not
  // waiting, ours are). The room appears once it is freed; maintain() runs again then.
  for (auto& [key, other] : pools_) {
    (void)key;
    if (other.get() == &pool || other->database_ != pool.database_ || other->idle_servers_.empty()) continue;
    close(*other->idle_servers_.front(), Reason::server_evicted, "making room under max_db_connections");
    break;
  }
  return false;
}

void Reactor::start_connect(Pool& pool) {
  // (Its pool and database budgets were acquired by the caller.)
  auto* server = new Server(*this, pool, next_id());
  ++pool.stats_.server_connects;
  // Retire connections at spread-out times, not all at once: lifetime minus up to 10%.
  if (pool.settings_.timeouts.server_lifetime.count() > 0) {
    std::uint32_t r = 0;
    RAND_bytes(reinterpret_cast<unsigned char*>(&r), sizeof r);
    auto lifetime = pool.settings_.timeouts.server_lifetime;
    server->retire_at_ = now_ + lifetime - std::chrono::milliseconds(lifetime.count() / 10 * (r % 1000) / 1000);
  }
  server->created_ = now_;
  pool.set_state(*server, ServerState::connecting);
  if (!pool.address_ok_) {
    close(*server, Reason::server_unreachable, "cannot resolve server address " + pool.address_text_);
    return;
  }
  int fd = socket(pool.address_.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    close(*server, Reason::server_unreachable, "socket: " + errno_text(errno));
    return;
  }
  server->stream_.fd = fd;
  log::debug("S-{} connecting to {} for {}/{}", server->id_, pool.address_text_, pool.database_, pool.user_name_);
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_connect(sqe, fd, reinterpret_cast<sockaddr*>(&pool.address_), pool.address_len_);
  io_uring_sqe_set_data(sqe, &server->connect_op_);
  ++server->ops_in_flight_;
}

const proto::scram::Secret& Reactor::scram_secret_for(const config::User& user) {
  auto it = scram_secrets_.find(&user);
  if (it != scram_secrets_.end()) return it->second;
  proto::scram::Secret secret;
  if (user.secret_kind == config::SecretKind::scram) {
    // The config's check is structural; a secret the parser still refuses (say, "04096"
    // iterations) can only fail, like an unknown user's.
    auto parsed = proto::scram::parse_secret(user.password);
    secret = parsed ? std::move(*parsed) : mock_secret(user.name);
  } else {
    // From a plain password: derived once per reactor, not per login (PBKDF2 is slow on purpose).
    std::string salt(16, '\0');
    RAND_bytes(reinterpret_cast<unsigned char*>(salt.data()), static_cast<int>(salt.size()));
    secret = proto::scram::make_secret(user.password, salt, proto::scram::kDefaultIterations);
  }
  return scram_secrets_.emplace(&user, std::move(secret)).first->second;
}

void Reactor::register_cancel_key(Client& client) {
  for (;;) {
    RAND_bytes(reinterpret_cast<unsigned char*>(&client.cancel_pid_), sizeof client.cancel_pid_);
    RAND_bytes(reinterpret_cast<unsigned char*>(client.cancel_secret_.data()), 4);
    // The low bits name this reactor: a CancelRequest may arrive on any of them.
    client.cancel_pid_ = (client.cancel_pid_ & 0x7fffffc0) | index_;
    if (client.cancel_pid_ == 0) continue;
    std::uint32_t secret;
    std::memcpy(&secret, client.cancel_secret_.data(), 4);
    std::uint64_t key = (std::uint64_t(std::uint32_t(client.cancel_pid_)) << 32) | secret;
    if (cancel_keys_.emplace(key, &client).second) return;
  }
}

void Reactor::cancel(std::int32_t pid, std::string_view secret) {
  if (secret.size() != 4) return;
  int owner = pid & (kMaxWorkers - 1);
  if (owner != index_) {
    // SO_REUSEPORT gave the cancel connection to another reactor than the client's.
    Reactor* r = owner < shared_.workers() ? shared_.reactors[static_cast<std::size_t>(owner)].load() : nullptr;
    if (r == nullptr) {
      log::info("cancel request with an unknown key ignored");
      return;
    }
    r->post([pid, secret = std::string(secret)](Reactor& other) { other.cancel(pid, secret); });
    return;
  }
  std::uint32_t secret_bits;
  std::memcpy(&secret_bits, secret.data(), 4);
  std::uint64_t key = (std::uint64_t(std::uint32_t(pid)) << 32) | secret_bits;
  auto it = cancel_keys_.find(key);
  if (it == cancel_keys_.end()) {
    log::info("cancel request with an unknown key ignored");
    return;
  }
  Client& client = *it->second;
  if (client.state_ == ClientState::waiting && client.pool_ != nullptr) {
    // Still queued for a server: nothing runs yet, so the request is dropped right here.
    log::info("C-{} canceled while waiting for a server", client.id_);
    client.cancel_while_waiting();
    return;
  }
  if (client.state_ != ClientState::active || client.server_ == nullptr) return;  // idle: nothing to cancel
  Server& server = *client.server_;
  if (server.requests_in_flight() == 0 || server.restore_replies_pending_ > 0) return;
  start_cancel(server);
}

void Reactor::start_cancel(Server& server) {
  auto* canceller = new Canceller(*this, server, server.link_generation_);
  canceller->started_ = now_;
  ++server.cancels_in_flight_;
  cancellers_.push_back(canceller);
  Pool& pool = server.pool_;
  int fd = socket(pool.address_.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    finish_cancel(*canceller);
    return;
  }
  canceller->stream_.fd = fd;
  if (server.client_ != nullptr) log::info("S-{} canceling the request of C-{}", server.id_, server.client_->id_);
  else log::info("S-{} canceling the request its departed client left running", server.id_);
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_connect(sqe, fd, reinterpret_cast<sockaddr*>(&pool.address_), pool.address_len_);
  io_uring_sqe_set_data(sqe, &canceller->connect_op_);
  ++canceller->ops_in_flight_;
}

void Reactor::on_cancel_connect(Canceller& canceller, int result) {
  --canceller.ops_in_flight_;
  Server* server = canceller.target_;
  if (canceller.done_ || result < 0 || server == nullptr) {
    finish_cancel(canceller);
    return;
  }
  // Only the request it was meant for: if that link ended meanwhile, say nothing.
  if (server->state_ != ServerState::active || server->link_generation_ != canceller.link_generation_ ||
      server->requests_in_flight() == 0) {
    log::debug("S-{} cancel dropped: the request already finished", server->id_);
    finish_cancel(canceller);
    return;
  }
  (void)canceller.stream_.emit([&](std::string& out) {
    return proto::build::cancel_request(out, server->backend_pid_, server->backend_secret_);
  });
  want_send(canceller.stream_);
  // PostgreSQL answers nothing and closes: wait for that EOF (bounded by cancel_wait).
  arm_recv(canceller.stream_, canceller.ops_in_flight_);
}

void Reactor::on_cancel_send(Canceller& canceller, int result) {
  --canceller.ops_in_flight_;
  if (result < 0) canceller.stream_.send_failed();
  else (void)canceller.stream_.on_sent(static_cast<std::uint32_t>(result));
  if (result < 0) finish_cancel(canceller);
  else if (canceller.done_) finish_cancel(canceller);
}

void Reactor::on_cancel_recv(Canceller& canceller, int result, unsigned flags) {
  --canceller.ops_in_flight_;
  canceller.stream_.recv_armed_ = false;
  if (flags & IORING_CQE_F_BUFFER) {
    canceller.stream_.on_received(static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT),
                                  static_cast<std::uint32_t>(result > 0 ? result : 0));
    canceller.stream_.discard_all();
  }
  if (result > 0 && !canceller.done_) {
    arm_recv(canceller.stream_, canceller.ops_in_flight_);
    return;
  }
  finish_cancel(canceller);
}

void Reactor::finish_cancel(Canceller& canceller) {
  if (!canceller.done_) {
    canceller.done_ = true;
    if (Server* server = canceller.target_) {
      canceller.target_ = nullptr;
      if (--server->cancels_in_flight_ == 0) {
        if (server->state_ == ServerState::active && server->client_ != nullptr) {
          // Requests held while the cancel was in flight go now.
          Client& client = *server->client_;
          client.stream_.reading_paused_ = false;
          if (client.stream_.input_size() > 0) client.on_input();
          if (client.state_ != ClientState::closing) arm_recv(client.stream_, client.ops_in_flight_);
        } else if (server->state_ == ServerState::canceling) {
          server->pool_.set_state(*server, ServerState::idle);
          server->pool_.maintain();
        } else if (server->state_ == ServerState::closing) {
          maybe_free(*server);
        }
      }
    }
    if (canceller.stream_.fd >= 0) {
      if (canceller.ops_in_flight_ > 0) {
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_cancel_fd(sqe, canceller.stream_.fd, IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data(sqe, &ignore_op_);
      }
      ::shutdown(canceller.stream_.fd, SHUT_RDWR);
    }
  }
  if (canceller.ops_in_flight_ > 0 || canceller.freed_) return;
  canceller.freed_ = true;
  if (canceller.stream_.fd >= 0) ::close(canceller.stream_.fd);
  canceller.stream_.fd = -1;
  unlink(&canceller);
  free_cancellers_.push_back(&canceller);
}

void Reactor::login_done(Client& client) {
  if (client.node_.list == &login_clients_) login_clients_.remove(&client);
}

std::string Reactor::reload() {
  std::shared_ptr<const config::Config> fresh;
  std::shared_ptr<const TlsContexts> tls;
  try {
    fresh = std::make_shared<const config::Config>(config::load_config_file(config_path_));
    // Certificates are read again too: a renewed certificate is picked up by new connections.
    tls = build_tls(*fresh);
  } catch (const config::ConfigError& e) {
    ++reload_failures_;
    log::error("reload of {} failed, keeping the running configuration: {}", config_path_, e.what());
    return e.what();
  }
  ++reloads_;
  const config::Config& old = *config_;
  // Listeners, workers and the metrics endpoint are set up once: changing them needs a restart.
  auto listen_text = [](const config::Config& c) {
    std::string t;
    for (const auto& l : c.listen) t += l.host + ":" + std::to_string(l.port) + l.unix_dir + " ";
    return t;
  };
  if (listen_text(old) != listen_text(*fresh)) log::warning("reload: listen changed; it takes effect after a restart");
  if (old.workers != fresh->workers) log::warning("reload: workers changed; it takes effect after a restart");
  auto metrics_text = [](const config::Config& c) {
    return c.metrics_listen ? c.metrics_listen->host + ":" + std::to_string(c.metrics_listen->port) : std::string();
  };
  if (metrics_text(old) != metrics_text(*fresh))
    log::warning("reload: metrics.listen changed; it takes effect after a restart");
  broadcast([fresh, tls](Reactor& r) { r.apply_config(fresh, tls); });
  log::info("configuration reloaded from {}", config_path_);
  return {};
}

void Reactor::apply_config(std::shared_ptr<const config::Config> fresh, std::shared_ptr<const TlsContexts> tls) {
  retired_configs_.push_back(config_);
  config_ = std::move(fresh);
  tls_ = std::move(tls);
  if (!config_->auth_query) {
    // auth.query is gone: nobody is looked up any more, and nobody waits for a lookup.
    for (auto& [key, pool] : pools_) {
      (void)key;
      while (!pool->lookups_.empty())
        close(*pool->lookups_.front(), Reason::auth_query_failed, "authentication failed: auth.query was removed");
    }
  }
  if (index_ == 0) log::init(config_->log_level, config_->log_format);
  scram_secrets_.clear();  // passwords may have changed
  for (auto& [key, pool] : pools_) {
    (void)key;
    const config::Database* db = config_->find_database(pool->database_);
    if (db == nullptr) {
      log::warning("reload: database {} was removed; closing its pools", pool->database_);
      for (List<Client>* l : {&pool->active_clients_, &pool->waiting_clients_, &pool->idle_clients_})
        while (Client* c = l->front()) close(*c, Reason::pool_removed, "database removed from the configuration");
      for (List<Server>* l : {&pool->idle_servers_, &pool->active_servers_, &pool->connecting_servers_,
                              &pool->resetting_servers_, &pool->canceling_servers_})
        while (Server* s = l->front()) close(*s, Reason::pool_removed);
      continue;
    }
    const config::User* user = find_user(pool->database_, pool->user_name_);
    pool->reconfigure(*db, user, config_->resolve_pool(*db, user));
  }
}

// ---------------------------------------------------------------------------------------------
// Timers: a sweep of the state lists, a few times a second. No syscall or allocation per
// armed timeout: a deadline is the time a connection entered its list plus the configured limit.

void Reactor::sweep() {
  const config::Timeouts& t = config_->timeouts;
  // systemd's watchdog is fed from the loop itself: if this reactor stalls, the pings stop.
  if (watchdog_interval_.count() > 0 && now_ >= next_watchdog_) {
    sd_notify(0, "WATCHDOG=1");
    next_watchdog_ = now_ + watchdog_interval_;
  }
  auto expired = [&](Clock::time_point since, config::Duration limit) {
    return limit.count() > 0 && now_ - since >= limit;
  };
  // A burst of TLS handshakes leaves tens of KiB of freed heap per handshake behind (OpenSSL's
  // transient state); once the burst is over, give it back so idle clients cost what they hold.
  if (tls_handshakes_since_trim_ >= kTrimAfterHandshakes && login_clients_.empty()) {
    malloc_trim(0);
    tls_handshakes_since_trim_ = 0;
  }
  for (Client* c = login_clients_.front(); c != nullptr;) {
    Client* next = List<Client>::next(c);
    if (expired(c->state_since_, t.client_login)) close(*c, Reason::login_timeout, "client login timeout");
    c = next;
  }
  for (auto& [key, pool] : pools_) {
    (void)key;
    const config::Timeouts& pt = pool->settings_.timeouts;  // with the database's and user's overrides
    for (Client* c = pool->waiting_clients_.front(); c != nullptr;) {
      Client* next = List<Client>::next(c);
      if (expired(c->state_since_, pt.query_wait)) close(*c, Reason::query_wait_timeout, "query_wait timeout");
      c = next;
    }
    for (Server* s = pool->connecting_servers_.front(); s != nullptr;) {
      Server* next = List<Server>::next(s);
      if (expired(s->state_since_, pt.server_connect))
        close(*s, Reason::server_unreachable,
              fmt::format("server {} did not answer within server_connect ({} ms)", pool->address_text_,
                          pt.server_connect.count()));
      s = next;
    }
    for (Server* s = pool->idle_servers_.front(); s != nullptr;) {
      Server* next = List<Server>::next(s);
      if (expired(s->state_since_, pt.server_idle)) close(*s, Reason::server_idle_timeout);
      else if (pt.server_lifetime.count() > 0 && now_ >= s->retire_at_) close(*s, Reason::server_lifetime);
      s = next;
    }
    sweep_active(*pool);
    if (pt.client_idle.count() > 0) {
      for (Client* c = pool->idle_clients_.front(); c != nullptr;) {
        Client* next = List<Client>::next(c);
        if (expired(c->last_activity_, pt.client_idle)) close(*c, Reason::client_idle_timeout, "idle-session timeout");
        c = next;
      }
    }
    // Waiting clients may now qualify for the reserve pool, or a failing server for a retry.
    if (!pool->waiting_clients_.empty()) pool->maintain();
    else if (pool->starving_pool_ || pool->starving_db_) pool->set_starving(false, false);
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
      log::warning("cancel request not completed within cancel_wait ({} ms)", t.cancel_wait.count());
      finish_cancel(*c);
    }
    c = next;
  }
  // Connections that could not drain their last bytes are cut off.
  for (Client* c = closing_clients_.front(); c != nullptr;) {
    Client* next = List<Client>::next(c);
    if (now_ - c->state_since_ > kClosingGrace) {
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
      if (s->state_ == ServerState::lookup && expired(s->state_since_, config_->timeouts.client_login)) {
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
    if (busy && expired(s->busy_since_, t.query)) {
      if (!s->query_timeout_canceled_) {
        s->query_timeout_canceled_ = true;
        log::info("C-{} query timeout ({} ms): canceling on S-{}", c->id_, t.query.count(), s->id_);
        start_cancel(*s);
      } else if (expired(s->busy_since_, t.query + cancel_wait)) {
        close(*c, Reason::query_timeout, "query timeout");
      }
    } else if (s->transaction_status_ != 'I' && expired(s->transaction_since_, t.transaction)) {
      close(*c, Reason::transaction_timeout, "terminating connection due to transaction timeout");
    } else if (!busy && s->transaction_status_ != 'I' && expired(s->last_ready_, t.idle_transaction)) {
      close(*c, Reason::idle_transaction_timeout, "terminating connection due to idle-in-transaction timeout");
    } else if (!busy && s->idle_in_protocol() && expired(c->last_activity_, t.client_idle)) {
      close(*c, Reason::client_idle_timeout, "terminating connection due to idle-session timeout");
    }
    s = next;
  }
}

void Reactor::begin_shutdown(ShutdownMode mode) {
  if (shutdown_ == ShutdownMode::none) {
    shutdown_deadline_ = now_ + (mode == ShutdownMode::immediate ? config::Duration(0) : config_->timeouts.shutdown);
    close_listeners();
  }
  if (mode == ShutdownMode::immediate || now_ >= shutdown_deadline_) shutdown_ = ShutdownMode::immediate;
  else shutdown_ = ShutdownMode::graceful;
  bool immediate = shutdown_ == ShutdownMode::immediate;

  for (List<Client>* list : {&login_clients_, &admin_clients_}) {
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
        close(*c, Reason::shutdown, "shutting down");
        c = next;
      }
    }
    for (Client* c = pool->active_clients_.front(); c != nullptr;) {
      Client* next = List<Client>::next(c);
      // Graceful: a client whose server is between transactions may go now; others finish.
      Server* s = c->server_;
      bool between = s == nullptr || (s->idle_in_protocol() && s->restore_replies_pending_ == 0);
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
      for (List<Server>* list : {&pool->connecting_servers_, &pool->resetting_servers_, &pool->active_servers_,
                                 &pool->canceling_servers_}) {
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
  if (!clients_left && !servers_left && closing_clients_.empty() && closing_servers_.empty() && cancellers_.empty() &&
      http_conns_.empty())
    stopped_ = true;
  // Immediate mode waits at most a second for peers to read their last bytes.
  if (immediate && now_ >= shutdown_deadline_ + std::chrono::seconds(1)) {
    if (!stopped_)
      log::warning("shutdown: stopping with {} clients, {} closing clients, {} closing servers, {} cancels left",
                   client_count_, closing_clients_.size(), closing_servers_.size(), cancellers_.size());
    stopped_ = true;
  }
}

}  // namespace pgring
