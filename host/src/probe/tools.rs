//! The language and tool probe table of §7.2 and the concurrent probe run.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::time::{Duration, Instant};

use super::exec::{self, ExecError};
use super::parse;
use super::{ProbeOutcome, ProbeTiming, RuntimeInfo};

/// Which list a probe's result goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// `capabilities.languages`.
    Language,
    /// `capabilities.tools`.
    Tool,
}

/// How a probe's output is turned into a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parser {
    /// [`parse::generic_version`].
    Generic,
    /// [`parse::go_version`].
    Go,
    /// [`parse::java_version`].
    Java,
    /// [`parse::kubectl_version`].
    Kubectl,
}

impl Parser {
    /// Applies this parser.
    pub fn parse(self, output: &str) -> Option<String> {
        match self {
            Parser::Generic => parse::generic_version(output),
            Parser::Go => parse::go_version(output),
            Parser::Java => parse::java_version(output),
            Parser::Kubectl => parse::kubectl_version(output),
        }
    }
}

/// One row of the probe table.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSpec {
    /// Name reported on the wire.
    pub name: &'static str,
    /// Language or tool.
    pub category: Category,
    /// Program looked up in PATH.
    pub program: &'static str,
    /// Its arguments.
    pub args: &'static [&'static str],
    /// Output parser.
    pub parser: Parser,
}

const fn spec(
    name: &'static str,
    category: Category,
    program: &'static str,
    args: &'static [&'static str],
    parser: Parser,
) -> ProbeSpec {
    ProbeSpec {
        name,
        category,
        program,
        args,
        parser,
    }
}

use Category::{Language, Tool};
use Parser::{Generic, Go, Java, Kubectl};

/// The 17 probes of §7.2. Deliberate change: `kubectl version --client` (no `--short`, which
/// kubectl ≥ 1.28 rejects) with a parser for both output forms.
pub const PROBES: [ProbeSpec; 17] = [
    spec("go", Language, "go", &["version"], Go),
    spec("python3", Language, "python3", &["--version"], Generic),
    spec("node", Language, "node", &["--version"], Generic),
    spec("rust", Language, "rustc", &["--version"], Generic),
    spec("java", Language, "java", &["-version"], Java),
    spec("ruby", Language, "ruby", &["--version"], Generic),
    spec("php", Language, "php", &["--version"], Generic),
    spec("docker", Tool, "docker", &["--version"], Generic),
    spec(
        "kubectl",
        Tool,
        "kubectl",
        &["version", "--client"],
        Kubectl,
    ),
    spec("git", Tool, "git", &["--version"], Generic),
    spec("make", Tool, "make", &["--version"], Generic),
    spec("helm", Tool, "helm", &["version", "--short"], Generic),
    spec("cmake", Tool, "cmake", &["--version"], Generic),
    spec("terraform", Tool, "terraform", &["--version"], Generic),
    spec("aws", Tool, "aws", &["--version"], Generic),
    spec("gcloud", Tool, "gcloud", &["--version"], Generic),
    spec("ffmpeg", Tool, "ffmpeg", &["-version"], Generic),
];

/// The `python --version` fallback, reported as `python3` when `python3` is missing and the
/// version is 3.x. It runs concurrently with the table (not after it) to keep the 2 s bound.
pub const PYTHON_FALLBACK: ProbeSpec = spec("python3", Language, "python", &["--version"], Generic);

/// Key of the python fallback in the timings map.
pub const PYTHON_FALLBACK_KEY: &str = "python (fallback)";

/// Result of one probe.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// The row probed.
    pub spec: ProbeSpec,
    /// What was found, if anything.
    pub found: Option<RuntimeInfo>,
    /// How it went and how long it took.
    pub timing: ProbeTiming,
}

/// Runs one probe: lookup, execution under `timeout`, parse.
pub async fn probe_one(
    spec: ProbeSpec,
    path: &OsStr,
    path_env: Option<&OsStr>,
    timeout: Duration,
) -> ProbeResult {
    let started = Instant::now();
    let (found, outcome, detail) = match exec::lookup(spec.program, path) {
        None => (None, ProbeOutcome::NotFound, None),
        Some(program) => match exec::run(&program, spec.args, path_env, timeout).await {
            Ok(output) => match spec.parser.parse(&output) {
                Some(version) => (
                    Some(RuntimeInfo {
                        name: spec.name.to_owned(),
                        version,
                        path: program.to_string_lossy().into_owned(),
                    }),
                    ProbeOutcome::Ok,
                    None,
                ),
                None => (None, ProbeOutcome::Unparsed, first_line(&output)),
            },
            Err(ExecError::Timeout(_)) => (None, ProbeOutcome::Timeout, None),
            Err(ExecError::NotFound) => (None, ProbeOutcome::NotFound, None),
            Err(e) => (None, ProbeOutcome::Failed, Some(e.to_string())),
        },
    };
    ProbeResult {
        spec,
        found,
        timing: ProbeTiming::new(started.elapsed(), outcome, detail),
    }
}

fn first_line(output: &str) -> Option<String> {
    output
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(120).collect())
}

/// Languages, tools and per-probe timings of a full table run.
#[derive(Debug, Default)]
pub struct ToolsReport {
    /// Found languages, sorted by name.
    pub languages: Vec<RuntimeInfo>,
    /// Found tools, sorted by name.
    pub tools: Vec<RuntimeInfo>,
    /// Timing and outcome per probe name (`python (fallback)` for the fallback).
    pub timings: BTreeMap<String, ProbeTiming>,
}

/// Runs every probe of the table plus the python fallback concurrently.
pub async fn probe_all(path: &OsStr, path_env: Option<&OsStr>, timeout: Duration) -> ToolsReport {
    let table = futures_util::future::join_all(
        PROBES
            .iter()
            .map(|spec| probe_one(*spec, path, path_env, timeout)),
    );
    let fallback = probe_one(PYTHON_FALLBACK, path, path_env, timeout);
    let (results, fallback) = tokio::join!(table, fallback);

    let mut report = ToolsReport::default();
    let mut have_python3 = false;
    for result in results {
        report
            .timings
            .insert(result.spec.name.to_owned(), result.timing);
        if let Some(found) = result.found {
            have_python3 |= found.name == "python3";
            match result.spec.category {
                Category::Language => report.languages.push(found),
                Category::Tool => report.tools.push(found),
            }
        }
    }
    let mut fallback_timing = fallback.timing;
    match fallback.found {
        Some(found) if !have_python3 && found.version.starts_with("3.") => {
            report.languages.push(found)
        }
        Some(found) if !have_python3 => {
            fallback_timing.outcome = ProbeOutcome::Unused;
            fallback_timing.detail = Some(format!("python {} is not Python 3", found.version));
        }
        Some(_) => {
            fallback_timing.outcome = ProbeOutcome::Unused;
            fallback_timing.detail = Some("python3 was found".into());
        }
        None => {}
    }
    report
        .timings
        .insert(PYTHON_FALLBACK_KEY.to_owned(), fallback_timing);
    report.languages.sort_by(|a, b| a.name.cmp(&b.name));
    report.tools.sort_by(|a, b| a.name.cmp(&b.name));
    report
}
