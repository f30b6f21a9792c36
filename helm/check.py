"""Offline validation of helm/fluxgate (issue 20): checks values.schema.json against its
generator (helm/schema.py), renders every
ci/*-values.yaml scenario with the Helm SDK (helm-python-sdk), validates the manifests with
kubernetes-validate --strict for the oldest and newest supported Kubernetes, runs the
fluxgate binary's own config check on every rendered fluxgate.toml, asserts the chart's
rules (selectors, security context, probes, drain grace, HPA) and that broken values are
refused with a readable message. Ends with "N passed, N failed".

    python helm/check.py path/to/fluxgate   (from the venv of helm/check)
"""

import glob
import os
import subprocess
import sys
import tempfile

import helm_python as helm
import yaml

CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fluxgate")
KUBE = ["1.27.0", "1.37.0"]
BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/fluxgate"
results = {"passed": 0, "failed": 0}


def report(name, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(("ok    " if ok else "FAIL  ") + name + (f": {detail}" if detail and not ok else ""))


def render(values):
    chart = helm.Chart.load(CHART)
    out = chart.render(values, name="fg", namespace="iot")
    docs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def check_scenario(path):
    name = os.path.basename(path)
    values = yaml.safe_load(open(path)) or {}
    try:
        docs = render(values)
    except Exception as e:  # noqa: BLE001 - the render error is the report
        report(f"{name}: renders", False, str(e)[:300])
        return
    report(f"{name}: renders ({len(docs)} objects)", True)
    for k in KUBE:
        lint = helm.lint(CHART, values, strict=True, kube_version=f"v{k}")
        worse = [m for m in lint["messages"] if m["severity"] >= 2] + lint["errors"]
        report(f"{name}: helm lint --strict --kube-version {k}", not worse, str(worse))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all([d for d in docs if "monitoring.coreos.com" not in d["apiVersion"]
                            and "cert-manager.io" not in d["apiVersion"]], f)
    for k in KUBE:
        p = subprocess.run([os.path.join(os.path.dirname(sys.executable), "kubernetes-validate"),
                            "--strict", "-k", k, "--quiet", f.name], capture_output=True, text=True)
        report(f"{name}: kubernetes-validate --strict {k}", p.returncode == 0, p.stdout + p.stderr)
    os.unlink(f.name)
    for d in docs:
        if d["kind"] == "ConfigMap" and "fluxgate.toml" in d.get("data", {}):
            with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as t:
                t.write(d["data"]["fluxgate.toml"])
            p = subprocess.run([BIN, "-c", t.name, "config", "--check"], capture_output=True,
                               text=True, env={})
            report(f"{name}: {d['metadata']['name']} passes fluxgate config --check",
                   p.returncode == 0, p.stderr)
            os.unlink(t.name)
    rules(name, values, docs)


def pods(docs):
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] in ("Deployment", "Job"):
            yield d, spec["template"]["spec"]
        elif d["kind"] == "Pod":
            yield d, spec


def rules(name, values, docs):
    bad = [d["metadata"]["name"] for d in docs
           for sel in [d.get("spec", {}).get("selector")]
           if isinstance(sel, dict)
           and any(k in ("helm.sh/chart", "app.kubernetes.io/version")
                   for k in (sel.get("matchLabels") or sel))]
    report(f"{name}: no chart version in any selector", not bad, str(bad))
    insecure = []
    for d, spec in pods(docs):
        if not spec.get("securityContext", {}).get("seccompProfile", {}).get("type") == "RuntimeDefault" \
                or spec.get("automountServiceAccountToken") is not False:
            insecure.append(d["metadata"]["name"])
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            sc = c.get("securityContext", {})
            if not (sc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem")
                    and sc.get("allowPrivilegeEscalation") is False
                    and sc.get("capabilities", {}).get("drop") == ["ALL"]):
                insecure.append(f"{d['metadata']['name']}/{c['name']}")
    report(f"{name}: every container non-root, read-only, no privilege, no token", not insecure,
           str(insecure))
    deps = [d for d in docs if d["kind"] == "Deployment"]
    noprobe = [d["metadata"]["name"] for d in deps
               for c in d["spec"]["template"]["spec"]["containers"]
               if not all(p in c for p in ("livenessProbe", "readinessProbe", "startupProbe"))]
    report(f"{name}: every Deployment has startup, liveness and readiness probes", not noprobe,
           str(noprobe))
    hpa = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    front = [d for d in deps if d["metadata"]["name"].endswith("-front")]
    want_hpa = bool(values.get("front", {}).get("autoscaling", {}).get("enabled"))
    report(f"{name}: HPA {'present, front replicas left out' if want_hpa else 'absent'}",
           bool(hpa) == want_hpa and all(("replicas" in f["spec"]) != want_hpa for f in front))


def refused(name, values, pattern):
    try:
        render(values)
        report(f"refused: {name}", False, "it was accepted")
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        report(f"refused: {name}", pattern in msg, msg[:300])
        if pattern in msg:
            print("      " + next(line for line in msg.splitlines() if pattern in line)[:200])


def main():
    for path in sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml"))):
        check_scenario(path)
    gen = subprocess.run([sys.executable, os.path.join(os.path.dirname(CHART), "schema.py"), BIN],
                         capture_output=True, text=True)
    committed = open(os.path.join(CHART, "values.schema.json")).read()
    report("values.schema.json is what helm/schema.py makes from values.yaml and the binary",
           gen.returncode == 0 and gen.stdout == committed,
           gen.stderr or "differs: python helm/schema.py BIN > helm/fluxgate/values.schema.json")
    s = {"secrets": {"bootstrapToken": "t", "deviceTokenSecret": "d"}}
    refused("a misspelled value", {**s, "front": {"replicaCont": 3}},
            "additional properties 'replicaCont' not allowed")
    refused("a value of the wrong type", {**s, "front": {"replicaCount": "three"}},
            "got string, want integer")
    refused("a misspelled fluxgate setting in config", {**s, "config": {"front": {"max_conections": 5}}},
            "additional properties 'max_conections' not allowed")
    refused("a missing bootstrap token", {}, "secrets.bootstrapToken is required")
    refused("a grace period shorter than preStop + drain",
            {**s, "front": {"terminationGracePeriodSeconds": 10}}, "terminationGracePeriodSeconds is 10")
    refused("externalTrafficPolicy on a ClusterIP front",
            {**s, "front": {"service": {"type": "ClusterIP", "externalTrafficPolicy": "Local"}}},
            "externalTrafficPolicy is only for")
    refused("mqtts without TLS", {**s, "front": {"listeners": {"mqtts": {"enabled": True}}}},
            "need TLS")
    refused("a credential in the ConfigMap", {**s, "config": {"api": {"bootstrap_token": "x"}}},
            "credentials go in secrets")
    print(f"helm/check: {results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)


main()
