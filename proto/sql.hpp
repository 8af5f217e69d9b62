#pragma once
// Lexical looks at SQL text, for the few things a transaction pooler must know about a query
// without a parser: is it a single SET/RESET it can replay on another connection, and does it
// create session state that cannot follow a client from one server connection to the next.
// These are heuristics on text; docs/transaction-pooling.md lists what they catch and miss.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pgring::proto::sql {

// The words the checks below start from, as bits: which of them a query mentions at all (as
// whole words, in any case, anywhere: inside a literal or a comment too, which only costs a
// tokenize that then finds nothing). Almost every query a pooler sees (SELECT ... WHERE id = $1)
// mentions none, and one pass over its text, with no allocation, settles every check: the
// per-query path calls mentions() once and hands the bits to each of them.
enum Mention : std::uint8_t {
  kMentionsSet = 1 << 0,         // SET
  kMentionsReset = 1 << 1,       // RESET
  kMentionsDeallocate = 1 << 2,  // DEALLOCATE
  // TEMP, TEMPORARY, HOLD, LISTEN, PREPARE, SET_CONFIG and the session advisory lock functions
  kMentionsSessionWord = 1 << 3,
  kMentionsNotify = 1 << 4,   // NOTIFY, PG_NOTIFY
  kMentionsExecute = 1 << 5,  // EXECUTE
};
[[nodiscard]] std::uint8_t mentions(std::string_view query);

// A query that is exactly one `SET [SESSION] name {TO|=} value` or `RESET name` / `RESET ALL`
// (an optional trailing semicolon and whitespace/comments allowed). `mentioned`: mentions(query).
struct SetStatement {
  enum class Kind { set, reset, reset_all } kind;
  std::string name;   // lower-cased unless quoted; empty for reset_all
  std::string value;  // the value as SQL text, verbatim (for kind set)
};
[[nodiscard]] std::optional<SetStatement> parse_set_statement(std::string_view query,
                                                              std::uint8_t mentioned);
[[nodiscard]] inline std::optional<SetStatement> parse_set_statement(std::string_view query) {
  return parse_set_statement(query, mentions(query));
}

// A query that is exactly one `DEALLOCATE [PREPARE] name` or `DEALLOCATE [PREPARE] ALL`.
struct Deallocate {
  bool all = false;
  std::string name;        // lower-cased unless quoted
  std::size_t offset = 0;  // of the name's text in the query
  std::size_t length = 0;  // of the name's text (with its quotes)
};
[[nodiscard]] std::optional<Deallocate> parse_deallocate(std::string_view query,
                                                         std::uint8_t mentioned);
[[nodiscard]] inline std::optional<Deallocate> parse_deallocate(std::string_view query) {
  return parse_deallocate(query, mentions(query));
}

// A query that is exactly one `PREPARE name [(type, ...)] AS statement` (an optional trailing
// semicolon). `rest` is what follows the name, up to the end of the statement's last token,
// without leading whitespace: `PREPARE other_name <rest>` prepares the same statement. A name
// longer than PostgreSQL's 63 bytes (which PostgreSQL would truncate) is not recognised.
struct Prepare {
  std::string name;        // lower-cased unless quoted
  std::size_t offset = 0;  // of the name's text in the query
  std::size_t length = 0;  // of the name's text (with its quotes)
  std::string_view rest;   // a view into the query
};
[[nodiscard]] std::optional<Prepare> parse_prepare(std::string_view query, std::uint8_t mentioned);
[[nodiscard]] inline std::optional<Prepare> parse_prepare(std::string_view query) {
  return parse_prepare(query, mentions(query));
}

// A query that is one statement running a prepared statement by name: `EXECUTE name [(args)]`,
// `EXPLAIN [ANALYZE] [VERBOSE] [(options)] EXECUTE name ...` or `CREATE ... TABLE ... AS EXECUTE
// name ...` (an optional trailing semicolon). Where the name stands in the query, to put another
// in its place.
struct Execute {
  std::string name;        // lower-cased unless quoted
  std::size_t offset = 0;  // of the name's text in the query
  std::size_t length = 0;  // of the name's text (with its quotes)
};
[[nodiscard]] std::optional<Execute> find_execute(std::string_view query, std::uint8_t mentioned);
[[nodiscard]] inline std::optional<Execute> find_execute(std::string_view query) {
  return find_execute(query, mentions(query));
}

// A query that is exactly one `LISTEN channel`, `UNLISTEN channel` or `UNLISTEN *` (an optional
// trailing semicolon; no comment before it). The channel is lower-cased unless quoted; a name
// longer than PostgreSQL's 63 bytes (which PostgreSQL would truncate) is not recognised.
struct Listen {
  enum class Kind { listen, unlisten, unlisten_all } kind;
  std::string channel;  // empty for unlisten_all
};
[[nodiscard]] std::optional<Listen> parse_listen(std::string_view query);

// The database a query needs no other session connected to: `DROP DATABASE [IF EXISTS] name`,
// `ALTER DATABASE name RENAME TO ...`, `CREATE DATABASE ... TEMPLATE [=] name`. Only a query
// that starts with the command (no comment before it) is recognised; names are lower-cased
// unless quoted.
[[nodiscard]] std::optional<std::string> database_needed_alone(std::string_view query);

// Session state a query may create, detected from keywords outside string literals, quoted
// identifiers and comments.
enum SessionState : std::uint8_t {
  kNone = 0,
  kTemporaryObject = 1 << 0,  // CREATE TEMP/TEMPORARY ..., SELECT ... INTO TEMP ...
  kHoldCursor = 1 << 1,       // DECLARE ... WITH HOLD
  kAdvisoryLock = 1 << 2,     // pg_advisory_lock / pg_try_advisory_lock (session level)
  kListen = 1 << 3,           // LISTEN
  kSqlPrepare = 1 << 4,       // PREPARE name AS ...
  kRoleChange = 1 << 5,       // SET ROLE / SET SESSION AUTHORIZATION
  kUntrackedSet = 1 << 6,     // a session SET pgring cannot replay (not a lone SET statement), or
                           // set_config(name, value, false) of a setting the server does not report
};
[[nodiscard]] std::uint8_t scan_session_state(std::string_view query, std::uint8_t mentioned);
[[nodiscard]] inline std::uint8_t scan_session_state(std::string_view query) {
  return scan_session_state(query, mentions(query));
}
// Session state a query that is exactly one statement ends, when it succeeds: `UNLISTEN *`
// (kListen), `DISCARD TEMP|TEMPORARY` (kTemporaryObject), `CLOSE ALL` (kHoldCursor),
// `DEALLOCATE [PREPARE] ALL` (kSqlPrepare), `SELECT pg_advisory_unlock_all()` (kAdvisoryLock),
// `DISCARD ALL` (all of them: it resets settings and the role too).
[[nodiscard]] std::uint8_t scan_session_release(std::string_view query);
[[nodiscard]] std::string describe_session_state(std::uint8_t flags);

// SQL literal for any string, valid whatever standard_conforming_strings says.
[[nodiscard]] std::string quote_literal(std::string_view value);
// A channel name for LISTEN/UNLISTEN: always double-quoted (a keyword or a dot stays part of it).
[[nodiscard]] std::string quote_channel(std::string_view name);
// Identifier quoted only when needed.
[[nodiscard]] std::string quote_identifier(std::string_view name);

}  // namespace pgring::proto::sql
