#include "config/pgbouncer.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <map>

namespace pgring::config::pgbouncer {

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::vector<std::string> split_list(std::string_view s, char sep = ',') {
  std::vector<std::string> out;
  while (!s.empty()) {
    auto pos = s.find(sep);
    std::string_view item = trim(s.substr(0, pos));
    if (!item.empty()) out.emplace_back(item);
    if (pos == std::string_view::npos) break;
    s.remove_prefix(pos + 1);
  }
  return out;
}

// Splits on whitespace, keeping "double quoted" words whole (quotes removed, "" is a quote).
std::vector<std::string> words(std::string_view line, bool& ok) {
  std::vector<std::string> out;
  ok = true;
  std::size_t i = 0;
  while (i < line.size()) {
    if (std::isspace(static_cast<unsigned char>(line[i]))) {
      ++i;
      continue;
    }
    std::string word;
    bool quoted = false;
    while (i < line.size() && (quoted || !std::isspace(static_cast<unsigned char>(line[i])))) {
      if (line[i] == '"') {
        if (quoted && i + 1 < line.size() && line[i + 1] == '"') {
          word += '"';
          i += 2;
          continue;
        }
        quoted = !quoted;
        ++i;
        continue;
      }
      word += line[i++];
    }
    if (quoted) ok = false;
    out.push_back(std::move(word));
  }
  return out;
}

std::optional<bool> parse_bool(std::string_view v) {
  std::string s = lower(trim(v));
  if (s == "1" || s == "yes" || s == "on" || s == "true") return true;
  if (s == "0" || s == "no" || s == "off" || s == "false") return false;
  return std::nullopt;
}

std::optional<long long> parse_int(std::string_view v) {
  v = trim(v);
  long long n = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || end != v.data() + v.size()) return std::nullopt;
  return n;
}

// PgBouncer's times are seconds, fractions allowed ("0.5"), or a number with a unit (us, ms, s,
// min, h, d): pgring's are whole numbers with ms, s, m or h.
std::optional<std::string> duration(std::string_view v) {
  v = trim(v);
  std::size_t digits = 0;
  while (digits < v.size() &&
         (std::isdigit(static_cast<unsigned char>(v[digits])) || v[digits] == '.'))
    ++digits;
  if (digits == 0) return std::nullopt;
  double number = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + digits, number);
  if (ec != std::errc() || end != v.data() + digits || number < 0) return std::nullopt;
  std::string unit = lower(trim(v.substr(digits)));
  double ms_per_unit = 0;
  if (unit.empty() || unit == "s")
    ms_per_unit = 1000;
  else if (unit == "ms")
    ms_per_unit = 1;
  else if (unit == "us")
    ms_per_unit = 0.001;
  else if (unit == "min")
    ms_per_unit = 60'000;
  else if (unit == "h")
    ms_per_unit = 3'600'000;
  else if (unit == "d")
    ms_per_unit = 86'400'000;
  else
    return std::nullopt;
  double ms = std::round(number * ms_per_unit);
  if (ms > 9.0e15) return std::nullopt;
  if (ms == 0) return std::string("0");
  auto whole = static_cast<long long>(ms);
  if (whole % 1000 == 0) return std::to_string(whole / 1000) + "s";
  return std::to_string(whole) + "ms";
}

// A netmask ("255.255.255.0") as a prefix length, or -1.
int prefix_length(std::string_view mask) {
  std::vector<std::string> parts = split_list(mask, '.');
  if (parts.size() != 4) return -1;
  std::uint32_t bits = 0;
  for (const std::string& p : parts) {
    auto n = parse_int(p);
    if (!n || *n < 0 || *n > 255) return -1;
    bits = (bits << 8) | static_cast<std::uint32_t>(*n);
  }
  int len = 0;
  while (len < 32 && (bits & (0x80000000u >> len)) != 0) ++len;
  if (len < 32 && (bits << len) != 0) return -1;  // not contiguous
  return len;
}

// The next line of `text` (consumed), and its number in `number`; false at the end.
bool next_line(std::string_view& text, std::string_view& line, int& number) {
  if (text.empty()) return false;
  auto eol = text.find('\n');
  line = text.substr(0, eol);
  text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
  ++number;
  return true;
}

}  // namespace

Ini parse_ini(std::string_view text) {
  Ini ini;
  std::string section;
  int number = 0;
  std::string_view line;
  while (next_line(text, line, number)) {
    line = trim(line);
    if (line.empty() || line.front() == ';' || line.front() == '#') continue;
    if (line.front() == '[') {
      if (line.back() != ']') {
        ini.problems.push_back("line " + std::to_string(number) + ": unterminated section name");
        continue;
      }
      section = lower(trim(line.substr(1, line.size() - 2)));
      continue;
    }
    if (line.starts_with("%include")) {
      ini.problems.push_back("line " + std::to_string(number) +
                             ": %include is not followed; convert the included file too");
      continue;
    }
    auto eq = line.find('=');
    if (eq == std::string_view::npos || trim(line.substr(0, eq)).empty()) {
      ini.problems.push_back("line " + std::to_string(number) + ": not a 'key = value' line");
      continue;
    }
    std::string key(trim(line.substr(0, eq)));
    // Database and user names keep their case; PgBouncer's own keys do not have one.
    if (section != "databases" && section != "users" && section != "peers") key = lower(key);
    std::string value(trim(line.substr(eq + 1)));
    ini.settings.push_back({section, std::move(key), std::move(value), number});
  }
  return ini;
}

std::optional<Pairs> parse_connstr(std::string_view text) {
  Pairs out;
  std::size_t i = 0;
  auto skip_space = [&] {
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  };
  for (;;) {
    skip_space();
    if (i == text.size()) return out;
    std::size_t start = i;
    while (i < text.size() && text[i] != '=' && !std::isspace(static_cast<unsigned char>(text[i])))
      ++i;
    std::string key = lower(text.substr(start, i - start));
    skip_space();
    if (key.empty() || i == text.size() || text[i] != '=') return std::nullopt;
    ++i;
    skip_space();
    std::string value;
    if (i < text.size() && text[i] == '\'') {
      ++i;
      bool closed = false;
      while (i < text.size()) {
        char c = text[i++];
        if (c == '\\' && i < text.size()) {
          value += text[i++];
        } else if (c == '\'') {
          if (i < text.size() && text[i] == '\'') {
            value += '\'';
            ++i;
          } else {
            closed = true;
            break;
          }
        } else {
          value += c;
        }
      }
      if (!closed) return std::nullopt;
    } else {
      while (i < text.size() && !std::isspace(static_cast<unsigned char>(text[i])))
        value += text[i++];
    }
    out.emplace_back(std::move(key), std::move(value));
  }
}

std::vector<UserlistEntry> parse_userlist(std::string_view text,
                                          std::vector<std::string>& problems) {
  std::vector<UserlistEntry> out;
  int number = 0;
  std::string_view line;
  while (next_line(text, line, number)) {
    line = trim(line);
    if (line.empty() || line.front() == ';' || line.front() == '#') continue;
    bool ok = true;
    std::vector<std::string> w = words(line, ok);
    if (!ok || w.size() < 2 || line.front() != '"') {
      problems.push_back("line " + std::to_string(number) + ": not a \"user\" \"password\" line");
      continue;
    }
    out.push_back({w[0], w[1], number});
  }
  return out;
}

std::vector<HbaLine> parse_hba(std::string_view text, std::vector<std::string>& problems) {
  std::vector<HbaLine> out;
  int number = 0;
  std::string_view line;
  while (next_line(text, line, number)) {
    if (auto hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    line = trim(line);
    if (line.empty()) continue;
    bool ok = true;
    std::vector<std::string> w = words(line, ok);
    auto bad = [&](std::string_view why) {
      problems.push_back("line " + std::to_string(number) + ": " + std::string(why));
    };
    if (!ok || w.size() < 4) {
      bad("not a 'type database user [address] method' line");
      continue;
    }
    HbaLine h;
    h.line = number;
    h.type = lower(w[0]);
    h.databases = split_list(w[1]);
    h.users = split_list(w[2]);
    std::size_t next = 3;
    if (h.type != "local") {
      h.address = w[next++];
      // An address and a netmask in two words.
      if (next + 1 < w.size() && prefix_length(w[next]) >= 0 &&
          h.address.find('/') == std::string::npos) {
        h.address += "/" + std::to_string(prefix_length(w[next]));
        ++next;
      }
    }
    if (next >= w.size()) {
      bad("no authentication method");
      continue;
    }
    h.method = lower(w[next]);
    out.push_back(std::move(h));
  }
  return out;
}

namespace {

// Builds pgring's configuration from PgBouncer's, one setting at a time. Every setting either
// lands in `root` or gets a note saying why not.
class Converter {
 public:
  explicit Converter(const Sources& sources) : sources_(sources) {}

  Conversion run() {
    Ini ini = parse_ini(sources_.ini);
    for (const std::string& p : ini.problems) notes_.push_back(sources_.ini_name + ": " + p);
    // [pgbouncer] first: [databases] and [users] override what it sets.
    for (const IniSetting& s : ini.settings)
      if (s.section == "pgbouncer") general(s);
    finish_general();
    for (const IniSetting& s : ini.settings) {
      if (s.section == "pgbouncer") continue;
      if (s.section == "databases")
        database(s);
      else if (s.section == "users")
        user(s);
      else
        note(s, "section [" + s.section + "] has no pgring equivalent");
    }
    read_userlist();
    read_hba();
    if (!root_["databases"]) note_general("[databases] is empty: pgring serves no database yet");
    return {emit(), std::move(notes_)};
  }

 private:
  const Sources& sources_;
  YAML::Node root_{YAML::NodeType::Map};
  std::vector<std::string> notes_;
  std::map<std::string, std::string> general_;  // [pgbouncer] key -> value, as read
  std::map<std::string, int> general_line_;

  void note(const IniSetting& s, std::string_view why) {
    notes_.push_back(sources_.ini_name + ":" + std::to_string(s.line) + ": " +
                     (s.section == "pgbouncer" ? "" : "[" + s.section + "] ") + s.key + ": " +
                     std::string(why));
  }
  void note_general(std::string_view why) {
    notes_.push_back(sources_.ini_name + ": " + std::string(why));
  }

  static YAML::Node at(YAML::Node node, std::initializer_list<std::string_view> path) {
    // (reset() moves the handle; `node = child` would overwrite the parent's content)
    for (std::string_view key : path) node.reset(node[std::string(key)]);
    return node;
  }

  void set_duration(const IniSetting& s, std::initializer_list<std::string_view> path) {
    if (auto d = duration(s.value))
      at(root_, path) = *d;
    else
      note(s, "not a time PgBouncer accepts (seconds, or a number with a unit)");
  }
  void set_int(const IniSetting& s, std::initializer_list<std::string_view> path,
               long long min = 0) {
    auto n = parse_int(s.value);
    if (n && *n >= min)
      at(root_, path) = *n;
    else
      note(s, "not a number of at least " + std::to_string(min));
  }
  void set_bool(const IniSetting& s, std::initializer_list<std::string_view> path) {
    if (auto b = parse_bool(s.value))
      at(root_, path) = *b;
    else
      note(s, "not a boolean");
  }
  // A pool key of pgring's (defaults., databases.<db>., users.<u>.) from PgBouncer's value.
  bool pool_key(YAML::Node target, std::string_view key, const std::string& value,
                std::string& why) {
    static constexpr std::pair<std::string_view, std::string_view> kCounts[] = {
        {"pool_size", "pool_size"},
        {"default_pool_size", "pool_size"},
        {"min_pool_size", "min_pool_size"},
        {"reserve_pool", "reserve_pool_size"},
        {"reserve_pool_size", "reserve_pool_size"},
        {"max_db_connections", "max_db_connections"},
        {"max_db_client_connections", "max_db_client_connections"},
        {"max_user_client_connections", "max_user_client_connections"},
        {"max_prepared_statements", "prepared_statements"},
    };
    for (const auto& [theirs, ours] : kCounts) {
      if (key != theirs) continue;
      auto n = parse_int(value);
      if (!n || *n < 0) {
        why = "not a number";
        return false;
      }
      if (ours == "pool_size" && *n == 0) {
        why = "0 (no server connections) has no pgring equivalent: pool_size is at least 1";
        return false;
      }
      target[std::string(ours)] = *n;
      return true;
    }
    if (key == "pool_mode") {
      std::string mode = lower(value);
      if (mode != "session" && mode != "transaction" && mode != "statement") {
        why = "not session, transaction or statement";
        return false;
      }
      target["pool_mode"] = mode;
      return true;
    }
    if (key == "server_reset_query") {
      target["server_reset_query"] = value;
      return true;
    }
    if (key == "server_lifetime" || key == "server_idle_timeout" || key == "query_timeout" ||
        key == "idle_transaction_timeout" || key == "client_idle_timeout") {
      auto d = duration(value);
      if (!d) {
        why = "not a time";
        return false;
      }
      std::string ours = key == "server_lifetime"            ? "server_lifetime"
                         : key == "server_idle_timeout"      ? "server_idle"
                         : key == "query_timeout"            ? "query"
                         : key == "idle_transaction_timeout" ? "idle_transaction"
                                                             : "client_idle";
      target["timeouts"][ours] = *d;
      return true;
    }
    return false;
  }

  void general(const IniSetting& s) {
    general_[s.key] = s.value;
    general_line_[s.key] = s.line;
    const std::string& k = s.key;
    std::string why;
    if (k == "listen_addr" || k == "listen_port" || k == "unix_socket_dir" || k == "auth_type" ||
        k == "auth_file" || k == "auth_hba_file" || k == "pool_mode" || k == "max_client_conn" ||
        k == "auth_query" || k == "auth_user" || k == "auth_dbname") {
      return;  // finish_general: they depend on each other or on PgBouncer's defaults
    }
    // (Timeouts are global in pgring; databases and users may override them.)
    if (k == "server_lifetime") {
      if (duration(s.value) == "0")
        return note(s,
                    "0 means \"use each connection once\" in PgBouncer, \"no limit\" in "
                    "pgring; not converted");
      return set_duration(s, {"timeouts", "server_lifetime"});
    }
    if (k == "server_idle_timeout") return set_duration(s, {"timeouts", "server_idle"});
    if (k == "query_timeout") return set_duration(s, {"timeouts", "query"});
    if (k == "idle_transaction_timeout") return set_duration(s, {"timeouts", "idle_transaction"});
    if (k == "client_idle_timeout") return set_duration(s, {"timeouts", "client_idle"});
    if (k == "autodb_idle_timeout") return set_duration(s, {"timeouts", "autodb_idle"});
    if (k == "dns_max_ttl") return set_duration(s, {"dns", "ttl"});
    if (pool_key(root_["defaults"], k, s.value, why)) return;
    if (!why.empty()) return note(s, why);
    if (k == "server_connect_timeout") return set_duration(s, {"timeouts", "server_connect"});
    if (k == "server_login_retry") return set_duration(s, {"timeouts", "server_login_retry"});
    if (k == "client_login_timeout") return set_duration(s, {"timeouts", "client_login"});
    if (k == "query_wait_timeout") return set_duration(s, {"timeouts", "query_wait"});
    if (k == "reserve_pool_timeout") return set_duration(s, {"timeouts", "reserve_pool"});
    if (k == "transaction_timeout") return set_duration(s, {"timeouts", "transaction"});
    if (k == "cancel_wait_timeout") return set_duration(s, {"timeouts", "cancel_wait"});
    if (k == "tcp_keepalive") return set_bool(s, {"tcp", "keepalive"});
    if (k == "tcp_keepidle") return set_duration(s, {"tcp", "keepalive_idle"});
    if (k == "tcp_keepintvl") return set_duration(s, {"tcp", "keepalive_interval"});
    if (k == "tcp_keepcnt") return set_int(s, {"tcp", "keepalive_count"});
    if (k == "tcp_user_timeout") {
      // PgBouncer's is in milliseconds.
      auto n = parse_int(s.value);
      if (!n || *n < 0) return note(s, "not a number of milliseconds");
      root_["tcp"]["user_timeout"] = *n == 0 ? std::string("0s") : std::to_string(*n) + "ms";
      return;
    }
    if (k == "max_packet_size") return set_int(s, {"max_message_size"}, 1024);
    if (k == "log_connections") return set_bool(s, {"log", "connections"});
    if (k == "log_disconnections") return set_bool(s, {"log", "disconnections"});
    if (k == "logfile") {
      if (s.value.empty()) return;
      root_["log"]["file"] = s.value;
      return note(s,
                  "converted to log.file (pgring must be able to write there); under systemd, "
                  "leave it out to log to the journal");
    }
    if (k == "ignore_startup_parameters") {
      // The same list: PgBouncer refused the parameters it did not know unless listed here;
      // pgring accepts them all, but a client's parameter that was ignored stays ignored.
      YAML::Node list(YAML::NodeType::Sequence);
      for (const std::string& p : split_list(s.value))
        if (p != "user" && p != "database" && p != "replication") list.push_back(p);
      root_["ignore_startup_parameters"] = list;
      return;
    }
    if (k == "admin_users" || k == "stats_users") {
      YAML::Node list(YAML::NodeType::Sequence);
      for (const std::string& u : split_list(s.value)) list.push_back(u);
      root_["admin"][k == "admin_users" ? "users" : "stats_users"] = list;
      return;
    }
    if (k == "verbose") {
      auto n = parse_int(s.value);
      if (n && *n > 0) root_["log"]["level"] = "debug";
      return;
    }
    if (k == "client_tls_sslmode") {
      std::string m = lower(s.value);
      std::string ours = m == "disable"                                             ? "disable"
                         : m == "allow" || m == "prefer"                            ? "allow"
                         : m == "require" || m == "verify-ca" || m == "verify-full" ? "require"
                                                                                    : "";
      if (ours.empty()) return note(s, "not an sslmode PgBouncer accepts");
      root_["tls"]["client"]["mode"] = ours;
      if (m == "prefer") note(s, "prefer is allow in pgring (TLS for the clients that ask for it)");
      if (m == "verify-ca" || m == "verify-full")
        note(s,
             "converted to require; pgring verifies client certificates for auth method cert "
             "(tls.client.ca), not for every client");
      return;
    }
    if (k == "server_tls_sslmode") {
      std::string m = lower(s.value);
      std::string ours = m == "disable"                  ? "disable"
                         : m == "allow" || m == "prefer" ? "prefer"
                         : m == "require"                ? "require"
                         : m == "verify-ca"              ? "verify-ca"
                         : m == "verify-full"            ? "verify-full"
                                                         : "";
      if (ours.empty()) return note(s, "not an sslmode PgBouncer accepts");
      root_["tls"]["server"]["mode"] = ours;
      if (m == "allow") note(s, "allow is prefer in pgring (TLS first, plain text if refused)");
      return;
    }
    static constexpr std::pair<std::string_view, std::string_view> kFiles[] = {
        {"client_tls_cert_file", "client.cert"}, {"client_tls_key_file", "client.key"},
        {"client_tls_ca_file", "client.ca"},     {"server_tls_cert_file", "server.cert"},
        {"server_tls_key_file", "server.key"},   {"server_tls_ca_file", "server.ca"},
    };
    for (const auto& [theirs, ours] : kFiles) {
      if (k != theirs) continue;
      auto dot = ours.find('.');
      root_["tls"][std::string(ours.substr(0, dot))][std::string(ours.substr(dot + 1))] = s.value;
      return;
    }
    if (k == "client_tls_ciphers" || k == "server_tls_ciphers") {
      // OpenSSL's cipher list syntax on both sides (TLS 1.2 and older).
      std::string v = lower(s.value);
      if (v != "fast" && v != "normal" && v != "secure" && v != "default")
        root_["tls"][k.starts_with("client") ? "client" : "server"]["ciphers"] = s.value;
      else
        note(s, v + " is PgBouncer's own name for a cipher list; pgring keeps OpenSSL's default "
                    "(set tls.<side>.ciphers to an OpenSSL cipher list)");
      return;
    }
    if (k == "client_tls_protocols" || k == "server_tls_protocols") {
      std::string v = lower(s.value);
      std::string side = k.starts_with("client") ? "client" : "server";
      if (v == "tlsv1.3") {
        root_["tls"][side]["min_version"] = "TLSv1.3";
      } else if (v != "secure" && v != "tlsv1.2,tlsv1.3" && v != "tlsv1.2, tlsv1.3") {
        note(s, "pgring accepts TLSv1.2 and TLSv1.3 (tls." + side +
                    ".min_version); older protocols are never offered");
      }
      return;
    }
    // Settings with nothing to convert, and why.
    static constexpr std::pair<std::string_view, std::string_view> kNotes[] = {
        {"pidfile", "pgring runs in the foreground; systemd tracks the process"},
        {"user", "the systemd unit's User= sets whom pgring runs as"},
        {"syslog", "pgring logs to stderr (the journal under systemd)"},
        {"syslog_ident", "pgring logs to stderr (the journal under systemd)"},
        {"syslog_facility", "pgring logs to stderr (the journal under systemd)"},
        {"log_pooler_errors", "pgring logs the errors it sends at level info"},
        {"log_stats", "pgring exports its statistics at /metrics (metrics.listen)"},
        {"stats_period", "pgring exports its statistics at /metrics (metrics.listen)"},
        {"unix_socket_mode",
         "pgring's unix socket is created with mode 0777, as PgBouncer's "
         "default; restrict access with the directory's permissions"},
        {"unix_socket_group", "set the group of the socket directory instead"},
        {"max_user_connections",
         "pgring has no limit of server connections per user; the per-pool pool_size and the "
         "per-database max_db_connections apply"},
        {"track_extra_parameters",
         "pgring tracks every reported parameter and every SET for each client"},
        {"server_reset_query_always",
         "pgring runs server_reset_query in session mode, and in transaction mode only after a "
         "client that left session state behind"},
        {"server_check_query",
         "pgring does not test idle connections with a query; a broken one "
         "is noticed by the next client's query and replaced"},
        {"server_check_delay", "pgring does not test idle connections with a query"},
        {"server_round_robin", "pgring hands out the most recently used idle connection (LIFO)"},
        {"server_fast_close",
         "not supported: session-mode connections close when the client "
         "leaves"},
        {"disable_pqexec", "not supported"},
        {"application_name_add_host", "not supported"},
        {"suspend_timeout", "pgring has no online restart (SUSPEND)"},
        {"dns_nxdomain_ttl",
         "pgring looks a name up again every dns.ttl and when a connect to it fails"},
        {"dns_zone_check_period", "not supported"},
        {"resolv_conf", "pgring uses the system resolver"},
        {"listen_backlog", "pgring listens with the system's maximum backlog"},
        {"so_reuseport", "pgring's reactor threads share one listening socket"},
        {"pkt_buf", "pgring sizes its buffers itself"},
        {"sbuf_loopcnt", "pgring sizes its buffers itself"},
        {"tcp_defer_accept", "not supported"},
        {"tcp_socket_buffer", "pgring keeps the kernel's socket buffer sizes"},
        {"client_tls_ecdhcurve", "pgring uses OpenSSL's default curves"},
        {"client_tls_dheparams", "pgring uses OpenSSL's defaults"},
        {"client_tls13_ciphers", "pgring uses OpenSSL's default cipher list"},
        {"server_tls13_ciphers", "pgring uses OpenSSL's default cipher list"},
        {"peer_id", "pgring has no peers: one process serves every core"},
        {"service_name", "Windows only"},
        {"job_name", "Windows only"},
        {"conffile", "pgring is given its configuration with --config"},
        {"auth_ident_file", "pgring has no peer/ident authentication"},
        {"auth_ldap_options", "pgring has no LDAP authentication"},
        {"query_wait_notify", "pgring sends no notice to a client waiting for a server"},
        {"scram_iterations", "not configurable in pgring"},
    };
    for (const auto& [theirs, why_not] : kNotes)
      if (k == theirs) return note(s, why_not);
    note(s, "not a PgBouncer setting pgring knows");
  }

  const std::string* general(std::string_view key) const {
    auto it = general_.find(std::string(key));
    return it == general_.end() ? nullptr : &it->second;
  }
  IniSetting general_setting(std::string_view key) const {
    auto line = general_line_.find(std::string(key));
    return {"pgbouncer", std::string(key), general(key) ? *general(key) : std::string(),
            line == general_line_.end() ? 0 : line->second};
  }

  // The settings whose meaning depends on others, or whose PgBouncer default differs from
  // pgring's (written explicitly, so the converted pooler behaves as the old one did).
  void finish_general() {
    // listen: listen_addr (a comma list, "*" for every IPv4 address) on listen_port, and the unix
    // socket directory (PgBouncer's default /tmp; "" disables it).
    std::string port = general("listen_port") ? *general("listen_port") : "6432";
    if (!parse_int(port)) {
      note(general_setting("listen_port"), "not a port number; 6432 used");
      port = "6432";
    }
    YAML::Node listen(YAML::NodeType::Sequence);
    if (const std::string* addrs = general("listen_addr")) {
      for (std::string a : split_list(*addrs)) {
        if (a == "*") {
          a = "0.0.0.0";
          note(general_setting("listen_addr"),
               "* is 0.0.0.0 (IPv4); add \"[::]:" + port + "\" to listen for IPv6 too");
        } else if (a == "localhost") {
          a = "127.0.0.1";
        }
        listen.push_back(a.find(':') != std::string::npos ? "[" + a + "]:" + port : a + ":" + port);
      }
    }
    std::string socket_dir = general("unix_socket_dir") ? *general("unix_socket_dir") : "/tmp";
    if (!socket_dir.empty()) listen.push_back(socket_dir);
    if (!general("listen_addr") && port != "6432")
      note(general_setting("listen_port"),
           "with no listen_addr, pgring names its unix socket .s.PGSQL.6432 (after the first TCP "
           "listen entry's port when there is one)");
    if (listen.size() == 0)
      note_general(
          "no listen_addr and no unix_socket_dir: pgring listens "
          "on its default, 127.0.0.1:6432");
    else
      root_["listen"] = listen;

    // PgBouncer's defaults where pgring's differ.
    long long max_client_conn = 100;
    if (const std::string* v = general("max_client_conn")) {
      auto n = parse_int(*v);
      if (n && *n > 0)
        max_client_conn = *n;
      else
        note(general_setting("max_client_conn"), "not a positive number; 100 used");
    }
    root_["max_client_conn"] = max_client_conn;
    std::string mode = general("pool_mode") ? lower(*general("pool_mode")) : "session";
    if (mode != "session" && mode != "transaction" && mode != "statement") {
      note(general_setting("pool_mode"), "not session, transaction or statement; session used");
      mode = "session";
    }
    root_["defaults"]["pool_mode"] = mode;

    // auth_type: md5 by default in PgBouncer.
    std::string type = general("auth_type") ? lower(*general("auth_type")) : "md5";
    IniSetting type_setting = general_setting("auth_type");
    if (type == "trust" || type == "md5" || type == "scram-sha-256" || type == "cert") {
      root_["auth"]["method"] = type;
    } else if (type == "plain") {
      root_["auth"]["method"] = "md5";
      note(type_setting, "plain (clear-text passwords on the wire) is md5 in pgring");
    } else if (type == "any") {
      root_["auth"]["method"] = "trust";
      note(type_setting, "any is trust in pgring; the user name the client gives is the one used");
    } else if (type == "hba") {
      root_["auth"]["method"] = "md5";  // for clients no rule sends elsewhere (never used)
      hba_wanted_ = true;
    } else {
      root_["auth"]["method"] = "scram-sha-256";
      note(type_setting, type + " is not supported by pgring; scram-sha-256 used");
    }

    // auth_query: pgring's looks secrets up as auth_user, on auth_dbname if set.
    if (general("auth_dbname") && !general("auth_user"))
      note(general_setting("auth_dbname"), "used with auth_user only; not converted");
    if (general("auth_hba_file") && type != "hba" && !sources_.hba)
      note(general_setting("auth_hba_file"), "used with auth_type = hba only; not converted");
    if (general("auth_user") || general("auth_query")) {
      if (!general("auth_user")) {
        note(general_setting("auth_query"),
             "auth_query needs auth_user in pgring (auth.query.user); not converted");
      } else if (!user_has_password(*general("auth_user"))) {
        note(general_setting("auth_user"),
             "has no password in the auth_file (pass it with --userlist): auth.query not "
             "converted; add users." +
                 *general("auth_user") + ".password and auth.query");
      } else {
        YAML::Node q = root_["auth"]["query"];
        q["user"] = *general("auth_user");
        if (general("auth_query"))
          q["query"] = *general("auth_query");
        else
          q["query"] = "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1";
        if (general("auth_dbname")) q["database"] = *general("auth_dbname");
      }
    }
  }

  bool hba_wanted_ = false;

  // A plain-text password (auth.query's user logs in to the server with it).
  bool user_has_password(const std::string& name) const {
    if (!sources_.userlist) return false;
    std::vector<std::string> ignored;
    for (const UserlistEntry& e : parse_userlist(*sources_.userlist, ignored))
      if (e.user == name)
        return !e.secret.empty() && !e.secret.starts_with("SCRAM-SHA-256$") &&
               !(e.secret.size() == 35 && e.secret.starts_with("md5"));
    return false;
  }

  void database(const IniSetting& s) {
    auto pairs = parse_connstr(s.value);
    if (!pairs) return note(s, "not a 'key=value ...' connection string; not converted");
    YAML::Node db = root_["databases"][s.key];
    db["host"] = "127.0.0.1";  // replaced below, or PgBouncer's default unix socket noted
    bool have_host = false;
    std::vector<std::string> hosts;
    for (const auto& [key, value] : *pairs) {
      std::string why;
      if (key == "host") {
        hosts = split_list(value);
        if (hosts.empty()) continue;
        db["host"] = hosts.front();
        have_host = true;
      } else if (key == "port") {
        auto n = parse_int(value);
        if (n && *n > 0 && *n < 65536)
          db["port"] = *n;
        else
          note(s, "port " + value + " is not a port number");
      } else if (key == "dbname") {
        db["dbname"] = value;
      } else if (key == "user") {
        db["user"] = value;
      } else if (key == "password") {
        db["password"] = value;
      } else if (pool_key(db, key, value, why)) {
      } else if (!why.empty()) {
        note(s, key + ": " + why);
      } else if (key == "auth_user" || key == "auth_query" || key == "auth_dbname") {
        note(s, key + ": pgring's auth.query is one for every database");
      } else if (key == "client_encoding" || key == "datestyle" || key == "timezone" ||
                 key == "application_name") {
        note(s, key + ": pgring does not set it on server connections; use ALTER DATABASE " +
                    s.key + " SET " + key + " = ...");
      } else if (key == "connect_query") {
        note(s,
             "connect_query: not supported (run it with ALTER DATABASE/ROLE ... SET, or in "
             "the application)");
      } else if (key == "load_balance_hosts") {
        // round-robin spreads connections as pgring's round_robin does; disable (the first
        // host that answers) has no exact equivalent: least_connections spreads them too.
        if (value == "round-robin")
          db["load_balance"] = "round_robin";
        else
          note(s, "load_balance_hosts=" + value +
                      ": pgring spreads connections over the hosts (load_balance: "
                      "least_connections); set target: primary for one writable host");
      } else {
        note(s, key + ": not a database setting pgring knows");
      }
    }
    if (hosts.size() > 1) {
      // Several hosts: pgring's hosts: list, with the port (PgBouncer's one port for all).
      YAML::Node list(YAML::NodeType::Sequence);
      std::string port = db["port"] ? db["port"].as<std::string>() : "5432";
      for (const std::string& h : hosts)
        list.push_back(h.starts_with('/')                 ? h
                       : h.find(':') != std::string::npos ? "[" + h + "]:" + port
                                                          : h + ":" + port);
      db.remove("host");
      db.remove("port");
      db["hosts"] = list;
    }
    if (!have_host)
      note(s,
           "no host: PgBouncer connects over its default unix socket, pgring to 127.0.0.1; "
           "set host to the socket directory (e.g. /var/run/postgresql) if that is meant");
  }

  void user(const IniSetting& s) {
    auto pairs = parse_connstr(s.value);
    if (!pairs) return note(s, "not a 'key=value ...' list; not converted");
    // Without a password in the userlist the entry holds settings only: as in PgBouncer, the
    // secret comes from auth.query (or the login fails).
    YAML::Node u = root_["users"][s.key];
    for (const auto& [key, value] : *pairs) {
      std::string why;
      if (pool_key(u, key, value, why)) continue;
      if (!why.empty())
        note(s, key + ": " + why);
      else if (key == "max_user_connections")
        note(s, "max_user_connections: pgring has no limit of server connections per user");
      else
        note(s, key + ": not a user setting pgring knows");
    }
  }

  void read_userlist() {
    if (!sources_.userlist) {
      if (general("auth_file"))
        note(general_setting("auth_file"),
             "its users were not converted: pass the file with --userlist");
      return;
    }
    std::vector<std::string> problems;
    for (const UserlistEntry& e : parse_userlist(*sources_.userlist, problems)) {
      YAML::Node u = root_["users"][e.user];
      u["password"] = e.secret;
    }
    for (const std::string& p : problems) notes_.push_back(sources_.userlist_name + ": " + p);
  }

  void read_hba() {
    if (!hba_wanted_) {
      if (sources_.hba)
        note_general("--hba given but auth_type is not hba: its rules are converted anyway");
      else
        return;
    }
    if (!sources_.hba) {
      note(general_setting("auth_type"),
           "hba: the rules were not converted (pass auth_hba_file with --hba); every client "
           "logs in with md5 meanwhile");
      return;
    }
    std::vector<std::string> problems;
    YAML::Node rules(YAML::NodeType::Sequence);
    auto hba_note = [&](const HbaLine& h, std::string_view why) {
      notes_.push_back(sources_.hba_name + ":" + std::to_string(h.line) + ": " + std::string(why));
    };
    for (const HbaLine& h : parse_hba(*sources_.hba, problems)) {
      YAML::Node rule(YAML::NodeType::Map);
      auto names = [&](const std::vector<std::string>& list, std::string_view what) -> bool {
        if (list.size() == 1 && list[0] == "all") return true;
        YAML::Node out(YAML::NodeType::Sequence);
        for (const std::string& n : list) {
          if (n == "sameuser" || n == "samerole" || n == "replication" || n.starts_with("+") ||
              n.starts_with("@")) {
            hba_note(h, std::string(what) + " " + n + " is not supported; rule left out");
            return false;
          }
          out.push_back(n);
        }
        rule[std::string(what)] = out.size() == 1 ? YAML::Node(out[0]) : out;
        return true;
      };
      if (!names(h.databases, "database") || !names(h.users, "user")) continue;
      if (h.type == "local") {
        rule["address"] = "local";
      } else if (h.type == "host" || h.type == "hostssl" || h.type == "hostnossl") {
        if (h.address == "samehost" || h.address == "samenet") {
          hba_note(h, h.address + " is not supported; rule left out");
          continue;
        }
        if (h.address != "all") rule["address"] = h.address;
        if (h.type == "hostssl") rule["tls"] = true;
        if (h.type == "hostnossl") rule["tls"] = false;
      } else {
        hba_note(h, "type " + h.type + " is not supported; rule left out");
        continue;
      }
      std::string method = h.method;
      if (method == "password") {
        method = "md5";
        hba_note(h, "password (clear text) is md5 in pgring");
      } else if (method == "peer" || method == "ident" || method == "pam" || method == "ldap" ||
                 method == "gss" || method == "sspi" || method == "radius") {
        hba_note(h, method + " is not supported: the rule rejects its clients");
        method = "reject";
      } else if (method != "trust" && method != "reject" && method != "md5" &&
                 method != "scram-sha-256" && method != "cert") {
        hba_note(h, "method " + method + " is not known; rule left out");
        continue;
      }
      rule["method"] = method;
      rules.push_back(rule);
    }
    for (const std::string& p : problems) notes_.push_back(sources_.hba_name + ": " + p);
    root_["auth"]["rules"] = rules;
  }

  std::string emit() const {
    // In the order of config/pgring.yaml.
    YAML::Node ordered(YAML::NodeType::Map);
    for (const char* key :
         {"listen", "max_client_conn", "max_message_size", "ignore_startup_parameters", "tcp",
          "log", "admin", "auth", "tls", "users", "defaults", "timeouts", "dns", "databases"})
      if (root_[key]) ordered[key] = root_[key];
    YAML::Emitter out;
    out << ordered;
    std::string text = "# pgring configuration converted from " + sources_.ini_name +
                       " by `pgring convert-pgbouncer`.\n";
    if (notes_.empty()) {
      text += "# Every setting was converted.\n";
    } else {
      text += "# Not converted (or converted with a difference):\n";
      for (const std::string& n : notes_) text += "#   " + n + "\n";
    }
    text += out.c_str();
    text += "\n";
    return text;
  }
};

}  // namespace

Conversion convert(const Sources& sources) {
  return Converter(sources).run();
}

}  // namespace pgring::config::pgbouncer
