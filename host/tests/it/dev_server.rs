//! `agentserver dev-server` as a real process: it prints its URL, serves the protocol, and
//! stops cleanly on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const PREFIX: &str = "agentserver dev-server listening on ";

#[tokio::test]
async fn dev_server_prints_url_and_serves() {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args([
            "dev-server",
            "--listen",
            "127.0.0.1:0",
            "--approve-after",
            "2",
        ])
        .env("AGENTSERVER_HOME", home.path())
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn agentserver");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("dev-server printed nothing")
        .unwrap()
        .expect("stdout closed");
    let url = first.strip_prefix(PREFIX).expect(&first).to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with('/'),
        "{url}"
    );
    assert!(!url.ends_with(":0"));

    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let auth: serde_json::Value = c
        .post(format!("{url}/api/oauth2/device/auth"))
        .form(&[
            ("client_id", "agentserver-agent-cli"),
            ("scope", "openid profile agent:register"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        auth["verification_uri"],
        format!("{url}/oauth2/device/verify").as_str()
    );
    assert_eq!(auth["interval"], 1);
    // --approve-after 2: the first poll is pending.
    let poll = c
        .post(format!("{url}/api/oauth2/token"))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", "agentserver-agent-cli"),
            ("device_code", auth["device_code"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 400);
    let body: serde_json::Value = poll.json().await.unwrap();
    assert_eq!(body["error"], "authorization_pending");

    let sandboxes: serde_json::Value = c
        .get(format!("{url}/_mock/sandboxes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sandboxes, serde_json::json!([]));

    // SIGTERM stops it cleanly.
    let pid = child.id().expect("pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("dev-server did not stop")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn dev_server_rejects_a_bad_outcome() {
    let out = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args([
            "dev-server",
            "--listen",
            "127.0.0.1:0",
            "--device-outcome",
            "maybe",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("maybe"));
}
