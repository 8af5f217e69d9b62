// config/pgbouncer: reading PgBouncer's files and converting them into pgring's configuration.

#include "config/pgbouncer.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <string>

#include "config/config.hpp"

using namespace pgring::config;
using namespace pgring::config::pgbouncer;
using namespace std::chrono_literals;

namespace {

bool noted(const Conversion& c, std::string_view text) {
  return std::any_of(c.notes.begin(), c.notes.end(),
                     [&](const std::string& n) { return n.find(text) != std::string::npos; });
}

Conversion convert_ini(std::string_view ini) {
  Sources s;
  s.ini = ini;
  return convert(s);
}

}  // namespace

TEST_CASE("parse_ini: sections, comments, case, and lines that are not settings") {
  Ini ini = parse_ini(
      "; comment\n# another\n[PgBouncer]\nListen_Port = 6433 \n\n[databases]\nMyDb = host=x\n"
      "garbage line\n[broken\n%include other.ini\n");
  REQUIRE(ini.settings.size() == 2);
  CHECK(ini.settings[0].section == "pgbouncer");
  CHECK(ini.settings[0].key == "listen_port");  // PgBouncer's keys have no case
  CHECK(ini.settings[0].value == "6433");
  CHECK(ini.settings[0].line == 4);
  CHECK(ini.settings[1].key == "MyDb");  // a database name keeps its case
  REQUIRE(ini.problems.size() == 3);
  CHECK(ini.problems[0].starts_with("line 8:"));
  CHECK(ini.problems[2].find("%include") != std::string::npos);
}

TEST_CASE("parse_connstr: quoted values, escapes, malformed strings") {
  auto pairs = parse_connstr("host=db1 dbname='my db' password='it''s' user = 'a\\'b'");
  REQUIRE(pairs);
  REQUIRE(pairs->size() == 4);
  CHECK((*pairs)[1] == std::pair<std::string, std::string>{"dbname", "my db"});
  CHECK((*pairs)[2].second == "it's");
  CHECK((*pairs)[3] == std::pair<std::string, std::string>{"user", "a'b"});
  CHECK(parse_connstr("")->empty());
  CHECK_FALSE(parse_connstr("host"));
  CHECK_FALSE(parse_connstr("host='unterminated"));
  CHECK_FALSE(parse_connstr("=x"));
}

TEST_CASE("parse_userlist and parse_hba") {
  std::vector<std::string> problems;
  auto users = parse_userlist(
      "; comment\n\"app\" \"secret\"\n\"q\"\"uote\" \"md5abc\"\nnot quoted\n\"only one\"\n",
      problems);
  REQUIRE(users.size() == 2);
  CHECK(users[0].user == "app");
  CHECK(users[0].secret == "secret");
  CHECK(users[1].user == "q\"uote");
  CHECK(problems.size() == 2);

  problems.clear();
  auto hba = parse_hba(
      "# comment\nlocal all all peer\nhost app,other app 10.0.0.0 255.0.0.0 md5 # tail\n"
      "hostssl all all 0.0.0.0/0 scram-sha-256 clientcert=verify-full\nhost all\n",
      problems);
  REQUIRE(hba.size() == 3);
  CHECK(hba[0].type == "local");
  CHECK(hba[0].address.empty());
  CHECK(hba[0].method == "peer");
  CHECK(hba[1].databases == std::vector<std::string>{"app", "other"});
  CHECK(hba[1].address == "10.0.0.0/8");
  CHECK(hba[1].method == "md5");
  CHECK(hba[2].address == "0.0.0.0/0");
  CHECK(problems.size() == 1);
}

TEST_CASE("convert: PgBouncer's defaults are written where pgring's differ") {
  Conversion c = convert_ini("[databases]\napp = host=127.0.0.1 port=5433\n");
  Config config = parse_config(c.yaml);
  // PgBouncer: session mode, md5, 100 clients, a unix socket in /tmp, nothing on TCP.
  const Database& app = config.databases.at("app");
  CHECK(config.resolve_pool(app, nullptr).pool_mode == PoolMode::session);
  CHECK(config.auth_method == AuthMethod::md5);
  CHECK(config.max_client_conn == 100);
  REQUIRE(config.listen.size() == 1);
  CHECK(config.listen[0].unix_dir == "/tmp");
  CHECK(app.port == 5433);
}

TEST_CASE("convert: a realistic configuration") {
  Sources s;
  s.ini = R"(
[databases]
app = host=db.internal port=5433 dbname=app_prod pool_size=8 pool_mode=transaction
reports = host=10.0.0.2,10.0.0.3 dbname=reports user=reporter password='s3 cret'
legacy = host=/var/run/postgresql connect_query='SELECT 1' client_encoding=LATIN1
* = host=fallback

[users]
batch = pool_mode=session pool_size=2 max_user_connections=4
lookedup = pool_size=1

[pgbouncer]
listen_addr = 127.0.0.1, 10.1.1.1
listen_port = 6543
unix_socket_dir =
auth_type = hba
auth_file = /etc/pgbouncer/userlist.txt
auth_hba_file = /etc/pgbouncer/hba.conf
auth_user = pgbouncer_auth
auth_query = SELECT usename, passwd FROM pgbouncer.get_auth($1)
pool_mode = transaction
default_pool_size = 20
reserve_pool_size = 3
reserve_pool_timeout = 2.5
max_client_conn = 2000
max_db_connections = 50
server_idle_timeout = 300
server_lifetime = 1800
autodb_idle_timeout = 600
query_wait_timeout = 30
idle_transaction_timeout = 60
client_tls_sslmode = require
client_tls_cert_file = /etc/pgbouncer/server.crt
client_tls_key_file = /etc/pgbouncer/server.key
client_tls_ciphers = HIGH:!aNULL
server_tls_sslmode = verify-full
server_tls_ca_file = /etc/ssl/root.crt
tcp_keepalive = 1
tcp_keepidle = 60
tcp_user_timeout = 30000
admin_users = admin, ops
stats_users = prometheus
ignore_startup_parameters = extra_float_digits
log_disconnections = 0
logfile = /var/log/pgbouncer/pgbouncer.log
server_check_query = select 1
max_prepared_statements = 100
verbose = 1
no_such_setting = 1
)";
  s.userlist =
      R"("app" "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=:YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE="
"pgbouncer_auth" "authpw"
"batch" "batchpw"
"admin" "md5a3556571e93b0d20722ba62be61e8c2d")";
  s.hba = R"(
local all all peer
host all admin 127.0.0.1/32 md5
hostssl app,reports all 10.0.0.0 255.0.0.0 scram-sha-256
host all +ops 0.0.0.0/0 md5
host all all all reject
)";
  Conversion c = convert(s);
  INFO(c.yaml);
  Config config = parse_config(c.yaml);

  REQUIRE(config.listen.size() == 2);
  CHECK(config.listen[0].port == 6543);
  CHECK(config.max_client_conn == 2000);
  const Database& app = config.databases.at("app");
  CHECK(app.host == "db.internal");
  CHECK(app.port == 5433);
  CHECK(app.dbname == "app_prod");
  PoolSettings app_pool = config.resolve_pool(app, nullptr);
  CHECK(app_pool.pool_size == 8);
  CHECK(app_pool.pool_mode == PoolMode::transaction);
  CHECK(app_pool.reserve_pool_size == 3);
  CHECK(app_pool.max_db_connections == 50);
  CHECK(app_pool.prepared_statements == 100);
  CHECK(app_pool.timeouts.server_idle == 300s);
  CHECK(app_pool.timeouts.server_lifetime == 1800s);
  CHECK(app_pool.timeouts.reserve_pool == 2500ms);
  CHECK(app_pool.timeouts.idle_transaction == 60s);
  CHECK(config.timeouts.autodb_idle == 600s);
  CHECK(config.ignore_startup_parameters == std::vector<std::string>{"extra_float_digits"});
  CHECK(config.log_connections);
  CHECK_FALSE(config.log_disconnections);
  CHECK(config.log_file == "/var/log/pgbouncer/pgbouncer.log");
  const Database& reports = config.databases.at("reports");
  CHECK(reports.host == "10.0.0.2");
  REQUIRE(reports.hosts.size() == 2);  // several hosts: a hosts: list
  CHECK(reports.hosts[1] == pgring::config::Host{"10.0.0.3", 5432});
  CHECK(reports.user == "reporter");
  CHECK(reports.password == "s3 cret");
  CHECK(config.databases.at("legacy").host == "/var/run/postgresql");
  // The fallback database: each database name served from that host, as PgBouncer does.
  REQUIRE(config.find_database("*"));
  CHECK(config.find_database("*")->host == "fallback");
  REQUIRE(config.database_for("anything"));
  CHECK(config.database_for("anything")->dbname == "anything");
  const User* batch = config.find_user("batch");
  REQUIRE(batch);
  CHECK(config.resolve_pool(app, batch).pool_mode == PoolMode::session);
  CHECK(config.resolve_pool(app, batch).pool_size == 2);
  // Not in the userlist, looked up by auth_query: its [users] settings, no password.
  const User* lookedup = config.find_user("lookedup");
  REQUIRE(lookedup);
  CHECK(lookedup->password.empty());
  CHECK(config.resolve_pool(app, lookedup).pool_size == 1);
  CHECK(config.find_user("app")->secret_kind == SecretKind::scram);
  CHECK(config.find_user("admin")->secret_kind == SecretKind::md5);
  CHECK(config.admin_users == std::vector<std::string>{"admin", "ops"});
  CHECK(config.stats_users == std::vector<std::string>{"prometheus"});
  CHECK(config.tls_client.mode == ClientTlsMode::require);
  CHECK(config.tls_client.ciphers == "HIGH:!aNULL");
  CHECK(config.tls_server.mode == ServerTlsMode::verify_full);
  CHECK(config.tls_server.ca == "/etc/ssl/root.crt");
  CHECK(config.log_level == LogLevel::debug);
  REQUIRE(config.auth_query);
  CHECK(config.auth_query->user == "pgbouncer_auth");
  CHECK(config.auth_query->query == "SELECT usename, passwd FROM pgbouncer.get_auth($1)");
  // The HBA rules: peer becomes reject, groups are left out, netmasks become prefixes.
  REQUIRE(config.auth_rules.size() == 4);
  CHECK(config.auth_rules[0].method == AuthMethod::reject);
  CHECK(config.auth_rules[2].tls == true);
  CHECK(config.auth_rules[3].method == AuthMethod::reject);

  // Nothing dropped silently: each setting that has no equivalent is named, with its line.
  for (std::string_view why :
       {"pgbouncer.ini:5: [databases] legacy: connect_query", "[databases] legacy: client_encoding",
        "[users] batch: max_user_connections", "server_check_query",
        "no_such_setting: not a PgBouncer setting pgring knows",
        "hba.conf:2: peer is not supported", "hba.conf:5: user +ops is not supported"})
    CHECK_MESSAGE(noted(c, why), why);
  CHECK_FALSE(noted(c, "listen_port"));
  CHECK_FALSE(noted(c, "default_pool_size"));
  // The notes head the YAML as comments.
  CHECK(c.yaml.find("#   pgbouncer.ini:") != std::string::npos);
}

TEST_CASE("convert: server_lifetime 0 means the opposite in PgBouncer") {
  Conversion c = convert_ini("[pgbouncer]\nserver_lifetime = 0\n");
  CHECK(noted(c, "use each connection once"));
  CHECK(parse_config(c.yaml).timeouts.server_lifetime == 3600s);  // pgring's default stays
}

TEST_CASE("convert: every PgBouncer setting changes the YAML or is noted") {
  // PgBouncer 1.25's settings of the [pgbouncer] section, each given alone.
  const std::string baseline = convert_ini("[pgbouncer]\n").yaml;
  for (std::string_view key : {"admin_users",
                               "application_name_add_host",
                               "auth_dbname",
                               "auth_file",
                               "auth_hba_file",
                               "auth_ident_file",
                               "auth_ldap_options",
                               "auth_query",
                               "auth_type",
                               "auth_user",
                               "autodb_idle_timeout",
                               "cancel_wait_timeout",
                               "client_idle_timeout",
                               "client_login_timeout",
                               "client_tls13_ciphers",
                               "client_tls_ca_file",
                               "client_tls_cert_file",
                               "client_tls_ciphers",
                               "client_tls_dheparams",
                               "client_tls_ecdhcurve",
                               "client_tls_key_file",
                               "client_tls_protocols",
                               "client_tls_sslmode",
                               "conffile",
                               "default_pool_size",
                               "disable_pqexec",
                               "dns_max_ttl",
                               "dns_nxdomain_ttl",
                               "dns_zone_check_period",
                               "idle_transaction_timeout",
                               "ignore_startup_parameters",
                               "job_name",
                               "listen_addr",
                               "listen_backlog",
                               "listen_port",
                               "log_connections",
                               "log_disconnections",
                               "log_pooler_errors",
                               "log_stats",
                               "logfile",
                               "max_client_conn",
                               "max_db_client_connections",
                               "max_db_connections",
                               "max_packet_size",
                               "max_prepared_statements",
                               "max_user_client_connections",
                               "max_user_connections",
                               "min_pool_size",
                               "peer_id",
                               "pidfile",
                               "pkt_buf",
                               "pool_mode",
                               "query_timeout",
                               "query_wait_notify",
                               "query_wait_timeout",
                               "reserve_pool_size",
                               "reserve_pool_timeout",
                               "resolv_conf",
                               "sbuf_loopcnt",
                               "scram_iterations",
                               "server_check_delay",
                               "server_check_query",
                               "server_connect_timeout",
                               "server_fast_close",
                               "server_idle_timeout",
                               "server_lifetime",
                               "server_login_retry",
                               "server_reset_query",
                               "server_reset_query_always",
                               "server_round_robin",
                               "server_tls13_ciphers",
                               "server_tls_ca_file",
                               "server_tls_cert_file",
                               "server_tls_ciphers",
                               "server_tls_key_file",
                               "server_tls_protocols",
                               "server_tls_sslmode",
                               "service_name",
                               "so_reuseport",
                               "stats_period",
                               "stats_users",
                               "suspend_timeout",
                               "syslog",
                               "syslog_facility",
                               "syslog_ident",
                               "tcp_defer_accept",
                               "tcp_keepalive",
                               "tcp_keepcnt",
                               "tcp_keepidle",
                               "tcp_keepintvl",
                               "tcp_socket_buffer",
                               "tcp_user_timeout",
                               "track_extra_parameters",
                               "transaction_timeout",
                               "unix_socket_dir",
                               "unix_socket_group",
                               "unix_socket_mode",
                               "user",
                               "verbose"}) {
    // A value PgBouncer would take for most of them, and one that differs from its default.
    std::string value = "7";
    if (key.find("tls_sslmode") != std::string_view::npos) value = "require";
    if (key == "pool_mode") value = "statement";
    if (key == "auth_type") value = "trust";
    if (key.find("_file") != std::string_view::npos || key.ends_with("_dir")) value = "/x/y";
    if (key.ends_with("users") || key == "auth_user") value = "someone";
    if (key == "listen_addr") value = "127.0.0.2";
    if (key == "tcp_keepalive") value = "0";
    if (key.ends_with("_protocols")) value = "tlsv1.3";
    if (key == "auth_query" || key == "server_reset_query" || key == "server_check_query")
      value = "SELECT 7";
    if (key == "max_packet_size") value = "70000";
    Conversion c = convert_ini("[pgbouncer]\n" + std::string(key) + " = " + value + "\n");
    INFO(key, " = ", value, "\n", c.yaml);
    CHECK((c.yaml != baseline || noted(c, std::string(key) + ":")));
    // And the result is a configuration pgring takes (a lone auth_file without --userlist and
    // the like only add notes), unless PgBouncer too needs a companion setting.
    if (key != "client_tls_sslmode" && key != "server_tls_cert_file" &&
        key != "server_tls_key_file")
      CHECK_NOTHROW((void)parse_config(c.yaml));
  }
}
