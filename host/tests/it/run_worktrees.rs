//! A git worktree per task, through the real `agentserver run` and the real `claude` against
//! the fake LLM: four tasks at once in one repository each write a file of the same name and
//! end on four branches with four contents, the user's checkout untouched and no worktree
//! left; a host killed mid-task and started again commits what the task left (the agent's own
//! commit and its uncommitted file) to the task's branch and removes the worktree.

use crate::support::run as support_run;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use agentserver_integration::claude_support::{offline_env, real_claude};
use agentserver_mock::fake_llm::{FakeLlm, TOOL_SH};
use agentserver_mock::{MockConfig, MockServer, MockState};
use serde_json::Value;
use support_run::{KillOnDrop, drain, sigterm, wait_exit};

const LIMIT: Duration = Duration::from_secs(90);

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct Setup {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    state: PathBuf,
    worktrees: PathBuf,
    env: Vec<(&'static str, String)>,
}

fn setup(llm_url: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let repo = root.join("repo");
    for d in [&repo, &root.join("home"), &root.join("tmp")] {
        std::fs::create_dir_all(d).unwrap();
    }
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "the user's project\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    let mut env = offline_env(&root.join("home"), &root.join("tmp"), llm_url);
    env.extend([
        // The agent's own commits.
        ("GIT_AUTHOR_NAME", "agent".to_owned()),
        ("GIT_AUTHOR_EMAIL", "agent@localhost".to_owned()),
        ("GIT_COMMITTER_NAME", "agent".to_owned()),
        ("GIT_COMMITTER_EMAIL", "agent@localhost".to_owned()),
    ]);
    Setup {
        state: root.join("state"),
        worktrees: root.join("worktrees"),
        repo,
        env,
        _dir: dir,
    }
}

fn start_host(s: &Setup, server: &str) -> (KillOnDrop, std::sync::Arc<std::sync::Mutex<String>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args([
            "run",
            "--backend",
            "claudecode",
            "--skip-open-browser",
            "--poll-interval",
            "0.2",
            "--max-concurrent-tasks",
            "4",
            "--continue-or-register",
        ])
        .arg("--claude-bin")
        .arg(real_claude())
        .arg("--worktree-dir")
        .arg(&s.worktrees)
        .arg("--server")
        .arg(server)
        .current_dir(&s.repo)
        .env_clear()
        .envs(s.env.iter().map(|(k, v)| (k, v)))
        .env("AGENTSERVER_HOME", &s.state)
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .env("RUST_LOG", "warn,agentserver=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = drain(child.stderr.take().unwrap());
    (KillOnDrop(child), stderr)
}

/// The `agentserver_workspace` event of a task.
fn workspace_event(mock: &MockState, task: &str) -> Value {
    let sid = mock
        .task(task)
        .unwrap()
        .session_id
        .expect("a bridge session");
    mock.bridge_worker_events(&sid)
        .into_iter()
        .find(|e| e["subtype"] == "agentserver_workspace")
        .unwrap_or_else(|| panic!("no agentserver_workspace event for {task}"))
}

/// Directories left under the worktree base (its index file aside).
fn left_worktrees(base: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(base)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_tasks_at_once_in_one_repository_end_on_four_branches() {
    let llm = FakeLlm::start().await.expect("fake LLM");
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let s = setup(&llm.url());
    let head = git(&s.repo, &["rev-parse", "HEAD"]);
    let (mut host, logs) = start_host(&s, &server.url());
    let sandbox = support_run::registered_sandbox(&mock).await;

    let tasks: Vec<String> = (1..=4)
        .map(|n| {
            mock.create_task(
                &sandbox.id,
                &format!("{TOOL_SH}echo content {n} > out.txt] please"),
            )
        })
        .collect();
    for (n, task) in tasks.iter().enumerate() {
        let record = mock
            .wait_task_final(task, LIMIT)
            .await
            .unwrap_or_else(|| panic!("{task}: no final status\n{}", logs.lock().unwrap()));
        assert_eq!(record.status, "completed", "{record:?}");
        assert_eq!(record.final_updates().len(), 1);
        let event = workspace_event(&mock, task);
        let branch = event["branch"].as_str().expect("the branch").to_owned();
        assert_eq!(branch, format!("agentserver/{task}"));
        assert_eq!(event["committed_changes"], true, "{event}");
        let content = git(&s.repo, &["show", &format!("{branch}:out.txt")]);
        assert_eq!(content, format!("content {}", n + 1), "{branch}");
        // The agent ran in its worktree, not in the user's checkout.
        assert!(
            git(&s.repo, &["show", &format!("{branch}:README.md")]).contains("the user's project")
        );
    }
    // The user's checkout: HEAD and files unchanged; only the host's .mcp.json (upstream
    // behaviour) is new there, and it reached no branch.
    assert_eq!(git(&s.repo, &["rev-parse", "HEAD"]), head);
    assert_eq!(git(&s.repo, &["status", "--porcelain"]), "?? .mcp.json");
    assert!(!s.repo.join("out.txt").exists());
    for task in &tasks {
        let files = git(
            &s.repo,
            &[
                "ls-tree",
                "-r",
                "--name-only",
                &format!("agentserver/{task}"),
            ],
        );
        assert!(!files.contains(".mcp.json"), "{files}");
    }
    assert_eq!(left_worktrees(&s.worktrees), Vec::<PathBuf>::new());
    assert_eq!(
        git(&s.repo, &["worktree", "list", "--porcelain"])
            .lines()
            .filter(|l| l.starts_with("worktree "))
            .count(),
        1,
        "only the user's own worktree"
    );
    sigterm(host.0.id());
    assert_eq!(
        wait_exit(&mut host.0, LIMIT).await.and_then(|s| s.code()),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_task_loses_no_work_of_the_task() {
    let llm = FakeLlm::start().await.expect("fake LLM");
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let s = setup(&llm.url());
    let (mut host, logs) = start_host(&s, &server.url());
    let sandbox = support_run::registered_sandbox(&mock).await;
    let marker = s.worktrees.join("agent-waits");
    let task = mock.create_task(
        &sandbox.id,
        &format!(
            "{TOOL_SH}echo committed > done.txt && git add done.txt && git commit -qm 'agent commit' && echo pending > wip.txt && touch {} && sleep 20]",
            marker.display()
        ),
    );
    // The agent committed one file and left another uncommitted, and is still at work.
    let deadline = std::time::Instant::now() + LIMIT;
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never got to work\n{}",
            logs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = host.0.kill();
    let _ = host.0.wait();
    assert_eq!(left_worktrees(&s.worktrees).len(), 1, "the task's worktree");

    // Started again: the task is reported failed once, its work is on its branch, and the
    // worktree is gone.
    let (mut host, logs) = start_host(&s, &server.url());
    let record = mock.wait_task_final(&task, LIMIT).await.unwrap_or_else(|| {
        panic!(
            "no final status after the restart\n{}",
            logs.lock().unwrap()
        )
    });
    assert_eq!(record.status, "failed", "{record:?}");
    assert_eq!(record.final_updates().len(), 1);
    let branch = format!("agentserver/{task}");
    let deadline = std::time::Instant::now() + LIMIT;
    while !left_worktrees(&s.worktrees).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worktree was not cleaned up\n{}",
            logs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        git(&s.repo, &["show", &format!("{branch}:done.txt")]),
        "committed"
    );
    assert_eq!(
        git(&s.repo, &["show", &format!("{branch}:wip.txt")]),
        "pending"
    );
    let log = git(&s.repo, &["log", "--format=%s", &branch]);
    assert!(log.contains("agent commit"), "{log}");
    sigterm(host.0.id());
    assert_eq!(
        wait_exit(&mut host.0, LIMIT).await.and_then(|s| s.code()),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worktree_base_inside_the_repository_is_refused_before_registering() {
    let llm = FakeLlm::start().await.expect("fake LLM");
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let mut s = setup(&llm.url());
    s.worktrees = s.repo.join("worktrees");
    let (mut host, logs) = start_host(&s, &server.url());
    let status = wait_exit(&mut host.0, LIMIT).await;
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    // The reader thread may still be copying the last lines.
    let wanted = "--worktree-dir DIR outside the repository, or --isolation none";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !logs.lock().unwrap().contains(wanted) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = logs.lock().unwrap().clone();
    assert!(
        logs.contains("--worktree-dir DIR outside the repository, or --isolation none"),
        "{logs}"
    );
    assert!(mock.sandboxes().is_empty(), "nothing was registered");
    assert!(!s.worktrees.exists(), "nothing was created");
}
