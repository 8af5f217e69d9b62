#include "proto/messages.hpp"

#include <algorithm>
#include <iterator>

#include "proto/bytes.hpp"

namespace pgring::proto {

std::optional<Authentication> parse_authentication(std::string_view body) {
  Reader r(body);
  std::int32_t code = r.i32();
  if (!r.ok()) return std::nullopt;
  Authentication a{static_cast<AuthCode>(code), r.rest()};
  if (a.code == AuthCode::md5_password && a.data.size() != 4) return std::nullopt;
  if (a.code == AuthCode::ok && !a.data.empty()) return std::nullopt;
  return a;
}

bool sasl_offers(std::string_view mechanism_list, std::string_view mechanism) {
  Reader r(mechanism_list);
  for (;;) {
    std::string_view m = r.cstring();
    if (!r.ok() || m.empty()) return false;
    if (m == mechanism) return true;
  }
}

std::optional<ParameterStatus> parse_parameter_status(std::string_view body) {
  Reader r(body);
  ParameterStatus p{r.cstring(), r.cstring()};
  if (!r.ok() || !r.at_end() || p.name.empty()) return std::nullopt;
  return p;
}

std::optional<BackendKeyData> parse_backend_key_data(std::string_view body) {
  Reader r(body);
  BackendKeyData k;
  k.pid = r.i32();
  k.secret = r.rest();
  if (!r.ok() || k.secret.size() < 4 || k.secret.size() > 256) return std::nullopt;
  return k;
}

std::optional<Notification> parse_notification(std::string_view body) {
  Reader r(body);
  Notification n;
  n.pid = r.i32();
  n.channel = r.cstring();
  n.payload = r.cstring();
  if (!r.ok() || r.remaining() != 0) return std::nullopt;
  return n;
}

std::optional<char> parse_ready_for_query(std::string_view body) {
  if (body.size() != 1) return std::nullopt;
  char s = body[0];
  if (s != 'I' && s != 'T' && s != 'E') return std::nullopt;
  return s;
}

std::uint64_t command_rows(std::string_view tag) {
  std::size_t space = tag.find(' ');
  if (space == std::string_view::npos) return 0;
  std::string_view command = tag.substr(0, space);
  constexpr std::string_view kCounting[] = {"SELECT", "INSERT", "UPDATE", "DELETE",
                                            "MERGE",  "FETCH",  "MOVE",   "COPY"};
  if (std::find(std::begin(kCounting), std::end(kCounting), command) == std::end(kCounting))
    return 0;
  std::string_view count = tag.substr(tag.rfind(' ') + 1);
  std::uint64_t n = 0;
  if (count.empty() || count.size() > 19) return 0;
  for (char c : count) {
    if (c < '0' || c > '9') return 0;
    n = n * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return n;
}

bool command_changes_types(std::string_view tag) {
  std::size_t space = tag.find(' ');
  if (space == std::string_view::npos) return false;
  std::string_view verb = tag.substr(0, space), object = tag.substr(space + 1);
  // (CREATE cannot take a type away: a statement naming a type that did not exist never
  // prepared. Skipping CREATE ... IF NOT EXISTS, which some applications run per transaction,
  // keeps it from emptying the statement cache every time.)
  if (verb != "ALTER" && verb != "DROP") return false;
  return object == "TYPE" || object == "DOMAIN" || object == "EXTENSION" || object == "SCHEMA";
}

bool ErrorFields::is_fatal() const {
  std::string_view s = severity_text.empty() ? severity : severity_text;
  return s == "FATAL" || s == "PANIC";
}

bool refuses_setting(std::string_view sqlstate, std::string_view message) {
  // 42501 is also "permission denied for database" (no CONNECT privilege): a login failure.
  if (sqlstate == "42501") return message.starts_with("permission denied to set parameter");
  return sqlstate.starts_with("22") || sqlstate.starts_with("42") || sqlstate == "55P02";
}

std::optional<ErrorFields> parse_error_fields(std::string_view body) {
  Reader r(body);
  ErrorFields f;
  for (;;) {
    char code = static_cast<char>(r.u8());
    if (!r.ok()) return std::nullopt;
    if (code == 0) break;
    std::string_view value = r.cstring();
    if (!r.ok()) return std::nullopt;
    switch (code) {
      case 'S':
        f.severity = value;
        break;
      case 'V':
        f.severity_text = value;
        break;
      case 'C':
        f.sqlstate = value;
        break;
      case 'M':
        f.message = value;
        break;
      case 'D':
        f.detail = value;
        break;
      case 'H':
        f.hint = value;
        break;
      default:
        break;  // the docs say unknown codes must be ignored
    }
  }
  if (!r.at_end()) return std::nullopt;
  return f;
}

namespace {
// A body that is exactly one String.
std::optional<std::string_view> single_string(std::string_view body) {
  Reader r(body);
  std::string_view s = r.cstring();
  if (!r.ok() || !r.at_end()) return std::nullopt;
  return s;
}
}  // namespace

std::optional<std::string_view> parse_password_message(std::string_view body) {
  return single_string(body);
}

std::optional<SaslInitialResponse> parse_sasl_initial_response(std::string_view body) {
  Reader r(body);
  SaslInitialResponse s;
  s.mechanism = r.cstring();
  std::int32_t len = r.i32();
  if (!r.ok()) return std::nullopt;
  if (len == -1) {
    s.data = {};
  } else if (len < 0 || static_cast<std::size_t>(len) != r.remaining()) {
    return std::nullopt;
  } else {
    s.data = r.bytes(static_cast<std::size_t>(len));
  }
  if (!r.ok() || !r.at_end()) return std::nullopt;
  return s;
}

std::optional<std::string_view> parse_query(std::string_view body) {
  return single_string(body);
}

std::optional<ParseMessage> parse_parse(std::string_view body) {
  Reader r(body);
  ParseMessage p;
  p.name = r.cstring();
  if (!r.ok()) return std::nullopt;
  p.tail = r.rest();
  Reader text(p.tail);
  p.query = text.cstring();
  if (!r.ok() || !text.ok()) return std::nullopt;
  return p;
}

std::optional<BindMessage> parse_bind(std::string_view body) {
  Reader r(body);
  BindMessage b;
  b.portal = r.cstring();
  b.statement = r.cstring();
  b.rest = r.rest();
  if (!r.ok()) return std::nullopt;
  return b;
}

namespace {
std::optional<TargetMessage> target(std::string_view body) {
  Reader r(body);
  TargetMessage t;
  t.kind = static_cast<char>(r.u8());
  t.name = r.cstring();
  if (!r.ok()) return std::nullopt;
  return t;
}
}  // namespace

std::optional<TargetMessage> parse_describe(std::string_view body) {
  return target(body);
}
std::optional<TargetMessage> parse_close(std::string_view body) {
  return target(body);
}

std::optional<Row> parse_data_row(std::string_view body) {
  Reader r(body);
  std::int16_t count = r.i16();
  if (!r.ok() || count < 0) return std::nullopt;
  Row row;
  row.reserve(static_cast<std::size_t>(count));
  for (std::int16_t i = 0; i < count; ++i) {
    std::int32_t length = r.i32();
    if (length == -1) {
      row.emplace_back(std::nullopt);
      continue;
    }
    if (length < 0) return std::nullopt;
    std::string_view value = r.bytes(static_cast<std::size_t>(length));
    if (!r.ok()) return std::nullopt;
    row.emplace_back(value);
  }
  if (!r.ok() || !r.at_end()) return std::nullopt;
  return row;
}

}  // namespace pgring::proto
