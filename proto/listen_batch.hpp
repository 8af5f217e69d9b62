#pragma once
// A LISTEN or UNLISTEN sent through the extended protocol (asyncpg's add_listener, JDBC,
// psycopg 3): the batch of messages that prepares, binds and runs it, read whole so pgring can
// answer it in PostgreSQL's place (listen: shared; docs/transaction-pooling.md). Pure: no I/O.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "proto/sql.hpp"

namespace pgring::proto {

// The batches read: at most this many bytes (a LISTEN's are a few dozen).
inline constexpr std::size_t kMaxListenBatch = 4096;

// One batch, up to and including its Sync or Flush. Every message in it is about one statement
// (`statement`): at most one Parse (first, of a LISTEN/UNLISTEN text with no parameter types),
// Describes of that statement, at most one Bind of it (no parameters) to `portal`, Describes of
// that portal, and at most one Execute of it, which only the Sync may follow (a Flush may end a
// batch that binds nothing).
struct ListenBatch {
  std::size_t length = 0;  // bytes, its last message included
  bool sync = false;       // it ends with Sync (else with Flush)
  std::string_view statement;
  // Its Parse, when it has one: the text's command and the Parse after the name (the statement
  // cache's key).
  std::optional<sql::Listen> parsed;
  std::string_view parse_tail;
  std::string_view portal;
  bool executes = false;
  // The replies owed, in order, one letter per message before the Sync: '1' ParseComplete,
  // 't' ParameterDescription and NoData (Describe of the statement), 'n' NoData (of the portal),
  // '2' BindComplete, 'C' the Execute's.
  std::string replies;
};

enum class ListenBatchStatus {
  no,          // not such a batch: its messages go to a server as usual
  incomplete,  // a beginning of one: more bytes decide
  yes,
};

// Reads `bytes` (the front of a client's input) as a ListenBatch. A Parse is taken only when
// its text is a lone LISTEN/UNLISTEN; a batch without one names its statement in its first
// message, and the caller checks that it is such a statement.
[[nodiscard]] ListenBatchStatus read_listen_batch(std::string_view bytes, ListenBatch& batch);

}  // namespace pgring::proto
