#pragma once
// A server connection: pgring's own session with PostgreSQL.
//
//   connecting ──TCP up──> login ──ReadyForQuery──> idle <──reset done── resetting
//   (login with tls.server: SSLRequest, 'S', TLS handshake, then the startup packet)
//   idle ──linked to a client──> active ──client left, clean──> resetting (ROLLBACK?, reset query)
//   active ──client left with requests in flight──> closing
//   active ──transaction over while a cancel is in flight──> canceling ──cancel done──> idle
//   idle ──auth.query for a client logging in──> lookup ──ReadyForQuery──> idle
//   any ──close(reason)──> closing ──ops and cancels done──> freed at end of loop turn
//   (a pool's listening connection, listen: shared: connecting ──login──> listening, and never
//   linked to a client; daemon/pool/listen.cpp)
//
// The state is the list the server is on in its pool.

#include <netinet/in.h>
#include <openssl/crypto.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "daemon/cache/statements.hpp"
#include "daemon/conn/request_queue.hpp"
#include "daemon/conn/startup.hpp"
#include "daemon/conn/verdict.hpp"
#include "daemon/core/close_reason.hpp"
#include "daemon/core/list.hpp"
#include "daemon/core/stream.hpp"
#include "daemon/ops/queries.hpp"
#include "proto/frame.hpp"
#include "proto/messages.hpp"
#include "proto/scram.hpp"
#include "proto/sql.hpp"

namespace pgring {

class Reactor;
class Pool;
class Client;
struct Endpoint;
using Clock = std::chrono::steady_clock;

enum class ServerState {
  connecting,
  login,
  idle,
  active,
  resetting,
  canceling,
  lookup,
  listening,
  closing
};
[[nodiscard]] std::string_view to_string(ServerState state);

// Messages pgring reads whole from a server (authentication, parameters, errors) are small;
// anything it only forwards may be up to PostgreSQL's 1 GiB and is streamed.
inline constexpr std::uint32_t kMaxInspected = 1u << 20;
// (A length of 0x7fffffff, one byte over, is refused like a lying one: PostgreSQL caps
// messages at 1 GiB.)
inline constexpr std::uint32_t kMaxServerMessage = 0x7fffffffu;

class Server {
 public:
  Server(Reactor& reactor, Pool& pool, std::uint64_t id);

  void on_connected();
  // Login done (`ready_body`: the ReadyForQuery's): the server is idle and the pool's.
  void logged_in(std::string_view ready_body);
  // The answer to the role check "SELECT pg_is_in_recovery()" that ends a login.
  void check_role(char type, std::string_view body);
  void on_input();
  // The linked client left: make this connection reusable (or close it). `session_reset` runs
  // server_reset_query too (session mode, or a client that left session state behind).
  void release(bool session_reset);
  // auth.query: look up `client`'s secret (the server is idle; it is idle again afterwards).
  void start_lookup(Client& client);
  // Transaction/statement mode: give the server back when the client's transaction is over.
  void maybe_release();
  // The link ended: reading paused for its client's sake (flow control) resumes.
  void end_flow_control();

  ListNode<Server> node_;
  Reactor& reactor_;
  Pool& pool_;
  std::uint64_t id_;
  ServerState state_ = ServerState::connecting;
  Clock::time_point state_since_;
  Clock::time_point created_;
  Stream stream_;
  Operation connect_op_;
  int ops_in_flight_ = 0;
  bool await_eof_ = false;  // closing: Terminate sent to an idle server, waiting for its EOF
  bool shut_down_ = false;
  bool freed_ = false;  // queued for deletion at the end of the loop turn

  Client* client_ = nullptr;
  // auth.query in progress: whose secret (null once that client left), and what came back.
  Client* lookup_client_ = nullptr;
  std::optional<std::string> lookup_secret_;
  bool lookup_row_seen_ = false;  // the first row decides (a NULL secret there: no password)
  std::string lookup_error_;
  // Incremented at every link: a cancel names the link it was meant for.
  std::uint64_t link_generation_ = 0;
  // Cancel connections still targeting this server: it is neither reused nor freed meanwhile.
  int cancels_in_flight_ = 0;
  bool retire_ = false;
  Reason retire_reason_ = Reason::config_changed;  // what its close says once released
  // Closed to move its slot to another reactor (Pool::give_slot): that reactor's index, and
  // whether the pool's unit goes too (else only the database's).
  int slot_for_ = -1;
  bool slot_for_pool_ = false;
  // The pool's listening connection (Pool::Listening): counted in the database's budget only.
  bool listener_ = false;
  // The host it is connected to (daemon/pool/hosts.hpp); counted in its `connections` from the
  // connect until the server is freed.
  std::shared_ptr<Endpoint> endpoint_;
  bool logging_in_ = false;  // counted in endpoint_->logins
  // What the server answered to the request being counted (QueryStats; only while it is on).
  // Its `wait`: how long the linked client waited for this server, counted with the link's
  // first request.
  Answer answer_;
  void end_login_count();
  // The client left with work in flight: replies are swallowed until the protocol is idle.
  bool draining_ = false;
  bool drain_session_reset_ = false;
  Clock::time_point
      drain_since_{};  // the configuration moved the pool elsewhere: close instead of reuse
  // When the transaction began (timeouts; the oldest unanswered request: requests_.busy_since).
  Clock::time_point transaction_since_{};
  Clock::time_point retire_at_{};          // server_lifetime with jitter
  Clock::time_point transaction_start_{};  // first request after 'I' (transaction histogram)
  Clock::time_point last_ready_{};         // last ReadyForQuery (idle-in-transaction timeout)
  // timeouts.query fired for the request running since this time and a cancel went out.
  Clock::time_point query_timeout_canceled_for_{};

  // Session mode: the startup packet of the clients this connection was opened for. Its login
  // sent their parameters, so PostgreSQL's own reset values (RESET, RESET ALL, DISCARD ALL,
  // SET ... TO DEFAULT) are theirs, exactly as on a direct connection; only a client with the
  // same Startup may use it. Null: pgring's own startup packet (transaction and statement mode,
  // whose clients' settings are restored with SET).
  std::shared_ptr<const Startup> startup_;
  // The session is as its login left it (just logged in, or reset by server_reset_query): the
  // settings and fingerprint a client of startup_ starts with.
  void take_startup_state();

  // PostgreSQL's error when it refused our login (the pool relays it to its clients).
  std::string login_error_sqlstate_;
  std::string login_error_message_;

  // What the server told us at login and since (ParameterStatus), and its cancel key.
  std::vector<std::pair<std::string, std::string>> params_;
  std::int32_t backend_pid_ = 0;
  std::string backend_secret_;

  // What the linked client sent that the server has not answered yet (conn/request_queue.hpp),
  // pushed with the reactor's `now` (the first push into an empty queue starts the query timer).
  // The link may be released only when it is idle and the server says 'I'.
  RequestQueue requests_;
  // Prepares `statement` here ahead of a client's request (the client did not send this
  // Parse): its ParseComplete is swallowed. Null when the Parse could not be encoded.
  // A Close of pgring's statement `id`, its CloseComplete swallowed: prepared_ forgets it.
  void close_statement(std::uint64_t id);
  // Before `id` is prepared here: a Close of it the server skipped (after an error) left it
  // there, so it is closed first.
  void before_preparing(std::uint64_t id);
  // Statements pgring closed that the server kept (their Close was skipped after an error).
  std::vector<std::uint64_t> unclosed_;
  // `shape_check`: it is part of a shape check (Client::start_shape_check).
  RequestQueue::Entry* inject_parse(const PreparedStatement& statement, bool shape_check = false);
  // Sends the owed replies now at the head of the queue.
  void flush_fakes();
  [[nodiscard]] bool idle_in_protocol() const {
    return requests_.idle() && transaction_status_ == 'I';
  }
  [[nodiscard]] int requests_in_flight() const { return static_cast<int>(requests_.in_flight()); }
  // The statements prepared on this connection (transaction/statement mode statement cache).
  PreparedSet prepared_;
  // Whose unnamed statement this connection holds: client id and that client's unnamed_seq_.
  std::uint64_t unnamed_client_ = 0;
  std::uint64_t unnamed_seq_ = 0;
  char transaction_status_ = 'I';

  // Replies to queries pgring injected (restoring a client's settings) are swallowed up to
  // this many ReadyForQuery.
  int restore_replies_pending_ = 0;
  bool restore_failed_ = false;
  std::string restore_sqlstate_;  // PostgreSQL's error for the restore query, if it failed
  std::string restore_error_;
  // settings_ as they were before the restore query: PostgreSQL runs it as one implicit
  // transaction, so when it fails, none of its SETs took effect.
  std::vector<std::pair<std::string, std::string>> settings_before_restore_;
  bool restore_refused_ = false;  // the restore failed: its client goes, this server stays
  bool fatal_forwarded_ = false;  // a FATAL error of PostgreSQL's went to the linked client
  // Settings not reported by the server that clients applied with SET, and those changed in
  // the current transaction (applied at commit, dropped at rollback).
  std::vector<std::pair<std::string, std::string>> settings_;
  std::vector<proto::sql::SetStatement> pending_settings_;
  // Whose session this connection carries, as Client::session_fingerprint(); 0 = the pool's
  // defaults (a fresh or reset connection). Unknown states use kUnknownSession.
  static constexpr std::uint64_t kUnknownSession = ~std::uint64_t{0};
  std::uint64_t session_fingerprint_ = 0;
  bool session_diverged_ = false;
  bool transaction_failed_ = false;
  int reset_replies_pending_ = 0;  // ReadyForQuery still expected while resetting
  bool reset_failed_ = false;

  std::size_t forward_remaining_ = 0;
  std::size_t swallow_remaining_ = 0;  // rest of a swallowed reply still arriving

 private:
  friend class Reactor;
  void handle_login_message(char type, std::string_view body);
  void send_startup();
  // tls.server: the answer to our SSLRequest, then the handshake. False while not logged in yet.
  bool negotiate_tls();
  enum class TlsStep : std::uint8_t { none, requested, handshake };
  TlsStep tls_step_ = TlsStep::none;
  void handle_reset_message(char type, std::string_view body);
  void handle_idle_message(char type, std::string_view body);
  void handle_lookup_message(char type, std::string_view body);
  // The reply path: reads the server's messages, lets on_reply decide each one and carries the
  // verdict out (forward to the client, swallow, wait for more); releases at ReadyForQuery.
  void forward_to_client();
  Verdict on_reply(const proto::Frame& frame, Client& client);
  void set_param(std::string_view name, std::string_view value);
  void on_command_complete(std::string_view tag);
  void on_ready_for_query(char status);
  // stats.fingerprints: the answer just completed counted in its request's query family (and
  // logged when it took log.slow_query or longer).
  void count_answer(QueryStats& stats);
  void log_slow_query(std::uint64_t fingerprint, std::string_view text);
  // Transaction mode, at a ReadyForQuery outside a transaction: tell the client the startup
  // values its committed RESETs returned to where the server reported no change.
  void report_resets(Client& client);
  // The restore query failed, and its ReadyForQuery is consumed: close the client with
  // PostgreSQL's error (the server, clean, goes back to the pool).
  void refuse_restored_client();
  void handle_restore_message(char type, std::string_view body);
  // ReadyForQuery: the queue up to the request it answers is done.
  void pop_expected_until_ready();
  // A reply to the head request arrived; returns whether to swallow it.
  bool pop_reply(Request request_kind);
  void on_error_response();
  // A Parse that got no ParseComplete (it failed, or the server skipped it after an error), or
  // one pgring answered itself whose ParseComplete was dropped because the server skipped past.
  // `e` got no reply (`skipped`: the server skipped it) or failed: what it prepared is not there.
  void forget_unprepared(const RequestQueue::Entry& e, bool skipped);
  void forget_failed_prepare(RequestQueue::Entry& query);
  // A CommandComplete of pgring's own SQL PREPARE (before a client's EXECUTE, or injected in
  // the extended protocol): consumed from the queue, to be swallowed.
  bool hidden_complete();
  bool retry_after_error(const proto::ErrorFields& error);
  [[nodiscard]] bool reset_pending(std::string_view name) const;
  bool executed_in_batch_ = false;       // an Execute of the current batch completed
  std::uint64_t retried_batch_seq_ = 0;  // batch_seq + 1 of the batch retried last
  void refuse_transaction_block(std::size_t ready_size);
  void start_draining(bool session_reset);
  void drain();
  void end_copy_in();

  struct LoginState {
    std::string scram_client_first_bare;
    proto::scram::Key expected_server_signature{};
    bool scram_final_checked = false;
    std::optional<proto::scram::Key> client_key;  // SCRAM pass-through: a client's ClientKey
    proto::scram::Binding binding = proto::scram::Binding::none;
    std::string end_point;  // the server certificate's tls-server-end-point hash (TLS)
    // Logged in, the database has a target: "SELECT pg_is_in_recovery()" is out, and its row.
    bool role_check = false;
    std::optional<bool> in_recovery;
    ~LoginState() {
      if (client_key) OPENSSL_cleanse(client_key->data(), client_key->size());
    }
  };
  std::unique_ptr<LoginState> login_;
};

}  // namespace pgring
