//! Helpers shared by the login/state integration tests (issue #3).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use agentserver::auth::{AuthContext, Credentials};
use agentserver::secret::Secret;
use agentserver::state::{Session, rfc3339};

/// Generous bound around every await on a child process or the mock.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// An auth context whose credentials file lives in `home`.
pub fn auth_in(home: &Path) -> AuthContext {
    AuthContext::new(home.join(".credentials.json"))
}

/// Runs the `agentserver` binary with `AGENTSERVER_HOME=home` (and HOME inside it too, so the
/// real ~/.agentserver is never touched), stdin closed, and waits for it.
pub async fn run_bin(home: &Path, args: &[&str]) -> Output {
    run_bin_with_stdin(home, args, None).await
}

/// Like [`run_bin`] but writes `stdin` to the process first.
pub async fn run_bin_with_stdin(home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentserver"));
    cmd.args(args)
        .env("AGENTSERVER_HOME", home)
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .env("HOME", home)
        .env_remove("AGENTSERVER_SERVER")
        .env_remove("RUST_LOG")
        .env("BROWSER", "true")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn agentserver");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .expect("agentserver did not finish in time")
        .expect("wait for agentserver")
}

/// Stdout and stderr of a finished command, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Credentials for `server` whose access token expires `expires_in_s` from now.
pub fn credentials(server: &str, access: &str, refresh: &str, expires_in_s: i64) -> Credentials {
    Credentials {
        server_url: server.to_owned(),
        access_token: Secret::new(access),
        refresh_token: Secret::new(refresh),
        expires_at: rfc3339::now_local() + chrono::Duration::seconds(expires_in_s),
        scopes: vec!["openid".into(), "profile".into(), "agent:register".into()],
    }
}

/// A session of `dir` and `ty` created at `created` (RFC 3339).
pub fn session(id: &str, dir: &str, ty: &str, created: &str, pid: Option<i32>) -> Session {
    Session {
        sandbox_id: id.to_owned(),
        tunnel_token: Secret::new(format!("tunnel-{id}")),
        proxy_token: Secret::new(format!("proxy-{id}")),
        workspace_id: "ws-test".into(),
        name: format!("name-{id}"),
        session_type: ty.to_owned(),
        server_url: "http://127.0.0.1:9".into(),
        dir: dir.to_owned(),
        created_at: rfc3339::parse(created).unwrap(),
        pid,
        backend: None,
    }
}
