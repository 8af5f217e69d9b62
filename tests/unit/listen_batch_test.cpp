// A LISTEN's extended-protocol batch, read as pgring answers it (proto/listen_batch.hpp): the
// shapes drivers send are taken, anything else is left to a server, a beginning waits.

#include "proto/listen_batch.hpp"

#include <doctest/doctest.h>

#include <string>

#include "proto/builders.hpp"

using namespace pgring::proto;

namespace {
const std::string kNoTypes("\0\0", 2);

std::string parse(std::string_view name, std::string_view text, std::string_view types = kNoTypes) {
  std::string out;
  std::string tail(text);
  tail += '\0';
  tail += types;
  REQUIRE(build::parse(out, name, tail));
  return out;
}
std::string bind(std::string_view portal, std::string_view statement,
                 std::string_view rest = std::string_view("\0\0\0\0\0\0", 6)) {
  std::string out;
  REQUIRE(build::bind(out, portal, statement, rest));
  return out;
}
std::string describe(char kind, std::string_view name) {
  std::string body(1, kind);
  body += name;
  body += '\0';
  std::string out;
  REQUIRE(build::message(out, 'D', body));
  return out;
}
std::string execute(std::string_view portal) {
  std::string body(portal);
  body += std::string("\0\0\0\0\0", 5);
  std::string out;
  REQUIRE(build::message(out, 'E', body));
  return out;
}
std::string sync() {
  std::string out;
  REQUIRE(build::sync(out));
  return out;
}
std::string flush() {
  std::string out;
  REQUIRE(build::flush(out));
  return out;
}
ListenBatchStatus read(const std::string& bytes, ListenBatch& batch) {
  return read_listen_batch(bytes, batch);
}
}  // namespace

TEST_CASE("listen batch: unnamed Parse, Bind, Describe, Execute, Sync (JDBC, psycopg 3)") {
  std::string bytes = parse("", "LISTEN jobs") + bind("", "") + describe('P', "") + execute("") +
                      sync() + "Qtrailing";
  ListenBatch batch;
  REQUIRE(read(bytes, batch) == ListenBatchStatus::yes);
  CHECK(batch.length == bytes.size() - 9);
  CHECK(batch.sync);
  CHECK(batch.statement.empty());
  REQUIRE(batch.parsed);
  CHECK(batch.parsed->kind == sql::Listen::Kind::listen);
  CHECK(batch.parsed->channel == "jobs");
  CHECK(batch.parse_tail == std::string("LISTEN jobs\0\0\0", 14));
  CHECK(batch.executes);
  CHECK(batch.replies == "12nC");
}

TEST_CASE("listen batch: asyncpg's prepare with a Flush, then its Bind/Execute/Sync") {
  ListenBatch batch;
  std::string prepare = parse("s1", "UNLISTEN \"Jobs\"") + describe('S', "s1") + flush();
  REQUIRE(read(prepare, batch) == ListenBatchStatus::yes);
  CHECK_FALSE(batch.sync);
  CHECK_FALSE(batch.executes);
  CHECK(batch.statement == "s1");
  CHECK(batch.replies == "1t");
  CHECK(batch.parsed->kind == sql::Listen::Kind::unlisten);
  CHECK(batch.parsed->channel == "Jobs");
  // The run names the statement only (the caller checks it is a LISTEN statement).
  std::string run =
      bind("", "s1", std::string_view("\0\1\0\1\0\0\0\1\0\1", 10)) + execute("") + sync();
  REQUIRE(read(run, batch) == ListenBatchStatus::yes);
  CHECK_FALSE(batch.parsed);
  CHECK(batch.statement == "s1");
  CHECK(batch.replies == "2C");
  // A Describe of it alone.
  std::string described = describe('S', "s1") + sync();  // (the batch's views point into it)
  REQUIRE(read(described, batch) == ListenBatchStatus::yes);
  CHECK(batch.replies == "t");
  CHECK(batch.statement == "s1");
}

TEST_CASE("listen batch: a beginning waits for the rest") {
  std::string whole = parse("", "LISTEN a") + bind("", "") + execute("") + sync();
  ListenBatch batch;
  for (std::size_t n = 0; n < whole.size(); ++n)
    CHECK(read(whole.substr(0, n), batch) == ListenBatchStatus::incomplete);
  CHECK(read(whole, batch) == ListenBatchStatus::yes);
}

TEST_CASE("listen batch: what is left to a server") {
  ListenBatch batch;
  auto no = [&](const std::string& bytes) { return read(bytes, batch) == ListenBatchStatus::no; };
  CHECK(no(parse("", "SELECT 1") + sync()));                                    // not a LISTEN
  CHECK(no(parse("", "LISTEN a; SELECT 1") + sync()));                          // not alone
  CHECK(no(parse("", "LISTEN a", std::string("\0\1\0\0\0\x17", 6)) + sync()));  // types given
  CHECK(no(bind("", "") + parse("", "LISTEN a") + sync()));                  // the Parse not first
  CHECK(no(parse("s", "LISTEN a") + bind("", "other") + sync()));            // another statement
  CHECK(no(parse("s", "LISTEN a") + describe('S', "t") + sync()));           // Describe of another
  CHECK(no(parse("", "LISTEN a") + bind("p", "") + execute("q") + sync()));  // another portal
  CHECK(no(parse("", "LISTEN a") + execute("") + sync()));                  // Execute before a Bind
  CHECK(no(parse("", "LISTEN a") + describe('P', "") + sync()));            // no such portal yet
  CHECK(no(parse("", "LISTEN a") + bind("", "") + bind("", "") + sync()));  // two Binds
  // A parameter bound (PostgreSQL's error comes from the server), two format codes.
  CHECK(no(parse("", "LISTEN a") + bind("", "", std::string_view("\0\0\0\1\0\0\0\1x\0\0", 11)) +
           sync()));
  CHECK(no(parse("", "LISTEN a") + bind("", "", std::string_view("\0\2\0\0\0\0\0\0\0\0", 10)) +
           sync()));
  // After the Execute only its Sync: a Flush, or another request, goes to a server.
  CHECK(no(parse("", "LISTEN a") + bind("", "") + execute("") + flush()));
  CHECK(no(parse("", "LISTEN a") + bind("", "") + flush()));  // a portal pgring would not keep
  CHECK(no(parse("", "LISTEN a") + bind("", "") + execute("") + parse("", "SELECT 1") + sync()));
  CHECK(no(sync()));  // nothing before it
  CHECK(no(std::string("Q\0\0\0\x05x", 6)));
  CHECK(no(std::string("P\0\0\x20\0", 5)));  // longer than a LISTEN batch can be
  std::string big = parse("", "LISTEN a") + bind("", "") + execute("");
  big += std::string(kMaxListenBatch, 'x');
  CHECK(no(big));  // no Sync within the limit
}
