#pragma once
// The YAML walk's building blocks (private to config/): a value with its YAML path and line,
// readers that check a value's type and range and fail with a ConfigError naming both, and the
// pool keys that defaults, databases and users share.

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.hpp"

namespace pgring::config::yaml_items {

constexpr int kMaxCount = 1'000'000;  // pool sizes etc.: big enough, and sums cannot overflow int
constexpr int kMaxWorkers = 64;  // daemon/core/shared.hpp: a reactor is one bit of a 64-bit mask
constexpr std::uint64_t kMinMessageSize = 1u << 10;
constexpr std::uint64_t kMaxMessageSize = 1u << 30;
// Timers add durations to steady_clock time points in nanoseconds; one year keeps that far from
// overflow and is "never" for every timeout we have (0 is the way to disable one).
constexpr Duration kMaxTimeout = std::chrono::hours(24 * 365);
constexpr std::uint16_t kDefaultPort = 6432;
// sockaddr_un::sun_path is 108 bytes including the NUL; the file name adds "/.s.PGSQL.65535".
constexpr std::size_t kMaxUnixDir = 107 - std::char_traits<char>::length("/.s.PGSQL.65535");

// One value in the tree together with where it is, so every check can report path and line.
struct Item {
  std::string path;
  YAML::Node node;
  int line = 0;  // of the value, or of its key when the value has no mark

  [[noreturn]] void fail(const std::string& message) const {
    throw ConfigError(path, line, message);
  }
};

int line_of(const YAML::Node& node);
std::string child_path(const std::string& parent, std::string_view key);
std::string index_path(const std::string& parent, std::size_t i);
// "unknown key; did you mean 'x'?" when a candidate is close enough to be a typo.
std::string unknown_message(std::string_view what, std::string_view word,
                            const std::vector<std::string_view>& candidates);
std::string_view type_name(const YAML::Node& node);
Item make_item(std::string path, const YAML::Node& node, int fallback_line);
// Calls fn(key, item) for each entry of a map; null counts as an empty map (`log:` with nothing
// under it). Rejects non-string keys, duplicates (yaml-cpp 0.7 keeps both silently) and keys
// not in `known` (an empty `known` accepts any key: user and database names).
void for_each_entry(const Item& map, const std::vector<std::string_view>& known,
                    const std::function<void(const std::string&, const Item&)>& fn);
const std::string& scalar(const Item& item, std::string_view what = "a string");
std::string non_empty_string(const Item& item);
int integer(const Item& item, int min, int max);
std::vector<std::string> string_list(const Item& item);
Duration duration(const Item& item);
std::uint16_t port_number(const Item& item, std::string_view text);
ListenAddress listen_address(const Item& item, bool allow_unix);

template <typename Enum>
Enum one_of(const Item& item, const std::vector<std::pair<std::string_view, Enum>>& choices) {
  std::vector<std::string_view> names;
  std::string list;
  for (const auto& [name, value] : choices) {
    names.push_back(name);
    if (!list.empty()) list += ", ";
    list += name;
  }
  const std::string& text = scalar(item, "one of " + list);
  for (const auto& [name, value] : choices) {
    if (text == name) return value;
  }
  item.fail(unknown_message("must be one of " + list, text, names));
}

// Where min_pool_size and pool_size were set in one layer, to blame the right line later.
struct PoolMarks {
  std::string min_pool_size_path;
  int min_pool_size_line = 0;
  std::string pool_size_path;
  int pool_size_line = 0;
};

extern const std::vector<std::string_view> kPoolKeys;
extern const std::vector<std::pair<std::string_view, Duration Timeouts::*>> kTimeoutKeys;
extern const std::vector<std::string_view> kPoolTimeoutKeys;
bool is_pool_key(std::string_view key);
std::vector<std::string_view> with_pool_keys(std::vector<std::string_view> keys);
void pool_key(const std::string& key, const Item& item, PoolOverrides& out, PoolMarks& marks);
void pool_timeouts(const Item& section, PoolOverrides& out);
SecretKind secret_kind(const Item& item, const std::string& password);

}  // namespace pgring::config::yaml_items
