#pragma once
// `workers: auto`: the CPUs this process may use (affinity mask and cgroup CPU quota).

#include <optional>
#include <string>

namespace pgring {

struct UsableCpus {
  int affinity = 1;          // CPUs in the affinity mask (cpuset)
  std::optional<int> quota;  // the cgroup CPU quota, rounded up; none = no quota
  std::string quota_source;  // the file the quota came from
  [[nodiscard]] int count() const { return quota && *quota < affinity ? *quota : affinity; }
};

// Reads sched_getaffinity, /proc/self/mountinfo, /proc/self/cgroup and the cgroup's quota
// files, up to the hierarchy's root (a parent's quota limits its children too).
[[nodiscard]] UsableCpus usable_cpus();

}  // namespace pgring
