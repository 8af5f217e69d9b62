#pragma once
// The request queue of a linked server: what its client sent that PostgreSQL has not answered
// yet, in order (PgBouncer's outstanding requests, PgDog's protocol state), plus the replies
// pgring owes the client at a place in that stream. A link may be released only when the queue
// is idle: nothing in flight, no extended-protocol message waiting for its Sync, no COPY.
//
//   client sends Query, Sync, FunctionCall, Execute, Parse, Bind, Close, Describe -> push (tail)
//   server answers the head                     -> pop_reply, on_command_complete, pop_until_ready
//   an extended-protocol error                  -> on_error: skip to the next Sync, as PostgreSQL
//   COPY FROM STDIN ends                        -> end_copy: the Syncs sent during it were ignored
//   replies pgring owes reach the head          -> take_owed (ParseComplete, CloseComplete, ...)
//
// It knows nothing of sockets or the reactor: Server drives it, the unit tests and fuzz_requests
// drive it with scripts.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/cache/statements.hpp"
#include "proto/builders.hpp"
#include "proto/sql.hpp"

namespace pgring {

using Clock = std::chrono::steady_clock;

enum class Request : std::uint8_t {
  // Sent to the server; answered there.
  query,          // Query: ReadyForQuery ends it
  sync,           // Sync: ReadyForQuery
  function_call,  // FunctionCall: ReadyForQuery
  execute,        // Execute: CommandComplete, EmptyQueryResponse, PortalSuspended or an error
  parse,          // Parse: ParseComplete
  bind,           // Bind: BindComplete
  close,          // Close: CloseComplete
  describe,       // Describe: RowDescription or NoData (after ParameterDescription for 'S')
  copy_end,       // CopyDone or CopyFail during COPY FROM STDIN
  // Owed to the client at this place in the stream; nothing was sent to the server for them.
  owed_parse_complete,  // a Parse the statement cache answered itself
  owed_close_complete,  // a Close of a client's statement name
  owed_error,           // an ErrorResponse pgring raised (Entry::fake holds it)
  owed_deallocate,      // DEALLOCATE answered by pgring: CommandComplete + ReadyForQuery
};
[[nodiscard]] std::string_view to_string(Request kind);
[[nodiscard]] bool is_owed(Request kind);
// Parse, Bind, Describe, Close, Execute: after an error in one, PostgreSQL skips to Sync.
[[nodiscard]] bool is_extended(Request kind);
// Answered by ReadyForQuery: the end of a request cycle.
[[nodiscard]] bool ends_cycle(Request kind);
// The request a frontend message type makes (Flush, CopyData and others make none).
[[nodiscard]] std::optional<Request> request_for(char frontend_type);

class RequestQueue {
 public:
  struct Entry {
    Request kind = Request::query;
    bool skip = false;  // pgring injected it (a Parse before a Bind, an eviction Close): swallow
    // Sent while PostgreSQL skips to the next Sync after an extended-protocol error: it gets no
    // reply (not even a Query's ReadyForQuery), and a reply owed for it is never sent.
    bool server_skips = false;
    std::uint8_t session_state = 0;    // proto::sql::SessionState of a Query's text
    std::uint8_t session_release = 0;  // the state it ends when it succeeds (scan_session_release)
    std::unique_ptr<proto::sql::SetStatement> set;  // a Query/Execute that is one replayable SET
    // parse (and execute, skip: an SQL PREPARE of pgring's): prepared by it; describe: described;
    // query: the SQL-level statement it prepares or executes
    const PreparedStatement* statement = nullptr;
    std::string client_name;      // parse: the client's own name for `statement` (statement cache)
    bool shape_check = false;     // parse, describe injected to compare a result shape
    std::string fake;             // owed_error: the ErrorResponse; execute: the error it provokes
    std::uint64_t batch_seq = 0;  // bind, describe, sync: which extended batch (for a retry)
    std::size_t replay_offset = 0;  // bind, describe: where it starts in the client's batch copy
    std::uint64_t fingerprint = 0;  // query, sync: its query family (QueryStats), 0: none
    std::uint64_t closes = 0;       // close (skip): the id of pgring's statement it closes
    // query: pgring sent its own text for the client's PREPARE / EXECUTE (statement_cache.cpp).
    struct SqlRewrite {
      bool prepares = false;     // the client's PREPARE: its name is forgotten if it fails
      bool deallocates = false;  // the client's DEALLOCATE: its name is forgotten if it succeeds
      // A PREPARE of pgring's own runs first: its CommandComplete is swallowed, its failure
      // means the server does not have the statement.
      std::uint8_t hidden_completes = 0;
      std::string client_name;
      proto::build::QueryRename rename;  // the server's errors put back in the client's terms
    };
    std::unique_ptr<SqlRewrite> sql;
  };

  // Appends a request sent (or owed) at `now`. A request into an empty queue starts the busy
  // clock (busy_since: the query timeout and the query histogram count from there).
  Entry& push(Request kind, Clock::time_point now = {});
  // ReadyForQuery answered the head cycle while more was pipelined: the next one runs from now.
  void restart_busy(Clock::time_point now) {
    if (!empty()) busy_since_ = now;
  }
  [[nodiscard]] Clock::time_point busy_since() const { return busy_since_; }

  [[nodiscard]] bool empty() const { return head_ == entries_.size(); }
  [[nodiscard]] std::size_t in_flight() const { return entries_.size() - head_; }
  // Nothing unanswered, nothing half-sent, no COPY: the link may end (with status 'I').
  [[nodiscard]] bool idle() const { return empty() && !unsynced_ && !copy_in_; }
  [[nodiscard]] Entry* head() { return empty() ? nullptr : &entries_[head_]; }
  [[nodiscard]] const Entry* head() const { return empty() ? nullptr : &entries_[head_]; }
  [[nodiscard]] bool head_is(Request kind) const {
    return !empty() && entries_[head_].kind == kind;
  }
  [[nodiscard]] Entry& back() { return entries_.back(); }
  // The unanswered entries, head first.
  [[nodiscard]] std::size_t size() const { return in_flight(); }
  [[nodiscard]] Entry& at(std::size_t i) { return entries_[head_ + i]; }

  // A reply to a request of `kind` arrived. Pops the head when it is that request and returns
  // whether the reply is to be swallowed (the request was pgring's own); false otherwise.
  bool pop_reply(Request kind);
  // ReadyForQuery: pops up to and including the first query, sync or function call. Requests
  // before it that got no reply of their own were skipped by the server after an error; each
  // popped entry is passed to `on_skipped` (a skipped Parse prepared nothing).
  template <typename F>
  void pop_until_ready(F&& on_skipped);
  // An extended-protocol request at the head failed: PostgreSQL skips every message up to the
  // next Sync, so the entries before it will never be answered (owed replies among them are
  // dropped too). Each dropped entry is passed to `on_skipped`. When that Sync has not been
  // sent yet, what is pushed until it comes is marked `server_skips`.
  template <typename F>
  void skip_to_sync(F&& on_skipped);
  // ErrorResponse: an extended-protocol request at the head failed, so the server skips to the
  // next Sync (skip_to_sync); an error also ends COPY FROM STDIN (end_copy). Each entry dropped
  // unanswered is passed to `on_skipped`.
  template <typename F>
  void on_error(F&& on_skipped);
  // CommandComplete, EmptyQueryResponse or PortalSuspended: an Execute at the head is done
  // (popped); a Query at the head goes on until its ReadyForQuery. COPY FROM STDIN is over.
  // Returns the SET the completed command ran, when it was one (moved from an Execute, copied
  // from a Query, which may run more commands), and whether an Execute completed.
  struct Completed {
    bool execute = false;
    std::unique_ptr<proto::sql::SetStatement> set;
    std::uint8_t session_release = 0;  // a Query that ended session state (it succeeded)
  };
  Completed on_command_complete();
  // COPY FROM STDIN is over (CommandComplete or an error): the server ignored every Sync sent
  // during the copy and the CopyDone/CopyFail that ended it is answered by the same message.
  void end_copy();
  // Takes the owed replies at the head, in order, passing each to `emit`.
  template <typename F>
  void take_owed(F&& emit);
  // Drops the entries from the head up to (not including) the last one: the batch a retry
  // replaces; the last entry (its Sync) stays.
  void drop_all_but_last();
  // Removes the last entry (a Describe pgring re-sends after its own Sync).
  void pop_back() { entries_.pop_back(); }

  // Extended-protocol messages were sent after the last Sync (Flush does not count as one).
  bool unsynced_ = false;
  // The server is in COPY FROM STDIN.
  bool copy_in_ = false;

 private:
  std::vector<Entry> entries_;
  std::size_t head_ = 0;
  Clock::time_point busy_since_{};
  bool skipping_to_sync_ = false;  // an error's skip reaches past the last Sync pushed
};

template <typename F>
void RequestQueue::pop_until_ready(F&& on_skipped) {
  while (!empty()) {
    Entry& e = entries_[head_];
    Request kind = e.kind;
    bool answered = !e.server_skips;
    on_skipped(e);
    e.set.reset();
    ++head_;
    if (ends_cycle(kind) && answered) break;
  }
}

template <typename F>
void RequestQueue::skip_to_sync(F&& on_skipped) {
  std::size_t end = head_;
  while (end < entries_.size() && entries_[end].kind != Request::sync) on_skipped(entries_[end++]);
  if (end == entries_.size()) skipping_to_sync_ = true;
  entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(head_),
                 entries_.begin() + static_cast<std::ptrdiff_t>(end));
}

template <typename F>
void RequestQueue::on_error(F&& on_skipped) {
  if (!empty() && is_extended(entries_[head_].kind)) skip_to_sync(on_skipped);
  if (copy_in_) end_copy();
}

template <typename F>
void RequestQueue::take_owed(F&& emit) {
  while (!empty() && is_owed(entries_[head_].kind)) {
    if (!entries_[head_].server_skips) emit(entries_[head_]);
    ++head_;
  }
}

}  // namespace pgring
