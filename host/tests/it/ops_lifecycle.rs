//! Lifecycle flags of the real `agentserver run` binary against the in-process mock
//! (issue 21): `--exit-if-unused` exits 0 after the drain when no task came, and
//! `--log-format json` writes one JSON object a line on stderr, with no token in it, even at
//! TRACE for every crate.

use crate::support::run as support_run;

use std::process::Stdio;
use std::time::{Duration, Instant};

use agentserver_mock::{MockConfig, MockServer};
use support_run::{
    RunDirs, collect_tokens, expect_exit, pid_cleared, registered_sandbox, session_file,
};

const FAKE_CLAUDE: &str = "#!/bin/sh\nread init; read user\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_if_unused_exits_zero_and_json_logs_hold_no_token() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let run = RunDirs::new(FAKE_CLAUDE);
    let (dir, home) = (run.dir.path(), run.home.clone());
    let stderr_path = dir.join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();

    let started = Instant::now();
    // `--exit-if-unused 0.05`: 3 seconds.
    let mut child = run
        .run_command(
            &server.url(),
            &["--log-format", "json"],
            &["--exit-if-unused", "0.05"],
        )
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
