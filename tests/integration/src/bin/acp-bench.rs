//! acp benchmark: wall time of one one-turn task (`Say hello`, the fake LLM's plain answer)
//! through the acp backend against the built-in backend driving the same agent, in one run:
//!
//! * `opencode acp` (acp backend) vs `opencode serve` (opencode backend), both opencode 1.18.33;
//! * `claude-agent-acp` 0.23.1 (acp backend) vs `claude` 2.1.330 (claudecode backend).
//!
//! ```sh
//! cargo run --release -p agentserver-integration --bin acp-bench [-- --runs 10] [--gap-ms 2000] [--json]
//! ```
//!
//! Each backend is started once (its start is timed separately: opencode's `initialize` or
//! `serve` readiness), runs 2 warm-up tasks, then `--runs` tasks per side in rotating order,
//! each after `--gap-ms` of quiet (default 0: back to back; the acp backend makes the next
//! task's session in that time), each through `Backend::execute` with its events drained, all against one fake LLM on
//! loopback with an isolated HOME. Needs the CLIs from `bash scripts/install-test-deps.sh`; a
//! pair whose CLI is missing is left out. `--json` adds the `BENCH-JSON {...}` line
//! `agentserver-bench` reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentserver_backend_acp::{AcpBackend, AcpConfig, Preset};
use agentserver_backend_claudecode::{ClaudeCodeBackend, ClaudeCodeConfig};
use agentserver_backend_opencode::OpencodeBackend;
use agentserver_integration::opencode_support::{OpencodeEnv, free_port, offline_env};
use agentserver_mock::fake_llm::{DEFAULT_TEXT, FakeLlm, FakeLlmHandle};
use agentserver_plugin_api::{Backend, CancellationToken, EventSink, Task, TaskStatus};

fn npm_cli(name: &str, env: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../.npm-clis/node_modules/.bin")
            .join(name)
    });
    path.exists().then_some(path)
}

/// Runs one one-turn task; its wall time from `execute` to the outcome.
async fn one_task(backend: &dyn Backend, workdir: &Path) -> anyhow::Result<Duration> {
    let (sink, mut rx) = EventSink::channel(1024);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let task = Task {
        task_id: "task_bench".into(),
        prompt: "Say hello".into(),
        workdir: workdir.display().to_string(),
        ..Task::default()
    };
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        backend.execute(task, sink, CancellationToken::new()),
    )
    .await?;
    let took = started.elapsed();
    drain.await?;
    anyhow::ensure!(
        outcome.status == TaskStatus::Completed && outcome.result.as_deref() == Some(DEFAULT_TEXT),
        "{} backend: {outcome:?}",
        backend.info().name
    );
    Ok(took)
}

struct Side {
    label: &'static str,
    backend: Arc<dyn Backend>,
    start: Duration,
    times: Vec<Duration>,
}

async fn side(label: &'static str, backend: Arc<dyn Backend>) -> anyhow::Result<Side> {
    let t = Instant::now();
    backend
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
    Ok(Side {
        label,
        backend,
        start: t.elapsed(),
        times: Vec::new(),
    })
}

/// Warm-ups, then `runs` tasks per side, rotating which goes first, each after `gap` of
/// quiet (not counted).
async fn measure(
    sides: &mut [Side],
    workdir: &Path,
    runs: usize,
    gap: Duration,
) -> anyhow::Result<()> {
    for side in sides.iter() {
        for _ in 0..2 {
            one_task(side.backend.as_ref(), workdir).await?;
        }
    }
    for i in 0..runs {
        for k in 0..sides.len() {
            let side = &mut sides[(i + k) % sides.len()];
            tokio::time::sleep(gap).await;
            let took = one_task(side.backend.as_ref(), workdir).await?;
            side.times.push(took);
        }
    }
    for side in sides.iter() {
        side.backend.shutdown().await;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn mean(times: &[Duration]) -> Duration {
    times.iter().sum::<Duration>() / u32::try_from(times.len().max(1)).unwrap_or(1)
}

fn print_side(side: &Side) {
    let mut sorted = side.times.clone();
    sorted.sort();
    println!(
        "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
        side.label,
        ms(mean(&sorted)),
        ms(median(&sorted)),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1]),
        ms(side.start)
    );
}

fn acp_config(command: Vec<String>, workdir: &Path, env: &[(&str, String)]) -> AcpConfig {
    let mut config = AcpConfig {
        clear_env: true,
        ..AcpConfig::new(command, workdir.to_path_buf())
    };
    for (k, v) in env {
        config = config.with_env(*k, v);
    }
    config
}

/// The opencode pair: `opencode acp` through acp, `opencode serve` through opencode.
async fn opencode_pair(
    llm: &FakeLlmHandle,
    opencode: &Path,
    runs: usize,
    gap: Duration,
) -> anyhow::Result<(Side, Side)> {
    let env = OpencodeEnv::new(llm.openai_base_url())?;
    let work = env.workdir();
    let vars = offline_env(
        &env.dir.path().join("home"),
        &env.dir.path().join("tmp"),
        &llm.openai_base_url(),
    );
    let acp = AcpBackend::new(acp_config(
        vec![opencode.display().to_string(), "acp".into()],
        &work,
        &vars,
    ));
    let mut sides = [
        side(
            "opencode backend (`opencode serve`)",
            Arc::new(OpencodeBackend::new(env.config(free_port()))),
        )
        .await?,
        side("acp backend (`opencode acp`)", Arc::new(acp)).await?,
    ];
    measure(&mut sides, &work, runs, gap).await?;
    let [a, b] = sides;
    Ok((a, b))
}

/// The Claude pair: `claude-agent-acp` through acp, `claude` through claudecode.
async fn claude_pair(
    llm: &FakeLlmHandle,
    claude: &Path,
    adapter: &Path,
    runs: usize,
    gap: Duration,
) -> anyhow::Result<(Side, Side)> {
    let dir = tempfile::tempdir()?;
    for sub in ["home", "tmp", "work"] {
        std::fs::create_dir_all(dir.path().join(sub))?;
    }
    let work = std::fs::canonicalize(dir.path().join("work"))?;
    let vars = agentserver_integration::claude_support::offline_env(
        &dir.path().join("home"),
        &dir.path().join("tmp"),
        &llm.url(),
    );
    let mut cc = ClaudeCodeConfig {
        claude_bin: Some(claude.to_path_buf()),
        workdir: work.clone(),
        clear_env: true,
        ..ClaudeCodeConfig::default()
    };
    for (k, v) in &vars {
        cc = cc.with_env(*k, v);
    }
    let mut acp = acp_config(vec![adapter.display().to_string()], &work, &vars);
    acp.env
        .extend(AcpConfig::preset(Preset::ClaudeAcp, work.clone()).env);
    let mut sides = [
        side(
            "claudecode backend (`claude`)",
            Arc::new(ClaudeCodeBackend::new(cc)),
        )
        .await?,
        side(
            "acp backend (`claude-agent-acp`)",
            Arc::new(AcpBackend::new(acp)),
        )
        .await?,
    ];
    measure(&mut sides, &work, runs, gap).await?;
    let [a, b] = sides;
    Ok((a, b))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut runs = 10usize;
    let mut gap = Duration::ZERO;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(runs)
                    .max(1)
            }
            "--gap-ms" => {
                gap = Duration::from_millis(args.next().and_then(|n| n.parse().ok()).unwrap_or(0));
            }
            "--json" => json = true,
            other => {
                anyhow::bail!(
                    "unknown argument {other} (usage: acp-bench [--runs N] [--gap-ms MS] [--json])"
                )
            }
        }
    }
    let llm = FakeLlm::start().await?;
    let mut pairs = Vec::new();
    match npm_cli("opencode", "AGENTSERVER_TEST_OPENCODE_BIN") {
        Some(opencode) => pairs.push((
            "opencode acp",
            opencode_pair(&llm, &opencode, runs, gap).await?,
        )),
        None => eprintln!("acp-bench: opencode is not installed; its pair is left out"),
    }
    match (
        npm_cli("claude", "AGENTSERVER_TEST_CLAUDE_BIN"),
        npm_cli("claude-agent-acp", "AGENTSERVER_TEST_CLAUDE_ACP_BIN"),
    ) {
        (Some(claude), Some(adapter)) => {
            pairs.push((
                "claude-agent-acp",
                claude_pair(&llm, &claude, &adapter, runs, gap).await?,
            ));
        }
        _ => eprintln!(
            "acp-bench: claude or claude-agent-acp is not installed; that pair is left out"
        ),
    }

    println!(
        "One-turn task wall time, {runs} runs per side after 2 warm-ups, {} ms between tasks \
         (ms; start = the backend's start, once):\n",
        gap.as_millis()
    );
    println!("| backend | mean | median | min | max | start |");
    println!("|---|---|---|---|---|---|");
    for (_, (base, acp)) in &pairs {
        print_side(base);
        print_side(acp);
    }
    println!();
    for (name, (base, acp)) in &pairs {
        println!(
            "{name}: acp / built-in = {:.2} (median), {:.2} (mean)",
            ms(median(&acp.times)) / ms(median(&base.times)),
            ms(mean(&acp.times)) / ms(mean(&base.times))
        );
    }
    if json {
        let rows: Vec<_> = pairs
            .iter()
            .flat_map(|(name, (base, acp))| {
                [
                    serde_json::json!({"measure": format!("one-turn task, median ({name})"), "unit": "ms",
                        "baseline": base.label, "baseline_value": ms(median(&base.times)),
                        "value": ms(median(&acp.times))}),
                    serde_json::json!({"measure": format!("backend start ({name})"), "unit": "ms",
                        "baseline": base.label, "baseline_value": ms(base.start),
                        "value": ms(acp.start)}),
                ]
            })
            .collect();
        println!(
            "BENCH-JSON {}",
            serde_json::json!({"bench": "acp", "rows": rows})
        );
    }
    llm.shutdown().await;
    Ok(())
}
