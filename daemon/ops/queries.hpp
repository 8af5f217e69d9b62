#pragma once
// Statistics per query family (proto/fingerprint.hpp) and pool, kept by each reactor in plain
// fields and merged by SHOW QUERIES and /metrics. A request gets its family when it is queued (a
// Query's text; an extended batch's Parse text, or the statement its Bind names); its
// ReadyForQuery adds what the server answered (Answer) and, for the first request of a link,
// the time its client waited for the server. Bounded by stats.fingerprints families per
// reactor, the least costly of them giving way to new ones (counted on in their pool's one
// "(other)" row), so the families that keep the most time keep their rows.

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"
#include "daemon/pool/stats.hpp"

namespace pgring {

class Pool;

// One family of one pool: a row of SHOW QUERIES, a series of the pgring_query_family_*
// metrics. Calls and time in PostgreSQL are the histogram's count and sum.
struct QueryFamily {
  // The id of a pool's "(other)" row (a fingerprint is never 1 by chance: FNV-1a).
  static constexpr std::uint64_t kOther = 1;
  [[nodiscard]] bool other() const { return id == kOther; }
  std::uint64_t id = 0;
  std::uint64_t pool = 0;  // the pool's stats key (Pool::stats_key_)
  std::string database;
  std::string user;
  std::string text;           // the normal text (at most 1 KiB, valid UTF-8), or "(other: ...)"
  Histogram server;           // first byte sent .. ReadyForQuery, per call
  std::uint64_t wait_us = 0;  // clients waiting for a server before this family's calls
  std::uint64_t rows = 0;     // as CommandComplete counts them (SELECT n, UPDATE n, ...)
  std::uint64_t bytes = 0;    // of the server's answers (everything up to ReadyForQuery)
  std::map<std::string, std::uint64_t> errors;  // ErrorResponses by SQLSTATE class

  [[nodiscard]] std::uint64_t error_count() const;
  void add(const QueryFamily& other);
};

// What the server answered to the request being counted, gathered until its ReadyForQuery.
struct Answer {
  std::uint64_t rows = 0;
  std::uint64_t bytes = 0;
  char error_class[2] = {0, 0};  // the first error's SQLSTATE class (zeros: none)
  std::chrono::steady_clock::duration server{};
  std::chrono::steady_clock::duration wait{};
};

class QueryStats {
 public:
  // stats.fingerprints (0 turns the families off) and log.slow_query (which needs them: with
  // stats.fingerprints 0 it keeps kSlowLogFamilies).
  void configure(const config::Config& config);
  [[nodiscard]] bool on() const { return limit_ > 0; }
  [[nodiscard]] std::chrono::steady_clock::duration slow_query() const { return slow_query_; }
  // The family of `text` in `pool`, made on first sight; `known`: its fingerprint when the
  // caller has it (a prepared statement's), else 0. Returns the id to record with (the
  // fingerprint even when its family is counted in "(other)").
  std::uint64_t family(const Pool& pool, std::string_view text, std::uint64_t* known = nullptr);
  void record(const Pool& pool, std::uint64_t id, const Answer& answer);
  // The family's normal text, or why it is not kept.
  [[nodiscard]] std::string_view text(const Pool& pool, std::uint64_t id) const;
  [[nodiscard]] std::vector<QueryFamily> families() const;
  [[nodiscard]] std::size_t size() const { return families_.size(); }

  static constexpr int kSlowLogFamilies = 1000;

 private:
  static constexpr std::uint64_t kOther = QueryFamily::kOther;
  static std::uint64_t key(std::uint64_t pool_key, std::uint64_t id);
  static std::uint64_t key(const Pool& pool, std::uint64_t id);
  // Full: the least costly families make room for a new one (their counts go to "(other)").
  void make_room();
  std::unordered_map<std::uint64_t, QueryFamily> families_;
  std::string scratch_;  // the normal text, reused
  int limit_ = 0;
  std::chrono::steady_clock::duration slow_query_{};
};

// At most `max` bytes of `text`, cut before a UTF-8 sequence rather than through it (a label
// value, a text column: a client decoding UTF-8 must not choke on half a character).
[[nodiscard]] std::string_view utf8_prefix(std::string_view text, std::size_t max);

// `text` with every byte that is not part of a valid UTF-8 sequence replaced by '?': a family's
// text reaches Prometheus labels, JSON logs and UTF-8 clients, whatever the client's encoding
// (a LATIN1 client's "größe" is "gr??e" there).
void make_valid_utf8(std::string& text);

// Every reactor's families made one (the same pool and id added up).
[[nodiscard]] std::vector<QueryFamily> merge_families(std::vector<std::vector<QueryFamily>> parts);

}  // namespace pgring
