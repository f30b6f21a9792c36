"""ThingsBoard's Python gateway SDK (`tb_gateway_mqtt.TBGatewayMqttClient` from
tb-mqtt-client) against fluxgate: the gateway API of seed 001 as the SDK speaks it."""

import copy
import json
import logging
import secrets
import sys
import threading
import time

from tb_gateway_mqtt import GATEWAY_ATTRIBUTES_REQUEST_TOPIC, TBGatewayMqttClient

from fgcompat import (MQTT_HOST, MQTT_PORT, Api, Suite, fail, now_ms, ok, provision, stop_sdk,
                      wait_for)

logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")

P = provision()
A = Api(P)
GW = P["tb_gateway"]["id"]
DEVNAME = "Compat GW Dev 1"
BURST = 50

rpc_requests = []
shared_pushes = []


def gateway_client(token, answers):
    """The SDK's gateway client; the getSessionLimits answers it gets are recorded in
    `answers` on their way to the SDK's own handler (which applies them)."""
    c = TBGatewayMqttClient(MQTT_HOST, port=MQTT_PORT, username=token)
    apply = c.service_configuration_callback

    def record(request_id, response, *args, **kwargs):
        answers.append(copy.deepcopy(response))
        return apply(request_id, response, *args, **kwargs)

    c.service_configuration_callback = record
    return c


session_answers = []
client = gateway_client(P["tb_gateway"]["token"], session_answers)


def _on_rpc(gw, content):
    rpc_requests.append(content)
    data = content.get("data") or {}
    gw.gw_send_rpc_reply(content.get("device"), data.get("id"),
                         {"ok": True, "method": data.get("method"), "echo": data.get("params")})


client.gw_set_server_side_rpc_request_handler(_on_rpc)


def published(info, what, timeout=3.0):
    """Waits for the PUBACK of every message the SDK sent for one call."""
    infos = info.message_info if isinstance(info.message_info, list) else [info.message_info]
    if info.rc() != 0:
        fail(f"{what}: the SDK's publish result {info.rc()}")
    deadline = time.monotonic() + timeout
    while not all(i.is_published() for i in infos):
        if time.monotonic() > deadline:
            fail(f"{what}: no PUBACK within {timeout:g} s")
        time.sleep(0.02)


def the_device():
    d = A.device_by_name(DEVNAME)
    if d is None:
        fail(f"no device named {DEVNAME!r} in GET /applications/{{app}}/devices")
    return d


def check_session_limits():
    client.connect(keepalive=30)
    wait_for("the SDK connected", client.is_connected, 5)
    answer = wait_for("an answer to the SDK's getSessionLimits RPC",
                      lambda: session_answers[0] if session_answers else None, 5)
    if not isinstance(answer, dict) or "rateLimits" not in answer:
        fail(f"getSessionLimits answer without rateLimits: {answer!r}")
    wait_for("the SDK applying the answer (rate_limits_received)",
             lambda: client.rate_limits_received, 2)
    if not A.connection(GW)["connected"]:
        fail("GET .../connection does not show the gateway connected")


def check_session_limits_gateway():
    """PROTOCOLS.md: the answer reports the limits in force, `gatewayRateLimits` included
    (the SDK throttles the devices behind the gateway by them)."""
    if not session_answers:
        fail("no getSessionLimits answer (see tb-gw-session-limits)")
    answer = session_answers[0]
    gw_limits = answer.get("gatewayRateLimits")
    if not isinstance(gw_limits, dict):
        fail(f"a gateway's getSessionLimits answer has no gatewayRateLimits: {answer!r}")


def check_connect_device():
    started = now_ms() - 1000
    published(client.gw_connect_device(DEVNAME, "compat-sensor"), "gw_connect_device")
    dev = wait_for(f"device {DEVNAME!r} created", lambda: A.device_by_name(DEVNAME))
    if dev.get("profile") != "compat-sensor":
        fail(f"connect type 'compat-sensor', the API has profile {dev.get('profile')!r}")
    log = wait_for("a connect in GET .../connection",
                   lambda: [e for e in A.connection(dev["id"])["log"] if e["at_ms"] >= started])
    if not log[0]["connected"] or log[0].get("via") != GW:
        fail(f"connection log: {log[0]!r}, expected connected via {GW}")


def check_attributes():
    attrs = {"serial": "SN-0001", "slots": 8, "eol": False}
    published(client.gw_send_attributes(DEVNAME, attrs), "gw_send_attributes")
    dev = the_device()

    def stored():
        a = A.attributes(dev["id"], "client")
        return a if all(k in a for k in attrs) else None

    got = wait_for("client attributes in GET .../attributes/client", stored)
    for k, v in attrs.items():
        if got[k] != v:
            fail(f"{k}: sent {v!r}, the API has {got[k]!r}")


def ask(send):
    """Runs an SDK attribute request; returns the content its callback got."""
    answers = []
    done = threading.Event()

    def on_answer(content, error):
        answers.append((content, error))
        done.set()

    send(on_answer)
    if not done.wait(5):
        fail("no answer reached the SDK's callback within 5 s")
    content, error = answers[0]
    if error is not None:
        fail(f"the SDK reported {error!r}")
    return content


def answer_values(content):
    """The `values` of a gateway attribute answer (the SDK always asks with `keys`)."""
    if not isinstance(content, dict):
        fail(f"answer is not an object: {content!r}")
    if "values" in content and isinstance(content["values"], dict):
        return content["values"]
    fail(f"answer without `values`: {content!r}")
    return None


def check_attribute_request_sdk():
    dev = the_device()
    A.shared_set(dev["id"], {"mode": "eco", "limit": 5})
    shared_now = A.attributes(dev["id"], "shared")
    client_now = A.attributes(dev["id"], "client")
    if "serial" not in client_now:
        fail("needs the client attribute serial (tb-gw-attributes)")
    content = ask(lambda cb: client.gw_request_shared_attributes(DEVNAME, ["mode", "limit"], cb))
    want = {"mode": shared_now["mode"], "limit": shared_now["limit"]}
    if content.get("device") != DEVNAME or answer_values(content) != want:
        fail(f"shared: answer {content!r}; the API has {want!r}")
    content = ask(lambda cb: client.gw_request_client_attributes(DEVNAME, ["serial"], cb))
    want = {"serial": client_now["serial"]}
    if content.get("device") != DEVNAME or answer_values(content) != want:
        fail(f"client: answer {content!r}; the API has {want!r}")


def check_attribute_request_documented():
    """Seed 001's shape, published raw on the SDK's connection; the answer is matched by
    `id` through the SDK's own callback table."""
    dev = the_device()
    shared_now = A.attributes(dev["id"], "shared")
    client_now = A.attributes(dev["id"], "client")
    if "mode" not in shared_now or "serial" not in client_now:
        fail("needs attributes serial (client) and mode (shared) from the checks before")

    def send(cb):
        req_id = client._add_attr_request_callback(cb)  # the id the SDK matches answers by
        body = {"id": req_id, "device": DEVNAME, "client": ["serial"], "shared": ["mode"]}
        client._client.publish(GATEWAY_ATTRIBUTES_REQUEST_TOPIC, json.dumps(body), qos=1)

    content = ask(send)
    if "values" in content:
        got = dict(answer_values(content))
    else:
        got = {**(content.get("client") or {}), **(content.get("shared") or {})}
    want = {"serial": client_now["serial"], "mode": shared_now["mode"]}
    if content.get("device") != DEVNAME or got != want:
        fail(f"answer {content!r}; the API has {want!r}")


def check_shared_push():
    dev = the_device()
    client.gw_subscribe_to_all_device_attributes(DEVNAME, shared_pushes.append)
    update = {"threshold": 9, "unit": "bar"}
    A.shared_set(dev["id"], update)
    got = wait_for("the shared-attribute update at the SDK's callback",
                   lambda: next((c for c in shared_pushes
                                 if "threshold" in (c.get("data") or {})), None))
    stored = A.attributes(dev["id"], "shared")
    if got.get("device") != DEVNAME or got["data"] != update:
        fail(f"the SDK got {got!r}, the API set {update!r}")
    if {k: stored.get(k) for k in update} != update:
        fail(f"GET .../attributes/shared has {stored!r}")


def check_rpc():
    dev = the_device()
    params = {"pin": 1}
    status, body = A.rpc("twoway", dev["id"], {"method": "toggle_gpio", "params": params,
                                                 "timeout": 5000})
    if not rpc_requests:
        fail(f"the SDK's gateway RPC handler was not called (API answered {status}: {body!r})")
    req = rpc_requests[-1]
    if req.get("device") != DEVNAME or (req.get("data") or {}).get("method") != "toggle_gpio":
        fail(f"the gateway got {req!r}")
    want = {"ok": True, "method": "toggle_gpio", "echo": params}
    if status != 200 or body != want:
        fail(f"POST /api/rpc/twoway answered {status} {body!r}, the SDK replied {want!r}")
    cmds = [c for c in A.commands(dev["id"]) if c["command"]["name"] == "toggle_gpio"]
    if not cmds or cmds[0]["status"] != "replied" or cmds[0].get("reply") != want:
        fail(f"GET .../commands: {cmds[:1]!r}")


def check_claim():
    dev = the_device()
    secret = f"fg-gw-claim-{now_ms()}"
    published(client.gw_claim(DEVNAME, secret, 60000), "gw_claim")
    wait_for(f"the claiming window the gateway opened for {DEVNAME!r}",
             lambda: ok("GET", A.dev(dev["id"]) + "/claim", token=A.read).get("windowOpen"))
    status, body = A.claim(dev["id"], {"secretKey": "wrong"})
    if status != 403:
        fail(f"a claim with the wrong secret answered {status} {body!r}, want 403")
    status, body = A.claim(dev["id"], {"secretKey": secret, "owner": "customer-gw"})
    if status != 200 or body.get("response") != "SUCCESS":
        fail(f"the claim with the gateway's secret answered {status} {body!r}")


def check_disconnect_device():
    dev = the_device()
    started = now_ms() - 1000
    published(client.gw_disconnect_device(DEVNAME), "gw_disconnect_device")
    log = wait_for("a disconnect in GET .../connection",
                   lambda: [e for e in A.connection(dev["id"])["log"]
                            if e["at_ms"] >= started and not e["connected"]])
    if log[0].get("via") != GW:
        fail(f"disconnect entry {log[0]!r}, expected via {GW}")
    if A.connection(dev["id"])["connected"]:
        fail("GET .../connection still shows the device connected")
    # No longer routed through the gateway.
    calls = len(rpc_requests)
    status, body = A.rpc("twoway", dev["id"], {"method": "after_disconnect", "timeout": 1500})
    if len(rpc_requests) != calls:
        fail(f"an RPC still reached the gateway after disconnect: {rpc_requests[-1]!r}")
    if status == 200:
        fail(f"two-way RPC to a disconnected device answered 200 {body!r}")


def check_disconnect_unknown():
    """Seed 001: `v1/gateway/disconnect` for a device that does not exist is ignored."""
    name = f"Compat Never Seen {secrets.token_hex(4)}"
    published(client.gw_disconnect_device(name), "gw_disconnect_device")
    # A QoS 1 PUBACK from standalone means the pipeline has processed the message; look a
    # little longer anyway.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        found = A.devices_named(name)
        if found:
            fail(f"disconnect of unknown {name!r} created device {found[0]['id']}")
        time.sleep(0.2)


def check_session_end_disconnects_devices():
    """PROTOCOLS.md: when the gateway's session ends, every device reached through it is
    disconnected (logged). The gateway's clean disconnect ends this client's session."""
    name = "Compat GW Dev 2"
    published(client.gw_connect_device(name), "gw_connect_device")

    def online():
        d = A.device_by_name(name)
        return d if d and A.connection(d["id"])["connected"] else None

    dev = wait_for(f"device {name!r} connected through the gateway", online)
    gw_left = now_ms() - 1000
    client.stop()
    client.disconnect()
    wait_for("the gateway's disconnect in GET .../connection",
             lambda: [e for e in A.connection(GW)["log"]
                      if e["at_ms"] >= gw_left and not e["connected"]])
    deadline = time.monotonic() + 3
    while A.connection(dev["id"])["connected"]:
        if time.monotonic() > deadline:
            fail(f"the gateway's session ended; {name!r} still shows connected "
                 f"(last entry {A.connection(dev['id'])['log'][0]!r})")
        time.sleep(0.1)


def check_restart_without_connect():
    """A restarted gateway (ThingsBoard IoT Gateway's behaviour) does not send
    `v1/gateway/connect` again for the devices it remembers. Its attribute request for a
    device that is offline now is answered, and its telemetry about a device connects that
    device through it: RPC reaches it again."""
    dev = the_device()
    other = A.device_by_name("Compat GW Dev 2")
    if other is None or A.connection(other["id"])["connected"]:
        fail("needs Compat GW Dev 2 offline (tb-gw-session-end-disconnects-devices)")
    if A.connection(dev["id"])["connected"]:
        fail(f"needs {DEVNAME!r} offline (tb-gw-disconnect-device)")
    A.shared_set(other["id"], {"mode": "night"})
    calls = []

    def on_rpc(gw, content):
        calls.append(content)
        data = content.get("data") or {}
        gw.gw_send_rpc_reply(content.get("device"), data.get("id"), {"ok": True, "again": True})

    again = gateway_client(P["tb_gateway"]["token"], [])
    again.gw_set_server_side_rpc_request_handler(on_rpc)
    try:
        again.connect(keepalive=30)
        wait_for("the restarted gateway connected", again.is_connected, 5)
        content = ask(lambda cb: again.gw_request_shared_attributes("Compat GW Dev 2", ["mode"], cb))
        if content.get("device") != "Compat GW Dev 2" or answer_values(content) != {"mode": "night"}:
            fail(f"attribute request for an offline device: answer {content!r}")
        published(again.gw_send_telemetry(DEVNAME, {"ts": now_ms(), "values": {"restarts": 1}}),
                  "gw_send_telemetry")
        wait_for(f"{DEVNAME!r} connected again through the gateway, without a connect",
                 lambda: A.connection(dev["id"])["connected"])
        status, body = A.rpc("twoway", dev["id"], {"method": "after_restart", "timeout": 5000})
        if status != 200 or body != {"ok": True, "again": True}:
            fail(f"POST /api/rpc/twoway answered {status} {body!r}; the gateway got {calls!r}")
    finally:
        stop_sdk(again)


def check_burst():
    """One gateway, 50 devices, one telemetry message each, at once: every point stored."""
    gw_id = P["tb_gateway_burst"]["id"]
    answers = []
    burst = gateway_client(P["tb_gateway_burst"]["token"], answers)
    try:
        burst.connect(keepalive=30)
        wait_for("the burst gateway connected", burst.is_connected, 5)
        wait_for("the burst gateway's session limits applied",
                 lambda: burst.rate_limits_received, 5)
        ts = now_ms() - 30_000
        names = [f"Compat Burst {i:02d}" for i in range(BURST)]
        sent = []

        def send_all():
            # The SDK's publish waits (without bound) while it is disconnected, so this runs
            # in a thread of its own; stop() below releases it.
            for i, n in enumerate(names):
                if burst.stopped:
                    return
                burst.gw_send_telemetry(n, {"ts": ts, "values": {"seq": i}})
                sent.append(n)

        sender = threading.Thread(target=send_all, name="burst", daemon=True)
        sender.start()
        sender.join(5)
        deadline = time.monotonic() + 6
        stored = {}
        while True:
            by_name = {d["name"]: d["id"] for d in A.devices() if d["name"] in names}
            for i, n in enumerate(names):
                if n in stored or n not in by_name:
                    continue
                pts = A.data(by_name[n], keys=["seq"], frm=ts, to=ts + 1)
                if pts:
                    stored[n] = pts[0]["value"]
            if len(stored) == BURST or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        wrong = {n: v for n, v in stored.items() if v != names.index(n)}
        if wrong:
            fail(f"wrong values stored: {wrong!r}")
        if len(stored) != BURST:
            gone = [e for e in A.connection(gw_id)["log"] if not e["connected"]]
            why = f"; gateway disconnected: {gone[0].get('reason')!r}" if gone else ""
            limits = answers[0].get("gatewayRateLimits") if answers else None
            fail(f"{len(stored)} of {BURST} devices' points readable through the API, "
                 f"{BURST - len(by_name)} devices not created, the SDK got {len(sent)} of "
                 f"{BURST} publishes out (announced gatewayRateLimits: {limits!r}){why}")
    finally:
        stop_sdk(burst)


def main():
    s = Suite()
    dependent = [
        ("tb-gw-session-limits-gateway", check_session_limits_gateway),
        ("tb-gw-connect-device", check_connect_device),
        ("tb-gw-attributes", check_attributes),
        ("tb-gw-attribute-request-sdk", check_attribute_request_sdk),
        ("tb-gw-attribute-request-documented", check_attribute_request_documented),
        ("tb-gw-shared-attribute-push", check_shared_push),
        ("tb-gw-rpc", check_rpc),
        ("tb-gw-claim", check_claim),
        ("tb-gw-disconnect-device", check_disconnect_device),
        ("tb-gw-disconnect-unknown-device", check_disconnect_unknown),
        ("tb-gw-session-end-disconnects-devices", check_session_end_disconnects_devices),
    ]
    try:
        s.run("tb-gw-session-limits", check_session_limits)
        for name, fn in dependent:
            if client.is_connected():
                s.run(name, fn)
            else:
                s.run(name, fail, "the gateway SDK is not connected")
        s.run("tb-gw-restart-without-connect", check_restart_without_connect)
        s.run("tb-gw-telemetry-burst-50", check_burst)
    finally:
        stop_sdk(client)
        time.sleep(0.2)
    s.exit()


if __name__ == "__main__":
    main()
