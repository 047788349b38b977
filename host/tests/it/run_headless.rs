//! Headless credentials (issue 21, point 5) through the real `agentserver run` binary and the
//! mock server, with stdin closed (no terminal): a pre-provisioned refresh token in
//! `AGENTSERVER_REFRESH_TOKEN`, a read-only mounted credentials file laid out as Kubernetes
//! mounts a Secret (`AGENTSERVER_CREDENTIALS_FILE`), and neither (fails fast, saying what to
//! provision). No device login happens in any of them.

use crate::support::run as support_run;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentserver_mock::{MockConfig, MockServer, MockState};
use support_run::{expect_exit, registered_sandbox, sigterm, wait_agent_info};

const FAKE_CLAUDE: &str = r#"#!/bin/sh
read init; read user
echo '{"type":"system","subtype":"init","session_id":"s1","uuid":"u-1"}'
echo '{"type":"result","subtype":"success","is_error":false,"result":"all done","num_turns":1,"uuid":"u-2"}'
"#;

const SCOPES: &[&str] = &["openid", "profile", "agent:register"];

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    home: PathBuf,
    work: PathBuf,
    claude: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let home = root.join("state");
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let claude = root.join("claude");
    std::fs::write(&claude, FAKE_CLAUDE).unwrap();
    std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
    Env {
        _dir: dir,
        root,
        home,
        work,
        claude,
    }
}

/// `agentserver run` with stdin closed, the given variables, stderr to `log`.
fn start(env: &Env, server: &str, vars: &[(&str, &str)], log: &Path, extra: &[&str]) -> Child {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args(["run", "--backend", "claudecode", "--poll-interval", "0.2"])
        .args(extra)
        .arg("--server")
        .arg(server)
        .arg("--claude-bin")
        .arg(&env.claude)
        .current_dir(&env.work)
        .env("AGENTSERVER_HOME", &env.home)
        .env("HOME", &env.root)
        .env_remove("AGENTSERVER_LOGIN_WITHOUT_TTY")
        .env_remove("AGENTSERVER_CREDENTIALS_FILE")
        .env_remove("AGENTSERVER_REFRESH_TOKEN")
        .env_remove("AGENTSERVER_SERVER")
        .envs(vars.iter().copied())
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Runs one task on the registered sandbox and stops the host with SIGTERM.
async fn serve_one_task(mock: &MockState, child: &mut Child, sandbox_id: &str) {
    wait_agent_info(mock, sandbox_id).await;
    let task_id = mock.create_task(sandbox_id, "do the thing");
    let record = mock
        .wait_task_final(&task_id, Duration::from_secs(30))
        .await
        .expect("the task got no final status");
    assert_eq!(record.status, "completed");
    sigterm(child.id());
    let status = expect_exit(child, Duration::from_secs(20), "after SIGTERM").await;
    assert!(status.success(), "exit {status:?}");
}

/// The refresh tokens the host sent to the token endpoint, in order.
fn refreshes(mock: &MockState) -> Vec<String> {
    mock.requests_to("POST", "/api/oauth2/token")
        .iter()
        .filter(|r| {
            r.form()
                .iter()
                .any(|(k, v)| k == "grant_type" && v == "refresh_token")
        })
        .flat_map(|r| r.form())
        .filter(|(k, _)| k == "refresh_token")
        .map(|(_, v)| v)
        .collect()
}

fn no_device_login(mock: &MockState) {
    assert!(
        mock.requests_to("POST", "/api/oauth2/device/auth")
            .is_empty(),
        "a device login was started"
    );
}

/// No secret in `log`; the log is a real TRACE capture.
fn assert_no_secret(log: &Path, secrets: &[String]) {
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("TRACE"), "no TRACE lines captured");
    assert!(
        text.contains("access token refreshed"),
        "the refresh is not in the capture"
    );
    for secret in secrets {
        assert!(secret.len() >= 16);
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
}

fn all_secrets(mock: &MockState, home: &Path) -> Vec<String> {
    let mut secrets: Vec<String> = mock.access_tokens().into_iter().map(|(t, _)| t).collect();
    secrets.extend(refreshes(mock));
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join(".credentials.json")).unwrap()).unwrap();
    for key in ["accessToken", "refreshToken"] {
        secrets.push(creds[key].as_str().unwrap().to_owned());
    }
    for sb in mock.sandboxes() {
        secrets.push(sb.tunnel_token);
        secrets.push(sb.proxy_token);
    }
    secrets.sort();
    secrets.dedup();
    secrets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_refresh_token_registers_and_runs_without_a_login() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let ws = mock.default_workspace_id();
    let (_access, provisioned) = mock.issue_token_pair(Some(&ws), SCOPES, "owner");
    let env = env();
    let log = env.root.join("stderr.log");
    let vars = [("AGENTSERVER_REFRESH_TOKEN", provisioned.as_str())];

    let mut child = start(
        &env,
        &server.url(),
        &vars,
        &log,
        &["--continue-or-register"],
    );
    let sandbox = registered_sandbox(&mock).await;
    serve_one_task(&mock, &mut child, &sandbox.id).await;
    no_device_login(&mock);
    assert_eq!(
        refreshes(&mock),
        vec![provisioned.clone()],
        "exchanged once"
    );
    assert!(
        !mock.refresh_token_valid(&provisioned),
        "the mock rotated the provisioned token"
    );
    // The rotated token is kept in the writable state directory.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.home.join(".credentials.json")).unwrap())
            .unwrap();
    let rotated = saved["refreshToken"].as_str().unwrap().to_owned();
    assert_ne!(rotated, provisioned);
    assert!(mock.refresh_token_valid(&rotated));

    // A restart with the same (now spent) variable continues the sandbox: no OAuth at all.
    let mut child = start(
        &env,
        &server.url(),
        &vars,
        &log,
        &["--continue-or-register"],
    );
    serve_one_task(&mock, &mut child, &sandbox.id).await;
    assert_eq!(mock.sandboxes().len(), 1, "the same sandbox was continued");

    // A new registration with an expired access token refreshes with the rotated token, not
    // the spent one from the variable.
    mock.expire_access_tokens();
    let mut child = start(&env, &server.url(), &vars, &log, &[]);
    let second = mock
        .wait_until(Duration::from_secs(20), |s| s.sandboxes().len() == 2)
        .await;
    assert!(second, "no second registration");
    let newest = mock.sandboxes().pop().unwrap();
    serve_one_task(&mock, &mut child, &newest.id).await;
    assert_eq!(refreshes(&mock), [provisioned.clone(), rotated]);
    no_device_login(&mock);

    let mut secrets = all_secrets(&mock, &env.home);
    secrets.push(provisioned);
    assert_no_secret(&log, &secrets);
}

/// A credentials file mounted the way Kubernetes mounts a Secret: `dir/key` → `..data/key`,
/// `..data` → a timestamped folder; everything read-only.
fn mount_secret(root: &Path, key: &str, contents: &str) -> PathBuf {
    let dir = root.join("secret");
    let stamp = dir.join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir_all(&stamp).unwrap();
    std::fs::write(stamp.join(key), contents).unwrap();
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.000000001", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).unwrap();
    std::fs::set_permissions(stamp.join(key), std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(&stamp, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    dir.join(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mounted_credentials_file_works() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let ws = mock.default_workspace_id();
    let (access, refresh) = mock.issue_token_pair(Some(&ws), SCOPES, "owner");
    let env = env();
    // Expired access token: the first start must refresh, and keep the rotated token somewhere
    // writable.
    let contents = serde_json::to_string_pretty(&serde_json::json!({
        "serverUrl": server.url(),
        "accessToken": access,
        "refreshToken": refresh,
        "expiresAt": "2026-01-01T00:00:00.000000000+00:00",
        "scopes": SCOPES,
    }))
    .unwrap();
    let mounted = mount_secret(&env.root, "agentserver-0.json", &contents);
    let log = env.root.join("stderr.log");
    let vars = [("AGENTSERVER_CREDENTIALS_FILE", mounted.to_str().unwrap())];

    let mut child = start(&env, &server.url(), &vars, &log, &[]);
    let sandbox = registered_sandbox(&mock).await;
    serve_one_task(&mock, &mut child, &sandbox.id).await;
    no_device_login(&mock);
    assert_eq!(refreshes(&mock), vec![refresh.clone()]);
    assert_eq!(
        std::fs::read_to_string(&mounted).unwrap(),
        contents,
        "the mounted file is never written"
    );
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.home.join(".credentials.json")).unwrap())
            .unwrap();
    let rotated = saved["refreshToken"].as_str().unwrap().to_owned();
    assert_ne!(rotated, refresh);
    assert!(env.home.join(".credentials.json.seed").is_file());

    // Next start, new sandbox, expired tokens: the rotated token from the state directory is
    // used (the mounted one is spent).
    mock.expire_access_tokens();
    let mut child = start(&env, &server.url(), &vars, &log, &[]);
    let second = mock
        .wait_until(Duration::from_secs(20), |s| s.sandboxes().len() == 2)
        .await;
    assert!(second, "no second registration");
    let newest = mock.sandboxes().pop().unwrap();
    serve_one_task(&mock, &mut child, &newest.id).await;
    assert_eq!(refreshes(&mock), [refresh.clone(), rotated]);
    no_device_login(&mock);

    let mut secrets = all_secrets(&mock, &env.home);
    secrets.push(access);
    secrets.push(refresh);
    assert_no_secret(&log, &secrets);
    unmount_secret(&mounted);
}

/// Gives the mounted folders their write bit back, so the temporary directory can go.
fn unmount_secret(mounted: &Path) {
    let dir = mounted.parent().unwrap();
    for d in [dir.to_owned(), dir.join("..2026_01_01_00_00_00.000000001")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_and_no_terminal_fails_fast_saying_what_to_provision() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let env = env();
    let log = env.root.join("stderr.log");
    let started = Instant::now();
    let mut child = start(&env, &server.url(), &[], &log, &[]);
    let status = expect_exit(&mut child, Duration::from_secs(15), "without credentials").await;
    assert!(!status.success(), "exit {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    for needle in [
        "no terminal for a device login",
        "AGENTSERVER_CREDENTIALS_FILE",
        "AGENTSERVER_REFRESH_TOKEN",
        "agentserver login --server",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
    no_device_login(&mock);
    assert!(mock.sandboxes().is_empty());

    // A spent provisioned token says so, still without waiting.
    let ws = mock.default_workspace_id();
    let (_a, spent) = mock.issue_token_pair(Some(&ws), SCOPES, "owner");
    mock.revoke_refresh_token(&spent);
    let log2 = env.root.join("stderr2.log");
    let mut child = start(
        &env,
        &server.url(),
        &[("AGENTSERVER_REFRESH_TOKEN", spent.as_str())],
        &log2,
        &[],
    );
    let status = expect_exit(&mut child, Duration::from_secs(15), "with a spent token").await;
    assert!(!status.success());
    let text = std::fs::read_to_string(&log2).unwrap();
    assert!(
        text.contains("provisioned by AGENTSERVER_REFRESH_TOKEN are spent or refused"),
        "{text}"
    );
    assert!(!text.contains(&spent), "the token is in the logs");
    no_device_login(&mock);

    // A named file that is not there says to mount it.
    let log3 = env.root.join("stderr3.log");
    let mut child = start(
        &env,
        &server.url(),
        &[(
            "AGENTSERVER_CREDENTIALS_FILE",
            "/nonexistent/agentserver-0.json",
        )],
        &log3,
        &[],
    );
    let status = expect_exit(&mut child, Duration::from_secs(15), "with a missing file").await;
    assert!(!status.success());
    let text = std::fs::read_to_string(&log3).unwrap();
    assert!(text.contains("mount the credentials file there"), "{text}");
}
