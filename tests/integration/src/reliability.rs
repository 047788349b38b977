//! The reliability benchmark (issue 15, item 6): the real `agentserver run` binary against the
//! in-process mock agentserver under faults, counting from the mock's records how many tasks
//! got exactly one final status, how many got none (lost), how many got more than one
//! (duplicated), and how many were lost in transit (see [`Verdict::InTransit`]).
//!
//! Each [`Scenario`] starts a fresh mock and one host (`--backend claudecode` with a scripted
//! `claude` that answers in stream-json after a short pause, `--poll-interval 0.2`,
//! `AGENTSERVER_HOME` in a temporary directory). The first start logs in through the mock's
//! auto-approved device flow and registers; every restart is `--resume <sandbox id>`, so all
//! starts serve the same sandbox and the same outbox. Tasks are created at a steady pace while
//! the scenario's faults run; the faults stop when every task is settled or after a cap, the
//! host is restarted if it is down, and the mock is then given a generous settle time (longer
//! than the host's largest report backoff) before the tasks are counted.
//!
//! `agentserver-bench --only reliability [--quick]` runs [`SCENARIOS`] one after the other and
//! prints one row each; see `docs/performance.md`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use agentserver::intake::outbox::file_stem;
use agentserver_mock::{MockConfig, MockServer, MockState, TaskRecord};
use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A `claude` stand-in: reads the init and user lines, works a little, answers in stream-json.
const FAKE_CLAUDE: &str = r#"#!/bin/sh
read init; read user
sleep 0.5
echo '{"type":"system","subtype":"init","session_id":"s1","uuid":"u-1"}'
echo '{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"done"}]},"uuid":"u-2"}'
echo '{"type":"result","subtype":"success","is_error":false,"result":"all done","num_turns":1,"total_cost_usd":0.01,"uuid":"u-3"}'
"#;

/// The task endpoints (poll, lookup, status): what the slow-server scenario delays.
const TASKS_PREFIX: &str = "/api/agent/tasks";
/// The path prefix of a task lookup or status report (not the poll, `/api/agent/tasks/poll`).
const TASK_ITEM_PREFIX: &str = "/api/agent/tasks/task_";

/// The faults of one scenario; they combine.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Row label.
    pub name: &'static str,
    /// SIGKILL the host every 1–4 s (uniformly random) and start it again at once.
    pub kills: bool,
    /// Every answer of the task endpoints (poll, lookup, status) held back this long after
    /// the mock applied the request: past upstream's 10 s timeout, within the host's 60 s.
    pub late: Option<Duration>,
    /// Status PUTs answered 504 after the mock applied them (about half of them), and task
    /// lookups answered 503 now and then (about one in five).
    pub gateway: bool,
    /// About 30 % of all API requests answered 503 or 502 before the mock looks at them
    /// (random 100 ms windows in which every request fails).
    pub failures: bool,
}

/// The scenarios of a reliability run, in order.
pub const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "random SIGKILL every 1–4 s, restart with --resume",
        kills: true,
        late: None,
        gateway: false,
        failures: false,
    },
    Scenario {
        name: "every task answer 11 s late (upstream timeout 10 s)",
        kills: false,
        late: Some(Duration::from_secs(11)),
        gateway: false,
        failures: false,
    },
    Scenario {
        name: "status 504 after apply + lookups 503",
        kills: false,
        late: None,
        gateway: true,
        failures: false,
    },
    Scenario {
        name: "30 % of requests 503/502",
        kills: false,
        late: None,
        gateway: false,
        failures: true,
    },
    Scenario {
        name: "chaos: kills + 504 after apply + 30 % 503/502",
        kills: true,
        late: None,
        gateway: true,
        failures: true,
    },
];

/// How big a run is.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Tasks per scenario.
    pub tasks: usize,
    /// Pause between two task creations.
    pub spacing: Duration,
    /// Longest time the faults run.
    pub fault_cap: Duration,
    /// Longest time, once the faults stop, the tasks get to settle.
    pub settle: Duration,
}

impl Sizes {
    /// The measured run: 40 tasks a scenario, a few minutes in all.
    pub const FULL: Self = Self {
        tasks: 40,
        spacing: Duration::from_millis(500),
        fault_cap: Duration::from_secs(240),
        settle: Duration::from_secs(120),
    };
    /// `--quick`: a check that everything runs.
    pub const QUICK: Self = Self {
        tasks: 8,
        spacing: Duration::from_millis(500),
        fault_cap: Duration::from_secs(60),
        settle: Duration::from_secs(90),
    };
}

/// What became of one task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Exactly one final status reached the server.
    Once,
    /// More than one final status reached the server.
    Duplicated,
    /// The server assigned the task in a poll whose answer the host never took in: the task is
    /// `assigned`, has no status update at all, and the host's state directory holds no trace of
    /// it (no received marker, no outbox entry, none rejected). Nothing on the host can report
    /// such a task; only the server can (upstream has no lease or re-offer).
    InTransit,
    /// No final status, though the host received the task (or it was never polled).
    Lost,
}

/// The counts of one scenario.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Row label.
    pub name: String,
    /// Tasks created.
    pub tasks: usize,
    /// Tasks with exactly one final status.
    pub once: usize,
    /// Tasks with no final status, not in transit.
    pub lost: usize,
    /// Tasks lost in transit.
    pub in_transit: usize,
    /// Tasks with more than one final status.
    pub duplicated: usize,
    /// SIGKILLs sent.
    pub kills: u32,
    /// Host starts (first included).
    pub starts: u32,
    /// Wall time of the scenario.
    pub secs: f64,
    /// Lines about each lost or duplicated task, for the log.
    pub details: Vec<String>,
}

impl Outcome {
    /// Whether the scenario passed: nothing lost (in transit excepted), nothing duplicated.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.once + self.in_transit == self.tasks
    }
}

/// How a [`Host`] starts after its first start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restart {
    /// `--resume <sandbox id>` once the sandbox is known (the reliability scenarios).
    Resume,
    /// `--continue-or-register` every time, named `--name`, with extra variables (the fleet:
    /// `AGENTSERVER_REFRESH_TOKEN`, no device login).
    ContinueOrRegister {
        /// `--name`.
        name: String,
        /// Extra environment variables.
        env: Vec<(String, String)>,
        /// Extra `run` arguments.
        args: Vec<String>,
    },
}

/// The variable a host start carries to its backend: `<name>#<start number>`, so a scripted
/// `claude` can say which host process ran a task.
pub const HOST_TAG_ENV: &str = "AGENTSERVER_TEST_HOST_TAG";

/// One `agentserver run` process, restarted as needed, always serving the same sandbox.
pub struct Host {
    bin: PathBuf,
    server: String,
    root: PathBuf,
    claude: PathBuf,
    log: PathBuf,
    restart: Restart,
    /// The sandbox it serves, once known.
    pub sandbox_id: Option<String>,
    child: Option<tokio::process::Child>,
    /// Starts so far (the first included).
    pub starts: u32,
    /// SIGKILLs sent.
    pub kills: u32,
}

impl Host {
    /// A host (not started) running `bin` against `server` with the scripted `claude`, its
    /// state under `root`.
    pub fn new(bin: &Path, server: &str, root: &Path, claude: &Path, restart: Restart) -> Self {
        Self {
            bin: bin.to_owned(),
            server: server.to_owned(),
            root: root.to_owned(),
            claude: claude.to_owned(),
            log: root.join("host.log"),
            restart,
            sandbox_id: None,
            child: None,
            starts: 0,
            kills: 0,
        }
    }

    /// The `--name` it registers with ([`Restart::ContinueOrRegister`] only).
    pub fn restart_name(&self) -> Option<&String> {
        match &self.restart {
            Restart::ContinueOrRegister { name, .. } => Some(name),
            Restart::Resume => None,
        }
    }

    /// Its `AGENTSERVER_HOME`.
    pub fn home(&self) -> PathBuf {
        self.root.join("agentserver-home")
    }

    /// Starts it (`--resume` once the sandbox is known, or `--continue-or-register`).
    pub fn start(&mut self) -> anyhow::Result<()> {
        let work = self.root.join("work");
        std::fs::create_dir_all(&work)?;
        std::fs::create_dir_all(self.home())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("run")
            .args(["--server", &self.server])
            .args(["--skip-open-browser", "--poll-interval", "0.2"])
            .arg("--claude-bin")
            .arg(&self.claude)
            .arg("--work-dir")
            .arg(&work);
        match (&self.restart, &self.sandbox_id) {
            (Restart::Resume, Some(id)) => {
                cmd.args(["--resume", id]);
            }
            (Restart::Resume, None) => {
                cmd.args(["--backend", "claudecode", "--name", "bench-reliability"]);
            }
            (Restart::ContinueOrRegister { name, env, args }, _) => {
                cmd.args([
                    "--backend",
                    "claudecode",
                    "--continue-or-register",
                    "--name",
                    name,
                ])
                .args(args)
                .envs(env.iter().map(|(k, v)| (k, v)));
            }
        }
        let tag = match &self.restart {
            Restart::ContinueOrRegister { name, .. } => format!("{name}#{}", self.starts + 1),
            Restart::Resume => format!("host#{}", self.starts + 1),
        };
        let child = cmd
            .current_dir(&work)
            .env(HOST_TAG_ENV, tag)
            .env("AGENTSERVER_HOME", self.home())
            .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
            .env("HOME", &self.root)
            .env("RUST_LOG", "info")
            .env_remove("AGENTSERVER_SERVER")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// SIGKILL, reaped.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.start_kill().is_ok() {
                self.kills += 1;
            }
            let _ = child.wait().await;
        }
    }

    /// Starts the host again if it is not running (killed, or it gave up on its own).
    pub async fn ensure_running(&mut self) -> anyhow::Result<()> {
        let exited = match &mut self.child {
            Some(child) => child.try_wait()?.is_some(),
            None => true,
        };
        if exited {
            self.child = None;
            self.start()?;
        }
        Ok(())
    }

    /// SIGTERM (drain), then SIGKILL if it does not exit within 20 s.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }

    /// Whether the host's state directory holds any trace of the task: a received marker, an
    /// outbox entry, or a rejected entry.
    pub fn has_trace(&self, task_id: &str) -> bool {
        let Some(sandbox) = &self.sandbox_id else {
            return false;
        };
        let dir = self.home().join("outbox").join(file_stem(sandbox));
        let stem = file_stem(task_id);
        dir.join("received").join(&stem).exists()
            || dir.join(format!("{stem}.json")).exists()
            || dir.join("rejected").join(format!("{stem}.json")).exists()
    }

    /// The last `lines` lines of its output (all starts).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// What became of `task`, served by `host`.
pub fn verdict(task: &TaskRecord, host: &Host) -> Verdict {
    match task.final_updates().len() {
        1 => Verdict::Once,
        0 if task.status == "assigned"
            && task.status_updates.is_empty()
            && !host.has_trace(&task.id) =>
        {
            Verdict::InTransit
        }
        0 => Verdict::Lost,
        _ => Verdict::Duplicated,
    }
}

/// Every created task is settled: it has a final status, or it has been in transit longer
/// than `transit_grace` (an answer that is merely slow is not counted as lost in transit).
fn all_settled(state: &MockState, ids: &[String], host: &Host, transit_grace: Duration) -> bool {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    ids.iter().all(|id| {
        state.task(id).is_some_and(|t| match verdict(&t, host) {
            Verdict::Once | Verdict::Duplicated => true,
            Verdict::InTransit => t.assigned_at.is_some_and(|at| {
                now_ms - at.timestamp_millis() > transit_grace.as_millis() as i64
            }),
            Verdict::Lost => false,
        })
    })
}

/// Runs one scenario and counts.
pub async fn run_scenario(
    agentserver: &Path,
    scenario: &Scenario,
    sizes: &Sizes,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut rng = StdRng::from_os_rng();
    let mock = MockServer::start(MockConfig::default()).await?;
    let state = mock.state();
    let tmp = tempfile::tempdir()?;
    let claude = tmp.path().join("claude");
    std::fs::write(&claude, FAKE_CLAUDE)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut host = Host::new(
        agentserver,
        &mock.url(),
        tmp.path(),
        &claude,
        Restart::Resume,
    );
    eprintln!("\n== reliability: {}", scenario.name);

    // First start, fault-free: log in, register, connect.
    host.start()?;
    let ready = state
        .wait_until(Duration::from_secs(60), |s| {
            s.sandboxes()
                .iter()
                .any(|sb| sb.agent_info.is_some() && s.tunnel.is_connected(&sb.id))
        })
        .await;
    if !ready {
        host.stop().await;
        anyhow::bail!(
            "the host did not connect within 60 s; its output:\n{}",
            host.log_tail(40)
        );
    }
    let sandbox_id = state.sandboxes()[0].id.clone();
    host.sandbox_id = Some(sandbox_id.clone());

    if let Some(delay) = scenario.late {
        state.answer_late("*", TASKS_PREFIX, "", delay, u32::MAX);
    }
    let mut ids: Vec<String> = Vec::new();
    let fault_start = Instant::now();
    let mut next_task = fault_start;
    let mut next_kill = fault_start + Duration::from_millis(rng.random_range(1000..4000));
    let mut next_gateway = fault_start;
    let mut next_slot = fault_start;
    let transit_grace = scenario.late.unwrap_or_default() + Duration::from_secs(5);
    loop {
        let now = Instant::now();
        if ids.len() < sizes.tasks && now >= next_task {
            let n = ids.len();
            ids.push(state.create_task(&sandbox_id, &format!("reliability task {n}")));
            next_task += sizes.spacing;
        }
        if ids.len() == sizes.tasks && all_settled(&state, &ids, &host, transit_grace) {
            break;
        }
        if now.duration_since(fault_start) > sizes.fault_cap {
            eprintln!(
                "   faults stopped after {} s with tasks unsettled",
                sizes.fault_cap.as_secs()
            );
            break;
        }
        if scenario.kills && now >= next_kill {
            host.kill().await;
            host.start()?;
            next_kill = Instant::now() + Duration::from_millis(rng.random_range(1000..4000));
        }
        if scenario.gateway && now >= next_gateway {
            if rng.random_bool(0.5) {
                state.fail_after_apply("PUT", TASK_ITEM_PREFIX, "/status", 504, 1);
            }
            if rng.random_bool(0.2) {
                state.fail_next("GET", TASK_ITEM_PREFIX, 503, 1);
            }
            next_gateway = now + Duration::from_millis(500);
        }
        if scenario.failures && now >= next_slot {
            if rng.random_bool(0.3) {
                let status = if rng.random_bool(0.5) { 503 } else { 502 };
                state.fail_with(status, Duration::from_millis(100));
            }
            next_slot = now + Duration::from_millis(100);
        }
        // A host that gave up on its own (e.g. a start refused by a failing server) comes back.
        host.ensure_running().await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    state.clear_faults();
    host.ensure_running().await?;
    let settle_start = Instant::now();
    while settle_start.elapsed() < sizes.settle && !all_settled(&state, &ids, &host, transit_grace)
    {
        host.ensure_running().await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Anything still on its way (a duplicate in flight) arrives now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    host.stop().await;

    let mut outcome = Outcome {
        name: scenario.name.to_owned(),
        tasks: ids.len(),
        kills: host.kills,
        starts: host.starts,
        ..Outcome::default()
    };
    for id in &ids {
        let Some(task) = state.task(id) else {
            outcome.lost += 1;
            outcome.details.push(format!("{id}: unknown to the mock"));
            continue;
        };
        let v = verdict(&task, &host);
        match v {
            Verdict::Once => outcome.once += 1,
            Verdict::Duplicated => outcome.duplicated += 1,
            Verdict::InTransit => outcome.in_transit += 1,
            Verdict::Lost => outcome.lost += 1,
        }
        if matches!(v, Verdict::Duplicated | Verdict::Lost | Verdict::InTransit) {
            let updates: Vec<String> = task
                .status_updates
                .iter()
                .map(|u| {
                    format!(
                        "{} {} {}",
                        u.at.format("%H:%M:%S%.3f"),
                        u.status,
                        u.body["failure_reason"].as_str().unwrap_or("")
                    )
                })
                .collect();
            outcome.details.push(format!(
                "{v:?} {id}: status {} assigned {:?} trace {} updates {updates:?}",
                task.status,
                task.assigned_at
                    .map(|a| a.format("%H:%M:%S%.3f").to_string()),
                host.has_trace(id),
            ));
        }
    }
    outcome.secs = started.elapsed().as_secs_f64();
    eprintln!(
        "   {} tasks: {} once, {} lost, {} in transit, {} duplicated; {} starts, {} kills; {:.0} s",
        outcome.tasks,
        outcome.once,
        outcome.lost,
        outcome.in_transit,
        outcome.duplicated,
        outcome.starts,
        outcome.kills,
        outcome.secs
    );
    for line in &outcome.details {
        eprintln!("   {line}");
    }
    if !outcome.passed() {
        eprintln!("   host log tail:\n{}", host.log_tail(60));
    }
    mock.shutdown().await;
    Ok(outcome)
}

/// Runs every scenario; a scenario that cannot run becomes a failed row.
pub async fn run_all(agentserver: &Path, sizes: &Sizes) -> Vec<Result<Outcome, String>> {
    let mut results = Vec::new();
    for scenario in &SCENARIOS {
        results.push(
            run_scenario(agentserver, scenario, sizes)
                .await
                .map_err(|e| format!("{}: failed: {e:#}", scenario.name)),
        );
    }
    results
}

/// The Markdown table of a reliability run.
pub fn table(results: &[Result<Outcome, String>]) -> String {
    let mut out = String::from(
        "| fault scenario | tasks | exactly one final | lost | lost in transit | duplicated | host starts (kills) | time |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        match r {
            Ok(o) => out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} ({}) | {:.0} s |\n",
                o.name,
                o.tasks,
                o.once,
                o.lost,
                o.in_transit,
                o.duplicated,
                o.starts,
                o.kills,
                o.secs
            )),
            Err(e) => out.push_str(&format!("| {e} | — | — | — | — | — | — | — |\n")),
        }
    }
    out
}
