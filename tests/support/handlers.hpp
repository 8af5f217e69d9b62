#pragma once
// What the handler tests (tests/unit/daemon_handlers_test.cpp) and fuzz_handlers share: wire
// bytes built by hand, and a reactor with one pool and one idle, logged-in server connection to
// which logged-in clients are added. No socket is opened and the ring is never waited on; the
// reactor frees the connections on its lists when it goes.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "config/config.hpp"
#include "daemon/conn/client.hpp"
#include "daemon/conn/server.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/net/tls.hpp"
#include "daemon/pool/hosts.hpp"
#include "daemon/pool/pool.hpp"
#include "proto/bytes.hpp"

namespace pgring::testing {

// One message of `type` with `body`, and the pieces bodies are made of.
inline std::string message(char type, std::string_view body = {}) {
  std::string out;
  proto::Writer w(out);
  w.begin(type).bytes(body).end();
  return out;
}
inline std::string cstr(std::string_view s) {
  return std::string(s) + '\0';
}
inline std::string i16(int v) {
  return {static_cast<char>(v >> 8), static_cast<char>(v & 0xff)};
}
inline std::string i32(std::int32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

// The process's hosts, configured (no monitor thread: nothing is looked up again or checked).
struct TestHosts : HostDirectory {
  TestHosts(Shared& shared, const config::Config& config) : HostDirectory(shared) {
    configure(config);
    resolve_all();
    shared.hosts = this;
  }
};

// `yaml` configures database "app" (the pool's); its host is never connected to.
struct Handlers {
  explicit Handlers(std::string_view yaml)
      : config(std::make_shared<const config::Config>(config::parse_config(yaml))),
        hosts(shared, *config),
        reactor(shared, 0, config, std::make_shared<const TlsContexts>(), ""),
        pool(reactor.pool_for(*config->find_database("app"), nullptr, "app")),
        server(add_server()) {}
  // Another idle, logged-in server connection, to the pool's host.
  Server& add_server() {
    Server& s = *new Server(reactor, pool, reactor.next_id());
    s.endpoint_ = pool.group_->pick(std::chrono::steady_clock::now());
    ++s.endpoint_->connections;
    reactor.set_state(s, ServerState::idle);
    return s;
  }
  // A client past its login (its ParameterStatus and ReadyForQuery went out), idle in the pool.
  Client& add_client(std::string peer) {
    Client& client = *new Client(reactor, reactor.next_id(), -1, std::move(peer));
    client.pool_ = &pool;
    client.login_.reset();
    client.welcomed_ = true;
    reactor.set_state(client, ClientState::idle);
    return client;
  }

  Shared shared{1};
  std::shared_ptr<const config::Config> config;
  TestHosts hosts;
  Reactor reactor;
  Pool& pool;
  Server& server;
};

}  // namespace pgring::testing
