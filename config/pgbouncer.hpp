#pragma once
// PgBouncer's configuration, read to be converted into pgring's YAML (`pgring convert-pgbouncer`):
// pgbouncer.ini, its auth_file (userlist.txt) and its auth_hba_file. Pure: texts in, YAML text and
// the list of what could not be converted out; the command line reads and writes the files.

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgring::config::pgbouncer {

// One `key = value` line of an ini file. Section and key are lower-cased (PgBouncer compares
// them so), except keys of [databases] and [users], which are names.
struct IniSetting {
  std::string section;
  std::string key;
  std::string value;  // surrounding spaces removed
  int line = 0;
};
struct Ini {
  std::vector<IniSetting> settings;
  std::vector<std::string> problems;  // "line N: ..." for lines that are not settings
};
[[nodiscard]] Ini parse_ini(std::string_view text);

// A [databases] or [users] value: libpq-style `key=value` pairs separated by spaces, a value in
// single quotes may hold spaces ('' or \' for a quote). Null when malformed.
using Pairs = std::vector<std::pair<std::string, std::string>>;
[[nodiscard]] std::optional<Pairs> parse_connstr(std::string_view text);

// auth_file: `"user" "secret"` per line ("" inside quotes is one quote); `;` starts a comment.
struct UserlistEntry {
  std::string user;
  std::string secret;  // plain text, md5..., or SCRAM-SHA-256$...
  int line = 0;
};
[[nodiscard]] std::vector<UserlistEntry> parse_userlist(std::string_view text,
                                                        std::vector<std::string>& problems);

// auth_hba_file, pg_hba.conf's format: `local|host|hostssl|hostnossl database user [address
// [mask]] method [options]`; `#` starts a comment.
struct HbaLine {
  std::string type;
  std::vector<std::string> databases;  // comma-separated in the file
  std::vector<std::string> users;
  std::string address;  // CIDR, "all", or "" for local
  std::string method;
  int line = 0;
};
[[nodiscard]] std::vector<HbaLine> parse_hba(std::string_view text,
                                             std::vector<std::string>& problems);

struct Sources {
  std::string_view ini;
  std::string ini_name = "pgbouncer.ini";  // for the notes: "pgbouncer.ini:12: ..."
  std::optional<std::string_view> userlist;
  std::string userlist_name = "userlist.txt";
  std::optional<std::string_view> hba;
  std::string hba_name = "hba.conf";
};
struct Conversion {
  std::string yaml;  // pgring's configuration, with the notes as comments at the top
  // Every setting that was not converted, and why: "pgbouncer.ini:12: server_check_query: ..."
  std::vector<std::string> notes;
};
[[nodiscard]] Conversion convert(const Sources& sources);

}  // namespace pgring::config::pgbouncer
