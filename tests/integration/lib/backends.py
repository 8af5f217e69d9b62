"""The backends on the test PostgreSQL, from pg_stat_activity: the one filter every test uses
(backends()), counts and pid sets built on it, and BackendSampler, which samples the count while
a test runs. Direct connections opened with monitor_connect() (application_name MONITOR_APP)
are not counted, so tests can watch a database through one without seeing themselves."""

import collections
import threading
import time

from .checks import check, wait_until
from .clients import MONITOR_APP, monitor_connect, query

__all__ = ["Backend", "backends", "count_backends", "backend_pids", "idle_in_transaction",
           "wait_no_backends", "wait_backend_gone", "BackendSampler"]

Backend = collections.namedtuple(
    "Backend", "pid state query datname usename client_port application_name xact_start")


def backends(monitor, datname=None, usename=None, *, state=None, query_like=None,
             client_ports=None, include_monitors=False):
    """The client backends (pg_stat_activity rows of backend_type 'client backend', other than
    `monitor`'s own) of database `datname` and user `usename` (None: any), as Backend tuples
    (pid, state, query, ...) ordered by pid; state and query are '' when PostgreSQL hides them.
    Connections opened with monitor_connect() are left out unless `include_monitors`.
    Optionally only those in `state` ('active', 'idle', ...), running a query LIKE
    `query_like`, or connected from a TCP port in `client_ports`."""
    sql = ("SELECT pid, coalesce(state, ''), coalesce(query, ''), datname, usename, "
           "client_port, application_name, xact_start FROM pg_stat_activity "
           "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
    params = []
    if not include_monitors:
        sql += " AND application_name IS DISTINCT FROM %s"
        params.append(MONITOR_APP)
    for column, value in (("datname", datname), ("usename", usename), ("state", state)):
        if value is not None:
            sql += f" AND {column} = %s"
            params.append(value)
    if query_like is not None:
        sql += " AND query LIKE %s"
        params.append(query_like)
    if client_ports is not None:
        sql += " AND client_port = ANY(%s)"
        params.append(list(client_ports))
    return [Backend(*row) for row in query(monitor, sql + " ORDER BY pid", params)]


def count_backends(monitor, datname, usename=None):
    """How many backends() of database `datname` (and user `usename`) there are."""
    return len(backends(monitor, datname, usename))


def backend_pids(monitor, datname, usename=None):
    """The pids of backends() of database `datname` (and user `usename`), as a set."""
    return {b.pid for b in backends(monitor, datname, usename)}


def idle_in_transaction(monitor, datname):
    """The backends of `datname` (monitor connections included) idle in a transaction
    ('idle in transaction' or '... (aborted)'): a server connection left dirty."""
    return [b for b in backends(monitor, datname, include_monitors=True)
            if b.state.startswith("idle in transaction")]


def wait_no_backends(monitor, datname, usename=None, timeout=15):
    """Wait until no (leftover) backend of an earlier pgring is connected to `datname`."""
    wait_until(lambda: count_backends(monitor, datname, usename) == 0, timeout,
               what=f"no leftover backends on database {datname}",
               describe=lambda: backends(monitor, datname, usename))


def wait_backend_gone(monitor, pid, timeout=15):
    """Wait until the backend with `pid` has exited."""
    wait_until(lambda: pid not in {b.pid for b in backends(monitor, include_monitors=True)},
               timeout, what=f"backend {pid} to exit")


class BackendSampler:
    """Samples count_backends() from its own monitor connection every `interval` seconds while
    the `with` block runs:  with BackendSampler("app") as s: ...;  then s.max, s.samples."""

    def __init__(self, datname, usename=None, interval=0.02, settle=False):
        self.datname, self.usename, self.interval = datname, usename, interval
        self.settle = settle
        self.samples = []
        self.errors = []
        self._stop = threading.Event()
        self._monitor = monitor_connect()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(count_backends(self._monitor, self.datname, self.usename))
            except Exception as e:  # noqa: BLE001 - reported by check_max()
                self.errors.append(str(e))
                return
            time.sleep(self.interval)

    @property
    def max(self):
        return max(self.samples) if self.samples else 0

    def check_max(self, limit, what="server connections"):
        check(not self.errors, f"sampling pg_stat_activity failed: {self.errors}")
        check(self.samples, "no pg_stat_activity samples taken")
        check(self.max <= limit, f"saw {self.max} {what} on database {self.datname} "
                                 f"(limit {limit}) over {len(self.samples)} samples")

    def __enter__(self):
        # settle=True: backends of an earlier pgring may still be exiting (slowly on a loaded
        # machine); sample only once they are gone, so the limit is this pgring's alone. Only
        # for a sampler started before this pgring opened any server connection.
        if self.settle:
            wait_no_backends(self._monitor, self.datname, self.usename)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self._monitor.close()
        return False
