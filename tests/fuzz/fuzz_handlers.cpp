// libFuzzer target: the client and server handlers (daemon/conn/) under random frontend and
// backend message sequences, valid and hostile, with no sockets (the harness of
// tests/unit/daemon_handlers_test.cpp: a real Reactor, a transaction pool of one server, two
// clients). Besides the sanitizers' checks, after every step:
//   - a server back in the pool is clean: nothing in flight, no half-sent batch, no COPY, no
//     transaction (release only at a boundary);
//   - a client gets bytes only while it is linked to the server, or from pgring itself when it
//     closes (never another client's replies);
//   - a link is symmetric (client.server_ and server.client_ name each other).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "daemon/core/log.hpp"
#include "tests/support/handlers.hpp"

using namespace pgring;
using namespace pgring::testing;

namespace {

void require(bool condition) {
  if (!condition) __builtin_trap();
}

constexpr std::string_view kConfig = R"(
listen: ["127.0.0.1:1"]
workers: 1
auth: {method: trust}
databases:
  app: {host: 127.0.0.1, port: 1, pool_mode: transaction, pool_size: 1, prepared_statements: 2}
)";

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
    case 0:
      return message('Q', cstr(s.text(24)));
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
  Harness() : Handlers(kConfig) {}
  Client* clients[2] = {&add_client("a"), &add_client("b")};

  bool was_linked[2] = {false, false};

  void step_done() {
    reactor.forward_linked();  // as the loop does after the completions
    for (int i = 0; i < 2; ++i) {
      Client* c = clients[i];
      std::string got = c->stream_.take_output();
      // Bytes reach a client while it is linked (before or after this step), or as pgring's
      // own error when it closes: never another client's replies.
      if (!got.empty())
        require(was_linked[i] || c->server_ != nullptr || c->state_ == ClientState::closing);
      was_linked[i] = c->server_ != nullptr;
      if (c->server_ != nullptr) require(c->server_->client_ == c);
    }
    if (server.client_ != nullptr) require(server.client_->server_ == &server);
    (void)server.stream_.take_output();
    if (server.state_ == ServerState::idle) {
      require(server.client_ == nullptr);
      require(server.requests_.idle());
      require(server.transaction_status_ == 'I');
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  log::init(config::LogLevel::error, config::LogFormat::text);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Harness h;
  Script s{data, data + size};
  while (!s.done()) {
    std::uint8_t op = s.byte();
    if (op & 1) {
      if (h.server.state_ == ServerState::closing) continue;
      h.server.stream_.receive_bytes(backend(s));
      h.server.on_input();
    } else {
      Client& c = *h.clients[(op >> 1) & 1];
      if (c.state_ == ClientState::closing) continue;
      c.stream_.receive_bytes(frontend(s));
      c.on_input();
    }
    h.step_done();
  }
  return 0;
}
