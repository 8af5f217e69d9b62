#!/usr/bin/python3
"""The Grafana dashboard (contrib/grafana/pgring.json) drawn from a real run, without Grafana.

    scripts/dashboard-picture.py [--pgring build/pgring] [--out docs/dashboard.png] [--seconds 150]

What it does, all on 127.0.0.1 and cleaned up afterwards:
  1. a throwaway PostgreSQL (scripts/pg-throwaway.sh) with pgbench's tables;
  2. pgring in transaction mode (pool_size 4, query families on, TLS offered, /metrics);
  3. Debian's Prometheus scraping pgring every second;
  4. a mixed workload in phases: pgbench (point selects and TPC-B), then 24 clients on the four
     servers (clients wait), a steady trickle of division-by-zero errors, slow calls, TLS logins,
     a reload;
  5. every query of every panel, exactly as the dashboard has it ($instance and $database = all,
     $__rate_interval = 4 s), asked of Prometheus over the run (query_range), and drawn with
     gnuplot, one plot per panel in the dashboard's order and titles (series that stay at zero
     left out, at most the 8 with the highest peaks per panel).

Needs postgresql, pgbench and prometheus (scripts/deps.sh installs them) and gnuplot-nox (installed
here when missing, as loadtest/run.sh does).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "contrib", "grafana", "pgring.json")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(message):
    print(f"dashboard-picture: {message}", file=sys.stderr, flush=True)


def wait_port(port, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def prometheus_range(port, expr, start, end, step):
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query_range?{query}",
                                timeout=30) as r:
        answer = json.load(r)
    if answer.get("status") != "success":
        raise SystemExit(f"Prometheus refused {expr!r}: {answer}")
    return answer["data"]["result"]


def legend(fmt, labels):
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt or "")
    text = " ".join(text.split()) or json.dumps(labels)
    return text if len(text) <= 60 else text[:57] + "..."


def gnuplot_string(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


UNITS = {"s": "seconds", "reqps": "per second", "ops": "per second", "short": ""}


def draw(panels, series, out, seconds, work):
    """One plot per panel, two columns, as the dashboard lays them out."""
    rows = (len(panels) + 1) // 2
    script = [f"set terminal pngcairo size 1600,{rows * 400} font 'DejaVu Sans,9' noenhanced",
              f"set output {gnuplot_string(out)}",
              f"set multiplot layout {rows},2 title {gnuplot_string('pgring dashboard (contrib/grafana/pgring.json), drawn from a real run by scripts/dashboard-picture.py')}",
              "set key outside below maxrows 4 font ',8'",
              "set grid", "set xlabel 'seconds into the run'", f"set xrange [0:{seconds}]",
              "set yrange [0:*]", "set format y '%g'"]
    for i, panel in enumerate(panels):
        script.append(f"set title {gnuplot_string(panel['title'])}")
        script.append(f"set ylabel {gnuplot_string(UNITS.get(panel.get('unit', ''), ''))}")
        lines = []
        for j, (name, points) in enumerate(series[i]):
            path = os.path.join(work, f"panel-{i}-{j}.dat")
            with open(path, "w") as f:
                for t, v in points:
                    f.write(f"{t:.1f} {v}\n")
            lines.append(f"{gnuplot_string(path)} using 1:2 with lines lw 1.5 title "
                         f"{gnuplot_string(name)}")
        if lines:
            script.append("plot " + ", ".join(lines))
        else:
            script.append("set label 1 'zero throughout the run' at graph 0.4, graph 0.5")
            script.append("plot 0 with lines lc rgb 'grey' notitle")
            script.append("unset label 1")
    script.append("unset multiplot")
    path = os.path.join(work, "dashboard.gnuplot")
    with open(path, "w") as f:
        f.write("\n".join(script) + "\n")
    subprocess.run(["gnuplot", path], check=True)


class Workload:
    """The phases of the run, each a thread or a process; stop() ends all of them."""

    def __init__(self, port, certs):
        self.port = port
        self.certs = certs
        self.stopping = threading.Event()
        self.procs = []
        self.threads = []

    def pgbench(self, *args):
        env = dict(os.environ, PGPASSWORD="bench")
        cmd = ["pgbench", "-n", "-h", "127.0.0.1", "-p", str(self.port), "-U", "bench",
               *args, "bench"]
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def psql_loop(self, sql, every, sslmode="disable"):
        def loop():
            env = dict(os.environ, PGPASSWORD="bench")
            conninfo = (f"host=127.0.0.1 port={self.port} dbname=bench user=bench "
                        f"sslmode={sslmode}")
            while not self.stopping.wait(every):
                subprocess.run(["psql", "-X", "-q", "-d", conninfo, "-c", sql], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self):
        self.stopping.set()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for t in self.threads:
            t.join(10)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pgring", default=os.path.join(ROOT, "build", "pgring"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "dashboard.png"))
    ap.add_argument("--seconds", type=int, default=150)
    args = ap.parse_args()
    if shutil.which("gnuplot") is None and os.geteuid() == 0:
        log("installing gnuplot-nox")
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                        "gnuplot-nox"], check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    for tool in ("pgbench", "psql", "prometheus", "gnuplot"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (scripts/deps.sh installs it)")
    work = tempfile.mkdtemp(prefix="pgring-dashboard-")
    os.chmod(work, 0o755)
    pg_port, port, mport, prom_port = free_port(), free_port(), free_port(), free_port()
    pgdata = os.path.join(work, "pg")
    procs = []
    workload = None
    try:
        log(f"PostgreSQL on {pg_port} in {pgdata}")
        subprocess.run([os.path.join(ROOT, "scripts", "pg-throwaway.sh"), "start", pgdata,
                        str(pg_port)], check=True, stdout=subprocess.DEVNULL)
        pg = ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres"]
        subprocess.run(pg + ["-c", "CREATE ROLE bench LOGIN PASSWORD 'bench'",
                             "-c", "CREATE DATABASE bench OWNER bench"], check=True)
        subprocess.run(["pgbench", "-i", "-q", "-s", "5", "-h", "127.0.0.1", "-p", str(pg_port),
                        "-U", "bench", "bench"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        certs = os.path.join(work, "tls")
        subprocess.run([os.path.join(ROOT, "scripts", "gen-test-certs.sh"), certs], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        config_path = os.path.join(work, "pgring.yaml")
        config = {
            "listen": [f"127.0.0.1:{port}"],
            "workers": 1,
            "log": {"level": "warning", "slow_query": "150ms"},
            "metrics": {"listen": f"127.0.0.1:{mport}"},
            "auth": {"method": "md5"},
            "users": {"bench": {"password": "bench"}},
            "defaults": {"pool_mode": "transaction", "pool_size": 4},
            "databases": {"bench": {"host": "127.0.0.1", "port": pg_port}},
            "stats": {"fingerprints": 1000},
            "tls": {"client": {"mode": "allow", "cert": os.path.join(certs, "server.crt"),
                               "key": os.path.join(certs, "server.key")}},
        }
        with open(config_path, "w") as f:
            json.dump(config, f)  # (JSON is YAML)
        pgring = subprocess.Popen([args.pgring, "--config", config_path],
                                  stderr=open(os.path.join(work, "pgring.log"), "w"))
        procs.append(pgring)
        wait_port(mport)
        prom_config = os.path.join(work, "prometheus.yml")
        with open(prom_config, "w") as f:
            f.write("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                    "scrape_configs:\n  - job_name: pgring\n"
                    f"    static_configs: [{{targets: ['127.0.0.1:{mport}']}}]\n")
        prom = subprocess.Popen(["prometheus", f"--config.file={prom_config}",
                                 f"--storage.tsdb.path={os.path.join(work, 'tsdb')}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=subprocess.DEVNULL,
                                stderr=open(os.path.join(work, "prometheus.log"), "w"))
        procs.append(prom)
        wait_port(prom_port)
        start = time.time()
        s = args.seconds
        log(f"workload for {s} s: pgring on {port}, /metrics on {mport}, Prometheus on {prom_port}")
        workload = Workload(port, certs)
        workload.psql_loop("SELECT 1/0", 1.0)
        workload.psql_loop("SELECT pg_sleep(0.2)", 2.0)
        workload.psql_loop("SELECT count(*) FROM pgbench_branches", 0.5, sslmode="require")
        # Phase 1: point selects, 4 clients (pool_size 4: nobody waits).
        workload.pgbench("-S", "-c", "4", "-T", str(s * 2 // 5))
        time.sleep(s // 5)
        # Phase 2 (overlapping): TPC-B at 4 more clients: 8 clients on 4 servers.
        workload.pgbench("-c", "4", "-T", str(s // 5))
        time.sleep(s // 5 + s // 5)
        # Phase 3: 24 clients on 4 servers, prepared statements: clients wait for a server.
        os.kill(pgring.pid, signal.SIGHUP)  # a reload, as an operator would after an edit
        workload.pgbench("-S", "-M", "prepared", "-c", "24", "-T", str(s // 5))
        time.sleep(s // 5 + s // 10)
        # Phase 4: quiet but for the trickles, then the end.
        time.sleep(max(0, s - (time.time() - start)))
        workload.stop()
        workload = None
        end = time.time()
        time.sleep(2)  # the last scrape
        dashboard = json.load(open(DASHBOARD))
        panels, series = [], []
        for panel in dashboard["panels"]:
            panels.append({"title": panel["title"],
                           "unit": panel.get("fieldConfig", {}).get("defaults", {}).get("unit")})
            lines = []
            for target in panel["targets"]:
                expr = (target["expr"].replace("$__rate_interval", "4s")
                        .replace("$instance", ".*").replace("$database", ".*"))
                for result in prometheus_range(prom_port, expr, start, end, 1):
                    points = [(float(t) - start, float(v)) for t, v in result["values"]
                              if v not in ("NaN", "+Inf", "-Inf")]
                    if points:
                        lines.append((legend(target.get("legendFormat"), result["metric"]),
                                      points))
            # As Grafana's legend with "hide series with only zeros", and at most the 8 with
            # the highest peaks: a topk() asked over a range returns every family that was in
            # the top at some moment, too many lines for a picture.
            lines = [(name, points) for name, points in lines if any(v != 0 for _, v in points)]
            lines.sort(key=lambda line: -max(v for _, v in line[1]))
            series.append(lines[:8])
            log(f"{panel['title']}: {len(lines)} series, {len(series[-1])} drawn")
        draw(panels, series, args.out, int(end - start), work)
        log(f"wrote {args.out}")
    finally:
        if workload is not None:
            workload.stop()
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run([os.path.join(ROOT, "scripts", "pg-throwaway.sh"), "stop", pgdata],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
