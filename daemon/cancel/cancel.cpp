#include "daemon/cancel/cancel.hpp"

#include <openssl/crypto.h>

#include <array>
#include <cstring>

#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "proto/builders.hpp"

namespace pgring {

Canceller::Canceller(Reactor& reactor, Server& target, std::uint64_t link_generation)
    : reactor_(reactor),
      target_(&target),
      link_generation_(link_generation),
      stream_(reactor.buffers(), Operation::Kind::cancel_recv, Operation::Kind::cancel_send, this),
      connect_op_{Operation::Kind::cancel_connect, this} {}

namespace {
// The map's key: the pid and the secret's first 4 bytes (the rest of a long secret is compared
// when a cancel arrives).
std::uint64_t cancel_key(std::int32_t pid, const char* secret) {
  std::uint32_t bits;
  std::memcpy(&bits, secret, 4);
  return (std::uint64_t(std::uint32_t(pid)) << 32) | bits;
}
}  // namespace

void Reactor::register_cancel_key(Client& client) {
  for (;;) {
    RAND_bytes(reinterpret_cast<unsigned char*>(&client.cancel_pid_), sizeof client.cancel_pid_);
    RAND_bytes(reinterpret_cast<unsigned char*>(client.cancel_secret_.data()),
               client.cancel_secret_size_);
    // The secret's first byte names this reactor (a CancelRequest may arrive on any of them);
    // the pid is free to be the server's own (use_server_pid).
    client.cancel_secret_[0] = static_cast<char>(index_);
    client.cancel_pid_ &= 0x7fffffff;
    if (client.cancel_pid_ == 0) continue;
    if (cancel_keys_.emplace(cancel_key(client.cancel_pid_, client.cancel_secret_.data()), &client)
            .second)
      return;
  }
}

void Reactor::adopt_cancel_key(Client& client) {
  if (!cancel_keys_.emplace(cancel_key(client.cancel_pid_, client.cancel_secret_.data()), &client)
           .second)
    log::warning("C-{} taken over with a cancel key another client has: its cancels are lost",
                 client.id_);
}

void Reactor::forget_cancel_key(Client& client) {
  // (Only its own entry: a client taken over with a key another client has left that one's.)
  auto it = cancel_keys_.find(cancel_key(client.cancel_pid_, client.cancel_secret_.data()));
  if (it != cancel_keys_.end() && it->second == &client) cancel_keys_.erase(it);
}

void Reactor::use_server_pid(Client& client, std::int32_t pid) {
  // Session mode: the client has this server for its whole session, so its BackendKeyData can
  // carry the server's real pid: pg_backend_pid(), a notification it sent itself and
  // pg_terminate_backend() then agree with it. The secret stays pgring's (cancels still come
  // here and are routed as before).
  if (pid == 0 || pid == client.cancel_pid_) return;
  std::uint64_t key = cancel_key(pid, client.cancel_secret_.data());
  if (!cancel_keys_.emplace(key, &client).second) return;  // taken: keep pgring's own pid
  forget_cancel_key(client);
  client.cancel_pid_ = pid;
}

void Reactor::cancel(std::int32_t pid, std::string_view secret) {
  if (secret.size() < 4) return;
  // (Modulo: a client taken over by an upgrade to fewer reactors keeps its old key.)
  int owner = (static_cast<unsigned char>(secret[0]) & (kMaxWorkers - 1)) % shared_.workers();
  if (owner != index_) {
    // SO_REUSEPORT gave the cancel connection to another reactor than the client's.
    Reactor* r = owner < shared_.workers()
                     ? shared_.reactors[static_cast<std::size_t>(owner)].load()
                     : nullptr;
    if (r == nullptr) {
      log::info("cancel request with an unknown key ignored");
      return;
    }
    r->post([pid, secret = std::string(secret)](Reactor& other) { other.cancel(pid, secret); });
    return;
  }
  auto it = cancel_keys_.find(cancel_key(pid, secret.data()));
  // The whole secret must match (a long one past its first 4 bytes too), compared in constant
  // time: the key is all that authorizes a cancel.
  if (it == cancel_keys_.end() || secret.size() != it->second->cancel_secret_size_ ||
      CRYPTO_memcmp(secret.data(), it->second->cancel_secret_.data(), secret.size()) != 0) {
    log::info("cancel request with an unknown key ignored");
    return;
  }
  Client& client = *it->second;
  if (client.state_ == ClientState::waiting && client.pool_ != nullptr) {
    // Still queued for a server: nothing runs yet, so the request is dropped right here.
    log::info("C-{} canceled while waiting for a server", client.id_);
    client.cancel_while_waiting();
    return;
  }
  if (client.state_ != ClientState::active || client.server_ == nullptr)
    return;  // idle: nothing to cancel
  // A request linked this turn goes out first: the cancel is for it.
  if (client.stream_.input_size() > 0) forward_linked();
  Server& server = *client.server_;
  if (server.requests_in_flight() == 0 || server.restore_replies_pending_ > 0) return;
  start_cancel(server);
}

void Reactor::start_cancel(Server& server) {
  auto* canceller = new Canceller(*this, server, server.link_generation_);
  canceller->started_ = now_;
  ++server.cancels_in_flight_;
  cancellers_.push_back(canceller);
  // To the host the server is on: a cancel key means nothing anywhere else.
  const Endpoint& endpoint = *server.endpoint_;
  int fd = socket(endpoint.address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    finish_cancel(*canceller);
    return;
  }
  canceller->stream_.fd = fd;
  if (server.client_ != nullptr)
    log::info("S-{} canceling the request of C-{}", server.id_, server.client_->id_);
  else
    log::info("S-{} canceling the request its departed client left running", server.id_);
  ++canceller->ops_in_flight_;
  io_connect(canceller->connect_op_, fd, endpoint.address, endpoint.address_len);
}

void Reactor::on_cancel_connect(Canceller& canceller, int result) {
  --canceller.ops_in_flight_;
  Server* server = canceller.target_;
  if (canceller.done_ || result < 0 || server == nullptr) {
    finish_cancel(canceller);
    return;
  }
  // Only the request it was meant for: if that link ended meanwhile, say nothing.
  if (server->state_ != ServerState::active ||
      server->link_generation_ != canceller.link_generation_ || server->requests_in_flight() == 0) {
    log::debug("S-{} cancel dropped: the request already finished", server->id_);
    finish_cancel(canceller);
    return;
  }
  (void)canceller.stream_.emit([&](std::string& out) {
    return proto::build::cancel_request(out, server->backend_pid_, server->backend_secret_);
  });
  want_send(canceller.stream_);
  // PostgreSQL answers nothing and closes: wait for that EOF (bounded by cancel_wait).
  arm_recv(canceller.stream_, canceller.ops_in_flight_);
}

void Reactor::on_cancel_send(Canceller& canceller, int result) {
  --canceller.ops_in_flight_;
  if (result < 0) {
    canceller.stream_.send_failed();
    finish_cancel(canceller);
    return;
  }
  bool all_sent = canceller.stream_.on_sent(static_cast<std::uint32_t>(result)) &&
                  !canceller.stream_.has_output();
  if (canceller.done_) {
    finish_cancel(canceller);  // (given up meanwhile: the rest is not sent)
  } else if (!all_sent) {
    // A short send (the socket's buffer was full): the rest of the request goes out next.
    want_send(canceller.stream_);
  }
}

void Reactor::on_cancel_recv(Canceller& canceller, int result, unsigned flags) {
  --canceller.ops_in_flight_;
  canceller.stream_.recv_armed_ = false;
  if (flags & IORING_CQE_F_BUFFER) {
    canceller.stream_.on_received(static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT),
                                  static_cast<std::uint32_t>(result > 0 ? result : 0));
    canceller.stream_.discard_all();
  }
  if (result > 0 && !canceller.done_) {
    arm_recv(canceller.stream_, canceller.ops_in_flight_);
    return;
  }
  finish_cancel(canceller);
}

void Reactor::finish_cancel(Canceller& canceller) {
  if (!canceller.done_) {
    canceller.done_ = true;
    if (Server* server = canceller.target_) {
      canceller.target_ = nullptr;
      if (--server->cancels_in_flight_ == 0) {
        if (server->state_ == ServerState::active && server->client_ != nullptr) {
          // Requests held while the cancel was in flight go now.
          Client& client = *server->client_;
          client.stream_.reading_paused_ = false;
          if (client.stream_.input_size() > 0) client.on_input();
          if (client.state_ != ClientState::closing)
            arm_recv(client.stream_, client.ops_in_flight_);
        } else if (server->state_ == ServerState::canceling) {
          server->reactor_.set_state(*server, ServerState::idle);
          server->pool_.maintain();
        } else if (server->state_ == ServerState::closing) {
          maybe_free(*server);
        }
      }
    }
    if (canceller.stream_.fd >= 0) {
      if (canceller.ops_in_flight_ > 0) io_cancel_fd(canceller.stream_.fd);
      ::shutdown(canceller.stream_.fd, SHUT_RDWR);
    }
  }
  if (canceller.ops_in_flight_ > 0 || canceller.freed_) return;
  canceller.freed_ = true;
  release_stream(canceller.stream_);
  unlink(&canceller);
  free_cancellers_.push_back(&canceller);
}

}  // namespace pgring
