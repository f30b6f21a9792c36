//! The real `fluxgate standalone` process, driven only through its public interfaces.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fluxgate_testkit::http::call;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `fluxgate standalone`.
pub struct Standalone {
    pub child: Child,
    pub dir: PathBuf,
    pub mqtt: SocketAddr,
    pub api: SocketAddr,
    pub token: String,
    /// Everything it printed up to "ready".
    pub banner: String,
}

/// A fresh data directory.
pub fn data_dir() -> PathBuf {
    let d = std::env::temp_dir().join(fluxgate_testkit::unique_name("fluxgate-e2e"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn addr_after(banner: &str, label: &str, scheme: &str) -> SocketAddr {
    let line = banner
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in:\n{banner}"));
    let rest = &line[line.find(scheme).unwrap() + scheme.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

impl Standalone {
    /// Starts the binary on free ports with `dir` as its data directory and waits for
    /// "ready" (at most 60 s).
    pub async fn start(dir: &Path, extra: &[&str]) -> Standalone {
        Self::start_with(dir, extra, &[]).await
    }

    /// [`Standalone::start`] with extra environment variables.
    pub async fn start_with(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Standalone {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fluxgate"))
            .arg("standalone")
            .args(extra)
            .env("FLUXGATE_DATA_DIR", dir)
            .env("FLUXGATE_FRONT__TCP_ADDR", "127.0.0.1:0")
            .env("FLUXGATE_API__HTTP_ADDR", "127.0.0.1:0")
            .env(
                "RUST_LOG",
                std::env::var("E2E_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = String::new();
        let read = async {
            while let Some(l) = lines.next_line().await.unwrap() {
                banner.push_str(&l);
                banner.push('\n');
                if l == "ready" {
                    return;
                }
            }
            panic!("fluxgate exited before it was ready:\n{banner}");
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("fluxgate ready within 60 s");
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // Shown on the first start; afterwards the banner says which file keeps it.
        let token = match banner
            .lines()
            .find_map(|l| l.trim().strip_prefix("bootstrap admin token: "))
        {
            Some(t) => t.to_owned(),
            None => {
                let file = banner
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("bootstrap admin token file: "))
                    .unwrap_or_else(|| panic!("no bootstrap token in the banner:\n{banner}"));
                std::fs::read_to_string(file).unwrap().trim().to_owned()
            }
        };
        Standalone {
            mqtt: addr_after(&banner, "mqtt:", "tcp://"),
            api: addr_after(&banner, "api:", "http://"),
            token,
            child,
            dir: dir.to_owned(),
            banner,
        }
    }

    /// An API call; the body parsed as JSON (or kept as a string).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(self.api, method, path, token, body).await.unwrap()
    }

    /// Like [`Standalone::call`], asserting the status.
    pub async fn ok(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
        want: u16,
    ) -> Value {
        let (s, v) = self.call(method, path, Some(token), body).await;
        assert_eq!(s, want, "{method} {path}: {v}");
        v
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// Stops it with SIGTERM and waits for a clean exit.
    pub async fn terminate(mut self) {
        let pid = self.child.id().unwrap();
        let st = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within 30 s after SIGTERM")
            .unwrap();
        assert!(status.success(), "exit status {status}");
    }
}

/// Creates application `app` with an admin API token, returning the token.
pub async fn application(fg: &Standalone, app: &str) -> String {
    fg.ok(
        "POST",
        "/applications",
        &fg.token,
        Some(json!({"id": app})),
        201,
    )
    .await;
    let t = fg
        .ok(
            "POST",
            &format!("/applications/{app}/tokens"),
            &fg.token,
            Some(json!({"name": "e2e", "scope": "admin"})),
            201,
        )
        .await;
    t["secret"].as_str().unwrap().to_owned()
}

/// Creates an access key for all devices; returns (key, secret).
pub async fn access_key(fg: &Standalone, app: &str, admin: &str) -> (String, String) {
    let k = fg
        .ok(
            "POST",
            &format!("/applications/{app}/keys"),
            admin,
            Some(json!({})),
            201,
        )
        .await;
    (
        k["key"].as_str().unwrap().to_owned(),
        k["secret"].as_str().unwrap().to_owned(),
    )
}
