//! The one "run a call, tell it to stop, give it a grace period, then give up on it" rule,
//! shared by the task runner (a backend's `execute`), the native plugin loader and the WASM
//! plugin loader.

use std::future::Future;
use std::time::Duration;

use tokio::task::{JoinError, JoinHandle};

/// How a call run through [`call_with_grace`] ended.
#[derive(Debug)]
pub enum Graceful<T, R> {
    /// It finished before anything told it to stop.
    Finished(Result<T, JoinError>),
    /// `stop` fired (with `reason`); `result` is what the call returned within the grace
    /// period, or `None` when it did not and was abandoned (aborted where tokio can abort it;
    /// a blocking thread is left to finish on its own).
    Stopped {
        /// What `stop` returned.
        reason: R,
        /// The call's own result, or `None` if it was abandoned.
        result: Option<Result<T, JoinError>>,
    },
}

/// Runs `call` until it finishes or `stop` completes. When `stop` wins, `on_stop` tells the
/// call to stop (a flag, a cancellation signal) and the call gets `grace` to return.
pub async fn call_with_grace<T, R>(
    mut call: JoinHandle<T>,
    stop: impl Future<Output = R>,
    on_stop: impl FnOnce(&R),
    grace: Duration,
) -> Graceful<T, R> {
    let reason = tokio::select! {
        result = &mut call => return Graceful::Finished(result),
        reason = stop => reason,
    };
    on_stop(&reason);
    match tokio::time::timeout(grace, &mut call).await {
        Ok(result) => Graceful::Stopped {
            reason,
            result: Some(result),
        },
        Err(_) => {
            call.abort();
            Graceful::Stopped {
                reason,
                result: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_call_that_finishes_first_is_never_told_to_stop() {
        let call = tokio::spawn(async { 7 });
        let told = AtomicBool::new(false);
        let out = call_with_grace(
            call,
            std::future::pending::<()>(),
            |_| told.store(true, Ordering::SeqCst),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(out, Graceful::Finished(Ok(7))));
        assert!(!told.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_stopped_call_that_returns_within_the_grace_keeps_its_result() {
        let stop_flag = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&stop_flag);
        let call = tokio::spawn(async move {
            while !seen.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            "stopped cleanly"
        });
        let out = call_with_grace(
            call,
            tokio::time::sleep(Duration::from_millis(50)),
            |()| stop_flag.store(true, Ordering::SeqCst),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(
            out,
            Graceful::Stopped {
                result: Some(Ok("stopped cleanly")),
                ..
            }
        ));
    }

    #[tokio::test]
    async fn a_call_that_ignores_the_stop_is_abandoned_after_the_grace() {
        let call = tokio::spawn(std::future::pending::<()>());
        let out = call_with_grace(
            call,
            async { "deadline" },
            |_| {},
            Duration::from_millis(100),
        )
        .await;
        assert!(matches!(
            out,
            Graceful::Stopped {
                reason: "deadline",
                result: None
            }
        ));
    }
}
