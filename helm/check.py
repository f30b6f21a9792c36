"""Offline validation of helm/fluxgate (issue 20): checks values.schema.json against its
generator (helm/schema.py), renders every
ci/*-values.yaml scenario with the Helm SDK (helm-python-sdk), validates the manifests with
kubernetes-validate --strict for the oldest and newest supported Kubernetes and the custom
resources (ServiceMonitor, PrometheusRule, Certificate) against helm/crd-schemas, runs the
fluxgate binary's own config check on every rendered fluxgate.toml, asserts the chart's
rules (selectors, security context, probes, drain grace, HPA), runs yamllint on the values
files and on every scenario's manifests and checkov on the manifests, and shows that broken
values, a misspelled field of a custom resource, a duplicated key and a privileged
container are refused with a readable message. Ends with "N passed, N failed".

    python helm/check.py path/to/fluxgate   (from the venv of helm/check)
"""

import copy
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import helm_python as helm
import jsonschema
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "fluxgate")
KUBE = ["1.27.0", "1.37.0"]
BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/fluxgate"
TOOLS = os.path.dirname(sys.executable)  # the venv's bin/: kubernetes-validate, yamllint, checkov
# kubernetes-validate only warns on custom resources (it has no schema for them), and the
# API server prunes their unknown fields silently: objects of these groups are checked
# against helm/crd-schemas/<group>/<kind>_<version>.json (the layout of datreeio's
# CRDs-catalog), schemas of our own with every object closed.
CRD_SCHEMAS = os.path.join(HERE, "crd-schemas")
CRD_GROUPS = ("monitoring.coreos.com", "cert-manager.io")
# yamllint's default rules, except: no "---" required (values files have none, the rendered
# manifests carry their own), lines up to 200 as in deploy/check (the dashboard's and the
# alerts' descriptions are long), and lists flush with their key or indented (toYaml writes
# them flush, the templates indent them). Warnings fail too (--strict).
YAMLLINT = ("{extends: default, rules: {document-start: disable, line-length: {max: 200}, "
            "indentation: {indent-sequences: whatever}}}")
# checkov checks skipped for the whole chart, because what they ask is up to the user of the
# chart (or cannot be done by it); a check that is wrong for one object only is skipped on
# that object, with a checkov.io/skip annotation in its template (the test pod's probes).
CHECKOV_SKIP = {
    "CKV_K8S_10": "CPU requests: resources are {} by default on purpose, users size each role",
    "CKV_K8S_11": "CPU limits: likewise",
    "CKV_K8S_12": "memory requests: likewise",
    "CKV_K8S_13": "memory limits: likewise",
    "CKV_K8S_15": "pull policy Always: the default tag is the chart's appVersion, not a moving "
                  "one, so IfNotPresent (image.pullPolicy) is right",
    "CKV_K8S_35": "secrets as files: fluxgate reads its credentials from FLUXGATE_* variables "
                  "only (docs/configuration.md)",
    "CKV_K8S_43": "image digest: image.digest pins one, but no default digest can exist for "
                  "an image users build from deploy/Dockerfile",
}
# The values every install needs (the default scenario: these and values.yaml).
SECRETS = {"secrets": {"bootstrapToken": "t", "deviceTokenSecret": "d"}}
results = {"passed": 0, "failed": 0}


def report(name, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(("ok    " if ok else "FAIL  ") + name + (f": {detail}" if detail and not ok else ""))


def render(values):
    """The chart's objects, and the manifests as `helm template` prints them (one
    "---\n# Source: template" header per document, each trimmed, empty ones left out)."""
    chart = helm.Chart.load(CHART)
    out = chart.render(values, name="fg", namespace="iot")
    docs, text = [], ""
    for path, body in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in re.split(r"(?m)^---\s*$", body):
            if doc.strip():
                text += f"---\n# Source: {path}\n{doc.strip()}\n"
                if d := yaml.safe_load(doc):
                    docs.append(d)
    return docs, text


def crd_errors(doc):
    """What helm/crd-schemas finds wrong with a custom resource, one readable line each."""
    group, version = doc["apiVersion"].split("/")
    path = os.path.join(CRD_SCHEMAS, group, f"{doc['kind'].lower()}_{version}.json")
    if not os.path.exists(path):
        return [f"{doc['kind']}: no schema {os.path.relpath(path, HERE)}"]
    validator = jsonschema.Draft202012Validator(json.load(open(path)))
    where = f"{doc['kind']} {doc.get('metadata', {}).get('name')}"
    return [f"{where}: at {e.json_path}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: e.json_path)]


def check_scenario(path, workdir):
    """Checks one ci/ scenario; returns its objects (None if it does not render) and leaves its
    manifests in workdir, under the scenario's file name, for yamllint and checkov."""
    name = os.path.basename(path)
    values = yaml.safe_load(open(path)) or {}
    try:
        docs, text = render(values)
    except Exception as e:  # noqa: BLE001 - the render error is the report
        report(f"{name}: renders", False, str(e)[:300])
        return None
    report(f"{name}: renders ({len(docs)} objects)", True)
    with open(os.path.join(workdir, name), "w") as f:
        f.write(text)
    for k in KUBE:
        lint = helm.lint(CHART, values, strict=True, kube_version=f"v{k}")
        worse = [m for m in lint["messages"] if m["severity"] >= 2] + lint["errors"]
        report(f"{name}: helm lint --strict --kube-version {k}", not worse, str(worse))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all([d for d in docs if d["apiVersion"].split("/")[0] not in CRD_GROUPS], f)
    for k in KUBE:
        p = subprocess.run([os.path.join(TOOLS, "kubernetes-validate"),
                            "--strict", "-k", k, "--quiet", f.name], capture_output=True, text=True)
        report(f"{name}: kubernetes-validate --strict {k}", p.returncode == 0, p.stdout + p.stderr)
    os.unlink(f.name)
    crds = [d for d in docs if d["apiVersion"].split("/")[0] in CRD_GROUPS]
    if crds:
        errors = [e for d in crds for e in crd_errors(d)]
        report(f"{name}: {', '.join(sorted({d['kind'] for d in crds}))} valid against helm/crd-schemas",
               not errors, "; ".join(errors))
    for d in docs:
        if d["kind"] == "ConfigMap" and "fluxgate.toml" in d.get("data", {}):
            with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as t:
                t.write(d["data"]["fluxgate.toml"])
            p = subprocess.run([BIN, "-c", t.name, "config", "--check"], capture_output=True,
                               text=True, env={})
            report(f"{name}: {d['metadata']['name']} passes fluxgate config --check",
                   p.returncode == 0, p.stderr)
            os.unlink(t.name)
            # An empty file passes config --check too (every setting has a default): the
            # settings the chart decides must be there.
            toml = tomllib.loads(d["data"]["fluxgate.toml"])
            report(f"{name}: {d['metadata']['name']} has the chart's settings (kafka, scylla, listeners)",
                   toml.get("bus", {}).get("kind") == "kafka"
                   and toml.get("store", {}).get("kind") == "scylla"
                   and "http_addr" in toml.get("front", {}), str(toml)[:300])
    rules(name, values, docs)
    return docs


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


def expect_refused(name, complaints, pattern):
    """Passes when one of complaints (what a tool said, a line each) says pattern; prints it."""
    hit = next((c for c in complaints if pattern in c), None)
    report(f"refused: {name}", hit is not None, "; ".join(complaints)[:300] or "it was accepted")
    if hit:
        print("      " + hit[:200])


def refused(name, values, pattern):
    """Broken values: the chart must refuse to render, saying pattern."""
    try:
        render(values)
        complaints = []
    except Exception as e:  # noqa: BLE001 - the render error is the refusal
        complaints = str(e).splitlines()
    expect_refused(name, complaints, pattern)


def open_objects(schema, at="#"):
    """Where a schema lets an unknown field through: every object schema must be closed
    (additionalProperties: false) or be a map (additionalProperties: a schema)."""
    found = []
    if isinstance(schema, dict):
        if (schema.get("type") == "object" or "properties" in schema) \
                and schema.get("additionalProperties", True) is True:
            found.append(at)
        for k, v in schema.items():
            found += open_objects(v, f"{at}/{k}")
    elif isinstance(schema, list):
        for i, v in enumerate(schema):
            found += open_objects(v, f"{at}/{i}")
    return found


def check_crd_schemas():
    paths = sorted(glob.glob(os.path.join(CRD_SCHEMAS, "*", "*.json")))
    problems = []
    for path in paths:
        rel = os.path.relpath(path, HERE)
        try:
            schema = json.load(open(path))
            jsonschema.Draft202012Validator.check_schema(schema)
        except (ValueError, jsonschema.SchemaError) as e:
            problems.append(f"{rel}: {str(e).splitlines()[0]}")
            continue
        problems += [f"{rel}: an open object at {at}" for at in open_objects(schema)]
    report(f"helm/crd-schemas: {len(paths)} valid JSON Schemas, every object closed",
           bool(paths) and not problems, "; ".join(problems))


def yamllint(files):
    """yamllint --strict on files, in one run: {file: its problems, "line:col: [level] message (rule)"}."""
    p = subprocess.run([os.path.join(TOOLS, "yamllint"), "--strict", "-f", "parsable", "-d", YAMLLINT,
                        *files], capture_output=True, text=True)
    if p.returncode not in (0, 1, 2):  # 1: errors, 2: warnings only; anything else: it did not run
        return {f: [f"yamllint did not run: {p.stderr.strip()[-300:]}"] for f in files}
    problems = {f: [] for f in files}
    for line in p.stdout.splitlines():
        path, _, problem = line.partition(":")
        problems[path].append(problem)
    return problems


def source(manifests, problem):
    """A yamllint problem in rendered manifests ("line:col: …"), with the template it came from."""
    lines = open(manifests).read().splitlines()[:int(problem.split(":")[0])]
    template = next((line.removeprefix("# Source: ") for line in reversed(lines)
                     if line.startswith("# Source: ")), "?")
    return f"{template}, manifests line {problem}"


def checkov(workdir):
    """checkov --framework kubernetes on the manifests in workdir, in one run (it takes seconds
    to start): {file name: its failed checks}. A file it skipped, as it does with a mere
    warning when it cannot parse one, is missing."""
    # --compact: no code block with each of the ~5,000 results, which halves the time; the
    # passed checks stay in, as the proof that a file was scanned.
    p = subprocess.run([os.path.join(TOOLS, "checkov"), "--framework", "kubernetes", "--skip-download",
                        "--skip-check", ",".join(CHECKOV_SKIP), "-d", workdir, "-o", "json", "--compact"],
                       capture_output=True, text=True)
    try:
        out = json.loads(p.stdout).get("results", {})
    except json.JSONDecodeError:
        print(f"      checkov did not answer (exit {p.returncode}): {p.stderr.strip()[-300:]}")
        return {}
    failed = {}
    for kind in ("passed_checks", "failed_checks", "skipped_checks"):
        for c in out.get(kind, []):
            failed.setdefault(os.path.basename(c["file_path"]), [])
    for c in out.get("failed_checks", []):
        failed[os.path.basename(c["file_path"])].append(f"{c['check_id']} {c['resource']}: {c['check_name']}")
    return failed


def lint_and_scan(workdir, scenarios):
    """yamllint on the values files and on every scenario's manifests, checkov on the
    manifests; broken copies of the default manifests go through the same runs, and each
    must be refused."""
    values_files = [os.path.join(CHART, "values.yaml"),
                    *sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml")))]
    manifests = {name: os.path.join(workdir, name) for name in scenarios}
    try:
        _, text = render(SECRETS)
    except Exception:  # noqa: BLE001 - reported by default-values.yaml; the refusals below fail
        text = ""
    # A key written twice: YAML parsers keep the last one without a word (here the pods
    # would get a ServiceAccount token after all).
    duplicate = os.path.join(workdir, "broken-duplicate-key.yaml")
    with open(duplicate, "w") as f:
        f.write(re.sub(r"(?m)^( *)automountServiceAccountToken: false$",
                       r"\g<0>\n\1automountServiceAccountToken: true", text))
    # Privileged containers: checkov must still catch them, whatever CHECKOV_SKIP skips.
    with open(os.path.join(workdir, "broken-privileged.yaml"), "w") as f:
        f.write(text.replace("privileged: false", "privileged: true"))

    lint = yamllint(values_files + list(manifests.values()) + [duplicate])
    bad = [f"{os.path.relpath(f, CHART)}:{p}" for f in values_files for p in lint[f]]
    report(f"yamllint values.yaml and ci/*-values.yaml ({len(values_files)} files)", not bad,
           "; ".join(bad[:5]))
    for name, path in manifests.items():
        report(f"{name}: yamllint on the manifests", not lint[path],
               "; ".join(source(path, p) for p in lint[path][:5]))
    failed = checkov(workdir)
    for name in manifests:
        found = failed.get(name)
        report(f"{name}: checkov on the manifests ({len(CHECKOV_SKIP)} checks skipped, see helm/check.py)",
               found == [], "not scanned" if found is None else "; ".join(found[:5]))
    expect_refused("a duplicated key in the manifests (yamllint)",
                   [source(duplicate, p) for p in lint[duplicate]],
                   'duplication of key "automountServiceAccountToken"')
    expect_refused("a privileged container (checkov)", failed.get("broken-privileged.yaml", []), "CKV_K8S_16")


def checks(workdir):
    """Every check but the schemas' own, in the order of the report."""
    scenarios = {}
    for path in sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml"))):
        docs = check_scenario(path, workdir)
        if docs is not None:
            scenarios[os.path.basename(path)] = docs
    gen = subprocess.run([sys.executable, os.path.join(os.path.dirname(CHART), "schema.py"), BIN],
                         capture_output=True, text=True)
    committed = open(os.path.join(CHART, "values.schema.json")).read()
    report("values.schema.json is what helm/schema.py makes from values.yaml and the binary",
           gen.returncode == 0 and gen.stdout == committed,
           gen.stderr or "differs: python helm/schema.py BIN > helm/fluxgate/values.schema.json")
    s = SECRETS
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
    # A ServiceMonitor as rendered, with a field misspelled: the API server would drop the
    # field without a word (and Prometheus scrape with its default timeout).
    monitor = next((copy.deepcopy(d) for docs in scenarios.values() for d in docs
                    if d["kind"] == "ServiceMonitor"), None)
    if monitor:
        endpoint = monitor["spec"]["endpoints"][0]
        endpoint["scrapeTimout"] = endpoint.pop("scrapeTimeout", "10s")
    expect_refused("a ServiceMonitor with a misspelled field (helm/crd-schemas)",
                   crd_errors(monitor) if monitor else ["no scenario renders a ServiceMonitor"],
                   "'scrapeTimout' was unexpected")
    lint_and_scan(workdir, scenarios)


def main():
    check_crd_schemas()
    workdir = tempfile.mkdtemp(prefix="helm-check-")
    try:
        checks(workdir)
    finally:
        shutil.rmtree(workdir)
    print(f"helm/check: {results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)


main()
