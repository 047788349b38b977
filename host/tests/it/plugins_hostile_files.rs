//! Hostile plugin folders (issue 15, items 10, 12 and 13): manifests and modules that are
//! symlinks to `/dev/zero` or out of the folder, FIFOs, and many installs of one plugin at
//! once, with the real binary, real files and real concurrent processes.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use agentserver::plugins::wasm::bundled;
use agentserver::plugins::{self, PluginOptions};

/// Runs `agentserver args` with its own state directory, under a 4 GiB address-space limit
/// (a read of `/dev/zero` then fails fast instead of taking the machine's memory), killed
/// after 20 s. Returns the output and whether it had to be killed.
fn agentserver(home: &Path, args: &[&str]) -> (Output, bool) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentserver"));
    cmd.args(args)
        .env("AGENTSERVER_HOME", home)
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .env("HOME", home)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 4 << 30,
                rlim_max: 4 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn agentserver");
    let started = Instant::now();
    let mut killed = false;
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), killed)
}

/// A source folder holding the bundled WASM example.
fn wasm_source(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("wasm-example.wasm"),
        bundled::component_bytes().unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("plugin.toml"), bundled::MANIFEST).unwrap();
    dir.to_owned()
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// Every file (not folder) under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn install_refuses_dev_zero_and_fifos_as_manifest_or_module() {
    let tmp = tempfile::tempdir().unwrap();
    type Spoil = fn(&Path);
    let cases: [(&str, &str, Spoil); 4] = [
        ("manifest-zero", "plugin.toml", |p| {
            std::os::unix::fs::symlink("/dev/zero", p).unwrap()
        }),
        ("module-zero", "wasm-example.wasm", |p| {
            std::os::unix::fs::symlink("/dev/zero", p).unwrap()
        }),
        ("manifest-fifo", "plugin.toml", mkfifo),
        ("module-fifo", "wasm-example.wasm", mkfifo),
    ];
    for (label, file, spoil) in cases {
        let src = wasm_source(&tmp.path().join(label));
        let target = src.join(file);
        std::fs::remove_file(&target).unwrap();
        spoil(&target);
        let home = tmp.path().join(format!("home-{label}"));
        let (out, killed) = agentserver(&home, &["plugins", "install", src.to_str().unwrap()]);
        assert!(!killed, "{label}: `plugins install` hung");
        assert!(!out.status.success(), "{label}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&*target.to_string_lossy()),
            "{label}: the error does not name {}: {err}",
            target.display()
        );
        assert!(
            !home.join("plugins/wasm-example").exists(),
            "{label}: installed anyway"
        );
    }
}

#[test]
fn discovery_skips_a_fifo_manifest_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins/fifo-plugin");
    std::fs::create_dir_all(&dir).unwrap();
    mkfifo(&dir.join("plugin.toml"));
    wasm_source(&tmp.path().join("plugins/wasm-example"));
    let home = tmp.path().join("home");
    let plugin_dir = tmp.path().join("plugins");
    let (out, killed) = agentserver(
        &home,
        &[
            "plugins",
            "--plugin-dir",
            plugin_dir.to_str().unwrap(),
            "list",
        ],
    );
    assert!(!killed, "`plugins list` hung on a FIFO manifest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("wasm-example"), "{text}");
    assert!(
        text.contains(&*dir.join("plugin.toml").to_string_lossy()) && text.contains("FIFO"),
        "{text}"
    );
}

#[test]
fn install_copies_only_regular_files_inside_the_source_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let options = PluginOptions::with_state_dir(state.clone());
    let secret = std::fs::read("/etc/shadow").unwrap_or_default();
    // A native plugin whose library is a symlink to /etc/shadow, and one whose library is a
    // symlink to a regular file in a sibling folder: both lead out of the source folder.
    let outside = tmp.path().join("outside.so");
    std::fs::write(&outside, b"\x7fELF not really").unwrap();
    for (label, target) in [("shadow", Path::new("/etc/shadow")), ("sibling", &*outside)] {
        let src = tmp.path().join(label);
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(
            src.join("plugin.toml"),
            format!(
                "name = \"native-{label}\"\nversion = \"0.1.0\"\nkind = \"native\"\n\
                 file = \"libplugin.so\"\napi_version = \"1.0.0\"\n"
            ),
        )
        .unwrap();
        std::os::unix::fs::symlink(target, src.join("libplugin.so")).unwrap();
        let err = plugins::install(&src, &options).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("libplugin.so") && msg.contains("outside"),
            "{label}: {msg}"
        );
        assert!(!state.join(format!("plugins/native-{label}")).exists());
    }
    for file in files_under(&state) {
        let data = std::fs::read(&file).unwrap();
        assert!(
            secret.is_empty() || data != secret,
            "{} holds /etc/shadow",
            file.display()
        );
        assert_ne!(data, b"\x7fELF not really", "{}", file.display());
    }

    // A symlink that stays inside the folder is fine; the copy is a private regular file.
    let src = wasm_source(&tmp.path().join("inside"));
    std::fs::create_dir_all(src.join("build")).unwrap();
    std::fs::rename(src.join("wasm-example.wasm"), src.join("build/real.wasm")).unwrap();
    std::os::unix::fs::symlink("build/real.wasm", src.join("wasm-example.wasm")).unwrap();
    let installed = plugins::install(&src, &options).unwrap();
    for file in [installed.file(), installed.dir.join("plugin.toml")] {
        let meta = std::fs::symlink_metadata(&file).unwrap();
        assert!(meta.file_type().is_file(), "{}", file.display());
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            file.display()
        );
    }
    assert_eq!(
        std::fs::read(installed.file()).unwrap(),
        bundled::component_bytes().unwrap()
    );
}

#[test]
fn concurrent_installs_of_one_plugin_all_succeed_and_clean_up() {
    let tmp = tempfile::tempdir().unwrap();
    let src = wasm_source(&tmp.path().join("src"));
    let home = tmp.path().join("home");
    let mut failures = Vec::new();
    for round in 0..3 {
        let children: Vec<_> = (0..20)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_agentserver"))
                    // `--force`: replacing an installed copy is what races here.
                    .args(["plugins", "install", src.to_str().unwrap(), "--force"])
                    .env("AGENTSERVER_HOME", &home)
                    .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
                    .env("HOME", &home)
                    .env_remove("RUST_LOG")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            if !out.status.success() {
                failures.push(format!(
                    "round {round}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 60 failed: {failures:#?}",
        failures.len()
    );
    let mut names: Vec<String> = std::fs::read_dir(home.join("plugins"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".install.lock", "wasm-example"]);
    let found = plugins::discover(&PluginOptions::with_state_dir(home.clone()));
    assert!(found.problems.is_empty(), "{:?}", found.problems);
    assert_eq!(found.plugins.len(), 1);
    assert_eq!(
        std::fs::read(found.plugins[0].file()).unwrap(),
        bundled::component_bytes().unwrap()
    );
}
