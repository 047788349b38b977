//! System information (§7.1): the nested gopsutil-shaped objects, filled with `sysinfo` (plus
//! `/proc` and `statvfs` where gopsutil reads them too). Each part is collected on its own
//! blocking thread under a shared deadline; a part that fails or is late is omitted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{ProbeOutcome, ProbeTiming};

/// gopsutil `host.InfoStat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HostInfo {
    /// Host name.
    pub hostname: String,
    /// Seconds since boot.
    pub uptime: u64,
    /// Boot time, Unix seconds.
    pub boot_time: u64,
    /// Number of processes.
    pub procs: u64,
    /// GOOS style: `linux`, `darwin`, `windows`.
    pub os: String,
    /// Distribution (`ubuntu`, `debian`, …) or `darwin`.
    pub platform: String,
    /// Distribution family (`debian`, `rhel`, …; `Standalone Workstation` on macOS).
    pub platform_family: String,
    /// Distribution version (`22.04`).
    pub platform_version: String,
    /// Kernel release (`6.8.0-48-generic`).
    pub kernel_version: String,
    /// `uname -m` (`x86_64`, `aarch64`, `arm64`).
    pub kernel_arch: String,
    /// Container or hypervisor, when known (`docker`, `podman`), else empty.
    pub virtualization_system: String,
    /// `guest` or `host` when known, else empty.
    pub virtualization_role: String,
    /// Machine id (DMI product UUID, `/etc/machine-id` or boot id), when readable.
    pub host_id: String,
}

/// gopsutil `cpu.InfoStat`: one entry per logical CPU on Linux.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CpuInfoStat {
    /// Index.
    pub cpu: i32,
    /// `GenuineIntel`, `AuthenticAMD`, …
    pub vendor_id: String,
    /// CPU family (Linux).
    pub family: String,
    /// CPU model number (Linux).
    pub model: String,
    /// Stepping (Linux).
    pub stepping: i32,
    /// Socket id (Linux).
    pub physical_id: String,
    /// Core id (Linux).
    pub core_id: String,
    /// Cores in this entry (1 per logical CPU, as gopsutil on Linux).
    pub cores: i32,
    /// Brand string.
    pub model_name: String,
    /// Frequency in MHz.
    pub mhz: f64,
    /// Cache size in KB (Linux).
    pub cache_size: i32,
    /// CPU flags (Linux).
    pub flags: Vec<String>,
    /// Microcode revision (Linux).
    pub microcode: String,
}

/// The `cpu_info` object of §7.1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuInfo {
    /// Per-CPU entries.
    pub cpus: Vec<CpuInfoStat>,
    /// Physical cores.
    pub count_physical: i64,
    /// Logical CPUs.
    pub count_logical: i64,
}

/// gopsutil `mem.VirtualMemoryStat` (bytes; fields the platform does not have stay 0, as in
/// gopsutil).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[allow(missing_docs)]
pub struct MemoryInfo {
    pub total: u64,
    pub available: u64,
    pub used: u64,
    pub used_percent: f64,
    pub free: u64,
    pub active: u64,
    pub inactive: u64,
    pub wired: u64,
    pub laundry: u64,
    pub buffers: u64,
    pub cached: u64,
    pub write_back: u64,
    pub dirty: u64,
    pub write_back_tmp: u64,
    pub shared: u64,
    pub slab: u64,
    #[serde(rename = "sreclaimable")]
    pub sreclaimable: u64,
    #[serde(rename = "sunreclaim")]
    pub sunreclaim: u64,
    pub page_tables: u64,
    pub swap_cached: u64,
    pub commit_limit: u64,
    #[serde(rename = "committedAS")]
    pub committed_as: u64,
    pub high_total: u64,
    pub high_free: u64,
    pub low_total: u64,
    pub low_free: u64,
    pub swap_total: u64,
    pub swap_free: u64,
    pub mapped: u64,
    pub vmalloc_total: u64,
    pub vmalloc_used: u64,
    pub vmalloc_chunk: u64,
    pub huge_pages_total: u64,
    pub huge_pages_free: u64,
    pub huge_pages_rsvd: u64,
    pub huge_pages_surp: u64,
    pub huge_page_size: u64,
    pub anon_huge_pages: u64,
}

/// gopsutil `disk.UsageStat` of `/`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DiskInfo {
    /// Mount point (`/`).
    pub path: String,
    /// File system type.
    pub fstype: String,
    /// Size in bytes.
    pub total: u64,
    /// Bytes available to unprivileged users.
    pub free: u64,
    /// Bytes used.
    pub used: u64,
    /// `used / (used + free) * 100`.
    pub used_percent: f64,
    /// Inodes.
    pub inodes_total: u64,
    /// Inodes used.
    pub inodes_used: u64,
    /// Inodes free.
    pub inodes_free: u64,
    /// Inodes used, percent.
    pub inodes_used_percent: f64,
}

/// The parts of system info that were collected in time.
#[derive(Debug, Clone, Default)]
pub struct SystemInfo {
    /// Host part.
    pub host: Option<HostInfo>,
    /// CPU part.
    pub cpu: Option<CpuInfo>,
    /// Memory part.
    pub memory: Option<MemoryInfo>,
    /// Disk part.
    pub disk: Option<DiskInfo>,
}

/// System info plus how long each part took.
#[derive(Debug, Clone, Default)]
pub struct SystemReport {
    /// What was collected.
    pub info: SystemInfo,
    /// `system: host`, `system: cpu`, `system: memory`, `system: disk`.
    pub timings: BTreeMap<String, ProbeTiming>,
}

/// One part's collector: runs on its own blocking thread.
type Collector<T> = Box<dyn FnOnce() -> Result<T, String> + Send>;

/// The four collectors [`collect`] runs; tests swap in slow or failing ones.
struct Collectors {
    host: Collector<HostInfo>,
    cpu: Collector<CpuInfo>,
    memory: Collector<MemoryInfo>,
    disk: Collector<DiskInfo>,
}

impl Default for Collectors {
    fn default() -> Self {
        Self {
            host: Box::new(host_info),
            cpu: Box::new(cpu_info),
            memory: Box::new(memory_info),
            disk: Box::new(disk_info),
        }
    }
}

/// Collects the four parts concurrently; each must finish within `budget`.
pub async fn collect(budget: Duration) -> SystemReport {
    collect_with(budget, Collectors::default()).await
}

async fn collect_with(budget: Duration, collectors: Collectors) -> SystemReport {
    let deadline = tokio::time::Instant::now() + budget;
    let (host, cpu, memory, disk) = tokio::join!(
        part(deadline, collectors.host),
        part(deadline, collectors.cpu),
        part(deadline, collectors.memory),
        part(deadline, collectors.disk),
    );
    let mut report = SystemReport::default();
    let mut keep = |key: &str, timing: ProbeTiming| {
        report.timings.insert(format!("system: {key}"), timing);
    };
    keep("host", host.1);
    keep("cpu", cpu.1);
    keep("memory", memory.1);
    keep("disk", disk.1);
    report.info = SystemInfo {
        host: host.0,
        cpu: cpu.0,
        memory: memory.0,
        disk: disk.0,
    };
    report
}

async fn part<T: Send + 'static>(
    deadline: tokio::time::Instant,
    collect: Collector<T>,
) -> (Option<T>, ProbeTiming) {
    let started = Instant::now();
    let handle = tokio::task::spawn_blocking(collect);
    let (value, outcome, detail) = match tokio::time::timeout_at(deadline, handle).await {
        Ok(Ok(Ok(value))) => (Some(value), ProbeOutcome::Ok, None),
        Ok(Ok(Err(e))) => (None, ProbeOutcome::Failed, Some(e)),
        Ok(Err(e)) => (None, ProbeOutcome::Failed, Some(format!("panicked: {e}"))),
        Err(_) => (None, ProbeOutcome::Timeout, None),
    };
    if let Some(detail) = &detail {
        tracing::debug!(%detail, "system info part omitted");
    }
    (value, ProbeTiming::new(started.elapsed(), outcome, detail))
}

/// GOOS of this build.
pub fn goos() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    }
}

fn host_info() -> Result<HostInfo, String> {
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

    let hostname = System::host_name().ok_or("no host name")?;
    let mut system = System::new();
    system.refresh_processes_specifics(ProcessesToUpdate::All, true, ProcessRefreshKind::nothing());
    let (platform, platform_family) = platform();
    let (virtualization_system, virtualization_role) = virtualization();
    Ok(HostInfo {
        hostname,
        uptime: System::uptime(),
        boot_time: System::boot_time(),
        procs: system.processes().len() as u64,
        os: goos().to_owned(),
        platform,
        platform_family,
        platform_version: System::os_version().unwrap_or_default(),
        kernel_version: System::kernel_version().unwrap_or_default(),
        kernel_arch: System::cpu_arch(),
        virtualization_system,
        virtualization_role,
        host_id: host_id(),
    })
}

/// `(platform, platformFamily)` the way gopsutil names them.
fn platform() -> (String, String) {
    if cfg!(target_os = "macos") {
        return ("darwin".into(), "Standalone Workstation".into());
    }
    if cfg!(not(target_os = "linux")) {
        return (sysinfo::System::distribution_id(), String::new());
    }
    let id = sysinfo::System::distribution_id();
    let platform = match id.as_str() {
        "rhel" => "redhat",
        "amzn" => "amazon",
        "ol" => "oracle",
        "sles" | "opensuse-leap" | "opensuse-tumbleweed" => "suse",
        other => other,
    }
    .to_owned();
    let likes = sysinfo::System::distribution_id_like();
    let family_of = |name: &str| -> Option<&'static str> {
        Some(match name {
            "debian" | "ubuntu" | "linuxmint" | "raspbian" => "debian",
            "redhat" | "rhel" | "centos" | "fedora" | "oracle" | "amazon" | "rocky"
            | "almalinux" | "scientific" | "cloudlinux" | "xenserver" => "rhel",
            "suse" | "opensuse" => "suse",
            "gentoo" => "gentoo",
            "arch" | "archlinux" | "manjaro" => "arch",
            "alpine" => "alpine",
            "coreos" => "coreos",
            _ => return None,
        })
    };
    let family = std::iter::once(platform.as_str())
        .chain(likes.iter().map(String::as_str))
        .find_map(family_of)
        .unwrap_or_default()
        .to_owned();
    (platform, family)
}

fn virtualization() -> (String, String) {
    let exists = |p: &str| std::path::Path::new(p).exists();
    if exists("/.dockerenv") {
        ("docker".into(), "guest".into())
    } else if exists("/run/.containerenv") {
        ("podman".into(), "guest".into())
    } else {
        (String::new(), String::new())
    }
}

fn host_id() -> String {
    [
        "/sys/class/dmi/id/product_uuid",
        "/etc/machine-id",
        "/proc/sys/kernel/random/boot_id",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .map(|s| s.trim().to_ascii_lowercase())
    .find(|s| !s.is_empty())
    .unwrap_or_default()
}

fn cpu_info() -> Result<CpuInfo, String> {
    use sysinfo::{CpuRefreshKind, RefreshKind, System};

    let system = System::new_with_specifics(
        RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing().with_frequency()),
    );
    if system.cpus().is_empty() {
        return Err("no CPU listed".into());
    }
    let details = linux_cpuinfo();
    let cpus = system
        .cpus()
        .iter()
        .enumerate()
        .map(|(i, cpu)| {
            let mut stat = details.get(i).cloned().unwrap_or_else(|| CpuInfoStat {
                cores: 1,
                ..CpuInfoStat::default()
            });
            stat.cpu = i as i32;
            if !cpu.vendor_id().is_empty() {
                stat.vendor_id = cpu.vendor_id().to_owned();
            }
            if !cpu.brand().is_empty() {
                stat.model_name = cpu.brand().trim().to_owned();
            }
            if cpu.frequency() > 0 {
                stat.mhz = cpu.frequency() as f64;
            }
            stat
        })
        .collect::<Vec<_>>();
    Ok(CpuInfo {
        count_logical: cpus.len() as i64,
        count_physical: System::physical_core_count().unwrap_or(0) as i64,
        cpus,
    })
}

/// `/proc/cpuinfo` stanzas (Linux; empty elsewhere or on error).
fn linux_cpuinfo() -> Vec<CpuInfoStat> {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|text| parse_cpuinfo(&text))
        .unwrap_or_default()
}

/// Parses `/proc/cpuinfo` into one entry per `processor` stanza.
pub fn parse_cpuinfo(text: &str) -> Vec<CpuInfoStat> {
    let mut cpus = Vec::new();
    let mut current: Option<CpuInfoStat> = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key == "processor" {
            if let Some(done) = current.take() {
                cpus.push(done);
            }
            current = Some(CpuInfoStat {
                cpu: value.parse().unwrap_or(cpus.len() as i32),
                cores: 1,
                ..CpuInfoStat::default()
            });
            continue;
        }
        let Some(cpu) = current.as_mut() else {
            continue;
        };
        match key {
            "vendor_id" | "CPU implementer" if cpu.vendor_id.is_empty() => {
                cpu.vendor_id = value.into()
            }
            "cpu family" | "CPU architecture" if cpu.family.is_empty() => cpu.family = value.into(),
            "model" | "CPU part" if cpu.model.is_empty() => cpu.model = value.into(),
            "model name" => cpu.model_name = value.into(),
            "stepping" | "CPU revision" => cpu.stepping = value.parse().unwrap_or(0),
            "physical id" => cpu.physical_id = value.into(),
            "core id" => cpu.core_id = value.into(),
            "cpu MHz" => cpu.mhz = value.parse().unwrap_or(0.0),
            "cache size" => {
                cpu.cache_size = value.trim_end_matches("KB").trim().parse().unwrap_or(0)
            }
            "flags" | "Features" => {
                cpu.flags = value.split_whitespace().map(str::to_owned).collect()
            }
            "microcode" => cpu.microcode = value.into(),
            _ => {}
        }
    }
    cpus.extend(current);
    cpus
}

fn memory_info() -> Result<MemoryInfo, String> {
    use sysinfo::{MemoryRefreshKind, RefreshKind, System};

    let system = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::everything()),
    );
    let total = system.total_memory();
    if total == 0 {
        return Err("total memory unknown".into());
    }
    let mut info = MemoryInfo {
        total,
        available: system.available_memory(),
        used: system.used_memory(),
        free: system.free_memory(),
        swap_total: system.total_swap(),
        swap_free: system.free_swap(),
        ..MemoryInfo::default()
    };
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        apply_meminfo(&mut info, &text);
    }
    info.used_percent = info.used as f64 / info.total as f64 * 100.0;
    Ok(info)
}

/// Fills the Linux fields from `/proc/meminfo` with gopsutil's arithmetic
/// (`cached` includes `SReclaimable`; `used = total - free - buffers - cached`).
pub fn apply_meminfo(info: &mut MemoryInfo, text: &str) {
    let mut values = BTreeMap::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let Some(Ok(number)) = parts.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = if parts.next() == Some("kB") {
            number * 1024
        } else {
            number
        };
        values.insert(key.trim().to_owned(), bytes);
    }
    let get = |k: &str| values.get(k).copied().unwrap_or(0);
    if get("MemTotal") == 0 {
        return;
    }
    info.total = get("MemTotal");
    info.free = get("MemFree");
    info.buffers = get("Buffers");
    info.sreclaimable = get("SReclaimable");
    info.sunreclaim = get("SUnreclaim");
    info.cached = get("Cached") + info.sreclaimable;
    info.active = get("Active");
    info.inactive = get("Inactive");
    info.write_back = get("Writeback");
    info.write_back_tmp = get("WritebackTmp");
    info.dirty = get("Dirty");
    info.shared = get("Shmem");
    info.slab = get("Slab");
    info.page_tables = get("PageTables");
    info.swap_cached = get("SwapCached");
    info.commit_limit = get("CommitLimit");
    info.committed_as = get("Committed_AS");
    info.high_total = get("HighTotal");
    info.high_free = get("HighFree");
    info.low_total = get("LowTotal");
    info.low_free = get("LowFree");
    info.swap_total = get("SwapTotal");
    info.swap_free = get("SwapFree");
    info.mapped = get("Mapped");
    info.vmalloc_total = get("VmallocTotal");
    info.vmalloc_used = get("VmallocUsed");
    info.vmalloc_chunk = get("VmallocChunk");
    info.huge_pages_total = get("HugePages_Total");
    info.huge_pages_free = get("HugePages_Free");
    info.huge_pages_rsvd = get("HugePages_Rsvd");
    info.huge_pages_surp = get("HugePages_Surp");
    info.huge_page_size = get("Hugepagesize");
    info.anon_huge_pages = get("AnonHugePages");
    info.available = match values.get("MemAvailable") {
        Some(available) => *available,
        None => info.free + info.buffers + info.cached,
    };
    info.used = info
        .total
        .saturating_sub(info.free)
        .saturating_sub(info.buffers)
        .saturating_sub(info.cached);
}

#[cfg(unix)]
fn disk_info() -> Result<DiskInfo, String> {
    let path = "/";
    let stat = nix::sys::statvfs::statvfs(path).map_err(|e| format!("statvfs {path}: {e}"))?;
    let frsize = stat.fragment_size() as u64;
    let blocks = stat.blocks() as u64;
    let total = blocks * frsize;
    let free = stat.blocks_available() as u64 * frsize;
    let used = blocks.saturating_sub(stat.blocks_free() as u64) * frsize;
    let inodes_total = stat.files() as u64;
    let inodes_free = stat.files_free() as u64;
    let inodes_used = inodes_total.saturating_sub(inodes_free);
    let percent = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            part as f64 / whole as f64 * 100.0
        }
    };
    Ok(DiskInfo {
        path: path.to_owned(),
        fstype: fstype(path),
        total,
        free,
        used,
        used_percent: percent(used, used + free),
        inodes_total,
        inodes_used,
        inodes_free,
        inodes_used_percent: percent(inodes_used, inodes_total),
    })
}

#[cfg(not(unix))]
fn disk_info() -> Result<DiskInfo, String> {
    Err("disk usage is collected on Unix only".into())
}

/// File system type of the mount at `path` (the last matching mount wins, as it shadows).
#[cfg(unix)]
fn fstype(path: &str) -> String {
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        return mounts
            .lines()
            .rev()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                let (_dev, mount, fs) = (fields.next()?, fields.next()?, fields.next()?);
                (mount == path).then(|| fs.to_owned())
            })
            .unwrap_or_default();
    }
    let disks = sysinfo::Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .find(|d| d.mount_point() == std::path::Path::new(path))
        .map(|d| d.file_system().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memory part with recognisable values.
    fn fake_memory() -> Result<MemoryInfo, String> {
        Ok(MemoryInfo {
            total: 4096,
            ..MemoryInfo::default()
        })
    }

    /// A disk part with recognisable values.
    fn fake_disk() -> Result<DiskInfo, String> {
        Ok(DiskInfo {
            path: "/fake".into(),
            ..DiskInfo::default()
        })
    }

    #[tokio::test]
    async fn a_slow_part_is_cut_at_the_budget_and_a_failing_one_omitted() {
        // The slow part blocks until the test releases it (or 30 s): far past the budget, yet
        // it must not keep the test's runtime from shutting down once released.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
        let collectors = Collectors {
            host: Box::new(move || {
                let _ = entered_tx.send(());
                let _ = released.recv_timeout(Duration::from_secs(30));
                Ok(HostInfo {
                    hostname: "invented-after-the-deadline".into(),
                    ..HostInfo::default()
                })
            }),
            cpu: Box::new(|| Err("no CPU listed (injected)".into())),
            memory: Box::new(fake_memory),
            disk: Box::new(fake_disk),
        };
        let budget = Duration::from_millis(300);
        let started = Instant::now();
        let report = collect_with(budget, collectors).await;
        let elapsed = started.elapsed();
        entered
            .recv_timeout(Duration::from_secs(5))
            .expect("the slow part ran");

        assert!(
            elapsed >= budget.saturating_sub(Duration::from_millis(20)),
            "returned before the budget although a part was still running: {elapsed:?}"
        );
        assert!(
            elapsed < budget + Duration::from_secs(2),
            "collection blocked past its budget: {elapsed:?}"
        );

        // The slow part: omitted, recorded as a timeout.
        assert!(report.info.host.is_none(), "{:?}", report.info.host);
        let host = &report.timings["system: host"];
        assert_eq!(host.outcome, ProbeOutcome::Timeout, "{host:?}");
        assert!(host.millis < 2_300, "{host:?}");

        // The failing part: omitted, with its error kept for diagnosis.
        assert!(report.info.cpu.is_none(), "{:?}", report.info.cpu);
        let cpu = &report.timings["system: cpu"];
        assert_eq!(cpu.outcome, ProbeOutcome::Failed, "{cpu:?}");
        assert_eq!(cpu.detail.as_deref(), Some("no CPU listed (injected)"));

        // The others: present, exactly as their collectors returned them.
        assert_eq!(report.info.memory.as_ref().map(|m| m.total), Some(4096));
        assert_eq!(
            report.info.disk.as_ref().map(|d| d.path.as_str()),
            Some("/fake")
        );
        assert_eq!(report.timings["system: memory"].outcome, ProbeOutcome::Ok);
        assert_eq!(report.timings["system: disk"].outcome, ProbeOutcome::Ok);
        assert_eq!(report.timings.len(), 4);

        // Released late, the slow part's value is dropped, never reported.
        drop(release);
    }

    #[tokio::test]
    async fn a_panicking_part_is_omitted_and_the_others_kept() {
        let collectors = Collectors {
            host: Box::new(|| panic!("injected panic")),
            cpu: Box::new(|| {
                Ok(CpuInfo {
                    count_logical: 3,
                    ..CpuInfo::default()
                })
            }),
            memory: Box::new(fake_memory),
            disk: Box::new(|| Err("statvfs /: injected".into())),
        };
        let report = collect_with(Duration::from_secs(10), collectors).await;
        assert!(report.info.host.is_none());
        let host = &report.timings["system: host"];
        assert_eq!(host.outcome, ProbeOutcome::Failed, "{host:?}");
        assert!(
            host.detail
                .as_deref()
                .is_some_and(|d| d.contains("panicked")),
            "{host:?}"
        );
        assert!(report.info.disk.is_none());
        assert_eq!(report.timings["system: disk"].outcome, ProbeOutcome::Failed);
        assert_eq!(report.info.cpu.map(|c| c.count_logical), Some(3));
        assert_eq!(report.info.memory.map(|m| m.total), Some(4096));
    }

    #[test]
    fn cpuinfo_stanzas() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n\
                    model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz\nstepping\t: 4\n\
                    microcode\t: 0x2006e05\ncpu MHz\t\t: 2400.000\ncache size\t: 28160 KB\n\
                    physical id\t: 0\ncore id\t\t: 0\nflags\t\t: fpu vme sse2\n\n\
                    processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)\n";
        let cpus = parse_cpuinfo(text);
        assert_eq!(cpus.len(), 2);
        assert_eq!(cpus[0].family, "6");
        assert_eq!(cpus[0].model, "85");
        assert_eq!(cpus[0].stepping, 4);
        assert_eq!(cpus[0].cache_size, 28160);
        assert_eq!(cpus[0].flags, ["fpu", "vme", "sse2"]);
        assert_eq!(cpus[0].microcode, "0x2006e05");
        assert_eq!(cpus[1].cpu, 1);
        assert_eq!(cpus[1].cores, 1);
    }

    #[test]
    fn meminfo_uses_gopsutil_arithmetic() {
        let text = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    600 kB\n\
                    Buffers:          50 kB\nCached:          300 kB\nSReclaimable:     20 kB\n\
                    Shmem:            10 kB\nHugePages_Total:       0\nHugepagesize:    2048 kB\n";
        let mut info = MemoryInfo::default();
        apply_meminfo(&mut info, text);
        assert_eq!(info.total, 1000 * 1024);
        assert_eq!(info.available, 600 * 1024);
        assert_eq!(info.cached, 320 * 1024);
        assert_eq!(info.used, (1000 - 100 - 50 - 320) * 1024);
        assert_eq!(info.shared, 10 * 1024);
        assert_eq!(info.huge_page_size, 2048 * 1024);
    }

    #[test]
    fn memory_info_field_names_are_gopsutil() {
        let value = serde_json::to_value(MemoryInfo::default()).unwrap();
        for key in [
            "usedPercent",
            "writeBackTmp",
            "sreclaimable",
            "sunreclaim",
            "committedAS",
            "hugePageSize",
            "anonHugePages",
            "vmallocChunk",
            "hugePagesRsvd",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
    }
}
