//! WASM component plugins: the bundled example (built from WAT at run time) through install,
//! discovery and the dispatcher, and the sandbox's faults: deadline, memory cap, file system
//! confinement, environment and HTTP grants, cancellation, API version checks, the cache.
//!
//! The fixtures are WebAssembly text following the canonical ABI by hand, turned into
//! components with `wat` + `wit-component` (no wasm32 toolchain exists on this machine).

use crate::support::plugins as plugins_support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentserver::dispatch::{BackendRegistry, BackendSpec};
use agentserver::plugins::wasm::componentize::{WitSource, component_from_wat};
use agentserver::plugins::wasm::{self, ComponentSettings, bundled};
use agentserver::plugins::{self, Permissions, PluginError};
use agentserver_plugin_api::wit::BACKEND_V1;
use agentserver_plugin_api::{Backend, CancellationToken, FailureKind, TaskStatus};
use plugins_support::*;
use serde_json::json;

/// Memory, allocator, `describe` and an `$outcome` helper shared by the fixtures.
///
/// `$outcome(status, text_ptr, text_len, turns_tag, turns)`: status 0 puts the text in
/// `result`, any other status in `failure-reason`; `num-turns` carries a number to check.
const PRELUDE: &str = r#"
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (data (i32.const 16) "probe")
  (func $realloc (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $new_size i32) (result i32)
    (local $ptr i32) (local $end i32) (local $have i32)
    (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $ptr) (local.get $new_size)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then (if (i32.eq (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535)) (i32.const 16)))
                        (i32.const -1))
              (then unreachable))))
    (global.set $heap (local.get $end))
    (if (local.get $old) (then (memory.copy (local.get $ptr) (local.get $old) (local.get $old_size))))
    (local.get $ptr))
  (func (export "describe") (result i32)
    (i32.store (i32.const 1024) (i32.const 16)) (i32.store (i32.const 1028) (i32.const 5))
    (i32.store (i32.const 1032) (i32.const 16)) (i32.store (i32.const 1036) (i32.const 0))
    (i32.store (i32.const 1040) (i32.const 16)) (i32.store (i32.const 1044) (i32.const 0))
    (i32.const 1024))
  (func $outcome (param $status i32) (param $ptr i32) (param $len i32) (param $tt i32) (param $turns i32) (result i32)
    (memory.fill (i32.const 1088) (i32.const 0) (i32.const 56))
    (i32.store8 (i32.const 1088) (local.get $status))
    (if (i32.eqz (local.get $status))
      (then (i32.store8 (i32.const 1092) (i32.const 1))
            (i32.store (i32.const 1096) (local.get $ptr)) (i32.store (i32.const 1100) (local.get $len)))
      (else (i32.store8 (i32.const 1104) (i32.const 1))
            (i32.store (i32.const 1108) (local.get $ptr)) (i32.store (i32.const 1112) (local.get $len))))
    (i32.store8 (i32.const 1120) (local.get $tt))
    (i32.store (i32.const 1124) (local.get $turns))
    (i32.const 1088))
"#;

/// The flattened `execute(task)` signature.
const EXECUTE: &str = r#"(func (export "execute") (param $id i32) (param $idl i32) (param $p i32) (param $pl i32) (param i32 i32 i32 f64 i32 i32 i32 i32) (result i32)"#;

/// Loops for ever; with the prompt "poll" it polls `cancelled` and returns cancelled instead.
const LOOP_BODY: &str = r#"
  (import "agentserver:backend/host@1.0.0" "cancelled" (func $cancelled (result i32)))
  (data (i32.const 300) "stopped")
  EXECUTE
    (if (i32.eq (local.get $pl) (i32.const 4))
      (then
        (loop $poll (br_if $poll (i32.eqz (call $cancelled))))
        (return (call $outcome (i32.const 2) (i32.const 300) (i32.const 7) (i32.const 0) (i32.const 0)))))
    (loop $spin (br $spin))
    unreachable)
"#;

/// Grows its memory 1 MiB at a time until growth fails.
const MEMORY_BODY: &str = r#"
  EXECUTE
    (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    (call $outcome (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 0) (i32.const 0)))
"#;

/// Opens the path given as the prompt relative to the first preopened directory. Completed
/// "opened" on success; failed "open-at refused" with the WASI error code as num-turns.
const FS_BODY: &str = r#"
  (import "wasi:filesystem/preopens@0.2.12" "get-directories" (func $dirs (param i32)))
  (import "wasi:filesystem/types@0.2.12" "[method]descriptor.open-at" (func $open_at (param i32 i32 i32 i32 i32 i32 i32)))
  (data (i32.const 300) "no preopened directory")
  (data (i32.const 330) "opened")
  (data (i32.const 340) "open-at refused")
  EXECUTE
    (call $dirs (i32.const 2048))
    (if (i32.eqz (i32.load (i32.const 2052)))
      (then (return (call $outcome (i32.const 1) (i32.const 300) (i32.const 22) (i32.const 0) (i32.const 0)))))
    (call $open_at (i32.load (i32.load (i32.const 2048))) (i32.const 0) (local.get $p) (local.get $pl)
                   (i32.const 0) (i32.const 1) (i32.const 2064))
    (if (i32.eqz (i32.load8_u (i32.const 2064)))
      (then (return (call $outcome (i32.const 0) (i32.const 330) (i32.const 6) (i32.const 0) (i32.const 0)))))
    (call $outcome (i32.const 1) (i32.const 340) (i32.const 15) (i32.const 1) (i32.load8_u (i32.const 2068))))
"#;

/// Completes with the names of the environment variables it sees, comma-terminated, and
/// their count as num-turns.
const ENV_BODY: &str = r#"
  (import "wasi:cli/environment@0.2.12" "get-environment" (func $env (param i32)))
  EXECUTE
    (local $list i32) (local $len i32) (local $i i32) (local $buf i32) (local $n i32) (local $e i32)
    (call $env (i32.const 2048))
    (local.set $list (i32.load (i32.const 2048)))
    (local.set $len (i32.load (i32.const 2052)))
    (local.set $buf (call $realloc (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 4096)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
      (local.set $e (i32.add (local.get $list) (i32.mul (local.get $i) (i32.const 16))))
      (memory.copy (i32.add (local.get $buf) (local.get $n)) (i32.load (local.get $e)) (i32.load offset=4 (local.get $e)))
      (local.set $n (i32.add (local.get $n) (i32.load offset=4 (local.get $e))))
      (i32.store8 (i32.add (local.get $buf) (local.get $n)) (i32.const 44))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (call $outcome (i32.const 0) (local.get $buf) (local.get $n) (i32.const 1) (local.get $len)))
"#;

/// GETs the URL given as the prompt. Completed with the body and the status as num-turns, or
/// failed with the host's error text.
const HTTP_BODY: &str = r#"
  (import "agentserver:backend/http@1.0.0" "fetch" (func $fetch (param i32 i32 i32 i32 i32 i32 i32 i32 i32)))
  (data (i32.const 300) "GET")
  EXECUTE
    (call $fetch (i32.const 300) (i32.const 3) (local.get $p) (local.get $pl)
                 (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 2048))
    (if (i32.eqz (i32.load8_u (i32.const 2048)))
      (then (return (call $outcome (i32.const 0) (i32.load (i32.const 2064)) (i32.load (i32.const 2068))
                                   (i32.const 1) (i32.load16_u (i32.const 2052))))))
    (call $outcome (i32.const 1) (i32.load (i32.const 2052)) (i32.load (i32.const 2056)) (i32.const 0) (i32.const 0)))
"#;

/// A world with the WASI imports the fixtures use on top of the backend world.
const WASI_WORLD: &str = r#"
package test:probe;
world probe {
  include agentserver:backend/backend@1.0.0;
  import wasi:filesystem/preopens@0.2.12;
  import wasi:cli/environment@0.2.12;
}
"#;

fn fixture(body: &str) -> String {
    format!(
        "(module\n{}\n{PRELUDE}\n)",
        body.replace("EXECUTE", EXECUTE)
    )
}

fn build(body: &str) -> Vec<u8> {
    component_from_wat(&fixture(body), &WitSource::default()).expect("fixture builds")
}

fn build_with_wasi(body: &str) -> Vec<u8> {
    let wit = WitSource {
        extra: Some(WASI_WORLD),
        world: "probe",
        ..WitSource::default()
    };
    component_from_wat(&fixture(body), &wit).expect("fixture builds")
}

fn settings(name: &str) -> ComponentSettings {
    ComponentSettings {
        name: name.into(),
        version: "0.1.0".into(),
        permissions: Permissions::default(),
        asked_http: Vec::new(),
        memory_cap_bytes: 16 << 20,
        timeout: Duration::from_secs(20),
        cancel_grace: Duration::from_millis(300),
        cache_dir: None,
    }
}

fn load(bytes: &[u8], settings: &ComponentSettings) -> Arc<dyn Backend> {
    Arc::new(
        wasm::load_component(bytes, Path::new("fixture.wasm"), settings)
            .expect("fixture loads")
            .backend,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_example_installs_and_runs_through_the_dispatcher() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("wasm-example.wasm"),
        bundled::component_bytes().unwrap(),
    )
    .unwrap();
    std::fs::write(src.join("plugin.toml"), bundled::MANIFEST).unwrap();
    let state = tmp.path().join("state");
    let options = plugins::PluginOptions::with_state_dir(state.clone());
    let installed = plugins::install(&src, &options).unwrap();
    assert_eq!(installed.dir, state.join("plugins").join("wasm-example"));

    let mut registry = BackendRegistry::new();
    assert!(plugins::register_all(&mut registry, &options).is_empty());
    let backend = registry
        .resolve("wasm-example", &BackendSpec::default())
        .unwrap();
    assert_eq!(
        backend.info().session_type,
        agentserver_plugin_api::SessionType::Custom
    );
    let (outcome, events) = run(
        &backend,
        task("say \"hi\"", tmp.path()),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
    assert_eq!(outcome.result.as_deref(), Some("say \"hi\""));
    assert_eq!(outcome.num_turns, Some(1));
    assert_eq!(
        events,
        vec![
            json!({"type": "started", "language": "wat"}),
            json!({"type": "echo", "text": "say \"hi\""}),
        ]
    );
    // The no-op task: no events, empty result.
    let (outcome, events) = run(&backend, task("noop", tmp.path()), CancellationToken::new()).await;
    assert_eq!(outcome.result.as_deref(), Some(""));
    assert!(events.is_empty());

    // inspect-style load: describe and the cache.
    let plugin = plugins::find("wasm-example", &options).unwrap();
    let loaded = plugins::load_plugin(&plugin, &options).unwrap();
    assert_eq!(loaded.description.name, "wasm-example");
    assert_eq!(loaded.api_version, "1.0.0");
    assert_eq!(
        loaded.from_cache,
        Some(true),
        "the registry's load filled the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_example_backend_is_available_without_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut options = plugins::PluginOptions::with_state_dir(tmp.path().to_owned());
    let first = bundled::load(&options).unwrap();
    assert!(!first.from_cache);
    let second = bundled::load(&options).unwrap();
    assert!(
        second.from_cache,
        "second load reads the compiled component from the cache"
    );
    let cached: Vec<_> = std::fs::read_dir(options.cache_dir.as_ref().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(cached.len(), 1);
    options.cache_dir = None;
    let backend = bundled::backend(&options).unwrap();
    let (outcome, events) = run(
        &backend,
        task("hello", tmp.path()),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.result.as_deref(), Some("hello"));
    assert_eq!(events.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_at_its_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let mut settings = settings("loop");
    settings.timeout = Duration::from_millis(500);
    let backend = load(&build(LOOP_BODY), &settings);
    let started = Instant::now();
    let (outcome, _) = run(
        &backend,
        task("spin forever", tmp.path()),
        CancellationToken::new(),
    )
    .await;
    let elapsed = started.elapsed();
    eprintln!("infinite loop with a 500 ms deadline stopped after {elapsed:?}");
    assert_eq!(outcome.status, TaskStatus::Failed, "{outcome:?}");
    assert_eq!(outcome.failure_kind, Some(FailureKind::System));
    let reason = outcome.failure_reason.unwrap();
    assert!(reason.contains("deadline of 500 ms"), "{reason}");
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(600),
        "stopped {elapsed:?} after start, more than 100 ms past its 500 ms deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_is_seen_by_polling_and_enforced_by_interruption() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = load(&build(LOOP_BODY), &settings("loop"));

    // Cooperative: the guest polls `cancelled` and returns.
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        trigger.cancel();
    });
    let (outcome, _) = run(&backend, task("poll", tmp.path()), cancel).await;
    assert_eq!(outcome.status, TaskStatus::Cancelled, "{outcome:?}");
    assert_eq!(outcome.failure_reason.as_deref(), Some("stopped"));

    // Uncooperative: interrupted once the 300 ms grace period is over.
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        trigger.cancel();
    });
    let started = Instant::now();
    let (outcome, _) = run(&backend, task("spin forever", tmp.path()), cancel).await;
    assert_eq!(outcome.status, TaskStatus::Cancelled, "{outcome:?}");
    assert!(outcome.failure_reason.unwrap().contains("interrupted"));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_memory_past_the_cap_traps() {
    let tmp = tempfile::tempdir().unwrap();
    let mut settings = settings("memory");
    settings.memory_cap_bytes = 4 << 20;
    let backend = load(&build(MEMORY_BODY), &settings);
    let (outcome, _) = run(&backend, task("grow", tmp.path()), CancellationToken::new()).await;
    assert_eq!(outcome.status, TaskStatus::Failed, "{outcome:?}");
    let reason = outcome.failure_reason.unwrap();
    assert!(reason.contains("memory cap of 4 MiB"), "{reason}");
    // The next task gets a fresh store and the same cap.
    let (outcome, _) = run(&backend, task("grow", tmp.path()), CancellationToken::new()).await;
    assert_eq!(outcome.status, TaskStatus::Failed);
}

/// WASI `error-code` cases the refusals may map to (`access`, `not-permitted`, `no-entry`).
const ACCESS: u32 = 0;
const NO_ENTRY: u32 = 20;
const NOT_PERMITTED: u32 = 31;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_outside_the_preopened_workdir_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let workdir = tmp.path().join("work");
    std::fs::create_dir_all(&workdir).unwrap();
    std::fs::write(workdir.join("inside.txt"), "in").unwrap();
    std::fs::write(tmp.path().join("outside.txt"), "secret").unwrap();
    let mut settings = settings("fs");
    settings.permissions.workdir = true;
    let backend = load(&build_with_wasi(FS_BODY), &settings);

    let (outcome, _) = run(
        &backend,
        task("inside.txt", &workdir),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
    assert_eq!(outcome.result.as_deref(), Some("opened"));

    for path in ["../outside.txt", "/etc/passwd", "sub/../../outside.txt"] {
        let (outcome, _) = run(&backend, task(path, &workdir), CancellationToken::new()).await;
        assert_eq!(outcome.status, TaskStatus::Failed, "{path}: {outcome:?}");
        assert_eq!(
            outcome.failure_reason.as_deref(),
            Some("open-at refused"),
            "{path}"
        );
        let code = outcome.num_turns.unwrap();
        assert!(
            [ACCESS, NOT_PERMITTED, NO_ENTRY].contains(&code),
            "{path}: unexpected WASI error code {code}"
        );
    }

    // Without the workdir permission there is nothing to open at all.
    let mut settings = settings.clone();
    settings.permissions.workdir = false;
    let backend = load(&build_with_wasi(FS_BODY), &settings);
    let (outcome, _) = run(
        &backend,
        task("inside.txt", &workdir),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(
        outcome.failure_reason.as_deref(),
        Some("no preopened directory")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_asked_and_granted_env_vars_are_visible() {
    assert!(
        std::env::var_os("PATH").is_some(),
        "the test needs PATH set"
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("plugins");
    let file = tmp.path().join("env.wasm");
    std::fs::write(&file, build_with_wasi(ENV_BODY)).unwrap();
    write_plugin(
        &root,
        "env-probe",
        "wasm",
        &file,
        "1.0.0",
        "[permissions]\nenv = [\"PATH\", \"HOME\"]\n",
    );
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("config.toml"),
        "[plugins.grants.env-probe]\nenv = [\"PATH\", \"USER\"]\n",
    )
    .unwrap();
    let options = options(&state, &root);
    let plugin = plugins::find("env-probe", &options).unwrap();
    let loaded = plugins::load_plugin(&plugin, &options).unwrap();
    assert_eq!(loaded.effective_permissions.env, ["PATH"]);
    let (outcome, _) = run(
        &loaded.backend,
        task("env", tmp.path()),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.result.as_deref(), Some("PATH,"), "{outcome:?}");
    assert_eq!(outcome.num_turns, Some(1));
}

/// Builds its completed outcome first, then emits the same event twice and returns that
/// outcome, without another call or loop after the last emit (so no epoch check runs once it
/// returns). With a full event channel the second emit blocks in the host.
const LATE_RETURN_BODY: &str = r#"
  (import "agentserver:backend/host@1.0.0" "emit-event" (func $emit (param i32 i32) (result i32)))
  (data (i32.const 300) "{\"type\":\"late\"}")
  (data (i32.const 330) "done")
  EXECUTE
    (drop (call $outcome (i32.const 0) (i32.const 330) (i32.const 4) (i32.const 0) (i32.const 0)))
    (drop (call $emit (i32.const 300) (i32.const 15)))
    (drop (call $emit (i32.const 300) (i32.const 15)))
    (i32.const 1088))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_returning_on_its_own_after_its_deadline_fails_as_system() {
    let tmp = tempfile::tempdir().unwrap();
    let mut settings = settings("late");
    settings.timeout = Duration::from_millis(300);
    let backend = load(&build(LATE_RETURN_BODY), &settings);
    // Room for one event: the second emit waits until the events are read, past the deadline.
    let (sink, mut rx) = agentserver_plugin_api::EventSink::channel(1);
    let started = Instant::now();
    let call = tokio::spawn({
        let backend = Arc::clone(&backend);
        let task = task("late", tmp.path());
        async move { backend.execute(task, sink, CancellationToken::new()).await }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut events = 0;
    while rx.recv().await.is_some() {
        events += 1;
    }
    let outcome = call.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(events, 2, "the plugin ran to its own return");
    assert_eq!(outcome.status, TaskStatus::Failed, "{outcome:?}");
    assert_eq!(
        outcome.failure_kind,
        Some(FailureKind::System),
        "{outcome:?}"
    );
    let reason = outcome.failure_reason.unwrap();
    assert!(reason.contains("deadline of 300 ms"), "{reason}");
    assert_eq!(outcome.result, None);
}

/// Serves one fixed HTTP response per connection on 127.0.0.1.
async fn http_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "hello from the host side";
                let response = format!(
                    "HTTP/1.1 201 Created\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_fetch_needs_the_manifest_and_the_grant() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = http_server().await;
    let url = format!("http://127.0.0.1:{}/x", addr.port());
    let bytes = build(HTTP_BODY);

    let backend = load(&bytes, &settings("http"));
    let (outcome, _) = run(&backend, task(&url, tmp.path()), CancellationToken::new()).await;
    assert_eq!(outcome.status, TaskStatus::Failed, "{outcome:?}");
    assert!(outcome.failure_reason.unwrap().contains("not permitted"));

    let mut granted = settings("http");
    granted.permissions.http = vec!["127.0.0.1".into()];
    let backend = load(&bytes, &granted);
    let (outcome, _) = run(&backend, task(&url, tmp.path()), CancellationToken::new()).await;
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
    assert_eq!(outcome.result.as_deref(), Some("hello from the host side"));
    assert_eq!(outcome.num_turns, Some(201));
}

/// Answers every request with a 302 to `location`.
async fn redirect_server(location: String) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let location = location.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_redirects_never_leave_the_granted_hosts() {
    let tmp = tempfile::tempdir().unwrap();
    // The target answers 201, but it is on `localhost`, which is not granted.
    let target = http_server().await;
    let redirect = redirect_server(format!("http://localhost:{}/y", target.port())).await;
    let url = format!("http://127.0.0.1:{}/x", redirect.port());
    let mut granted = settings("http");
    granted.permissions.http = vec!["127.0.0.1".into()];
    let backend = load(&build(HTTP_BODY), &granted);
    let (outcome, _) = run(&backend, task(&url, tmp.path()), CancellationToken::new()).await;
    // The plugin sees the redirect itself, not the other host's answer.
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
    assert_eq!(outcome.num_turns, Some(302), "{outcome:?}");
}

#[test]
fn another_major_api_version_is_refused_before_compilation() {
    let tmp = tempfile::tempdir().unwrap();
    let v2 = BACKEND_V1.replace("@1.0.0", "@2.0.0");
    let wat = fixture(&LOOP_BODY.replace("@1.0.0", "@2.0.0"));
    let cache = tmp.path().join("cache");
    for api_version_section in [true, false] {
        let wit = WitSource {
            backend: &v2,
            api_version_section,
            ..WitSource::default()
        };
        let bytes = component_from_wat(&wat, &wit).unwrap();
        assert_eq!(
            wasm::component_api_version(&bytes, Path::new("v2.wasm")).unwrap(),
            "2.0.0"
        );
        let mut settings = settings("v2");
        settings.cache_dir = Some(cache.clone());
        let err = wasm::load_component(&bytes, Path::new("v2.wasm"), &settings).unwrap_err();
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
        assert!(!cache.exists(), "nothing was compiled or cached");
    }

    // `plugins install` refuses it too, even when the manifest lies.
    let wit = WitSource {
        backend: &v2,
        ..WitSource::default()
    };
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("v2.wasm"), component_from_wat(&wat, &wit).unwrap()).unwrap();
    std::fs::write(
        src.join("plugin.toml"),
        "name = \"v2\"\nversion = \"1.0.0\"\nkind = \"wasm\"\nfile = \"v2.wasm\"\napi_version = \"1.0.0\"\n",
    )
    .unwrap();
    let options = plugins::PluginOptions::with_state_dir(tmp.path().join("state"));
    let err = plugins::install(&src, &options).unwrap_err();
    assert!(matches!(err, PluginError::IncompatibleApi { .. }), "{err}");
    assert!(!tmp.path().join("state/plugins/v2").exists());
}

#[test]
fn core_modules_and_garbage_are_refused() {
    let core = wat::parse_str("(module)").unwrap();
    let err = wasm::component_api_version(&core, Path::new("core.wasm")).unwrap_err();
    assert!(err.to_string().contains("not a component"), "{err}");
    let err = wasm::component_api_version(b"\0asm garbage", Path::new("g.wasm")).unwrap_err();
    assert!(matches!(err, PluginError::WasmInvalid { .. }), "{err}");
    let bytes = bundled::component_bytes().unwrap();
    let err = wasm::component_api_version(&bytes[..bytes.len() / 2], Path::new("half.wasm"));
    assert!(err.is_err(), "a truncated component is refused");
}
