"""Makes helm/fluxgate/values.schema.json (draft-07, self-contained) from values.yaml and
the binary's own configuration schema (`fluxgate config --schema`, under `config`): every
object the chart owns gets additionalProperties false; labels, annotations, resources,
affinity and the like stay free-form. helm/check compares the committed file with this.

    python helm/schema.py path/to/fluxgate > helm/fluxgate/values.schema.json
"""

import json
import os
import subprocess
import sys

import yaml

CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fluxgate")
# Keys whose value is a free-form map (Kubernetes objects or label sets).
FREE_MAPS = {"commonLabels", "annotations", "labels", "podAnnotations", "podLabels",
             "nodeSelector", "affinity", "resources", "additionalLabels", "behavior",
             "podSecurityContext", "containerSecurityContext"}
ENUMS = {
    ("image", "pullPolicy"): ["Always", "IfNotPresent", "Never"],
    ("tls", "mode"): ["none", "secret", "certManager", "loadBalancer"],
    ("service", "type"): ["ClusterIP", "NodePort", "LoadBalancer"],
    ("service", "externalTrafficPolicy"): ["", "Cluster", "Local"],
}
# Keys that default to null: their type.
NULLABLE = {"nodePort": "integer", "connectionsPerPod": "integer",
            "targetCPUUtilizationPercentage": "integer"}


def schema_of(key, value, parent):
    if key in FREE_MAPS:
        return {"type": "object"}
    if key in NULLABLE:
        return {"type": [NULLABLE[key], "null"]}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, str):
        s = {"type": "string"}
        if (parent, key) in ENUMS:
            s["enum"] = ENUMS[(parent, key)]
        return s
    if isinstance(value, list):
        items = {"type": "string"} if key.endswith("Cidrs") or key in ("dnsNames", "loadBalancerSourceRanges") \
            else {"type": "integer"} if key == "ports" else {"type": "object"}
        return {"type": "array", "items": items}
    if isinstance(value, dict):
        return {"type": "object", "additionalProperties": False,
                "properties": {k: schema_of(k, v, key) for k, v in value.items()}}
    raise SystemExit(f"values.yaml: {key}: no schema for {value!r}")


def main():
    values = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
    # Without HOSTNAME: a front's instance_id defaults to it, and the schema would differ
    # from machine to machine.
    env = {k: v for k, v in os.environ.items() if k != "HOSTNAME"}
    config = json.loads(subprocess.run([sys.argv[1], "config", "--schema"], check=True,
                                       capture_output=True, text=True, env=env).stdout)
    root = schema_of("", {k: v for k, v in values.items() if k != "config"}, "")
    root["properties"]["config"] = {
        "description": "fluxgate.toml as YAML: the binary's own schema (fluxgate config --schema).",
        "$ref": "#/definitions/FluxgateConfig"}
    definitions = config.pop("definitions")
    config.pop("$schema", None)
    definitions["FluxgateConfig"] = config
    out = {"$schema": "http://json-schema.org/draft-07/schema#", "title": "fluxgate chart values",
           **root, "definitions": definitions}
    print(json.dumps(out, indent=2, sort_keys=False))


main()
