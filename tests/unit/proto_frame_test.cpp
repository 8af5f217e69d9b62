// Framing under hostile input: bytes one at a time, two messages in one read, lying lengths,
// random bytes. Lengths must be refused from the header alone.

#include <doctest/doctest.h>

#include <random>
#include <string>

#include "proto/builders.hpp"
#include "proto/frame.hpp"

using namespace pgring::proto;

namespace {
std::string startup_bytes(std::vector<std::pair<std::string_view, std::string_view>> params,
                          std::uint32_t version = kProtocol30) {
  std::string out;
  REQUIRE(build::startup_message(out, version, params));
  return out;
}
std::string be32(std::uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}
}  // namespace

TEST_CASE("frame_message: byte at a time reaches complete exactly at the end") {
  std::string msg;
  REQUIRE(build::query(msg, "SELECT 1"));
  for (std::size_t i = 0; i < msg.size(); ++i) {
    Frame f = frame_message(std::string_view(msg).substr(0, i), 1 << 20);
    CHECK(f.status == FrameStatus::need_more);
    if (i >= 5) CHECK(f.size == msg.size());
  }
  Frame f = frame_message(msg, 1 << 20);
  CHECK(f.status == FrameStatus::complete);
  CHECK(f.type == 'Q');
  CHECK(f.size == msg.size());
}

TEST_CASE("frame_message: two messages in one read frame one after the other") {
  std::string buf;
  REQUIRE(build::query(buf, "SELECT 1"));
  REQUIRE(build::terminate(buf));
  Frame a = frame_message(buf, 1 << 20);
  REQUIRE(a.status == FrameStatus::complete);
  Frame b = frame_message(std::string_view(buf).substr(a.size), 1 << 20);
  REQUIRE(b.status == FrameStatus::complete);
  CHECK(b.type == 'X');
  CHECK(a.size + b.size == buf.size());
}

TEST_CASE("frame_message: lying lengths") {
  CHECK(frame_message(std::string("Q") + be32(3), 1 << 20).status == FrameStatus::invalid_length);
  CHECK(frame_message(std::string("Q") + be32(0), 1 << 20).status == FrameStatus::invalid_length);
  CHECK(frame_message(std::string("Q") + be32(0xffffffffu), 1 << 20).status ==
        FrameStatus::invalid_length);
  CHECK(frame_message(std::string("Q") + be32(0x80000000u), 1 << 20).status ==
        FrameStatus::invalid_length);
  // Over the limit is known from the header, before any body arrived.
  Frame big = frame_message(std::string("Q") + be32(100000), 1024);
  CHECK(big.status == FrameStatus::too_large);
  CHECK(big.size == 100001);
  // Exactly at the limit is fine.
  CHECK(frame_message(std::string("Q") + be32(1023), 1024).status == FrameStatus::need_more);
  // An empty body (length 4) is valid.
  CHECK(frame_message(std::string("S") + be32(4), 1024).status == FrameStatus::complete);
}

TEST_CASE("frame_startup: limits and classification") {
  CHECK(frame_startup(be32(7)).status == FrameStatus::invalid_length);
  CHECK(frame_startup(be32(10001)).status == FrameStatus::too_large);
  CHECK(frame_startup(be32(10000)).status == FrameStatus::need_more);
  CHECK(frame_startup(std::string("\x00\x00", 2)).status == FrameStatus::need_more);

  std::string ssl = be32(8) + be32(kSslRequestCode);
  Frame f = frame_startup(ssl);
  REQUIRE(f.status == FrameStatus::complete);
  CHECK(classify_startup(ssl).kind == StartupKind::ssl_request);
  CHECK(classify_startup(be32(8) + be32(kGssEncRequestCode)).kind == StartupKind::gssenc_request);
  // An SSLRequest with trailing bytes is not an SSLRequest.
  CHECK(classify_startup(be32(12) + be32(kSslRequestCode) + be32(0)).kind == StartupKind::unknown);
  // Protocol 2.0 is gone.
  CHECK(classify_startup(be32(8) + be32(0x00020000)).kind == StartupKind::unknown);
  // 3.2 and future 3.x minors are startups, negotiated down later.
  CHECK(classify_startup(startup_bytes({{"user", "u"}}, kProtocol32)).kind == StartupKind::startup);
}

TEST_CASE("parse_startup_message: parameters, defaults and malformed packets") {
  std::string s =
      startup_bytes({{"user", "alice"}, {"application_name", "psql"}, {"client_encoding", "UTF8"}});
  Frame f = frame_startup(s);
  REQUIRE(f.status == FrameStatus::complete);
  auto m = parse_startup_message(classify_startup(s));
  REQUIRE(m);
  CHECK(m->user == "alice");
  CHECK(m->database == "alice");  // database defaults to the user
  CHECK(m->find("application_name") == "psql");
  CHECK(m->params.size() == 2);

  std::string with_db_bytes =
      startup_bytes({{"user", "a"}, {"database", "d"}});  // views point into it
  auto with_db = parse_startup_message(classify_startup(with_db_bytes));
  REQUIRE(with_db);
  CHECK(with_db->database == "d");

  CHECK_FALSE(
      parse_startup_message(classify_startup(startup_bytes({{"database", "d"}}))));  // no user
  CHECK_FALSE(parse_startup_message(classify_startup(startup_bytes({{"user", ""}}))));

  // Missing final terminator.
  std::string bad = s.substr(0, s.size() - 1);
  CHECK_FALSE(parse_startup_message(classify_startup(bad)));
  // A name without its value.
  std::string half = be32(0) + be32(kProtocol30) + std::string("user\0", 5);
  CHECK_FALSE(parse_startup_message(classify_startup(half)));
  // Bytes after the terminator.
  std::string trailing = s + "x";
  CHECK_FALSE(parse_startup_message(classify_startup(trailing)));
}

TEST_CASE("parse_cancel_request: 3.0 and 3.2 key sizes") {
  std::string c = be32(16) + be32(kCancelRequestCode) + be32(1234) + be32(0xdeadbeef);
  auto r = parse_cancel_request(classify_startup(c));
  REQUIRE(r);
  CHECK(r->pid == 1234);
  CHECK(r->secret.size() == 4);
  std::string long_key = be32(12 + 32) + be32(kCancelRequestCode) + be32(7) + std::string(32, 'k');
  CHECK(parse_cancel_request(classify_startup(long_key))->secret.size() == 32);
  CHECK_FALSE(
      parse_cancel_request(classify_startup(be32(12) + be32(kCancelRequestCode) + be32(7))));
  std::string built;
  REQUIRE(build::cancel_request(built, 1234, std::string("\xde\xad\xbe\xef", 4)));
  CHECK(built == c);
}

TEST_CASE("random bytes never crash the framers") {
  std::mt19937 rng(12345);
  for (int round = 0; round < 20000; ++round) {
    std::string buf(rng() % 64, '\0');
    for (char& c : buf) c = static_cast<char>(rng());
    Frame f = frame_message(buf, 1 << 16);
    if (f.status == FrameStatus::complete) CHECK(f.size <= buf.size());
    Frame s = frame_startup(buf);
    if (s.status == FrameStatus::complete) {
      auto p = classify_startup(std::string_view(buf).substr(0, s.size));
      (void)parse_startup_message(p);
      (void)parse_cancel_request(p);
    }
  }
}

TEST_CASE("negotiated_version: 3.0 and 3.2 spoken, 3.1 and newer minors negotiated down") {
  CHECK(negotiated_version(kProtocol30) == kProtocol30);
  CHECK(negotiated_version(kProtocol30 + 1) == kProtocol30);  // 3.1: reserved, never used
  CHECK(negotiated_version(kProtocol32) == kProtocol32);
  CHECK(negotiated_version(kProtocol30 + 9999) == kProtocol32);  // libpq 19's "grease" 3.9999
}
