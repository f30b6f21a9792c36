//! The README walkthrough, run as written (bash, curl, jq, mosquitto_pub/mosquitto_sub)
//! against a real `fluxgate standalone`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Standalone, data_dir};

/// The shell lines between `<!-- walkthrough -->` and `<!-- /walkthrough -->`.
fn walkthrough() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme
        .find("<!-- walkthrough -->")
        .expect("walkthrough marker");
    let end = readme
        .find("<!-- /walkthrough -->")
        .expect("walkthrough end marker");
    readme[start..end]
        .lines()
        .filter(|l| !l.starts_with("<!--") && !l.starts_with("```"))
        .map(str::to_owned)
        .collect()
}

fn tools_present() -> bool {
    let missing: Vec<&str> = ["bash", "curl", "jq", "mosquitto_pub", "mosquitto_sub"]
        .into_iter()
        .filter(|t| {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("the README walkthrough needs {missing:?}; CI must install them (.ci/run)");
    }
    eprintln!(
        "readme walkthrough: skipped, missing {missing:?} (scripts/prereqs.sh installs them)"
    );
    false
}

#[tokio::test]
async fn the_readme_walkthrough_works_as_written() {
    if !tools_present() {
        return;
    }
    let lines = walkthrough();
    assert!(
        lines[0].starts_with("export FG="),
        "the walkthrough starts with its exports: {lines:?}"
    );
    let fg = Standalone::start(&data_dir(), &[]).await;
    let mut script = format!(
        "set -euo pipefail\nexport FG=http://{} MQTT_HOST=127.0.0.1 MQTT_PORT={} TOKEN={}\n",
        fg.api,
        fg.mqtt.port(),
        fg.token
    );
    for l in &lines[1..] {
        script.push_str(l);
        script.push('\n');
    }
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("bash")
            .args(["-c", &script])
            .output(),
    )
    .await
    .expect("the walkthrough finishes within 60 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "walkthrough failed\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(r#""key":"temperature""#) && stdout.contains(r#""value":21.5"#),
        "the state read back: {stdout}"
    );
    assert!(
        stdout.contains(r#"losant/thermo-1/command {"name":"setpoint","payload":{"value":22}"#),
        "the device got the command: {stdout}"
    );
    fg.terminate().await;
}
