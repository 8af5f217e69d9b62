// daemon/pool/hosts: which host a new server connection goes to, for each target and policy,
// and how a group keeps an endpoint's state across lookups.

#include "daemon/pool/hosts.hpp"

#include <doctest/doctest.h>

#include "config/config.hpp"
#include "daemon/core/shared.hpp"

using namespace pgring;
using config::LoadBalance;
using config::Target;

namespace {

Candidate primary(int connections = 0) {
  return {HostRole::primary, false, false, 0, connections, 0};
}
Candidate replica(int connections = 0, std::int64_t lag_ms = 0) {
  return {HostRole::replica, false, false, lag_ms, connections, 0};
}
Candidate unknown(int connections = 0) {
  return {HostRole::unknown, false, false, 0, connections, 0};
}
Candidate down(Candidate c, std::int64_t until) {
  c.down = true;
  c.down_until_ns = until;
  return c;
}

int choose(const std::vector<Candidate>& c, Target t, std::uint64_t turn = 0,
           LoadBalance p = LoadBalance::least_connections, std::int64_t lag = 0) {
  return choose_endpoint(c, t, p, lag, turn);
}

}  // namespace

TEST_CASE("hosts: the primary for target primary, the replicas for target replica") {
  std::vector<Candidate> c{replica(), primary(), replica()};
  CHECK(choose(c, Target::primary) == 1);
  CHECK(choose(c, Target::replica, 0) == 0);
  CHECK(choose(c, Target::replica, 1) == 2);  // a tie: in turn
  CHECK(choose(c, Target::prefer_replica) == 0);
  // With no primary known, hosts of unknown role come before replicas (their role may have
  // changed unseen: a promotion), and a replica is still tried last.
  CHECK(choose({replica(), unknown()}, Target::primary) == 1);
  CHECK(choose({replica(), down(primary(), 5)}, Target::primary) == 0);
  // target replica never falls back to the primary; prefer-replica does.
  CHECK(choose({primary(), down(replica(), 9)}, Target::replica) == 1);  // the replica, down
  CHECK(choose({primary()}, Target::replica) == -1);
  CHECK(choose({primary(), down(replica(), 9)}, Target::prefer_replica) == 0);
}

TEST_CASE("hosts: least connections and round robin among the hosts that fit") {
  std::vector<Candidate> c{replica(5), replica(2), replica(2), primary(0)};
  CHECK(choose(c, Target::replica, 0) == 1);
  CHECK(choose(c, Target::replica, 1) == 2);
  CHECK(choose(c, Target::any, 0) == 3);
  CHECK(choose(c, Target::replica, 0, LoadBalance::round_robin) == 0);
  CHECK(choose(c, Target::replica, 1, LoadBalance::round_robin) == 1);
  CHECK(choose(c, Target::replica, 2, LoadBalance::round_robin) == 2);
  CHECK(choose(c, Target::replica, 3, LoadBalance::round_robin) == 0);
}

TEST_CASE("hosts: a lagging replica is skipped; with every host down, the first back") {
  std::vector<Candidate> c{replica(0, 20'000), replica(3, 100)};
  CHECK(choose(c, Target::replica, 0, LoadBalance::least_connections, 10'000) == 1);
  CHECK(choose({replica(0, 20'000)}, Target::replica, 0, LoadBalance::least_connections, 10'000) ==
        -1);
  CHECK(choose({replica(0, 20'000), primary()}, Target::prefer_replica, 0,
               LoadBalance::least_connections, 10'000) == 1);
  CHECK(choose({down(primary(), 300), down(unknown(), 200)}, Target::any) == 1);
  Candidate gone = primary();
  gone.gone = true;
  CHECK(choose({gone}, Target::any) == -1);
  CHECK(choose({}, Target::any) == -1);
}

TEST_CASE("hosts: roles fit targets") {
  CHECK(role_fits(HostRole::primary, Target::primary));
  CHECK_FALSE(role_fits(HostRole::replica, Target::primary));
  CHECK_FALSE(role_fits(HostRole::primary, Target::replica));
  CHECK(role_fits(HostRole::unknown, Target::replica));
  CHECK(role_fits(HostRole::replica, Target::any));
}

TEST_CASE("hosts: a group picks, takes a failed host out and learns roles") {
  config::Database db;
  db.hosts = {{"127.0.0.1", 5432}, {"127.0.0.2", 5432}};
  db.target = Target::primary;
  Shared shared(1);
  HostDirectory directory(shared);
  config::Config config;
  config.databases.emplace("app", db);
  directory.configure(config);
  directory.resolve_all();
  auto group = directory.group("app");
  REQUIRE(group != nullptr);
  CHECK(group->text() == "127.0.0.1:5432,127.0.0.2:5432");
  auto endpoints = group->endpoints();
  REQUIRE(endpoints.size() == 2);
  auto now = std::chrono::steady_clock::now();
  CHECK(group->learned_role(*endpoints[0], true));
  CHECK_FALSE(group->learned_role(*endpoints[0], true));  // no change
  CHECK(group->learned_role(*endpoints[1], false));
  CHECK(group->pick(now) == endpoints[1]);
  CHECK_FALSE(group->fits(*endpoints[0]));
  CHECK(group->fits(*endpoints[1]));
  // The primary fails: out for a while; the replica is tried meanwhile (it may be promoted).
  CHECK(group->connect_failed(*endpoints[1], now, std::chrono::seconds(15)));
  CHECK(endpoints[1]->down(now));
  CHECK(group->pick(now) == endpoints[0]);
  CHECK(group->logged_in(*endpoints[1]));
  CHECK_FALSE(endpoints[1]->down(now));
  // A reload with the same hosts keeps the group and its state; other hosts make a new one.
  config.databases["app"].target = Target::replica;
  directory.configure(config);
  CHECK(directory.group("app") == group);
  CHECK(group->target() == Target::replica);
  config.databases["app"].hosts = {{"127.0.0.3", 5432}};
  directory.configure(config);
  CHECK(directory.group("app") != group);
}

TEST_CASE("hosts: of two primaries, the one promoted last") {
  Candidate old_primary = primary(0);
  Candidate promoted = primary(5);
  promoted.promoted_ns = 1000;
  CHECK(choose({old_primary, promoted}, Target::primary) == 1);
  CHECK(choose({promoted, old_primary}, Target::any) == 0);
  promoted.down = true;
  promoted.down_until_ns = 7;
  CHECK(choose({old_primary, promoted}, Target::primary) == 0);  // the new one is down
}
