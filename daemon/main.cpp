// pgring: a PostgreSQL connection pooler on io_uring.
//   pgring --config pgring.yaml           run in the foreground
//   pgring --config pgring.yaml --check   validate the configuration and exit

#include <signal.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <memory>

#include "config/config.hpp"
#include "daemon/log.hpp"
#include "daemon/reactor.hpp"

int main(int argc, char** argv) {
  CLI::App app{"pgring: a PostgreSQL connection pooler on io_uring"};
  std::string config_path;
  bool check = false;
  app.add_option("-c,--config", config_path, "configuration file (YAML)")->required();
  app.add_flag("--check", check, "validate the configuration and exit");
  app.set_version_flag("--version", std::string("pgring ") + PGRING_VERSION);
  CLI11_PARSE(app, argc, argv);

  std::shared_ptr<const pgring::config::Config> config;
  try {
    config = std::make_shared<const pgring::config::Config>(pgring::config::load_config_file(config_path));
  } catch (const pgring::config::ConfigError& e) {
    std::fprintf(stderr, "pgring: %s: %s\n", config_path.c_str(), e.what());
    return 1;
  }
  if (check) {
    std::printf("configuration ok\n");
    return 0;
  }
  pgring::log::init(config->log_level, config->log_format);
  if (config->workers != 1)
    pgring::log::info("running one reactor thread (multi-reactor workers are not implemented yet)");

  // Signals are read by the reactor from a signalfd: block them for every thread.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
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
    pgring::log::warning("the open files limit ({}) is below max_client_conn ({}); raise LimitNOFILE / ulimit -n",
                         files.rlim_cur, config->max_client_conn);

  try {
    pgring::Reactor reactor(config, config_path);
    reactor.listen();
    reactor.listen_metrics();
    sd_notify(0, "READY=1\nSTATUS=accepting connections");
    int rc = reactor.run();
    sd_notify(0, "STOPPING=1");
    pgring::log::info("stopped");
    return rc;
  } catch (const std::exception& e) {
    pgring::log::error("{}", e.what());
    return 1;
  }
}
