//! The one benchmark entry point: runs every benchmark of the project with sizes that keep the
//! whole run under five minutes on two cores, then prints one table of ratios against the
//! baselines measured in the same run, plus the RSS and idle CPU of a connected host.
//!
//! ```text
//! cargo build --release -p agentserver -p agentserver-integration -p agentserver-backend-claudecode \
//!     --bins --examples --bench overhead
//! cargo run --release -p agentserver-integration --bin agentserver-bench [-- --idle-secs 60] [--only tunnel,idle] [--quick]
//! ```
//!
//! It builds nothing: it runs the benchmark binaries found next to itself (`target/release/`)
//! as child processes, each with `--json`, echoes their own output on stderr and reads the one
//! `BENCH-JSON {"bench": …, "rows": [{"measure", "unit", "baseline", "baseline_value",
//! "value"}]}` line each prints at the end. Benchmarks whose binary is not built, or that need
//! the real `claude`/`opencode` CLIs from `.npm-clis` when they are missing, are skipped with a
//! note in the table. The idle-host measurement runs here: the mock agentserver in-process and
//! the real `agentserver run` binary against it (device login auto-approved), sampled from
//! `/proc` for `--idle-secs` seconds once connected. The table goes to stdout (Markdown), the
//! rest to stderr; see `docs/performance.md`. `--quick` runs every benchmark with tiny sizes
//! and a 5 s idle window: a check that everything runs, not a measurement.
//!
//! `--only reliability` (never part of the default run: it takes about five minutes on its
//! own, and a debug build is enough) runs the fault scenarios of
//! [`agentserver_integration::reliability`] in-process: the mock, and the real
//! `agentserver run` binary next to this one, restarted with `--resume` after every kill.
//! It prints one row per scenario (tasks, exactly one final status, lost, lost in transit,
//! duplicated) and exits non-zero when any scenario lost (in transit excepted) or duplicated
//! a status. `--quick` runs each scenario with 8 tasks.
//!
//! `--only worktrees` and `--only soak` (never part of the default run) run the benchmarks
//! of [`agentserver_integration::sandboxes_bench`]: 16 claude tasks at concurrency 4 in a
//! worktree each vs 16 direct `claude -p` runs; 300 tasks with a daemonizing MCP server (RSS
//! curve, leftover daemons, lost or duplicated statuses).
//!
//! `--only fleet` (never part of the default run either) runs the fleet simulation of
//! [`agentserver_integration::fleet`]: ten `agentserver run` processes provisioned with
//! `AGENTSERVER_REFRESH_TOKEN`, 1000 tasks, hosts SIGKILLed and restarted at random, tunnels
//! killed by the server and windows of 503s; one row (tasks/s, poll-to-ack, lost, duplicated,
//! run twice), non-zero exit when a task was lost, duplicated or run twice. `--quick`: 4 hosts,
//! 40 tasks.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use agentserver_integration::{fleet, reliability, sandboxes_bench};
use agentserver_mock::{MockConfig, MockServer};
use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The command that builds every binary this entry point runs.
const BUILD_CMD: &str = "cargo build --release -p agentserver -p agentserver-integration \
                         -p agentserver-backend-claudecode --bins --examples --bench overhead";

/// Longest time one benchmark child may take before it is killed and reported as failed.
const CHILD_TIMEOUT: Duration = Duration::from_secs(180);

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on every Linux ABI), so
/// CPU time has a resolution of 10 ms (`/proc/<pid>/schedstat` would be finer but is often
/// disabled).
const USER_HZ: f64 = 100.0;

/// One line of the final table.
struct Row {
    bench: String,
    measure: String,
    unit: String,
    baseline: Option<(String, f64)>,
    value: Option<f64>,
}

impl Row {
    fn note(bench: &str, note: String) -> Self {
        Self {
            bench: bench.to_owned(),
            measure: note,
            unit: String::new(),
            baseline: None,
            value: None,
        }
    }

    fn from_json(bench: &str, v: &serde_json::Value) -> Option<Self> {
        let baseline = match (v["baseline"].as_str(), v["baseline_value"].as_f64()) {
            (Some(name), Some(value)) => Some((name.to_owned(), value)),
            _ => None,
        };
        Some(Self {
            bench: bench.to_owned(),
            measure: v["measure"].as_str()?.to_owned(),
            unit: v["unit"].as_str().unwrap_or("").to_owned(),
            baseline,
            value: Some(v["value"].as_f64()?),
        })
    }
}

/// A number with a precision that suits its size.
fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn print_table(rows: &[Row]) {
    println!("| benchmark | measure | baseline | value | ratio |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let baseline = r
            .baseline
            .as_ref()
            .map(|(name, v)| format!("{name}: {} {}", num(*v), r.unit))
            .unwrap_or_else(|| "—".into());
        let value = match r.value {
            Some(v) if r.unit.is_empty() => format!("{v:.0}"),
            Some(v) => format!("{} {}", num(v), r.unit),
            None => "—".into(),
        };
        let ratio = match (&r.baseline, r.value) {
            (Some((_, b)), Some(v)) if *b != 0.0 => num(v / b),
            _ => "—".into(),
        };
        println!(
            "| {} | {} | {baseline} | {value} | {ratio} |",
            r.bench, r.measure
        );
    }
}

/// Options of this entry point.
struct Options {
    idle_secs: u64,
    only: Option<Vec<String>>,
    quick: bool,
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        let mut options = Self {
            idle_secs: 60,
            only: None,
            quick: false,
        };
        let mut idle_secs = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--idle-secs" => {
                    idle_secs = Some(args.next().context("--idle-secs N")?.parse()?);
                }
                "--only" => {
                    let list = args.next().context("--only NAME[,NAME…]")?;
                    options.only = Some(list.split(',').map(str::to_owned).collect());
                }
                "--quick" => options.quick = true,
                "-h" | "--help" => {
                    eprintln!(
                        "usage: agentserver-bench [--idle-secs N] [--only tunnel,intake,opencode,acp,claudecode,plugins,idle,reliability,fleet,worktrees,soak] [--quick]\n\
                         build first: {BUILD_CMD}\n\
                         AGENTSERVER_BENCH_HOST=PATH: the agentserver binary the host benchmarks start (e.g. target/dist/agentserver)"
                    );
                    std::process::exit(0);
                }
                other => anyhow::bail!("unknown argument {other}"),
            }
        }
        options.idle_secs = idle_secs.unwrap_or(if options.quick { 5 } else { 60 });
        Ok(options)
    }

    fn wants(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|n| n == name))
    }

    /// Benchmarks that run only when `--only` names them.
    fn named(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_some_and(|only| only.iter().any(|n| n == name))
    }
}

/// The arguments each benchmark gets.
struct Sizes {
    tunnel: [&'static str; 5],
    intake: [&'static str; 3],
    opencode: [&'static str; 5],
    acp: [&'static str; 5],
    claude_runs: &'static str,
    plugins: [&'static str; 2],
}

impl Sizes {
    /// The summary run's sizes: about 90 s in all on two cores, 60 s of it idle.
    const FULL: Self = Self {
        tunnel: ["--size-mib", "256", "--requests", "5000", "--json"],
        intake: ["--tasks", "1000", "--json"],
        opencode: ["--requests", "2000", "--concurrency", "8", "--json"],
        acp: ["--runs", "10", "--gap-ms", "2000", "--json"],
        claude_runs: "10",
        plugins: ["2000", "--json"],
    };
    /// `--quick`: everything runs, nothing is measured seriously.
    const QUICK: Self = Self {
        tunnel: ["--size-mib", "8", "--requests", "200", "--json"],
        intake: ["--tasks", "50", "--json"],
        opencode: ["--requests", "100", "--concurrency", "4", "--json"],
        acp: ["--runs", "1", "--gap-ms", "0", "--json"],
        claude_runs: "1",
        plugins: ["100", "--json"],
    };
}

/// Where the binaries and the npm CLIs are.
struct Layout {
    /// `target/<profile>/`, the directory of this executable.
    bin_dir: PathBuf,
    /// The repository root (compile-time).
    repo: PathBuf,
}

impl Layout {
    fn new() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot locate this executable")?;
        let bin_dir = exe
            .parent()
            .context("this executable has no parent directory")?
            .to_owned();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        Ok(Self { bin_dir, repo })
    }

    fn sibling(&self, name: &str) -> Option<PathBuf> {
        let p = self.bin_dir.join(name);
        p.is_file().then_some(p)
    }

    /// The `agentserver` binary the host benchmarks start: `AGENTSERVER_BENCH_HOST` (to
    /// measure a `dist` build), else the one next to this executable.
    fn host(&self) -> Option<PathBuf> {
        match std::env::var_os("AGENTSERVER_BENCH_HOST") {
            Some(path) => Some(PathBuf::from(path)).filter(|p| p.is_file()),
            None => self.sibling("agentserver"),
        }
    }

    /// The newest `deps/<stem>-<hash>` executable (how cargo names a bench binary).
    fn bench_binary(&self, stem: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let prefix = format!("{stem}-");
        std::fs::read_dir(self.bin_dir.join("deps"))
            .ok()?
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(&prefix)
                    .is_some_and(|hash| !hash.contains('.'))
            })
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                (meta.is_file() && meta.permissions().mode() & 0o111 != 0)
                    .then(|| (meta.modified().ok(), e.path()))
            })
            .max_by_key(|(modified, _)| *modified)
            .map(|(_, p)| p)
    }

    /// A CLI from `.npm-clis` (or the test override variable), if installed.
    fn npm_cli(&self, name: &str, env: &str) -> Option<PathBuf> {
        let p = std::env::var_os(env)
            .map(PathBuf::from)
            .unwrap_or_else(|| self.repo.join(".npm-clis/node_modules/.bin").join(name));
        p.exists().then_some(p)
    }
}

/// Runs one benchmark binary with `--json`; its stdout is echoed on stderr and its
/// `BENCH-JSON` line turned into rows.
async fn run_child(bench: &str, bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> Vec<Row> {
    let started = Instant::now();
    eprintln!("\n== {bench}: {} {}", bin.display(), args.join(" "));
    let result = tokio::time::timeout(CHILD_TIMEOUT, async {
        let mut child = tokio::process::Command::new(bin)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut lines = BufReader::new(child.stdout.take().context("piped stdout")?).lines();
        let mut summary = None;
        while let Some(line) = lines.next_line().await? {
            match line.strip_prefix("BENCH-JSON ") {
                Some(json) => summary = Some(serde_json::from_str::<serde_json::Value>(json)?),
                None => eprintln!("   {line}"),
            }
        }
        let status = child.wait().await?;
        anyhow::ensure!(status.success(), "exited with {status}");
        summary.context("no BENCH-JSON line in its output")
    })
    .await;
    eprintln!(
        "== {bench}: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let summary = match result {
        Ok(Ok(summary)) => summary,
        Ok(Err(err)) => return vec![Row::note(bench, format!("failed: {err:#}"))],
        Err(_) => {
            return vec![Row::note(
                bench,
                format!("failed: no result within {} s", CHILD_TIMEOUT.as_secs()),
            )];
        }
    };
    let rows: Vec<Row> = summary["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| Row::from_json(bench, r))
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        return vec![Row::note(bench, "failed: empty BENCH-JSON".into())];
    }
    rows
}

fn missing(bench: &str, what: &str) -> Vec<Row> {
    eprintln!("\n== {bench}: skipped ({what})");
    vec![Row::note(bench, format!("skipped: {what}"))]
}

fn not_built(bench: &str) -> Vec<Row> {
    missing(bench, "binary not built, see docs/performance.md")
}

/// One reading of a process from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    /// `utime + stime`, in clock ticks.
    cpu_ticks: u64,
    /// `VmRSS`, KiB.
    rss_kib: u64,
    /// `VmHWM` (peak RSS), KiB.
    hwm_kib: u64,
    /// `RssAnon` (heap, stacks: memory only this process holds), KiB.
    anon_kib: u64,
    /// Voluntary + involuntary context switches summed over the live threads.
    switches: u64,
    /// Number of threads.
    threads: u64,
}

fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`, which may hold spaces: state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu_ticks = tick(14).unwrap_or(0) + tick(15).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut switches = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.filter_map(Result::ok) {
            if let Ok(s) = std::fs::read_to_string(task.path().join("status")) {
                switches += status_field(&s, "voluntary_ctxt_switches:")
                    + status_field(&s, "nonvoluntary_ctxt_switches:");
            }
        }
    }
    Ok(ProcSample {
        cpu_ticks,
        rss_kib: status_field(&status, "VmRSS:"),
        hwm_kib: status_field(&status, "VmHWM:"),
        anon_kib: status_field(&status, "RssAnon:"),
        switches,
        threads: status_field(&status, "Threads:"),
    })
}

/// The backends an idle host is measured with.
enum IdleBackend {
    /// The bundled example WASM plugin (works on a fresh machine), compiled at start (a fresh
    /// host) or, `warm`, read from the compile cache (every later start).
    WasmExample { warm: bool },
    /// The built-in claudecode backend with this `claude`.
    Claudecode(PathBuf),
}

impl IdleBackend {
    fn label(&self) -> &'static str {
        match self {
            Self::WasmExample { warm: false } => "idle host (wasm-example, compiled at start)",
            Self::WasmExample { warm: true } => "idle host (wasm-example, from the cache)",
            Self::Claudecode(_) => "idle host (claudecode)",
        }
    }
}

/// Starts the real `agentserver run` against an in-process mock, waits until it is logged in,
/// registered, connected and has sent its agent info, then samples it for `secs` seconds.
/// Reconnects of an idle host, each timed from the tunnel up to its first agent info. The
/// host's reconnect delay doubles after each short-lived connection (1, 2, 4, 8, 16 s), so
/// five keep the run short.
const RECONNECTS: usize = 5;

/// An idle host's rows and its times from tunnel up to first agent info (ms).
async fn idle_host(agentserver: &Path, backend: &IdleBackend, secs: u64) -> (Vec<Row>, Vec<f64>) {
    let bench = backend.label();
    match measure_idle(agentserver, backend, secs).await {
        Ok(measured) => measured,
        Err(err) => (vec![Row::note(bench, format!("failed: {err:#}"))], vec![]),
    }
}

async fn measure_idle(
    agentserver: &Path,
    backend: &IdleBackend,
    secs: u64,
) -> anyhow::Result<(Vec<Row>, Vec<f64>)> {
    let bench = backend.label();
    let mock = MockServer::start(MockConfig::default()).await?;
    let state = mock.state();
    let tmp = tempfile::tempdir()?;
    let home = tmp.path().join("agentserver-home");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&home)?;
    std::fs::create_dir_all(&work)?;
    let log_path = tmp.path().join("host.log");
    let log = std::fs::File::create(&log_path)?;

    let mut cmd = tokio::process::Command::new(agentserver);
    cmd.arg("run")
        .args(["--server", &mock.url()])
        .args(["--name", "bench-idle", "--skip-open-browser"])
        .arg("--work-dir")
        .arg(&work);
    match backend {
        IdleBackend::WasmExample { warm } => {
            let dir = tmp.path().join("plugins/wasm-example");
            std::fs::create_dir_all(&dir)?;
            std::fs::write(
                dir.join("plugin.toml"),
                agentserver::plugins::wasm::bundled::MANIFEST,
            )?;
            std::fs::write(
                dir.join("wasm-example.wasm"),
                agentserver::plugins::wasm::bundled::component_bytes()?,
            )?;
            if *warm {
                // `plugins inspect` loads the plugin, which compiles it into the cache.
                let inspected = tokio::process::Command::new(agentserver)
                    .args(["plugins", "inspect", "wasm-example", "--plugin-dir"])
                    .arg(tmp.path().join("plugins"))
                    .env("AGENTSERVER_HOME", &home)
                    .env("HOME", tmp.path())
                    .output()
                    .await?;
                anyhow::ensure!(
                    inspected.status.success(),
                    "plugins inspect failed: {}",
                    String::from_utf8_lossy(&inspected.stderr)
                );
            }
            cmd.args(["--backend", "wasm-example", "--plugin-dir"])
                .arg(tmp.path().join("plugins"));
        }
        IdleBackend::Claudecode(claude) => {
            cmd.args(["--backend", "claudecode", "--claude-bin"])
                .arg(claude);
        }
    }
    let mut child = cmd
        .env("AGENTSERVER_HOME", &home)
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .env("HOME", tmp.path())
        .env_remove("AGENTSERVER_SERVER")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", agentserver.display()))?;
    let pid = child.id().context("the host exited at once")?;
    eprintln!(
        "\n== {bench}: agentserver run (pid {pid}) against the mock at {}",
        mock.url()
    );

    let ready = state
        .wait_until(Duration::from_secs(60), |s| {
            s.sandboxes()
                .iter()
                .any(|sb| sb.agent_info.is_some() && s.tunnel.is_connected(&sb.id))
        })
        .await;
    if !ready {
        let _ = child.start_kill();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        anyhow::bail!("the host did not connect within 60 s; its output:\n{log}");
    }
    let connect_rss = sample(pid)?.rss_kib;
    // Let the start-up work (first poll, probe) settle before the idle window opens.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = sample(pid)?;
    let t0 = Instant::now();
    let mut max_rss = first.rss_kib;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    for _ in 0..secs {
        ticker.tick().await;
        let s = sample(pid).context("the host exited during the idle window")?;
        max_rss = max_rss.max(s.rss_kib);
    }
    let last = sample(pid)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let still_connected = state
        .sandboxes()
        .iter()
        .any(|sb| state.tunnel.is_connected(&sb.id));
    // Time from the tunnel coming up to the first agent info on it, over 10 reconnects of a
    // host that has run for a while (its capabilities probed long ago).
    let sandbox_id = state
        .sandboxes()
        .iter()
        .find(|sb| state.tunnel.is_connected(&sb.id))
        .map(|sb| sb.id.clone())
        .context("no connected sandbox")?;
    let mut first_info_ms = Vec::new();
    for _ in 0..RECONNECTS {
        let last_conn = state
            .tunnel
            .connections(&sandbox_id)
            .last()
            .map_or(0, |c| c.conn_id);
        state.tunnel.drop_connection(&sandbox_id);
        let deadline = Instant::now() + Duration::from_secs(60);
        let measured = loop {
            let conn = state
                .tunnel
                .connections(&sandbox_id)
                .into_iter()
                .find(|c| c.conn_id > last_conn);
            let info = conn.as_ref().and_then(|c| {
                state
                    .tunnel
                    .agent_infos(&sandbox_id)
                    .into_iter()
                    .find(|i| i.conn_id == c.conn_id)
                    .map(|i| i.at.saturating_duration_since(c.connected_at))
            });
            if let Some(waited) = info {
                break waited;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no agent info after a reconnect: connections {:?}, infos on {:?}",
                state
                    .tunnel
                    .connections(&sandbox_id)
                    .iter()
                    .map(|c| c.conn_id)
                    .collect::<Vec<_>>(),
                state
                    .tunnel
                    .agent_infos(&sandbox_id)
                    .iter()
                    .map(|i| i.conn_id)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        first_info_ms.push(measured.as_secs_f64() * 1000.0);
    }
    first_info_ms.sort_by(f64::total_cmp);
    let first_info_median = first_info_ms[first_info_ms.len() / 2];
    eprintln!(
        "   tunnel up → first agent info over {RECONNECTS} reconnects (ms): {first_info_ms:.1?}"
    );

    // Stop it like a user would (SIGTERM → drain → exit).
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    mock.shutdown().await;
    anyhow::ensure!(still_connected, "the tunnel dropped during the idle window");

    let cpu_secs = (last.cpu_ticks - first.cpu_ticks) as f64 / USER_HZ;
    let mib = |k: u64| k as f64 / 1024.0;
    let row = |measure: String, unit: &str, value: f64| Row {
        bench: bench.to_owned(),
        measure,
        unit: unit.to_owned(),
        baseline: None,
        value: Some(value),
    };
    eprintln!(
        "   connected; over {elapsed:.0} s: CPU {cpu_secs:.2} s, RSS {:.1} → {:.1} MiB (of which heap {:.1}; max {:.1}, peak since start {:.1}), {} threads, {} context switches",
        mib(first.rss_kib),
        mib(last.rss_kib),
        mib(last.anon_kib),
        mib(max_rss),
        mib(last.hwm_kib),
        last.threads,
        last.switches.saturating_sub(first.switches)
    );
    let rows = vec![
        row("RSS once connected".into(), "MiB", mib(connect_rss)),
        row(format!("RSS after {secs} s idle"), "MiB", mib(last.rss_kib)),
        row(
            format!("of which heap (RssAnon) after {secs} s idle"),
            "MiB",
            mib(last.anon_kib),
        ),
        row("peak RSS since start".into(), "MiB", mib(last.hwm_kib)),
        row(
            format!("CPU time over {secs} s idle"),
            "ms",
            cpu_secs * 1000.0,
        ),
        row(
            format!("CPU share over {secs} s idle"),
            "%",
            cpu_secs / elapsed * 100.0,
        ),
        row(
            "context switches per second".into(),
            "/s",
            last.switches.saturating_sub(first.switches) as f64 / elapsed,
        ),
        row("threads".into(), "", last.threads as f64),
        row(
            format!("tunnel up -> first agent info, median of {RECONNECTS} reconnects"),
            "ms",
            first_info_median,
        ),
    ];
    Ok((rows, first_info_ms))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    let layout = Layout::new()?;
    let started = Instant::now();
    let load_before = load_average();
    eprintln!(
        "agentserver-bench: binaries from {}, {}",
        layout.bin_dir.display(),
        machine()
    );
    let sizes = if options.quick {
        Sizes::QUICK
    } else {
        Sizes::FULL
    };
    let mut rows = Vec::new();

    if options.wants("tunnel") {
        rows.extend(match layout.sibling("tunnel-bench") {
            Some(bin) => run_child("tunnel", &bin, &sizes.tunnel, &[]).await,
            None => not_built("tunnel"),
        });
    }
    if options.wants("intake") {
        rows.extend(match layout.sibling("intake-bench") {
            Some(bin) => run_child("intake", &bin, &sizes.intake, &[]).await,
            None => not_built("intake"),
        });
    }
    if options.wants("opencode") {
        rows.extend(
            match (
                layout.sibling("opencode-bench"),
                layout.npm_cli("opencode", "AGENTSERVER_TEST_OPENCODE_BIN"),
            ) {
                (None, _) => not_built("opencode"),
                (_, None) => missing(
                    "opencode",
                    "the opencode CLI is not installed (bash scripts/install-test-deps.sh)",
                ),
                (Some(bin), Some(_)) => run_child("opencode", &bin, &sizes.opencode, &[]).await,
            },
        );
    }
    if options.wants("acp") {
        rows.extend(
            match (
                layout.sibling("acp-bench"),
                layout.npm_cli("opencode", "AGENTSERVER_TEST_OPENCODE_BIN"),
            ) {
                (None, _) => not_built("acp"),
                (_, None) => missing(
                    "acp",
                    "the opencode CLI is not installed (bash scripts/install-test-deps.sh)",
                ),
                (Some(bin), Some(_)) => run_child("acp", &bin, &sizes.acp, &[]).await,
            },
        );
    }
    let claude = layout.npm_cli("claude", "AGENTSERVER_TEST_CLAUDE_BIN");
    if options.wants("claudecode") {
        rows.extend(match (layout.bench_binary("overhead"), &claude) {
            (None, _) => not_built("claudecode"),
            (_, None) => missing(
                "claudecode",
                "the claude CLI is not installed (bash scripts/install-test-deps.sh)",
            ),
            (Some(bin), Some(_)) => {
                run_child(
                    "claudecode",
                    &bin,
                    &["--json"],
                    &[("BENCH_RUNS", sizes.claude_runs)],
                )
                .await
            }
        });
    }
    if options.wants("plugins") {
        rows.extend(match layout.sibling("examples/plugin_bench") {
            Some(bin) => run_child("plugins", &bin, &sizes.plugins, &[]).await,
            None => not_built("plugins"),
        });
    }
    if options.wants("idle") {
        match layout.host() {
            None => rows.extend(not_built("idle host")),
            Some(agentserver) => {
                // The hosts idle side by side: none disturbs the others' own figures.
                let cold = IdleBackend::WasmExample { warm: false };
                let warm = IdleBackend::WasmExample { warm: true };
                let cc = claude.clone().map(IdleBackend::Claudecode);
                let secs = options.idle_secs;
                let (a, b, c) = tokio::join!(
                    idle_host(&agentserver, &cold, secs),
                    idle_host(&agentserver, &warm, secs),
                    async {
                        match &cc {
                            Some(cc) => idle_host(&agentserver, cc, secs).await,
                            None => (
                                missing(
                                    "idle host (claudecode)",
                                    "the claude CLI is not installed",
                                ),
                                vec![],
                            ),
                        }
                    }
                );
                // Each host reconnects five times (its backoff doubles after each short
                // connection); the goal is over ten connects of hosts that have run a while.
                let mut all: Vec<f64> = [&a.1, &b.1, &c.1].into_iter().flatten().copied().collect();
                all.sort_by(f64::total_cmp);
                for (host_rows, _) in [a, b, c] {
                    rows.extend(host_rows);
                }
                if !all.is_empty() {
                    rows.push(Row {
                        bench: "idle hosts".into(),
                        measure: format!(
                            "tunnel up -> first agent info, median of all {} reconnects",
                            all.len()
                        ),
                        unit: "ms".into(),
                        baseline: None,
                        value: Some(all[all.len() / 2]),
                    });
                }
            }
        }
    }

    let mut reliability_failed = false;
    let mut reliability_table = None;
    if options.named("reliability") {
        match layout.host() {
            None => rows.extend(not_built("reliability")),
            Some(agentserver) => {
                let sizes = if options.quick {
                    reliability::Sizes::QUICK
                } else {
                    reliability::Sizes::FULL
                };
                let results = reliability::run_all(&agentserver, &sizes).await;
                reliability_failed = results
                    .iter()
                    .any(|r| r.as_ref().map_or(true, |o| !o.passed()));
                reliability_table = Some(reliability::table(&results));
            }
        }
    }

    let mut fleet_failed = false;
    let mut fleet_table = None;
    if options.named("fleet") {
        match layout.host() {
            None => rows.extend(not_built("fleet")),
            Some(agentserver) => {
                let sizes = if options.quick {
                    fleet::Sizes::QUICK
                } else {
                    fleet::Sizes::FULL
                };
                match fleet::run(&agentserver, &sizes).await {
                    Ok(figures) => {
                        fleet_failed = !figures.passed();
                        fleet_table = Some(figures.table());
                    }
                    Err(err) => {
                        fleet_failed = true;
                        rows.push(Row::note("fleet", format!("failed: {err:#}")));
                    }
                }
            }
        }
    }

    for (name, soak) in [("worktrees", false), ("soak", true)] {
        if !options.named(name) {
            continue;
        }
        let (Some(agentserver), Some(claude)) = (layout.host(), claude.as_ref()) else {
            rows.extend(missing(
                name,
                "needs the agentserver binary and the claude CLI",
            ));
            continue;
        };
        let sizes = if options.quick {
            sandboxes_bench::Sizes::QUICK
        } else {
            sandboxes_bench::Sizes::FULL
        };
        let result = if soak {
            sandboxes_bench::soak(&agentserver, claude, &sizes).await
        } else {
            sandboxes_bench::worktrees(&agentserver, claude, &sizes).await
        };
        match result {
            Ok(values) => rows.extend(values.iter().filter_map(|v| Row::from_json(name, v))),
            Err(err) => rows.push(Row::note(name, format!("failed: {err:#}"))),
        }
    }

    let total = started.elapsed();
    eprintln!();
    if !rows.is_empty() {
        print_table(&rows);
        println!();
    }
    if let Some(table) = &reliability_table {
        print!("{table}");
        println!();
    }
    if let Some(table) = &fleet_table {
        print!("{table}");
        println!();
    }
    println!(
        "Total {:.0} s on {}; load average {} before, {} after.",
        total.as_secs_f64(),
        machine(),
        load_before,
        load_average()
    );
    if rows
        .iter()
        .any(|r| r.measure.starts_with("skipped: binary not built"))
    {
        eprintln!("\nSome benchmarks are not built; build them all with:\n  {BUILD_CMD}");
    }
    if reliability_failed {
        anyhow::bail!("reliability: a scenario lost or duplicated a task status (see above)");
    }
    if fleet_failed {
        anyhow::bail!("fleet: a task was lost, duplicated or run twice (see above)");
    }
    Ok(())
}
