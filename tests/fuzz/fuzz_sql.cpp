// libFuzzer target: the SQL text heuristics (SET parsing, session-state scan, DEALLOCATE,
// PREPARE and EXECUTE, the one-pass keyword filter in front of them, the database a
// DROP/ALTER/CREATE DATABASE needs, quoting, query fingerprints).

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "proto/fingerprint.hpp"
#include "proto/sql.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace sql = pgring::proto::sql;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto set = sql::parse_set_statement(text)) {
    if (set->value.size() > text.size()) __builtin_trap();
  }
  // mentions() is only a shortcut: with every bit set the checks must answer the same.
  std::uint8_t mentioned = sql::mentions(text);
  if (sql::parse_set_statement(text, mentioned).has_value() !=
      sql::parse_set_statement(text, 0xff).has_value())
    __builtin_trap();
  if (sql::scan_session_state(text, mentioned) != sql::scan_session_state(text, 0xff))
    __builtin_trap();
  if (sql::parse_deallocate(text, mentioned).has_value() !=
      sql::parse_deallocate(text, 0xff).has_value())
    __builtin_trap();
  (void)pgring::proto::sql::scan_session_release(text);
  // A LISTEN pgring takes over is one the session-state scan sees too (else the same text
  // would be shared in one place and not pinned in the other).
  if (auto listen = sql::parse_listen(text)) {
    if (listen->channel.size() > 63) __builtin_trap();
    if (listen->kind == sql::Listen::Kind::listen &&
        (sql::scan_session_state(text, mentioned) & sql::kListen) == 0)
      __builtin_trap();
  }
  // A PREPARE pgring rewrites is one the session-state scan sees (else it would pin in one place
  // and be shared in the other); both views are pieces of the text.
  if (auto prepare = sql::parse_prepare(text, mentioned)) {
    if (prepare->name.empty() || prepare->name.size() > 63) __builtin_trap();
    if (prepare->rest.data() < text.data() ||
        prepare->rest.data() + prepare->rest.size() > text.data() + text.size())
      __builtin_trap();
    if ((sql::scan_session_state(text, mentioned) & sql::kSqlPrepare) == 0) __builtin_trap();
  }
  if (sql::parse_prepare(text, mentioned).has_value() != sql::parse_prepare(text, 0xff).has_value())
    __builtin_trap();
  if (auto execute = sql::find_execute(text, mentioned)) {
    if (execute->offset + execute->length > text.size() || execute->length == 0) __builtin_trap();
  }
  if (sql::find_execute(text, mentioned).has_value() != sql::find_execute(text, 0xff).has_value())
    __builtin_trap();
  if (auto db = pgring::proto::sql::database_needed_alone(text)) {
    if (db->size() > text.size()) __builtin_trap();  // a name is a piece of the text
  }
  // The fingerprint: bounded output (a token of one byte becomes at most a space and "$n"),
  // the same family for the same text.
  std::string normal;
  std::uint64_t family = sql::fingerprint(text, normal);
  if (family == 0 || normal.size() > 8 * text.size() + 8) __builtin_trap();
  std::string again;
  if (sql::fingerprint(text, again) != family || again != normal) __builtin_trap();
  if (sql::fingerprint(text) != family) __builtin_trap();  // hashed without the text: the same
  (void)pgring::proto::sql::quote_literal(text);
  (void)pgring::proto::sql::quote_identifier(text);
  return 0;
}
