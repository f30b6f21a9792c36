"""ThingsBoard's Python device SDK (`tb_device_mqtt.TBDeviceMqttClient` from tb-mqtt-client,
on tb-paho-mqtt-client, MQTT 5) against fluxgate."""

import copy
import logging
import os
import sys
import threading
import time

import tb_device_mqtt
from tb_device_mqtt import TBDeviceMqttClient

from fgcompat import (MQTT_HOST, MQTT_PORT, Api, Suite, fail, http, now_ms, ok, provision, q,
                      stop_sdk, wait_for)

logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")

P = provision()
A = Api(P)
DEV = P["tb_device"]["id"]
MAX_PAYLOAD = int(os.environ["FG_MAX_PAYLOAD"])

# What the SDK sees, recorded by the callbacks it calls.
session_answers = []
shared_pushes = []
rpc_requests = []

client = TBDeviceMqttClient(MQTT_HOST, port=MQTT_PORT, username=P["tb_device"]["token"])
# Record the getSessionLimits answer on its way to the SDK's own handler (which applies it).
_apply = client.service_configuration_callback


def _record_session_answer(request_id, response, *args, **kwargs):
    session_answers.append(copy.deepcopy(response))
    return _apply(request_id, response, *args, **kwargs)


client.service_configuration_callback = _record_session_answer


def _on_rpc(request_id, request):
    rpc_requests.append((request_id, request))
    client.send_rpc_reply(request_id, {"method": request.get("method"),
                                       "echo": request.get("params")})


client.set_server_side_rpc_request_handler(_on_rpc)


def check_connect_and_session_limits():
    client.connect(keepalive=30)
    wait_for("the SDK connected", client.is_connected, 5)
    answer = wait_for("an answer to the SDK's getSessionLimits RPC",
                      lambda: session_answers[0] if session_answers else None, 5)
    if not isinstance(answer, dict) or "rateLimits" not in answer:
        fail(f"getSessionLimits answer without rateLimits: {answer!r}")
    wait_for("the SDK applying the answer (rate_limits_received)",
             lambda: client.rate_limits_received, 2)
    if answer.get("maxPayloadSize") != MAX_PAYLOAD:
        fail(f"maxPayloadSize {answer.get('maxPayloadSize')!r}, fluxgate runs with {MAX_PAYLOAD}")
    want = int(MAX_PAYLOAD * tb_device_mqtt.DEFAULT_RATE_LIMIT_PERCENTAGE / 100)
    if client.max_payload_size != want:
        fail(f"the SDK did not apply maxPayloadSize: {client.max_payload_size} != {want}")
    if not A.connection(DEV)["connected"]:
        fail("GET .../connection does not show the device connected")


def check_telemetry():
    ts = now_ms() - 60_000
    values = {"temperature": 22.5, "on": True, "label": "tb-sdk", "count": 41,
              "obj": {"a": 1, "b": [1, 2]}}
    rc = client.send_telemetry({"ts": ts, "values": values}).get()
    if rc != 0:
        fail(f"telemetry with ts: publish result {rc}")
    before = now_ms()
    rc = client.send_telemetry({"humidity": 55}).get()
    if rc != 0:
        fail(f"telemetry without ts: publish result {rc}")
    after = now_ms()
    def stored():
        pts = A.data(DEV, keys=list(values), frm=ts, to=ts + 1)
        return pts if len(pts) >= len(values) else None

    pts = wait_for("telemetry with ts in GET .../data", stored)
    got = {p["key"]: p["value"] for p in pts}
    if got != values:
        fail(f"sent {values!r} at {ts}, the API has {got!r}")
    hum = wait_for("telemetry without ts in GET .../state",
                   lambda: [p for p in A.state(DEV) if p["key"] == "humidity"])[0]
    if hum["value"] != 55 or not before - 1000 <= hum["ts_ms"] <= after + 1000:
        fail(f"humidity without ts: the API has {hum!r} (sent between {before} and {after})")


def check_client_attributes():
    attrs = {"app_version": "1.2.3", "slots": 4, "calibrated": False}
    rc = client.send_attributes(attrs).get()
    if rc != 0:
        fail(f"publish result {rc}")
    def stored():
        a = A.attributes(DEV, "client")
        return a if all(k in a for k in attrs) else None

    got = wait_for("client attributes in GET .../attributes/client", stored)
    for k, v in attrs.items():
        if got[k] != v:
            fail(f"{k}: sent {v!r}, the API has {got[k]!r}")


def check_attribute_request():
    A.shared_set(DEV, {"target_temp": 19.5, "mode": "eco"})
    client_now = A.attributes(DEV, "client")
    shared_now = A.attributes(DEV, "shared")
    if "app_version" not in client_now:
        fail("needs the client attribute app_version (tb-device-client-attributes)")
    answers = []
    done = threading.Event()

    def on_answer(content, error):
        answers.append((content, error))
        done.set()

    client.request_attributes(client_keys=["app_version"], shared_keys=["target_temp", "mode"],
                              callback=on_answer)
    if not done.wait(5):
        fail("no answer to the SDK's attribute request within 5 s")
    content, error = answers[0]
    if error is not None:
        fail(f"the SDK reported {error!r}")
    want = {"client": {"app_version": client_now["app_version"]},
            "shared": {"target_temp": shared_now["target_temp"], "mode": shared_now["mode"]}}
    if content != want:
        fail(f"answer {content!r}; the API has {want!r}")


def check_shared_attribute_push():
    client.subscribe_to_all_attributes(lambda content, error: shared_pushes.append(content))
    update = {"led": "on", "interval": 30}
    A.shared_set(DEV, update)
    got = wait_for("the shared-attribute update at the SDK's callback",
                   lambda: next((c for c in shared_pushes if isinstance(c, dict) and "led" in c), None))
    stored = A.attributes(DEV, "shared")
    if {k: got.get(k) for k in update} != update:
        fail(f"the SDK got {got!r}, the API set {update!r}")
    if {k: stored.get(k) for k in update} != update:
        fail(f"GET .../attributes/shared has {stored!r}, set {update!r}")


def check_server_side_rpc():
    params = {"pin": 7, "value": True}
    status, body = A.rpc("twoway", DEV, {"method": "setGpio", "params": params, "timeout": 5000})
    if not rpc_requests:
        fail(f"the SDK's RPC handler was not called (API answered {status}: {body!r})")
    want = {"method": "setGpio", "echo": params}
    if status != 200 or body != want:
        fail(f"POST /api/rpc/twoway answered {status} {body!r}, the SDK replied {want!r}")
    cmds = [c for c in A.commands(DEV) if c["command"]["name"] == "setGpio"]
    if not cmds or cmds[0]["status"] != "replied" or cmds[0].get("reply") != want:
        fail(f"GET .../commands: {cmds[:1]!r}")


def check_client_side_rpc():
    answers = []
    client.send_rpc_call("getTime", {"tz": "UTC"}, lambda rid, resp, *a: answers.append(resp))
    pending = wait_for("the SDK's getTime request in GET .../rpc/requests?status=pending",
                       lambda: [r for r in ok("GET", A.dev(DEV) + "/rpc/requests?status=pending",
                                              token=A.read)["items"] if r["method"] == "getTime"])
    rpc = pending[0]
    if rpc.get("params") != {"tz": "UTC"}:
        fail(f"the stored request {rpc!r}")
    answer = {"time": now_ms()}
    ok("POST", A.dev(DEV) + f"/rpc/requests/{rpc['id']}/answer", answer, token=A.write)
    got = wait_for("the answer at the SDK's RPC callback", lambda: answers[0] if answers else None)
    if got != answer:
        fail(f"the SDK got {got!r}, the application answered {answer!r}")
    status, body = http("POST", A.dev(DEV) + f"/rpc/requests/{rpc['id']}/answer", {}, token=A.write)
    if status != 409:
        fail(f"a second answer got {status} {body!r}, want 409")


def check_client_side_rpc_timeout():
    answers = []
    client.send_rpc_call("nobodyAnswers", {}, lambda rid, resp, *a: answers.append(resp))
    timeout_s = int(os.environ["FG_CLIENT_RPC_TIMEOUT_MS"]) / 1000
    got = wait_for("an error reply at the SDK's RPC callback once the timeout passed",
                   lambda: answers[0] if answers else None, timeout_s + 5)
    if not isinstance(got, dict) or "error" not in got:
        fail(f"the SDK got {got!r}, want an error reply")
    timed_out = [r for r in ok("GET", A.dev(DEV) + "/rpc/requests?status=timed_out",
                               token=A.read)["items"] if r["method"] == "nobodyAnswers"]
    if not timed_out:
        fail("GET .../rpc/requests?status=timed_out does not list the request")


def check_claim():
    secret = f"fg-claim-{now_ms()}"
    client.claim(secret_key=secret, duration=60000).get()
    wait_for("the claiming window the SDK opened (GET .../claim windowOpen)",
             lambda: ok("GET", A.dev(DEV) + "/claim", token=A.read).get("windowOpen"))
    status, body = A.claim(DEV, {"secretKey": "not-" + secret})
    if status != 403:
        fail(f"a claim with the wrong secret answered {status} {body!r}, want 403")
    status, body = A.claim(DEV, {"secretKey": secret, "owner": "customer-a"})
    if status != 200 or body.get("response") != "SUCCESS" or body.get("owner") != "customer-a":
        fail(f"the claim with the SDK's secret answered {status} {body!r}")
    # ThingsBoard's own route, by device name: already this owner's.
    name = A.device(DEV)["name"]
    status, body = http("POST", f"/api/customer/device/{q(name)}/claim",
                        {"secretKey": secret, "owner": "customer-a"}, token=A.write)
    if status != 200 or body.get("response") != "CLAIMED":
        fail(f"POST /api/customer/device/{name}/claim answered {status} {body!r}, want CLAIMED")
    status, body = A.claim(DEV, {"secretKey": secret, "owner": "customer-b"})
    if status != 409:
        fail(f"a second owner's claim answered {status} {body!r}, want 409")
    ok("DELETE", A.dev(DEV) + "/claim", token=A.write)
    status, body = A.claim(DEV, {"secretKey": secret, "owner": "customer-b"})
    if status != 409:
        fail(f"a claim after unclaiming, with no new window, answered {status} {body!r}")


def check_persistent_rpc_at_reconnect():
    """A persistent RPC sent while the device is offline waits `queued`, and reaches the
    device when it connects again (the SDK subscribes right after CONNACK)."""
    stop_sdk(client)
    wait_for("the device offline", lambda: not A.connection(DEV)["connected"])
    status, body = A.rpc("oneway", DEV, {"method": "whileAway", "params": {"n": 1},
                                         "persistent": True})
    if status != 200 or "rpcId" not in body:
        fail(f"POST /api/rpc/oneway (persistent) answered {status} {body!r}")
    rpc_id = body["rpcId"]
    wait_for("the persistent RPC queued", lambda: A.command(rpc_id)["command"]["status"] == "queued")
    got = []
    again = TBDeviceMqttClient(MQTT_HOST, port=MQTT_PORT, username=P["tb_device"]["token"])
    again.set_server_side_rpc_request_handler(lambda rid, req: got.append(req))
    try:
        again.connect(keepalive=30)
        wait_for("the device connected again", again.is_connected, 5)
        if not wait_for("the persistent RPC at the SDK's RPC handler",
                        lambda: [r for r in got if r.get("method") == "whileAway"], 5,
                        raise_on_timeout=False):
            fail(f"the SDK did not get the persistent RPC; its history: {A.command(rpc_id)['history']!r}")
        wait_for("the persistent RPC delivered",
                 lambda: A.command(rpc_id)["command"]["status"] == "delivered")
    finally:
        stop_sdk(again)


def check_shared_attributes_at_reconnect():
    """A shared attribute set while the device is offline reaches it when it connects
    again and subscribes to its attribute updates; what it had already got is not pushed
    again."""
    stop_sdk(client)
    wait_for("the device offline", lambda: not A.connection(DEV)["connected"])
    A.shared_set(DEV, {"away_setpoint": 17})
    got = []
    again = TBDeviceMqttClient(MQTT_HOST, port=MQTT_PORT, username=P["tb_device"]["token"])
    again.subscribe_to_all_attributes(lambda content, error: got.append(content))
    try:
        again.connect(keepalive=30)
        wait_for("the device connected again", again.is_connected, 5)
        push = wait_for("the attribute set while away, at the SDK's callback",
                        lambda: next((c for c in got if isinstance(c, dict)
                                      and "away_setpoint" in c), None), 5,
                        raise_on_timeout=False)
        if not push:
            fail(f"the SDK got no push of the attribute set while it was away; it got {got!r}")
        if push != {"away_setpoint": 17}:
            fail(f"the push at reconnect is {push!r}: only what changed while away was expected")
    finally:
        stop_sdk(again)


def main():
    s = Suite()
    try:
        s.run("tb-device-connect-session-limits", check_connect_and_session_limits)
        if client.is_connected():
            s.run("tb-device-telemetry", check_telemetry)
            s.run("tb-device-client-attributes", check_client_attributes)
            s.run("tb-device-attribute-request", check_attribute_request)
            s.run("tb-device-shared-attribute-push", check_shared_attribute_push)
            s.run("tb-device-server-rpc", check_server_side_rpc)
            s.run("tb-device-claim", check_claim)
            s.run("tb-device-client-side-rpc", check_client_side_rpc)
            s.run("tb-device-client-side-rpc-timeout", check_client_side_rpc_timeout)
            s.run("tb-device-persistent-rpc-at-reconnect", check_persistent_rpc_at_reconnect)
            s.run("tb-device-shared-attributes-at-reconnect",
                  check_shared_attributes_at_reconnect)
        else:
            for n in ("telemetry", "client-attributes", "attribute-request",
                      "shared-attribute-push", "server-rpc", "claim", "client-side-rpc",
                      "client-side-rpc-timeout", "persistent-rpc-at-reconnect",
                      "shared-attributes-at-reconnect"):
                print(f"FAIL tb-device-{n}: the SDK is not connected", flush=True)
                s.failed += 1
    finally:
        stop_sdk(client)
        time.sleep(0.2)
    s.exit()


if __name__ == "__main__":
    main()
