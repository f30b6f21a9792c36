//! `fluxgate-testkit`: dev-only test infrastructure.
//!
//! - External services come from the environment: `KAFKA_BROKERS` (a Kafka-protocol
//!   broker; `.ci/run` starts Apache Kafka and sets it) and `SCYLLA_URI` (a CQL database; Cassandra in CI). A test that needs an
//!   absent service is skipped with a message on a developer machine, and **fails** in CI
//!   (`CI` set), so CI can never pass by skipping.
//! - Unique names, so tests sharing one broker never see each other's topics or groups.
//! - [`cql`]: the CQL test double the ScyllaDB adapter is tested against.
//! - [`Stoppable`]: a role's `run(…, shutdown)` spawned until the test stops it.
//! - `cluster` (feature `cluster`): every role of the real binary as its own process;
//!   [`services`]: a private Kafka or Cassandra a test may kill.
//! - `otlp` (feature `otlp`): an OTLP/gRPC trace receiver for the real binary's spans.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[cfg(feature = "cluster")]
pub mod cluster;
pub mod cql;
pub mod http;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod raw;
pub mod services;

/// A task that runs until the test stops it: a role's `run(…, shutdown)`.
#[derive(Debug)]
pub struct Stoppable<T> {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<T>,
}

/// The shutdown future handed to a [`Stoppable`]'s task.
pub type Shutdown = Pin<Box<dyn Future<Output = ()>>>;

impl<T: 'static> Stoppable<T> {
    /// Spawns `run(shutdown)` on this thread's local task set (the actix system of the role
    /// tests); `shutdown` resolves when [`Stoppable::stop`] is called.
    pub fn spawn_local<F>(run: impl FnOnce(Shutdown) -> F) -> Self
    where
        F: Future<Output = T> + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::task::spawn_local(run(Box::pin(async {
            let _ = stopped.await;
        })));
        Stoppable { stop, task }
    }

    /// Resolves the shutdown and returns the task's result; panics unless it comes within
    /// `within`.
    pub async fn stop(self, within: Duration) -> T {
        let _ = self.stop.send(());
        match tokio::time::timeout(within, self.task).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!("the stopped task failed: {e}"),
            Err(_) => panic!("the task did not stop within {within:?}"),
        }
    }
}

/// The Kafka brokers to test against, from `KAFKA_BROKERS`.
///
/// Returns `None` (after saying so on stderr) when unset on a developer machine; panics
/// when unset under CI.
pub fn kafka_brokers(test: &str) -> Option<String> {
    service_from_env("KAFKA_BROKERS", test)
}

/// The service address in `var`; `None` (after saying "ignored: needs `var`") when it is
/// unset on a developer machine; a panic when it is unset under CI. The line goes to the
/// process's stderr directly, not through the test harness's capture, so `cargo test`
/// shows it next to the test's `ok`.
pub(crate) fn service_from_env(var: &str, test: &str) -> Option<String> {
    use std::io::Write;
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{test}: {var} is not set; CI must provide the service (see .ci/run)")
        }
        _ => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "{test}: ignored: needs {var} (see README: tests that need Kafka or a CQL database)"
            );
            None
        }
    }
}

/// The path of a command-line tool a test runs, from the environment variable `var`
/// (`PROMTOOL`): `None` after saying the test is ignored, and how to get the tool; under
/// `CI` a panic instead.
pub fn tool_from_env(var: &str, test: &str, how: &str) -> Option<String> {
    use std::io::Write;
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{test}: {var} is not set; CI must provide it ({how})")
        }
        _ => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "{test}: ignored: needs {var} ({how})"
            );
            None
        }
    }
}

/// A free TCP address on 127.0.0.1, for a process a test starts (bound, then released for
/// the process to take).
#[cfg(feature = "cluster")]
pub(crate) fn free_addr() -> std::io::Result<std::net::SocketAddr> {
    Ok(std::net::SocketAddr::from(([127, 0, 0, 1], free_ports(1)?)))
}

/// The first of `n` consecutive ports free on 127.0.0.1, *below* the kernel's ephemeral
/// range. A server that is killed and started again on its port (the kill tests) must
/// find it free: a port from the ephemeral range can meanwhile be taken as the local end
/// of some connection — even of a client's own retries to it, which Linux turns into a
/// connection to itself when nothing listens.
pub(crate) fn free_ports(n: u16) -> std::io::Result<u16> {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Above the shared servers' defaults (17000, 17199, 19042, 19092).
    let (low, high) = (20_000u16, ephemeral.saturating_sub(n));
    if high <= low {
        return Err(std::io::Error::other(format!(
            "no ports between {low} and the ephemeral range ({ephemeral})"
        )));
    }
    let span = u64::from(high - low);
    let seed = unique_name("port")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    // A port handed out once is not handed out again by this process: the tests of one
    // binary run at once, and a port checked free here is bound by its server only later
    // (two clusters starting together drew the same port, and a front could not listen).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span.min(2_000) {
        let base = low + ((seed.wrapping_add(i * 7919)) % span) as u16;
        let taken = (base..base + n).any(|p| given.contains(&p));
        let free = !taken
            && (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            given.extend(base..base + n);
            return Ok(base);
        }
    }
    Err(std::io::Error::other(format!(
        "no {n} consecutive free ports between {low} and {high}"
    )))
}

/// A name no other test run uses: `<prefix>-<pid>-<time>-<counter>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{:x}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        assert_ne!(unique_name("t"), unique_name("t"));
        assert!(unique_name("topic").starts_with("topic-"));
    }
}
