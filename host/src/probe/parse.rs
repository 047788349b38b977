//! Pure parsers for tool output (spec §7.2). No I/O here: every function takes the text a tool
//! printed and returns what it found, so they are tested on recorded outputs
//! (`host/tests/fixtures/probe/`).

use super::GpuDevice;

/// The generic version parser of §7.2: the first non-empty line, trimmed; the first match of an
/// optional `v` followed by `digits.digits(.digits)?`; returned without the `v`.
///
/// `v20.11.0` → `20.11.0`; `Docker version 25.0.3, build 4debf41` → `25.0.3`.
pub fn generic_version(output: &str) -> Option<String> {
    let line = output.lines().map(str::trim).find(|l| !l.is_empty())?;
    first_version(line)
}

/// The first `v?N.N(.N)?` anywhere in `text`, without the `v`.
pub fn first_version(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    (0..bytes.len()).find_map(|start| version_at(bytes, start))
}

/// Matches `v?N.N(.N)?` starting exactly at `start`.
fn version_at(bytes: &[u8], start: usize) -> Option<String> {
    let mut i = start;
    if bytes.get(i) == Some(&b'v') {
        i += 1;
    }
    let num_start = i;
    let end = dotted_number(bytes, i, 2, 3)?;
    // The slice is ASCII digits and dots, so it is valid UTF-8.
    Some(String::from_utf8_lossy(&bytes[num_start..end]).into_owned())
}

/// Matches `digits(.digits)*` at `i` with between `min` and `max` components (greedy);
/// returns the end index.
fn dotted_number(bytes: &[u8], mut i: usize, min: usize, max: usize) -> Option<usize> {
    let digits = |from: usize| {
        bytes[from.min(bytes.len())..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let n = digits(i);
    if n == 0 {
        return None;
    }
    i += n;
    let mut components = 1;
    while components < max && bytes.get(i) == Some(&b'.') {
        let n = digits(i + 1);
        if n == 0 {
            break;
        }
        i += 1 + n;
        components += 1;
    }
    (components >= min).then_some(i)
}

/// `go version` output: the text after the first `go1`/`go2` (the `go` dropped), then the
/// generic parser. `go version go1.22.5 linux/amd64` → `1.22.5`.
pub fn go_version(output: &str) -> Option<String> {
    let start = ["go1", "go2"].iter().filter_map(|p| output.find(p)).min()?;
    generic_version(&output[start + 2..])
}

/// `java -version` output: the first double-quoted version anywhere in the output
/// (`openjdk version "17.0.15" 2025-04-15` → `17.0.15`; `java version "1.8.0_392"` → `1.8.0`).
///
/// Deviation from upstream (which needs `"N.N`): a quoted single number such as
/// `openjdk version "21" 2023-09-19` (a GA release) is accepted as `21`. Without any quoted
/// version the generic parser is tried (`openjdk 17.0.15 2025-04-15` from `java --version`).
pub fn java_version(output: &str) -> Option<String> {
    let bytes = output.as_bytes();
    for (i, _) in output.match_indices('"') {
        if let Some(end) = dotted_number(bytes, i + 1, 1, 3) {
            return Some(output[i + 1..end].to_owned());
        }
    }
    generic_version(output)
}

/// `kubectl version --client` output, all kubectl versions:
/// `Client Version: v1.30.2` (≥ 1.28, and `--short` before), or the old struct form
/// `Client Version: version.Info{Major:"1", Minor:"27", GitVersion:"v1.27.3", …}` (< 1.28
/// without `--short`, after a deprecation warning on stderr).
pub fn kubectl_version(output: &str) -> Option<String> {
    let line = output
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("Client Version:"));
    match line {
        Some(line) => match line.find("GitVersion:\"") {
            Some(at) => first_version(&line[at..]),
            None => first_version(&line["Client Version:".len()..]),
        },
        None => generic_version(output),
    }
}

/// Columns this host asks `nvidia-smi --query-gpu=` for (all supported by every driver that
/// has `--query-gpu`); the first two are the upstream query.
pub const NVIDIA_SMI_QUERY: &str =
    "name,memory.total,driver_version,utilization.gpu,utilization.memory";

/// Parses `nvidia-smi --query-gpu=<NVIDIA_SMI_QUERY or a prefix of it> --format=csv,noheader,nounits`:
/// one GPU per line. Lines with only `name, memory` (the upstream query) are accepted. A name
/// holding commas is rebuilt from the surplus fields. `[N/A]`/`[Not Supported]` values become
/// `None`. Memory is MiB, an integer or a float (truncated).
pub fn nvidia_smi_gpus(output: &str) -> Vec<GpuDevice> {
    const COLUMNS: usize = 5;
    let mut gpus = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 2 {
            continue;
        }
        // Everything beyond the known columns belongs to the name (a name with commas). With
        // fewer fields than the full query, assume the columns are a prefix of it.
        let surplus = fields.len().saturating_sub(COLUMNS);
        let name = fields[..=surplus].join(", ");
        let rest = &fields[surplus + 1..];
        let memory_mb = rest.first().and_then(|m| parse_mib(m));
        let driver_version = rest
            .get(1)
            .filter(|v| !is_unavailable(v))
            .map(|v| (*v).to_owned());
        let percent = |i: usize| rest.get(i).and_then(|v| v.parse::<u32>().ok());
        gpus.push(GpuDevice {
            index: gpus.len() as u32,
            name,
            memory_mb,
            driver_version,
            cuda_version: None,
            compute_capability: None,
            utilization_gpu_percent: percent(2),
            utilization_memory_percent: percent(3),
            source: "nvidia-smi".into(),
        });
    }
    gpus
}

/// The upstream single-GPU interpretation of the same output (kept for comparison in tests):
/// the whole trimmed output split at the first comma; with several GPUs the memory part spans
/// lines and does not parse (→ `None`, which the wire omits as `memory_mb` 0).
pub fn nvidia_smi_upstream(output: &str) -> Option<(String, Option<u64>)> {
    let text = output.trim();
    let (name, memory) = text.split_once(',')?;
    Some((name.trim().to_owned(), parse_mib(memory.trim())))
}

fn is_unavailable(v: &str) -> bool {
    v.is_empty() || v.starts_with('[') || v.eq_ignore_ascii_case("N/A")
}

/// `81559` or `81559.5` → 81559; anything else → `None`; 0 → `None` (unknown, like upstream).
fn parse_mib(text: &str) -> Option<u64> {
    let value = text.parse::<u64>().ok().or_else(|| {
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })?;
    (value > 0).then_some(value)
}

/// Parses `system_profiler SPDisplaysDataType`: every `Chipset Model:` starts a GPU; a following
/// `VRAM (Total):` or `VRAM (Dynamic, Max):` line (`8 GB`, `1536 MB`) gives its memory. Apple
/// silicon reports no VRAM (unified memory) → `None`.
pub fn system_profiler_gpus(output: &str) -> Vec<GpuDevice> {
    let mut gpus: Vec<GpuDevice> = Vec::new();
    for line in output.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("Chipset Model:") {
            gpus.push(GpuDevice {
                index: gpus.len() as u32,
                name: name.trim().to_owned(),
                memory_mb: None,
                driver_version: None,
                cuda_version: None,
                compute_capability: None,
                utilization_gpu_percent: None,
                utilization_memory_percent: None,
                source: "system_profiler".into(),
            });
        } else if let Some(vram) = line
            .strip_prefix("VRAM (Total):")
            .or_else(|| line.strip_prefix("VRAM (Dynamic, Max):"))
            && let Some(gpu) = gpus.last_mut()
            && gpu.memory_mb.is_none()
        {
            gpu.memory_mb = parse_size_mb(vram.trim());
        }
    }
    gpus
}

/// `8 GB` → 8192, `1536 MB` → 1536.
fn parse_size_mb(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let number: f64 = parts.next()?.parse().ok()?;
    let factor = match parts.next()?.to_ascii_uppercase().as_str() {
        "MB" => 1.0,
        "GB" => 1024.0,
        "TB" => 1024.0 * 1024.0,
        _ => return None,
    };
    let mb = (number * factor) as u64;
    (mb > 0).then_some(mb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_examples_from_the_spec() {
        assert_eq!(generic_version("v20.11.0\n").as_deref(), Some("20.11.0"));
        assert_eq!(
            generic_version("Docker version 25.0.3, build 4debf41").as_deref(),
            Some("25.0.3")
        );
        assert_eq!(
            generic_version("GNU Make 4.3\nBuilt for x").as_deref(),
            Some("4.3")
        );
        assert_eq!(generic_version("no version here\n1.2.3"), None);
        assert_eq!(generic_version("1.2.3.4").as_deref(), Some("1.2.3"));
        assert_eq!(
            generic_version("\n\n  Helm v3.14.0+g3fc9f4b").as_deref(),
            Some("3.14.0")
        );
        assert_eq!(generic_version("version 7 only"), None);
        assert_eq!(generic_version("vv1.2").as_deref(), Some("1.2"));
        assert_eq!(generic_version(""), None);
    }

    #[test]
    fn java_variants() {
        assert_eq!(
            java_version("openjdk version \"21\" 2023-09-19").as_deref(),
            Some("21")
        );
        assert_eq!(
            java_version("openjdk 17.0.15 2025-04-15").as_deref(),
            Some("17.0.15")
        );
        assert_eq!(java_version("Error: no \"quoted\" thing"), None);
    }

    #[test]
    fn go_needs_go1_or_go2() {
        assert_eq!(
            go_version("go version go1.22.5 linux/amd64").as_deref(),
            Some("1.22.5")
        );
        assert_eq!(go_version("go version devel +abc"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mb("8 GB"), Some(8192));
        assert_eq!(parse_size_mb("1536 MB"), Some(1536));
        assert_eq!(parse_size_mb("lots"), None);
        assert_eq!(parse_mib("[N/A]"), None);
        assert_eq!(parse_mib("40960.7"), Some(40960));
        assert_eq!(parse_mib("0"), None);
    }
}
