// YAML text -> validated Config (DESIGN.md section 7).
//
// Shape of the loader: a walk over the yaml-cpp node tree that knows, for every map, the keys
// it accepts. Each value is checked where it is read, so an error can always name its YAML path
// and line; cross-key rules (min_pool_size <= pool_size, secrets vs auth method) run once the
// whole tree is read. yaml-cpp exceptions never leave this file: they become ConfigError.

#include "config/config.hpp"

#include <arpa/inet.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <sstream>
#include <string>

namespace pgring::config {

std::string_view to_string(PoolMode mode) {
  switch (mode) {
    case PoolMode::session:
      return "session";
    case PoolMode::transaction:
      return "transaction";
    case PoolMode::statement:
      return "statement";
  }
  return "unknown";
}

std::string_view to_string(SessionStatePolicy policy) {
  return policy == SessionStatePolicy::pin ? "pin" : "error";
}

std::string_view to_string(AuthMethod method) {
  switch (method) {
    case AuthMethod::trust:
      return "trust";
    case AuthMethod::md5:
      return "md5";
    case AuthMethod::scram_sha_256:
      return "scram-sha-256";
    case AuthMethod::reject:
      return "reject";
    case AuthMethod::cert:
      return "cert";
  }
  return "unknown";
}

std::string_view to_string(ClientTlsMode mode) {
  switch (mode) {
    case ClientTlsMode::disable: return "disable";
    case ClientTlsMode::allow: return "allow";
    case ClientTlsMode::require: return "require";
  }
  return "unknown";
}

std::string_view to_string(ServerTlsMode mode) {
  switch (mode) {
    case ServerTlsMode::disable: return "disable";
    case ServerTlsMode::prefer: return "prefer";
    case ServerTlsMode::require: return "require";
    case ServerTlsMode::verify_ca: return "verify-ca";
    case ServerTlsMode::verify_full: return "verify-full";
  }
  return "unknown";
}

bool Network::contains(int address_family, const std::uint8_t* address) const {
  if (address_family != family) return false;
  int full = prefix / 8;
  if (std::memcmp(bytes.data(), address, static_cast<std::size_t>(full)) != 0) return false;
  int rest = prefix % 8;
  if (rest == 0) return true;
  auto mask = static_cast<std::uint8_t>(0xff << (8 - rest));
  return (bytes[static_cast<std::size_t>(full)] & mask) == (address[full] & mask);
}

std::optional<Network> parse_network(std::string_view text) {
  std::string address(text.substr(0, text.find('/')));
  Network net;
  int max_prefix = 0;
  if (inet_pton(AF_INET, address.c_str(), net.bytes.data()) == 1) {
    net.family = AF_INET;
    max_prefix = 32;
  } else if (inet_pton(AF_INET6, address.c_str(), net.bytes.data()) == 1) {
    net.family = AF_INET6;
    max_prefix = 128;
  } else {
    return std::nullopt;
  }
  net.prefix = max_prefix;
  if (std::size_t slash = text.find('/'); slash != std::string_view::npos) {
    std::string_view digits = text.substr(slash + 1);
    int value = -1;
    auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (digits.empty() || ec != std::errc() || ptr != digits.data() + digits.size() || value < 0 ||
        value > max_prefix)
      return std::nullopt;
    net.prefix = value;
  }
  return net;
}

Config::AuthChoice Config::choose_auth(std::string_view database, std::string_view user, const Peer& peer) const {
  if (auth_rules.empty()) return {auth_method, "auth.method"};
  auto listed = [](const std::vector<std::string>& names, std::string_view name) {
    return names.empty() || std::find(names.begin(), names.end(), name) != names.end();
  };
  for (const AuthRule& rule : auth_rules) {
    if (!listed(rule.databases, database) || !listed(rule.users, user)) continue;
    if (rule.tls && *rule.tls != peer.tls) continue;
    if (rule.source == AuthRule::Source::local && !peer.local) continue;
    if (rule.source == AuthRule::Source::network) {
      if (peer.local) continue;
      bool inside = std::any_of(rule.networks.begin(), rule.networks.end(), [&](const Network& n) {
        return n.contains(peer.family, peer.address.data());
      });
      if (!inside) continue;
    }
    return {rule.method, rule.path};
  }
  return {AuthMethod::reject, ""};
}

namespace {

std::string format_error(const std::string& path, int line, const std::string& message) {
  std::string out = path;
  if (line > 0) {
    out += out.empty() ? "line " : " (line ";
    out += std::to_string(line);
    if (!path.empty()) out += ')';
  }
  if (!out.empty()) out += ": ";
  out += message;
  return out;
}

}  // namespace

ConfigError::ConfigError(std::string path, int line, const std::string& message)
    : std::runtime_error(format_error(path, line, message)),
      path_(std::move(path)),
      line_(line),
      message_(message) {}

const User* Config::find_user(std::string_view name) const {
  auto it = users.find(name);
  return it == users.end() ? nullptr : &it->second;
}

const Database* Config::find_database(std::string_view name) const {
  auto it = databases.find(name);
  return it == databases.end() ? nullptr : &it->second;
}

namespace {

void apply(PoolSettings& out, const PoolOverrides& in) {
  if (in.pool_mode) out.pool_mode = *in.pool_mode;
  if (in.pool_size) out.pool_size = *in.pool_size;
  if (in.min_pool_size) out.min_pool_size = *in.min_pool_size;
  if (in.reserve_pool_size) out.reserve_pool_size = *in.reserve_pool_size;
  if (in.max_db_connections) out.max_db_connections = *in.max_db_connections;
  if (in.server_reset_query) out.server_reset_query = *in.server_reset_query;
  if (in.prepared_statements) out.prepared_statements = *in.prepared_statements;
  if (in.session_state) out.session_state = *in.session_state;
  if (in.max_db_client_connections) out.max_db_client_connections = *in.max_db_client_connections;
  if (in.max_user_client_connections) out.max_user_client_connections = *in.max_user_client_connections;
  for (const auto& [member, value] : in.timeouts) out.timeouts.*member = value;
}

}  // namespace

PoolSettings Config::resolve_pool(const Database& db, const User* user) const {
  PoolSettings out = defaults;
  out.timeouts = timeouts;
  apply(out, db.pool);
  if (user != nullptr) apply(out, user->pool);
  return out;
}

// ---- durations and sizes ----

namespace {

// Whole-string unsigned decimal; no sign, no spaces, no "0x". nullopt on overflow.
std::optional<std::uint64_t> parse_digits(std::string_view text) {
  if (text.empty()) return std::nullopt;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  std::uint64_t value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

// Splits "64KiB" into ("64", "KiB").
std::pair<std::string_view, std::string_view> split_number(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
  return {text.substr(0, i), text.substr(i)};
}

std::optional<std::uint64_t> checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t max) {
  if (a != 0 && b > max / a) return std::nullopt;
  return a * b;
}

}  // namespace

std::optional<Duration> parse_duration(std::string_view text) {
  auto [number, unit] = split_number(text);
  auto value = parse_digits(number);
  if (!value) return std::nullopt;
  std::uint64_t ms_per_unit = 0;
  if (unit.empty()) {
    // A bare number is ambiguous (PgBouncer means seconds, PostgreSQL often milliseconds), so
    // only 0, which means the same in every unit, is accepted without one.
    if (*value != 0) return std::nullopt;
    return Duration{0};
  }
  if (unit == "ms") {
    ms_per_unit = 1;
  } else if (unit == "s") {
    ms_per_unit = 1000;
  } else if (unit == "m") {
    ms_per_unit = 60'000;
  } else if (unit == "h") {
    ms_per_unit = 3'600'000;
  } else {
    return std::nullopt;
  }
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<Duration::rep>::max());
  auto ms = checked_mul(*value, ms_per_unit, kMax);
  if (!ms) return std::nullopt;
  return Duration{static_cast<Duration::rep>(*ms)};
}

std::optional<std::uint64_t> parse_size(std::string_view text) {
  auto [number, unit] = split_number(text);
  auto value = parse_digits(number);
  if (!value) return std::nullopt;
  std::uint64_t scale = 0;
  if (unit.empty() || unit == "B") {
    scale = 1;
  } else if (unit == "KiB" || unit == "kB" || unit == "KB") {
    scale = std::uint64_t{1} << 10;
  } else if (unit == "MiB" || unit == "MB") {
    scale = std::uint64_t{1} << 20;
  } else if (unit == "GiB" || unit == "GB") {
    scale = std::uint64_t{1} << 30;
  } else {
    return std::nullopt;
  }
  return checked_mul(*value, scale, std::numeric_limits<std::uint64_t>::max());
}

// ---- the loader ----

namespace {

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

int line_of(const YAML::Node& node) {
  if (!node.IsDefined()) return 0;
  const YAML::Mark mark = node.Mark();
  return mark.line >= 0 ? mark.line + 1 : 0;
}

std::string child_path(const std::string& parent, std::string_view key) {
  std::string out = parent;
  if (!out.empty()) out += '.';
  out += key;
  return out;
}

std::string index_path(const std::string& parent, std::size_t i) {
  return parent + "[" + std::to_string(i) + "]";
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// The nearest candidate, if it is close enough to be a plausible typo.
std::optional<std::string_view> nearest(std::string_view word,
                                        const std::vector<std::string_view>& candidates) {
  std::optional<std::string_view> best;
  std::size_t best_distance = std::numeric_limits<std::size_t>::max();
  for (std::string_view candidate : candidates) {
    const std::size_t d = edit_distance(word, candidate);
    if (d < best_distance) {
      best_distance = d;
      best = candidate;
    }
  }
  if (!best) return std::nullopt;
  // Plausible: a couple of edits, or up to a third of the word for long keys.
  const std::size_t allowed = std::max<std::size_t>(2, best->size() / 3);
  if (best_distance <= allowed) return best;
  // Or an abbreviation or an extension: "warn" for "warning", "pinned" for "pin".
  for (std::string_view candidate : candidates) {
    if (std::min(word.size(), candidate.size()) < 3) continue;
    if (candidate.starts_with(word) || word.starts_with(candidate)) return candidate;
  }
  return std::nullopt;
}

std::string unknown_message(std::string_view what, std::string_view word,
                            const std::vector<std::string_view>& candidates) {
  std::string message(what);
  if (auto suggestion = nearest(word, candidates)) {
    message += "; did you mean '";
    message += *suggestion;
    message += "'?";
  }
  return message;
}

std::string_view type_name(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Scalar:
      return "a scalar";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

// One value in the tree together with where it is, so every check can report path and line.
struct Item {
  std::string path;
  YAML::Node node;
  int line = 0;  // of the value, or of its key when the value has no mark

  [[noreturn]] void fail(const std::string& message) const {
    throw ConfigError(path, line, message);
  }
};

Item make_item(std::string path, const YAML::Node& node, int fallback_line) {
  const int line = line_of(node);
  return Item{std::move(path), node, line > 0 ? line : fallback_line};
}

// Calls fn(key, item) for each entry of a map; null counts as an empty map (`log:` with nothing
// under it). Rejects non-string keys, duplicates (yaml-cpp 0.7 keeps both silently) and keys
// not in `known` (an empty `known` accepts any key: user and database names).
void for_each_entry(const Item& map, const std::vector<std::string_view>& known,
                    const std::function<void(const std::string&, const Item&)>& fn) {
  if (map.node.IsNull()) return;
  if (!map.node.IsMap()) map.fail("expected a map, got " + std::string(type_name(map.node)));
  std::set<std::string, std::less<>> seen;
  for (auto it = map.node.begin(); it != map.node.end(); ++it) {
    const YAML::Node key = it->first;
    const int key_line = line_of(key) > 0 ? line_of(key) : map.line;
    if (!key.IsScalar()) throw ConfigError(map.path, key_line, "keys must be strings");
    const std::string& name = key.Scalar();
    const std::string path = child_path(map.path, name);
    if (!known.empty() && std::find(known.begin(), known.end(), name) == known.end()) {
      throw ConfigError(path, key_line, unknown_message("unknown key", name, known));
    }
    if (!seen.insert(name).second) throw ConfigError(path, key_line, "duplicate key");
    // The key's line, not the value's: the path names the key, and a block value starts on a
    // later line.
    fn(name, Item{path, it->second, key_line});
  }
}

const std::string& scalar(const Item& item, std::string_view what = "a string") {
  if (!item.node.IsScalar()) {
    item.fail("expected " + std::string(what) + ", got " + std::string(type_name(item.node)));
  }
  return item.node.Scalar();
}

std::string non_empty_string(const Item& item) {
  const std::string& value = scalar(item);
  if (value.empty()) item.fail("must not be empty");
  return value;
}

int integer(const Item& item, int min, int max) {
  const std::string expected = min == 1   ? "must be a positive integer"
                               : min == 0 ? "must be a non-negative integer"
                                          : "must be an integer";
  if (!item.node.IsScalar()) item.fail(expected);
  const std::string& text = item.node.Scalar();
  long long value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ptr != text.data() + text.size()) item.fail(expected);
  if (ec == std::errc::result_out_of_range) {
    item.fail(text[0] == '-' ? expected : "must be at most " + std::to_string(max));
  }
  if (ec != std::errc() || value < min) item.fail(expected);
  if (value > max) item.fail("must be at most " + std::to_string(max));
  return static_cast<int>(value);
}

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

std::vector<std::string> string_list(const Item& item) {
  std::vector<std::string> out;
  if (item.node.IsScalar()) {
    out.push_back(non_empty_string(item));
    return out;
  }
  if (item.node.IsNull()) return out;
  if (!item.node.IsSequence()) {
    item.fail("expected a list of strings, got " + std::string(type_name(item.node)));
  }
  std::size_t i = 0;
  for (const YAML::Node& node : item.node) {
    const Item element = make_item(index_path(item.path, i++), node, item.line);
    out.push_back(non_empty_string(element));
  }
  return out;
}

Duration duration(const Item& item) {
  const std::string& text = scalar(item, "a duration");
  auto value = parse_duration(text);
  if (!value) {
    if (!text.empty() &&
        std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      item.fail("a duration needs a unit: write e.g. '" + text + "s' or '" + text +
                "ms' (only 0 may be written without one)");
    }
    item.fail("must be a duration like 250ms, 15s, 2m or 1h, or 0 to disable");
  }
  if (*value > kMaxTimeout) item.fail("must be at most 8760h (one year); 0 disables it");
  return *value;
}

std::uint16_t port_number(const Item& item, std::string_view text) {
  auto value = parse_digits(text);
  if (!value || *value < 1 || *value > 65535) item.fail("port must be between 1 and 65535");
  return static_cast<std::uint16_t>(*value);
}

// "host:port" or "[v6]:port"; with allow_unix, also an absolute directory.
ListenAddress listen_address(const Item& item, bool allow_unix) {
  const std::string& text = scalar(item);
  ListenAddress out;
  if (!text.empty() && text[0] == '/') {
    if (!allow_unix) item.fail("expected host:port; a unix socket is not supported here");
    std::string dir = text;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    if (dir.size() > kMaxUnixDir) {
      item.fail("unix socket directory is too long (at most " + std::to_string(kMaxUnixDir) +
                " characters)");
    }
    out.unix_dir = std::move(dir);
    return out;
  }
  const std::string usage = allow_unix ? "expected host:port, [ipv6]:port or an absolute directory"
                                       : "expected host:port or [ipv6]:port";
  std::string_view host;
  std::string_view port;
  if (!text.empty() && text[0] == '[') {
    const auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      item.fail(usage);
    }
    host = std::string_view(text).substr(1, close - 1);
    port = std::string_view(text).substr(close + 2);
    in6_addr addr{};
    if (inet_pton(AF_INET6, std::string(host).c_str(), &addr) != 1) {
      item.fail("'" + std::string(host) + "' is not an IPv6 address");
    }
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string::npos) item.fail(usage);
    host = std::string_view(text).substr(0, colon);
    port = std::string_view(text).substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      item.fail("an IPv6 address needs brackets: [" + std::string(host) + "]:" + std::string(port));
    }
    if (host.empty()) item.fail(usage + " (the host is missing)");
    if (std::any_of(host.begin(), host.end(),
                    [](char c) { return c <= ' ' || c == '/' || c == '[' || c == ']'; })) {
      item.fail("'" + std::string(host) + "' is not a host name or address");
    }
  }
  out.host = std::string(host);
  out.port = port_number(item, port);
  return out;
}

// Where min_pool_size and pool_size were set in one layer, to blame the right line later.
struct PoolMarks {
  std::string min_pool_size_path;
  int min_pool_size_line = 0;
  std::string pool_size_path;
  int pool_size_line = 0;
};

const std::vector<std::string_view> kPoolKeys = {
    "pool_mode",          "pool_size",          "min_pool_size",       "reserve_pool_size",
    "max_db_connections", "server_reset_query", "prepared_statements", "session_state",
    "max_db_client_connections", "max_user_client_connections"};

// Every timeout of the top-level `timeouts:` section.
const std::vector<std::pair<std::string_view, Duration Timeouts::*>> kTimeoutKeys = {
    {"client_login", &Timeouts::client_login},
    {"server_connect", &Timeouts::server_connect},
    {"server_login_retry", &Timeouts::server_login_retry},
    {"query_wait", &Timeouts::query_wait},
    {"reserve_pool", &Timeouts::reserve_pool},
    {"query", &Timeouts::query},
    {"transaction", &Timeouts::transaction},
    {"idle_transaction", &Timeouts::idle_transaction},
    {"client_idle", &Timeouts::client_idle},
    {"server_idle", &Timeouts::server_idle},
    {"server_lifetime", &Timeouts::server_lifetime},
    {"cancel_wait", &Timeouts::cancel_wait},
    {"shutdown", &Timeouts::shutdown}};

// Those a database or user may set for its own pools. client_login runs before the pool is
// known; cancel_wait and shutdown are about the process.
const std::vector<std::string_view> kPoolTimeoutKeys = {
    "server_connect", "server_login_retry", "query_wait", "reserve_pool", "query", "transaction",
    "idle_transaction", "client_idle", "server_idle", "server_lifetime"};

bool is_pool_key(std::string_view key) {
  return std::find(kPoolKeys.begin(), kPoolKeys.end(), key) != kPoolKeys.end();
}

std::vector<std::string_view> with_pool_keys(std::vector<std::string_view> keys) {
  keys.insert(keys.end(), kPoolKeys.begin(), kPoolKeys.end());
  return keys;
}

void pool_key(const std::string& key, const Item& item, PoolOverrides& out, PoolMarks& marks) {
  if (key == "pool_mode") {
    out.pool_mode = one_of<PoolMode>(item, {{"session", PoolMode::session},
                                            {"transaction", PoolMode::transaction},
                                            {"statement", PoolMode::statement}});
  } else if (key == "pool_size") {
    out.pool_size = integer(item, 1, kMaxCount);
    marks.pool_size_path = item.path;
    marks.pool_size_line = item.line;
  } else if (key == "min_pool_size") {
    out.min_pool_size = integer(item, 0, kMaxCount);
    marks.min_pool_size_path = item.path;
    marks.min_pool_size_line = item.line;
  } else if (key == "reserve_pool_size") {
    out.reserve_pool_size = integer(item, 0, kMaxCount);
  } else if (key == "max_db_connections") {
    out.max_db_connections = integer(item, 0, kMaxCount);
  } else if (key == "server_reset_query") {
    // Null and "" both mean: no reset query.
    out.server_reset_query = item.node.IsNull() ? std::string() : scalar(item);
  } else if (key == "prepared_statements") {
    out.prepared_statements = integer(item, 0, kMaxCount);
  } else if (key == "session_state") {
    out.session_state = one_of<SessionStatePolicy>(
        item, {{"pin", SessionStatePolicy::pin}, {"error", SessionStatePolicy::error}});
  } else if (key == "max_db_client_connections") {
    out.max_db_client_connections = integer(item, 0, kMaxCount);
  } else if (key == "max_user_client_connections") {
    out.max_user_client_connections = integer(item, 0, kMaxCount);
  }
}

// databases.<db>.timeouts / users.<user>.timeouts.
void pool_timeouts(const Item& section, PoolOverrides& out) {
  std::vector<std::string_view> known;
  for (const auto& entry : kTimeoutKeys) known.push_back(entry.first);
  for_each_entry(section, known, [&](const std::string& key, const Item& item) {
    if (std::find(kPoolTimeoutKeys.begin(), kPoolTimeoutKeys.end(), key) == kPoolTimeoutKeys.end())
      item.fail("applies to the whole process: set it in the top-level timeouts: section");
    for (const auto& [name, member] : kTimeoutKeys)
      if (key == name) out.timeouts.emplace_back(member, duration(item));
  });
}

bool is_lower_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

bool is_base64(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/' || c == '=';
}

bool all_base64(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), is_base64);
}

// The shape of "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>". A structural check
// rather than proto::scram::parse_secret so config/ does not need proto/ linked to be tested;
// the daemon decodes the secret when it first uses it.
bool looks_like_scram_secret(std::string_view s) {
  constexpr std::string_view kPrefix = "SCRAM-SHA-256$";
  s.remove_prefix(kPrefix.size());
  const auto colon = s.find(':');
  const auto dollar = s.find('$');
  if (colon == std::string_view::npos || dollar == std::string_view::npos || dollar < colon) {
    return false;
  }
  auto iterations = parse_digits(s.substr(0, colon));
  if (!iterations || *iterations == 0 || *iterations > 10'000'000) return false;
  if (!all_base64(s.substr(colon + 1, dollar - colon - 1))) return false;
  const std::string_view keys = s.substr(dollar + 1);
  const auto key_colon = keys.find(':');
  if (key_colon == std::string_view::npos) return false;
  // 32-byte keys are 44 base64 characters.
  const std::string_view stored = keys.substr(0, key_colon);
  const std::string_view server = keys.substr(key_colon + 1);
  return stored.size() == 44 && server.size() == 44 && all_base64(stored) && all_base64(server);
}

SecretKind secret_kind(const Item& item, const std::string& password) {
  SecretKind kind = classify_secret(password);
  // PostgreSQL would quietly take a mangled secret as a plain password; in a config file it
  // is a paste error, so say so. The value is a secret: never echo it.
  if (kind == SecretKind::none)
    item.fail("malformed SCRAM secret; expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>");
  return kind;
}

}  // namespace

SecretKind classify_secret(std::string_view password) {
  // PostgreSQL's rule (isMD5 in crypt.c): "md5" and exactly 32 lowercase hex digits.
  if (password.size() == 35 && password.starts_with("md5") &&
      std::all_of(password.begin() + 3, password.end(), is_lower_hex)) {
    return SecretKind::md5;
  }
  if (password.starts_with("SCRAM-SHA-256$")) return looks_like_scram_secret(password) ? SecretKind::scram : SecretKind::none;
  return SecretKind::plain;
}

namespace {

class Loader {
 public:
  Config load(const YAML::Node& root) {
    if (!root.IsDefined() || root.IsNull()) return config_;  // empty file: all defaults
    const Item top = make_item("", root, 1);
    if (!top.node.IsMap()) {
      top.fail("the top level must be a map of keys (listen, databases, users, ...)");
    }
    Item listen_item;
    for_each_entry(top, kTopKeys, [&](const std::string& key, const Item& item) {
      if (key == "listen") {
        listen_item = item;
        listen(item);
      } else if (key == "workers") {
        workers(item);
      } else if (key == "max_client_conn") {
        config_.max_client_conn = integer(item, 1, kMaxCount);
      } else if (key == "max_message_size") {
        max_message_size(item);
      } else if (key == "log") {
        log(item);
      } else if (key == "metrics") {
        metrics(item);
      } else if (key == "admin") {
        admin(item);
      } else if (key == "auth") {
        auth(item);
      } else if (key == "users") {
        users(item);
      } else if (key == "defaults") {
        defaults(item);
      } else if (key == "timeouts") {
        timeouts(item);
      } else if (key == "databases") {
        databases(item);
      } else if (key == "tls") {
        tls(item);
      }
    });
    finish_listen(listen_item);
    check_auth();
    check_secrets();
    check_pool_sizes();
    return config_;
  }

 private:
  inline static const std::vector<std::string_view> kTopKeys = {
      "listen", "workers", "max_client_conn", "max_message_size", "log",      "metrics",
      "admin",  "auth",    "users",           "defaults",         "timeouts", "databases", "tls"};

  void listen(const Item& item) {
    config_.listen.clear();
    if (item.node.IsScalar()) {
      config_.listen.push_back(listen_address(item, true));
      return;
    }
    if (item.node.IsNull()) return;  // reported by finish_listen
    if (!item.node.IsSequence()) {
      item.fail("expected a list of addresses, got " + std::string(type_name(item.node)));
    }
    std::size_t i = 0;
    for (const YAML::Node& node : item.node) {
      const Item element = make_item(index_path(item.path, i++), node, item.line);
      ListenAddress address = listen_address(element, true);
      for (const ListenAddress& other : config_.listen) {
        if (other.host == address.host && other.port == address.port &&
            other.unix_dir == address.unix_dir) {
          element.fail("duplicate listen address");
        }
      }
      config_.listen.push_back(std::move(address));
    }
  }

  void finish_listen(const Item& item) {
    if (config_.listen.empty()) item.fail("at least one listen entry is required");
    // A unix socket's file is named after a port, like PostgreSQL's: the first TCP entry's.
    std::uint16_t port = kDefaultPort;
    for (const ListenAddress& address : config_.listen) {
      if (address.unix_dir.empty()) {
        port = address.port;
        break;
      }
    }
    for (ListenAddress& address : config_.listen) {
      if (!address.unix_dir.empty()) address.port = port;
    }
  }

  void workers(const Item& item) {
    if (item.node.IsScalar() && item.node.Scalar() == "auto") {
      config_.workers = 0;
      return;
    }
    if (!item.node.IsScalar()) item.fail("must be 'auto' or a positive integer");
    auto value = parse_digits(item.node.Scalar());
    if (!value || *value < 1) item.fail("must be 'auto' or a positive integer");
    if (*value > kMaxWorkers) item.fail("must be at most " + std::to_string(kMaxWorkers));
    config_.workers = static_cast<int>(*value);
  }

  void max_message_size(const Item& item) {
    auto value = parse_size(scalar(item, "a size"));
    if (!value) item.fail("must be a size like 65536, 64KiB, 64MiB or 1GiB");
    if (*value < kMinMessageSize || *value > kMaxMessageSize) {
      item.fail("must be between 1KiB and 1GiB");
    }
    config_.max_message_size = static_cast<std::uint32_t>(*value);
  }

  void log(const Item& section) {
    for_each_entry(section, {"level", "format"}, [&](const std::string& key, const Item& item) {
      if (key == "level") {
        config_.log_level = one_of<LogLevel>(item, {{"debug", LogLevel::debug},
                                                    {"info", LogLevel::info},
                                                    {"warning", LogLevel::warning},
                                                    {"error", LogLevel::error}});
      } else {
        config_.log_format =
            one_of<LogFormat>(item, {{"text", LogFormat::text}, {"json", LogFormat::json}});
      }
    });
  }

  void metrics(const Item& section) {
    for_each_entry(section, {"listen"}, [&](const std::string&, const Item& item) {
      config_.metrics_listen = listen_address(item, false);
    });
  }

  void admin(const Item& section) {
    for_each_entry(
        section, {"users", "stats_users"}, [&](const std::string& key, const Item& item) {
          (key == "users" ? config_.admin_users : config_.stats_users) = string_list(item);
        });
  }

  static AuthMethod auth_method(const Item& item) {
    return one_of<AuthMethod>(item, {{"trust", AuthMethod::trust},
                                     {"reject", AuthMethod::reject},
                                     {"md5", AuthMethod::md5},
                                     {"scram-sha-256", AuthMethod::scram_sha_256},
                                     {"cert", AuthMethod::cert}});
  }

  void auth(const Item& section) {
    for_each_entry(section, {"method", "rules", "query"}, [&](const std::string& key, const Item& item) {
      if (key == "method") {
        auth_method_line_ = item.line;
        config_.auth_method = auth_method(item);
        if (config_.auth_method == AuthMethod::reject) item.fail("reject would refuse everyone; use it in auth.rules");
        if (config_.auth_method == AuthMethod::cert) cert_rule_ = {item.path, item.line};
      } else if (key == "rules") {
        auth_rules(item);
      } else {
        auth_query(item);
      }
    });
  }

  void auth_rules(const Item& list) {
    if (!list.node.IsSequence()) list.fail("expected a list of rules, got " + std::string(type_name(list.node)));
    std::size_t i = 0;
    for (const YAML::Node& node : list.node) {
      const Item entry = make_item(index_path(list.path, i++), node, list.line);
      AuthRule rule;
      rule.path = entry.path;
      bool has_method = false;
      for_each_entry(entry, {"database", "user", "address", "tls", "method"}, [&](const std::string& key,
                                                                                  const Item& item) {
        if (key == "database" || key == "user") {
          std::vector<std::string> names = string_list(item);
          if (names.size() == 1 && names[0] == "all") names.clear();
          (key == "database" ? rule.databases : rule.users) = std::move(names);
        } else if (key == "address") {
          std::vector<std::string> entries = string_list(item);
          if (entries.size() > 1 && std::any_of(entries.begin(), entries.end(), [](const std::string& e) {
                return e == "all" || e == "local";
              }))
            item.fail("all and local stand alone; a list holds networks only");
          for (const std::string& text : entries) {
            if (text == "all") {
              rule.source = AuthRule::Source::any;
            } else if (text == "local") {
              rule.source = AuthRule::Source::local;
            } else {
              auto net = parse_network(text);
              if (!net) item.fail("'" + text + "' is not all, local, an address or a network like 10.0.0.0/8");
              rule.source = AuthRule::Source::network;
              rule.networks.push_back(*net);
            }
          }
        } else if (key == "tls") {
          if (!item.node.IsScalar() || (item.node.Scalar() != "true" && item.node.Scalar() != "false"))
            item.fail("must be true (TLS connections only) or false (plain ones only); omit it for both");
          rule.tls = item.node.Scalar() == "true";
        } else {
          has_method = true;
          rule.method = auth_method(item);
          if (rule.method == AuthMethod::cert && !cert_rule_.first.size()) cert_rule_ = {item.path, item.line};
        }
      });
      if (!has_method) entry.fail("a rule needs a method (trust, reject, md5, scram-sha-256 or cert)");
      config_.auth_rules.push_back(std::move(rule));
    }
  }

  void auth_query(const Item& section) {
    AuthQuery query;
    for_each_entry(section, {"query", "user", "database", "cache"}, [&](const std::string& key, const Item& item) {
      if (key == "query") query.query = non_empty_string(item);
      else if (key == "user") query.user = non_empty_string(item);
      else if (key == "database") query.database = non_empty_string(item);
      else query.cache = duration(item);
    });
    if (query.user.empty()) section.fail("auth.query needs a user: who runs the lookup on the server");
    auth_query_line_ = section.line;
    config_.auth_query = std::move(query);
  }

  static std::string tls_version(const Item& item) {
    return std::string(one_of<std::string_view>(item, {{"TLSv1.2", "TLSv1.2"}, {"TLSv1.3", "TLSv1.3"}}));
  }

  void tls(const Item& section) {
    for_each_entry(section, {"client", "server"}, [&](const std::string& key, const Item& side) {
      if (key == "client") {
        ClientTls& t = config_.tls_client;
        for_each_entry(side, {"mode", "cert", "key", "ca", "min_version", "ciphers"}, [&](const std::string& k,
                                                                                          const Item& item) {
          if (k == "mode") {
            t.mode = one_of<ClientTlsMode>(item, {{"disable", ClientTlsMode::disable},
                                                  {"allow", ClientTlsMode::allow},
                                                  {"require", ClientTlsMode::require}});
          } else if (k == "min_version") {
            t.min_version = tls_version(item);
          } else if (k == "ciphers") {
            t.ciphers = non_empty_string(item);
          } else {
            (k == "cert" ? t.cert : k == "key" ? t.key : t.ca) = non_empty_string(item);
          }
        });
        if (t.mode != ClientTlsMode::disable && (t.cert.empty() || t.key.empty()))
          side.fail("mode " + std::string(to_string(t.mode)) + " needs cert and key");
      } else {
        ServerTls& t = config_.tls_server;
        for_each_entry(side, {"mode", "ca", "cert", "key", "min_version", "ciphers"}, [&](const std::string& k,
                                                                                          const Item& item) {
          if (k == "mode") {
            t.mode = one_of<ServerTlsMode>(item, {{"disable", ServerTlsMode::disable},
                                                  {"prefer", ServerTlsMode::prefer},
                                                  {"require", ServerTlsMode::require},
                                                  {"verify-ca", ServerTlsMode::verify_ca},
                                                  {"verify-full", ServerTlsMode::verify_full}});
          } else if (k == "min_version") {
            t.min_version = tls_version(item);
          } else if (k == "ciphers") {
            t.ciphers = non_empty_string(item);
          } else {
            (k == "ca" ? t.ca : k == "cert" ? t.cert : t.key) = non_empty_string(item);
          }
        });
        if ((t.mode == ServerTlsMode::verify_ca || t.mode == ServerTlsMode::verify_full) && t.ca.empty())
          side.fail("mode " + std::string(to_string(t.mode)) + " needs ca (the CA file that signed the server's certificate)");
        if (t.cert.empty() != t.key.empty()) side.fail("cert and key go together");
      }
    });
  }

  // Cross-key rules of auth: and tls:.
  void check_auth() {
    if (!cert_rule_.first.empty() && config_.tls_client.ca.empty())
      throw ConfigError(cert_rule_.first, cert_rule_.second,
                        "method cert needs tls.client.ca (the CA that signs client certificates)");
    if (config_.auth_query) {
      const User* runner = config_.find_user(config_.auth_query->user);
      if (runner == nullptr || runner->secret_kind != SecretKind::plain)
        throw ConfigError("auth.query.user", auth_query_line_,
                          "'" + config_.auth_query->user +
                              "' must be in users: with a plain password (pgring logs in to the server as it)");
      if (!config_.auth_query->database.empty() && config_.find_database(config_.auth_query->database) == nullptr)
        throw ConfigError("auth.query.database", auth_query_line_,
                          "'" + config_.auth_query->database + "' is not in databases:");
    }
  }

  void users(const Item& section) {
    static const std::vector<std::string_view> kUserKeys = with_pool_keys({"password", "timeouts"});
    for_each_entry(section, {}, [&](const std::string& name, const Item& entry) {
      if (name.empty()) entry.fail("a user name must not be empty");
      User user;
      user.name = name;
      PoolMarks& marks = user_marks_[name];
      user_lines_[name] = entry.line;
      for_each_entry(entry, kUserKeys, [&](const std::string& key, const Item& item) {
        if (key == "password") {
          user.password = scalar(item);
          if (user.password.empty()) item.fail("must not be empty (omit it for no password)");
          user.secret_kind = secret_kind(item, user.password);
          password_lines_[name] = item.line;
        } else if (key == "timeouts") {
          pool_timeouts(item, user.pool);
        } else {
          pool_key(key, item, user.pool, marks);
        }
      });
      config_.users.emplace(name, std::move(user));
    });
  }

  void defaults(const Item& section) {
    PoolOverrides overrides;
    for_each_entry(section, kPoolKeys, [&](const std::string& key, const Item& item) {
      pool_key(key, item, overrides, default_marks_);
    });
    apply(config_.defaults, overrides);
  }

  void timeouts(const Item& section) {
    std::vector<std::string_view> known;
    for (const auto& entry : kTimeoutKeys) known.push_back(entry.first);
    for_each_entry(section, known, [&](const std::string& key, const Item& item) {
      for (const auto& [name, member] : kTimeoutKeys) {
        if (key == name) config_.timeouts.*member = duration(item);
      }
    });
  }

  void databases(const Item& section) {
    static const std::vector<std::string_view> kDatabaseKeys =
        with_pool_keys({"host", "port", "dbname", "user", "password", "timeouts"});
    for_each_entry(section, {}, [&](const std::string& name, const Item& entry) {
      if (name.empty()) entry.fail("a database name must not be empty");
      if (name == "pgring") {
        entry.fail("the database name 'pgring' is reserved for the admin console");
      }
      Database db;
      db.name = name;
      db.dbname = name;
      PoolMarks& marks = database_marks_[name];
      for_each_entry(entry, kDatabaseKeys, [&](const std::string& key, const Item& item) {
        if (key == "host") {
          db.host = non_empty_string(item);
        } else if (key == "port") {
          db.port = port_number(item, scalar(item, "a port number"));
        } else if (key == "dbname") {
          db.dbname = non_empty_string(item);
        } else if (key == "user") {
          db.user = non_empty_string(item);
        } else if (key == "password") {
          db.password = scalar(item);
        } else if (key == "timeouts") {
          pool_timeouts(item, db.pool);
        } else if (is_pool_key(key)) {
          pool_key(key, item, db.pool, marks);
        }
      });
      config_.databases.emplace(name, std::move(db));
    });
  }

  void check_secrets() {
    // With rules, whether a user needs a password depends on the rule that matches a login: a
    // user without one is refused at login by a password rule (28P01), not here.
    const bool needs_password = config_.auth_rules.empty() && config_.auth_method != AuthMethod::trust &&
                                config_.auth_method != AuthMethod::cert;
    for (const auto& [name, user] : config_.users) {
      const std::string user_path = "users." + name;
      auto line = password_lines_.find(name);
      if (line == password_lines_.end()) {
        if (needs_password) {
          throw ConfigError(user_path, user_line(name),
                            "a password is required with auth method " +
                                std::string(to_string(config_.auth_method)));
        }
        continue;
      }
      // A SCRAM verifier cannot be derived from an md5 hash. (The reverse works: like
      // PostgreSQL, method md5 runs SCRAM for a user whose secret is a SCRAM secret.)
      if (config_.auth_rules.empty() && config_.auth_method == AuthMethod::scram_sha_256 &&
          user.secret_kind == SecretKind::md5) {
        throw ConfigError(
            user_path + ".password", line->second,
            "an md5 secret cannot be used with auth method scram-sha-256 (" +
                (auth_method_line_ > 0 ? "auth.method, line " + std::to_string(auth_method_line_)
                                       : std::string("the default")) +
                "); write the plain password or a SCRAM secret");
      }
    }
  }

  int user_line(const std::string& name) {
    auto it = user_lines_.find(name);
    return it == user_lines_.end() ? 0 : it->second;
  }

  // min_pool_size <= pool_size in every pool that can exist. Blame the most specific layer
  // that set either value, since that is where the contradiction was introduced.
  void check_pool_sizes() {
    auto violated = [](const PoolSettings& s) { return s.min_pool_size > s.pool_size; };
    auto fail = [](const PoolMarks& marks, const PoolSettings& s, const std::string& where) {
      const bool min_here = !marks.min_pool_size_path.empty();
      throw ConfigError(min_here ? marks.min_pool_size_path : marks.pool_size_path,
                        min_here ? marks.min_pool_size_line : marks.pool_size_line,
                        "min_pool_size (" + std::to_string(s.min_pool_size) +
                            ") must not exceed pool_size (" + std::to_string(s.pool_size) + ")" +
                            where);
    };
    auto sets_size = [](const PoolOverrides& p) { return p.min_pool_size || p.pool_size; };

    if (violated(config_.defaults)) fail(default_marks_, config_.defaults, "");
    for (const auto& [db_name, db] : config_.databases) {
      const PoolSettings s = config_.resolve_pool(db, nullptr);
      if (violated(s)) {
        fail(sets_size(db.pool) ? database_marks_[db_name] : default_marks_, s, "");
      }
    }
    for (const auto& [user_name, user] : config_.users) {
      if (!sets_size(user.pool)) continue;  // then every pool of this user was checked above
      for (const auto& [db_name, db] : config_.databases) {
        const PoolSettings s = config_.resolve_pool(db, &user);
        if (violated(s)) fail(user_marks_[user_name], s, " for database '" + db_name + "'");
      }
    }
  }

  Config config_;
  PoolMarks default_marks_;
  std::map<std::string, PoolMarks, std::less<>> database_marks_;
  std::map<std::string, PoolMarks, std::less<>> user_marks_;
  std::map<std::string, int, std::less<>> password_lines_;
  std::map<std::string, int, std::less<>> user_lines_;
  int auth_method_line_ = 0;
  int auth_query_line_ = 0;
  std::pair<std::string, int> cert_rule_;  // where method cert is first used
};

// Only the start of a document matters: where a second one begins.
class DocumentStarts : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override { start_ = mark; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

  [[nodiscard]] int line() const { return start_.line >= 0 ? start_.line + 1 : 0; }

 private:
  YAML::Mark start_ = YAML::Mark::null_mark();
};

// yaml-cpp's LoadAll() never returns on some malformed input (a stray ',' makes the parser
// report empty documents forever, yaml-cpp issue #1040, fixed after 0.7), so read the one
// document with Load() and then step a parser exactly twice to see whether another follows.
// Re-parsing the first document is cheap next to loading a config at startup.
YAML::Node load_single_document(const std::string& text) {
  YAML::Node root = YAML::Load(text);
  std::istringstream stream(text);
  YAML::Parser parser(stream);
  DocumentStarts events;
  if (!parser.HandleNextDocument(events)) return root;
  if (parser.HandleNextDocument(events)) {
    // Also the symptom of stray flow punctuation such as a leading ','.
    throw ConfigError("", events.line(),
                      "unexpected content after the document (only one YAML document is "
                      "allowed)");
  }
  return root;
}

}  // namespace

Config parse_config(std::string_view yaml_text) {
  YAML::Node root;
  try {
    root = load_single_document(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    throw ConfigError("", e.mark.line >= 0 ? e.mark.line + 1 : 0, e.msg);
  }
  try {
    return Loader().load(root);
  } catch (const YAML::Exception& e) {
    // Access errors on a node tree we already hold should not happen; keep the contract anyway.
    throw ConfigError("", e.mark.line >= 0 ? e.mark.line + 1 : 0, e.msg);
  }
}

Config load_config_file(const std::string& file_path) {
  std::ifstream in(file_path, std::ios::binary);
  if (!in) throw ConfigError("", 0, file_path + ": " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ConfigError("", 0, file_path + ": read error");
  return parse_config(text.str());
}

}  // namespace pgring::config
