#!/usr/bin/python3
"""What ships for Prometheus and Grafana stays true to the code: contrib/prometheus/alerts.yaml
passes `promtool check rules` and its unit tests (`promtool test rules`), every expression of
contrib/grafana/pgring.json is valid PromQL, and every pgring metric either file names is one a
running pgring exposes."""

import json
import os
import re
import shutil
import subprocess
import tempfile

import yaml

from lib import (Pgring, SOURCE_DIR, check, check_eq, connect, expect_error, free_port, log,
                 pool_config, query, query_one, run_tests, scrape, skip_test)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
ALERTS_DIR = os.path.join(SOURCE_DIR, "contrib", "prometheus")
DASHBOARD = os.path.join(SOURCE_DIR, "contrib", "grafana", "pgring.json")


def promtool(*args, cwd=None):
    if not os.path.exists(PROMTOOL):
        skip_test("promtool is not installed (Debian package prometheus)")
    r = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    log(f"promtool {' '.join(args)}: status {r.returncode}: {(r.stdout + r.stderr).strip()}")
    return r.returncode, r.stdout + r.stderr


def dashboard_exprs():
    d = json.load(open(DASHBOARD))
    exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
    check(len(exprs) >= 10, f"the dashboard has {len(exprs)} queries")
    return exprs


def alert_exprs():
    rules = yaml.safe_load(open(os.path.join(ALERTS_DIR, "alerts.yaml")))
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_alert_rules_and_their_unit_tests():
    rc, out = promtool("check", "rules", "alerts.yaml", cwd=ALERTS_DIR)
    check_eq(rc, 0, f"promtool check rules: {out}")
    rc, out = promtool("test", "rules", "alerts_test.yaml", cwd=ALERTS_DIR)
    check_eq(rc, 0, f"promtool test rules: {out}")


def test_dashboard_queries_are_valid_promql():
    # Grafana's variables replaced by what they stand for; each query becomes a recording rule
    # so that promtool parses it.
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        e = expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
        e = e.replace("$database", ".*")
        rules.append({"record": f"pgring:dashboard_query_{i}", "expr": e})
    d = tempfile.mkdtemp(prefix="pgring-it-dash-")
    try:
        path = os.path.join(d, "dashboard_rules.yaml")
        with open(path, "w") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        rc, out = promtool("check", "rules", path)
        check_eq(rc, 0, f"the dashboard's queries as PromQL: {out}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_every_metric_named_is_exposed():
    names = set()
    for expr in dashboard_exprs() + alert_exprs():
        names |= set(re.findall(r"\bpgring_[a-z_]+", expr))
    families = {re.sub(r"_(bucket|sum|count)$", "", n) if n.endswith(("_bucket", "_sum", "_count"))
                and "seconds" in n else n for n in names}
    mport = free_port()
    config = pool_config(metrics_port=mport)
    config["stats"] = {"fingerprints": 100}  # (the pgring_query_family_* series)
    with Pgring(config) as p:
        c = connect(p.port)
        check_eq(query_one(c, "SELECT 1"), 1)
        expect_error(lambda: query(c, "SELECT 1/0"), "22012")
        c.close()
        text = scrape(mport)
    exposed = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    missing = sorted(families - exposed)
    check(not missing, f"named in contrib/ but not exposed by pgring: {missing}")
    log(f"{len(families)} metric families named by the alerts and the dashboard, all exposed")


if __name__ == "__main__":
    run_tests(globals())
