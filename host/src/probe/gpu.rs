//! GPU detection: NVML (all GPUs) first, then `nvidia-smi`, then `system_profiler` (macOS).
//! Everything stays within one deadline shared with the tool probes.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::time::{Duration, Instant};

use super::exec::{self, ExecError};
use super::parse;
use super::{GpuDevice, ProbeOutcome, ProbeTiming};

/// Timing keys used in the timings map.
pub const NVML_KEY: &str = "gpu: nvml";
/// See [`NVML_KEY`].
pub const NVIDIA_SMI_KEY: &str = "gpu: nvidia-smi";
/// See [`NVML_KEY`].
pub const SYSTEM_PROFILER_KEY: &str = "gpu: system_profiler";

/// A command fallback: timing key, program, arguments, parser.
type Fallback<'a> = (&'a str, &'a str, &'a [&'a str], fn(&str) -> Vec<GpuDevice>);

/// GPUs found and the timing of each method tried.
#[derive(Debug, Default)]
pub struct GpuReport {
    /// Every GPU, in device order.
    pub gpus: Vec<GpuDevice>,
    /// Timing per method tried.
    pub timings: BTreeMap<String, ProbeTiming>,
}

/// Detects GPUs: NVML (if `use_nvml`), else `nvidia-smi`, else `system_profiler`; each later
/// method runs only if the earlier ones found nothing, within what is left of `timeout`.
pub async fn detect(
    use_nvml: bool,
    path: &OsStr,
    path_env: Option<&OsStr>,
    timeout: Duration,
) -> GpuReport {
    let deadline = Instant::now() + timeout;
    let mut report = GpuReport::default();

    if use_nvml && cfg!(not(target_os = "macos")) {
        let started = Instant::now();
        let handle = tokio::task::spawn_blocking(nvml_gpus);
        // A hung driver cannot be interrupted: the blocking thread is left behind, and
        // nvidia-smi (which uses the same driver) is not tried either.
        let (outcome, detail, hung) = match tokio::time::timeout(timeout, handle).await {
            Ok(Ok(Ok(gpus))) if !gpus.is_empty() => {
                report.gpus = gpus;
                (ProbeOutcome::Ok, None, false)
            }
            Ok(Ok(Ok(_))) => (ProbeOutcome::Unparsed, Some("no GPU".to_owned()), false),
            Ok(Ok(Err(e))) => (ProbeOutcome::Failed, Some(e), false),
            Ok(Err(e)) => (ProbeOutcome::Failed, Some(format!("panicked: {e}")), false),
            Err(_) => (ProbeOutcome::Timeout, None, true),
        };
        report.timings.insert(
            NVML_KEY.into(),
            ProbeTiming::new(started.elapsed(), outcome, detail),
        );
        if !report.gpus.is_empty() || hung {
            return report;
        }
    }

    let smi_args = [
        &*format!("--query-gpu={}", parse::NVIDIA_SMI_QUERY),
        "--format=csv,noheader,nounits",
    ];
    let methods: [Fallback; 2] = [
        (
            NVIDIA_SMI_KEY,
            "nvidia-smi",
            &smi_args,
            parse::nvidia_smi_gpus,
        ),
        (
            SYSTEM_PROFILER_KEY,
            "system_profiler",
            &["SPDisplaysDataType"],
            parse::system_profiler_gpus,
        ),
    ];
    for (key, program, args, parser) in methods {
        let started = Instant::now();
        let Some(program) = exec::lookup(program, path) else {
            report.timings.insert(
                key.into(),
                ProbeTiming::new(started.elapsed(), ProbeOutcome::NotFound, None),
            );
            continue;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let (outcome, detail) = match exec::run(&program, args, path_env, left).await {
            Ok(output) => {
                let gpus = parser(&output);
                if gpus.is_empty() {
                    (ProbeOutcome::Unparsed, None)
                } else {
                    report.gpus = gpus;
                    (ProbeOutcome::Ok, None)
                }
            }
            Err(ExecError::Timeout(_)) => (ProbeOutcome::Timeout, None),
            Err(e) => (ProbeOutcome::Failed, Some(e.to_string())),
        };
        report.timings.insert(
            key.into(),
            ProbeTiming::new(started.elapsed(), outcome, detail),
        );
        if !report.gpus.is_empty() {
            break;
        }
    }
    report
}

/// Every GPU NVML reports. Errors are strings (they only end up in the timings' detail).
/// Per-device queries that fail leave their field `None`; a device whose name fails is skipped.
fn nvml_gpus() -> Result<Vec<GpuDevice>, String> {
    use nvml_wrapper::Nvml;

    let nvml = Nvml::init().map_err(|e| format!("init: {e}"))?;
    let driver_version = nvml.sys_driver_version().ok();
    let cuda_version = nvml.sys_cuda_driver_version().ok().map(|v| {
        format!(
            "{}.{}",
            nvml_wrapper::cuda_driver_version_major(v),
            nvml_wrapper::cuda_driver_version_minor(v)
        )
    });
    let count = nvml
        .device_count()
        .map_err(|e| format!("device count: {e}"))?;
    let mut gpus = Vec::new();
    for index in 0..count {
        let device = match nvml.device_by_index(index) {
            Ok(device) => device,
            Err(e) => {
                tracing::debug!(index, error = %e, "NVML: device not accessible");
                continue;
            }
        };
        let Ok(name) = device.name() else { continue };
        let utilization = device.utilization_rates().ok();
        gpus.push(GpuDevice {
            index,
            name,
            memory_mb: device
                .memory_info()
                .ok()
                .map(|m| m.total / (1024 * 1024))
                .filter(|m| *m > 0),
            driver_version: driver_version.clone(),
            cuda_version: cuda_version.clone(),
            compute_capability: device
                .cuda_compute_capability()
                .ok()
                .map(|c| format!("{}.{}", c.major, c.minor)),
            utilization_gpu_percent: utilization.as_ref().map(|u| u.gpu),
            utilization_memory_percent: utilization.as_ref().map(|u| u.memory),
            source: "nvml".into(),
        });
    }
    Ok(gpus)
}
