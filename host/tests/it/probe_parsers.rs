//! Parsers of §7.2 on recorded outputs of real tools (`tests/fixtures/probe/`).

use agentserver::probe::parse;
use agentserver::probe::tools::{PROBES, Parser};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/probe/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parser_of(name: &str) -> Parser {
    PROBES.iter().find(|p| p.name == name).unwrap().parser
}

#[test]
fn go() {
    assert_eq!(
        parser_of("go").parse(&fixture("go.txt")).as_deref(),
        Some("1.22.5")
    );
}

#[test]
fn java_openjdk_17() {
    assert_eq!(
        parser_of("java")
            .parse(&fixture("java_openjdk17.txt"))
            .as_deref(),
        Some("17.0.15")
    );
}

#[test]
fn java_1_8_old_style() {
    assert_eq!(
        parser_of("java").parse(&fixture("java_1_8.txt")).as_deref(),
        Some("1.8.0")
    );
}

#[test]
fn node_python_docker_and_friends() {
    let cases = [
        ("node", "node.txt", "20.20.2"),
        ("python3", "python3.txt", "3.11.7"),
        ("docker", "docker.txt", "28.2.2"),
        ("git", "git.txt", "2.47.3"),
        ("make", "make.txt", "4.3"),
        ("rust", "rustc.txt", "1.95.0"),
        ("aws", "aws.txt", "1.45.11"),
        ("gcloud", "gcloud.txt", "528.0.0"),
    ];
    for (probe, file, want) in cases {
        assert_eq!(
            parser_of(probe).parse(&fixture(file)).as_deref(),
            Some(want),
            "{probe} on {file}"
        );
    }
}

#[test]
fn terraform_version_survives_its_stderr_warning() {
    // The probe puts stdout before stderr, so the version line comes first.
    let combined =
        fixture("terraform_with_warning.stdout") + &fixture("terraform_with_warning.stderr");
    assert_eq!(
        parser_of("terraform").parse(&combined).as_deref(),
        Some("1.11.4")
    );
    // Interleaved the upstream way (warning first) the first line has no version.
    let upstream =
        fixture("terraform_with_warning.stderr") + &fixture("terraform_with_warning.stdout");
    assert_eq!(parse::generic_version(&upstream), None);
}

#[test]
fn kubectl_old_short_output() {
    let out = fixture("kubectl_1_27_short.txt");
    assert_eq!(parser_of("kubectl").parse(&out).as_deref(), Some("1.27.3"));
    // The upstream generic parser reads the deprecation warning and finds nothing.
    assert_eq!(parse::generic_version(&out), None);
}

#[test]
fn kubectl_old_struct_output() {
    assert_eq!(
        parser_of("kubectl")
            .parse(&fixture("kubectl_1_27_client.txt"))
            .as_deref(),
        Some("1.27.3")
    );
}

#[test]
fn kubectl_new_output() {
    assert_eq!(
        parser_of("kubectl")
            .parse(&fixture("kubectl_1_30.txt"))
            .as_deref(),
        Some("1.30.2")
    );
    assert_eq!(
        parser_of("kubectl")
            .parse(&fixture("kubectl_1_32.txt"))
            .as_deref(),
        Some("1.32.4")
    );
}

#[test]
fn kubectl_is_probed_without_short() {
    let kubectl = PROBES.iter().find(|p| p.name == "kubectl").unwrap();
    assert_eq!(kubectl.args, ["version", "--client"]);
}

#[test]
fn nvidia_smi_one_gpu() {
    let gpus = parse::nvidia_smi_gpus(&fixture("nvidia_smi_1gpu.csv"));
    assert_eq!(gpus.len(), 1);
    assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
    assert_eq!(gpus[0].memory_mb, Some(81559));
    assert_eq!(gpus[0].driver_version, None);
    assert_eq!(gpus[0].source, "nvidia-smi");
    assert_eq!(
        parse::nvidia_smi_upstream(&fixture("nvidia_smi_1gpu.csv")),
        Some(("NVIDIA H100 80GB HBM3".to_owned(), Some(81559)))
    );
}

#[test]
fn nvidia_smi_four_gpus() {
    let out = fixture("nvidia_smi_4gpu.csv");
    let gpus = parse::nvidia_smi_gpus(&out);
    assert_eq!(gpus.len(), 4);
    for (i, gpu) in gpus.iter().enumerate() {
        assert_eq!(gpu.index, i as u32);
        assert_eq!(gpu.name, "NVIDIA A100-SXM4-40GB");
        assert_eq!(gpu.memory_mb, Some(40960));
    }
    // The upstream quirk this fixes: the memory part spans lines and is lost.
    let (name, memory) = parse::nvidia_smi_upstream(&out).unwrap();
    assert_eq!(name, "NVIDIA A100-SXM4-40GB");
    assert_eq!(memory, None);
}

#[test]
fn nvidia_smi_four_gpus_full_query() {
    let gpus = parse::nvidia_smi_gpus(&fixture("nvidia_smi_4gpu_full.csv"));
    assert_eq!(gpus.len(), 4);
    assert_eq!(gpus[0].name, "NVIDIA GeForce RTX 4090");
    assert_eq!(gpus[0].memory_mb, Some(24564));
    assert_eq!(gpus[0].driver_version.as_deref(), Some("550.163.01"));
    assert_eq!(gpus[0].utilization_gpu_percent, Some(87));
    assert_eq!(gpus[0].utilization_memory_percent, Some(41));
    assert_eq!(gpus[2].utilization_gpu_percent, None);
    assert_eq!(gpus[3].utilization_gpu_percent, Some(100));
}

#[test]
fn nvidia_smi_name_with_comma_and_float_memory() {
    let gpus = parse::nvidia_smi_gpus("Odd, Name GPU, 8191.9, 470.82, 1, 2\n\n");
    assert_eq!(gpus.len(), 1);
    assert_eq!(gpus[0].name, "Odd, Name GPU");
    assert_eq!(gpus[0].memory_mb, Some(8191));
    assert_eq!(gpus[0].driver_version.as_deref(), Some("470.82"));
}

#[test]
fn system_profiler_apple_silicon() {
    let gpus = parse::system_profiler_gpus(&fixture("system_profiler_apple_m1.txt"));
    assert_eq!(gpus.len(), 1);
    assert_eq!(gpus[0].name, "Apple M1");
    assert_eq!(gpus[0].memory_mb, None);
    assert_eq!(gpus[0].source, "system_profiler");
}

#[test]
fn system_profiler_intel_with_discrete_amd() {
    let gpus = parse::system_profiler_gpus(&fixture("system_profiler_intel_amd.txt"));
    let summary: Vec<_> = gpus
        .iter()
        .map(|g| (g.name.as_str(), g.memory_mb))
        .collect();
    assert_eq!(
        summary,
        [
            ("Intel UHD Graphics 630", Some(1536)),
            ("AMD Radeon Pro 5500M", Some(8192))
        ]
    );
}

#[test]
fn probe_table_matches_the_spec() {
    let names: Vec<_> = PROBES.iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "go",
            "python3",
            "node",
            "rust",
            "java",
            "ruby",
            "php",
            "docker",
            "kubectl",
            "git",
            "make",
            "helm",
            "cmake",
            "terraform",
            "aws",
            "gcloud",
            "ffmpeg"
        ]
    );
    let rust = PROBES.iter().find(|p| p.name == "rust").unwrap();
    assert_eq!((rust.program, rust.args), ("rustc", &["--version"][..]));
    let java = PROBES.iter().find(|p| p.name == "java").unwrap();
    assert_eq!(java.args, ["-version"]);
    let ffmpeg = PROBES.iter().find(|p| p.name == "ffmpeg").unwrap();
    assert_eq!(ffmpeg.args, ["-version"]);
    let helm = PROBES.iter().find(|p| p.name == "helm").unwrap();
    assert_eq!(helm.args, ["version", "--short"]);
}
