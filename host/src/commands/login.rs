//! `agentserver login`: the device flow, credentials saved to ~/.agentserver/.credentials.json.

use std::process::ExitCode;

use agentserver::auth::{AuthContext, LoginError, TerminalLoginUi};
use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::cli::LoginArgs;

/// Exit code after Ctrl-C (128 + SIGINT), as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

/// Runs the device flow against `--server` and saves the tokens. Ctrl-C aborts cleanly (the
/// spinner is cleared, nothing is saved, exit code 130).
pub async fn login(args: LoginArgs) -> Result<ExitCode> {
    let ctx = AuthContext::default_location();
    let ui = TerminalLoginUi::new(!args.skip_open_browser);
    let cancel = cancel_on_ctrl_c();
    let result = ctx.login(&args.server, &ui, &cancel).await;
    cancel.cancel();
    match result {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(LoginError::Cancelled) => {
            eprintln!("Login cancelled.");
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
        Err(err) => Err(err.into()),
    }
}

/// A token cancelled by the first Ctrl-C (or by cancelling it, which also ends the watcher).
pub fn cancel_on_ctrl_c() -> CancellationToken {
    let cancel = CancellationToken::new();
    let watcher = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                if r.is_ok() {
                    watcher.cancel();
                }
            }
            () = watcher.cancelled() => {}
        }
    });
    cancel
}
