#pragma once
// Bounds-checked reading and sticky-failure writing of PostgreSQL wire values.
// Both are small value types over caller-owned memory: a Reader never allocates, and a Writer
// appends to a caller-owned std::string (a connection's output buffer).

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace pgring::proto {

// Reads big-endian integers and NUL-terminated strings from a view. The first read past the
// end (or a string without its NUL) fails the reader for good; later reads return zero values,
// so a whole message is decoded and ok() checked once.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : pos_(bytes.data()), end_(bytes.data() + bytes.size()) {}

  [[nodiscard]] bool ok() const { return ok_; }
  [[nodiscard]] bool at_end() const { return pos_ == end_; }
  [[nodiscard]] std::size_t remaining() const { return static_cast<std::size_t>(end_ - pos_); }

  std::uint8_t u8() {
    if (!take(1)) return 0;
    return static_cast<std::uint8_t>(pos_[-1]);
  }
  std::int16_t i16() {
    if (!take(2)) return 0;
    auto p = reinterpret_cast<const unsigned char*>(pos_ - 2);
    return static_cast<std::int16_t>((p[0] << 8) | p[1]);
  }
  std::int32_t i32() {
    if (!take(4)) return 0;
    auto p = reinterpret_cast<const unsigned char*>(pos_ - 4);
    return static_cast<std::int32_t>((std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) |
                                     (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]});
  }
  // A NUL-terminated String; the view excludes the NUL.
  std::string_view cstring() {
    if (!ok_) return {};
    if (pos_ == end_) return fail();  // no room for the NUL (and memchr wants a real pointer)
    const void* nul = std::memchr(pos_, '\0', remaining());
    if (nul == nullptr) return fail();
    std::string_view s(pos_, static_cast<const char*>(nul) - pos_);
    pos_ += s.size() + 1;
    return s;
  }
  std::string_view bytes(std::size_t n) {
    if (!take(n)) return {};
    return {pos_ - n, n};
  }
  std::string_view rest() { return bytes(remaining()); }

 private:
  bool take(std::size_t n) {
    if (!ok_ || remaining() < n) {
      fail();
      return false;
    }
    pos_ += n;
    return true;
  }
  std::string_view fail() {
    ok_ = false;
    pos_ = end_;
    return {};
  }

  const char* pos_;
  const char* end_;
  bool ok_ = true;
};

// Appends messages to a caller-owned buffer. begin(type) reserves the length word, end() fills
// it in. A message that would pass `limit` bytes fails the writer (sticky): the caller checks
// ok() once after building and drops the connection rather than sending half a message.
class Writer {
 public:
  explicit Writer(std::string& out, std::size_t limit = 1u << 30) : out_(out), limit_(limit) {}

  [[nodiscard]] bool ok() const { return ok_; }

  Writer& begin(char type) {
    if (type != 0) put_raw(&type, 1);
    start_ = out_.size();
    return i32(0);
  }
  // Startup-style messages have no type byte.
  Writer& begin_untyped() { return begin(0); }
  Writer& end() {
    if (!ok_) return *this;
    auto len = static_cast<std::uint32_t>(out_.size() - start_);
    unsigned char b[4] = {static_cast<unsigned char>(len >> 24),
                          static_cast<unsigned char>(len >> 16),
                          static_cast<unsigned char>(len >> 8), static_cast<unsigned char>(len)};
    std::memcpy(out_.data() + start_, b, 4);
    return *this;
  }

  Writer& u8(std::uint8_t v) { return put_raw(reinterpret_cast<const char*>(&v), 1); }
  Writer& i16(std::int16_t v) {
    unsigned char b[2] = {static_cast<unsigned char>(static_cast<std::uint16_t>(v) >> 8),
                          static_cast<unsigned char>(v)};
    return put_raw(reinterpret_cast<const char*>(b), 2);
  }
  Writer& i32(std::int32_t v) {
    auto u = static_cast<std::uint32_t>(v);
    unsigned char b[4] = {static_cast<unsigned char>(u >> 24), static_cast<unsigned char>(u >> 16),
                          static_cast<unsigned char>(u >> 8), static_cast<unsigned char>(u)};
    return put_raw(reinterpret_cast<const char*>(b), 4);
  }
  // A String: the bytes and a NUL. A string containing NUL cannot be encoded.
  Writer& cstring(std::string_view s) {
    if (s.find('\0') != std::string_view::npos) {
      ok_ = false;
      return *this;
    }
    put_raw(s.data(), s.size());
    return u8(0);
  }
  Writer& bytes(std::string_view s) { return put_raw(s.data(), s.size()); }

 private:
  Writer& put_raw(const char* p, std::size_t n) {
    if (!ok_) return *this;
    if (out_.size() + n > limit_) {
      ok_ = false;
      return *this;
    }
    out_.append(p, n);
    return *this;
  }

  std::string& out_;
  std::size_t limit_;
  std::size_t start_ = 0;
  bool ok_ = true;
};

}  // namespace pgring::proto
