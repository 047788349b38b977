//! Capability probing with fake tools on PATH (shell scripts in a temporary directory).
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentserver::probe::tools::PROBES;
use agentserver::probe::{CapabilityCache, ProbeOutcome, Prober};

/// Absolute path of a system program, for use inside the fake scripts (whose PATH is only
/// the temporary directory).
fn system_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").expect("PATH");
    agentserver::probe::exec::lookup(name, &path).unwrap_or_else(|| panic!("{name} not in PATH"))
}

fn fake_tool(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn prober(dir: &Path) -> Prober {
    Prober::new().with_path(dir.as_os_str()).with_nvml(false)
}

fn hang() -> String {
    format!("exec {} 30", system_program("sleep").display())
}

#[tokio::test]
async fn found_tools_are_reported_sorted_with_absolute_paths() {
    let dir = tempfile::tempdir().unwrap();
    fake_tool(dir.path(), "node", "echo v20.11.0");
    fake_tool(dir.path(), "go", "echo go version go1.22.5 linux/amd64");
    fake_tool(
        dir.path(),
        "java",
        "echo 'openjdk version \"17.0.15\" 2025-04-15' >&2",
    );
    fake_tool(dir.path(), "git", "echo git version 2.47.3");
    fake_tool(
        dir.path(),
        "docker",
        "echo 'Docker version 25.0.3, build 4debf41'",
    );
    fake_tool(
        dir.path(),
        "kubectl",
        "[ \"$*\" = 'version --client' ] || exit 1\necho 'Client Version: v1.30.2'",
    );
    fake_tool(dir.path(), "python3", "echo Python 3.12.1");

    let report = prober(dir.path()).probe_capabilities().await;
    let caps = &report.capabilities;
    let langs: Vec<_> = caps
        .languages
        .iter()
        .map(|r| (r.name.as_str(), r.version.as_str()))
        .collect();
    assert_eq!(
        langs,
        [
            ("go", "1.22.5"),
            ("java", "17.0.15"),
            ("node", "20.11.0"),
            ("python3", "3.12.1")
        ]
    );
    let tools: Vec<_> = caps
        .tools
        .iter()
        .map(|r| (r.name.as_str(), r.version.as_str()))
        .collect();
    assert_eq!(
        tools,
        [
            ("docker", "25.0.3"),
            ("git", "2.47.3"),
            ("kubectl", "1.30.2")
        ]
    );
    for runtime in caps.languages.iter().chain(&caps.tools) {
        assert!(Path::new(&runtime.path).is_absolute(), "{}", runtime.path);
        assert!(runtime.path.starts_with(dir.path().to_str().unwrap()));
    }
    assert_eq!(report.timings["ruby"].outcome, ProbeOutcome::NotFound);
    assert_eq!(
        report.timings["python (fallback)"].outcome,
        ProbeOutcome::NotFound
    );
    assert!(caps.gpu.is_none() && caps.gpus.is_empty());
    assert!(chrono::DateTime::parse_from_rfc3339(&caps.probed_at).is_ok());
    assert!(caps.probed_at.ends_with('Z'));
}

#[tokio::test]
async fn a_hanging_tool_is_cut_at_the_timeout_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("helper.pid");
    // The tool starts a helper (a grandchild) that keeps the output pipe open, then hangs.
    fake_tool(
        dir.path(),
        "ruby",
        &format!(
            "{sleep} 30 &\necho $! > {pid}\nwait",
            sleep = system_program("sleep").display(),
            pid = pid_file.display()
        ),
    );
    fake_tool(dir.path(), "node", "echo v20.11.0");

    let started = Instant::now();
    let report = prober(dir.path()).probe_capabilities().await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    assert_eq!(report.timings["ruby"].outcome, ProbeOutcome::Timeout);
    let names: Vec<_> = report
        .capabilities
        .languages
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ["node"]);

    // The helper died with the tool's process group.
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        // Gone, or a zombie waiting for a reaper: either way no longer running.
        let alive = state.as_deref().is_some_and(|s| {
            let after = s
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start())
                .unwrap_or("");
            !after.starts_with('Z') && !after.starts_with('X')
        });
        if !alive {
            break;
        }
        assert!(Instant::now() < deadline, "helper {pid} still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_failing_tool_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    fake_tool(
        dir.path(),
        "docker",
        "echo 'Docker version 25.0.3, build x'\nexit 3",
    );
    fake_tool(dir.path(), "git", "echo git version 2.47.3");
    fake_tool(dir.path(), "make", "echo 'no version at all'");

    let report = prober(dir.path()).probe_capabilities().await;
    let tools: Vec<_> = report
        .capabilities
        .tools
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(tools, ["git"]);
    assert_eq!(report.timings["docker"].outcome, ProbeOutcome::Failed);
    assert_eq!(report.timings["make"].outcome, ProbeOutcome::Unparsed);
    assert_eq!(report.timings["git"].outcome, ProbeOutcome::Ok);
}

#[tokio::test]
async fn all_tools_hanging_still_finish_within_2_5_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let programs: Vec<&str> = PROBES.iter().map(|p| p.program).collect();
    assert_eq!(programs.len(), 17);
    for program in programs
        .iter()
        .chain(&["python", "nvidia-smi", "system_profiler"])
    {
        fake_tool(dir.path(), program, &hang());
    }

    let started = Instant::now();
    let report = prober(dir.path()).probe_capabilities().await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(2500), "took {elapsed:?}");
    assert!(report.capabilities.languages.is_empty());
    assert!(report.capabilities.tools.is_empty());
    assert!(report.capabilities.gpus.is_empty());
    for program in PROBES.iter().map(|p| p.name) {
        assert_eq!(
            report.timings[program].outcome,
            ProbeOutcome::Timeout,
            "{program}"
        );
    }
    assert_eq!(
        report.timings["gpu: nvidia-smi"].outcome,
        ProbeOutcome::Timeout
    );
}

#[tokio::test]
async fn python_fallback_only_without_python3_and_only_for_python_3() {
    let dir = tempfile::tempdir().unwrap();
    fake_tool(dir.path(), "python", "echo Python 3.9.18");
    let report = prober(dir.path()).probe_capabilities().await;
    let python = &report.capabilities.languages[0];
    assert_eq!(
        (python.name.as_str(), python.version.as_str()),
        ("python3", "3.9.18")
    );
    assert!(python.path.ends_with("/python"));

    fake_tool(dir.path(), "python", "echo Python 2.7.18 >&2");
    let report = prober(dir.path()).probe_capabilities().await;
    assert!(report.capabilities.languages.is_empty());
    assert_eq!(
        report.timings["python (fallback)"].outcome,
        ProbeOutcome::Unused
    );

    fake_tool(dir.path(), "python", "echo Python 3.9.18");
    fake_tool(dir.path(), "python3", "echo Python 3.12.1");
    let report = prober(dir.path()).probe_capabilities().await;
    let versions: Vec<_> = report
        .capabilities
        .languages
        .iter()
        .map(|r| r.version.as_str())
        .collect();
    assert_eq!(versions, ["3.12.1"]);
}

#[tokio::test]
async fn nvidia_smi_fallback_reports_every_gpu_and_the_first_in_upstream_shape() {
    let dir = tempfile::tempdir().unwrap();
    let csv = format!(
        "{}/tests/fixtures/probe/nvidia_smi_4gpu_full.csv",
        env!("CARGO_MANIFEST_DIR")
    );
    fake_tool(
        dir.path(),
        "nvidia-smi",
        &format!(
            "case \"$1\" in --query-gpu=name,memory.total,*) exec {} {csv};; esac\nexit 9",
            system_program("cat").display()
        ),
    );
    let report = prober(dir.path()).probe_capabilities().await;
    let caps = &report.capabilities;
    assert_eq!(caps.gpus.len(), 4);
    let gpu = caps.gpu.as_ref().unwrap();
    assert_eq!(
        (gpu.name.as_str(), gpu.memory_mb),
        ("NVIDIA GeForce RTX 4090", 24564)
    );
    let json = serde_json::to_value(caps).unwrap();
    assert_eq!(
        json["gpu"],
        serde_json::json!({"name": "NVIDIA GeForce RTX 4090", "memory_mb": 24564})
    );
    assert_eq!(json["gpus"][3]["utilization_gpu_percent"], 100);
    assert_eq!(report.timings["gpu: nvidia-smi"].outcome, ProbeOutcome::Ok);
}

#[tokio::test]
async fn system_profiler_is_the_last_gpu_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}/tests/fixtures/probe/system_profiler_apple_m1.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    fake_tool(
        dir.path(),
        "nvidia-smi",
        "echo 'NVIDIA-SMI has failed' >&2\nexit 9",
    );
    fake_tool(
        dir.path(),
        "system_profiler",
        &format!("exec {} {text}", system_program("cat").display()),
    );
    let report = prober(dir.path()).probe_capabilities().await;
    let gpu = report.capabilities.gpu.as_ref().unwrap();
    assert_eq!(gpu.name, "Apple M1");
    // Unknown memory is omitted on the wire, as upstream.
    let json = serde_json::to_value(gpu).unwrap();
    assert_eq!(json, serde_json::json!({"name": "Apple M1"}));
    assert_eq!(
        report.timings["gpu: nvidia-smi"].outcome,
        ProbeOutcome::Failed
    );
}

#[tokio::test]
async fn cache_returns_the_last_result_at_once_and_refreshes_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("count");
    // First run prints 1.0.0; later runs take a second, then print 2.0.0.
    fake_tool(
        dir.path(),
        "node",
        &format!(
            "if [ -e {c} ]; then {sleep} 1; echo v2.0.0; else : > {c}; echo v1.0.0; fi",
            c = counter.display(),
            sleep = system_program("sleep").display()
        ),
    );
    let cache = CapabilityCache::with_max_age(prober(dir.path()), Duration::ZERO);
    let first = cache.capabilities().await;
    assert_eq!(first.capabilities.languages[0].version, "1.0.0");

    // Stale at once (max age 0): the call must not wait for the 1 s re-probe.
    let started = Instant::now();
    let second = cache.capabilities().await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(second.capabilities.languages[0].version, "1.0.0");

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = cache.capabilities().await;
        if now
            .capabilities
            .languages
            .first()
            .map(|r| r.version.as_str())
            == Some("2.0.0")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "background re-probe never landed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn agent_info_json_has_caller_fields_and_capabilities() {
    let dir = tempfile::tempdir().unwrap();
    fake_tool(dir.path(), "git", "echo git version 2.47.3");
    let cache = CapabilityCache::new(prober(dir.path()));
    let bytes = cache.agent_info_json("/work/dir", "0.5.1").await;
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(value["workdir"], "/work/dir");
    assert_eq!(value["opencode_version"], "0.5.1");
    assert_eq!(value["agent_version"], agentserver::VERSION);
    assert_eq!(value["capabilities"]["tools"][0]["name"], "git");
    assert!(value.get("probe_timings").is_none());
}

/// The tunnel's agent info never waits for a probe: with a tool that hangs until the probe
/// timeout, the first document comes at once without capabilities, the cache says when the
/// probe is done, and the next document carries them.
#[tokio::test]
async fn agent_info_goes_out_at_once_and_capabilities_follow_when_probed() {
    let dir = tempfile::tempdir().unwrap();
    fake_tool(dir.path(), "git", "echo git version 2.47.3");
    fake_tool(dir.path(), "node", &hang());
    let cache =
        CapabilityCache::new(prober(dir.path()).with_probe_timeout(Duration::from_millis(800)));
    let mut updates = cache.updates();
    let started = Instant::now();
    cache.start_probe();
    let first: serde_json::Value =
        serde_json::from_slice(&cache.agent_info_json_now("/w", &Default::default()).await)
            .unwrap();
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(500),
        "the first agent info waited {waited:?} for the probe"
    );
    assert!(first["capabilities"].is_null(), "{first}");
    assert_eq!(first["workdir"], "/w");
    assert!(
        !first["hostname"].as_str().unwrap_or("").is_empty(),
        "{first}"
    );

    tokio::time::timeout(Duration::from_secs(10), updates.changed())
        .await
        .expect("the probe finished and said so")
        .expect("the cache is alive");
    let next: serde_json::Value =
        serde_json::from_slice(&cache.agent_info_json_now("/w", &Default::default()).await)
            .unwrap();
    let tools: Vec<&str> = next["capabilities"]["tools"]
        .as_array()
        .expect("capabilities in the next agent info")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(tools.contains(&"git"), "{next}");
}
