"""HTTP API read-backs that the client checks rely on, checked on their own: GET
.../data without `keys` returns every key's points. The data is sent with mosquitto_pub at
QoS 1 (a PUBACK from standalone means it is stored)."""

import json
import subprocess

from fgcompat import MQTT_HOST, MQTT_PORT, Api, Suite, fail, now_ms, one_line, provision, wait_for

P = provision()
A = Api(P)


def check_data_without_keys():
    dev = "api-data-all"
    ts = now_ms() - 10_000
    state = {"temperature": 18.25, "humidity": 44, "label": "all-keys"}
    r = subprocess.run(
        ["mosquitto_pub", "-h", MQTT_HOST, "-p", str(MQTT_PORT), "-q", "1", "-i", dev,
         "-u", P["losant"]["key"], "-P", P["losant"]["secret"], "-t", f"losant/{dev}/state",
         "-m", json.dumps({"data": state, "time": ts})],
        capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        fail(f"mosquitto_pub exited {r.returncode}: {one_line(r.stderr)}")
    def mine(pts):
        return {p["key"]: p["value"] for p in pts if p["ts_ms"] == ts}

    def with_keys():
        got = mine(A.data(dev, keys=list(state)))
        return got if got == state else None

    named = wait_for("the points in GET .../data?keys=...", with_keys)
    for params, label in (({}, "no parameters"), ({"frm": ts, "to": ts + 1}, "from/to only")):
        got = mine(A.data(dev, **params))
        if got != named:
            fail(f"GET .../data with {label} returned {got!r}; with keys= it returns {named!r}")


def main():
    s = Suite()
    s.run("api-data-without-keys", check_data_without_keys)
    s.exit()


if __name__ == "__main__":
    main()
