#!/usr/bin/python3
"""pgbench through pgring in session mode: initialisation (COPY, DDL, VACUUM) and a 10-second
TPC-B-like run with 16 clients, without a single failed transaction."""

import re

from lib import Pgring, check, check_eq, log, pgbench, run_tests


CONFIG = {
    "auth": {"method": "trust"},
    "defaults": {"pool_mode": "session", "pool_size": 16},
}


def test_pgbench_session_mode():
    with Pgring(CONFIG) as p:
        rc, out, err = pgbench(p.port, ["-i", "-s", "1", "-q"])
        check_eq(rc, 0, f"pgbench -i exit status\n{out}\n{err}")

        rc, out, err = pgbench(p.port, ["-c", "16", "-j", "2", "-T", "10", "-P", "5"])
        log(out)
        check_eq(rc, 0, f"pgbench exit status\n{err}")
        processed = re.search(r"number of transactions actually processed: (\d+)", out)
        check(processed and int(processed.group(1)) > 0, f"no transactions processed:\n{out}")
        failed = re.search(r"number of failed transactions: (\d+)", out)
        if failed:  # printed by pgbench 15 and later
            check_eq(int(failed.group(1)), 0, "failed transactions")
        check("error" not in err.lower(), f"pgbench reported errors:\n{err}")


if __name__ == "__main__":
    run_tests(globals())
