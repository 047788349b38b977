//! The `agentserver` binary: parse arguments, set up logging, run one command.

mod cli;
mod commands;

use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Before anything can map or unmap a file: which files' idle pages may be released.
    agentserver::memory::note_startup_files();
    let cli = cli::Cli::parse_args();
    agentserver::logging::init(
        cli.verbose,
        std::io::stderr().is_terminal(),
        cli.log_format,
        std::io::stderr,
    );
    own_leftovers(cli.command.as_ref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("Error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(err) => {
            // Not through the log writer: scrub it here (an error may quote a URL or a
            // server's answer), and keep stderr JSON-only when the logs are JSON.
            let text = error_chain(&err);
            let text = agentserver::secret::redact(&text).unwrap_or(text);
            if agentserver::logging::json_logs() {
                tracing::error!("{text}");
            } else {
                eprintln!("Error: {text}");
            }
            ExitCode::FAILURE
        }
    };
    // Dropping the runtime would wait for every blocking task, and a native plugin that
    // ignores cancellation keeps its blocking thread forever: give stragglers a moment, then
    // leave them behind so the process exits as promised.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    code
}

/// Nothing left behind (issue 18): a command that runs tasks makes the host a child subreaper
/// (the orphans of its children's descendants come to it, to be found and reaped) and kills
/// what a host that was killed with SIGKILL left tagged (`sweep_stale`), before any child of
/// its own starts.
fn own_leftovers(command: Option<&cli::Command>) {
    use cli::Command;
    let runs_tasks = matches!(
        command,
        None | Some(
            Command::Run(_)
                | Command::Claudecode(_)
                | Command::Connect(_)
                | Command::TaskWorker(_)
                | Command::Demo(_)
        )
    );
    if !runs_tasks {
        return;
    }
    let subreaper = agentserver_common::process::become_subreaper();
    let stale = agentserver_common::process::sweep_stale();
    tracing::debug!(
        subreaper,
        stale_killed = stale.len(),
        "the host owns its leftover processes"
    );
}

/// How long the exit waits for blocking tasks (file writes, plugin calls) still running.
const RUNTIME_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The error and its causes joined by `: `, leaving out a cause whose text the message
/// already shows (many errors print their source themselves, e.g. `{path}: {source}`).
fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}
