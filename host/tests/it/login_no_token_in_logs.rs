//! The whole login + register (+ refresh) flow with tracing at TRACE level captured: no token
//! string appears in the logs. One test per file: it installs the global subscriber.

use crate::support::auth_state as support_auth_state;

use std::io::Write;
use std::sync::{Arc, Mutex};

use agentserver::auth::QuietLoginUi;
use agentserver::session_choice::{SessionOrigin, SessionRequest, choose_session};
use agentserver::state::{SessionStore, rfc3339};
use agentserver_mock::{MockConfig, MockServer};
use support_auth_state::{TIMEOUT, auth_in};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_register_and_refresh_log_no_token() {
    let logs = Captured::default();
    let writer = logs.clone();
    // Everything, at TRACE, from every crate (reqwest/hyper `log` records included).
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("install the capturing subscriber");

    let mock = MockServer::start(MockConfig {
        approve_after_polls: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let auth = auth_in(home.path());
    let store = SessionStore::new(home.path().join("sessions"));
    let cwd = home.path().join("project");
    let server = mock.url();
    let request = SessionRequest {
        resume: None,
        continue_latest: false,
        register_if_none: false,
        continue_named: false,
        device_login: true,
        server: Some(&server),
        name: Some("leak-check"),
        session_type: "claudecode",
        backend: None,
        cwd: &cwd,
    };
    let (guard, origin) = tokio::time::timeout(
        TIMEOUT,
        choose_session(
            &request,
            &store,
            &auth,
            &QuietLoginUi,
            &CancellationToken::new(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(origin, SessionOrigin::Registered);
    let session = guard.session().clone();
    assert_eq!(session.server_url, server);
    assert_eq!(session.session_type, "claudecode");
    assert_eq!(session.dir, cwd.to_string_lossy());

    // Force a refresh too: mark the saved access token expired.
    let mut creds = auth.credentials().load().unwrap().unwrap();
    let first_refresh = creds.refresh_token.expose().to_owned();
    creds.expires_at = rfc3339::now_local() - chrono::Duration::seconds(5);
    auth.credentials().save(&creds).unwrap();
    let refreshed = auth.ensure_valid_token(&server).await.unwrap();
    guard.release().unwrap();

    // Every secret that crossed the wire.
    let state = mock.state();
    let mut secrets: Vec<String> = state.access_tokens().into_iter().map(|(t, _)| t).collect();
    secrets.push(first_refresh);
    secrets.push(
        auth.credentials()
            .load()
            .unwrap()
            .unwrap()
            .refresh_token
            .expose()
            .to_owned(),
    );
    secrets.push(refreshed.expose().to_owned());
    for sb in state.sandboxes() {
        secrets.push(sb.tunnel_token);
        secrets.push(sb.proxy_token);
    }
    for req in state.requests_to("POST", "/api/oauth2/token") {
        if let Some((_, code)) = req.form().into_iter().find(|(k, _)| k == "device_code") {
            secrets.push(code);
        }
    }
    secrets.sort();
    secrets.dedup();
    assert!(secrets.len() >= 7, "tokens collected: {}", secrets.len());
    assert!(secrets.iter().all(|s| s.len() >= 16));

    let text = logs.text();
    // The capture works and covers the flow at TRACE level.
    assert!(text.contains("TRACE"), "no TRACE lines captured");
    assert!(text.contains("sandbox registered"), "{text}");
    assert!(text.contains("refresh"), "{text}");
    assert!(text.contains(&session.sandbox_id));
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a token appears in the logs:\n{}",
            text.lines()
                .filter(|l| l.contains(secret.as_str()))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
