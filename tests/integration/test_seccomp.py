#!/usr/bin/python3
"""seccomp: contrib/seccomp/pgring.json (for containers that should keep io_uring) lets pgring
serve with io_uring, and lets the image's HEALTHCHECK command run; without the three io_uring
calls (what Docker 25+ and containerd 2.0 default profiles do) pgring still serves, on its
epoll engine. Profiles are applied with tests/integration/seccomp_run.py (libseccomp), no
container runtime needed."""

import json
import os
import re
import subprocess
import tempfile

from lib import (PGRING_BIN, Pgring, check, check_eq, connect, free_port, log, pool_config,
                 query_one, run_tests, scrape)

SOURCE = os.environ.get("PGRING_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROFILE = os.path.join(SOURCE, "contrib", "seccomp", "pgring.json")
RUN = os.path.join(SOURCE, "tests", "integration", "seccomp_run.py")
IO_URING = "io_uring_setup,io_uring_enter,io_uring_register"


def healthcheck_command():
    """The Dockerfile's HEALTHCHECK command (bash, /dev/tcp, grep), as written there."""
    text = open(os.path.join(SOURCE, "Dockerfile")).read()
    m = re.search(r'HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])', text)
    check(m is not None, "the Dockerfile has a HEALTHCHECK CMD [...]")
    return json.loads(m.group(1))


def serves(p):
    c = connect(p.port, db="app")
    check_eq(query_one(c, "SELECT 41 + 1"), 42)
    c.close()


def test_profile_keeps_io_uring_and_the_healthcheck():
    metrics_port = free_port()
    config = pool_config(metrics_port=metrics_port)
    config["io"] = {"engine": "auto"}  # (whatever PGRING_IT_IO_ENGINE says)
    # LeakSanitizer stops the world with ptrace, which the profile rightly does not allow.
    no_lsan = {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:print_summary=1"}
    with Pgring(config, env=no_lsan, launcher=[RUN, PROFILE, "--"]) as p:
        serves(p)
        check("epoll" not in p.log(), f"io_uring under the profile: {p.log()}")
        # The image's HEALTHCHECK asks the port its PGRING_HEALTH_PORT names.
        command = healthcheck_command()
        check("${PGRING_HEALTH_PORT}" in " ".join(command), f"HEALTHCHECK: {command}")
        r = subprocess.run([RUN, PROFILE, "--"] + command, capture_output=True, text=True,
                           timeout=30, env=dict(os.environ, PGRING_HEALTH_PORT=str(metrics_port)))
        check_eq(r.returncode, 0, f"the HEALTHCHECK under the profile: {r.stderr}")


def test_without_io_uring_pgring_serves_on_epoll():
    # What Docker 25+ and containerd 2.0's default profiles do: the io_uring calls fail (EPERM).
    # The runtime's default profile is an allow-list too; this one allows everything else, so
    # that the test sees exactly the effect of the three calls (and LeakSanitizer still works).
    allow_all = os.path.join(tempfile.mkdtemp(prefix="pgring-seccomp-"), "allow-all.json")
    with open(allow_all, "w") as f:
        json.dump({"defaultAction": "SCMP_ACT_ALLOW"}, f)
    metrics_port = free_port()
    config = pool_config(metrics_port=metrics_port)
    config["workers"] = 2
    config["io"] = {"engine": "auto"}
    with Pgring(config, launcher=[RUN, allow_all, "--deny", IO_URING, "--"]) as p:
        check(p.wait_log(r"io_uring setup failed: Operation not permitted .*seccomp.*running on "
                         r"the epoll engine"), "one clear line says why")
        check(p.wait_log(r"2 reactor threads serving \(I/O engine: epoll\)"), "the engine in use")
        serves(p)
        # Prepared statements and a pipeline of them, through both reactors.
        for _ in range(4):
            c = connect(p.port, db="app")
            with c.cursor() as cur:
                cur.execute("PREPARE q(int) AS SELECT $1 * 2")
                cur.execute("EXECUTE q(21)")
                check_eq(cur.fetchone()[0], 42)
            c.close()
        body = scrape(metrics_port)
        check('pgring_io_engine_reactors{engine="epoll"} 2' in body,
              "the metric says epoll: " + "\n".join(l for l in body.splitlines()
                                                     if "io_engine" in l))
    # io.engine: io_uring asks for io_uring only: without it pgring does not start, and says why.
    config = pool_config()
    config["io"] = {"engine": "io_uring"}
    p = Pgring(config)
    p.write_config()
    r = subprocess.run([RUN, allow_all, "--deny", IO_URING, "--", PGRING_BIN,
                        "--config", p.config_path], capture_output=True, text=True, timeout=30)
    check(r.returncode != 0 and "io.engine: io_uring" in r.stdout + r.stderr,
          f"io.engine io_uring without io_uring: {r.returncode} {r.stdout} {r.stderr}")


if __name__ == "__main__":
    run_tests(globals())
