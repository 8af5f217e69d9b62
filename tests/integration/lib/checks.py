"""Checks, failures and skips, waiting and polling, threads, and the test runner."""

import faulthandler
import os
import sys
import threading
import time
import traceback

__all__ = ["TestFailure", "Skip", "fail", "check", "check_eq", "skip", "skip_test", "log",
           "wait_until", "run_with_timeout", "sqlstate_of", "run_clients", "Background",
           "Stopwatch", "percentile", "run_tests"]


class TestFailure(AssertionError):
    """A failed check; raised by the helpers below (any exception fails a test)."""


class Skip(Exception):
    """Raised by skip_test(): this one test is skipped, the others still run."""


def fail(message):
    raise TestFailure(message)


def check(condition, message="check failed"):
    if not condition:
        raise TestFailure(message)


def check_eq(actual, expected, what="value"):
    if actual != expected:
        raise TestFailure(f"{what}: expected {expected!r}, got {actual!r}")


def skip(reason):
    """Skip the whole program (every test in it): exit 77."""
    print(f"SKIP: {reason}", flush=True)
    sys.exit(77)


def skip_test(reason):
    """Skip only the current test."""
    raise Skip(reason)


def log(message):
    print(message, flush=True)


def wait_until(predicate, timeout, interval=0.1, what="condition", describe=None):
    """Poll predicate() until it returns a true value; return that value or fail after timeout.
    An exception from predicate() counts as "not yet". `describe`, if given, is called on
    timeout and its result (the state last seen) goes into the failure message."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last_error = None
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            if describe is not None:
                try:
                    detail += f"; last seen: {describe()}"
                except Exception as e:  # noqa: BLE001 - only for the message
                    detail += f"; (describing the state failed: {e})"
            fail(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


def run_with_timeout(fn, seconds, what="operation"):
    """Run fn() in a thread; return its result, re-raise its exception, or fail if it is still
    running after `seconds` (a hang). Use for calls that block inside libpq, which a SIGALRM
    cannot interrupt."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        fail(f"{what} hung: no result after {seconds}s")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def sqlstate_of(error):
    """The SQLSTATE of an exception from psycopg2, asyncpg or this harness, else None."""
    for attr in ("pgcode", "sqlstate"):
        code = getattr(error, attr, None)
        if code:
            return code
    return None


def run_clients(fn, count, timeout=120, what="client"):
    """Run fn(i) for i in range(count), each in its own thread, and wait for all (failing the
    test if one is still running after `timeout` s). Returns the list of error strings."""
    errors = []
    lock = threading.Lock()

    def target(i):
        try:
            fn(i)
        except Exception as e:  # noqa: BLE001 - collected for the caller
            with lock:
                errors.append(f"{what} {i}: {type(e).__name__} (SQLSTATE {sqlstate_of(e)}): "
                              f"{str(e).strip()}")

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = sum(1 for t in threads if t.is_alive())
    if hung:
        fail(f"{hung} of {count} {what}s still running after {timeout}s; errors so far: {errors}")
    return errors


class Background:
    """Run fn() in a daemon thread; .result(timeout) returns its value or re-raises its error,
    failing the test if it has not finished by then. .done() tells whether it finished."""

    def __init__(self, fn):
        self._out = {}
        self._finished = threading.Event()

        def target():
            try:
                self._out["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed to result()
                self._out["error"] = e
            finally:
                self._finished.set()

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def done(self):
        return self._finished.is_set()

    def result(self, timeout=30, what="background operation"):
        if not self._finished.wait(timeout):
            fail(f"{what} did not finish within {timeout}s")
        if "error" in self._out:
            raise self._out["error"]
        return self._out.get("value")


def run_tests(namespace, timeout=240):
    """Run every function named test_* in `namespace` (pass globals()) in definition order.
    Command-line arguments, if any, select tests by name. Prints PASS/FAIL/SKIP per test and a
    summary; exits 0 when all ran tests passed, 1 otherwise, 77 when every test was skipped.
    A test still running after `timeout` seconds aborts the program with a traceback dump."""
    tests = [(name, fn) for name, fn in namespace.items()
             if name.startswith("test_") and callable(fn)]
    selected = sys.argv[1:]
    if selected:
        unknown = set(selected) - {name for name, _ in tests}
        if unknown:
            print(f"unknown tests: {', '.join(sorted(unknown))}", flush=True)
            sys.exit(1)
        tests = [(n, f) for n, f in tests if n in selected]
    program = os.path.basename(sys.argv[0])
    passed, failed, skipped = [], [], []
    for name, fn in tests:
        print(f"----- {program}: {name}", flush=True)
        # A hang inside C code (libpq) cannot be interrupted; dump every thread and exit.
        faulthandler.dump_traceback_later(timeout, exit=True)
        started = time.monotonic()
        try:
            fn()
        except Skip as e:
            skipped.append(name)
            print(f"SKIP {name}: {e}", flush=True)
        except Exception:  # noqa: BLE001 - any exception is a failure
            failed.append(name)
            traceback.print_exc(file=sys.stdout)
            print(f"FAIL {name} ({time.monotonic() - started:.1f}s)", flush=True)
        else:
            passed.append(name)
            print(f"PASS {name} ({time.monotonic() - started:.1f}s)", flush=True)
        finally:
            faulthandler.cancel_dump_traceback_later()
    summary = f"{program}: {len(passed)} passed, {len(failed)} failed"
    if skipped:
        summary += f", {len(skipped)} skipped"
    print(summary, flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", flush=True)
        sys.exit(1)
    if tests and len(skipped) == len(tests):
        sys.exit(77)
    sys.exit(0)


class Stopwatch:
    def __init__(self):
        self.started = time.monotonic()

    def elapsed(self):
        return time.monotonic() - self.started


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]
