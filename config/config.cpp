// YAML text -> validated Config (config/pgring.yaml is the reference).
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

std::string_view to_string(ListenPolicy policy) {
  return policy == ListenPolicy::shared ? "shared" : "pin";
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
    case ClientTlsMode::disable:
      return "disable";
    case ClientTlsMode::allow:
      return "allow";
    case ClientTlsMode::require:
      return "require";
  }
  return "unknown";
}

std::string_view to_string(ServerTlsMode mode) {
  switch (mode) {
    case ServerTlsMode::disable:
      return "disable";
    case ServerTlsMode::prefer:
      return "prefer";
    case ServerTlsMode::require:
      return "require";
    case ServerTlsMode::verify_ca:
      return "verify-ca";
    case ServerTlsMode::verify_full:
      return "verify-full";
  }
  return "unknown";
}

std::string_view to_string(Target target) {
  switch (target) {
    case Target::any:
      return "any";
    case Target::primary:
      return "primary";
    case Target::replica:
      return "replica";
    case Target::prefer_replica:
      return "prefer-replica";
  }
  return "?";
}

std::string_view to_string(LoadBalance policy) {
  return policy == LoadBalance::round_robin ? "round_robin" : "least_connections";
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

Config::AuthChoice Config::choose_auth(std::string_view database, std::string_view user,
                                       const Peer& peer) const {
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

std::optional<Database> Config::database_for(std::string_view name) const {
  if (const Database* db = find_database(name)) return *db;
  const Database* fallback = find_database(kFallbackDatabase);
  if (fallback == nullptr || name.empty()) return std::nullopt;
  Database db = *fallback;
  db.name = std::string(name);
  if (db.dbname.empty()) db.dbname = db.name;
  return db;
}

void PoolSettings::apply(const PoolOverrides& in) {
  PoolSettings& out = *this;
  if (in.pool_mode) out.pool_mode = *in.pool_mode;
  if (in.pool_size) out.pool_size = *in.pool_size;
  if (in.min_pool_size) out.min_pool_size = *in.min_pool_size;
  if (in.reserve_pool_size) out.reserve_pool_size = *in.reserve_pool_size;
  if (in.max_db_connections) out.max_db_connections = *in.max_db_connections;
  if (in.server_reset_query) out.server_reset_query = *in.server_reset_query;
  if (in.prepared_statements) out.prepared_statements = *in.prepared_statements;
  if (in.session_state) out.session_state = *in.session_state;
  if (in.listen) out.listen = *in.listen;
  if (in.max_db_client_connections) out.max_db_client_connections = *in.max_db_client_connections;
  if (in.max_user_client_connections)
    out.max_user_client_connections = *in.max_user_client_connections;
  for (const auto& [member, value] : in.timeouts) out.timeouts.*member = value;
}

PoolSettings Config::resolve_pool(const Database& db, const User* user) const {
  PoolSettings out = defaults;
  out.timeouts = timeouts;
  out.apply(db.pool);
  if (user != nullptr) out.apply(user->pool);
  return out;
}

// ---- durations and sizes ----

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

namespace {

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

namespace {
// The shape of a secret (never its value): what PostgreSQL would store.
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
}  // namespace

SecretKind classify_secret(std::string_view password) {
  // PostgreSQL's rule (isMD5 in crypt.c): "md5" and exactly 32 lowercase hex digits.
  if (password.size() == 35 && password.starts_with("md5") &&
      std::all_of(password.begin() + 3, password.end(), is_lower_hex)) {
    return SecretKind::md5;
  }
  if (password.starts_with("SCRAM-SHA-256$"))
    return looks_like_scram_secret(password) ? SecretKind::scram : SecretKind::none;
  return SecretKind::plain;
}

}  // namespace pgring::config
