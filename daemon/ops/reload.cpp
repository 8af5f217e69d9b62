// (split from core/reactor.cpp)
#include <arpa/inet.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/ops/upgrade.hpp"
#include "proto/builders.hpp"

namespace pgring {

void Reactor::on_signal(int result) {
  if (result == static_cast<int>(sizeof(signalfd_siginfo))) {
    signalfd_siginfo info;
    std::memcpy(&info, signal_buffer_, sizeof info);
    switch (info.ssi_signo) {
      case SIGTERM:
        log::info("SIGTERM: graceful shutdown (waiting up to {} ms for transactions)",
                  config_->timeouts.shutdown.count());
        broadcast([](Reactor& r) { r.begin_shutdown(ShutdownMode::graceful); });
        break;
      case SIGINT:
        log::info("SIGINT: immediate shutdown");
        broadcast([](Reactor& r) { r.begin_shutdown(ShutdownMode::immediate); });
        break;
      case SIGUSR1:
        // logrotate moved the file away: write to a fresh one at log.file's path.
        if (std::string problem = log::reopen(); !problem.empty())
          log::error("SIGUSR1: {}; still writing to the old file", problem);
        else
          log::info("SIGUSR1: log file reopened");
        break;
      case SIGUSR2:
        // An upgrade in place the systemd way (`systemctl kill -s USR2 --kill-whom=main`): the
        // binary at this process's path (a new version, once installed) takes over.
        if (shared_.upgrade == nullptr)
          log::warning("SIGUSR2: upgrade.socket is off: no upgrade in place");
        else
          shared_.upgrade->spawn_takeover(config_path_);
        break;
      case SIGHUP: {
        sd_notify(0, "RELOADING=1");
        std::string problem = reload();
        sd_notify(0, "READY=1");
        (void)problem;  // reload() logged it
        break;
      }
      default:
        break;
    }
  }
  if (!stopped_) arm_signal();
}

std::string Reactor::reload() {
  std::shared_ptr<const config::Config> fresh;
  std::shared_ptr<const TlsContexts> tls;
  try {
    fresh = std::make_shared<const config::Config>(config::load_config_file(config_path_));
    // Certificates are read again too: a renewed certificate is picked up by new connections.
    tls = build_tls(*fresh);
  } catch (const config::ConfigError& e) {
    ++reload_failures_;
    log::error("reload of {} failed, keeping the running configuration: {}", config_path_,
               e.what());
    return e.what();
  }
  ++reloads_;
  const config::Config& old = *config_;
  // Listeners, workers, the I/O engine and the metrics endpoint are set up once: changing them
  // needs a restart.
  auto listen_text = [](const config::Config& c) {
    std::string t;
    for (const auto& l : c.listen) t += l.host + ":" + std::to_string(l.port) + l.unix_dir + " ";
    return t;
  };
  if (listen_text(old) != listen_text(*fresh))
    log::warning("reload: listen changed; it takes effect after a restart");
  if (old.workers != fresh->workers)
    log::warning("reload: workers changed; it takes effect after a restart");
  if (old.io_engine != fresh->io_engine)
    log::warning("reload: io.engine changed; it takes effect after a restart");
  auto metrics_text = [](const config::Config& c) {
    return c.metrics_listen ? c.metrics_listen->host + ":" + std::to_string(c.metrics_listen->port)
                            : std::string();
  };
  if (metrics_text(old) != metrics_text(*fresh))
    log::warning("reload: metrics.listen changed; it takes effect after a restart");
  shared_.hosts->configure(*fresh);  // new hosts are looked up by its monitor thread
  broadcast([fresh, tls](Reactor& r) { r.apply_config(fresh, tls); });
  log::info("configuration reloaded from {}", config_path_);
  return {};
}

void Reactor::apply_config(std::shared_ptr<const config::Config> fresh,
                           std::shared_ptr<const TlsContexts> tls) {
  retired_configs_.push_back(config_);
  config_ = std::move(fresh);
  tls_ = std::move(tls);
  startups_.set_ignored(config_->ignore_startup_parameters);
  queries_.configure(*config_);
  if (!config_->auth_query) {
    // auth.query is gone: nobody is looked up any more, and nobody waits for a lookup.
    for (auto& [key, pool] : pools_) {
      (void)key;
      while (!pool->lookups_.empty())
        close(*pool->lookups_.front(), Reason::auth_query_failed,
              "authentication failed: auth.query was removed");
    }
  }
  if (index_ == 0) {
    log::init(config_->log_level, config_->log_format);
    if (std::string problem = log::use_file(config_->log_file); !problem.empty())
      log::error("reload: {}; the log stays where it was", problem);
  }
  scram_secrets_.clear();  // passwords may have changed
  for (auto& [key, looked_up] : looked_up_) {
    (void)key;  // looked-up users take their pool settings from users: as it is now
    const config::User* configured = config_->find_user(looked_up->user.name);
    looked_up->user.pool = configured != nullptr ? configured->pool : config::PoolOverrides{};
  }
  for (auto& [key, pool] : pools_) {
    (void)key;
    std::optional<config::Database> db = config_->database_for(pool->database_);
    if (!db) {
      log::warning("reload: database {} was removed; closing its pools", pool->database_);
      for (List<Client>* l :
           {&pool->active_clients_, &pool->waiting_clients_, &pool->idle_clients_})
        while (Client* c = l->front())
          close(*c, Reason::pool_removed, "database removed from the configuration");
      for (List<Server>* l :
           {&pool->idle_servers_, &pool->active_servers_, &pool->connecting_servers_,
            &pool->resetting_servers_, &pool->canceling_servers_})
        while (Server* s = l->front()) close(*s, Reason::pool_removed);
      continue;
    }
    const config::User* user = find_user(pool->database_, pool->user_name_);
    pool->automatic_ = config_->find_database(pool->database_) == nullptr;
    pool->reconfigure(*db, user, config_->resolve_pool(*db, user));
  }
  open_warm_pools();
}

}  // namespace pgring
