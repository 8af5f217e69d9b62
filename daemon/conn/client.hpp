#pragma once
// A client connection: what an application opened to pgring.
//
//   startup ──SSLRequest: 'S' and a TLS handshake (or 'N'), GSSENCRequest: 'N'──> startup
//   startup ──first byte 0x16: direct TLS (PostgreSQL 17, ALPN "postgresql")──> startup
//   startup ──StartupMessage──> auth ──password ok──> idle | waiting
//   idle ──a message arrives──> waiting ──server linked──> active
//   active ──transaction over (transaction/statement mode, not pinned)──> idle
//   active ──server lost──> closing
//   any ──close(reason)──> closing ──sends drained, ops done──> freed at end of loop turn
//
// Session mode links a server right after login and keeps it for life. Transaction and
// statement mode link one when the client sends something and release it when the server is
// idle again (ReadyForQuery 'I', every request answered); a client whose session holds state
// that cannot move (temporary tables, LISTEN, ...) is pinned to its server instead.
//
// The state is also the list the client is on: the reactor's login list (startup, auth), its
// pool's idle, waiting or active list, or the reactor's closing list.

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "config/config.hpp"
#include "daemon/cache/statements.hpp"
#include "daemon/conn/request_queue.hpp"
#include "daemon/conn/startup.hpp"
#include "daemon/conn/verdict.hpp"
#include "daemon/core/close_reason.hpp"
#include "daemon/core/list.hpp"
#include "daemon/core/stream.hpp"
#include "proto/frame.hpp"
#include "proto/messages.hpp"
#include "proto/scram.hpp"
#include "proto/sql.hpp"

namespace pgring {

class Reactor;
class Pool;
class Server;
struct Budget;
using Clock = std::chrono::steady_clock;

enum class ClientState { startup, auth, idle, waiting, active, closing };
[[nodiscard]] std::string_view to_string(ClientState state);

// Query and Parse messages up to this size are read whole to look for session state; larger
// ones (bulk INSERTs) stream through unread.
inline constexpr std::uint32_t kMaxInspectedQuery = 64u << 10;
// The admin console's database name.
inline constexpr std::string_view kAdminDatabase = "pgring";
// The same console with PgBouncer's SHOW columns, for its exporters and dashboards (unless a
// database of that name is configured).
inline constexpr std::string_view kPgBouncerConsole = "pgbouncer";

class Client {
 public:
  Client(Reactor& reactor, std::uint64_t id, int fd, std::string peer);

  // New bytes are in stream_.
  void on_input();
  // The pool linked a server: restore this client's session on it, then forward.
  void on_linked(Server& server);
  // The restore query (if any) finished on the linked server.
  void on_restored();
  // Whether the pool knows what PostgreSQL makes of every startup parameter of this client (see
  // Pool::learned); if so, params_ now holds the values PostgreSQL would report.
  [[nodiscard]] bool startup_known();
  // Welcome: ParameterStatus for `base` overlaid with this client's own, BackendKeyData, 'Z'.
  void send_welcome(const std::vector<std::pair<std::string, std::string>>& base);
  // The linked server reported a parameter change, or committed a replayable SET.
  void on_server_parameter(std::string_view name, std::string_view value);
  // The client's startup value of a parameter (as PostgreSQL reported it, once a server of the
  // pool applied it), or null.
  [[nodiscard]] const std::string* startup_value(std::string_view name) const;
  void apply_setting(const proto::sql::SetStatement& set);
  // Fingerprint of params_ + settings_ (Server::session_fingerprint_ is compared with it).
  [[nodiscard]] std::uint64_t session_fingerprint() const;
  // A Describe of `statement` this client sent was answered with `shape`: the result type it
  // was told, kept with each of its names for that statement that had none yet.
  void on_described(const PreparedStatement& statement, Shape shape);
  // Whether this client was told the result type of `statement` (under any of its names).
  [[nodiscard]] bool has_described(const PreparedStatement& statement) const;
  // The shape check of `statement` answered with `shape` (0: too large to compare).
  void on_shape_checked(const PreparedStatement& statement, Shape shape);
  // The check itself failed with an error (already forwarded to this client).
  void on_shape_check_failed();
  // auth.query answered: the user's secret (nullopt: no such user), or an error.
  void on_lookup_done(std::optional<std::string> secret, const std::string& error);
  // The server never prepared `statement` under the client's `name` (its Parse failed).
  void forget_statement(std::string_view name, const PreparedStatement& statement);
  // A DEALLOCATE pgring ran on the server failed: the client has the name again.
  void restore_statement(std::string_view name, const PreparedStatement& statement);
  // The client's SQL PREPARE of `name` succeeded.
  void statement_prepared(std::string_view name, const PreparedStatement& statement);
  // A CancelRequest for this client arrived while it waited for a server.
  void cancel_while_waiting();
  // Session state seen in this client's traffic: pin it to its server, or refuse it.
  void note_session_state(std::uint8_t flags);
  [[nodiscard]] std::uint64_t id() const { return id_; }
  [[nodiscard]] ClientState state() const { return state_; }

  // Auth exchange state, only while authenticating (idle clients stay small).
  struct AuthState {
    enum class Step { md5, scram_first, scram_final } step;
    std::array<char, 4> md5_salt{};
    proto::scram::ClientFirst scram_first;
    std::string server_first;
    bool offered_plus = false;  // SCRAM-SHA-256-PLUS was offered (TLS): a "y" flag is a downgrade
    std::optional<proto::scram::Secret> mock;  // the exchange of a user pgring has no secret for
    std::string secret;                        // the configured secret the exchange checks against
  };

  // What only a client that is logging in needs (null once logged in: idle clients stay small).
  struct Login {
    config::Peer peer;  // address and transport, for the auth rules
    config::AuthMethod auth_method = config::AuthMethod::trust;  // chosen by the auth rules
    bool direct_tls = false;  // TLS began without an SSLRequest: ALPN must say "postgresql"
    bool negotiated = false;  // an SSLRequest or GSSENCRequest came first: no direct TLS now
    // Set when the client may not stay (max_client_conn): it is told so after its startup
    // packet, because libpq does not show an error sent in reply to its SSLRequest.
    bool refused_too_many = false;
    // max_concurrent_logins: waiting for a turn (accepted, nothing read yet), or under way.
    enum class Turn : std::uint8_t { none, queued, running } turn = Turn::none;
    // auth.query: queued in this pool for a server, or running on this server.
    Pool* lookup_pool = nullptr;
    Server* lookup_server = nullptr;
    std::unique_ptr<AuthState> auth;  // the password exchange, once it began
  };
  std::unique_ptr<Login> login_ = std::make_unique<Login>();

  ListNode<Client> node_;
  Reactor& reactor_;
  std::uint64_t id_;
  ClientState state_ = ClientState::startup;
  Clock::time_point state_since_;
  Clock::time_point last_activity_;  // last bytes received (client_idle timeout)
  Clock::time_point connected_;      // accepted (the client_close log line's duration)
  Stream stream_;
  std::string peer_;  // "ip:port" for logs
  int ops_in_flight_ = 0;
  bool shut_down_ = false;  // socket shut down; waiting for in-flight operations to finish
  bool freed_ = false;      // queued for deletion at the end of the loop turn
  // Closed with Reason::handed_over: its socket goes to the new process (daemon/ops/upgrade.hpp)
  // once its last operation completed, instead of being shut down.
  bool handover_ = false;
  // Whether it can go on in another process now: logged in to a pool in transaction or
  // statement mode, idle, nothing pinned, no TLS (a TLS session cannot move), nothing half-read.
  [[nodiscard]] bool can_hand_over() const;
  // Transaction and statement mode rename named statements through the statement cache.
  [[nodiscard]] bool uses_statement_cache() const;

  Pool* pool_ = nullptr;
  Server* server_ = nullptr;

  // The startup packet and what it says, shared with the reactor's other clients that sent the
  // same (null until it arrived).
  std::shared_ptr<const Startup> startup_;
  [[nodiscard]] const proto::StartupMessage& startup_message() const {
    static const proto::StartupMessage none;
    return startup_ ? startup_->message : none;
  }
  [[nodiscard]] const NameValues& startup_settings() const {
    static const NameValues none;
    return startup_ ? startup_->settings : none;
  }
  const config::User* user_ = nullptr;  // null with trust auth and no users configured

  // The BackendKeyData pgring gave this client: its own key, with the server's pid in session
  // mode (the secret is always pgring's; its first byte names the reactor).
  std::int32_t cancel_pid_ = 0;
  // The cancel key's secret: 4 bytes in protocol 3.0, kLongCancelSecret in 3.2 (PostgreSQL 18's
  // length; the protocol allows up to 256, "leaving room" for layers in front of pgring).
  static constexpr std::uint8_t kLongCancelSecret = 32;
  std::array<char, kLongCancelSecret> cancel_secret_{};
  std::uint8_t cancel_secret_size_ = 4;

  // Streaming: bytes of the current message still to forward as they arrive.
  std::size_t forward_remaining_ = 0;

  // The session as this client believes it to be; transaction mode restores it on each server.
  // params_: what servers reported (ParameterStatus) while linked to this client, or what the
  //          client asked for at startup; unset names mean the pool's defaults.
  // settings_: other settings (not reported by the server) from a replayable SET, as SQL text.
  std::vector<std::pair<std::string, std::string>> params_;
  std::vector<std::pair<std::string, std::string>> settings_;
  // session_fingerprint(params_, settings_), kept current by every change to them (they change
  // on a SET or a report; the fingerprint is compared twice per transaction).
  std::uint64_t fingerprint_ = 0;
  void session_changed();
  bool welcomed_ = false;
  // PostgreSQL's own FATAL error went to this client (a refused startup parameter): closing it
  // adds no error of pgring's.
  bool error_forwarded_ = false;
  // Session state was created (see proto::sql::SessionState): keep this server until the end.
  std::uint8_t pinned_state_ = 0;
  // Admin console clients (database "pgring") never join a pool.
  enum class AdminRole : std::uint8_t { none, stats, admin };
  AdminRole admin_ = AdminRole::none;
  bool admin_error_sent_ = false;

  // Statement cache: this client's statement names -> the reactor's registry entries, with the
  // result shape this client was told when it described one (0: never described). The shape is
  // the client's own: another client may have described the same text before or after DDL.
  struct NamedStatement {
    const PreparedStatement* entry = nullptr;
    Shape shape = 0;
    // Its SQL PREPARE is still in flight on the linked server: it may yet fail (and the name
    // be forgotten), so a pipelined EXECUTE relies on it rather than preparing on its own.
    bool pending = false;
    // A Parse of `EXECUTE name`, rewritten to the statement `name` had then: which PostgreSQL
    // looks up at each run, so pgring checks at each Bind that the client still has it.
    struct Runs {
      std::string name;
      const PreparedStatement* statement = nullptr;
    };
    std::unique_ptr<Runs> runs;
  };
  struct Statements {
    std::unordered_map<std::string, NamedStatement> named;
    // The unnamed statement survives Sync in PostgreSQL but not a change of server: pgring
    // keeps its Parse (after the name) and prepares it again where the next Bind/Describe lands.
    std::string unnamed_parse_tail;
    // It is a rewritten `EXECUTE name` (its text names a pgring_<id> of this process).
    bool unnamed_runs = false;
    // A statement of it is (or was) a LISTEN/UNLISTEN: a batch that starts with a Bind or
    // Describe may be one pgring answers (take_extended_listen).
    bool has_listen = false;
  };
  std::unique_ptr<Statements> statements_;  // null while the client has none (trim())
  Statements& statements() {
    if (!statements_) statements_ = std::make_unique<Statements>();
    return *statements_;
  }
  [[nodiscard]] std::size_t statement_count() const {
    return statements_ ? statements_->named.size() : 0;
  }
  // Numbers this client's unnamed statements (Server::unnamed_seq_): never restarts, so a
  // server holding an older one is never taken for current.
  std::uint64_t unnamed_seq_ = 0;
  // A unit of the database's and of the client's own user's client budgets, held until close
  // (the pool's user is the database's forced user, when it has one, not the client's).
  Budget* db_counted_ = nullptr;
  Budget* user_counted_ = nullptr;
  std::uint64_t batch_seq_ = 0;        // numbers the extended-protocol batches (Batch::inflight)
  std::size_t discard_remaining_ = 0;  // rest of a dropped message still arriving

  // The extended-protocol batch in progress: only while linked (an idle client keeps none).
  struct Batch {
    bool skip_until_sync = false;  // after an error pgring raised in the extended protocol
    // Forwarding waits while pgring checks, on a server that never had it, that a statement
    // this client described still has the same result shape (DDL may have changed it).
    bool shape_check_pending = false;
    Shape shape_check_expected = 0;  // the shape the held message's statement was described with
    // The batch as sent to the server, kept until its ReadyForQuery so a Bind that fails
    // because a cached plan changed can be replayed (Server::retry_after_error).
    bool copy_ok = true;
    // The query family of the batch (its last Parse, or the statement its last Bind names):
    // what its Sync's ReadyForQuery is counted for (QueryStats).
    std::uint64_t fingerprint = 0;
    bool inflight_ok = false;
    std::uint64_t inflight_seq = 0;
    std::string copy;
    std::string inflight;
    void reset();  // for the reactor's spares
  };
  std::unique_ptr<Batch> batch_;  // taken from the reactor's spares when a batch begins
  Batch& batch();
  [[nodiscard]] bool shape_check_pending() const { return batch_ && batch_->shape_check_pending; }
  // The client went idle: what only a linked client needs is given back.
  void trim();

  // The SET of the last Parse, for the Execute that runs it.
  std::unique_ptr<proto::sql::SetStatement> last_parse_set_;

  // listen: shared (Pool::Listening): what only a client that sent a LISTEN needs.
  struct Listening {
    std::vector<std::string> channels;  // its subscriptions
    // Its LISTEN of `waiting_channel` waits for the listening connection's answer number
    // `wait_for` (0: for that connection to log in first), since `parked_since`; its reading is
    // paused meanwhile. `error` (SQLSTATE, message): the LISTEN failed.
    bool parked = false;
    std::uint64_t wait_for = 0;
    std::string waiting_channel;
    Clock::time_point parked_since{};
    std::pair<std::string, std::string> error;
    // Notifications that came while it was in a transaction (or parked): sent once it is idle.
    std::string held;
    // The backend pid of the server where it last sent a NOTIFY (or pg_notify), and when: its
    // own notifications come from there, soon after.
    std::int32_t notified_from = 0;
    Clock::time_point notified_at{};
    void noted_notify(std::int32_t pid, Clock::time_point now) {
      notified_from = pid;
      notified_at = now;
    }
    // Whether a notification from `pid` is most likely its own: from that server within
    // kOwnNotifyWindow (another client's NOTIFY on the same server that soon is taken for its
    // own: docs/transaction-pooling.md).
    static constexpr auto kOwnNotifyWindow = std::chrono::seconds(1);
    [[nodiscard]] bool own_notification(std::int32_t pid, Clock::time_point now) const {
      return pid == notified_from && notified_from != 0 && now - notified_at < kOwnNotifyWindow;
    }
  };
  std::unique_ptr<Listening> listening_;
  // More unsent notifications than this: the client does not read them, and is closed.
  static constexpr std::size_t kMaxHeldNotifications = 8u << 20;
  // An idle client's next message is `frame`: a lone LISTEN/UNLISTEN is taken over (taken), or
  // its batch is not all in yet (wait).
  enum class Takeover { no, wait, taken };
  Takeover take_listen(const proto::Frame& frame);
  // The same through the extended protocol: a batch that only parses, describes, binds or runs
  // a LISTEN/UNLISTEN statement (proto/listen_batch.hpp) is answered here.
  Takeover take_extended_listen();
  // What the client's statement `name` runs, when it is a LISTEN/UNLISTEN.
  [[nodiscard]] std::optional<proto::sql::Listen> listen_statement(std::string_view name) const;
  // A Bind of a LISTEN/UNLISTEN statement goes to a server (a batch pgring did not take over):
  // a LISTEN pins the client there; an UNLISTEN ends its subscriptions here too.
  void bind_runs_listen(std::string_view query);
  // Whether `frame` (an idle client's next message) may begin a lone LISTEN/UNLISTEN: a whole,
  // small Query or unnamed Parse whose text starts with "li", "un" (any case) or a space, a named
  // Parse, or a Bind/Describe of a client that has a LISTEN statement. Most are not, and cost this
  // only.
  [[nodiscard]] bool might_be_listen(const proto::Frame& frame) const {
    if (frame.status != proto::FrameStatus::complete || frame.size < 6 || frame.size > 4096)
      return false;
    // Whether the text at `front[at]` may begin a LISTEN/UNLISTEN: "li" or "un" in any case, or
    // whitespace. (One load for most texts; bytes split across buffers are read out of line.)
    static constexpr auto kListenStart = [] {
      std::array<bool, 256> starts{};
      for (unsigned char c : std::string_view("lLuU \t\n\r")) starts[c] = true;
      return starts;
    }();
    auto listen_like = [](std::string_view front, std::size_t at) {
      if (front.size() < at + 2) return true;
      char c = front[at];
      if (!kListenStart[static_cast<unsigned char>(c)]) return false;
      char second = static_cast<char>(front[at + 1] | 0x20);
      char lower = static_cast<char>(c | 0x20);
      return (lower == 'l' && second == 'i') || (lower == 'u' && second == 'n') || c == ' ' ||
             c == '\t' || c == '\n' || c == '\r';
    };
    switch (frame.type) {
      case proto::frontend::kQuery:
        return listen_like(stream_.front(), 5);
      case proto::frontend::kParse: {
        // (A named one is read whole: drivers parse a name once, then only bind it.)
        std::string_view front = stream_.front();
        return front.size() < 7 || front[5] != '\0' || listen_like(front, 6);
      }
      case proto::frontend::kBind:
      case proto::frontend::kDescribe:
        return statements_ && statements_->has_listen;
      default:
        return false;
    }
  }
  // The LISTEN/UNLISTEN queries at the front of an idle client's input, taken over; true when
  // another request follows that needs a server.
  bool take_listens();
  // Its LISTEN/UNLISTEN is answered: CommandComplete `tag`, or an ErrorResponse (`sqlstate`
  // not empty).
  void answer_listen(std::string_view tag, std::string_view sqlstate = {},
                     std::string_view message = {});
  // A notification for one of its channels.
  void notify(std::int32_t pid, std::string_view channel, std::string_view payload);
  // Idle again: the notifications held meanwhile go out.
  void flush_notifications();

 private:
  friend class Reactor;
  void handle_startup();
  // Answering an SSLRequest ('S' already queued) or a direct TLS ClientHello.
  void begin_tls(bool direct);
  // The login's method came from `rule`; `method` needs a password the client must prove.
  void start_password_auth(config::AuthMethod method);
  void handle_auth();
  void start_auth();
  void auth_ok();
  // The request path: reads the linked client's messages, lets on_request decide each one and
  // carries the verdict out (forward to the server, drop, wait for more).
  void forward_to_server();
  // `cache`: uses_statement_cache(), judged once per read loop.
  Verdict on_request(const proto::Frame& frame, Server& server, bool cache);
  void hold_while_waiting();
  void take_startup_settings();
  void admin_login();
  void handle_admin();
  // The database asked for is the admin console ("pgring", or "pgbouncer" when no database of
  // that name is configured).
  [[nodiscard]] bool admin_database(const config::Config& cfg) const {
    std::string_view db = startup_message().database;
    return db == kAdminDatabase ||
           (db == kPgBouncerConsole && cfg.find_database(kPgBouncerConsole) == nullptr);
  }
  // Statement cache: each returns true when it consumed the message (rewritten or answered).
  bool cached_parse(Server& server, std::string_view body,
                    std::unique_ptr<NamedStatement::Runs> runs = nullptr);
  bool cached_bind(Server& server, std::string_view body);
  bool cached_describe(Server& server, std::string_view body);
  bool cached_close(Server& server, std::string_view body);
  bool deallocate(Server& server, std::string_view query, std::uint8_t mentioned);
  // SQL-level PREPARE / EXECUTE with the statement cache: the Query pgring sends in place of the
  // client's, with what its replies need; nullopt: the client's goes on as it is.
  struct SqlText {
    std::string text;
    const PreparedStatement* statement = nullptr;
    std::unique_ptr<RequestQueue::Entry::SqlRewrite> sql;
    std::string fake;  // the error `text` raises on purpose, as PostgreSQL words it
  };
  std::optional<SqlText> rewrite_sql_statement(Server& server, std::string_view query,
                                               std::uint8_t mentioned);
  void close_statement_on(Server& server, const PreparedStatement& statement);
  SqlText finish_rewrite(std::string_view query, std::size_t offset, std::size_t length,
                         SqlText out);

  // A Parse whose text is `EXECUTE name ...` of a statement the client has: the Parse body to
  // send instead (empty: the client's goes on as it is).
  std::string rewrite_parse_execute(Server& server, const proto::ParseMessage& parse,
                                    std::uint8_t mentioned,
                                    std::unique_ptr<NamedStatement::Runs>& runs);
  std::optional<SqlText> sql_prepare(Server& server, std::string_view query,
                                     const proto::sql::Prepare& prepare);
  bool ensure_unnamed(Server& server);
  // A Bind or Describe names statement `name`: the statement the linked server now has (the
  // message is rewritten to its name), or null when the message goes on as it is (the unnamed
  // statement, a held shape check) or was dealt with (`consumed`: an error owed in its place,
  // or the connection closed).
  const PreparedStatement* prepare_named(Server& server, std::string_view name, bool& consumed);
  void record_batch(std::string_view bytes);
  void end_batch();
  bool ensure_prepared(Server& server, const PreparedStatement& statement);
  // True when a shape check was started: the message stays in the input until it answers.
  bool start_shape_check(Server& server, const NamedStatement& named);
  void evict_statements(Server& server, std::uint64_t keep);
  const NamedStatement* find_statement(Server& server, std::string_view name);
  void fake_error(Server& server, std::string_view sqlstate, std::string message);
  [[nodiscard]] std::string restore_sql(const Server& server) const;
  // The next whole message in `frame`; false while it is incomplete or when it was refused.
  [[nodiscard]] bool frame_next(proto::Frame& frame, std::uint32_t max_size);
  // A message whose length lies or passes `max_size`: close with 08P01 or 54000.
  void refuse_frame(const proto::Frame& frame, std::uint32_t max_size);
};

}  // namespace pgring
