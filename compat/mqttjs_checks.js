'use strict';
// MQTT.js 5 against fluxgate: MQTT 3.1.1 and 5 over TCP, and MQTT over WebSocket at
// /mqtt and at / (the URL form of Losant's and MQTT.js's docs, `ws://host:port`).
// Each check publishes a Losant state at QoS 1 and reads it back through the HTTP API.

const fs = require('fs');
const mqtt = require('mqtt');

const API = process.env.FG_API || 'http://127.0.0.1:28080';
const HOST = process.env.MQTT_HOST || '127.0.0.1';
const PORT = Number(process.env.MQTT_PORT || 21883);
const WS_PORT = Number(process.env.WS_PORT || 21884);
const P = JSON.parse(fs.readFileSync(process.env.FG_PROVISION, 'utf8'));

class Failure extends Error {}
const fail = (reason) => { throw new Failure(reason); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// A timer for Promise.race that does not keep the process alive once the race is won.
const after = (ms) => new Promise((r) => setTimeout(r, ms).unref());
const oneLine = (s) => String(s).replace(/\s+/g, ' ').slice(0, 400);

async function api(path) {
  const res = await fetch(API + path, {
    headers: { Authorization: `Bearer ${P.read_token}`, Accept: 'application/json' },
    signal: AbortSignal.timeout(10000),
  });
  const text = await res.text();
  if (!res.ok) fail(`GET ${path} answered ${res.status}: ${oneLine(text)}`);
  return JSON.parse(text);
}

async function apiPost(path, body) {
  const res = await fetch(API + path, {
    method: 'POST',
    headers: {
      Authorization: `Bearer ${P.write_token}`, Accept: 'application/json', 'Content-Type': 'application/json',
    },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10000),
  });
  const text = await res.text();
  if (!res.ok) fail(`POST ${path} answered ${res.status}: ${oneLine(text)}`);
  return JSON.parse(text);
}

const devPath = (id) => `/applications/${encodeURIComponent(P.app)}/devices/${encodeURIComponent(id)}`;

async function waitFor(what, probe, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() >= deadline) fail(`${what} (not seen within ${timeoutMs / 1000} s; last: ${oneLine(JSON.stringify(last))})`);
    await sleep(100);
  }
}

/** Connects, or fails with what the client saw (bounded: connectTimeout + a margin). */
function connect(url, opts) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, {
      clientId: opts.clientId,
      username: P.losant.key,
      password: P.losant.secret,
      protocolVersion: opts.protocolVersion,
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: 4000,
      ...opts.extra,
    });
    const seen = [];
    const timer = setTimeout(() => {
      client.end(true);
      reject(new Failure(`no CONNACK from ${url} within 5 s (${seen.join('; ') || 'no events'})`));
    }, 5000);
    client.on('error', (e) => seen.push(`error: ${e.message}`));
    client.on('close', () => {
      seen.push('socket closed');
      clearTimeout(timer);
      reject(new Failure(`${url}: ${seen.join('; ')}`));
    });
    client.once('connect', (connack) => {
      clearTimeout(timer);
      client.removeAllListeners('close');
      resolve({ client, connack });
    });
  });
}

async function publishAndReadBack(url, deviceId, protocolVersion, extra) {
  const { client } = await connect(url, { clientId: deviceId, protocolVersion, extra });
  const seq = Date.now();
  const state = { temperature: 10 + (seq % 1000) / 100, seq };
  try {
    const packet = await Promise.race([
      client.publishAsync(`losant/${deviceId}/state`, JSON.stringify({ data: state }), { qos: 1 }),
      after(5000).then(() => fail('no PUBACK within 5 s')),
    ]);
    if (protocolVersion === 5 && packet && packet.reasonCode) {
      fail(`PUBACK reason code 0x${packet.reasonCode.toString(16)}`);
    }
  } finally {
    await Promise.race([client.endAsync(), after(2000)]);
  }
  const points = await waitFor('the state in GET .../state', async () => {
    const pts = (await api(`${devPath(deviceId)}/state`)).points;
    const got = Object.fromEntries(pts.map((p) => [p.key, p.value]));
    return got.seq === seq ? got : null;
  });
  if (points.temperature !== state.temperature) {
    fail(`temperature: sent ${state.temperature}, the API has ${points.temperature}`);
  }
}

/** A device flushing readings on connect (the seed's pattern: publish in the 'connect'
 * handler), n QoS 1 states at once with MQTT.js's defaults: all stored. */
async function burst(deviceId, n) {
  const base = Date.now() - 60000;
  const outcome = await new Promise((resolve) => {
    const client = mqtt.connect(`mqtt://${HOST}:${PORT}`, {
      clientId: deviceId, username: P.losant.key, password: P.losant.secret,
      protocolVersion: 5, clean: true, reconnectPeriod: 0, connectTimeout: 4000,
    });
    const o = { acked: 0, connack: null, disconnect: null, error: null };
    const finish = () => {
      client.end(true);
      resolve(o);
    };
    const timer = setTimeout(finish, 6000);
    client.on('error', (e) => { o.error = e.message; });
    client.on('disconnect', (p) => { o.disconnect = p; });
    client.on('close', () => { clearTimeout(timer); finish(); });
    client.once('connect', (connack) => {
      o.connack = connack;
      const all = [];
      for (let i = 0; i < n; i += 1) {
        const body = JSON.stringify({ data: { seq: i }, time: base + i });
        all.push(client.publishAsync(`losant/${deviceId}/state`, body, { qos: 1 })
          .then(() => { o.acked += 1; }, () => {}));
      }
      Promise.all(all).then(() => { clearTimeout(timer); finish(); });
    });
  });
  if (!outcome.connack) fail(`no CONNACK (${outcome.error || 'closed'})`);
  const q = `keys=seq&from=${base}&to=${base + n}`;
  const stored = (await api(`${devPath(deviceId)}/data?${q}`)).points.length;
  if (stored !== n || outcome.disconnect) {
    const rm = outcome.connack.properties && outcome.connack.properties.receiveMaximum;
    const why = outcome.disconnect
      ? `; the server sent DISCONNECT 0x${outcome.disconnect.reasonCode.toString(16)} (CONNACK Receive Maximum ${rm})`
      : '';
    fail(`${outcome.acked} of ${n} acknowledged, ${stored} stored${why}`);
  }
}

/** Seed 000, with the seed's own client: a gateway subscribed to a peripheral's command
 * topic gets the peripheral's commands; when the gateway leaves, the peripheral shows
 * disconnected, with the reason. */
async function gatewayPeripheralCommand() {
  const { gateway, peripheral } = P.losant_gateway;
  const { client } = await connect(`mqtt://${HOST}:${PORT}`, { clientId: gateway, protocolVersion: 4 });
  const got = [];
  client.on('message', (topic, payload) => got.push({ topic, payload: payload.toString() }));
  const topic = `losant/${peripheral}/command`;
  try {
    const granted = await client.subscribeAsync(topic, { qos: 1 });
    if (!granted.length || granted[0].qos !== 1) fail(`SUBACK ${JSON.stringify(granted)}`);
    const sent = await apiPost(`${devPath(peripheral)}/command`, { name: 'blink', payload: { times: 2 } });
    const msg = await waitFor(`the command on ${topic}`, async () => got.find((m) => m.topic === topic));
    const cmd = JSON.parse(msg.payload);
    if (cmd.name !== 'blink' || !cmd.payload || cmd.payload.times !== 2) fail(`the gateway got ${msg.payload}`);
    await waitFor('the command delivered in GET /commands/{id}', async () => {
      const c = await api(`/applications/${encodeURIComponent(P.app)}/commands/${sent.commandId}`);
      return c.command.status === 'delivered' ? c : null;
    });
  } finally {
    await Promise.race([client.endAsync(), after(2000)]);
  }
  const conn = await waitFor('the peripheral disconnected in GET .../connection', async () => {
    const c = await api(`${devPath(peripheral)}/connection`);
    return c.connected ? null : c;
  });
  const last = conn.log[0] || {};
  if (last.via !== gateway || !String(last.reason || '').startsWith('gateway session ended')) {
    fail(`last connection-log entry ${JSON.stringify(last)}`);
  }
}

const checks = [
  ['mqttjs-v311-tcp', () => publishAndReadBack(`mqtt://${HOST}:${PORT}`, 'mqttjs-v3-tcp', 4)],
  ['mqttjs-v5-tcp', () => publishAndReadBack(`mqtt://${HOST}:${PORT}`, 'mqttjs-v5-tcp', 5)],
  ['mqttjs-v5-burst-25-qos1', () => burst('mqttjs-v5-burst', 25)],
  ['mqttjs-ws-path-mqtt', () => publishAndReadBack(`ws://${HOST}:${WS_PORT}/mqtt`, 'mqttjs-ws-mqtt', 4)],
  ['mqttjs-ws-path-root', () => publishAndReadBack(`ws://${HOST}:${WS_PORT}`, 'mqttjs-ws-root', 4)],
  ['mqttjs-losant-gateway-peripheral-command', gatewayPeripheralCommand],
];

(async () => {
  let failed = 0;
  for (const [name, fn] of checks) {
    try {
      await fn();
      console.log(`PASS ${name}`);
    } catch (e) {
      failed += 1;
      const why = e instanceof Failure ? e.message : `${e.name}: ${e.message}`;
      console.log(`FAIL ${name}: ${oneLine(why)}`);
    }
  }
  process.exitCode = failed ? 1 : 0;
})();
