// libFuzzer target: the request queue (daemon/conn/request_queue) against a model of
// PostgreSQL's replies. The input is a script: each byte is a frontend message a client
// pipelines (Query, Parse, Bind, Describe, Execute, Close, Sync, Flush, FunctionCall, COPY with
// a Sync inside it, replies pgring owes) or a fault (this request fails). The model answers as
// PostgreSQL does (an extended-protocol error skips to Sync; an error ends COPY; a Sync inside
// COPY is ignored) and the queue is driven exactly as Server drives it. Invariants:
//   - every reply finds the request it answers at the head (never a reply to the wrong one);
//   - owed replies go out in the client's order, each exactly once;
//   - when the script ends with a Sync and every reply is in, the queue is idle;
//   - a skipped Parse is reported as skipped (it prepared nothing).

#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

#include "daemon/cache/statements.hpp"
#include "daemon/conn/request_queue.hpp"

using pgring::PreparedStatement;
using pgring::Request;
using pgring::RequestQueue;

namespace {

void require(bool condition) {
  if (!condition) __builtin_trap();
}

// One message the client sent, as the model server will see it.
struct Sent {
  Request kind;
  bool fails = false;  // the server answers it with an ErrorResponse
  int owed_id = -1;    // owed replies: their order
  bool copy = false;   // a Query that starts COPY FROM STDIN
};

struct Model {
  RequestQueue q;
  PreparedStatement statement;
  std::deque<Sent> to_server;  // sent, not yet processed by the server
  std::vector<int> owed_sent;  // owed replies the client got, in order
  int next_owed = 0;
  int skipped_parses_reported = 0;
  int skipped_parses_expected = 0;
  bool skipping = false;  // the server skips to Sync after an extended-protocol error
  bool in_copy = false;

  void flush_owed() {
    q.take_owed(
        [&](const RequestQueue::Entry& e) { owed_sent.push_back(static_cast<int>(e.batch_seq)); });
  }
  void note_skipped(const RequestQueue::Entry& e) {
    if (e.kind == Request::parse && e.statement == &statement) ++skipped_parses_reported;
  }

  // The server processes the oldest message it has.
  void serve_one() {
    Sent m = to_server.front();
    to_server.pop_front();
    if (pgring::is_owed(m.kind)) return;  // never reached the server
    if (in_copy) {
      if (m.kind == Request::sync) return;  // ignored inside COPY
      if (m.kind == Request::copy_end) {
        in_copy = false;
        if (m.fails) {
          q.on_error([&](const RequestQueue::Entry& e) { note_skipped(e); });
        } else {
          (void)q.on_command_complete();
        }
        // The COPY's Query is answered by ReadyForQuery.
        require(q.head_is(Request::query));
        q.pop_until_ready([&](const RequestQueue::Entry& e) { note_skipped(e); });
      }
      flush_owed();
      return;
    }
    if (skipping && m.kind != Request::sync) {
      if (m.kind == Request::parse) ++skipped_parses_expected;
      return;
    }
    switch (m.kind) {
      case Request::query:
      case Request::function_call:
        require(q.head_is(m.kind));
        if (m.copy) {
          q.copy_in_ = true;  // CopyInResponse; the client's CopyData and CopyDone follow
          in_copy = true;
          return;
        }
        if (m.fails) {
          q.on_error([&](const RequestQueue::Entry& e) { note_skipped(e); });
        } else {
          (void)q.on_command_complete();
        }
        q.pop_until_ready([&](const RequestQueue::Entry& e) { note_skipped(e); });
        break;
      case Request::sync: {
        // Requests the client sent after the error was seen are still queued: the server
        // skipped them, and this ReadyForQuery answers them all, up to this Sync.
        skipping = false;
        Request last = Request::query;
        q.pop_until_ready([&](const RequestQueue::Entry& e) {
          note_skipped(e);
          last = e.kind;
        });
        require(last == Request::sync);
        break;
      }
      case Request::parse:
      case Request::bind:
      case Request::close:
      case Request::describe:
      case Request::execute:
        require(q.head_is(m.kind));
        if (m.fails) {
          skipping = true;
          // The failed request itself is dropped with those the server will skip.
          if (m.kind == Request::parse) --skipped_parses_reported;
          q.on_error([&](const RequestQueue::Entry& e) { note_skipped(e); });
        } else if (m.kind == Request::execute) {
          require(q.on_command_complete().execute);
        } else {
          require(!q.pop_reply(m.kind));  // the client's own request: forwarded, not swallowed
        }
        break;
      default:
        break;
    }
    flush_owed();
  }

  void send(Sent m) {
    RequestQueue::Entry& e = q.push(m.kind);
    if (m.kind == Request::parse) e.statement = &statement;
    if (pgring::is_owed(m.kind)) {
      m.owed_id = next_owed++;
      e.batch_seq = static_cast<std::uint64_t>(m.owed_id);
    }
    to_server.push_back(m);
    flush_owed();  // the client path flushes owed replies with nothing before them
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Model model;
  bool copying = false;   // the client is inside a COPY it started: only Sync and CopyDone/Fail
  bool unsynced = false;  // extended-protocol messages since the last Sync
  auto send = [&](Request kind, bool fails = false) {
    // A well-behaved client ends its extended batch with a Sync before a simple Query.
    // (A Query sent while PostgreSQL skips to Sync after an error would be skipped too, and
    // the queue would take the next ReadyForQuery for it: see the note in request_queue.hpp.)
    if (unsynced && (kind == Request::query || kind == Request::function_call)) {
      model.send({Request::sync});
      unsynced = false;
    }
    if (pgring::is_extended(kind)) unsynced = true;
    if (kind == Request::sync) unsynced = false;
    model.send({kind, fails});
  };
  for (std::size_t i = 0; i < size; ++i) {
    std::uint8_t b = data[i];
    bool fails = (b & 0x80) != 0;
    int op = b & 0x0f;
    if (copying && op != 10 && op != 11 && op < 12) continue;
    switch (op) {
      case 0:
        send(Request::query, fails);
        break;
      case 1:
        send(Request::parse, fails);
        break;
      case 2:
        send(Request::bind, fails);
        break;
      case 3:
        send(Request::describe, fails);
        break;
      case 4:
        send(Request::execute, fails);
        break;
      case 5:
        send(Request::close, fails);
        break;
      case 6:
        send(Request::sync);
        break;
      case 7:
        send(Request::owed_parse_complete);
        break;
      case 8:
        send(Request::owed_close_complete);
        break;
      case 9:
        send(Request::function_call, fails);
        break;
      case 10:
        if (!copying) {
          send(Request::query);
          model.to_server.back().copy = true;
          copying = true;
        } else {
          model.send({Request::sync});  // a Sync sent inside COPY: ignored by the server
        }
        break;
      case 11:
        if (copying) {
          model.send({Request::copy_end, fails});  // CopyDone, or CopyFail
          copying = false;
        }
        break;
      default:
        // The server catches up on what was sent so far (replies interleave with sends).
        for (int n = (b >> 4) & 0x7; n >= 0 && !model.to_server.empty(); --n) model.serve_one();
        break;
    }
  }
  if (copying) model.send({Request::copy_end});
  model.send({Request::sync});
  while (!model.to_server.empty()) model.serve_one();
  model.flush_owed();
  require(model.q.empty());
  require(!model.q.copy_in_);
  // Owed replies were sent in order, each once, unless an error dropped them unsent.
  for (std::size_t k = 1; k < model.owed_sent.size(); ++k)
    require(model.owed_sent[k - 1] < model.owed_sent[k]);
  require(model.skipped_parses_reported >= model.skipped_parses_expected);
  return 0;
}
