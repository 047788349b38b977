//! Tunnel benchmark: throughput of one 256 MiB response and one 256 MiB request body (each the
//! median of `--repeat` runs, default 5) with the CPU time each side spent on it, p50/p99
//! latency of 10 000 small sequential requests, through the tunnel and directly over loopback;
//! the host's RSS: idle, its peak during each 256 MiB transfer, and after three bursts of 200
//! concurrent echo requests of random sizes up to 4 MiB and 10 s idle.
//!
//! ```text
//! cargo run --release -p agentserver-integration --bin tunnel-bench [-- --size-mib 256 --requests 10000 --repeat 5] [--json]
//! ```
//!
//! `--json` adds one `BENCH-JSON {...}` line at the end (the rows `agentserver-bench` reads).
//!
//! Layout: this process runs the local HTTP server, the mock agentserver and the client side;
//! the host's tunnel runs in a child process (this binary with `--host-child`), so its RSS is
//! measured alone. "Direct" = reqwest → local server over loopback. "Tunnel" = mock →
//! WebSocket → yamux → host → reqwest → local server, and back.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentserver::secret::Secret;
use agentserver::tunnel::{Tunnel, TunnelConfig};
use agentserver_integration::tunnel_support::{
    HttpProxyBackend, fixed_info, pattern, start_local_server,
};
use agentserver_mock::{MockConfig, MockServer};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--host-child") {
        return host_child(&args[2..]).await;
    }
    let mut size_mib = 256u64;
    let mut requests = 10_000usize;
    let mut repeat = 5usize;
    let mut json = false;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--size-mib" => {
                size_mib = args[i + 1].parse()?;
                i += 1;
            }
            "--requests" => {
                requests = args[i + 1].parse()?;
                i += 1;
            }
            "--repeat" => {
                repeat = args[i + 1].parse()?;
                i += 1;
            }
            "--json" => json = true,
            other => anyhow::bail!("unknown argument {other}"),
        }
        i += 1;
    }
    bench(size_mib, requests, repeat, json).await
}

/// The host side: a tunnel serving an HTTP proxy backend, until stdin closes.
async fn host_child(args: &[String]) -> anyhow::Result<()> {
    agentserver::memory::note_startup_files();
    let [server, sandbox, token, local] = args else {
        anyhow::bail!("usage: --host-child SERVER SANDBOX TOKEN LOCAL_URL");
    };
    let mut config = TunnelConfig::new(server.clone(), sandbox.clone(), Secret::new(token.clone()));
    // `TUNNEL_BENCH_WINDOW=BYTES`: the host's per-stream receive window (experiments).
    if let Some(window) = std::env::var("TUNNEL_BENCH_WINDOW")
        .ok()
        .and_then(|w| w.parse().ok())
    {
        config.mux.max_stream_window = window;
    }
    // `TUNNEL_BENCH_GROWN_WINDOW=BYTES`: how far auto-tuning may grow a stream's window.
    if let Some(limit) = std::env::var("TUNNEL_BENCH_GROWN_WINDOW")
        .ok()
        .and_then(|w| w.parse().ok())
    {
        config.mux.grown_window_limit = limit;
    }
    let tunnel = Tunnel::new(
        config,
        Arc::new(HttpProxyBackend::new(local.clone())),
        fixed_info(r#"{"hostname":"bench","os":"linux","agent_version":"bench"}"#),
    );
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        stop.cancel();
    });
    tunnel.run(cancel).await?;
    Ok(())
}

/// One reading of a process's memory from `/proc/PID/status`, KiB.
struct Rss {
    /// `VmRSS`.
    now: u64,
    /// `VmHWM`: the peak since start or the last [`reset_hwm`].
    peak: u64,
    /// `RssAnon`: heap and stacks, without the mapped executable and libraries.
    heap: u64,
}

fn rss_kib(pid: u32) -> Rss {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Rss {
        now: field("VmRSS:"),
        peak: field("VmHWM:"),
        heap: field("RssAnon:"),
    }
}

/// CPU time a process has used so far, all its threads together (the first field of each
/// `/proc/PID/task/TID/schedstat`: nanoseconds on a CPU). Threads that have exited are not
/// counted; the bench's and the host's runtime threads live for the whole run.
fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// Wall time and the CPU time of this process (client, mock server and local server) and of
/// the host child over one transfer.
#[derive(Clone, Copy)]
struct Cost {
    wall: Duration,
    bench_cpu: Duration,
    host_cpu: Duration,
}

/// Runs `transfer` `repeat` times and returns the cost of the run with the median wall time.
async fn median_cost<F, Fut>(host_pid: u32, repeat: usize, mut transfer: F) -> anyhow::Result<Cost>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let me = std::process::id();
    let mut runs = Vec::with_capacity(repeat);
    for _ in 0..repeat.max(1) {
        let (bench0, host0) = (cpu_time(me), cpu_time(host_pid));
        let start = Instant::now();
        transfer().await?;
        let wall = start.elapsed();
        runs.push(Cost {
            wall,
            bench_cpu: cpu_time(me).saturating_sub(bench0),
            host_cpu: cpu_time(host_pid).saturating_sub(host0),
        });
    }
    runs.sort_by_key(|c| c.wall);
    Ok(runs[runs.len() / 2])
}

impl Cost {
    fn secs(&self) -> f64 {
        self.wall.as_secs_f64()
    }

    /// CPU seconds per GiB moved, both processes together.
    fn cpu_per_gib(&self, bytes: u64) -> f64 {
        (self.bench_cpu + self.host_cpu).as_secs_f64() / (bytes as f64 / f64::from(1u32 << 30))
    }

    /// One row of the CPU table.
    fn row(&self, what: &str, bytes: u64) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "| {what} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            ms(self.wall),
            ms(self.bench_cpu),
            ms(self.host_cpu),
            (self.bench_cpu + self.host_cpu).as_secs_f64() / self.wall.as_secs_f64(),
            self.cpu_per_gib(bytes)
        )
    }
}

/// One sequential small request through the tunnel (`GET /small`); its body.
async fn small_through_tunnel(
    state: &agentserver_mock::MockState,
    id: &str,
) -> anyhow::Result<Vec<u8>> {
    Ok(state
        .tunnel
        .open_http(id, "GET", "/small", vec![], vec![])
        .await?
        .read_body()
        .await?)
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS (Linux: `5` to `clear_refs`).
fn reset_hwm(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Bursts of concurrent echo requests of random sizes: the bodies are checked, the host's
/// RSS is read after each burst.
async fn bursts(
    state: &std::sync::Arc<agentserver_mock::MockState>,
    id: &str,
    pid: u32,
    bursts: usize,
    per_burst: usize,
    max_bytes: usize,
) -> anyhow::Result<Vec<u64>> {
    use rand::Rng;
    let mut after = Vec::new();
    for burst in 0..bursts {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..per_burst {
            let size = rand::rng().random_range(0..=max_bytes);
            let body = pattern((burst * per_burst + i) as u64, size);
            let state = std::sync::Arc::clone(state);
            let id = id.to_owned();
            set.spawn(async move {
                let back = state
                    .tunnel
                    .open_http(&id, "POST", "/echo", vec![], body.clone())
                    .await?
                    .read_body()
                    .await?;
                anyhow::ensure!(
                    back == body,
                    "echo of {} bytes came back different",
                    body.len()
                );
                Ok(())
            });
        }
        while let Some(done) = set.join_next().await {
            done??;
        }
        after.push(rss_kib(pid).now);
    }
    Ok(after)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn bench(size_mib: u64, requests: usize, repeat: usize, json: bool) -> anyhow::Result<()> {
    let local = start_local_server().await;
    let mock = MockServer::start(MockConfig::default()).await?;
    let state = mock.state();
    let sandbox = state.add_sandbox("bench", "custom");
    let exe = std::env::current_exe()?;
    // `TUNNEL_BENCH_HOST_WRAPPER="heaptrack -o FILE"` runs the host under a profiler (its RSS
    // figures are then the wrapper's).
    let wrapper = std::env::var("TUNNEL_BENCH_HOST_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = tokio::process::Command::new(program);
            c.args(words).arg(&exe);
            c
        }
        None => tokio::process::Command::new(&exe),
    };
    let mut child = command
        .arg("--host-child")
        .arg(mock.url())
        .arg(&sandbox.id)
        .arg(&sandbox.tunnel_token)
        .arg(&local)
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let id = sandbox.id.clone();
    anyhow::ensure!(
        state
            .wait_until(Duration::from_secs(30), |s| s.tunnel.is_connected(&id))
            .await,
        "host did not connect"
    );
    let idle_rss = rss_kib(pid).now;
    // Once start-up has settled the host releases the code only start-up ran (memory.rs).
    tokio::time::sleep(agentserver::memory::SETTLED + Duration::from_secs(1)).await;
    let settled_rss = rss_kib(pid).now;
    // What settling costs the next request: its code mapped back, a new local connection.
    let t = Instant::now();
    small_through_tunnel(&state, &id).await?;
    let first_after_settle = t.elapsed();
    let client = reqwest::Client::new();
    let size = size_mib * 1024 * 1024;
    let path = format!("/bytes/{size}");

    // Warm-up (connection pools, allocator).
    for _ in 0..50 {
        client
            .get(format!("{local}/small"))
            .send()
            .await?
            .bytes()
            .await?;
        small_through_tunnel(&state, &id).await?;
    }

    // Throughput: each transfer `repeat` times, the run of median wall time kept (one 256 MiB
    // upload over loopback lasts under 100 ms, so a single run is at the mercy of the
    // scheduler). The download's first MiB through the tunnel is checked against the pattern.
    reset_hwm(pid);
    let direct_down = median_cost(pid, repeat, || async {
        let mut body = client
            .get(format!("{local}{path}"))
            .send()
            .await?
            .bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            n += chunk?.len() as u64;
        }
        anyhow::ensure!(n == size, "direct: short body");
        Ok(())
    })
    .await?;
    let tunnel_down = median_cost(pid, repeat, || async {
        let mut resp = state
            .tunnel
            .open_http(&id, "GET", &path, vec![], vec![])
            .await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut n_total = 0u64;
        let mut head = Vec::new();
        loop {
            let n = resp.body.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if head.len() < 1 << 20 {
                head.extend_from_slice(&buf[..n.min((1 << 20) - head.len())]);
            }
            n_total += n as u64;
        }
        anyhow::ensure!(n_total == size, "tunnel: short body");
        anyhow::ensure!(head == pattern(0, head.len()), "tunnel: corrupted body");
        Ok(())
    })
    .await?;
    let peak_after_bulk = rss_kib(pid).peak;

    // Upload: one body of the same size to a route that counts it as it streams in.
    let upload = bytes::Bytes::from(pattern(0, size as usize));
    let direct_up = median_cost(pid, repeat, || async {
        let counted = client
            .post(format!("{local}/discard"))
            .body(upload.clone())
            .send()
            .await?
            .text()
            .await?;
        anyhow::ensure!(
            counted == size.to_string(),
            "direct upload: {counted} bytes arrived"
        );
        Ok(())
    })
    .await?;
    reset_hwm(pid);
    let tunnel_up = median_cost(pid, repeat, || async {
        let counted = state
            .tunnel
            .open_http(&id, "POST", "/discard", vec![], upload.clone())
            .await?
            .read_body()
            .await?;
        anyhow::ensure!(
            counted == size.to_string().as_bytes(),
            "tunnel upload: {} bytes arrived",
            String::from_utf8_lossy(&counted)
        );
        Ok(())
    })
    .await?;
    let (direct_secs, tunnel_secs) = (direct_down.secs(), tunnel_down.secs());
    let (direct_up_secs, tunnel_up_secs) = (direct_up.secs(), tunnel_up.secs());
    let peak_upload = rss_kib(pid).peak;
    // Latency, direct.
    let mut direct_lat = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        let b = client
            .get(format!("{local}/small"))
            .send()
            .await?
            .bytes()
            .await?;
        direct_lat.push(t.elapsed());
        anyhow::ensure!(&b[..] == b"ok");
    }
    // Latency, tunnel.
    let mut tunnel_lat = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        let b = small_through_tunnel(&state, &id).await?;
        tunnel_lat.push(t.elapsed());
        anyhow::ensure!(b == b"ok");
    }
    direct_lat.sort();
    tunnel_lat.sort();
    let Rss {
        now: rss_end,
        peak: hwm,
        ..
    } = rss_kib(pid);

    // Memory given back: three bursts of 200 concurrent echoes of 0–4 MiB, then 10 s idle.
    let after_bursts = bursts(&state, &id, pid, 3, 200, 4 << 20).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let Rss {
        now: after_idle,
        heap: after_idle_heap,
        ..
    } = rss_kib(pid);

    let mib = size as f64 / (1024.0 * 1024.0);
    let direct_tp = mib / direct_secs;
    let tunnel_tp = mib / tunnel_secs;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (dp50, dp99) = (percentile(&direct_lat, 0.5), percentile(&direct_lat, 0.99));
    let (tp50, tp99) = (percentile(&tunnel_lat, 0.5), percentile(&tunnel_lat, 0.99));
    println!("| measure | direct loopback | through the tunnel | tunnel / direct |");
    println!("|---|---|---|---|");
    println!(
        "| throughput, one {size_mib} MiB body | {direct_tp:.0} MiB/s | {tunnel_tp:.0} MiB/s | {:.2} |",
        tunnel_tp / direct_tp
    );
    println!(
        "| p50 latency, {requests} small requests | {:.3} ms | {:.3} ms | {:.2} |",
        ms(dp50),
        ms(tp50),
        ms(tp50) / ms(dp50)
    );
    println!(
        "| p99 latency, {requests} small requests | {:.3} ms | {:.3} ms | {:.2} |",
        ms(dp99),
        ms(tp99),
        ms(tp99) / ms(dp99)
    );
    println!();
    println!(
        "first small request after the host settled (its code mapped back, a new local connection): {:.3} ms, {:.1}× the tunnel's p50",
        ms(first_after_settle),
        ms(first_after_settle) / ms(tp50)
    );
    let up_direct = mib / direct_up_secs;
    let up_tunnel = mib / tunnel_up_secs;
    println!(
        "| upload, one {size_mib} MiB body | {up_direct:.0} MiB/s | {up_tunnel:.0} MiB/s | {:.2} |",
        up_tunnel / up_direct
    );
    println!();
    // Where the time of each transfer goes. The direct path crosses loopback once (client →
    // local server, both in this process); the tunnel's twice (the mock's WebSocket → host,
    // host → local server) and adds the WebSocket and yamux framing on both ends. The
    // ceiling assumes every core busy with this transfer alone: an upper bound.
    println!(
        "| {size_mib} MiB transfer | wall ms | bench process CPU ms | host CPU ms | cores busy | CPU s per GiB |"
    );
    println!("|---|---|---|---|---|---|");
    println!("{}", direct_down.row("download, direct", size));
    println!("{}", tunnel_down.row("download, tunnel", size));
    println!("{}", direct_up.row("upload, direct", size));
    println!("{}", tunnel_up.row("upload, tunnel", size));
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    println!(
        "upload through the tunnel, CPU-bound ceiling on {cores} cores: {:.0} MiB/s ({:.2}× direct)",
        cores * 1024.0 / tunnel_up.cpu_per_gib(size),
        cores * 1024.0 / tunnel_up.cpu_per_gib(size) / up_direct
    );
    println!();
    let kib_mib = |k: u64| k as f64 / 1024.0;
    println!("| host RSS | MiB | / after connect |");
    println!("|---|---|---|");
    println!("| after connect | {:.1} | 1.00 |", kib_mib(idle_rss));
    println!(
        "| after connect, settled ({} s later) | {:.1} | {:.2} |",
        (agentserver::memory::SETTLED + Duration::from_secs(1)).as_secs(),
        kib_mib(settled_rss),
        settled_rss as f64 / idle_rss as f64
    );
    println!(
        "| peak during the {size_mib} MiB download | {:.1} | {:.2} |",
        kib_mib(peak_after_bulk),
        peak_after_bulk as f64 / idle_rss as f64
    );
    println!(
        "| peak during the {size_mib} MiB upload | {:.1} | {:.2} |",
        kib_mib(peak_upload),
        peak_upload as f64 / idle_rss as f64
    );
    for (i, rss) in after_bursts.iter().enumerate() {
        println!(
            "| after burst {} of 200 echoes (0–4 MiB) | {:.1} | {:.2} |",
            i + 1,
            kib_mib(*rss),
            *rss as f64 / idle_rss as f64
        );
    }
    println!(
        "| after the bursts and 10 s idle | {:.1} (heap {:.1}) | {:.2} |",
        kib_mib(after_idle),
        kib_mib(after_idle_heap),
        after_idle as f64 / idle_rss as f64
    );
    println!();
    println!(
        "host RSS: {:.1} MiB idle after connect, {:.1} MiB peak during the bulk transfer, {:.1} MiB at the end (peak over the run {:.1} MiB)",
        idle_rss as f64 / 1024.0,
        peak_after_bulk as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    if json {
        let row = |measure: String, unit: &str, base: Option<f64>, value: f64| {
            serde_json::json!({"measure": measure, "unit": unit,
                "baseline": base.map(|_| "direct loopback"), "baseline_value": base, "value": value})
        };
        let summary = serde_json::json!({"bench": "tunnel", "rows": [
            row(format!("throughput, one {size_mib} MiB body"), "MiB/s", Some(direct_tp), tunnel_tp),
            row(format!("p50 latency, {requests} small requests"), "ms", Some(ms(dp50)), ms(tp50)),
            row(format!("p99 latency, {requests} small requests"), "ms", Some(ms(dp99)), ms(tp99)),
            row(format!("throughput, one {size_mib} MiB upload"), "MiB/s", Some(up_direct), up_tunnel),
            row("host RSS, idle after connect".into(), "MiB", None, idle_rss as f64 / 1024.0),
            row("host RSS, idle after connect, settled".into(), "MiB", None, settled_rss as f64 / 1024.0),
            row(format!("host peak RSS, {size_mib} MiB download"), "MiB", None, peak_after_bulk as f64 / 1024.0),
            row(format!("host peak RSS, {size_mib} MiB upload"), "MiB", None, peak_upload as f64 / 1024.0),
            serde_json::json!({"measure": "host RSS after 3 bursts of 200 concurrent 0-4 MiB echoes + 10 s idle",
                "unit": "MiB", "baseline": "RSS after connect", "baseline_value": idle_rss as f64 / 1024.0,
                "value": after_idle as f64 / 1024.0}),
        ]});
        println!("BENCH-JSON {summary}");
    }
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    Ok(())
}
