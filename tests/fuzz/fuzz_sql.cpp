// libFuzzer target: the SQL text heuristics (SET parsing, session-state scan, the database a
// DROP/ALTER/CREATE DATABASE needs, quoting).

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "proto/sql.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto set = pgring::proto::sql::parse_set_statement(text)) {
    if (set->value.size() > text.size()) __builtin_trap();
  }
  (void)pgring::proto::sql::scan_session_state(text);
  (void)pgring::proto::sql::scan_session_release(text);
  if (auto db = pgring::proto::sql::database_needed_alone(text)) {
    if (db->size() > text.size()) __builtin_trap();  // a name is a piece of the text
  }
  (void)pgring::proto::sql::quote_literal(text);
  (void)pgring::proto::sql::quote_identifier(text);
  return 0;
}
