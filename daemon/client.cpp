#include "daemon/client.hpp"

#include <openssl/rand.h>

#include <cstring>

#include "daemon/log.hpp"
#include "daemon/pool.hpp"
#include "daemon/reactor.hpp"
#include "daemon/server.hpp"
#include "proto/builders.hpp"
#include "proto/md5.hpp"
#include "proto/messages.hpp"

namespace pgring {

namespace {
// Authentication messages are small; PostgreSQL caps them at 65535 (PG_MAX_AUTH_TOKEN_LENGTH).
constexpr std::uint32_t kMaxAuthMessage = 65536;
}  // namespace

std::string_view to_string(ClientState state) {
  switch (state) {
    case ClientState::startup: return "startup";
    case ClientState::auth: return "auth";
    case ClientState::waiting: return "waiting";
    case ClientState::active: return "active";
    case ClientState::closing: return "closing";
  }
  return "?";
}

Client::Client(Reactor& reactor, std::uint64_t id, int fd, std::string peer)
    : reactor_(reactor),
      id_(id),
      stream_(reactor.buffers(), Operation::Kind::client_recv, Operation::Kind::client_send, this),
      peer_(std::move(peer)) {
  stream_.fd = fd;
}

void Client::on_input() {
  switch (state_) {
    case ClientState::startup: handle_startup(); break;
    case ClientState::auth: handle_auth(); break;
    case ClientState::waiting:
      // Nothing may come before our ReadyForQuery; keep what arrives for later, but do not let
      // a client pile up unbounded bytes meanwhile.
      if (stream_.input_size() > (64u << 10)) stream_.reading_paused_ = true;
      break;
    case ClientState::active: forward_to_server(); break;
    case ClientState::closing: stream_.discard_all(); break;
  }
}

bool Client::frame_next(proto::Frame& frame, std::uint32_t max_size) {
  if (stream_.input_size() < 5) return false;
  char header[5];
  stream_.peek(header, 5);
  frame = proto::frame_message(std::string_view(header, 5), max_size);
  if (frame.status == proto::FrameStatus::invalid_length) {
    reactor_.close(*this, Reason::protocol_violation, "invalid message length");
    return false;
  }
  if (frame.status == proto::FrameStatus::too_large) {
    reactor_.close(*this, Reason::message_too_large,
                   fmt::format("message of {} bytes is larger than the limit of {}", frame.size, max_size));
    return false;
  }
  return stream_.input_size() >= frame.size;
}

// ---- startup ---------------------------------------------------------------------------------

void Client::handle_startup() {
  while (state_ == ClientState::startup && stream_.input_size() >= 4) {
    char header[4];
    stream_.peek(header, 4);
    proto::Frame frame = proto::frame_startup(std::string_view(header, 4));
    if (frame.status == proto::FrameStatus::invalid_length) {
      reactor_.close(*this, Reason::protocol_violation, "invalid startup packet length");
      return;
    }
    if (frame.status == proto::FrameStatus::too_large) {
      reactor_.close(*this, Reason::message_too_large,
                     fmt::format("startup packet of {} bytes is larger than the limit of {}", frame.size,
                                 proto::kMaxStartupPacket));
      return;
    }
    if (stream_.input_size() < frame.size) return;
    startup_packet_.assign(stream_.contiguous(frame.size));
    stream_.consume(frame.size);
    proto::StartupPacket packet = proto::classify_startup(startup_packet_);
    switch (packet.kind) {
      case proto::StartupKind::ssl_request:
      case proto::StartupKind::gssenc_request:
        // No TLS or GSSAPI encryption yet: 'N' and the client goes on in plain text.
        stream_.emit_bytes("N");
        reactor_.want_send(stream_);
        continue;
      case proto::StartupKind::cancel_request:
        // Cancel forwarding is not implemented yet: a cancel connection just closes, which is
        // what PostgreSQL does too (it never answers a CancelRequest).
        log::info("C-{} cancel request ignored (not supported yet)", id_);
        reactor_.close(*this, Reason::client_eof);
        return;
      case proto::StartupKind::unknown:
        reactor_.close(*this, Reason::unsupported_protocol,
                       fmt::format("unsupported frontend protocol {}.{}", packet.code >> 16, packet.code & 0xffff));
        return;
      case proto::StartupKind::startup: break;
    }
    auto message = proto::parse_startup_message(packet);
    if (!message) {
      reactor_.close(*this, Reason::protocol_violation, "invalid startup packet");
      return;
    }
    startup_message_ = *message;
    if (refused_too_many_) {
      reactor_.close(*this, Reason::too_many_clients,
                     fmt::format("no more connections allowed (max_client_conn {})", reactor_.config().max_client_conn));
      return;
    }
    if (stream_.input_size() != 0) {
      // Nothing may follow the startup packet before we answer it.
      reactor_.close(*this, Reason::protocol_violation, "unexpected data after the startup packet");
      return;
    }
    // We speak 3.0. A newer minor or protocol extensions (_pq_.*) are negotiated down, as
    // PostgreSQL does, instead of failing the client.
    std::vector<std::string_view> unsupported;
    for (const auto& [name, value] : startup_message_.params)
      if (name.starts_with("_pq_.")) unsupported.push_back(name);
    if (startup_message_.version != proto::kProtocol30 || !unsupported.empty())
      (void)stream_.emit([&](std::string& out) {
        return proto::build::negotiate_protocol_version(out, proto::kProtocol30, unsupported);
      });
    log::debug("C-{} startup user={} database={}", id_, startup_message_.user, startup_message_.database);
    start_auth();
  }
}

// ---- authentication --------------------------------------------------------------------------

void Client::start_auth() {
  const config::Config& cfg = reactor_.config();
  user_ = cfg.find_user(startup_message_.user);
  if (user_ == nullptr && !(cfg.auth_method == config::AuthMethod::trust && cfg.users.empty())) {
    reactor_.close(*this, Reason::unknown_user, fmt::format("no such user \"{}\"", startup_message_.user));
    return;
  }
  state_ = ClientState::auth;
  state_since_ = reactor_.now();
  if (cfg.auth_method == config::AuthMethod::trust) {
    auth_ok();
    return;
  }
  auth_ = std::make_unique<AuthState>();
  auth_->secret = user_->password;
  // Use what the stored secret allows: an MD5 secret cannot answer SCRAM and a SCRAM secret
  // cannot answer MD5 (PostgreSQL makes the same choice).
  bool use_scram = user_->secret_kind == config::SecretKind::scram ||
                   (cfg.auth_method == config::AuthMethod::scram_sha_256 && user_->secret_kind != config::SecretKind::md5);
  if (use_scram) {
    auth_->step = AuthState::Step::scram_first;
    (void)stream_.emit([](std::string& out) {
      return proto::build::authentication_sasl(out, proto::scram::kMechanism);
    });
  } else {
    auth_->step = AuthState::Step::md5;
    RAND_bytes(reinterpret_cast<unsigned char*>(auth_->md5_salt.data()), 4);
    (void)stream_.emit([&](std::string& out) {
      return proto::build::authentication_md5(out, std::string_view(auth_->md5_salt.data(), 4));
    });
  }
  reactor_.want_send(stream_);
}

void Client::handle_auth() {
  proto::Frame frame;
  while (state_ == ClientState::auth && frame_next(frame, kMaxAuthMessage)) {
    std::string_view whole = stream_.contiguous(frame.size);
    std::string_view body = whole.substr(5);
    if (frame.type != proto::frontend::kPassword) {
      if (frame.type == proto::frontend::kTerminate) {
        reactor_.close(*this, Reason::client_terminate);
        return;
      }
      reactor_.close(*this, Reason::protocol_violation,
                     fmt::format("expected a password message, got '{}'", frame.type));
      return;
    }
    const std::string& user_name = user_->name;
    switch (auth_->step) {
      case AuthState::Step::md5: {
        auto password = proto::parse_password_message(body);
        std::string expected = user_->secret_kind == config::SecretKind::md5
                                   ? proto::md5::response_from_secret(auth_->secret, auth_->md5_salt)
                                   : proto::md5::response(user_name, auth_->secret, auth_->md5_salt);
        bool good = password && proto::scram::timing_safe_equal(*password, expected);
        stream_.consume(frame.size);
        if (!good) {
          reactor_.close(*this, Reason::auth_failed,
                         fmt::format("password authentication failed for user \"{}\"", user_name));
          return;
        }
        auth_ok();
        return;
      }
      case AuthState::Step::scram_first: {
        auto initial = proto::parse_sasl_initial_response(body);
        std::optional<proto::scram::ClientFirst> first;
        if (initial && initial->mechanism == proto::scram::kMechanism)
          first = proto::scram::parse_client_first(initial->data);
        stream_.consume(frame.size);
        if (!first) {
          reactor_.close(*this, Reason::protocol_violation, "malformed SCRAM client-first-message");
          return;
        }
        unsigned char nonce_raw[18];
        RAND_bytes(nonce_raw, sizeof nonce_raw);
        std::string server_nonce =
            proto::scram::base64_encode(std::string_view(reinterpret_cast<char*>(nonce_raw), sizeof nonce_raw));
        const proto::scram::Secret& secret = reactor_.scram_secret_for(*user_);
        auth_->scram_first = std::move(*first);
        auth_->server_first = proto::scram::server_first(auth_->scram_first, server_nonce, secret);
        auth_->step = AuthState::Step::scram_final;
        (void)stream_.emit([&](std::string& out) {
          return proto::build::authentication_sasl_continue(out, auth_->server_first);
        });
        reactor_.want_send(stream_);
        break;
      }
      case AuthState::Step::scram_final: {
        const proto::scram::Secret& secret = reactor_.scram_secret_for(*user_);
        auto final_message =
            proto::scram::verify_client_final(auth_->scram_first, auth_->server_first, body, secret);
        stream_.consume(frame.size);
        if (!final_message) {
          reactor_.close(*this, Reason::auth_failed,
                         fmt::format("password authentication failed for user \"{}\"", user_name));
          return;
        }
        (void)stream_.emit([&](std::string& out) {
          return proto::build::authentication_sasl_final(out, *final_message);
        });
        auth_ok();
        return;
      }
    }
  }
}

void Client::auth_ok() {
  auth_.reset();
  (void)stream_.emit([](std::string& out) { return proto::build::authentication_ok(out); });
  reactor_.want_send(stream_);
  const config::Config& cfg = reactor_.config();
  // The database is checked after authentication so that unauthenticated clients cannot probe
  // which databases exist.
  const config::Database* db = cfg.find_database(startup_message_.database);
  if (db == nullptr) {
    reactor_.close(*this, Reason::unknown_database,
                   fmt::format("database \"{}\" does not exist", startup_message_.database));
    return;
  }
  reactor_.login_done(*this);
  reactor_.register_cancel_key(*this);
  log::info("C-{} login db={} user={} from {}", id_, db->name, startup_message_.user, peer_);
  Pool& pool = reactor_.pool_for(*db, user_, startup_message_.user);
  pool.add_waiting(*this);
}

// ---- linked ----------------------------------------------------------------------------------

void Client::on_linked(Server& server) {
  // Session mode: the client's session is this server's; its parameters are the welcome.
  bool ok = true;
  for (const auto& [name, value] : server.params_)
    ok &= stream_.emit([&](std::string& out) { return proto::build::parameter_status(out, name, value); });
  ok &= stream_.emit([&](std::string& out) {
    return proto::build::backend_key_data(out, cancel_pid_, std::string_view(cancel_secret_.data(), 4));
  });
  ok &= stream_.emit([&](std::string& out) { return proto::build::ready_for_query(out, server.transaction_status_); });
  reactor_.want_send(stream_);
  log::debug("C-{} linked to S-{}", id_, server.id_);
  if (!ok) {
    reactor_.close(*this, Reason::protocol_violation, "cannot encode the server's parameters");
    return;
  }
  if (stream_.reading_paused_) {
    stream_.reading_paused_ = false;
  }
  if (stream_.input_size() > 0) forward_to_server();
  if (state_ == ClientState::active) reactor_.arm_recv_for(*this);
}

void Client::forward_to_server() {
  Server& server = *server_;
  for (;;) {
    if (forward_remaining_ > 0) {
      // The rest of a large message, streamed as it arrives.
      std::size_t n = std::min(forward_remaining_, stream_.input_size());
      if (n == 0) break;
      stream_.forward(n, server.stream_);
      forward_remaining_ -= n;
      continue;
    }
    if (stream_.input_size() < 5) break;
    char header[5];
    stream_.peek(header, 5);
    proto::Frame frame = proto::frame_message(std::string_view(header, 5), reactor_.config().max_message_size);
    if (frame.status == proto::FrameStatus::invalid_length) {
      reactor_.close(*this, Reason::protocol_violation, "invalid message length");
      return;
    }
    if (frame.status == proto::FrameStatus::too_large) {
      reactor_.close(*this, Reason::message_too_large,
                     fmt::format("message of {} bytes is larger than max_message_size ({})", frame.size,
                                 reactor_.config().max_message_size));
      return;
    }
    switch (frame.type) {
      case proto::frontend::kTerminate:
        // Never forwarded: the server stays in the pool.
        stream_.consume(std::min<std::size_t>(frame.size, stream_.input_size()));
        reactor_.close(*this, Reason::client_terminate);
        return;
      case proto::frontend::kQuery:
      case proto::frontend::kFunctionCall:
        ++server.requests_in_flight_;
        break;
      case proto::frontend::kSync:
        ++server.requests_in_flight_;
        server.unsynced_ = false;
        break;
      case proto::frontend::kParse:
      case proto::frontend::kBind:
      case proto::frontend::kExecute:
      case proto::frontend::kDescribe:
      case proto::frontend::kClose:
      case proto::frontend::kFlush:
        server.unsynced_ = true;
        break;
      default: break;
    }
    std::size_t n = std::min<std::size_t>(frame.size, stream_.input_size());
    stream_.forward(n, server.stream_);
    forward_remaining_ = frame.size - n;
  }
  reactor_.want_send(server.stream_);
  reactor_.apply_backpressure(stream_, server.stream_);
}

}  // namespace pgring
