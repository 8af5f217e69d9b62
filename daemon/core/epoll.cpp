// The epoll engine (core/epoll.hpp): io_uring's operations done with readiness.

#include "daemon/core/epoll.hpp"

#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

#include "daemon/net/tls.hpp"  // (Stream's TlsSession, for stream.hpp's inline members)

namespace pgring {

namespace {

// Multishot receives take at most this many buffers per readiness (then let others run; the
// socket stays readable and is served again next turn), as io_uring spreads its completions.
constexpr int kReceivesPerTurn = 4;
constexpr int kAcceptsPerTurn = 64;

void set_nonblocking(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags >= 0 && !(flags & O_NONBLOCK)) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

}  // namespace

EpollEngine::EpollEngine(BufferRing& buffers) : buffers_(buffers), events_(256) {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) throw std::runtime_error(std::string("epoll_create1: ") + std::strerror(errno));
}

EpollEngine::~EpollEngine() {
  if (epfd_ >= 0) ::close(epfd_);
}

EpollEngine::FdState& EpollEngine::state(int fd) {
  auto index = static_cast<std::size_t>(fd);
  if (index >= fds_.size()) fds_.resize(std::max(index + 1, fds_.size() * 2));
  return fds_[index];
}

// ---- starting operations -------------------------------------------------------------------

void EpollEngine::recv(Operation& op, int fd, bool multishot) {
  FdState& s = state(fd);
  s.in = multishot ? FdState::In::recv_multishot : FdState::In::recv_once;
  s.in_op = &op;
  watch(fd, s);
}

void EpollEngine::send(Operation& op, int fd, const msghdr& msg) {
  FdState& s = state(fd);
  s.out = FdState::Out::send;
  s.out_op = &op;
  s.msg = msg;
  s.send_blocked = false;
  new_sends_.push_back(fd);  // tried in run(), with everything else this turn queued
}

void EpollEngine::connect(Operation& op, int fd, const sockaddr* address, socklen_t length) {
  set_nonblocking(fd);
  FdState& s = state(fd);
  int rc = ::connect(fd, address, length);
  if (rc == 0 || errno != EINPROGRESS) {
    complete(op, rc == 0 ? 0 : -errno);
    return;
  }
  s.out = FdState::Out::connect;
  s.out_op = &op;
  watch(fd, s);
}

void EpollEngine::accept(Operation& op, int fd) {
  set_nonblocking(fd);
  FdState& s = state(fd);
  s.in = FdState::In::accept;
  s.in_op = &op;
  watch(fd, s);
}

void EpollEngine::read(Operation& op, int fd, void* buffer, std::size_t length) {
  set_nonblocking(fd);
  FdState& s = state(fd);
  s.in = FdState::In::read;
  s.in_op = &op;
  s.read_buffer = buffer;
  s.read_length = length;
  watch(fd, s);
}

void EpollEngine::cancel(Operation& target, int fd) {
  if (fd < 0) return;
  FdState& s = state(fd);
  if (s.in != FdState::In::none && s.in_op == &target) end_in(s, -ECANCELED);
  if (s.out != FdState::Out::none && s.out_op == &target) end_out(s, -ECANCELED);
  watch(fd, s);
}

void EpollEngine::cancel_fd(int fd) {
  if (fd < 0) return;
  FdState& s = state(fd);
  if (s.in != FdState::In::none) end_in(s, -ECANCELED);
  if (s.out != FdState::Out::none) end_out(s, -ECANCELED);
  watch(fd, s);
}

void EpollEngine::end_in(FdState& s, int res, unsigned flags) {
  s.in = FdState::In::none;
  complete(*s.in_op, res, flags);
  s.in_op = nullptr;
}

void EpollEngine::end_out(FdState& s, int res) {
  s.out = FdState::Out::none;
  s.send_blocked = false;
  complete(*s.out_op, res);
  s.out_op = nullptr;
}

void EpollEngine::watch(int fd, FdState& s) {
  std::uint32_t wanted = 0;
  if (s.in != FdState::In::none) wanted |= EPOLLIN;
  if (s.out == FdState::Out::connect || (s.out == FdState::Out::send && s.send_blocked))
    wanted |= EPOLLOUT;
  if (wanted == s.events) return;
  epoll_event ev{};
  ev.events = wanted;
  ev.data.fd = fd;
  int op = s.events == 0 ? EPOLL_CTL_ADD : wanted == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
  int rc = epoll_ctl(epfd_, op, fd, &ev);
  if (rc < 0 && op == EPOLL_CTL_MOD && errno == ENOENT) {
    // The number was closed while watched (a listener closed at shutdown without a cancel)
    // and now names a new socket: watch that one.
    op = EPOLL_CTL_ADD;
    rc = epoll_ctl(epfd_, op, fd, &ev);
  }
  if (rc < 0) {
    // Not a socket epoll can watch (or gone): the operations waiting on it fail.
    int err = errno;
    s.events = 0;
    if (op == EPOLL_CTL_DEL) return;
    if (s.in != FdState::In::none) end_in(s, -err);
    if (s.out != FdState::Out::none) end_out(s, -err);
    return;
  }
  s.events = wanted;
}

// ---- the loop turn -------------------------------------------------------------------------

void EpollEngine::run(std::chrono::nanoseconds timeout) {
  // Sends first: one sendmsg per socket with what this turn queued, no wait for EPOLLOUT.
  for (int fd : new_sends_) {
    FdState& s = state(fd);
    if (s.out == FdState::Out::send && !s.send_blocked) do_out(fd, s);
    watch(fd, s);
  }
  new_sends_.clear();
  int wait_ms = 0;
  if (completions_.empty() && timeout.count() > 0)
    wait_ms = static_cast<int>((timeout.count() + 999'999) / 1'000'000);  // round up
  int n = epoll_wait(epfd_, events_.data(), static_cast<int>(events_.size()), wait_ms);
  if (n < 0) return;  // EINTR: the caller's loop comes back
  for (int i = 0; i < n; ++i) {
    int fd = events_[static_cast<std::size_t>(i)].data.fd;
    std::uint32_t ev = events_[static_cast<std::size_t>(i)].events;
    FdState& s = state(fd);
    // Errors and hang-ups go to whichever operation is waiting: it meets them in its call.
    if ((ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) && s.in != FdState::In::none) do_in(fd, s);
    if ((ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && s.out != FdState::Out::none) do_out(fd, s);
    watch(fd, s);
  }
  if (static_cast<std::size_t>(n) == events_.size()) events_.resize(events_.size() * 2);
}

void EpollEngine::do_in(int fd, FdState& s) {
  switch (s.in) {
    case FdState::In::none:
      return;
    case FdState::In::recv_once:
    case FdState::In::recv_multishot: {
      const bool multishot = s.in == FdState::In::recv_multishot;
      for (int i = 0; i < (multishot ? kReceivesPerTurn : 1); ++i) {
        auto bid = buffers_.take_free();
        if (!bid) {
          // As io_uring: ENOBUFS only when there are bytes and nowhere to put them. After a
          // first receive this turn the socket may be drained: the receive stays armed (level
          // triggered, it comes back next turn) instead of stalling until buffers return.
          if (i == 0) end_in(s, -ENOBUFS);  // the reactor re-arms once buffers come back
          return;
        }
        ssize_t got = ::recv(fd, buffers_.data(*bid), buffers_.buffer_size(), MSG_DONTWAIT);
        if (got > 0) {
          unsigned flags = IORING_CQE_F_BUFFER | (unsigned{*bid} << IORING_CQE_BUFFER_SHIFT);
          if (!multishot) {
            end_in(s, static_cast<int>(got), flags);
            return;
          }
          complete(*s.in_op, static_cast<int>(got), flags | IORING_CQE_F_MORE);
          continue;
        }
        int err = got == 0 ? 0 : errno;
        buffers_.give_back(*bid);
        if (err == EAGAIN || err == EWOULDBLOCK) return;
        if (err == EINTR) continue;
        end_in(s, -err);  // 0: end of stream
        return;
      }
      return;
    }
    case FdState::In::accept:
      for (int i = 0; i < kAcceptsPerTurn; ++i) {
        // Blocking sockets, as io_uring's accept gives them (pgring's sends and receives here
        // say MSG_DONTWAIT; connect() sets O_NONBLOCK itself).
        int client = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (client >= 0) {
          complete(*s.in_op, client, IORING_CQE_F_MORE);
          continue;
        }
        int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK) return;
        if (err == EINTR || err == ECONNABORTED) continue;
        end_in(s, -err);  // EMFILE and the like end it: the owner re-arms, as with io_uring
        return;
      }
      return;
    case FdState::In::read: {
      ssize_t got = ::read(fd, s.read_buffer, s.read_length);
      if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
      end_in(s, got < 0 ? -errno : static_cast<int>(got));
      return;
    }
  }
}

void EpollEngine::do_out(int fd, FdState& s) {
  if (s.out == FdState::Out::connect) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    end_out(s, -err);
    return;
  }
  if (s.out != FdState::Out::send) return;
  ssize_t sent = ::sendmsg(fd, &s.msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (sent >= 0) {
    end_out(s, static_cast<int>(sent));  // a short send: the stream sends the rest next turn
    return;
  }
  int err = errno;
  if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) {
    s.send_blocked = true;
    return;
  }
  end_out(s, -err);
}

}  // namespace pgring
