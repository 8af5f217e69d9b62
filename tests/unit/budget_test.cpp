// daemon/core/shared.hpp: the server budgets the reactors share, and the slots they give one
// another (Pool::give_slot).

#include <doctest/doctest.h>

#include "daemon/core/shared.hpp"

using namespace pgring;

TEST_CASE("Budget: acquire_for counts per reactor and refuses beyond the limit") {
  Budget b;
  CHECK(b.acquire_for(0, 2));
  CHECK(b.acquire_for(1, 2));
  CHECK_FALSE(b.acquire_for(1, 2));
  CHECK(b.servers.load() == 2);
  CHECK(b.held_by(0) == 1);
  CHECK(b.held_by(1) == 1);
  b.release_from(0);
  CHECK(b.servers.load() == 1);
  CHECK(b.held_by(0) == 0);
  CHECK(b.acquire_for(0, 0));  // no limit: counted, never refused
  CHECK(b.servers.load() == 2);
}

TEST_CASE("Budget: a given slot is the receiver's, even when the budget is used up") {
  Budget b;
  REQUIRE(b.acquire_for(0, 2));
  REQUIRE(b.acquire_for(0, 2));
  b.promise(0, 1);  // as the server closes: counted as reactor 1's already
  CHECK(b.held_by(0) == 1);
  CHECK(b.held_by(1) == 1);
  CHECK(b.servers.load() == 2);
  b.give(1);                         // the server is gone
  CHECK_FALSE(b.acquire_for(0, 2));  // the giver cannot take it back
  CHECK(b.acquire_for(1, 2));        // the receiver opens its server with it
  CHECK(b.servers.load() == 2);
  CHECK(b.gifts[1].load() == 0);
  CHECK_FALSE(b.acquire_for(1, 2));
}

TEST_CASE("Budget: gifts nobody took go back to the budget") {
  Budget b;
  REQUIRE(b.acquire_for(0, 3));
  REQUIRE(b.acquire_for(0, 3));
  b.promise(0, 2);
  b.give(2);
  b.promise(0, 2);
  b.give(2);
  CHECK(b.return_gifts(2) == 2);
  CHECK(b.held_by(2) == 0);
  CHECK(b.held_by(0) == 0);
  CHECK(b.servers.load() == 0);
  CHECK(b.return_gifts(2) == 0);
}
