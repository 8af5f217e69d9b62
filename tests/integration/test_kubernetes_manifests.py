#!/usr/bin/python3
"""deploy/kubernetes/ agrees with the code: the container ports are the ports the embedded
pgring.yaml listens on, the probes ask the metrics listener for /ready and /health, the scrape
annotations point at /metrics there, the sidecar is native (an init container with
restartPolicy: Always), the grace period covers the preStop pause plus timeouts.shutdown, the
config is mounted where the image's entrypoint reads it, and the embedded configuration passes
`pgring --check`. No cluster is needed."""

import os
import re
import shutil
import subprocess
import tempfile

import yaml

from lib import PGRING_BIN, SOURCE_DIR, check, check_eq, log, run_tests

K8S = os.path.join(SOURCE_DIR, "deploy", "kubernetes")


def load(name):
    return [d for d in yaml.safe_load_all(open(os.path.join(K8S, name))) if d]


def seconds(duration):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(duration))
    check(m is not None, f"a duration pgring accepts: {duration!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def manifests():
    deployment = load("deployment.yaml")[0]
    secret = load("secret.yaml")[0]
    configmap = load("configmap.yaml")[0]
    config_text = secret["stringData"]["pgring.yaml"]
    return deployment, secret, configmap, config_text, yaml.safe_load(config_text)


def sidecar(deployment):
    spec = deployment["spec"]["template"]["spec"]
    sidecars = [c for c in spec.get("initContainers", []) if c["name"] == "pgring"]
    check_eq(len(sidecars), 1, "one pgring init container")
    return spec, sidecars[0]


def test_kustomization_lists_every_manifest():
    k = load("kustomization.yaml")[0]
    files = sorted(f for f in os.listdir(K8S) if f.endswith(".yaml") and f != "kustomization.yaml")
    check_eq(sorted(k["resources"]), files, "kustomization resources")


def test_ports_probes_and_annotations_match_the_config():
    deployment, _, configmap, _, config = manifests()
    spec, pgring = sidecar(deployment)
    check_eq(pgring.get("restartPolicy"), "Always", "a native sidecar (restartPolicy: Always)")
    ports = {p["name"]: p["containerPort"] for p in pgring["ports"]}
    listen_port = int(config["listen"][0].rsplit(":", 1)[1])
    metrics_host, metrics_port = config["metrics"]["listen"].rsplit(":", 1)
    check_eq(ports["postgres"], listen_port, "the postgres port is pgring's listen port")
    check_eq(ports["metrics"], int(metrics_port), "the metrics port is metrics.listen's")
    check_eq(metrics_host, "0.0.0.0", "probes and scrapes come from outside the pod's loopback")
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        get = pgring[probe]["httpGet"]
        check_eq((get["path"], get["port"]), (path, "metrics"), probe)
    notes = deployment["spec"]["template"]["metadata"]["annotations"]
    check_eq((notes["prometheus.io/scrape"], notes["prometheus.io/port"],
              notes["prometheus.io/path"]), ("true", metrics_port, "/metrics"), "annotations")
    # The app reaches pgring on its listen address.
    check_eq((configmap["data"]["PGHOST"], int(configmap["data"]["PGPORT"])),
             tuple([config["listen"][0].rsplit(":", 1)[0], listen_port]), "the app's libpq env")


def test_grace_period_covers_the_drain():
    deployment, _, _, _, config = manifests()
    spec, pgring = sidecar(deployment)
    pause = pgring["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = seconds(config["timeouts"]["shutdown"])
    grace = spec["terminationGracePeriodSeconds"]
    log(f"preStop {pause} s + timeouts.shutdown {drain} s < terminationGracePeriodSeconds {grace}")
    check(pause + drain < grace, "the kubelet would SIGKILL pgring during its drain")


def test_config_is_mounted_where_the_image_reads_it():
    deployment, secret, _, _, _ = manifests()
    spec, pgring = sidecar(deployment)
    dockerfile = open(os.path.join(SOURCE_DIR, "Dockerfile")).read()
    m = re.search(r'ENTRYPOINT \[.*"--config", "([^"]+)"\]', dockerfile)
    check(m is not None, "the Dockerfile's entrypoint names its config file")
    path = m.group(1)
    mount = [v for v in pgring["volumeMounts"] if path.startswith(v["mountPath"] + "/")]
    check_eq(len(mount), 1, f"a volume mounted over {path}")
    volume = [v for v in spec["volumes"] if v["name"] == mount[0]["name"]][0]
    check_eq(volume["secret"]["secretName"], secret["metadata"]["name"], "the config's Secret")
    items = {i["path"]: i["key"] for i in volume["secret"]["items"]}
    check_eq(items.get(os.path.basename(path)), "pgring.yaml", "the file name in the mount")
    check("EXPOSE 6432" in dockerfile, "the image exposes the port the manifest uses")


def test_embedded_config_passes_pgring_check():
    _, _, _, config_text, config = manifests()
    d = tempfile.mkdtemp(prefix="pgring-it-k8s-")
    try:
        path = os.path.join(d, "pgring.yaml")
        with open(path, "w") as f:
            f.write(config_text)
        r = subprocess.run([PGRING_BIN, "--config", path, "--check"], capture_output=True,
                           text=True, timeout=30)
        log(f"pgring --check: {r.returncode} {(r.stdout + r.stderr).strip()}")
        check_eq(r.returncode, 0, f"the embedded pgring.yaml: {r.stderr}")
        check_eq(config["defaults"]["pool_mode"], "transaction", "a sidecar pools transactions")
        check_eq(config["workers"], "auto", "workers sized to the container's CPUs")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    run_tests(globals())
