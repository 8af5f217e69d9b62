#pragma once
// Statistics per query family (proto/fingerprint.hpp) and pool, kept by each reactor in plain
// fields and merged by SHOW QUERIES. A request gets its family when it is queued (a Query's
// text; an extended batch's Parse text, or the statement its Bind names); its ReadyForQuery
// adds the time in PostgreSQL (first byte sent .. ReadyForQuery) and, for the first request of
// a link, the time its client waited for the server. Bounded by stats.fingerprints families
// per reactor; past that, a pool's new families are counted in its one "(other)" row.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace pgring {

class Pool;
using Rows = std::vector<std::vector<std::string>>;

class QueryStats {
 public:
  // stats.fingerprints: 0 turns the statistics off.
  void set_limit(int limit) { limit_ = limit; }
  [[nodiscard]] bool on() const { return limit_ > 0; }
  // The family of `text` in `pool`, made on first sight; `known`: its fingerprint when the
  // caller has it (a prepared statement's), else 0. Returns the id to record with.
  std::uint64_t family(const Pool& pool, std::string_view text, std::uint64_t* known = nullptr);
  void record(const Pool& pool, std::uint64_t id, std::chrono::steady_clock::duration server,
              std::chrono::steady_clock::duration wait);
  // This reactor's rows: id, database, user, calls, server_us, wait_us, query.
  [[nodiscard]] Rows rows() const;
  [[nodiscard]] std::size_t size() const { return families_.size(); }

 private:
  struct Family {
    std::uint64_t id = 0;
    std::string database;
    std::string user;
    std::string text;
    std::uint64_t calls = 0;
    std::uint64_t server_us = 0;
    std::uint64_t wait_us = 0;
  };
  static constexpr std::uint64_t kOther = 1;  // (a fingerprint is never 1 by chance: FNV-1a)
  static std::uint64_t key(const Pool& pool, std::uint64_t id);
  std::unordered_map<std::uint64_t, Family> families_;
  std::string scratch_;  // the normal text, reused
  int limit_ = 0;
};

}  // namespace pgring
