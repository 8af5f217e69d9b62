// libFuzzer target: the client and server handlers (daemon/conn/) under random frontend and
// backend message sequences, valid and hostile, with no sockets (the harness of
// tests/unit/daemon_handlers_test.cpp: a real Reactor and logged-in connections). The first byte
// chooses the pool: transaction mode with one server or two (statement cache on or off), or
// session mode with two; three clients share it. Besides the sanitizers' checks, after every step:
//   - a server back in the pool is clean: nothing in flight, no half-sent batch, no COPY, no
//     transaction (release only at a boundary);
//   - a client gets bytes only while it is linked to a server, or from pgring itself when it
//     closes (never another client's replies);
//   - a link is symmetric (client.server_ and server.client_ name each other), and no server is
//     linked to two clients.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "daemon/core/log.hpp"
#include "tests/support/handlers.hpp"

using namespace pgring;
using namespace pgring::testing;

namespace {

void require(bool condition) {
  if (!condition) __builtin_trap();
}

// The pool a run drives: its mode, its size (as many servers, logged in and idle) and the
// statement cache's size (0: off).
struct Setup {
  std::string_view mode;
  int servers;
  int prepared_statements;
  [[nodiscard]] std::string yaml() const {
    return "listen: [\"127.0.0.1:1\"]\nworkers: 1\nauth: {method: trust}\ndatabases:\n"
           "  app: {host: 127.0.0.1, port: 1, pool_mode: " +
           std::string(mode) + ", pool_size: " + std::to_string(servers) +
           ", prepared_statements: " + std::to_string(prepared_statements) + "}\n";
  }
};

constexpr Setup kSetups[] = {
    {"transaction", 1, 2},
    {"transaction", 2, 2},
    {"transaction", 2, 0},
    {"session", 2, 2},
};

// Reads the script.
struct Script {
  const std::uint8_t* p;
  const std::uint8_t* end;
  [[nodiscard]] bool done() const { return p == end; }
  std::uint8_t byte() { return p == end ? 0 : *p++; }
  std::string text(std::size_t max) {
    std::size_t n = std::min<std::size_t>(byte() % (max + 1), static_cast<std::size_t>(end - p));
    std::string s(reinterpret_cast<const char*>(p), n);
    p += n;
    for (char& c : s)
      if (c == 0) c = 'x';  // Strings end at their NUL: keep the message well formed
    return s;
  }
};

// A statement name from a small set, so Parse, Bind, Describe and Close meet each other.
std::string name(Script& s) {
  static const char* kNames[] = {"", "", "s1", "s2", "s3"};
  return kNames[s.byte() % 5];
}

std::string frontend(Script& s) {
  switch (s.byte() % 14) {
    case 0: {
      // Statements that change what pgring tracks of a session, and random text.
      static const char* kQueries[] = {"BEGIN",        "COMMIT",          "SET TimeZone TO 'UTC'",
                                       "RESET ALL",    "DISCARD ALL",     "PREPARE p AS SELECT 1",
                                       "LISTEN x",     "SELECT 1",        "RESET TIME ZONE",
                                       "DEALLOCATE p", "SET LOCAL a = 1", "COPY t FROM STDIN"};
      std::uint8_t pick = s.byte();
      return message('Q', cstr(pick < 128 ? std::string(kQueries[pick % 12]) : s.text(24)));
    }
    case 1:
      return message('P', cstr(name(s)) + cstr(s.text(24)) + i16(0));
    case 2:
      return message('B', cstr("") + cstr(name(s)) + i16(0) + i16(0) + i16(0));
    case 3:
      return message('D', (s.byte() & 1 ? "S" : "P") + cstr(name(s)));
    case 4:
      return message('E', cstr("") + std::string(4, '\0'));
    case 5:
      return message('S');
    case 6:
      return message('H');
    case 7:
      return message('C', (s.byte() & 1 ? "S" : "P") + cstr(name(s)));
    case 8:
      return message('d', s.text(16));
    case 9:
      return message('c');
    case 10:
      return message('f', cstr("no"));
    case 11:
      return message('X');
    case 12:
      return s.text(12);  // anything: a lying length, half a message
    default:
      return message('F', s.text(12));
  }
}

std::string backend(Script& s) {
  switch (s.byte() % 16) {
    case 0:
      return message('1');
    case 1:
      return message('2');
    case 2:
      return message('3');
    case 3:
      return message('n');
    case 4:
      return message('T', i16(1) + cstr("a") + std::string(18, '\0'));
    case 5:
      return message('D', i16(1) + std::string("\0\0\0\x01"
                                               "1",
                                               5));
    case 6:
      return message('C', cstr(s.byte() & 1 ? "SELECT 1" : "SET"));
    case 7:
      return message('Z', std::string(1, "ITE"[s.byte() % 3]));
    case 8:
      return message('E', "SERROR" + std::string(1, '\0') + "C42601" + std::string(1, '\0') +
                              "Mno" + std::string(2, '\0'));
    case 9:
      return message('G', std::string(1, '\0') + i16(0));
    case 10:
      return message('s');
    case 11:
      return message('t', i16(0));
    case 12:
      return message('I');
    case 13:
      return message('S', cstr("TimeZone") + cstr(s.text(8)));
    case 14:
      return message('N', "SNOTICE" + std::string(2, '\0'));
    default:
      return s.text(12);  // hostile
  }
}

struct Harness : testing::Handlers {
  explicit Harness(const Setup& setup) : Handlers(setup.yaml()) {
    servers.push_back(&server);
    for (int i = 1; i < setup.servers; ++i) {
      servers.push_back(&add_server());
    }
  }
  std::vector<Server*> servers;
  Client* clients[3] = {&add_client("a"), &add_client("b"), &add_client("c")};
  bool was_linked[3] = {false, false, false};

  void step_done() {
    reactor.forward_linked();  // as the loop does after the completions
    for (int i = 0; i < 3; ++i) {
      Client* c = clients[i];
      std::string got = c->stream_.take_output();
      // Bytes reach a client while it is linked (before or after this step), or as pgring's
      // own error when it closes: never another client's replies.
      if (!got.empty())
        require(was_linked[i] || c->server_ != nullptr || c->state_ == ClientState::closing);
      was_linked[i] = c->server_ != nullptr;
      if (c->server_ != nullptr) require(c->server_->client_ == c);
    }
    for (Server* s : servers) {
      if (s->client_ != nullptr) require(s->client_->server_ == s);
      (void)s->stream_.take_output();
      if (s->state_ == ServerState::idle) {
        require(s->client_ == nullptr);
        require(s->requests_.idle());
        require(s->transaction_status_ == 'I');
      }
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  log::init(config::LogLevel::error, config::LogFormat::text);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  Harness h(kSetups[data[0] % std::size(kSetups)]);
  Script s{data + 1, data + size};
  while (!s.done()) {
    std::uint8_t op = s.byte();
    if (op & 1) {
      Server& server = *h.servers[(op >> 1) % h.servers.size()];
      if (server.state_ == ServerState::closing) continue;
      if ((op & 0xf0) == 0xf0) {
        // The server's connection ends (PostgreSQL restarted, the network went).
        h.reactor.close(server, Reason::server_eof, "server closed the connection unexpectedly");
      } else {
        server.stream_.receive_bytes(backend(s));
        server.on_input();
      }
    } else {
      Client& c = *h.clients[(op >> 1) % 3];
      if (c.state_ == ClientState::closing) continue;
      if ((op & 0xf0) == 0xf0) {
        h.reactor.close(c, Reason::client_eof);  // the client vanished mid-whatever
      } else {
        c.stream_.receive_bytes(frontend(s));
        c.on_input();
      }
    }
    h.step_done();
  }
  return 0;
}
