//! The real `agentserver run` binary at `RUST_LOG=trace` (every crate, every target: tungstenite,
//! hyper, reqwest, h2, rustls…), through the device login, registration, the tunnel and one task
//! with its bridge session: no token that crossed the wire appears anywhere in its stderr.

use crate::support::run as support_run;

use std::process::Stdio;
use std::time::Duration;

use agentserver_mock::{MockConfig, MockServer};
use support_run::{
    RunDirs, collect_tokens, expect_exit, registered_sandbox, sigterm, wait_agent_info,
};

const FAKE_CLAUDE: &str = r#"#!/bin/sh
read init; read user
echo '{"type":"system","subtype":"init","session_id":"s1","uuid":"u-1"}'
echo '{"type":"result","subtype":"success","is_error":false,"result":"all done","num_turns":1,"uuid":"u-2"}'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_at_trace_logs_no_token() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let run = RunDirs::new(FAKE_CLAUDE);
    let (dir, home) = (run.dir.path(), run.home.clone());
    // TRACE output is large: to a file, so a full pipe can never stall the host.
    let stderr_path = dir.join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();

    let mut child = run
        .run_command(&server.url(), &[], &[])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();

    let sandbox = registered_sandbox(&mock).await;
    wait_agent_info(&mock, &sandbox.id).await;
    let task_id = mock.create_task(&sandbox.id, "do the thing");
    let record = mock
        .wait_task_final(&task_id, Duration::from_secs(30))
        .await
        .expect("the task got no final status");
    assert_eq!(record.status, "completed");
    sigterm(child.id());
    let status = expect_exit(&mut child, Duration::from_secs(20), "after SIGTERM").await;
    assert!(status.success(), "exit {status:?}");

    // Every secret that crossed the wire.
    let mut secrets: Vec<String> = mock.access_tokens().into_iter().map(|(t, _)| t).collect();
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join(".credentials.json")).unwrap()).unwrap();
    collect_tokens(&creds, &mut secrets);
    for sb in mock.sandboxes() {
        secrets.push(sb.tunnel_token);
        secrets.push(sb.proxy_token);
    }
    let jwts = mock.bridge_worker_jwts();
    assert!(!jwts.is_empty(), "the task had no bridge session");
    secrets.extend(jwts);
    let device_codes: Vec<String> = mock
        .requests_to("POST", "/api/oauth2/token")
        .iter()
        .flat_map(|req| req.form())
        .filter(|(k, _)| k == "device_code")
        .map(|(_, code)| code)
        .collect();
    assert!(!device_codes.is_empty(), "no device-code poll recorded");
    secrets.extend(device_codes);
    secrets.sort();
    secrets.dedup();
    // Access + refresh (one pair: no refresh happened), tunnel + proxy, a worker JWT, the
    // device code.
    assert!(secrets.len() >= 5, "tokens collected: {}", secrets.len());
    assert!(secrets.iter().all(|s| s.len() >= 16), "{}", secrets.len());

    let text = std::fs::read_to_string(&stderr_path).unwrap();
    // The capture covers the whole run at TRACE, the dependencies' records included: the
    // WebSocket handshake request tungstenite dumps, hyper's connection traces.
    assert!(text.contains("TRACE"), "no TRACE lines captured");
    assert!(text.contains("Request: "), "no tungstenite handshake trace");
    assert!(text.contains("/api/tunnel/"), "no tunnel URL traced");
    assert!(text.contains("hyper"), "no hyper trace");
    assert!(text.contains(&sandbox.id));
    assert!(text.contains(&task_id));
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a token appears in the logs:\n{}",
            text.lines()
                .filter(|l| l.contains(secret.as_str()))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        text.contains("token=***"),
        "the tunnel token was scrubbed, not absent"
    );
}
