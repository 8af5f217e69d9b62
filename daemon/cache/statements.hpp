#pragma once
// The statement cache (docs/transaction-pooling.md): prepared statements that survive transaction
// pooling. Drivers prepare named statements and expect them on "their" session; pgring keeps
//   - one registry per reactor: statement text + parameter types -> PreparedStatement (an id and
//     the server-side name "pgring_<id>", so the same query prepared by many clients is prepared
//     once per server connection),
//   - per client: the client's own names -> registry entries,
//   - per server connection: the ids prepared there, an LRU bounded by prepared_statements.
// Server-side names are pgring's own: a client's names never reach a server, so they cannot
// collide. (Names starting with "pgring_" are reserved for this.)

#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace pgring {

struct PreparedStatement {
  std::uint64_t id = 0;
  std::string server_name;  // "pgring_<id>"
  // The Parse body after the statement name: query String, Int16 n, Int32[n] parameter types.
  // It is also the registry key: the same text with other types is another statement.
  // An SQL-level statement (`PREPARE name (types) AS ...`, which names its types where a Parse
  // gives OIDs) has instead the text after the name; having no NUL, it never equals a Parse's.
  std::string parse_tail;
  bool sql = false;  // prepared with `PREPARE <server_name> <parse_tail>`, never with a Parse
  // Its text is a lone LISTEN or UNLISTEN: running it changes the session's subscriptions.
  bool listen = false;
  [[nodiscard]] std::string_view query() const { return std::string_view(parse_tail.c_str()); }
  // Its query family (proto/fingerprint.hpp), computed at its first Bind when stats are on.
  mutable std::uint64_t fingerprint = 0;
};

// A statement's result shape as a Describe reported it: a hash of the RowDescription body (or
// of "n" for NoData). 0 means unknown. PostgreSQL fixes a prepared statement's result type when
// it is prepared; after DDL the same text prepared elsewhere can have another shape, and a client
// must then get the error PostgreSQL would give, not rows it cannot decode.
using Shape = std::uint64_t;
Shape shape_of(std::string_view row_description_or_n);

struct StatementCounters {
  std::uint64_t hits = 0;         // a client's Parse answered by pgring (already prepared there)
  std::uint64_t parses_sent = 0;  // a client's Parse sent on (renamed)
  std::uint64_t injected = 0;     // Parses pgring sent before a Bind/Describe that needed one
  std::uint64_t evictions = 0;    // Closes sent to keep a server within prepared_statements
  std::uint64_t retries = 0;      // requests re-run after "cached plan must not change result type"
};

class StatementRegistry {
 public:
  // The entry for this Parse tail, created on first sight. Entries live as long as the reactor
  // (clients and servers hold plain pointers to them).
  const PreparedStatement& intern(std::string_view parse_tail);
  // The statement's plan went stale on the servers (DDL changed its result type): the next
  // Parse of the same text gets a new entry and a new server-side name, so every server
  // prepares it afresh. Clients still naming the old entry keep a valid pointer.
  void retire(const PreparedStatement& statement);
  // A type was dropped, created or renamed: every statement is retired, so each text is
  // prepared afresh (its parameter types looked up again) on its next Parse, as a new
  // PostgreSQL session would. Statements clients already hold keep their server copies: a
  // session's own prepared statement fails after its type is dropped in PostgreSQL too.
  void retire_all();
  [[nodiscard]] std::size_t size() const { return by_tail_.size(); }
  [[nodiscard]] const std::unordered_map<std::string, std::unique_ptr<PreparedStatement>>& entries()
      const {
    return by_tail_;
  }
  StatementCounters counters;

 private:
  std::unordered_map<std::string, std::unique_ptr<PreparedStatement>> by_tail_;
  std::vector<std::unique_ptr<PreparedStatement>> retired_;
  std::uint64_t last_id_ = 0;
};

// The statements prepared on one server connection, least recently used first.
// Each statement's shape on this connection is kept once a Describe of it has been answered here.
class PreparedSet {
 public:
  [[nodiscard]] bool contains(std::uint64_t id) const { return index_.count(id) != 0; }
  void touch(std::uint64_t id);
  void add(std::uint64_t id);
  [[nodiscard]] Shape shape(std::uint64_t id) const;
  void set_shape(std::uint64_t id, Shape shape);
  void remove(std::uint64_t id);
  void clear();
  [[nodiscard]] std::size_t size() const { return index_.size(); }
  // The least recently used id other than `keep`, when over `limit`.
  [[nodiscard]] std::optional<std::uint64_t> victim(std::size_t limit, std::uint64_t keep) const;

 private:
  struct Slot {
    std::list<std::uint64_t>::iterator position;
    Shape shape = 0;
  };
  std::list<std::uint64_t> order_;
  std::unordered_map<std::uint64_t, Slot> index_;
};

}  // namespace pgring
