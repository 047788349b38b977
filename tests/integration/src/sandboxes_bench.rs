//! Benchmarks of issue 18, run by `agentserver-bench --only worktrees,soak`:
//!
//! - **worktrees**: 16 tasks at concurrency 4 through one `agentserver run` with the real
//!   `claude` against the fake LLM, each in its own git worktree, vs 16 direct
//!   `claude -p` runs 4 at a time in the same run (the same prompt: one Bash tool round trip
//!   writing a file). Goal: at most 1.10× the direct wall time.
//! - **soak**: many tasks through one host with the real `claude` and a stdio MCP server in
//!   `.mcp.json` that daemonizes a child (double fork + `setsid`) each time it starts: the
//!   host's RSS every 50 tasks against its RSS after the first 20 (goal: within 10 %), the
//!   daemons still alive at the end (goal: 0) and statuses lost or duplicated (goal: 0).
//!
//! Each returns rows in the `BENCH-JSON` shape (`measure`, `unit`, `baseline`,
//! `baseline_value`, `value`) and prints what it does on stderr.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use agentserver_mock::fake_llm::{FakeLlm, FakeLlmHandle, TOOL_SH};
use agentserver_mock::{MockConfig, MockServer, MockState};
use anyhow::Context;
use serde_json::{Value, json};

/// Bound on one benchmark's tasks.
const LIMIT: Duration = Duration::from_secs(600);

/// The sizes of a run.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Tasks of the worktree benchmark (and direct runs).
    pub worktree_tasks: usize,
    /// Tasks at once.
    pub concurrency: usize,
    /// Tasks of the soak.
    pub soak_tasks: usize,
}

impl Sizes {
    /// The issue's sizes.
    pub const FULL: Self = Self {
        worktree_tasks: 16,
        concurrency: 4,
        soak_tasks: 300,
    };
    /// A check that it runs.
    pub const QUICK: Self = Self {
        worktree_tasks: 4,
        concurrency: 2,
        soak_tasks: 40,
    };
}

fn row(measure: &str, unit: &str, baseline: Option<(&str, f64)>, value: f64) -> Value {
    json!({
        "measure": measure,
        "unit": unit,
        "baseline": baseline.map(|b| b.0),
        "baseline_value": baseline.map(|b| b.1),
        "value": value,
    })
}

/// An isolated claude environment against `llm`, under `root`.
fn claude_env(root: &Path, llm: &FakeLlmHandle) -> Vec<(&'static str, String)> {
    crate::claude_support::offline_env(&root.join("home"), &root.join("tmp"), &llm.url())
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A temp root with `home/`, `tmp/` and a git repository `repo/` with one commit.
fn fixture() -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().canonicalize()?;
    for d in ["home", "tmp", "repo"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let repo = root.join("repo");
    git(&repo, &["init", "-q", "-b", "main"])?;
    std::fs::write(repo.join("README.md"), "bench\n")?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "first"])?;
    Ok((dir, root))
}

fn prompt(n: usize) -> String {
    format!("{TOOL_SH}echo task {n} > out.txt] please")
}

/// `n` direct `claude -p` runs, `concurrency` at a time, in `dir`; the wall time.
async fn direct_runs(
    claude: &Path,
    env: &[(&'static str, String)],
    dir: &Path,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = semaphore.clone().acquire_owned().await?;
        let mut cmd = tokio::process::Command::new(claude);
        cmd.args([
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            "bypassPermissions",
        ])
        .arg(prompt(i))
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        set.spawn(async move {
            let status = cmd.status().await;
            drop(permit);
            status
        });
    }
    while let Some(done) = set.join_next().await {
        let status = done??;
        anyhow::ensure!(status.success(), "a direct claude run failed: {status}");
    }
    Ok(started.elapsed())
}

/// A running `agentserver run` for the benchmarks.
struct Host {
    child: tokio::process::Child,
}

impl Host {
    async fn start(
        agentserver: &Path,
        claude: &Path,
        server: &str,
        root: &Path,
        env: &[(&'static str, String)],
        concurrency: usize,
    ) -> anyhow::Result<Self> {
        let child = tokio::process::Command::new(agentserver)
            .args([
                "run",
                "--backend",
                "claudecode",
                "--skip-open-browser",
                "--poll-interval",
                "0.2",
            ])
            .arg("--max-concurrent-tasks")
            .arg(concurrency.to_string())
            .arg("--claude-bin")
            .arg(claude)
            .arg("--worktree-dir")
            .arg(root.join("worktrees"))
            .arg("--server")
            .arg(server)
            .current_dir(root.join("repo"))
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("AGENTSERVER_HOME", root.join("state"))
            .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start agentserver run")?;
        Ok(Self { child })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.pid()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
    }
}

/// The sandbox the host registered, once its agent info arrived.
async fn connected_sandbox(mock: &MockState) -> anyhow::Result<String> {
    anyhow::ensure!(
        mock.wait_until(Duration::from_secs(60), |s| s
            .sandboxes()
            .first()
            .and_then(|sb| s.sandbox(&sb.id))
            .is_some_and(|sb| sb.agent_info.is_some()))
            .await,
        "the host never connected"
    );
    Ok(mock.sandboxes()[0].id.clone())
}

/// Waits for every task's final status; returns (lost, duplicated).
async fn settle(mock: &MockState, tasks: &[String]) -> (usize, usize) {
    let (mut lost, mut duplicated) = (0, 0);
    for task in tasks {
        match mock.wait_task_final(task, LIMIT).await {
            Some(record) if record.final_updates().len() == 1 => {}
            Some(_) => duplicated += 1,
            None => lost += 1,
        }
    }
    (lost, duplicated)
}

/// The worktree benchmark.
pub async fn worktrees(
    agentserver: &Path,
    claude: &Path,
    sizes: &Sizes,
) -> anyhow::Result<Vec<Value>> {
    let llm = FakeLlm::start().await?;
    let (_dir, root) = fixture()?;
    let env = claude_env(&root, &llm);
    let n = sizes.worktree_tasks;
    // Direct runs first (one warm-up run so neither side pays claude's first start).
    direct_runs(claude, &env, &root.join("repo"), 1, 1).await?;
    let direct = direct_runs(claude, &env, &root.join("repo"), n, sizes.concurrency).await?;
    eprintln!(
        "worktrees: {n} direct claude -p runs, {} at a time: {direct:.2?}",
        sizes.concurrency
    );
    git(&root.join("repo"), &["checkout", "-q", "--", "."])?;
    let _ = std::fs::remove_file(root.join("repo/out.txt"));

    let server = MockServer::start(MockConfig::default()).await?;
    let mock = server.state();
    let host = Host::start(
        agentserver,
        claude,
        &server.url(),
        &root,
        &env,
        sizes.concurrency,
    )
    .await?;
    let sandbox = connected_sandbox(&mock).await?;
    let started = Instant::now();
    let tasks: Vec<String> = (0..n)
        .map(|i| mock.create_task(&sandbox, &prompt(i)))
        .collect();
    let (lost, duplicated) = settle(&mock, &tasks).await;
    let hosted = started.elapsed();
    eprintln!(
        "worktrees: {n} tasks through the host, {} at a time, each in a worktree: {hosted:.2?}",
        sizes.concurrency
    );
    let completed = tasks
        .iter()
        .filter(|t| mock.task(t).is_some_and(|r| r.status == "completed"))
        .count();
    host.stop().await;
    anyhow::ensure!(
        lost == 0 && duplicated == 0,
        "lost {lost}, duplicated {duplicated}"
    );
    anyhow::ensure!(completed == n, "{completed} of {n} tasks completed");
    Ok(vec![row(
        &format!(
            "{n} claude tasks, {} at a time, a worktree each: wall time",
            sizes.concurrency
        ),
        "s",
        Some(("direct claude -p", direct.as_secs_f64())),
        hosted.as_secs_f64(),
    )])
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soak.
pub async fn soak(agentserver: &Path, claude: &Path, sizes: &Sizes) -> anyhow::Result<Vec<Value>> {
    let llm = FakeLlm::start().await?;
    let (_dir, root) = fixture()?;
    let env = claude_env(&root, &llm);
    let pids = root.join("daemons");
    std::fs::create_dir(&pids)?;
    let script = root.join("daemonizer.py");
    std::fs::write(&script, agentserver_mock::fake_mcp::DAEMONIZING_MCP_SERVER)?;
    let repo = root.join("repo");
    // The project's MCP server, committed (each worktree has it), approved for claude.
    std::fs::write(
        repo.join(".mcp.json"),
        serde_json::to_string_pretty(&json!({"mcpServers": {"daemonizer": {
            "command": "python3", "args": [script, pids]}}}))?,
    )?;
    std::fs::create_dir_all(repo.join(".claude"))?;
    std::fs::write(
        repo.join(".claude/settings.json"),
        r#"{"enableAllProjectMcpServers": true}"#,
    )?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "mcp"])?;

    let server = MockServer::start(MockConfig::default()).await?;
    let mock = server.state();
    let host = Host::start(agentserver, claude, &server.url(), &root, &env, 4).await?;
    let pid = host.pid();
    let sandbox = connected_sandbox(&mock).await?;
    let mut curve = Vec::new();
    let mut tasks = Vec::new();
    let started = Instant::now();
    let mut baseline = None;
    let (mut lost, mut duplicated) = (0, 0);
    let mut done = 0;
    while done < sizes.soak_tasks {
        // In batches: 20 first (the baseline), then 50 at a time.
        let batch = if done == 0 {
            20
        } else {
            50.min(sizes.soak_tasks - done)
        };
        let new: Vec<String> = (done..done + batch)
            .map(|i| mock.create_task(&sandbox, &prompt(i)))
            .collect();
        let (l, d) = settle(&mock, &new).await;
        lost += l;
        duplicated += d;
        tasks.extend(new);
        done += batch;
        // Give the trim a moment (it runs a second after the last busy stream).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let rss = rss_kib(pid).unwrap_or(0);
        baseline.get_or_insert(rss);
        eprintln!(
            "soak: {done:>4} tasks, {:>6.1} s, host RSS {:.1} MiB",
            started.elapsed().as_secs_f64(),
            rss as f64 / 1024.0
        );
        curve.push((done, rss));
    }
    host.stop().await;
    let daemons = agentserver_mock::fake_mcp::daemon_pids(&pids);
    let alive: Vec<u32> = daemons
        .iter()
        .copied()
        .filter(|p| agentserver_common::process::is_alive(*p))
        .collect();
    for p in &alive {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    eprintln!(
        "soak: {} MCP daemons started, {} alive at the end; lost {lost}, duplicated {duplicated}",
        daemons.len(),
        alive.len()
    );
    let first = baseline.unwrap_or(0) as f64 / 1024.0;
    let last = curve.last().map_or(0, |c| c.1) as f64 / 1024.0;
    let mut rows = vec![row(
        &format!(
            "host RSS after {} tasks (MCP daemons started: {})",
            sizes.soak_tasks,
            daemons.len()
        ),
        "MiB",
        Some(("after 20 tasks", first)),
        last,
    )];
    rows.push(row(
        "leftover MCP daemons at the end",
        "",
        None,
        alive.len() as f64,
    ));
    rows.push(row(
        "statuses lost or duplicated",
        "",
        None,
        (lost + duplicated) as f64,
    ));
    Ok(rows)
}
