#pragma once
// The epoll engine: the operations pgring asks of io_uring (receives into the reactor's
// buffers, sendmsg, connect, accept, reads of the eventfd and signalfd, cancels), done with
// readiness and non-blocking system calls and reported as the same completions (operation,
// result, flags), so that every handler, pool and timer is the same code on both engines.
//
// It runs where io_uring may not (container runtimes' default seccomp profiles, Linux's
// kernel.io_uring_disabled) or where `io.engine: epoll` asks for it. What it does per loop turn
// is what PgBouncer does: one sendmsg per socket with everything queued (tried at once, before
// waiting; EPOLLOUT only after EAGAIN), and receives when the socket is readable. Interest is
// level-triggered and changed with epoll_ctl only when an operation starts or ends, so a
// connection's multishot receive costs one epoll_ctl for its whole life.

#include <sys/epoll.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <vector>

#include "daemon/core/stream.hpp"

namespace pgring {

class EpollEngine {
 public:
  explicit EpollEngine(BufferRing& buffers);
  ~EpollEngine();
  EpollEngine(const EpollEngine&) = delete;
  EpollEngine& operator=(const EpollEngine&) = delete;

  // The operations, as io_uring's: each ends with exactly one completion without
  // IORING_CQE_F_MORE (multishot ones deliver more before it, with the flag).
  void recv(Operation& op, int fd, bool multishot);  // a buffer of `buffers` per completion
  void send(Operation& op, int fd, const msghdr& msg);
  void connect(Operation& op, int fd, const sockaddr* address, socklen_t length);
  void accept(Operation& op, int fd);  // multishot
  void read(Operation& op, int fd, void* buffer, std::size_t length);
  // The operation on `fd` ends with -ECANCELED (nothing if it already ended).
  void cancel(Operation& target, int fd);
  void cancel_fd(int fd);  // every operation on it

  // Tries the sends started this turn, then waits up to `timeout` for readiness (not at all
  // when completions are waiting) and does the ready operations' I/O.
  void run(std::chrono::nanoseconds timeout);

  struct Completion {
    Operation* op;
    int res;
    unsigned flags;
  };
  // Completions in the order they happened; the reactor takes them each turn.
  std::vector<Completion>& completions() { return completions_; }

 private:
  struct FdState {
    enum class In : std::uint8_t { none, recv_once, recv_multishot, accept, read };
    enum class Out : std::uint8_t { none, send, connect };
    In in = In::none;
    Out out = Out::none;
    bool send_blocked = false;  // the last sendmsg met EAGAIN: wait for EPOLLOUT
    std::uint32_t events = 0;   // what epoll watches for this fd now
    Operation* in_op = nullptr;
    Operation* out_op = nullptr;
    void* read_buffer = nullptr;
    std::size_t read_length = 0;
    msghdr msg{};
  };
  FdState& state(int fd);
  void complete(Operation& op, int res, unsigned flags = 0) {
    completions_.push_back({&op, res, flags});
  }
  // epoll_ctl so that epoll watches what the fd's operations wait for (and nothing when none).
  void watch(int fd, FdState& s);
  void do_in(int fd, FdState& s);
  void do_out(int fd, FdState& s);
  void end_in(FdState& s, int res, unsigned flags = 0);
  void end_out(FdState& s, int res);

  BufferRing& buffers_;
  int epfd_ = -1;
  std::vector<FdState> fds_;    // by fd number
  std::vector<int> new_sends_;  // fds whose send started this turn: tried before waiting
  std::vector<Completion> completions_;
  std::vector<epoll_event> events_;
};

}  // namespace pgring
