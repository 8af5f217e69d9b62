#include "daemon/core/stream.hpp"

#include <sys/mman.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "daemon/net/tls.hpp"

namespace pgring {

namespace {
// sendmsg takes at most IOV_MAX iovecs; a batch stops there and the rest waits for the next.
constexpr std::size_t kMaxIov = 1024;
}  // namespace

// ---------------------------------------------------------------------------------------------
// BufferRing

BufferRing::BufferRing(io_uring* ring, std::uint16_t group, std::uint32_t buffer_size,
                       std::uint32_t count)
    : ring_(ring), group_(group), buffer_size_(buffer_size), count_(count), refs_(count, 0) {
  // The buffers themselves: pages are only touched (and counted in RSS) once used.
  void* b = mmap(nullptr, std::size_t{count} * buffer_size, PROT_READ | PROT_WRITE,
                 MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (b == MAP_FAILED) throw std::runtime_error("mmap of receive buffers failed");
  base_ = static_cast<char*>(b);
  available_ = count;
  if (ring_ == nullptr) {
    // The epoll engine's: the lowest ids on top, so that few buffers' pages are ever touched.
    for (std::uint32_t i = count; i-- > 0;) free_.push_back(static_cast<std::uint16_t>(i));
    return;
  }
  // liburing 2.3 has no io_uring_setup_buf_ring: map the shared ring ourselves (page aligned).
  std::size_t ring_bytes = count * sizeof(io_uring_buf);
  void* r = mmap(nullptr, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (r == MAP_FAILED) {
    munmap(base_, std::size_t{count} * buffer_size);
    throw std::runtime_error("mmap of the buffer ring failed");
  }
  br_ = static_cast<io_uring_buf_ring*>(r);

  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<unsigned long>(br_);
  reg.ring_entries = count;
  reg.bgid = group;
  int rc = io_uring_register_buf_ring(ring_, &reg, 0);
  if (rc < 0) {
    munmap(br_, ring_bytes);
    munmap(base_, std::size_t{count} * buffer_size);
    throw std::runtime_error(std::string("io_uring_register_buf_ring: ") + std::strerror(-rc));
  }
  io_uring_buf_ring_init(br_);
  int mask = io_uring_buf_ring_mask(count);
  for (std::uint32_t i = 0; i < count; ++i)
    io_uring_buf_ring_add(br_, data(static_cast<std::uint16_t>(i)), buffer_size,
                          static_cast<std::uint16_t>(i), mask, static_cast<int>(i));
  io_uring_buf_ring_advance(br_, static_cast<int>(count));
}

BufferRing::~BufferRing() {
  // The ring is gone by now (the reactor exits it first, which also drops this registration);
  // only the memory is ours to return.
  if (br_ != nullptr) munmap(br_, count_ * sizeof(io_uring_buf));
  munmap(base_, std::size_t{count_} * buffer_size_);
}

void BufferRing::taken(std::uint16_t bid) {
  refs_[bid] = 1;
  --available_;
}

void BufferRing::unref(std::uint16_t bid) {
  if (--refs_[bid] != 0) return;
  ++available_;
  if (ring_ == nullptr) [[unlikely]] {
    free_unused(bid);  // (out of line: the ring's path stays small enough to inline)
    return;
  }
  io_uring_buf_ring_add(br_, data(bid), buffer_size_, bid, io_uring_buf_ring_mask(count_),
                        pending_returns_);
  ++pending_returns_;
}

void BufferRing::free_unused(std::uint16_t bid) {
  free_.push_back(bid);
}

void BufferRing::publish() {
  if (pending_returns_ == 0) return;
  io_uring_buf_ring_advance(br_, pending_returns_);
  pending_returns_ = 0;
}

// ---------------------------------------------------------------------------------------------
// StreamIo

void StreamIo::reset() {
  // Capacities a busy connection reuses every round trip stay; anything grown by a large
  // message goes (the spares must stay small).
  auto clear = [](auto& container, std::size_t keep) {
    container.clear();
    if (container.capacity() > keep) std::remove_reference_t<decltype(container)>().swap(container);
  };
  clear(input, 16);
  clear(carry, 1024);
  clear(owned_input, 1024);
  clear(queue, 64);
  clear(staging, 1024);
  clear(inflight, 64);
  clear(inflight_owned, 1024);
  clear(iov, 64);
  clear(cipher, 1024);
  iov_done = 0;
  msg = {};
}

// ---------------------------------------------------------------------------------------------
// Stream: input

Stream::~Stream() {
  discard_all();
  if (io_ && !send_in_flight_ && !tls_) buffers_->spare_io().give_back(std::move(io_));
}

void Stream::trim() {
  // Never while the kernel may read msg/iov/inflight_owned (a send in flight), while bytes wait
  // either way, or under TLS (the session's records pass through these buffers).
  if (!io_ || send_in_flight_ || input_bytes_ > 0 || tls_) return;
  if (!io_->queue.empty() || !io_->cipher.empty()) return;
  buffers_->spare_io().give_back(std::move(io_));
}

void Stream::on_received(std::uint16_t bid, std::uint32_t length) {
  buffers_->taken(bid);
  if (tls_) {
    receive_tls(std::string_view(buffers_->data(bid), length));
    buffers_->unref(bid);  // decrypted: the ring buffer is free again
    return;
  }
  io().input.push_back(Segment{bid, 0, length});  // bid fits: ring ids are below 32768
  input_bytes_ += length;
}

void Stream::peek(char* out, std::size_t n) const {
  if (n == 0) return;
  for (const Segment& s : io_->input) {
    if (n == 0) return;
    std::size_t take = std::min<std::size_t>(n, s.end - s.begin);
    std::memcpy(out, segment_data(s) + s.begin, take);
    out += take;
    n -= take;
  }
}

std::string_view Stream::contiguous(std::size_t n) {
  if (n == 0) return {};
  const Segment& first = io_->input.front();
  if (first.end - first.begin >= n) return {segment_data(first) + first.begin, n};
  io_->carry.resize(n);
  peek(io_->carry.data(), n);
  return io_->carry;
}

void Stream::consume(std::size_t n) {
  if (n == 0) return;
  StreamIo& io = *io_;
  input_bytes_ -= n;
  std::size_t drop = 0;
  for (Segment& s : io.input) {
    if (n == 0) break;
    std::size_t take = std::min<std::size_t>(n, s.end - s.begin);
    s.begin += static_cast<std::uint32_t>(take);
    n -= take;
    if (s.begin == s.end) {
      if (s.bid == kOwnedInput)
        io.owned_input.clear();
      else
        buffers_->unref(static_cast<std::uint16_t>(s.bid));
      ++drop;
    }
  }
  io.input.erase(io.input.begin(), io.input.begin() + static_cast<std::ptrdiff_t>(drop));
  if (io.owned_input.empty() && io.owned_input.capacity() > (tls_ ? 1024u : 4096u))
    std::string().swap(io.owned_input);
  if (io.input.empty() && io.carry.capacity() > 4096) std::string().swap(io.carry);
}

void Stream::forward(std::size_t n, Stream& to) {
  std::size_t left = n;
  for (const Segment& s : io_->input) {
    if (left == 0) break;
    std::size_t take = std::min<std::size_t>(left, s.end - s.begin);
    if (s.bid == kOwnedInput) {
      // Copied: owned input is a parked client's (or a TLS session's) bytes.
      to.emit_bytes(std::string_view(io_->owned_input.data() + s.begin, take));
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
  // Owned input only: at most one segment, over owned_input. Move what is left of it to the
  // front before appending, so a connection that keeps a partial message stays small.
  StreamIo& io = this->io();
  if (io.input.empty()) {
    io.owned_input.clear();
  } else if (io.input.front().begin > 0) {
    Segment& s = io.input.front();
    io.owned_input.erase(0, s.begin);
    s.end -= s.begin;
    s.begin = 0;
  }
  std::size_t before = io.owned_input.size();
  append(io.owned_input);
  std::size_t added = io.owned_input.size() - before;
  if (added == 0) return;
  if (io.input.empty()) io.input.push_back(Segment{kOwnedInput, 0, 0});
  io.input.front().end = static_cast<std::uint32_t>(io.owned_input.size());
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
  if (!io_) return;
  StreamIo& io = *io_;
  for (const Slice& s : io.queue) {
    const char* base =
        s.bid == kOwned ? io.staging.data() : buffers_->data(static_cast<std::uint16_t>(s.bid));
    out.append(base + s.offset, s.length);
    pending_bytes_ -= s.length;
    if (s.bid != kOwned) {
      --pending_buffers_;
      buffers_->unref(static_cast<std::uint16_t>(s.bid));
    }
  }
  io.queue.clear();
  io.staging.clear();
}

bool Stream::start_tls(std::unique_ptr<TlsSession> session) {
  take_queue(io().cipher);  // clear bytes queued before the switch go first, as they are
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
  tls_->take_output(io().cipher);
}

// ---------------------------------------------------------------------------------------------
// Stream: output

bool Stream::has_output() const {
  if (tls_ && tls_->has_output()) return true;
  return io_ && (!io_->queue.empty() || !io_->cipher.empty());
}

void Stream::emit_bytes(std::string_view bytes) {
  std::string& staging = io().staging;
  std::size_t start = staging.size();
  staging.append(bytes);
  push_owned(start, bytes.size());
}

void Stream::push_owned(std::size_t offset, std::size_t length) {
  if (length == 0) return;
  // Consecutive owned bytes are one slice: a run of built messages is one iovec.
  std::vector<Slice>& queue = io_->queue;
  if (!queue.empty() && queue.back().bid == kOwned &&
      queue.back().offset + queue.back().length == offset) {
    queue.back().length += static_cast<std::uint32_t>(length);
    pending_bytes_ += length;
    return;
  }
  push_slice(Slice{kOwned, static_cast<std::uint32_t>(offset), static_cast<std::uint32_t>(length)});
}

void Stream::push_slice(Slice s) {
  io().queue.push_back(s);
  pending_bytes_ += s.length;
  if (s.bid != kOwned) ++pending_buffers_;
}

msghdr* Stream::prepare_send() {
  if (send_in_flight_ || !io_) return nullptr;
  StreamIo& io = *io_;
  if (io.iov_done >= io.iov.size() && (tls_ || !io.cipher.empty())) {
    // TLS: the batch is one run of records (plus any clear bytes queued before TLS began).
    if (tls_) encrypt_queue();
    if (io.cipher.empty()) return nullptr;
    io.iov.clear();
    io.iov_done = 0;
    io.inflight_owned.swap(io.cipher);
    io.cipher.clear();
    auto size = static_cast<std::uint32_t>(io.inflight_owned.size());
    io.inflight.assign(1, Slice{kOwned, 0, size});
    pending_bytes_ += size;
    io.iov.push_back(iovec{io.inflight_owned.data(), size});
  } else if (io.iov_done >= io.iov.size()) {
    // A new batch: the whole queue (up to kMaxIov slices) goes out in one sendmsg.
    if (io.queue.empty()) return nullptr;
    io.iov.clear();
    io.iov_done = 0;
    std::size_t n = std::min(io.queue.size(), kMaxIov);
    io.inflight.assign(io.queue.begin(), io.queue.begin() + static_cast<std::ptrdiff_t>(n));
    io.queue.erase(io.queue.begin(), io.queue.begin() + static_cast<std::ptrdiff_t>(n));
    io.inflight_owned.swap(io.staging);
    io.staging.clear();
    // Owned slices left behind (more than kMaxIov queued) move to the fresh staging buffer.
    for (Slice& s : io.queue) {
      if (s.bid != kOwned) continue;
      std::size_t at = io.staging.size();
      io.staging.append(io.inflight_owned, s.offset, s.length);
      s.offset = static_cast<std::uint32_t>(at);
    }
    for (const Slice& s : io.inflight) {
      char* base = s.bid == kOwned ? io.inflight_owned.data()
                                   : buffers_->data(static_cast<std::uint16_t>(s.bid));
      io.iov.push_back(iovec{base + s.offset, s.length});
    }
  }
  io.msg = {};
  io.msg.msg_iov = io.iov.data() + io.iov_done;
  io.msg.msg_iovlen = io.iov.size() - io.iov_done;
  send_in_flight_ = true;
  return &io.msg;
}

bool Stream::on_sent(std::uint32_t result) {
  send_in_flight_ = false;
  StreamIo& io = *io_;
  while (result > 0 && io.iov_done < io.iov.size()) {
    iovec& v = io.iov[io.iov_done];
    if (result >= v.iov_len) {
      result -= static_cast<std::uint32_t>(v.iov_len);
      ++io.iov_done;
    } else {
      v.iov_base = static_cast<char*>(v.iov_base) + result;
      v.iov_len -= result;
      result = 0;
    }
  }
  if (io.iov_done < io.iov.size()) return false;
  release_inflight();
  return true;
}

void Stream::send_failed() {
  send_in_flight_ = false;
  release_inflight();
}

void Stream::release_inflight() {
  if (!io_) return;
  StreamIo& io = *io_;
  for (const Slice& s : io.inflight) {
    pending_bytes_ -= s.length;
    if (s.bid != kOwned) {
      --pending_buffers_;
      buffers_->unref(static_cast<std::uint16_t>(s.bid));
    }
  }
  io.inflight.clear();
  io.iov.clear();
  io.iov_done = 0;
  io.inflight_owned.clear();
  // What pgring writes itself is small (a welcome, an error, an injected Parse): a buffer that
  // a large one grew goes back at once.
  if (io.inflight_owned.capacity() > 16384) std::string().swap(io.inflight_owned);
  if (io.queue.empty() && io.staging.capacity() > 16384) std::string().swap(io.staging);
  if (tls_ && io.queue.empty() && io.cipher.empty()) {
    // Every TLS byte passes through these buffers (not only what pgring builds): keep none of
    // them while nothing is waiting, nor the TLS session's own.
    if (io.inflight_owned.capacity() > 1024) std::string().swap(io.inflight_owned);
    if (io.cipher.capacity() > 1024) std::string().swap(io.cipher);
    tls_->trim();
  }
}

void Stream::detach_input() {
  if (!input_in_ring()) return;
  StreamIo& io = *io_;
  std::string owned;
  owned.reserve(input_bytes_);
  for (const Segment& s : io.input) {
    owned.append(segment_data(s) + s.begin, s.end - s.begin);
    if (s.bid != kOwnedInput) buffers_->unref(static_cast<std::uint16_t>(s.bid));
  }
  io.owned_input.swap(owned);
  io.input.clear();
  io.input.push_back(Segment{kOwnedInput, 0, static_cast<std::uint32_t>(io.owned_input.size())});
}

void Stream::discard_all() {
  input_bytes_ = 0;
  if (io_) {
    StreamIo& io = *io_;
    for (const Segment& s : io.input)
      if (s.bid != kOwnedInput) buffers_->unref(static_cast<std::uint16_t>(s.bid));
    io.input.clear();
    io.owned_input.clear();
    for (const Slice& s : io.queue)
      if (s.bid != kOwned) buffers_->unref(static_cast<std::uint16_t>(s.bid));
    io.queue.clear();
    io.staging.clear();
    io.cipher.clear();
  }
  // In-flight slices stay pinned until the kernel reports the send finished.
  if (!send_in_flight_) release_inflight();
  pending_bytes_ = 0;
  pending_buffers_ = 0;
  if (!io_) return;
  for (const Slice& s : io_->inflight) {
    pending_bytes_ += s.length;
    if (s.bid != kOwned) ++pending_buffers_;
  }
}

}  // namespace pgring
