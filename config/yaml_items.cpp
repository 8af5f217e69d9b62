// The YAML walk's building blocks: values with their path and line, typed readers that fail
// with a ConfigError naming both, and the pool keys shared by defaults, databases and users.

#include "config/yaml_items.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <string>

namespace pgring::config::yaml_items {
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

static std::size_t edit_distance(std::string_view a, std::string_view b) {
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
static std::optional<std::string_view> nearest(std::string_view word,
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

// Where PgBouncer's settings (pgbouncer.ini spellings), and pool or timeout keys written at the
// top level, live in pgring's YAML.
std::optional<std::string_view> pgring_key_for(std::string_view key) {
  static constexpr std::pair<std::string_view, std::string_view> kKeys[] = {
      {"default_pool_size", "defaults.pool_size"},
      {"max_prepared_statements", "defaults.prepared_statements"},
      {"listen_addr", "listen (a list of \"host:port\" and socket directories)"},
      {"listen_port", "listen (a list of \"host:port\" and socket directories)"},
      {"unix_socket_dir", "listen (a list of \"host:port\" and socket directories)"},
      {"auth_type", "auth.method"},
      {"auth_file", "users (each with its password or SCRAM secret)"},
      {"auth_hba_file", "auth.rules"},
      {"auth_query", "auth.query.query"},
      {"auth_user", "auth.query.user"},
      {"admin_users", "admin.users"},
      {"stats_users", "admin.stats_users"},
      {"logfile", "log (pgring logs to stderr: the journal under systemd)"},
      {"query_timeout", "timeouts.query"},
      {"query_wait_timeout", "timeouts.query_wait"},
      {"client_idle_timeout", "timeouts.client_idle"},
      {"server_idle_timeout", "timeouts.server_idle"},
      {"idle_transaction_timeout", "timeouts.idle_transaction"},
      {"server_connect_timeout", "timeouts.server_connect"},
      {"client_login_timeout", "timeouts.client_login"},
      {"reserve_pool_timeout", "timeouts.reserve_pool"},
      {"transaction_timeout", "timeouts.transaction"},
      {"client_tls_sslmode", "tls.client.mode"},
      {"client_tls_cert_file", "tls.client.cert"},
      {"client_tls_key_file", "tls.client.key"},
      {"client_tls_ca_file", "tls.client.ca"},
      {"server_tls_sslmode", "tls.server.mode"},
      {"server_tls_ca_file", "tls.server.ca"},
      {"server_tls_cert_file", "tls.server.cert"},
      {"server_tls_key_file", "tls.server.key"},
      {"tcp_keepalive", "tcp.keepalive"},
      {"tcp_keepidle", "tcp.keepalive_idle"},
      {"tcp_keepintvl", "tcp.keepalive_interval"},
      {"tcp_keepcnt", "tcp.keepalive_count"},
      {"tcp_user_timeout", "tcp.user_timeout"},
  };
  for (const auto& [theirs, ours] : kKeys)
    if (key == theirs) return ours;
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

Item make_item(std::string path, const YAML::Node& node, int fallback_line) {
  const int line = line_of(node);
  return Item{std::move(path), node, line > 0 ? line : fallback_line};
}

// "unknown key", and where the key belongs when it is a PgBouncer setting or a pgring key at
// the wrong level (PgBouncer's [pgbouncer] section is flat); else the nearest known key.
std::string unknown_key_message(std::string_view key, const std::vector<std::string_view>& known) {
  std::string message = "unknown key";
  if (auto ours = pgring_key_for(key)) {
    message += "; PgBouncer's ";
    message += key;
    message += " is ";
    message += *ours;
    message += " in pgring";
    return message;
  }
  if (is_pool_key(key)) {
    message += "; pool settings go under defaults: (or a database or a user): defaults.";
    message += key;
    return message;
  }
  for (const auto& timeout : kTimeoutKeys) {
    if (timeout.first == key) {
      message += "; timeouts go under timeouts: (timeouts.";
      message += key;
      message += ")";
      return message;
    }
  }
  return unknown_message(message, key, known);
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
      throw ConfigError(path, key_line, unknown_key_message(name, known));
    }
    if (!seen.insert(name).second) throw ConfigError(path, key_line, "duplicate key");
    // The key's line, not the value's: the path names the key, and a block value starts on a
    // later line.
    fn(name, Item{path, it->second, key_line});
  }
}

const std::string& scalar(const Item& item, std::string_view what) {
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

const std::vector<std::string_view> kPoolKeys = {"pool_mode",
                                                 "pool_size",
                                                 "min_pool_size",
                                                 "reserve_pool_size",
                                                 "max_db_connections",
                                                 "server_reset_query",
                                                 "prepared_statements",
                                                 "session_state",
                                                 "listen",
                                                 "max_db_client_connections",
                                                 "max_user_client_connections"};

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
    {"shutdown", &Timeouts::shutdown},
    {"autodb_idle", &Timeouts::autodb_idle}};

// Those a database or user may set for its own pools. client_login runs before the pool is
// known; cancel_wait and shutdown are about the process.
const std::vector<std::string_view> kPoolTimeoutKeys = {
    "server_connect", "server_login_retry", "query_wait",  "reserve_pool", "query",
    "transaction",    "idle_transaction",   "client_idle", "server_idle",  "server_lifetime"};

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
  } else if (key == "listen") {
    out.listen =
        one_of<ListenPolicy>(item, {{"shared", ListenPolicy::shared}, {"pin", ListenPolicy::pin}});
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

SecretKind secret_kind(const Item& item, const std::string& password) {
  SecretKind kind = classify_secret(password);
  // PostgreSQL would quietly take a mangled secret as a plain password; in a config file it
  // is a paste error, so say so. The value is a secret: never echo it.
  if (kind == SecretKind::none)
    item.fail(
        "malformed SCRAM secret; expected "
        "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>");
  return kind;
}

}  // namespace pgring::config::yaml_items
