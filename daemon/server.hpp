#pragma once
// A server connection: pgring's own session with PostgreSQL.
//
//   connecting ──TCP up──> login ──ReadyForQuery──> idle <──reset done── resetting
//   idle ──linked to a client──> active ──client left, clean──> resetting (ROLLBACK?, reset query)
//   active ──client left with requests in flight──> closing
//   any ──close(reason)──> closing ──ops done──> freed at end of loop turn
//
// The state is the list the server is on in its pool.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>

#include "daemon/close_reason.hpp"
#include "daemon/list.hpp"
#include "daemon/stream.hpp"
#include "proto/frame.hpp"
#include "proto/scram.hpp"

namespace pgring {

class Reactor;
class Pool;
class Client;
using Clock = std::chrono::steady_clock;

enum class ServerState { connecting, login, idle, active, resetting, closing };
[[nodiscard]] std::string_view to_string(ServerState state);

class Server {
 public:
  Server(Reactor& reactor, Pool& pool, std::uint64_t id);

  void on_connected();
  void on_input();
  // The linked client left: make this connection reusable (or close it).
  void release();

  ListNode<Server> node_;
  Reactor& reactor_;
  Pool& pool_;
  std::uint64_t id_;
  ServerState state_ = ServerState::connecting;
  Clock::time_point state_since_;
  Clock::time_point created_;
  Stream stream_;
  Operation connect_op_;
  int ops_in_flight_ = 0;
  bool shut_down_ = false;

  Client* client_ = nullptr;

  // What the server told us at login and since (ParameterStatus), and its cancel key.
  std::vector<std::pair<std::string, std::string>> params_;
  std::int32_t backend_pid_ = 0;
  std::string backend_secret_;

  // Protocol tracking, enough to know whether the connection is clean when its client leaves:
  // requests that will each produce a ReadyForQuery (Query, Sync, FunctionCall) not yet
  // answered, extended-protocol messages not yet followed by Sync, and the last status.
  int requests_in_flight_ = 0;
  bool unsynced_ = false;
  char transaction_status_ = 'I';
  int reset_replies_pending_ = 0;  // ReadyForQuery still expected while resetting
  bool reset_failed_ = false;

  std::size_t forward_remaining_ = 0;

 private:
  friend class Reactor;
  void handle_login_message(char type, std::string_view body);
  void handle_reset_message(char type, std::string_view body);
  void handle_idle_message(char type, std::string_view body);
  void forward_to_client();
  void set_param(std::string_view name, std::string_view value);

  struct LoginState {
    std::string scram_client_first_bare;
    proto::scram::Key expected_server_signature{};
    bool scram_final_checked = false;
  };
  std::unique_ptr<LoginState> login_;
};

}  // namespace pgring
