//! `agentserver service install|uninstall|status`: the systemd unit (or launchd agent) that runs
//! `agentserver run` with the drain-aware stop settings of docs/operations.md. Rendering lives in
//! `agentserver::service`; this writes the file and calls `systemctl`, `loginctl`, `launchctl`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use agentserver::service::{self, ServiceKind, ServiceSpec};
use anyhow::{Context, Result, bail};

use crate::cli::{Cli, ServiceAction, ServiceArgs, ServiceTarget};

/// Runs one `service` subcommand.
pub fn service(args: ServiceArgs) -> Result<ExitCode> {
    match args.action {
        ServiceAction::Install {
            target,
            work_dir,
            run_as,
            force,
            run_args,
        } => install(&target, work_dir, run_as, force, run_args),
        ServiceAction::Uninstall { target } => uninstall(&target),
        ServiceAction::Status { target } => status(&target),
    }
}

fn kind(target: &ServiceTarget) -> ServiceKind {
    if target.launchd {
        ServiceKind::Launchd
    } else {
        ServiceKind::native()
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The service file this target means.
fn service_file(target: &ServiceTarget) -> PathBuf {
    let kind = kind(target);
    let dir = match &target.unit_dir {
        Some(dir) => dir.clone(),
        None => service::default_dir(kind, target.system, &home()),
    };
    dir.join(service::file_name(kind))
}

/// What running a tool gave.
enum Tool {
    /// Exit 0; its trimmed stdout.
    Ok(String),
    /// It ran and failed: its exit status and trimmed output.
    Failed(String),
    /// It could not be started (not installed, or not runnable here).
    Missing(String),
}

fn tool(program: &str, args: &[&str]) -> Tool {
    match Command::new(program).args(args).output() {
        Err(err) => Tool::Missing(format!("cannot run {program}: {err}")),
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() {
                Tool::Ok(stdout)
            } else {
                let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
                let text = [stdout, stderr]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ");
                Tool::Failed(format!(
                    "{program} {}: {} {text}",
                    args.join(" "),
                    out.status
                ))
            }
        }
    }
}

/// `systemctl [--user] ARGS...`; [`Tool::Missing`] where systemd is not running (as
/// `sd_booted`: no /run/systemd/system, e.g. in most containers).
fn systemctl(system: bool, args: &[&str]) -> Tool {
    if !Path::new("/run/systemd/system").is_dir() {
        return Tool::Missing("systemd is not running on this machine".to_owned());
    }
    let mut all = Vec::with_capacity(args.len() + 1);
    if !system {
        all.push("--user");
    }
    all.extend_from_slice(args);
    tool("systemctl", &all)
}

/// The manager's commands that enable the service, as the user would type them.
fn enable_hint(kind: ServiceKind, system: bool, file: &Path) -> String {
    match kind {
        ServiceKind::Systemd => {
            let user = if system { "" } else { " --user" };
            format!(
                "systemctl{user} daemon-reload && systemctl{user} enable --now agentserver \
                 (logs: journalctl{user} -u agentserver -f)"
            )
        }
        ServiceKind::Launchd => format!("launchctl load -w {}", file.display()),
    }
}

fn user_name() -> Option<String> {
    std::env::var("USER")
        .ok()
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|u| !u.is_empty())
}

/// Prints whether systemd lingering is on for the user (a user unit runs only while the user is
/// logged in without it), and how to turn it on when off.
fn report_linger() {
    let Some(user) = user_name() else {
        println!("lingering: unknown ($USER is not set)");
        return;
    };
    match tool(
        "loginctl",
        &["show-user", &user, "--property=Linger", "--value"],
    ) {
        Tool::Ok(value) if value == "yes" => println!("lingering: on (runs without a login)"),
        Tool::Ok(_) => println!(
            "lingering: off: the service stops when {user} logs out and starts only at a login; \
             turn it on with `loginctl enable-linger {user}`"
        ),
        Tool::Failed(err) | Tool::Missing(err) => println!(
            "lingering: unknown ({err}); without it a user service runs only while {user} is \
             logged in: `loginctl enable-linger {user}`"
        ),
    }
}

fn install(
    target: &ServiceTarget,
    work_dir: Option<PathBuf>,
    run_as: Option<String>,
    force: bool,
    run_args: Vec<String>,
) -> Result<ExitCode> {
    let kind = kind(target);
    let run_args = if run_args.is_empty() {
        vec!["--backend".to_owned(), "claudecode".to_owned()]
    } else {
        run_args
    };
    // A secret on the command line would be written into a unit file others can read.
    if run_args
        .iter()
        .any(|a| a == "--opencode-token" || a.starts_with("--opencode-token="))
    {
        bail!(
            "--opencode-token would be written into the service file in clear; give the \
             service the password through OPENCODE_SERVER_PASSWORD instead (systemd: an \
             `EnvironmentFile=` readable only by you, added with `systemctl edit agentserver`)"
        );
    }
    // The same parser as the service's own start: a typo fails now, not in the journal.
    let mut argv = vec!["agentserver".to_owned(), "run".to_owned()];
    argv.extend(run_args.iter().cloned());
    if let Err(err) = Cli::try_parse_args_from(&argv) {
        bail!(
            "the arguments for `agentserver run` are not valid: {}",
            err.to_string().trim()
        );
    }
    let (grace, poll) = service::drain_settings(&run_args).map_err(anyhow::Error::msg)?;
    let binary = std::env::current_exe().context("cannot find the agentserver binary")?;
    let work_dir = match work_dir {
        Some(d) => d,
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let work_dir = std::path::absolute(&work_dir)
        .with_context(|| format!("cannot make {} absolute", work_dir.display()))?;
    if !work_dir.is_dir() {
        bail!("the work directory {} does not exist", work_dir.display());
    }
    let mut environment = Vec::new();
    // A service starts with the manager's short PATH: keep the one `claude`/`opencode` are
    // found with now.
    if let Some(path) = std::env::var_os("PATH").filter(|p| !p.is_empty()) {
        environment.push(("PATH".to_owned(), path.to_string_lossy().into_owned()));
    }
    if let Some(home) =
        std::env::var_os(agentserver::paths::STATE_DIR_ENV).filter(|h| !h.is_empty())
    {
        environment.push((
            agentserver::paths::STATE_DIR_ENV.to_owned(),
            std::path::absolute(PathBuf::from(&home))?
                .to_string_lossy()
                .into_owned(),
        ));
    }
    let run_as = if target.system {
        run_as
            .or_else(|| std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty()))
            .or_else(user_name)
    } else {
        None
    };
    if target.system && run_as.as_deref().is_none_or(|u| u == "root") {
        eprintln!(
            "warning: the system service will run as root; pass --run-as USER to run it as a user"
        );
    }
    let spec = ServiceSpec {
        binary,
        work_dir,
        run_args,
        stop_timeout_secs: service::stop_timeout_secs(grace, poll),
        system: target.system,
        run_as,
        environment,
    };
    let text = service::render(kind, &spec);
    let file = service_file(target);
    match std::fs::read_to_string(&file) {
        Ok(existing) if existing != text && !force => bail!(
            "{} already exists with other settings; pass --force to replace it",
            file.display()
        ),
        _ => {}
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&file, &text).with_context(|| format!("cannot write {}", file.display()))?;
    println!(
        "wrote {} (stop timeout {} s: --grace-period {} s + --poll-timeout {} s + drain)",
        file.display(),
        spec.stop_timeout_secs,
        grace.as_secs_f64(),
        poll.as_secs_f64()
    );
    let hint = enable_hint(kind, target.system, &file);
    if target.no_enable {
        println!("not enabled (--no-enable); to start it: {hint}");
        return Ok(ExitCode::SUCCESS);
    }
    let steps: Vec<Tool> = match kind {
        ServiceKind::Systemd => {
            let reload = systemctl(target.system, &["daemon-reload"]);
            if matches!(reload, Tool::Ok(_)) {
                vec![
                    reload,
                    systemctl(target.system, &["enable", "--now", "agentserver"]),
                ]
            } else {
                vec![reload]
            }
        }
        ServiceKind::Launchd => vec![tool("launchctl", &["load", "-w", &file.to_string_lossy()])],
    };
    for step in steps {
        match step {
            Tool::Ok(_) => {}
            Tool::Missing(err) => {
                println!(
                    "the service file is written but not enabled: {err} (no service manager \
                     here, e.g. in a container). On a machine with one: {hint}"
                );
                return Ok(ExitCode::FAILURE);
            }
            Tool::Failed(err) => {
                println!("the service file is written but enabling it failed: {err}");
                println!("fix that, then: {hint}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    println!("enabled and started");
    if kind == ServiceKind::Systemd && !target.system {
        report_linger();
    }
    Ok(ExitCode::SUCCESS)
}

fn uninstall(target: &ServiceTarget) -> Result<ExitCode> {
    let kind = kind(target);
    let file = service_file(target);
    if !file.exists() {
        println!("{} does not exist: nothing to remove", file.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut code = ExitCode::SUCCESS;
    if !target.no_enable {
        let step = match kind {
            ServiceKind::Systemd => systemctl(target.system, &["disable", "--now", "agentserver"]),
            ServiceKind::Launchd => tool("launchctl", &["unload", "-w", &file.to_string_lossy()]),
        };
        match step {
            Tool::Ok(_) => println!("stopped and disabled"),
            Tool::Missing(err) => println!("not stopped: {err}"),
            Tool::Failed(err) => {
                println!("stopping or disabling it failed: {err}");
                code = ExitCode::FAILURE;
            }
        }
    }
    std::fs::remove_file(&file).with_context(|| format!("cannot remove {}", file.display()))?;
    println!("removed {}", file.display());
    if !target.no_enable
        && kind == ServiceKind::Systemd
        && let Tool::Failed(err) = systemctl(target.system, &["daemon-reload"])
    {
        println!("{err}");
    }
    Ok(code)
}

fn status(target: &ServiceTarget) -> Result<ExitCode> {
    let kind = kind(target);
    let file = service_file(target);
    let exists = file.is_file();
    println!(
        "file: {} ({})",
        file.display(),
        if exists { "installed" } else { "not installed" }
    );
    if !target.no_enable {
        match kind {
            ServiceKind::Systemd => {
                for (what, arg) in [("enabled", "is-enabled"), ("active", "is-active")] {
                    let text = match systemctl(target.system, &[arg, "agentserver"]) {
                        Tool::Ok(out) => out,
                        // is-enabled/is-active exit non-zero for "disabled", "inactive"...
                        Tool::Failed(err) => err,
                        Tool::Missing(err) => err,
                    };
                    println!("{what}: {text}");
                }
            }
            ServiceKind::Launchd => {
                let text = match tool("launchctl", &["list", service::LAUNCHD_LABEL]) {
                    Tool::Ok(_) => "loaded".to_owned(),
                    Tool::Failed(_) => "not loaded".to_owned(),
                    Tool::Missing(err) => err,
                };
                println!("launchd: {text}");
            }
        }
        if kind == ServiceKind::Systemd && !target.system {
            report_linger();
        }
    }
    Ok(if exists {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
