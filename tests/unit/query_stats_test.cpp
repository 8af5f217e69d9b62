// daemon/ops/queries and daemon/pool/stats: a query family's histogram, its quantiles as
// SHOW QUERIES reports them, and families of several reactors merged into one row.

#include <doctest/doctest.h>

#include <chrono>

#include "daemon/ops/queries.hpp"
#include "daemon/pool/stats.hpp"

using namespace pgring;
using std::chrono::microseconds;
using std::chrono::milliseconds;

TEST_CASE("Histogram::quantile: linear within its bucket, never above the longest sample") {
  Histogram h;
  CHECK(h.quantile(0.99) == 0);
  h.observe(milliseconds(300));
  // One sample in (0.25, 0.5]: the estimate would be 0.4975 s, but nothing took longer than 0.3.
  CHECK(h.quantile(0.99) == doctest::Approx(0.3));
  Histogram many;
  for (int i = 0; i < 99; ++i) many.observe(microseconds(200));  // (0.00025 bucket)
  many.observe(milliseconds(40));                                // (0.025, 0.05]
  CHECK(many.quantile(0.5) <= 0.00025);
  CHECK(many.quantile(0.5) > 0.0001);
  CHECK(many.quantile(0.99) <= 0.00025);  // the 99th of 100 samples is still a fast one
  CHECK(many.quantile(1.0) == doctest::Approx(0.04));
  Histogram slow;
  slow.observe(std::chrono::seconds(9));  // past the last bound: the sample itself
  CHECK(slow.quantile(0.99) == doctest::Approx(9.0));
}

TEST_CASE("Histogram::add: buckets, sum, count and the longest sample") {
  Histogram a, b;
  a.observe(milliseconds(1));
  b.observe(milliseconds(3));
  b.observe(milliseconds(2));
  a.add(b);
  CHECK(a.count == 3);
  CHECK(a.sum == doctest::Approx(0.006));
  CHECK(a.max == doctest::Approx(0.003));
  std::uint64_t total = 0;
  for (auto n : a.buckets) total += n;
  CHECK(total == 3);
}

TEST_CASE("merge_families: the same pool and id over reactors is one family") {
  QueryFamily one;
  one.id = 42;
  one.database = "db";
  one.user = "u";
  one.server.observe(milliseconds(2));
  one.rows = 1;
  one.errors["22"] = 1;
  QueryFamily two = one;
  two.rows = 4;
  two.wait_us = 10;
  two.errors["42"] = 2;
  QueryFamily other_user = one;
  other_user.user = "v";
  auto merged = merge_families({{one}, {two, other_user}});
  REQUIRE(merged.size() == 2);
  const QueryFamily& f = merged[0].user == "u" ? merged[0] : merged[1];
  CHECK(f.server.count == 2);
  CHECK(f.rows == 5);
  CHECK(f.wait_us == 10);
  CHECK(f.errors.at("22") == 2);
  CHECK(f.errors.at("42") == 2);
  CHECK(f.error_count() == 4);
}

TEST_CASE("utf8_prefix: never cuts through a character") {
  CHECK(utf8_prefix("select 1", 100) == "select 1");
  CHECK(utf8_prefix("select 1", 6) == "select");
  // "é" is two bytes (C3 A9): a cut after its first byte keeps neither.
  CHECK(utf8_prefix("ab\xC3\xA9z", 3) == "ab");
  CHECK(utf8_prefix("ab\xC3\xA9z", 4) == "ab\xC3\xA9");
  // A four-byte character (F0 9F 98 80) cut anywhere inside.
  for (std::size_t cut = 2; cut < 5; ++cut) CHECK(utf8_prefix("a\xF0\x9F\x98\x80", cut) == "a");
  CHECK(utf8_prefix("\x80\x80", 1).empty());  // (not UTF-8 at all: nothing rather than junk)
}

TEST_CASE("make_valid_utf8: what is not UTF-8 becomes '?', valid text stays as it is") {
  auto fixed = [](std::string s) {
    make_valid_utf8(s);
    return s;
  };
  CHECK(fixed("select 1") == "select 1");
  CHECK(fixed("gr\xC3\xB6\xC3\x9F"
              "e") ==
        "gr\xC3\xB6\xC3\x9F"
        "e");  // größe in UTF-8
  CHECK(fixed("gr\xF6\xDF"
              "e") == "gr??e");                            // größe in LATIN1
  CHECK(fixed("\xF0\x9F\x98\x80") == "\xF0\x9F\x98\x80");  // a 4-byte character
  CHECK(fixed("a\xF0\x9F\x98") == "a???");                 // cut short
  CHECK(fixed("\xC0\xAF") == "??");                        // overlong '/'
  CHECK(fixed("\xED\xA0\x80") == "???");                   // a surrogate
  CHECK(fixed("\xF4\x90\x80\x80") == "????");              // past U+10FFFF
  CHECK(fixed("\x80 x") == "? x");                         // a lone continuation
}
