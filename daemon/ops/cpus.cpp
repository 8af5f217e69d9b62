// `workers: auto` (ops/cpus.hpp): the kernel's files read here, their texts parsed by
// config/cpus.hpp.

#include "daemon/ops/cpus.hpp"

#include <sched.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "config/cpus.hpp"

namespace pgring {

namespace {

std::optional<std::string> read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::optional<long long> read_number(const std::string& path) {
  auto text = read_file(path);
  if (!text) return std::nullopt;
  try {
    return std::stoll(*text);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// The quota of the cgroup at `dir` (v2 cpu.max, or v1 cfs quota and period).
std::optional<int> quota_at(const std::string& dir, bool v2) {
  if (v2) {
    auto text = read_file(dir + "/cpu.max");
    return text ? config::cpu_max_cpus(*text) : std::nullopt;
  }
  auto quota = read_number(dir + "/cpu.cfs_quota_us");
  auto period = read_number(dir + "/cpu.cfs_period_us");
  return quota && period ? config::quota_cpus(*quota, *period) : std::nullopt;
}

}  // namespace

UsableCpus usable_cpus() {
  UsableCpus cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    cpus.affinity = CPU_COUNT(&set);
  else
    cpus.affinity = static_cast<int>(std::thread::hardware_concurrency());
  if (cpus.affinity < 1) cpus.affinity = 1;

  auto mountinfo = read_file("/proc/self/mountinfo");
  auto membership = read_file("/proc/self/cgroup");
  if (!mountinfo || !membership) return cpus;
  for (const config::CgroupMount& mount : config::cpu_cgroup_mounts(*mountinfo)) {
    auto path = config::cgroup_of(*membership, mount.v2);
    if (!path) continue;
    auto dir = config::cgroup_directory(mount, *path);
    if (!dir) continue;
    // This cgroup and each parent up to the mount point: the smallest quota rules.
    while (true) {
      if (auto quota = quota_at(*dir, mount.v2); quota && (!cpus.quota || *quota < *cpus.quota)) {
        cpus.quota = quota;
        cpus.quota_source = *dir + (mount.v2 ? "/cpu.max" : "/cpu.cfs_quota_us");
      }
      if (dir->size() <= mount.mount_point.size()) break;
      dir->resize(dir->rfind('/'));
    }
  }
  return cpus;
}

}  // namespace pgring
