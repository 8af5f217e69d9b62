#include "daemon/cache/statements.hpp"

#include <functional>

#include "proto/sql.hpp"

namespace pgring {

Shape shape_of(std::string_view row_description_or_n) {
  Shape h = std::hash<std::string_view>{}(row_description_or_n);
  return h == 0 ? 1 : h;  // 0 is "unknown"
}

const PreparedStatement& StatementRegistry::intern(std::string_view parse_tail) {
  auto it = by_tail_.find(std::string(parse_tail));
  if (it != by_tail_.end()) return *it->second;
  auto entry = std::make_unique<PreparedStatement>();
  entry->id = ++last_id_;
  entry->server_name = "pgring_" + std::to_string(entry->id);
  entry->parse_tail.assign(parse_tail);
  entry->sql = parse_tail.find('\0') == std::string_view::npos;
  entry->listen = !entry->sql && proto::sql::parse_listen(entry->query()).has_value();
  const PreparedStatement& ref = *entry;
  by_tail_.emplace(std::string(parse_tail), std::move(entry));
  return ref;
}

void StatementRegistry::retire(const PreparedStatement& statement) {
  auto it = by_tail_.find(statement.parse_tail);
  if (it == by_tail_.end() || it->second.get() != &statement) return;  // already retired
  retired_.push_back(std::move(it->second));
  by_tail_.erase(it);
}

void StatementRegistry::retire_all() {
  for (auto& [tail, entry] : by_tail_) retired_.push_back(std::move(entry));
  by_tail_.clear();
}

void PreparedSet::touch(std::uint64_t id) {
  auto it = index_.find(id);
  if (it == index_.end()) return;
  order_.splice(order_.end(), order_, it->second.position);
}

void PreparedSet::add(std::uint64_t id) {
  if (contains(id)) {
    touch(id);
    return;
  }
  order_.push_back(id);
  index_.emplace(id, Slot{std::prev(order_.end())});
}

void PreparedSet::remove(std::uint64_t id) {
  auto it = index_.find(id);
  if (it == index_.end()) return;
  order_.erase(it->second.position);
  index_.erase(it);
}

Shape PreparedSet::shape(std::uint64_t id) const {
  auto it = index_.find(id);
  return it == index_.end() ? 0 : it->second.shape;
}

void PreparedSet::set_shape(std::uint64_t id, Shape shape) {
  auto it = index_.find(id);
  if (it != index_.end()) it->second.shape = shape;
}

void PreparedSet::clear() {
  order_.clear();
  index_.clear();
}

std::optional<std::uint64_t> PreparedSet::victim(std::size_t limit, std::uint64_t keep) const {
  if (index_.size() <= limit) return std::nullopt;
  for (std::uint64_t id : order_)
    if (id != keep) return id;
  return std::nullopt;
}

}  // namespace pgring
