#pragma once
// What a client said in its startup packet, kept for the client's life and shared: every client
// of a reactor that sent the same packet (an application's pool opens many identical
// connections) holds the same Startup, so an idle client pays for a pointer, not a copy.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "proto/frame.hpp"

namespace pgring {

using NameValues = std::vector<std::pair<std::string, std::string>>;

struct Startup {
  std::string packet;             // the whole packet, length included
  proto::StartupMessage message;  // views into packet
  // Every startup parameter but user, database, replication and _pq_.* is a setting of the
  // session, as PostgreSQL treats them (`options` "-c name=value" and "--name=value" too):
  NameValues settings;  // lower-case name -> SQL literal: RESET and RESET ALL return to these
  NameValues values;    // name -> value as the client sent it (the welcome, startup_value())
  // What a session-mode server's startup packet carries besides user and database: the
  // client's parameters as it sent them, less replication, _pq_.* and ignore_startup_parameters.
  std::vector<std::pair<std::string_view, std::string_view>> server_params;  // views into packet
};

// One per reactor: the Startups its clients hold, by packet.
class StartupTable {
 public:
  StartupTable() : entries_(std::make_shared<Entries>()) {}
  // The shared Startup for `packet` (a StartupMessage), or null when it does not parse.
  std::shared_ptr<const Startup> intern(std::string_view packet);
  // ignore_startup_parameters, as configured now: Startups interned from here on leave these
  // out (clients already logged in keep theirs).
  void set_ignored(const std::vector<std::string>& names);
  [[nodiscard]] std::size_t size() const { return entries_->size(); }

 private:
  // Keys view the Startup's own packet; a Startup removes its entry when its last client goes
  // (its deleter holds the table, so the order of destruction does not matter).
  using Entries = std::unordered_map<std::string_view, std::weak_ptr<const Startup>>;
  std::shared_ptr<Entries> entries_;
  std::vector<std::string> ignored_;
  [[nodiscard]] bool ignored(std::string_view name) const;
};

// Name/value lists (names compared case-insensitively): the value of `name`, or null.
[[nodiscard]] const std::string* find_value(const NameValues& list, std::string_view name);
// Sets `name` to `value`, adding it when missing.
void put_value(NameValues& list, std::string_view name, std::string_view value);

// Sessions are compared by fingerprint (order-independent): equal reported parameters and
// settings, equal fingerprints. A session with neither has 0.
[[nodiscard]] std::uint64_t session_fingerprint(const NameValues& params,
                                                const NameValues& settings);

// The startup `options` parameter's settings: backend switches "-c name=value" and
// "--name=value" (space separated, backslash escapes); other switches are ignored.
NameValues parse_startup_options(std::string_view options);

}  // namespace pgring
