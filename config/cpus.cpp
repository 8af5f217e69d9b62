// Usable CPUs from /proc and cgroup texts (config/cpus.hpp).

#include "config/cpus.hpp"

#include <algorithm>
#include <charconv>

namespace pgring::config {

namespace {

std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  while (true) {
    auto at = text.find(separator);
    parts.push_back(text.substr(0, at));
    if (at == std::string_view::npos) return parts;
    text.remove_prefix(at + 1);
  }
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\n' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\n' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

std::optional<long long> number(std::string_view s) {
  long long value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

bool has_item(std::string_view list, std::string_view item) {
  for (std::string_view part : split(list, ','))
    if (part == item) return true;
  return false;
}

bool is_octal(char c) {
  return c >= '0' && c <= '7';
}

// mountinfo escapes spaces and the like as \040 (octal).
std::string unescape(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && is_octal(s[i + 1]) && is_octal(s[i + 2]) &&
        is_octal(s[i + 3])) {
      out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
      continue;
    }
    out += s[i];
  }
  return out;
}

}  // namespace

std::vector<CgroupMount> cpu_cgroup_mounts(std::string_view mountinfo) {
  // "36 35 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw": fields 4 and 5 are the root
  // and the mount point; after " - " come the file system type, the source and its options.
  std::vector<CgroupMount> mounts;
  for (std::string_view line : split(mountinfo, '\n')) {
    auto dash = line.find(" - ");
    if (dash == std::string_view::npos) continue;
    std::vector<std::string_view> fields = split(line.substr(0, dash), ' ');
    std::vector<std::string_view> tail = split(line.substr(dash + 3), ' ');
    if (fields.size() < 5 || tail.size() < 3) continue;
    CgroupMount m;
    if (tail[0] == "cgroup2")
      m.v2 = true;
    else if (tail[0] != "cgroup" || !has_item(tail[2], "cpu"))
      continue;
    m.root = unescape(fields[3]);
    m.mount_point = unescape(fields[4]);
    mounts.push_back(std::move(m));
  }
  return mounts;
}

std::optional<std::string> cgroup_of(std::string_view proc_self_cgroup, bool v2) {
  for (std::string_view line : split(proc_self_cgroup, '\n')) {
    auto first = line.find(':');
    auto second = first == std::string_view::npos ? first : line.find(':', first + 1);
    if (second == std::string_view::npos) continue;
    std::string_view controllers = line.substr(first + 1, second - first - 1);
    std::string_view path = line.substr(second + 1);
    if (v2 ? line.substr(0, first) == "0" && controllers.empty() : has_item(controllers, "cpu"))
      return std::string(path);
  }
  return std::nullopt;
}

std::optional<std::string> cgroup_directory(const CgroupMount& mount, std::string_view path) {
  std::string_view root = mount.root;
  if (root == "/") root = "";
  if (!path.starts_with(root)) return std::nullopt;
  std::string_view rest = path.substr(root.size());
  if (!rest.empty() && rest.front() != '/') return std::nullopt;  // "/a" is not under "/ab"
  std::string dir = mount.mount_point;
  if (rest != "/") dir += rest;
  return dir;
}

std::optional<int> quota_cpus(long long quota_us, long long period_us) {
  if (quota_us <= 0 || period_us <= 0) return std::nullopt;
  // Rounded up without overflow, and no more than a machine can have.
  long long cpus = quota_us / period_us + (quota_us % period_us != 0 ? 1 : 0);
  return static_cast<int>(std::min(cpus, 1LL << 20));
}

std::optional<int> cpu_max_cpus(std::string_view cpu_max) {
  std::vector<std::string_view> parts = split(trim(cpu_max), ' ');
  if (parts.size() != 2 || parts[0] == "max") return std::nullopt;
  auto quota = number(parts[0]);
  auto period = number(parts[1]);
  if (!quota || !period) return std::nullopt;
  return quota_cpus(*quota, *period);
}

}  // namespace pgring::config
