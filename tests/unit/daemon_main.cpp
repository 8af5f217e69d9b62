// The daemon's handler tests need a real io_uring (each builds a Reactor; its ring is never
// waited on). Where io_uring is not allowed (seccomp, kernel.io_uring_disabled) they skip
// (ctest SKIP_RETURN_CODE 77) instead of passing.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <liburing.h>

#include <cstdio>
#include <cstring>

#include "daemon/core/log.hpp"

int main(int argc, char** argv) {
  io_uring ring{};
  if (int rc = io_uring_queue_init(8, &ring, 0); rc < 0) {
    std::fprintf(stderr, "daemon_tests: io_uring is not available here (%s): skipped\n",
                 std::strerror(-rc));
    return 77;
  }
  io_uring_queue_exit(&ring);
  pgring::log::init(pgring::config::LogLevel::error, pgring::config::LogFormat::text);
  doctest::Context context(argc, argv);
  return context.run();
}
