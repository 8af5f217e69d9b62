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
#include "daemon/ops/upgrade.hpp"
#include "proto/builders.hpp"

namespace pgring {

// ---------------------------------------------------------------------------------------------
// Setup

void apply_tcp_options(int fd, const config::Config::Tcp& tcp) {
  auto seconds = [](config::Duration d) {
    return static_cast<int>(std::chrono::duration_cast<std::chrono::seconds>(d).count());
  };
  int on = tcp.keepalive ? 1 : 0;
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  if (tcp.keepalive && tcp.keepalive_idle.count() > 0) {
    int v = std::max(1, seconds(tcp.keepalive_idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &v, sizeof v);
  }
  if (tcp.keepalive && tcp.keepalive_interval.count() > 0) {
    int v = std::max(1, seconds(tcp.keepalive_interval));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &v, sizeof v);
  }
  if (tcp.keepalive && tcp.keepalive_count > 0)
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &tcp.keepalive_count, sizeof tcp.keepalive_count);
  if (tcp.user_timeout.count() > 0) {
    auto ms = static_cast<unsigned>(
        std::chrono::duration_cast<std::chrono::milliseconds>(tcp.user_timeout).count());
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof ms);
  }
}

int listen_tcp(const config::ListenAddress& address, std::string_view what, bool reuse_port,
               int backlog) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port = std::to_string(address.port);
  int gai = getaddrinfo(address.host.empty() ? nullptr : address.host.c_str(), port.c_str(), &hints,
                        &res);
  if (gai != 0)
    throw std::runtime_error(
        fmt::format("cannot resolve {} address {}: {}", what, address.host, gai_strerror(gai)));
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (reuse_port) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  // Accepted sockets inherit TCP_NODELAY from the listener: no setsockopt per accept.
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int ok = fd >= 0 ? bind(fd, res->ai_addr, res->ai_addrlen) : -1;
  freeaddrinfo(res);
  if (ok != 0 || ::listen(fd, backlog) != 0) {
    std::string error = errno_text(errno);
    if (fd >= 0) ::close(fd);
    throw std::runtime_error(
        fmt::format("cannot listen on {} {}:{}: {}", what, address.host, port, error));
  }
  return fd;
}

void Reactor::listen() {
  // An upgrade hands this process the old one's listening sockets: the same sockets go on
  // accepting (their backlog included), so no connection is refused while processes change.
  auto inherited = [&](const std::string& name) {
    return shared_.upgrade != nullptr
               ? shared_.upgrade->take_listeners(name, index_, shared_.workers())
               : std::vector<int>{};
  };
  auto add = [&](std::string name, int fd) {
    auto listener = std::make_unique<Listener>();
    listener->accept_op.owner = listener.get();
    listener->fd = fd;
    listener->name = std::move(name);
    arm_accept(*listener);
    if (shared_.upgrade != nullptr) shared_.upgrade->add_listener(listener->name, index_, fd);
    listeners_.push_back(std::move(listener));
  };
  for (const config::ListenAddress& address : config_->listen) {
    // TCP addresses: every reactor has its own SO_REUSEPORT socket and the kernel spreads the
    // connections. A unix socket path can be bound once: reactor 0 takes those.
    if (!address.unix_dir.empty() && index_ != 0) continue;
    std::string name;
    if (!address.unix_dir.empty()) {
      std::uint16_t port = 6432;
      for (const auto& a : config_->listen)
        if (a.unix_dir.empty()) {
          port = a.port;
          break;
        }
      name = address.unix_dir + "/.s.PGSQL." + std::to_string(port);
    } else {
      name =
          (address.host.find(':') != std::string::npos ? "[" + address.host + "]" : address.host) +
          ":" + std::to_string(address.port);
    }
    std::vector<int> fds = inherited(name);
    for (int fd : fds) {
      // The epoll engine made it non-blocking (the same open file in both processes);
      // io_uring's accept would then fail with EAGAIN instead of waiting.
      if (!epoll_) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
      log::info("listening on {} (taken over)", name);
      add(name, fd);
    }
    if (!fds.empty()) continue;
    int fd = -1;
    if (!address.unix_dir.empty()) {
      sockaddr_un sun{};
      sun.sun_family = AF_UNIX;
      if (name.size() >= sizeof sun.sun_path)
        throw std::runtime_error("unix socket path too long: " + name);
      std::memcpy(sun.sun_path, name.c_str(), name.size() + 1);
      fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      ::unlink(name.c_str());  // a stale socket from a previous run
      if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0 ||
          ::listen(fd, 4096) != 0)
        throw std::runtime_error("cannot listen on " + name + ": " + errno_text(errno));
      chmod(name.c_str(), 0777);
    } else {
      // One listener per reactor on the same port (SO_REUSEPORT); the kernel spreads connections.
      fd = listen_tcp(address, "listen", true, 4096);
      apply_tcp_options(fd, config().tcp);  // inherited by every accepted socket
    }
    log::info("listening on {}", name);
    add(name, fd);
  }
}

void Reactor::close_listeners(bool keep_sockets) {
  for (auto& l : listeners_) {
    if (l->fd < 0) continue;
    if (l->armed && !stopped_) io_cancel(l->accept_op, l->fd);
    if (shared_.upgrade != nullptr) shared_.upgrade->remove_listener(l->fd);
    // shutdown(2) would stop the socket listening in every process that has it: not once an
    // upgrade shared it (close and the cancelled accept are enough).
    if (!keep_sockets && (shared_.upgrade == nullptr || !shared_.upgrade->shared_listeners()))
      ::shutdown(l->fd, SHUT_RDWR);
    ::close(l->fd);
    l->fd = -1;
  }
  if (keep_sockets && metrics_listener_.fd >= 0) {
    // The new process serves /metrics and the probes on the same socket from now on.
    if (metrics_listener_.armed) io_cancel(metrics_listener_.accept_op, metrics_listener_.fd);
    if (shared_.upgrade != nullptr) shared_.upgrade->remove_listener(metrics_listener_.fd);
    ::close(metrics_listener_.fd);
    metrics_listener_.fd = -1;
  }
}

// ---------------------------------------------------------------------------------------------
// Completions

void Reactor::on_accept(Listener& listener, int result, unsigned flags) {
  bool exhausted =
      result == -EMFILE || result == -ENFILE || result == -ENOMEM || result == -ENOBUFS;
  // (EAGAIN: an upgrade's epoll process made the shared socket non-blocking for a moment.)
  if (!(flags & IORING_CQE_F_MORE)) {
    listener.armed = false;
    if (exhausted)
      listener.resting = true;  // (the connection waits in the backlog meanwhile)
    else if (listener.fd >= 0 && !shutting_down())
      arm_accept(listener);
  }
  if (result < 0) {
    if (result != -ECANCELED && result != -EAGAIN)
      log::warning("accept on {} failed: {}", listener.name, errno_text(-result));
    return;
  }
  // (An upgrade's old process serves what it accepted before it stopped: handed over later.)
  if (shutting_down() && shutdown_ != ShutdownMode::handover) {
    ::close(result);
    return;
  }
  std::string peer = "unix";
  config::Peer peer_info;
  peer_info.local = true;
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (getpeername(result, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
      addr.ss_family != AF_UNIX) {
    peer_info.local = false;
    peer_info.family = addr.ss_family;
    if (addr.ss_family == AF_INET)
      std::memcpy(peer_info.address.data(), &reinterpret_cast<sockaddr_in*>(&addr)->sin_addr, 4);
    else if (addr.ss_family == AF_INET6)
      std::memcpy(peer_info.address.data(), &reinterpret_cast<sockaddr_in6*>(&addr)->sin6_addr, 16);
    // An IPv4 client on a dual-stack listener arrives as ::ffff:a.b.c.d: the auth rules see it
    // as the IPv4 address it is.
    if (addr.ss_family == AF_INET6 &&
        IN6_IS_ADDR_V4MAPPED(&reinterpret_cast<sockaddr_in6*>(&addr)->sin6_addr)) {
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
  client->login_->peer = peer_info;
  ++client_count_;
  int clients = shared_.clients.fetch_add(1, std::memory_order_relaxed) + 1;
  set_state(*client, ClientState::startup);
  client->last_activity_ = now_;
  log::debug("C-{} connected from {}", client->id_, client->peer_);
  // Over max_client_conn: still read the startup packet (answering an SSLRequest 'N') so the
  // client sees the 53300 error; the login timeout bounds how long such a client may stay.
  if (clients > config_->max_client_conn) client->login_->refused_too_many = true;
  arm_recv(client->stream_, client->ops_in_flight_);
}

}  // namespace pgring
