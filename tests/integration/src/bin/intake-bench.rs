//! Benchmark of the host's own overhead per task: the real intake against the in-process mock
//! with a no-op backend. Not a test; run it in release mode:
//!
//! ```text
//! cargo run --release -p agentserver-integration --bin intake-bench -- [--tasks 1000]
//!     [--no-bridge] [--events N] [--concurrency N] [--json]
//! ```
//!
//! Per task it measures (from the intake's own [`IntakeEvent`] timestamps):
//! - **poll → ack**: poll response received → final status accepted (2xx). With one task at
//!   a time this includes waiting behind the other tasks of the same poll (up to 5).
//! - **start → ack**: the task's turn comes → final status accepted: bridge setup, the backend
//!   call, event flush, `idle`, the durable outbox write (fsync) and the status `PUT`.
//!
//! and the throughput (tasks per second from the first poll to the last ack). The mock runs
//! in the same process and its request handling is included in the numbers. `--json` adds
//! one `BENCH-JSON {...}` line at the end (the rows `agentserver-bench` reads); its baseline is
//! one durable write on this disk, the floor of a task's *start → ack*.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentserver::intake::{Intake, IntakeConfig, IntakeEvent};
use agentserver::secret::Secret;
use agentserver_integration::test_backend::TestBackend;
use agentserver_mock::{MockConfig, MockServer};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Median time of the outbox's durable write pattern on this disk (for context).
fn fsync_cost(dir: &std::path::Path) -> Duration {
    use std::io::Write;
    let mut times: Vec<Duration> = (0..50)
        .map(|i| {
            let t0 = Instant::now();
            let tmp = dir.join(format!(".probe{i}.tmp"));
            let path = dir.join(format!("probe{i}.json"));
            let mut f = std::fs::File::create(&tmp).expect("probe file");
            f.write_all(&[b'x'; 300]).expect("write");
            f.sync_all().expect("fsync");
            drop(f);
            std::fs::rename(&tmp, &path).expect("rename");
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .expect("dir fsync");
            let d = t0.elapsed();
            let _ = std::fs::remove_file(&path);
            d
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tasks: usize = arg(&args, "--tasks", 1000);
    let events: usize = arg(&args, "--events", 0);
    let concurrency: usize = arg(&args, "--concurrency", 1);
    let bridge = !args.iter().any(|a| a == "--no-bridge");
    let json = args.iter().any(|a| a == "--json");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(bench(tasks, events, concurrency, bridge, json));
}

async fn bench(tasks: usize, events: usize, concurrency: usize, bridge: bool, json: bool) {
    let mock = MockServer::start(MockConfig {
        bridge_enabled: bridge,
        ..MockConfig::default()
    })
    .await
    .expect("mock starts");
    let state = mock.state();
    let sandbox = state.add_sandbox("bench", "custom");
    let prompt = if events == 0 {
        "noop".to_owned()
    } else {
        format!("events:{events} succeed")
    };
    for _ in 0..tasks {
        state.create_task(&sandbox.id, &prompt);
    }
    let home = tempfile::tempdir().expect("tempdir");
    let mut config = IntakeConfig::new(
        mock.url(),
        Secret::new(sandbox.proxy_token.clone()),
        sandbox.id.clone(),
        home.path(),
    );
    config.outbox_dir = home.path().join("outbox");
    config.max_concurrent_tasks = concurrency;
    let intake = Intake::new(config, Arc::new(TestBackend::new())).expect("intake");
    let handle = intake.handle();
    let mut rx = handle.subscribe();
    let run = tokio::spawn(intake.run());

    let mut polled: HashMap<String, Instant> = HashMap::new();
    let mut started: HashMap<String, Instant> = HashMap::new();
    let mut finished: HashMap<String, Instant> = HashMap::new();
    let mut start_to_outbox = Vec::with_capacity(tasks);
    let mut outbox_to_ack = Vec::with_capacity(tasks);
    let mut poll_to_ack = Vec::with_capacity(tasks);
    let mut start_to_ack = Vec::with_capacity(tasks);
    let mut first_poll: Option<Instant> = None;
    let mut last_ack = Instant::now();
    while poll_to_ack.len() < tasks {
        let ev = match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Ok(ev)) => ev,
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => panic!("no progress for 60 s ({} done)", poll_to_ack.len()),
        };
        match ev {
            IntakeEvent::Polled { task_id, at } => {
                first_poll.get_or_insert(at);
                polled.insert(task_id, at);
            }
            IntakeEvent::Started { task_id, at } => {
                started.insert(task_id, at);
            }
            IntakeEvent::Finished { task_id, at, .. } => {
                start_to_outbox.push(at - started[&task_id]);
                finished.insert(task_id, at);
            }
            IntakeEvent::StatusAcked { task_id, at } => {
                outbox_to_ack.push(at - finished[&task_id]);
                poll_to_ack.push(at - polled[&task_id]);
                start_to_ack.push(at - started[&task_id]);
                last_ack = at;
            }
            IntakeEvent::StatusDropped { task_id, .. } => panic!("status of {task_id} dropped"),
            _ => {}
        }
    }
    handle.drain();
    run.await.expect("join").expect("intake");
    let wall = last_ack - first_poll.expect("polled");
    poll_to_ack.sort();
    start_to_ack.sort();
    start_to_outbox.sort();
    outbox_to_ack.sort();
    let fsync = fsync_cost(home.path());
    println!(
        "intake-bench: {tasks} tasks, backend=no-op ({} events/task), bridge={}, concurrency={concurrency}",
        if events == 0 { 0 } else { events + 2 },
        if bridge { "on" } else { "off" },
    );
    println!(
        "  poll -> ack   median {}  p99 {}  max {}",
        ms(percentile(&poll_to_ack, 0.5)),
        ms(percentile(&poll_to_ack, 0.99)),
        ms(*poll_to_ack.last().unwrap_or(&Duration::ZERO)),
    );
    println!(
        "  start -> ack  median {}  p99 {}  max {}",
        ms(percentile(&start_to_ack, 0.5)),
        ms(percentile(&start_to_ack, 0.99)),
        ms(*start_to_ack.last().unwrap_or(&Duration::ZERO)),
    );
    println!(
        "    of which start -> outbox written  median {}  p99 {}",
        ms(percentile(&start_to_outbox, 0.5)),
        ms(percentile(&start_to_outbox, 0.99)),
    );
    println!(
        "    of which outbox -> ack            median {}  p99 {}",
        ms(percentile(&outbox_to_ack, 0.5)),
        ms(percentile(&outbox_to_ack, 0.99)),
    );
    println!(
        "  disk: one durable outbox write (file fsync + rename + dir fsync) median {}",
        ms(fsync)
    );
    println!(
        "  throughput    {:.0} tasks/s ({tasks} tasks in {:.2} s)",
        tasks as f64 / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
    let finals = state
        .tasks()
        .iter()
        .filter(|t| t.final_updates().len() == 1)
        .count();
    assert_eq!(finals, tasks, "every task has exactly one final status");
    if json {
        let msf = |d: Duration| d.as_secs_f64() * 1000.0;
        let disk = "one durable write (fsync)";
        let row = |measure: &str, unit: &str, base: Option<f64>, value: f64| {
            serde_json::json!({"measure": measure, "unit": unit,
                "baseline": base.map(|_| disk), "baseline_value": base, "value": value})
        };
        let summary = serde_json::json!({"bench": "intake", "rows": [
            row("poll -> ack, median", "ms", None, msf(percentile(&poll_to_ack, 0.5))),
            row("start -> ack, median", "ms", Some(msf(fsync)), msf(percentile(&start_to_ack, 0.5))),
            row("start -> ack, p99", "ms", Some(msf(fsync)), msf(percentile(&start_to_ack, 0.99))),
            row("throughput", "tasks/s", None, tasks as f64 / wall.as_secs_f64()),
        ]});
        println!("BENCH-JSON {summary}");
    }
}
