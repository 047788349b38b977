//! Out-of-process native plugins (issue 15, item 14): with `isolation = "process"` the library
//! runs in an `agentserver plugin-host` child per task, so a plugin that segfaults, aborts or
//! calls `exit()` fails only its task (a system failure naming the signal or status) and the
//! host goes on to the next task; a plugin that ignores cancellation is killed; the user's
//! config can choose the mode too.

use crate::support::plugins as plugins_support;
use crate::support::run as support_run;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentserver::plugins;
use agentserver_mock::{MockConfig, MockServer};
use agentserver_plugin_api::{CancellationToken, FailureKind, TaskStatus};
use plugins_support::{build_misbehaving_plugin, options, run, task, write_plugin};
use support_run::registered_sandbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_out_of_process_plugin_fails_only_its_task() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let tmp = tempfile::tempdir().unwrap();
    let lib = build_misbehaving_plugin(tmp.path(), "libcrashy.so");
    let plugin_root = tmp.path().join("plugins");
    write_plugin(
        &plugin_root,
        "crashy",
        "native",
        &lib,
        "1.0.0",
        "isolation = \"process\"\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args(["run", "--backend", "crashy", "--allow-native", "crashy"])
        .args(["--skip-open-browser", "--poll-interval", "0.2"])
        .arg("--plugin-dir")
        .arg(&plugin_root)
        .arg("--server")
        .arg(server.url())
        .current_dir(tmp.path())
        .env("AGENTSERVER_HOME", tmp.path().join("state"))
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start agentserver");
    let sandbox = registered_sandbox(&mock).await;

    let run_task = |prompt: &'static str| {
        let mock = mock.clone();
        let sandbox = sandbox.id.clone();
        async move {
            let id = mock.create_task(&sandbox, prompt);
            mock.wait_task_final(&id, Duration::from_secs(30))
                .await
                .expect("task exists")
        }
    };

    // The plugin runs in another process than the host.
    let record = run_task("pid").await;
    assert_eq!(record.status, "completed", "{:?}", record.status_updates);
    let pid: u32 = record
        .result
        .as_ref()
        .unwrap()
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(pid, child.id(), "the plugin ran inside the host");

    for (prompt, expected) in [
        ("segfault", "SIGSEGV"),
        ("abort", "SIGABRT"),
        ("exit", "exited with status 3"),
    ] {
        let record = run_task(prompt).await;
        assert_eq!(
            record.status, "failed",
            "{prompt}: {:?}",
            record.status_updates
        );
        let body = &record.final_updates()[0].body;
        let reason = body["failure_reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(expected) && reason.contains("system error"),
            "{prompt}: {body}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the host died with the plugin ({prompt})"
        );
        // The next task gets a fresh process and works.
        let record = run_task("hello").await;
        assert_eq!(
            record.status, "completed",
            "after {prompt}: {:?}",
            record.status_updates
        );
        assert_eq!(record.result, Some(serde_json::json!("ok: hello")));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Options that run out-of-process plugins with the built `agentserver` binary (the test
/// binary is not one).
fn process_options(tmp: &std::path::Path) -> plugins::PluginOptions {
    let mut options = options(&tmp.join("state"), &tmp.join("plugins"));
    options.plugin_host = Some(env!("CARGO_BIN_EXE_agentserver").into());
    options.allow_native = vec!["crashy".into()];
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_chooses_process_isolation_and_a_stuck_plugin_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = build_misbehaving_plugin(tmp.path(), "libcrashy.so");
    write_plugin(
        &tmp.path().join("plugins"),
        "crashy",
        "native",
        &lib,
        "1.0.0",
        "",
    );
    let options = process_options(tmp.path());

    // Without a word from the manifest or the config, the plugin runs in-process.
    let backend = plugins::load_backend("crashy", &options).unwrap();
    let (outcome, _) = run(&backend, task("pid", tmp.path()), CancellationToken::new()).await;
    assert_eq!(outcome.result, Some(std::process::id().to_string()));

    // The user's config moves it out of process.
    std::fs::create_dir_all(tmp.path().join("state")).unwrap();
    std::fs::write(
        tmp.path().join("state/config.toml"),
        "[plugins.isolation]\ncrashy = \"process\"\n",
    )
    .unwrap();
    let backend = plugins::load_backend("crashy", &options).unwrap();
    let (outcome, events) = run(&backend, task("pid", tmp.path()), CancellationToken::new()).await;
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
    assert_ne!(outcome.result, Some(std::process::id().to_string()));
    assert!(events.is_empty());

    // A plugin that sleeps through cancellation is killed after the grace period (500 ms).
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        trigger.cancel();
    });
    let started = Instant::now();
    let (outcome, events) = run(&backend, task("sleep", tmp.path()), cancel).await;
    assert_eq!(outcome.status, TaskStatus::Cancelled, "{outcome:?}");
    assert!(
        outcome
            .failure_reason
            .as_deref()
            .is_some_and(|r| r.contains("killed")),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(events, [serde_json::json!({"type": "sleeping"})]);

    // A crash is a system failure naming the signal.
    let (outcome, _) = run(
        &backend,
        task("segfault", tmp.path()),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, TaskStatus::Failed);
    assert_eq!(outcome.failure_kind, Some(FailureKind::System));
    assert!(
        outcome
            .failure_reason
            .as_deref()
            .is_some_and(|r| r.contains("signal 11 (SIGSEGV")),
        "{outcome:?}"
    );

    // A 50 MB result crosses the pipe.
    let (outcome, _) = run(
        &backend,
        task(&format!("big-result {}", 50 << 20), tmp.path()),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, TaskStatus::Completed);
    assert_eq!(outcome.result.map(|r| r.len()), Some(50 << 20));
}
