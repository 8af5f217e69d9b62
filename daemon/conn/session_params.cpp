// (split from conn/client.cpp)
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cassert>
#include <cctype>
#include <cstring>

#include "daemon/conn/client.hpp"
#include "daemon/conn/server.hpp"
#include "daemon/core/log.hpp"
#include "daemon/core/reactor.hpp"
#include "daemon/net/tls.hpp"
#include "daemon/pool/pool.hpp"
#include "proto/ascii.hpp"
#include "proto/builders.hpp"
#include "proto/bytes.hpp"
#include "proto/md5.hpp"
#include "proto/messages.hpp"
#include "proto/sql.hpp"

namespace pgring {

std::uint64_t session_fingerprint(const NameValues& params, const NameValues& settings) {
  std::uint64_t h = 0;
  auto mix = [](std::string_view name, std::string_view value, std::uint64_t salt) {
    std::uint64_t x = 1469598103934665603ull ^ salt;  // FNV-1a over lower(name) '=' value
    for (char c : name)
      x = (x ^ static_cast<unsigned char>(proto::ascii_lower(c))) * 1099511628211ull;
    x = (x ^ '=') * 1099511628211ull;
    for (char c : value) x = (x ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    return x;
  };
  for (const auto& [n, v] : params) h ^= mix(n, v, 0x5151);
  for (const auto& [n, v] : settings) h ^= mix(n, v, 0xa3a3);
  return h;
}

namespace {

// Reported parameters that describe the server or the login itself: never SET by pgring.
bool restorable(std::string_view name) {
  for (std::string_view fixed :
       {"server_version", "server_encoding", "integer_datetimes", "is_superuser",
        "session_authorization", "in_hot_standby", "scram_iterations"})
    if (proto::iequals(name, fixed)) return false;
  return true;
}

// PostgreSQL reports an application_name of printable ASCII exactly as sent (other bytes it
// replaces or escapes, depending on its version).
bool reported_as_sent(std::string_view name, std::string_view value) {
  if (!proto::iequals(name, "application_name")) return false;
  return std::all_of(value.begin(), value.end(), [](char c) { return c >= 32 && c <= 126; });
}

}  // namespace

void Client::take_startup_settings() {
  // The session starts as the client asked: applied with SET on the first server, then tracked
  // like any SET of the client (the server's reports replace the values in params_).
  settings_ = startup_->settings;
  params_ = startup_->values;
  session_changed();
}

bool Client::startup_known() {
  if (!startup_) return true;
  // A welcome must carry what PostgreSQL reports for this client's settings, and a parameter
  // PostgreSQL would refuse must fail the login, not the first query: unless every parameter is
  // the server's own value, or one the pool learned from an earlier client, a server applies them
  // first (on_restored).
  // (A client that returns false goes through a server, whose reports then replace params_:
  // what this loop put there before giving up does not matter.)
  for (const auto& [name, asked] : startup_->values) {
    const std::string* fresh = find_value(pool_->defaults_, name);
    if ((fresh != nullptr && *fresh == asked) || reported_as_sent(name, asked)) continue;
    const std::string* reported = pool_->learned(name, asked);
    if (reported == nullptr) return false;
    if (!reported->empty()) put_value(params_, name, *reported);
  }
  session_changed();
  return true;
}

void Client::send_welcome(const std::vector<std::pair<std::string, std::string>>& base) {
  welcomed_ = true;
  bool ok = true;
  // The server's values, overlaid with what this client asked for.
  for (const auto& entry : base) {
    const std::string& name = entry.first;  // (clang 14 cannot capture a structured binding)
    const std::string* mine = find_value(params_, name);
    const std::string& v = mine != nullptr ? *mine : entry.second;
    ok &= stream_.emit(
        [&](std::string& out) { return proto::build::parameter_status(out, name, v); });
  }
  if (server_ != nullptr && pool_ != nullptr &&
      pool_->settings_.pool_mode == config::PoolMode::session)
    reactor_.use_server_pid(*this, server_->backend_pid_);
  ok &= stream_.emit([&](std::string& out) {
    return proto::build::backend_key_data(
        out, cancel_pid_, std::string_view(cancel_secret_.data(), cancel_secret_size_));
  });
  ok &= stream_.emit([&](std::string& out) { return proto::build::ready_for_query(out, 'I'); });
  reactor_.want_send(stream_);
  if (!ok)
    reactor_.close(*this, Reason::protocol_violation, "cannot encode the session parameters");
}

// ---- linked ----------------------------------------------------------------------------------

std::string Client::restore_sql(const Server& server) const {
  // Make the server's session this client's: settings the server has that this client does not
  // are RESET, the client's own are SET, then reported parameters are brought to the client's
  // values (or the pool's defaults where the client set nothing).
  std::string sql;
  for (const auto& [name, value] : server.settings_) {
    (void)value;
    if (find_value(settings_, name) == nullptr)
      sql += "RESET " + proto::sql::quote_identifier(name) + ";";
  }
  for (const auto& [name, value] : settings_) {
    const std::string* have = find_value(server.settings_, name);
    if (have != nullptr && *have == value) continue;
    const std::string* startup = find_value(startup_settings(), name);
    if (startup != nullptr && *startup == value)
      // A startup value is a whole string to PostgreSQL, never parsed as SQL: SET search_path
      // TO 'a,b' would name one schema "a,b" where `-c search_path=a,b` names two.
      sql += "SELECT pg_catalog.set_config(" + proto::sql::quote_literal(name) + ", " + value +
             ", false);";
    else
      sql += "SET " + proto::sql::quote_identifier(name) + " TO " + value + ";";
  }
  auto check_param = [&](const std::string& name, const std::string& want) {
    if (!restorable(name)) return;
    const std::string* have = find_value(server.params_, name);
    if (have != nullptr && *have == want) return;
    // A setting restored above already covers this name.
    if (find_value(settings_, proto::to_lower(name)) != nullptr) return;
    sql += "SET " + proto::sql::quote_identifier(proto::to_lower(name)) + " TO " +
           proto::sql::quote_literal(want) + ";";
  };
  for (const auto& [name, value] : pool_->defaults_) {
    const std::string* mine = find_value(params_, name);
    check_param(name, mine != nullptr ? *mine : value);
  }
  for (const auto& [name, value] : params_)
    if (find_value(pool_->defaults_, name) == nullptr) check_param(name, value);
  return sql;
}

std::uint64_t Client::session_fingerprint() const {
  assert(fingerprint_ == pgring::session_fingerprint(params_, settings_));  // a change missed
  return fingerprint_;
}

void Client::session_changed() {
  fingerprint_ = pgring::session_fingerprint(params_, settings_);
}

void Client::on_restored() {
  if (!welcomed_ && server_ != nullptr) {
    // The first server of a client that had no welcome yet gives it: the server's session is
    // this client's now, so what it reports is what PostgreSQL made of the startup parameters
    // (PostgreSQL reports a value only when it changes: a SET of 'utf-8' over 'UTF8' says
    // nothing, so the client's own spelling would otherwise stay).
    for (auto& [name, value] : params_)
      if (const std::string* reported = find_value(server_->params_, name)) value = *reported;
    if (startup_) {
      for (const auto& [name, asked] : startup_->values) {
        const std::string* reported = find_value(server_->params_, name);
        pool_->learn(name, asked, reported != nullptr ? *reported : std::string_view());
      }
    }
    session_changed();
  }
  if (server_ != nullptr) server_->session_fingerprint_ = session_fingerprint();
  if (!welcomed_) send_welcome(server_->params_);
  if (state_ == ClientState::active) server_->maybe_release();
}

const std::string* Client::startup_value(std::string_view name) const {
  const std::string* asked = startup_ ? find_value(startup_->values, name) : nullptr;
  if (asked == nullptr || pool_ == nullptr) return asked;
  // What PostgreSQL reported for it (UTF8 for 'utf-8'), once a server applied it.
  const std::string* reported = pool_->learned(name, *asked);
  return reported != nullptr && !reported->empty() ? reported : asked;
}

void Client::on_server_parameter(std::string_view name, std::string_view value) {
  put_value(params_, name, value);
  // The server reports it from now on: a SET of the same name from startup is superseded.
  for (auto it = settings_.begin(); it != settings_.end(); ++it) {
    if (proto::iequals(it->first, name)) {
      settings_.erase(it);
      break;
    }
  }
  session_changed();
}

void Client::apply_setting(const proto::sql::SetStatement& set) {
  switch (set.kind) {
    case proto::sql::SetStatement::Kind::set:
      put_value(settings_, set.name, set.value);
      break;
    case proto::sql::SetStatement::Kind::reset:
      for (auto it = settings_.begin(); it != settings_.end(); ++it) {
        if (proto::iequals(it->first, set.name)) {
          settings_.erase(it);
          break;
        }
      }
      // RESET returns to the startup value, as PostgreSQL does; the next restore applies it.
      if (const std::string* startup = find_value(startup_settings(), set.name))
        put_value(settings_, set.name, *startup);
      break;
    case proto::sql::SetStatement::Kind::reset_all:
      // The server went back to its own defaults; this client's session goes back to its
      // startup values, which the next restore applies again.
      settings_ = startup_settings();
      break;
  }
  session_changed();
}

}  // namespace pgring
