//! Golden test: the agent-info JSON this host sends uses the upstream field names of §7.1
//! (fixture `tests/fixtures/probe/agent_info_upstream.json`, written from the spec).

use std::collections::BTreeSet;

use agentserver::probe::{AgentInfo, CapabilityCache, Prober};
use serde::Deserialize;
use serde_json::Value;

/// The server's view of agent info, with the upstream names and types (§7.1). Unknown fields
/// are ignored, as Go's encoding/json does.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct UpstreamAgentInfo {
    hostname: String,
    os: String,
    platform: String,
    platform_version: String,
    kernel_arch: String,
    cpu_model_name: String,
    cpu_count_logical: i64,
    memory_total: i64,
    disk_total: i64,
    disk_free: i64,
    agent_version: String,
    opencode_version: String,
    workdir: String,
    host_info: Option<Value>,
    cpu_info: Option<Value>,
    memory_info: Option<Value>,
    disk_info: Option<Value>,
    capabilities: Option<UpstreamCapabilities>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct UpstreamCapabilities {
    #[serde(default)]
    languages: Vec<UpstreamRuntime>,
    #[serde(default)]
    tools: Vec<UpstreamRuntime>,
    gpu: Option<UpstreamGpu>,
    probed_at: String,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct UpstreamRuntime {
    name: String,
    version: String,
    #[serde(default)]
    path: String,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct UpstreamGpu {
    name: String,
    #[serde(default)]
    memory_mb: i64,
}

const TOP_LEVEL: [&str; 18] = [
    "hostname",
    "os",
    "platform",
    "platform_version",
    "kernel_arch",
    "cpu_model_name",
    "cpu_count_logical",
    "memory_total",
    "disk_total",
    "disk_free",
    "agent_version",
    "opencode_version",
    "workdir",
    "host_info",
    "cpu_info",
    "memory_info",
    "disk_info",
    "capabilities",
];

fn golden() -> Value {
    let path = format!(
        "{}/tests/fixtures/probe/agent_info_upstream.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

#[test]
fn fixture_round_trips_through_our_types_with_the_same_keys() {
    let golden = golden();
    let ours: AgentInfo = serde_json::from_value(golden.clone()).unwrap();
    let back = serde_json::to_value(&ours).unwrap();
    assert_eq!(keys(&back), keys(&golden));
    for nested in [
        "host_info",
        "cpu_info",
        "memory_info",
        "disk_info",
        "capabilities",
    ] {
        assert_eq!(keys(&back[nested]), keys(&golden[nested]), "{nested}");
    }
    assert_eq!(
        keys(&back["cpu_info"]["cpus"][0]),
        keys(&golden["cpu_info"]["cpus"][0])
    );
    assert_eq!(back["capabilities"]["gpu"], golden["capabilities"]["gpu"]);
    assert_eq!(
        back["memory_info"]["committedAS"],
        golden["memory_info"]["committedAS"]
    );
    assert_eq!(back["host_info"]["hostId"], golden["host_info"]["hostId"]);
}

#[tokio::test]
async fn real_json_deserialises_into_the_upstream_names() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CapabilityCache::new(
        Prober::new()
            .with_path(dir.path().as_os_str())
            .with_nvml(false),
    );
    let bytes = cache.agent_info_json("/srv/work", "").await;
    let real: Value = serde_json::from_slice(&bytes).unwrap();

    // Every top-level key of §7.1 is there, and nothing but them.
    let expected: BTreeSet<String> = TOP_LEVEL.iter().map(|k| k.to_string()).collect();
    assert_eq!(keys(&real), expected);

    // Nested objects carry exactly the gopsutil names of the golden document.
    let golden = golden();
    for nested in ["host_info", "cpu_info", "memory_info", "disk_info"] {
        assert_eq!(keys(&real[nested]), keys(&golden[nested]), "{nested}");
    }
    assert_eq!(
        keys(&real["cpu_info"]["cpus"][0]),
        keys(&golden["cpu_info"]["cpus"][0])
    );
    // No tools on the empty PATH: the omitempty lists are absent, probed_at is present.
    assert_eq!(
        keys(&real["capabilities"]),
        BTreeSet::from(["probed_at".to_owned()])
    );

    let upstream: UpstreamAgentInfo = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(upstream.workdir, "/srv/work");
    assert_eq!(upstream.agent_version, agentserver::VERSION);
    assert!(!upstream.hostname.is_empty());
    assert!(["linux", "darwin", "windows"].contains(&upstream.os.as_str()));
    assert!(upstream.cpu_count_logical > 0);
    assert!(upstream.memory_total > 0);
    assert!(upstream.disk_total >= upstream.disk_free);
    let caps = upstream.capabilities.unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(&caps.probed_at).is_ok());
    assert_eq!(real["host_info"]["os"], real["os"]);
    assert_eq!(real["cpu_info"]["count_logical"], real["cpu_count_logical"]);
}

#[test]
fn golden_document_deserialises_into_the_upstream_struct() {
    let upstream: UpstreamAgentInfo = serde_json::from_value(golden()).unwrap();
    let gpu = upstream.capabilities.unwrap().gpu.unwrap();
    assert_eq!(gpu.memory_mb, 81559);
}
