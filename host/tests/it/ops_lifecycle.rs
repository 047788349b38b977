//! Lifecycle flags of the real `agentserver run` binary against the in-process mock
//! (issue 21): `--exit-if-unused` exits 0 after the drain when no task came, and
//! `--log-format json` writes one JSON object a line on stderr, with no token in it, even at
//! TRACE for every crate.

use crate::support_run;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentserver_mock::{MockConfig, MockServer};
use support_run::{expect_exit, pid_cleared, registered_sandbox, session_file};

const FAKE_CLAUDE: &str = "#!/bin/sh\nread init; read user\n";

/// Every string under a key ending in `token` in a JSON document.
fn collect_tokens(value: &serde_json::Value, into: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match v.as_str() {
                    Some(s) if key.ends_with("token") && !s.is_empty() => into.push(s.to_owned()),
                    _ => collect_tokens(v, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_tokens(v, into)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_if_unused_exits_zero_and_json_logs_hold_no_token() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("state");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let claude = dir.path().join("claude");
    std::fs::write(&claude, FAKE_CLAUDE).unwrap();
    std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();

    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args([
            "--log-format",
            "json",
            "run",
            "--backend",
            "claudecode",
            "--skip-open-browser",
            "--poll-interval",
            "0.2",
            // 3 seconds.
            "--exit-if-unused",
            "0.05",
        ])
        .arg("--server")
        .arg(server.url())
        .arg("--claude-bin")
        .arg(&claude)
        .current_dir(&work)
        .env("AGENTSERVER_HOME", &home)
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();

    let sandbox = registered_sandbox(&mock).await;
    let status = expect_exit(&mut child, Duration::from_secs(40), "with --exit-if-unused").await;
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "exited before the idle time: {:?}",
        started.elapsed()
    );
    assert!(pid_cleared(&session_file(&home, &sandbox.id)));
    // It served: it polled before giving up.
    assert!(
        !mock.requests_to("GET", "/api/agent/tasks/poll").is_empty(),
        "no poll"
    );

    let log = std::fs::read_to_string(&stderr_path).unwrap();
    let mut lines = 0;
    for line in log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value.is_object(), "{line}");
        assert!(
            value["level"].is_string() && value["timestamp"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines > 10, "only {lines} log lines:\n{log}");
    assert!(log.contains("--exit-if-unused"), "{log}");
    assert!(log.contains("Tunnel connected."), "{log}");

    // Every token that crossed the wire.
    let mut tokens: Vec<String> = mock.access_tokens().into_iter().map(|(t, _)| t).collect();
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join(".credentials.json")).unwrap()).unwrap();
    collect_tokens(&creds, &mut tokens);
    for sb in mock.sandboxes() {
        tokens.push(sb.tunnel_token);
        tokens.push(sb.proxy_token);
    }
    tokens.sort();
    tokens.dedup();
    assert!(tokens.len() >= 3, "{}", tokens.len());
    // At TRACE the WebSocket handshake request (the tunnel URL with its token) is logged.
    assert!(log.contains("/api/tunnel/"), "no tunnel URL traced");
    for token in &tokens {
        assert!(!log.contains(token.as_str()), "a token is in the JSON log");
    }
}
