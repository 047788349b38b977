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

#[test]
fn the_configured_sandboxes_are_named_with_their_workdir_and_isolation() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    for d in ["repo", "plain"] {
        std::fs::create_dir(root.join(d)).unwrap();
    }
    let init = Command::new("git")
        .args(["init", "-q"])
        .current_dir(root.join("repo"))
        .status()
        .unwrap();
    assert!(init.success());
    let config = root.join("agentserver.toml");
    std::fs::write(
        &config,
        "[[sandbox]]\nname = \"web\"\nwork_dir = \"repo\"\nmax_concurrent_tasks = 2\n\n\
         [[sandbox]]\nname = \"api\"\nbackend = \"opencode\"\nwork_dir = \"plain\"\nmax_concurrent_tasks = 2\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args(["info", "--json", "--config"])
        .arg(&config)
        .env("PATH", "/usr/bin:/bin")
        .env("AGENTSERVER_HOME", root.join("state"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let sandboxes = value["sandboxes"].as_array().expect("the sandboxes");
    assert_eq!(sandboxes[0]["name"], "web");
    assert_eq!(sandboxes[0]["backend"], "claudecode");
    assert_eq!(sandboxes[0]["isolation"], "worktree");
    assert_eq!(
        sandboxes[0]["workdir"],
        root.join("repo").display().to_string()
    );
    assert_eq!(sandboxes[1]["name"], "api");
    let refused = sandboxes[1]["isolation"].as_str().unwrap();
    assert!(
        refused.starts_with("refused:") && refused.contains("isolation = \"none\""),
        "{refused}"
    );
}
