//! Event floods and huge results behind the real `agentserver run` (issue 15, item 8): a
//! native and a WASM plugin emitting as fast as they can are held back by the host's bounded
//! event queue (backpressure: while the bridge stalls, only a bounded number of events is
//! accepted and not yet delivered), every event still arrives in order, and the final status
//! arrives; a 50 MB result comes back from both kinds of plugin promptly (what the intake does
//! with a result that size is its own business).
//!
//! The plugins log "flood tick" at WARN after every 100 accepted events; the tests count those
//! lines on the host's stderr to know how far the plugin got.

use crate::support::plugins as plugins_support;
use crate::support::run as support_run;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentserver::plugins::wasm::componentize::{WitSource, component_from_wat};
use agentserver_mock::{MockConfig, MockServer, MockState};
use plugins_support::{build_misbehaving_plugin, write_plugin};
use support_run::registered_sandbox;

/// Events a flooding plugin emits.
const FLOOD: usize = 100_000;

/// Accepted-but-undelivered events allowed while the bridge stalls: the task's event channel
/// (256, `IntakeConfig::event_buffer`), the forwarder's queue (400, `MAX_QUEUED_EVENTS` in
/// `host/src/intake/runner.rs`), the tick granularity (100) and some slack.
const MAX_BUFFERED: usize = 256 + 400 + 100 + 100;

/// A running `agentserver run` whose stderr is watched.
struct Host {
    child: Child,
    ticks: Arc<AtomicUsize>,
    tail: Arc<Mutex<Vec<String>>>,
}

impl Host {
    /// Starts the host with `file` installed as plugin `name` of `kind`.
    fn start(server: &MockServer, dir: &Path, name: &str, kind: &str, file: &Path) -> Self {
        let plugin_root = dir.join("plugins");
        write_plugin(&plugin_root, name, kind, file, "1.0.0", "");
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentserver"))
            .args(["run", "--backend", name, "--allow-native", name])
            .args(["--skip-open-browser", "--poll-interval", "0.2"])
            .arg("--plugin-dir")
            .arg(&plugin_root)
            .arg("--server")
            .arg(server.url())
            .current_dir(dir)
            .env("AGENTSERVER_HOME", dir.join("state"))
            .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
            .env(
                "RUST_LOG",
                std::env::var("TEST_HOST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agentserver");
        let ticks = Arc::new(AtomicUsize::new(0));
        let tail = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let (t, l) = (Arc::clone(&ticks), Arc::clone(&tail));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("flood tick") {
                    t.fetch_add(1, Ordering::SeqCst);
                } else {
                    let mut l = l.lock().unwrap();
                    l.push(line);
                    if l.len() > 50 {
                        l.remove(0);
                    }
                }
            }
        });
        Self { child, ticks, tail }
    }

    /// Events the plugin has had accepted so far (to the nearest 100 below).
    fn accepted(&self) -> usize {
        self.ticks.load(Ordering::SeqCst) * 100
    }

    fn stderr(&self) -> String {
        self.tail.lock().unwrap().join("\n")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Events the bridge has received for `task`.
fn delivered(mock: &MockState, task: &str) -> usize {
    mock.task(task)
        .and_then(|t| t.session_id)
        .map_or(0, |sid| mock.bridge_worker_events(&sid).len())
}

/// Floods through `host`: once events flow, the bridge stalls for 4 s; meanwhile the plugin
/// may get only a bounded number of events accepted. Then everything arrives, and the final
/// status says the plugin's emits were all accepted.
async fn flood_is_held_back(server: &MockServer, host: &Host, prompt: &str, result: &str) {
    let mock = server.state();
    let sandbox = registered_sandbox(&mock).await;
    let task = mock.create_task(&sandbox.id, prompt);
    assert!(
        mock.wait_until(Duration::from_secs(30), |_| host.accepted() > 0)
            .await,
        "the plugin never emitted: {}",
        host.stderr()
    );
    mock.stall(Duration::from_secs(4));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let accepted = host.accepted();
    let delivered_now = delivered(&mock, &task);
    assert!(
        accepted < FLOOD,
        "the plugin emitted all {FLOOD} events while the bridge stalled: nothing held it back"
    );
    assert!(
        accepted.saturating_sub(delivered_now) <= MAX_BUFFERED,
        "{accepted} events accepted but only {delivered_now} delivered: more than \
         {MAX_BUFFERED} buffered"
    );

    let record = mock
        .wait_task_final(&task, Duration::from_secs(120))
        .await
        .expect("task exists");
    assert_eq!(
        record.status,
        "completed",
        "{:?}\n{}",
        record.status_updates,
        host.stderr()
    );
    assert_eq!(record.result, Some(serde_json::json!(result)));
    let events = mock.bridge_worker_events(record.session_id.as_deref().unwrap());
    assert_eq!(events.len(), FLOOD, "every accepted event is delivered");
    if events[0].get("i").is_some() {
        assert!(
            events.iter().enumerate().all(|(i, e)| e["i"] == i),
            "events arrive in order"
        );
    }
}

/// Runs a task whose result is 50 MiB through the plugin backend itself (not the intake,
/// which caps result size separately): it ends promptly with the whole result.
async fn big_result_comes_back(dir: &Path, name: &str, kind: &str, file: &Path, prompt: &str) {
    let plugin_root = dir.join("plugins");
    write_plugin(&plugin_root, name, kind, file, "1.0.0", "");
    let mut options = plugins_support::options(&dir.join("state"), &plugin_root);
    options.allow_native = vec![name.into()];
    let backend = agentserver::plugins::load_backend(name, &options).expect("loads");
    let started = std::time::Instant::now();
    let (outcome, _) = plugins_support::run(
        &backend,
        plugins_support::task(prompt, dir),
        agentserver_plugin_api::CancellationToken::new(),
    )
    .await;
    assert_eq!(
        outcome.status,
        agentserver_plugin_api::TaskStatus::Completed,
        "{:?}",
        outcome.failure_reason
    );
    assert_eq!(outcome.result.map(|r| r.len()), Some(50 << 20));
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_native_plugin_is_held_back_and_gets_its_final_status() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let lib = build_misbehaving_plugin(tmp.path(), "libflood.so");
    let host = Host::start(&server, tmp.path(), "flood-c", "native", &lib);
    flood_is_held_back(
        &server,
        &host,
        &format!("flood {FLOOD}"),
        &format!("flooded {FLOOD}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_wasm_plugin_is_held_back_and_gets_its_final_status() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let wasm = flood_component(tmp.path());
    let host = Host::start(&server, tmp.path(), "flood-wasm", "wasm", &wasm);
    flood_is_held_back(&server, &host, "flood", "flooded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_result_from_a_native_plugin_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = build_misbehaving_plugin(tmp.path(), "libbig.so");
    let prompt = format!("big-result {}", 50 << 20);
    big_result_comes_back(tmp.path(), "big-c", "native", &lib, &prompt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_result_from_a_wasm_plugin_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let wasm = flood_component(tmp.path());
    big_result_comes_back(tmp.path(), "big-wasm", "wasm", &wasm, "big-result").await;
}

/// A component that, for the prompt "flood", emits `{"type":"flood"}` [`FLOOD`] times (logging
/// "flood tick" at WARN every 100 accepted) and completes with "flooded"; for "big-result"
/// completes with 50 MiB of `x`; otherwise completes with "ok".
fn flood_component(dir: &Path) -> PathBuf {
    let wat = format!(
        r#"(module
  (import "agentserver:backend/host@1.0.0" "emit-event" (func $emit (param i32 i32) (result i32)))
  (import "agentserver:backend/host@1.0.0" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (data (i32.const 16) "flood")
  (data (i32.const 32) "{{\"type\":\"flood\"}}")
  (data (i32.const 64) "flood tick")
  (data (i32.const 80) "flooded")
  (data (i32.const 96) "ok")
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
  (func $completed (param $ptr i32) (param $len i32) (result i32)
    (memory.fill (i32.const 1088) (i32.const 0) (i32.const 56))
    (i32.store8 (i32.const 1092) (i32.const 1))
    (i32.store (i32.const 1096) (local.get $ptr)) (i32.store (i32.const 1100) (local.get $len))
    (i32.const 1088))
  (func (export "execute") (param $id i32) (param $idl i32) (param $p i32) (param $pl i32) (param i32 i32 i32 f64 i32 i32 i32 i32) (result i32)
    (local $i i32) (local $buf i32)
    (if (i32.eq (local.get $pl) (i32.const 10))
      (then
        (local.set $buf (call $realloc (i32.const 0) (i32.const 0) (i32.const 1) (i32.const {big})))
        (memory.fill (local.get $buf) (i32.const 120) (i32.const {big}))
        (return (call $completed (local.get $buf) (i32.const {big})))))
    (if (i32.ne (local.get $pl) (i32.const 5))
      (then (return (call $completed (i32.const 96) (i32.const 2)))))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (i32.const {FLOOD})))
      (br_if $done (i32.eqz (call $emit (i32.const 32) (i32.const 16))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (if (i32.eqz (i32.rem_u (local.get $i) (i32.const 100)))
        (then (call $log (i32.const 3) (i32.const 64) (i32.const 10))))
      (br $next)))
    (call $completed (i32.const 80) (i32.const 7)))
)"#,
        big = 50 << 20,
    );
    let bytes = component_from_wat(&wat, &WitSource::default()).expect("fixture builds");
    let path = dir.join("flood.wasm");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The whole path for a 50 MiB result (it never got a final status before): through the real
/// host and the intake to the server, which gets one final status with the result cut to the
/// documented cap (`MAX_RESULT_BYTES`) and its marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_result_through_the_host_gets_one_final_status_within_the_cap() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let tmp = tempfile::tempdir().unwrap();
    let lib = build_misbehaving_plugin(tmp.path(), "libbig.so");
    let host = Host::start(&server, tmp.path(), "big-c", "native", &lib);
    assert!(
        mock.wait_until(Duration::from_secs(20), |s| !s.sandboxes().is_empty())
            .await,
        "the host never registered: {}",
        host.stderr()
    );
    let sandbox = mock.sandboxes()[0].clone();
    let task = mock.create_task(&sandbox.id, &format!("big-result {}", 50 << 20));
    let record = mock
        .wait_task_final(&task, Duration::from_secs(60))
        .await
        .expect("task exists");
    assert_eq!(record.status, "completed", "{}", host.stderr());
    assert_eq!(record.final_updates().len(), 1);
    let result = record.result.unwrap();
    let result = result.as_str().unwrap();
    let cap = agentserver::intake::client::MAX_RESULT_BYTES;
    assert!(result.len() <= cap + 100, "{}", result.len());
    assert!(
        result.ends_with(&format!(
            "[cut by the agentserver host: {cap} of {} bytes]",
            50 << 20
        )),
        "{}",
        &result[result.len() - 80..]
    );
}
