// proto/fingerprint: one family per query shape, whatever the constants, spacing and comments.

#include "proto/fingerprint.hpp"

#include <doctest/doctest.h>

#include <string>

using pgring::proto::sql::fingerprint;

namespace {

std::string normal(std::string_view q) {
  std::string out;
  std::uint64_t with_text = fingerprint(q, out);
  CHECK(fingerprint(q) == with_text);
  return out;
}

// The id, checked to be the same whether the text is built or only hashed.
std::uint64_t id(std::string_view q) {
  std::string out;
  std::uint64_t with_text = fingerprint(q, out);
  CHECK(fingerprint(q) == with_text);
  return with_text;
}

}  // namespace

TEST_CASE("fingerprint: constants, spacing, comments and case fold into one family") {
  CHECK(normal("SELECT * FROM t WHERE id = 5") == "select * from t where id = $1");
  CHECK(id("SELECT * FROM t WHERE id = 5") == id("select *  from t\n where id=7 -- again"));
  CHECK(id("SELECT * FROM t WHERE id = 5;") == id("/* a /* nested */ note */ SELECT * FROM t "
                                                  "WHERE id = 7"));
  CHECK(normal("SELECT 'it''s', E'a\\'b', $$x$$, $q$y$q$, 1.5e-3, .5, 0x1F, B'01', U&'d'") ==
        "select $1, $2, $3, $4, $5, $6, $7, $8, $9");
  CHECK(normal("UPDATE t SET a = 'x' WHERE b = $1 AND c = 3") ==
        "update t set a = $2 where b = $1 and c = $3");
  CHECK(normal("SELECT \"MixedCase\".Col FROM \"MixedCase\"") ==
        "select \"MixedCase\".col from \"MixedCase\"");
  CHECK(normal("SELECT f(1, 2)[1], x::int, a<=b") == "select f ($1, $2) [$3], x :: int, a <= b");
  CHECK(id("SELECT f(1)") == id("SELECT f (2)"));
}

TEST_CASE("fingerprint: IN lists of constants collapse, other lists do not") {
  CHECK(normal("SELECT * FROM t WHERE id IN (1, 2, 3)") == "select * from t where id in (...)");
  CHECK(id("SELECT * FROM t WHERE id IN (1,2,3)") == id("SELECT * FROM t WHERE id in ($1, 7)"));
  CHECK(normal("SELECT * FROM t WHERE id IN (SELECT id FROM u)") ==
        "select * from t where id in (select id from u)");
  CHECK(normal("SELECT * FROM t WHERE (a, b) IN ((1, 2))") ==
        "select * from t where (a, b) in (($1, $2))");
  CHECK(normal("INSERT INTO t VALUES (1, 2)") == "insert into t values ($1, $2)");
}

TEST_CASE("fingerprint: different shapes are different families; odd input is safe") {
  CHECK(id("SELECT a FROM t") != id("SELECT b FROM t"));
  CHECK(id("SELECT 1") != 0);
  CHECK(normal("") == "");
  CHECK(normal("   -- only a comment") == "");
  CHECK(normal("SELECT 'unterminated") == "select $1");
  CHECK(normal("SELECT $tag$ never closed") == "select $1");
  CHECK(normal("SELECT /* open comment") == "select");
  CHECK(normal("SELECT $") == "select $");
  CHECK(normal("SELECT 1; SELECT 2;;  ") == "select $1; select $2");
  CHECK(normal("SELECT * FROM t WHERE a IN (1; 2)") == "select * from t where a in ($1; $2)");
}
