// Typed views and builders: what we build, we parse back; malformed bodies are refused.

#include <doctest/doctest.h>

#include <string>

#include "proto/ascii.hpp"
#include "proto/builders.hpp"
#include "proto/bytes.hpp"
#include "proto/frame.hpp"
#include "proto/messages.hpp"

using namespace pgring::proto;

namespace {
// The body of the single message in `msg`.
std::string_view body_of(const std::string& msg) {
  Frame f = frame_message(msg, 1 << 20);
  REQUIRE(f.status == FrameStatus::complete);
  REQUIRE(f.size == msg.size());
  return std::string_view(msg).substr(5);
}
}  // namespace

TEST_CASE("Reader: sticky failure") {
  std::string bytes(
      "\x00\x01\x00\x00\x00\x02"
      "abc\0",
      10);
  Reader r(bytes);
  CHECK(r.i16() == 1);
  CHECK(r.i32() == 2);
  CHECK(r.cstring() == "abc");
  CHECK(r.at_end());
  CHECK(r.ok());
  CHECK(r.u8() == 0);
  CHECK_FALSE(r.ok());
  CHECK(r.cstring().empty());  // still failed
  Reader no_nul(std::string_view("abc"));
  CHECK(no_nul.cstring().empty());
  CHECK_FALSE(no_nul.ok());
}

TEST_CASE("Writer: sticky failure on NUL and size limit") {
  std::string out;
  Writer w(out);
  w.begin('Q').cstring(std::string_view("a\0b", 3)).end();
  CHECK_FALSE(w.ok());
  std::string small;
  Writer limited(small, 8);
  limited.begin('Q').cstring("0123456789").end();
  CHECK_FALSE(limited.ok());
}

TEST_CASE("ErrorResponse round trip, missing fields tolerated") {
  std::string msg;
  REQUIRE(build::error_response(msg, "FATAL", "28P01", "pgring: password authentication failed",
                                "check it"));
  auto e = parse_error_fields(body_of(msg));
  REQUIRE(e);
  CHECK(e->sqlstate == "28P01");
  CHECK(e->severity == "FATAL");
  CHECK(e->message == "pgring: password authentication failed");
  CHECK(e->hint == "check it");
  CHECK(e->is_fatal());
  // No SQLSTATE at all, and an unknown field code.
  std::string bare("SERROR\0Zzzz\0Mboom\0\0", 19);
  auto b = parse_error_fields(bare);
  REQUIRE(b);
  CHECK(b->sqlstate.empty());
  CHECK(b->message == "boom");
  CHECK_FALSE(b->is_fatal());
  CHECK_FALSE(parse_error_fields(std::string_view("SERROR\0Mno end", 14)));
  CHECK_FALSE(parse_error_fields(std::string_view("SERROR", 6)));
}

TEST_CASE("A server's error passed on whole; the errors that refuse a setting") {
  std::string original, passed;
  REQUIRE(build::error_response(original, "FATAL", "22023", "invalid value", "try another"));
  REQUIRE(build::message(passed, 'E', body_of(original)));
  CHECK(passed == original);
  // PostgreSQL's answers to startup parameters and SETs it will not take.
  CHECK(refuses_setting("22023", "invalid value for parameter \"DateStyle\": \"x\""));
  CHECK(refuses_setting("42704", "unrecognized configuration parameter \"x\""));
  CHECK(refuses_setting("42501", "permission denied to set parameter \"log_statement\""));
  CHECK(refuses_setting("55P02", "parameter \"port\" cannot be changed without restarting"));
  // Not a setting's fault: the server, the login, the database.
  CHECK_FALSE(refuses_setting("42501", "permission denied for database \"app\""));
  CHECK_FALSE(refuses_setting("28P01", "password authentication failed"));
  CHECK_FALSE(refuses_setting("3D000", "database \"x\" does not exist"));
  CHECK_FALSE(refuses_setting("53300", "sorry, too many clients already"));
  CHECK_FALSE(refuses_setting("57P03", "the database system is starting up"));
  CHECK_FALSE(refuses_setting("55000", ""));
  CHECK_FALSE(refuses_setting("", ""));
}

TEST_CASE("renamed_fields: an error as the client's own query would have raised it") {
  // The client sent `EXECUTE q(1, 'x')`; pgring sent `PREPARE pgring_7 AS ...;\nEXECUTE
  // pgring_7(1, 'x')`: 30 characters of its own first, the name 1 -> 8 characters long.
  build::QueryRename rename{.client_name = "q",
                            .server_name = "pgring_7",
                            .prefix_chars = 30,
                            .name_at = 8,
                            .client_chars = 1,
                            .server_chars = 8};
  auto position_after = [&](int sent) {
    std::string body;
    for (std::string field :
         {std::string("SERROR"), std::string("C42601"),
          std::string("Mwrong number of parameters for prepared statement \"pgring_7\""),
          "P" + std::to_string(sent), std::string("Fprepare.c")})
      body += field + '\0';
    body += '\0';
    std::string out;
    REQUIRE(build::renamed_fields(out, 'E', body, rename));
    auto fields = parse_error_fields(body_of(out));
    REQUIRE(fields);
    CHECK(fields->message == "wrong number of parameters for prepared statement \"q\"");
    std::size_t p = out.find(std::string("\0P", 2));
    if (p == std::string::npos) return -1;
    return std::stoi(out.substr(p + 2));
  };
  CHECK(position_after(5) == -1);        // inside pgring's prefix: left out
  CHECK(position_after(30 + 3) == 3);    // before the name: unchanged
  CHECK(position_after(30 + 9) == 9);    // the name's first character
  CHECK(position_after(30 + 12) == 9);   // inside the name: its start
  CHECK(position_after(30 + 17) == 10);  // the "(" after it
  std::string out = "keep";
  CHECK_FALSE(build::renamed_fields(out, 'E', std::string_view("Mno end", 7), rename));
  CHECK(out == "keep");
  CHECK_FALSE(build::renamed_fields(out, 'E', std::string("P12x\0\0", 6), rename));
  CHECK(out == "keep");
}

TEST_CASE("Authentication requests") {
  std::string ok, md5, sasl, cont;
  REQUIRE(build::authentication_ok(ok));
  REQUIRE(build::authentication_md5(md5, "salt"));
  REQUIRE(build::authentication_sasl(sasl, "SCRAM-SHA-256"));
  REQUIRE(build::authentication_sasl_continue(cont, "r=abc,s=xyz,i=4096"));
  CHECK(parse_authentication(body_of(ok))->code == AuthCode::ok);
  auto m = parse_authentication(body_of(md5));
  REQUIRE(m);
  CHECK(m->code == AuthCode::md5_password);
  CHECK(m->data == "salt");
  auto s = parse_authentication(body_of(sasl));
  REQUIRE(s);
  CHECK(s->code == AuthCode::sasl);
  CHECK(sasl_offers(s->data, "SCRAM-SHA-256"));
  CHECK_FALSE(sasl_offers(s->data, "SCRAM-SHA-256-PLUS"));
  CHECK(parse_authentication(body_of(cont))->data == "r=abc,s=xyz,i=4096");
  CHECK_FALSE(parse_authentication(std::string_view("\0\0", 2)));
  CHECK_FALSE(parse_authentication(std::string_view("\0\0\0\5ab", 6)));  // md5 salt too short
  CHECK_FALSE(sasl_offers(std::string_view("SCRAM", 5), "SCRAM"));       // no terminator
}

TEST_CASE("ParameterStatus, BackendKeyData, ReadyForQuery") {
  std::string ps, key, rfq;
  REQUIRE(build::parameter_status(ps, "TimeZone", "UTC"));
  REQUIRE(build::backend_key_data(key, 42, "abcd"));
  REQUIRE(build::ready_for_query(rfq, 'T'));
  auto p = parse_parameter_status(body_of(ps));
  REQUIRE(p);
  CHECK(p->name == "TimeZone");
  CHECK(p->value == "UTC");
  auto k = parse_backend_key_data(body_of(key));
  REQUIRE(k);
  CHECK(k->pid == 42);
  CHECK(k->secret == "abcd");
  CHECK(parse_ready_for_query(body_of(rfq)) == 'T');
  CHECK_FALSE(parse_ready_for_query("X"));
  CHECK_FALSE(parse_ready_for_query("II"));
  CHECK_FALSE(parse_parameter_status(std::string_view("a\0b", 3)));
  CHECK_FALSE(parse_backend_key_data(std::string_view("\0\0\0\1ab", 6)));
  CHECK_FALSE(parse_backend_key_data(std::string(4 + 257, 'k')));
}

TEST_CASE("Frontend password and SASL messages") {
  std::string pw, init, init_none, resp, q;
  REQUIRE(build::password_message(pw, "md5abc"));
  REQUIRE(build::sasl_initial_response(init, "SCRAM-SHA-256", "n,,n=,r=nonce"));
  REQUIRE(build::sasl_response(resp, "c=biws,r=x,p=y"));
  REQUIRE(build::query(q, "SELECT 1"));
  CHECK(parse_password_message(body_of(pw)) == "md5abc");
  auto i = parse_sasl_initial_response(body_of(init));
  REQUIRE(i);
  CHECK(i->mechanism == "SCRAM-SHA-256");
  CHECK(i->data == "n,,n=,r=nonce");
  CHECK(body_of(resp) == "c=biws,r=x,p=y");
  CHECK(parse_query(body_of(q)) == "SELECT 1");
  // Length field lying about the data that follows.
  std::string lie(
      "SCRAM-SHA-256\0\0\0\0\x10"
      "abc",
      21);
  CHECK_FALSE(parse_sasl_initial_response(lie));
  std::string negative("SCRAM-SHA-256\0\xff\xff\xff\xfe", 18);
  CHECK_FALSE(parse_sasl_initial_response(negative));
  std::string none("SCRAM-SHA-256\0\xff\xff\xff\xff", 18);
  CHECK(parse_sasl_initial_response(none));
}

TEST_CASE("NegotiateProtocolVersion lists unsupported options") {
  std::string out;
  REQUIRE(build::negotiate_protocol_version(out, kProtocol30, {"_pq_.foo", "_pq_.bar"}));
  Reader r(body_of(out));
  CHECK(static_cast<std::uint32_t>(r.i32()) == kProtocol30);
  CHECK(r.i32() == 2);
  CHECK(r.cstring() == "_pq_.foo");
  CHECK(r.cstring() == "_pq_.bar");
  CHECK(r.at_end());
}

TEST_CASE("DataRow: values, NULLs and lying lengths") {
  std::string out;
  REQUIRE(build::data_row(out, {"alice", "SCRAM-SHA-256$4096:c2FsdA==$a:b"}));
  auto row = parse_data_row(std::string_view(out).substr(5));
  REQUIRE(row);
  REQUIRE(row->size() == 2);
  CHECK((*row)[0] == "alice");
  CHECK((*row)[1] == "SCRAM-SHA-256$4096:c2FsdA==$a:b");

  // One NULL column: length -1 and no bytes.
  std::string null_row("\x00\x01\xff\xff\xff\xff", 6);
  auto n = parse_data_row(null_row);
  REQUIRE(n);
  REQUIRE(n->size() == 1);
  CHECK_FALSE((*n)[0].has_value());

  CHECK(parse_data_row(std::string_view("\x00\x00", 2))->empty());
  CHECK_FALSE(parse_data_row(""));
  CHECK_FALSE(
      parse_data_row(std::string_view("\x00\x01\x00\x00\x00\x05"
                                      "abc",
                                      9)));  // value runs past the end
  CHECK_FALSE(
      parse_data_row(std::string_view("\x00\x01\xff\xff\xff\xfe", 6)));  // -2 is not a length
  CHECK_FALSE(
      parse_data_row(std::string_view("\x00\x00"
                                      "x",
                                      3)));                      // trailing bytes
  CHECK_FALSE(parse_data_row(std::string_view("\xff\xff", 2)));  // negative count
}

TEST_CASE("query_with_params: Parse, Bind, Execute, Sync") {
  std::string out;
  REQUIRE(build::query_with_params(out, "SELECT $1", {"it's"}));
  Reader r(out);
  CHECK(r.u8() == 'P');
  CHECK(r.i32() == 4 + 1 + 10 + 2);
  CHECK(r.cstring().empty());
  CHECK(r.cstring() == "SELECT $1");
  CHECK(r.i16() == 0);
  CHECK(r.u8() == 'B');
  CHECK(r.i32() == 4 + 1 + 1 + 2 + 2 + 4 + 4 + 2);
  CHECK(r.cstring().empty());
  CHECK(r.cstring().empty());
  CHECK(r.i16() == 0);  // parameter formats: all text
  CHECK(r.i16() == 1);
  CHECK(r.i32() == 4);
  CHECK(r.bytes(4) == "it's");  // the value travels as is: no quoting
  CHECK(r.i16() == 0);          // result formats: all text
  CHECK(r.u8() == 'E');
  CHECK(r.i32() == 4 + 1 + 4);
  CHECK(r.cstring().empty());
  CHECK(r.i32() == 0);
  CHECK(r.u8() == 'S');
  CHECK(r.i32() == 4);
  CHECK(r.at_end());
  CHECK(r.ok());
}

TEST_CASE("frontend Parse, Bind, Describe, Close: views, and the builders that make them") {
  std::string out;
  REQUIRE(build::parse(out, "pgring_7", std::string_view("SELECT $1\0\0\x01\0\0\0\x17", 16)));
  auto parse = parse_parse(std::string_view(out).substr(5));
  REQUIRE(parse);
  CHECK(parse->name == "pgring_7");
  CHECK(parse->query == "SELECT $1");
  CHECK(parse->tail.size() == 16);  // query, Int16 1, Int32 23 (int4)
  CHECK_FALSE(parse_parse(std::string_view("name\0SELECT", 11)));  // the query has no NUL
  CHECK_FALSE(parse_parse("name"));

  out.clear();
  const std::string_view params("\0\0\0\x01\0\0\0\x01x\0\0", 11);
  REQUIRE(build::bind(out, "portal", "pgring_7", params));
  auto bind = parse_bind(std::string_view(out).substr(5));
  REQUIRE(bind);
  CHECK(bind->portal == "portal");
  CHECK(bind->statement == "pgring_7");
  CHECK(bind->rest == params);  // formats, parameters, result formats: untouched
  CHECK_FALSE(parse_bind(std::string_view("portal\0stmt", 11)));

  out.clear();
  REQUIRE(build::describe_statement(out, "pgring_7"));
  REQUIRE(build::flush(out));
  CHECK(out[0] == 'D');
  auto describe = parse_describe(std::string_view(out).substr(5, out.size() - 5 - 5));
  REQUIRE(describe);
  CHECK(describe->statement());
  CHECK(describe->name == "pgring_7");
  CHECK(out.substr(out.size() - 5) == std::string_view("H\0\0\0\x04", 5));
  auto portal = parse_close(std::string_view("P\0", 2));
  REQUIRE(portal);
  CHECK_FALSE(portal->statement());
  CHECK(portal->name.empty());
  CHECK_FALSE(parse_describe(""));
  CHECK_FALSE(parse_close("Sname"));  // no NUL
}

TEST_CASE("run_unnamed: Parse, Bind, Execute without Sync; error_response_from names its origin") {
  std::string batch;
  REQUIRE(build::run_unnamed(batch, "DO $$BEGIN END$$", {}));
  std::string with_sync;
  REQUIRE(build::query_with_params(with_sync, "DO $$BEGIN END$$", {}));
  CHECK(with_sync == batch + std::string("S\0\0\0\x04", 5));

  std::string error;
  REQUIRE(build::error_response_from(error, "0A000", "cached plan must not change result type",
                                     "plancache.c", "RevalidateCachedQuery"));
  auto fields = parse_error_fields(std::string_view(error).substr(5));
  REQUIRE(fields);
  CHECK(fields->sqlstate == "0A000");
  CHECK(fields->severity == "ERROR");
  CHECK(fields->message == "cached plan must not change result type");
  CHECK(error.find(std::string_view("RRevalidateCachedQuery\0", 23)) != std::string::npos);
  CHECK(error.find(std::string_view("Fplancache.c\0", 13)) != std::string::npos);
}

TEST_CASE("ascii case folding: locale-free, both sides folded") {
  CHECK(ascii_lower('Q') == 'q');
  CHECK(ascii_lower('\xc9') == '\xc9');  // not ASCII: unchanged
  CHECK(iequals("TimeZone", "timezone"));
  CHECK(iequals("timezone", "TIMEZONE"));
  CHECK_FALSE(iequals("timezone", "timezon"));
  CHECK_FALSE(iequals("a", "b"));
  CHECK(to_lower("DateStyle") == "datestyle");
}

TEST_CASE("command_rows: the count a CommandComplete tag carries, 0 for a command without") {
  CHECK(command_rows("SELECT 3") == 3);
  CHECK(command_rows("INSERT 0 12") == 12);
  CHECK(command_rows("UPDATE 0") == 0);
  CHECK(command_rows("DELETE 7") == 7);
  CHECK(command_rows("MERGE 2") == 2);
  CHECK(command_rows("COPY 100000") == 100000);
  CHECK(command_rows("FETCH 5") == 5);
  CHECK(command_rows("CREATE TABLE") == 0);
  CHECK(command_rows("SET") == 0);
  CHECK(command_rows("") == 0);
  CHECK(command_rows("SELECT ") == 0);
  CHECK(command_rows("SELECT x1") == 0);
  CHECK(command_rows("SELECT 99999999999999999999") == 0);  // too long to be a count
}

TEST_CASE("command_changes_types: the tags after which prepared parameter types may be gone") {
  for (const char* tag : {"DROP TYPE", "ALTER TYPE", "DROP DOMAIN", "ALTER DOMAIN",
                          "DROP EXTENSION", "ALTER EXTENSION", "DROP SCHEMA", "ALTER SCHEMA"})
    CHECK(command_changes_types(tag));
  // CREATE takes no type away (and CREATE ... IF NOT EXISTS may run in every transaction).
  for (const char* tag :
       {"SELECT 1", "DROP TABLE", "CREATE TABLE", "ALTER TABLE", "DROP", "TYPE", "DROP TYPES",
        "INSERT 0 1", "", "CREATE TYPE", "CREATE SCHEMA", "CREATE EXTENSION", "CREATE DOMAIN"})
    CHECK_FALSE(command_changes_types(tag));
}

TEST_CASE("NotificationResponse: parsed, and built back with another pid") {
  std::string out;
  REQUIRE(build::notification_response(out, 4242, "jobs", "id=7"));
  CHECK(out == std::string("A\0\0\0\x12\0\0\x10\x92jobs\0id=7\0", 19));
  auto n = parse_notification(std::string_view(out).substr(5));
  REQUIRE(n);
  CHECK(n->pid == 4242);
  CHECK(n->channel == "jobs");
  CHECK(n->payload == "id=7");
  CHECK_FALSE(parse_notification(std::string_view("\0\0\0\1jobs", 8)));     // no payload
  CHECK_FALSE(parse_notification(std::string_view("\0\0\0\1a\0b\0x", 9)));  // trailing
  CHECK_FALSE(parse_notification(std::string_view("\0\0\1", 3)));           // short pid
}
