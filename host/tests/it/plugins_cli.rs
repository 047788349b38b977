//! `agentserver plugins install | list | inspect`, run as a real process with its own state
//! directory (`AGENTSERVER_HOME`).

use crate::support::plugins as plugins_support;

use std::path::Path;
use std::process::{Command, Output};

use agentserver::plugins::wasm::bundled;
use plugins_support::*;

fn agentserver(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args(args)
        .env("AGENTSERVER_HOME", home)
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .env("HOME", home)
        .env_remove("RUST_LOG")
        .output()
        .expect("run agentserver")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn install_list_and_inspect_a_wasm_plugin() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("wasm-example.wasm"),
        bundled::component_bytes().unwrap(),
    )
    .unwrap();
    std::fs::write(src.join("plugin.toml"), bundled::MANIFEST).unwrap();

    let out = agentserver(&home, &["plugins", "list"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("No plugins"), "{}", stdout(&out));

    let out = agentserver(&home, &["plugins", "install", src.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("Installed wasm-example 0.1.0 (wasm)")
            && stdout(&out).contains("compiled and cached in"),
        "{}",
        stdout(&out)
    );
    assert!(
        home.join("plugins/wasm-example/wasm-example.wasm")
            .is_file()
    );

    let out = agentserver(&home, &["plugins", "list"]);
    let text = stdout(&out);
    assert!(
        text.contains("NAME") && text.contains("wasm-example"),
        "{text}"
    );
    assert!(text.contains("wasm") && text.contains("1.0.0"), "{text}");

    let out = agentserver(&home, &["plugins", "inspect", "wasm-example"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("api_version:  1.0.0 (read from the plugin)"),
        "{text}"
    );
    // `plugins install` compiled it into the cache already (issue 20), so no task waits.
    assert!(
        text.contains("load time:") && text.contains("(compiled code from the cache)"),
        "{text}"
    );
    assert!(
        text.contains("permissions requested: workdir=false"),
        "{text}"
    );
    assert!(text.contains("describe:     wasm-example 0.1.0"), "{text}");
    // The second inspect reads the compiled component from the cache.
    let out = agentserver(&home, &["plugins", "inspect", "wasm-example"]);
    assert!(
        stdout(&out).contains("(compiled code from the cache)"),
        "{}",
        stdout(&out)
    );

    let out = agentserver(&home, &["plugins", "inspect", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no plugin named `nope`"));
}

#[test]
fn inspecting_a_native_plugin_needs_permission() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let lib = build_c_plugin(tmp.path(), "libecho_c.so", &[]);
    let dirs = tmp.path().join("plugins");
    write_plugin(&dirs, "native-c-example", "native", &lib, "1.0.0", "");
    let dir = dirs.join("native-c-example");

    let out = agentserver(&home, &["plugins", "install", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("--allow-native native-c-example"),
        "{}",
        stdout(&out)
    );

    let out = agentserver(&home, &["plugins", "inspect", "native-c-example"]);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("allowed: no") && text.contains("not allowed"),
        "{text}"
    );

    let out = agentserver(
        &home,
        &[
            "plugins",
            "--allow-native",
            "native-c-example",
            "inspect",
            "native-c-example",
        ],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("describe:     native-c-example 0.1.0"),
        "{text}"
    );
}
