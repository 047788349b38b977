//! Native plugins: the Rust example (through the plugin-api macro) and the C example (built
//! here with the system C compiler against `agentserver_plugin.h`), loaded through discovery
//! and the dispatcher's registry, plus the faults the loader must refuse.

use crate::support::plugins as plugins_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentserver::dispatch::{BackendRegistry, BackendSpec};
use agentserver::plugins::{self, PluginError};
use agentserver_plugin_api::{CancellationToken, FailureKind, SessionType, TaskStatus};
use plugins_support::*;
use serde_json::json;

fn registry(options: &plugins::PluginOptions) -> BackendRegistry {
    let mut registry = BackendRegistry::new();
    let problems = plugins::register_all(&mut registry, options);
    assert!(problems.is_empty(), "{problems:?}");
    registry
}

#[tokio::test]
async fn rust_example_runs_through_the_dispatcher() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("plugins");
    write_plugin(
        &root,
        "native-rust-example",
        "native",
        &native_rust_example(),
        "1.0.0",
        "",
    );
    let mut options = options(&tmp.path().join("state"), &root);
    options.allow_native = vec!["native-rust-example".into()];

    let registry = registry(&options);
    assert_eq!(
        registry.session_type("native-rust-example"),
        Some(SessionType::Custom)
    );
    let backend = registry
        .resolve("native-rust-example", &BackendSpec::default())
        .unwrap();
    assert_eq!(backend.info().session_type, SessionType::Custom);
    assert_eq!(backend.info().name, "native-rust-example");

    let (outcome, events) = run(
        &backend,
        task("hello big world", tmp.path()),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
    assert_eq!(outcome.result.as_deref(), Some("world big hello"));
    assert_eq!(outcome.num_turns, Some(1));
    assert_eq!(
        events,
        vec![
            json!({"type": "started", "task_id": "task_test"}),
            json!({"type": "echo", "index": 0, "word": "hello"}),
            json!({"type": "echo", "index": 1, "word": "big"}),
            json!({"type": "echo", "index": 2, "word": "world"}),
        ]
    );
}

#[tokio::test]
async fn native_plugins_need_the_users_permission() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("plugins");
    let state = tmp.path().join("state");
    write_plugin(
        &root,
        "native-rust-example",
        "native",
        &native_rust_example(),
        "1.0.0",
        "",
    );
    let options = options(&state, &root);

    let err = plugins::load_backend("native-rust-example", &options)
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::NativeNotAllowed { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("--allow-native native-rust-example"),
        "{text}"
    );
    assert!(text.contains("config.toml"), "{text}");

    // Listing it in the config file is enough.
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("config.toml"),
        "[plugins]\nallow_native = [\"native-rust-example\"]\n",
    )
    .unwrap();
    let backend = plugins::load_backend("native-rust-example", &options).unwrap();
    assert_eq!(backend.info().name, "native-rust-example");
}

#[tokio::test]
async fn a_panicking_plugin_fails_the_task_and_the_host_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("plugins");
    write_plugin(
        &root,
        "native-rust-example",
        "native",
        &native_rust_example(),
        "1.0.0",
        "",
    );
    let mut options = options(&tmp.path().join("state"), &root);
    options.allow_native = vec!["native-rust-example".into()];
    let backend = plugins::load_backend("native-rust-example", &options).unwrap();

    let (outcome, _) = run(
        &backend,
        task("panic", tmp.path()),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, TaskStatus::Failed);
    assert_eq!(outcome.failure_kind, Some(FailureKind::System));
    let reason = outcome.failure_reason.unwrap();
    assert!(reason.contains("panicked"), "{reason}");
    assert!(reason.contains("asked to panic"), "{reason}");

    // Same backend, same library: still serving.
    let (outcome, events) = run(
        &backend,
        task("still here", tmp.path()),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.result.as_deref(), Some("here still"));
    assert_eq!(events.len(), 3);
}

#[tokio::test]
async fn cancellation_reaches_the_plugin_through_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("plugins");
    write_plugin(
        &root,
        "native-rust-example",
        "native",
        &native_rust_example(),
        "1.0.0",
        "",
    );
    let mut options = options(&tmp.path().join("state"), &root);
    options.allow_native = vec!["native-rust-example".into()];
    let backend = plugins::load_backend("native-rust-example", &options).unwrap();

    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let (sink, mut rx) = agentserver_plugin_api::EventSink::channel(8);
    let run = {
        let backend = Arc::clone(&backend);
        tokio::spawn(async move {
            backend
                .execute(task("wait-for-cancel", tmp.path()), sink, cancel)
                .await
        })
    };
    // Cancel once the plugin is inside its loop.
    let first = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(first.as_json().contains("waiting"));
    trigger.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.status, TaskStatus::Cancelled, "{outcome:?}");
    assert_eq!(
        outcome.failure_reason.as_deref(),
        Some("cancelled by the host")
    );
}

#[tokio::test]
async fn a_native_deadline_fails_the_task() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("plugins");
    write_plugin(
        &root,
        "native-rust-example",
        "native",
        &native_rust_example(),
        "1.0.0",
        "",
    );
    let mut options = options(&tmp.path().join("state"), &root);
    options.allow_native = vec!["native-rust-example".into()];
    options.task_timeout = Some(Duration::from_millis(300));
    let backend = plugins::load_backend("native-rust-example", &options).unwrap();
    let started = Instant::now();
    let (outcome, _) = run(
        &backend,
        task("wait-for-cancel", tmp.path()),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, TaskStatus::Failed, "{outcome:?}");
    assert!(
        outcome
            .failure_reason
            .unwrap()
            .contains("deadline of 300 ms")
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn c_example_proves_the_abi() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = build_c_plugin(tmp.path(), "libecho_c.so", &[]);
    let root = tmp.path().join("plugins");
    write_plugin(&root, "native-c-example", "native", &lib, "1.0.0", "");
    let mut options = options(&tmp.path().join("state"), &root);
    options.allow_native = vec!["native-c-example".into()];

    let plugin = plugins::find("native-c-example", &options).unwrap();
    let loaded = plugins::load_plugin(&plugin, &options).unwrap();
    assert_eq!(loaded.api_version, "1.0.0");
    assert_eq!(loaded.description.name, "native-c-example");

    let registry = registry(&options);
    let backend = registry
        .resolve("native-c-example", &BackendSpec::default())
        .unwrap();
    let (outcome, events) = run(
        &backend,
        task("hello", tmp.path()),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
    assert_eq!(outcome.result.as_deref(), Some("C saw 5 bytes"));
    assert_eq!(outcome.num_turns, Some(1));
    assert_eq!(
        events,
        vec![
            json!({"type": "started", "language": "c"}),
            json!({"type": "char_count", "count": 5}),
        ]
    );

    let (outcome, _) = run(&backend, task("fail", tmp.path()), CancellationToken::new()).await;
    assert_eq!(outcome.status, TaskStatus::Failed);
    assert_eq!(outcome.failure_kind, Some(FailureKind::User));
    assert_eq!(outcome.failure_reason.as_deref(), Some("asked to fail"));

    let (outcome, _) = run(&backend, task("null", tmp.path()), CancellationToken::new()).await;
    assert_eq!(outcome.status, TaskStatus::Failed);
    assert_eq!(outcome.failure_kind, Some(FailureKind::System));
    assert!(outcome.failure_reason.unwrap().contains("NULL"));

    // Several tasks at once on the same library.
    let runs: Vec<_> = (0..4)
        .map(|i| {
            let backend = Arc::clone(&backend);
            let dir = tmp.path().to_owned();
            tokio::spawn(async move {
                run(
                    &backend,
                    task(&"x".repeat(i + 1), &dir),
                    CancellationToken::new(),
                )
                .await
            })
        })
        .collect();
    for (i, handle) in runs.into_iter().enumerate() {
        let (outcome, _) = handle.await.unwrap();
        assert_eq!(outcome.result, Some(format!("C saw {} bytes", i + 1)));
    }
}

fn allowed_c_plugin(
    tmp: &std::path::Path,
    name: &str,
    defines: &[&str],
    api: &str,
) -> plugins::PluginOptions {
    let lib = build_c_plugin(tmp, &format!("lib{name}.so"), defines);
    let root = tmp.join("plugins");
    write_plugin(&root, name, "native", &lib, api, "");
    let mut options = options(&tmp.join("state"), &root);
    options.allow_native = vec![name.into()];
    options
}

#[test]
fn wrong_abi_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let options = allowed_c_plugin(tmp.path(), "bad-abi", &["EXAMPLE_ABI_VERSION=99"], "1.0.0");
    let err = plugins::load_backend("bad-abi", &options).err().unwrap();
    assert!(
        matches!(
            err,
            PluginError::AbiMismatch {
                found: 99,
                expected: 1,
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("C ABI version 99") && text.contains("C ABI version 1"),
        "{text}"
    );
}

#[test]
fn missing_entry_symbol_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let options = allowed_c_plugin(tmp.path(), "no-entry", &["EXAMPLE_NO_ENTRY"], "1.0.0");
    let err = plugins::load_backend("no-entry", &options).err().unwrap();
    assert!(matches!(err, PluginError::MissingEntry { .. }), "{err}");
    assert!(
        err.to_string().contains("agentserver_plugin_entry"),
        "{err}"
    );
}

#[test]
fn truncated_library_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = build_c_plugin(tmp.path(), "libfull.so", &[]);
    let bytes = std::fs::read(&lib).unwrap();
    let truncated = tmp.path().join("libtruncated.so");
    let kept = bytes.len() / 3;
    std::fs::write(&truncated, &bytes[..kept]).unwrap();
    let root = tmp.path().join("plugins");
    write_plugin(&root, "truncated", "native", &truncated, "1.0.0", "");
    let mut options = options(&tmp.path().join("state"), &root);
    options.allow_native = vec!["truncated".into()];
    let err = plugins::load_backend("truncated", &options).err().unwrap();
    assert!(matches!(err, PluginError::NativeLoad { .. }), "{err}");
    // The message names the file and says, in words, what is wrong with it and what to do:
    // our own ELF check caught it (not a loader crash or a cryptic dlopen error).
    let text = err.to_string();
    assert!(text.contains("libtruncated.so"), "{text}");
    assert!(text.contains("cannot load native plugin library"), "{text}");
    assert!(
        text.contains(&format!("truncated file ({kept} bytes)")),
        "the message says the file is truncated and how big it is: {text}"
    );
    assert!(text.contains("lies past its end"), "{text}");
    assert!(
        text.contains("incomplete") && text.contains("rebuild"),
        "the message tells the user what to do: {text}"
    );
}

#[tokio::test]
async fn c_example_wait_for_cancel_returns_cancelled_through_the_abi() {
    let tmp = tempfile::tempdir().unwrap();
    let mut options = allowed_c_plugin(tmp.path(), "native-c-example", &[], "1.0.0");
    // A grace far longer than the plugin needs: an outcome within it can only be the plugin's
    // own, returned because `is_cancelled` said so (the host's abandonment reason differs).
    options.cancel_grace = Duration::from_secs(20);
    let backend = plugins::load_backend("native-c-example", &options).unwrap();

    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let (sink, mut rx) = agentserver_plugin_api::EventSink::channel(8);
    let workdir = tmp.path().to_owned();
    let run = {
        let backend = Arc::clone(&backend);
        tokio::spawn(async move {
            backend
                .execute(task("wait-for-cancel", &workdir), sink, cancel)
                .await
        })
    };
    // Cancel once the plugin is inside its polling loop (it emits `waiting` first).
    let first = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("the plugin started waiting")
        .expect("an event");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(first.as_json()).unwrap(),
        json!({"type": "waiting"})
    );
    let cancelled_at = Instant::now();
    trigger.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the task ended")
        .unwrap();
    let took = cancelled_at.elapsed();
    assert_eq!(outcome.status, TaskStatus::Cancelled, "{outcome:?}");
    // The C plugin's own words: it saw the flag and returned, it was not abandoned.
    assert_eq!(
        outcome.failure_reason.as_deref(),
        Some("cancelled by the host"),
        "{outcome:?}"
    );
    // Promptly: the plugin polls every millisecond, its own loop would run for 60 s.
    assert!(
        took < Duration::from_secs(5),
        "the plugin took {took:?} to notice the cancellation"
    );
}

#[test]
fn another_api_major_is_refused_naming_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    // The library says 2.0.0 although its manifest claims 1.0.0: the vtable wins.
    let opts = allowed_c_plugin(
        tmp.path(),
        "api-two",
        &["EXAMPLE_API_VERSION=\"2.0.0\""],
        "1.0.0",
    );
    let err = plugins::load_backend("api-two", &opts).err().unwrap();
    match &err {
        PluginError::IncompatibleApi {
            plugin_version,
            host_version,
            ..
        } => {
            assert_eq!(plugin_version, "2.0.0");
            assert_eq!(host_version, "1.0.0");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("2.0.0") && err.to_string().contains("1.0.0"));

    // A manifest that declares another major is refused before the library is touched.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("plugins");
    let missing = tmp.path().join("libnothing.so");
    std::fs::write(&missing, b"not a library").unwrap();
    write_plugin(&root, "manifest-two", "native", &missing, "2.1.0", "");
    let mut options = options(&tmp.path().join("state"), &root);
    options.allow_native = vec!["manifest-two".into()];
    let err = plugins::load_backend("manifest-two", &options)
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::IncompatibleApi { .. }), "{err}");
}
