#!/usr/bin/python3
"""scripts/run.sh, the quick start, as a newcomer uses it: with no config it starts a throwaway
PostgreSQL and pgring in transaction mode with the admin console and /metrics, and prints the
three things to try; each of them works as printed, and Ctrl-C (SIGINT) stops pgring and
deletes the throwaway PostgreSQL. PGRING_BIN makes run.sh skip its package installs and build."""

import os
import re
import shlex
import signal
import subprocess
import time
import urllib.request

from lib import check, check_eq, fail, free_port, log, run_tests

SOURCE = os.environ.get("PGRING_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quick_start_shows_the_product():
    port, metrics_port = free_port(), free_port()
    env = dict(os.environ, PGRING_PORT=str(port), PGRING_METRICS_PORT=str(metrics_port))
    proc = subprocess.Popen([os.path.join(SOURCE, "scripts", "run.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if re.search(rf"listening on 127\.0\.0\.1:{port}\b", line):
                break
        else:
            fail("run.sh did not start pgring in time:\n" + "\n".join(lines))
        output = "\n".join(lines)
        log(output)
        tries = [l.strip() for l in lines if l.strip().startswith(("psql ", "curl "))]
        check_eq(len(tries), 3, f"three commands to try:\n{output}")
        # Each printed command, run as printed (the shell's quoting), works.
        app = subprocess.run(shlex.split(tries[0]) + ["-tAc", "SELECT current_user"], capture_output=True,
                             text=True, timeout=30)
        check(app.returncode == 0 and app.stdout.strip() == "app", f"{tries[0]}: {app.stderr}")
        pools = subprocess.run(shlex.split(tries[1]) + ["-tA"], capture_output=True, text=True,
                               timeout=30)
        check(pools.returncode == 0 and pools.stdout.startswith("app|app|transaction"),
              f"{tries[1]}: {pools.stdout} {pools.stderr}")
        url = shlex.split(tries[2])[-1]
        with urllib.request.urlopen(url, timeout=10) as r:
            body = r.read().decode()
        check("pgring_transactions_total" in body, f"{url}: {body[:300]}")
        pg_dirs = re.findall(r"config in (\S+)/pgring\.yaml", output)
        check(len(pg_dirs) == 1, f"the throwaway's directory in:\n{output}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rest, _ = proc.communicate()
        log(rest)
    # Ctrl-C is a clean stop: pgring drains and exits 0, and so does run.sh.
    check_eq(proc.returncode, 0, "run.sh's status after Ctrl-C")
    check("stopping the throwaway PostgreSQL" in rest, rest)
    check(not os.path.exists(pg_dirs[0]), f"{pg_dirs[0]} deleted")


if __name__ == "__main__":
    run_tests(globals())
