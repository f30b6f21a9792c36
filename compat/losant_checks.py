"""Losant's own Python SDK (`losant-mqtt`, on paho-mqtt 1.x) against fluxgate.

The SDK connects to `Device.mqtt_endpoint` on a port it hard-codes (1883 for plain MQTT).
The endpoint is a class attribute meant to be set; the port is not configurable, so this
process redirects connections to 127.0.0.1:1883 to the suite's MQTT port (a port forward,
nothing else: the SDK and paho run unmodified).
"""

import datetime
import socket
import time

from losantmqtt import Device

from fgcompat import MQTT_HOST, MQTT_PORT, Api, Suite, fail, latest_values, provision, wait_for

_create_connection = socket.create_connection


def _forward(address, *args, **kwargs):
    host, port = address[0], address[1]
    if host == MQTT_HOST and port == 1883:
        address = (host, MQTT_PORT)
    return _create_connection(address, *args, **kwargs)


socket.create_connection = _forward
Device.mqtt_endpoint = MQTT_HOST

P = provision()
A = Api(P)
KEY, SECRET = P["losant"]["key"], P["losant"]["secret"]


def loop_until(device, what, cond, timeout=5.0):
    """Drives the SDK's non-blocking loop until `cond()` or the timeout."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            fail(f"{what} (not within {timeout:g} s)")
        device.loop(0.05)


def connected_device(device_id, events):
    d = Device(device_id, KEY, SECRET, secure=False)
    d.add_event_observer("connect", lambda dev: events.append(("connect",)))
    d.add_event_observer("close", lambda dev: events.append(("close",)))
    d.add_event_observer("command", lambda dev, cmd: events.append(("command", cmd)))
    d.connect(blocking=False)
    loop_until(d, "the SDK's connect event", lambda: ("connect",) in events)
    return d


def close(device):
    try:
        device.close()
        deadline = time.monotonic() + 3
        while device.is_connected() and time.monotonic() < deadline:
            device.loop(0.05)
    except Exception:  # noqa: BLE001 - cleanup only
        pass


def check_state():
    dev = "losant-sdk-state"
    events = []
    d = connected_device(dev, events)
    try:
        sent_at = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=123000)
        state = {"temperature": 21.5, "label": "losant-sdk", "on": True}
        # send_state's return value is not checked: it compares an int with paho's
        # MQTTMessageInfo and is False even on success. The API is the judge.
        d.send_state(state, sent_at)
        want_ts = int(sent_at.timestamp() * 1000)

        def stored():
            d.loop(0.05)
            pts = A.state(dev)
            return pts if {p["key"] for p in pts} >= set(state) else None

        pts = wait_for("the state in GET .../state", stored)
        got = latest_values(pts)
        for k, v in state.items():
            if got.get(k) != v:
                fail(f"{k}: sent {v!r}, the API has {got.get(k)!r}")
        ts = {p["ts_ms"] for p in pts if p["key"] in state}
        if ts != {want_ts}:
            fail(f"state time: sent {want_ts}, the API has {sorted(ts)}")
        if not A.connection(dev)["connected"]:
            fail("the API does not show the device connected while it is")
    finally:
        close(d)


def check_command():
    dev = "losant-sdk-cmd"
    events = []
    d = connected_device(dev, events)
    try:
        # The SDK subscribes to its command topic in its on_connect; a command sent before
        # the SUBACK has nowhere to go. Wait for the subscription the SDK made.
        subacks = []
        d._mqtt_client.on_subscribe = lambda *a: subacks.append(a)  # observe only
        loop_until(d, "the SUBACK of the SDK's command subscription", lambda: subacks, 3.0)
        body = {"name": "setpoint", "payload": {"value": 22, "unit": "C"},
                "time": {"$date": "2024-05-06T07:08:09.010Z"}}
        sent = A.command_send(dev, body)
        loop_until(d, "the command at the SDK", lambda: any(e[0] == "command" for e in events))
        cmd = next(e[1] for e in events if e[0] == "command")
        if cmd.get("name") != body["name"] or cmd.get("payload") != body["payload"]:
            fail(f"the SDK got {cmd!r}, sent {body!r}")
        when = cmd.get("time")
        want = datetime.datetime(2024, 5, 6, 7, 8, 9, 10000, tzinfo=datetime.timezone.utc)
        if not isinstance(when, datetime.datetime) or when != want:
            fail(f"the SDK decoded time {when!r}, sent {body['time']!r}")

        # The SDK subscribes to its commands at QoS 0 (losantmqtt/device.py: subscribe()
        # with paho's default QoS): nothing acknowledges the command, so it is `sent` at
        # most, with the front's report that it was written to the connection.
        def written():
            d.loop(0.05)
            got = A.command(sent["commandId"])
            last = got["history"][-1] if got["history"] else {}
            qos0 = "written to the device's connection at QoS 0" in (last.get("detail") or "")
            return got if got["command"]["status"] == "sent" and qos0 else None

        wait_for("command status `sent`, written at QoS 0, in GET /applications/{app}/commands/{id}",
                 written)
    finally:
        close(d)


def check_one_shot():
    """Connect, send state, disconnect at once: the state must be stored."""
    dev = "losant-sdk-oneshot"
    events = []
    d = connected_device(dev, events)
    state = {"temperature": 7.25, "seq": 1}
    d.send_state(state)
    d.close()
    loop_until(d, "the SDK's close event", lambda: ("close",) in events, 3.0)
    pts = wait_for("the one-shot state in GET .../state",
                   lambda: [p for p in A.state(dev) if p["key"] in state])
    got = latest_values(pts)
    if got != state:
        fail(f"sent {state!r}, the API has {got!r}")


def check_disconnect_logged():
    """The SDK's close() sends DISCONNECT: the connection log must say the client left, not
    that the connection was lost - after a plain close and after the one-shot pattern
    (a state and the DISCONNECT right behind it)."""
    started = int(time.time() * 1000) - 1000
    events = []
    d = connected_device("losant-sdk-state", events)
    d.close()
    loop_until(d, "the SDK's close event", lambda: ("close",) in events, 3.0)
    for dev, how in (("losant-sdk-state", "a plain close()"),
                     ("losant-sdk-oneshot", "send_state() then close() (losant-sdk-one-shot)")):
        def logged(dev=dev):
            log = [e for e in A.connection(dev)["log"] if e["at_ms"] >= started]
            return log if log and not log[0]["connected"] else None

        log = wait_for(f"a disconnect of {dev} in GET .../connection", logged)
        if log[0].get("reason") != "client disconnect":
            fail(f"after {how} the connection log says {log[0].get('reason')!r}, "
                 "not 'client disconnect'")


def main():
    s = Suite()
    s.run("losant-sdk-state", check_state)
    s.run("losant-sdk-command", check_command)
    s.run("losant-sdk-one-shot", check_one_shot)
    s.run("losant-sdk-disconnect-logged", check_disconnect_logged)
    s.exit()


if __name__ == "__main__":
    main()
