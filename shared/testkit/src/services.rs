//! A private Apache Kafka or Cassandra for a test that kills its server (`kill -9`) and
//! starts it again on the same data: `scripts/services/{kafka,cassandra}` with a run folder
//! and ports of the test's own, so no other test sharing the machine's servers notices.
//! Stopped when dropped.

use std::path::PathBuf;
use std::process::Command;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Apache Kafka (KRaft, one node).
    Kafka,
    /// Apache Cassandra (one node).
    Cassandra,
}

/// A server of the test's own.
#[derive(Debug)]
pub struct Private {
    kind: Kind,
    run: PathBuf,
    port: u16,
}

impl Private {
    /// Starts a fresh server (its jars fetched once into the shared cache).
    pub fn start(kind: Kind) -> std::io::Result<Private> {
        let run = std::env::temp_dir().join(crate::unique_name("fg-private"));
        let p = Private {
            kind,
            run,
            port: crate::free_ports(3)?,
        };
        p.call("start")?;
        Ok(p)
    }

    /// `host:port` to connect to (`KAFKA_BROKERS` / `SCYLLA_URI` form).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self) -> PathBuf {
        let name = match self.kind {
            Kind::Kafka => "kafka",
            Kind::Cassandra => "cassandra",
        };
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../scripts/services/{name}"))
    }

    fn command(&self, what: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg(self.script())
            .arg(what)
            .env("FLUXGATE_SERVICES_RUN", &self.run);
        // Ports of its own, next to each other (free when the test began, and outside the
        // ephemeral range, so still free when it starts again after a kill).
        let p = self.port;
        match self.kind {
            Kind::Kafka => c
                .env("KAFKA_PORT", p.to_string())
                .env("KAFKA_CONTROLLER_PORT", (p + 1).to_string()),
            Kind::Cassandra => c
                .env("CASSANDRA_NATIVE_PORT", p.to_string())
                .env("CASSANDRA_STORAGE_PORT", (p + 1).to_string())
                .env("CASSANDRA_JMX_PORT", (p + 2).to_string())
                // It will be killed: its schema must survive that.
                .env("CASSANDRA_UNSAFE_SYSTEM", "false"),
        };
        c
    }

    fn call(&self, what: &str) -> std::io::Result<()> {
        let out = self.command(what).output()?;
        if out.status.success() {
            return Ok(());
        }
        Err(std::io::Error::other(format!(
            "{:?} {what}: {}\n{}",
            self.kind,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }

    /// `kill -9` of the server, by the PID its script recorded.
    pub fn kill_9(&self) -> std::io::Result<()> {
        let name = match self.kind {
            Kind::Kafka => "kafka/kafka.pid",
            Kind::Cassandra => "cassandra/cassandra.pid",
        };
        let pid = std::fs::read_to_string(self.run.join(name))?;
        let ok = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()?
            .success();
        if ok {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill -9 {}", pid.trim())))
        }
    }

    /// Starts it again on the data of the last start, and waits until it serves.
    pub fn restart(&self) -> std::io::Result<()> {
        self.call("restart")
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = self.command("stop").status();
        let _ = std::fs::remove_dir_all(&self.run);
    }
}
