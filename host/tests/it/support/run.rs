//! Helpers for the tests that run the real `agentserver run` binary against the in-process
//! mock agentserver: signals, waiting for the exit without blocking the runtime the mock
//! serves on, and reading what the run left in its state directory.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use agentserver_mock::{MockState, SandboxRecord};

/// Sends SIGTERM to the process.
pub fn sigterm(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("send SIGTERM");
}

/// Waits for the child to exit, polling without blocking a runtime thread; `None` when it
/// is still running after `timeout`.
pub async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`wait_exit`], but kills the child and panics when it does not exit in time.
pub async fn expect_exit(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    match wait_exit(child, timeout).await {
        Some(status) => status,
        None => {
            let _ = child.kill();
            panic!("agentserver did not exit within {timeout:?} {what}");
        }
    }
}

/// Waits until the host has registered its sandbox and returns it.
pub async fn registered_sandbox(mock: &MockState) -> SandboxRecord {
    assert!(
        mock.wait_until(Duration::from_secs(20), |s| !s.sandboxes().is_empty())
            .await,
        "the host never registered"
    );
    mock.sandboxes()[0].clone()
}

/// Waits until the sandbox's agent info arrived over the tunnel: the worker runs, and its
/// signal handlers are installed.
pub async fn wait_agent_info(mock: &MockState, sandbox_id: &str) {
    assert!(
        mock.wait_until(Duration::from_secs(20), |s| s
            .sandbox(sandbox_id)
            .is_some_and(|sb| sb.agent_info.is_some()))
            .await,
        "no agent info arrived over the tunnel"
    );
}

/// Waits until the task's first event reached the bridge (the backend is running it).
pub async fn wait_task_started(mock: &MockState, task_id: &str) {
    assert!(
        mock.wait_until(Duration::from_secs(20), |s| s
            .task(task_id)
            .and_then(|t| t.session_id)
            .is_some_and(|sid| !s.bridge_worker_events(&sid).is_empty()))
            .await,
        "task {task_id} never started"
    );
}

/// The session file the run keeps for `sandbox_id` under its `AGENTSERVER_HOME`.
pub fn session_file(state_dir: &Path, sandbox_id: &str) -> serde_json::Value {
    let path = state_dir
        .join("sessions")
        .join(format!("{sandbox_id}.json"));
    serde_json::from_slice(&std::fs::read(&path).expect("session file")).expect("session JSON")
}

/// Whether the session file says that no process runs it (pid absent, null or 0).
pub fn pid_cleared(session: &serde_json::Value) -> bool {
    session.get("pid").is_none_or(|p| p.is_null() || p == 0)
}

/// A scratch place for one `agentserver run` with the claudecode backend: a state directory,
/// a work directory and a stand-in `claude` script.
pub struct RunDirs {
    /// Holds everything; removed on drop.
    pub dir: tempfile::TempDir,
    /// `AGENTSERVER_HOME`.
    pub home: std::path::PathBuf,
    /// The run's working directory.
    pub work: std::path::PathBuf,
    /// The stand-in `claude` (executable).
    pub claude: std::path::PathBuf,
}

impl RunDirs {
    /// Creates the directories and writes `fake_claude` as the `claude` script.
    pub fn new(fake_claude: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("state");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let claude = dir.path().join("claude");
        std::fs::write(&claude, fake_claude).unwrap();
        std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self {
            dir,
            home,
            work,
            claude,
        }
    }

    /// `agentserver <global…> run --backend claudecode --skip-open-browser --poll-interval 0.2
    /// <run_args…> --server URL --claude-bin CLAUDE`, in the work directory, with this state
    /// directory and device logins allowed without a terminal. The caller sets `RUST_LOG` and
    /// where stdout and stderr go, then spawns it.
    pub fn run_command(
        &self,
        server_url: &str,
        global: &[&str],
        run_args: &[&str],
    ) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_agentserver"));
        cmd.args(global)
            .args([
                "run",
                "--backend",
                "claudecode",
                "--skip-open-browser",
                "--poll-interval",
                "0.2",
            ])
            .args(run_args)
            .arg("--server")
            .arg(server_url)
            .arg("--claude-bin")
            .arg(&self.claude)
            .current_dir(&self.work)
            .env("AGENTSERVER_HOME", &self.home)
            .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1");
        cmd
    }
}

/// Every string under a key ending in `token` in a JSON document (a credentials file, a
/// session file).
pub fn collect_tokens(value: &serde_json::Value, into: &mut Vec<String>) {
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

/// Collects everything `from` yields (a child's stdout or stderr) on a thread of its own, so
/// a full pipe never stalls the child; the text so far is readable at any time.
pub fn drain(
    mut from: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

/// Kills and reaps the child if the test fails before it stopped it (what the child started
/// follows through `PR_SET_PDEATHSIG`).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
