//! SIGINT/SIGTERM as shutdown stages: the first signal asks to drain, the second to cancel
//! running work, the third to exit at once. The handlers are installed only when the caller
//! asks ([`ShutdownSignals::install`]); what a stage does to an intake is
//! [`IntakeHandle::apply_shutdown`]; and nothing here prints: [`follow_signals`] hands each
//! stage to the caller, whose edge (the binary) tells the user ([`ShutdownStage::notice`]).

use crate::intake::IntakeHandle;

/// How far a shutdown has gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ShutdownStage {
    /// No new work; running tasks get their grace period.
    Drain,
    /// Cancel running tasks now.
    CancelAll,
    /// Exit without waiting for anything.
    ExitNow,
}

impl ShutdownStage {
    /// What to tell the person at the terminal when this stage starts (`None`: nothing, the
    /// process is about to exit).
    pub fn notice(self) -> Option<&'static str> {
        match self {
            ShutdownStage::Drain => Some(
                "Shutting down: waiting for running tasks (press Ctrl-C again to cancel them now).",
            ),
            ShutdownStage::CancelAll => {
                Some("Cancelling running tasks (press Ctrl-C again to exit immediately).")
            }
            ShutdownStage::ExitNow => None,
        }
    }

    /// The stage the `count`-th signal (from 1) starts.
    pub fn after_signals(count: u32) -> Self {
        match count {
            0 | 1 => ShutdownStage::Drain,
            2 => ShutdownStage::CancelAll,
            _ => ShutdownStage::ExitNow,
        }
    }
}

/// Exit code for a forced exit (128 + SIGINT, as shells report it).
pub const FORCE_EXIT_CODE: u8 = 130;

/// Installed SIGINT/SIGTERM handlers (installed on creation, so no signal is missed between
/// [`ShutdownSignals::install`] and the first [`ShutdownSignals::next`]).
#[derive(Debug)]
pub struct ShutdownSignals {
    received: u32,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Installs the handlers. Must be called inside a Tokio runtime.
    pub fn install() -> Result<Self, std::io::Error> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                received: 0,
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self { received: 0 })
    }

    #[cfg(unix)]
    async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }

    #[cfg(not(unix))]
    async fn wait(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }

    /// Waits for the next signal; returns the stage it starts and the signal's name.
    pub async fn next(&mut self) -> (ShutdownStage, &'static str) {
        let name = self.wait().await;
        self.received += 1;
        (ShutdownStage::after_signals(self.received), name)
    }
}

/// What a shutdown stage applies to: one intake, or every sandbox of a host
/// ([`crate::sandboxes::supervisor::SupervisorHandle`]).
pub trait ShutdownTarget {
    /// Applies `stage`; returns how many tasks a forced exit abandons (0 for the others).
    fn apply_shutdown(&self, stage: ShutdownStage) -> usize;
}

impl ShutdownTarget for IntakeHandle {
    fn apply_shutdown(&self, stage: ShutdownStage) -> usize {
        IntakeHandle::apply_shutdown(self, stage)
    }
}

/// Applies every signal's stage to the intake, calling `on_stage` as each starts; returns
/// after the third signal, when every unfinished task has a `cancelled by host shutdown`
/// status saved (the caller exits at once). Never returns if fewer than three arrive, so race
/// it against the work.
pub async fn follow_signals(
    mut signals: ShutdownSignals,
    handle: impl ShutdownTarget,
    mut on_stage: impl FnMut(ShutdownStage),
) {
    loop {
        let (stage, signal) = signals.next().await;
        match stage {
            ShutdownStage::Drain => tracing::warn!(
                signal,
                "shutting down: no new tasks; running tasks get their grace period (signal again to cancel them now)"
            ),
            ShutdownStage::CancelAll => tracing::warn!(
                signal,
                "cancelling running tasks now (signal again to exit immediately)"
            ),
            ShutdownStage::ExitNow => {}
        }
        on_stage(stage);
        let abandoned = handle.apply_shutdown(stage);
        if stage == ShutdownStage::ExitNow {
            tracing::warn!(
                signal,
                abandoned,
                "exiting immediately; unfinished tasks are reported as cancelled at the next start"
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_drains_second_cancels_third_and_later_exit() {
        assert_eq!(ShutdownStage::after_signals(1), ShutdownStage::Drain);
        assert_eq!(ShutdownStage::after_signals(2), ShutdownStage::CancelAll);
        assert_eq!(ShutdownStage::after_signals(3), ShutdownStage::ExitNow);
        assert_eq!(ShutdownStage::after_signals(9), ShutdownStage::ExitNow);
    }
}
