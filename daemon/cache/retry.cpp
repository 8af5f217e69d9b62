// (split from conn/server.cpp)
#include <openssl/rand.h>

#include <algorithm>
#include <cctype>
#include <utility>

#include "daemon/conn/client.hpp"
#include "daemon/conn/server.hpp"
#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/net/tls.hpp"
#include "daemon/pool/pool.hpp"
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
  bool plan_changed =
      error.sqlstate == "0A000" &&
      error.message.find("cached plan must not change result type") != std::string_view::npos;
  bool lost = error.sqlstate == "26000";
  // A parameter type dropped (or re-created) since the statement was prepared here, by a
  // command pgring did not see (or on this server before pgring saw it).
  bool type_gone =
      error.sqlstate == "XX000" && error.message.starts_with("cache lookup failed for type");
  // The statement is retired whether or not the batch can be re-run: the next Parse of its text
  // prepares it afresh (each other stale copy fails once the same way).
  if (type_gone && !requests_.empty() && requests_.head()->statement != nullptr)
    reactor_.statements().retire(*requests_.head()->statement);
  if ((!plan_changed && !lost && !type_gone) || client_ == nullptr || requests_.empty())
    return false;
  RequestQueue::Entry& head = *requests_.head();
  Client& client = *client_;
  if ((head.kind != Request::bind && head.kind != Request::describe) || head.statement == nullptr ||
      transaction_status_ != 'I' || executed_in_batch_)
    return false;
  const bool describe = head.kind == Request::describe;
  if (describe && !head.shape_check && client.has_described(*head.statement)) return false;
  if (describe && requests_.size() == 1) {
    // Parse + Describe + Flush (asyncpg prepares so), or pgring's own shape check: nothing
    // after the Describe has reached the server. pgring ends the failed implicit transaction
    // with its own Sync, prepares the statement afresh and describes it again (a check stays a
    // check: its answer is compared with the client's description); one more round trip.
    const PreparedStatement& statement = *head.statement;
    bool check = head.shape_check;
    log::info("S-{} {} describing {}: re-preparing and retrying once", id_, error.message,
              statement.server_name);
    requests_.pop_back();
    (void)stream_.emit([&](std::string& out) {
      return proto::build::sync(out) && proto::build::close_statement(out, statement.server_name);
    });
    requests_.push(Request::sync, reactor_.now()).skip = true;
    requests_.push(Request::close, reactor_.now()).skip = true;
    (void)inject_parse(statement);
    (void)stream_.emit([&](std::string& out) {
      return proto::build::describe_statement(out, statement.server_name) &&
             proto::build::flush(out);
    });
    RequestQueue::Entry& describe = requests_.push(Request::describe, reactor_.now());
    describe.statement = &statement;
    describe.skip = check;
    describe.shape_check = check;
    ++reactor_.statements().counters.retries;
    reactor_.want_send(stream_);
    return true;
  }
  // Only the last batch sent, kept whole by the client, and not retried before.
  const Client::Batch* batch = client.batch_.get();
  if (requests_.back().kind != Request::sync || batch == nullptr || !batch->inflight_ok ||
      batch->inflight_seq != head.batch_seq || requests_.back().batch_seq != head.batch_seq ||
      retried_batch_seq_ == head.batch_seq + 1)
    return false;
  for (std::size_t i = 1; i + 1 < requests_.size(); ++i) {
    Request k = requests_.at(i).kind;
    if (k == Request::parse || is_owed(k)) return false;  // not replayable as copied
  }
  if (head.replay_offset > batch->inflight.size()) return false;
  std::string_view replay = std::string_view(batch->inflight).substr(head.replay_offset);
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
  // (A dropped parameter type changes no result shape: the replay needs no Describe.)
  if (executed && !described && !type_gone) return false;
  const PreparedStatement& statement = *head.statement;
  std::uint64_t seq = head.batch_seq;
  log::info("S-{} {} for {}: re-preparing and retrying once", id_, error.message,
            statement.server_name);
  // The server skips the rest of the batch; its ReadyForQuery is swallowed (and counted for no
  // query family: the replay's answer is the one the client gets).
  requests_.drop_all_but_last();
  requests_.back().skip = true;
  std::uint64_t fingerprint = std::exchange(requests_.back().fingerprint, 0);
  // Then: Close + Parse (both swallowed), and the batch again from the failed Bind.
  (void)stream_.emit(
      [&](std::string& out) { return proto::build::close_statement(out, statement.server_name); });
  requests_.push(Request::close, reactor_.now()).skip = true;
  (void)inject_parse(statement);
  for (std::string_view rest = replay; !rest.empty();) {
    proto::Frame f = proto::frame_message(rest, 1u << 30);
    char t = rest[0];
    stream_.emit_bytes(rest.substr(0, f.size));
    if (t != 'H') {
      RequestQueue::Entry& e = requests_.push(*request_for(t), reactor_.now());
      e.batch_seq = seq;
      if (t == 'S') e.fingerprint = fingerprint;
      if (t == 'B') e.statement = &statement;
      // A Describe of this statement records the shape the client is told (not a portal's).
      if (t == proto::frontend::kDescribe) {
        auto d = proto::parse_describe(rest.substr(5, f.size - 5));
        if (d && d->statement() && d->name == statement.server_name) e.statement = &statement;
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
