// YAML text -> validated Config (config/pgring.yaml is the reference).
//
// Shape of the loader: a walk over the yaml-cpp node tree that knows, for every map, the keys
// it accepts. Each value is checked where it is read, so an error can always name its YAML path
// and line; cross-key rules (min_pool_size <= pool_size, secrets vs auth method) run once the
// whole tree is read. yaml-cpp exceptions never leave config/: they become ConfigError.

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "config/config.hpp"
#include "config/yaml_items.hpp"

namespace pgring::config {

using namespace yaml_items;

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
      } else if (key == "max_concurrent_logins") {
        config_.max_concurrent_logins = integer(item, 0, kMaxCount);
      } else if (key == "max_concurrent_server_logins") {
        config_.max_concurrent_server_logins = integer(item, 0, kMaxCount);
      } else if (key == "max_message_size") {
        max_message_size(item);
      } else if (key == "log") {
        log(item);
      } else if (key == "metrics") {
        metrics(item);
      } else if (key == "tcp") {
        tcp(item);
      } else if (key == "io") {
        for_each_entry(item, {"engine"}, [&](const std::string&, const Item& engine) {
          config_.io_engine = one_of<IoEngine>(engine, {{"auto", IoEngine::auto_},
                                                        {"io_uring", IoEngine::io_uring},
                                                        {"epoll", IoEngine::epoll}});
        });
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
      } else if (key == "dns") {
        for_each_entry(item, {"ttl"}, [&](const std::string&, const Item& ttl) {
          config_.dns.ttl = duration(ttl);
          if (config_.dns.ttl.count() == 0) ttl.fail("must be more than 0");
        });
      } else if (key == "stats") {
        for_each_entry(item, {"fingerprints", "fingerprint_metrics"},
                       [&](const std::string& name, const Item& value) {
                         (name == "fingerprints" ? config_.stats_fingerprints
                                                 : config_.stats_fingerprint_metrics) =
                             integer(value, 0, kMaxCount);
                       });
      } else if (key == "health_check") {
        health_check(item);
      } else if (key == "upgrade") {
        for_each_entry(item, {"socket"}, [&](const std::string&, const Item& path) {
          config_.upgrade_socket = non_empty_string(path);
          if (config_.upgrade_socket != "off" && config_.upgrade_socket.front() != '/')
            path.fail("must be an absolute path, or off");
          if (config_.upgrade_socket.size() >= 108)
            path.fail("is too long for a unix socket path (107 bytes at most)");
        });
      } else if (key == "ignore_startup_parameters") {
        config_.ignore_startup_parameters.clear();
        for (std::string& name : string_list(item)) {
          if (name == "user" || name == "database" || name == "replication")
            item.fail("'" + name + "' cannot be ignored: it says what the connection is");
          config_.ignore_startup_parameters.push_back(std::move(name));
        }
      }
    });
    finish_listen(listen_item);
    check_auth();
    check_secrets();
    check_pool_sizes();
    return config_;
  }

 private:
  inline static const std::vector<std::string_view> kTopKeys = {"listen",
                                                                "workers",
                                                                "max_client_conn",
                                                                "max_concurrent_server_logins",
                                                                "max_concurrent_logins",
                                                                "max_message_size",
                                                                "log",
                                                                "metrics",
                                                                "admin",
                                                                "auth",
                                                                "users",
                                                                "defaults",
                                                                "timeouts",
                                                                "databases",
                                                                "tls",
                                                                "tcp",
                                                                "io",
                                                                "dns",
                                                                "health_check",
                                                                "stats",
                                                                "upgrade",
                                                                "ignore_startup_parameters"};

  void health_check(const Item& section) {
    auto& check = config_.health_check;
    for_each_entry(section, {"interval", "timeout", "query", "user", "password"},
                   [&](const std::string& key, const Item& item) {
                     if (key == "interval") {
                       check.interval = duration(item);
                       if (check.interval.count() == 0) item.fail("must be more than 0");
                     } else if (key == "timeout") {
                       check.timeout = duration(item);
                       if (check.timeout.count() == 0) item.fail("must be more than 0");
                     } else if (key == "query") {
                       check.query = scalar(item);
                     } else if (key == "user") {
                       check.user = non_empty_string(item);
                     } else if (key == "password") {
                       check.password = scalar(item);
                     }
                   });
  }

  // A hosts: entry: "name", "name:port", "[v6]:port", "/socket/dir", or {host, port}.
  static Host host_entry(const Item& item) {
    Host out;
    if (item.node.IsMap()) {
      bool has_host = false;
      for_each_entry(item, {"host", "port"}, [&](const std::string& key, const Item& value) {
        if (key == "host") {
          out.host = non_empty_string(value);
          has_host = true;
        } else {
          out.port = port_number(value, scalar(value, "a port number"));
        }
      });
      if (!has_host) item.fail("a host entry needs host:");
      return out;
    }
    std::string text = non_empty_string(item);
    std::size_t colon = text.rfind(':');
    if (text.starts_with('/')) {
      out.host = text;  // a socket directory: {host, port} for another port than 5432
    } else if (text.starts_with('[')) {
      std::size_t close = text.find(']');
      if (close == std::string::npos) item.fail("expected [address]:port");
      out.host = text.substr(1, close - 1);
      if (close + 1 < text.size()) {
        if (text[close + 1] != ':') item.fail("expected [address]:port");
        out.port = port_number(item, text.substr(close + 2));
      }
    } else if (colon != std::string::npos && text.find(':') == colon) {
      out.host = text.substr(0, colon);
      out.port = port_number(item, text.substr(colon + 1));
    } else {
      out.host = text;  // a name, an IPv4 address or a bare IPv6 address
    }
    if (out.host.empty()) item.fail("the host name is empty");
    return out;
  }

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
    for_each_entry(
        section, {"level", "format", "connections", "disconnections", "file", "slow_query"},
        [&](const std::string& key, const Item& item) {
          if (key == "level") {
            config_.log_level = one_of<LogLevel>(item, {{"debug", LogLevel::debug},
                                                        {"info", LogLevel::info},
                                                        {"warning", LogLevel::warning},
                                                        {"error", LogLevel::error}});
          } else if (key == "format") {
            config_.log_format =
                one_of<LogFormat>(item, {{"text", LogFormat::text}, {"json", LogFormat::json}});
          } else if (key == "connections") {
            config_.log_connections = boolean(item);
          } else if (key == "disconnections") {
            config_.log_disconnections = boolean(item);
          } else if (key == "slow_query") {
            config_.log_slow_query = duration(item);
          } else {
            config_.log_file = non_empty_string(item);
          }
        });
  }

  static bool boolean(const Item& item) {
    if (!item.node.IsScalar() || (item.node.Scalar() != "true" && item.node.Scalar() != "false"))
      item.fail("must be true or false");
    return item.node.Scalar() == "true";
  }

  void tcp(const Item& section) {
    for_each_entry(
        section,
        {"keepalive", "keepalive_idle", "keepalive_interval", "keepalive_count", "user_timeout"},
        [&](const std::string& key, const Item& item) {
          if (key == "keepalive") {
            config_.tcp.keepalive = boolean(item);
          } else if (key == "keepalive_idle") {
            config_.tcp.keepalive_idle = duration(item);
          } else if (key == "keepalive_interval") {
            config_.tcp.keepalive_interval = duration(item);
          } else if (key == "keepalive_count") {
            config_.tcp.keepalive_count = integer(item, 0, 127);
          } else {
            config_.tcp.user_timeout = duration(item);
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
    for_each_entry(section, {"method", "rules", "query"},
                   [&](const std::string& key, const Item& item) {
                     if (key == "method") {
                       auth_method_line_ = item.line;
                       config_.auth_method = auth_method(item);
                       if (config_.auth_method == AuthMethod::reject)
                         item.fail("reject would refuse everyone; use it in auth.rules");
                       if (config_.auth_method == AuthMethod::cert)
                         cert_rule_ = {item.path, item.line};
                     } else if (key == "rules") {
                       auth_rules(item);
                     } else {
                       auth_query(item);
                     }
                   });
  }

  void auth_rules(const Item& list) {
    if (!list.node.IsSequence())
      list.fail("expected a list of rules, got " + std::string(type_name(list.node)));
    std::size_t i = 0;
    for (const YAML::Node& node : list.node) {
      const Item entry = make_item(index_path(list.path, i++), node, list.line);
      AuthRule rule;
      rule.path = entry.path;
      bool has_method = false;
      for_each_entry(
          entry, {"database", "user", "address", "tls", "method"},
          [&](const std::string& key, const Item& item) {
            if (key == "database" || key == "user") {
              std::vector<std::string> names = string_list(item);
              if (names.size() == 1 && names[0] == "all") names.clear();
              (key == "database" ? rule.databases : rule.users) = std::move(names);
            } else if (key == "address") {
              std::vector<std::string> entries = string_list(item);
              if (entries.size() > 1 &&
                  std::any_of(entries.begin(), entries.end(),
                              [](const std::string& e) { return e == "all" || e == "local"; }))
                item.fail("all and local stand alone; a list holds networks only");
              for (const std::string& text : entries) {
                if (text == "all") {
                  rule.source = AuthRule::Source::any;
                } else if (text == "local") {
                  rule.source = AuthRule::Source::local;
                } else {
                  auto net = parse_network(text);
                  if (!net)
                    item.fail("'" + text +
                              "' is not all, local, an address or a network like 10.0.0.0/8");
                  rule.source = AuthRule::Source::network;
                  rule.networks.push_back(*net);
                }
              }
            } else if (key == "tls") {
              if (!item.node.IsScalar() ||
                  (item.node.Scalar() != "true" && item.node.Scalar() != "false"))
                item.fail(
                    "must be true (TLS connections only) or false (plain ones only); omit it for "
                    "both");
              rule.tls = item.node.Scalar() == "true";
            } else {
              has_method = true;
              rule.method = auth_method(item);
              if (rule.method == AuthMethod::cert && !cert_rule_.first.size())
                cert_rule_ = {item.path, item.line};
            }
          });
      if (!has_method)
        entry.fail("a rule needs a method (trust, reject, md5, scram-sha-256 or cert)");
      config_.auth_rules.push_back(std::move(rule));
    }
  }

  void auth_query(const Item& section) {
    AuthQuery query;
    for_each_entry(section, {"query", "user", "database", "cache"},
                   [&](const std::string& key, const Item& item) {
                     if (key == "query")
                       query.query = non_empty_string(item);
                     else if (key == "user")
                       query.user = non_empty_string(item);
                     else if (key == "database")
                       query.database = non_empty_string(item);
                     else
                       query.cache = duration(item);
                   });
    if (query.user.empty())
      section.fail("auth.query needs a user: who runs the lookup on the server");
    auth_query_line_ = section.line;
    config_.auth_query = std::move(query);
  }

  static std::string tls_version(const Item& item) {
    return std::string(
        one_of<std::string_view>(item, {{"TLSv1.2", "TLSv1.2"}, {"TLSv1.3", "TLSv1.3"}}));
  }

  void tls(const Item& section) {
    for_each_entry(section, {"client", "server"}, [&](const std::string& key, const Item& side) {
      if (key == "client") {
        ClientTls& t = config_.tls_client;
        for_each_entry(
            side, {"mode", "cert", "key", "ca", "min_version", "ciphers"},
            [&](const std::string& k, const Item& item) {
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
        for_each_entry(
            side, {"mode", "ca", "cert", "key", "min_version", "ciphers"},
            [&](const std::string& k, const Item& item) {
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
        if ((t.mode == ServerTlsMode::verify_ca || t.mode == ServerTlsMode::verify_full) &&
            t.ca.empty())
          side.fail("mode " + std::string(to_string(t.mode)) +
                    " needs ca (the CA file that signed the server's certificate)");
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
        throw ConfigError(
            "auth.query.user", auth_query_line_,
            "'" + config_.auth_query->user +
                "' must be in users: with a plain password (pgring logs in to the server as it)");
      if (!config_.auth_query->database.empty() &&
          !config_.database_for(config_.auth_query->database))
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
    config_.defaults.apply(overrides);
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
        with_pool_keys({"host", "port", "hosts", "target", "load_balance", "max_replica_lag",
                        "dbname", "user", "password", "timeouts"});
    for_each_entry(section, {}, [&](const std::string& name, const Item& entry) {
      if (name.empty()) entry.fail("a database name must not be empty");
      if (name == "pgring") {
        entry.fail("the database name 'pgring' is reserved for the admin console");
      }
      Database db;
      db.name = name;
      // The fallback entry connects to the database each client names (unless it sets dbname).
      if (name != kFallbackDatabase) db.dbname = name;
      PoolMarks& marks = database_marks_[name];
      Item password_item;
      Item hosts_item;
      Item host_item;
      for_each_entry(entry, kDatabaseKeys, [&](const std::string& key, const Item& item) {
        if (key == "host") {
          db.host = non_empty_string(item);
          host_item = item;
        } else if (key == "port") {
          db.port = port_number(item, scalar(item, "a port number"));
          host_item = item;
        } else if (key == "hosts") {
          hosts_item = item;
          if (!item.node.IsSequence() || item.node.size() == 0)
            item.fail("expected a list of hosts (\"host:port\" or {host, port})");
          db.hosts.clear();
          std::size_t i = 0;
          for (const YAML::Node& node : item.node) {
            const Item element = make_item(index_path(item.path, i++), node, item.line);
            Host host = host_entry(element);
            for (const Host& other : db.hosts)
              if (other == host) element.fail("duplicate host");
            db.hosts.push_back(std::move(host));
          }
        } else if (key == "target") {
          db.target = one_of<Target>(item, {{"any", Target::any},
                                            {"primary", Target::primary},
                                            {"replica", Target::replica},
                                            {"prefer-replica", Target::prefer_replica},
                                            {"read-write", Target::primary},
                                            {"read-only", Target::replica},
                                            {"standby", Target::replica},
                                            {"prefer-standby", Target::prefer_replica}});
        } else if (key == "load_balance") {
          db.load_balance =
              one_of<LoadBalance>(item, {{"least_connections", LoadBalance::least_connections},
                                         {"round_robin", LoadBalance::round_robin}});
        } else if (key == "max_replica_lag") {
          db.max_replica_lag = duration(item);
        } else if (key == "dbname") {
          db.dbname = non_empty_string(item);
        } else if (key == "user") {
          db.user = non_empty_string(item);
        } else if (key == "password") {
          db.password = scalar(item);
          password_item = item;
        } else if (key == "timeouts") {
          pool_timeouts(item, db.pool);
        } else if (is_pool_key(key)) {
          pool_key(key, item, db.pool, marks);
        }
      });
      if (!hosts_item.path.empty() && !host_item.path.empty())
        host_item.fail("set either host/port or hosts, not both");
      if (!hosts_item.path.empty()) {
        db.host = db.hosts.front().host;
        db.port = db.hosts.front().port;
      } else {
        db.hosts = {Host{db.host, db.port}};
      }
      if (db.password && !db.user) {
        password_item.fail(
            "a password is the forced user's: set databases." + name +
            ".user too (without it, pgring logs in as each client's user with users: passwords)");
      }
      config_.databases.emplace(name, std::move(db));
    });
  }

  void check_secrets() {
    // With rules, whether a user needs a password depends on the rule that matches a login: a
    // user without one is refused at login by a password rule (28P01), not here.
    // With auth.query, an entry without a password holds settings only: the lookup gives the
    // secret (check_auth() requires the auth user's own plain password).
    const bool needs_password = config_.auth_rules.empty() && !config_.auth_query &&
                                config_.auth_method != AuthMethod::trust &&
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

// The first line (1-based) whose indentation has a tab, or 0.
int first_tab_indented_line(std::string_view text) {
  int line = 1;
  bool indent = true;
  for (char c : text) {
    if (c == '\n') {
      ++line;
      indent = true;
    } else if (indent && c == '\t') {
      return line;
    } else if (c != ' ') {
      indent = false;
    }
  }
  return 0;
}

}  // namespace

std::string upgrade_socket_path(const Config& config) {
  if (config.upgrade_socket == "off") return {};
  if (!config.upgrade_socket.empty()) return config.upgrade_socket;
  std::uint16_t port = 6432;
  std::string dir = "/tmp";
  bool have_port = false, have_dir = false;
  for (const ListenAddress& a : config.listen) {
    if (a.unix_dir.empty() && !have_port) {
      port = a.port;
      have_port = true;
    } else if (!a.unix_dir.empty() && !have_dir) {
      dir = a.unix_dir;
      have_dir = true;
    }
  }
  return dir + "/.s.PGRING." + std::to_string(port);
}

std::vector<std::string> config_warnings(const Config& config) {
  std::vector<std::string> out;
  if (config.databases.empty())
    out.emplace_back(
        "databases: none configured: every client is refused (3D000) but the admin console's");
  return out;
}

Config parse_config(std::string_view yaml_text) {
  YAML::Node root;
  try {
    root = load_single_document(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    const int line = e.mark.line >= 0 ? e.mark.line + 1 : 0;
    // yaml-cpp says "illegal map value" or the like for a tab in the indentation.
    std::string message = e.msg;
    if (int tab = first_tab_indented_line(yaml_text); tab > 0 && (line == 0 || tab <= line))
      message += "; line " + std::to_string(tab) + " indents with a tab: YAML indents with spaces";
    throw ConfigError("", line, message);
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
