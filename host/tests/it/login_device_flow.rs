//! Device-flow login against the real mock agentserver over real sockets (spec §2).

use crate::support::auth_state as support_auth_state;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use agentserver::auth::{Credentials, LoginError, QuietLoginUi};
use agentserver_mock::{DeviceOutcome, MockConfig, MockServer, RecordedRequest};
use support_auth_state::{TIMEOUT, auth_in, describe, run_bin};
use tokio_util::sync::CancellationToken;

fn token_polls(reqs: &[RecordedRequest]) -> Vec<&RecordedRequest> {
    reqs.iter()
        .filter(|r| r.path == "/api/oauth2/token")
        .collect()
}

fn form_value(r: &RecordedRequest, key: &str) -> Option<String> {
    r.form().into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

#[tokio::test]
async fn login_succeeds_after_pending_polls_with_exact_wire_format() {
    let mock = MockServer::start(MockConfig {
        approve_after_polls: 3,
        device_interval_secs: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let ctx = auth_in(home.path());
    // A trailing slash is normalised away.
    let server = format!("{}/", mock.url());
    let creds = tokio::time::timeout(
        TIMEOUT,
        ctx.login(&server, &QuietLoginUi, &CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();

    let state = mock.state();
    assert!(state.access_token_active(creds.access_token.expose()));
    assert_eq!(creds.server_url, mock.url());
    assert_eq!(creds.scopes, ["openid", "profile", "agent:register"]);

    let reqs = state.requests();
    let auth = reqs
        .iter()
        .find(|r| r.path == "/api/oauth2/device/auth")
        .expect("device auth request");
    assert_eq!(auth.method, "POST");
    assert_eq!(
        auth.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        auth.form(),
        vec![
            ("client_id".to_owned(), "agentserver-agent-cli".to_owned()),
            (
                "scope".to_owned(),
                "openid profile agent:register".to_owned()
            ),
        ]
    );
    let polls = token_polls(&reqs);
    assert_eq!(polls.len(), 3, "two pending answers, then the tokens");
    for p in &polls {
        assert_eq!(
            form_value(p, "grant_type").as_deref(),
            Some("urn:ietf:params:oauth:grant-type:device_code")
        );
        assert_eq!(
            form_value(p, "client_id").as_deref(),
            Some("agentserver-agent-cli")
        );
        assert!(form_value(p, "device_code").is_some_and(|c| !c.is_empty()));
    }
    // Sleep first, then poll: the first poll comes an interval after the device request, and
    // every poll an interval after the previous one.
    let tolerance = Duration::from_millis(50);
    assert!(polls[0].at.duration_since(auth.at) + tolerance >= Duration::from_secs(1));
    for pair in polls.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(gap + tolerance >= Duration::from_secs(1), "gap {gap:?}");
    }

    // The file on disk: 0600 in a 0700 dir (created by us), upstream keys, re-parsable.
    let path = home.path().join(".credentials.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        {
            let mut k = keys.clone();
            k.sort();
            k
        },
        [
            "accessToken",
            "expiresAt",
            "refreshToken",
            "scopes",
            "serverUrl"
        ]
    );
    let reparsed: Credentials = serde_json::from_str(&text).unwrap();
    assert_eq!(reparsed, creds);
    assert!(
        json["expiresAt"].as_str().unwrap().len() >= "2026-01-01T00:00:00Z".len(),
        "RFC 3339"
    );
}

#[tokio::test]
async fn slow_down_widens_the_interval_by_five_seconds() {
    let mock = MockServer::start(MockConfig {
        slow_down_polls: 1,
        approve_after_polls: 2,
        device_interval_secs: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let ctx = auth_in(home.path());
    tokio::time::timeout(
        TIMEOUT,
        ctx.login(&mock.url(), &QuietLoginUi, &CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();
    let reqs = mock.state().requests();
    let polls = token_polls(&reqs);
    assert_eq!(polls.len(), 2);
    let gap = polls[1].at.duration_since(polls[0].at);
    assert!(
        gap >= Duration::from_millis(5950) && gap < Duration::from_secs(9),
        "interval after slow_down should be 1 s + 5 s, was {gap:?}"
    );
}

#[tokio::test]
async fn denied_and_expired_fail_in_process_with_distinct_errors() {
    for (outcome, expect) in [
        (DeviceOutcome::Deny, "authorization denied by user"),
        (
            DeviceOutcome::Expire,
            "authorization expired, please try again",
        ),
    ] {
        let mock = MockServer::start(MockConfig {
            device_outcome: outcome,
            approve_after_polls: 1,
            ..Default::default()
        })
        .await
        .unwrap();
        let home = tempfile::tempdir().unwrap();
        let ctx = auth_in(home.path());
        let err = tokio::time::timeout(
            TIMEOUT,
            ctx.login(&mock.url(), &QuietLoginUi, &CancellationToken::new()),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert_eq!(err.to_string(), expect);
        assert!(!home.path().join(".credentials.json").exists());
    }
}

#[tokio::test]
async fn cancellation_aborts_the_poll_loop() {
    let mock = MockServer::start(MockConfig {
        approve_after_polls: 1000,
        ..Default::default()
    })
    .await
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let ctx = auth_in(home.path());
    let cancel = CancellationToken::new();
    let state = mock.state();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        // Cancel once the first poll has been answered.
        state
            .wait_until(TIMEOUT, |s| {
                s.requests().iter().any(|r| r.path == "/api/oauth2/token")
            })
            .await;
        trigger.cancel();
    });
    let err = tokio::time::timeout(TIMEOUT, ctx.login(&mock.url(), &QuietLoginUi, &cancel))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, LoginError::Cancelled), "{err}");
    assert!(!home.path().join(".credentials.json").exists());
}

#[tokio::test]
async fn login_command_prints_the_prompt_and_saves_credentials() {
    let mock = MockServer::start(MockConfig {
        approve_after_polls: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let state_dir = home.path().join("state");
    let out = run_bin(
        &state_dir,
        &["login", "--server", &mock.url(), "--skip-open-browser"],
    )
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verify = format!("{}/oauth2/device/verify", mock.url());
    assert!(
        stdout.starts_with("\nTo authenticate, visit:\n  "),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("  {verify}?user_code=")),
        "{stdout}"
    );
    assert!(stdout.contains("Or enter code: "), "{stdout}");
    assert!(stdout.contains(&format!(" at {verify}\n")), "{stdout}");
    assert!(
        stdout.contains("Waiting for authentication...\n"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("Authentication successful!\nLogin successful! Credentials saved.\n"),
        "{stdout}"
    );
    // The QR code goes to stderr (block characters), never to stdout.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains('▄'), "no QR code on stderr");
    let path = state_dir.join(".credentials.json");
    let creds: Credentials = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(creds.server_url, mock.url());
    assert!(
        mock.state()
            .access_token_active(creds.access_token.expose())
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&state_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[tokio::test]
async fn login_command_denied_and_expired_exit_non_zero_with_distinct_messages() {
    for (outcome, expect) in [
        (DeviceOutcome::Deny, "authorization denied by user"),
        (
            DeviceOutcome::Expire,
            "authorization expired, please try again",
        ),
    ] {
        let mock = MockServer::start(MockConfig {
            device_outcome: outcome,
            approve_after_polls: 1,
            ..Default::default()
        })
        .await
        .unwrap();
        let home = tempfile::tempdir().unwrap();
        let out = run_bin(
            home.path(),
            &["login", "--server", &mock.url(), "--skip-open-browser"],
        )
        .await;
        assert!(!out.status.success(), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("Error: {expect}")),
            "{}",
            describe(&out)
        );
        assert!(!home.path().join(".credentials.json").exists());
    }
}

#[tokio::test]
async fn login_command_reports_a_server_without_oauth() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    mock.state().set_oauth_configured(false);
    let home = tempfile::tempdir().unwrap();
    let out = run_bin(
        home.path(),
        &["login", "--server", &mock.url(), "--skip-open-browser"],
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("device auth failed (503 Service Unavailable): OAuth not configured"),
        "{}",
        describe(&out)
    );
}

#[tokio::test]
async fn ctrl_c_during_login_exits_130_and_saves_nothing() {
    let mock = MockServer::start(MockConfig {
        approve_after_polls: 1000,
        ..Default::default()
    })
    .await
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args(["login", "--server", &mock.url(), "--skip-open-browser"])
        .env("AGENTSERVER_HOME", home.path())
        .env("HOME", home.path())
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Interrupt once the host is waiting for the user (its first token poll was answered).
    assert!(
        mock.state()
            .wait_until(TIMEOUT, |s| {
                s.requests().iter().any(|r| r.path == "/api/oauth2/token")
            })
            .await
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .expect("login ends after Ctrl-C")
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Login cancelled."),
        "{}",
        describe(&out)
    );
    assert!(!home.path().join(".credentials.json").exists());
}

#[tokio::test]
async fn a_server_outage_while_polling_is_retried_and_login_still_succeeds() {
    let mut mock = MockServer::start(MockConfig {
        approve_after_polls: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let state = mock.state();
    let home = tempfile::tempdir().unwrap();
    let ctx = auth_in(home.path());
    let url = mock.url();
    let login = tokio::spawn(async move {
        ctx.login(&url, &QuietLoginUi, &CancellationToken::new())
            .await
    });
    // After the first pending poll the server restarts (open connections are reset), then
    // its gateway answers 503 twice: all of it is retried.
    assert!(
        state
            .wait_until(TIMEOUT, |s| token_polls(&s.requests()).len() == 1)
            .await
    );
    mock.restart().await.unwrap();
    state.fail_next("POST", "/api/oauth2/token", 503, 2);
    let credentials = tokio::time::timeout(TIMEOUT, login)
        .await
        .expect("login finishes")
        .unwrap()
        .expect("login succeeds after the outage");
    assert_eq!(credentials.server_url.trim_end_matches('/'), mock.url());
    // 1 pending, 2 × 503, then the 3rd poll the mock counts approves.
    assert!(token_polls(&state.requests()).len() >= 4);
    assert!(home.path().join(".credentials.json").exists());
}

#[tokio::test]
async fn endless_answers_are_cut_off_and_never_exhaust_memory() {
    let mock = MockServer::start(MockConfig {
        approve_after_polls: 1,
        device_interval_secs: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let state = mock.state();
    let home = tempfile::tempdir().unwrap();
    let ctx = auth_in(home.path());

    // A device-code answer that never ends: one clear error, read only up to the cap.
    state.answer_endless("POST", "/api/oauth2/device/auth", 1);
    let err = tokio::time::timeout(
        TIMEOUT,
        ctx.login(&mock.url(), &QuietLoginUi, &CancellationToken::new()),
    )
    .await
    .expect("the endless answer was read without a bound")
    .unwrap_err();
    let text = agentserver::http::error_chain(&err);
    assert!(text.contains("larger than"), "{text}");

    // A token poll answered endlessly is dropped like a network error; the next poll logs in.
    state.answer_endless("POST", "/api/oauth2/token", 1);
    let creds = tokio::time::timeout(
        TIMEOUT,
        ctx.login(&mock.url(), &QuietLoginUi, &CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(state.access_token_active(creds.access_token.expose()));
    assert_eq!(token_polls(&state.requests()).len(), 2);
}
