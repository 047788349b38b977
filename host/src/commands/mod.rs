//! One function per command. This is the binary's edge: errors become `anyhow` here.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cli::{Cli, Command, RootArgs, RunArgs};

/// Runs the parsed command line.
pub async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        None => run(root_as_run(cli.root)).await,
        Some(Command::Claudecode(root)) => run(root_as_run(root)).await,
        Some(Command::Run(args)) => run(args).await,
        Some(Command::Connect(mut args)) => {
            args.backend = "opencode".into();
            run(args).await
        }
        Some(Command::Login(_)) => not_yet("login", 3),
        Some(Command::List(_)) => not_yet("list", 3),
        Some(Command::Remove(_)) => not_yet("remove", 3),
        Some(Command::TaskWorker(_)) => not_yet("task-worker", 6),
        Some(Command::McpServer) => not_yet("mcp-server", 10),
        Some(Command::Version) => {
            println!("agentserver {}", agentserver::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Info(_)) => not_yet("info", 5),
        Some(Command::Plugins(_)) => not_yet("plugins", 9),
        Some(Command::DevServer(_)) => not_yet("dev-server", 2),
        Some(Command::Demo(_)) => not_yet("demo", 11),
    }
}

fn root_as_run(root: RootArgs) -> RunArgs {
    RunArgs {
        backend: "claudecode".into(),
        session: root.session,
        claude: root.claude,
        opencode: Default::default(),
        intake: root.intake,
        plugins: Default::default(),
    }
}

async fn run(args: RunArgs) -> Result<ExitCode> {
    let _ = args;
    not_yet("run", 6)
}

fn not_yet(command: &str, issue: u32) -> Result<ExitCode> {
    bail!("`agentserver {command}` is not implemented yet (tracked in issue #{issue})")
}
