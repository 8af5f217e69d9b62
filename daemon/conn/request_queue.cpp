// (split from conn/server.cpp)
#include "daemon/conn/server.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <cctype>

#include "daemon/conn/client.hpp"
#include "daemon/core/log.hpp"
#include "daemon/pool/pool.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/net/tls.hpp"
#include "proto/builders.hpp"
#include "proto/bytes.hpp"
#include "proto/md5.hpp"
#include "proto/messages.hpp"

namespace pgring {

Server::Expected& Server::expect(char kind) {
  if (expected_head_ == expected_.size()) {
    // The server becomes busy now: the query timeout counts from here.
    busy_since_ = reactor_.now();
    if (transaction_status_ == 'I') transaction_start_ = busy_since_;
    query_timeout_canceled_ = false;
    expected_.clear();
    expected_head_ = 0;
  } else if (expected_head_ > 64 && expected_head_ * 2 > expected_.size()) {
    expected_.erase(expected_.begin(), expected_.begin() + static_cast<std::ptrdiff_t>(expected_head_));
    expected_head_ = 0;
  }
  expected_.emplace_back();
  expected_.back().kind = kind;
  return expected_.back();
}

void Server::expect(char kind, std::uint8_t session_state, std::unique_ptr<proto::sql::SetStatement> set) {
  Expected& e = expect(kind);
  e.session_state = session_state;
  e.set = std::move(set);
}

namespace {
bool is_fake(char kind) { return kind == 'p' || kind == 'x' || kind == 'e' || kind == 'd'; }
}  // namespace

void Server::flush_fakes() {
  if (client_ == nullptr) return;
  Client& client = *client_;
  bool sent = false;
  while (expected_head_ < expected_.size() && is_fake(expected_[expected_head_].kind)) {
    Expected& e = expected_[expected_head_];
    switch (e.kind) {
      case 'p': (void)client.stream_.emit([](std::string& out) { return proto::build::parse_complete(out); }); break;
      case 'x': (void)client.stream_.emit([](std::string& out) { return proto::build::close_complete(out); }); break;
      case 'e': client.stream_.emit_bytes(e.fake); break;
      case 'd':
        (void)client.stream_.emit([](std::string& out) { return proto::build::command_complete(out, "DEALLOCATE"); });
        (void)client.stream_.emit([&](std::string& out) { return proto::build::ready_for_query(out, transaction_status_); });
        break;
      default: break;
    }
    ++expected_head_;
    sent = true;
  }
  if (sent) reactor_.want_send(client.stream_);
}

void Server::pop_expected_until_ready() {
  // ReadyForQuery answers the first Query, Sync or FunctionCall; Executes before it that got no
  // reply of their own were skipped by the server after an error.
  while (expected_head_ < expected_.size()) {
    Expected& e = expected_[expected_head_];
    char kind = e.kind;
    if (kind == 'P' && e.statement != nullptr) prepared_.remove(e.statement->id);  // skipped: not prepared
    e.set.reset();
    ++expected_head_;
    if (kind == 'Q' || kind == 'S' || kind == 'F') break;
  }
}

void Server::drop_expected(std::size_t index) {
  expected_.erase(expected_.begin() + static_cast<std::ptrdiff_t>(index));
}

bool Server::pop_reply(char request_kind) {
  if (request_kind == 'E') executed_in_batch_ = true;
  if (expected_head_ >= expected_.size() || expected_[expected_head_].kind != request_kind) return false;
  Expected& e = expected_[expected_head_];
  bool skip = e.skip;
  e.set.reset();
  ++expected_head_;
  return skip;
}

}  // namespace pgring
