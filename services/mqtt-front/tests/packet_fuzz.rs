//! An MQTT packet fuzzer against the real front over TCP (issue 22, "Keep it so").
//!
//! A front on 127.0.0.1 with the in-process bus and a seeded registry (as every test of
//! the front starts it) gets connection after connection of mutated MQTT 3.1.1 and 5
//! traffic: valid CONNECT / PUBLISH / SUBSCRIBE / UNSUBSCRIBE / PINGREQ / PUBACK / QoS 2
//! flow / AUTH / DISCONNECT sequences (with properties, wills, both dialects' credentials
//! and topics, real payloads), then bit flips, truncations, lying remaining lengths (up to
//! the 268,435,455 maximum, five-byte and non-minimal encodings), lying string lengths,
//! dropped, repeated and reordered packets, wrong flags and plain random bytes, written in
//! random TCP segments. After every batch a fresh, valid client must CONNECT, PUBLISH at
//! QoS 1 and get its PUBACK (v3 and v5 in turn), and every record the front put on the bus
//! meanwhile must decode as what its topic carries. A panic on any thread, a liveness
//! check that fails or times out, or an undecodable record fails the test.
//!
//! Bounded in time and count, seeded; it prints the seed, what the front answered, and
//! `packet fuzz: N connections, M packets, 0 crashes`.
//!
//! - `FLUXGATE_PACKET_FUZZ_SECS` (default 10): how long to fuzz;
//! - `FLUXGATE_PACKET_FUZZ_CONNECTIONS` (default 1,000,000): at most this many connections;
//! - `FLUXGATE_PACKET_FUZZ_SEED` (default: from the clock): the same connections again, in
//!   the same order (their timing differs).
//!
//! Its first finding: `tests/packet_lengths.rs`.
//!
//! `cargo test -p fluxgate-mqtt-front --test packet_fuzz -- --nocapture` shows the figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use fluxgate_bus::{Bus, ConsumerSpec, Topic};
use fluxgate_model::{Envelope, Rejection};
use fluxgate_mqtt_front::{FrontConfig, Rate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Every rate limit off: the fuzzer is one address and few client ids opening thousands
/// of connections, which the limits would (rightly) block, and blocked clients go no
/// deeper than CONNECT.
fn unlimited() -> FrontConfig {
    let mut cfg = Rig::config();
    let off = Rate {
        messages: 0,
        window_secs: 1,
    };
    let rl = &mut cfg.rate_limits;
    rl.per_topic = off;
    rl.per_connection = off;
    rl.thingsboard_per_device = off;
    rl.thingsboard_gateway = off;
    rl.new_connections_per_application = off;
    cfg
}

// ---- packets -------------------------------------------------------------------------

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn bytes16(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(&s[..s.len().min(u16::MAX as usize)]);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// Where a packet's body starts (after the fixed header), if its length field is whole.
fn body_start(p: &[u8]) -> Option<usize> {
    (1..p.len().min(5))
        .find(|&i| p[i] & 0x80 == 0)
        .map(|i| i + 1)
}

const LOSANT_STATE: &[&str] = &[
    r#"{"data": {"temperature": 72}, "time": { "$date": "2016-11-04T19:42:06.710Z" }}"#,
    r#"{"data": {"t": 1.5, "on": true, "o": {"k": [1]}}, "time": -5000}"#,
    r#"[{"data": {"a": 1}}]"#,
];
const TB_PAYLOADS: &[&str] = &[
    r#"{"temperature": 42, "humidity": 80}"#,
    r#"[{"ts": 1483228800000, "values": {"temperature": 42}}, {"b": 2}]"#,
    r#"{"method": "getSessionLimits", "params": {}}"#,
    r#"{"clientKeys": "a,b", "sharedKeys": "c"}"#,
    r#"{"Device A": [{"ts": 1483228800000, "values": {"temperature": 42}}], "Device B": {"t": 1}}"#,
    r#"{"device": "Device A", "type": "Sensor A"}"#,
    r#"{"id": 1, "device": "Device A", "client": true, "key": "fw"}"#,
    r#"{"device": "Device A", "id": 1, "data": {"success": true}}"#,
    r#"{"Device A": {"secretKey": "s", "durationMs": 60000}}"#,
];
const TOPICS: &[&str] = &[
    "losant/dev1/state",
    "losant/dev1",
    "losant/gw1/state",
    "losant/p-any/state",
    "losant/p-gw2/state",
    "losant/dev2/state",
    "losant/dev1/command",
    "v1/devices/me/telemetry",
    "v1/devices/me/attributes",
    "v1/devices/me/attributes/request/1",
    "v1/devices/me/rpc/request/7",
    "v1/devices/me/rpc/response/abc",
    "v1/devices/me/claim",
    "v1/gateway/connect",
    "v1/gateway/disconnect",
    "v1/gateway/attributes",
    "v1/gateway/attributes/request",
    "v1/gateway/telemetry",
    "v1/gateway/rpc",
    "v1/gateway/claim",
    "factory/line1/temp",
    "$SYS/x",
    "a/+",
    "",
];
const FILTERS: &[&str] = &[
    "losant/dev1/command",
    "losant/p-any/command",
    "losant/+/command",
    "v1/devices/me/rpc/request/+",
    "v1/devices/me/rpc/response/+",
    "v1/devices/me/attributes",
    "v1/devices/me/attributes/response/+",
    "v1/gateway/rpc",
    "v1/gateway/attributes",
    "v1/gateway/attributes/response",
    "#",
    "factory/+/temp",
    "+/#",
    "a/#/b",
    "$share/g/x",
    "",
];

/// (client id, username, password, the topics it may publish to): valid for both dialects,
/// and not.
const CREDENTIALS: &[(&str, &str, &str, &[&str])] = &[
    (
        "dev1",
        "key-dev1",
        SECRET,
        &["losant/dev1/state", "losant/dev1"],
    ),
    (
        "dev2",
        "key-all",
        SECRET,
        &["losant/dev2/state", "factory/line1/temp"],
    ),
    (
        "gw1",
        "key-all",
        SECRET,
        &[
            "losant/gw1/state",
            "losant/p-any/state",
            "losant/p-gw2/state",
        ],
    ),
    (
        "gw2",
        "key-all",
        SECRET,
        &["losant/p-gw2", "losant/p-any/state"],
    ),
    (
        "tb-client",
        "tok-tb1",
        "",
        &[
            "v1/devices/me/telemetry",
            "v1/devices/me/attributes",
            "v1/devices/me/attributes/request/1",
            "v1/devices/me/rpc/request/7",
            "v1/devices/me/rpc/response/abc",
            "v1/devices/me/claim",
        ],
    ),
    (
        "tbgw-client",
        "tok-gw",
        "",
        &[
            "v1/gateway/connect",
            "v1/gateway/disconnect",
            "v1/gateway/attributes",
            "v1/gateway/attributes/request",
            "v1/gateway/telemetry",
            "v1/gateway/rpc",
            "v1/gateway/claim",
            "v1/devices/me/telemetry",
        ],
    ),
    ("dev1", "key-off", SECRET, &[]),
    ("dev1", "key-dev1", "wrong", &[]),
    ("", "", "", &[]),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum V {
    V3,
    V5,
}

struct Gen {
    rng: fastrand::Rng,
    /// The credentials of the session being made ([`CREDENTIALS`]).
    who: usize,
}

impl Gen {
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.rng.usize(..xs.len())]
    }

    fn chance(&mut self, percent: u8) -> bool {
        self.rng.u8(..100) < percent
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.u8(..)).collect()
    }

    /// Some MQTT 5 properties (id, value) for a packet, or none.
    fn properties(&mut self, v: V, ids: &[u8]) -> Vec<u8> {
        let mut props = Vec::new();
        if v == V::V5 {
            for _ in 0..self.rng.usize(..3) {
                let id = *self.pick(ids);
                props.push(id);
                match id {
                    // byte
                    0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                        props.push(self.rng.u8(..3))
                    }
                    // two-byte integer
                    0x13 | 0x21 | 0x22 | 0x23 => {
                        let n = *self.pick(&[0u16, 1, 10, u16::MAX]);
                        props.extend_from_slice(&n.to_be_bytes());
                    }
                    // four-byte integer
                    0x02 | 0x11 | 0x18 | 0x27 => {
                        let n = *self.pick(&[0u32, 1, 64, 300_000, u32::MAX]);
                        props.extend_from_slice(&n.to_be_bytes());
                    }
                    // variable byte integer (subscription identifier)
                    0x0B => varint(self.rng.usize(..300_000_000), &mut props),
                    // string pair
                    0x26 => {
                        bytes16(b"traceparent", &mut props);
                        bytes16(
                            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                            &mut props,
                        );
                    }
                    // string or binary
                    _ => {
                        let n = self.rng.usize(..20);
                        let s = self.bytes(n);
                        bytes16(&s, &mut props);
                    }
                }
            }
        }
        let mut out = Vec::new();
        if v == V::V5 {
            varint(props.len(), &mut out);
            out.extend(props);
        }
        out
    }

    fn connect(&mut self, v: V) -> Vec<u8> {
        let (client, user, pass, _) = CREDENTIALS[self.who];
        let mut b = Vec::new();
        if v == V::V3 && self.chance(5) {
            bytes16(b"MQIsdp", &mut b);
            b.push(3);
        } else {
            bytes16(b"MQTT", &mut b);
            b.push(if v == V::V5 { 5 } else { 4 });
        }
        let will = self.chance(15);
        let will_qos = if will { self.rng.u8(..3) } else { 0 };
        let mut flags = 0x02 | 0x80 | if pass.is_empty() { 0 } else { 0x40 };
        if will {
            flags |= 0x04 | (will_qos << 3) | if self.chance(20) { 0x20 } else { 0 };
        }
        if self.chance(5) {
            flags ^= 0x02; // clean session off (not supported: refused)
        }
        b.push(flags);
        let keepalive = *self.pick(&[60u16, 0, 1, 15, u16::MAX]);
        b.extend_from_slice(&keepalive.to_be_bytes());
        b.extend(self.properties(v, &[0x11, 0x21, 0x27, 0x22, 0x19, 0x17, 0x26, 0x15, 0x16]));
        bytes16(client.as_bytes(), &mut b);
        if will {
            b.extend(self.properties(v, &[0x18, 0x01, 0x02, 0x03, 0x08, 0x09, 0x26]));
            let topic = self.topic();
            bytes16(topic.as_bytes(), &mut b);
            let payload = self.payload(topic);
            bytes16(&payload, &mut b);
        }
        bytes16(user.as_bytes(), &mut b);
        if !pass.is_empty() {
            bytes16(pass.as_bytes(), &mut b);
        }
        packet(0x10, &b)
    }

    fn payload(&mut self, topic: &str) -> Vec<u8> {
        match self.rng.u8(..50) {
            0..=41 if topic.starts_with("losant") => self.pick(LOSANT_STATE).as_bytes().to_vec(),
            0..=41 => self.pick(TB_PAYLOADS).as_bytes().to_vec(),
            42..=47 => {
                let n = self.rng.usize(..64);
                self.bytes(n)
            }
            // Beyond the 256 KB payload limit, or nested deeper than the default limit.
            48 => vec![b'['; 300 * 1024],
            _ => format!(
                "{{\"data\":{{\"d\":{}1{}}}}}",
                "[".repeat(40),
                "]".repeat(40)
            )
            .into_bytes(),
        }
    }

    /// A topic the session's principal may publish to, mostly; any other sometimes.
    fn topic(&mut self) -> &'static str {
        let own = CREDENTIALS[self.who].3;
        let set = if !own.is_empty() && self.chance(80) {
            own
        } else {
            TOPICS
        };
        set[self.rng.usize(..set.len())]
    }

    fn publish(&mut self, v: V, id: u16) -> Vec<u8> {
        let qos = *self.pick(&[0u8, 1, 1, 1, 1, 1, 1, 2]);
        let retain = u8::from(self.chance(3));
        let dup = if self.chance(5) { 0x08 } else { 0 };
        let topic = self.topic();
        let mut b = Vec::new();
        bytes16(topic.as_bytes(), &mut b);
        if qos > 0 {
            b.extend_from_slice(&id.to_be_bytes());
        }
        b.extend(self.properties(v, &[0x01, 0x02, 0x23, 0x08, 0x09, 0x26, 0x0B, 0x03]));
        b.extend(self.payload(topic));
        packet(0x30 | dup | (qos << 1) | retain, &b)
    }

    fn subscribe(&mut self, v: V, id: u16) -> Vec<u8> {
        let mut b = id.to_be_bytes().to_vec();
        b.extend(self.properties(v, &[0x0B, 0x26]));
        for _ in 0..1 + self.rng.usize(..3) {
            bytes16(self.pick(FILTERS).as_bytes(), &mut b);
            // QoS, and in v5 no-local, retain-as-published, retain handling.
            b.push(self.rng.u8(..3) | if v == V::V5 { self.rng.u8(..4) << 2 } else { 0 });
        }
        packet(0x82, &b)
    }

    fn unsubscribe(&mut self, v: V, id: u16) -> Vec<u8> {
        let mut b = id.to_be_bytes().to_vec();
        b.extend(self.properties(v, &[0x26]));
        bytes16(self.pick(FILTERS).as_bytes(), &mut b);
        packet(0xA2, &b)
    }

    fn ack(&mut self, v: V, first: u8, id: u16) -> Vec<u8> {
        let mut b = id.to_be_bytes().to_vec();
        if v == V::V5 && self.chance(50) {
            b.push(*self.pick(&[0u8, 0x10, 0x80, 0x92]));
            b.extend(self.properties(v, &[0x1F, 0x26]));
        }
        packet(first, &b)
    }

    fn disconnect(&mut self, v: V) -> Vec<u8> {
        if v == V::V5 && self.chance(50) {
            let mut b = vec![*self.pick(&[0u8, 0x04, 0x80, 0x8E])];
            b.extend(self.properties(v, &[0x11, 0x1F, 0x26, 0x1C]));
            return packet(0xE0, &b);
        }
        vec![0xE0, 0x00]
    }

    /// A plausible session: CONNECT, some packets, maybe DISCONNECT.
    fn session(&mut self, v: V) -> Vec<Vec<u8>> {
        // Mostly credentials that connect, so that the packets after CONNECT matter.
        self.who = if self.chance(85) {
            self.rng.usize(..6)
        } else {
            self.rng.usize(..CREDENTIALS.len())
        };
        let mut packets = vec![self.connect(v)];
        for _ in 0..self.rng.usize(..8) {
            let id = if self.chance(95) {
                self.rng.u16(1..=100)
            } else {
                *self.pick(&[0u16, u16::MAX])
            };
            let p = match self.rng.u8(..12) {
                0..=4 => self.publish(v, id),
                5..=6 => self.subscribe(v, id),
                7 => self.unsubscribe(v, id),
                8 => vec![0xC0, 0x00], // PINGREQ
                9 => {
                    let first = *self.pick(&[0x40u8, 0x50, 0x62, 0x70]);
                    self.ack(v, first, id)
                }
                10 if v == V::V5 => {
                    let mut b = vec![0x18];
                    b.extend(self.properties(v, &[0x15, 0x16]));
                    packet(0xF0, &b) // AUTH
                }
                _ => self.connect(v), // a second CONNECT is a protocol error
            };
            packets.push(p);
        }
        if self.chance(60) {
            packets.push(self.disconnect(v));
        }
        packets
    }

    /// Breaks a session's packets in one or more ways.
    fn mutate(&mut self, mut packets: Vec<Vec<u8>>) -> Vec<u8> {
        for _ in 0..1 + self.rng.usize(..3) {
            // Mostly after the CONNECT: a broken CONNECT goes no further.
            let i = if packets.len() > 1 && self.chance(75) {
                self.rng.usize(1..packets.len())
            } else {
                self.rng.usize(..packets.len())
            };
            match self.rng.u8(..14) {
                // Bit flips in one packet.
                0..=2 => {
                    let p = &mut packets[i];
                    for _ in 0..1 + self.rng.usize(..8) {
                        if !p.is_empty() {
                            let at = self.rng.usize(..p.len());
                            p[at] ^= 1 << self.rng.u8(..8);
                        }
                    }
                }
                // An interesting byte somewhere.
                3 => {
                    let p = &mut packets[i];
                    if !p.is_empty() {
                        let at = self.rng.usize(..p.len());
                        p[at] = *self.pick(&[0x00, 0xFF, 0x7F, 0x80, 0x01]);
                    }
                }
                // The remaining length lies: off by a little, huge, five bytes long, or
                // not minimally encoded.
                4..=5 => {
                    let p = &packets[i];
                    if let Some(start) = body_start(p) {
                        let body = p[start..].to_vec();
                        let mut out = vec![p[0]];
                        match self.rng.u8(..5) {
                            0 => varint(body.len() + 1 + self.rng.usize(..16), &mut out),
                            1 => varint(
                                body.len().saturating_sub(1 + self.rng.usize(..16)),
                                &mut out,
                            ),
                            2 => varint(268_435_455, &mut out),
                            3 => out.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
                            _ => {
                                let n = body.len().min(127) as u8;
                                out.extend_from_slice(&[0x80 | n, 0x80, 0x00]);
                            }
                        }
                        out.extend(body);
                        packets[i] = out;
                    }
                }
                // A string length inside the body lies.
                6 => {
                    let p = &mut packets[i];
                    if let Some(start) = body_start(p)
                        && p.len() > start + 2
                    {
                        let at = start + self.rng.usize(..p.len() - start - 1);
                        let n = *self.pick(&[0u16, 1, 0x7FFF, u16::MAX]);
                        p[at..at + 2].copy_from_slice(&n.to_be_bytes());
                    }
                }
                // Cut short.
                7 => {
                    let p = &mut packets[i];
                    let keep = self.rng.usize(..=p.len());
                    p.truncate(keep);
                }
                // Dropped, repeated, swapped.
                8 => {
                    if packets.len() > 1 {
                        packets.remove(i);
                    }
                }
                9 => {
                    let p = packets[i].clone();
                    packets.insert(i, p);
                }
                10 => {
                    let j = self.rng.usize(..packets.len());
                    packets.swap(i, j);
                }
                // Wrong type or flags.
                11 => {
                    if let Some(b) = packets[i].first_mut() {
                        *b = self.rng.u8(..);
                    }
                }
                // Random bytes inserted, or instead of the packet.
                12 => {
                    let n = self.rng.usize(..64);
                    let junk = self.bytes(n);
                    let p = &mut packets[i];
                    let at = self.rng.usize(..=p.len());
                    p.splice(at..at, junk);
                }
                _ => {
                    let n = self.rng.usize(..256);
                    packets[i] = self.bytes(n);
                }
            }
        }
        packets.concat()
    }

    /// What one connection sends, and how many packets it was made of.
    fn connection(&mut self) -> (Vec<u8>, usize) {
        let v = if self.chance(50) { V::V3 } else { V::V5 };
        let session = self.session(v);
        let n = session.len();
        match self.rng.u8(..20) {
            // Unmutated (the valid paths stay exercised under load).
            0..=2 => (session.concat(), n),
            // Nothing but noise.
            3 => {
                let len = self.rng.usize(..512);
                (self.bytes(len), 1)
            }
            _ => (self.mutate(session), n),
        }
    }
}

// ---- the run --------------------------------------------------------------------------

/// What the server sent back over all connections, by packet type.
#[derive(Default)]
struct Answers {
    by_type: [AtomicU64; 16],
    closed_by_server: AtomicU64,
}

/// Counts the whole packets in `buf` by type; never panics on what it reads.
fn count_packets(buf: &mut Vec<u8>, answers: &Answers) {
    loop {
        let Some(start) = body_start(buf) else { return };
        let mut len = 0usize;
        for (k, b) in buf[1..start].iter().enumerate() {
            len += usize::from(b & 0x7F) << (7 * k);
        }
        if buf.len() < start + len {
            return;
        }
        answers.by_type[usize::from(buf[0] >> 4)].fetch_add(1, Ordering::Relaxed);
        buf.drain(..start + len);
    }
}

/// One fuzzed connection: write `bytes` in a few segments, read what comes back for a
/// short while, close.
async fn fuzz_connection(
    addr: std::net::SocketAddr,
    bytes: Vec<u8>,
    cuts: Vec<usize>,
    answers: Arc<Answers>,
) {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return;
    };
    let (mut rd, mut wr) = stream.into_split();
    let reader = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match tokio::time::timeout(Duration::from_millis(300), rd.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    answers.closed_by_server.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(Ok(n)) => {
                    buf.extend_from_slice(&chunk[..n]);
                    count_packets(&mut buf, &answers);
                    if buf.len() > 1 << 20 {
                        buf.clear();
                    }
                }
                Err(_) => return, // quiet: the test closes
            }
        }
    };
    let writer = async {
        let mut from = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            let cut = cut.clamp(from, bytes.len());
            if wr.write_all(&bytes[from..cut]).await.is_err() {
                return;
            }
            from = cut;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::join!(reader, writer);
}

/// A fresh client connects, publishes at QoS 1 and gets its PUBACK, within 10 s.
async fn alive(
    addr: std::net::SocketAddr,
    v: fluxgate_testkit::raw::V,
    n: u64,
) -> Result<(), String> {
    use fluxgate_testkit::raw::{self, Got};
    let check = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let state = format!(r#"{{"data":{{"alive":{n}}}}}"#);
        let mut out = raw::connect(v, "tagged", "key-blue", SECRET);
        out.extend(raw::publish(
            v,
            "losant/tagged/state",
            Some(1),
            state.as_bytes(),
        ));
        s.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !got.iter().any(|g| matches!(g, Got::PubAck(1, _))) {
            let k = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if k == 0 {
                return Err(format!("closed by the server after {got:?}"));
            }
            buf.extend_from_slice(&chunk[..k]);
            got.extend(raw::parse(&mut buf));
        }
        let _ = s.write_all(&raw::disconnect()).await;
        match got.as_slice() {
            [Got::ConnAck(0), Got::PubAck(1, 0)] => Ok(()),
            other => Err(format!("answers {other:?}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), check)
        .await
        .map_err(|_| "no CONNACK and PUBACK within 10 s".to_string())?
}

/// Reads a topic in its own group, committing everything, and checks every record
/// decodes as what the topic carries.
fn drain(bus: &Arc<dyn Bus>, topic: &str, decode: fn(&[u8]) -> Result<(), String>) -> Drained {
    let c = bus
        .consumer(ConsumerSpec::group(
            fluxgate_testkit::unique_name("fuzz-drain"),
            &[topic],
        ))
        .unwrap();
    let d = Drained::default();
    let (count, bad) = (d.count.clone(), d.bad.clone());
    let topic = topic.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            while let Ok(r) = c.recv().await {
                if let Err(e) = decode(&r.payload) {
                    bad.lock().unwrap().push(format!("{topic}: {e}"));
                }
                count.fetch_add(1, Ordering::Relaxed);
                c.ack(&r.position);
                if c.commit().await.is_err() {
                    return;
                }
            }
        });
    });
    d
}

#[derive(Default, Clone)]
struct Drained {
    count: Arc<AtomicU64>,
    bad: Arc<Mutex<Vec<String>>>,
}

fn envelope(b: &[u8]) -> Result<(), String> {
    Envelope::from_bytes(b).map(drop).map_err(|e| e.to_string())
}

fn rejection(b: &[u8]) -> Result<(), String> {
    Rejection::from_bytes(b)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[ntex::test]
async fn mutated_mqtt_packets_never_take_the_front_down() {
    let secs = env_u64("FLUXGATE_PACKET_FUZZ_SECS").unwrap_or(10);
    let max_connections = env_u64("FLUXGATE_PACKET_FUZZ_CONNECTIONS").unwrap_or(1_000_000);
    let seed = env_u64("FLUXGATE_PACKET_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("packet fuzz: seed {seed} (FLUXGATE_PACKET_FUZZ_SEED={seed} replays it), {secs} s");

    // A panic on any thread (the front's workers, its tasks) is a crash, even one the
    // runtime survives.
    let panics = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = panics.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.lock().unwrap().push(info.to_string());
        default_hook(info);
    }));

    let rig = Rig::memory(unlimited()).await;
    let checks = [
        drain(&rig.bus, &rig.topics.name(Topic::IngestRaw), envelope),
        drain(&rig.bus, &rig.topics.name(Topic::DeviceEvents), envelope),
        drain(&rig.bus, &rig.topics.name(Topic::IngestRejected), rejection),
    ];
    let mut g = Gen {
        rng: fastrand::Rng::with_seed(seed),
        who: 0,
    };
    let answers = Arc::new(Answers::default());
    let (mut connections, mut packets, mut bytes, mut liveness) = (0u64, 0u64, 0u64, 0u64);
    const BATCH: usize = 48;
    const PARALLEL: usize = 12;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut failure = None;
    while Instant::now() < deadline && connections < max_connections {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..BATCH {
            if connections >= max_connections {
                break;
            }
            let (b, n) = g.connection();
            let mut cuts: Vec<usize> = (0..g.rng.usize(..4))
                .map(|_| g.rng.usize(..=b.len()))
                .collect();
            cuts.sort_unstable();
            connections += 1;
            packets += n as u64;
            bytes += b.len() as u64;
            tasks.spawn(fuzz_connection(rig.addr, b, cuts, answers.clone()));
            while tasks.len() >= PARALLEL {
                tasks.join_next().await;
            }
        }
        while tasks.join_next().await.is_some() {}
        let v = if liveness % 2 == 0 {
            fluxgate_testkit::raw::V::V3
        } else {
            fluxgate_testkit::raw::V::V5
        };
        if let Err(e) = alive(rig.addr, v, liveness).await {
            failure = Some(format!(
                "the front stopped serving after {connections} connections: {e}"
            ));
            break;
        }
        liveness += 1;
        if !panics.lock().unwrap().is_empty() {
            break;
        }
    }
    let _ = std::panic::take_hook(); // back to the default hook

    let crashes = panics.lock().unwrap().clone();
    let count = |t: usize| answers.by_type[t].load(Ordering::Relaxed);
    println!(
        "packet fuzz: {connections} connections, {packets} packets ({bytes} bytes) in {:.1} s; \
         answers: {} CONNACK, {} PUBACK, {} SUBACK, {} UNSUBACK, {} PINGRESP, {} DISCONNECT, \
         {} closed by the server; bus: {} raw, {} events, {} rejected records decoded; \
         {liveness} liveness checks passed",
        started.elapsed().as_secs_f64(),
        count(2),
        count(4),
        count(9),
        count(11),
        count(13),
        count(14),
        answers.closed_by_server.load(Ordering::Relaxed),
        checks[0].count.load(Ordering::Relaxed),
        checks[1].count.load(Ordering::Relaxed),
        checks[2].count.load(Ordering::Relaxed),
    );
    let undecodable: Vec<String> = checks
        .iter()
        .flat_map(|c| c.bad.lock().unwrap().clone())
        .collect();
    println!(
        "packet fuzz: {connections} connections, {packets} packets, {} crashes",
        crashes.len() + usize::from(failure.is_some())
    );
    assert!(crashes.is_empty(), "seed {seed}: panics: {crashes:#?}");
    assert!(
        failure.is_none(),
        "seed {seed}: {}",
        failure.unwrap_or_default()
    );
    assert!(
        undecodable.is_empty(),
        "seed {seed}: records the front produced that do not decode: {undecodable:#?}"
    );
    assert!(liveness > 0, "no batch completed");
}
