//! The legacy registry under concurrent writers: 20 processes doing read-modify-write under
//! the `registry.json.lock` flock leave a valid file with all 20 entries (spec §4.1).
//!
//! The writers are this test binary itself, re-executed to run the ignored test
//! `registry_writer_child` with the registry path and an index in the environment.

use std::process::{Command, Stdio};
use std::time::Duration;

use agentserver::secret::Secret;
use agentserver::state::{RegistryEntry, RegistryFile};

const CHILD_PATH_ENV: &str = "AGENTSERVER_TEST_REGISTRY_PATH";
const CHILD_INDEX_ENV: &str = "AGENTSERVER_TEST_REGISTRY_INDEX";
const WRITERS: usize = 20;

#[test]
fn twenty_processes_keep_all_twenty_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("registry.json");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..WRITERS)
        .map(|i| {
            Command::new(&exe)
                .args([
                    crate::test_name(module_path!(), "registry_writer_child").as_str(),
                    "--exact",
                    "--ignored",
                    "--nocapture",
                ])
                .env(CHILD_PATH_ENV, &path)
                .env(CHILD_INDEX_ENV, i.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "writer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let registry = RegistryFile::new(&path).load().expect("valid JSON");
    assert_eq!(registry.entries.len(), WRITERS);
    let mut dirs: Vec<_> = registry.entries.iter().map(|e| e.dir.clone()).collect();
    dirs.sort();
    dirs.dedup();
    assert_eq!(dirs.len(), WRITERS, "every writer's entry is there once");
    // Every writer got its own port: allocation happened under the lock.
    let mut ports: Vec<_> = registry.entries.iter().map(|e| e.opencode_port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), WRITERS);
}

/// One writer process: load under the lock, wait a little (to make lost updates certain if
/// the lock did not work), add an entry with the next free port, save.
#[test]
#[ignore = "child process of twenty_processes_keep_all_twenty_entries"]
fn registry_writer_child() {
    let path = std::env::var_os(CHILD_PATH_ENV).expect("run by the parent test only");
    let index: usize = std::env::var(CHILD_INDEX_ENV).unwrap().parse().unwrap();
    RegistryFile::new(path)
        .update(|registry| {
            let port = registry.next_opencode_port();
            std::thread::sleep(Duration::from_millis(10));
            registry.put(RegistryEntry {
                dir: format!("/work/dir-{index:02}"),
                server: "https://agent.example".into(),
                sandbox_id: format!("sandbox-{index}"),
                tunnel_token: Secret::new(format!("token-{index}")),
                workspace_id: "ws".into(),
                name: format!("agent {index}"),
                entry_type: "opencode".into(),
                opencode_port: Some(port),
            });
        })
        .unwrap();
}
