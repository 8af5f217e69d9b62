#!/usr/bin/env python3
"""Records and reports loadtest/run.sh results (Python 3 standard library only).

  report.py record RAW.jsonl key=value...     append one run (parses pgbench output and its -l logs)
  report.py ingest RAW.jsonl DIR              record every file of DIR in name order; each holds
                                              NUL-terminated key=value arguments (later keys win)
  report.py render RAW.jsonl OUTDIR WORKDIR   write OUTDIR/README.md, raw.jsonl and the SVG charts

Special keys of `record`:
  pgbench_out=FILE   pgbench's output: tps, transactions, failures, connection time, first error
  latlog=PREFIX      pgbench -l files PREFIX.*: p50/p99/max latency (ms); the files are deleted
  cpu_ticks=N clk_tck=HZ   proxy CPU over the run, turned into microseconds (per transaction)
  loadgen=LINE, idle_done=LINE   key=value lines printed by loadgen
"""

import glob
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys

TARGETS = ["direct", "pgring", "pgbouncer", "haproxy"]
PROXIES = ["pgring", "pgbouncer", "haproxy"]
NAMES = {"direct": "direct PostgreSQL", "pgring": "pgring", "pgbouncer": "PgBouncer", "haproxy": "HAProxy (TCP)"}
COLORS = {"direct": "#7f7f7f", "pgring": "#1f77b4", "pgbouncer": "#ff7f0e", "haproxy": "#2ca02c"}
MODES = ["simple", "extended", "prepared"]
CLIENTS = [1, 8, 64, 256]


def num(v):
    if isinstance(v, str):
        if re.fullmatch(r"-?\d+", v):
            return int(v)
        if re.fullmatch(r"-?\d+\.\d*(e-?\d+)?", v):
            return float(v)
    return v


def kv_line(line):
    """Parses 'word k=v k="quoted v" ...' as printed by loadgen."""
    out = {}
    if not line:
        return out
    try:
        parts = shlex.split(line)
    except ValueError:
        parts = line.split()
    for p in parts[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            out[k] = num(v)
    return out


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(p / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def parse_pgbench(path, rec):
    try:
        text = open(path, errors="replace").read()
    except OSError:
        return
    m = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", text, re.M)
    rec["tps"] = float(m.group(1)) if m else None
    m = re.search(r"number of transactions actually processed: (\d+)", text)
    rec["txns"] = int(m.group(1)) if m else 0
    m = re.search(r"number of failed transactions: (\d+)", text)
    rec["failed"] = int(m.group(1)) if m else 0
    m = re.search(r"initial connection time = ([\d.]+) ms", text)
    rec["conn_ms"] = float(m.group(1)) if m else None
    errs = [l.strip() for l in text.splitlines() if re.search(r"error|abort", l, re.I)]
    if errs:
        rec["error"] = errs[0][:300]
    m = re.search(r"number of clients aborted: (\d+)", text)
    if m:
        rec["aborted"] = int(m.group(1))


def parse_latlog(prefix, rec):
    lat = []
    files = glob.glob(glob.escape(prefix) + ".*")
    for f in files:
        with open(f) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
        os.unlink(f)
    lat.sort()
    rec["lat_n"] = len(lat)
    if lat:
        rec["p50_ms"] = percentile(lat, 50) / 1000.0
        rec["p99_ms"] = percentile(lat, 99) / 1000.0
        rec["max_ms"] = lat[-1] / 1000.0


def cmd_record(raw, args):
    rec = {}
    for a in args:
        k, v = a.split("=", 1)
        rec[k] = num(v)
    if "pgbench_out" in rec:
        parse_pgbench(rec.pop("pgbench_out"), rec)
    if "latlog" in rec:
        parse_latlog(rec.pop("latlog"), rec)
    for k in ("loadgen", "idle_done"):
        if k in rec:
            rec[k] = kv_line(str(rec[k]))
    if "pg_cpu_ticks" in rec:
        pg_us = rec.pop("pg_cpu_ticks") * 1e6 / rec["clk_tck"]
        if rec.get("txns"):
            rec["pg_cpu_us_per_txn"] = pg_us / rec["txns"]
    if "cpu_ticks" in rec:
        us = rec.pop("cpu_ticks") * 1e6 / rec.pop("clk_tck")
        if rec.get("proxy") == 1:
            rec["cpu_us"] = us
            if rec.get("txns"):
                rec["cpu_us_per_txn"] = us / rec["txns"]
    rec.setdefault("status", "ok")
    if rec["status"] == "n/a":
        pass
    elif rec.get("rc", 0) != 0 or rec.get("aborted") or (rec.get("scenario") != "storm" and "tps" in rec and rec["tps"] is None):
        rec["status"] = "error"
    if rec["status"] == "error" and "txns" in rec and not rec.get("txns") and not rec.get("error"):
        rec["error"] = "no transaction completed within -T"
    if rec.get("idle_done") and rec["idle_done"].get("dropped", 0) != 0:
        rec["status"] = "error"
    if rec.get("scenario") == "storm" and rec["status"] != "n/a":
        lg = rec.get("loadgen", {})
        if not lg or lg.get("failed", 1) != 0 or lg.get("complete") != 1:
            rec["status"] = "error"
    with open(raw, "a") as fh:
        fh.write(json.dumps(rec) + "\n")


def cmd_ingest(raw, recdir):
    open(raw, "w").close()
    for name in sorted(os.listdir(recdir)):
        with open(os.path.join(recdir, name)) as fh:
            args = [a for a in fh.read().split("\0") if a]
        cmd_record(raw, args)


# ------------------------------------------------------------------------------------------------
# Rendering


class Stat:
    """Median with min-max over the rounds of one (scenario, target)."""

    def __init__(self, vals):
        self.vals = [v for v in vals if v is not None]

    def __bool__(self):
        return bool(self.vals)

    @property
    def med(self):
        return statistics.median(self.vals) if self.vals else None

    @property
    def lo(self):
        return min(self.vals) if self.vals else None

    @property
    def hi(self):
        return max(self.vals) if self.vals else None

    def fmt(self, f, spread=True):
        if not self.vals:
            return "–"
        s = f(self.med)
        if spread and len(self.vals) > 1:
            s += f" ({f(self.lo)}–{f(self.hi)})"
        return s


def f0(v):
    return f"{v:,.0f}"


def f1(v):
    return f"{v:.1f}"


def f2(v):
    return f"{v:.2f}"


def f3(v):
    return f"{v:.3f}"


def scenario_label(sc):
    if sc.startswith("select-"):
        _, mode, c = sc.split("-")
        return f"select-only -M {mode}, {c} client{'s' if c != '1' else ''}"
    if sc.startswith("tpcb-"):
        return f"TPC-B-like, {sc.split('-')[1]} clients"
    return sc


class Results:
    def __init__(self, raw):
        self.recs = [json.loads(l) for l in open(raw) if l.strip()]
        self.targets = [t for t in TARGETS if any(r["target"] == t for r in self.recs)]
        self.scenarios = []
        for r in self.recs:
            if r["scenario"] not in self.scenarios:
                self.scenarios.append(r["scenario"])

    def runs(self, sc, t):
        return [r for r in self.recs if r["scenario"] == sc and r["target"] == t]

    def na(self, sc, t):
        rs = self.runs(sc, t)
        return bool(rs) and all(r.get("status") == "n/a" for r in rs)

    def errors(self, sc, t):
        return sum(1 for r in self.runs(sc, t) if r.get("status") == "error")

    def stat(self, sc, t, key, sub=None, ok_only=True):
        vals = []
        for r in self.runs(sc, t):
            if r.get("status") == "n/a" or (ok_only and r.get("status") == "error"):
                continue
            v = r.get(sub, {}).get(key) if sub else r.get(key)
            if isinstance(v, (int, float)):
                vals.append(v)
        return Stat(vals)

    def cell(self, sc, t, key, f, sub=None, spread=True):
        if not self.runs(sc, t):
            return " "
        if self.na(sc, t):
            return "n/a"
        s = self.stat(sc, t, key, sub)
        text = s.fmt(f, spread)
        e = self.errors(sc, t)
        if e:
            text += f" **ERR×{e}**"
        return text


def md_table(header, rows, left=1):
    """Markdown table; the first `left` columns are left-aligned, the others right-aligned."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < left else "--:" for i in range(len(header))) + "|"]
    for r in rows:
        out.append("| " + " | ".join(r) + " |")
    return "\n".join(out)


def ratio(a, b, f=f2):
    if a is None or b is None or b == 0:
        return "–"
    return f(a / b) + "×"


def render(raw, outdir, work):
    res = Results(raw)
    meta = {}
    for line in open(os.path.join(work, "meta.txt")):
        if "\t" in line:
            k, v = line.rstrip("\n").split("\t", 1)
            meta[k] = v
    commands = open(os.path.join(work, "commands.txt")).read().rstrip()
    notes = open(os.path.join(work, "notes.txt")).read().rstrip()
    try:
        pgring_log = open(os.path.join(work, "pgring-log-excerpt.txt")).read().rstrip()
    except OSError:
        pgring_log = ""
    tls = meta.get("tls") == "on"
    if tls:
        # Every target's name in the tables and charts says the clients spoke TLS to it.
        for t in TARGETS:
            NAMES[t] += " + tls"
    T = res.targets
    P = [t for t in PROXIES if t in T]
    pgb = [s for s in res.scenarios if s.startswith(("select-", "tpcb-"))]
    idle_n = meta.get("idle_n", "10000")
    storm_n = meta.get("storm_n", "5000")

    os.makedirs(outdir, exist_ok=True)
    made = charts(res, outdir, os.path.join(work, "plots"), meta)

    def img(name, alt):
        return f"\n![{alt}]({name})\n" if name in made else ""

    md = []
    md.append("# pgring benchmarks" + (" (client TLS)" if tls else "") + "\n")
    md.append(
        f"Generated by `{meta.get('command')}` ({meta.get('mode')} mode) on {meta.get('date')}, "
        f"in {int(meta.get('elapsed_s', 0)) // 60} min {int(meta.get('elapsed_s', 0)) % 60} s. "
        f"{meta.get('rounds')} rounds; each pgbench run lasts {meta.get('duration')} s. Every figure is the "
        "**median over the rounds, with the min–max spread in parentheses**. Targets were interleaved "
        "round by round (each scenario ran against every target in turn before the next scenario). "
        "How to run and profile: [loadtest/README.md](../../loadtest/README.md).\n"
    )
    md.append(
        "**client TLS: on** — every client (pgbench, psql, loadgen) connected with `sslmode=require`: pgring "
        "(`tls.client.mode: require`) and PgBouncer (`client_tls_sslmode = require`) terminate TLS with a "
        "throwaway RSA-2048 certificate (`scripts/gen-test-certs.sh`); direct PostgreSQL (and HAProxy, "
        "which relays the bytes to it) with the cluster's own (`ssl = on`). The connections "
        "from the poolers to PostgreSQL are plain TCP. Target names carry `+ tls`.\n"
        if tls else
        "client TLS: off (`sslmode=disable` for every client; `--tls` measures with TLS).\n"
    )
    md.append("## Machine and versions\n")
    md.append(md_table(["", ""], [
        ["CPU", f"{meta.get('cpu')} — {meta.get('nproc')} CPUs (`nproc`)"],
        ["Memory", meta.get("memory", "")],
        ["Kernel / OS", f"{meta.get('kernel')} / {meta.get('os')}"],
        ["Load average before / after", f"{meta.get('loadavg_before')} / {meta.get('loadavg_after')} (the machine is shared: other load skews absolute numbers; the interleaving keeps comparisons fair)"],
        ["pgring", f"{meta.get('pgring')} — `git describe` and build type"],
        ["PgBouncer", meta.get("pgbouncer", "")],
        ["HAProxy", meta.get("haproxy", "")],
        ["PostgreSQL", meta.get("postgres", "")],
        ["pgbench", meta.get("pgbench", "")],
        ["Open files limit", meta.get("nofile", "")],
        ["Client TLS", "on (sslmode=require, every target)" if tls else "off"],
    ], left=2))
    md.append("")
    md.append(
        "Everything runs on 127.0.0.1 on the same machine as the load generators. pgring has `workers: 1`, "
        "PgBouncer is single-threaded and HAProxy has `nbthread 1`: each proxy gets one core at most. "
        f"Pooling: transaction mode, pool size {meta.get('pool_size')} for pgring and PgBouncer; HAProxy has "
        "no pool (each client gets its own server connection: it is the floor, the cost of a bare proxy hop). "
        f"Authentication: `{meta.get('auth')}` for every target and for PostgreSQL itself. pgbench scale "
        f"{meta.get('scale')}, `-j 2` (`-j 1` for one client), per-transaction logs (`-l`) for the latency "
        "percentiles. **Proxy CPU** is utime+stime of the proxy process (all threads, `/proc/PID/stat`) over "
        "the whole pgbench run, connection set-up included, divided by the transactions pgbench completed. "
        "**RSS** is VmRSS of the proxy after the run.\n"
    )

    # Throughput
    md.append("## Throughput (transactions per second)\n")
    rows = []
    for sc in pgb:
        row = [scenario_label(sc)] + [res.cell(sc, t, "tps", f0) for t in T]
        pr = res.stat(sc, "pgring", "tps").med
        row.append(ratio(pr, res.stat(sc, "pgbouncer", "tps").med) if "pgbouncer" in T and not res.na(sc, "pgbouncer") else "–")
        row.append(ratio(pr, res.stat(sc, "direct", "tps").med) if "direct" in T else "–")
        rows.append(row)
    md.append(md_table(["scenario"] + [NAMES[t] for t in T] + ["pgring / PgBouncer", "pgring / direct"], rows))
    md.append(img("tps_select.svg", "TPS, select-only") + img("tps_tpcb.svg", "TPS, TPC-B-like"))

    # Latency
    md.append("## Latency: p50 / p99 (ms)\n")
    rows = []
    for sc in pgb:
        row = [scenario_label(sc)]
        for t in T:
            if res.na(sc, t):
                row.append("n/a")
                continue
            a, b = res.stat(sc, t, "p50_ms"), res.stat(sc, t, "p99_ms")
            c = f"{a.fmt(f3, False)} / {b.fmt(f3, False)}" if a else "–"
            if res.errors(sc, t):
                c += f" **ERR×{res.errors(sc, t)}**"
            row.append(c)
        rows.append(row)
    md.append(md_table(["scenario"] + [NAMES[t] for t in T], rows))
    md.append(img("latency_select.svg", "p99 latency, select-only"))

    # Latency added over a direct connection, where a sidecar lives: one client.
    one = [s for s in pgb if s.startswith("select-") and s.endswith("-1")]
    if one and "direct" in T and P:
        md.append("## Latency added per round trip at 1 client: p50 / p99 over direct PostgreSQL (µs)\n")
        rows = []
        for sc in one:
            d50, d99 = res.stat(sc, "direct", "p50_ms").med, res.stat(sc, "direct", "p99_ms").med
            row = [scenario_label(sc)]
            for t in P:
                a, b = res.stat(sc, t, "p50_ms").med, res.stat(sc, t, "p99_ms").med
                if res.na(sc, t) or None in (a, b, d50, d99):
                    row.append("–")
                else:
                    row.append(f"{(a - d50) * 1000:+.0f} / {(b - d99) * 1000:+.0f}")
            rows.append(row)
        md.append(md_table(["scenario"] + [NAMES[t] for t in P], rows))

    # PostgreSQL's own CPU: a proxy that makes the server work harder costs more than its own CPU.
    if any(res.stat(sc, t, "pg_cpu_us_per_txn") for sc in pgb for t in T):
        md.append("## PostgreSQL CPU per transaction (µs)\n")
        md.append("utime+stime of the postmaster and all its children (exited ones through the "
                  "postmaster's cutime/cstime) over the run, divided by the transactions.\n")
        rows = []
        for sc in pgb:
            row = [scenario_label(sc)] + [res.cell(sc, t, "pg_cpu_us_per_txn", f1) for t in T]
            if "pgbouncer" in T and "pgring" in T and not res.na(sc, "pgbouncer"):
                row.append(ratio(res.stat(sc, "pgring", "pg_cpu_us_per_txn").med,
                                 res.stat(sc, "pgbouncer", "pg_cpu_us_per_txn").med))
            else:
                row.append("–")
            rows.append(row)
        md.append(md_table(["scenario"] + [NAMES[t] for t in T] + ["via pgring / via PgBouncer"], rows))

    # CPU
    if P:
        md.append("## Proxy CPU per transaction (µs)\n")
        rows = []
        for sc in pgb + (["idle"] if "idle" in res.scenarios else []):
            label = scenario_label(sc) if sc != "idle" else f"select-only -M simple, 8 clients, {idle_n} idle clients held"
            row = [label] + [res.cell(sc, t, "cpu_us_per_txn", f1) for t in P]
            if "pgbouncer" in P and "pgring" in P:
                row.append(ratio(res.stat(sc, "pgring", "cpu_us_per_txn").med, res.stat(sc, "pgbouncer", "cpu_us_per_txn").med) if not res.na(sc, "pgbouncer") else "–")
            rows.append(row)
        hdr = ["scenario"] + [NAMES[t] for t in P] + (["pgring / PgBouncer"] if "pgbouncer" in P and "pgring" in P else [])
        md.append(md_table(hdr, rows))
        md.append(img("cpu_per_txn.svg", "Proxy CPU per transaction"))

    # System calls per transaction (separate runs under perf stat, not the timed ones).
    sys_sc = [sc for sc in res.scenarios if sc.startswith("syscalls-")]
    if sys_sc and P:
        md.append("## System calls per transaction (separate runs, `perf stat`)\n")
        md.append("Counted on the syscall tracepoints of the proxy's threads (`raw_syscalls:sys_enter`; "
                  "for pgring `io_uring_enter` is the ring's wake-up) and of the pool's PostgreSQL "
                  "backends, in a run of its own per case. pgring's ring counters come from its "
                  "`/metrics` (`pgring_io_uring_*`, `pgring_socket_sends_total`).\n")
        rows = []
        for sc in sys_sc:
            for t in P:
                rs = [r for r in res.runs(sc, t) if r.get("txns")]
                if not rs:
                    continue
                r = rs[-1]
                n = r["txns"]
                def per(key):
                    v = r.get(key)
                    return f"{v / n:.2f}" if isinstance(v, (int, float)) else "–"
                rows.append([scenario_label(sc[len("syscalls-"):]), NAMES[t], per("syscalls"),
                             per("io_uring_enter") if t == "pgring" else per("epoll_wait"),
                             per("sendto"), per("recvfrom"), per("pg_syscalls") if t != "haproxy" else "–",
                             per("sends_to_server"), per("sends_to_client")])
        md.append(md_table(["scenario", "proxy", "proxy syscalls", "io_uring_enter / epoll_wait",
                            "sendto", "recvfrom", "PostgreSQL backends' syscalls",
                            "pgring sends to server", "pgring sends to client"], rows, left=2))

        # Memory
        md.append("## Proxy memory (RSS)\n")
        rows = []
        for t in P:
            vals = [r["rss_kib"] for r in res.recs if r["target"] == t and r["scenario"] in pgb and r.get("rss_kib")]
            rows.append([NAMES[t], f"{min(vals) / 1024:.1f}–{max(vals) / 1024:.1f}" if vals else "–"])
        md.append(md_table(["proxy", "VmRSS after the pgbench runs, min–max (MiB)"], rows))
        md.append("")

    # Idle
    if "idle" in res.scenarios:
        md.append(f"## {idle_n} idle clients\n")
        md.append(
            f"The proxy is restarted and warmed up (a 1 s pgbench at {meta.get('pool_size')} clients), its RSS is "
            f"read, then `loadgen idle` logs {idle_n} clients in (500 logins in flight), runs `SELECT 1` once on "
            f"each and keeps them idle; 1 s later the RSS is read again and 8 clients run `pgbench -S -M simple` "
            f"for {meta.get('duration')} s while the idle ones are held. *Per idle client* = (RSS with the idle "
            f"clients − RSS before) / {idle_n}. The latency ratios compare with the same target's 8-client "
            "`select-only -M simple` run of the same round (no idle clients). Direct PostgreSQL and HAProxy "
            f"cannot hold {idle_n} clients: each would need its own backend (max_connections 400).\n"
        )
        rows = []
        for t in T:
            if res.na("idle", t):
                rows.append([NAMES[t]] + ["n/a"] * 9)
                continue
            per = []
            p50r, p99r = [], []
            for r in res.runs("idle", t):
                if r.get("rss_idle_kib") and r.get("rss_before_kib") is not None:
                    per.append((r["rss_idle_kib"] - r["rss_before_kib"]) * 1024.0 / int(idle_n))
                base = [b for b in res.runs("select-simple-8", t) if b["round"] == r["round"] and b.get("status") == "ok"]
                if base and r.get("p50_ms") and base[0].get("p50_ms"):
                    p50r.append(r["p50_ms"] / base[0]["p50_ms"])
                    p99r.append(r["p99_ms"] / base[0]["p99_ms"])
            dropped = sum(r.get("idle_done", {}).get("dropped", 0) for r in res.runs("idle", t))
            failed = sum(r.get("loadgen", {}).get("failed", 0) for r in res.runs("idle", t))
            rows.append([
                NAMES[t] + (f" **ERR×{res.errors('idle', t)}**" if res.errors("idle", t) else ""),
                res.stat("idle", t, "rss_before_kib", ok_only=False).fmt(lambda v: f"{v / 1024:.1f}", False),
                res.stat("idle", t, "rss_idle_kib", ok_only=False).fmt(lambda v: f"{v / 1024:.1f}", False),
                Stat(per).fmt(f0),
                res.stat("idle", t, "seconds", sub="loadgen", ok_only=False).fmt(f2),
                res.cell("idle", t, "tps", f0, spread=False),
                f"{res.stat('idle', t, 'p50_ms').fmt(f3, False)} / {res.stat('idle', t, 'p99_ms').fmt(f3, False)}",
                f"{Stat(p50r).fmt(f2, False)} / {Stat(p99r).fmt(f2, False)}",
                res.cell("idle", t, "cpu_us_per_txn", f1, spread=False),
                f"{failed} / {dropped}",
            ])
        md.append(md_table(["target", "RSS before (MiB)", f"RSS with {idle_n} idle (MiB)", "per idle client (bytes)",
                            f"{idle_n} logins (s)", "active TPS", "active p50 / p99 (ms)",
                            "p50 / p99 vs no idle clients", "proxy CPU µs/txn", "logins failed / idle dropped"], rows))
        md.append("")

    # Storm
    if "storm" in res.scenarios:
        md.append(f"## Connection storm: {storm_n} clients at once\n")
        md.append(
            f"The proxy is restarted and warmed up, then `loadgen storm` starts {storm_n} connections at once "
            "(non-blocking libpq, one epoll loop); each logs in and runs `SELECT 1`. *Time* runs from the first "
            "connect until the last client has its result; per-client times run from that client's connect. "
            "All connections stay open until the last is done. Proxy CPU is per login (total over the storm / "
            "clients).\n"
        )
        rows = []
        for t in T:
            if res.na("storm", t):
                rows.append([NAMES[t]] + ["n/a"] * 5)
                continue
            failed = sum(r.get("loadgen", {}).get("failed", 0) for r in res.runs("storm", t))
            runs = res.runs("storm", t)
            done = [r for r in runs if r.get("loadgen", {}).get("complete") == 1]
            hung = [r.get("loadgen", {}) for r in runs if r.get("loadgen", {}).get("complete") != 1]
            time_cell = Stat([r["loadgen"]["seconds"] for r in done]).fmt(f2)
            if hung:
                oks = [h.get("ok", 0) for h in hung]
                time_cell = (f"**did not finish** in {len(hung)} of {len(runs)} rounds: "
                             f"{min(oks)}–{max(oks)} of {storm_n} clients done when loadgen gave up after "
                             f"{meta.get('storm_timeout', '?')} s" + (f"; other rounds {time_cell}" if done else ""))
            per_login = Stat([r["cpu_us"] / int(storm_n) for r in res.runs("storm", t) if r.get("cpu_us") is not None])
            rows.append([
                NAMES[t] + (f" **ERR×{res.errors('storm', t)}**" if res.errors("storm", t) else ""),
                time_cell,
                f"{Stat([r['loadgen']['p50_ms'] for r in done]).fmt(f1, False)} / "
                f"{Stat([r['loadgen']['p99_ms'] for r in done]).fmt(f1, False)}",
                str(failed),
                per_login.fmt(f1),
                res.stat("storm", t, "rss_kib", ok_only=False).fmt(lambda v: f"{v / 1024:.1f}", False),
            ])
        md.append(md_table(["target", "time until all ran SELECT 1 (s)", "per client p50 / p99 (ms)",
                            "failed clients", "proxy CPU per login (µs)", "RSS after (MiB)"], rows))
        md.append(img("idle_storm.svg", "Idle clients and connection storm"))

    md.append(design_targets(res, meta))

    md.append("## Problems seen during the run\n")
    md.append("Errors and notes recorded by run.sh (pgbench errors, proxy exits, failed or dropped clients):\n")
    md.append("```\n" + (notes or "(none)") + "\n```\n")
    md.append("pgring's log (level warning), first lines:\n")
    md.append("```\n" + (pgring_log or "(empty)") + "\n```\n")

    md.append("## Exact commands\n")
    md.append("Set-up and round 1 (every round repeats the runs; pgring and PgBouncer are restarted at the start "
              "of each round and before the idle and storm scenarios, each time followed by a 1 s warm-up "
              f"`pgbench -n -S -c {meta.get('pool_size')} -j 2 -T 1`). Environment: `PGPASSWORD=bench "
              f"PGSSLMODE={meta.get('sslmode', 'disable')} PGGSSENCMODE=disable PGUSER=bench PGDATABASE=bench`; paths under /tmp are the "
              "run's temporary directory.\n")
    md.append("```sh\n" + commands + "\n```\n")
    for name, fn, lang in (("pgring.yaml", "pgring.yaml", "yaml"), ("pgbouncer.ini", "pgbouncer.ini", "ini"),
                           ("haproxy.cfg", "haproxy.cfg", "")):
        try:
            txt = open(os.path.join(work, fn)).read().rstrip()
        except OSError:
            continue
        md.append(f"<details><summary>{name}</summary>\n\n```{lang}\n{txt}\n```\n</details>\n")
    md.append("PostgreSQL: `scripts/pg-throwaway.sh` settings (max_connections 400, fsync off, "
              "synchronous_commit off, shared_buffers 128MB); role `bench` (password `bench`, "
              f"{meta.get('auth')}) owning database `bench`; `host all bench 127.0.0.1/32 {meta.get('auth')}` "
              "prepended to pg_hba.conf.\n")
    md.append("Raw per-run records: [raw.jsonl](raw.jsonl).\n")

    with open(os.path.join(outdir, "README.md"), "w") as fh:
        fh.write("\n".join(md))
    if os.path.abspath(raw) != os.path.abspath(os.path.join(outdir, "raw.jsonl")):
        with open(os.path.join(outdir, "raw.jsonl"), "w") as fh:
            fh.write(open(raw).read())


def design_targets(res, meta):
    """The project's performance targets, checked against this run."""
    rows = []

    def add(goal, measured, ok):
        rows.append([goal, measured, "–" if ok is None else ("met" if ok else "**missed**")])

    for c in CLIENTS:
        sc = f"select-simple-{c}"
        a, b = res.stat(sc, "pgring", "cpu_us_per_txn").med, res.stat(sc, "pgbouncer", "cpu_us_per_txn").med
        if a is not None and b is not None:
            add(f"CPU per transaction ≤ ½ PgBouncer's ({scenario_label(sc)})",
                f"{a:.1f} vs {b:.1f} µs ({a / b:.2f}×)", a <= 0.5 * b)
    for sc in [s for s in res.scenarios if s.endswith(("-64", "-256")) and not s.startswith("select-prepared")]:
        a, b = res.stat(sc, "pgring", "tps").med, res.stat(sc, "pgbouncer", "tps").med
        if a is not None and b is not None:
            add(f"TPS above PgBouncer's ({scenario_label(sc)})", f"{a:,.0f} vs {b:,.0f} ({a / b:.2f}×)", a > b)
    for sc in [s for s in res.scenarios if s.endswith("-256")]:
        a, b = res.stat(sc, "pgring", "tps").med, res.stat(sc, "direct", "tps").med
        if a is not None and b is not None:
            add(f"TPS above direct PostgreSQL's ({scenario_label(sc)})", f"{a:,.0f} vs {b:,.0f} ({a / b:.2f}×)", a > b)
    for c in CLIENTS:
        a, b = res.stat(f"select-prepared-{c}", "pgring", "tps").med, res.stat(f"select-extended-{c}", "pgring", "tps").med
        if a is not None and b is not None:
            add(f"through pgring, -M prepared faster than -M extended ({c} client{'s' if c > 1 else ''})", f"{a:,.0f} vs {b:,.0f} TPS ({a / b:.2f}×)", a > b)
    idle_n = int(meta.get("idle_n", 10000))
    per, p50r, p99r = [], [], []
    for r in res.runs("idle", "pgring"):
        if r.get("rss_idle_kib") and r.get("rss_before_kib") is not None:
            per.append((r["rss_idle_kib"] - r["rss_before_kib"]) * 1024.0 / idle_n)
        base = [b for b in res.runs("select-simple-8", "pgring") if b["round"] == r["round"] and b.get("status") == "ok"]
        if base and r.get("p50_ms") and base[0].get("p50_ms"):
            p50r.append(r["p50_ms"] / base[0]["p50_ms"])
            p99r.append(r["p99_ms"] / base[0]["p99_ms"])
    if per:
        m = statistics.median(per)
        add(f"{idle_n} idle clients: under 0.5 KiB of pgring memory each", f"{m:,.0f} bytes ({m / 1024:.2f} KiB)", m < 512)
    if p50r:
        a, b = statistics.median(p50r), statistics.median(p99r)
        add(f"with {idle_n} idle clients, the 8 active clients' p50 and p99 within 1.2× of those without",
            f"p50 {a:.2f}×, p99 {b:.2f}×", a < 1.2 and b < 1.2)
    add("multi-core: near-linear throughput with workers", "not measured by this suite (workers: 1)", None)
    out = ["## The project's performance targets, as measured in this run\n"]
    out.append(md_table(["target", "measured (medians)", "result"], rows) if rows else "(no pgring data)")
    out.append("")
    return "\n".join(out)


def gp_str(s):
    return '"' + s.replace('"', '\\"') + '"'


def charts(res, outdir, plotdir, meta):
    os.makedirs(plotdir, exist_ok=True)
    T = res.targets
    P = [t for t in PROXIES if t in T]
    common = 'set terminal svg size {w},{h} dynamic font "Helvetica,12" background "#ffffff"\nset key top left box opaque\nset grid ytics\nset datafile missing "NaN"\n'
    scripts = []

    def val(s, attr="med"):
        v = getattr(s, attr)
        return "NaN" if v is None else f"{v:.6g}"

    # Per (mode, target): clients, tps med/min/max, p99 med/min/max
    for mode in MODES:
        for t in T:
            with open(os.path.join(plotdir, f"sel-{mode}-{t}.dat"), "w") as fh:
                for c in CLIENTS:
                    sc = f"select-{mode}-{c}"
                    s, l = res.stat(sc, t, "tps"), res.stat(sc, t, "p99_ms")
                    if s:
                        fh.write(f"{c} {val(s)} {val(s, 'lo')} {val(s, 'hi')} {val(l)} {val(l, 'lo')} {val(l, 'hi')}\n")
    modes = [m for m in MODES if any(s.startswith(f"select-{m}-") for s in res.scenarios)]
    if modes:
        for kind, out, ylabel, cols, logy in (("tps", "tps_select.svg", "transactions per second", "1:2:3:4", False),
                                              ("lat", "latency_select.svg", "p99 latency (ms, log scale)", "1:5:6:7", True)):
            g = common.format(w=420 * len(modes), h=420)
            g += f'set output {gp_str(os.path.join(outdir, out))}\n'
            g += f"set multiplot layout 1,{len(modes)} title {gp_str(('Select-only pgbench (-S): ' + ('throughput' if kind == 'tps' else 'p99 latency')) + ', median and min-max over rounds')}\n"
            g += "set key below horizontal nobox\nset logscale x 2\nset xrange [0.7:370]\nset xtics (1, 8, 64, 256)\nset xlabel 'clients' offset 0,0.6\n"
            g += f"set ylabel {gp_str(ylabel)}\n" + ("set logscale y\n" if logy else "set yrange [0:*]\n")
            for m in modes:
                g += f"set title '-M {m}'\n"
                plots = []
                for t in T:
                    f = os.path.join(plotdir, f"sel-{m}-{t}.dat")
                    if os.path.getsize(f) == 0:
                        continue
                    plots.append(f"{gp_str(f)} using {cols} with yerrorlines lw 2 pt 7 lc rgb {gp_str(COLORS[t])} title {gp_str(NAMES[t])}")
                g += ("plot " + ", \\\n     ".join(plots) + "\n") if plots else "unset key\nset label 1 'no data' at graph 0.4,0.5\nplot NaN notitle\nunset label 1\nset key\n"
            g += "unset multiplot\n"
            scripts.append(g)

    # TPC-B bars
    tp = [s for s in res.scenarios if s.startswith("tpcb-")]
    if tp:
        f = os.path.join(plotdir, "tpcb.dat")
        with open(f, "w") as fh:
            for sc in tp:
                fh.write(gp_str(sc.split("-")[1] + " clients") + " " + " ".join(
                    f"{val(res.stat(sc, t, 'tps'))} {val(res.stat(sc, t, 'tps'), 'lo')} {val(res.stat(sc, t, 'tps'), 'hi')}" for t in T) + "\n")
        g = common.format(w=700, h=420) + f"set output {gp_str(os.path.join(outdir, 'tps_tpcb.svg'))}\n"
        g += "set title 'TPC-B-like pgbench (default script): throughput, median and min-max'\nset ylabel 'transactions per second'\nset yrange [0:*]\n"
        g += "set style data histogram\nset style histogram errorbars gap 1 lw 1\nset style fill solid 0.8 border -1\nset boxwidth 0.9\nset key outside top center horizontal nobox\n"
        g += "plot " + ", ".join(
            f"{gp_str(f)} using {3 * i + 2}:{3 * i + 3}:{3 * i + 4}{':xtic(1)' if i == 0 else ''} lc rgb {gp_str(COLORS[t])} title {gp_str(NAMES[t])}"
            for i, t in enumerate(T)) + "\n"
        scripts.append(g)

    # CPU per transaction bars
    cpu_sc = [s for s in res.scenarios if s.startswith(("select-", "tpcb-"))] + (["idle"] if "idle" in res.scenarios else [])
    if P and cpu_sc:
        f = os.path.join(plotdir, "cpu.dat")
        with open(f, "w") as fh:
            for sc in cpu_sc:
                if sc == "idle":
                    lab = "S simple c8 +idle"
                elif sc.startswith("tpcb-"):
                    lab = "TPC-B c" + sc.split("-")[1]
                else:
                    _, m, c = sc.split("-")
                    lab = f"S {m} c{c}"
                fh.write(gp_str(lab) + " " + " ".join(
                    f"{val(res.stat(sc, t, 'cpu_us_per_txn'))} {val(res.stat(sc, t, 'cpu_us_per_txn'), 'lo')} {val(res.stat(sc, t, 'cpu_us_per_txn'), 'hi')}" for t in P) + "\n")
        g = common.format(w=1300, h=480) + f"set output {gp_str(os.path.join(outdir, 'cpu_per_txn.svg'))}\n"
        g += "set title 'Proxy CPU time (user+system) per transaction, median and min-max (S = select-only -M mode, cN = N clients)'\nset ylabel 'µs per transaction'\nset yrange [0:*]\n"
        g += "set style data histogram\nset style histogram errorbars gap 1 lw 1\nset style fill solid 0.8 border -1\nset boxwidth 0.9\nset xtics rotate by 30 right\nset key outside top center horizontal nobox\n"
        g += "plot " + ", ".join(
            f"{gp_str(f)} using {3 * i + 2}:{3 * i + 3}:{3 * i + 4}{':xtic(1)' if i == 0 else ''} lc rgb {gp_str(COLORS[t])} title {gp_str(NAMES[t])}"
            for i, t in enumerate(P)) + "\n"
        scripts.append(g)

    # Idle + storm
    pooled = [t for t in ("pgring", "pgbouncer") if t in T]
    have_idle = "idle" in res.scenarios and any(res.runs("idle", t) for t in pooled)
    have_storm = "storm" in res.scenarios and any(res.runs("storm", t) for t in pooled)
    if pooled and (have_idle or have_storm):
        idle_n = int(meta.get("idle_n", 10000))
        f = os.path.join(plotdir, "idle_storm.dat")
        with open(f, "w") as fh:
            for i, t in enumerate(pooled):
                per = Stat([(r["rss_idle_kib"] - r["rss_before_kib"]) * 1024.0 / idle_n for r in res.runs("idle", t)
                            if r.get("rss_idle_kib") and r.get("rss_before_kib") is not None])
                st = Stat([r["loadgen"]["seconds"] for r in res.runs("storm", t)
                           if r.get("loadgen", {}).get("complete") == 1])
                fh.write(f"{i} {gp_str(NAMES[t])} {val(per)} {val(per, 'lo')} {val(per, 'hi')} {val(st)} {val(st, 'lo')} {val(st, 'hi')} {int(COLORS[t][1:], 16)}\n")
        n = int(have_idle) + int(have_storm)
        g = common.format(w=450 * n, h=420) + f"set output {gp_str(os.path.join(outdir, 'idle_storm.svg'))}\n"
        g += f"set bmargin 4\nset multiplot layout 1,{n}\nset style fill solid 0.8 border -1\nset boxwidth 0.6\nset yrange [0:*]\nset xrange [-0.6:{len(pooled) - 0.4}]\nunset key\n"
        if have_idle:
            g += f"set title 'Memory per idle client ({idle_n} idle)'\nset ylabel 'bytes of proxy RSS per idle client'\n"
            g += f"plot {gp_str(f)} using 1:3:(0.6):9:xtic(2) with boxes lc rgb variable, '' using 1:3:4:5 with yerrorbars lc rgb 'black' pt 7 ps 0.3\n"
        if have_storm:
            g += f"set title 'Connection storm: {meta.get('storm_n')} clients at once (finished rounds)'\nset ylabel 'seconds until all ran SELECT 1'\n"
            tics = []
            for i, t in enumerate(pooled):
                runs = res.runs("storm", t)
                hung = sum(1 for r in runs if r.get("loadgen", {}).get("complete") != 1)
                tics.append(gp_str(NAMES[t] + (f"\\n(did not finish in {hung} of {len(runs)} rounds)" if hung else "")) + f" {i}")
            g += f"set xtics ({', '.join(tics)})\n"
            g += f"plot {gp_str(f)} using 1:6:(0.6):9 with boxes lc rgb variable, '' using 1:6:7:8 with yerrorbars lc rgb 'black' pt 7 ps 0.3\n"
        g += "unset multiplot\n"
        scripts.append(g)

    made = set()
    for i, g in enumerate(scripts):
        path = os.path.join(plotdir, f"chart{i}.gp")
        with open(path, "w") as fh:
            fh.write(g)
        svg = re.search(r'set output "([^"]+)"', g).group(1)
        if os.path.exists(svg):
            os.unlink(svg)  # a stale chart from an earlier run must not survive a failure
        r = subprocess.run(["gnuplot", path], capture_output=True, text=True)
        if r.returncode != 0 or r.stderr.strip():
            sys.stderr.write(f"gnuplot {path}:\n{r.stderr}\n")
        if r.returncode == 0 and os.path.exists(svg):
            made.add(os.path.basename(svg))
    return made


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cmd, raw = sys.argv[1], sys.argv[2]
    if cmd == "record":
        cmd_record(raw, sys.argv[3:])
    elif cmd == "ingest" and len(sys.argv) == 4:
        cmd_ingest(raw, sys.argv[3])
    elif cmd == "render" and len(sys.argv) == 5:
        render(raw, sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
