//! `agentserver list` and `agentserver remove`, run as the real binary (spec §13, §4.1).

use crate::support::auth_state as support_auth_state;

use std::time::Duration;

use agentserver::secret::Secret;
use agentserver::state::fsutil::LockFile;
use agentserver::state::{Registry, RegistryEntry, RegistryFile, SessionStore};
use support_auth_state::{TIMEOUT, describe, run_bin, run_bin_with_stdin, session};

#[tokio::test]
async fn list_shows_the_table_and_json_without_tokens() {
    let home = tempfile::tempdir().unwrap();
    let out = run_bin(home.path(), &["list"]).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "No sessions.\n");

    let store = SessionStore::new(home.path().join("sessions"));
    let me = std::process::id() as i32;
    store
        .save(&session(
            "0f6c1f0e-8a43-4c36-9d3e-6a1f0c7e2b11",
            "/home/someone/projects/a/rather/long/directory/name",
            "claudecode",
            "2026-04-09T12:00:00+02:00",
            Some(me),
        ))
        .unwrap();
    store
        .save(&session(
            "7a0b9c8d-0000-4000-8000-000000000000",
            "/p",
            "opencode",
            "2026-04-09T09:00:00+02:00",
            None,
        ))
        .unwrap();

    let out = run_bin(home.path(), &["list"]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for h in [
        "SANDBOX",
        "NAME",
        "TYPE",
        "WORKSPACE",
        "DIRECTORY",
        "STATUS",
    ] {
        assert!(lines[0].contains(h), "{stdout}");
    }
    // Newest first; ids cut to 8; long dirs shortened; live pid shown.
    assert!(lines[1].starts_with("0f6c1f0e  "), "{stdout}");
    assert!(
        lines[1].contains("  ...cts/a/rather/long/directory/name  "),
        "{stdout}"
    );
    assert!(
        lines[1].ends_with(&format!("Running (PID {me})")),
        "{stdout}"
    );
    assert!(lines[2].starts_with("7a0b9c8d  "), "{stdout}");
    assert!(lines[2].contains("opencode"), "{stdout}");
    assert!(!stdout.contains("tunnel-") && !stdout.contains("proxy-"));

    let out = run_bin(home.path(), &["list", "--json"]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("tunnel-") && !text.contains("proxy-"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["sandboxId"], "0f6c1f0e-8a43-4c36-9d3e-6a1f0c7e2b11");
    assert_eq!(arr[0]["running"], true);
    assert_eq!(arr[0]["pid"], me);
    assert_eq!(arr[1]["running"], false);
    assert!(arr[1]["pid"].is_null());
    assert_eq!(arr[1]["type"], "opencode");
}

fn entry(dir: &str, ws: &str, name: &str) -> RegistryEntry {
    RegistryEntry {
        dir: dir.into(),
        server: "https://agent.example".into(),
        sandbox_id: format!("sb-{name}"),
        tunnel_token: Secret::new("t"),
        workspace_id: ws.into(),
        name: name.into(),
        entry_type: "claudecode".into(),
        opencode_port: None,
    }
}

fn names(file: &RegistryFile) -> Vec<String> {
    file.load()
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.name)
        .collect()
}

#[tokio::test]
async fn remove_asks_chooses_and_edits_the_registry() {
    let home = tempfile::tempdir().unwrap();
    let file = RegistryFile::new(home.path().join("registry.json"));
    file.update(|r: &mut Registry| {
        r.put(entry("/a", "ws1", "a-one"));
        r.put(entry("/a", "ws2", "a-two"));
        r.put(entry("/b", "ws1", "b"));
    })
    .unwrap();

    // Unknown dir.
    let out = run_bin(home.path(), &["remove", "--dir", "/nope", "-y"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No agent registered for directory /nope."),
        "{}",
        describe(&out)
    );

    // Several entries for /a: --workspace is required.
    let out = run_bin(home.path(), &["remove", "--dir", "/a", "-y"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Use --workspace"), "{}", describe(&out));
    assert!(stderr.contains("ws1") && stderr.contains("ws2"));

    // The prompt; "n" keeps the entry.
    let args = ["remove", "--dir", "/a", "--workspace", "ws2"];
    let out = run_bin_with_stdin(home.path(), &args, Some("n\n")).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Remove agent \"a-two\" for directory /a? [y/N] Cancelled.\n"
    );
    assert_eq!(names(&file), ["a-one", "a-two", "b"]);
    // No answer (EOF) is "no" too.
    let out = run_bin_with_stdin(home.path(), &args, None).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(names(&file), ["a-one", "a-two", "b"]);

    // "y" removes it.
    let out = run_bin_with_stdin(home.path(), &args, Some("y\n")).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Removed agent \"a-two\""));
    assert_eq!(names(&file), ["a-one", "b"]);

    // -y, and now /a is unambiguous.
    let out = run_bin(home.path(), &["remove", "--dir", "/a", "-y"]).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(names(&file), ["b"]);
}

#[tokio::test]
async fn remove_waits_for_the_registry_lock() {
    let home = tempfile::tempdir().unwrap();
    let file = RegistryFile::new(home.path().join("registry.json"));
    file.update(|r: &mut Registry| r.put(entry("/b", "ws1", "b")))
        .unwrap();
    let lock = LockFile::acquire(&file.lock_path()).unwrap();
    let home_path = home.path().to_path_buf();
    let remove =
        tokio::spawn(async move { run_bin(&home_path, &["remove", "--dir", "/b", "-y"]).await });
    // While we hold the lock the entry must stay.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!remove.is_finished(), "remove did not wait for the lock");
    assert_eq!(names(&file), ["b"]);
    drop(lock);
    let out = tokio::time::timeout(TIMEOUT, remove)
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(names(&file).is_empty());
}
