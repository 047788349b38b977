//! `agentserver run --backend opencode` as a user runs it, with the **real** `opencode serve`
//! (auto-started by the host on a port opencode chooses) talking to the fake LLM: the sandbox
//! registers as `opencode`, the agent info on the tunnel carries opencode's version, the
//! tunnel reaches opencode, a task runs in opencode and its translated events, final status
//! and output reach the mock; on SIGTERM the host exits 0 and the `opencode serve` it started
//! is stopped (nothing of it is left in the process table).
//!
//! The binary comes from `.npm-clis` (`bash scripts/install-test-deps.sh`, run by `.ci/run`);
//! when it is missing the test fails with that instruction.

use crate::support::run as support_run;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether a pid is a live process (not a zombie): the process owner's.
use agentserver_common::process::is_alive as alive;
use agentserver_integration::opencode_support::{offline_env, real_opencode, seed_home};
use agentserver_mock::fake_llm::{DEFAULT_TEXT, FakeLlm};
use agentserver_mock::{MockConfig, MockServer};
use serde_json::Value;
use support_run::{KillOnDrop, drain, sigterm, wait_exit};

/// Bound on anything that includes starting opencode (1.2–1.7 s alone, more on a busy
/// 2-core machine).
const LIMIT: Duration = Duration::from_secs(60);

/// `/proc/<pid>/stat` fields after the command name: state, ppid, pgrp.
fn proc_stat(pid: u32) -> Option<(char, u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Every live process: (pid, ppid, pgrp).
fn processes() -> Vec<(u32, u32, u32)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (state, ppid, pgrp) = proc_stat(pid)?;
            (state != 'Z' && state != 'X').then_some((pid, ppid, pgrp))
        })
        .collect()
}

/// The arguments a process was started with.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Live processes that belong to this test's opencode: in the group `pgid` or running in
/// `dir` (opencode and the tools it starts run in the work directory).
fn leftovers(pgid: u32, dir: &Path) -> Vec<(u32, Vec<String>)> {
    processes()
        .into_iter()
        .filter(|&(pid, _, pgrp)| {
            pgrp == pgid
                || std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir)
        })
        .map(|(pid, _, _)| (pid, cmdline(pid)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_the_real_opencode_serves_a_task_and_stops_opencode_on_sigterm() {
    let opencode = real_opencode();
    let llm = FakeLlm::start().await.expect("fake LLM");
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let dir = tempfile::tempdir().unwrap();
    let (state_dir, home, tmp) = (
        dir.path().join("state"),
        dir.path().join("home"),
        dir.path().join("tmp"),
    );
    for d in [&home, &tmp, &dir.path().join("work")] {
        std::fs::create_dir_all(d).unwrap();
    }
    let work = std::fs::canonicalize(dir.path().join("work")).unwrap();
    seed_home(&home).unwrap();
    let env = offline_env(&home, &tmp, &llm.openai_base_url());

    // The version the real binary reports, to compare with what reaches the server.
    let version = Command::new(&opencode)
        .arg("--version")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("opencode --version runs");
    assert!(version.status.success(), "{version:?}");
    let version = String::from_utf8(version.stdout).unwrap().trim().to_owned();
    assert!(!version.is_empty(), "opencode --version printed nothing");

    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args([
            "run",
            "--backend",
            "opencode",
            "--skip-open-browser",
            "--poll-interval",
            "0.2",
            "--opencode-port",
            "0",
        ])
        .arg("--server")
        .arg(server.url())
        .arg("--opencode-bin")
        .arg(&opencode)
        .current_dir(&work)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("AGENTSERVER_HOME", &state_dir)
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .env("RUST_LOG", "warn,agentserver_backend_opencode=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let host_pid = child.id();
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let mut child = KillOnDrop(child);
    let logs = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            stdout.lock().unwrap(),
            stderr.lock().unwrap()
        )
    };

    // Registration comes first (device login), then opencode starts, then the tunnel.
    assert!(
        mock.wait_until(LIMIT, |s| !s.sandboxes().is_empty()).await,
        "the host never registered\n{}",
        logs()
    );
    let sandbox = mock.sandboxes()[0].clone();
    assert_eq!(sandbox.sandbox_type, "opencode");
    assert!(
        mock.wait_until(LIMIT, |s| s
            .sandbox(&sandbox.id)
            .is_some_and(|sb| sb.agent_info.is_some()))
            .await,
        "no agent info arrived over the tunnel\n{}",
        logs()
    );
    let ready = started.elapsed();
    let info = mock.sandbox(&sandbox.id).unwrap().agent_info.unwrap();
    assert_eq!(
        info["opencode_version"],
        version,
        "agent info: {info}\n{}",
        logs()
    );
    assert_eq!(info["workdir"], work.display().to_string());

    // The host started exactly one `opencode serve` (its other children are probes of the
    // machine's tools), in its own process group.
    let children: Vec<(u32, Vec<String>)> = processes()
        .into_iter()
        .filter(|&(_, ppid, _)| ppid == host_pid)
        .map(|(pid, _, _)| (pid, cmdline(pid)))
        .collect();
    let servers: Vec<_> = children
        .iter()
        .filter(|(_, args)| args.first().is_some_and(|a| Path::new(a) == opencode))
        .collect();
    assert_eq!(servers.len(), 1, "children of the host: {children:?}");
    let (oc_pid, args) = servers[0].clone();
    assert_eq!(args.get(1).map(String::as_str), Some("serve"), "{args:?}");
    assert!(
        args.windows(2).any(|w| w == ["--port", "0"]),
        "started with the port of the command line: {args:?}"
    );
    assert_eq!(
        proc_stat(oc_pid).unwrap().2,
        oc_pid,
        "its own process group"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{oc_pid}/cwd")).unwrap(),
        work,
        "it runs in the work directory"
    );

    // The tunnel reaches that opencode (its port was read from its "listening" line).
    let health = tokio::time::timeout(
        LIMIT,
        mock.tunnel
            .open_http(&sandbox.id, "GET", "/global/health", vec![], vec![]),
    )
    .await
    .expect("answered in time")
    .expect("HTTP stream");
    assert_eq!(health.status, 200);
    let health: Value = serde_json::from_slice(&health.read_body().await.unwrap()).unwrap();
    assert_eq!(
        health,
        serde_json::json!({"healthy": true, "version": version})
    );

    // A task runs in opencode against the fake LLM.
    let task_started = Instant::now();
    let task_id = mock.create_task(&sandbox.id, "Say hello");
    let record = mock
        .wait_task_final(&task_id, LIMIT)
        .await
        .unwrap_or_else(|| panic!("the task got no final status\n{}", logs()));
    let task_time = task_started.elapsed();
    assert_eq!(record.status, "completed", "{record:?}\n{}", logs());
    assert_eq!(record.final_updates().len(), 1, "{record:?}");
    assert_eq!(record.result, Some(serde_json::json!(DEFAULT_TEXT)));
    assert!(
        !llm.requests().is_empty()
            && llm
                .requests()
                .iter()
                .all(|r| r.path.starts_with("/v1/chat/completions")),
        "opencode talked to the fake LLM only: {:?}",
        llm.requests().iter().map(|r| &r.path).collect::<Vec<_>>()
    );

    // Its translated events reached the bridge, in order, ending with the result.
    let session_id = record.session_id.clone().expect("a bridge session");
    let events = mock.bridge_worker_events(&session_id);
    let kinds: Vec<String> = events
        .iter()
        .map(|v| {
            let t = v["type"].as_str().unwrap_or("?");
            match v["subtype"].as_str() {
                Some(s) => format!("{t}/{s}"),
                None => t.to_owned(),
            }
        })
        .collect();
    let pos = |what: &str, pred: &dyn Fn(&Value) -> bool| {
        events
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("no {what} in {kinds:?}"))
    };
    let init = pos("init", &|v| v["type"] == "system" && v["subtype"] == "init");
    assert_eq!(events[init]["backend"], "opencode", "{}", events[init]);
    assert_eq!(events[init]["opencode_version"], version);
    assert_eq!(events[init]["cwd"], work.display().to_string());
    let text = pos("assistant text", &|v| {
        v["type"] == "assistant" && v["message"]["content"][0]["text"] == DEFAULT_TEXT
    });
    assert!(init < text, "{kinds:?}");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "result", "{kinds:?}");
    assert_eq!(last["subtype"], "success");
    assert_eq!(last["is_error"], false);
    assert_eq!(last["result"], DEFAULT_TEXT);
    let session = events[init]["session_id"]
        .as_str()
        .expect("an opencode session id");
    assert!(session.starts_with("ses"), "{session}");
    assert!(
        events.iter().all(|e| e["session_id"] == session),
        "every event names the opencode session: {events:?}"
    );
    assert!(
        !mock.bridge_log(&session_id).is_empty(),
        "the bridge logged the session"
    );

    // The server's output extraction finds the assistant's text.
    let detail: Value = reqwest::Client::new()
        .get(format!(
            "{}/api/agent/tasks/{task_id}?include_output=true",
            server.url()
        ))
        .bearer_auth(&sandbox.proxy_token)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["status"], "completed", "{detail}");
    assert_eq!(detail["result"], DEFAULT_TEXT, "{detail}");
    assert!(
        detail["output"]
            .as_str()
            .is_some_and(|o| o.contains(DEFAULT_TEXT)),
        "{detail}"
    );

    // SIGTERM: the intake drains, the host stops its opencode and exits 0.
    let stopping = Instant::now();
    sigterm(host_pid);
    let status = wait_exit(&mut child.0, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("agentserver did not exit after SIGTERM\n{}", logs()));
    let stop_time = stopping.elapsed();
    assert!(status.success(), "exit {status:?}\n{}", logs());
    // The host waited for its opencode: it is gone (reaped) the moment the host has exited,
    // and was stopped by the host, not by the parent-death signal.
    assert!(
        !alive(oc_pid),
        "opencode serve {oc_pid} outlived the host\n{}",
        logs()
    );
    let left = leftovers(oc_pid, &work);
    assert!(left.is_empty(), "left behind: {left:?}");
    // The output pipes close once nothing of the host is left.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stdout.lock().unwrap().contains("To resume this session") {
        assert!(Instant::now() < deadline, "{}", logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = stdout.lock().unwrap().clone();
    assert!(out.contains("Agent disconnected."), "{}", logs());
    assert!(
        out.contains(&format!(
            "To resume this session: agentserver run --backend opencode --resume {}",
            sandbox.id
        )),
        "{}",
        logs()
    );
    let err = stderr.lock().unwrap().clone();
    assert!(
        err.contains("stopping opencode serve"),
        "the host did not stop opencode itself\n{}",
        logs()
    );
    assert!(
        !err.contains("did not stop on SIGINT") && !err.contains("did not stop in time"),
        "opencode had to be killed\n{}",
        logs()
    );
    // The tunnel was closed normally.
    assert!(
        mock.wait_until(Duration::from_secs(5), |s| s
            .tunnel
            .connections(&sandbox.id)
            .iter()
            .all(|c| c.close_code == Some(1000)))
            .await,
        "the tunnel connection was not closed with 1000"
    );
    eprintln!(
        "timings: registered + opencode ready + agent info {ready:?}, task {task_time:?}, \
         SIGTERM to exit {stop_time:?}"
    );
}
