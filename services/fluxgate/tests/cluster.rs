//! The deployment shape: every role its own process of the real binary, on real Kafka
//! (`KAFKA_BROKERS`) and a real CQL database (`SCYLLA_URI`), driven only through MQTT and
//! the HTTP API. Without either service the tests say they are ignored (under `CI` they
//! fail).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluxgate_testkit::cluster::{Cluster, Role, Spec};
use fluxgate_testkit::http::{call, ok};
use fluxgate_testkit::raw::{self, Got, V, Wire};
use serde_json::{Value, json};

/// Front settings without the Losant per-topic and per-connection limits.
const UNLIMITED: &str = "[front.rate_limits.per_topic]\nmessages = 0\n[front.rate_limits.per_connection]\nmessages = 0\n";

/// The cluster for a test, or `None` (said) without the services.
async fn cluster(test: &str, spec: Spec) -> Option<Cluster> {
    let kafka = fluxgate_testkit::kafka_brokers(test)?;
    let (cql, _) = fluxgate_testkit::cql::node(test)?;
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_fluxgate"));
    Some(Cluster::start(bin, &kafka, &cql, spec).await.unwrap())
}

/// The id of the device `name` behind a gateway, once the connection log shows it
/// connected for the `round`-th time (each gateway session connects it once, implicitly).
async fn gateway_device_connected(c: &Cluster, admin: &str, name: &str, round: u32) -> String {
    let mut last = Value::Null;
    for _ in 0..300 {
        let path = "/applications/scale/devices?limit=1000";
        let list = ok(c.api(0), "GET", path, admin, Value::Null).await;
        let found = list["items"]
            .as_array()
            .and_then(|ds| ds.iter().find(|d| d["name"] == name))
            .and_then(|d| d["id"].as_str())
            .map(str::to_owned);
        if let Some(id) = found {
            let path = format!("/applications/scale/devices/{id}/connection");
            last = ok(c.api(0), "GET", &path, admin, Value::Null).await;
            let connects = last["log"]
                .as_array()
                .map_or(0, |l| l.iter().filter(|e| e["connected"] == true).count());
            if last["connected"] == true && connects >= round as usize {
                return id;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{name} not connected through the gateway (round {round}): {last}\n{}",
        c.logs(40)
    );
}

/// Application `app`, devices `d0..dN` with a number attribute `n`, an access key for all.
async fn provision(c: &Cluster, app: &str, devices: usize) -> (String, String, String) {
    let api = c.api(0);
    ok(api, "POST", "/applications", &c.token, json!({"id": app})).await;
    let t = ok(
        api,
        "POST",
        &format!("/applications/{app}/tokens"),
        &c.token,
        json!({"name": "cluster", "scope": "admin"}),
    )
    .await;
    let admin = t["secret"].as_str().unwrap().to_owned();
    for i in 0..devices {
        let body = json!({"id": format!("d{i}"), "attributes": [{"name": "n", "kind": "number"}]});
        ok(
            api,
            "POST",
            &format!("/applications/{app}/devices"),
            &admin,
            body,
        )
        .await;
    }
    let k = ok(
        api,
        "POST",
        &format!("/applications/{app}/keys"),
        &admin,
        json!({}),
    )
    .await;
    (
        admin,
        k["key"].as_str().unwrap().to_owned(),
        k["secret"].as_str().unwrap().to_owned(),
    )
}

/// A ThingsBoard gateway `id` in `app`, and its access token.
async fn tb_gateway(c: &Cluster, app: &str, admin: &str, id: &str) -> String {
    let devices = format!("/applications/{app}/devices");
    let body = json!({"id": id, "kind": "gateway"});
    ok(c.api(0), "POST", &devices, admin, body).await;
    let tokens = format!("{devices}/{id}/tokens");
    let tok = ok(c.api(0), "POST", &tokens, admin, Value::Null).await;
    tok["secret"].as_str().unwrap().to_owned()
}

/// The packet id of a publisher's SUBSCRIBE (its publishes use 1..=60000).
const SUBSCRIBE_ID: u16 = 65_000;

/// Who a [`Publisher`] is: a Losant device, or a ThingsBoard gateway reporting for
/// devices behind it (named by the gateway; the registry creates them on first sight).
#[derive(Debug, Clone)]
enum Speaker {
    /// Client id = device id, the access key and secret; states on
    /// `losant/{device}/state`, commands on `losant/{device}/command`.
    Losant {
        device: String,
        key: String,
        secret: String,
    },
    /// User name = the gateway's access token; one `v1/gateway/telemetry` message carries
    /// a point for each of `devices`; RPC on `v1/gateway/rpc`.
    Gateway {
        client: String,
        token: String,
        devices: Vec<String>,
    },
}

impl Speaker {
    /// A Losant speaker for each of `devices`, all with one access key.
    fn losant(devices: &[String], key: &str, secret: &str) -> Vec<Speaker> {
        devices
            .iter()
            .map(|d| Speaker::Losant {
                device: d.clone(),
                key: key.to_owned(),
                secret: secret.to_owned(),
            })
            .collect()
    }

    /// CONNECT's client id, user name and password.
    fn credentials(&self) -> (&str, &str, &str) {
        match self {
            Speaker::Losant {
                device,
                key,
                secret,
            } => (device, key, secret),
            Speaker::Gateway { client, token, .. } => (client, token, ""),
        }
    }

    /// Where commands (Losant) or RPC requests (gateway) come.
    fn commands(&self) -> String {
        match self {
            Speaker::Losant { device, .. } => format!("losant/{device}/command"),
            Speaker::Gateway { .. } => "v1/gateway/rpc".into(),
        }
    }

    /// The devices (by name) a message of this speaker carries a point for.
    fn reports_for(&self) -> &[String] {
        match self {
            Speaker::Losant { device, .. } => std::slice::from_ref(device),
            Speaker::Gateway { devices, .. } => devices,
        }
    }

    /// Message `seq`: topic and payload, a point `n = seq` at `BASE + seq` for each device.
    fn message(&self, seq: i64) -> (String, Vec<u8>) {
        let time = BASE + seq;
        match self {
            Speaker::Losant { device, .. } => (
                format!("losant/{device}/state"),
                json!({"time": time, "data": {"n": seq}})
                    .to_string()
                    .into_bytes(),
            ),
            Speaker::Gateway { devices, .. } => {
                let body: serde_json::Map<String, Value> = devices
                    .iter()
                    .map(|d| (d.clone(), json!([{"ts": time, "values": {"n": seq}}])))
                    .collect();
                (
                    "v1/gateway/telemetry".into(),
                    Value::Object(body).to_string().into_bytes(),
                )
            }
        }
    }
}

/// A QoS 1 publisher over raw MQTT 3.1.1 that survives its front going away: one publish
/// in flight; a publish counts as acknowledged only when its PUBACK arrived; on any error it
/// reconnects (to the next front) and sends the same message again. Each connection
/// subscribes to its commands (or RPC requests); those that arrive are acknowledged and
/// counted.
struct Publisher {
    speaker: Speaker,
    fronts: Vec<SocketAddr>,
    turn: usize,
    conn: Option<Wire>,
    commands: Arc<AtomicUsize>,
}

impl Publisher {
    async fn connect(&mut self) -> Result<(), String> {
        let addr = self.fronts[self.turn % self.fronts.len()];
        self.turn += 1;
        let (client, user, pass) = self.speaker.credentials();
        let mut w = Wire::open(addr, V::V3, client, user, pass).await?;
        w.send(&raw::subscribe(
            V::V3,
            SUBSCRIBE_ID,
            &self.speaker.commands(),
        ))
        .await?;
        loop {
            match w.next().await? {
                Got::SubAck(SUBSCRIBE_ID, code) if code < 0x80 => break,
                Got::Publish(_, id) => self.command(&mut w, id).await?,
                other => return Err(format!("subscribe answered {other:?}")),
            }
        }
        self.conn = Some(w);
        Ok(())
    }

    /// A command arrived: acknowledged (QoS 1) and counted.
    async fn command(&self, w: &mut Wire, id: Option<u16>) -> Result<(), String> {
        if let Some(id) = id {
            w.send(&raw::puback(id)).await?;
        }
        self.commands.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Publishes message `seq` until acknowledged (or `deadline`); `true` when acknowledged.
    async fn publish(&mut self, seq: i64, deadline: tokio::time::Instant) -> bool {
        let id = u16::try_from(seq % 60_000 + 1).unwrap();
        let (topic, payload) = self.speaker.message(seq);
        while tokio::time::Instant::now() < deadline {
            if self.conn.is_none() && self.connect().await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let mut w = self.conn.take().unwrap();
            if w.send(&raw::publish(V::V3, &topic, Some(id), &payload))
                .await
                .is_err()
            {
                continue;
            }
            loop {
                match w.next().await {
                    Ok(Got::PubAck(got, _)) if got == id => {
                        self.conn = Some(w);
                        return true;
                    }
                    Ok(Got::Publish(_, pid)) if self.command(&mut w, pid).await.is_ok() => {}
                    // Anything else: this connection is done; again on the next front.
                    _ => break,
                }
            }
        }
        false
    }
}

/// The `n` values stored for `device` (each point's value is its sequence number), with how
/// many times each appears; `Err` when the API cannot answer yet (503 while its store
/// connection comes back after a database restart).
async fn stored(
    api: SocketAddr,
    app: &str,
    admin: &str,
    device: &str,
) -> Result<BTreeMap<i64, usize>, String> {
    let mut out = BTreeMap::new();
    let mut page: Option<String> = None;
    loop {
        let mut path =
            format!("/applications/{app}/devices/{device}/data?keys=n&from=0&limit=10000");
        if let Some(p) = &page {
            path.push_str(&format!("&page={p}"));
        }
        let (status, v) = call(api, "GET", &path, Some(admin), None)
            .await
            .map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("{status} {v}"));
        }
        for p in v["points"].as_array().unwrap() {
            *out.entry(p["value"].as_i64().unwrap()).or_insert(0) += 1;
        }
        match v["next"].as_str() {
            Some(n) => page = Some(n.to_owned()),
            None => return Ok(out),
        }
    }
}

/// `app`'s device ids by name (a gateway names its devices; the registry picks their ids).
async fn ids_by_name(
    api: SocketAddr,
    app: &str,
    admin: &str,
) -> Result<BTreeMap<String, String>, String> {
    let path = format!("/applications/{app}/devices?limit=1000");
    let (status, v) = call(api, "GET", &path, Some(admin), None)
        .await
        .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status} {v}"));
    }
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| Some((d["name"].as_str()?.to_owned(), d["id"].as_str()?.to_owned())))
        .collect())
}

type Acked = Arc<Mutex<BTreeMap<String, BTreeSet<i64>>>>;

/// QoS 1 messages from `speakers`, each on its own connection, each message's `n` its
/// sequence number and its time `BASE + n` (unique per device), until [`Load::stop`].
/// What was acknowledged is kept by device name.
struct Load {
    acked: Acked,
    /// Commands the devices received.
    commands: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const BASE: i64 = 1_700_000_000_000;

impl Load {
    fn start(speakers: Vec<Speaker>, fronts: &[SocketAddr]) -> Load {
        let acked: Acked = Arc::default();
        let commands = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (turn, speaker) in speakers.into_iter().enumerate() {
            let mut p = Publisher {
                speaker,
                fronts: fronts.to_vec(),
                turn,
                conn: None,
                commands: commands.clone(),
            };
            let (acked, stop) = (acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut seq: i64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                    if p.publish(seq, deadline).await {
                        let mut a = acked.lock().unwrap();
                        for device in p.speaker.reports_for() {
                            a.entry(device.clone()).or_default().insert(seq);
                        }
                    }
                }
            }));
        }
        Load {
            acked,
            commands,
            stop,
            tasks,
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().values().map(BTreeSet::len).sum()
    }

    /// Stops the publishers; what each device got acknowledged.
    async fn stop(self) -> BTreeMap<String, BTreeSet<i64>> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(90), t)
                .await
                .expect("publishers stop")
                .unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// `speakers` and a ThingsBoard gateway of `app` reporting for two devices of its own
/// ("gw A", "gw B"), which the registry creates on their first point.
async fn with_gateway(
    c: &Cluster,
    app: &str,
    admin: &str,
    mut speakers: Vec<Speaker>,
) -> Vec<Speaker> {
    let token = tb_gateway(c, app, admin, "gw").await;
    speakers.push(Speaker::Gateway {
        client: "gw".into(),
        token,
        devices: vec!["gw A".into(), "gw B".into()],
    });
    speakers
}

/// How many of `acked`'s points the gateway of [`with_gateway`] reported.
fn through_gateway(acked: &BTreeMap<String, BTreeSet<i64>>) -> usize {
    acked
        .iter()
        .filter(|(name, _)| name.starts_with("gw "))
        .map(|(_, seqs)| seqs.len())
        .sum()
}

/// Lightweight Losant commands to the load's devices while it runs, one every 250 ms,
/// through the API replicas in turn (a replica that is down refuses; that command was
/// never issued).
struct Commander {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<String>, usize)>,
}

impl Commander {
    fn start(apis: Vec<SocketAddr>, app: &str, admin: &str, devices: &[String]) -> Commander {
        let stop = Arc::new(AtomicBool::new(false));
        let (app, admin, devices) = (app.to_owned(), admin.to_owned(), devices.to_vec());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let (mut issued, mut refused) = (Vec::new(), 0);
            let mut n = 0usize;
            while !stopped.load(Ordering::Relaxed) {
                let device = &devices[n % devices.len()];
                let path = format!("/applications/{app}/devices/{device}/command");
                let body = json!({"name": "nudge", "payload": {"n": n}});
                let sent = call(
                    apis[n % apis.len()],
                    "POST",
                    &path,
                    Some(&admin),
                    Some(body),
                );
                match tokio::time::timeout(Duration::from_secs(5), sent).await {
                    Ok(Ok((200..=299, v))) => {
                        issued.push(v["commandId"].as_str().unwrap().to_owned());
                    }
                    _ => refused += 1,
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (issued, refused)
        });
        Commander { stop, task }
    }

    /// Stops issuing: the ids of the commands issued, and how many were refused.
    async fn stop(self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Waits (at most `within`) until every command of `ids` has settled — delivered, or in
/// a final state (a lightweight command not delivered fails once the delivery timeout
/// passes). Returns how many ended in each status and the ones still unsettled, with the
/// status they are stuck in (`missing`: the API does not know it).
async fn settle(
    c: &Cluster,
    app: &str,
    admin: &str,
    ids: &[String],
    within: Duration,
) -> (BTreeMap<String, usize>, Vec<(String, String)>) {
    const SETTLED: [&str; 5] = ["delivered", "replied", "failed", "timed_out", "expired"];
    let deadline = tokio::time::Instant::now() + within;
    let mut open: Vec<(String, String)> = ids.iter().map(|i| (i.clone(), String::new())).collect();
    let mut ended = BTreeMap::new();
    loop {
        let mut still = Vec::new();
        for (i, (id, _)) in open.into_iter().enumerate() {
            let path = format!("/applications/{app}/commands/{id}");
            let status = match call(c.api(i % apis(c)), "GET", &path, Some(admin), None).await {
                Ok((200, v)) => v["command"]["status"].as_str().unwrap_or("?").to_owned(),
                Ok((404, _)) => "missing".to_owned(),
                Ok((s, v)) => format!("HTTP {s} {v}"),
                Err(e) => format!("unanswered: {e}"),
            };
            if SETTLED.contains(&status.as_str()) {
                *ended.entry(status).or_insert(0) += 1;
            } else {
                still.push((id, status));
            }
        }
        open = still;
        if open.is_empty() || tokio::time::Instant::now() > deadline {
            return (ended, open);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How many API replicas `c` has.
fn apis(c: &Cluster) -> usize {
    c.procs().iter().filter(|p| p.role == Role::Api).count()
}

/// The checker: (acknowledged, lost, duplicated) once everything acknowledged is readable
/// through the API, or once the pipeline stops catching up: it waits while the number
/// missing still falls (30 s without progress end the wait, 5 minutes at most), so a slow
/// machine is not taken for a lossy pipeline, and a point that never arrives still is.
async fn check(
    c: &Cluster,
    app: &str,
    admin: &str,
    acked: &BTreeMap<String, BTreeSet<i64>>,
) -> (usize, usize, usize) {
    const STALL: Duration = Duration::from_secs(30);
    let total = acked.values().map(BTreeSet::len).sum();
    let started = tokio::time::Instant::now();
    let cap = started + Duration::from_secs(300);
    let (mut fewest, mut progressed) = (usize::MAX, started);
    loop {
        let (mut lost, mut duplicated, mut unanswered) = (0, 0, None);
        let ids = ids_by_name(c.api(0), app, admin).await.unwrap_or_else(|e| {
            unanswered = Some(e);
            BTreeMap::new()
        });
        // Read through every API replica in turn.
        for (i, (device, seqs)) in acked.iter().enumerate() {
            let api = c.api(i % apis(c));
            let Some(id) = ids.get(device) else {
                // A gateway's device is created with its first point: none stored yet.
                lost += seqs.len();
                continue;
            };
            match stored(api, app, admin, id).await {
                Ok(got) => {
                    lost += seqs.iter().filter(|s| !got.contains_key(s)).count();
                    duplicated += got.values().filter(|&&n| n > 1).count();
                }
                Err(e) => unanswered = Some(e),
            }
        }
        let now = tokio::time::Instant::now();
        if unanswered.is_none() && lost < fewest {
            (fewest, progressed) = (lost, now);
        }
        let done = lost == 0 && unanswered.is_none();
        if done || now > progressed + STALL || now > cap {
            if let Some(e) = unanswered {
                panic!("the API could not answer the checker for {STALL:?}: {e}");
            }
            if lost > 0 {
                eprintln!(
                    "checker: {lost} of {total} still missing after {:?} ({:?} without progress)",
                    now - started,
                    now - progressed
                );
                pipeline_state(c).await;
            }
            return (total, lost, duplicated);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Prints what the consuming roles report (records read, retries, lag, readiness), to
/// tell a stalled pipeline from a slow one when the checker ends with points missing.
async fn pipeline_state(c: &Cluster) {
    for p in c.procs() {
        if !matches!(p.role, Role::Validator | Role::Writer | Role::Dispatcher) {
            continue;
        }
        let text = c
            .metrics(p.role, p.index)
            .await
            .unwrap_or_else(|e| e.to_string());
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                [
                    "fluxgate_pipeline_",
                    "fluxgate_ts_writer_points",
                    "fluxgate_process_ready",
                ]
                .iter()
                .any(|m| l.starts_with(m))
            })
            .collect();
        eprintln!("{:?}-{}: {}", p.role, p.index, lines.join("; "));
    }
}

/// The kill test, short form: QoS 1 Losant states from several devices over two fronts,
/// and commands to them through both API replicas, while a nemesis kill -9's and
/// restarts, in turn, a writer, a validator, a front, the dispatcher and an API replica,
/// and stops (SIGTERM) and starts again the other writer and validator, so that each
/// group loses and regains members under load. Every acknowledged state must be stored,
/// once, and every command issued must settle (delivered, or failed once its delivery
/// timeout passed).
#[tokio::test]
async fn kafka_kill_every_role_and_lose_nothing_acknowledged() {
    const TEST: &str = "kafka_kill_every_role_and_lose_nothing_acknowledged";
    let spec = Spec {
        // Load, not a rate-limit test: Losant's 30 messages / 15 s per topic would block the
        // publishers.
        front_config: UNLIMITED,
        writers: 2,
        ..Spec::default() // 2 fronts, 2 APIs, 2 validators, a dispatcher
    };
    let Some(mut c) = cluster(TEST, spec).await else {
        return;
    };
    const DEVICES: usize = 6;
    let (admin, key, secret) = provision(&c, "kill", DEVICES).await;
    let devices: Vec<String> = (0..DEVICES).map(|d| format!("d{d}")).collect();
    let load = Load::start(
        with_gateway(&c, "kill", &admin, Speaker::losant(&devices, &key, &secret)).await,
        &[c.front(0), c.front(1)],
    );
    let commander = Commander::start(vec![c.api(0), c.api(1)], "kill", &admin, &devices);
    // The nemesis: each role in turn, kill -9 (or SIGTERM: a member that leaves its group
    // cleanly), a moment down under load, start again; KILL_TEST_CYCLES rounds (1 in CI;
    // the long form runs more).
    let cycles: usize = std::env::var("KILL_TEST_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let mut cycle = Vec::new();
    let (kill, term) = (true, false);
    let round = [
        (Role::Writer, 0, kill),
        (Role::Validator, 0, kill),
        (Role::Front, 0, kill),
        (Role::Dispatcher, 0, kill),
        (Role::Api, 1, kill),
        (Role::Writer, 1, term),
        (Role::Validator, 1, term),
        (Role::Front, 1, kill),
    ];
    for (role, index, hard) in std::iter::repeat_n(round, cycles).flatten() {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = load.count();
        if hard {
            c.kill(role, index).await.unwrap();
        } else {
            let status = c
                .terminate(role, index, Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(20)));
            assert!(status.success(), "{}-{index} exit {status}", role.command());
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.restart(role, index)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(20)));
        let how = if hard { "killed" } else { "stopped" };
        cycle.push(format!(
            "{}-{index} {how} at {before} acked",
            role.command()
        ));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (issued, refused) = commander.stop().await;
    let received = load.commands.load(Ordering::Relaxed);
    let acked = load.stop().await;
    let (total, lost, duplicated) = check(&c, "kill", &admin, &acked).await;
    // A lightweight command not delivered fails once the delivery timeout (10 s) passes.
    let (ended, stuck) = settle(&c, "kill", &admin, &issued, Duration::from_secs(60)).await;
    assert!(total > 100, "too little load to mean anything: {total}");
    let gw = through_gateway(&acked);
    assert!(gw > 0, "the gateway got nothing acknowledged");
    eprintln!(
        "kill test: {cycles} cycle(s), {total} acknowledged ({gw} through the gateway), {lost} lost, \
         {duplicated} duplicated; {} commands issued ({refused} refused by a replica down), \
         {received} received, ended {ended:?}, {} stuck; {}",
        issued.len(),
        stuck.len(),
        cycle.join(", ")
    );
    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "{total} acknowledged\n{}",
        c.logs(40)
    );
    assert!(
        stuck.is_empty(),
        "commands not settled: {stuck:?}\n{}",
        c.logs(40)
    );
    assert!(
        ended.get("delivered").copied().unwrap_or(0) > 0 && received > 0,
        "no command got through: {ended:?}, {received} received"
    );
}

/// Scale-out through MQTT and the API only: a command sent through API replica 1 reaches
/// a device held by front 0 and ends `delivered`; a custom-topic publish on front 1
/// reaches a subscriber on front 0. A ThingsBoard gateway that never sends `connect`
/// gets a two-way RPC through API replica 1 on front 1, then again after it moved to
/// front 0 (its telemetry connects the device each time). Then a rolling restart: SIGTERM to front 0 while its
/// devices publish QoS 1 — it drains and exits cleanly, its MQTT 5 client is told "server
/// shutting down" (0x8B), the publishers move to front 1, and every acknowledged state is
/// stored once.
#[ntex::test]
async fn kafka_scale_out_and_a_rolling_front_restart() {
    use fluxgate_testkit::mqtt::{recv, v5};
    const TEST: &str = "kafka_scale_out_and_a_rolling_front_restart";
    let spec = Spec {
        fronts: 2,
        apis: 2,
        validators: 1,
        writers: 1,
        dispatchers: 1,
        front_config: UNLIMITED,
    };
    let Some(mut c) = cluster(TEST, spec).await else {
        return;
    };
    let (admin, key, secret) = provision(&c, "scale", 4).await;
    let custom = ok(
        c.api(0),
        "POST",
        "/applications/scale/keys",
        &admin,
        json!({"custom_topics": true}),
    )
    .await;
    let (ckey, csecret) = (
        custom["key"].as_str().unwrap().to_owned(),
        custom["secret"].as_str().unwrap().to_owned(),
    );

    // A command through the other API replica, to the device on front 0.
    let mut d0 = v5(c.front(0), "d0", Some(&key), Some(&secret))
        .await
        .unwrap();
    d0.subscribe("losant/d0/command").await;
    // No wait for the connect to travel: it is on the bus before the CONNACK, and the
    // command goes behind it on the device's key.
    let out = ok(
        c.api(1),
        "POST",
        "/applications/scale/devices/d0/command",
        &admin,
        json!({"name": "blink", "payload": {"times": 3}}),
    )
    .await;
    let (topic, payload) =
        match tokio::time::timeout(Duration::from_secs(30), d0.inbox.recv()).await {
            Ok(Some(m)) => m,
            other => panic!(
                "no command at d0 ({other:?}); the command: {out}\n{}",
                c.logs(40)
            ),
        };
    assert_eq!(topic, "losant/d0/command");
    let cmd: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(cmd["payload"]["times"], 3, "{cmd}");
    let id = out["commandId"].as_str().unwrap().to_owned();
    let mut status = Value::Null;
    for _ in 0..300 {
        let path = format!("/applications/scale/commands/{id}");
        status = ok(c.api(0), "GET", &path, &admin, Value::Null).await;
        if status["command"]["status"] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["command"]["status"], "delivered", "{status}");

    // A custom topic across fronts.
    let mut sub = v5(c.front(0), "d2", Some(&ckey), Some(&csecret))
        .await
        .unwrap();
    sub.subscribe("plant/+/alarms").await;
    let publ = v5(c.front(1), "d3", Some(&ckey), Some(&csecret))
        .await
        .unwrap();
    let mut got = None;
    for _ in 0..50 {
        // Until the subscription has reached every front (it is announced, not routed).
        publ.publish("plant/7/alarms", br#"{"hot":true}"#)
            .await
            .unwrap();
        if let Ok((t, p)) =
            tokio::time::timeout(Duration::from_millis(200), recv(&mut sub.inbox)).await
        {
            got = Some((t, p));
            break;
        }
    }
    let (t, p) = got.expect("the subscriber on front 0 gets the publish on front 1");
    assert_eq!(
        (t.as_str(), &p[..]),
        ("plant/7/alarms", &br#"{"hot":true}"#[..])
    );

    // A ThingsBoard gateway on front 1 that never sends `connect`: its telemetry
    // connects the device; an RPC through API replica 1 is answered through it. Then the
    // gateway moves to front 0 and the same holds there.
    let gw_token = tb_gateway(&c, "scale", &admin, "tbgw").await;
    let mut pump = None;
    for (round, front) in [(1u32, 1usize), (2, 0)] {
        let mut gw = fluxgate_testkit::mqtt::v3(c.front(front), "tbgw", Some(&gw_token), None)
            .await
            .unwrap();
        gw.subscribe("v1/gateway/rpc").await;
        let telemetry = json!({"Pump 1": [{"values": {"rpm": round}}]});
        gw.publish("v1/gateway/telemetry", &telemetry.to_string())
            .await
            .unwrap();
        let id = gateway_device_connected(&c, &admin, "Pump 1", round).await;
        // One device for one name, whichever front the gateway is on.
        assert_eq!(pump.get_or_insert_with(|| id.clone()), &id);
        let path = format!("/api/rpc/twoway/{id}");
        let body = json!({"method": "getRpm", "params": {}, "timeout": 10000});
        let (api, token) = (c.api(1), admin.clone());
        let rpc =
            tokio::spawn(async move { call(api, "POST", &path, Some(&token), Some(body)).await });
        let (topic, payload) = tokio::time::timeout(Duration::from_secs(15), gw.inbox.recv())
            .await
            .unwrap_or_else(|_| panic!("no RPC at the gateway on front {front}\n{}", c.logs(40)))
            .unwrap();
        assert_eq!(topic, "v1/gateway/rpc");
        let req: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(req["device"], "Pump 1", "{req}");
        let reply = json!({"device": "Pump 1", "id": req["data"]["id"], "data": {"rpm": round}});
        gw.publish("v1/gateway/rpc", &reply.to_string())
            .await
            .unwrap();
        let (status, out) = rpc.await.unwrap().unwrap();
        assert_eq!((status, out), (200, json!({"rpm": round})), "round {round}");
        gw.sink.close();
    }

    // Every role's /metrics, after traffic went through all of them, is what Prometheus
    // accepts without a lint complaint.
    promtool_accepts_every_role(&c).await;

    // Rolling restart of front 0 under QoS 1 load.
    let devices = ["d1".to_string(), "d2".to_string()];
    let load = Load::start(
        Speaker::losant(&devices, &key, &secret),
        &[c.front(0), c.front(1)],
    );
    // A raw MQTT 5 session on front 0, to read what the drain tells it.
    let mut watcher = Wire::open(c.front(0), V::V5, "d3", &key, &secret)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = std::time::Instant::now();
    let status = c
        .terminate(Role::Front, 0, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(30)));
    let drained = started.elapsed();
    assert!(status.success(), "front-0 exit {status}");
    assert!(d0.closed().await, "front 0's MQTT 5 session is closed");
    assert_eq!(
        watcher.next().await,
        Ok(Got::Disconnect(0x8B)),
        "MQTT 5: DISCONNECT 'server shutting down'"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = load.stop().await;
    let (total, lost, duplicated) = check(&c, "scale", &admin, &acked).await;
    eprintln!(
        "rolling restart: front-0 drained in {drained:?}; {total} acknowledged, {lost} lost, {duplicated} duplicated"
    );
    assert!(total > 50, "too little load: {total}");
    assert_eq!((lost, duplicated), (0, 0), "{}", c.logs(40));
}

/// The kill test's second half: the cluster on a Kafka broker and a Cassandra node of its
/// own, each killed with -9 under load and started again on its data. Acks wait while the
/// broker is down, the writer retries while the database is down, and every acknowledged
/// state is stored once. Readiness follows: every role answers `/readyz` 503 within
/// seconds of either server going away (each role probes both) and 200 once it is back.
#[tokio::test]
async fn kafka_kill_the_broker_and_the_database_and_lose_nothing_acknowledged() {
    use fluxgate_testkit::services::{Kind, Private};
    const TEST: &str = "kafka_kill_the_broker_and_the_database_and_lose_nothing_acknowledged";
    // Where the shared servers run, a private pair can run too (Java, Maven, the jars).
    if fluxgate_testkit::kafka_brokers(TEST).is_none()
        || fluxgate_testkit::cql::node(TEST).is_none()
    {
        return;
    }
    let kafka = Arc::new(Private::start(Kind::Kafka).unwrap());
    let cassandra = Arc::new(Private::start(Kind::Cassandra).unwrap());
    let spec = Spec {
        fronts: 2,
        apis: 1,
        validators: 1,
        writers: 1,
        dispatchers: 1,
        front_config: UNLIMITED,
    };
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_fluxgate"));
    let c = Cluster::start(bin, &kafka.addr(), &cassandra.addr(), spec)
        .await
        .unwrap();
    let (admin, key, secret) = provision(&c, "servers", 4).await;
    let devices: Vec<String> = (0..4).map(|d| format!("d{d}")).collect();
    let load = Load::start(
        with_gateway(
            &c,
            "servers",
            &admin,
            Speaker::losant(&devices, &key, &secret),
        )
        .await,
        &[c.front(0), c.front(1)],
    );
    let mut cycle = Vec::new();
    for (name, server) in [("kafka", &kafka), ("cassandra", &cassandra)] {
        tokio::time::sleep(Duration::from_secs(3)).await;
        cycle.push(format!("{name} killed at {} acked", load.count()));
        server.kill_9().unwrap();
        match c.wait_readiness(503, Duration::from_secs(15)).await {
            Ok(t) => cycle.push(format!("every role unready {t:?} after")),
            Err(still) => panic!("{name} killed, still ready after 15 s:\n{still}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = std::time::Instant::now();
        let s = Arc::clone(server);
        let restart = tokio::task::spawn_blocking(move || s.restart());
        // While the store is down the writer cannot finish what it reads: the lag of the
        // pipeline (validator + writer) must show the records waiting, about one for each
        // state acknowledged meanwhile (measured every 5 s; the node is down longer).
        let (mut most, before) = (0, load.count());
        while !restart.is_finished() {
            if name == "cassandra" {
                most = most.max(pipeline_lag(&c).await);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        restart.await.unwrap().unwrap();
        cycle.push(format!("{name} back after {:?}", t.elapsed()));
        // How long until the devices get acknowledgements again.
        let (back, acked_then) = (std::time::Instant::now(), load.count());
        while load.count() == acked_then {
            assert!(
                back.elapsed() < Duration::from_secs(60),
                "no acknowledgement in the 60 s after {name} came back\n{}",
                c.logs(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cycle.push(format!("acks flowing {:?} after", back.elapsed()));
        if name == "cassandra" {
            let during = load.count() - before;
            cycle.push(format!(
                "pipeline lag up to {most} while it was down ({during} acknowledged meanwhile)"
            ));
            assert!(
                during < 20 || most >= during as u64 / 2,
                "the lag showed {most} waiting while {during} states were acknowledged"
            );
        }
        match c.wait_readiness(200, Duration::from_secs(60)).await {
            Ok(t) => cycle.push(format!("every role ready {t:?} after")),
            Err(off) => panic!("{name} back, roles still unready after 60 s:\n{off}"),
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let acked = load.stop().await;
    let (total, lost, duplicated) = check(&c, "servers", &admin, &acked).await;
    let gw = through_gateway(&acked);
    eprintln!(
        "server kill test: {total} acknowledged ({gw} through the gateway), {lost} lost, \
         {duplicated} duplicated; {}",
        cycle.join(", ")
    );
    assert!(total > 100, "too little load: {total}");
    assert!(gw > 0, "the gateway got nothing acknowledged");
    assert_eq!((lost, duplicated), (0, 0), "{}", c.logs(40));
    // Everything is stored: the lag goes back to nothing waiting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let lag = pipeline_lag(&c).await;
        if lag == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pipeline's lag is {lag} 30 s after everything was stored"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The consumer lag the validator and the writer (one of each) report on `/metrics`.
async fn pipeline_lag(c: &Cluster) -> u64 {
    let mut lag = 0;
    for (role, name) in [(Role::Validator, "validator"), (Role::Writer, "writer")] {
        let text = c.metrics(role, 0).await.unwrap_or_default();
        let series = format!("fluxgate_pipeline_consumer_lag_records{{role=\"{name}\"}} ");
        lag += text
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64);
    }
    lag
}

/// The metrics catalogue, then `promtool check metrics` (Prometheus's own linter: names,
/// types, HELP, units), on the `/metrics` of every role process.
async fn promtool_accepts_every_role(c: &Cluster) {
    // What each role exports is in the metrics catalogue: listed names and types, the
    // listed label names, listed values of closed labels.
    for p in c.procs() {
        let text = c.metrics(p.role, p.index).await.unwrap();
        let problems = fluxgate_observability::catalogue::disagreements(&text, &[]);
        assert!(
            problems.is_empty(),
            "{:?}-{} /metrics against the catalogue: {problems:#?}",
            p.role,
            p.index
        );
    }
    let how = "eval \"$(scripts/tools/promtool)\" fetches Debian's promtool";
    let Some(promtool) = fluxgate_testkit::tool_from_env("PROMTOOL", "promtool_accepts", how)
    else {
        return;
    };
    let mut checked = Vec::new();
    for p in c.procs() {
        let text = c.metrics(p.role, p.index).await.unwrap();
        assert!(
            text.contains("# TYPE "),
            "{:?}-{} serves metrics: {text}",
            p.role,
            p.index
        );
        let mut child = std::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {promtool}: {e}"));
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(text.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics on {:?}-{}:\n{}{}",
            p.role,
            p.index,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        checked.push(format!(
            "{:?}-{} ({} lines)",
            p.role,
            p.index,
            text.lines().count()
        ));
    }
    eprintln!("promtool check metrics: clean on {}", checked.join(", "));
}
