"""Shared helpers of the compatibility checks: the fluxgate HTTP API, bounded polling and
the PASS/FAIL lines. Standard library only, so that every SDK's venv can import it.

Settings come from the environment that run.sh sets:
  FG_API          base URL of the HTTP API
  FG_PROVISION    JSON file written by provision.py (application, tokens, credentials)
  MQTT_HOST, MQTT_PORT
"""

import json
import os
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

API = os.environ.get("FG_API", "http://127.0.0.1:28080")
MQTT_HOST = os.environ.get("MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("MQTT_PORT", "21883"))


def provision():
    """What provision.py created (see there)."""
    with open(os.environ["FG_PROVISION"], encoding="utf-8") as f:
        return json.load(f)


class Failure(Exception):
    """A check's assertion failed; the message is the reason printed after FAIL."""


def fail(reason):
    raise Failure(reason)


def now_ms():
    return int(time.time() * 1000)


def one_line(s, limit=400):
    s = " ".join(str(s).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def http(method, path, body=None, token=None, timeout=15.0):
    """One API request; returns (status, parsed JSON or text). Never raises for HTTP errors."""
    url = path if path.startswith("http") else API + path
    data = None
    headers = {"Accept": "application/json"}
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = "Bearer " + token
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


def ok(method, path, body=None, token=None, timeout=15.0):
    """An API request that must succeed (2xx); returns the parsed body."""
    status, out = http(method, path, body, token, timeout)
    if not 200 <= status < 300:
        fail(f"{method} {path} answered {status}: {one_line(out, 200)}")
    return out


def q(s):
    """A path segment."""
    return urllib.parse.quote(str(s), safe="")


def wait_for(what, probe, timeout=5.0, interval=0.1, raise_on_timeout=True):
    """Polls `probe()` until it returns something truthy (returned) or `timeout` seconds
    pass; then fails with `what` and the last value probed (or, without
    `raise_on_timeout`, returns that falsy value)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            if not raise_on_timeout:
                return last
            fail(f"{what} (not seen within {timeout:g} s; last: {one_line(repr(last), 200)})")
        time.sleep(interval)


class Api:
    """Read-back and control through the HTTP API of one application."""

    def __init__(self, p):
        self.app = p["app"]
        self.read = p["read_token"]
        self.write = p["write_token"]

    def dev(self, device):
        return f"/applications/{q(self.app)}/devices/{q(device)}"

    def state(self, device):
        return ok("GET", self.dev(device) + "/state", token=self.read)["points"]

    def data(self, device, keys=None, frm=None, to=None):
        params = {}
        if keys is not None:
            params["keys"] = ",".join(keys)
        if frm is not None:
            params["from"] = str(frm)
        if to is not None:
            params["to"] = str(to)
        qs = ("?" + urllib.parse.urlencode(params)) if params else ""
        return ok("GET", self.dev(device) + "/data" + qs, token=self.read)["points"]

    def attributes(self, device, scope):
        return ok("GET", self.dev(device) + f"/attributes/{scope}", token=self.read)

    def connection(self, device, limit=20):
        return ok("GET", self.dev(device) + f"/connection?limit={limit}", token=self.read)

    def commands(self, device, limit=50):
        return ok("GET", self.dev(device) + f"/commands?limit={limit}", token=self.read)["items"]

    def command(self, command_id):
        return ok("GET", f"/applications/{q(self.app)}/commands/{q(command_id)}", token=self.read)

    def rejected(self, device=None, limit=100):
        qs = f"?limit={limit}" + (f"&device={q(device)}" if device else "")
        return ok("GET", f"/applications/{q(self.app)}/rejected{qs}", token=self.read)["items"]

    def device(self, device):
        status, out = http("GET", self.dev(device), token=self.read)
        return out if status == 200 else None

    def devices(self):
        """Every device of the application (all pages)."""
        out, after = [], None
        while True:
            qs = "?limit=1000" + (f"&after={q(after)}" if after else "")
            page = ok("GET", f"/applications/{q(self.app)}/devices{qs}", token=self.read)
            out.extend(page["items"])
            after = page.get("next")
            if not after:
                return out

    def devices_named(self, name):
        return [d for d in self.devices() if d["name"] == name]

    def device_by_name(self, name):
        found = self.devices_named(name)
        return found[0] if len(found) == 1 else None

    def command_send(self, device, body):
        return ok("POST", self.dev(device) + "/command", body, token=self.write)

    def shared_set(self, device, values):
        return ok("POST", self.dev(device) + "/attributes/shared", values, token=self.write)

    def claim(self, device, body):
        """Claims a device; returns (status, body)."""
        return http("POST", self.dev(device) + "/claim", body, token=self.write)

    def rpc(self, kind, device, body, timeout=15.0):
        """ThingsBoard REST RPC; returns (status, body)."""
        return http("POST", f"/api/rpc/{kind}/{q(device)}", body, token=self.write, timeout=timeout)


def stop_sdk(client):
    """Stops a tb-mqtt-client client (device or gateway) and disconnects it, whatever
    state it is in (cleanup only: errors of a client already gone are ignored)."""
    client.stop()
    try:
        client.disconnect()
    except Exception:  # noqa: BLE001 - cleanup only
        pass


def latest_values(points):
    return {p["key"]: p["value"] for p in points}


class Suite:
    """Runs checks and prints one line each: `PASS name` or `FAIL name: reason`."""

    def __init__(self):
        self.failed = 0
        self.passed = 0

    def run(self, name, fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except Failure as e:
            self.failed += 1
            print(f"FAIL {name}: {one_line(e)}", flush=True)
        except Exception as e:  # noqa: BLE001 - a crash of a check is its failure
            self.failed += 1
            where = traceback.extract_tb(e.__traceback__)[-1]
            print(
                f"FAIL {name}: {type(e).__name__}: {one_line(e, 300)} "
                f"(at {os.path.basename(where.filename)}:{where.lineno})",
                flush=True,
            )
        else:
            self.passed += 1
            print(f"PASS {name}", flush=True)

    def exit(self):
        sys.stdout.flush()
        sys.exit(1 if self.failed else 0)
