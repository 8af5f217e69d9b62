// pgring: a PostgreSQL connection pooler on io_uring.
//   pgring --config pgring.yaml           run in the foreground
//   pgring --config pgring.yaml --check   validate the configuration and exit
//   pgring --config pgring.yaml --takeover
//                                         take over from the pgring running with this config
//                                         (its listeners and clients: an upgrade in place)
//   pgring convert-pgbouncer pgbouncer.ini [--userlist F] [--hba F] [-o pgring.yaml]
//                                         PgBouncer's configuration as pgring's YAML

#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "config/config.hpp"
#include "config/pgbouncer.hpp"
#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/core/shared.hpp"
#include "daemon/net/tls.hpp"
#include "daemon/ops/cpus.hpp"
#include "daemon/ops/upgrade.hpp"
#include "daemon/pool/hosts.hpp"

namespace {

std::optional<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// pgring convert-pgbouncer: the YAML goes to stdout (or -o), the notes to stderr as well.
int convert_pgbouncer(const std::string& ini_path, const std::string& userlist_path,
                      const std::string& hba_path, const std::string& out_path) {
  namespace pgb = pgring::config::pgbouncer;
  std::optional<std::string> ini = read_file(ini_path), userlist, hba;
  if (!ini) {
    std::fprintf(stderr, "pgring: cannot read %s\n", ini_path.c_str());
    return 1;
  }
  pgb::Sources sources;
  sources.ini = *ini;
  sources.ini_name = ini_path;
  for (auto [path, text, name, view] :
       {std::tuple{&userlist_path, &userlist, &sources.userlist_name, &sources.userlist},
        std::tuple{&hba_path, &hba, &sources.hba_name, &sources.hba}}) {
    if (path->empty()) continue;
    *text = read_file(*path);
    if (!*text) {
      std::fprintf(stderr, "pgring: cannot read %s\n", path->c_str());
      return 1;
    }
    *name = *path;
    *view = **text;
  }
  pgb::Conversion result = pgb::convert(sources);
  for (const std::string& n : result.notes) std::fprintf(stderr, "note: %s\n", n.c_str());
  if (out_path.empty() || out_path == "-") {
    std::fwrite(result.yaml.data(), 1, result.yaml.size(), stdout);
    return 0;
  }
  std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
  out << result.yaml;
  if (!out.flush()) {
    std::fprintf(stderr, "pgring: cannot write %s\n", out_path.c_str());
    return 1;
  }
  std::fprintf(stderr, "wrote %s (%zu notes); check it with: pgring --config %s --check\n",
               out_path.c_str(), result.notes.size(), out_path.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pgring: a PostgreSQL connection pooler on io_uring"};
  std::string config_path;
  bool check = false;
  app.add_option("-c,--config", config_path, "configuration file (YAML)");
  app.add_flag("--check", check, "validate the configuration and exit");
  bool takeover = false;
  app.add_flag("--takeover", takeover,
               "take over from the pgring running with this configuration (upgrade.socket): its "
               "listening sockets and its clients");
  app.set_version_flag("--version", std::string("pgring ") + PGRING_VERSION);
  std::string ini_path, userlist_path, hba_path, out_path;
  CLI::App* convert =
      app.add_subcommand("convert-pgbouncer", "write PgBouncer's configuration as pgring's YAML");
  convert->add_option("pgbouncer.ini", ini_path, "PgBouncer's configuration file")->required();
  convert->add_option("--userlist", userlist_path, "its auth_file (userlist.txt)");
  convert->add_option("--hba", hba_path, "its auth_hba_file");
  convert->add_option("-o,--output", out_path, "where to write the YAML (default: stdout)");
  CLI11_PARSE(app, argc, argv);
  if (convert->parsed()) return convert_pgbouncer(ini_path, userlist_path, hba_path, out_path);
  if (config_path.empty()) {
    std::fprintf(stderr, "pgring: --config is required\n%s", app.help().c_str());
    return 1;
  }

  std::shared_ptr<const pgring::config::Config> config;
  std::shared_ptr<const pgring::TlsContexts> tls;
  try {
    config = std::make_shared<const pgring::config::Config>(
        pgring::config::load_config_file(config_path));
    tls = pgring::build_tls(*config);  // --check reads the certificates too
  } catch (const pgring::config::ConfigError& e) {
    std::fprintf(stderr, "pgring: %s: %s\n", config_path.c_str(), e.what());
    return 1;
  }
  const std::vector<std::string> warnings = pgring::config::config_warnings(*config);
  if (check) {
    for (const std::string& w : warnings)
      std::fprintf(stderr, "pgring: %s: warning: %s\n", config_path.c_str(), w.c_str());
    std::printf("configuration ok%s\n", warnings.empty() ? "" : " (with warnings)");
    return 0;
  }
  pgring::log::init(config->log_level, config->log_format);
  if (std::string problem = pgring::log::use_file(config->log_file); !problem.empty()) {
    std::fprintf(stderr, "pgring: %s: log.file: %s\n", config_path.c_str(), problem.c_str());
    return 1;
  }
  for (const std::string& w : warnings) pgring::log::warning("{}", w);
  int workers = config->workers;
  if (workers <= 0) {
    // auto: one reactor per CPU this process may use, not per CPU of the host (a sidecar
    // limited to 2 CPUs on a 64-core node would otherwise start 64 reactors).
    pgring::UsableCpus cpus = pgring::usable_cpus();
    workers = cpus.count();
    if (cpus.quota)
      pgring::log::info("workers: auto = {} ({} CPUs in the affinity mask, a quota of {} in {})",
                        workers, cpus.affinity, *cpus.quota, cpus.quota_source);
    else
      pgring::log::info("workers: auto = {} ({} CPUs in the affinity mask, no CPU quota)", workers,
                        cpus.affinity);
  }
  if (workers > pgring::kMaxWorkers) {
    pgring::log::warning("workers: {} is more than {}; running {}", workers, pgring::kMaxWorkers,
                         pgring::kMaxWorkers);
    workers = pgring::kMaxWorkers;
  }

  // Signals are read by the reactor from a signalfd: block them for every thread.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigaddset(&mask, SIGUSR1);
  sigaddset(&mask, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // Every client and server connection is a file descriptor: take the whole hard limit.
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 &&
      files.rlim_cur < static_cast<rlim_t>(config->max_client_conn) + 100)
    pgring::log::warning(
        "the open files limit ({}) is below max_client_conn ({}); raise LimitNOFILE / ulimit -n",
        files.rlim_cur, config->max_client_conn);

  // One reactor per thread, each created on its own thread (its ring is SINGLE_ISSUER); reactor
  // 0 runs here. A reactor object stays alive until every reactor has stopped, because the
  // others may still post to it.
  pgring::Shared shared(workers);
  // The upgrade's control socket; with --takeover, the running pgring's listeners first.
  std::unique_ptr<pgring::Upgrade> upgrade;
  if (std::string path = pgring::config::upgrade_socket_path(*config); !path.empty()) {
    try {
      upgrade = std::make_unique<pgring::Upgrade>(shared, path);
    } catch (const std::exception& e) {
      pgring::log::warning("{}: no upgrade in place", e.what());
    }
  }
  if (takeover) {
    if (!upgrade) {
      pgring::log::error("--takeover: upgrade.socket is off in {}", config_path);
      return 1;
    }
    try {
      upgrade->connect();
    } catch (const std::exception& e) {
      pgring::log::error("{}", e.what());
      return 1;
    }
  }
  shared.upgrade = upgrade.get();
  // Host names are looked up once here, before the first client; from then on by the hosts
  // monitor thread (and health checks run there), never on a reactor.
  pgring::HostDirectory hosts(shared);
  hosts.configure(*config);
  hosts.resolve_all();
  hosts.check_all();
  shared.hosts = &hosts;
  std::latch started(workers - 1);
  std::latch finished(workers);
  std::atomic<bool> start_failed{false};
  std::vector<std::thread> threads;
  auto run_worker = [&](int index) {
    // "top -H" and the tests tell the reactors apart by name (15 characters at most).
    std::string name = "reactor-" + std::to_string(index);
    pthread_setname_np(pthread_self(), name.c_str());
    std::unique_ptr<pgring::Reactor> reactor;
    try {
      reactor = std::make_unique<pgring::Reactor>(shared, index, config, tls, config_path);
      reactor->listen();
      shared.reactors[static_cast<std::size_t>(index)] = reactor.get();
    } catch (const std::exception& e) {
      pgring::log::error("reactor {}: {}", index, e.what());
      start_failed = true;
      reactor.reset();
    }
    started.count_down();
    if (reactor) reactor->run();
    finished.arrive_and_wait();
  };
  int rc = 0;
  try {
    pgring::Reactor reactor(shared, 0, config, tls, config_path);
    reactor.listen();
    reactor.listen_metrics();
    shared.reactors[0] = &reactor;
    for (int i = 1; i < workers; ++i) threads.emplace_back(run_worker, i);
    started.wait();
    if (upgrade) upgrade->drop_untaken();
    hosts.start();
    if (start_failed) {
      rc = 1;
      reactor.broadcast(
          [](pgring::Reactor& r) { r.begin_shutdown(pgring::Reactor::ShutdownMode::immediate); });
    } else {
      if (upgrade) {
        upgrade->begin_adopting();  // (--takeover: the old process stops accepting now)
        upgrade->serve();
      }
      pgring::log::info("{} reactor thread{} serving (I/O engine: {})", workers,
                        workers == 1 ? "" : "s", reactor.io_engine());
      // After a takeover this process is the service's main one (NotifyAccess=all).
      sd_notify(0,
                fmt::format("READY=1\nSTATUS=accepting connections\nMAINPID={}", getpid()).c_str());
    }
    int run_rc = reactor.run();
    hosts.stop();                           // before any reactor goes: the monitor posts to them
    if (upgrade) upgrade->stop_adopting();  // (it posts to them too)
    if (rc == 0) rc = run_rc;
    finished.arrive_and_wait();
    // Every reactor stopped: every client an upgrade took is queued; the rest goes, then "done".
    if (upgrade) upgrade->finish();
  } catch (const std::exception& e) {
    pgring::log::error("{}", e.what());
    // The other reactors (if any started) are told to stop through the signal path's absence:
    // nothing can reach them without reactor 0, so the process ends here.
    std::_Exit(1);
  }
  for (auto& t : threads) t.join();
  pgring::log::info("stopped");
  return rc;
}
