// SQL text heuristics: replayable SET/RESET statements and session-state detection.

#include "proto/sql.hpp"

#include <doctest/doctest.h>

#include <random>
#include <string>

using namespace pgring::proto::sql;

TEST_CASE("parse_set_statement: replayable forms") {
  auto s = parse_set_statement("SET statement_timeout = '7s'");
  REQUIRE(s);
  CHECK(s->kind == SetStatement::Kind::set);
  CHECK(s->name == "statement_timeout");
  CHECK(s->value == "'7s'");

  auto to = parse_set_statement("  set SESSION Work_Mem TO 64000 ;  ");
  REQUIRE(to);
  CHECK(to->name == "work_mem");
  CHECK(to->value == "64000");

  auto list = parse_set_statement("SET search_path TO \"My Schema\", public");
  REQUIRE(list);
  CHECK(list->value == "\"My Schema\", public");

  auto custom = parse_set_statement("SET myapp.tenant = 'a;b'");  // a semicolon inside a literal
  REQUIRE(custom);
  CHECK(custom->name == "myapp.tenant");
  CHECK(custom->value == "'a;b'");

  auto tz = parse_set_statement("SET TIME ZONE 'UTC'");
  REQUIRE(tz);
  CHECK(tz->name == "timezone");
  CHECK(tz->value == "'UTC'");

  auto reset = parse_set_statement("RESET statement_timeout");
  REQUIRE(reset);
  CHECK(reset->kind == SetStatement::Kind::reset);
  auto all = parse_set_statement("reset all;");
  REQUIRE(all);
  CHECK(all->kind == SetStatement::Kind::reset_all);

  // Other spellings of RESET.
  for (const char* text :
       {"RESET TIME ZONE", "reset time zone;", "SET TIME ZONE DEFAULT", "SET TIME ZONE LOCAL",
        "SET timezone TO DEFAULT", "SET SESSION TimeZone = default"}) {
    CAPTURE(text);
    auto r = parse_set_statement(text);
    REQUIRE(r);
    CHECK(r->kind == SetStatement::Kind::reset);
    CHECK(r->name == "timezone");
  }
  auto to_default = parse_set_statement("SET statement_timeout TO DEFAULT");
  REQUIRE(to_default);
  CHECK(to_default->kind == SetStatement::Kind::reset);
  CHECK(to_default->name == "statement_timeout");
  // A quoted 'default' is a value, and LOCAL is only special for TIME ZONE.
  auto quoted = parse_set_statement("SET application_name = 'default'");
  REQUIRE(quoted);
  CHECK(quoted->kind == SetStatement::Kind::set);
  auto local = parse_set_statement("SET search_path TO local");
  REQUIRE(local);
  CHECK(local->kind == SetStatement::Kind::set);
  CHECK(local->value == "local");

  auto commented = parse_set_statement("/* driver */ SET -- why\n lock_timeout = 5");
  REQUIRE(commented);
  CHECK(commented->name == "lock_timeout");
}

TEST_CASE("parse_set_statement: not replayable") {
  CHECK_FALSE(parse_set_statement("SET LOCAL statement_timeout = 5"));
  CHECK_FALSE(parse_set_statement("SET ROLE bob"));
  CHECK_FALSE(parse_set_statement("SET SESSION AUTHORIZATION bob"));
  CHECK_FALSE(parse_set_statement("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"));
  CHECK_FALSE(parse_set_statement("SET CONSTRAINTS ALL DEFERRED"));
  CHECK_FALSE(parse_set_statement("SET a = 1; SELECT 1"));
  CHECK_FALSE(parse_set_statement("SELECT 1"));
  CHECK_FALSE(parse_set_statement("SET"));
  CHECK_FALSE(parse_set_statement("SET x"));
  CHECK_FALSE(parse_set_statement("SET x = 'unterminated"));
  CHECK_FALSE(parse_set_statement("RESET ROLE"));
}

TEST_CASE("scan_session_state: what pins a client") {
  CHECK(scan_session_state("CREATE TEMP TABLE t(a int)") == kTemporaryObject);
  CHECK(scan_session_state("create temporary view v as select 1") == kTemporaryObject);
  CHECK(scan_session_state("CREATE GLOBAL TEMPORARY TABLE t(a int)") == kTemporaryObject);
  // Gone when the transaction ends: no session state.
  CHECK(scan_session_state("CREATE TEMP TABLE t(a int) ON COMMIT DROP") == kNone);
  CHECK(scan_session_state("create temporary table t on commit drop as select 1") == kNone);
  CHECK(scan_session_state("CREATE TEMP TABLE t(a int) ON COMMIT DELETE ROWS") == kTemporaryObject);
  CHECK(scan_session_state("CREATE TEMP TABLE t(a int) ON COMMIT PRESERVE ROWS") ==
        kTemporaryObject);
  // Each statement on its own: the second table stays.
  CHECK(scan_session_state("CREATE TEMP TABLE a() ON COMMIT DROP; CREATE TEMP TABLE b()") ==
        kTemporaryObject);
  CHECK(scan_session_state("CREATE TEMP TABLE a(); CREATE TEMP TABLE b() ON COMMIT DROP") ==
        kTemporaryObject);
  CHECK(scan_session_state("CREATE TEMP VIEW v AS SELECT 'on commit drop'") == kTemporaryObject);
  CHECK(scan_session_state("DECLARE c CURSOR WITH HOLD FOR SELECT 1") == kHoldCursor);
  CHECK(scan_session_state("SELECT pg_advisory_lock(42)") == kAdvisoryLock);
  CHECK(scan_session_state("SELECT pg_try_advisory_lock(1, 2)") == kAdvisoryLock);
  CHECK(scan_session_state("LISTEN jobs") == kListen);
  CHECK(scan_session_state("PREPARE q AS SELECT 1") == kSqlPrepare);
  CHECK(scan_session_state("SET ROLE admin") == kRoleChange);
  CHECK(scan_session_state("SELECT 1; SET statement_timeout = 5") == kUntrackedSet);

  // Transaction-scoped or reported: nothing to pin.
  CHECK(scan_session_state("SELECT pg_advisory_xact_lock(42)") == kNone);
  CHECK(scan_session_state("SET LOCAL statement_timeout = 5") == kNone);
  CHECK(scan_session_state("SELECT 1; SET application_name = 'x'") == kNone);
  CHECK(scan_session_state("PREPARE TRANSACTION 'x'") == kNone);
  CHECK(scan_session_state("SELECT temp FROM weather") == kNone);
  // Keywords inside literals, quoted identifiers and comments do not count.
  CHECK(scan_session_state("SELECT 'CREATE TEMP TABLE x', \"listen\" -- LISTEN x\n") == kNone);
  CHECK(scan_session_state("SELECT $$ pg_advisory_lock(1) $$, $t$ with hold $t$") == kNone);
  CHECK(scan_session_state("/* LISTEN /* nested */ x */ SELECT 1") == kNone);
}

TEST_CASE("mentions: the one-pass filter in front of the SQL checks") {
  CHECK(mentions("SELECT abalance FROM pgbench_accounts WHERE aid = $1") == 0);
  CHECK(mentions("UPDATE t SET x = 1") == kMentionsSet);
  CHECK(mentions("reset ALL") == kMentionsReset);
  CHECK(mentions("DeAllocate foo") == kMentionsDeallocate);
  for (const char* q :
       {"create TEMP table t ()", "declare c cursor with HOLD for select 1", "listen x",
        "PREPARE p AS SELECT 1", "select set_config('a', 'b', false)", "select pg_advisory_lock(1)",
        "select PG_TRY_ADVISORY_LOCK_SHARED(1)", "create temporary table t ()"})
    CHECK_MESSAGE(mentions(q) == kMentionsSessionWord, q);
  // Whole words only: a column named settings or an identifier holding a keyword is no SET.
  CHECK(mentions("select settings, offset_, reset_at, temps, set_at, x.setx from t") == 0);
  CHECK(mentions("select 1 from t where x = 'SET'") == kMentionsSet);  // literals count too
  CHECK(mentions("sélect set") == kMentionsSet);  // non-ASCII bytes continue a word
  CHECK(mentions("") == 0);
}

TEST_CASE("mentions: never hides what the checks would find") {
  // Random texts from the checks' own vocabulary: with the filter's bits or with every bit set,
  // each check answers the same.
  std::mt19937 rng(11);
  const char* words[] = {"set",     "SET", "reset",   "all", "deallocate", "prepare", "temp",
                         "hold",    "to",  "=",       ";",   "'x'",        "x",       "listen",
                         "with",    "--",  "/*",      "*/",  "session",    "local",   "\"$set\"",
                         "execute", "as",  "explain", "(",   ")"};
  for (int n = 0; n < 20000; ++n) {
    std::string q;
    int len = 1 + static_cast<int>(rng() % 6);
    for (int i = 0; i < len; ++i) {
      q += words[rng() % std::size(words)];
      q += (rng() % 4 == 0) ? "\n" : " ";
    }
    std::uint8_t m = mentions(q);
    CHECK_MESSAGE(parse_set_statement(q, m).has_value() == parse_set_statement(q, 0xff).has_value(),
                  q);
    CHECK_MESSAGE(scan_session_state(q, m) == scan_session_state(q, 0xff), q);
    CHECK_MESSAGE(parse_deallocate(q, m).has_value() == parse_deallocate(q, 0xff).has_value(), q);
    CHECK_MESSAGE(parse_prepare(q, m).has_value() == parse_prepare(q, 0xff).has_value(), q);
    CHECK_MESSAGE(find_execute(q, m).has_value() == find_execute(q, 0xff).has_value(), q);
  }
}

TEST_CASE("quoting") {
  CHECK(quote_literal("it's") == "'it''s'");
  CHECK(quote_literal("a\\b") == "E'a\\\\b'");
  CHECK(quote_identifier("statement_timeout") == "statement_timeout");
  CHECK(quote_identifier("DateStyle") == "\"DateStyle\"");
  CHECK(quote_identifier("myapp.x") == "myapp.x");
  CHECK(quote_identifier("we\"ird") == "\"we\"\"ird\"");
}

TEST_CASE("database_needed_alone: the database DROP, RENAME and TEMPLATE need to themselves") {
  CHECK(database_needed_alone("DROP DATABASE shop") == "shop");
  CHECK(database_needed_alone("  drop database if exists Shop;") == "shop");
  CHECK(database_needed_alone("DROP DATABASE \"Shop\" WITH (FORCE)") == "Shop");
  CHECK(database_needed_alone("ALTER DATABASE shop RENAME TO store") == "shop");
  CHECK(database_needed_alone("CREATE DATABASE copy TEMPLATE shop") == "shop");
  CHECK(database_needed_alone("CREATE DATABASE copy WITH OWNER app TEMPLATE = shop") == "shop");
  CHECK_FALSE(database_needed_alone("CREATE DATABASE copy"));
  CHECK_FALSE(database_needed_alone("ALTER DATABASE shop SET work_mem = '1MB'"));
  CHECK_FALSE(database_needed_alone("DROP TABLE shop"));
  CHECK_FALSE(database_needed_alone("SELECT 'DROP DATABASE shop'"));
  CHECK_FALSE(database_needed_alone("DROP DATABASE"));
  CHECK_FALSE(database_needed_alone(""));
}

TEST_CASE("scan_session_state: SELECT INTO TEMP and set_config") {
  CHECK(scan_session_state("SELECT * INTO TEMP t FROM x") == kTemporaryObject);
  CHECK(scan_session_state("select 1 as a into temporary table t") == kTemporaryObject);
  CHECK(scan_session_state("INSERT INTO temp VALUES (1)") == kNone);
  CHECK(scan_session_state("INSERT INTO temp (a) SELECT 1") == kNone);
  CHECK(scan_session_state("SELECT set_config('statement_timeout', '5s', false)") == kUntrackedSet);
  CHECK(scan_session_state("SELECT set_config('work_mem', f(1, 2), $1)") == kUntrackedSet);
  CHECK(scan_session_state("SELECT set_config('statement_timeout', '5s', true)") == kNone);
  CHECK(scan_session_state("SELECT set_config('TimeZone', 'UTC', false)") == kNone);  // reported
  CHECK(scan_session_state("SELECT set_config('work_mem', '1MB'") == kUntrackedSet);  // unreadable
  CHECK(scan_session_state("SELECT 'set_config(1, 2, false)'") == kNone);
}

TEST_CASE("scan_session_release: what ends the state that pins a client") {
  CHECK(scan_session_release("UNLISTEN *") == kListen);
  CHECK(scan_session_release(" unlisten * ;") == kListen);
  CHECK(scan_session_release("UNLISTEN pgring_channel") == kNone);  // others may remain
  CHECK(scan_session_release("DISCARD TEMP") == kTemporaryObject);
  CHECK(scan_session_release("discard temporary") == kTemporaryObject);
  CHECK(scan_session_release("CLOSE ALL") == kHoldCursor);
  CHECK(scan_session_release("CLOSE c") == kNone);
  CHECK(scan_session_release("DEALLOCATE ALL") == kSqlPrepare);
  CHECK(scan_session_release("DEALLOCATE PREPARE ALL") == kSqlPrepare);
  CHECK(scan_session_release("SELECT pg_advisory_unlock_all()") == kAdvisoryLock);
  CHECK(scan_session_release("SELECT pg_advisory_unlock(1)") == kNone);
  CHECK(scan_session_release("DISCARD ALL") ==
        (kTemporaryObject | kHoldCursor | kAdvisoryLock | kListen | kSqlPrepare | kRoleChange |
         kUntrackedSet));
  CHECK(scan_session_release("UNLISTEN *; LISTEN x") == kNone);  // one statement only
  CHECK(scan_session_release("SELECT 1") == kNone);
  CHECK(scan_session_release("") == kNone);
}

TEST_CASE("random text never crashes the scanners") {
  std::mt19937 rng(7);
  const std::string alphabet = "SETsetRESET ;='\"$-/*\\\nabcTEMPHOLD(),.xE";
  for (int round = 0; round < 20000; ++round) {
    std::string q(rng() % 80, ' ');
    for (char& c : q) c = alphabet[rng() % alphabet.size()];
    (void)parse_set_statement(q);
    (void)scan_session_state(q);
    (void)database_needed_alone("DROP DATABASE " + q);
    (void)scan_session_release("DISCARD " + q);
    (void)parse_prepare("PREPARE " + q);
    (void)find_execute("EXPLAIN " + q);
  }
}

TEST_CASE("parse_listen: exactly one LISTEN or UNLISTEN") {
  using K = Listen::Kind;
  auto l = parse_listen("LISTEN Jobs");
  REQUIRE(l);
  CHECK(l->kind == K::listen);
  CHECK(l->channel == "jobs");
  l = parse_listen("  listen \"Jobs Done\" ; ");
  REQUIRE(l);
  CHECK(l->channel == "Jobs Done");
  l = parse_listen("UNLISTEN jobs;");
  REQUIRE(l);
  CHECK(l->kind == K::unlisten);
  l = parse_listen("unlisten *");
  REQUIRE(l);
  CHECK(l->kind == K::unlisten_all);
  CHECK(l->channel.empty());
  CHECK_FALSE(parse_listen("LISTEN *"));
  CHECK_FALSE(parse_listen("LISTEN a; LISTEN b"));
  CHECK_FALSE(parse_listen("LISTEN"));
  CHECK_FALSE(parse_listen("LISTEN 'a'"));
  CHECK_FALSE(parse_listen("/* c */ LISTEN a"));
  CHECK_FALSE(parse_listen("SELECT 1"));
  CHECK_FALSE(parse_listen("LISTENER a"));
  CHECK_FALSE(parse_listen("LISTEN " + std::string(64, 'a')));
  CHECK(parse_listen("LISTEN " + std::string(63, 'a')));
}

TEST_CASE("quote_channel: always quoted, quotes doubled") {
  CHECK(quote_channel("jobs") == "\"jobs\"");
  CHECK(quote_channel("select") == "\"select\"");
  CHECK(quote_channel("app.events") == "\"app.events\"");
  CHECK(quote_channel("a\"b") == "\"a\"\"b\"");
}

TEST_CASE("mentions: NOTIFY and pg_notify") {
  CHECK((mentions("NOTIFY jobs, 'x'") & kMentionsNotify) != 0);
  CHECK((mentions("SELECT pg_notify('jobs', 'x')") & kMentionsNotify) != 0);
  CHECK((mentions("SELECT notified FROM t") & kMentionsNotify) == 0);
}

TEST_CASE("parse_listen: the first word is the whole keyword") {
  // (first_word stops at the first non-letter byte; the token goes on through UTF-8 bytes)
  CHECK_FALSE(parse_listen("listen\xea\xea ch"));
  CHECK_FALSE(parse_listen("unlisten\xc3\xa9 ch"));
}

TEST_CASE("parse_prepare: one PREPARE name [(types)] AS statement") {
  auto p = parse_prepare("PREPARE Foo (int, text) AS SELECT $1, $2;");
  REQUIRE(p);
  CHECK(p->name == "foo");
  CHECK(p->rest == "(int, text) AS SELECT $1, $2");
  auto q = parse_prepare("prepare \"Mixed Case\"(int)as select $1 -- note\n");
  REQUIRE(q);
  CHECK(q->name == "Mixed Case");
  CHECK(q->offset == 8);
  CHECK(q->length == 12);
  CHECK(q->rest == "(int)as select $1");
  auto r = parse_prepare("  PREPARE s AS\n  INSERT INTO t VALUES ('a;b')");
  REQUIRE(r);
  CHECK(r->rest == "AS\n  INSERT INTO t VALUES ('a;b')");
  // Dollar-quote tags are identifiers: '_' and non-ASCII bytes too (a "--" inside is no comment).
  auto d = parse_prepare("PREPARE q AS SELECT $_$--$_$ || $\xc3\xa9$x$\xc3\xa9$ || 'A'");
  REQUIRE(d);
  CHECK(d->rest == "AS SELECT $_$--$_$ || $\xc3\xa9$x$\xc3\xa9$ || 'A'");
  CHECK_FALSE(parse_prepare("/* first */ PREPARE s AS SELECT 1"));  // only at the start
  // Reserved words are no names (PostgreSQL: a syntax error), unless quoted.
  CHECK_FALSE(parse_prepare("PREPARE select AS SELECT 1"));
  CHECK(parse_prepare("PREPARE \"select\" AS SELECT 1"));
  CHECK(parse_prepare("PREPARE name AS SELECT 1"));  // an unreserved keyword is a name
  CHECK_FALSE(parse_prepare("PREPARE TRANSACTION 'gid'"));
  CHECK_FALSE(parse_prepare("PREPARE s AS SELECT 1; SELECT 2"));  // two statements
  CHECK_FALSE(parse_prepare("PREPARE s (int AS SELECT 1"));       // unbalanced
  CHECK_FALSE(parse_prepare("PREPARE s AS"));
  CHECK_FALSE(parse_prepare("PREPARE s SELECT 1"));
  CHECK_FALSE(parse_prepare("SELECT 1; PREPARE s AS SELECT 1"));
  CHECK_FALSE(parse_prepare("PREPARE " + std::string(64, 'n') + " AS SELECT 1"));  // truncated
  CHECK(parse_prepare("PREPARE " + std::string(63, 'n') + " AS SELECT 1"));
}

TEST_CASE("find_execute: where the statement name stands") {
  auto at = [](std::string_view q) {
    auto e = find_execute(q);
    return e ? std::string(q.substr(e->offset, e->length)) + "=" + e->name : std::string("-");
  };
  CHECK(at("EXECUTE Foo(1, 'x');") == "Foo=foo");
  CHECK(at("execute \"Foo\"") == "\"Foo\"=Foo");
  CHECK(at("EXPLAIN EXECUTE s(1)") == "s=s");
  CHECK(at("explain analyze verbose execute s (1)") == "s=s");
  CHECK(at("EXPLAIN (ANALYZE, COSTS off, FORMAT json) EXECUTE s(1)") == "s=s");
  CHECK(at("CREATE TEMP TABLE t (a) AS EXECUTE s(2)") == "s=s");
  CHECK(at("EXPLAIN SELECT 1") == "-");
  CHECK(at("SELECT execute FROM t") == "-");
  CHECK(at("EXECUTE s(1); EXECUTE s(2)") == "-");
  CHECK(at("DO $$BEGIN EXECUTE 'x'; END$$") == "-");
  CHECK(at("CREATE FUNCTION f() RETURNS int AS $$ EXECUTE s $$ LANGUAGE sql") == "-");
  CHECK(at("EXECUTE") == "-");
  CHECK(at("EXECUTE 'x'") == "-");
  CHECK(at("EXECUTE all") == "-");
  CHECK(at("EXECUTE \"all\"") == "\"all\"=all");
}
