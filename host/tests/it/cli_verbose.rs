//! The global `-v` through the real binary, before and after subcommands (it used to be refused
//! before one: "the subcommand 'version' cannot be used with '--verbose...'").

use std::process::{Command, Output};

fn agentserver(args: &[&str], home: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args(args)
        .env("AGENTSERVER_HOME", home)
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn verbose_before_and_after_a_subcommand() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        &["-v", "version"][..],
        &["version", "-v"],
        &["-vv", "version"],
        &["version", "-vv"],
        &["-v", "list"],
        &["list", "-vv"],
        &["-v", "plugins", "list"],
        &["plugins", "list", "-v"],
    ] {
        let out = agentserver(args, home.path());
        assert!(
            out.status.success(),
            "{args:?}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = agentserver(&["-v", "version"], home.path());
    assert!(String::from_utf8_lossy(&out.stdout).contains(agentserver::VERSION));
}

#[test]
fn verbose_before_login_reaches_the_login() {
    // The login itself fails (nothing listens on port 9), but it is attempted: not a usage
    // error (exit 2), and `-v` turned the debug lines on.
    let home = tempfile::tempdir().unwrap();
    for args in [
        &[
            "-v",
            "login",
            "--server",
            "http://127.0.0.1:9",
            "--skip-open-browser",
        ][..],
        &[
            "login",
            "--server",
            "http://127.0.0.1:9",
            "--skip-open-browser",
            "-v",
        ],
    ] {
        let out = agentserver(args, home.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("DEBUG"), "{args:?}: {stderr}");
    }
}

#[test]
fn root_options_before_a_subcommand_are_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    let out = agentserver(&["--continue", "-v", "version"], home.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--continue"));
}
