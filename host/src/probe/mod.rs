//! System info and capability probing (spec §7.1–7.2), GPU detection included.
//!
//! * [`AgentInfo`] is the JSON the tunnel writes on each control stream (§6.4.1, §7.1).
//! * [`Prober`] collects it: system info through `sysinfo` under a time budget
//!   ([`system`]), the 17-row tool table as concurrent child processes with a 2 s timeout each
//!   ([`tools`]), GPUs through NVML, `nvidia-smi` or `system_profiler` ([`gpu`]).
//! * [`CapabilityCache`] keeps the last capabilities and re-probes them in the background once
//!   they are an hour old, so a heartbeat never waits for a probe (except the very first).
//!
//! Deviations from upstream are recorded in `docs/decisions/probe.md`.

pub mod exec;
pub mod gpu;
pub mod parse;
pub mod system;
pub mod tools;

mod cache;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use cache::CapabilityCache;
pub use system::{CpuInfo, CpuInfoStat, DiskInfo, HostInfo, MemoryInfo, SystemInfo, SystemReport};

/// Timeout of each probe command (§7.2), and of GPU detection as a whole.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Budget of the system-info collection (upstream: 10 s; shorter here so the 20 s heartbeat
/// stays on time).
pub const SYSTEM_INFO_BUDGET: Duration = Duration::from_secs(3);

/// Age after which capabilities are re-probed (§7.2).
pub const CAPABILITIES_MAX_AGE: Duration = Duration::from_secs(3600);

/// The agent-info document of §7.1, sent as-is on the control stream.
///
/// Top-level scalars are always present (zero when their part failed, as upstream); the nested
/// objects and `capabilities` are omitted when they could not be collected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentInfo {
    /// Host name.
    pub hostname: String,
    /// GOOS style: `linux`, `darwin`, `windows`.
    pub os: String,
    /// `ubuntu`, `darwin`, …
    pub platform: String,
    /// `22.04`, …
    pub platform_version: String,
    /// `x86_64`, `arm64`, …
    pub kernel_arch: String,
    /// Model name of the first CPU.
    pub cpu_model_name: String,
    /// Logical CPUs.
    pub cpu_count_logical: i64,
    /// Memory, bytes.
    pub memory_total: u64,
    /// Size of `/`, bytes.
    pub disk_total: u64,
    /// Free bytes on `/` (available to unprivileged users).
    pub disk_free: u64,
    /// [`crate::VERSION`].
    pub agent_version: String,
    /// Version of the local opencode server, `""` when none is configured.
    pub opencode_version: String,
    /// Directory tasks run in.
    pub workdir: String,
    /// gopsutil host info.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_info: Option<HostInfo>,
    /// CPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_info: Option<CpuInfo>,
    /// Memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_info: Option<MemoryInfo>,
    /// Disk usage of `/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_info: Option<DiskInfo>,
    /// Probed capabilities (§7.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<AgentCapabilities>,
    /// Fields the backend adds ([`Backend::agent_info_fields`]), other than the ones above.
    ///
    /// [`Backend::agent_info_fields`]: agentserver_plugin_api::Backend::agent_info_fields
    #[serde(flatten, skip_serializing_if = "serde_json::Map::is_empty", default)]
    pub backend_fields: serde_json::Map<String, serde_json::Value>,
}

/// The name for [`AgentInfo`] (upstream `AgentInfoData`).
pub type AgentInfoData = AgentInfo;

impl AgentInfo {
    /// Adds a backend's own fields ([`Backend::agent_info_fields`]): `opencode_version`
    /// fills the upstream field; any other key the document already has is left alone.
    ///
    /// [`Backend::agent_info_fields`]: agentserver_plugin_api::Backend::agent_info_fields
    pub fn with_backend_fields(
        mut self,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        let own: Vec<String> = match serde_json::to_value(&self) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        };
        for (key, value) in fields {
            if key == "opencode_version" {
                if let Some(version) = value.as_str() {
                    self.opencode_version = version.to_owned();
                }
            } else if !own.contains(key) {
                self.backend_fields.insert(key.clone(), value.clone());
            }
        }
        self
    }

    /// Builds the document from collected parts. Top-level scalars come from the parts
    /// (zero/empty when a part is missing; nothing is invented).
    pub fn from_parts(
        system: &SystemInfo,
        capabilities: Option<AgentCapabilities>,
        workdir: &str,
        opencode_version: &str,
    ) -> Self {
        let host = system.host.as_ref();
        let cpu = system.cpu.as_ref();
        let disk = system.disk.as_ref();
        AgentInfo {
            hostname: host.map(|h| h.hostname.clone()).unwrap_or_default(),
            os: system::goos().to_owned(),
            platform: host.map(|h| h.platform.clone()).unwrap_or_default(),
            platform_version: host.map(|h| h.platform_version.clone()).unwrap_or_default(),
            kernel_arch: host.map(|h| h.kernel_arch.clone()).unwrap_or_default(),
            cpu_model_name: cpu
                .and_then(|c| c.cpus.first())
                .map(|c| c.model_name.clone())
                .unwrap_or_default(),
            cpu_count_logical: cpu.map(|c| c.count_logical).unwrap_or(0),
            memory_total: system.memory.as_ref().map(|m| m.total).unwrap_or(0),
            disk_total: disk.map(|d| d.total).unwrap_or(0),
            disk_free: disk.map(|d| d.free).unwrap_or(0),
            agent_version: crate::VERSION.to_owned(),
            opencode_version: opencode_version.to_owned(),
            workdir: workdir.to_owned(),
            host_info: system.host.clone(),
            cpu_info: system.cpu.clone(),
            memory_info: system.memory.clone(),
            disk_info: system.disk.clone(),
            capabilities,
            backend_fields: serde_json::Map::new(),
        }
    }
}

/// `AgentCapabilities` of §7.2, plus `gpus` (every GPU; old servers ignore it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentCapabilities {
    /// Languages found, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<RuntimeInfo>,
    /// Tools found, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<RuntimeInfo>,
    /// The first GPU in the upstream shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuInfo>,
    /// Every GPU with details (extension; see `docs/decisions/probe.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuDevice>,
    /// When the probe ran, RFC 3339 UTC (`2026-04-13T10:00:00Z`).
    pub probed_at: String,
}

/// A language or tool found in PATH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// Probe name (`python3`, `rust`, `kubectl`, …).
    pub name: String,
    /// Parsed version, without a leading `v`.
    pub version: String,
    /// Absolute path of the program found in PATH.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

/// The upstream `gpu` object: the first GPU's name and memory in MiB (omitted when unknown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// GPU name.
    pub name: String,
    /// Memory in MiB; 0 = unknown (omitted on the wire).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_mb: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// One GPU in the `gpus` extension list. Unknown values are omitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    /// Device index (NVML / nvidia-smi order).
    pub index: u32,
    /// Name (`NVIDIA H100 80GB HBM3`, `Apple M2 Pro`).
    pub name: String,
    /// Total memory, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Driver version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// Highest CUDA version the driver supports (`12.4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_version: Option<String>,
    /// CUDA compute capability (`9.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
    /// GPU utilisation at probe time, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_gpu_percent: Option<u32>,
    /// Memory-controller utilisation at probe time, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_memory_percent: Option<u32>,
    /// How it was found: `nvml`, `nvidia-smi` or `system_profiler`.
    pub source: String,
}

/// How one probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeOutcome {
    /// Found and parsed.
    Ok,
    /// Not in PATH (or no library).
    NotFound,
    /// Killed at the timeout.
    Timeout,
    /// Exited unsuccessfully or could not start.
    Failed,
    /// Ran but printed nothing parsable.
    Unparsed,
    /// Ran but its result was not needed (the python fallback when python3 exists).
    Unused,
}

impl ProbeOutcome {
    /// Short human label.
    pub fn label(self) -> &'static str {
        match self {
            ProbeOutcome::Ok => "ok",
            ProbeOutcome::NotFound => "not found",
            ProbeOutcome::Timeout => "timed out",
            ProbeOutcome::Failed => "failed",
            ProbeOutcome::Unparsed => "no version",
            ProbeOutcome::Unused => "unused",
        }
    }
}

/// Outcome and duration of one probe (shown by `agentserver info`; never sent on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeTiming {
    /// Wall time in milliseconds.
    pub millis: u64,
    /// How it ended.
    pub outcome: ProbeOutcome,
    /// Error text or unparsed first line, when useful.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ProbeTiming {
    /// A timing record.
    pub fn new(elapsed: Duration, outcome: ProbeOutcome, detail: Option<String>) -> Self {
        Self {
            millis: elapsed.as_millis().try_into().unwrap_or(u64::MAX),
            outcome,
            detail,
        }
    }
}

/// Capabilities and how each probe went.
#[derive(Debug, Clone)]
pub struct CapabilityReport {
    /// What goes on the wire.
    pub capabilities: AgentCapabilities,
    /// Per probe (tool names, `python (fallback)`, `gpu: …`).
    pub timings: BTreeMap<String, ProbeTiming>,
    /// Wall time of the whole probe.
    pub elapsed: Duration,
}

/// Collects system info and capabilities. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Prober {
    path: Option<OsString>,
    probe_timeout: Duration,
    system_budget: Duration,
    use_nvml: bool,
}

impl Default for Prober {
    fn default() -> Self {
        Self::new()
    }
}

impl Prober {
    /// The standard prober: the process's PATH, 2 s per probe, NVML on.
    pub fn new() -> Self {
        Self {
            path: None,
            probe_timeout: PROBE_TIMEOUT,
            system_budget: SYSTEM_INFO_BUDGET,
            use_nvml: true,
        }
    }

    /// Searches tools in `path` (PATH syntax) instead of `$PATH`; the probed programs also get
    /// it as their PATH.
    pub fn with_path(mut self, path: impl Into<OsString>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Changes the per-probe timeout.
    pub fn with_probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// Changes the system-info budget.
    pub fn with_system_budget(mut self, budget: Duration) -> Self {
        self.system_budget = budget;
        self
    }

    /// Turns NVML on or off (off: GPUs come from `nvidia-smi`/`system_profiler` only).
    pub fn with_nvml(mut self, use_nvml: bool) -> Self {
        self.use_nvml = use_nvml;
        self
    }

    /// Runs every probe and the GPU detection concurrently; never longer than the probe
    /// timeout plus process start-up.
    pub async fn probe_capabilities(&self) -> CapabilityReport {
        let started = Instant::now();
        let path = exec::search_path(self.path.as_deref());
        let path_env = self.path.as_deref();
        let (tools, gpus) = tokio::join!(
            tools::probe_all(&path, path_env, self.probe_timeout),
            gpu::detect(self.use_nvml, &path, path_env, self.probe_timeout),
        );
        let mut timings = tools.timings;
        timings.extend(gpus.timings);
        let capabilities = AgentCapabilities {
            languages: tools.languages,
            tools: tools.tools,
            gpu: gpus.gpus.first().map(|g| GpuInfo {
                name: g.name.clone(),
                memory_mb: g.memory_mb.unwrap_or(0),
            }),
            gpus: gpus.gpus,
            probed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        CapabilityReport {
            capabilities,
            timings,
            elapsed: started.elapsed(),
        }
    }

    /// Collects the system-info parts within the budget.
    pub async fn system_info(&self) -> SystemReport {
        system::collect(self.system_budget).await
    }
}
