#include "proto/builders.hpp"

#include "proto/bytes.hpp"
#include "proto/frame.hpp"
#include "proto/messages.hpp"

namespace pgring::proto::build {

namespace {
bool auth(std::string& out, AuthCode code, std::string_view data = {}) {
  Writer w(out);
  w.begin(backend::kAuthentication).i32(static_cast<std::int32_t>(code)).bytes(data).end();
  return w.ok();
}

struct Origin {
  std::string_view file;
  std::string_view routine;
};

bool fields(std::string& out, char type, std::string_view severity, std::string_view sqlstate,
            std::string_view message, std::string_view hint, Origin origin = {}) {
  Writer w(out);
  w.begin(type);
  w.u8('S').cstring(severity).u8('V').cstring(severity).u8('C').cstring(sqlstate);
  w.u8('M').cstring(message);
  if (!hint.empty()) w.u8('H').cstring(hint);
  if (!origin.file.empty()) w.u8('F').cstring(origin.file);
  if (!origin.routine.empty()) w.u8('R').cstring(origin.routine);
  w.u8(0).end();
  return w.ok();
}
}  // namespace

bool error_response(std::string& out, std::string_view severity, std::string_view sqlstate,
                    std::string_view message, std::string_view hint) {
  return fields(out, backend::kErrorResponse, severity, sqlstate, message, hint);
}

bool error_response_from(std::string& out, std::string_view sqlstate, std::string_view message,
                         std::string_view file, std::string_view routine) {
  return fields(out, backend::kErrorResponse, "ERROR", sqlstate, message, {},
                Origin{file, routine});
}

bool renamed_fields(std::string& out, char type, std::string_view body, const QueryRename& rename) {
  const std::string from = "\"" + std::string(rename.server_name) + "\"";
  const std::string to = "\"" + std::string(rename.client_name) + "\"";
  const std::size_t start = out.size();
  auto fail = [&] {
    out.resize(start);  // nothing of a message that could not be read
    return false;
  };
  Writer w(out);
  w.begin(type);
  // Fields: a type byte and a String each, then a zero byte.
  while (!body.empty() && body[0] != '\0') {
    char field = body[0];
    std::size_t end = body.find('\0', 1);
    if (end == std::string_view::npos) return fail();
    std::string value(body.substr(1, end - 1));
    body.remove_prefix(end + 1);
    if (field == 'P') {
      // A 1-based character position in the query pgring sent.
      std::size_t at = 0;
      for (char c : value) {
        if (c < '0' || c > '9' || at > (1u << 30)) return fail();
        at = at * 10 + static_cast<std::size_t>(c - '0');
      }
      if (at <= rename.prefix_chars) continue;  // in pgring's own text: no place in the client's
      at -= rename.prefix_chars;
      if (at > rename.name_at + rename.server_chars)
        at = at - rename.server_chars + rename.client_chars;
      else if (at > rename.name_at)
        at = rename.name_at + 1;
      value = std::to_string(at);
    } else if (field == 'M' || field == 'D' || field == 'H' || field == 'W') {
      for (std::size_t i = value.find(from); i != std::string::npos; i = value.find(from, i)) {
        value.replace(i, from.size(), to);
        i += to.size();
      }
    }
    w.u8(static_cast<std::uint8_t>(field)).cstring(value);
  }
  w.u8(0).end();
  return w.ok() || fail();
}

bool message(std::string& out, char type, std::string_view body) {
  Writer w(out);
  w.begin(type).bytes(body).end();
  return w.ok();
}

bool notice_response(std::string& out, std::string_view sqlstate, std::string_view message) {
  return fields(out, backend::kNoticeResponse, "NOTICE", sqlstate, message, {});
}

bool authentication_ok(std::string& out) {
  return auth(out, AuthCode::ok);
}
bool authentication_cleartext(std::string& out) {
  return auth(out, AuthCode::cleartext_password);
}
bool authentication_md5(std::string& out, std::string_view salt4) {
  return salt4.size() == 4 && auth(out, AuthCode::md5_password, salt4);
}

bool authentication_sasl(std::string& out, std::string_view mechanism, std::string_view second) {
  Writer w(out);
  w.begin(backend::kAuthentication).i32(static_cast<std::int32_t>(AuthCode::sasl));
  w.cstring(mechanism);
  if (!second.empty()) w.cstring(second);
  w.u8(0).end();
  return w.ok();
}

bool authentication_sasl_continue(std::string& out, std::string_view data) {
  return auth(out, AuthCode::sasl_continue, data);
}
bool authentication_sasl_final(std::string& out, std::string_view data) {
  return auth(out, AuthCode::sasl_final, data);
}

bool parameter_status(std::string& out, std::string_view name, std::string_view value) {
  Writer w(out);
  w.begin(backend::kParameterStatus).cstring(name).cstring(value).end();
  return w.ok();
}

bool notification_response(std::string& out, std::int32_t pid, std::string_view channel,
                           std::string_view payload) {
  Writer w(out);
  w.begin(backend::kNotificationResponse).i32(pid).cstring(channel).cstring(payload).end();
  return w.ok();
}

bool backend_key_data(std::string& out, std::int32_t pid, std::string_view secret) {
  Writer w(out);
  w.begin(backend::kBackendKeyData).i32(pid).bytes(secret).end();
  return w.ok();
}

bool ready_for_query(std::string& out, char status) {
  Writer w(out);
  w.begin(backend::kReadyForQuery).u8(static_cast<std::uint8_t>(status)).end();
  return w.ok();
}

bool parse_complete(std::string& out) {
  Writer w(out);
  w.begin(backend::kParseComplete).end();
  return w.ok();
}

bool close_complete(std::string& out) {
  Writer w(out);
  w.begin(backend::kCloseComplete).end();
  return w.ok();
}

bool command_complete(std::string& out, std::string_view tag) {
  Writer w(out);
  w.begin(backend::kCommandComplete).cstring(tag).end();
  return w.ok();
}

bool row_description(std::string& out, const std::vector<std::string_view>& columns) {
  constexpr std::int32_t kTextOid = 25;
  Writer w(out);
  w.begin('T').i16(static_cast<std::int16_t>(columns.size()));
  for (auto name : columns) w.cstring(name).i32(0).i16(0).i32(kTextOid).i16(-1).i32(-1).i16(0);
  w.end();
  return w.ok();
}

bool data_row(std::string& out, const std::vector<std::string>& values) {
  Writer w(out);
  w.begin('D').i16(static_cast<std::int16_t>(values.size()));
  for (const auto& v : values) w.i32(static_cast<std::int32_t>(v.size())).bytes(v);
  w.end();
  return w.ok();
}

bool negotiate_protocol_version(std::string& out, std::uint32_t version,
                                const std::vector<std::string_view>& unsupported) {
  Writer w(out);
  w.begin(backend::kNegotiateProtocolVersion).i32(static_cast<std::int32_t>(version));
  w.i32(static_cast<std::int32_t>(unsupported.size()));
  for (auto name : unsupported) w.cstring(name);
  w.end();
  return w.ok();
}

bool startup_message(std::string& out, std::uint32_t version,
                     const std::vector<std::pair<std::string_view, std::string_view>>& params) {
  Writer w(out);
  w.begin_untyped().i32(static_cast<std::int32_t>(version));
  for (const auto& [name, value] : params) w.cstring(name).cstring(value);
  w.u8(0).end();
  return w.ok();
}

bool cancel_request(std::string& out, std::int32_t pid, std::string_view secret) {
  Writer w(out);
  w.begin_untyped().i32(static_cast<std::int32_t>(kCancelRequestCode)).i32(pid).bytes(secret).end();
  return w.ok();
}

bool ssl_request(std::string& out) {
  Writer w(out);
  w.begin_untyped().i32(static_cast<std::int32_t>(kSslRequestCode)).end();
  return w.ok();
}

bool password_message(std::string& out, std::string_view password) {
  Writer w(out);
  w.begin(frontend::kPassword).cstring(password).end();
  return w.ok();
}

bool sasl_initial_response(std::string& out, std::string_view mechanism, std::string_view data) {
  Writer w(out);
  w.begin(frontend::kPassword).cstring(mechanism).i32(static_cast<std::int32_t>(data.size()));
  w.bytes(data).end();
  return w.ok();
}

bool sasl_response(std::string& out, std::string_view data) {
  Writer w(out);
  w.begin(frontend::kPassword).bytes(data).end();
  return w.ok();
}

bool query(std::string& out, std::string_view sql) {
  Writer w(out);
  w.begin(frontend::kQuery).cstring(sql).end();
  return w.ok();
}

bool parse(std::string& out, std::string_view name, std::string_view tail) {
  Writer w(out);
  w.begin(frontend::kParse).cstring(name).bytes(tail).end();
  return w.ok();
}

bool run_unnamed(std::string& out, std::string_view sql,
                 const std::vector<std::string_view>& params) {
  Writer w(out);
  w.begin(frontend::kParse).cstring("").cstring(sql).i16(0).end();
  w.begin(frontend::kBind)
      .cstring("")
      .cstring("")
      .i16(0)
      .i16(static_cast<std::int16_t>(params.size()));
  for (std::string_view p : params) w.i32(static_cast<std::int32_t>(p.size())).bytes(p);
  w.i16(0).end();
  w.begin(frontend::kExecute).cstring("").i32(0).end();
  return w.ok();
}

bool query_with_params(std::string& out, std::string_view sql,
                       const std::vector<std::string_view>& params) {
  return run_unnamed(out, sql, params) && sync(out);
}

bool bind(std::string& out, std::string_view portal, std::string_view statement,
          std::string_view rest) {
  Writer w(out, std::size_t{1} << 31);
  w.begin(frontend::kBind).cstring(portal).cstring(statement).bytes(rest).end();
  return w.ok();
}

bool describe_statement(std::string& out, std::string_view name) {
  Writer w(out);
  w.begin(frontend::kDescribe).u8('S').cstring(name).end();
  return w.ok();
}

bool flush(std::string& out) {
  Writer w(out);
  w.begin(frontend::kFlush).end();
  return w.ok();
}

bool close_statement(std::string& out, std::string_view name) {
  Writer w(out);
  w.begin(frontend::kClose).u8('S').cstring(name).end();
  return w.ok();
}

bool sync(std::string& out) {
  Writer w(out);
  w.begin(frontend::kSync).end();
  return w.ok();
}

bool copy_fail(std::string& out, std::string_view reason) {
  Writer w(out);
  w.begin(frontend::kCopyFail).cstring(reason).end();
  return w.ok();
}

bool terminate(std::string& out) {
  Writer w(out);
  w.begin(frontend::kTerminate).end();
  return w.ok();
}

}  // namespace pgring::proto::build
