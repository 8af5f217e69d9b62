// (split from conn/server.cpp)
#include "daemon/conn/server.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <cctype>

#include "daemon/conn/client.hpp"
#include "daemon/core/log.hpp"
#include "daemon/pool/pool.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/net/tls.hpp"
#include "proto/builders.hpp"
#include "proto/bytes.hpp"
#include "proto/md5.hpp"
#include "proto/messages.hpp"

namespace pgring {

bool Server::retry_after_error(const proto::ErrorFields& error) {
  // A cached statement whose plan no longer fits (DDL changed its result type), or that the
  // server lost, fails at Bind, or at a Describe of the statement. Outside an explicit
  // transaction, and before anything of its batch ran, pgring re-prepares it and replays the
  // batch once: the client sees no error. Inside a transaction the error is the client's,
  // exactly as PostgreSQL gives it.
  //
  // A Describe fails this way when the client's Parse was answered from a statement this server
  // prepared before the DDL: PostgreSQL would have prepared afresh, so the error is pgring's
  // and is always retried while the client has not been told a result type. A client that was
  // told one gets the error (its description is stale, as PostgreSQL would say).
  bool plan_changed = error.sqlstate == "0A000" && error.message.find("cached plan must not change result type") !=
                                                       std::string_view::npos;
  bool lost = error.sqlstate == "26000";
  if ((!plan_changed && !lost) || client_ == nullptr || expected_head_ >= expected_.size()) return false;
  Expected& head = expected_[expected_head_];
  Client& client = *client_;
  if ((head.kind != 'B' && head.kind != 'D') || head.statement == nullptr || transaction_status_ != 'I' ||
      executed_in_batch_)
    return false;
  if (head.kind == 'D' && !head.shape_check && client.has_described(*head.statement)) return false;
  if (head.kind == 'D' && expected_head_ + 1 == expected_.size()) {
    // Parse + Describe + Flush (asyncpg prepares so), or pgring's own shape check: nothing
    // after the Describe has reached the server. pgring ends the failed implicit transaction
    // with its own Sync, prepares the statement afresh and describes it again (a check stays a
    // check: its answer is compared with the client's description); one more round trip.
    const PreparedStatement& statement = *head.statement;
    bool check = head.shape_check;
    log::info("S-{} {} describing {}: re-preparing and retrying once", id_, error.message, statement.server_name);
    expected_.pop_back();
    (void)stream_.emit([&](std::string& out) {
      proto::Writer w(out);
      w.begin(proto::frontend::kSync).end();
      return w.ok() && proto::build::close_statement(out, statement.server_name) &&
             proto::build::parse(out, statement.server_name, statement.parse_tail);
    });
    expect('S').skip = true;
    expect('C').skip = true;
    Expected& parse = expect('P');
    parse.skip = true;
    parse.statement = &statement;
    prepared_.add(statement.id);
    (void)stream_.emit([&](std::string& out) {
      proto::Writer w(out);
      w.begin(proto::frontend::kDescribe).u8('S').cstring(statement.server_name).end();
      w.begin(proto::frontend::kFlush).end();
      return w.ok();
    });
    Expected& describe = expect('D');
    describe.statement = &statement;
    describe.skip = check;
    describe.shape_check = check;
    ++reactor_.statements().counters.retries;
    reactor_.want_send(stream_);
    return true;
  }
  // Only the last batch sent, kept whole by the client, and not retried before.
  if (expected_.back().kind != 'S' || !client.inflight_batch_ok_ || client.inflight_batch_seq_ != head.batch_seq ||
      expected_.back().batch_seq != head.batch_seq || retried_batch_seq_ == head.batch_seq + 1)
    return false;
  for (std::size_t i = expected_head_ + 1; i + 1 < expected_.size(); ++i) {
    char k = expected_[i].kind;
    if (k == 'P' || k == 'p' || k == 'x' || k == 'e' || k == 'd') return false;  // not replayable as copied
  }
  if (head.replay_offset > client.inflight_batch_.size()) return false;
  std::string_view replay = std::string_view(client.inflight_batch_).substr(head.replay_offset);
  // The replay must hold only messages whose replies pgring can track again, and the client
  // must learn the new result shape: a Describe before the first Execute (libpq's
  // PQexecPrepared sends one). A driver that reuses a row description it cached (asyncpg) gets
  // the error instead, which it handles itself by re-preparing.
  bool described = false, executed = false;
  for (std::string_view rest = replay; !rest.empty();) {
    proto::Frame f = proto::frame_message(rest, 1u << 30);
    if (f.status != proto::FrameStatus::complete) return false;
    char t = rest[0];
    if (t != 'B' && t != 'D' && t != 'E' && t != 'S' && t != 'H' && t != 'C') return false;
    if (t == 'D' && !executed) described = true;
    if (t == 'E') executed = true;
    rest.remove_prefix(f.size);
  }
  if (executed && !described) return false;
  const PreparedStatement& statement = *head.statement;
  std::uint64_t seq = head.batch_seq;
  log::info("S-{} {} for {}: re-preparing and retrying once", id_, error.message, statement.server_name);
  // The server skips the rest of the batch; its ReadyForQuery is swallowed.
  expected_.erase(expected_.begin() + static_cast<std::ptrdiff_t>(expected_head_), expected_.end() - 1);
  expected_.back().skip = true;
  // Then: Close + Parse (both swallowed), and the batch again from the failed Bind.
  (void)stream_.emit([&](std::string& out) { return proto::build::close_statement(out, statement.server_name); });
  expect('C').skip = true;
  (void)stream_.emit([&](std::string& out) {
    return proto::build::parse(out, statement.server_name, statement.parse_tail);
  });
  Expected& parse = expect('P');
  parse.skip = true;
  parse.statement = &statement;
  prepared_.add(statement.id);
  for (std::string_view rest = replay; !rest.empty();) {
    proto::Frame f = proto::frame_message(rest, 1u << 30);
    char t = rest[0];
    stream_.emit_bytes(rest.substr(0, f.size));
    if (t != 'H') {
      Expected& e = expect(t == 'B' ? 'B' : t == 'D' ? 'D' : t == 'E' ? 'E' : t == 'C' ? 'C' : 'S');
      e.batch_seq = seq;
      if (t == 'B') e.statement = &statement;
      // A Describe of this statement records the shape the client is told (not a portal's).
      if (t == 'D') {
        proto::Reader d(rest.substr(5, f.size - 5));
        char kind = static_cast<char>(d.u8());
        if (d.cstring() == statement.server_name && d.ok() && kind == 'S') e.statement = &statement;
      }
    }
    rest.remove_prefix(f.size);
  }
  retried_batch_seq_ = seq + 1;
  ++reactor_.statements().counters.retries;
  reactor_.want_send(stream_);
  return true;
}

}  // namespace pgring
