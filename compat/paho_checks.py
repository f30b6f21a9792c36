"""paho-mqtt 2 against fluxgate: MQTT 5 reason codes (CONNACK, PUBACK, DISCONNECT) and
MQTT 3.1.1. The client is driven with loop() so that it never reconnects on its own."""

import json
import os
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fgcompat import MQTT_HOST, MQTT_PORT, Api, Suite, fail, now_ms, provision, wait_for

P = provision()
A = Api(P)
KEY, SECRET = P["losant"]["key"], P["losant"]["secret"]
MAX_PAYLOAD = int(os.environ["FG_MAX_PAYLOAD"])


class Conn:
    """One paho client and what happened to it."""

    def __init__(self, client_id, username, password, protocol=mqtt.MQTTv5):
        self.events = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if username is not None:
            self.c.username_pw_set(username, password)
        ev = self.events
        self.c.on_connect = lambda c, u, flags, rc, props: ev.append(("connack", rc, props))
        self.c.on_disconnect = lambda c, u, flags, rc, props: ev.append(
            ("disconnect", rc, props, flags.is_disconnect_packet_from_server))
        self.c.on_publish = lambda c, u, mid, rc, props: ev.append(("puback", mid, rc, props))

    def of(self, kind):
        return [e for e in self.events if e[0] == kind]

    def until(self, what, pred, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            found = pred()
            if found:
                return found
            if time.monotonic() >= deadline:
                fail(f"{what} (not within {timeout:g} s; events: {self.describe()})")
            self.c.loop(0.05)

    def describe(self):
        return ", ".join(f"{e[0]} {e[2] if e[0] == 'puback' else e[1]}" for e in self.events) or "none"

    def connect(self):
        self.c.connect(MQTT_HOST, MQTT_PORT, keepalive=30)
        return self.until("CONNACK", lambda: self.of("connack") or self.of("disconnect"))[0]

    def connected(self):
        first = self.connect()
        if first[0] != "connack" or first[1].value != 0:
            fail(f"connect refused: {self.describe()}")
        return first

    def close(self):
        try:
            if not self.of("disconnect"):
                self.c.disconnect()
                self.until("disconnect", lambda: self.of("disconnect"), 2)
        except Exception:  # noqa: BLE001 - cleanup only
            pass


def state_payload(**data):
    return json.dumps({"data": data})


def not_stored(device, seq, wait=1.0):
    """`seq` must not show up in the device's state (looked at for `wait` seconds)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for p in A.state(device):
            if p["key"] == "seq" and p["value"] == seq:
                fail(f"refused publish was stored anyway: {p!r}")
        time.sleep(0.2)


def check_connack_bad_credentials():
    dev = "paho-v5-auth"
    c = Conn(dev, KEY, SECRET + "x")
    first = c.connect()
    if first[0] != "connack" or first[1].value != 0x86:
        fail(f"wrong Losant secret: expected CONNACK 0x86 (bad user name or password), got {c.describe()}")
    c = Conn("tb-unknown", "no-such-token", None)
    first = c.connect()
    if first[0] != "connack" or first[1].value != 0x86:
        fail(f"unknown ThingsBoard token: expected CONNACK 0x86, got {c.describe()}")
    if A.connection(dev)["log"]:
        fail(f"a refused connect is in the connection log: {A.connection(dev)['log'][:1]!r}")


def check_connack_not_authorized():
    dev = "paho-v5-auth"
    scoped = P["losant_scoped"]
    c = Conn(dev, scoped["key"], scoped["secret"])
    first = c.connect()
    if first[0] != "connack" or first[1].value != 0x87:
        fail(f"key that does not open {dev}: expected CONNACK 0x87 (not authorized), got {c.describe()}")
    if A.connection(dev)["log"]:
        fail(f"a refused connect is in the connection log: {A.connection(dev)['log'][:1]!r}")


def check_puback_not_authorized():
    dev, other = "paho-v5-deny", "compat-other"
    started = now_ms() - 1000
    c = Conn(dev, KEY, SECRET)
    c.connected()
    try:
        seq = now_ms()
        tries = {
            f"losant/{other}/state (another device's topic)": state_payload(seq=seq),
            "compat/custom (a custom topic, key without custom topics)": "hello",
        }
        mids = {}
        for topic, payload in tries.items():
            mids[c.c.publish(topic.split(" ")[0], payload, qos=1).mid] = topic
        acks = c.until("PUBACKs", lambda: len(c.of("puback")) >= len(mids) and c.of("puback"))
        for _, mid, rc, _ in acks:
            if rc.value != 0x87:
                fail(f"{mids[mid]}: PUBACK {rc.value:#x} {rc}, expected 0x87 (not authorized)")
        if c.of("disconnect"):
            fail(f"connection closed after a refused publish: {c.describe()}")
    finally:
        c.close()
    not_stored(other, seq, 0.5)
    def logged():
        r = [r for r in A.rejected(dev) if r.get("at_ms", 0) >= started]
        return r if len(r) >= len(tries) else None

    wait_for("both refusals in GET /applications/{app}/rejected", logged)


def check_qos2_refused():
    """fluxgate advertises Maximum QoS 1. MQTT 5 (3.3.1.2 / 4.13): a PUBLISH above the
    advertised Maximum QoS is answered with DISCONNECT 0x9B (QoS not supported)."""
    dev = "paho-v5-qos2"
    c = Conn(dev, KEY, SECRET)
    connack = c.connected()
    max_qos = getattr(connack[2], "MaximumQoS", None)
    if max_qos != 1:
        fail(f"CONNACK Maximum QoS {max_qos!r}, expected 1 (QoS 2 is not supported)")
    seq = now_ms()
    c.c.publish(f"losant/{dev}/state", state_payload(seq=seq), qos=2)
    try:
        gone = c.until("the server's DISCONNECT", lambda: c.of("disconnect"), 3)[0]
    finally:
        c.close()
    if c.of("puback"):
        fail(f"the QoS 2 publish was acknowledged: {c.describe()}")
    if not gone[3] or gone[1].value != 0x9B:
        fail(f"expected DISCONNECT 0x9B (QoS not supported), got {gone[1].value:#x} {gone[1]}"
             f" ({'from the server' if gone[3] else 'no DISCONNECT packet'})")
    not_stored(dev, seq)


def check_packet_too_large():
    """Larger than the Maximum Packet Size: DISCONNECT 0x95 (PROTOCOLS.md; MQTT 5 4.13)."""
    dev = "paho-v5-big"
    c = Conn(dev, KEY, SECRET)
    connack = c.connected()
    max_packet = getattr(connack[2], "MaximumPacketSize", None)
    size = (max_packet or MAX_PAYLOAD + 8192) + 16 * 1024
    seq = now_ms()
    c.c.publish(f"losant/{dev}/state", state_payload(seq=seq, blob="x" * size), qos=1)
    try:
        gone = c.until("the server's DISCONNECT", lambda: c.of("disconnect"), 3)[0]
    finally:
        c.close()
    if c.of("puback"):
        fail(f"the oversize publish was acknowledged: {c.describe()}")
    if not gone[3] or gone[1].value != 0x95:
        fail(f"expected DISCONNECT 0x95 (packet too large), got {gone[1].value:#x} {gone[1]}")
    not_stored(dev, seq)


def check_payload_too_large():
    """Over max_payload_bytes but within the packet limit: PUBACK 0x83 with a reason
    string and a rejected-log entry (PROTOCOLS.md)."""
    dev = "paho-v5-payload"
    started = now_ms() - 1000
    c = Conn(dev, KEY, SECRET)
    c.connected()
    seq = now_ms()
    try:
        c.c.publish(f"losant/{dev}/state", state_payload(seq=seq, blob="x" * (MAX_PAYLOAD + 100)), qos=1)
        ack = c.until("PUBACK", lambda: c.of("puback") or c.of("disconnect"))[0]
    finally:
        c.close()
    if ack[0] != "puback" or ack[2].value != 0x83:
        fail(f"expected PUBACK 0x83, got {c.describe()}")
    if not getattr(ack[3], "ReasonString", None):
        fail("PUBACK 0x83 without a reason string")
    not_stored(dev, seq, 0.3)
    wait_for("a rejected-log entry", lambda: [r for r in A.rejected(dev) if r.get("at_ms", 0) >= started])


def check_puback_payload_format_invalid():
    """Malformed JSON: PUBACK 0x99 (payload format invalid) with a reason, a rejected-log
    entry saying why, and the connection's next publish still accepted and stored."""
    dev = "paho-v5-malformed"
    started = now_ms() - 1000
    c = Conn(dev, KEY, SECRET)
    c.connected()
    seq = now_ms()
    try:
        c.c.publish(f"losant/{dev}/state", '{"data": {"seq": 1,', qos=1)
        bad = c.until("PUBACK", lambda: c.of("puback") or c.of("disconnect"))[0]
        if bad[0] != "puback" or bad[2].value != 0x99:
            fail(f"expected PUBACK 0x99 (payload format invalid), got {c.describe()}")
        if not getattr(bad[3], "ReasonString", None):
            fail("PUBACK 0x99 without a reason string")
        c.c.publish(f"losant/{dev}/state", state_payload(seq=seq), qos=1)
        good = c.until("the second PUBACK", lambda: len(c.of("puback")) >= 2 and c.of("puback"))[1]
        if good[2].value != 0:
            fail(f"the next publish was refused: {c.describe()}")
    finally:
        c.close()
    wait_for("the next publish's state through the API",
             lambda: [p for p in A.state(dev) if p["key"] == "seq" and p["value"] == seq])
    rejected = wait_for("a rejected-log entry",
                        lambda: [r for r in A.rejected(dev) if r.get("at_ms", 0) >= started])
    if rejected[0].get("code") != "malformed_json":
        fail(f"rejected-log entry says {rejected[0]!r}, expected code malformed_json")


BURST = 25


def check_v5_burst():
    """25 QoS 1 states at once with paho's default settings (up to 20 in flight): all of
    them stored. (fluxgate's CONNACK says Receive Maximum; paho does not limit itself by it.)"""
    dev = "paho-v5-burst"
    c = Conn(dev, KEY, SECRET)
    connack = c.connected()
    base = now_ms() - 60_000
    try:
        for i in range(BURST):
            c.c.publish(f"losant/{dev}/state", json.dumps({"data": {"seq": i}, "time": base + i}), qos=1)
        c.until("PUBACKs", lambda: len(c.of("puback")) >= BURST or c.of("disconnect"), 5)
    finally:
        c.close()
    gone = [e for e in c.events if e[0] == "disconnect" and e[3]]
    got = {p["ts_ms"] - base: p["value"] for p in A.data(dev, keys=["seq"], frm=base, to=base + BURST)}
    if len(got) != BURST or gone:
        why = (f"; the server sent DISCONNECT {gone[0][1].value:#x} {gone[0][1]}"
               f" (CONNACK Receive Maximum {getattr(connack[2], 'ReceiveMaximum', None)})") if gone else ""
        fail(f"{len(c.of('puback'))} of {BURST} acknowledged, {len(got)} stored{why}")


def check_v311_publish():
    dev = "paho-v3"
    c = Conn(dev, KEY, SECRET, protocol=mqtt.MQTTv311)
    c.connected()
    seq = now_ms()
    try:
        c.c.publish(f"losant/{dev}/state", state_payload(seq=seq, temperature=3.5), qos=1)
        c.until("PUBACK", lambda: c.of("puback"))
    finally:
        c.close()
    pts = wait_for("the state in GET .../state",
                   lambda: [p for p in A.state(dev) if p["key"] == "seq" and p["value"] == seq])
    temp = [p for p in A.state(dev) if p["key"] == "temperature"]
    if not temp or temp[0]["value"] != 3.5 or temp[0]["ts_ms"] != pts[0]["ts_ms"]:
        fail(f"temperature: the API has {temp!r}")


def check_v311_bad_credentials():
    c = Conn("paho-v3", KEY, "not-the-secret", protocol=mqtt.MQTTv311)
    first = c.connect()
    # paho reports the v3 return code 4 as the v5 reason "Bad user name or password".
    if first[0] != "connack" or first[1].value != 0x86:
        fail(f"expected CONNACK return code 4 (bad user name or password), got {c.describe()}")


def check_v311_qos2_refused():
    """MQTT 3.1.1 has no negative acknowledgement: QoS 2 is refused by closing."""
    dev = "paho-v3"
    c = Conn(dev, KEY, SECRET, protocol=mqtt.MQTTv311)
    c.connected()
    seq = now_ms()
    c.c.publish(f"losant/{dev}/state", state_payload(seq=seq), qos=2)
    try:
        c.until("the connection closed", lambda: c.of("disconnect"), 3)
    finally:
        c.close()
    if c.of("puback"):
        fail(f"the QoS 2 publish completed: {c.describe()}")
    not_stored(dev, seq)


def main():
    s = Suite()
    s.run("paho-v5-connack-bad-credentials", check_connack_bad_credentials)
    s.run("paho-v5-connack-not-authorized", check_connack_not_authorized)
    s.run("paho-v5-puback-not-authorized", check_puback_not_authorized)
    s.run("paho-v5-qos2-refused", check_qos2_refused)
    s.run("paho-v5-packet-too-large", check_packet_too_large)
    s.run("paho-v5-payload-too-large", check_payload_too_large)
    s.run("paho-v5-puback-payload-format-invalid", check_puback_payload_format_invalid)
    s.run("paho-v5-burst-25-qos1", check_v5_burst)
    s.run("paho-v311-publish", check_v311_publish)
    s.run("paho-v311-connack-bad-credentials", check_v311_bad_credentials)
    s.run("paho-v311-qos2-refused", check_v311_qos2_refused)
    s.exit()


if __name__ == "__main__":
    main()
