#pragma once
// A client connection: what an application opened to pgring.
//
//   startup ──SSLRequest/GSSENCRequest: answer 'N'──> startup
//   startup ──StartupMessage──> auth ──password ok──> waiting ──server linked──> active
//   startup ──trust──────────────────────────────────> waiting
//   active ──server lost──> closing        (session mode keeps its server for life)
//   any ──close(reason)──> closing ──sends drained, ops done──> freed at end of loop turn
//
// The state is also the list the client is on: the reactor's login list (startup, auth), its
// pool's waiting or active list, or the reactor's closing list.

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "config/config.hpp"
#include "daemon/close_reason.hpp"
#include "daemon/list.hpp"
#include "daemon/stream.hpp"
#include "proto/frame.hpp"
#include "proto/scram.hpp"

namespace pgring {

class Reactor;
class Pool;
class Server;
using Clock = std::chrono::steady_clock;

enum class ClientState { startup, auth, waiting, active, closing };
[[nodiscard]] std::string_view to_string(ClientState state);

class Client {
 public:
  Client(Reactor& reactor, std::uint64_t id, int fd, std::string peer);

  // New bytes are in stream_.
  void on_input();
  // The pool linked a server (session mode: for the client's whole life).
  void on_linked(Server& server);
  // The server sent bytes for this client (already framed by the server).
  [[nodiscard]] std::uint64_t id() const { return id_; }
  [[nodiscard]] ClientState state() const { return state_; }

  ListNode<Client> node_;
  Reactor& reactor_;
  std::uint64_t id_;
  ClientState state_ = ClientState::startup;
  Clock::time_point state_since_;
  Stream stream_;
  std::string peer_;  // "ip:port" for logs
  int ops_in_flight_ = 0;
  bool shut_down_ = false;  // socket shut down; waiting for in-flight operations to finish

  Pool* pool_ = nullptr;
  Server* server_ = nullptr;

  // The startup packet, kept for the client's life: startup_message_ views into it.
  std::string startup_packet_;
  proto::StartupMessage startup_message_;
  const config::User* user_ = nullptr;  // null with trust auth and no users configured

  // pgring's own BackendKeyData for this client (never the server's).
  std::int32_t cancel_pid_ = 0;
  std::array<char, 4> cancel_secret_{};

  // Set when the client may not stay (max_client_conn): it is told so after its startup packet,
  // because libpq does not show an error sent in reply to its SSLRequest.
  bool refused_too_many_ = false;

  // Streaming: bytes of the current message still to forward as they arrive.
  std::size_t forward_remaining_ = 0;

 private:
  friend class Reactor;
  void handle_startup();
  void handle_auth();
  void start_auth();
  void auth_ok();
  void forward_to_server();
  [[nodiscard]] bool frame_next(proto::Frame& frame, std::uint32_t max_size);

  // Auth exchange state, only while authenticating (idle clients stay small).
  struct AuthState {
    enum class Step { md5, scram_first, scram_final } step;
    std::array<char, 4> md5_salt{};
    proto::scram::ClientFirst scram_first;
    std::string server_first;
    std::string secret;  // the configured secret the exchange checks against
  };
  std::unique_ptr<AuthState> auth_;
};

}  // namespace pgring
