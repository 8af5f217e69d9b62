#pragma once
// Typed views of the messages pgring inspects, named as in the PostgreSQL protocol docs
// ("Message Formats"). Each parse_* takes the body (after the 5-byte header) and returns a view
// into it, or nullopt when the body is malformed. Nothing is copied.

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace pgring::proto {

// Message type bytes. Direction matters: the same byte means different things each way.
namespace backend {
inline constexpr char kAuthentication = 'R';
inline constexpr char kBackendKeyData = 'K';
inline constexpr char kParameterStatus = 'S';
inline constexpr char kReadyForQuery = 'Z';
inline constexpr char kErrorResponse = 'E';
inline constexpr char kNoticeResponse = 'N';
inline constexpr char kNegotiateProtocolVersion = 'v';
inline constexpr char kCommandComplete = 'C';
inline constexpr char kCopyInResponse = 'G';
inline constexpr char kCopyOutResponse = 'H';
inline constexpr char kCopyBothResponse = 'W';
inline constexpr char kNotificationResponse = 'A';
inline constexpr char kEmptyQueryResponse = 'I';
inline constexpr char kParseComplete = '1';
inline constexpr char kBindComplete = '2';
inline constexpr char kCloseComplete = '3';
inline constexpr char kNoData = 'n';
inline constexpr char kRowDescription = 'T';
inline constexpr char kDataRow = 'D';
inline constexpr char kParameterDescription = 't';
inline constexpr char kPortalSuspended = 's';
}  // namespace backend

namespace frontend {
inline constexpr char kQuery = 'Q';
inline constexpr char kPassword = 'p';  // PasswordMessage, SASLInitialResponse, SASLResponse
inline constexpr char kTerminate = 'X';
inline constexpr char kSync = 'S';
inline constexpr char kFunctionCall = 'F';
inline constexpr char kParse = 'P';
inline constexpr char kBind = 'B';
inline constexpr char kExecute = 'E';
inline constexpr char kDescribe = 'D';
inline constexpr char kClose = 'C';
inline constexpr char kFlush = 'H';
inline constexpr char kCopyData = 'd';
inline constexpr char kCopyDone = 'c';
inline constexpr char kCopyFail = 'f';
// The extended-query protocol's messages (a batch of them ends with Sync).
[[nodiscard]] constexpr bool is_extended(char type) {
  return type == kParse || type == kBind || type == kDescribe || type == kExecute ||
         type == kClose || type == kSync || type == kFlush;
}
}  // namespace frontend

// Authentication request codes.
enum class AuthCode : std::int32_t {
  ok = 0,
  kerberos_v5 = 2,
  cleartext_password = 3,
  md5_password = 5,
  gss = 7,
  gss_continue = 8,
  sspi = 9,
  sasl = 10,
  sasl_continue = 11,
  sasl_final = 12,
};

struct Authentication {
  AuthCode code;
  std::string_view data;  // MD5: 4-byte salt; SASL: mechanism list; SASLContinue/Final: payload
};
[[nodiscard]] std::optional<Authentication> parse_authentication(std::string_view body);
// True when a SASL mechanism list (String* + empty String) offers `mechanism`.
[[nodiscard]] bool sasl_offers(std::string_view mechanism_list, std::string_view mechanism);

struct ParameterStatus {
  std::string_view name;
  std::string_view value;
};
[[nodiscard]] std::optional<ParameterStatus> parse_parameter_status(std::string_view body);

struct BackendKeyData {
  std::int32_t pid;
  std::string_view secret;  // 4 bytes in 3.0, up to 256 in 3.2
};
[[nodiscard]] std::optional<BackendKeyData> parse_backend_key_data(std::string_view body);

// The rows a CommandComplete tag counts: its last word when the command is one that counts
// (SELECT n, INSERT oid n, UPDATE n, DELETE n, MERGE n, FETCH n, MOVE n, COPY n); else 0.
[[nodiscard]] std::uint64_t command_rows(std::string_view tag);

// A CommandComplete tag of a command that can drop or rename a data type (ALTER or DROP of a
// TYPE, DOMAIN, EXTENSION or SCHEMA): a statement prepared before it may have parameter types
// that are gone.
[[nodiscard]] bool command_changes_types(std::string_view tag);

// NotificationResponse: Int32 pid of the notifying backend, String channel, String payload.
struct Notification {
  std::int32_t pid;
  std::string_view channel;
  std::string_view payload;
};
[[nodiscard]] std::optional<Notification> parse_notification(std::string_view body);

// ReadyForQuery transaction status: 'I' idle, 'T' in a transaction block, 'E' failed block.
[[nodiscard]] std::optional<char> parse_ready_for_query(std::string_view body);

// ErrorResponse / NoticeResponse: (Byte1 code, String value)* then a zero byte. Fields may be
// missing (a server need not send a SQLSTATE); unknown codes are skipped.
struct ErrorFields {
  std::string_view severity;       // 'S' (localized)
  std::string_view severity_text;  // 'V' (never localized, 9.6+)
  std::string_view sqlstate;       // 'C'
  std::string_view message;        // 'M'
  std::string_view detail;         // 'D'
  std::string_view hint;           // 'H'
  // FATAL and PANIC end the session.
  [[nodiscard]] bool is_fatal() const;
};
[[nodiscard]] std::optional<ErrorFields> parse_error_fields(std::string_view body);
// An error PostgreSQL raises for a setting it refuses (a startup parameter or a SET): an invalid
// value (class 22), an unknown or forbidden parameter (class 42; 42501 only as "permission
// denied to set parameter", PostgreSQL's English message), one that cannot be changed now
// (55P02).
[[nodiscard]] bool refuses_setting(std::string_view sqlstate, std::string_view message);

// Frontend PasswordMessage: String password.
[[nodiscard]] std::optional<std::string_view> parse_password_message(std::string_view body);

// Frontend SASLInitialResponse: String mechanism, Int32 len (-1 = none), Byte[len].
struct SaslInitialResponse {
  std::string_view mechanism;
  std::string_view data;
};
[[nodiscard]] std::optional<SaslInitialResponse> parse_sasl_initial_response(std::string_view body);

// Frontend Query: String query.
[[nodiscard]] std::optional<std::string_view> parse_query(std::string_view body);

// Frontend Parse: String name, String query, Int16 n, Int32[n] parameter types. `tail` is the
// body after the name (query and types): the statement cache's key and what it re-sends.
struct ParseMessage {
  std::string_view name;
  std::string_view query;
  std::string_view tail;
};
[[nodiscard]] std::optional<ParseMessage> parse_parse(std::string_view body);

// Frontend Bind: String portal, String statement, then formats, parameters and result formats
// (`rest`, passed on untouched).
struct BindMessage {
  std::string_view portal;
  std::string_view statement;
  std::string_view rest;
};
[[nodiscard]] std::optional<BindMessage> parse_bind(std::string_view body);

// Frontend Describe and Close: Byte1 'S' (statement) or 'P' (portal), String name.
struct TargetMessage {
  char kind = 0;
  std::string_view name;
  [[nodiscard]] bool statement() const { return kind == 'S'; }
};
[[nodiscard]] std::optional<TargetMessage> parse_describe(std::string_view body);
[[nodiscard]] std::optional<TargetMessage> parse_close(std::string_view body);

// DataRow: the column values (nullopt = SQL NULL), views into body. nullopt when malformed.
using Row = std::vector<std::optional<std::string_view>>;
[[nodiscard]] std::optional<Row> parse_data_row(std::string_view body);

}  // namespace pgring::proto
