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

// ---- receives: the part every connection shares ----------------------------------------------

void Reactor::take_received(Stream& stream, int& ops, int result, unsigned flags) {
  --ops;
  stream.recv_armed_ = false;
  if (flags & IORING_CQE_F_BUFFER) {
    auto bid = static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
    stream.on_received(bid, static_cast<std::uint32_t>(result > 0 ? result : 0));
  }
}

Reactor::Received Reactor::classify_received(Stream& stream, int& ops, int result) {
  if (result == -ENOBUFS) {
    // The ring ran dry: re-armed when buffers come back (rearm_starved), not an error.
    stream.starved_ = true;
    starved_.emplace_back(&stream, &ops);
    return Received::starved;
  }
  if (result == 0) return Received::eof;
  if (result < 0) return Received::error;
  if (stream.tls() != nullptr) {
    if (stream.tls_failed()) return Received::tls_failed;
    if (stream.has_output()) want_send(stream);  // handshake records, alerts
  }
  return Received::bytes;
}

void Reactor::on_client_recv(Client& client, int result, unsigned flags) {
  take_received(client.stream_, client.ops_in_flight_, result, flags);
  if (client.state_ == ClientState::closing) {
    client.stream_.discard_all();
    if (result > 0 && !client.shut_down_)
      arm_recv(client.stream_, client.ops_in_flight_);  // drain until EOF
    maybe_free(client);
    return;
  }
  switch (classify_received(client.stream_, client.ops_in_flight_, result)) {
    case Received::starved:
      return;
    case Received::eof:
      close(client, Reason::client_eof);
      return;
    case Received::error:
      close(client, Reason::client_io_error, errno_text(-result));
      return;
    case Received::tls_failed: {
      TlsSession& tls = *client.stream_.tls();
      if (tls.peer_closed()) {
        client.on_input();  // what came before close_notify (a Terminate, say) still counts
        if (client.state_ != ClientState::closing) close(client, Reason::client_eof);
      } else {
        close(client, Reason::tls_error, tls.error());
      }
      return;
    }
    case Received::bytes:
      break;
  }
  client.last_activity_ = now_;
  if (client.pool_ != nullptr)
    client.pool_->stats_.bytes_received += static_cast<std::uint64_t>(result);
  client.on_input();
  if (client.state_ == ClientState::closing) return;
  // Bytes that are not moving on (a client waiting for a server) leave the shared ring now.
  if (client.state_ != ClientState::active && client.stream_.input_size() > 0)
    client.stream_.detach_input();
  arm_recv(client.stream_, client.ops_in_flight_);
}

void Reactor::on_client_send(Client& client, int result) {
  --client.ops_in_flight_;
  if (result < 0) {
    client.stream_.send_failed();
    if (client.state_ != ClientState::closing)
      close(client, Reason::client_io_error, errno_text(-result));
    else
      finish_close(client);
    maybe_free(client);
    return;
  }
  bool done = client.stream_.on_sent(static_cast<std::uint32_t>(result));
  if (!done || client.stream_.has_output()) {
    want_send(client.stream_);
  } else if (client.state_ == ClientState::closing) {
    finish_close(client);
  }
  if (client.state_ != ClientState::closing) resume_peer_reading(client.stream_);
  maybe_free(client);
}

void Reactor::on_server_recv(Server& server, int result, unsigned flags) {
  take_received(server.stream_, server.ops_in_flight_, result, flags);
  if (server.state_ == ServerState::closing) {
    server.stream_.discard_all();
    if (result > 0 && !server.shut_down_) {
      server.stream_.reading_paused_ = false;  // read (and drop) until PostgreSQL closes its end
      arm_recv(server.stream_, server.ops_in_flight_);
    } else if (result <= 0 && result != -ENOBUFS) {
      finish_close(server);  // EOF after our Terminate
    }
    maybe_free(server);
    return;
  }
  switch (classify_received(server.stream_, server.ops_in_flight_, result)) {
    case Received::starved:
      return;
    case Received::eof:
      close(server, Reason::server_eof, "server closed the connection unexpectedly");
      return;
    case Received::error:
      close(server, Reason::server_io_error, errno_text(-result));
      return;
    case Received::tls_failed: {
      TlsSession& tls = *server.stream_.tls();
      if (tls.peer_closed()) {
        server.on_input();  // PostgreSQL sends its FATAL error before close_notify
        if (server.state_ != ServerState::closing)
          close(server, Reason::server_eof, "server closed the TLS session");
      } else {
        close(server,
              server.state_ == ServerState::login ? Reason::server_login_failed
                                                  : Reason::server_io_error,
              tls.error());
      }
      return;
    }
    case Received::bytes:
      break;
  }
  server.pool_.stats_.bytes_sent += static_cast<std::uint64_t>(result);
  server.on_input();
  if (server.state_ != ServerState::closing) arm_recv(server.stream_, server.ops_in_flight_);
}

void Reactor::on_server_send(Server& server, int result) {
  --server.ops_in_flight_;
  if (result < 0) {
    server.stream_.send_failed();
    if (server.state_ != ServerState::closing)
      close(server, Reason::server_io_error, errno_text(-result));
    else
      finish_close(server);
    maybe_free(server);
    return;
  }
  bool done = server.stream_.on_sent(static_cast<std::uint32_t>(result));
  if (!done || server.stream_.has_output()) {
    want_send(server.stream_);
  } else if (server.state_ == ServerState::closing) {
    // Terminate sent to an idle server: wait for PostgreSQL to close its end. By then the backend
    // has left pg_stat_activity, so the slot this connection frees is really free (pool_size counts
    // what the server sees, also when the slot moves to another reactor). kClosingGrace bounds
    // the wait.
    if (server.await_eof_ && !server.stream_.recv_armed_) {
      server.stream_.reading_paused_ = false;
      arm_recv(server.stream_, server.ops_in_flight_);
    }
    if (!server.await_eof_ || !server.stream_.recv_armed_) finish_close(server);
  }
  if (server.state_ != ServerState::closing) resume_peer_reading(server.stream_);
  maybe_free(server);
}

void Reactor::on_server_connect(Server& server, int result) {
  --server.ops_in_flight_;
  if (server.state_ == ServerState::closing) {
    maybe_free(server);
    return;
  }
  if (result < 0) {
    close(server, Reason::server_unreachable,
          fmt::format("could not connect to server {}: {}", server.pool_.address_text_,
                      errno_text(-result)));
    return;
  }
  int one = 1;
  setsockopt(server.stream_.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  server.on_connected();
  if (server.state_ != ServerState::closing) arm_recv(server.stream_, server.ops_in_flight_);
}

}  // namespace pgring
