//! `agentserver info` end to end: the real binary, with an isolated PATH.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn run_info(json: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let git = dir.path().join("git");
    std::fs::write(&git, "#!/bin/sh\necho git version 2.47.3\n").unwrap();
    std::fs::set_permissions(&git, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentserver"));
    command
        .arg("info")
        .env("PATH", dir.path())
        .current_dir(dir.path());
    if json {
        command.arg("--json");
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn json_is_the_wire_document_plus_probe_timings() {
    let value: serde_json::Value = serde_json::from_str(&run_info(true)).unwrap();
    let timings = &value["probe_timings"];
    assert_eq!(timings["git"]["outcome"], "ok");
    assert_eq!(timings["go"]["outcome"], "not_found");
    assert!(timings["system: host"]["millis"].is_u64());
    assert_eq!(value["capabilities"]["tools"][0]["version"], "2.47.3");
    assert!(value["hostname"].is_string());
    // Without probe_timings it is exactly an agent-info document.
    let mut wire = value.clone();
    wire.as_object_mut().unwrap().remove("probe_timings");
    let info: agentserver::probe::AgentInfo = serde_json::from_value(wire.clone()).unwrap();
    assert_eq!(
        serde_json::to_value(&info).unwrap()["capabilities"],
        wire["capabilities"]
    );
}

#[test]
fn table_lists_every_probe_with_its_time() {
    let text = run_info(false);
    assert!(
        text.contains("Languages") && text.contains("Tools") && text.contains("GPUs"),
        "{text}"
    );
    let git = text
        .lines()
        .find(|l| l.trim_start().starts_with("git "))
        .unwrap();
    assert!(git.contains("2.47.3") && git.contains(" ms"), "{git}");
    for probe in agentserver::probe::tools::PROBES {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{} ", probe.name))),
            "{} missing in:\n{text}",
            probe.name
        );
    }
}
