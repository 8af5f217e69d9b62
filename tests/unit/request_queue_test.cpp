// daemon/conn/request_queue: what a linked server owes its client, driven by scripts of
// requests and replies as PostgreSQL 15 sends them (no sockets, no reactor).

#include "daemon/conn/request_queue.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "daemon/cache/statements.hpp"

using namespace pgring;

namespace {
// The kinds left in the queue, head first.
std::vector<Request> kinds(RequestQueue& q) {
  std::vector<Request> out;
  for (std::size_t i = 0; i < q.size(); ++i) out.push_back(q.at(i).kind);
  return out;
}
void push_all(RequestQueue& q, std::initializer_list<Request> ks) {
  for (Request k : ks) q.push(k);
}
const auto kNothing = [](const RequestQueue::Entry&) {};
}  // namespace

TEST_CASE("request_for: the frontend messages that expect a reply") {
  CHECK(request_for('Q') == Request::query);
  CHECK(request_for('S') == Request::sync);
  CHECK(request_for('F') == Request::function_call);
  CHECK(request_for('E') == Request::execute);
  CHECK(request_for('P') == Request::parse);
  CHECK(request_for('B') == Request::bind);
  CHECK(request_for('C') == Request::close);
  CHECK(request_for('D') == Request::describe);
  CHECK(request_for('c') == Request::copy_end);
  CHECK(request_for('f') == Request::copy_end);
  CHECK_FALSE(request_for('H'));  // Flush: no reply of its own
  CHECK_FALSE(request_for('d'));  // CopyData
  CHECK_FALSE(request_for('X'));
  CHECK(is_owed(Request::owed_error));
  CHECK_FALSE(is_owed(Request::execute));
  CHECK(ends_cycle(Request::function_call));
  CHECK_FALSE(ends_cycle(Request::execute));
  CHECK(to_string(Request::describe) == "Describe");
}

TEST_CASE("a simple Query: busy until its ReadyForQuery") {
  RequestQueue q;
  CHECK(q.idle());
  const Clock::time_point t0 = Clock::time_point() + std::chrono::seconds(1);
  q.push(Request::query, t0);
  CHECK(q.busy_since() == t0);
  CHECK_FALSE(q.idle());
  // A multi-statement Query: two CommandCompletes, the Query stays until ReadyForQuery.
  CHECK_FALSE(q.on_command_complete().execute);
  CHECK_FALSE(q.on_command_complete().execute);
  CHECK(q.in_flight() == 1);
  q.pop_until_ready(kNothing);
  CHECK(q.idle());
}

TEST_CASE("a pipelined extended batch is answered in order") {
  RequestQueue q;
  const Clock::time_point t0 = Clock::time_point() + std::chrono::seconds(1);
  q.push(Request::parse, t0);
  push_all(q, {Request::bind, Request::describe, Request::execute});
  q.unsynced_ = true;
  q.push(Request::sync, t0 + std::chrono::seconds(1));
  CHECK(q.busy_since() == t0);  // busy since the Parse
  q.unsynced_ = false;
  CHECK(q.in_flight() == 5);
  CHECK_FALSE(q.pop_reply(Request::bind));  // not the head: nothing popped
  CHECK(q.in_flight() == 5);
  CHECK_FALSE(q.pop_reply(Request::parse));  // the client's own: forwarded
  CHECK_FALSE(q.pop_reply(Request::bind));
  CHECK_FALSE(q.pop_reply(Request::describe));
  CHECK(q.on_command_complete().execute);
  CHECK(kinds(q) == std::vector{Request::sync});
  q.pop_until_ready(kNothing);
  CHECK(q.idle());
}

TEST_CASE("injected requests are swallowed: skip") {
  RequestQueue q;
  q.push(Request::parse).skip = true;  // pgring's Parse before the client's Bind
  q.push(Request::bind);
  CHECK(q.pop_reply(Request::parse));
  CHECK_FALSE(q.pop_reply(Request::bind));
  CHECK(q.empty());
}

TEST_CASE("an error in the extended protocol skips to the Sync") {
  RequestQueue q;
  PreparedStatement statement;
  statement.id = 7;
  q.push(Request::bind);
  q.push(Request::owed_close_complete);  // owed among skipped requests: never sent
  q.push(Request::parse).statement = &statement;
  q.push(Request::execute);
  q.push(Request::sync);
  q.push(Request::query);  // the next cycle is untouched
  std::vector<Request> skipped;
  q.on_error([&](const RequestQueue::Entry& e) { skipped.push_back(e.kind); });
  CHECK(skipped ==
        std::vector{Request::bind, Request::owed_close_complete, Request::parse, Request::execute});
  CHECK(kinds(q) == std::vector{Request::sync, Request::query});
  q.pop_until_ready(kNothing);
  CHECK(kinds(q) == std::vector{Request::query});
}

TEST_CASE("pipelined Queries: the busy clock restarts at each ReadyForQuery, not at each push") {
  RequestQueue q;
  const Clock::time_point t0 = Clock::time_point() + std::chrono::seconds(1);
  q.push(Request::query, t0);
  q.push(Request::query, t0 + std::chrono::seconds(1));
  CHECK(q.busy_since() == t0);
  q.pop_until_ready(kNothing);
  q.restart_busy(t0 + std::chrono::seconds(5));  // the second Query runs from its predecessor's end
  CHECK(q.busy_since() == t0 + std::chrono::seconds(5));
  q.pop_until_ready(kNothing);
  q.restart_busy(t0 + std::chrono::seconds(9));  // nothing left: the clock stays where it was
  CHECK(q.busy_since() == t0 + std::chrono::seconds(5));
  CHECK(q.idle());
}

TEST_CASE("an error in a simple Query skips nothing") {
  RequestQueue q;
  push_all(q, {Request::query, Request::query});
  int skipped = 0;
  q.on_error([&](const RequestQueue::Entry&) { ++skipped; });
  CHECK(skipped == 0);
  CHECK(q.in_flight() == 2);
}

TEST_CASE("ReadyForQuery after an error pops the Executes that got no reply") {
  // After an error in an Execute the server skipped, the ReadyForQuery answers everything up to
  // and including the Sync; a Parse that was skipped prepared nothing.
  RequestQueue q;
  PreparedStatement statement;
  q.push(Request::execute);
  q.push(Request::parse).statement = &statement;
  q.push(Request::sync);
  q.push(Request::sync);
  int parses = 0;
  q.pop_until_ready([&](const RequestQueue::Entry& e) {
    if (e.kind == Request::parse && e.statement == &statement) ++parses;
  });
  CHECK(parses == 1);
  CHECK(kinds(q) == std::vector{Request::sync});
}

TEST_CASE("owed replies go out when they reach the head, in order") {
  RequestQueue q;
  q.push(Request::parse);
  q.push(Request::owed_parse_complete);
  q.push(Request::owed_error).fake = "E...";
  q.push(Request::bind);
  std::vector<Request> sent;
  auto emit = [&](const RequestQueue::Entry& e) { sent.push_back(e.kind); };
  q.take_owed(emit);
  CHECK(sent.empty());  // the Parse before them is not answered yet
  CHECK_FALSE(q.pop_reply(Request::parse));
  q.take_owed(emit);
  CHECK(sent == std::vector{Request::owed_parse_complete, Request::owed_error});
  CHECK(q.head_is(Request::bind));
}

TEST_CASE("COPY FROM STDIN: Syncs sent during the copy are ignored by the server") {
  RequestQueue q;
  q.push(Request::query);
  q.copy_in_ = true;  // CopyInResponse
  CHECK_FALSE(q.idle());
  q.push(Request::sync);  // a Sync inside COPY: PostgreSQL ignores it
  q.push(Request::copy_end);
  q.push(Request::query);  // pipelined after the copy
  SUBCASE("CopyDone: CommandComplete ends the copy") {
    CHECK_FALSE(q.on_command_complete().execute);
    CHECK_FALSE(q.copy_in_);
    CHECK(kinds(q) == std::vector{Request::query, Request::query});
  }
  SUBCASE("CopyFail: the error ends the copy") {
    q.on_error(kNothing);
    CHECK_FALSE(q.copy_in_);
    CHECK(kinds(q) == std::vector{Request::query, Request::query});
  }
  q.pop_until_ready(kNothing);
  q.pop_until_ready(kNothing);
  CHECK(q.idle());
}

TEST_CASE("an Execute that ran a SET hands it over; a Query's SET is copied") {
  RequestQueue q;
  auto set = std::make_unique<proto::sql::SetStatement>();
  set->name = "work_mem";
  q.push(Request::execute).set = std::move(set);
  RequestQueue::Completed done = q.on_command_complete();
  CHECK(done.execute);
  REQUIRE(done.set);
  CHECK(done.set->name == "work_mem");

  q.push(Request::query).set = std::make_unique<proto::sql::SetStatement>(*done.set);
  RequestQueue::Completed query = q.on_command_complete();
  CHECK_FALSE(query.execute);
  REQUIRE(query.set);
  CHECK(q.head()->set);  // still there for the Query's ReadyForQuery
}

TEST_CASE("a retry keeps only the batch's Sync") {
  RequestQueue q;
  push_all(q, {Request::bind, Request::describe, Request::execute, Request::sync});
  q.drop_all_but_last();
  CHECK(kinds(q) == std::vector{Request::sync});
  q.drop_all_but_last();  // one entry: nothing to drop
  CHECK(kinds(q) == std::vector{Request::sync});
  q.pop_back();
  CHECK(q.empty());
}

TEST_CASE("a long pipeline keeps its order while the answered prefix is dropped") {
  RequestQueue q;
  int pushed = 0, answered = 0;
  for (int round = 0; round < 50; ++round) {
    for (int i = 0; i < 7; ++i, ++pushed) q.push(Request::execute).batch_seq = pushed;
    for (int i = 0; i < 5; ++i, ++answered) {
      REQUIRE(q.head()->batch_seq == static_cast<std::uint64_t>(answered));
      CHECK(q.on_command_complete().execute);
    }
  }
  CHECK(q.in_flight() == static_cast<std::size_t>(pushed - answered));
  while (!q.empty()) {
    CHECK(q.head()->batch_seq == static_cast<std::uint64_t>(answered++));
    (void)q.on_command_complete();
  }
  CHECK(answered == pushed);
}

TEST_CASE("PreparedSet: least recently used first, shapes per connection") {
  PreparedSet set;
  set.add(1);
  set.add(2);
  set.add(3);
  set.touch(1);
  CHECK(set.victim(3, 0) == std::nullopt);  // within the limit
  CHECK(set.victim(2, 0) == 2u);
  CHECK(set.victim(2, 2) == 3u);  // never the one being prepared
  set.set_shape(3, 42);
  CHECK(set.shape(3) == 42u);
  CHECK(set.shape(9) == 0u);
  set.remove(2);
  CHECK_FALSE(set.contains(2));
  CHECK(set.size() == 2);
  set.clear();
  CHECK(set.size() == 0);
}

TEST_CASE("StatementRegistry: one entry per Parse tail, a retired one is prepared afresh") {
  StatementRegistry registry;
  const PreparedStatement& a = registry.intern(std::string("select 1\0\0\0", 11));
  const PreparedStatement& b = registry.intern(std::string("select 1\0\0\0", 11));
  CHECK(&a == &b);
  CHECK(a.query() == "select 1");
  const PreparedStatement& other = registry.intern(std::string("select 2\0\0\0", 11));
  CHECK(other.id != a.id);
  CHECK(other.server_name != a.server_name);
  registry.retire(a);
  const PreparedStatement& again = registry.intern(std::string("select 1\0\0\0", 11));
  CHECK(again.id != a.id);
  CHECK(a.query() == "select 1");  // the retired entry stays valid for clients naming it
  CHECK(shape_of("n") != 0u);
}

TEST_CASE("an error before the client's Sync: what it sends until that Sync gets no reply") {
  // PostgreSQL skips every message up to the next Sync, a simple Query among them: the
  // ReadyForQuery that follows answers the Sync, not the Query.
  RequestQueue q;
  PreparedStatement statement;
  statement.id = 7;
  push_all(q, {Request::bind, Request::execute});  // no Sync yet
  int skipped = 0;
  q.on_error([&](const RequestQueue::Entry&) { ++skipped; });
  CHECK(skipped == 2);
  CHECK(q.empty());
  q.push(Request::query);
  q.push(Request::owed_parse_complete);  // a Parse the cache would answer: skipped by the server
  q.push(Request::parse).statement = &statement;
  q.push(Request::sync);
  q.push(Request::query);  // after the Sync: answered as usual
  int owed = 0;
  q.take_owed([&](const RequestQueue::Entry&) { ++owed; });
  CHECK(owed == 0);
  std::vector<std::uint64_t> unprepared;
  q.pop_until_ready([&](const RequestQueue::Entry& e) {
    if (e.kind == Request::parse && e.statement != nullptr) unprepared.push_back(e.statement->id);
  });
  CHECK(unprepared == std::vector<std::uint64_t>{7});
  CHECK(kinds(q) == std::vector{Request::query});
  CHECK_FALSE(q.head()->server_skips);
  q.pop_until_ready(kNothing);
  CHECK(q.idle());
}
