#pragma once
// Builders for every message pgring originates, in one place. Each appends one whole message
// to `out` and returns false when it could not be encoded (a String with a NUL, a size limit);
// the caller then drops the connection instead of sending a partial message.

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgring::proto::build {

// ---- to clients ----
[[nodiscard]] bool error_response(std::string& out, std::string_view severity,
                                  std::string_view sqlstate, std::string_view message,
                                  std::string_view hint = {});
// An ERROR as PostgreSQL raises it from `file`/`routine` (drivers recognise some errors by the
// routine field: asyncpg's InvalidCachedStatementError by RevalidateCachedQuery).
[[nodiscard]] bool error_response_from(std::string& out, std::string_view sqlstate,
                                       std::string_view message, std::string_view file,
                                       std::string_view routine);
// How the Query pgring sent differs from the client's: a prefix of pgring's own before the
// client's text, and the client's statement name (`name_at` characters into the client's text,
// `client_chars` long there) spelled as pgring's server-side name (`server_chars` long).
struct QueryRename {
  std::string_view client_name;  // the names as messages print them (between double quotes)
  std::string_view server_name;
  std::size_t prefix_chars = 0;
  std::size_t name_at = 0;
  std::size_t client_chars = 0;
  std::size_t server_chars = 0;
};
// An ErrorResponse or NoticeResponse (`type`, `body`) as the client's own query would have
// raised it: text fields name the client's statement instead of pgring's, and the position
// points into the client's text (a position inside pgring's prefix is left out).
[[nodiscard]] bool renamed_fields(std::string& out, char type, std::string_view body,
                                  const QueryRename& rename);
// A message another peer sent, passed on whole (PostgreSQL's own error to a client).
[[nodiscard]] bool message(std::string& out, char type, std::string_view body);
[[nodiscard]] bool notice_response(std::string& out, std::string_view sqlstate,
                                   std::string_view message);
[[nodiscard]] bool authentication_ok(std::string& out);
[[nodiscard]] bool authentication_cleartext(std::string& out);
[[nodiscard]] bool authentication_md5(std::string& out, std::string_view salt4);
// The mechanisms offered, in order of preference (an empty `second` is left out).
[[nodiscard]] bool authentication_sasl(std::string& out, std::string_view mechanism,
                                       std::string_view second = {});
[[nodiscard]] bool authentication_sasl_continue(std::string& out, std::string_view data);
[[nodiscard]] bool authentication_sasl_final(std::string& out, std::string_view data);
[[nodiscard]] bool parameter_status(std::string& out, std::string_view name,
                                    std::string_view value);
[[nodiscard]] bool backend_key_data(std::string& out, std::int32_t pid, std::string_view secret);
[[nodiscard]] bool notification_response(std::string& out, std::int32_t pid,
                                         std::string_view channel, std::string_view payload);
[[nodiscard]] bool ready_for_query(std::string& out, char status);
[[nodiscard]] bool parse_complete(std::string& out);
[[nodiscard]] bool close_complete(std::string& out);
[[nodiscard]] bool command_complete(std::string& out, std::string_view tag);
// Result sets pgring produces itself (the admin console): every column is text.
[[nodiscard]] bool row_description(std::string& out, const std::vector<std::string_view>& columns);
[[nodiscard]] bool data_row(std::string& out, const std::vector<std::string>& values);
[[nodiscard]] bool negotiate_protocol_version(std::string& out, std::uint32_t version,
                                              const std::vector<std::string_view>& unsupported);

// ---- to servers ----
[[nodiscard]] bool startup_message(
    std::string& out, std::uint32_t version,
    const std::vector<std::pair<std::string_view, std::string_view>>& params);
[[nodiscard]] bool cancel_request(std::string& out, std::int32_t pid, std::string_view secret);
[[nodiscard]] bool ssl_request(std::string& out);
[[nodiscard]] bool password_message(std::string& out, std::string_view password);
[[nodiscard]] bool sasl_initial_response(std::string& out, std::string_view mechanism,
                                         std::string_view data);
[[nodiscard]] bool sasl_response(std::string& out, std::string_view data);
[[nodiscard]] bool query(std::string& out, std::string_view sql);
[[nodiscard]] bool terminate(std::string& out);
[[nodiscard]] bool sync(std::string& out);
[[nodiscard]] bool copy_fail(std::string& out, std::string_view reason);
// Parse with pgring's statement name and the client's text and types (`tail`: the Parse body
// after the name). Close('S', name) / Describe('S', name) for pgring's names.
[[nodiscard]] bool parse(std::string& out, std::string_view name, std::string_view tail);
[[nodiscard]] bool close_statement(std::string& out, std::string_view name);
[[nodiscard]] bool describe_statement(std::string& out, std::string_view name);
[[nodiscard]] bool flush(std::string& out);
// Bind of pgring's statement name with the client's portal and the rest of its Bind (formats,
// parameters, result formats), which may be as large as a message can be.
[[nodiscard]] bool bind(std::string& out, std::string_view portal, std::string_view statement,
                        std::string_view rest);
// One query with text parameters through the unnamed statement and portal: Parse, Bind,
// Execute (no Sync: it runs inside the caller's batch).
[[nodiscard]] bool run_unnamed(std::string& out, std::string_view sql,
                               const std::vector<std::string_view>& params);
// One query with text parameters through the unnamed statement and portal, then Sync:
// Parse, Bind, Execute, Sync. Parameters travel apart from the SQL (no quoting to get wrong).
[[nodiscard]] bool query_with_params(std::string& out, std::string_view sql,
                                     const std::vector<std::string_view>& params);

}  // namespace pgring::proto::build
