#include "daemon/ops/upgrade.hpp"

#include <limits.h>
#include <poll.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>

#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/core/shared.hpp"
#include "proto/handover.hpp"

namespace pgring {

namespace handover = proto::handover;

namespace {

// ---- frames over a blocking unix stream socket, a descriptor beside some of them ----------

// Sends one frame; `fd` (if any) travels with its first byte.
bool send_frame(int sock, handover::Kind kind, std::string_view body, int fd = -1) {
  std::string bytes;
  handover::append_frame(bytes, kind, body);
  std::size_t done = 0;
  while (done < bytes.size()) {
    iovec iov{bytes.data() + done, bytes.size() - done};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    if (fd >= 0 && done == 0) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

// Reads exactly `n` bytes (never past them: a descriptor belongs to the frame it came with),
// collecting the descriptors that arrive. False at EOF or an error.
bool receive_exactly(int sock, char* out, std::size_t n, std::vector<int>& fds) {
  std::size_t done = 0;
  while (done < n) {
    iovec iov{out + done, n - done};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t r = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds.push_back(fd);
      }
    }
    done += static_cast<std::size_t>(r);
  }
  return true;
}

struct Frame {
  handover::Kind kind;
  std::string body;
  int fd = -1;  // the descriptor that came with it, if any
};

// The next frame, or nullopt (EOF, an error, or bytes that are not this protocol: the
// connection is over either way). Stray descriptors are closed.
std::optional<Frame> receive_frame(int sock) {
  std::vector<int> fds;
  char header[handover::kHeaderSize];
  auto close_all = [&] {
    for (int fd : fds) ::close(fd);
  };
  if (!receive_exactly(sock, header, sizeof header, fds)) {
    close_all();
    return std::nullopt;
  }
  std::optional<handover::Header> h =
      handover::parse_header(std::string_view(header, sizeof header));
  if (!h) {
    close_all();
    return std::nullopt;
  }
  Frame frame{h->kind, std::string(h->length, '\0')};
  if (h->length > 0 && !receive_exactly(sock, frame.body.data(), h->length, fds)) {
    close_all();
    return std::nullopt;
  }
  if (!fds.empty()) {
    frame.fd = fds.front();
    for (std::size_t i = 1; i < fds.size(); ++i) ::close(fds[i]);
  }
  return frame;
}

// The peer of a control connection must run as this process's user (or root): a local user
// who could connect could otherwise take the listening sockets and every client.
bool trusted_peer(int sock, pid_t& pid) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
  pid = cred.pid;
  return cred.uid == getuid() || cred.uid == 0;
}

sockaddr_un socket_address(const std::string& path) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::memcpy(sun.sun_path, path.c_str(), std::min(path.size() + 1, sizeof sun.sun_path - 1));
  return sun;
}

}  // namespace

Upgrade::Upgrade(Shared& shared, std::string path) : shared_(shared), path_(std::move(path)) {
  wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (path_.size() >= sizeof(sockaddr_un{}.sun_path))
    throw std::runtime_error("upgrade.socket: " + path_ +
                             " is too long for a unix socket path (107 bytes at most)");
  char exe[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) executable_.assign(exe, static_cast<std::size_t>(n));
}

void Upgrade::spawn_takeover(const std::string& config_path) {
  if (executable_.empty()) {
    log::error("SIGUSR2: this process's executable is unknown: no upgrade in place");
    return;
  }
  std::vector<std::string> args = {executable_, "--config", config_path, "--takeover"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The new process starts with no signal blocked (it blocks its own) and the same output.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, executable_.c_str(), nullptr, &attr, argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    log::error("SIGUSR2: cannot start {}: {}", executable_, errno_text(rc));
    return;
  }
  log::info("SIGUSR2: started {} --takeover (pid {})", executable_, pid);
  // Reaped by a thread of its own: a takeover that fails leaves no zombie behind, and one that
  // succeeds outlives this process (its parent becomes the service manager or init).
  std::thread([pid] {
    int status = 0;
    if (::waitpid(pid, &status, 0) == pid && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
      log::warning("upgrade: the takeover process (pid {}) exited with status {}", pid,
                   WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  }).detach();
}

Upgrade::~Upgrade() {
  finish();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

// ---- the new process -----------------------------------------------------------------------

void Upgrade::connect() {
  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sun = socket_address(path_);
  if (sock < 0 || ::connect(sock, reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0) {
    std::string error = errno_text(errno);
    if (sock >= 0) ::close(sock);
    throw std::runtime_error("--takeover: no pgring answers at " + path_ +
                             " (upgrade.socket): " + error);
  }
  if (!trusted_peer(sock, old_pid_)) {
    ::close(sock);
    throw std::runtime_error("--takeover: the process at " + path_ +
                             " runs as another user: not taking over from it");
  }
  std::string pid = std::to_string(getpid());
  bool ok = send_frame(sock, handover::Kind::hello, pid);
  while (ok) {
    std::optional<Frame> frame = receive_frame(sock);
    if (!frame) {
      ok = false;
      break;
    }
    if (frame->kind == handover::Kind::listeners_done) break;
    std::optional<handover::Listener> l = handover::decode_listener(frame->body);
    if (frame->kind != handover::Kind::listener || !l || frame->fd < 0) {
      if (frame->fd >= 0) ::close(frame->fd);
      ok = false;
      break;
    }
    inherited_.push_back({l->name, static_cast<int>(l->reactor), frame->fd});
  }
  if (!ok) {
    ::close(sock);
    for (const Listener& l : inherited_) ::close(l.fd);
    inherited_.clear();
    throw std::runtime_error(fmt::format(
        "--takeover: pgring (pid {}) at {} did not hand its listeners over (is another takeover "
        "under way?)",
        old_pid_, path_));
  }
  peer_ = sock;
  took_over_ = true;
  log::info("upgrade: taking over from pid {} ({} listening sockets)", old_pid_, inherited_.size());
}

std::vector<int> Upgrade::take_listeners(const std::string& name, int index, int workers) {
  std::lock_guard lock(mutex_);
  std::vector<int> fds;
  for (Listener& l : inherited_) {
    if (l.fd < 0 || l.name != name || l.reactor % workers != index) continue;
    fds.push_back(l.fd);
    l.fd = -1;
  }
  return fds;
}

void Upgrade::drop_untaken() {
  std::lock_guard lock(mutex_);
  for (Listener& l : inherited_) {
    if (l.fd < 0) continue;
    log::warning("upgrade: {} is not in this configuration's listen: no longer listening there",
                 l.name);
    ::close(l.fd);
    l.fd = -1;
  }
}

void Upgrade::begin_adopting() {
  if (peer_ < 0) return;
  if (!send_frame(peer_, handover::Kind::ready, {})) {
    log::error("upgrade: the old process (pid {}) went away before the handover", old_pid_);
    ::close(peer_);
    peer_ = -1;
    return;
  }
  adopting_ = true;
  adopter_ = std::thread([this] { adopt_loop(); });
}

void Upgrade::adopt_loop() {
  pthread_setname_np(pthread_self(), "upgrade-adopt");
  const int workers = shared_.workers();
  for (;;) {
    std::optional<Frame> frame = receive_frame(peer_);
    if (!frame || frame->kind == handover::Kind::done) {
      log::info("upgrade: {} clients taken over from pid {}{}", adopted_, old_pid_,
                frame ? "; it has exited" : "; it closed the control connection");
      break;
    }
    if (frame->kind == handover::Kind::client_key) {
      if (std::optional<handover::ClientKey> k = handover::decode_client_key(frame->body))
        shared_.remember_client_key(k->user, k->secret, k->key);
      continue;
    }
    std::optional<handover::Client> client;
    if (frame->kind == handover::Kind::client) client = handover::decode_client(frame->body);
    if (!client || frame->fd < 0) {
      log::error("upgrade: a client record from pid {} could not be read: that client is lost",
                 old_pid_);
      if (frame->fd >= 0) ::close(frame->fd);
      continue;
    }
    // The reactor its cancel key names: a CancelRequest for it finds it there.
    int owner =
        (static_cast<unsigned char>(client->cancel_secret[0]) & (kMaxWorkers - 1)) % workers;
    Reactor* reactor = shared_.reactors[static_cast<std::size_t>(owner)].load();
    if (reactor == nullptr) {
      ::close(frame->fd);
      continue;
    }
    ++adopted_;
    auto record = std::make_shared<handover::Client>(std::move(*client));
    reactor->post([record, fd = frame->fd](Reactor& r) { r.adopt(std::move(*record), fd); });
  }
  adopting_ = false;  // (the socket is closed by stop_adopting, after the join)
}

// ---- every process: the control socket -------------------------------------------------------

void Upgrade::serve() {
  sockaddr_un sun = socket_address(path_);
  int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  bool answered =
      probe >= 0 && ::connect(probe, reinterpret_cast<sockaddr*>(&sun), sizeof sun) == 0;
  if (probe >= 0) ::close(probe);
  // (After a takeover the old process still listens there, on a socket about to close.)
  if (answered && !took_over_) {
    log::warning(
        "upgrade: another pgring answers at {} (upgrade.socket): this one cannot be upgraded in "
        "place",
        path_);
    return;
  }
  if (!bind_control()) return;
  server_ = std::thread([this] { serve_loop(); });
}

bool Upgrade::bind_control() {
  sockaddr_un sun = socket_address(path_);
  ::unlink(path_.c_str());  // a stale socket, or the old process's
  listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  mode_t was = umask(077);  // the socket is this user's alone
  bool ok = listen_fd_ >= 0 &&
            bind(listen_fd_, reinterpret_cast<sockaddr*>(&sun), sizeof sun) == 0 &&
            ::listen(listen_fd_, 4) == 0;
  umask(was);
  if (!ok) {
    log::warning("upgrade: cannot listen on {} (upgrade.socket): {}; no upgrade in place", path_,
                 errno_text(errno));
    if (listen_fd_ >= 0) ::close(listen_fd_);
    listen_fd_ = -1;
    return false;
  }
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0) {
    dev_ = st.st_dev;
    ino_ = st.st_ino;
  }
  log::info("upgrade: control socket {}", path_);
  return true;
}

void Upgrade::serve_loop() {
  pthread_setname_np(pthread_self(), "upgrade");
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;
    if (fds[1].revents != 0) return;  // finish()
    if ((fds[0].revents & POLLIN) == 0) continue;
    int conn = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;
    take_over_by(conn);
    if (handing_over_) {
      // One takeover per process: the control socket's path now belongs to the new one.
      ::close(listen_fd_);
      listen_fd_ = -1;
      if (send_clients(conn)) return;
      // The new process died: this one serves again, and can be upgraded again.
      if (!bind_control()) return;
    }
  }
}

void Upgrade::take_over_by(int conn) {
  pid_t pid = 0;
  if (!trusted_peer(conn, pid)) {
    log::warning("upgrade: refused a control connection from pid {} (another user)", pid);
    ::close(conn);
    return;
  }
  // A peer that says nothing, or stops reading, does not hold this process up for ever.
  timeval timeout{10, 0};
  setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  timeval send_timeout{30, 0};
  setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof send_timeout);
  std::optional<Frame> hello = receive_frame(conn);
  if (!hello || hello->kind != handover::Kind::hello) {
    ::close(conn);
    return;
  }
  if (adopting_) {
    // Its own clients are still arriving from the process it took over from: were it to hand
    // over and exit now, those still on their way would be lost.
    log::warning(
        "upgrade: pid {} wants to take over while this process still takes over from "
        "pid {}: refused (try again once that is done)",
        pid, old_pid_);
    ::close(conn);
    return;
  }
  log::info("upgrade: pid {} is taking over: handing it the listening sockets", pid);
  bool ok = true;
  shared_listeners_ = true;
  {
    std::lock_guard lock(mutex_);
    for (const Listener& l : listeners_)
      ok = ok &&
           send_frame(conn, handover::Kind::listener,
                      handover::encode(handover::Listener{l.name, std::uint32_t(l.reactor)}), l.fd);
  }
  ok = ok && send_frame(conn, handover::Kind::listeners_done, {});
  // The new process starts its reactors (and looks its hosts up) before it says it accepts.
  std::optional<Frame> ready;
  if (ok) {
    pollfd fds[2] = {{conn, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    while (::poll(fds, 2, -1) < 0 && errno == EINTR) {
    }
    if (fds[1].revents == 0) {
      timeval none{0, 0};  // (it may take its time: looking its hosts up, say)
      setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
      ready = receive_frame(conn);
    }
  }
  if (!ready || ready->kind != handover::Kind::ready) {
    log::warning("upgrade: pid {} did not take over (it failed to start?): still serving", pid);
    ::close(conn);
    return;
  }
  std::lock_guard lock(mutex_);
  if (reactors_stopping_) {
    // This process is stopping anyway (a shutdown came first): the new one serves.
    log::info("upgrade: pid {} accepts connections; this process is already stopping", pid);
    ::close(conn);
    return;
  }
  log::info("upgrade: pid {} accepts connections: handing clients over as they go idle", pid);
  handing_over_ = true;
  for (int i = 0; i < shared_.workers(); ++i)
    if (Reactor* r = shared_.reactors[static_cast<std::size_t>(i)].load())
      r->post([](Reactor& self) { self.begin_shutdown(Reactor::ShutdownMode::handover); });
}

bool Upgrade::send_clients(int conn) {
  std::uint64_t keys_sent = ~std::uint64_t{0};
  bool alive = true;
  std::uint64_t sent = 0;
  // The new process hung up (it died): nothing more can go to it.
  auto hung_up = [&] {
    pollfd p{conn, POLLRDHUP, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
  };
  for (;;) {
    std::deque<Queued> batch;
    {
      std::unique_lock lock(mutex_);
      queued_.wait_for(lock, std::chrono::milliseconds(100),
                       [&] { return !queue_.empty() || finishing_; });
      batch.swap(queue_);
      if (batch.empty() && finishing_) break;
    }
    if (!alive || hung_up()) {
      alive = false;
      abandon(batch, sent);
      ::close(conn);
      return false;
    }
    // SCRAM pass-through keys first: a client's first server login may need its user's.
    std::uint64_t version = 0;
    std::vector<Shared::ClientKey> keys = shared_.client_keys(version);
    if (alive && version != keys_sent) {
      for (const Shared::ClientKey& k : keys)
        alive = alive && send_frame(conn, handover::Kind::client_key,
                                    handover::encode(handover::ClientKey{k.user, k.secret, k.key}));
      keys_sent = version;
    }
    for (Queued& q : batch) {
      if (alive) {
        alive = send_frame(conn, handover::Kind::client, q.record, q.fd);
        if (!alive)
          log::error("upgrade: the new process is gone: clients handed over from now on are lost");
        else
          ++sent;
      }
      ::close(q.fd);  // (the new process has its own descriptor now)
    }
  }
  if (alive) (void)send_frame(conn, handover::Kind::done, {});
  log::info("upgrade: {} clients handed over", sent);
  ::close(conn);
  return true;
}

void Upgrade::abandon(std::deque<Queued>& batch, std::uint64_t sent) {
  // The clients on their way are lost (they see their connection end); the reactors stop
  // handing over, listen anew and serve the rest as before.
  std::size_t lost = batch.size();
  for (Queued& q : batch) ::close(q.fd);
  {
    std::lock_guard lock(mutex_);
    handing_over_ = false;
    lost += queue_.size();
    for (Queued& q : queue_) ::close(q.fd);
    queue_.clear();
    if (!reactors_stopping_)
      for (int i = 0; i < shared_.workers(); ++i)
        if (Reactor* r = shared_.reactors[static_cast<std::size_t>(i)].load())
          r->post([](Reactor& self) { self.resume_service(); });
  }
  log::error(
      "upgrade: the new process is gone after {} clients were handed over ({} lost on the way): "
      "this process serves again",
      sent, lost);
}

void Upgrade::add_listener(const std::string& name, int reactor, int fd) {
  std::lock_guard lock(mutex_);
  listeners_.push_back({name, reactor, fd});
}

void Upgrade::remove_listener(int fd) {
  std::lock_guard lock(mutex_);
  std::erase_if(listeners_, [&](const Listener& l) { return l.fd == fd; });
}

void Upgrade::hand_over(std::string record, int fd) {
  {
    std::lock_guard lock(mutex_);
    if (!handing_over_) {
      ::close(fd);  // (the takeover failed meanwhile: nobody to send it to)
      return;
    }
    queue_.push_back({std::move(record), fd});
  }
  queued_.notify_one();
}

void Upgrade::finish() {
  {
    std::lock_guard lock(mutex_);
    if (finishing_) return;
    finishing_ = true;
  }
  queued_.notify_all();
  std::uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof one);
  if (server_.joinable()) server_.join();
  // Nobody to send them to (no takeover): their sockets close.
  for (Queued& q : queue_) ::close(q.fd);
  queue_.clear();
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    listen_fd_ = -1;
    struct stat st {};
    if (!handing_over_ && ::stat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_)
      ::unlink(path_.c_str());
  }
  stop_adopting();
}

void Upgrade::stop_adopting() {
  {
    std::lock_guard lock(mutex_);
    reactors_stopping_ = true;
  }
  if (peer_ >= 0) ::shutdown(peer_, SHUT_RDWR);  // the adopter stops reading
  if (adopter_.joinable()) adopter_.join();
  if (peer_ >= 0) ::close(peer_);
  peer_ = -1;
}

}  // namespace pgring
