#include "daemon/ops/queries.hpp"

#include <algorithm>
#include <limits>

#include "daemon/core/reactor.hpp"  // (the connection types pool.hpp needs whole)
#include "daemon/pool/pool.hpp"
#include "proto/fingerprint.hpp"
#include "proto/messages.hpp"

namespace pgring {

namespace {
constexpr std::size_t kTextMax = 1024;  // a family's text kept for SHOW QUERIES
constexpr std::string_view kOtherText = "(other: over stats.fingerprints)";
}  // namespace

std::string_view utf8_prefix(std::string_view text, std::size_t max) {
  if (text.size() <= max) return text;
  std::size_t n = max;
  // Back to the first byte of the character at the cut (continuation bytes are 10xxxxxx).
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
  return text.substr(0, n);
}

void make_valid_utf8(std::string& text) {
  auto continuation = [&](std::size_t i) {
    return i < text.size() && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80;
  };
  for (std::size_t i = 0; i < text.size();) {
    auto b = static_cast<unsigned char>(text[i]);
    // The sequence length its first byte announces (1: ASCII; 0: not a first byte), and the
    // range its second byte must be in (no overlong forms, no surrogates, nothing past U+10FFFF).
    std::size_t n = b < 0x80                 ? 1
                    : b >= 0xC2 && b <= 0xDF ? 2
                    : b >= 0xE0 && b <= 0xEF ? 3
                    : b >= 0xF0 && b <= 0xF4 ? 4
                                             : 0;
    bool ok = n != 0;
    if (n > 1) {
      auto second = static_cast<unsigned char>(i + 1 < text.size() ? text[i + 1] : 0);
      unsigned char low = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : 0x80;
      unsigned char high = b == 0xED ? 0x9F : b == 0xF4 ? 0x8F : 0xBF;
      ok = second >= low && second <= high;
      for (std::size_t k = 2; ok && k < n; ++k) ok = continuation(i + k);
    }
    if (!ok) {
      text[i] = '?';
      n = 1;
    }
    i += n;
  }
}

std::uint64_t QueryFamily::error_count() const {
  std::uint64_t n = 0;
  for (const auto& [klass, count] : errors) n += count;
  return n;
}

void QueryFamily::add(const QueryFamily& other) {
  server.add(other.server);
  wait_us += other.wait_us;
  rows += other.rows;
  bytes += other.bytes;
  for (const auto& [klass, count] : other.errors) errors[klass] += count;
}

void QueryStats::configure(const config::Config& config) {
  slow_query_ = config.log_slow_query;
  limit_ = config.stats_fingerprints;
  if (limit_ == 0 && slow_query_.count() > 0) limit_ = kSlowLogFamilies;
}

std::uint64_t QueryStats::key(std::uint64_t pool_key, std::uint64_t id) {
  return id ^ (pool_key * 0x9E3779B97F4A7C15ull);
}

std::uint64_t QueryStats::key(const Pool& pool, std::uint64_t id) {
  return key(pool.stats_key_, id);
}

void QueryStats::make_room() {
  // The twentieth of the families with the least time in PostgreSQL go, their counts added to
  // their pool's "(other)" row (pg_stat_statements evicts its least used the same way): a
  // family that keeps costing time keeps its row, one-off texts come and go, and the sort is
  // paid once per twentieth of the bound.
  // A family whose first call is still running has no time yet: it goes last (a long report
  // query must not lose its row before its first call ends).
  std::vector<std::pair<double, std::uint64_t>> candidates;  // (time, key)
  for (const auto& [k, f] : families_)
    if (f.id != kOther)
      candidates.emplace_back(
          f.server.count == 0 ? std::numeric_limits<double>::infinity() : f.server.sum, k);
  if (candidates.empty()) return;
  std::size_t n = std::max<std::size_t>(1, families_.size() / 20);
  n = std::min(n, candidates.size());
  std::nth_element(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(n - 1),
                   candidates.end());
  for (std::size_t i = 0; i < n; ++i) {
    auto it = families_.find(candidates[i].second);
    QueryFamily gone = std::move(it->second);
    families_.erase(it);
    auto [other, made] = families_.try_emplace(key(gone.pool, kOther));
    if (made) {
      other->second.id = kOther;
      other->second.pool = gone.pool;
      other->second.database = gone.database;
      other->second.user = gone.user;
      other->second.text = kOtherText;
    }
    other->second.add(gone);
  }
}

std::uint64_t QueryStats::family(const Pool& pool, std::string_view text, std::uint64_t* known) {
  // The id alone is hashed as the text is read (nothing built); the text is made only for a
  // family seen for the first time.
  std::uint64_t id = known != nullptr && *known != 0 ? *known : proto::sql::fingerprint(text);
  if (known != nullptr) *known = id;
  if (families_.count(key(pool, id)) != 0) return id;
  if (static_cast<int>(families_.size()) >= limit_) make_room();
  // (Still full: every row is some pool's "(other)", the bound is below the number of pools.)
  bool over = static_cast<int>(families_.size()) >= limit_;
  auto [it, made] = families_.try_emplace(key(pool, over ? kOther : id));
  if (made) {
    QueryFamily& f = it->second;
    f.id = over ? kOther : id;
    f.pool = pool.stats_key_;
    f.database = pool.database_;
    f.user = pool.user_name_;
    if (over) {
      f.text = kOtherText;
    } else {
      (void)proto::sql::fingerprint(text, scratch_);
      make_valid_utf8(scratch_);
      f.text = utf8_prefix(scratch_, kTextMax);
    }
  }
  return id;
}

void QueryStats::record(const Pool& pool, std::uint64_t id, const Answer& answer) {
  auto it = families_.find(key(pool, id));
  if (it == families_.end()) it = families_.find(key(pool, kOther));
  if (it == families_.end()) return;  // (made before a reload lowered the bound, then dropped)
  QueryFamily& f = it->second;
  f.server.observe(answer.server);
  f.wait_us += static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(answer.wait).count());
  f.rows += answer.rows;
  f.bytes += answer.bytes;
  if (answer.error_class[0] != 0) ++f.errors[std::string(answer.error_class, 2)];
}

std::string_view QueryStats::text(const Pool& pool, std::uint64_t id) const {
  auto it = families_.find(key(pool, id));
  return it != families_.end() ? std::string_view(it->second.text) : kOtherText;
}

std::vector<QueryFamily> QueryStats::families() const {
  std::vector<QueryFamily> out;
  out.reserve(families_.size());
  for (const auto& [k, f] : families_) out.push_back(f);
  return out;
}

std::vector<QueryFamily> merge_families(std::vector<std::vector<QueryFamily>> parts) {
  std::vector<QueryFamily> out;
  std::unordered_map<std::string, std::size_t> index;  // database \0 user \0 id -> out
  for (auto& part : parts) {
    for (QueryFamily& f : part) {
      std::string k = f.database + '\0' + f.user + '\0' + std::to_string(f.id);
      auto [it, made] = index.try_emplace(std::move(k), out.size());
      if (made)
        out.push_back(std::move(f));
      else
        out[it->second].add(f);
    }
  }
  return out;
}

}  // namespace pgring
