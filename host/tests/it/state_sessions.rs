//! Session files (spec §4.2, §5): never seen half-written, `--resume` refuses a live session,
//! `--continue` picks the right one, the pid is cleared after a clean exit.

use crate::support::auth_state as support_auth_state;

use std::io::{BufRead, BufReader, Write};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentserver::auth::QuietLoginUi;
use agentserver::session_choice::{ChooseError, SessionOrigin, SessionRequest, choose_session};
use agentserver::state::{Session, SessionGuard, SessionStore};
use support_auth_state::{auth_in, session};
use tokio_util::sync::CancellationToken;

const CHILD_DIR_ENV: &str = "AGENTSERVER_TEST_SESSIONS_DIR";

fn child(test: &str, dir: &std::path::Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            crate::test_name(module_path!(), test).as_str(),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Waits (at most 20 s) until the child prints `marker` at the end of a line (the libtest
/// harness prints `test name ... ` in front of our output). Returns the rest of stdout as
/// a line channel.
fn wait_for_line(
    stdout: std::process::ChildStdout,
    marker: &'static str,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("child did not print {marker}: {e}"));
        if line.trim_end().ends_with(marker) {
            return rx;
        }
    }
}

#[test]
fn session_file_is_never_seen_half_written() {
    let tmp = tempfile::tempdir().unwrap();
    let store = SessionStore::new(tmp.path());
    let path = store.path_of("writer").unwrap();
    for round in 0..3 {
        let mut writer = child("session_writer_child", tmp.path());
        let _out = wait_for_line(writer.stdout.take().unwrap(), "READY");
        // Read concurrently with the writes: every read must parse.
        let mut reads = 0;
        let until = Instant::now() + Duration::from_millis(300 + 150 * round);
        while Instant::now() < until {
            let data = std::fs::read(&path).unwrap();
            let s: Session = serde_json::from_slice(&data)
                .unwrap_or_else(|e| panic!("half-written file seen ({e}), {} bytes", data.len()));
            assert_eq!(s.sandbox_id, "writer");
            reads += 1;
        }
        assert!(reads > 0);
        // SIGKILL in the middle of the write loop, then the file must still parse.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(writer.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        writer.wait().unwrap();
        let s = store.load("writer").expect("complete file after SIGKILL");
        assert!(s.name.starts_with("generation-"));
        // Only the session and possibly a leftover temp file: `list` ignores the latter.
        assert_eq!(store.list().unwrap().len(), 1);
    }
}

/// Child: rewrites one session file as fast as it can, with a large, changing body.
#[test]
#[ignore = "child process of session_file_is_never_seen_half_written"]
fn session_writer_child() {
    let dir = std::env::var_os(CHILD_DIR_ENV).expect("run by the parent test only");
    let store = SessionStore::new(dir);
    let mut s = session("writer", "/w", "claudecode", "2026-04-09T10:00:00Z", None);
    // Stop when the parent goes away (its end of our stdin closes), so a failed parent
    // never leaves this loop running.
    std::thread::spawn(|| {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
        std::process::exit(0);
    });
    let padding = "x".repeat(256 * 1024);
    for generation in 0u64.. {
        s.name = format!(
            "generation-{generation}-{}",
            &padding[..(generation as usize * 997) % padding.len()]
        );
        store.save(&s).unwrap();
        if generation == 0 {
            println!("READY");
            std::io::stdout().flush().unwrap();
        }
    }
}

#[test]
fn pid_is_stamped_while_running_and_cleared_after_a_clean_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let store = SessionStore::new(tmp.path());
    let mut holder = child("session_holder_child", tmp.path());
    let _out = wait_for_line(holder.stdout.take().unwrap(), "ACQUIRED");
    let running = store.load("held").unwrap();
    assert_eq!(running.pid, Some(holder.id() as i32));
    assert_eq!(running.live_pid(), Some(holder.id() as i32));
    // Tell it to exit normally.
    holder.stdin.take().unwrap().write_all(b"exit\n").unwrap();
    assert!(holder.wait().unwrap().success());
    let after = store.load("held").unwrap();
    assert_eq!(after.pid, None, "pid cleared on exit");
    let raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.path_of("held").unwrap()).unwrap()).unwrap();
    assert!(raw.get("pid").is_none());
    assert_eq!(after.tunnel_token, running.tunnel_token);
}

/// Child: holds a session until told to exit on stdin, then returns (the guard drops).
#[test]
#[ignore = "child process of pid_is_stamped_while_running_and_cleared_after_a_clean_exit"]
fn session_holder_child() {
    let dir = std::env::var_os(CHILD_DIR_ENV).expect("run by the parent test only");
    let store = SessionStore::new(dir);
    let _guard = SessionGuard::acquire(
        store,
        session("held", "/h", "claudecode", "2026-04-09T10:00:00Z", None),
    )
    .unwrap();
    println!("ACQUIRED");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
}

fn request<'a>(cwd: &'a std::path::Path, ty: &'a str) -> SessionRequest<'a> {
    SessionRequest {
        resume: None,
        continue_latest: false,
        register_if_none: false,
        continue_named: false,
        device_login: true,
        server: None,
        name: None,
        session_type: ty,
        backend: None,
        cwd,
    }
}

#[tokio::test]
async fn resume_of_a_live_session_fails_with_its_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let store = SessionStore::new(tmp.path().join("sessions"));
    let auth = auth_in(tmp.path());
    let mut live = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = live.id() as i32;
    store
        .save(&session(
            "busy",
            "/p",
            "claudecode",
            "2026-04-09T10:00:00Z",
            Some(pid),
        ))
        .unwrap();
    let cwd = std::path::Path::new("/p");
    let req = SessionRequest {
        resume: Some("busy"),
        ..request(cwd, "claudecode")
    };
    let err = choose_session(
        &req,
        &store,
        &auth,
        &QuietLoginUi,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ChooseError::SessionActive { pid: p, .. } if p == pid));
    assert_eq!(
        err.to_string(),
        format!("Session busy is still active (PID {pid})")
    );
    assert_eq!(store.load("busy").unwrap().pid, Some(pid), "untouched");

    // Once that process is gone, resume works, stamps our pid, and clears it on release.
    live.kill().unwrap();
    live.wait().unwrap();
    let (guard, origin) = choose_session(
        &req,
        &store,
        &auth,
        &QuietLoginUi,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(origin, SessionOrigin::Resumed);
    assert_eq!(guard.session().sandbox_id, "busy");
    assert_eq!(
        store.load("busy").unwrap().pid,
        Some(std::process::id() as i32)
    );
    guard.release().unwrap();
    assert_eq!(store.load("busy").unwrap().pid, None);

    // Unknown id.
    let req = SessionRequest {
        resume: Some("nope"),
        ..request(cwd, "claudecode")
    };
    let err = choose_session(
        &req,
        &store,
        &auth,
        &QuietLoginUi,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), "session nope not found");
}

#[tokio::test]
async fn continue_picks_the_newest_inactive_session_of_this_dir_and_type() {
    let tmp = tempfile::tempdir().unwrap();
    let store = SessionStore::new(tmp.path().join("sessions"));
    let auth = auth_in(tmp.path());
    let me = std::process::id() as i32;
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id() as i32;
    dead.wait().unwrap();
    for s in [
        session(
            "a-old",
            "/proj/a",
            "claudecode",
            "2026-04-09T08:00:00+02:00",
            None,
        ),
        // Inactive although a pid is recorded: that process is gone.
        session(
            "a-new",
            "/proj/a",
            "claudecode",
            "2026-04-09T09:30:00+02:00",
            Some(dead_pid),
        ),
        // The right one: 07:45Z = 09:45+02:00, the newest inactive for /proj/a + claudecode
        // (compared as instants, not as strings).
        session(
            "a-utc",
            "/proj/a",
            "claudecode",
            "2026-04-09T07:45:00Z",
            None,
        ),
        session(
            "a-live",
            "/proj/a",
            "claudecode",
            "2026-04-09T11:00:00+02:00",
            Some(me),
        ),
        session(
            "a-opencode",
            "/proj/a",
            "opencode",
            "2026-04-09T12:00:00+02:00",
            None,
        ),
        session(
            "b-new",
            "/proj/b",
            "claudecode",
            "2026-04-09T13:00:00+02:00",
            None,
        ),
        session(
            "a-sub",
            "/proj/a/sub",
            "claudecode",
            "2026-04-09T14:00:00+02:00",
            None,
        ),
    ] {
        store.save(&s).unwrap();
    }
    let pick = |dir: &'static str, ty: &'static str| {
        let store = store.clone();
        let auth = auth.clone();
        async move {
            let req = SessionRequest {
                continue_latest: true,
                register_if_none: false,
                continue_named: false,
                device_login: true,
                ..request(std::path::Path::new(dir), ty)
            };
            choose_session(
                &req,
                &store,
                &auth,
                &QuietLoginUi,
                &CancellationToken::new(),
            )
            .await
        }
    };
    let (guard, origin) = pick("/proj/a", "claudecode").await.unwrap();
    assert_eq!(origin, SessionOrigin::Continued);
    assert_eq!(guard.session().sandbox_id, "a-utc");
    assert_eq!(guard.session().pid, Some(me));
    // While we hold it, the next --continue takes the next older one, then the next.
    let (second, _) = pick("/proj/a", "claudecode").await.unwrap();
    assert_eq!(second.session().sandbox_id, "a-new");
    let (third, _) = pick("/proj/a", "claudecode").await.unwrap();
    assert_eq!(third.session().sandbox_id, "a-old");
    assert!(pick("/proj/a", "claudecode").await.is_err(), "all taken");
    drop((guard, second, third));
    assert_eq!(store.load("a-utc").unwrap().pid, None);
    assert_eq!(
        pick("/proj/a", "opencode")
            .await
            .unwrap()
            .0
            .session()
            .sandbox_id,
        "a-opencode"
    );
    assert_eq!(
        pick("/proj/b", "claudecode")
            .await
            .unwrap()
            .0
            .session()
            .sandbox_id,
        "b-new"
    );
    assert_eq!(
        pick("/proj/a/sub", "claudecode")
            .await
            .unwrap()
            .0
            .session()
            .sandbox_id,
        "a-sub"
    );
    let err = pick("/proj/c", "claudecode").await.unwrap_err();
    assert!(
        err.to_string().starts_with("No session to continue: "),
        "{err}"
    );
    // No request went anywhere: resume/continue never touch OAuth.
    assert!(!tmp.path().join(".credentials.json").exists());
}
