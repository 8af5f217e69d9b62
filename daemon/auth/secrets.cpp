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

std::string Reactor::lookup_key(std::string_view database, std::string_view name) const {
  std::string key;
  if (config_->auth_query && config_->auth_query->database.empty()) key = database;
  key += '\0';
  key += name;
  return key;
}

const config::User* Reactor::cached_lookup(std::string_view database, std::string_view name) const {
  auto it = looked_up_.find(lookup_key(database, name));
  if (it == looked_up_.end() || !config_->auth_query ||
      now_ - it->second->fetched >= config_->auth_query->cache)
    return nullptr;
  return &it->second->user;
}

bool Reactor::secret_looked_up(std::string_view name) const {
  if (!config_->auth_query) return false;
  const config::User* configured = config_->find_user(name);
  return configured == nullptr || configured->password.empty();
}

const config::User* Reactor::find_user(std::string_view database, std::string_view name) const {
  const config::User* configured = config_->find_user(name);
  if (!secret_looked_up(name)) return configured;
  auto it = looked_up_.find(lookup_key(database, name));
  return it == looked_up_.end() ? configured : &it->second->user;
}

const config::User& Reactor::store_lookup(std::string_view database, std::string_view name,
                                          std::string secret, config::SecretKind kind) {
  auto& slot = looked_up_[lookup_key(database, name)];
  if (!slot) slot = std::make_unique<LookedUp>();
  bool changed = slot->user.password != secret;
  slot->user.name = std::string(name);
  slot->user.password = std::move(secret);
  slot->user.secret_kind = kind;
  // A users: entry without a password still gives the user its pool settings.
  const config::User* configured = config_->find_user(name);
  slot->user.pool = configured != nullptr ? configured->pool : config::PoolOverrides{};
  slot->fetched = now_;
  if (changed) {
    scram_secrets_.erase(&slot->user);
    // The user's pools for this database (or all, with auth.query.database) log in with the
    // new secret from now on.
    bool every_database = config_->auth_query && !config_->auth_query->database.empty();
    for (auto& [key, pool] : pools_) {
      (void)key;
      if (pool->user_name_ == name && secret_looked_up(name) &&
          (every_database || pool->database_ == database))
        pool->reconfigure(pool->db_, &slot->user, config_->resolve_pool(pool->db_, &slot->user));
    }
  }
  return slot->user;
}

proto::scram::Secret Reactor::mock_secret(std::string_view name) const {
  // Like PostgreSQL's scram_mock_salt: a hash of a process secret and the name, so asking twice
  // for the same unknown user shows the same salt, as a real user's would.
  std::string input(reinterpret_cast<const char*>(shared_.mock_nonce.data()),
                    shared_.mock_nonce.size());
  input.append(name);
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(input.data()), input.size(), digest);
  proto::scram::Secret secret;
  secret.iterations = proto::scram::kDefaultIterations;
  secret.salt.assign(reinterpret_cast<const char*>(digest), 16);
  RAND_bytes(secret.stored_key.data(), static_cast<int>(secret.stored_key.size()));
  RAND_bytes(secret.server_key.data(), static_cast<int>(secret.server_key.size()));
  return secret;
}

const proto::scram::Secret& Reactor::scram_secret_for(const config::User& user) {
  auto it = scram_secrets_.find(&user);
  if (it != scram_secrets_.end()) return it->second;
  proto::scram::Secret secret;
  if (user.secret_kind == config::SecretKind::scram) {
    // The config's check is structural; a secret the parser still refuses (say, "04096"
    // iterations) can only fail, like an unknown user's.
    auto parsed = proto::scram::parse_secret(user.password);
    secret = parsed ? std::move(*parsed) : mock_secret(user.name);
  } else {
    // From a plain password: derived once per reactor, not per login (PBKDF2 is slow on purpose).
    std::string salt(16, '\0');
    RAND_bytes(reinterpret_cast<unsigned char*>(salt.data()), static_cast<int>(salt.size()));
    secret = proto::scram::make_secret(user.password, salt, proto::scram::kDefaultIterations);
  }
  return scram_secrets_.emplace(&user, std::move(secret)).first->second;
}

}  // namespace pgring
