#include "proto/listen_batch.hpp"

#include <cstdint>

#include "proto/bytes.hpp"
#include "proto/messages.hpp"

namespace pgring::proto {

namespace {

// A Bind's parameter formats, parameters and result formats (`rest`): true when it binds no
// parameter, as a LISTEN takes none (one format code for all is still allowed, as PostgreSQL
// allows it).
bool binds_nothing(std::string_view rest) {
  Reader r(rest);
  std::int16_t formats = r.i16();
  if (formats < 0 || formats > 1) return false;
  (void)r.bytes(2 * static_cast<std::size_t>(formats));
  if (r.i16() != 0) return false;
  std::int16_t results = r.i16();
  if (results < 0) return false;
  (void)r.bytes(2 * static_cast<std::size_t>(results));
  return r.ok() && r.remaining() == 0;
}

}  // namespace

ListenBatchStatus read_listen_batch(std::string_view bytes, ListenBatch& batch) {
  batch = ListenBatch();
  bool named = false;  // `statement` is set (by the first message)
  bool bound = false;
  std::size_t at = 0;
  for (;;) {
    if (bytes.size() - at < 5)
      return bytes.size() >= kMaxListenBatch ? ListenBatchStatus::no
                                             : ListenBatchStatus::incomplete;
    char type = bytes[at];
    Reader header(bytes.substr(at + 1, 4));
    std::uint32_t length = static_cast<std::uint32_t>(header.i32());
    if (length < 4 || length > kMaxListenBatch) return ListenBatchStatus::no;
    if (bytes.size() - at - 1 < length)
      return bytes.size() >= kMaxListenBatch ? ListenBatchStatus::no
                                             : ListenBatchStatus::incomplete;
    std::string_view body = bytes.substr(at + 5, length - 4);
    at += 1 + length;
    // Only the Sync may follow the Execute: after its error PostgreSQL skips up to the Sync, and
    // past a Flush that skipping would fall on messages pgring has not seen.
    if (batch.executes && type != frontend::kSync) return ListenBatchStatus::no;
    switch (type) {
      case frontend::kParse: {
        if (at != 1 + length) return ListenBatchStatus::no;  // the first message only
        auto parse = parse_parse(body);
        if (!parse) return ListenBatchStatus::no;
        // No parameter types: the Int16 count after the text is 0, and nothing follows.
        std::string_view types = parse->tail.substr(parse->query.size() + 1);
        if (types != std::string_view("\0\0", 2)) return ListenBatchStatus::no;
        batch.parsed = sql::parse_listen(parse->query);
        if (!batch.parsed) return ListenBatchStatus::no;
        batch.statement = parse->name;
        batch.parse_tail = parse->tail;
        named = true;
        batch.replies += '1';
        break;
      }
      case frontend::kDescribe: {
        auto describe = parse_describe(body);
        if (!describe) return ListenBatchStatus::no;
        if (describe->statement()) {
          if (named && describe->name != batch.statement) return ListenBatchStatus::no;
          batch.statement = describe->name;
          named = true;
          batch.replies += 't';
        } else if (describe->kind == 'P' && bound && describe->name == batch.portal) {
          batch.replies += 'n';
        } else {
          return ListenBatchStatus::no;
        }
        break;
      }
      case frontend::kBind: {
        auto bind = parse_bind(body);
        if (!bind || bound || (named && bind->statement != batch.statement) ||
            !binds_nothing(bind->rest))
          return ListenBatchStatus::no;
        batch.statement = bind->statement;
        batch.portal = bind->portal;
        named = bound = true;
        batch.replies += '2';
        break;
      }
      case frontend::kExecute: {
        Reader r(body);
        std::string_view portal = r.cstring();
        (void)r.i32();  // (the row limit: a LISTEN returns no rows)
        if (!r.ok() || r.remaining() != 0 || !bound || portal != batch.portal)
          return ListenBatchStatus::no;
        batch.executes = true;
        batch.replies += 'C';
        break;
      }
      case frontend::kSync:
      case frontend::kFlush:
        // (A portal outlives a Flush, and pgring keeps none: its Execute would find nothing.)
        if (!named || (type == frontend::kFlush && bound)) return ListenBatchStatus::no;
        batch.sync = type == frontend::kSync;
        batch.length = at;
        return ListenBatchStatus::yes;
      default:
        return ListenBatchStatus::no;
    }
  }
}

}  // namespace pgring::proto
