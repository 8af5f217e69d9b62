#pragma once
// One line per event on stderr (or log.file), as text or JSON lines. Never pass a password or a
// secret.

#include <fmt/format.h>

#include <cstdint>
#include <string_view>

#include "config/config.hpp"

namespace pgring::log {

void init(config::LogLevel level, config::LogFormat format);
// log.file: lines go to `path` (appended; created 0640) from now on, or to stderr when empty;
// the same path is opened again (a reload after a rotation, as with PgBouncer's logfile).
// Returns "" or why the file cannot be opened (the log then stays where it was).
[[nodiscard]] std::string use_file(const std::string& path);
// SIGUSR1 (logrotate's postrotate): the same path opened again; lines being written meanwhile
// go to the old file or the new one, never nowhere. Returns "" or why it failed.
[[nodiscard]] std::string reopen();
[[nodiscard]] bool enabled(config::LogLevel level);
// The structured fields of a connection event: with log.format json they are keys of the
// line's object beside ts/level/msg (absent when empty or 0), so a log pipeline can select by
// client, pool or close reason without parsing msg. Text lines carry the same in msg.
struct Fields {
  std::string_view event = {};     // client_login, client_close, server_close, server_unavailable,
                                   // slow_query
  std::uint64_t client = 0;        // C-<id>
  std::uint64_t server = 0;        // S-<id>
  std::string_view database = {};  // the pool's
  std::string_view user = {};      // the pool's
  std::string_view peer = {};      // the client's address
  std::string_view reason = {};    // close reason (docs/operations.md vocabulary)
  std::string_view sqlstate = {};  // the error the peer got or sent
  std::string_view fingerprint = {};  // a query family's id (SHOW QUERIES)
  std::string_view query = {};        // its normal text (constants as $n: no parameter values)
  double duration_ms = -1;            // how long the event lasted (absent when negative)
  double wait_ms = -1;                // of it, waiting for a server (absent when negative)
};
void write(config::LogLevel level, std::string_view message, const Fields* fields = nullptr);
// Rate limit per call site (keyed by the format string): at most kBurst lines per second from
// one site; the rest are counted and reported once the second is over. A flood of failing
// logins or connects cannot flood the log.
[[nodiscard]] bool admit(const void* site, std::string_view format);

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(config::LogLevel::debug) &&
      admit(fmt::string_view(f).data(),
            std::string_view(fmt::string_view(f).data(), fmt::string_view(f).size())))
    write(config::LogLevel::debug, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(config::LogLevel::info) &&
      admit(fmt::string_view(f).data(),
            std::string_view(fmt::string_view(f).data(), fmt::string_view(f).size())))
    write(config::LogLevel::info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warning(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(config::LogLevel::warning) &&
      admit(fmt::string_view(f).data(),
            std::string_view(fmt::string_view(f).data(), fmt::string_view(f).size())))
    write(config::LogLevel::warning, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(config::LogLevel::error) &&
      admit(fmt::string_view(f).data(),
            std::string_view(fmt::string_view(f).data(), fmt::string_view(f).size())))
    write(config::LogLevel::error, fmt::format(f, std::forward<Args>(args)...));
}

// A connection event at `level`, with its fields (rate-limited like the others).
template <typename... Args>
void event(config::LogLevel level, const Fields& fields, fmt::format_string<Args...> f,
           Args&&... args) {
  if (enabled(level) &&
      admit(fmt::string_view(f).data(),
            std::string_view(fmt::string_view(f).data(), fmt::string_view(f).size())))
    write(level, fmt::format(f, std::forward<Args>(args)...), &fields);
}

}  // namespace pgring::log
