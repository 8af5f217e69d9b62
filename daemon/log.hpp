#pragma once
// One line per event on stderr, as text or JSON lines. Never pass a password or a secret.

#include <fmt/format.h>

#include <string_view>

#include "config/config.hpp"

namespace pgring::log {

void init(config::LogLevel level, config::LogFormat format);
[[nodiscard]] bool enabled(config::LogLevel level);
void write(config::LogLevel level, std::string_view message);

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(config::LogLevel::debug)) write(config::LogLevel::debug, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(config::LogLevel::info)) write(config::LogLevel::info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warning(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(config::LogLevel::warning))
    write(config::LogLevel::warning, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(config::LogLevel::error)) write(config::LogLevel::error, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace pgring::log
