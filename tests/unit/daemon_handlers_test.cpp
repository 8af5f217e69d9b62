// The client and server handlers (daemon/conn/) driven by byte scripts, with no sockets: a real
// Reactor (its ring is never waited on), a pool, one logged-in client and one idle server
// connection whose streams are fed with Stream::receive_bytes and read with take_output. Each
// case checks what reached the other side byte for byte, and when the link ends.

#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

#include "proto/builders.hpp"
#include "tests/support/handlers.hpp"

using namespace pgring;
using namespace pgring::testing;
namespace build = pgring::proto::build;

namespace {

constexpr std::string_view kConfig = R"(
listen: ["127.0.0.1:1"]
workers: 1
auth: {method: trust}
databases:
  app: {host: 127.0.0.1, port: 1, pool_mode: transaction, pool_size: 1}
)";

// Frontend messages as drivers send them.
std::string query(std::string_view sql) {
  return message('Q', cstr(sql));
}
std::string parse(std::string_view name, std::string_view sql) {
  return message('P', cstr(name) + cstr(sql) + i16(0));
}
std::string bind(std::string_view statement) {
  return message('B', cstr("") + cstr(statement) + i16(0) + i16(0) + i16(0));
}
std::string describe_portal() {
  return message('D', "P" + cstr(""));
}
std::string execute() {
  return message('E', cstr("") + i32(0));
}
std::string sync_message() {
  return message('S');
}
std::string flush() {
  return message('H');
}

// Backend replies as PostgreSQL 15 sends them.
std::string ready(char status) {
  std::string out;
  REQUIRE(build::ready_for_query(out, status));
  return out;
}
std::string complete(std::string_view tag) {
  std::string out;
  REQUIRE(build::command_complete(out, tag));
  return out;
}
std::string error(std::string_view sqlstate, std::string_view text) {
  std::string out;
  REQUIRE(build::error_response(out, "ERROR", sqlstate, text));
  return out;
}
std::string one_row() {
  std::string out;
  REQUIRE(build::row_description(out, {"?column?"}));
  REQUIRE(build::data_row(out, {"1"}));
  return out;
}
const std::string kParseComplete = message('1');
const std::string kBindComplete = message('2');

// The shared harness (tests/support/handlers.hpp) with one client.
struct Linkable : testing::Handlers {
  Linkable() : Handlers(kConfig), client(add_client("test")) {}
  Client& client;

  void client_sends(std::string_view bytes) {
    client.stream_.receive_bytes(bytes);
    client.on_input();
  }
  void server_sends(std::string_view bytes) {
    server.stream_.receive_bytes(bytes);
    server.on_input();
  }
  // Bytes fed one at a time, a handler call after each: framing must never depend on how the
  // kernel split them.
  void client_trickles(std::string_view bytes) {
    for (char c : bytes) client_sends(std::string_view(&c, 1));
  }
  void server_trickles(std::string_view bytes) {
    for (char c : bytes) server_sends(std::string_view(&c, 1));
  }
  std::string server_got() { return server.stream_.take_output(); }
  std::string client_got() { return client.stream_.take_output(); }
  [[nodiscard]] bool linked() const {
    return client.server_ == &server && server.client_ == &client;
  }
  [[nodiscard]] bool released() const {
    return client.state_ == ClientState::idle && server.state_ == ServerState::idle &&
           client.server_ == nullptr && server.client_ == nullptr && server.requests_.idle();
  }
};

}  // namespace

TEST_CASE("a simple Query reaches the server unchanged; the link ends at ReadyForQuery 'I'") {
  const std::string reply = one_row() + complete("SELECT 1") + ready('I');
  for (bool trickle_query : {false, true}) {
    for (bool trickle_reply : {false, true}) {
      CAPTURE(trickle_query);
      CAPTURE(trickle_reply);
      Linkable h;
      if (trickle_query)
        h.client_trickles(query("SELECT 1"));
      else
        h.client_sends(query("SELECT 1"));
      CHECK(h.linked());
      CHECK(h.client.state_ == ClientState::active);
      CHECK(h.server_got() == query("SELECT 1"));
      CHECK(h.server.requests_in_flight() == 1);
      if (trickle_reply)
        h.server_trickles(reply);
      else
        h.server_sends(reply);
      CHECK(h.client_got() == reply);
      CHECK(h.released());
    }
  }
}

TEST_CASE("two pipelined Queries: released only after the second ReadyForQuery") {
  Linkable h;
  h.client_sends(query("SELECT 1") + query("SELECT 2"));
  CHECK(h.server_got() == query("SELECT 1") + query("SELECT 2"));
  h.server_sends(one_row() + complete("SELECT 1") + ready('I'));
  CHECK(h.linked());  // the second Query is still in flight
  h.server_sends(one_row() + complete("SELECT 1") + ready('I'));
  CHECK(h.released());
}

TEST_CASE("a transaction keeps its server until it ends") {
  Linkable h;
  h.client_sends(query("BEGIN"));
  h.server_sends(complete("BEGIN") + ready('T'));
  CHECK(h.linked());
  CHECK(h.client_got() == complete("BEGIN") + ready('T'));
  h.client_sends(query("COMMIT"));
  CHECK(h.server_got() == query("BEGIN") + query("COMMIT"));
  h.server_sends(complete("COMMIT") + ready('I'));
  CHECK(h.released());
}

TEST_CASE("an extended batch with the unnamed statement passes through as sent") {
  Linkable h;
  const std::string batch =
      parse("", "SELECT $1") + bind("") + describe_portal() + execute() + sync_message();
  h.client_sends(batch);
  CHECK(h.server_got() == batch);
  CHECK(h.server.requests_in_flight() == 5);  // Parse, Bind, Describe, Execute, Sync
  const std::string reply =
      kParseComplete + kBindComplete + one_row() + complete("SELECT 1") + ready('I');
  h.server_sends(reply);
  CHECK(h.client_got() == reply);
  CHECK(h.released());
}

TEST_CASE("Flush without Sync keeps the link; the Sync ends it") {
  Linkable h;
  h.client_sends(parse("", "SELECT 1") + bind("") + execute() + flush());
  h.server_sends(kParseComplete + kBindComplete + one_row() + complete("SELECT 1"));
  CHECK(h.linked());
  CHECK(h.server.requests_.unsynced_);
  h.client_sends(sync_message());
  h.server_sends(ready('I'));
  CHECK(h.released());
}

TEST_CASE("an error in the extended protocol: the server skips to Sync, so does the queue") {
  Linkable h;
  h.client_sends(parse("", "SELECT nope") + bind("") + execute() + sync_message());
  const std::string reply = error("42703", "column \"nope\" does not exist") + ready('I');
  h.server_sends(reply);
  CHECK(h.client_got() == reply);
  CHECK(h.released());
}

TEST_CASE("the statement cache renames a named Parse and answers a repeated one itself") {
  Linkable h;
  h.client_sends(parse("s1", "SELECT 1") + sync_message());
  std::string sent = h.server_got();
  CHECK(sent.find("pgring_") != std::string::npos);  // renamed to the registry's name
  CHECK(sent.find(cstr("s1")) == std::string::npos);
  h.server_sends(kParseComplete + ready('I'));
  CHECK(h.client_got() == kParseComplete + ready('I'));
  CHECK(h.released());

  // Another name for the same text: prepared on this server already, so pgring answers the
  // Parse in its place and only the Sync travels.
  h.client_sends(parse("s2", "SELECT 1") + sync_message());
  CHECK(h.server_got() == sync_message());
  CHECK(h.client_got() == kParseComplete);  // owed, sent at once: nothing before it
  h.server_sends(ready('I'));
  CHECK(h.client_got() == ready('I'));
  CHECK(h.released());

  // A Bind of a client's name is rewritten to the server's name.
  h.client_sends(bind("s2") + execute() + sync_message());
  std::string rewritten = h.server_got();
  CHECK(rewritten.find(cstr("s2")) == std::string::npos);
  CHECK(rewritten.find("pgring_") != std::string::npos);
  h.server_sends(kBindComplete + one_row() + complete("SELECT 1") + ready('I'));
  CHECK(h.client_got() == kBindComplete + one_row() + complete("SELECT 1") + ready('I'));
  CHECK(h.released());

  // The same name twice is PostgreSQL's 42P05, raised in its place; the batch is skipped to
  // its Sync.
  h.client_sends(parse("s1", "SELECT 2") + bind("s1") + execute() + sync_message());
  std::string got = h.client_got();
  CHECK(got.find("42P05") != std::string::npos);
  CHECK(h.server_got() == sync_message());
  h.server_sends(ready('I'));
  CHECK(h.released());
}

TEST_CASE("a Bind of a statement the client never prepared is 26000, and nothing else runs") {
  Linkable h;
  h.client_sends(bind("missing") + execute() + sync_message());
  CHECK(h.client_got().find("26000") != std::string::npos);
  CHECK(h.server_got() == sync_message());
  h.server_sends(ready('I'));
  CHECK(h.released());
}

TEST_CASE("COPY FROM STDIN keeps the link until the copy's ReadyForQuery") {
  Linkable h;
  h.client_sends(query("COPY t FROM STDIN"));
  h.server_sends(message('G', std::string("\0", 1) + i16(1) + i16(0)));  // CopyInResponse, text
  CHECK(h.linked());
  h.client_sends(message('d', "1\n") + message('d', "2\n") + message('c'));
  h.server_sends(complete("COPY 2"));
  CHECK(h.linked());
  h.server_sends(ready('I'));
  CHECK(h.released());
  CHECK(h.server_got() ==
        query("COPY t FROM STDIN") + message('d', "1\n") + message('d', "2\n") + message('c'));
}

TEST_CASE("Terminate is never forwarded: the client leaves, the server stays in the pool") {
  Linkable h;
  h.client_sends(message('X'));
  CHECK(h.client.state_ == ClientState::closing);
  CHECK(h.server.state_ == ServerState::idle);
  CHECK(h.server_got().empty());
}

TEST_CASE("a lying length from the client is 08P01; from the server, the link is lost") {
  {
    INFO("a client's length");
    Linkable h;
    h.client_sends(std::string("Q\0\0\0\x02", 5));  // a length below 4
    CHECK(h.client.state_ == ClientState::closing);
    CHECK(h.client_got().find("08P01") != std::string::npos);
    CHECK(h.server_got().empty());
  }
  {
    INFO("a server's length");
    Linkable h;
    h.client_sends(query("SELECT 1"));
    h.server_sends(std::string("T\0\0\0\x01", 5));
    CHECK(h.server.state_ == ServerState::closing);
    CHECK(h.client.state_ == ClientState::closing);  // its server is gone mid-query
  }
}

TEST_CASE("a waiting client gets the server when the first one's transaction ends") {
  Linkable h;
  Client& second = h.add_client("second");

  h.client_sends(query("BEGIN"));
  second.stream_.receive_bytes(query("SELECT 2"));
  second.on_input();
  CHECK(second.state_ == ClientState::waiting);  // pool_size 1: queued
  h.server_sends(complete("BEGIN") + ready('T'));
  h.client_sends(query("COMMIT"));
  CHECK(second.state_ == ClientState::waiting);  // the transaction still holds the server
  h.server_sends(complete("COMMIT") + ready('I'));
  // Released on the server's read path: the second client is linked there, and its request
  // goes out after the completions (never on that stack).
  CHECK(second.server_ == &h.server);
  CHECK(h.server_got() == query("BEGIN") + query("COMMIT"));
  h.reactor.forward_linked();
  CHECK(h.server_got() == query("SELECT 2"));
  h.server_sends(one_row() + complete("SELECT 1") + ready('I'));
  CHECK(second.stream_.take_output() == one_row() + complete("SELECT 1") + ready('I'));
  CHECK(second.state_ == ClientState::idle);
  CHECK(h.client.state_ == ClientState::idle);
}

TEST_CASE("the most recently used idle server is linked first (LIFO), so one client keeps one") {
  Linkable h;
  // A second server goes idle after the harness's: it is the most recently used.
  Server& warm = *new Server(h.reactor, h.pool, h.reactor.next_id());
  h.reactor.set_state(warm, ServerState::idle);
  for (int i = 0; i < 3; ++i) {
    CAPTURE(i);
    h.client_sends(query("SELECT 1"));
    REQUIRE(h.client.server_ == &warm);
    CHECK(warm.stream_.take_output() == query("SELECT 1"));
    warm.stream_.receive_bytes(one_row() + complete("SELECT 1") + ready('I'));
    warm.on_input();
    CHECK(h.client.state_ == ClientState::idle);
    CHECK(warm.state_ == ServerState::idle);
  }
  CHECK(h.server.state_ == ServerState::idle);  // never needed: it ages out (server_idle)
  CHECK(h.pool.idle_servers_.front() == &h.server);
}

TEST_CASE("an idle client keeps only what it needs to resume") {
  Linkable h;
  // The harness's client is past its login: the login state is gone.
  CHECK(h.client.login_ == nullptr);
  // A named statement and a pipelined extended batch: the batch state exists while linked.
  h.client_sends(parse("s1", "SELECT 1") + sync_message());
  CHECK(h.client.batch_ != nullptr);
  CHECK(h.client.statement_count() == 1);
  (void)h.server_got();
  h.server_sends(kParseComplete + ready('I'));
  REQUIRE(h.released());
  CHECK(h.client.batch_ == nullptr);       // given back when the client went idle
  CHECK(h.client.statements_ != nullptr);  // its statement name is session state: kept
  // The reply goes out as the reactor sends it (one sendmsg, completed in full). While it is
  // in flight the I/O state stays (the kernel reads its iovecs); once the send completed, the
  // reactor trims the idle client and its stream gives the I/O state back to the spares.
  REQUIRE(h.client.stream_.holds_io());
  REQUIRE(h.client.stream_.prepare_send() != nullptr);
  h.client.stream_.trim();
  CHECK(h.client.stream_.holds_io());
  CHECK(h.client.stream_.on_sent(static_cast<std::uint32_t>(h.client.stream_.pending_bytes())));
  h.client.stream_.trim();  // as Reactor::on_client_send does for an idle client
  CHECK_FALSE(h.client.stream_.holds_io());
  // A simple Query: no batch, and the unnamed statement (none here) never allocates one.
  h.client_sends(query("SELECT 1"));
  CHECK(h.client.batch_ == nullptr);
  CHECK(h.client.stream_.holds_io());  // bytes are moving again
  h.server_sends(one_row() + complete("SELECT 1") + ready('I'));
  CHECK(h.released());
  // Closing the statement: nothing of the statement cache is left either.
  h.client_sends(message('C', "S" + cstr("s1")) + sync_message());
  h.server_sends(ready('I'));
  REQUIRE(h.released());
  CHECK(h.client.statements_ == nullptr);
}

TEST_CASE("clients that sent the same startup packet share one Startup") {
  auto packet = [](std::vector<std::pair<std::string, std::string>> params) {
    std::string body = i32(196608);
    for (const auto& [k, v] : params) body += cstr(k) + cstr(v);
    body += '\0';
    return i32(static_cast<std::int32_t>(body.size() + 4)) + body;
  };
  StartupTable table;
  const std::string app = packet({{"user", "u"}, {"database", "app"}, {"DateStyle", "ISO"}});
  std::shared_ptr<const Startup> a = table.intern(app);
  std::shared_ptr<const Startup> b = table.intern(app);
  REQUIRE(a != nullptr);
  CHECK(a == b);  // one copy for every client of the application
  CHECK(a->message.user == "u");
  CHECK(a->message.database == "app");
  REQUIRE(a->settings.size() == 1);
  CHECK(a->settings[0].first == "datestyle");  // lower-case name, SQL literal value
  CHECK(a->settings[0].second == "'ISO'");
  CHECK(*find_value(a->values, "datestyle") == "ISO");  // as sent, found case-insensitively
  std::shared_ptr<const Startup> other =
      table.intern(packet({{"user", "u"}, {"options", "-c search_path=s1 --work-mem=64kB"}}));
  REQUIRE(other != nullptr);
  CHECK(other != a);
  CHECK(other->message.database == "u");  // defaults to the user
  CHECK(*find_value(other->settings, "search_path") == "'s1'");
  CHECK(*find_value(other->settings, "work_mem") == "'64kB'");
  CHECK(table.size() == 2);
  // The last client of a packet gone, its entry goes too.
  other.reset();
  CHECK(table.size() == 1);
  a.reset();
  CHECK(table.size() == 1);  // b still holds it
  b.reset();
  CHECK(table.size() == 0);
  // A packet that is not a StartupMessage is refused (the client is closed with 08P01).
  CHECK(table.intern(i32(8) + i32(80877103)) == nullptr);
  CHECK(table.size() == 0);
}

TEST_CASE("a link that ends while flow control paused reading resumes it on both sides") {
  // A multishot receive delivers what follows a pause in completions of its own, so a server can
  // read its ReadyForQuery (and go back to the pool) while still paused for the client's sake.
  // The next client's replies must not wait for a resume that only that client's sends trigger.
  Linkable h;
  h.client_sends(query("COPY t TO STDOUT"));
  (void)h.server_got();
  h.server.stream_.reading_paused_ = true;  // the client's output was above the watermark
  h.client.stream_.reading_paused_ = true;
  h.server_sends(complete("COPY 0") + ready('I'));
  REQUIRE(h.released());
  CHECK_FALSE(h.server.stream_.reading_paused_);
  CHECK_FALSE(h.client.stream_.reading_paused_);
}
