#include "daemon/ops/queries.hpp"

#include <fmt/format.h>

#include "daemon/core/reactor.hpp"  // (the connection types pool.hpp needs whole)
#include "daemon/pool/pool.hpp"
#include "proto/fingerprint.hpp"

namespace pgring {

namespace {
constexpr std::size_t kTextMax = 1024;  // a family's text kept for SHOW QUERIES
}

std::uint64_t QueryStats::key(const Pool& pool, std::uint64_t id) {
  return id ^ (pool.stats_key_ * 0x9E3779B97F4A7C15ull);
}

std::uint64_t QueryStats::family(const Pool& pool, std::string_view text, std::uint64_t* known) {
  // The id alone is hashed as the text is read (nothing built); the text is made only for a
  // family seen for the first time.
  std::uint64_t id = known != nullptr && *known != 0 ? *known : proto::sql::fingerprint(text);
  if (known != nullptr) *known = id;
  if (families_.count(key(pool, id)) != 0) return id;
  if (static_cast<int>(families_.size()) >= limit_) id = kOther;
  auto [it, made] = families_.try_emplace(key(pool, id));
  if (made) {
    Family& f = it->second;
    f.id = id;
    f.database = pool.database_;
    f.user = pool.user_name_;
    if (id == kOther) {
      f.text = "(other: over stats.fingerprints)";
    } else {
      (void)proto::sql::fingerprint(text, scratch_);
      f.text = scratch_.substr(0, kTextMax);
    }
  }
  return id;
}

void QueryStats::record(const Pool& pool, std::uint64_t id,
                        std::chrono::steady_clock::duration server,
                        std::chrono::steady_clock::duration wait) {
  auto it = families_.find(key(pool, id));
  if (it == families_.end()) return;  // (made on another pool's behalf: not this one's)
  Family& f = it->second;
  ++f.calls;
  f.server_us += static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(server).count());
  f.wait_us += static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(wait).count());
}

Rows QueryStats::rows() const {
  Rows out;
  for (const auto& [k, f] : families_) {
    (void)k;
    out.push_back({fmt::format("{:016x}", f.id), f.database, f.user, std::to_string(f.calls),
                   std::to_string(f.server_us), std::to_string(f.wait_us), f.text});
  }
  return out;
}

}  // namespace pgring
