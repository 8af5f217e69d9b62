#pragma once
// Forwarding a CancelRequest to PostgreSQL.
//
// A client cancels with pgring's key (never the server's). pgring finds the server running
// that client's request and opens a fresh connection to its PostgreSQL to send the server's real
// key, as PostgreSQL expects. While a cancel is in flight the server is not handed to another
// client (PgBouncer's SV_BEING_CANCELED), and if the request finished before the cancel
// connection was up, nothing is sent: a late cancel never hits someone else's query.
//
//   connecting ──connected, same link still busy──> sending ──sent──> waiting (for EOF) ──> done
//   connecting ──the request already finished─────────────────────────────────────────────> done

#include <chrono>
#include <cstdint>
#include <string>

#include "daemon/core/list.hpp"
#include "daemon/core/stream.hpp"

namespace pgring {

class Reactor;
class Server;
class Client;
using Clock = std::chrono::steady_clock;

class Canceller {
 public:
  Canceller(Reactor& reactor, Server& target, std::uint64_t link_generation);

  ListNode<Canceller> node_;
  Reactor& reactor_;
  Server* target_;                 // kept alive by target_->cancels_in_flight_
  std::uint64_t link_generation_;  // the link whose request this cancels
  Clock::time_point started_;
  Stream stream_;
  Operation connect_op_;
  int ops_in_flight_ = 0;
  bool done_ = false;
  bool freed_ = false;
};

}  // namespace pgring
