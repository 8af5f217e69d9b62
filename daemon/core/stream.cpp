#include "daemon/core/stream.hpp"

#include <sys/mman.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "daemon/net/tls.hpp"

namespace pgring {

namespace {
// sendmsg takes at most IOV_MAX iovecs; a batch stops there and the rest waits for the next.
constexpr std::size_t kMaxIov = 1024;
}  // namespace

// ---------------------------------------------------------------------------------------------
// BufferRing

BufferRing::BufferRing(io_uring& ring, std::uint16_t group, std::uint32_t buffer_size,
                       std::uint32_t count)
    : ring_(ring), group_(group), buffer_size_(buffer_size), count_(count), refs_(count, 0) {
  // liburing 2.3 has no io_uring_setup_buf_ring: map the shared ring ourselves (page aligned).
  std::size_t ring_bytes = count * sizeof(io_uring_buf);
  void* r = mmap(nullptr, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (r == MAP_FAILED) throw std::runtime_error("mmap of the buffer ring failed");
  br_ = static_cast<io_uring_buf_ring*>(r);
  // The buffers themselves: pages are only touched (and counted in RSS) once used.
  void* b = mmap(nullptr, std::size_t{count} * buffer_size, PROT_READ | PROT_WRITE,
                 MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (b == MAP_FAILED) throw std::runtime_error("mmap of receive buffers failed");
  base_ = static_cast<char*>(b);

  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<unsigned long>(br_);
  reg.ring_entries = count;
  reg.bgid = group;
  int rc = io_uring_register_buf_ring(&ring_, &reg, 0);
  if (rc < 0)
    throw std::runtime_error(std::string("io_uring_register_buf_ring: ") + std::strerror(-rc));
  io_uring_buf_ring_init(br_);
  int mask = io_uring_buf_ring_mask(count);
  for (std::uint32_t i = 0; i < count; ++i)
    io_uring_buf_ring_add(br_, data(static_cast<std::uint16_t>(i)), buffer_size,
                          static_cast<std::uint16_t>(i), mask, static_cast<int>(i));
  io_uring_buf_ring_advance(br_, static_cast<int>(count));
  available_ = count;
}

BufferRing::~BufferRing() {
  // The ring is gone by now (the reactor exits it first, which also drops this registration);
  // only the memory is ours to return.
  munmap(br_, count_ * sizeof(io_uring_buf));
  munmap(base_, std::size_t{count_} * buffer_size_);
}

void BufferRing::taken(std::uint16_t bid) {
  refs_[bid] = 1;
  --available_;
}

void BufferRing::unref(std::uint16_t bid) {
  if (--refs_[bid] != 0) return;
  io_uring_buf_ring_add(br_, data(bid), buffer_size_, bid, io_uring_buf_ring_mask(count_),
                        pending_returns_);
  ++pending_returns_;
  ++available_;
}

void BufferRing::publish() {
  if (pending_returns_ == 0) return;
  io_uring_buf_ring_advance(br_, pending_returns_);
  pending_returns_ = 0;
}

// ---------------------------------------------------------------------------------------------
// Stream: input

Stream::~Stream() {
  discard_all();
}

void Stream::on_received(std::uint16_t bid, std::uint32_t length) {
  buffers_->taken(bid);
  if (tls_) {
    receive_tls(std::string_view(buffers_->data(bid), length));
    buffers_->unref(bid);  // decrypted: the ring buffer is free again
    return;
  }
  input_.push_back(Segment{bid, 0, length});  // bid fits: ring ids are below 32768
  input_bytes_ += length;
}

void Stream::peek(char* out, std::size_t n) const {
  for (const Segment& s : input_) {
    if (n == 0) return;
    std::size_t take = std::min<std::size_t>(n, s.end - s.begin);
    std::memcpy(out, segment_data(s) + s.begin, take);
    out += take;
    n -= take;
  }
}

std::string_view Stream::contiguous(std::size_t n) {
  if (n == 0) return {};
  const Segment& first = input_.front();
  if (first.end - first.begin >= n) return {segment_data(first) + first.begin, n};
  carry_.resize(n);
  peek(carry_.data(), n);
  return carry_;
}

void Stream::consume(std::size_t n) {
  input_bytes_ -= n;
  std::size_t drop = 0;
  for (Segment& s : input_) {
    if (n == 0) break;
    std::size_t take = std::min<std::size_t>(n, s.end - s.begin);
    s.begin += static_cast<std::uint32_t>(take);
    n -= take;
    if (s.begin == s.end) {
      if (s.bid == kOwnedInput)
        owned_input_.clear();
      else
        buffers_->unref(static_cast<std::uint16_t>(s.bid));
      ++drop;
    }
  }
  input_.erase(input_.begin(), input_.begin() + static_cast<std::ptrdiff_t>(drop));
  if (owned_input_.empty() && owned_input_.capacity() > (tls_ ? 1024u : 4096u))
    std::string().swap(owned_input_);
  if (input_.empty() && carry_.capacity() > 4096) std::string().swap(carry_);
}

void Stream::forward(std::size_t n, Stream& to) {
  std::size_t left = n;
  for (const Segment& s : input_) {
    if (left == 0) break;
    std::size_t take = std::min<std::size_t>(left, s.end - s.begin);
    if (s.bid == kOwnedInput) {
      // Copied: owned input is a parked client's (or a TLS session's) bytes.
      to.emit_bytes(std::string_view(owned_input_.data() + s.begin, take));
    } else {
      // The slice's own reference, dropped when its send completes.
      buffers_->ref(static_cast<std::uint16_t>(s.bid));
      to.push_slice(Slice{s.bid, s.begin, static_cast<std::uint32_t>(take)});
    }
    left -= take;
  }
  consume(n);
}

template <typename Append>
void Stream::append_owned_input(Append&& append) {
  // Owned input only: at most one segment, over owned_input_. Move what is left of it to the
  // front before appending, so a connection that keeps a partial message stays small.
  if (input_.empty()) {
    owned_input_.clear();
  } else if (input_.front().begin > 0) {
    Segment& s = input_.front();
    owned_input_.erase(0, s.begin);
    s.end -= s.begin;
    s.begin = 0;
  }
  std::size_t before = owned_input_.size();
  append(owned_input_);
  std::size_t added = owned_input_.size() - before;
  if (added == 0) return;
  if (input_.empty()) input_.push_back(Segment{kOwnedInput, 0, 0});
  input_.front().end = static_cast<std::uint32_t>(owned_input_.size());
  input_bytes_ += added;
}

void Stream::receive_tls(std::string_view ciphertext) {
  if (tls_failed_) return;
  append_owned_input([&](std::string& input) {
    if (!tls_->receive(ciphertext, input)) tls_failed_ = true;
  });
}

void Stream::receive_bytes(std::string_view bytes) {
  if (input_in_ring()) detach_input();  // keep the input one owned segment
  append_owned_input([&](std::string& input) { input.append(bytes); });
}

void Stream::take_queue(std::string& out) {
  for (const Slice& s : queue_) {
    const char* base =
        s.bid == kOwned ? staging_.data() : buffers_->data(static_cast<std::uint16_t>(s.bid));
    out.append(base + s.offset, s.length);
    pending_bytes_ -= s.length;
    if (s.bid != kOwned) {
      --pending_buffers_;
      buffers_->unref(static_cast<std::uint16_t>(s.bid));
    }
  }
  queue_.clear();
  staging_.clear();
}

bool Stream::start_tls(std::unique_ptr<TlsSession> session) {
  take_queue(cipher_);  // clear bytes queued before the switch go first, as they are
  tls_ = std::move(session);
  if (input_bytes_ == 0) return true;
  std::string first(input_bytes_, '\0');
  peek(first.data(), first.size());
  consume(first.size());
  receive_tls(first);
  return !tls_failed_;
}

void Stream::encrypt_queue() {
  // One SSL_write for the whole batch: every slice written alone would be a record of its own
  // (a header, a tag and an AEAD pass each), and a batch is typically many small messages.
  thread_local std::string plain;  // one per reactor thread: idle connections keep none
  plain.clear();
  take_queue(plain);
  if (!plain.empty() && !tls_failed_ && !tls_->send(plain)) tls_failed_ = true;
  if (plain.capacity() > (1u << 20)) std::string().swap(plain);
  tls_->take_output(cipher_);
}

// ---------------------------------------------------------------------------------------------
// Stream: output

bool Stream::has_output() const {
  return !queue_.empty() || !cipher_.empty() || (tls_ && tls_->has_output());
}

void Stream::emit_bytes(std::string_view bytes) {
  std::size_t start = staging_.size();
  staging_.append(bytes);
  push_owned(start, bytes.size());
}

void Stream::push_owned(std::size_t offset, std::size_t length) {
  if (length == 0) return;
  // Consecutive owned bytes are one slice: a run of built messages is one iovec.
  if (!queue_.empty() && queue_.back().bid == kOwned &&
      queue_.back().offset + queue_.back().length == offset) {
    queue_.back().length += static_cast<std::uint32_t>(length);
    pending_bytes_ += length;
    return;
  }
  push_slice(Slice{kOwned, static_cast<std::uint32_t>(offset), static_cast<std::uint32_t>(length)});
}

void Stream::push_slice(Slice s) {
  queue_.push_back(s);
  pending_bytes_ += s.length;
  if (s.bid != kOwned) ++pending_buffers_;
}

bool Stream::prepare_send(io_uring_sqe* sqe) {
  if (send_in_flight_) return false;
  if (iov_done_ >= iov_.size() && (tls_ || !cipher_.empty())) {
    // TLS: the batch is one run of records (plus any clear bytes queued before TLS began).
    if (tls_) encrypt_queue();
    if (cipher_.empty()) return false;
    iov_.clear();
    iov_done_ = 0;
    inflight_owned_.swap(cipher_);
    cipher_.clear();
    auto size = static_cast<std::uint32_t>(inflight_owned_.size());
    inflight_.assign(1, Slice{kOwned, 0, size});
    pending_bytes_ += size;
    iov_.push_back(iovec{inflight_owned_.data(), size});
  } else if (iov_done_ >= iov_.size()) {
    // A new batch: the whole queue (up to kMaxIov slices) goes out in one sendmsg.
    if (queue_.empty()) return false;
    iov_.clear();
    iov_done_ = 0;
    std::size_t n = std::min(queue_.size(), kMaxIov);
    inflight_.assign(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
    queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
    inflight_owned_.swap(staging_);
    staging_.clear();
    // Owned slices left behind (more than kMaxIov queued) move to the fresh staging buffer.
    for (Slice& s : queue_) {
      if (s.bid != kOwned) continue;
      std::size_t at = staging_.size();
      staging_.append(inflight_owned_, s.offset, s.length);
      s.offset = static_cast<std::uint32_t>(at);
    }
    for (const Slice& s : inflight_) {
      char* base = s.bid == kOwned ? inflight_owned_.data()
                                   : buffers_->data(static_cast<std::uint16_t>(s.bid));
      iov_.push_back(iovec{base + s.offset, s.length});
    }
  }
  msg_ = {};
  msg_.msg_iov = iov_.data() + iov_done_;
  msg_.msg_iovlen = iov_.size() - iov_done_;
  // MSG_WAITALL makes io_uring retry short sends itself; we still handle a short result.
  io_uring_prep_sendmsg(sqe, fd, &msg_, MSG_NOSIGNAL | MSG_WAITALL);
  io_uring_sqe_set_data(sqe, &send_op_);
  send_in_flight_ = true;
  return true;
}

bool Stream::on_sent(std::uint32_t result) {
  send_in_flight_ = false;
  while (result > 0 && iov_done_ < iov_.size()) {
    iovec& v = iov_[iov_done_];
    if (result >= v.iov_len) {
      result -= static_cast<std::uint32_t>(v.iov_len);
      ++iov_done_;
    } else {
      v.iov_base = static_cast<char*>(v.iov_base) + result;
      v.iov_len -= result;
      result = 0;
    }
  }
  if (iov_done_ < iov_.size()) return false;
  release_inflight();
  return true;
}

void Stream::send_failed() {
  send_in_flight_ = false;
  release_inflight();
}

void Stream::release_inflight() {
  for (const Slice& s : inflight_) {
    pending_bytes_ -= s.length;
    if (s.bid != kOwned) {
      --pending_buffers_;
      buffers_->unref(static_cast<std::uint16_t>(s.bid));
    }
  }
  inflight_.clear();
  iov_.clear();
  iov_done_ = 0;
  inflight_owned_.clear();
  // Idle connections must stay small: give back the output buffers once drained. Without TLS
  // they only ever hold what pgring writes itself (a client's welcome, an error, an injected
  // Parse), which is rare on the data path, so a buffer is not worth keeping: the welcome
  // alone left ~430 bytes behind in every idle client.
  if (!tls_ || inflight_owned_.capacity() > 16384) std::string().swap(inflight_owned_);
  if (queue_.empty() && (!tls_ || staging_.capacity() > 16384)) std::string().swap(staging_);
  if (tls_ && queue_.empty() && cipher_.empty()) {
    // Every TLS byte passes through these buffers (not only what pgring builds): keep none of
    // them while nothing is waiting, nor the TLS session's own.
    if (inflight_owned_.capacity() > 1024) std::string().swap(inflight_owned_);
    if (cipher_.capacity() > 1024) std::string().swap(cipher_);
    tls_->trim();
  }
}

void Stream::detach_input() {
  if (!input_in_ring()) return;
  std::string owned;
  owned.reserve(input_bytes_);
  for (const Segment& s : input_) {
    owned.append(segment_data(s) + s.begin, s.end - s.begin);
    if (s.bid != kOwnedInput) buffers_->unref(static_cast<std::uint16_t>(s.bid));
  }
  owned_input_.swap(owned);
  input_.clear();
  input_.push_back(Segment{kOwnedInput, 0, static_cast<std::uint32_t>(owned_input_.size())});
}

void Stream::discard_all() {
  for (const Segment& s : input_)
    if (s.bid != kOwnedInput) buffers_->unref(static_cast<std::uint16_t>(s.bid));
  input_.clear();
  owned_input_.clear();
  input_bytes_ = 0;
  for (const Slice& s : queue_)
    if (s.bid != kOwned) buffers_->unref(static_cast<std::uint16_t>(s.bid));
  queue_.clear();
  staging_.clear();
  cipher_.clear();
  // In-flight slices stay pinned until the kernel reports the send finished.
  if (!send_in_flight_) release_inflight();
  pending_bytes_ = 0;
  pending_buffers_ = 0;
  for (const Slice& s : inflight_) {
    pending_bytes_ += s.length;
    if (s.bid != kOwned) ++pending_buffers_;
  }
}

}  // namespace pgring
