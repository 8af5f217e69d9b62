#pragma once
// Why a connection ended: one vocabulary for logs, metrics (disconnects by reason) and tests.
// Each reason that is reported to a client carries the SQLSTATE of the ErrorResponse it gets.

#include <cstddef>
#include <string_view>

namespace pgring {

enum class Reason {
  client_terminate,          // client sent Terminate
  client_eof,                // client closed the socket
  client_io_error,           // recv/send on the client failed
  protocol_violation,        // 08P01: malformed or unexpected message
  message_too_large,         // 54000: message over max_message_size / startup packet limit
  unsupported_protocol,      // 08P01: not protocol 3.x
  feature_not_supported,     // 0A000: session state under session_state: error
  auth_failed,               // 28P01: wrong password
  unknown_user,              // 28000: user not configured
  unknown_database,          // 3D000: database not configured
  too_many_clients,          // 53300: over max_client_conn
  login_timeout,             // 08P01/57014: startup + auth took longer than timeouts.client_login
  query_wait_timeout,        // 57014: waited longer than timeouts.query_wait for a server
  query_timeout,             // 57014: a request ran longer than timeouts.query (+ cancel_wait)
  transaction_timeout,       // 25P04: a transaction stayed open longer than timeouts.transaction
  idle_transaction_timeout,  // 25P03: idle in a transaction longer than timeouts.idle_transaction
  client_idle_timeout,       // 57P05: idle outside a transaction longer than timeouts.client_idle
  server_unreachable,        // 08006: TCP connect to the server failed or timed out
  server_login_failed,       // server refused our login (SQLSTATE passed through)
  server_connection_lost,    // 08006: linked server went away
  server_terminated,      // PostgreSQL ended the linked session with a FATAL error, passed through
  server_eof,             // server closed the socket
  server_io_error,        // recv/send on the server failed
  server_protocol_error,  // server sent something we cannot follow
  server_reset_failed,    // the reset query failed; the connection cannot be reused
  server_dirty,           // released with requests in flight: not safe to reuse
  server_idle_timeout,    // idle longer than timeouts.server_idle
  server_lifetime,        // older than timeouts.server_lifetime
  server_evicted,         // idle, closed to make room: another pool's (max_db_connections), or
                          // in session mode clients' with other startup parameters
  server_handed_over,     // idle, closed so another reactor's waiting clients get the slot
  database_command,  // idle, closed: DROP/ALTER ... RENAME/CREATE ... TEMPLATE needs its database
  pool_removed,      // the pool's database left the configuration
  shutdown,          // 57P01: pgring is shutting down
  cancel_request,    // the connection carried a CancelRequest (answered by closing)
  query_canceled,    // 57014: canceled while waiting for a server
  admin_kill,        // 57P01: KILL db from the admin console
  admin_denied,      // 42501: the admin console, for a user not in admin.users/stats_users
  config_changed,    // a reload moved or shrank the pool
  tls_error,      // 08P01: TLS handshake or record failed (no ErrorResponse can reach the client)
  tls_required,   // 28000: tls.client.mode require, and the client did not use TLS
  auth_rejected,  // 28000: an auth rule rejects the login (or no rule matches)
  cert_auth_failed,      // 28000: method cert without a verified certificate naming the user
  auth_query_failed,     // 08006: auth.query could not look the user's secret up on the server
  startup_rejected,      // PostgreSQL refused a startup parameter (its SQLSTATE and message)
  database_disabled,     // 55000: DISABLE db in the admin console: no new clients for it
  admin_reconnect,       // RECONNECT [db]: server connections replaced (idle now, busy at release)
  server_wrong_role,     // its host is not (or no longer) what the database's target asks for, or
                         // its host was taken out (health check failed, address gone)
  handed_over,           // an upgrade in place: the client went on in the new process (no error)
  replication_ended,     // a replication connection's client left: its server is never reused
  listen_ended,          // a pool's listening connection (listen: shared): nobody listens any more
  notification_backlog,  // 53200: more notifications piled up unread than a client may hold
  count_,                // number of reasons (not a reason)
};
inline constexpr std::size_t kReasonCount = static_cast<std::size_t>(Reason::count_);

[[nodiscard]] std::string_view name(Reason reason);
// SQLSTATE sent to a client closed for this reason; empty when the client gets no error
// (it left on its own).
[[nodiscard]] std::string_view sqlstate(Reason reason);

}  // namespace pgring
