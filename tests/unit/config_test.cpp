// config/: YAML text in, validated Config or a ConfigError naming path and line out.

#include "config/config.hpp"

#include <doctest/doctest.h>
#include <netinet/in.h>

#include <fstream>
#include <string>

using namespace pgring::config;
using namespace std::chrono_literals;

namespace {

// Parses text that must fail and returns the error, so a case can check path, line and message.
ConfigError error_of(std::string_view yaml) {
  try {
    (void)parse_config(yaml);
  } catch (const ConfigError& e) {
    return e;
  }
  FAIL("expected a ConfigError for:\n" << yaml);
  return ConfigError("", 0, "unreachable");
}

void check_error(std::string_view yaml, const std::string& path, int line,
                 const std::string& message_part) {
  const ConfigError e = error_of(yaml);
  const std::string what = e.what();
  CAPTURE(what);
  CHECK(e.path() == path);
  CHECK(e.line() == line);
  CHECK(e.message().find(message_part) != std::string::npos);
}

}  // namespace

TEST_CASE("config: PgBouncer's settings and keys at the wrong level say where they go") {
  check_error("default_pool_size: 20\n", "default_pool_size", 1,
              "unknown key; PgBouncer's default_pool_size is defaults.pool_size in pgring");
  check_error("listen_port: 6432\n", "listen_port", 1, "is listen (a list of");
  check_error("auth_type: md5\n", "auth_type", 1, "is auth.method in pgring");
  check_error("query_wait_timeout: 5\n", "query_wait_timeout", 1, "is timeouts.query_wait");
  check_error("pool_mode: transaction\n", "pool_mode", 1,
              "pool settings go under defaults: (or a database or a user): defaults.pool_mode");
  check_error("server_lifetime: 1h\n", "server_lifetime", 1,
              "timeouts go under timeouts: (timeouts.server_lifetime)");
  check_error("timeouts:\n  pool_size: 3\n", "timeouts.pool_size", 2, "defaults.pool_size");
}

TEST_CASE("config: a database password needs the database's user") {
  check_error("databases:\n  app:\n    host: h\n    password: x\n", "databases.app.password", 4,
              "a password is the forced user's: set databases.app.user too");
  CHECK(parse_config("databases:\n  app: {user: u, password: x}\n").databases.size() == 1);
}

TEST_CASE("config: tcp keepalive and user timeout") {
  const Config c = parse_config(
      "tcp: {keepalive_idle: 30s, keepalive_interval: 5s, keepalive_count: 4, user_timeout: 1m}\n");
  CHECK(c.tcp.keepalive);
  CHECK(c.tcp.keepalive_idle == std::chrono::seconds(30));
  CHECK(c.tcp.keepalive_interval == std::chrono::seconds(5));
  CHECK(c.tcp.keepalive_count == 4);
  CHECK(c.tcp.user_timeout == std::chrono::minutes(1));
  CHECK_FALSE(parse_config("tcp: {keepalive: false}\n").tcp.keepalive);
  check_error("tcp:\n  keepalive: yes please\n", "tcp.keepalive", 2, "must be true or false");
  check_error("tcp:\n  keepalive_count: 1000\n", "tcp.keepalive_count", 2, "");
}

TEST_CASE("config: a tab in the indentation is named as such") {
  const ConfigError e = error_of("databases:\n  app:\n\thost: x\n");
  const std::string what = e.what();
  CAPTURE(what);
  CHECK(what.find("line 3 indents with a tab: YAML indents with spaces") != std::string::npos);
}

TEST_CASE("config: warnings for what is valid but serves nothing") {
  CHECK(config_warnings(parse_config("")).size() == 1);
  CHECK(config_warnings(parse_config("listen: [\"127.0.0.1:6432\"]\n"))[0].starts_with(
      "databases: none configured"));
  CHECK(config_warnings(parse_config("databases:\n  app: {host: h}\n")).empty());
}

TEST_CASE("config: an empty file or only comments gives all defaults") {
  for (std::string_view text : {"", "\n\n", "# nothing here\n  # indented comment\n", "---\n"}) {
    CAPTURE(text);
    const Config c = parse_config(text);
    REQUIRE(c.listen.size() == 1);
    CHECK(c.listen[0].host == "127.0.0.1");
    CHECK(c.listen[0].port == 6432);
    CHECK(c.workers == 0);
    CHECK(c.max_client_conn == 10000);
    CHECK(c.max_message_size == 64u << 20);
    CHECK(c.log_level == LogLevel::info);
    CHECK(c.log_format == LogFormat::text);
    CHECK_FALSE(c.metrics_listen.has_value());
    CHECK(c.admin_users.empty());
    CHECK(c.auth_method == AuthMethod::scram_sha_256);
    CHECK(c.users.empty());
    CHECK(c.databases.empty());
    CHECK(c.defaults.pool_mode == PoolMode::transaction);
    CHECK(c.defaults.pool_size == 20);
    CHECK(c.defaults.server_reset_query == "DISCARD ALL");
    CHECK(c.defaults.prepared_statements == 200);
    CHECK(c.timeouts.client_login == 60s);
    CHECK(c.timeouts.query == 0ms);
    CHECK(c.timeouts.server_lifetime == 3600s);
  }
}

TEST_CASE("config: a full example parses") {
  const Config c = parse_config(R"(listen:
  - "0.0.0.0:6432"
  - "[::1]:6433"
  - /var/run/pgring/
workers: 4
max_client_conn: 500
max_message_size: 256KiB
log: {level: debug, format: json}
metrics: {listen: "[::]:9930"}
admin: {users: [pgring_admin, root], stats_users: monitor}
auth: {method: md5}
users:
  app: {password: "secret", pool_size: 5}
  hashed: {password: "md5e5e28e3b4bfe8a54d4e3a05b1c9be7a9"}
  scrammed:
    password: "SCRAM-SHA-256$4096:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA="
defaults:
  pool_mode: session
  pool_size: 10
  min_pool_size: 2
  reserve_pool_size: 3
  max_db_connections: 50
  server_reset_query: ""
  prepared_statements: 0
timeouts:
  query_wait: 2m
  query: 250ms
  server_idle: 1h
  shutdown: 0
databases:
  app:
    host: db.internal
    port: 5433
    dbname: app_prod
    user: app_owner
    password: "s3cret"
    pool_mode: statement
  local: {host: /var/run/postgresql}
  bare:
)");
  REQUIRE(c.listen.size() == 3);
  CHECK(c.listen[0].host == "0.0.0.0");
  CHECK(c.listen[1].host == "::1");
  CHECK(c.listen[1].port == 6433);
  CHECK(c.listen[2].host.empty());
  CHECK(c.listen[2].unix_dir == "/var/run/pgring");  // trailing slash dropped
  CHECK(c.listen[2].port == 6432);                   // named after the first TCP entry
  CHECK(c.workers == 4);
  CHECK(c.max_client_conn == 500);
  CHECK(c.max_message_size == 256u * 1024);
  CHECK(c.log_level == LogLevel::debug);
  CHECK(c.log_format == LogFormat::json);
  REQUIRE(c.metrics_listen.has_value());
  CHECK(c.metrics_listen->host == "::");
  CHECK(c.metrics_listen->port == 9930);
  CHECK(c.admin_users == std::vector<std::string>{"pgring_admin", "root"});
  CHECK(c.stats_users == std::vector<std::string>{"monitor"});
  CHECK(c.auth_method == AuthMethod::md5);
  REQUIRE(c.find_user("app") != nullptr);
  CHECK(c.find_user("app")->secret_kind == SecretKind::plain);
  CHECK(c.find_user("app")->pool.pool_size == 5);
  CHECK(c.find_user("hashed")->secret_kind == SecretKind::md5);
  CHECK(c.find_user("scrammed")->secret_kind == SecretKind::scram);
  CHECK(c.find_user("nobody") == nullptr);
  CHECK(c.defaults.pool_mode == PoolMode::session);
  CHECK(c.defaults.min_pool_size == 2);
  CHECK(c.defaults.reserve_pool_size == 3);
  CHECK(c.defaults.max_db_connections == 50);
  CHECK(c.defaults.server_reset_query.empty());
  CHECK(c.defaults.prepared_statements == 0);
  CHECK(c.timeouts.query_wait == 120s);
  CHECK(c.timeouts.query == 250ms);
  CHECK(c.timeouts.reserve_pool == 5s);  // default kept
  CHECK(c.timeouts.server_idle == 1h);
  CHECK(c.timeouts.shutdown == 0ms);
  CHECK(c.timeouts.client_login == 60s);  // untouched keys keep their default
  const Database* app = c.find_database("app");
  REQUIRE(app != nullptr);
  CHECK(app->host == "db.internal");
  CHECK(app->port == 5433);
  CHECK(app->dbname == "app_prod");
  CHECK(app->user == "app_owner");
  CHECK(app->password == "s3cret");
  CHECK(app->pool.pool_mode == PoolMode::statement);
  CHECK(c.find_database("local")->host == "/var/run/postgresql");
  const Database* bare = c.find_database("bare");
  REQUIRE(bare != nullptr);
  CHECK(bare->dbname == "bare");
  CHECK(bare->host == "127.0.0.1");
  CHECK(bare->port == 5432);
  CHECK_FALSE(bare->user.has_value());
  CHECK(c.find_database("pgring") == nullptr);
}

TEST_CASE("config: a single listen string, workers auto, user with no settings") {
  const Config c = parse_config(
      "listen: /tmp\nworkers: auto\nauth: {method: trust}\nusers:\n  anyone:\n  other: {}\n");
  REQUIRE(c.listen.size() == 1);
  CHECK(c.listen[0].unix_dir == "/tmp");
  CHECK(c.listen[0].port == 6432);  // no TCP entry: the default port
  CHECK(c.workers == 0);
  REQUIRE(c.find_user("anyone") != nullptr);
  CHECK(c.find_user("anyone")->secret_kind == SecretKind::none);
  CHECK(c.find_user("other") != nullptr);
}

TEST_CASE("config: the message format is 'path (line N): message'") {
  const ConfigError e = error_of(R"(databases:
  app:
    host: 127.0.0.1
    pool_size: 0
)");
  CHECK(std::string(e.what()) == "databases.app.pool_size (line 4): must be a positive integer");
  CHECK(e.path() == "databases.app.pool_size");
  CHECK(e.line() == 4);
  CHECK(e.message() == "must be a positive integer");
  CHECK(std::string(ConfigError("", 3, "bad").what()) == "line 3: bad");
  CHECK(std::string(ConfigError("", 0, "f.yaml: gone").what()) == "f.yaml: gone");
  CHECK(std::string(ConfigError("a.b", 0, "bad").what()) == "a.b: bad");
}

TEST_CASE("config: wrong types name their path and line") {
  check_error("workers: 2\nlog:\n  level: [debug]\n", "log.level", 3, "expected one of debug");
  check_error("log: verbose\n", "log", 1, "expected a map, got a scalar");
  check_error("databases:\n  app: {host: {a: 1}}\n", "databases.app.host", 2,
              "expected a string, got a map");
  check_error("admin:\n  users:\n    - ok\n    - {name: x}\n", "admin.users[1]", 4,
              "expected a string");
  check_error("timeouts:\n  query: [1s]\n", "timeouts.query", 2, "expected a duration");
  check_error("max_client_conn: many\n", "max_client_conn", 1, "must be a positive integer");
  check_error("- a\n- b\n", "", 1, "top level must be a map");
  check_error("users:\n  bob: {password: }\n", "users.bob.password", 2, "got nothing");
}

TEST_CASE("config: out of range values") {
  check_error("workers: 65\n", "workers", 1, "at most 64");
  check_error("workers: 0\n", "workers", 1, "'auto' or a positive integer");
  check_error("workers: -3\n", "workers", 1, "'auto' or a positive integer");
  check_error("max_client_conn: 99999999999999999999\n", "max_client_conn", 1, "at most");
  check_error("defaults:\n  min_pool_size: -1\n", "defaults.min_pool_size", 2,
              "must be a non-negative integer");
  check_error("databases:\n  app:\n    port: 70000\n", "databases.app.port", 3,
              "between 1 and 65535");
  check_error("databases:\n  app:\n    port: 0\n", "databases.app.port", 3, "between 1 and 65535");
  check_error("max_message_size: 512\n", "max_message_size", 1, "between 1KiB and 1GiB");
  check_error("max_message_size: 2GiB\n", "max_message_size", 1, "between 1KiB and 1GiB");
  check_error("max_message_size: 64 MiB\n", "max_message_size", 1, "must be a size");
  check_error("timeouts:\n  query: 100000h\n", "timeouts.query", 2, "at most 8760h");
}

TEST_CASE("config: unknown keys suggest the nearest known key") {
  const ConfigError e = error_of("listen: [\"127.0.0.1:6432\"]\ndefaults:\n  pool_sise: 3\n");
  CHECK(std::string(e.what()) ==
        "defaults.pool_sise (line 3): unknown key; did you mean 'pool_size'?");
  check_error("timeout:\n  query: 1s\n", "timeout", 1, "did you mean 'timeouts'?");
  check_error("databases:\n  app:\n    hozt: x\n", "databases.app.hozt", 3, "did you mean 'host'?");
  check_error("users:\n  app:\n    passwd: x\n", "users.app.passwd", 3, "did you mean 'password'?");
  check_error("timeouts:\n  idle_in_transaction: 1s\n", "timeouts.idle_in_transaction", 2,
              "unknown key");
  const ConfigError far = error_of("\n\nzzzzzzzzzz: 1\n");
  CHECK(far.path() == "zzzzzzzzzz");
  CHECK(far.line() == 3);
  CHECK(far.message() == "unknown key");
}

TEST_CASE("config: enum values") {
  check_error("defaults:\n  pool_mode: sesion\n", "defaults.pool_mode", 2,
              "must be one of session, transaction, statement; did you mean 'session'?");
  check_error("databases:\n  a: {pool_mode: Transaction}\n", "databases.a.pool_mode", 2,
              "did you mean 'transaction'?");
  check_error("auth:\n  method: scram\n", "auth.method", 2,
              "trust, reject, md5, scram-sha-256, cert");
  check_error("log: {format: xml}\n", "log.format", 1, "must be one of text, json");
  check_error("log: {level: warn}\n", "log.level", 1, "did you mean 'warning'?");
  check_error("defaults:\n  session_state: pinned\n", "defaults.session_state", 2,
              "must be one of pin, error; did you mean 'pin'?");
  check_error("databases:\n  a: {listen: fanout}\n", "databases.a.listen", 2,
              "must be one of shared, pin");
}

TEST_CASE("config: durations need a unit") {
  check_error("timeouts:\n  query_wait: 120\n", "timeouts.query_wait", 2,
              "needs a unit: write e.g. '120s' or '120ms'");
  check_error("timeouts:\n  query_wait: 1.5s\n", "timeouts.query_wait", 2,
              "must be a duration like 250ms");
  check_error("timeouts:\n  query_wait: -5s\n", "timeouts.query_wait", 2, "must be a duration");
  check_error("timeouts:\n  query_wait:\n", "timeouts.query_wait", 2, "got nothing");
  CHECK(
      parse_config("timeouts: {query_wait: 0, query: 0s, server_idle: 0ms}").timeouts.query_wait ==
      0ms);
}

TEST_CASE("config: bad listen entries") {
  check_error("listen: []\n", "listen", 1, "at least one listen entry");
  check_error("listen:\n", "listen", 1, "at least one listen entry");
  check_error("listen:\n  - \"127.0.0.1:6432\"\n  - localhost\n", "listen[1]", 3,
              "expected host:port");
  check_error("listen: [\"127.0.0.1:0\"]\n", "listen[0]", 1, "between 1 and 65535");
  check_error("listen: [\"127.0.0.1:http\"]\n", "listen[0]", 1, "between 1 and 65535");
  check_error("listen: [\"::1:6432\"]\n", "listen[0]", 1, "needs brackets: [::1]:6432");
  check_error("listen: [\"[::g]:6432\"]\n", "listen[0]", 1, "not an IPv6 address");
  check_error("listen: [\"[::1]6432\"]\n", "listen[0]", 1, "expected host:port");
  check_error("listen: [\":6432\"]\n", "listen[0]", 1, "host is missing");
  check_error("listen: [relative/dir]\n", "listen[0]", 1, "expected host:port");
  check_error("listen: [\"127.0.0.1:6432\", \"127.0.0.1:6432\"]\n", "listen[1]", 1,
              "duplicate listen address");
  check_error("listen: [\"/" + std::string(100, 'd') + "\"]\n", "listen[0]", 1, "too long");
  check_error("metrics: {listen: /tmp}\n", "metrics.listen", 1, "not supported here");
}

TEST_CASE("config: min_pool_size must not exceed the resolved pool_size") {
  check_error("defaults:\n  pool_size: 5\n  min_pool_size: 6\n", "defaults.min_pool_size", 3,
              "min_pool_size (6) must not exceed pool_size (5)");
  // The database lowers pool_size below the default min: blame the database's pool_size.
  check_error("defaults: {min_pool_size: 10}\ndatabases:\n  app:\n    pool_size: 4\n",
              "databases.app.pool_size", 4, "must not exceed pool_size (4)");
  // Only one database meets the user's min: blame the user, name the database.
  check_error(R"(auth: {method: trust}
users:
  bob:
    min_pool_size: 15
databases:
  big: {pool_size: 30}
  small: {pool_size: 10}
)",
              "users.bob.min_pool_size", 4, "for database 'small'");
  // Each layer alone is fine and so is every resolved pool.
  CHECK_NOTHROW((void)parse_config(
      "defaults: {pool_size: 5}\ndatabases:\n  app: {pool_size: 50, min_pool_size: 40}\n"));
}

TEST_CASE("config: names, secrets and auth") {
  check_error("databases:\n  pgring: {host: x}\n", "databases.pgring", 2,
              "reserved for the admin console");
  check_error("databases:\n  \"\": {host: x}\n", "databases.", 2, "must not be empty");
  check_error("databases:\n  app: {host: \"\"}\n", "databases.app.host", 2, "must not be empty");
  check_error("users:\n  app: {}\n", "users.app", 2, "password is required");
  check_error("users:\n  app: {password: \"\"}\n", "users.app.password", 2, "must not be empty");
  check_error("users:\n  app: {password: \"SCRAM-SHA-256$4096:salt\"}\n", "users.app.password", 2,
              "malformed SCRAM secret");
  const ConfigError md5_with_scram =
      error_of("users:\n  app: {password: md5e5e28e3b4bfe8a54d4e3a05b1c9be7a9}\n");
  CHECK(md5_with_scram.path() == "users.app.password");
  CHECK(md5_with_scram.line() == 2);
  CHECK(md5_with_scram.message().find("cannot be used with auth method scram-sha-256") !=
        std::string::npos);
  // The secret itself must never appear in an error.
  CHECK(std::string(md5_with_scram.what()).find("e5e28e3b") == std::string::npos);
  // Uppercase hex is not an md5 secret (PostgreSQL's rule): it is a plain password.
  const Config c = parse_config("users:\n  a: {password: md5E5E28E3B4BFE8A54D4E3A05B1C9BE7A9}\n");
  CHECK(c.find_user("a")->secret_kind == SecretKind::plain);
  check_error("admin: {users: [a, [b]]}\n", "admin.users[1]", 1, "expected a string");
}

TEST_CASE("config: duplicate keys and YAML syntax errors") {
  check_error("workers: 2\nworkers: 3\n", "workers", 2, "duplicate key");
  check_error("users:\n  a: {password: x}\n  a: {password: y}\n", "users.a", 3, "duplicate key");
  const ConfigError syntax = error_of("listen: [\"127.0.0.1:6432\"\nworkers: 2\n");
  CHECK(syntax.path().empty());
  CHECK(syntax.line() >= 1);
  check_error("workers: 2\n---\nworkers: 3\n", "", 2, "only one YAML document");
  // yaml-cpp 0.7 LoadAll() loops forever on this (issue #1040); it must be a plain error.
  check_error(",", "", 1, "only one YAML document");
  check_error(",isten: x\n", "", 1, "only one YAML document");
  check_error("{[a]: 1}\n", "", 1, "keys must be strings");
}

TEST_CASE("config: ignore_startup_parameters") {
  const Config c = parse_config(R"(auth: {method: trust}
ignore_startup_parameters: [extra_float_digits, options]
databases: {app: {}}
)");
  CHECK(c.ignore_startup_parameters == std::vector<std::string>{"extra_float_digits", "options"});
  CHECK_THROWS_WITH(parse_config("auth: {method: trust}\nignore_startup_parameters: [user]\n"
                                 "databases: {app: {}}\n"),
                    doctest::Contains("ignore_startup_parameters"));
}

TEST_CASE("config: the fallback database \"*\" serves names without an entry") {
  const Config c = parse_config(R"(auth: {method: trust}
timeouts: {autodb_idle: 5m}
databases:
  app: {host: 10.0.0.1}
  "*": {host: 10.0.0.9, port: 5433, pool_size: 4}
)");
  CHECK(c.timeouts.autodb_idle == std::chrono::minutes(5));
  // Its own entry first.
  REQUIRE(c.database_for("app"));
  CHECK(c.database_for("app")->host == "10.0.0.1");
  // Any other name: the fallback's server and settings, the name the client asked for.
  auto other = c.database_for("reports");
  REQUIRE(other);
  CHECK(other->name == "reports");
  CHECK(other->dbname == "reports");
  CHECK(other->host == "10.0.0.9");
  CHECK(other->port == 5433);
  CHECK(c.resolve_pool(*other, nullptr).pool_size == 4);
  CHECK_FALSE(c.database_for(""));
  // A fallback that names its dbname sends every name there.
  const Config one = parse_config(R"(auth: {method: trust}
databases: {"*": {dbname: shared}}
)");
  CHECK(one.database_for("x")->dbname == "shared");
  CHECK(one.database_for("x")->name == "x");
  // Without "*", unknown stays unknown.
  const Config none = parse_config("auth: {method: trust}\ndatabases: {app: {}}\n");
  CHECK_FALSE(none.database_for("reports"));
  // auth.query.database may be one the fallback serves.
  CHECK_NOTHROW(parse_config(R"(auth:
  method: md5
  query: {user: lookup, database: anything}
users: {lookup: {password: pw}}
databases: {"*": {}}
)"));
}

TEST_CASE("config: resolve_pool precedence is defaults <- database <- user") {
  const Config c = parse_config(R"(auth: {method: trust}
defaults:
  pool_mode: session
  pool_size: 30
  prepared_statements: 50
  server_reset_query: "RESET ALL"
users:
  alice: {pool_size: 7, server_reset_query: "", session_state: error, listen: pin}
  bob:
databases:
  app:
    pool_mode: statement
    pool_size: 12
    min_pool_size: 2
  other:
)");
  const Database& app = *c.find_database("app");
  const Database& other = *c.find_database("other");

  const PoolSettings plain = c.resolve_pool(other, nullptr);
  CHECK(plain.pool_mode == PoolMode::session);
  CHECK(plain.pool_size == 30);
  CHECK(plain.prepared_statements == 50);
  CHECK(plain.server_reset_query == "RESET ALL");

  const PoolSettings db = c.resolve_pool(app, nullptr);
  CHECK(db.pool_mode == PoolMode::statement);
  CHECK(db.pool_size == 12);
  CHECK(db.min_pool_size == 2);
  CHECK(db.prepared_statements == 50);

  const PoolSettings user = c.resolve_pool(app, c.find_user("alice"));
  CHECK(user.pool_mode == PoolMode::statement);
  CHECK(user.pool_size == 7);
  CHECK(user.min_pool_size == 2);
  CHECK(user.server_reset_query.empty());
  CHECK(user.session_state == SessionStatePolicy::error);
  CHECK(db.session_state == SessionStatePolicy::pin);
  CHECK(user.listen == ListenPolicy::pin);
  CHECK(db.listen == ListenPolicy::shared);

  const PoolSettings no_override = c.resolve_pool(app, c.find_user("bob"));
  CHECK(no_override.pool_size == 12);
  CHECK(no_override.server_reset_query == "RESET ALL");
}

TEST_CASE("config: per-database and per-user timeouts and client limits") {
  const Config c = parse_config(R"(auth: {method: trust}
timeouts:
  query: 30s
  client_idle: 10m
  query_wait: 1m
defaults:
  max_db_client_connections: 500
users:
  batch:
    max_user_client_connections: 5
    timeouts: {query: 0, transaction: 1h}
  web:
databases:
  app:
    timeouts: {query: 5s, idle_transaction: 20s, server_lifetime: 10m}
  reports:
    max_db_client_connections: 0
)");
  const Database& app = *c.find_database("app");
  const Database& reports = *c.find_database("reports");

  // The top-level section is the default for every pool.
  const PoolSettings plain = c.resolve_pool(reports, c.find_user("web"));
  CHECK(plain.timeouts.query == 30s);
  CHECK(plain.timeouts.client_idle == 10min);
  CHECK(plain.timeouts.idle_transaction == 0ms);
  CHECK(plain.max_db_client_connections == 0);
  CHECK(plain.max_user_client_connections == 0);

  // A database overrides some, keeps the rest.
  const PoolSettings db = c.resolve_pool(app, c.find_user("web"));
  CHECK(db.timeouts.query == 5s);
  CHECK(db.timeouts.idle_transaction == 20s);
  CHECK(db.timeouts.server_lifetime == 10min);
  CHECK(db.timeouts.query_wait == 1min);
  CHECK(db.max_db_client_connections == 500);

  // A user wins over the database: 0 disables what the database set.
  const PoolSettings user = c.resolve_pool(app, c.find_user("batch"));
  CHECK(user.timeouts.query == 0ms);
  CHECK(user.timeouts.transaction == 1h);
  CHECK(user.timeouts.idle_transaction == 20s);
  CHECK(user.max_user_client_connections == 5);

  // Process-wide timeouts cannot be set per pool; unknown ones get a suggestion.
  check_error("databases:\n  app:\n    timeouts: {client_login: 5s}\n",
              "databases.app.timeouts.client_login", 3, "top-level timeouts:");
  check_error("users:\n  bob:\n    timeouts:\n      shutdown: 5s\n", "users.bob.timeouts.shutdown",
              4, "top-level timeouts:");
  check_error("databases:\n  app:\n    timeouts: {qurey: 5s}\n", "databases.app.timeouts.qurey", 3,
              "query");
  check_error("databases:\n  app:\n    timeouts: {query: 5}\n", "databases.app.timeouts.query", 3,
              "duration");
  check_error("defaults:\n  timeouts: {query: 5s}\n", "defaults.timeouts", 2, "unknown key");
  check_error("users:\n  bob: {max_user_client_connections: -1}\n",
              "users.bob.max_user_client_connections", 2, "integer");
}

TEST_CASE("config: parse_duration") {
  CHECK(parse_duration("0") == 0ms);
  CHECK(parse_duration("0s") == 0ms);
  CHECK(parse_duration("250ms") == 250ms);
  CHECK(parse_duration("15s") == 15s);
  CHECK(parse_duration("2m") == 2min);
  CHECK(parse_duration("1h") == 1h);
  CHECK(parse_duration("007s") == 7s);
  CHECK(parse_duration("9223372036854775807ms") == Duration::max());
  CHECK_FALSE(parse_duration("9223372036854775808ms"));  // one past int64
  CHECK_FALSE(parse_duration("9223372036854775807s"));   // overflows in milliseconds
  CHECK_FALSE(parse_duration("99999999999999999999999h"));
  CHECK_FALSE(parse_duration(""));
  CHECK_FALSE(parse_duration("15"));  // a unit is required except for 0
  CHECK_FALSE(parse_duration("-1s"));
  CHECK_FALSE(parse_duration("+1s"));
  CHECK_FALSE(parse_duration("1.5s"));
  CHECK_FALSE(parse_duration("1 s"));
  CHECK_FALSE(parse_duration(" 1s"));
  CHECK_FALSE(parse_duration("1S"));
  CHECK_FALSE(parse_duration("1d"));
  CHECK_FALSE(parse_duration("1sec"));
  CHECK_FALSE(parse_duration("s"));
  CHECK_FALSE(parse_duration("1s1"));
  CHECK_FALSE(parse_duration(std::string_view("1s\0", 3)));
}

TEST_CASE("config: parse_size") {
  CHECK(parse_size("0") == 0u);
  CHECK(parse_size("65536") == 65536u);
  CHECK(parse_size("12B") == 12u);
  CHECK(parse_size("64KiB") == 64u << 10);
  CHECK(parse_size("64kB") == 64u << 10);
  CHECK(parse_size("64MiB") == 64u << 20);
  CHECK(parse_size("64MB") == 64u << 20);
  CHECK(parse_size("1GiB") == 1u << 30);
  CHECK(parse_size("1GB") == 1u << 30);
  CHECK(parse_size("18446744073709551615") == UINT64_MAX);
  CHECK_FALSE(parse_size("18446744073709551616"));
  CHECK_FALSE(parse_size("17179869184GiB"));  // 2^34 GiB = 2^64 bytes
  CHECK_FALSE(parse_size(""));
  CHECK_FALSE(parse_size("-1"));
  CHECK_FALSE(parse_size("+1"));
  CHECK_FALSE(parse_size("1.5MiB"));
  CHECK_FALSE(parse_size("1 MiB"));
  CHECK_FALSE(parse_size("1mib"));
  CHECK_FALSE(parse_size("1TiB"));
  CHECK_FALSE(parse_size("MiB"));
  CHECK_FALSE(parse_size("0x10"));
}

TEST_CASE("config: to_string") {
  CHECK(to_string(PoolMode::session) == "session");
  CHECK(to_string(PoolMode::transaction) == "transaction");
  CHECK(to_string(PoolMode::statement) == "statement");
  CHECK(to_string(AuthMethod::trust) == "trust");
  CHECK(to_string(AuthMethod::md5) == "md5");
  CHECK(to_string(AuthMethod::scram_sha_256) == "scram-sha-256");
  CHECK(to_string(SessionStatePolicy::pin) == "pin");
  CHECK(to_string(SessionStatePolicy::error) == "error");
}

TEST_CASE("config: load_config_file reports an unreadable file") {
  try {
    (void)load_config_file("/nonexistent/pgring.yaml");
    FAIL("expected a ConfigError");
  } catch (const ConfigError& e) {
    CHECK(e.path().empty());
    CHECK(e.line() == 0);
    CHECK(std::string(e.what()).starts_with("/nonexistent/pgring.yaml: "));
  }
}

#ifdef PGRING_SOURCE_DIR
TEST_CASE("config: the reference config/pgring.yaml parses and matches the defaults") {
  const Config c = load_config_file(std::string(PGRING_SOURCE_DIR) + "/config/pgring.yaml");
  const Config d = parse_config("");
  REQUIRE(c.listen.size() == 1);
  CHECK(c.listen[0].host == "127.0.0.1");
  CHECK(c.listen[0].port == 6432);
  CHECK(c.workers == d.workers);
  CHECK(c.max_client_conn == d.max_client_conn);
  CHECK(c.max_message_size == d.max_message_size);
  CHECK(c.log_level == d.log_level);
  CHECK(c.log_format == d.log_format);
  CHECK(c.log_slow_query == d.log_slow_query);
  CHECK(c.stats_fingerprints == d.stats_fingerprints);
  CHECK(c.stats_fingerprint_metrics == d.stats_fingerprint_metrics);
  CHECK(c.auth_method == d.auth_method);
  REQUIRE(c.metrics_listen.has_value());
  CHECK(c.metrics_listen->port == 9930);
  CHECK(c.admin_users == std::vector<std::string>{"pgring_admin"});
  REQUIRE(c.find_user("app") != nullptr);
  CHECK(c.find_user("app")->password == "secret");
  CHECK(c.find_user("app")->secret_kind == SecretKind::plain);
  REQUIRE(c.find_database("app") != nullptr);
  CHECK(c.find_database("app")->host == "127.0.0.1");
  CHECK(c.find_database("app")->port == 5432);
  // "every key, its default": the documented values are the defaults in code.
  const PoolSettings p = c.defaults;
  CHECK(p.pool_mode == d.defaults.pool_mode);
  CHECK(p.pool_size == d.defaults.pool_size);
  CHECK(p.min_pool_size == d.defaults.min_pool_size);
  CHECK(p.reserve_pool_size == d.defaults.reserve_pool_size);
  CHECK(p.max_db_connections == d.defaults.max_db_connections);
  CHECK(p.server_reset_query == d.defaults.server_reset_query);
  CHECK(p.prepared_statements == d.defaults.prepared_statements);
  CHECK(p.session_state == d.defaults.session_state);
  const Timeouts& t = c.timeouts;
  const Timeouts& u = d.timeouts;
  CHECK(t.client_login == u.client_login);
  CHECK(t.server_connect == u.server_connect);
  CHECK(t.server_login_retry == u.server_login_retry);
  CHECK(t.query_wait == u.query_wait);
  CHECK(t.reserve_pool == u.reserve_pool);
  CHECK(t.query == u.query);
  CHECK(t.transaction == u.transaction);
  CHECK(t.idle_transaction == u.idle_transaction);
  CHECK(t.client_idle == u.client_idle);
  CHECK(t.server_idle == u.server_idle);
  CHECK(t.server_lifetime == u.server_lifetime);
  CHECK(t.cancel_wait == u.cancel_wait);
  CHECK(t.shutdown == u.shutdown);
}
#endif

TEST_CASE("config: query families and the slow-query log") {
  const Config d = parse_config("");
  CHECK(d.stats_fingerprints == 1000);
  CHECK(d.stats_fingerprint_metrics == 100);
  CHECK(d.log_slow_query.count() == 0);
  const Config c = parse_config(
      "stats: {fingerprints: 500, fingerprint_metrics: 0}\nlog: {slow_query: 1500ms}\n");
  CHECK(c.stats_fingerprints == 500);
  CHECK(c.stats_fingerprint_metrics == 0);
  CHECK(c.log_slow_query == std::chrono::milliseconds(1500));
  CHECK_THROWS_WITH(parse_config("log: {slow_query: 5}\n"),
                    doctest::Contains("log.slow_query (line 1): a duration needs a unit"));
  CHECK_THROWS_WITH(parse_config("stats: {fingerprint_metrics: -1}\n"),
                    doctest::Contains("stats.fingerprint_metrics"));
}

TEST_CASE("config: tls sections") {
  const Config c = parse_config(R"(tls:
  client: {mode: require, cert: /c.crt, key: /c.key, ca: /ca.crt}
  server: {mode: verify-full, ca: /root.crt}
)");
  CHECK(c.tls_client.mode == ClientTlsMode::require);
  CHECK(c.tls_client.cert == "/c.crt");
  CHECK(c.tls_client.ca == "/ca.crt");
  CHECK(c.tls_server.mode == ServerTlsMode::verify_full);
  CHECK(c.tls_server.ca == "/root.crt");
  CHECK(parse_config("").tls_client.mode == ClientTlsMode::disable);
  CHECK(parse_config("").tls_server.mode == ServerTlsMode::disable);
  check_error("tls:\n  client: {mode: require}\n", "tls.client", 2,
              "mode require needs cert and key");
  check_error("tls:\n  client: {mode: prefer, cert: a, key: b}\n", "tls.client.mode", 2,
              "must be one of disable, allow, require");
  check_error("tls:\n  server: {mode: verify-ca}\n", "tls.server", 2, "needs ca");
  check_error("tls:\n  server: {mode: require, cert: /a}\n", "tls.server", 2,
              "cert and key go together");
  check_error("tls:\n  server: {mode: verify}\n", "tls.server.mode", 2,
              "did you mean 'verify-ca'?");
  check_error("tls:\n  clients: {}\n", "tls.clients", 2, "did you mean 'client'?");
  const Config v = parse_config(
      "tls:\n  client: {min_version: TLSv1.3, ciphers: HIGH}\n  server: {min_version: TLSv1.3}\n");
  CHECK(v.tls_client.min_version == "TLSv1.3");
  CHECK(v.tls_client.ciphers == "HIGH");
  CHECK(v.tls_server.min_version == "TLSv1.3");
  CHECK(parse_config("").tls_client.min_version == "TLSv1.2");
  check_error("tls:\n  client: {min_version: TLSv1.1}\n", "tls.client.min_version", 2,
              "must be one of TLSv1.2, TLSv1.3");
}

TEST_CASE("config: auth rules choose the method like pg_hba") {
  const Config c = parse_config(R"(auth:
  method: md5
  rules:
    - {user: admin, address: 10.0.0.0/8, method: reject}
    - {database: [reports], tls: true, method: cert}
    - {address: local, method: trust}
    - {address: [192.168.1.0/24, "::1"], method: scram-sha-256}
    - {user: [app, web], tls: false, method: md5}
tls:
  client: {mode: allow, cert: /c, key: /k, ca: /ca}
)");
  REQUIRE(c.auth_rules.size() == 5);
  auto v4 = [](std::uint8_t a, std::uint8_t b, std::uint8_t c3, std::uint8_t d, bool tls) {
    Peer p;
    p.family = AF_INET;
    p.address = {a, b, c3, d};
    p.tls = tls;
    return p;
  };
  Peer local;
  local.local = true;
  Peer v6;
  v6.family = AF_INET6;
  v6.address[15] = 1;
  CHECK(c.choose_auth("x", "admin", v4(10, 1, 2, 3, false)).method == AuthMethod::reject);
  CHECK(c.choose_auth("x", "admin", v4(10, 1, 2, 3, false)).rule == "auth.rules[0]");
  CHECK(c.choose_auth("reports", "bob", v4(11, 0, 0, 1, true)).method == AuthMethod::cert);
  CHECK(c.choose_auth("reports", "bob", local).method == AuthMethod::trust);
  CHECK(c.choose_auth("x", "bob", v4(192, 168, 1, 200, false)).method == AuthMethod::scram_sha_256);
  CHECK(c.choose_auth("x", "bob", v6).method == AuthMethod::scram_sha_256);
  CHECK(c.choose_auth("x", "web", v4(172, 16, 0, 1, false)).method == AuthMethod::md5);
  // Nothing matches: rejected, with no rule named.
  CHECK(c.choose_auth("x", "web", v4(172, 16, 0, 1, true)).method == AuthMethod::reject);
  CHECK(c.choose_auth("x", "web", v4(172, 16, 0, 1, true)).rule.empty());
  CHECK(c.choose_auth("x", "bob", v4(192, 168, 2, 1, false)).method == AuthMethod::reject);
  // Without rules, auth.method for everyone.
  const Config plain = parse_config("auth: {method: md5}\nusers:\n  a: {password: x}\n");
  CHECK(plain.choose_auth("x", "y", local).method == AuthMethod::md5);
  CHECK(plain.choose_auth("x", "y", local).rule == "auth.method");

  check_error("auth:\n  rules:\n    - {user: a}\n", "auth.rules[0]", 3, "a rule needs a method");
  check_error("auth:\n  rules:\n    - {address: 10.0.0.0/33, method: trust}\n",
              "auth.rules[0].address", 3, "is not all, local, an address or a network");
  check_error("auth:\n  rules:\n    - {tls: maybe, method: trust}\n", "auth.rules[0].tls", 3,
              "must be true");
  check_error("auth:\n  rules:\n    - {method: cert}\n", "auth.rules[0].method", 3,
              "method cert needs tls.client.ca");
  check_error("auth:\n  rules:\n    - {hosts: all, method: trust}\n", "auth.rules[0].hosts", 3,
              "unknown key");
  check_error("auth:\n  method: reject\n", "auth.method", 2, "use it in auth.rules");
  check_error("auth:\n  rules:\n    - {address: [10.0.0.0/8, local], method: trust}\n",
              "auth.rules[0].address", 3, "all and local stand alone");
}

TEST_CASE("config: networks") {
  auto n = parse_network("10.1.0.0/16");
  REQUIRE(n);
  const std::uint8_t in[4] = {10, 1, 200, 3};
  const std::uint8_t out[4] = {10, 2, 0, 1};
  CHECK(n->contains(AF_INET, in));
  CHECK_FALSE(n->contains(AF_INET, out));
  CHECK_FALSE(n->contains(AF_INET6, in));
  auto odd = parse_network("192.168.0.0/23");
  REQUIRE(odd);
  const std::uint8_t a[4] = {192, 168, 1, 7};
  const std::uint8_t b[4] = {192, 168, 2, 7};
  CHECK(odd->contains(AF_INET, a));
  CHECK_FALSE(odd->contains(AF_INET, b));
  CHECK(parse_network("0.0.0.0/0"));
  CHECK(parse_network("::/0"));
  CHECK_FALSE(parse_network("10.0.0.0/"));
  CHECK_FALSE(parse_network("10.0.0.0/x"));
  CHECK_FALSE(parse_network("::1/129"));
  CHECK_FALSE(parse_network("example.com"));
}

TEST_CASE("config: auth query") {
  const Config c = parse_config(R"(auth:
  method: scram-sha-256
  query: {user: pgring_auth, cache: 30s}
users:
  pgring_auth: {password: plain}
)");
  REQUIRE(c.auth_query);
  CHECK(c.auth_query->user == "pgring_auth");
  CHECK(c.auth_query->cache == std::chrono::seconds(30));
  CHECK(c.auth_query->query.find("$1") != std::string::npos);
  check_error("auth:\n  query: {cache: 1s}\n", "auth.query", 2, "needs a user");
  check_error("auth:\n  query: {user: nobody}\n", "auth.query.user", 2,
              "must be in users: with a plain password");
  // With auth.query an entry without a password holds settings only (the lookup gives the
  // secret); the auth user itself still needs its password.
  const Config settings_only = parse_config(R"(auth:
  query: {user: pgring_auth}
users:
  pgring_auth: {password: plain}
  app: {pool_mode: session}
)");
  REQUIRE(settings_only.find_user("app") != nullptr);
  CHECK(settings_only.find_user("app")->password.empty());
  check_error("auth:\n  query: {user: pgring_auth}\nusers:\n  pgring_auth: {}\n", "auth.query.user",
              2, "must be in users: with a plain password");
}

TEST_CASE("config: a database's hosts, target, load balancing and health checks") {
  const Config c = parse_config(
      "dns: {ttl: 10s}\n"
      "health_check: {interval: 1s, timeout: 500ms, query: 'SELECT 1', user: mon, password: p}\n"
      "databases:\n"
      "  app:\n"
      "    hosts: [pg-a:5433, '[::1]:5434', {host: pg-c}, /run/postgresql, 10.0.0.7]\n"
      "    target: read-write\n"
      "    load_balance: round_robin\n"
      "  app_ro:\n"
      "    hosts: [pg-a, pg-b]\n"
      "    target: prefer-standby\n"
      "    max_replica_lag: 10s\n"
      "  one: {host: h, port: 6000}\n");
  CHECK(c.dns.ttl == 10s);
  CHECK(c.health_check.interval == 1s);
  CHECK(c.health_check.timeout == 500ms);
  CHECK(c.health_check.query == "SELECT 1");
  CHECK(c.health_check.user == "mon");
  const Database& app = c.databases.at("app");
  REQUIRE(app.hosts.size() == 5);
  CHECK(app.hosts[0] == Host{"pg-a", 5433});
  CHECK(app.hosts[1] == Host{"::1", 5434});
  CHECK(app.hosts[2] == Host{"pg-c", 5432});
  CHECK(app.hosts[3] == Host{"/run/postgresql", 5432});
  CHECK(app.hosts[4] == Host{"10.0.0.7", 5432});
  CHECK(app.host == "pg-a");  // the first host is the one-host spelling's value
  CHECK(app.port == 5433);
  CHECK(app.target == Target::primary);
  CHECK(app.load_balance == LoadBalance::round_robin);
  const Database& ro = c.databases.at("app_ro");
  CHECK(ro.target == Target::prefer_replica);
  CHECK(ro.load_balance == LoadBalance::least_connections);
  CHECK(ro.max_replica_lag == 10s);
  const Database& one = c.databases.at("one");
  REQUIRE(one.hosts.size() == 1);
  CHECK(one.hosts[0] == Host{"h", 6000});
  CHECK(one.target == Target::any);
  CHECK(parse_config("databases: {x: {}}\n").databases.at("x").hosts[0] == Host{"127.0.0.1", 5432});

  check_error("databases:\n  app:\n    hosts: [a, b]\n    port: 5433\n", "databases.app.port", 4,
              "set either host/port or hosts, not both");
  check_error("databases:\n  app:\n    hosts: []\n", "databases.app.hosts", 3, "a list of hosts");
  check_error("databases:\n  app:\n    hosts: [a, 'b:99999']\n", "databases.app.hosts[1]", 3, "");
  check_error("databases:\n  app:\n    hosts: [a, a:5432]\n", "databases.app.hosts[1]", 3,
              "duplicate host");
  check_error("databases:\n  app:\n    hosts: [{port: 5}]\n", "databases.app.hosts[0]", 3,
              "needs host:");
  check_error("databases:\n  app:\n    target: master\n", "databases.app.target", 3,
              "must be one of any, primary");
  check_error("health_check:\n  interval: 0\n", "health_check.interval", 2, "more than 0");
  check_error("dns:\n  ttl: 0s\n", "dns.ttl", 2, "more than 0");
}

TEST_CASE("config: upgrade.socket and its default") {
  const Config by_default = parse_config(
      "auth: {method: trust}\nlisten: ['127.0.0.1:7000']\n"
      "databases: {app: {}}\n");
  CHECK(upgrade_socket_path(by_default) == "/tmp/.s.PGRING.7000");
  // Beside the unix socket, when there is one.
  const Config unix_too = parse_config(
      "auth: {method: trust}\nlisten: ['/run/pgring', '127.0.0.1:7001']\ndatabases: {app: {}}\n");
  CHECK(upgrade_socket_path(unix_too) == "/run/pgring/.s.PGRING.7001");
  const Config named = parse_config(
      "auth: {method: trust}\nupgrade: {socket: /run/pgring/control}\ndatabases: {app: {}}\n");
  CHECK(upgrade_socket_path(named) == "/run/pgring/control");
  const Config off =
      parse_config("auth: {method: trust}\nupgrade: {socket: 'off'}\ndatabases: {app: {}}\n");
  CHECK(upgrade_socket_path(off).empty());
  check_error("auth: {method: trust}\nupgrade: {socket: control}\ndatabases: {app: {}}\n",
              "upgrade.socket", 2, "absolute path");
  check_error("auth: {method: trust}\nupgrade: {sock: /x}\ndatabases: {app: {}}\n", "upgrade.sock",
              2, "");
}
