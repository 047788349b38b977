//! The benchmark entry point (`agentserver-bench`): it runs a sibling benchmark binary, turns
//! the `BENCH-JSON` line that benchmark prints into rows of its table, and skips a benchmark
//! whose CLI is missing instead of failing.

use std::process::Command;

#[test]
fn entry_point_tabulates_a_child_benchmark_and_skips_a_missing_cli() {
    let out = Command::new(env!("CARGO_BIN_EXE_agentserver-bench"))
        .args(["--quick", "--only", "intake,opencode"])
        .env("AGENTSERVER_TEST_OPENCODE_BIN", "/nonexistent/opencode")
        .output()
        .expect("run agentserver-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");

    assert!(
        stdout.starts_with(
            "| benchmark | measure | baseline | value | ratio |\n|---|---|---|---|---|\n"
        ),
        "{stdout}"
    );
    // A row with a baseline and a numeric ratio, from intake-bench's BENCH-JSON line.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| intake | start -> ack, median | one durable write (fsync): "))
        .unwrap_or_else(|| panic!("no intake row:\n{stdout}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert!(cells[4].ends_with(" ms"), "{row}");
    let ratio: f64 = cells[5]
        .parse()
        .unwrap_or_else(|_| panic!("ratio in {row}"));
    assert!(ratio > 0.0, "{row}");
    // A row without a baseline.
    assert!(stdout.contains("| intake | throughput | — | "), "{stdout}");
    // The missing CLI is a note, not a failure; benchmarks not asked for do not appear.
    assert!(
        stdout.contains("| opencode | skipped: the opencode CLI is not installed"),
        "{stdout}"
    );
    assert!(!stdout.contains("| tunnel |"), "{stdout}");
    assert!(stdout.contains("\nTotal "), "{stdout}");
    // The child's own human output goes to stderr, not into the table.
    assert!(stderr.contains("intake-bench: 50 tasks"), "{stderr}");
}
