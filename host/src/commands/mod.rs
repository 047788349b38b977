//! One function per command. This is the binary's edge: errors become `anyhow` here.

mod backends;
#[cfg(feature = "dev-server")]
mod demo;
#[cfg(feature = "dev-server")]
pub(crate) mod dev_server;
mod list;
mod login;
mod remove;
mod run;
mod run_many;
mod service;
mod status;
mod task_worker;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{Cli, Command, RootArgs, RunArgs};

mod info;
mod mcp_server;
pub mod plugins;

/// Tells the user a shutdown stage has started (the edge's half of
/// [`agentserver::shutdown::follow_signals`]).
fn say_shutdown_stage(stage: agentserver::shutdown::ShutdownStage) {
    if let Some(text) = stage.notice() {
        agentserver::logging::notice(text);
    }
}

/// Commands that never read the private state directory (so its modes are left alone).
fn touches_no_state(command: &Option<Command>) -> bool {
    match command {
        Some(Command::Version | Command::Service(_)) => true,
        #[cfg(feature = "dev-server")]
        Some(Command::DevServer(_) | Command::Demo(_)) => true,
        _ => false,
    }
}

/// Runs the parsed command line.
pub async fn dispatch(cli: Cli) -> Result<ExitCode> {
    if !touches_no_state(&cli.command) {
        // Loose modes on what the host keeps private are put back, with a warning (as ssh).
        agentserver::fsutil::tighten_state_dir(&agentserver::paths::state_dir());
    }
    match cli.command {
        None => run(root_as_run(cli.root)).await,
        Some(Command::Claudecode(root)) => {
            let mut args = root_as_run(root);
            args.backend = Some(agentserver::dispatch::BackendKind::ClaudeCode);
            run(args).await
        }
        Some(Command::Run(args)) => run(args).await,
        Some(Command::Connect(mut args)) => {
            args.backend = Some(agentserver::dispatch::BackendKind::Opencode);
            run(args).await
        }
        Some(Command::Login(args)) => login::login(args).await,
        Some(Command::List(args)) => list::list(args),
        Some(Command::Status(args)) => status::status(args).await,
        Some(Command::Remove(args)) => remove::remove(args).await,
        Some(Command::TaskWorker(args)) => task_worker::task_worker(args).await,
        Some(Command::McpServer) => mcp_server::mcp_server().await,
        Some(Command::Version) => {
            println!("agentserver {}", agentserver::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Info(args)) => info::info(args).await,
        Some(Command::Plugins(args)) => plugins::plugins(args).await,
        #[cfg(feature = "dev-server")]
        Some(Command::DevServer(args)) => dev_server::run(args).await,
        #[cfg(feature = "dev-server")]
        Some(Command::Demo(args)) => demo::demo(args).await,
        Some(Command::Service(args)) => service::service(args),
        Some(Command::PluginHost { library }) => Ok(ExitCode::from(
            agentserver::plugins::process::serve(&library),
        )),
    }
}

fn root_as_run(root: RootArgs) -> RunArgs {
    RunArgs {
        // The root command is claudecode, except that `--resume` follows the sandbox's type.
        backend: None,
        session: root.session,
        claude: root.claude,
        opencode: Default::default(),
        acp: Default::default(),
        intake: root.intake,
        plugins: Default::default(),
        ops: root.ops,
        many: Default::default(),
    }
}

async fn run(args: RunArgs) -> Result<ExitCode> {
    run::run(args).await
}
