"""The mosquitto_pub command lines of the seed documents, run verbatim (QoS 0, then
disconnect: the one-shot pattern), each read back through the HTTP API.

The command lines are taken from the seed files themselves ($FG_SEEDS), with the
variables they use set: EDGE_HOST and ACCESS_TOKEN (a ThingsBoard gateway's token). The
port comes from mosquitto_pub's own defaults file ($XDG_CONFIG_HOME/mosquitto_pub), so
the lines run exactly as printed. What each line must have stored is worked out from
the line's own topic and payload.
"""

import glob
import json
import os
import re
import shlex
import subprocess
import time

from fgcompat import MQTT_HOST, MQTT_PORT, Api, Suite, fail, now_ms, one_line, provision, wait_for

P = provision()
A = Api(P)
GW = P["tb_gateway_seed"]
SEEDS = os.environ.get("FG_SEEDS", "")
WORK = os.environ["FG_WORK"]


def seed_commands():
    """(seed file, command line) for every mosquitto_pub line of the seeds, in order."""
    out = []
    for path in sorted(glob.glob(os.path.join(SEEDS, "*.txt"))):
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            if line.startswith("mosquitto_pub "):
                cmd = line
                while cmd.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    cmd = cmd[:-1].rstrip() + " " + lines[i].strip()
                out.append((os.path.basename(path), cmd))
            i += 1
    return out


def env():
    conf = os.path.join(WORK, "mosquitto-config")
    os.makedirs(conf, exist_ok=True)
    with open(os.path.join(conf, "mosquitto_pub"), "w", encoding="utf-8") as f:
        f.write(f"-p {MQTT_PORT}\n")
    e = dict(os.environ)
    e.update(EDGE_HOST=MQTT_HOST, ACCESS_TOKEN=GW["token"], XDG_CONFIG_HOME=conf)
    return e


def topic_and_message(cmd):
    """-t and -m of a command line, as the shell would pass them."""
    args = shlex.split(cmd.replace('"$EDGE_HOST"', MQTT_HOST).replace('"$ACCESS_TOKEN"', "TOKEN"))
    opts = {}
    for flag, value in zip(args, args[1:]):
        if flag in ("-t", "-m"):
            opts[flag] = value
    return opts.get("-t"), json.loads(opts.get("-m", "null"))


def new_log(device_id, since):
    return [e for e in A.connection(device_id)["log"] if e["at_ms"] >= since]


def expect_connect(payload, since, existed):
    name = payload["device"]
    dev = wait_for(f"device {name!r}", lambda: A.device_by_name(name))
    log = wait_for(f"a connect of {name!r} in GET .../connection",
                   lambda: [e for e in new_log(dev["id"], since) if e["connected"]])
    if log[-1].get("via") != GW["id"]:
        fail(f"connect entry {log[-1]!r}, expected via {GW['id']}")
    if "type" in payload and not existed and dev.get("profile") != payload["type"]:
        fail(f"created with type {payload['type']!r}, the API has profile {dev.get('profile')!r}")


def expect_disconnect(payload, since, existed):
    name = payload["device"]
    dev = A.device_by_name(name)
    if dev is None:
        fail(f"no device {name!r}")
    wait_for(f"a disconnect of {name!r} in GET .../connection",
             lambda: [e for e in new_log(dev["id"], since)
                      if not e["connected"] and e.get("via") == GW["id"]])


def expect_attributes(payload, since, existed):
    for name, attrs in payload.items():
        dev = wait_for(f"device {name!r}", lambda n=name: A.device_by_name(n))

        def stored(d=dev, want=attrs):
            got = A.attributes(d["id"], "client")
            return got if all(got.get(k) == v for k, v in want.items()) else None

        wait_for(f"client attributes {attrs!r} of {name!r}", stored)


def expect_telemetry(payload, since, existed):
    for name, samples in payload.items():
        dev = wait_for(f"device {name!r}", lambda n=name: A.device_by_name(n))
        for s in samples if isinstance(samples, list) else [samples]:
            ts, values = s.get("ts"), s["values"]

            def stored(d=dev, ts=ts, values=values):
                frm = ts if ts is not None else since
                to = ts + 1 if ts is not None else now_ms() + 1
                got = {p["key"]: p["value"] for p in A.data(d["id"], keys=list(values), frm=frm, to=to)}
                return got if got == values else None

            wait_for(f"telemetry {values!r} at {ts} of {name!r} in GET .../data", stored)


def expect_claim(payload, since, existed):
    # Claims leave nothing to read back but the absence of a refusal.
    time.sleep(0.5)
    refused = [r for r in A.rejected() if r.get("at_ms", 0) >= since]
    if refused:
        fail(f"refused: {refused[0]!r}")
    for name in payload:
        if A.device_by_name(name) is None:
            fail(f"no device {name!r}")


EXPECT = {
    "v1/gateway/connect": expect_connect,
    "v1/gateway/disconnect": expect_disconnect,
    "v1/gateway/attributes": expect_attributes,
    "v1/gateway/telemetry": expect_telemetry,
    "v1/gateway/claim": expect_claim,
}


def run_example(cmd, e):
    topic, payload = topic_and_message(cmd)
    if topic not in EXPECT:
        fail(f"no read-back known for topic {topic!r}: {cmd}")
    names = [payload["device"]] if "device" in payload else list(payload)
    existed = all(A.device_by_name(n) is not None for n in names)
    since = now_ms() - 1000
    r = subprocess.run(["bash", "-c", cmd], env=e, capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        fail(f"exited {r.returncode}: {one_line(r.stderr or r.stdout)}")
    EXPECT[topic](payload, since, existed)


def main():
    s = Suite()
    cmds = seed_commands()
    if not cmds:
        s.run("seed-mosquitto-examples", fail, f"no mosquitto_pub lines found in {SEEDS}/*.txt")
        s.exit()
    e = env()
    for n, (seed, cmd) in enumerate(cmds, 1):
        topic, _ = topic_and_message(cmd)
        seed_no = re.match(r"\d+", seed).group(0) if re.match(r"\d+", seed) else seed
        name = f"seed{seed_no}-mosquitto-{n}-{(topic or 'unknown').rsplit('/', 1)[-1]}"
        s.run(name, run_example, cmd, e)
    s.exit()


if __name__ == "__main__":
    main()
