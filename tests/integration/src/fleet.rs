//! The fleet simulation (issue 21, point 7): several real `agentserver run` processes against one
//! in-process mock agentserver, each its own sandbox with its own state directory (as the pods
//! of `deploy/kubernetes`), provisioned headless with `AGENTSERVER_REFRESH_TOKEN` (no device
//! login) and restarted with `--continue-or-register`. Tasks are spread over the sandboxes; while
//! they run, hosts are SIGKILLed at random and started again, the server kills tunnel
//! connections abruptly, and windows of 503s hit every API request. Everything is decided from
//! the mock's records:
//!
//! * every task has exactly one final status ([`reliability::verdict`]: once, duplicated, lost,
//!   or lost in transit — a poll answer a killed host never took in, which only the server could
//!   recover; see docs/performance.md);
//! * no task ran on two hosts or twice: the scripted `claude` puts the host process's tag
//!   (`<host name>#<start number>`, [`reliability::HOST_TAG_ENV`]) into an event, and the mock's
//!   bridge record of each task's session must hold at most one tag, of the task's own host;
//! * the figures: tasks/s, poll-to-ack (the mock assigning a task in a poll answer → the host's
//!   first status update for it, `running`) p50/p99, and end to end (created → final) p99.
//!
//! `agentserver-bench --only fleet [--quick]` runs [`Sizes::FULL`] (10 hosts, 1000 tasks);
//! `host/tests/it/fleet.rs` runs [`Sizes::CI`].

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use agentserver_mock::{MockConfig, MockServer, MockState};
use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::reliability::{self, Host, Restart, Verdict};

/// A `claude` stand-in that says which host process ran it (event ids unique per run, so the
/// bridge keeps a second run's events).
const FAKE_CLAUDE: &str = r#"#!/bin/sh
read init; read user
echo "{\"type\":\"system\",\"subtype\":\"init\",\"session_id\":\"s$$\",\"uuid\":\"u-$$-1\"}"
echo "{\"type\":\"assistant\",\"message\":{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"ran on [$AGENTSERVER_TEST_HOST_TAG]\"}]},\"uuid\":\"u-$$-2\"}"
echo "{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"done\",\"num_turns\":1,\"uuid\":\"u-$$-3\"}"
"#;

/// How big a fleet run is.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Host processes.
    pub hosts: usize,
    /// Tasks, spread round-robin over the hosts' sandboxes.
    pub tasks: usize,
    /// `--max-concurrent-tasks` of each host.
    pub concurrency: u16,
    /// A random host is SIGKILLed and restarted every this many milliseconds (uniform range).
    pub kill_every_ms: (u64, u64),
    /// A random sandbox's tunnel is killed by the server every this many milliseconds.
    pub drop_every_ms: (u64, u64),
    /// Probability, per 100 ms window, that every API request in it answers 503.
    pub fault_window_p: f64,
    /// Longest time the faults run.
    pub fault_cap: Duration,
    /// Longest time, once the faults stop, the tasks get to settle.
    pub settle: Duration,
}

impl Sizes {
    /// The measured run: 10 hosts, 1000 tasks.
    pub const FULL: Self = Self {
        hosts: 10,
        tasks: 1000,
        concurrency: 2,
        kill_every_ms: (100, 600),
        drop_every_ms: (100, 500),
        fault_window_p: 0.1,
        fault_cap: Duration::from_secs(600),
        settle: Duration::from_secs(120),
    };
    /// The nextest run: 10 hosts, 200 tasks.
    pub const CI: Self = Self {
        hosts: 10,
        tasks: 200,
        concurrency: 2,
        kill_every_ms: (100, 600),
        drop_every_ms: (100, 500),
        fault_window_p: 0.1,
        fault_cap: Duration::from_secs(60),
        settle: Duration::from_secs(60),
    };
    /// `--quick`: a check that everything runs.
    pub const QUICK: Self = Self {
        hosts: 4,
        tasks: 40,
        ..Self::CI
    };
}

/// What a fleet run measured.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// Host processes.
    pub hosts: usize,
    /// Tasks created.
    pub tasks: usize,
    /// Tasks with exactly one final status.
    pub once: usize,
    /// Tasks with no final status, not in transit.
    pub lost: usize,
    /// Tasks lost in transit (see [`Verdict::InTransit`]).
    pub in_transit: usize,
    /// Tasks with more than one final status.
    pub duplicated: usize,
    /// Tasks whose record names two host processes (run twice, or on two hosts).
    pub ran_twice: usize,
    /// Tasks run by a host other than the one serving their sandbox.
    pub wrong_host: usize,
    /// Completed tasks whose record names no host process at all (their events did not reach
    /// the bridge: a task whose bridge setup failed runs without it). The checks of
    /// [`Figures::ran_twice`] and [`Figures::wrong_host`] cover the others.
    pub untagged: usize,
    /// SIGKILLs sent.
    pub kills: u32,
    /// Host starts (first ones included).
    pub starts: u32,
    /// Tunnels the server killed.
    pub tunnel_drops: u32,
    /// 100 ms windows of 503s.
    pub fault_windows: u32,
    /// From the first task created to the last final status.
    pub busy_secs: f64,
    /// `tasks / busy_secs`.
    pub tasks_per_sec: f64,
    /// Poll-to-ack, median, ms.
    pub poll_to_ack_p50_ms: f64,
    /// Poll-to-ack, 99th percentile, ms.
    pub poll_to_ack_p99_ms: f64,
    /// Created → final status, 99th percentile, ms.
    pub end_to_end_p99_ms: f64,
    /// Wall time of the whole run (setup and settle included).
    pub secs: f64,
    /// Lines about each task that was not exactly-once on one host.
    pub details: Vec<String>,
}

impl Figures {
    /// Nothing lost (in transit excepted), nothing duplicated, nothing run twice or elsewhere.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.ran_twice == 0
            && self.wrong_host == 0
            && self.once + self.in_transit == self.tasks
    }

    /// The Markdown table of the run.
    pub fn table(&self) -> String {
        format!(
            "| hosts | tasks | exactly one final | lost | lost in transit | duplicated | ran twice / elsewhere (run record missing) | host starts (kills) | tunnel drops | 503 windows | tasks/s | poll-to-ack p50 / p99 | end-to-end p99 | time |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n\
             | {} | {} | {} | {} | {} | {} | {} / {} ({}) | {} ({}) | {} | {} | {:.1} | {:.0} / {:.0} ms | {:.1} s | {:.0} s |\n",
            self.hosts,
            self.tasks,
            self.once,
            self.lost,
            self.in_transit,
            self.duplicated,
            self.ran_twice,
            self.wrong_host,
            self.untagged,
            self.starts,
            self.kills,
            self.tunnel_drops,
            self.fault_windows,
            self.tasks_per_sec,
            self.poll_to_ack_p50_ms,
            self.poll_to_ack_p99_ms,
            self.end_to_end_p99_ms / 1000.0,
            self.secs,
        )
    }
}

fn host_name(i: usize) -> String {
    format!("fleet-{i}")
}

/// The host tags (`fleet-3#2`) the task's bridge session holds.
fn tags(state: &MockState, session_id: Option<&str>) -> BTreeSet<String> {
    let Some(sid) = session_id else {
        return BTreeSet::new();
    };
    let mut out = BTreeSet::new();
    for event in state.bridge_worker_events(sid) {
        let text = event.to_string();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("ran on [") {
            rest = &rest[at + "ran on [".len()..];
            if let Some(end) = rest.find(']') {
                out.insert(rest[..end].to_owned());
                rest = &rest[end..];
            }
        }
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn settled(state: &MockState, ids: &[(String, usize)], hosts: &[Host]) -> bool {
    let now = chrono::Utc::now();
    ids.iter().all(|(id, h)| {
        state
            .task(id)
            .is_some_and(|t| match reliability::verdict(&t, &hosts[*h]) {
                Verdict::Once | Verdict::Duplicated => true,
                // Taken as settled a while after its assignment, so a slow answer is not
                // mistaken for a lost one.
                Verdict::InTransit => t
                    .assigned_at
                    .is_some_and(|at| (now - at).num_milliseconds() > 5000),
                Verdict::Lost => false,
            })
    })
}

/// Runs the fleet and measures it.
pub async fn run(agentserver: &Path, sizes: &Sizes) -> anyhow::Result<Figures> {
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
    let workspace = state.default_workspace_id();
    let mut hosts: Vec<Host> = (0..sizes.hosts)
        .map(|i| {
            // Each host its own refresh token: they rotate, so a shared one serves only one.
            let (_, refresh) = state.issue_token_pair(
                Some(&workspace),
                &["openid", "profile", "agent:register"],
                "owner",
            );
            let root = tmp.path().join(host_name(i));
            std::fs::create_dir_all(&root)?;
            Ok(Host::new(
                agentserver,
                &mock.url(),
                &root,
                &claude,
                Restart::ContinueOrRegister {
                    name: host_name(i),
                    env: vec![(
                        agentserver::auth::headless::REFRESH_TOKEN_ENV.to_owned(),
                        refresh,
                    )],
                    args: vec![
                        "--max-concurrent-tasks".into(),
                        sizes.concurrency.to_string(),
                        // The scripted claude edits nothing: the tasks may share the directory.
                        "--isolation".into(),
                        "none".into(),
                    ],
                },
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    eprintln!("\n== fleet: {} hosts, {} tasks", sizes.hosts, sizes.tasks);

    // Every host registers (headless, fault-free) and connects.
    for host in &mut hosts {
        host.start()?;
    }
    let ready = state
        .wait_until(Duration::from_secs(90), |s| {
            let sbs = s.sandboxes();
            sbs.len() == sizes.hosts
                && sbs
                    .iter()
                    .all(|sb| sb.agent_info.is_some() && s.tunnel.is_connected(&sb.id))
        })
        .await;
    if !ready {
        let tail = hosts[0].log_tail(30);
        for host in &mut hosts {
            host.stop().await;
        }
        anyhow::bail!(
            "the fleet did not connect within 90 s ({} sandboxes); host 0's output:\n{tail}",
            state.sandboxes().len()
        );
    }
    for sb in state.sandboxes() {
        let i = hosts
            .iter()
            .position(|h| h.restart_name() == Some(&sb.name))
            .with_context(|| format!("a sandbox no host registered: {}", sb.name))?;
        hosts[i].sandbox_id = Some(sb.id.clone());
    }
    anyhow::ensure!(
        state
            .requests_to("POST", "/api/oauth2/device/auth")
            .is_empty(),
        "a host started a device login"
    );

    let ids: Vec<(String, usize)> = (0..sizes.tasks)
        .map(|n| {
            let h = n % sizes.hosts;
            let sandbox = hosts[h].sandbox_id.clone().unwrap_or_default();
            (state.create_task(&sandbox, &format!("fleet task {n}")), h)
        })
        .collect();
    let busy_start = chrono::Utc::now();

    let mut tunnel_drops = 0u32;
    let mut fault_windows = 0u32;
    let fault_start = Instant::now();
    let next = |rng: &mut StdRng, (lo, hi): (u64, u64)| {
        Instant::now() + Duration::from_millis(rng.random_range(lo..hi))
    };
    let mut next_kill = next(&mut rng, sizes.kill_every_ms);
    let mut next_drop = next(&mut rng, sizes.drop_every_ms);
    let mut next_window = Instant::now();
    loop {
        if settled(&state, &ids, &hosts) {
            break;
        }
        if fault_start.elapsed() > sizes.fault_cap {
            eprintln!(
                "   faults stopped after {} s with tasks unsettled",
                sizes.fault_cap.as_secs()
            );
            break;
        }
        let now = Instant::now();
        if now >= next_kill {
            let h = rng.random_range(0..hosts.len());
            hosts[h].kill().await;
            hosts[h].start()?;
            next_kill = next(&mut rng, sizes.kill_every_ms);
        }
        if now >= next_drop {
            let h = rng.random_range(0..hosts.len());
            if let Some(id) = &hosts[h].sandbox_id
                && state.tunnel.drop_connection(id)
            {
                tunnel_drops += 1;
            }
            next_drop = next(&mut rng, sizes.drop_every_ms);
        }
        if now >= next_window {
            if rng.random_bool(sizes.fault_window_p) {
                state.fail_with(503, Duration::from_millis(100));
                fault_windows += 1;
            }
            next_window = now + Duration::from_millis(100);
        }
        for host in &mut hosts {
            host.ensure_running().await?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    state.clear_faults();
    let settle_start = Instant::now();
    while settle_start.elapsed() < sizes.settle && !settled(&state, &ids, &hosts) {
        for host in &mut hosts {
            host.ensure_running().await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Anything still on its way (a duplicate in flight) arrives now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for host in &mut hosts {
        host.stop().await;
    }

    let mut f = Figures {
        hosts: sizes.hosts,
        tasks: ids.len(),
        tunnel_drops,
        fault_windows,
        kills: hosts.iter().map(|h| h.kills).sum(),
        starts: hosts.iter().map(|h| h.starts).sum(),
        ..Figures::default()
    };
    let mut poll_to_ack = Vec::new();
    let mut end_to_end = Vec::new();
    let mut last_final = busy_start;
    for (id, h) in &ids {
        let Some(task) = state.task(id) else {
            f.lost += 1;
            f.details.push(format!("{id}: unknown to the mock"));
            continue;
        };
        let v = reliability::verdict(&task, &hosts[*h]);
        match v {
            Verdict::Once => f.once += 1,
            Verdict::Duplicated => f.duplicated += 1,
            Verdict::InTransit => f.in_transit += 1,
            Verdict::Lost => f.lost += 1,
        }
        let ran = tags(&state, task.session_id.as_deref());
        let own = format!("{}#", host_name(*h));
        if ran.len() > 1 {
            f.ran_twice += 1;
        }
        if ran.iter().any(|t| !t.starts_with(&own)) {
            f.wrong_host += 1;
        }
        if task.status == "completed" && ran.is_empty() {
            f.untagged += 1;
        }
        if v != Verdict::Once || ran.len() > 1 || ran.iter().any(|t| !t.starts_with(&own)) {
            f.details.push(format!(
                "{v:?} {id} (host {}): status {}, ran on {ran:?}, {} final updates",
                host_name(*h),
                task.status,
                task.final_updates().len()
            ));
        }
        if let (Some(assigned), Some(first)) = (task.assigned_at, task.status_updates.first()) {
            poll_to_ack.push((first.at - assigned).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
        if let Some(done) = task.final_updates().first().map(|u| u.at) {
            end_to_end
                .push((done - task.created_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            last_final = last_final.max(done);
        }
    }
    poll_to_ack.sort_by(f64::total_cmp);
    end_to_end.sort_by(f64::total_cmp);
    f.poll_to_ack_p50_ms = percentile(&poll_to_ack, 50.0);
    f.poll_to_ack_p99_ms = percentile(&poll_to_ack, 99.0);
    f.end_to_end_p99_ms = percentile(&end_to_end, 99.0);
    f.busy_secs = (last_final - busy_start).num_milliseconds() as f64 / 1000.0;
    f.tasks_per_sec = if f.busy_secs > 0.0 {
        f.once as f64 / f.busy_secs
    } else {
        0.0
    };
    f.secs = started.elapsed().as_secs_f64();
    eprintln!(
        "   {} tasks: {} once, {} lost, {} in transit, {} duplicated, {} ran twice, {} elsewhere; \
         {} starts, {} kills, {} tunnel drops, {} 503 windows; {:.1} tasks/s, poll-to-ack p99 {:.0} ms; {:.0} s",
        f.tasks,
        f.once,
        f.lost,
        f.in_transit,
        f.duplicated,
        f.ran_twice,
        f.wrong_host,
        f.starts,
        f.kills,
        f.tunnel_drops,
        f.fault_windows,
        f.tasks_per_sec,
        f.poll_to_ack_p99_ms,
        f.secs
    );
    for line in &f.details {
        eprintln!("   {line}");
    }
    if !f.passed() {
        eprintln!("   host 0 log tail:\n{}", hosts[0].log_tail(40));
    }
    mock.shutdown().await;
    Ok(f)
}
