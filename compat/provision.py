"""Provisions, through the HTTP API, everything the compatibility checks need, and writes
it to $FG_PROVISION as JSON. Uses the bootstrap admin token in $FG_BOOTSTRAP_TOKEN.

- application `compat`, with a read token (every read-back) and a write token (commands,
  RPC, shared attributes);
- Losant devices with attribute definitions, an access key for all devices and one that
  opens only `compat-other`;
- ThingsBoard devices with access tokens: a device, a gateway, a gateway for the 50-device
  burst (a rate-limited gateway is blocked for a while, so it gets its own), and a gateway
  for the seed document's command lines;
- a Losant gateway and a peripheral that any gateway may act for (seed 000).
"""

import json
import os
import sys

from fgcompat import fail, ok, q

APP = "compat"

# Losant attribute definitions every Losant device of the suite gets.
ATTRIBUTES = [
    {"name": "temperature", "kind": "number"},
    {"name": "humidity", "kind": "number"},
    {"name": "seq", "kind": "number"},
    {"name": "label", "kind": "string"},
    {"name": "on", "kind": "boolean"},
    {"name": "blob", "kind": "string"},
]

LOSANT_DEVICES = [
    "losant-sdk-state",
    "losant-sdk-cmd",
    "losant-sdk-oneshot",
    "paho-v5-auth",
    "paho-v5-deny",
    "paho-v5-qos2",
    "paho-v5-big",
    "paho-v5-payload",
    "paho-v5-malformed",
    "paho-v5-burst",
    "paho-v3",
    "mqttjs-v3-tcp",
    "mqttjs-v5-tcp",
    "mqttjs-ws-mqtt",
    "mqttjs-ws-root",
    "mqttjs-v5-burst",
    "api-data-all",
    "compat-other",
]

LOSANT_GATEWAY = "losant-gw"
LOSANT_PERIPHERAL = "losant-gw-peripheral"

TB_DEVICES = {
    "tb_device": ("tb-device", "standalone"),
    "tb_gateway": ("tb-gateway", "gateway"),
    "tb_gateway_burst": ("tb-gateway-burst", "gateway"),
    "tb_gateway_seed": ("tb-gateway-seed", "gateway"),
}


def main():
    admin = os.environ["FG_BOOTSTRAP_TOKEN"]
    out_path = os.environ["FG_PROVISION"]
    ok("POST", "/applications", {"id": APP, "name": "fluxgate compat suite"}, token=admin)
    read = ok("POST", f"/applications/{APP}/tokens", {"name": "compat-read", "scope": "read"}, token=admin)
    write = ok("POST", f"/applications/{APP}/tokens", {"name": "compat-write", "scope": "write"}, token=admin)
    for d in LOSANT_DEVICES:
        ok("POST", f"/applications/{APP}/devices", {"id": d, "attributes": ATTRIBUTES}, token=admin)
    ok("POST", f"/applications/{APP}/devices", {"id": LOSANT_GATEWAY, "kind": "gateway"}, token=admin)
    ok("POST", f"/applications/{APP}/devices",
       {"id": LOSANT_PERIPHERAL, "kind": "peripheral", "attributes": ATTRIBUTES,
        "peripheral_policy": {"policy": "any_gateway"}}, token=admin)
    key = ok("POST", f"/applications/{APP}/keys", {}, token=admin)
    scoped = ok("POST", f"/applications/{APP}/keys", {"devices": ["compat-other"]}, token=admin)
    tb = {}
    for role, (dev_id, kind) in TB_DEVICES.items():
        ok("POST", f"/applications/{APP}/devices", {"id": dev_id, "kind": kind}, token=admin)
        tok = ok("POST", f"/applications/{APP}/devices/{q(dev_id)}/tokens", None, token=admin)
        tb[role] = {"id": dev_id, "token": tok["secret"]}
    # The definitions are read back: the checks rely on them.
    defs = ok("GET", f"/applications/{APP}/devices/losant-sdk-state/attributes", token=admin)
    if sorted(d["name"] for d in defs) != sorted(a["name"] for a in ATTRIBUTES):
        fail(f"attribute definitions not stored: {defs}")
    result = {
        "app": APP,
        "read_token": read["secret"],
        "write_token": write["secret"],
        "losant": {"key": key["key"], "secret": key["secret"]},
        "losant_scoped": {"key": scoped["key"], "secret": scoped["secret"], "opens": "compat-other"},
        "losant_devices": LOSANT_DEVICES,
        "losant_gateway": {"gateway": LOSANT_GATEWAY, "peripheral": LOSANT_PERIPHERAL},
        **tb,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"provisioned application {APP}: {len(LOSANT_DEVICES)} Losant devices, "
          f"{len(tb)} ThingsBoard devices with tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
