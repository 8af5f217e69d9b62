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

void Reactor::look_up(Client& client) {
  const config::AuthQuery& q = *config_->auth_query;
  // The lookup runs in the database the client asked for unless auth.query names one, over
  // the auth user's own pool (never with the client's startup settings: CVE-2025-12819).
  std::string_view db_name =
      q.database.empty() ? std::string_view(client.startup_message().database) : q.database;
  std::optional<config::Database> db = config_->database_for(db_name);
  if (!db) {
    // Unknown databases are revealed only after authentication: fail like a wrong password.
    client.on_lookup_done(std::nullopt, {});
    return;
  }
  Pool& pool = pool_for(*db, config_->find_user(q.user), q.user);
  pool.lookups_.push_back(&client);
  client.login_->lookup_pool = &pool;
  // Nothing the client sends matters until the lookup answers: do not let it pile up.
  client.stream_.reading_paused_ = true;
  log::debug("C-{} looking up user {} with auth.query", client.id_, client.startup_message().user);
  pool.maintain();
}

void Reactor::resume_reading(Client& client) {
  if (!client.stream_.reading_paused_ || client.state_ == ClientState::closing) return;
  client.stream_.reading_paused_ = false;
  arm_recv(client.stream_, client.ops_in_flight_);
}

// ---- auth.query ------------------------------------------------------------------------------

void Server::start_lookup(Client& client) {
  if (!reactor_.config().auth_query) {  // removed by a reload meanwhile
    reactor_.close(client, Reason::auth_query_failed,
                   "authentication failed: auth.query was removed");
    pool_.server_ready(*this);
    return;
  }
  const config::AuthQuery& q = *reactor_.config().auth_query;
  lookup_client_ = &client;
  client.login_->lookup_server = this;
  lookup_secret_.reset();
  lookup_error_.clear();
  lookup_row_seen_ = false;
  // The unnamed statement is about to be replaced: no client's copy lives here any more.
  unnamed_client_ = 0;
  if (!stream_.emit([&](std::string& out) {
        return proto::build::query_with_params(out, q.query, {client.startup_message().user});
      })) {
    lookup_client_ = nullptr;
    client.login_->lookup_server = nullptr;
    reactor_.close(client, Reason::auth_query_failed, "cannot encode auth.query");
    pool_.server_ready(*this);
    return;
  }
  reactor_.set_state(*this, ServerState::lookup);
  reactor_.want_send(stream_);
}

void Server::handle_lookup_message(char type, std::string_view body) {
  switch (type) {
    case proto::backend::kDataRow:
      // The secret is the second column (PgBouncer's convention: usename, passwd); the first
      // row wins.
      if (auto row = proto::parse_data_row(body); row && !lookup_row_seen_) {
        lookup_row_seen_ = true;
        if (row->size() >= 2 && (*row)[1]) lookup_secret_ = std::string(*(*row)[1]);
      }
      return;
    case proto::backend::kErrorResponse:
      if (auto e = proto::parse_error_fields(body))
        lookup_error_ = fmt::format("{} (SQLSTATE {})", e->message, e->sqlstate);
      else
        lookup_error_ = "malformed error";
      return;
    case proto::backend::kParameterStatus:
      if (auto p = proto::parse_parameter_status(body)) set_param(p->name, p->value);
      return;
    case proto::backend::kReadyForQuery: {
      transaction_status_ = body.empty() ? 'I' : body[0];
      Client* client = lookup_client_;
      lookup_client_ = nullptr;
      std::optional<std::string> secret = std::move(lookup_secret_);
      std::string error = std::move(lookup_error_);
      lookup_secret_.reset();
      pool_.server_ready(*this);
      if (client != nullptr) {
        client->login_->lookup_server = nullptr;
        client->on_lookup_done(std::move(secret), error);
      }
      return;
    }
    default:
      return;  // ParseComplete, BindComplete, RowDescription, CommandComplete, notices
  }
}

}  // namespace pgring
