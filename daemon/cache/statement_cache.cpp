// (split from conn/client.cpp)
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cctype>
#include <cstring>

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
#include "proto/sql.hpp"

namespace pgring {

// ---- the statement cache (docs/transaction-pooling.md) -----------------------------------

void Client::fake_error(Server& server, std::string_view sqlstate, std::string message) {
  RequestQueue::Entry& e = server.requests_.push(Request::owed_error, reactor_.now());
  (void)proto::build::error_response(e.fake, "ERROR", sqlstate, message);
  batch().skip_until_sync = true;
}

bool Client::ensure_prepared(Server& server, const PreparedStatement& statement) {
  if (server.prepared_.contains(statement.id)) {
    server.prepared_.touch(statement.id);
    return true;
  }
  // The server lacks it (another connection, or evicted): prepare it first and swallow the
  // ParseComplete. An error from this Parse reaches the client as the error of its request.
  if (server.inject_parse(statement) == nullptr) return false;
  ++reactor_.statements().counters.injected;
  evict_statements(server, statement.id);
  return true;
}

bool Client::start_shape_check(Server& server, const NamedStatement& named) {
  const PreparedStatement& statement = *named.entry;
  if (named.shape == 0) return false;  // this client never saw a result type: nothing to hold to
  bool prepared = server.prepared_.contains(statement.id);
  if (prepared && server.prepared_.shape(statement.id) == named.shape) return false;
  // The statement is new to this connection, or was prepared here by a Parse nobody described,
  // or has another shape here: ask the server (Parse when needed, Describe, both swallowed, and
  // Flush), then hold this client's messages until the answer. One round trip, at most once
  // per statement and connection; a shape that differs is confirmed by the server itself.
  if (!prepared) {
    // (Its error would be the check's: see Server, ErrorResponse.)
    (void)server.inject_parse(statement, /*shape_check=*/true);
    ++reactor_.statements().counters.injected;
    evict_statements(server, statement.id);
  }
  (void)server.stream_.emit([&](std::string& out) {
    return proto::build::describe_statement(out, statement.server_name) && proto::build::flush(out);
  });
  RequestQueue::Entry& d = server.requests_.push(Request::describe, reactor_.now());
  d.skip = true;
  d.statement = &statement;
  d.shape_check = true;
  batch().shape_check_pending = true;
  batch_->shape_check_expected = named.shape;
  reactor_.want_send(server.stream_);
  return true;
}

bool Client::has_described(const PreparedStatement& statement) const {
  if (!statements_) return false;
  for (const auto& [name, named] : statements_->named)
    if (named.entry == &statement && named.shape != 0) return true;
  return false;
}

void Client::on_described(const PreparedStatement& statement, Shape shape) {
  if (!statements_) return;
  for (auto& [name, named] : statements_->named)
    if (named.entry == &statement && named.shape == 0) named.shape = shape;
}

void Client::on_shape_checked(const PreparedStatement& statement, Shape shape) {
  Batch& b = batch();
  b.shape_check_pending = false;
  bool same = shape == 0 || shape == b.shape_check_expected;
  if (!same && server_ != nullptr) {
    // DDL changed the result under this client's description: PostgreSQL would refuse the
    // Bind, so pgring does. The stale entry is retired (a new Parse prepares afresh) and this
    // server forgets its new-shaped copy, so others naming the old entry are checked too.
    Server& server = *server_;
    log::info("C-{} statement {} changed its result type; refusing it as PostgreSQL would", id_,
              statement.server_name);
    reactor_.statements().retire(statement);
    (void)server.stream_.emit([&](std::string& out) {
      return proto::build::close_statement(out, statement.server_name);
    });
    server.requests_.push(Request::close, reactor_.now()).skip = true;
    server.prepared_.remove(statement.id);
    // The server raises the error itself, so its transaction state is exactly PostgreSQL's
    // (an explicit block becomes failed, an implicit one rolls back at Sync). It runs as the
    // unnamed statement, which therefore no longer holds any client's.
    static constexpr std::string_view kRaise =
        "DO $pgring$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', "
        "MESSAGE = 'cached plan must not change result type'; END$pgring$";
    (void)server.stream_.emit(
        [&](std::string& out) { return proto::build::run_unnamed(out, kRaise, {}); });
    server.requests_.push(Request::parse, reactor_.now()).skip = true;
    server.requests_.push(Request::bind, reactor_.now()).skip = true;
    // Its ErrorResponse is replaced by PostgreSQL's own for this case: drivers recognise it by
    // the routine field (asyncpg: RevalidateCachedQuery -> InvalidCachedStatementError).
    RequestQueue::Entry& raise = server.requests_.push(Request::execute, reactor_.now());
    (void)proto::build::error_response_from(raise.fake, "0A000",
                                            "cached plan must not change result type",
                                            "plancache.c", "RevalidateCachedQuery");
    server.unnamed_client_ = 0;
    b.skip_until_sync = true;  // the held Bind and what follows, up to the client's Sync
    reactor_.want_send(server.stream_);
  }
  if (state_ == ClientState::active) on_input();
}

void Client::on_shape_check_failed() {
  batch().shape_check_pending = false;
  batch_->skip_until_sync = true;  // the held request and the rest of the batch; the Sync goes on
  if (state_ == ClientState::active) on_input();
}

void Client::evict_statements(Server& server, std::uint64_t keep) {
  auto limit = static_cast<std::size_t>(pool_->settings_.prepared_statements);
  while (auto victim = server.prepared_.victim(limit, keep)) {
    server.close_statement(*victim);
    ++reactor_.statements().counters.evictions;
  }
}

bool Client::cached_parse(Server& server, std::string_view body,
                          std::unique_ptr<NamedStatement::Runs> runs) {
  auto parse = proto::parse_parse(body);
  if (!parse) return false;  // malformed: the server answers it
  std::string_view name = parse->name;
  std::string_view tail = parse->tail;
  if (name.empty()) {
    // The unnamed statement passes through; remember it in case the next Bind lands elsewhere.
    statements().unnamed_parse_tail.assign(tail);
    statements_->unnamed_runs = false;
    server.unnamed_client_ = id_;
    server.unnamed_seq_ = ++unnamed_seq_;
    return false;
  }
  auto& named = statements().named;
  if (named.count(std::string(name)) != 0) {
    fake_error(server, "42P05", fmt::format("prepared statement \"{}\" already exists", name));
    return true;
  }
  const PreparedStatement& statement = reactor_.statements().intern(tail);
  named.emplace(std::string(name), NamedStatement{&statement, 0, false, std::move(runs)});
  if (server.prepared_.contains(statement.id)) {
    // Already prepared on this connection: ParseComplete comes from pgring, in its place.
    server.prepared_.touch(statement.id);
    RequestQueue::Entry& owed = server.requests_.push(Request::owed_parse_complete, reactor_.now());
    owed.statement = &statement;  // (a ParseComplete skipped after an error forgets the name)
    owed.client_name = name;
    ++reactor_.statements().counters.hits;
    return true;
  }
  server.before_preparing(statement.id);
  if (!server.stream_.emit([&](std::string& out) {
        return proto::build::parse(out, statement.server_name, statement.parse_tail);
      })) {
    reactor_.close(*this, Reason::protocol_violation, "cannot encode Parse");
    return true;
  }
  RequestQueue::Entry& e = server.requests_.push(Request::parse, reactor_.now());
  e.statement = &statement;
  e.client_name = name;
  server.prepared_.add(statement.id);
  ++reactor_.statements().counters.parses_sent;
  evict_statements(server, statement.id);
  return true;
}

void Client::forget_statement(std::string_view name, const PreparedStatement& statement) {
  if (!statements_) return;
  auto it = statements_->named.find(std::string(name));
  if (it != statements_->named.end() && it->second.entry == &statement)
    statements_->named.erase(it);
}

const Client::NamedStatement* Client::find_statement(Server& server, std::string_view name) {
  if (statements_) {
    auto it = statements_->named.find(std::string(name));
    if (it != statements_->named.end()) return &it->second;
  }
  fake_error(server, "26000", fmt::format("prepared statement \"{}\" does not exist", name));
  return nullptr;
}

bool Client::ensure_unnamed(Server& server) {
  if (!statements_ || statements_->unnamed_parse_tail.empty() ||
      (server.unnamed_client_ == id_ && server.unnamed_seq_ == unnamed_seq_))
    return true;
  // This server holds someone else's unnamed statement (or none): prepare ours first.
  const std::string& tail = statements_->unnamed_parse_tail;
  if (!server.stream_.emit([&](std::string& out) { return proto::build::parse(out, "", tail); }))
    return false;
  server.requests_.push(Request::parse, reactor_.now()).skip = true;
  server.unnamed_client_ = id_;
  server.unnamed_seq_ = unnamed_seq_;
  ++reactor_.statements().counters.injected;
  return true;
}

const PreparedStatement* Client::prepare_named(Server& server, std::string_view name,
                                               bool& consumed) {
  consumed = false;
  if (name.empty()) {
    if (!statements_ || statements_->unnamed_parse_tail.empty()) {
      // It has none (never parsed, or a simple Query destroyed it): what the server has under
      // that name is another client's.
      fake_error(server, "26000", "unnamed prepared statement does not exist");
      consumed = true;
      return nullptr;
    }
    // The unnamed statement keeps its name: prepared here first if it lives elsewhere.
    if (!ensure_unnamed(server))
      reactor_.close(*this, Reason::protocol_violation, "cannot encode Parse");
    return nullptr;
  }
  const NamedStatement* named = find_statement(server, name);
  if (named == nullptr) {
    consumed = true;  // answered with 26000 in its place
    return nullptr;
  }
  if (named->runs) [[unlikely]] {
    // `EXECUTE name` looks its statement up when it runs: gone (or another since), PostgreSQL
    // answers 26000 for it.
    auto it = statements_->named.find(named->runs->name);
    if (it == statements_->named.end() || it->second.entry != named->runs->statement) {
      fake_error(server, "26000",
                 fmt::format("prepared statement \"{}\" does not exist", named->runs->name));
      consumed = true;
      return nullptr;
    }
    if (!it->second.pending && !ensure_prepared(server, *named->runs->statement)) {
      reactor_.close(*this, Reason::protocol_violation, "cannot encode Parse");
      consumed = true;
      return nullptr;
    }
  }
  if (start_shape_check(server, *named)) return nullptr;  // held (see forward_to_server)
  if (!ensure_prepared(server, *named->entry)) {
    reactor_.close(*this, Reason::protocol_violation, "cannot encode Parse");
    consumed = true;
    return nullptr;
  }
  return named->entry;
}

bool Client::cached_bind(Server& server, std::string_view body) {
  auto bind = proto::parse_bind(body);
  if (!bind) return false;  // malformed: the server answers it
  bool consumed = false;
  const PreparedStatement* statement = prepare_named(server, bind->statement, consumed);
  if (statement == nullptr) {
    // (The unnamed statement: a LISTEN statement's Bind is seen here too.)
    if (!consumed && bind->statement.empty() && statements_ &&
        (statements_->has_listen || listening_)) [[unlikely]]
      bind_runs_listen(statements_->unnamed_parse_tail.c_str());
    return consumed;
  }
  if (statement->listen) [[unlikely]] {
    bind_runs_listen(statement->query());
    if (state_ == ClientState::closing) return true;
  }
  if (QueryStats& stats = reactor_.queries(); stats.on())
    batch().fingerprint = stats.family(*pool_, statement->query(), &statement->fingerprint);
  // The parameters are copied once into the rewritten Bind.
  std::size_t offset = batch().copy.size();
  std::size_t start = 0;
  bool ok = server.stream_.emit([&](std::string& out) {
    start = out.size();
    if (!proto::build::bind(out, bind->portal, statement->server_name, bind->rest)) return false;
    record_batch(std::string_view(out).substr(start));
    return true;
  });
  if (!ok) {
    reactor_.close(*this, Reason::protocol_violation, "cannot encode Bind");
    return true;
  }
  RequestQueue::Entry& e = server.requests_.push(Request::bind, reactor_.now());
  e.statement = statement;
  e.batch_seq = batch_seq_;
  e.replay_offset = offset;
  return true;
}

bool Client::cached_describe(Server& server, std::string_view body) {
  auto describe = proto::parse_describe(body);
  if (!describe || !describe->statement()) return false;  // a portal, or malformed: passed on
  bool consumed = false;
  const PreparedStatement* statement = prepare_named(server, describe->name, consumed);
  if (statement == nullptr) return consumed;
  std::size_t offset = batch().copy.size();
  (void)server.stream_.emit([&](std::string& out) {
    std::size_t start = out.size();
    if (!proto::build::describe_statement(out, statement->server_name)) return false;
    record_batch(std::string_view(out).substr(start));
    return true;
  });
  RequestQueue::Entry& e = server.requests_.push(Request::describe, reactor_.now());
  e.statement = statement;  // its reply records the shape the client is told
  e.batch_seq = batch_seq_;
  e.replay_offset = offset;
  return true;
}

bool Client::cached_close(Server& server, std::string_view body) {
  auto close = proto::parse_close(body);
  if (!close || !close->statement()) return false;  // a portal, or malformed: passed on
  std::string_view name = close->name;
  if (name.empty()) {
    if (statements_) statements_->unnamed_parse_tail.clear();
    if (server.unnamed_client_ == id_) server.unnamed_client_ = 0;
    return false;
  }
  // The client forgets its name; the server keeps the statement for whoever uses it next.
  if (statements_) statements_->named.erase(std::string(name));
  server.requests_.push(Request::owed_close_complete, reactor_.now());
  return true;
}

bool Client::deallocate(Server& server, std::string_view query, std::uint8_t mentioned) {
  auto d = proto::sql::parse_deallocate(query, mentioned);
  if (!d) return false;
  if (d->all) {
    // Forwarded: the server drops every statement of this connection. The tag clears the caches.
    if (statements_) statements_->named.clear();
    return false;
  }
  // A name the client does not have: PostgreSQL's own 26000, from the server. In a failed
  // transaction PostgreSQL refuses the command (25P02) and the statement stays: the server says
  // so too. Behind requests still in flight the outcome is unknown: the server runs it on
  // pgring's name (rewrite_sql_statement).
  if (!statements_ || !statements_->named.contains(d->name) || !server.requests_.empty() ||
      server.transaction_status_ == 'E')
    return false;
  // The client forgets its name; the server keeps the statement for whoever uses it next.
  statements_->named.erase(d->name);
  server.requests_.push(Request::owed_deallocate, reactor_.now());
  return true;
}

// ---- SQL-level PREPARE / EXECUTE (docs/transaction-pooling.md) -------------------------------
//
// `PREPARE name (types) AS ...` joins the statement cache: it is sent as `PREPARE pgring_<id> ...`
// (the id of its text after the name), and `EXECUTE name`, `EXPLAIN EXECUTE name` run pgring's
// name, on whatever server the transaction has; a server that lacks the statement prepares it
// first, in the same Query. A name from a protocol-level Parse works in EXECUTE too (and an
// SQL-level name in Bind), as both share one namespace in PostgreSQL.

namespace {

// PostgreSQL counts error positions in characters (UTF-8 here), not bytes.
std::size_t characters(std::string_view text) {
  std::size_t n = 0;
  for (char c : text) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

}  // namespace

void Client::statement_prepared(std::string_view name, const PreparedStatement& statement) {
  if (!statements_) return;
  auto it = statements_->named.find(std::string(name));
  if (it != statements_->named.end() && it->second.entry == &statement) it->second.pending = false;
}

void Client::restore_statement(std::string_view name, const PreparedStatement& statement) {
  statements().named.emplace(std::string(name), NamedStatement{&statement, 0, false, nullptr});
}

void Client::close_statement_on(Server& server, const PreparedStatement& statement) {
  server.close_statement(statement.id);
}

std::optional<Client::SqlText> Client::rewrite_sql_statement(Server& server, std::string_view query,
                                                             std::uint8_t mentioned) {
  if (auto prepare = proto::sql::parse_prepare(query, mentioned))
    return sql_prepare(server, query, *prepare);
  if (!statements_ || statements_->named.empty()) return std::nullopt;
  // EXECUTE name, or DEALLOCATE name behind requests in flight (see deallocate).
  std::string client_name;
  std::size_t offset = 0, length = 0;
  bool deallocates = false;
  if (auto execute = proto::sql::find_execute(query, mentioned)) {
    client_name = std::move(execute->name);
    offset = execute->offset;
    length = execute->length;
  } else if (auto d = proto::sql::parse_deallocate(query, mentioned);
             d && !d->all && !server.requests_.empty()) {
    client_name = std::move(d->name);
    offset = d->offset;
    length = d->length;
    deallocates = true;
  } else {
    return std::nullopt;
  }
  auto it = statements_->named.find(client_name);
  if (it == statements_->named.end()) return std::nullopt;  // PostgreSQL's own 26000
  const PreparedStatement& statement = *it->second.entry;
  SqlText out;
  out.statement = &statement;
  out.sql = std::make_unique<RequestQueue::Entry::SqlRewrite>();
  RequestQueue::Entry::SqlRewrite& sql = *out.sql;
  sql.client_name = std::move(client_name);
  sql.deallocates = deallocates;
  if (deallocates) {
    // Behind requests in flight (see deallocate): the name goes now, so that what the client
    // pipelines after it (a PREPARE of the name again, an EXECUTE) sees it gone, and comes back
    // if the DEALLOCATE fails (25P02 in a failed transaction: see forget_failed_prepare).
    bool pending = it->second.pending;
    statements_->named.erase(it);
    if (!pending) {
      // The server runs it on pgring's name, which it may or may not have: closed, and a
      // stand-in prepared under that name (its CommandComplete is pgring's) is what goes. (A
      // pending name: its PREPARE ahead of this one decides, as in PostgreSQL.)
      if (server.prepared_.contains(statement.id)) close_statement_on(server, statement);
      server.before_preparing(statement.id);
      out.text = fmt::format("PREPARE {} AS SELECT 1;\n", statement.server_name);
      sql.hidden_completes = 1;
    }
    return finish_rewrite(query, offset, length, std::move(out));
  }
  if (it->second.pending) {
    // Its PREPARE is ahead of this Query on this server: the server has the statement when
    // this runs exactly if the client's PREPARE succeeded (else: 26000, in the client's terms).
  } else if (!server.requests_.empty() && server.prepared_.contains(statement.id)) {
    // Behind requests in flight, whether the server has the statement is not settled (a
    // PREPARE of pgring's among them may yet fail, in a failed transaction say): it is closed
    // (a Close never fails) and prepared again in this Query.
    close_statement_on(server, statement);
  }
  if (it->second.pending || server.prepared_.contains(statement.id)) {
    server.prepared_.touch(statement.id);
  } else if (statement.sql) {
    // Prepared first, in the same Query: if that fails (a table it reads is gone), the error is
    // the client's, as its EXECUTE would have failed; its CommandComplete is pgring's.
    // (The newline: the text may end in a comment.)
    server.before_preparing(statement.id);
    out.text = fmt::format("PREPARE {} {}\n;\n", statement.server_name, statement.parse_tail);
    sql.hidden_completes = 1;
    server.prepared_.add(statement.id);
    ++reactor_.statements().counters.injected;
    evict_statements(server, statement.id);
  } else if ((!server.requests_.empty() || server.transaction_status_ != 'E') &&
             !server.requests_.unsynced_) {
    // A protocol-level statement (its types are OIDs, which SQL cannot name): its Parse, then a
    // Sync of pgring's own, so that the server does not skip the Query after an error in it.
    // (In a failed transaction the Query fails with 25P02 anyway: nothing to prepare. After
    // the client's own extended messages a Sync would end their batch: none is sent, and the
    // EXECUTE fails with 26000 where the server lacks the statement.)
    if (!ensure_prepared(server, statement) ||
        !server.stream_.emit([](std::string& o) { return proto::build::sync(o); })) {
      reactor_.close(*this, Reason::protocol_violation, "cannot encode Parse");
      return std::nullopt;
    }
    server.requests_.push(Request::sync, reactor_.now()).skip = true;
  }
  return finish_rewrite(query, offset, length, std::move(out));
}

Client::SqlText Client::finish_rewrite(std::string_view query, std::size_t offset,
                                       std::size_t length, SqlText out) {
  // The client's text after pgring's prefix, with pgring's name in place of the client's.
  const std::string& server_name = out.statement->server_name;
  std::string_view before = query.substr(0, offset);
  std::string_view name = query.substr(offset, length);
  out.sql->rename = {.client_name = out.sql->client_name,
                     .server_name = server_name,
                     .prefix_chars = characters(out.text),
                     .name_at = characters(before),
                     .client_chars = characters(name),
                     .server_chars = server_name.size()};
  out.text.append(before).append(server_name);
  out.text.append(query.substr(offset + length));
  return out;
}

std::string Client::rewrite_parse_execute(Server& server, const proto::ParseMessage& parse,
                                          std::uint8_t mentioned,
                                          std::unique_ptr<NamedStatement::Runs>& runs) {
  // A Parse of `EXECUTE name` (asyncpg's fetch of it, any driver's extended-protocol query):
  // the same rewrite as a Query's, in the extended protocol. A server that lacks the statement
  // prepares it first (an SQL-level one through the unnamed statement, see inject_parse), and
  // an error there is the error of the client's Parse: the server skips to the client's Sync.
  auto execute = proto::sql::find_execute(parse.query, mentioned);
  if (!execute) return {};
  auto it = statements_->named.find(execute->name);
  if (it == statements_->named.end()) return {};  // PostgreSQL's own 26000, at the Execute
  const NamedStatement& named = it->second;
  const PreparedStatement& statement = *named.entry;
  if (!named.pending) {
    if (!server.requests_.empty() && server.prepared_.contains(statement.id))
      close_statement_on(server, statement);  // not settled behind requests in flight
    if (!ensure_prepared(server, statement)) {
      reactor_.close(*this, Reason::protocol_violation, "cannot encode Parse");
      return {};
    }
  }
  if (!parse.name.empty())
    runs = std::make_unique<NamedStatement::Runs>(NamedStatement::Runs{execute->name, &statement});
  // The body: name, the query with pgring's statement name, the parameter types as they were.
  std::string body(parse.name);
  body.push_back('\0');
  body.append(parse.query.substr(0, execute->offset)).append(statement.server_name);
  body.append(parse.query.substr(execute->offset + execute->length));
  body.append(parse.tail.substr(parse.query.size()));  // from the query's NUL on
  return body;
}

std::optional<Client::SqlText> Client::sql_prepare(Server& server, std::string_view query,
                                                   const proto::sql::Prepare& prepare) {
  SqlText out;
  if (statements_ && statements_->named.contains(prepare.name)) {
    // PostgreSQL refuses the name. The server raises the error, so that its transaction state
    // is PostgreSQL's (a block in progress fails), and the client gets PostgreSQL's words for it.
    out.text =
        "DO $pgring$BEGIN RAISE EXCEPTION USING ERRCODE = '42P05', "
        "MESSAGE = 'prepared statement already exists'; END$pgring$";
    (void)proto::build::error_response_from(
        out.fake, "42P05", fmt::format("prepared statement \"{}\" already exists", prepare.name),
        "prepare.c", "StorePreparedStatement");
    return out;
  }
  const PreparedStatement& statement = reactor_.statements().intern(prepare.rest);
  // Another client prepared it here: it is closed first, so that this PREPARE runs as
  // PostgreSQL would run it (checked against the tables as they are now, its error its own).
  if (server.prepared_.contains(statement.id)) close_statement_on(server, statement);
  server.before_preparing(statement.id);
  out.statement = &statement;
  out.sql = std::make_unique<RequestQueue::Entry::SqlRewrite>();
  RequestQueue::Entry::SqlRewrite& sql = *out.sql;
  sql.prepares = true;
  sql.client_name = prepare.name;
  // The name is the client's from now on (a pipelined EXECUTE finds it); a failure forgets it.
  statements().named.emplace(prepare.name, NamedStatement{&statement, 0, true, nullptr});
  server.prepared_.add(statement.id);
  ++reactor_.statements().counters.parses_sent;
  evict_statements(server, statement.id);
  std::string_view before = query.substr(0, prepare.offset);
  std::string_view name = query.substr(prepare.offset, prepare.length);
  sql.rename = {.client_name = sql.client_name,
                .server_name = statement.server_name,
                .prefix_chars = 0,
                .name_at = characters(before),
                .client_chars = characters(name),
                .server_chars = statement.server_name.size()};
  out.text.append(before).append(statement.server_name);
  out.text.append(query.substr(prepare.offset + prepare.length));
  return out;
}

}  // namespace pgring
