#pragma once
// Counters a reactor keeps in plain integers (no atomics on the data path). The admin console
// and /metrics read them from the reactor's own thread. Names and meanings are declared once,
// in metrics.cpp.

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
  std::uint64_t count = 0;

  void observe(std::chrono::steady_clock::duration d) {
    double s = std::chrono::duration<double>(d).count();
    std::size_t i = 0;
    while (i < kBounds.size() && s > kBounds[i]) ++i;
    ++buckets[i];
    sum += s;
    ++count;
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
