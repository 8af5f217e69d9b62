#pragma once
// pgring's configuration as plain data: the YAML file config/pgring.yaml documents turned into a
// validated value. Loading may throw ConfigError (startup and reload are not the data path);
// everything after loading is a const Config passed explicitly. No globals.

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace pgring::config {

using Duration = std::chrono::milliseconds;

enum class PoolMode { session, transaction, statement };
// What transaction/statement mode does with session state that cannot follow a client from one
// server connection to another (temporary tables, LISTEN, SQL PREPARE, WITH HOLD cursors,
// session advisory locks, SET ROLE, SETs pgring cannot replay): pin the client to its server
// until it disconnects, or refuse it with an error (0A000) and close the client.
enum class SessionStatePolicy { pin, error };
// What transaction/statement mode does with a lone `LISTEN ch` / `UNLISTEN ch` between
// transactions: shared makes it a subscription on one listening server connection per pool and
// reactor (docs/transaction-pooling.md, "LISTEN and NOTIFY"); pin sends it to the client's
// server, which then is session state (session_state).
enum class ListenPolicy { shared, pin };
// cert: the client's TLS certificate, verified against tls.client.ca, names the user (CN).
// reject: refused whatever it sends (an auth rule that closes a door).
enum class AuthMethod { trust, reject, md5, scram_sha_256, cert };
// tls.client.mode: disable answers 'N' to SSLRequest and refuses direct TLS; allow serves TLS
// to clients that ask; require refuses TCP clients that do not use it (unix sockets are local).
enum class ClientTlsMode { disable, allow, require };
// tls.server.mode, libpq's sslmode: prefer falls back to plain text only when the server says
// it has no TLS; require never does; verify-ca also checks the chain against tls.server.ca,
// verify-full also the host name.
enum class ServerTlsMode { disable, prefer, require, verify_ca, verify_full };
enum class LogFormat { text, json };
// io.engine: io_uring where the kernel allows it, else epoll (auto); or one of them.
enum class IoEngine { auto_, io_uring, epoll };
enum class LogLevel { debug, info, warning, error };
// databases.<db>.target: which of the database's hosts serve its pools, by what PostgreSQL says
// of itself (pg_is_in_recovery()): any host, the primary, a replica, a replica while one is up
// and else the primary. libpq's target_session_attrs spellings are accepted too.
enum class Target { any, primary, replica, prefer_replica };
// databases.<db>.load_balance: among the hosts that fit the target, the one with the fewest
// server connections (all reactors), or each in turn.
enum class LoadBalance { least_connections, round_robin };

[[nodiscard]] std::string_view to_string(PoolMode mode);
[[nodiscard]] std::string_view to_string(AuthMethod method);
[[nodiscard]] std::string_view to_string(SessionStatePolicy policy);
[[nodiscard]] std::string_view to_string(ListenPolicy policy);
[[nodiscard]] std::string_view to_string(ClientTlsMode mode);
[[nodiscard]] std::string_view to_string(ServerTlsMode mode);
[[nodiscard]] std::string_view to_string(Target target);
[[nodiscard]] std::string_view to_string(LoadBalance policy);

// One `listen:` entry: "host:port", "[v6]:port", or an absolute directory for a unix socket
// (the socket file is <dir>/.s.PGSQL.<port of the first TCP entry, or 6432>).
struct ListenAddress {
  std::string host;        // empty for a unix socket
  std::uint16_t port = 0;  // for a unix socket: the port in its file name (set by the loader)
  std::string unix_dir;    // non-empty for a unix socket
};

// docs/operations.md, "Timeouts". 0 disables a timeout. The top-level `timeouts:` section sets
// every one; a database or user may override those that concern its pools (kPoolTimeoutKeys in
// config.cpp): client_login, cancel_wait and shutdown are process-wide.
struct Timeouts {
  Duration client_login{std::chrono::seconds(60)};
  Duration server_connect{std::chrono::seconds(15)};
  Duration server_login_retry{std::chrono::seconds(15)};
  Duration query_wait{std::chrono::seconds(120)};
  Duration reserve_pool{
      std::chrono::seconds(5)};  // a client waiting this long may use the reserve pool
  Duration query{0};
  Duration transaction{0};
  Duration idle_transaction{0};
  Duration client_idle{0};
  Duration server_idle{std::chrono::seconds(600)};
  Duration server_lifetime{std::chrono::seconds(3600)};
  Duration cancel_wait{std::chrono::seconds(10)};
  Duration shutdown{std::chrono::seconds(30)};
  // The pools of a database served by the fallback entry ("*") go once unused this long.
  Duration autodb_idle{std::chrono::seconds(3600)};
};

// Pool settings that defaults:, databases.<db> and users.<user> may each set. Absent = inherit.
struct PoolOverrides {
  std::optional<PoolMode> pool_mode;
  std::optional<int> pool_size;
  std::optional<int> min_pool_size;
  std::optional<int> reserve_pool_size;
  std::optional<int> max_db_connections;
  std::optional<std::string> server_reset_query;
  std::optional<int> prepared_statements;
  std::optional<SessionStatePolicy> session_state;
  std::optional<ListenPolicy> listen;
  std::optional<int> max_db_client_connections;
  std::optional<int> max_user_client_connections;
  // databases.<db>.timeouts / users.<user>.timeouts: the timeouts this entry sets.
  std::vector<std::pair<Duration Timeouts::*, Duration>> timeouts;
};

// The resolved settings of one pool (database, user): defaults <- database <- user.
struct PoolSettings {
  PoolMode pool_mode = PoolMode::transaction;
  int pool_size = 20;
  int min_pool_size = 0;
  int reserve_pool_size = 0;
  int max_db_connections = 0;  // 0 = unlimited
  std::string server_reset_query = "DISCARD ALL";
  int prepared_statements = 200;  // per server connection; 0 disables the cache
  SessionStatePolicy session_state = SessionStatePolicy::pin;
  ListenPolicy listen = ListenPolicy::shared;
  // Clients of one database (all its pools) / of one user (all their pools); 0 = unlimited.
  int max_db_client_connections = 0;
  int max_user_client_connections = 0;
  // timeouts: <- databases.<db>.timeouts <- users.<user>.timeouts.
  Timeouts timeouts;
  // Takes every value a layer (defaults, a database, a user) sets.
  void apply(const PoolOverrides& layer);
};

enum class SecretKind { none, plain, md5, scram };
// What a stored password is: "md5" + 32 lowercase hex (PostgreSQL's rule), a well-formed
// "SCRAM-SHA-256$..." secret, or plain text; none for a malformed SCRAM secret.
[[nodiscard]] SecretKind classify_secret(std::string_view password);

// A users.<name> entry.
struct User {
  std::string name;
  std::string password;  // as written: plain text, "md5<32 hex>" or "SCRAM-SHA-256$..."
  SecretKind secret_kind = SecretKind::none;
  PoolOverrides pool;
};

// A databases.<name> entry: where the server is and how pools for it behave.
// The databases: entry that serves every database name without an entry of its own.
inline constexpr std::string_view kFallbackDatabase = "*";

// One databases.<db>.hosts entry: a name (each address it resolves to is a host of its own),
// an address, or a unix socket directory (starts with '/').
struct Host {
  std::string host;
  std::uint16_t port = 5432;
  friend bool operator==(const Host&, const Host&) = default;
};

struct Database {
  std::string name;  // what clients put in `database`
  // The first of `hosts` (`host`/`port` are the one-host spelling of `hosts`).
  std::string host = "127.0.0.1";
  std::uint16_t port = 5432;
  std::vector<Host> hosts{Host{"127.0.0.1", 5432}};
  Target target = Target::any;
  LoadBalance load_balance = LoadBalance::least_connections;
  Duration max_replica_lag{0};          // 0: any lag; else a replica further behind is skipped
  std::string dbname;                   // server-side database name; default: name
  std::optional<std::string> user;      // log in to the server as this user instead of the client's
  std::optional<std::string> password;  // password for `user`
  PoolOverrides pool;
};

// tls.client: pgring as the TLS server its clients talk to.
struct ClientTls {
  ClientTlsMode mode = ClientTlsMode::disable;
  std::string cert;  // PEM certificate chain file
  std::string key;   // PEM private key file
  std::string ca;    // PEM CA file: when set, clients may present certificates (auth method cert)
  std::string min_version = "TLSv1.2";  // TLSv1.2 | TLSv1.3
  std::string ciphers;  // OpenSSL cipher list for TLS 1.2 (empty: OpenSSL's default)
};

// tls.server: pgring as a TLS client of PostgreSQL.
struct ServerTls {
  ServerTlsMode mode = ServerTlsMode::disable;
  std::string ca;    // PEM CA file (verify-ca, verify-full)
  std::string cert;  // optional client certificate for PostgreSQL's cert authentication
  std::string key;
  std::string min_version = "TLSv1.2";
  std::string ciphers;
};

// A network in an auth rule: "10.0.0.0/8", "::1/128", or a bare address (all bits).
struct Network {
  int family = 0;  // AF_INET or AF_INET6
  std::array<std::uint8_t, 16> bytes{};
  int prefix = 0;
  // `address` is 4 (AF_INET) or 16 (AF_INET6) bytes in network order.
  [[nodiscard]] bool contains(int address_family, const std::uint8_t* address) const;
};
[[nodiscard]] std::optional<Network> parse_network(std::string_view text);

// An auth.rules entry, like a pg_hba.conf line. The first rule that matches a client's
// database, user, address and transport decides its method; a client no rule matches is
// rejected. Without rules, auth.method applies to every client.
struct AuthRule {
  std::vector<std::string> databases;                              // empty: all
  std::vector<std::string> users;                                  // empty: all
  enum class Source { any, local, network } source = Source::any;  // address: all | local | CIDR
  std::vector<Network> networks;                                   // Source::network
  std::optional<bool> tls;                                         // absent: either
  AuthMethod method = AuthMethod::scram_sha_256;
  std::string path;  // "auth.rules[2]", for logs and errors
};

// Who is logging in, for choosing an auth rule.
struct Peer {
  bool local = false;  // unix socket
  int family = 0;      // AF_INET / AF_INET6 for TCP
  std::array<std::uint8_t, 16> address{};
  bool tls = false;
};

// auth.query: secrets of users not in `users:` are looked up on the server (like PgBouncer's
// auth_query), over a connection as `user` (which must have a plain password in users:) to
// `database` (default: the database the client asked for). Results are kept for `cache`.
struct AuthQuery {
  std::string query = "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1";
  std::string user;
  std::string database;
  Duration cache{std::chrono::seconds(60)};
};

struct Config {
  std::vector<ListenAddress> listen{ListenAddress{"127.0.0.1", 6432, {}}};
  // TCP keepalive and user timeout on client and server sockets, so that a host that vanished
  // (no FIN, no RST) is noticed without waiting for a timeout of pgring's. Zero: the kernel's.
  struct Tcp {
    bool keepalive = true;
    Duration keepalive_idle{0};      // TCP_KEEPIDLE
    Duration keepalive_interval{0};  // TCP_KEEPINTVL
    int keepalive_count = 0;         // TCP_KEEPCNT
    Duration user_timeout{0};        // TCP_USER_TIMEOUT: unacknowledged data this long ends it
  } tcp;
  int workers = 0;  // 0 = auto (one per CPU)
  IoEngine io_engine = IoEngine::auto_;
  int max_client_conn = 10000;
  // Server logins (connect, TLS, authentication, role check) under way at once to one host,
  // over all reactors and pools; more wait for one to finish (0 = no cap). A restarted
  // PostgreSQL is not hit by every pool's pool_size logins at the same moment.
  int max_concurrent_server_logins = 16;
  // Client logins (startup packet, TLS handshake, authentication) under way at once, for the
  // process (each reactor takes its share); more clients wait, accepted but not yet read, in
  // arrival order (0 = no cap). timeouts.client_login counts from the accept.
  int max_concurrent_logins = 1000;
  // stats.fingerprints: query families kept per reactor for SHOW QUERIES and /metrics; 0 = off.
  // On by default: it costs ~2,500 instructions per simple-protocol query (docs/operations.md).
  int stats_fingerprints = 1000;
  // stats.fingerprint_metrics: the families /metrics exports, most time in PostgreSQL first
  // (each is a dozen series: the label set stays bounded); 0 = none.
  int stats_fingerprint_metrics = 100;
  std::uint32_t max_message_size = 64u << 20;  // largest client message accepted, bytes
  LogLevel log_level = LogLevel::info;
  LogFormat log_format = LogFormat::text;
  bool log_connections = true;     // each client login at info (else debug)
  bool log_disconnections = true;  // each client close at info, with its reason (else debug)
  std::string log_file;            // appended to, reopened on SIGUSR1; empty: stderr
  // log.slow_query: a request this long in PostgreSQL (first byte sent .. ReadyForQuery) is
  // logged with its query family (never parameter values); 0 = off.
  Duration log_slow_query{0};
  std::optional<ListenAddress> metrics_listen;  // absent = no HTTP endpoint
  // upgrade.socket: the control socket a new pgring started with --takeover finds this one at
  // (docs/operations.md, "Upgrading in place"); "" = the default (upgrade_socket_path), "off".
  std::string upgrade_socket;
  std::vector<std::string> admin_users;
  std::vector<std::string> stats_users;
  AuthMethod auth_method = AuthMethod::scram_sha_256;
  std::vector<AuthRule> auth_rules;
  std::optional<AuthQuery> auth_query;
  ClientTls tls_client;
  ServerTls tls_server;
  std::map<std::string, User, std::less<>> users;
  PoolSettings defaults;
  Timeouts timeouts;
  std::map<std::string, Database, std::less<>> databases;
  // Startup parameters dropped from every client's startup packet (PgBouncer's setting of the
  // same name): neither applied to the session nor sent to a server. `options` drops the whole
  // `options` parameter; any other name drops it, and its "-c name=value" inside `options`.
  std::vector<std::string> ignore_startup_parameters;
  // Host names of databases.<db>.hosts are looked up again this often (and when a connection to
  // one fails), off the reactor threads.
  struct Dns {
    Duration ttl{std::chrono::seconds(30)};
  } dns;
  // Every host of a database with several hosts or a target is checked this often: its role
  // (pg_is_in_recovery()), its replay lag, and `query` when set. The check logs in as `user`
  // (default: the database's forced user) with `password` (plain text).
  struct HealthCheck {
    Duration interval{std::chrono::seconds(5)};
    Duration timeout{std::chrono::seconds(2)};
    std::string query;
    std::string user;
    std::string password;
  } health_check;

  [[nodiscard]] const User* find_user(std::string_view name) const;
  [[nodiscard]] const Database* find_database(std::string_view name) const;
  // The database a client's `database` names: its own entry, else one made from the fallback
  // entry "*" (named as the client asked; dbname the same unless "*" sets one), else none.
  [[nodiscard]] std::optional<Database> database_for(std::string_view name) const;
  // defaults <- databases.<db> <- users.<user> (user may be null).
  [[nodiscard]] PoolSettings resolve_pool(const Database& db, const User* user) const;
  // The method for this login: the first auth rule that matches (rule = its path), auth.method
  // when there are no rules (rule = "auth.method"), or reject when no rule matches (rule = "").
  struct AuthChoice {
    AuthMethod method;
    std::string_view rule;
  };
  [[nodiscard]] AuthChoice choose_auth(std::string_view database, std::string_view user,
                                       const Peer& peer) const;
};

// A configuration error names the YAML path and line:
//   "databases.app.pool_size (line 14): must be a positive integer"
class ConfigError : public std::runtime_error {
 public:
  ConfigError(std::string path, int line, const std::string& message);
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] int line() const { return line_; }  // 1-based; 0 when unknown
  // The message alone, without path and line (what() has all three).
  [[nodiscard]] const std::string& message() const { return message_; }

 private:
  std::string path_;
  int line_;
  std::string message_;
};

// Parse and validate YAML text. Throws ConfigError.
[[nodiscard]] Config parse_config(std::string_view yaml_text);
// Read a file and parse it. Throws ConfigError (path "" and the OS error for unreadable files).
[[nodiscard]] Config load_config_file(const std::string& file_path);

// What is valid but almost certainly not what was meant (an empty file, no databases): --check
// prints these, the daemon logs them at start.
[[nodiscard]] std::vector<std::string> config_warnings(const Config& config);

// The upgrade's control socket: upgrade.socket, or by default ".s.PGRING.<port>" (the first TCP
// port, else 6432) in the first unix socket directory of listen, else in /tmp; "" when off.
[[nodiscard]] std::string upgrade_socket_path(const Config& config);

// "250ms", "15s", "2m", "1h", "0" -> duration. nullopt when malformed.
[[nodiscard]] std::optional<Duration> parse_duration(std::string_view text);
// "65536", "64KiB", "64MiB", "1GiB" (also kB/MB/GB as powers of 1024) -> bytes. nullopt when
// malformed.
[[nodiscard]] std::optional<std::uint64_t> parse_size(std::string_view text);
// Whole-string unsigned decimal; no sign, no spaces, no "0x". nullopt when malformed or on
// overflow.
[[nodiscard]] std::optional<std::uint64_t> parse_digits(std::string_view text);

}  // namespace pgring::config
