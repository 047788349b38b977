//! SIGINT/SIGTERM handling for the commands that run an intake: the first signal drains
//! (no new tasks, running tasks get the grace period), the second cancels running tasks at
//! once, the third asks the caller to exit immediately.

use super::IntakeHandle;

/// What the third signal means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForceExit {
    /// Three signals arrived: exit now, without waiting for anything.
    Now,
}

/// Exit code for a forced exit (128 + SIGINT, as shells report it).
pub const FORCE_EXIT_CODE: u8 = 130;

/// Installed SIGINT/SIGTERM handlers (installed on creation, so no signal is missed between
/// [`SignalWatcher::install`] and [`SignalWatcher::run`]).
#[derive(Debug)]
pub struct SignalWatcher {
    handle: IntakeHandle,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl SignalWatcher {
    /// Installs the handlers. Must be called inside a Tokio runtime.
    pub fn install(handle: IntakeHandle) -> Result<Self, std::io::Error> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                handle,
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self { handle })
    }

    #[cfg(unix)]
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }

    /// Applies signals to the intake; returns after the third one, having saved a
    /// `cancelled by host shutdown` status for every unfinished task (the caller exits at once).
    /// Never returns if fewer than three arrive, so race it against [`super::Intake::run`].
    pub async fn run(mut self) -> ForceExit {
        let mut count = 0u32;
        loop {
            let name = self.next().await;
            count += 1;
            match count {
                1 => {
                    tracing::warn!(
                        signal = name,
                        "shutting down: no new tasks; running tasks get their grace period (signal again to cancel them now)"
                    );
                    crate::logging::notice(
                        "Shutting down: waiting for running tasks (press Ctrl-C again to cancel them now).",
                    );
                    self.handle.drain();
                }
                2 => {
                    tracing::warn!(
                        signal = name,
                        "cancelling running tasks now (signal again to exit immediately)"
                    );
                    crate::logging::notice(
                        "Cancelling running tasks (press Ctrl-C again to exit immediately).",
                    );
                    self.handle.cancel_all();
                }
                _ => {
                    let abandoned = self.handle.persist_unfinished();
                    tracing::warn!(
                        signal = name,
                        abandoned,
                        "exiting immediately; unfinished tasks are reported as cancelled at the next start"
                    );
                    return ForceExit::Now;
                }
            }
        }
    }
}

/// [`SignalWatcher::install`] then [`SignalWatcher::run`].
pub async fn watch_signals(handle: IntakeHandle) -> Result<ForceExit, std::io::Error> {
    Ok(SignalWatcher::install(handle)?.run().await)
}
