// The upgrade's control-socket records: what is encoded decodes to the same, and anything
// truncated, padded or lying about a length is refused.

#include <doctest/doctest.h>

#include <string>

#include "proto/handover.hpp"

using namespace pgring::proto::handover;

namespace {
Client sample_client() {
  Client c;
  c.id = 42;
  c.peer = "127.0.0.1:50000";
  c.age_ms = 123456;
  c.startup_packet = std::string("\0\0\0\x08\0\x03\0\0", 8);
  c.cancel_pid = -7;
  c.cancel_secret = std::string("\x01\0\xff\x7f", 4);
  c.lookup_secret = "SCRAM-SHA-256$4096:...";
  c.lookup_kind = 3;
  c.params = {{"application_name", "app"}, {"TimeZone", "Europe/Paris"}};
  c.settings = {{"statement_timeout", "'5s'"}};
  c.statements = {{"s1", std::string("SELECT $1\0\0\x01\0\0\0\x17", 16), 99},
                  {"", std::string("SELECT 1\0\0\0", 11), 0}};
  c.unnamed_parse_tail = std::string("SELECT 2\0\0\0", 11);
  c.input = std::string("Q\0\0\0\x0dSELECT 3\0", 14);
  c.channels = {"jobs", "Jobs Done"};
  return c;
}
}  // namespace

TEST_CASE("handover: a client record round-trips, bytes with NULs included") {
  const Client c = sample_client();
  std::string body = encode(c);
  std::optional<Client> back = decode_client(body);
  REQUIRE(back);
  CHECK(back->id == c.id);
  CHECK(back->peer == c.peer);
  CHECK(back->age_ms == c.age_ms);
  CHECK(back->startup_packet == c.startup_packet);
  CHECK(back->cancel_pid == c.cancel_pid);
  CHECK(back->cancel_secret == c.cancel_secret);
  CHECK(back->lookup_secret == c.lookup_secret);
  CHECK(back->lookup_kind == c.lookup_kind);
  CHECK(back->params == c.params);
  CHECK(back->settings == c.settings);
  REQUIRE(back->statements.size() == 2);
  CHECK(back->statements[0].name == "s1");
  CHECK(back->statements[0].parse_tail == c.statements[0].parse_tail);
  CHECK(back->statements[0].shape == 99);
  CHECK(back->unnamed_parse_tail == c.unnamed_parse_tail);
  CHECK(back->input == c.input);
  CHECK(back->channels == c.channels);
  // A record of a process that knew no subscriptions ends before them.
  Client plain = sample_client();
  plain.channels.clear();
  std::optional<Client> old = decode_client(encode(plain));
  REQUIRE(old);
  CHECK(old->channels.empty());
  CHECK(encode(*old) == encode(plain));
}

TEST_CASE("handover: truncated, padded or lying records are refused") {
  std::string body = encode(sample_client());
  Client plain = sample_client();
  plain.channels.clear();
  const std::size_t without_channels = encode(plain).size();
  for (std::size_t n = 0; n < body.size(); ++n)
    if (n != without_channels) CHECK_FALSE(decode_client(body.substr(0, n)));
  // No channel count of 0, no empty or over-long channel name.
  CHECK_FALSE(decode_client(encode(plain) + std::string(4, '\0')));
  Client long_name = sample_client();
  long_name.channels = {std::string(64, 'c')};
  CHECK_FALSE(decode_client(encode(long_name)));
  CHECK_FALSE(decode_client(body + "x"));
  // A cancel secret must be 4..256 bytes.
  Client short_secret = sample_client();
  short_secret.cancel_secret = "abc";
  CHECK_FALSE(decode_client(encode(short_secret)));
  // A count of pairs far beyond what the rest could hold.
  Client none;
  none.cancel_secret = "abcd";
  std::string lying = encode(none);
  // (params' count follows: id 8, peer 4, age 8, startup 4, pid 4, secret 4+4, lookup 4, kind 1)
  std::size_t count_at = 8 + 4 + 8 + 4 + 4 + 8 + 4 + 1;
  REQUIRE(decode_client(lying));
  lying[count_at] = '\x7f';
  CHECK_FALSE(decode_client(lying));
}

TEST_CASE("handover: frames, listeners and client keys") {
  std::string out;
  append_frame(out, Kind::listener, encode(Listener{"127.0.0.1:6432", 3}));
  std::optional<Header> h = parse_header(out);
  REQUIRE(h);
  CHECK(h->kind == Kind::listener);
  CHECK(h->length == out.size() - kHeaderSize);
  std::optional<Listener> l = decode_listener(std::string_view(out).substr(kHeaderSize));
  REQUIRE(l);
  CHECK(l->name == "127.0.0.1:6432");
  CHECK(l->reactor == 3);
  CHECK_FALSE(parse_header("Z\0\0\0\0"));                    // an unknown kind
  CHECK_FALSE(parse_header(std::string("C\x7f\0\0\0", 5)));  // over kMaxBody
  CHECK_FALSE(parse_header("C\0\0"));                        // short

  ClientKey k{"app", "SCRAM-SHA-256$...", {}};
  k.key[0] = 1;
  k.key[31] = 255;
  std::optional<ClientKey> back = decode_client_key(encode(k));
  REQUIRE(back);
  CHECK(back->user == "app");
  CHECK(back->secret == k.secret);
  CHECK(back->key == k.key);
  CHECK_FALSE(decode_client_key(encode(k).substr(1)));
}
