// config/cpus.hpp: usable CPUs from mountinfo, /proc/self/cgroup and quota texts.

#include "config/cpus.hpp"

#include <doctest/doctest.h>

using namespace pgring::config;

TEST_CASE("cpus: cgroup v2 (a container sees its cgroup as /)") {
  const char* mountinfo =
      "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
      "30 22 0:27 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n";
  auto mounts = cpu_cgroup_mounts(mountinfo);
  REQUIRE(mounts.size() == 1);
  CHECK(mounts[0].v2);
  CHECK(mounts[0].root == "/");
  CHECK(mounts[0].mount_point == "/sys/fs/cgroup");
  auto path = cgroup_of("0::/\n", true);
  REQUIRE(path);
  CHECK(*path == "/");
  CHECK(cgroup_directory(mounts[0], *path) == "/sys/fs/cgroup");
  // On a host, the process's cgroup is below the root.
  auto host = cgroup_of("0::/system.slice/pgring.service\n", true);
  CHECK(cgroup_directory(mounts[0], *host) == "/sys/fs/cgroup/system.slice/pgring.service");
  CHECK_FALSE(cgroup_of("0::/\n", false));
}

TEST_CASE("cpus: cgroup v1 with the cpu controller, mounted at a sub-cgroup") {
  const char* mountinfo =
      "31 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
      "32 30 0:29 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n"
      "33 30 0:30 /kubepods/pod1 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
      "34 30 0:31 /kubepods/pod1/c1 /mnt/my\\040cpu rw - cgroup cgroup rw,cpu\n";
  auto mounts = cpu_cgroup_mounts(mountinfo);
  REQUIRE(mounts.size() == 2);  // cpuset and memory do not limit CPU time
  CHECK_FALSE(mounts[0].v2);
  CHECK(mounts[1].mount_point == "/mnt/my cpu");
  const char* cgroup = "12:memory:/kubepods/pod1\n4:cpu,cpuacct:/kubepods/pod1/c1\n0::/\n";
  auto path = cgroup_of(cgroup, false);
  REQUIRE(path);
  CHECK(*path == "/kubepods/pod1/c1");
  CHECK(cgroup_directory(mounts[0], *path) == "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/c1");
  CHECK(cgroup_directory(mounts[1], *path) == "/mnt/my cpu");
  // A cgroup outside the mounted root, or only sharing a prefix with it, is not under it.
  CHECK_FALSE(cgroup_directory(mounts[1], "/kubepods/pod2"));
  CHECK_FALSE(cgroup_directory(mounts[1], "/kubepods/pod1/c10"));
  CHECK_FALSE(cgroup_of("4:cpuacct:/x\n", false));
}

TEST_CASE("cpus: quotas round up, and no quota is none") {
  CHECK(cpu_max_cpus("max 100000\n") == std::nullopt);
  CHECK(cpu_max_cpus("100000 100000\n") == 1);
  CHECK(cpu_max_cpus("150000 100000") == 2);
  CHECK(cpu_max_cpus("50000 100000") == 1);
  CHECK(cpu_max_cpus("400000 100000") == 4);
  CHECK(cpu_max_cpus("") == std::nullopt);
  CHECK(cpu_max_cpus("garbage") == std::nullopt);
  CHECK(cpu_max_cpus("100000 0") == std::nullopt);
  CHECK(quota_cpus(-1, 100000) == std::nullopt);
  CHECK(quota_cpus(250000, 100000) == 3);
  CHECK(quota_cpus(9223372036854775807LL, 1) == 1 << 20);  // no overflow, a sane cap
  CHECK(cpu_max_cpus("9223372036854775807 1") == 1 << 20);
}
