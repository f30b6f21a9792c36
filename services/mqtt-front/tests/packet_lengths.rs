//! Packets whose lengths lie, over real sockets (found by the packet fuzzer,
//! `tests/packet_fuzz.rs`).
//!
//! ntex-mqtt 8.2.1 computes a PUBLISH's payload length as its remaining length minus the
//! length of its header, without checking that the header fits (v3 `codec.rs:120`, v5
//! `codec.rs:191`). A PUBLISH whose remaining length is shorter than its topic makes that
//! subtraction overflow: in a debug build the connection's worker panics; in the release
//! build (no overflow checks, what is shipped, and what the workspace's dev profile now
//! compiles ntex-mqtt as) the length wraps to about 4 GiB, past the max packet size check,
//! and everything the client sends afterwards is that publish's payload. The front read
//! payloads whole, so one 20-byte packet let a client fill the front's memory: 512 MiB
//! sent after it raised the front's RSS by 517 MiB, on one connection. The front now
//! reads at most the max packet size of a payload and closes the connection when a
//! payload goes past it (v5: DISCONNECT 0x81, malformed packet).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use fluxgate_bus::Topic;
use fluxgate_testkit::raw::{self, Got, V};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A QoS 0 PUBLISH with a remaining length of 2 and a 16-byte topic.
fn shorter_than_its_topic(v: V) -> Vec<u8> {
    let mut p = vec![0x30, 0x02, 0x00, 0x10];
    p.extend_from_slice(b"losant/dev1/stat");
    if v == V::V5 {
        p.push(0); // no properties
    }
    p
}

#[ntex::test]
async fn a_publish_shorter_than_its_topic_closes_the_connection_instead_of_filling_memory() {
    let rig = Rig::memory(Rig::config()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let _raw = rig.tap(Topic::IngestRaw);
    // The front's max packet: the payload limit and 8 KiB for the topic and properties.
    let max_packet = 256 * 1024 + 8 * 1024;
    for v in [V::V3, V::V5] {
        let (mut rd, mut wr) = TcpStream::connect(rig.addr).await.unwrap().into_split();
        wr.write_all(&raw::connect(v, "dev1", "key-dev1", SECRET))
            .await
            .unwrap();
        wr.write_all(&shorter_than_its_topic(v)).await.unwrap();
        // What follows is taken for the payload: 16 MiB, in 64 KiB writes, while the
        // front answers.
        let writer = tokio::spawn(async move {
            let chunk = vec![b' '; 64 * 1024];
            let mut sent = 0usize;
            while sent < 16 << 20 {
                match tokio::time::timeout(Duration::from_secs(10), wr.write_all(&chunk)).await {
                    Ok(Ok(())) => sent += chunk.len(),
                    _ => break, // closed by the front (or stuck: it reads no more)
                }
            }
            sent
        });
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => {
                    buf.extend_from_slice(&chunk[..n]);
                    got.extend(raw::parse(&mut buf));
                }
                Err(_) => break false,
            }
        };
        let sent = writer.await.unwrap();
        eprintln!("{v:?}: {sent} bytes written after the PUBLISH; got {got:?}; closed: {closed}");
        assert!(
            closed,
            "{v:?}: the front kept the connection and its payload"
        );
        assert_eq!(got.first(), Some(&Got::ConnAck(0)), "{v:?}");
        if v == V::V5 {
            assert_eq!(got.last(), Some(&Got::Disconnect(0x81)), "malformed packet");
        }
        // What the front took in before closing is bounded by its max packet; what the
        // client could still write is what the two sockets' buffers hold.
        assert!(
            sent < 16 << 20,
            "{v:?}: {sent} bytes accepted (max packet {max_packet})"
        );
    }
    // And the front still serves.
    let (mut rd, mut wr) = TcpStream::connect(rig.addr).await.unwrap().into_split();
    let mut out = raw::connect(V::V3, "dev2", "key-all", SECRET);
    out.extend(raw::publish(
        V::V3,
        "losant/dev2/state",
        Some(1),
        br#"{"data":{"a":1}}"#,
    ));
    wr.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let mut chunk = [0u8; 256];
    while got.len() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk))
            .await
            .expect("answers within 10 s")
            .unwrap();
        assert!(n > 0, "closed: {got:?}");
        buf.extend_from_slice(&chunk[..n]);
        got.extend(raw::parse(&mut buf));
    }
    assert_eq!(got, [Got::ConnAck(0), Got::PubAck(1, 0)]);
}
