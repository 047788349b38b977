//! Operations surface of the real `agentserver run` binary against the in-process mock
//! (issue 21): `/metrics` parsed by the Prometheus project's own Python parser
//! (`prometheus_client.parser`), `/healthz` turning 503 when the tunnel is refused, and
//! `agentserver status` (table and `--json`) from another process, before and after the host.

use crate::support::run as support_run;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use agentserver_mock::{MockConfig, MockServer};
use support_run::{RunDirs, expect_exit, registered_sandbox, sigterm, wait_agent_info};

const FAKE_CLAUDE: &str = r#"#!/bin/sh
read init; read user
echo '{"type":"system","subtype":"init","session_id":"s1","uuid":"u-1"}'
echo '{"type":"result","subtype":"success","is_error":false,"result":"all done","num_turns":1,"uuid":"u-2"}'
"#;

/// Parses Prometheus text with `prometheus_client.parser.text_string_to_metric_families` and
/// returns every sample as `{"name", "labels", "value"}`.
const PARSE_PY: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

fn parse_metrics(text: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args(["-c", PARSE_PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (install the test deps: scripts/install-test-deps.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the metrics:\n{}\n---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the one sample named `name` whose labels include `labels`.
fn sample(samples: &[serde_json::Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&serde_json::Value> = samples
        .iter()
        .filter(|s| s["name"] == name)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?} in {samples:#?}");
    found[0]["value"].as_f64().unwrap()
}

/// `agentserver status [--json]` for the state directory `home`: (exit code, stdout, stderr).
fn status_command(home: &Path, json: bool) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentserver"));
    cmd.arg("status");
    if json {
        cmd.arg("--json");
    }
    let out = cmd
        .env("AGENTSERVER_HOME", home)
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status_json(home: &Path) -> serde_json::Value {
    let (code, stdout, stderr) = status_command(home, true);
    assert_eq!(code, 0, "status --json failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap())
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_status_follow_a_running_host() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let run = RunDirs::new(FAKE_CLAUDE);
    let (dir, home) = (run.dir.path(), run.home.clone());
    let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();

    // Without a host, `status` says so and fails.
    let (code, _, text) = status_command(&home, false);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("No agentserver host is running"), "{text}");

    let mut child = run
        .run_command(&server.url(), &[], &["--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();

    let sandbox = registered_sandbox(&mock).await;
    wait_agent_info(&mock, &sandbox.id).await;

    // The status socket: owner only, in an owner-only directory.
    let socket = home.join("status").join(format!("{}.sock", child.id()));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(&home.join("status")), 0o700);

    let doc = status_json(&home);
    let host = &doc["hosts"][0];
    assert_eq!(host["pid"], child.id());
    let listen = host["metrics_listen"]
        .as_str()
        .expect("metrics address")
        .to_owned();
    let sb = &host["sandboxes"][0];
    assert_eq!(sb["sandbox_id"], sandbox.id);
    assert_eq!(sb["backend"], "claudecode");
    assert_eq!(sb["intake"], "running");
    let base = format!("http://{listen}");

    eventually("the tunnel is connected in status", || {
        let home = home.clone();
        async move { status_json(&home)["hosts"][0]["sandboxes"][0]["tunnel"] == "connected" }
    })
    .await;
    assert_eq!(get(&format!("{base}/healthz")).await, (200, "ok\n".into()));

    let task_id = mock.create_task(&sandbox.id, "do the thing");
    let record = mock
        .wait_task_final(&task_id, Duration::from_secs(20))
        .await
        .expect("the task got no final status");
    assert_eq!(record.status, "completed");

    // Once the status is accepted the outbox is empty; the metrics say so after the task.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let samples = loop {
        let (code, text) = get(&format!("{base}/metrics")).await;
        assert_eq!(code, 200);
        let samples = parse_metrics(&text);
        let accepted = samples.iter().any(|s| {
            s["name"] == "agentserver_status_reports_total"
                && s["labels"]["result"] == "accepted"
                && s["value"].as_f64() == Some(1.0)
        });
        if accepted
            && sample(
                &samples,
                "agentserver_outbox_pending",
                &[("sandbox", &sandbox.id)],
            ) == 0.0
        {
            break samples;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the status was never accepted and counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sid: &str = &sandbox.id;
    let s = |name: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("sandbox", sid)];
        all.extend_from_slice(labels);
        sample(&samples, name, &all)
    };
    assert_eq!(s("agentserver_tasks_received_total", &[]), 1.0);
    assert_eq!(
        s(
            "agentserver_tasks_finished_total",
            &[("outcome", "completed")]
        ),
        1.0
    );
    assert_eq!(s("agentserver_tasks_running", &[]), 0.0);
    assert_eq!(s("agentserver_tunnel_connected", &[]), 1.0);
    assert_eq!(s("agentserver_tunnel_connects_total", &[]), 1.0);
    assert_eq!(s("agentserver_tunnel_reconnects_total", &[]), 0.0);
    assert!(s("agentserver_agent_info_sends_total", &[("result", "ok")]) >= 1.0);
    assert!(s("agentserver_polls_total", &[]) >= 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last_poll = s("agentserver_last_poll_success_timestamp_seconds", &[]);
    assert!(
        last_poll > now - 60.0 && last_poll <= now + 1.0,
        "{last_poll}"
    );
    assert_eq!(
        s("agentserver_backend_paused_until_timestamp_seconds", &[]),
        0.0
    );
    assert_eq!(s("agentserver_intake_running", &[]), 1.0);
    // No per-task label anywhere.
    assert!(
        samples
            .iter()
            .all(|x| !x["labels"].to_string().contains(&task_id)),
        "{samples:#?}"
    );
    let types: std::collections::HashMap<&str, &str> = samples
        .iter()
        .map(|x| (x["family"].as_str().unwrap(), x["type"].as_str().unwrap()))
        .collect();
    assert_eq!(types["agentserver_tasks_received"], "counter");
    assert_eq!(types["agentserver_tasks_running"], "gauge");

    // The table names the sandbox, its tunnel and the finished task.
    let (code, table, _) = status_command(&home, false);
    assert_eq!(code, 0);
    assert!(table.contains(&sandbox.id), "{table}");
    assert!(table.contains("tunnel: connected"), "{table}");
    assert!(table.contains("1 completed"), "{table}");

    // The server now refuses the tunnel token: healthz turns 503 with one line saying why.
    mock.fail_next("GET", &format!("/api/tunnel/{}", sandbox.id), 401, 10_000);
    assert!(mock.tunnel.drop_connection(&sandbox.id));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let last = loop {
        let last = get(&format!("{base}/healthz")).await;
        if last.0 == 503 {
            break last;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "healthz stays {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(last.1.contains("tunnel token"), "{last:?}");
    assert_eq!(last.1.trim_end().lines().count(), 1, "{last:?}");
    let doc = status_json(&home);
    let sb = &doc["hosts"][0]["sandboxes"][0];
    assert_eq!(sb["tunnel"], "reconnecting");
    assert!(
        sb["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("tunnel")),
        "{sb}"
    );

    sigterm(child.id());
    let status = expect_exit(&mut child, Duration::from_secs(20), "after SIGTERM").await;
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the status socket is removed at exit");
    let (code, _, text) = status_command(&home, true);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("No agentserver host is running"), "{text}");
}
