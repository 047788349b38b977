//! The plugin author's kit (issue 20), as an author meets it: `dev-server`'s task events and
//! cancel endpoints, `plugins run`, `plugins new` projects built by their guide's own build
//! block and run through the mock, `plugins install` checks, `--force`, `remove`, readable
//! failures, the versioning policy, and a crashing in-process plugin's task reported `failed`
//! once after the restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use agentserver_mock::{MockConfig, MockServer, MockState};

use crate::support::plugins::{build_misbehaving_plugin, workspace_root, write_plugin};
use crate::support::run::{expect_exit, registered_sandbox, sigterm, wait_task_started};

const BIN: &str = env!("CARGO_BIN_EXE_agentserver");

/// `PATH` with the `agentserver` under test first (the guides' scripts call `agentserver`).
fn path_with_agentserver() -> String {
    let bin_dir = Path::new(BIN).parent().unwrap().display().to_string();
    format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default())
}

/// `agentserver ARGS` in `cwd` with state in `home`.
fn agentserver(home: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("AGENTSERVER_HOME", home)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run agentserver")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The ```sh block of `docs/guides/<guide>.md` that holds `# guide: <guide> build`.
fn guide_build_block(guide: &str) -> String {
    let doc =
        std::fs::read_to_string(workspace_root().join(format!("docs/guides/{guide}.md"))).unwrap();
    let marker = format!("# guide: {guide} build");
    doc.split("```sh\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("```").map(|(block, _)| block))
        .find(|block| block.contains(&marker))
        .unwrap_or_else(|| panic!("docs/guides/{guide}.md has no ```sh block with `{marker}`"))
        .to_owned()
}

/// `plugins new NAME --lang LANG` in `root`, then the guide's build block run in the project
/// (and checked to be the project's `build.sh`), then the project's own test (`test.sh`).
/// Returns the project folder.
fn scaffold_build_and_test(
    lang: &str,
    guide: &str,
    name: &str,
    root: &Path,
    home: &Path,
    env: &[(&str, String)],
) -> PathBuf {
    let dir = root.join(name);
    let out = agentserver(home, root, &["plugins", "new", name, "--lang", lang]);
    assert!(out.status.success(), "plugins new: {}", text(&out));
    let block = guide_build_block(guide);
    let build_sh = std::fs::read_to_string(dir.join("build.sh")).unwrap();
    assert_eq!(
        build_sh.strip_prefix("#!/bin/sh\n"),
        Some(block.as_str()),
        "the project's build.sh is the guide's build block"
    );
    let mut build = Command::new("sh");
    build.arg("-c").arg(&block).current_dir(&dir);
    for (k, v) in env {
        build.env(k, v);
    }
    let out = build.output().expect("run the guide's build block");
    assert!(
        out.status.success(),
        "the {guide} build failed: {}",
        text(&out)
    );
    let mut test = Command::new("sh");
    test.arg("test.sh")
        .current_dir(&dir)
        .env("PATH", path_with_agentserver())
        .env("AGENTSERVER_HOME", home)
        .env("RUST_LOG", "warn");
    let out = test.output().expect("run test.sh");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("test passed"),
        "the project's test failed: {}",
        text(&out)
    );
    dir
}

/// Starts `agentserver run --backend NAME` against `url` with state in `home`.
fn start_host(home: &Path, cwd: &Path, name: &str, url: &str, extra: &[&str]) -> Child {
    Command::new(BIN)
        .args(["run", "--backend", name, "--allow-native", name])
        .args(["--skip-open-browser", "--poll-interval", "0.2"])
        .args(extra)
        .arg("--server")
        .arg(url)
        .current_dir(cwd)
        .env("AGENTSERVER_HOME", home)
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start agentserver run")
}

/// Installs the project in `dir` and runs one task through the mock: completed, with the
/// assistant event the templates emit.
async fn one_task_through_the_mock(name: &str, dir: &Path, home: &Path) {
    let out = agentserver(
        home,
        dir,
        &["plugins", "install", ".", "--allow-native", name],
    );
    assert!(out.status.success(), "install: {}", text(&out));
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let mut child = start_host(home, dir, name, &server.url(), &[]);
    let sandbox = registered_sandbox(&mock).await;
    let task = mock.create_task(&sandbox.id, "hi");
    let record = mock
        .wait_task_final(&task, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(record.status, "completed", "{:?}", record.status_updates);
    assert_eq!(record.result, Some(serde_json::json!("You said: hi")));
    let events = mock.bridge_worker_events(record.session_id.as_deref().unwrap());
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "assistant"
                && e["message"]["content"][0]["text"] == "You said: hi"),
        "{events:?}"
    );
    sigterm(child.id());
    expect_exit(&mut child, Duration::from_secs(30), "after SIGTERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_c_guide_builds_tests_and_serves_a_task() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let dir = scaffold_build_and_test("c", "c-native", "hello-c", tmp.path(), &home, &[]);
    one_task_through_the_mock("hello-c", &dir, &home).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_guide_builds_tests_and_serves_a_task() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    // What a plugin author's registry would give: the SDK from this checkout, offline.
    std::fs::create_dir_all(tmp.path().join(".cargo")).unwrap();
    std::fs::write(
        tmp.path().join(".cargo/config.toml"),
        format!(
            "[patch.crates-io]\nagentserver-plugin-sdk = {{ path = {:?} }}\n[net]\noffline = true\n",
            workspace_root().join("plugin-sdk").display().to_string()
        ),
    )
    .unwrap();
    let target = crate::plugins_sdk::standalone_target();
    let env = [("CARGO_TARGET_DIR", target.display().to_string())];
    let dir = scaffold_build_and_test("rust", "rust-native", "hello-rust", tmp.path(), &home, &env);
    // The template's own unit test.
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--release", "--quiet"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo test: {}", text(&out));
    one_task_through_the_mock("hello-rust", &dir, &home).await;
}

/// componentize-py is installed by `scripts/install-test-deps.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_guide_builds_tests_and_serves_a_task_and_a_traceback_is_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let dir = scaffold_build_and_test("python", "python-wasm", "hello-py", tmp.path(), &home, &[]);
    // A Python exception: its traceback is in the failure reason, not a bare `unreachable`.
    let out = agentserver(
        &home,
        &dir,
        &[
            "plugins",
            "run",
            "hello-py",
            "--plugin-dir",
            ".",
            "--prompt",
            "crash",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("RuntimeError: asked to crash") && stdout.contains("Traceback"),
        "{}",
        text(&out)
    );
    assert!(!stdout.contains("wasm backtrace"), "{}", text(&out));
    // Its stderr went to the host log, prefixed with the plugin's name.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[hello-py stderr] RuntimeError"),
        "{}",
        text(&out)
    );
    // The compiled component is cached since `test.sh`: the install and the task reuse it.
    one_task_through_the_mock("hello-py", &dir, &home).await;
}

/// componentize-js is installed into `.npm-clis` by `scripts/install-test-deps.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_guide_builds_tests_and_serves_a_task_and_a_thrown_error_is_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let npm_bin = workspace_root().join(".npm-clis/node_modules/.bin");
    let path = format!("{}:{}", npm_bin.display(), path_with_agentserver());
    let dir = scaffold_build_and_test(
        "js",
        "js-wasm",
        "hello-js",
        tmp.path(),
        &home,
        &[("PATH", path)],
    );
    let out = agentserver(
        &home,
        &dir,
        &[
            "plugins",
            "run",
            "hello-js",
            "--plugin-dir",
            ".",
            "--prompt",
            "crash",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("asked to crash") && stdout.contains("execute@plugin.js"),
        "{}",
        text(&out)
    );
    one_task_through_the_mock("hello-js", &dir, &home).await;
}

/// The real `dev-server` process: a task's events at `/_mock/tasks/{id}/events`, INFO lines of
/// each event and the final status, and `POST /_mock/tasks/{id}/cancel` cancelling a task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_server_shows_a_tasks_events_and_cancels_it() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let project = tmp.path().join("hello-c");
    let out = agentserver(
        &home,
        tmp.path(),
        &["plugins", "new", "hello-c", "--lang", "c"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = Command::new("sh")
        .arg("build.sh")
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let mut server = tokio::process::Command::new(BIN)
        .args(["dev-server", "--listen", "127.0.0.1:0"])
        .env("AGENTSERVER_HOME", tmp.path().join("server-home"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(15), stdout.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let url = first
        .strip_prefix("agentserver dev-server listening on ")
        .expect(&first)
        .to_owned();
    let mut banner = String::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(2), stdout.next_line()).await
    {
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Ctrl-C") {
            break;
        }
    }
    assert!(banner.contains("/_mock/tasks/{id}/events"), "{banner}");
    assert!(banner.contains("/_mock/tasks/{id}/cancel"), "{banner}");
    let (log_tx, mut log_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut stderr = BufReader::new(server.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            let _ = log_tx.send(line);
        }
    });

    let mut host = start_host(&home, &project, "hello-c", &url, &["--plugin-dir", "."]);
    let http = reqwest::Client::new();
    let sandbox = loop {
        let list: serde_json::Value = http
            .get(format!("{url}/_mock/sandboxes"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(id) = list[0]["sandbox_id"].as_str() {
            break id.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let create = |prompt: &'static str| {
        let http = http.clone();
        let url = url.clone();
        let sandbox = sandbox.clone();
        async move {
            let task: serde_json::Value = http
                .post(format!("{url}/_mock/tasks"))
                .json(&serde_json::json!({"target_id": sandbox, "prompt": prompt}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            task["task_id"].as_str().unwrap().to_owned()
        }
    };
    let wait_final = |id: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            for _ in 0..300 {
                let task: serde_json::Value = http
                    .get(format!("{url}/_mock/tasks/{id}"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if matches!(
                    task["status"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                ) {
                    return task;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("task {id} did not end");
        }
    };

    let task = create("hello").await;
    let done = wait_final(task.clone()).await;
    assert_eq!(done["status"], "completed", "{done}");
    let events: serde_json::Value = http
        .get(format!("{url}/_mock/tasks/{task}/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        events["events"][0]["message"]["content"][0]["text"], "You said: hello",
        "{events}"
    );
    // The INFO lines: the event and the final status.
    let mut saw_event = false;
    let mut saw_status = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(saw_event && saw_status) {
        let line = tokio::time::timeout_at(deadline, log_rx.recv())
            .await
            .expect("the INFO lines")
            .unwrap();
        if line.contains("INFO") && line.contains(&task) {
            saw_event |= line.contains("event {") && line.contains("You said: hello");
            saw_status |= line.contains("status completed");
        }
    }

    // Cancel through the control API.
    let waiting = create("wait").await;
    for _ in 0..100 {
        let t: serde_json::Value = http
            .get(format!("{url}/_mock/tasks/{waiting}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if t["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cancel = http
        .post(format!("{url}/_mock/tasks/{waiting}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 202);
    let done = wait_final(waiting.clone()).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("cancelled")),
        "{done}"
    );
    // A finished task cannot be cancelled.
    let again = http
        .post(format!("{url}/_mock/tasks/{waiting}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    sigterm(host.id());
    expect_exit(&mut host, Duration::from_secs(30), "host after SIGTERM").await;
}

/// `plugins run` with `--cancel-after`, and its exit statuses.
#[test]
fn plugins_run_prints_events_and_exits_by_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let root = tmp.path().join("plugins");
    let lib = crate::support::plugins::build_c_plugin(tmp.path(), "libecho.so", &[]);
    write_plugin(&root, "echo-c", "native", &lib, "1.0.0", "");
    let root_arg = root.to_str().unwrap();
    let run = |prompt: &str, extra: &[&str]| {
        let mut args = vec![
            "plugins",
            "run",
            "echo-c",
            "--plugin-dir",
            root_arg,
            "--allow-native",
            "echo-c",
            "--prompt",
            prompt,
        ];
        args.extend_from_slice(extra);
        agentserver(&home, tmp.path(), &args)
    };
    let out = run("hello", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            r#"event {"type":"started","language":"c"}"#,
            r#"event {"type":"char_count","count":5}"#,
            r#"outcome {"status":"completed","result":"C saw 5 bytes","num_turns":1}"#,
        ],
        "{}",
        text(&out)
    );
    let out = run("fail", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let started = std::time::Instant::now();
    let out = run("wait-for-cancel", &["--cancel-after", "0.5"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#"event {"type":"waiting"}"#));
    // Not allowed: the load error, exit 3.
    let out = agentserver(
        &home,
        tmp.path(),
        &[
            "plugins",
            "run",
            "echo-c",
            "--plugin-dir",
            root_arg,
            "--prompt",
            "x",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-native echo-c"),
        "{}",
        text(&out)
    );
}

/// `plugins install` checks before copying, refuses to overwrite without `--force`, and
/// `plugins remove` removes; options are accepted after the subcommand.
#[test]
fn install_checks_refuses_overwrites_and_remove_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let src = tmp.path().join("src");
    let lib = crate::support::plugins::build_c_plugin(tmp.path(), "libok.so", &[]);
    write_plugin(&src, "ok-c", "native", &lib, "1.0.0", "");
    let src_dir = src.join("ok-c");
    let src_arg = src_dir.to_str().unwrap();
    let out = agentserver(&home, tmp.path(), &["plugins", "install", src_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Checked: API 1.0.0"));
    let out = agentserver(&home, tmp.path(), &["plugins", "install", src_arg]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already installed")
            && text(&out).contains("--force"),
        "{}",
        text(&out)
    );
    let out = agentserver(
        &home,
        tmp.path(),
        &["plugins", "install", src_arg, "--force"],
    );
    assert!(out.status.success(), "{}", text(&out));
    // An option after the subcommand and its argument.
    let out = agentserver(
        &home,
        tmp.path(),
        &["plugins", "inspect", "ok-c", "--allow-native", "ok-c"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("allowed: yes"));
    let out = agentserver(&home, tmp.path(), &["plugins", "remove", "ok-c"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!home.join("plugins/ok-c").exists());
    let out = agentserver(&home, tmp.path(), &["plugins", "remove", "ok-c"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no plugin named `ok-c` is installed"));

    // Bad ABI: refused at install, naming the C ABI versions; nothing copied.
    let bad = crate::support::plugins::build_c_plugin(
        tmp.path(),
        "libbadabi.so",
        &["EXAMPLE_ABI_VERSION=99"],
    );
    write_plugin(&src, "bad-abi", "native", &bad, "1.0.0", "");
    let out = agentserver(
        &home,
        tmp.path(),
        &["plugins", "install", src.join("bad-abi").to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("C ABI version 99"), "{}", text(&out));
    assert!(!home.join("plugins/bad-abi").exists());

    // A newer API minor (1.7.0 on a 1.0.0 host): refused per the versioning policy.
    let newer = crate::support::plugins::build_c_plugin(
        tmp.path(),
        "libnewer.so",
        &["EXAMPLE_API_VERSION=\"1.7.0\""],
    );
    write_plugin(&src, "newer", "native", &newer, "1.0.0", "");
    let out = agentserver(
        &home,
        tmp.path(),
        &["plugins", "install", src.join("newer").to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("1.7.0") && text(&out).contains("newer than this host's"),
        "{}",
        text(&out)
    );

    // A garbage .wasm: one line.
    let garbage = tmp.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm at all").unwrap();
    write_plugin(&src, "garbage", "wasm", &garbage, "1.0.0", "");
    let out = agentserver(
        &home,
        tmp.path(),
        &["plugins", "install", src.join("garbage").to_str().unwrap()],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("not a valid WebAssembly binary"),
        "{stderr}"
    );
}

/// A component that imports what the host does not provide is refused at install, and the
/// error says what the host links and how to build for it.
#[test]
fn install_refuses_a_component_that_imports_what_the_host_lacks() {
    use agentserver::plugins::wasm::componentize::{WitSource, component_from_wat};
    let extra = r#"package test:extra;
interface missing { nothing: func(); }
world with-missing {
    include agentserver:backend/backend@1.0.0;
    import missing;
}"#;
    let wat = format!(
        r#"(module
          (import "test:extra/missing" "nothing" (func))
          {}
        )"#,
        "(memory (export \"memory\") 1)
          (func (export \"cabi_realloc\") (param i32 i32 i32 i32) (result i32) (i32.const 4096))
          (func (export \"describe\") (result i32) (i32.const 1024))
          (func (export \"execute\") (param i32 i32 i32 i32 i32 i32 i32 f64 i32 i32 i32 i32) (result i32) (i32.const 1088))"
    );
    let bytes = component_from_wat(
        &wat,
        &WitSource {
            extra: Some(extra),
            world: "with-missing",
            ..WitSource::default()
        },
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("missing.wasm");
    std::fs::write(&file, bytes).unwrap();
    let src = tmp.path().join("src");
    write_plugin(&src, "missing", "wasm", &file, "1.0.0", "");
    let out = agentserver(
        &tmp.path().join("home"),
        tmp.path(),
        &["plugins", "install", src.join("missing").to_str().unwrap()],
    );
    assert!(!out.status.success());
    let all = text(&out);
    assert!(all.contains("test:extra/missing"), "{all}");
    assert!(all.contains("not wasi:http"), "{all}");
    assert!(all.contains("--disable http fetch-event"), "{all}");
}

/// A segfaulting in-process native plugin ends the host with SIGSEGV and leaves the task
/// `assigned`/`running`; the next start reports that task `failed`, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segfaulting_native_plugin_kills_the_host_and_the_restart_reports_the_task_once() {
    use std::os::unix::process::ExitStatusExt;
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock: std::sync::Arc<MockState> = server.state();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("state");
    let root = tmp.path().join("plugins");
    let lib = build_misbehaving_plugin(tmp.path(), "libcrashy.so");
    write_plugin(&root, "crashy", "native", &lib, "1.0.0", "");
    let root_arg = root.to_str().unwrap().to_owned();
    let mut child = start_host(
        &home,
        tmp.path(),
        "crashy",
        &server.url(),
        &["--plugin-dir", &root_arg],
    );
    let sandbox = registered_sandbox(&mock).await;
    let task = mock.create_task(&sandbox.id, "segfault");
    let status = expect_exit(&mut child, Duration::from_secs(30), "after the segfault").await;
    assert_eq!(status.signal(), Some(libc::SIGSEGV), "{status:?}");
    let record = mock.task(&task).unwrap();
    assert!(
        matches!(record.status.as_str(), "assigned" | "running"),
        "{}",
        record.status
    );
    assert!(record.final_updates().is_empty());

    // The restart: the same sandbox, the task reported failed once.
    let mut child = start_host(
        &home,
        tmp.path(),
        "crashy",
        &server.url(),
        &["--plugin-dir", &root_arg, "--continue"],
    );
    let record = mock
        .wait_task_final(&task, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(record.status, "failed", "{:?}", record.status_updates);
    assert!(
        record
            .failure_reason
            .as_deref()
            .is_some_and(|r| r.contains("the host stopped while the task was running")),
        "{:?}",
        record.failure_reason
    );
    // Still exactly one final report a moment later (no duplicate from a second recovery).
    let other = mock.create_task(&sandbox.id, "fine");
    wait_task_started(&mock, &other).await;
    mock.wait_task_final(&other, Duration::from_secs(30)).await;
    assert_eq!(mock.task(&task).unwrap().final_updates().len(), 1);
    sigterm(child.id());
    expect_exit(&mut child, Duration::from_secs(30), "after SIGTERM").await;
}

/// `emit_event` answers -1 for text that is not JSON and 1 for an event, in process and out of
/// process; the plugin goes on after an invalid one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_event_tells_invalid_json_from_an_accepted_event() {
    use agentserver_plugin_api::{CancellationToken, TaskStatus};
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("codes.c");
    std::fs::write(
        &source,
        r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "agentserver_plugin.h"
static char *dup(const char *s) { char *o = malloc(strlen(s) + 1); strcpy(o, s); return o; }
static char *describe(void) { return dup("{\"name\":\"codes\",\"version\":\"0.1.0\"}"); }
static char *execute(const char *t, size_t n, const AgentserverHost *h) {
    (void)t; (void)n;
    int bad = h->emit_event(h->ctx, "{not json", 9);
    int good = h->emit_event(h->ctx, "{\"type\":\"ok\"}", 13);
    char out[128];
    snprintf(out, sizeof out, "{\"status\":\"completed\",\"result\":\"%d %d\"}", bad, good);
    return dup(out);
}
static void free_string(char *s) { free(s); }
static const AgentserverPluginVTable V = {AGENTSERVER_PLUGIN_ABI_VERSION,
    sizeof(AgentserverPluginVTable), AGENTSERVER_PLUGIN_API_VERSION, describe, execute, free_string};
const AgentserverPluginVTable *agentserver_plugin_entry(void) { return &V; }
"#,
    )
    .unwrap();
    let lib = tmp.path().join("libcodes.so");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-Wall", "-Werror", "-I"])
        .arg(workspace_root().join("plugin-api/include"))
        .arg(&source)
        .arg("-o")
        .arg(&lib)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let root = tmp.path().join("plugins");
    for (name, extra) in [("codes-in", ""), ("codes-out", "isolation = \"process\"\n")] {
        write_plugin(&root, name, "native", &lib, "1.0.0", extra);
        let mut opts = crate::support::plugins::options(&tmp.path().join("state"), &root);
        opts.allow_native = vec![name.into()];
        opts.plugin_host = Some(PathBuf::from(BIN));
        let backend = agentserver::plugins::load_backend(name, &opts).unwrap();
        let (outcome, events) = crate::support::plugins::run(
            &backend,
            crate::support::plugins::task("x", tmp.path()),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(outcome.status, TaskStatus::Completed, "{name}: {outcome:?}");
        assert_eq!(outcome.result.as_deref(), Some("-1 1"), "{name}");
        assert_eq!(events, [serde_json::json!({"type": "ok"})], "{name}");
    }
}

/// A permission the manifest asks for that the user did not grant is warned about at load,
/// saying what to add.
#[test]
fn ungranted_permissions_are_warned_about_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let file = tmp.path().join("example.wasm");
    std::fs::write(
        &file,
        agentserver::plugins::wasm::bundled::component_bytes().unwrap(),
    )
    .unwrap();
    let root = tmp.path().join("plugins");
    write_plugin(
        &root,
        "asks",
        "wasm",
        &file,
        "1.0.0",
        "[permissions]\nenv = [\"LANG\"]\nhttp = [\"api.example.com\"]\n",
    );
    let out = agentserver(
        &home,
        tmp.path(),
        &[
            "plugins",
            "inspect",
            "asks",
            "--plugin-dir",
            root.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("environment variables [\"LANG\"] that are not granted")
            && stderr.contains("[plugins.grants.asks]"),
        "{}",
        text(&out)
    );
    assert!(
        stderr.contains("HTTP to [\"api.example.com\"] that is not granted"),
        "{}",
        text(&out)
    );
}
