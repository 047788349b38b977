//! Shared helpers for the plugin tests: building the examples, writing plugin folders,
//! running tasks and collecting their events.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use agentserver::plugins::PluginOptions;
use agentserver_plugin_api::{Backend, CancellationToken, EventSink, Task, TaskOutcome};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host has a parent")
        .to_owned()
}

/// `target/<profile>` of the running test binary (`target/<profile>/deps/<test>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_owned()
}

/// The native Rust example's shared library. It is a dev-dependency of the host, so cargo
/// builds its cdylib before the tests run; the newest copy under the profile dir wins.
pub fn native_rust_example() -> PathBuf {
    let file_name = format!(
        "{}agentserver_example_native_rust{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let profile = profile_dir();
    let mut candidates: Vec<PathBuf> = vec![profile.join(&file_name)];
    if let Ok(entries) = std::fs::read_dir(profile.join("deps")) {
        let stem = format!(
            "{}agentserver_example_native_rust",
            std::env::consts::DLL_PREFIX
        );
        candidates.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().is_some_and(|n| {
                        let n = n.to_string_lossy();
                        n.starts_with(&stem) && n.ends_with(std::env::consts::DLL_SUFFIX)
                    })
                }),
        );
    }
    candidates
        .into_iter()
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("{file_name} not built under {}", profile.display()))
}

/// Compiles `backends/examples/native-c/echo_plugin.c` with the system C compiler into
/// `out_dir/<name>`, with extra `-D` defines.
pub fn build_c_plugin(out_dir: &Path, name: &str, defines: &[&str]) -> PathBuf {
    build_c_source(
        out_dir,
        name,
        "backends/examples/native-c/echo_plugin.c",
        defines,
    )
}

/// Compiles `host/tests/fixtures/plugins/misbehaving_plugin.c` (floods, huge results, crashes
/// on request; see the file) into `out_dir/<name>`.
pub fn build_misbehaving_plugin(out_dir: &Path, name: &str) -> PathBuf {
    build_c_source(
        out_dir,
        name,
        "host/tests/fixtures/plugins/misbehaving_plugin.c",
        &[],
    )
}

/// Compiles the C file `source` (relative to the workspace root) into the shared library
/// `out_dir/<name>` with the system C compiler and extra `-D` defines.
pub fn build_c_source(out_dir: &Path, name: &str, source: &str, defines: &[&str]) -> PathBuf {
    let root = workspace_root();
    let out = out_dir.join(name);
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cmd.args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-I"])
        .arg(root.join("plugin-api/include"))
        .arg(root.join(source))
        .arg("-o")
        .arg(&out);
    for define in defines {
        cmd.arg(format!("-D{define}"));
    }
    let output = cmd.output().expect("run the C compiler (cc)");
    assert!(
        output.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// Writes `<root>/<name>/plugin.toml` (with `extra` appended) and copies `file` next to it.
pub fn write_plugin(
    root: &Path,
    name: &str,
    kind: &str,
    file: &Path,
    api: &str,
    extra: &str,
) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::copy(file, dir.join(&file_name)).unwrap();
    std::fs::write(
        dir.join("plugin.toml"),
        format!(
            "name = \"{name}\"\nversion = \"0.1.0\"\nkind = \"{kind}\"\nfile = \"{file_name}\"\n\
             api_version = \"{api}\"\n{extra}"
        ),
    )
    .unwrap();
    dir
}

/// Options rooted in a temporary state dir, searching `plugin_root`.
pub fn options(state: &Path, plugin_root: &Path) -> PluginOptions {
    let mut options = PluginOptions::with_state_dir(state.to_owned());
    options.plugin_dirs = vec![plugin_root.to_owned()];
    options.cancel_grace = Duration::from_millis(500);
    options
}

/// A task with this prompt and workdir.
pub fn task(prompt: &str, workdir: &Path) -> Task {
    Task {
        task_id: "task_test".into(),
        prompt: prompt.into(),
        workdir: workdir.display().to_string(),
        ..Task::default()
    }
}

/// Runs one task to its end (60 s at most) and returns the outcome and the events as JSON.
pub async fn run(
    backend: &Arc<dyn Backend>,
    task: Task,
    cancel: CancellationToken,
) -> (TaskOutcome, Vec<serde_json::Value>) {
    let (sink, mut rx) = EventSink::channel(64);
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(serde_json::from_str(event.as_json()).expect("events are JSON"));
        }
        events
    });
    let outcome =
        tokio::time::timeout(Duration::from_secs(60), backend.execute(task, sink, cancel))
            .await
            .expect("task finished within 60 s");
    let events = tokio::time::timeout(Duration::from_secs(10), collector)
        .await
        .expect("event stream closed")
        .unwrap();
    (outcome, events)
}
