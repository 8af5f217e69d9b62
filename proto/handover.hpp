#pragma once
// The upgrade's control socket (docs/operations.md, "Upgrading in place"): what a running pgring
// and the one taking over from it say to each other. Pure: frames and records as bytes; the
// daemon does the sockets and passes the file descriptors beside the frames (SCM_RIGHTS).
//
//   new -> old: hello                       (peer credentials checked by the old process)
//   old -> new: listener* listeners_done    (each with its listening socket)
//   new -> old: ready                       (the new reactors accept: the old stop accepting)
//   old -> new: (client_key | client)* done (each client with its socket; done as the old exits)
//
// A frame is a kind byte, a big-endian uint32 body length, the body.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgring::proto::handover {

enum class Kind : std::uint8_t {
  hello = 'H',
  listener = 'L',
  listeners_done = 'E',
  ready = 'R',
  client_key = 'K',
  client = 'C',
  done = 'D',
};

inline constexpr std::size_t kHeaderSize = 5;
// No frame is larger: a client record holds its statements' texts, each up to a Parse message.
inline constexpr std::uint32_t kMaxBody = 64u << 20;

struct Header {
  Kind kind;
  std::uint32_t length;
};
// The header at the front of `bytes` (kHeaderSize of them), or nullopt: an unknown kind or a
// length over kMaxBody (the peer is not a pgring of this protocol: the connection ends).
[[nodiscard]] std::optional<Header> parse_header(std::string_view bytes);
// Appends a whole frame.
void append_frame(std::string& out, Kind kind, std::string_view body);

// A listening socket: the name the daemon gives it in its logs ("127.0.0.1:6432", a unix
// socket's path, "metrics 127.0.0.1:9930") and which reactor had it.
struct Listener {
  std::string name;
  std::uint32_t reactor = 0;
};
[[nodiscard]] std::string encode(const Listener& listener);
[[nodiscard]] std::optional<Listener> decode_listener(std::string_view body);

// SCRAM pass-through: a ClientKey a client revealed, for the user and secret it is good for.
struct ClientKey {
  std::string user;
  std::string secret;
  std::array<std::uint8_t, 32> key{};
};
[[nodiscard]] std::string encode(const ClientKey& key);
[[nodiscard]] std::optional<ClientKey> decode_client_key(std::string_view body);

// A client idle between transactions, as the new process needs it to go on where the old one
// stopped: nothing of it is re-negotiated with the client, which never notices.
struct Client {
  std::uint64_t id = 0;  // in the old process (logs tell which new id it became)
  std::string peer;
  std::uint64_t age_ms = 0;     // since it connected
  std::string startup_packet;   // the StartupMessage it sent, length word included
  std::int32_t cancel_pid = 0;  // its BackendKeyData
  std::string cancel_secret;    // 4 bytes (protocol 3.0) or more (3.2)
  // auth.query: the user's looked-up secret (empty when users: has it).
  std::string lookup_secret;
  std::uint8_t lookup_kind = 0;
  std::vector<std::pair<std::string, std::string>> params;    // as PostgreSQL reported them
  std::vector<std::pair<std::string, std::string>> settings;  // replayable SETs (SQL literals)
  struct Statement {
    std::string name;
    std::string parse_tail;  // the Parse body after the name
    std::uint64_t shape = 0;
  };
  std::vector<Statement> statements;
  std::string unnamed_parse_tail;
  std::string input;  // bytes it sent that the old process had not read yet
  // Its LISTEN subscriptions (listen: shared). Last, and optional: a record of a process that
  // knew no subscriptions ends before it.
  std::vector<std::string> channels;
};
[[nodiscard]] std::string encode(const Client& client);
[[nodiscard]] std::optional<Client> decode_client(std::string_view body);

}  // namespace pgring::proto::handover
