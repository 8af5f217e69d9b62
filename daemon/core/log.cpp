#include "daemon/core/log.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string>

namespace pgring::log {

namespace {
std::atomic<int> g_level{static_cast<int>(config::LogLevel::info)};
std::atomic<bool> g_json{false};

std::string_view level_name(config::LogLevel level) {
  switch (level) {
    case config::LogLevel::debug:
      return "debug";
    case config::LogLevel::info:
      return "info";
    case config::LogLevel::warning:
      return "warning";
    case config::LogLevel::error:
      return "error";
  }
  return "info";
}

void append_json_string(std::string& out, std::string_view s) {
  out.push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20)
          out += fmt::format("\\u{:04x}", c);
        else
          out.push_back(c);
    }
  }
  out.push_back('"');
}
}  // namespace

namespace {
constexpr int kBurst = 20;
struct Site {
  const void* key = nullptr;
  std::chrono::steady_clock::time_point window{};
  int lines = 0;
  std::uint64_t suppressed = 0;
  std::string_view format;
};
std::mutex g_sites_mutex;
std::array<Site, 256> g_sites;
}  // namespace

bool admit(const void* site, std::string_view format) {
  auto now = std::chrono::steady_clock::now();
  std::uint64_t report = 0;
  std::string_view report_format;
  {
    std::lock_guard lock(g_sites_mutex);
    Site& s = g_sites[(reinterpret_cast<std::uintptr_t>(site) >> 4) % g_sites.size()];
    if (s.key != site) s = Site{site, now, 0, 0, format};
    if (now - s.window >= std::chrono::seconds(1)) {
      report = s.suppressed;
      report_format = s.format;
      s.window = now;
      s.lines = 0;
      s.suppressed = 0;
    }
    if (++s.lines > kBurst) {
      ++s.suppressed;
      return false;
    }
  }
  if (report > 0)
    write(config::LogLevel::warning,
          fmt::format("{} similar log lines suppressed in the last second: \"{}\"", report,
                      report_format));
  return true;
}

namespace {
// Lines are written to this descriptor: 2 (stderr) until log.file is set. A file gets its own
// descriptor number once, and reopening puts the new file behind that same number (dup2), so a
// thread writing while the file is rotated never writes to a closed or reused descriptor.
std::atomic<int> g_fd{2};
std::mutex g_file_mutex;  // use_file and reopen
std::string g_path;

// Opens `path` and puts it behind the log's descriptor (its own number from the first file on).
std::string point_at(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) return "cannot open log.file " + path + ": " + std::strerror(errno);
  int current = g_fd.load();
  if (current == 2) {
    g_fd.store(fd);
  } else {
    ::dup2(fd, current);
    ::close(fd);
  }
  return {};
}
}  // namespace

std::string use_file(const std::string& path) {
  std::lock_guard lock(g_file_mutex);
  if (path.empty()) {
    // Back to stderr: the file's descriptor stays open (a line may be on its way to it).
    g_fd.store(2);
    g_path.clear();
    return {};
  }
  std::string problem = point_at(path);
  if (problem.empty()) g_path = path;
  return problem;
}

std::string reopen() {
  std::lock_guard lock(g_file_mutex);
  return g_path.empty() ? std::string() : point_at(g_path);
}

void init(config::LogLevel level, config::LogFormat format) {
  g_level = static_cast<int>(level);
  g_json = format == config::LogFormat::json;
}

bool enabled(config::LogLevel level) {
  return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

void write(config::LogLevel level, std::string_view message, const Fields* fields) {
  auto now = std::chrono::system_clock::now();
  auto secs = std::chrono::system_clock::to_time_t(now);
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char ts[64];
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  std::string line;
  if (g_json) {
    line = fmt::format("{{\"ts\":\"{}\",\"level\":\"{}\",\"msg\":", ts, level_name(level));
    append_json_string(line, message);
    if (fields != nullptr) {
      auto text = [&](std::string_view key, std::string_view value) {
        if (value.empty()) return;
        line += ",\"";
        line += key;
        line += "\":";
        append_json_string(line, value);
      };
      auto number = [&](std::string_view key, std::uint64_t value) {
        if (value != 0) line += fmt::format(",\"{}\":{}", key, value);
      };
      text("event", fields->event);
      number("client", fields->client);
      number("server", fields->server);
      text("database", fields->database);
      text("user", fields->user);
      text("peer", fields->peer);
      text("reason", fields->reason);
      text("sqlstate", fields->sqlstate);
      text("fingerprint", fields->fingerprint);
      text("query", fields->query);
      auto ms = [&](std::string_view key, double value) {
        if (value >= 0) line += fmt::format(",\"{}\":{:.3f}", key, value);
      };
      ms("duration_ms", fields->duration_ms);
      ms("wait_ms", fields->wait_ms);
    }
    line += "}\n";
  } else {
    line = fmt::format("{} {} ", ts, level_name(level));
    // One event, one line: a message with line breaks of its own (libpq's and PostgreSQL's
    // errors end with one, some have several) keeps them as " | ".
    while (!message.empty() && (message.back() == '\n' || message.back() == '\r'))
      message.remove_suffix(1);
    for (char c : message) {
      if (c == '\n')
        line += " | ";
      else if (c != '\r')
        line.push_back(c);
    }
    line.push_back('\n');
  }
  // One write per line (O_APPEND for a file) so lines from different threads never interleave.
  ssize_t written = ::write(g_fd.load(std::memory_order_relaxed), line.data(), line.size());
  (void)written;  // nowhere to report a log that cannot be written
}

}  // namespace pgring::log
