#pragma once
// Counters a reactor keeps in plain integers (no atomics on the data path). The admin console
// and /metrics read them from the reactor's own thread. Names and meanings are declared once,
// in metrics.cpp.

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>

namespace pgring {

// A Prometheus-style histogram of durations in seconds.
struct Histogram {
  static constexpr std::array<double, 14> kBounds = {
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0};
  std::array<std::uint64_t, kBounds.size() + 1> buckets{};  // last: +Inf
  double sum = 0;
  double max = 0;  // the longest sample: a quantile is never reported above it
  std::uint64_t count = 0;

  void observe(std::chrono::steady_clock::duration d) {
    double s = std::chrono::duration<double>(d).count();
    std::size_t i = 0;
    while (i < kBounds.size() && s > kBounds[i]) ++i;
    ++buckets[i];
    sum += s;
    max = std::max(max, s);
    ++count;
  }
  void add(const Histogram& other) {
    for (std::size_t i = 0; i < buckets.size(); ++i) buckets[i] += other.buckets[i];
    sum += other.sum;
    max = std::max(max, other.max);
    count += other.count;
  }
  // The q-quantile (0..1) in seconds, estimated as Prometheus' histogram_quantile does: linear
  // within the bucket it falls in, but never above the longest sample. 0 with no sample.
  [[nodiscard]] double quantile(double q) const {
    if (count == 0) return 0;
    double rank = q * static_cast<double>(count);
    double below = 0;
    for (std::size_t i = 0; i < kBounds.size(); ++i) {
      double in = static_cast<double>(buckets[i]);
      if (below + in >= rank && in > 0) {
        double lower = i == 0 ? 0 : kBounds[i - 1];
        return std::min(max, lower + (kBounds[i] - lower) * (rank - below) / in);
      }
      below += in;
    }
    return max;
  }
};

struct PoolStats {
  std::uint64_t transactions = 0;    // ReadyForQuery 'I' (explicit and implicit transactions)
  std::uint64_t queries = 0;         // Query and Execute messages
  std::uint64_t bytes_received = 0;  // from clients
  std::uint64_t bytes_sent = 0;      // from servers, to clients
  std::uint64_t server_connects = 0;
  Histogram wait;         // queue wait for a server
  Histogram query;        // request sent .. its ReadyForQuery
  Histogram transaction;  // first request .. ReadyForQuery 'I'
  std::map<std::string, std::uint64_t>
      errors_by_class;  // ErrorResponses from servers, by SQLSTATE class
};

}  // namespace pgring
