#pragma once
// Buffers and the byte stream of one socket.
//
// Receive: every recv takes a buffer from the reactor's provided buffer ring only when bytes
// arrive (an idle connection holds none). Received buffers form the connection's input chain;
// handlers frame messages from it. A message pgring forwards unchanged is not copied: its bytes
// become slices of the peer's send queue that pin the ring buffer (a reference count) until the
// send completes. A ring buffer goes back to the kernel when its last reference is dropped.
//
// TLS: once start_tls() ran, received bytes are ciphertext. They are decrypted as they arrive
// into owned input (the ring buffer goes back at once), and everything queued for sending is
// encrypted when a batch is prepared: handlers see plaintext either way.
//
// Send: at most one sendmsg in flight per socket (io_uring may reorder concurrent sends). Bytes
// queued meanwhile wait in `queue_` and go out as one batch when the send completes. Bytes
// pgring builds itself live in `staging_`; when a batch is submitted, `staging_` is frozen as
// `inflight_owned_` (swapped, never reallocated under the kernel) until that send completes.
//
// Memory: the queues and buffers above live in a StreamIo that a stream takes from the
// reactor's spares when bytes start moving. An idle client gives it back (trim) once nothing is
// received, queued or in flight, so it is the socket, two operations and a null pointer; a busy
// connection keeps its warm StreamIo (servers are few and always busy again soon).

#include <liburing.h>
#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/core/spares.hpp"
#include "proto/frame.hpp"

namespace pgring {

class TlsSession;

// What a stream needs only while bytes move through it (see Stream: Memory).
struct StreamIo {
  static constexpr std::int32_t kOwned = -1;       // a slice of staging_/inflight_owned_
  static constexpr std::int32_t kOwnedInput = -1;  // a segment of owned_input_
  struct Segment {
    std::int32_t bid;  // ring buffer id, or kOwnedInput
    std::uint32_t begin;
    std::uint32_t end;
  };
  struct Slice {
    std::int32_t bid;  // ring buffer id, or kOwned
    std::uint32_t offset;
    std::uint32_t length;
  };
  std::vector<Segment> input;
  std::string carry;
  std::string owned_input;

  std::vector<Slice> queue;
  std::string staging;
  std::vector<Slice> inflight;
  std::string inflight_owned;
  std::vector<iovec> iov;
  std::size_t iov_done = 0;  // iovecs fully sent
  msghdr msg{};
  std::string cipher;  // records (and clear bytes before TLS began) waiting for the next batch

  // Empty again, keeping modest capacities (a spare should be warm, not large).
  void reset();
};

class BufferRing {
 public:
  // `count` must be a power of two. Registers the ring as buffer group `group` of `ring`; with
  // no ring (the epoll engine) the buffers are handed out by take_free() instead.
  BufferRing(io_uring* ring, std::uint16_t group, std::uint32_t buffer_size, std::uint32_t count);
  ~BufferRing();
  BufferRing(const BufferRing&) = delete;
  BufferRing& operator=(const BufferRing&) = delete;

  [[nodiscard]] std::uint16_t group() const { return group_; }
  [[nodiscard]] std::uint32_t buffer_size() const { return buffer_size_; }
  [[nodiscard]] std::uint32_t count() const { return count_; }
  [[nodiscard]] char* data(std::uint16_t bid) const {
    return base_ + std::size_t{bid} * buffer_size_;
  }
  [[nodiscard]] std::uint32_t available() const { return available_; }

  // A recv completion handed us buffer `bid` (one reference, owned by the input chain).
  void taken(std::uint16_t bid);
  void ref(std::uint16_t bid) { ++refs_[bid]; }
  void unref(std::uint16_t bid);
  // Make buffers returned during this loop turn visible to the kernel (one store).
  void publish();
  // The epoll engine picks the buffer a receive goes to (io_uring's kernel does it otherwise):
  // a free one (then taken() by the stream it fills), or back unused (nothing was received).
  [[nodiscard]] std::optional<std::uint16_t> take_free() {
    if (free_.empty()) return std::nullopt;
    std::uint16_t bid = free_.back();
    free_.pop_back();
    return bid;
  }
  void give_back(std::uint16_t bid) { free_.push_back(bid); }

  // Spare stream I/O states (see Stream): taken by a stream that starts moving bytes, given
  // back when it is drained.
  Spares<StreamIo>& spare_io() { return spare_io_; }

 private:
  io_uring* ring_;  // null: the epoll engine's buffers (free_)
  std::uint16_t group_;
  std::uint32_t buffer_size_;
  std::uint32_t count_;
  char* base_ = nullptr;
  io_uring_buf_ring* br_ = nullptr;
  std::vector<std::uint16_t> refs_;
  std::uint32_t available_ = 0;
  int pending_returns_ = 0;
  std::vector<std::uint16_t> free_;  // the epoll engine's free buffers, most recently used last
  [[gnu::noinline]] void free_unused(std::uint16_t bid);
  Spares<StreamIo> spare_io_;
};

// An io_uring request in flight. Its address is the SQE's user_data; the object lives inside
// the connection (or listener) that owns it, which is freed only once none is in flight.
struct Operation {
  enum class Kind : std::uint8_t {
    accept,
    client_recv,
    client_send,
    server_recv,
    server_send,
    server_connect,
    cancel_connect,
    cancel_send,
    cancel_recv,
    http_accept,
    http_recv,
    http_send,
    signal,
    mailbox,  // the eventfd other reactors ring after posting a task
    ignore,   // completions we do not care about (cancel requests)
  };
  Kind kind;
  void* owner;
};

class Stream {
 public:
  static constexpr std::int32_t kOwned = StreamIo::kOwned;
  using Slice = StreamIo::Slice;

  Stream(BufferRing& buffers, Operation::Kind recv_kind, Operation::Kind send_kind, void* owner)
      : recv_op_{recv_kind, owner}, send_op_{send_kind, owner}, buffers_(&buffers) {}
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  int fd = -1;

  // ---- input ----
  void on_received(std::uint16_t bid, std::uint32_t length);
  // Bytes that arrived some other way (no ring buffer): copied into owned input. The TLS path
  // appends decrypted bytes here; the handler tests feed their byte scripts through it.
  void receive_bytes(std::string_view bytes);
  [[nodiscard]] std::size_t input_size() const { return input_bytes_; }
  // Copies the first n bytes (n <= input_size()) to out; for message headers.
  void peek(char* out, std::size_t n) const;
  // The typed message at the front of the input (every reader of typed messages frames here):
  // complete (all of it is in), need_more (header_known() once its 5 bytes are in: the body may
  // be streamed), or bad() (a lying length, or over `max_size`).
  // The input's first bytes, as many as its first segment holds (input_size() > 0): to look at a
  // message's first bytes without a copy or a call.
  [[nodiscard]] std::string_view front() const {
    const Segment& first = io_->input.front();
    return {segment_data(first) + first.begin, static_cast<std::size_t>(first.end - first.begin)};
  }
  [[nodiscard]] proto::Frame next_frame(std::uint32_t max_size) const {
    if (input_bytes_ < 5) return {};
    // The header is almost always inside the first segment: read it there (no copy).
    const Segment& first = io_->input.front();
    char header[5];
    const char* h = segment_data(first) + first.begin;
    if (first.end - first.begin < 5) {
      peek(header, 5);
      h = header;
    }
    proto::Frame frame = proto::frame_message(std::string_view(h, 5), max_size);
    if (frame.status == proto::FrameStatus::need_more && input_bytes_ >= frame.size)
      frame.status = proto::FrameStatus::complete;
    return frame;
  }
  // The first n bytes as one view: directly in the ring buffer when they lie in one, else
  // stitched into `carry_` (only for the small messages pgring inspects).
  [[nodiscard]] std::string_view contiguous(std::size_t n);
  void consume(std::size_t n);
  // Moves the first n input bytes to `to`'s send queue without copying them.
  void forward(std::size_t n, Stream& to);
  // Copies the unconsumed input out of the ring buffers into this stream's own memory and
  // returns the buffers. For connections whose bytes wait (a client queued for a server): the
  // shared ring must never be held by data that is not moving, or a few thousand waiting
  // clients would starve the servers' receives of buffers and everything would stop.
  void detach_input();
  [[nodiscard]] bool input_in_ring() const {
    if (!io_) return false;
    for (const Segment& s : io_->input)
      if (s.bid != kOwnedInput) return true;
    return false;
  }

  // ---- output ----
  // Appends bytes built by pgring: call with a builder that appends to the string it gets.
  template <typename Build>
  bool emit(Build&& build) {
    std::string& staging = io().staging;
    std::size_t start = staging.size();
    if (!build(staging)) {
      staging.resize(start);
      return false;
    }
    push_owned(start, staging.size() - start);
    return true;
  }
  void emit_bytes(std::string_view bytes);
  // Everything queued for sending, taken out of the queue (the handler tests read what a
  // handler sent this way; the reactor sends with prepare_send instead).
  [[nodiscard]] std::string take_output() {
    std::string out;
    take_queue(out);
    return out;
  }
  [[nodiscard]] bool has_output() const;
  [[nodiscard]] bool send_in_flight() const { return send_in_flight_; }
  // Bytes and pinned ring buffers waiting to be sent: for flow control.
  [[nodiscard]] std::size_t pending_bytes() const { return pending_bytes_; }
  [[nodiscard]] std::size_t pending_buffers() const { return pending_buffers_; }
  // Prepares the next batch for one sendmsg (the message to send, stable until the send
  // completes); null when nothing to send or a send is in flight.
  msghdr* prepare_send();
  // The send completed with `result` bytes. Returns true when the whole batch is done; false
  // when a short send left bytes to resubmit (prepare_send continues it).
  bool on_sent(std::uint32_t result);
  // The send failed: nothing more will go out on this socket.
  void send_failed();
  [[nodiscard]] BufferRing& buffers() const { return *buffers_; }
  // Drops all input and output (connection closing for good).
  void discard_all();
  // Gives the I/O state back to the spares when nothing needs it: nothing received, queued or
  // in flight, and no TLS (see Memory above). Its owner calls it once the connection is idle.
  void trim();
  [[nodiscard]] bool holds_io() const { return io_ != nullptr; }

  // ---- TLS ----
  // From now on the socket carries TLS records. Output already queued (the 'S' answering an
  // SSLRequest) goes out in clear ahead of them; input already received (a direct TLS
  // ClientHello) is the first ciphertext. False when the session cannot go on (tls_error()).
  bool start_tls(std::unique_ptr<TlsSession> session);
  [[nodiscard]] TlsSession* tls() const { return tls_.get(); }
  // Set when received ciphertext could not be decrypted (or the peer ended TLS).
  [[nodiscard]] bool tls_failed() const { return tls_failed_; }

  // ---- operations (owned here, referenced by user_data) ----
  Operation recv_op_;
  Operation send_op_;
  bool recv_armed_ = false;
  bool recv_canceling_ = false;  // a multishot receive is being cancelled (reading paused)
  bool reading_paused_ = false;  // flow control: peer's output above the high watermark
  bool starved_ = false;         // recv found the ring empty (ENOBUFS); re-arm when buffers return
  bool flush_queued_ = false;    // on the reactor's list of streams to send this loop turn

 private:
  static constexpr std::int32_t kOwnedInput = StreamIo::kOwnedInput;
  using Segment = StreamIo::Segment;
  [[nodiscard]] const char* segment_data(const Segment& s) const {
    return s.bid == kOwnedInput ? io_->owned_input.data()
                                : buffers_->data(static_cast<std::uint16_t>(s.bid));
  }
  // The I/O state, taken from the spares when this stream had none.
  StreamIo& io() {
    if (!io_) io_ = buffers_->spare_io().take();
    return *io_;
  }

  void push_owned(std::size_t offset, std::size_t length);
  void receive_tls(std::string_view ciphertext);
  template <typename Append>
  void append_owned_input(Append&& append);
  // Appends every queued byte to `out` and empties the queue (the slices' buffers released).
  void take_queue(std::string& out);
  void encrypt_queue();
  void push_slice(Slice s);
  void release_inflight();

  bool send_in_flight_ = false;
  bool tls_failed_ = false;
  std::uint32_t pending_buffers_ = 0;
  BufferRing* buffers_;
  std::unique_ptr<StreamIo> io_;  // null while nothing moves
  std::size_t input_bytes_ = 0;
  std::size_t pending_bytes_ = 0;
  std::unique_ptr<TlsSession> tls_;
};

}  // namespace pgring
