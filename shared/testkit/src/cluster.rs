//! The deployment shape on one machine: every role of the real `fluxgate` binary as its own
//! OS process (`front`s, `api`s, `validator`s, `writer`s, `dispatcher`s) on a real Kafka and
//! a real CQL database, after `fluxgate migrate`. Each process has its own config file, log
//! file and `/readyz`; any one can be killed (SIGKILL), stopped (SIGTERM) and started again,
//! by the PID the harness recorded.
//!
//! Each cluster has its own topic prefix, consumer groups and keyspace, so clusters (and
//! other tests) sharing one broker and one database never see each other's data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A role of the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `fluxgate front`: MQTT.
    Front,
    /// `fluxgate api`: HTTP.
    Api,
    /// `fluxgate validator`.
    Validator,
    /// `fluxgate writer`.
    Writer,
    /// `fluxgate dispatcher`.
    Dispatcher,
}

impl Role {
    /// The sub-command.
    pub fn command(self) -> &'static str {
        match self {
            Role::Front => "front",
            Role::Api => "api",
            Role::Validator => "validator",
            Role::Writer => "writer",
            Role::Dispatcher => "dispatcher",
        }
    }
}

/// How many of each role.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// MQTT fronts.
    pub fronts: usize,
    /// API replicas.
    pub apis: usize,
    /// Validators (one consumer group).
    pub validators: usize,
    /// Time-series writers (one consumer group).
    pub writers: usize,
    /// Command dispatchers (one consumer group).
    pub dispatchers: usize,
    /// More TOML for every front, after its `[front]` keys (e.g. `[front.rate_limits]`
    /// tables).
    pub front_config: &'static str,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            fronts: 2,
            apis: 2,
            validators: 2,
            writers: 1,
            dispatchers: 1,
            front_config: "",
        }
    }
}

/// One role process.
#[derive(Debug)]
pub struct Proc {
    /// Its role.
    pub role: Role,
    /// Its index among that role's processes.
    pub index: usize,
    /// `/metrics`, `/healthz`, `/readyz` (for an API: the API itself).
    pub http: SocketAddr,
    /// MQTT, for a front.
    pub mqtt: Option<SocketAddr>,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// The PID of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
    /// Its log file (stdout and stderr).
    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// A running cluster. Every process is killed when it is dropped, and its folder removed
/// unless the test is failing.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    /// Config files and logs.
    pub dir: PathBuf,
    /// The bootstrap admin token of the APIs.
    pub token: String,
    procs: Vec<Proc>,
    /// Leave `dir` behind when dropped.
    keep: bool,
    /// More environment for every role process (`OTEL_*`, `FLUXGATE_*`).
    env: Vec<(String, String)>,
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Cluster {
    /// Writes the configs, runs `fluxgate migrate`, starts every role and waits until each
    /// answers `/readyz` (at most 90 s in all).
    pub async fn start(bin: &Path, kafka: &str, cql: &str, spec: Spec) -> std::io::Result<Self> {
        Self::start_with(bin, kafka, cql, spec, Vec::new()).await
    }

    /// [`Cluster::start`] with more environment for every role process.
    pub async fn start_with(
        bin: &Path,
        kafka: &str,
        cql: &str,
        spec: Spec,
        env: Vec<(String, String)>,
    ) -> std::io::Result<Self> {
        let name = crate::unique_name("fgc").replace('-', "_");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let token = crate::unique_name("admin");
        let nodes: Vec<String> = cql
            .split(',')
            .map(|n| format!("\"{}\"", n.trim()))
            .collect();
        let common = format!(
            r#"data_dir = "{data}"

[bus]
kind = "kafka"

[bus.kafka]
brokers = "{kafka}"
session_timeout_ms = 6000

[store]
kind = "scylla"

[store.scylla]
nodes = [{nodes}]
keyspace = "{name}"
replication = "{{'class': 'SimpleStrategy', 'replication_factor': 1}}"

[topics]
prefix = "{name}."
partitions = 4
replication_factor = 1

[validator]
group = "{name}-validator"

[writer]
group = "{name}-writer"

[dispatcher]
group = "{name}-dispatcher"

[api]
bootstrap_token = "{token}"
device_token_secret = "{name}-device-tokens"

[log]
filter = "info"
"#,
            data = dir.join("data").display(),
            nodes = nodes.join(", "),
        );
        std::fs::write(dir.join("common.toml"), &common)?;
        let migrate = Command::new(bin)
            .args(["-c", &dir.join("common.toml").to_string_lossy(), "migrate"])
            .output()
            .await?;
        if !migrate.status.success() {
            return Err(other(format!(
                "fluxgate migrate failed: {}",
                String::from_utf8_lossy(&migrate.stderr)
            )));
        }
        let mut cluster = Cluster {
            bin: bin.to_owned(),
            dir,
            token,
            procs: Vec::new(),
            keep: false,
            env,
        };
        let roles = [
            (Role::Validator, spec.validators),
            (Role::Writer, spec.writers),
            (Role::Dispatcher, spec.dispatchers),
            (Role::Api, spec.apis),
            (Role::Front, spec.fronts),
        ];
        for (role, n) in roles {
            for index in 0..n {
                let p = cluster.configure(&common, role, index, spec.front_config)?;
                cluster.procs.push(p);
            }
        }
        for i in 0..cluster.procs.len() {
            cluster.spawn(i)?;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        for i in 0..cluster.procs.len() {
            cluster.wait_ready(i, deadline).await?;
        }
        Ok(cluster)
    }

    fn configure(
        &self,
        common: &str,
        role: Role,
        index: usize,
        front_config: &str,
    ) -> std::io::Result<Proc> {
        let http = crate::free_addr()?;
        let mut own = String::new();
        let mut mqtt = None;
        match role {
            Role::Front => {
                let m = crate::free_addr()?;
                mqtt = Some(m);
                own.push_str(&format!(
                    "\n[front]\ninstance_id = \"front-{index}\"\ntcp_addr = \"{m}\"\nhttp_addr = \"{http}\"\n{front_config}\n"
                ));
            }
            Role::Api => {}
            _ => own.push_str(&format!("metrics_addr = \"{http}\"\n")),
        }
        // Top-level keys come before any table; the API's address goes into [api].
        let text = match role {
            Role::Front => format!("{common}{own}"),
            Role::Api => common.replace("[api]\n", &format!("[api]\nhttp_addr = \"{http}\"\n")),
            _ => format!("{own}{common}"),
        };
        let name = format!("{}-{index}", role.command());
        let config = self.dir.join(format!("{name}.toml"));
        std::fs::write(&config, text)?;
        Ok(Proc {
            role,
            index,
            http,
            mqtt,
            config,
            log: self.dir.join(format!("{name}.log")),
            child: None,
        })
    }

    fn spawn(&mut self, i: usize) -> std::io::Result<()> {
        let p = &mut self.procs[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)?;
        let child = Command::new(&self.bin)
            .args(["-c", &p.config.to_string_lossy(), p.role.command()])
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        p.child = Some(child);
        Ok(())
    }

    async fn wait_ready(
        &mut self,
        i: usize,
        deadline: tokio::time::Instant,
    ) -> std::io::Result<()> {
        loop {
            let p = &mut self.procs[i];
            if let Some(c) = p.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                return Err(other(format!(
                    "{}-{} exited ({status}) before it was ready; its log:\n{}",
                    p.role.command(),
                    p.index,
                    tail(&p.log, 30)
                )));
            }
            if let Ok(r) = crate::http::request(p.http, "GET", "/readyz", None, None).await
                && r.status == 200
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(other(format!(
                    "{}-{} not ready in time; its log:\n{}",
                    p.role.command(),
                    p.index,
                    tail(&p.log, 30)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn find(&self, role: Role, index: usize) -> usize {
        self.procs
            .iter()
            .position(|p| p.role == role && p.index == index)
            .unwrap_or_else(|| panic!("no {}-{index} in this cluster", role.command()))
    }

    /// Leaves the folder (configs, logs) behind when the cluster is dropped.
    pub fn keep_folder(&mut self) {
        self.keep = true;
    }

    /// The process `role`-`index`.
    pub fn proc(&self, role: Role, index: usize) -> &Proc {
        &self.procs[self.find(role, index)]
    }

    /// Every process.
    pub fn procs(&self) -> &[Proc] {
        &self.procs
    }

    /// The MQTT address of front `index`.
    pub fn front(&self, index: usize) -> SocketAddr {
        self.proc(Role::Front, index)
            .mqtt
            .unwrap_or_else(|| panic!("front-{index} has no MQTT address"))
    }

    /// The HTTP address of API replica `index`.
    pub fn api(&self, index: usize) -> SocketAddr {
        self.proc(Role::Api, index).http
    }

    /// `kill -9` (SIGKILL) of `role`-`index`, waited for.
    pub async fn kill(&mut self, role: Role, index: usize) -> std::io::Result<()> {
        let i = self.find(role, index);
        if let Some(mut c) = self.procs[i].child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    /// SIGTERM to `role`-`index`, and its exit status once it has drained (at most
    /// `within`).
    pub async fn terminate(
        &mut self,
        role: Role,
        index: usize,
        within: Duration,
    ) -> std::io::Result<std::process::ExitStatus> {
        let i = self.find(role, index);
        let Some(mut c) = self.procs[i].child.take() else {
            return Err(other("not running"));
        };
        let pid = c.id().ok_or_else(|| other("no pid"))?;
        let st = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !st.success() {
            return Err(other("kill -TERM failed"));
        }
        match tokio::time::timeout(within, c.wait()).await {
            Ok(r) => r,
            Err(_) => {
                c.kill().await?;
                Err(other(format!("did not exit within {within:?} of SIGTERM")))
            }
        }
    }

    /// Starts `role`-`index` again (same config, ports and log) and waits until it is
    /// ready (at most 60 s).
    pub async fn restart(&mut self, role: Role, index: usize) -> std::io::Result<()> {
        let i = self.find(role, index);
        if self.procs[i].child.is_some() {
            return Err(other("still running"));
        }
        self.spawn(i)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        self.wait_ready(i, deadline).await
    }

    /// Waits until every running process answers `/readyz` with `status` (at most
    /// `within`): how long that took, or each process still answering otherwise with its
    /// status and body.
    pub async fn wait_readiness(&self, status: u16, within: Duration) -> Result<Duration, String> {
        let t = tokio::time::Instant::now();
        loop {
            let mut off = Vec::new();
            for p in self.procs.iter().filter(|p| p.child.is_some()) {
                match crate::http::request(p.http, "GET", "/readyz", None, None).await {
                    Ok(r) if r.status == status => {}
                    Ok(r) => off.push(format!(
                        "{}-{}: {} {}",
                        p.role.command(),
                        p.index,
                        r.status,
                        r.body.replace('\n', "; ")
                    )),
                    Err(e) => off.push(format!("{}-{}: {e}", p.role.command(), p.index)),
                }
            }
            if off.is_empty() {
                return Ok(t.elapsed());
            }
            if t.elapsed() > within {
                return Err(off.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The `/metrics` text of `role`-`index`.
    pub async fn metrics(&self, role: Role, index: usize) -> std::io::Result<String> {
        let p = self.proc(role, index);
        let r = crate::http::request(p.http, "GET", "/metrics", None, None).await?;
        Ok(r.body)
    }

    /// The last `n` lines of every process's log, for a failure message.
    pub fn logs(&self, n: usize) -> String {
        let mut out = String::new();
        for p in &self.procs {
            out.push_str(&format!(
                "--- {}-{} ---\n{}\n",
                p.role.command(),
                p.index,
                tail(&p.log, n)
            ));
        }
        out
    }
}

impl Drop for Cluster {
    /// Kills every process; removes the folder unless the test is failing (its logs are
    /// what to read then).
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(c) = p.child.as_mut() {
                let _ = c.start_kill();
            }
        }
        if !self.keep && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
