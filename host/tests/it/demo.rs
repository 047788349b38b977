//! The README's first command: `agentserver demo` runs the whole flow (embedded server, device
//! login, registration, tunnel, one task through the bundled WASM backend) and ends with a
//! completed task whose status was reported exactly once.

use std::process::Command;

#[test]
fn demo_completes_a_task_end_to_end() {
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .arg("demo")
        .env("HOME", home.path())
        .env("TMPDIR", home.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run agentserver demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        "Embedded agentserver listening on http://127.0.0.1:",
        "To authenticate, visit:",
        "Authentication successful!",
        "Registered sandbox ",
        "Tunnel connected",
        "agent info received by the server",
        "event 1 (started)",
        "Final status reported to the server: completed (sent 1 time(s))",
        "result: \"Say hello from the demo.\"",
        "Demo finished in",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in demo output:\n{stdout}"
        );
    }
    // The demo works in a temporary state directory: nothing lands in the user's HOME.
    assert!(!home.path().join(".agentserver").exists());
    // …and cleans it up after a success.
    let leftovers: Vec<_> = std::fs::read_dir(home.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("agentserver-demo-")
        })
        .collect();
    assert!(leftovers.is_empty(), "demo left {leftovers:?} behind");
}
