// libFuzzer target for config/cpus: any bytes as /proc/self/mountinfo, /proc/self/cgroup and a
// cpu.max text (the input split at its first two NUL bytes). Nothing throws or reads out of
// bounds; a cgroup directory found is under its mount point; a quota is at least 1 CPU.
// Seeds: tests/fuzz/corpus/cpus/.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "config/cpus.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto cut = [&]() {
    auto nul = text.find('\0');
    std::string_view part = text.substr(0, nul);
    text = nul == std::string_view::npos ? std::string_view() : text.substr(nul + 1);
    return part;
  };
  std::string_view mountinfo = cut();
  std::string_view cgroup = cut();
  std::string_view cpu_max = cut();
  namespace cfg = pgring::config;
  for (const cfg::CgroupMount& mount : cfg::cpu_cgroup_mounts(mountinfo)) {
    auto path = cfg::cgroup_of(cgroup, mount.v2);
    if (!path) continue;
    auto dir = cfg::cgroup_directory(mount, *path);
    if (dir && !dir->starts_with(mount.mount_point)) std::abort();
  }
  if (auto cpus = cfg::cpu_max_cpus(cpu_max); cpus && *cpus < 1) std::abort();
  return 0;
}
