//! Hostile local files under the state directory (issue 15, items 10, 11 and 13): FIFOs and
//! symlinks among the session files, loose modes, unreadable credentials, and starts that
//! cannot save their session, all with the real binary and real files.

use crate::support::auth_state as support_auth_state;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use agentserver::state::SessionStore;
use agentserver_mock::{MockConfig, MockServer};
use support_auth_state::{auth_in, credentials, describe, run_bin, session};

const SCOPES: &[&str] = &["openid", "profile", "agent:register"];

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A session directory holding one good session, a FIFO and a symlink to `/dev/zero`, all
/// named `*.json`.
fn hostile_sessions(home: &Path) {
    let store = SessionStore::new(home.join("sessions"));
    store
        .save(&session(
            "good",
            "/elsewhere",
            "opencode",
            "2026-04-09T12:00:00+02:00",
            None,
        ))
        .unwrap();
    nix::unistd::mkfifo(
        &home.join("sessions/fifo.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/zero", home.join("sessions/zero.json")).unwrap();
}

#[tokio::test]
async fn a_fifo_among_the_session_files_does_not_hang_list_or_continue() {
    let home = tempfile::tempdir().unwrap();
    hostile_sessions(home.path());

    // `run_bin` fails the test when the command does not finish within 20 s.
    let out = run_bin(home.path(), &["list"]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("good"), "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("fifo.json") && err.contains("FIFO"), "{err}");
    assert!(err.contains("zero.json"), "{err}");

    let out = run_bin(home.path(), &["list", "--json"]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["sandboxId"], "good");
    assert!(stderr(&out).contains("fifo.json"), "{}", describe(&out));

    // No session matches this directory: `--continue` says so instead of hanging.
    let out = run_bin(
        home.path(),
        &[
            "run",
            "--backend",
            "opencode",
            "--continue",
            "--server",
            "http://127.0.0.1:9",
        ],
    )
    .await;
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("No session to continue"), "{err}");
    assert!(err.contains("fifo.json"), "{err}");
    // The FIFO is still there, untouched.
    let meta = std::fs::symlink_metadata(home.path().join("sessions/fifo.json")).unwrap();
    assert!(meta.file_type().is_fifo());
}

#[tokio::test]
async fn loose_modes_of_the_state_directory_are_tightened_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    auth_in(&home)
        .credentials()
        .save(&credentials("http://127.0.0.1:9", "a", "r", 3600))
        .unwrap();
    let store = SessionStore::new(home.join("sessions"));
    store
        .save(&session(
            "s1",
            "/p",
            "opencode",
            "2026-04-09T12:00:00Z",
            None,
        ))
        .unwrap();
    let set = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let creds = home.join(".credentials.json");
    let session_file = home.join("sessions/s1.json");
    set(&home, 0o777);
    set(&creds, 0o644);
    set(&home.join("sessions"), 0o755);
    set(&session_file, 0o666);

    let out = run_bin(&home, &["list"]).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&creds), 0o600);
    assert_eq!(mode(&home.join("sessions")), 0o700);
    assert_eq!(mode(&session_file), 0o600);
    let err = stderr(&out);
    for (path, old) in [
        (&home, "0777"),
        (&creds, "0644"),
        (&home.join("sessions"), "0755"),
        (&session_file, "0666"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(&*path.to_string_lossy()) && l.contains(old))
            .unwrap_or_else(|| panic!("no warning about {} ({old}) in\n{err}", path.display()));
        assert!(line.contains("WARN"), "{line}");
    }

    // Once private, nothing more is said.
    let out = run_bin(&home, &["list"]).await;
    assert!(!stderr(&out).contains("too open"), "{}", describe(&out));
}

#[tokio::test]
async fn unreadable_credentials_stop_the_start_and_change_nothing() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let home = tempfile::tempdir().unwrap();
    let creds = home.path().join(".credentials.json");
    // Tests run as root here, where no mode makes a file unreadable: a FIFO cannot be read
    // as credentials either (and used to hang the read).
    nix::unistd::mkfifo(&creds, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    let out = run_bin(
        home.path(),
        &[
            "run",
            "--backend",
            "opencode",
            "--skip-open-browser",
            "--server",
            &mock.url(),
        ],
    )
    .await;
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("the saved credentials cannot be read; nothing was changed"),
        "{err}"
    );
    assert!(err.contains(".credentials.json"), "{err}");
    assert!(
        std::fs::symlink_metadata(&creds)
            .unwrap()
            .file_type()
            .is_fifo(),
        "the credentials file was replaced"
    );
    let state = mock.state();
    assert!(
        state
            .requests_to("POST", "/api/oauth2/device/auth")
            .is_empty(),
        "a login was started"
    );
    assert!(state.sandboxes().is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(home.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A home with valid credentials for the mock.
fn logged_in(mock: &MockServer) -> tempfile::TempDir {
    let state = mock.state();
    let ws = state.default_workspace_id();
    let (access, refresh) = state.issue_token_pair(Some(&ws), SCOPES, "owner");
    let home = tempfile::tempdir().unwrap();
    auth_in(home.path())
        .credentials()
        .save(&credentials(&mock.url(), &access, &refresh, 3600))
        .unwrap();
    home
}

#[tokio::test]
async fn no_sandbox_is_registered_when_the_session_cannot_be_saved() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let home = logged_in(&mock);
    // As root no mode makes `sessions/` unwritable; a plain file in its place does.
    std::fs::write(home.path().join("sessions"), b"not a directory").unwrap();
    for _ in 0..2 {
        let out = run_bin(
            home.path(),
            &["run", "--backend", "opencode", "--server", &mock.url()],
        )
        .await;
        assert!(!out.status.success(), "{}", describe(&out));
        assert!(stderr(&out).contains("sessions"), "{}", describe(&out));
    }
    assert!(
        mock.state().sandboxes().is_empty(),
        "failed starts registered sandboxes"
    );
}

#[tokio::test]
async fn no_sandbox_is_registered_when_claude_is_missing() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let home = logged_in(&mock);
    let missing = home.path().join("no-such-claude");
    let out = run_bin(
        home.path(),
        &[
            "run",
            "--server",
            &mock.url(),
            "--claude-bin",
            missing.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("claude CLI not found"),
        "{}",
        describe(&out)
    );
    assert!(mock.state().sandboxes().is_empty(), "{}", describe(&out));
    assert!(
        SessionStore::new(home.path().join("sessions"))
            .list()
            .unwrap()
            .is_empty()
    );
}
