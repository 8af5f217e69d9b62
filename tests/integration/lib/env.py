"""Paths, ports and programs, from the environment ctest sets (see lib/__init__.py)."""

import os
import shutil

__all__ = ["SOURCE_DIR", "PGRING_BIN", "PGHOST", "PGPORT", "PGDATA", "LIBPQ_CLIENT", "PSQL",
           "NO_PASSFILE", "SANITIZER_MARKERS", "find_pg_tool", "as_postgres_cmd"]

SOURCE_DIR = os.environ.get("PGRING_SOURCE_DIR") or os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PGRING_BIN = os.environ.get("PGRING_BIN") or os.path.join(SOURCE_DIR, "build", "pgring")
PGHOST = os.environ.get("PGRING_TEST_PGHOST", "127.0.0.1")
PGPORT = int(os.environ.get("PGRING_TEST_PGPORT", "25432"))
# The fixture's DIR may be a symlink to the real data directory (scripts/pg-throwaway.sh does
# that when the postgres OS user cannot reach the build tree); pg_ctl wants the real one.
PGDATA = os.path.realpath(os.environ["PGRING_TEST_PGDATA"]) if os.environ.get(
    "PGRING_TEST_PGDATA") else ""
LIBPQ_CLIENT = os.environ.get("PGRING_LIBPQ_CLIENT", "")
PSQL = "/usr/bin/psql"
NO_PASSFILE = "/nonexistent/pgring-test-pgpass"  # keeps ~/.pgpass out of the tests

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "ThreadSanitizer", "runtime error:")


def find_pg_tool(name):
    """Path of a PostgreSQL program: /usr/lib/postgresql/15/bin, else the newest version there,
    else PATH."""
    from .checks import fail
    preferred = f"/usr/lib/postgresql/15/bin/{name}"
    if os.access(preferred, os.X_OK):
        return preferred
    base = "/usr/lib/postgresql"
    if os.path.isdir(base):
        versions = sorted((d for d in os.listdir(base) if d.replace(".", "").isdigit()),
                          key=lambda v: [int(x) for x in v.split(".")], reverse=True)
        for v in versions:
            path = os.path.join(base, v, "bin", name)
            if os.access(path, os.X_OK):
                return path
    found = shutil.which(name)
    if not found:
        fail(f"{name} not found (install postgresql: scripts/deps.sh)")
    return found


def as_postgres_cmd(cmd):
    """Prefix a command so it runs as the postgres OS user when we are root (like the fixture)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return list(cmd)
