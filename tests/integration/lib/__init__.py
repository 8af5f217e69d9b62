"""The Python library of pgring's integration tests.

Every tests/integration/test_<feature>.py is a standalone program run with /usr/bin/python3
(Debian's python, which has python3-psycopg2 and python3-yaml). It imports this package
(`from lib import ...`: the script's directory is sys.path[0]), defines functions named test_*,
and ends with `run_tests(globals())`. Exit status: 0 pass, 1 fail, 77 skip (ctest's
SKIP_RETURN_CODE). No file in lib/ may be named test_*.py: tests/CMakeLists.txt globs
tests/integration/test_*.py, not lib/.

Environment (set by ctest, see tests/CMakeLists.txt):
  PGRING_BIN            the pgring binary            (default: <source>/build/pgring)
  PGRING_TEST_PGHOST    the test PostgreSQL's host   (default: 127.0.0.1)
  PGRING_TEST_PGPORT    the test PostgreSQL's port   (default: 25432)
  PGRING_TEST_PGDATA    its data directory (the tests that stop/restart PostgreSQL need it)
  PGRING_LIBPQ_CLIENT   tests/integration/libpq_client.c built by CMake
  PGRING_SOURCE_DIR     the source tree              (default: three levels above lib/)
Optional, for a person running the tests:
  PGRING_IT_WORKERS     reactor threads for every test that does not set `workers` (default 1)
  PGRING_IT_DEBUG_LOG   when set, pool_config() turns on pgring's debug log

The test PostgreSQL is the one scripts/pg-throwaway.sh creates: superuser postgres (trust over
TCP), roles app/secret (SCRAM), pgring_scram/scram_pw, pgring_md5/md5_pw, pgring_plain/plain_pw,
databases pgring_test and app.

The modules, by job:
  env          paths, ports and programs from the environment
  checks       check/fail/skip, wait_until, Background, run_clients, run_tests (the runner)
  procfs       pgring's file descriptors, sockets and memory, from /proc
  pgring       the Pgring fixture (start, stop, log, leak check) and pool_config()
  clients      psql, psycopg2 (connect, query), pgbench
  wire         RawConn, a wire-protocol client with SCRAM/MD5, and protocol message builders
  backends     pg_stat_activity: the backends of a database, BackendSampler
  ops          the admin console (SHOW ...), /metrics scraping
  faults       stopping/starting PostgreSQL, relays and silent listeners, pool health
  fake_server  a scripted fake PostgreSQL (also runs as a program)

Every Pgring used as `with Pgring(...) as p:` checks for leaks when the block ends (see
Pgring.check_no_leaks): no client connection left, no file descriptor more than right after
start (pooled server connections aside), every pooled server connection idle on PostgreSQL.
A test that cannot meet that (it kills pgring, or deliberately leaves something behind) passes
skip_leak_check="the reason".
"""

from .env import *          # noqa: F401,F403
from .checks import *       # noqa: F401,F403
from .procfs import *       # noqa: F401,F403
from .clients import *      # noqa: F401,F403
from .wire import *         # noqa: F401,F403
from .backends import *     # noqa: F401,F403
from .ops import *          # noqa: F401,F403
from .pgring import *       # noqa: F401,F403
from .faults import *       # noqa: F401,F403
from .fake_server import FakeServer  # noqa: F401
