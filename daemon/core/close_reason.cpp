#include "daemon/core/close_reason.hpp"

namespace pgring {

std::string_view name(Reason reason) {
  switch (reason) {
    case Reason::client_terminate:
      return "client_terminate";
    case Reason::client_eof:
      return "client_eof";
    case Reason::client_io_error:
      return "client_io_error";
    case Reason::protocol_violation:
      return "protocol_violation";
    case Reason::message_too_large:
      return "message_too_large";
    case Reason::unsupported_protocol:
      return "unsupported_protocol";
    case Reason::feature_not_supported:
      return "feature_not_supported";
    case Reason::auth_failed:
      return "auth_failed";
    case Reason::unknown_user:
      return "unknown_user";
    case Reason::unknown_database:
      return "unknown_database";
    case Reason::too_many_clients:
      return "too_many_clients";
    case Reason::login_timeout:
      return "login_timeout";
    case Reason::query_wait_timeout:
      return "query_wait_timeout";
    case Reason::query_timeout:
      return "query_timeout";
    case Reason::transaction_timeout:
      return "transaction_timeout";
    case Reason::idle_transaction_timeout:
      return "idle_transaction_timeout";
    case Reason::client_idle_timeout:
      return "client_idle_timeout";
    case Reason::server_unreachable:
      return "server_unreachable";
    case Reason::server_login_failed:
      return "server_login_failed";
    case Reason::server_connection_lost:
      return "server_connection_lost";
    case Reason::server_eof:
      return "server_eof";
    case Reason::server_io_error:
      return "server_io_error";
    case Reason::server_protocol_error:
      return "server_protocol_error";
    case Reason::server_reset_failed:
      return "server_reset_failed";
    case Reason::server_dirty:
      return "server_dirty";
    case Reason::server_idle_timeout:
      return "server_idle_timeout";
    case Reason::server_lifetime:
      return "server_lifetime";
    case Reason::server_evicted:
      return "server_evicted";
    case Reason::server_handed_over:
      return "server_handed_over";
    case Reason::pool_removed:
      return "pool_removed";
    case Reason::shutdown:
      return "shutdown";
    case Reason::cancel_request:
      return "cancel_request";
    case Reason::query_canceled:
      return "query_canceled";
    case Reason::admin_kill:
      return "admin_kill";
    case Reason::admin_denied:
      return "admin_denied";
    case Reason::config_changed:
      return "config_changed";
    case Reason::tls_error:
      return "tls_error";
    case Reason::tls_required:
      return "tls_required";
    case Reason::auth_rejected:
      return "auth_rejected";
    case Reason::cert_auth_failed:
      return "cert_auth_failed";
    case Reason::auth_query_failed:
      return "auth_query_failed";
    case Reason::startup_rejected:
      return "startup_rejected";
    case Reason::server_terminated:
      return "server_terminated";
    case Reason::database_command:
      return "database_command";
    case Reason::server_wrong_role:
      return "server_wrong_role";
    case Reason::database_disabled:
      return "database_disabled";
    case Reason::admin_reconnect:
      return "admin_reconnect";
    case Reason::handed_over:
      return "handed_over";
    case Reason::replication_ended:
      return "replication_ended";
    case Reason::listen_ended:
      return "listen_ended";
    case Reason::notification_backlog:
      return "notification_backlog";
    case Reason::count_:
      break;
  }
  return "unknown";
}

std::string_view sqlstate(Reason reason) {
  switch (reason) {
    case Reason::protocol_violation:
    case Reason::unsupported_protocol:
    case Reason::login_timeout:
    case Reason::tls_error:
      return "08P01";
    case Reason::tls_required:
    case Reason::auth_rejected:
    case Reason::cert_auth_failed:
      return "28000";
    case Reason::message_too_large:
      return "54000";
    case Reason::database_disabled:
      return "55000";
    case Reason::admin_denied:
      return "42501";
    case Reason::feature_not_supported:
      return "0A000";
    case Reason::auth_failed:
      return "28P01";
    case Reason::unknown_user:
      return "28000";
    case Reason::unknown_database:
      return "3D000";
    case Reason::too_many_clients:
      return "53300";
    case Reason::notification_backlog:
      return "53200";
    case Reason::query_wait_timeout:
    case Reason::query_timeout:
    case Reason::query_canceled:
      return "57014";
    case Reason::transaction_timeout:
      return "25P04";
    case Reason::idle_transaction_timeout:
      return "25P03";
    case Reason::client_idle_timeout:
      return "57P05";
    case Reason::startup_rejected:
      return "22023";  // when PostgreSQL's own SQLSTATE is not known
    case Reason::server_unreachable:
    case Reason::server_login_failed:
    case Reason::server_connection_lost:
    case Reason::server_eof:
    case Reason::server_io_error:
    case Reason::server_protocol_error:
    case Reason::server_reset_failed:
    case Reason::server_dirty:
    case Reason::auth_query_failed:
      return "08006";
    case Reason::shutdown:
    case Reason::admin_kill:
    case Reason::pool_removed:
      return "57P01";
    default:
      return {};
  }
}

}  // namespace pgring
