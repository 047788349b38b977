//! opencode benchmark: requests per second and p50/p99 latency of `GET /global/health` on the
//! **real** `opencode serve`, through the tunnel and directly, plus the host's RSS next to
//! opencode's.
//!
//! ```text
//! cargo run --release -p agentserver-integration --bin opencode-bench [-- --requests 2000 --concurrency 8] [--json]
//! ```
//!
//! Layout: this process runs the fake LLM, the mock agentserver and the client side; the host
//! (tunnel + opencode backend, which starts `opencode serve`) runs in a child process (this
//! binary with `--host-child`), so its RSS is measured alone. "Direct" = reqwest → opencode
//! over loopback. "Tunnel" = mock → WebSocket → yamux → host → reqwest → opencode, and back.
//! Needs the binary from `bash scripts/install-test-deps.sh`. `--json` adds one
//! `BENCH-JSON {...}` line at the end (the rows `agentserver-bench` reads).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentserver::secret::Secret;
use agentserver::tunnel::{Tunnel, TunnelConfig};
use agentserver_backend_opencode::OpencodeBackend;
use agentserver_integration::opencode_support::{OpencodeEnv, free_port};
use agentserver_integration::tunnel_support::fixed_info;
use agentserver_mock::fake_llm::FakeLlm;
use agentserver_mock::{MockConfig, MockServer, MockState};
use agentserver_plugin_api::Backend;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--host-child") {
        return host_child(&args[2..]).await;
    }
    let mut requests = 2000usize;
    let mut concurrency = 8usize;
    let mut json = false;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--requests" => {
                requests = args[i + 1].parse()?;
                i += 1;
            }
            "--concurrency" => {
                concurrency = args[i + 1].parse()?;
                i += 1;
            }
            "--json" => json = true,
            other => anyhow::bail!("unknown argument {other}"),
        }
        i += 1;
    }
    bench(requests, concurrency.max(1), json).await
}

/// The host side: the opencode backend (starting `opencode serve`) behind a tunnel, until
/// stdin closes. Prints `READY <opencode pid> <opencode base URL>` once both are up.
async fn host_child(args: &[String]) -> anyhow::Result<()> {
    let [server, sandbox, token, llm] = args else {
        anyhow::bail!("usage: --host-child SERVER SANDBOX TOKEN OPENAI_BASE_URL");
    };
    let env = OpencodeEnv::new(llm.clone())?;
    let backend = OpencodeBackend::new(env.config(free_port()));
    backend.start().await?;
    let pid = backend.server_pid().unwrap_or(0);
    let base = backend
        .base_url()
        .ok_or_else(|| anyhow::anyhow!("opencode is not ready"))?;
    let config = TunnelConfig::new(server.clone(), sandbox.clone(), Secret::new(token.clone()));
    let tunnel = Tunnel::new(
        config,
        Arc::new(backend.clone()),
        fixed_info(r#"{"hostname":"bench","os":"linux","agent_version":"bench"}"#),
    );
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        stop.cancel();
    });
    println!("READY {pid} {base}");
    tunnel.run(cancel).await?;
    backend.shutdown().await;
    Ok(())
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len().saturating_sub(1))]
}

/// One request each way; the body must be opencode's health answer.
async fn direct_once(client: &reqwest::Client, url: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let b = client.get(url).send().await?.bytes().await?;
    let took = t.elapsed();
    anyhow::ensure!(b.starts_with(b"{\"healthy\":true"), "direct: {b:?}");
    Ok(took)
}

async fn tunnel_once(state: &MockState, id: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let resp = state
        .tunnel
        .open_http(id, "GET", "/global/health", vec![], vec![])
        .await?;
    anyhow::ensure!(resp.status == 200, "tunnel: HTTP {}", resp.status);
    let b = resp.read_body().await?;
    let took = t.elapsed();
    anyhow::ensure!(b.starts_with(b"{\"healthy\":true"), "tunnel: {b:?}");
    Ok(took)
}

/// `requests` requests over `concurrency` workers; returns (req/s, sorted latencies).
async fn run_load<F, Fut>(
    requests: usize,
    concurrency: usize,
    one: F,
) -> anyhow::Result<(f64, Vec<Duration>)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Duration>> + Send,
{
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let n = requests / concurrency + usize::from(w < requests % concurrency);
        let one = one.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                lat.push(one().await?);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::with_capacity(requests);
    for w in workers {
        all.extend(w.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    Ok((requests as f64 / secs, all))
}

async fn bench(requests: usize, concurrency: usize, json: bool) -> anyhow::Result<()> {
    let llm = FakeLlm::start().await?;
    let mock = MockServer::start(MockConfig::default()).await?;
    let state = mock.state();
    let sandbox = state.add_sandbox("bench", "opencode");
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--host-child")
        .arg(mock.url())
        .arg(&sandbox.id)
        .arg(&sandbox.tunnel_token)
        .arg(llm.openai_base_url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let host_pid = child.id().unwrap_or(0);
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .map_err(|_| anyhow::anyhow!("the host did not start opencode within 60 s"))??
        .ok_or_else(|| anyhow::anyhow!("the host exited before it was ready"))?;
    let mut parts = ready.split_whitespace().skip(1);
    let oc_pid: u32 = parts.next().unwrap_or("0").parse()?;
    let base = parts.next().unwrap_or("").trim_end_matches('/').to_owned();
    let id = sandbox.id.clone();
    anyhow::ensure!(
        state
            .wait_until(Duration::from_secs(30), |s| s.tunnel.is_connected(&id))
            .await,
        "host did not connect"
    );
    let idle_host = rss_kib(host_pid).0;
    let idle_oc = rss_kib(oc_pid).0;
    let client = reqwest::Client::new();
    let url = format!("{base}/global/health");

    // Warm-up (connection pools, allocator, opencode's JIT).
    for _ in 0..200 {
        direct_once(&client, &url).await?;
        tunnel_once(&state, &id).await?;
    }

    // Sequential: latency without queueing.
    let (direct_seq_rps, direct_seq) = {
        let (client, url) = (client.clone(), url.clone());
        run_load(requests, 1, move || {
            let (client, url) = (client.clone(), url.clone());
            async move { direct_once(&client, &url).await }
        })
        .await?
    };
    let (tunnel_seq_rps, tunnel_seq) = {
        let (state, id) = (state.clone(), id.clone());
        run_load(requests, 1, move || {
            let (state, id) = (state.clone(), id.clone());
            async move { tunnel_once(&state, &id).await }
        })
        .await?
    };
    // Concurrent: throughput.
    let (direct_rps, direct_conc) = {
        let (client, url) = (client.clone(), url.clone());
        run_load(requests, concurrency, move || {
            let (client, url) = (client.clone(), url.clone());
            async move { direct_once(&client, &url).await }
        })
        .await?
    };
    let (tunnel_rps, tunnel_conc) = {
        let (state, id) = (state.clone(), id.clone());
        run_load(requests, concurrency, move || {
            let (state, id) = (state.clone(), id.clone());
            async move { tunnel_once(&state, &id).await }
        })
        .await?
    };
    let (host_end, host_hwm) = rss_kib(host_pid);
    let (oc_end, oc_hwm) = rss_kib(oc_pid);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("`GET /global/health` on opencode, {requests} requests per row:");
    println!();
    println!("| measure | direct loopback | through the tunnel | tunnel / direct |");
    println!("|---|---|---|---|");
    let row = |name: String, d: f64, t: f64, unit: &str| {
        println!("| {name} | {d:.1} {unit} | {t:.1} {unit} | {:.2} |", t / d);
    };
    let row_ms = |name: String, d: f64, t: f64| {
        println!("| {name} | {d:.3} ms | {t:.3} ms | {:.2} |", t / d);
    };
    row(
        "req/s, 1 at a time".into(),
        direct_seq_rps,
        tunnel_seq_rps,
        "req/s",
    );
    row_ms(
        "p50 latency, 1 at a time".into(),
        ms(percentile(&direct_seq, 0.5)),
        ms(percentile(&tunnel_seq, 0.5)),
    );
    row_ms(
        "p99 latency, 1 at a time".into(),
        ms(percentile(&direct_seq, 0.99)),
        ms(percentile(&tunnel_seq, 0.99)),
    );
    row(
        format!("req/s, {concurrency} concurrent"),
        direct_rps,
        tunnel_rps,
        "req/s",
    );
    row_ms(
        format!("p99 latency, {concurrency} concurrent"),
        ms(percentile(&direct_conc, 0.99)),
        ms(percentile(&tunnel_conc, 0.99)),
    );
    println!();
    let mib = |k: u64| k as f64 / 1024.0;
    println!("| process | RSS idle | RSS at the end | peak RSS |");
    println!("|---|---|---|---|");
    println!(
        "| host (tunnel + opencode backend) | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        mib(idle_host),
        mib(host_end),
        mib(host_hwm)
    );
    println!(
        "| opencode serve | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        mib(idle_oc),
        mib(oc_end),
        mib(oc_hwm)
    );
    if json {
        let row = |measure: String, unit: &str, base: Option<(&str, f64)>, value: f64| {
            serde_json::json!({"measure": measure, "unit": unit, "baseline": base.map(|b| b.0),
                "baseline_value": base.map(|b| b.1), "value": value})
        };
        let direct = "direct loopback";
        let summary = serde_json::json!({"bench": "opencode", "rows": [
            row("req/s, 1 at a time".into(), "req/s", Some((direct, direct_seq_rps)), tunnel_seq_rps),
            row("p50 latency, 1 at a time".into(), "ms",
                Some((direct, ms(percentile(&direct_seq, 0.5)))), ms(percentile(&tunnel_seq, 0.5))),
            row("p99 latency, 1 at a time".into(), "ms",
                Some((direct, ms(percentile(&direct_seq, 0.99)))), ms(percentile(&tunnel_seq, 0.99))),
            row(format!("req/s, {concurrency} concurrent"), "req/s", Some((direct, direct_rps)), tunnel_rps),
            row(format!("p99 latency, {concurrency} concurrent"), "ms",
                Some((direct, ms(percentile(&direct_conc, 0.99)))), ms(percentile(&tunnel_conc, 0.99))),
            row("host peak RSS".into(), "MiB", Some(("opencode serve peak RSS", mib(oc_hwm))), mib(host_hwm)),
        ]});
        println!("BENCH-JSON {summary}");
    }
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    Ok(())
}
