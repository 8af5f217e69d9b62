// The reactor's I/O operations on its engine: io_uring (submission queue entries, completions
// from the ring) or, where io_uring is not allowed, the epoll engine (core/epoll.hpp), which
// reports the same completions. Handlers never see which one runs.

#include <sys/socket.h>

#include <cerrno>
#include <stdexcept>

#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"

namespace pgring {

namespace {
constexpr unsigned kRingEntries = 4096;
constexpr unsigned kCqEntries = 16384;
constexpr std::uint32_t kBufferSize = 16384;
constexpr std::uint32_t kBufferCount = 1024;
constexpr std::uint16_t kBufferGroup = 0;

// The ring, or why there is none (an errno).
int setup_ring(io_uring& ring) {
  io_uring_params params{};
  params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL |
                 IORING_SETUP_CQSIZE;
  params.cq_entries = kCqEntries;
  int rc = io_uring_queue_init_params(kRingEntries, &ring, &params);
  if (rc == -EINVAL) {
    // Older kernels (before 6.1) lack DEFER_TASKRUN / SINGLE_ISSUER: run without them.
    params = {};
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = kCqEntries;
    rc = io_uring_queue_init_params(kRingEntries, &ring, &params);
  }
  return rc;
}
}  // namespace

void Reactor::start_engine() {
  const config::IoEngine wanted = config_->io_engine;
  if (wanted != config::IoEngine::epoll) {
    int rc = setup_ring(ring_);
    std::string why;
    if (rc == 0) {
      io_uring_register_ring_fd(&ring_);
      try {
        // Provided buffer rings: Linux 5.19 (multishot receives, which need them, 6.0).
        buffers_ = std::make_unique<BufferRing>(&ring_, kBufferGroup, kBufferSize, kBufferCount);
        return;
      } catch (const std::runtime_error& e) {
        io_uring_queue_exit(&ring_);
        why = e.what();
      }
    } else {
      why = "io_uring setup failed: " + errno_text(-rc);
      if (rc == -EPERM || rc == -ENOSYS)
        why +=
            " (is io_uring disabled? check sysctl kernel.io_uring_disabled, or the container's "
            "seccomp profile: contrib/seccomp/pgring.json allows it)";
    }
    if (wanted == config::IoEngine::io_uring)
      throw std::runtime_error(why + " (io.engine: io_uring)");
    if (index_ == 0) log::warning("{}; running on the epoll engine (io.engine: auto)", why);
  }
  buffers_ = std::make_unique<BufferRing>(nullptr, kBufferGroup, kBufferSize, kBufferCount);
  epoll_ = std::make_unique<EpollEngine>(*buffers_);
}

void Reactor::io_recv(Operation& op, int fd, bool multishot) {
  if (epoll_) {
    ++ring_counters_.sqes;
    return epoll_->recv(op, fd, multishot);
  }
  io_uring_sqe* sqe = get_sqe();
  // No buffer until bytes arrive: the kernel picks one from the ring then.
  if (multishot)
    io_uring_prep_recv_multishot(sqe, fd, nullptr, 0, 0);
  else
    io_uring_prep_recv(sqe, fd, nullptr, buffers_->buffer_size(), 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = buffers_->group();
  io_uring_sqe_set_data(sqe, &op);
}

void Reactor::io_send(Operation& op, int fd, msghdr& msg) {
  if (epoll_) {
    ++ring_counters_.sqes;
    return epoll_->send(op, fd, msg);
  }
  io_uring_sqe* sqe = get_sqe();
  // MSG_WAITALL makes io_uring retry short sends itself; the stream still handles a short one.
  io_uring_prep_sendmsg(sqe, fd, &msg, MSG_NOSIGNAL | MSG_WAITALL);
  io_uring_sqe_set_data(sqe, &op);
}

void Reactor::io_connect(Operation& op, int fd, const sockaddr_storage& address, socklen_t length) {
  const auto* addr = reinterpret_cast<const sockaddr*>(&address);
  if (epoll_) {
    ++ring_counters_.sqes;
    return epoll_->connect(op, fd, addr, length);
  }
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_connect(sqe, fd, addr, length);
  io_uring_sqe_set_data(sqe, &op);
}

void Reactor::io_accept(Operation& op, int fd) {
  if (epoll_) {
    ++ring_counters_.sqes;
    return epoll_->accept(op, fd);
  }
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_multishot_accept(sqe, fd, nullptr, nullptr, SOCK_CLOEXEC);
  io_uring_sqe_set_data(sqe, &op);
}

void Reactor::io_read(Operation& op, int fd, void* buffer, unsigned length) {
  if (epoll_) {
    ++ring_counters_.sqes;
    return epoll_->read(op, fd, buffer, length);
  }
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_read(sqe, fd, buffer, length, 0);
  io_uring_sqe_set_data(sqe, &op);
}

void Reactor::io_cancel(Operation& target, int fd) {
  if (epoll_) return epoll_->cancel(target, fd);
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_cancel(sqe, &target, 0);
  io_uring_sqe_set_data(sqe, &ignore_op_);
}

void Reactor::io_cancel_fd(int fd) {
  if (epoll_) return epoll_->cancel_fd(fd);
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data(sqe, &ignore_op_);
}

}  // namespace pgring
