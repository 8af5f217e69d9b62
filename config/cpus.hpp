#pragma once
// How many CPUs the process may use, from the texts the kernel gives (pure: the daemon reads the
// files, these functions read the text). `workers: auto` starts one reactor per usable CPU, and
// a container limited to 2 CPUs on a 64-core node can use 2, not 64: its affinity mask
// (cpuset) and its cgroup's CPU quota (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us) both count.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgring::config {

// A mounted cgroup hierarchy that controls CPU time: where it is mounted, and which cgroup
// directory is its root (a container sees its own cgroup as "/").
struct CgroupMount {
  bool v2 = false;          // the unified hierarchy (cpu.max); else v1 with the cpu controller
  std::string root;         // the cgroup path mounted there, e.g. "/" or "/kubepods/pod1"
  std::string mount_point;  // e.g. "/sys/fs/cgroup" or "/sys/fs/cgroup/cpu,cpuacct"
};

// The cgroup mounts of /proc/self/mountinfo that can limit CPU time (v2 ones, v1 ones with the
// cpu controller), in the order listed.
[[nodiscard]] std::vector<CgroupMount> cpu_cgroup_mounts(std::string_view mountinfo);

// The process's cgroup in that hierarchy, from /proc/self/cgroup ("0::/path" for v2,
// "N:cpu,cpuacct:/path" for v1).
[[nodiscard]] std::optional<std::string> cgroup_of(std::string_view proc_self_cgroup, bool v2);

// The directory of cgroup `path` under `mount` (nullopt when the cgroup is outside it).
[[nodiscard]] std::optional<std::string> cgroup_directory(const CgroupMount& mount,
                                                          std::string_view path);

// A quota in CPUs, rounded up (1.5 CPUs allow 2 threads to run part of the time): cgroup v2's
// cpu.max text ("max 100000" = none, "150000 100000" = 2), or v1's quota and period in µs
// (quota -1 = none). nullopt: no quota, or text that is not one.
[[nodiscard]] std::optional<int> cpu_max_cpus(std::string_view cpu_max);
[[nodiscard]] std::optional<int> quota_cpus(long long quota_us, long long period_us);

}  // namespace pgring::config
