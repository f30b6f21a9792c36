//! `fluxgate-cluster`: the deployment shape on one machine, by hand (`scripts/cluster`).
//! Starts every role of the fluxgate binary as its own process on the Kafka at
//! `KAFKA_BROKERS` and the CQL database at `SCYLLA_URI`, prints where each listens, and
//! keeps them running until Ctrl-C (then stops them all).
//!
//! Usage: `fluxgate-cluster [BIN] [--fronts N] [--apis N] [--validators N] [--writers N]
//! [--dispatchers N]` (BIN defaults to `target/debug/fluxgate`).

use std::path::PathBuf;

use fluxgate_testkit::cluster::{Cluster, Spec};

fn main() -> std::io::Result<()> {
    let mut spec = Spec::default();
    let mut bin = PathBuf::from("target/debug/fluxgate");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut count = |what: &str| -> std::io::Result<usize> {
            args.next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("{what} needs a number")))
        };
        match a.as_str() {
            "--fronts" => spec.fronts = count("--fronts")?,
            "--apis" => spec.apis = count("--apis")?,
            "--validators" => spec.validators = count("--validators")?,
            "--writers" => spec.writers = count("--writers")?,
            "--dispatchers" => spec.dispatchers = count("--dispatchers")?,
            "-h" | "--help" => {
                println!(
                    "fluxgate-cluster [BIN] [--fronts N] [--apis N] [--validators N] [--writers N] [--dispatchers N]"
                );
                return Ok(());
            }
            flag if flag.starts_with('-') => {
                return Err(std::io::Error::other(format!(
                    "unknown option {flag} (fluxgate-cluster --help)"
                )));
            }
            other => bin = PathBuf::from(other),
        }
    }
    let env = |v: &str| {
        std::env::var(v).map_err(|_| {
            std::io::Error::other(format!(
                "{v} is not set: eval \"$(scripts/services/up)\" first"
            ))
        })
    };
    let (kafka, cql) = (env("KAFKA_BROKERS")?, env("SCYLLA_URI")?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut cluster = Cluster::start(&bin, &kafka, &cql, spec).await?;
        cluster.keep_folder();
        println!("cluster up (configs and logs in {})", cluster.dir.display());
        println!("admin token: {}", cluster.token);
        for p in cluster.procs() {
            let mqtt = p
                .mqtt
                .map(|m| format!("  mqtt tcp://{m}"))
                .unwrap_or_default();
            println!(
                "  {}-{}  pid {}  http://{}{mqtt}",
                p.role.command(),
                p.index,
                p.pid().unwrap_or(0),
                p.http
            );
        }
        println!("Ctrl-C stops every process");
        tokio::signal::ctrl_c().await?;
        drop(cluster);
        Ok(())
    })
}
