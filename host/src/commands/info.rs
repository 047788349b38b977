//! `agentserver info [--json]`: what the server will learn about this machine.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{Context, Result};

use agentserver::probe::{
    AgentInfo, CapabilityReport, GpuDevice, ProbeOutcome, ProbeTiming, Prober, SystemReport, tools,
};

use crate::cli::InfoArgs;

/// Runs `info`.
pub async fn info(args: InfoArgs) -> Result<ExitCode> {
    let workdir = std::env::current_dir()
        .context("cannot read the current directory")?
        .to_string_lossy()
        .into_owned();
    let prober = Prober::new();
    let (system, report) = tokio::join!(prober.system_info(), prober.probe_capabilities());
    let info = AgentInfo::from_parts(
        &system.info,
        Some(report.capabilities.clone()),
        &workdir,
        "",
    );
    let sandboxes = configured_sandboxes(args.config.as_deref())?;
    if args.json {
        println!("{}", json_output(&info, &system, &report, &sandboxes)?);
    } else {
        print!("{}", table(&info, &system, &report));
        sandboxes_section(&sandboxes);
    }
    Ok(ExitCode::SUCCESS)
}

/// One configured sandbox as `info` shows it: each has its own work directory (the agent
/// info's `workdir` of that sandbox) and isolation.
#[derive(serde::Serialize)]
struct SandboxRow {
    name: String,
    backend: String,
    workdir: String,
    max_concurrent_tasks: u16,
    isolation: String,
}

fn configured_sandboxes(config: Option<&std::path::Path>) -> Result<Vec<SandboxRow>> {
    use agentserver::sandboxes::config::{HostConfig, Isolation, effective_isolation};
    let config = match config {
        Some(path) => HostConfig::load(path, true)?,
        None => HostConfig::load(
            &agentserver::plugins::config::config_file(&agentserver::paths::state_dir()),
            false,
        )?,
    };
    Ok(config
        .sandboxes
        .iter()
        .map(|s| {
            let git = agentserver_workspace::is_git_work_tree(&s.work_dir);
            let isolation = match effective_isolation(s, git) {
                Ok(Isolation::Worktree) => "worktree".to_owned(),
                Ok(Isolation::None) => "none".to_owned(),
                Err(err) => format!("refused: {err}"),
            };
            SandboxRow {
                name: s.name.clone(),
                backend: s.backend.to_string(),
                workdir: s.work_dir.display().to_string(),
                max_concurrent_tasks: s.max_concurrent_tasks,
                isolation,
            }
        })
        .collect())
}

fn sandboxes_section(sandboxes: &[SandboxRow]) {
    if sandboxes.is_empty() {
        return;
    }
    println!("\nSandboxes (each sends this agent info with its own workdir)");
    for s in sandboxes {
        println!(
            "  {:<16} {:<11} {} task(s), isolation {}, in {}",
            s.name, s.backend, s.max_concurrent_tasks, s.isolation, s.workdir
        );
    }
}

/// The agent info exactly as sent, plus `probe_timings` (local only, never on the wire).
fn json_output(
    info: &AgentInfo,
    system: &SystemReport,
    report: &CapabilityReport,
    sandboxes: &[SandboxRow],
) -> Result<String> {
    #[derive(serde::Serialize)]
    struct InfoJson<'a> {
        #[serde(flatten)]
        info: &'a AgentInfo,
        probe_timings: BTreeMap<&'a str, &'a ProbeTiming>,
        #[serde(skip_serializing_if = "<[SandboxRow]>::is_empty")]
        sandboxes: &'a [SandboxRow],
    }
    let mut probe_timings = BTreeMap::new();
    probe_timings.extend(system.timings.iter().map(|(k, v)| (k.as_str(), v)));
    probe_timings.extend(report.timings.iter().map(|(k, v)| (k.as_str(), v)));
    Ok(serde_json::to_string_pretty(&InfoJson {
        info,
        probe_timings,
        sandboxes,
    })?)
}

fn table(info: &AgentInfo, system: &SystemReport, report: &CapabilityReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "agentserver {} — what the server learns about this machine\n",
        info.agent_version
    );
    system_section(&mut out, info, system);
    runtimes_section(&mut out, report);
    gpu_section(&mut out, report);
    let _ = writeln!(
        out,
        "\nAll probes run concurrently, {} s timeout each; capabilities took {} ms in total.",
        agentserver::probe::PROBE_TIMEOUT.as_secs(),
        report.elapsed.as_millis()
    );
    out
}

/// The `System` rows: host, os, kernel, cpu, memory, disk, workdir, collection time.
fn system_section(out: &mut String, info: &AgentInfo, system: &SystemReport) {
    let _ = writeln!(out, "System");
    let row = |out: &mut String, key: &str, value: String| {
        let _ = writeln!(out, "  {key:<18}{value}");
    };
    let or_unknown = |s: &str| {
        if s.is_empty() {
            "(unknown)".to_owned()
        } else {
            s.to_owned()
        }
    };
    row(out, "hostname", or_unknown(&info.hostname));
    row(
        out,
        "os",
        format!(
            "{} ({} {})",
            info.os,
            or_unknown(&info.platform),
            info.platform_version
        )
        .trim_end()
        .to_owned(),
    );
    if let Some(host) = &info.host_info {
        row(
            out,
            "kernel",
            format!("{} {}", host.kernel_version, host.kernel_arch),
        );
        if !host.virtualization_system.is_empty() {
            row(
                out,
                "virtualization",
                format!(
                    "{} ({})",
                    host.virtualization_system, host.virtualization_role
                ),
            );
        }
    }
    match &info.cpu_info {
        Some(cpu) => row(
            out,
            "cpu",
            format!(
                "{} — {} logical, {} physical",
                or_unknown(&info.cpu_model_name),
                cpu.count_logical,
                cpu.count_physical
            ),
        ),
        None => row(out, "cpu", "(not collected)".into()),
    }
    match &info.memory_info {
        Some(m) => row(
            out,
            "memory",
            format!("{} total, {} available", gib(m.total), gib(m.available)),
        ),
        None => row(out, "memory", "(not collected)".into()),
    }
    match &info.disk_info {
        Some(d) => row(
            out,
            "disk",
            format!(
                "{} {} total, {} free ({})",
                d.path,
                gib(d.total),
                gib(d.free),
                or_unknown(&d.fstype)
            ),
        ),
        None => row(out, "disk", "(not collected)".into()),
    }
    row(out, "workdir", info.workdir.clone());
    let slowest = system.timings.values().map(|t| t.millis).max().unwrap_or(0);
    row(out, "collected in", format!("{slowest} ms"));
}

/// The `Languages` and `Tools` tables: every probe with its version, status, time and path.
fn runtimes_section(out: &mut String, report: &CapabilityReport) {
    let caps = &report.capabilities;
    for (title, category) in [
        ("Languages", tools::Category::Language),
        ("Tools", tools::Category::Tool),
    ] {
        let _ = writeln!(out, "\n{title}");
        let _ = writeln!(
            out,
            "  {:<19}{:<14}{:<12}{:>8}  PATH",
            "NAME", "VERSION", "STATUS", "TIME"
        );
        let found = match category {
            tools::Category::Language => &caps.languages,
            tools::Category::Tool => &caps.tools,
        };
        let mut rows: Vec<(&str, Option<&ProbeTiming>)> = tools::PROBES
            .iter()
            .filter(|p| p.category == category)
            .map(|p| (p.name, report.timings.get(p.name)))
            .collect();
        if category == tools::Category::Language {
            rows.push((
                tools::PYTHON_FALLBACK_KEY,
                report.timings.get(tools::PYTHON_FALLBACK_KEY),
            ));
        }
        rows.sort_by_key(|(name, _)| *name);
        for (name, timing) in rows {
            let (status, millis, detail) = match timing {
                Some(t) => (t.outcome.label(), t.millis, t.detail.as_deref()),
                None => ("-", 0, None),
            };
            // Only a probe that succeeded has a result; the fallback's is listed as python3.
            let wire_name = if name == tools::PYTHON_FALLBACK_KEY {
                "python3"
            } else {
                name
            };
            let runtime = timing
                .filter(|t| t.outcome == ProbeOutcome::Ok)
                .and_then(|_| found.iter().find(|r| r.name == wire_name));
            let version = runtime.map(|r| r.version.as_str()).unwrap_or("-");
            let path = runtime.map(|r| r.path.as_str()).or(detail).unwrap_or("");
            let line = format!("  {name:<19}{version:<14}{status:<12}{millis:>5} ms  {path}");
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
}

/// The `GPUs` rows and the GPU probes' timings.
fn gpu_section(out: &mut String, report: &CapabilityReport) {
    let caps = &report.capabilities;
    let _ = writeln!(out, "\nGPUs");
    if caps.gpus.is_empty() {
        let _ = writeln!(out, "  none detected");
    }
    for gpu in &caps.gpus {
        let _ = writeln!(out, "  {}", gpu_line(gpu));
    }
    for (key, timing) in report
        .timings
        .iter()
        .filter(|(k, _)| k.starts_with("gpu: "))
    {
        let detail = timing
            .detail
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<24}{:<12}{:>5} ms{detail}",
            key,
            timing.outcome.label(),
            timing.millis
        );
    }
}

fn gpu_line(gpu: &GpuDevice) -> String {
    let mut line = format!("#{} {}", gpu.index, gpu.name);
    if let Some(mb) = gpu.memory_mb {
        let _ = write!(line, ", {mb} MiB");
    }
    if let Some(v) = &gpu.driver_version {
        let _ = write!(line, ", driver {v}");
    }
    if let Some(v) = &gpu.cuda_version {
        let _ = write!(line, ", CUDA {v}");
    }
    if let Some(v) = &gpu.compute_capability {
        let _ = write!(line, ", compute {v}");
    }
    if let (Some(g), Some(m)) = (gpu.utilization_gpu_percent, gpu.utilization_memory_percent) {
        let _ = write!(line, ", util {g}% gpu / {m}% mem");
    }
    let _ = write!(line, " [{}]", gpu.source);
    line
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1024.0 * 1024.0 * 1024.0))
}
