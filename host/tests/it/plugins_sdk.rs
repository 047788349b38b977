//! The Rust SDK as a plugin author meets it: `backends/examples/native-rust` copied out of the
//! workspace builds on its own with the commands `docs/plugins.md` gives (the SDK comes from
//! this checkout through a `[patch]`, offline), pulls in no async runtime, and the library it
//! builds runs a task in the host.

use std::path::{Path, PathBuf};
use std::process::Command;

use agentserver::plugins;
use agentserver_plugin_api::{CancellationToken, TaskStatus};

use crate::support::plugins::{options, run, task, workspace_root, write_plugin};

/// Copies the files of `from` (recursively, skipping `target/`) into `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_name() == "target" {
            continue;
        }
        if path.is_dir() {
            copy_tree(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

/// `cargo` as a plugin author runs it in `dir`: no workspace wrappers, the SDK patched to this
/// checkout's `plugin-sdk`, offline, and a target folder shared between test runs so the
/// dependencies are built once.
pub fn author_cargo(dir: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(dir)
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .env("CARGO_TARGET_DIR", target_dir)
        .arg("--config")
        .arg(format!(
            "patch.crates-io.agentserver-plugin-sdk.path={:?}",
            workspace_root().join("plugin-sdk").display().to_string()
        ));
    cmd
}

/// Where standalone plugin builds keep their target folder (inside the workspace's `target/`,
/// so it survives between runs and is ignored by git).
pub fn standalone_target() -> PathBuf {
    workspace_root().join("target").join("standalone-plugins")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_example_builds_when_copied_out_alone_and_runs_a_task() {
    let tmp = tempfile::tempdir().unwrap();
    let crate_dir = tmp.path().join("my-plugin");
    copy_tree(
        &workspace_root().join("backends/examples/native-rust"),
        &crate_dir,
    );
    let target = standalone_target();

    // No async runtime in the dependency tree of a plugin.
    let tree = author_cargo(&crate_dir, &target)
        .args(["tree", "--offline", "--edges", "normal", "--prefix", "none"])
        .output()
        .expect("run cargo tree");
    let tree_text = String::from_utf8_lossy(&tree.stdout);
    assert!(
        tree.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&tree.stderr)
    );
    assert!(
        tree_text.contains("agentserver-plugin-sdk v1."),
        "{tree_text}"
    );
    for heavy in ["tokio", "futures", "async-trait"] {
        assert!(
            !tree_text.lines().any(|l| l.starts_with(&format!("{heavy} "))
                || l.starts_with(&format!("{heavy}-"))),
            "{heavy} in the plugin's dependencies:\n{tree_text}"
        );
    }

    // The guide's build command.
    let build = author_cargo(&crate_dir, &target)
        .args(["build", "--release", "--offline"])
        .output()
        .expect("run cargo build");
    assert!(
        build.status.success(),
        "cargo build of the copied example failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let library = target.join("release").join(format!(
        "{}agentserver_example_native_rust{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(library.is_file(), "{} was not built", library.display());

    let root = tmp.path().join("plugins");
    write_plugin(&root, "copied-rust", "native", &library, "1.0.0", "");
    let mut opts = options(&tmp.path().join("state"), &root);
    opts.allow_native = vec!["copied-rust".into()];
    let backend = plugins::load_backend("copied-rust", &opts).expect("the copy loads");
    let (outcome, events) = run(
        &backend,
        task("hello copied world", tmp.path()),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
    assert_eq!(outcome.result.as_deref(), Some("world copied hello"));
    assert!(events.iter().any(|e| e["type"] == "echo"), "{events:?}");
}
