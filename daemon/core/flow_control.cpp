// Flow control between a client and its server: a reader pauses while its peer's unsent output
// is above the high watermark and resumes below the low one.
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
#include "proto/builders.hpp"

namespace pgring {

namespace {
// Flow control watermarks on a peer's unsent output (bytes, and pinned ring buffers so one slow
// reader can never hold the whole ring).
constexpr std::size_t kHighWatermarkBytes = 1u << 20;
constexpr std::size_t kLowWatermarkBytes = 256u << 10;
constexpr std::size_t kHighWatermarkBuffers = 128;
constexpr std::size_t kLowWatermarkBuffers = 32;
}  // namespace

// ---------------------------------------------------------------------------------------------
// Flow control

void Reactor::apply_backpressure(Stream& reader, const Stream& writer) {
  if (writer.pending_bytes() > kHighWatermarkBytes ||
      writer.pending_buffers() > kHighWatermarkBuffers)
    reader.reading_paused_ = true;
}

void Reactor::resume_peer_reading(Stream& writer) {
  if (writer.pending_bytes() > kLowWatermarkBytes ||
      writer.pending_buffers() > kLowWatermarkBuffers)
    return;
  if (writer.send_op_.kind == Operation::Kind::client_send) {
    auto* client = static_cast<Client*>(writer.send_op_.owner);
    Server* server = client->server_;
    if (server != nullptr && server->stream_.reading_paused_) {
      server->stream_.reading_paused_ = false;
      server->on_input();  // bytes may already be waiting
      if (!server->stream_.reading_paused_ && server->state_ != ServerState::closing)
        arm_recv(server->stream_, server->ops_in_flight_);
    }
  } else {
    auto* server = static_cast<Server*>(writer.send_op_.owner);
    Client* client = server->client_;
    if (client != nullptr && client->stream_.reading_paused_) {
      client->stream_.reading_paused_ = false;
      client->on_input();
      if (!client->stream_.reading_paused_ && client->state_ != ClientState::closing)
        arm_recv(client->stream_, client->ops_in_flight_);
    }
  }
}

}  // namespace pgring
