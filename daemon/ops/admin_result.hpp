#pragma once
// The admin console's result sets (ops/admin.cpp, and PgBouncer's columns in
// ops/admin_pgbouncer.cpp): text columns, built whole and sent as one batch.

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/core/reactor.hpp"
#include "daemon/core/stream.hpp"
#include "proto/builders.hpp"

namespace pgring {

// One result set: columns, rows, then CommandComplete.
class Result {
 public:
  explicit Result(std::vector<std::string_view> columns) : columns_(std::move(columns)) {}
  void row(std::vector<std::string> values) { rows_.push_back(std::move(values)); }
  std::vector<std::vector<std::string>>& rows() { return rows_; }
  bool emit(Stream& out, std::string_view tag) const {
    bool ok = out.emit([&](std::string& o) { return proto::build::row_description(o, columns_); });
    for (const auto& r : rows_)
      ok &= out.emit([&](std::string& o) { return proto::build::data_row(o, r); });
    ok &= out.emit([&](std::string& o) { return proto::build::command_complete(o, tag); });
    return ok;
  }

 private:
  std::vector<std::string_view> columns_;
  std::vector<std::vector<std::string>> rows_;
};

// Rows from every reactor, one result: rows with the same first `keys` columns become one, with
// the columns in `summed` added up and `maxed` the largest; every other column is the first
// reactor's. keys = 0 concatenates.
inline Rows merge_rows(std::vector<Rows> parts, std::size_t keys,
                       std::vector<std::size_t> summed = {}, std::vector<std::size_t> maxed = {}) {
  Rows out;
  for (Rows& part : parts) {
    for (auto& row : part) {
      auto same = keys == 0 ? out.end() : std::find_if(out.begin(), out.end(), [&](const auto& o) {
        return std::equal(o.begin(), o.begin() + static_cast<std::ptrdiff_t>(keys), row.begin());
      });
      if (same == out.end()) {
        out.push_back(std::move(row));
        continue;
      }
      for (std::size_t c : summed)
        (*same)[c] = std::to_string(std::stoll((*same)[c]) + std::stoll(row[c]));
      for (std::size_t c : maxed)
        (*same)[c] = std::to_string(std::max(std::stoll((*same)[c]), std::stoll(row[c])));
    }
  }
  return out;
}

}  // namespace pgring
