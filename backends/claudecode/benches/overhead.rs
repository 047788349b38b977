//! Host overhead of the claudecode backend over running the same `claude -p` directly.
//!
//! `cargo bench -p agentserver-backend-claudecode --bench overhead`
//!
//! Both sides run the real CLI (`.npm-clis/node_modules/.bin/claude`, or
//! `$AGENTSERVER_TEST_CLAUDE_BIN`) against the project's fake LLM on loopback with the same
//! isolated environment, for a plain one-turn answer, interleaved, `BENCH_RUNS` times each
//! (default 20) after two warm-up runs each:
//!
//! * direct: `claude -p <prompt> --output-format stream-json --verbose --permission-mode
//!   bypassPermissions`, stdout read to the end, waited for;
//! * direct stream-json: the host's exact argv and stdin lines, driven minimally (write both
//!   lines, read until the `result`, close stdin, wait);
//! * host: `ClaudeCodeBackend::run` (stream-json in and out, every line parsed and forwarded as
//!   an event, stdin closed on the result, process group cleaned up).
//!
//! It prints wall-time statistics and the ratios host / `claude -p` and host / stream-json.
//! With `--json` (`cargo bench ... -- --json`) it adds one `BENCH-JSON {...}` line at the end
//! (the rows `agentserver-bench` reads).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use agentserver_backend_claudecode::{
    ClaudeCodeBackend, ClaudeCodeConfig, claude_args, initialize_request, user_message,
};
use agentserver_mock::fake_llm::FakeLlm;
use agentserver_plugin_api::{CancellationToken, EventSink, Task, TaskStatus};
use tokio::io::AsyncReadExt;

const PROMPT: &str = "Say hello.";

fn claude_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENTSERVER_TEST_CLAUDE_BIN") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.npm-clis/node_modules/.bin/claude")
}

fn env_for(root: &Path, llm_url: &str) -> Vec<(String, String)> {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME", root.join("home").display().to_string()),
        ("TMPDIR", root.join("tmp").display().to_string()),
        ("ANTHROPIC_BASE_URL", llm_url.to_owned()),
        ("ANTHROPIC_API_KEY", "sk-ant-fake".to_owned()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_owned()),
        ("DISABLE_AUTOUPDATER", "1".to_owned()),
        ("DISABLE_TELEMETRY", "1".to_owned()),
        ("DISABLE_ERROR_REPORTING", "1".to_owned()),
        ("CLAUDE_CODE_MAX_RETRIES", "0".to_owned()),
        ("IS_SANDBOX", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn direct(bin: &Path, env: &[(String, String)], workdir: &Path) -> Duration {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .args([
            "-p",
            PROMPT,
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            "bypassPermissions",
        ])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn claude");
    let mut out = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_end(&mut out).await.expect("read stdout");
    }
    let status = child.wait().await.expect("wait claude");
    let took = started.elapsed();
    assert!(status.success(), "direct claude failed: {status}");
    assert!(String::from_utf8_lossy(&out).contains("\"type\":\"result\""));
    took
}

/// The exact argv and stdin protocol the host uses, driven minimally: both stdin lines written at
/// once, stdout read until the `result` line, stdin closed, exit awaited.
async fn direct_stream_json(bin: &Path, env: &[(String, String)], workdir: &Path) -> Duration {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let task = Task {
        prompt: PROMPT.into(),
        ..Task::default()
    };
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .args(claude_args(&task))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(workdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn claude");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = format!("{}\n{}\n", initialize_request(&task), user_message(PROMPT));
    stdin
        .write_all(input.as_bytes())
        .await
        .expect("write stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut saw_result = false;
    while let Some(line) = lines.next_line().await.expect("read stdout") {
        if line.contains("\"type\":\"result\"") {
            saw_result = true;
            drop(stdin);
            while lines.next_line().await.ok().flatten().is_some() {}
            break;
        }
    }
    let status = child.wait().await.expect("wait claude");
    let took = started.elapsed();
    assert!(
        saw_result && status.success(),
        "stream-json claude failed: {status}"
    );
    took
}

async fn host(backend: &ClaudeCodeBackend, workdir: &Path) -> Duration {
    let (sink, mut rx) = EventSink::channel(1024);
    let drain = tokio::spawn(async move {
        let mut n = 0usize;
        while rx.recv().await.is_some() {
            n += 1;
        }
        n
    });
    let task = Task {
        task_id: "task_bench".into(),
        prompt: PROMPT.into(),
        workdir: workdir.display().to_string(),
        ..Task::default()
    };
    let started = Instant::now();
    let report = backend.run(task, sink, CancellationToken::new()).await;
    let took = started.elapsed();
    assert_eq!(report.outcome.status, TaskStatus::Completed, "{report:?}");
    assert!(drain.await.unwrap_or(0) >= 3);
    took
}

struct Stats {
    mean: f64,
    median: f64,
    min: f64,
    max: f64,
    p90: f64,
}

fn stats(samples: &[Duration]) -> Stats {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let n = ms.len();
    let pick = |q: f64| ms[((n as f64 - 1.0) * q).round() as usize];
    Stats {
        mean: ms.iter().sum::<f64>() / n as f64,
        median: pick(0.5),
        min: ms[0],
        max: ms[n - 1],
        p90: pick(0.9),
    }
}

fn main() {
    let bin = claude_bin();
    if !bin.exists() {
        eprintln!(
            "the real claude CLI is missing at {}: run `bash scripts/install-test-deps.sh`",
            bin.display()
        );
        std::process::exit(1);
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(1);
    let json = std::env::args().any(|a| a == "--json");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let llm = FakeLlm::start().await.expect("fake LLM");
        let root = tempfile::tempdir().expect("tempdir");
        for sub in ["home", "tmp", "work"] {
            std::fs::create_dir_all(root.path().join(sub)).expect("mkdir");
        }
        let workdir = root.path().join("work");
        let env = env_for(root.path(), &llm.url());
        let mut config = ClaudeCodeConfig {
            claude_bin: Some(bin.clone()),
            workdir: workdir.clone(),
            clear_env: true,
            ..ClaudeCodeConfig::default()
        };
        config.env = env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        let backend = ClaudeCodeBackend::new(config);

        for _ in 0..2 {
            direct(&bin, &env, &workdir).await;
            direct_stream_json(&bin, &env, &workdir).await;
            host(&backend, &workdir).await;
        }
        let mut direct_times = Vec::with_capacity(runs);
        let mut stream_times = Vec::with_capacity(runs);
        let mut host_times = Vec::with_capacity(runs);
        for i in 0..runs {
            // Rotate which side goes first to cancel drift.
            for k in 0..3 {
                match (i + k) % 3 {
                    0 => direct_times.push(direct(&bin, &env, &workdir).await),
                    1 => stream_times.push(direct_stream_json(&bin, &env, &workdir).await),
                    _ => host_times.push(host(&backend, &workdir).await),
                }
            }
        }
        let d = stats(&direct_times);
        let s = stats(&stream_times);
        let h = stats(&host_times);
        println!("claudecode overhead: {runs} runs each, plain answer from the fake LLM");
        println!(
            "  {:<18} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "", "mean ms", "median", "min", "p90", "max"
        );
        for (name, st) in [
            ("direct claude -p", &d),
            ("direct stream-json", &s),
            ("host", &h),
        ] {
            println!(
                "  {:<18} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                name, st.mean, st.median, st.min, st.p90, st.max
            );
        }
        println!(
            "  ratio host / claude -p:    mean {:.3}, median {:.3} ({:+.1} ms median)",
            h.mean / d.mean,
            h.median / d.median,
            h.median - d.median
        );
        println!(
            "  ratio host / stream-json:  mean {:.3}, median {:.3} ({:+.1} ms median)",
            h.mean / s.mean,
            h.median / s.median,
            h.median - s.median
        );
        println!("  LLM requests served: {}", llm.requests().len());
        if json {
            let row = |measure: &str, base: (&str, f64), value: f64| {
                serde_json::json!({"measure": measure, "unit": "ms", "baseline": base.0,
                    "baseline_value": base.1, "value": value})
            };
            let summary = serde_json::json!({"bench": "claudecode", "rows": [
                row(&format!("wall time per task, median of {runs}"), ("direct `claude -p`", d.median), h.median),
                row(&format!("wall time per task, mean of {runs}"), ("direct `claude -p`", d.mean), h.mean),
                row(&format!("wall time per task, median of {runs}"), ("direct stream-json", s.median), h.median),
            ]});
            println!("BENCH-JSON {summary}");
        }
    });
}
