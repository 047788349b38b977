//! What stops a guest: its deadline, a cancellation past the grace period, its memory cap.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, StoreLimits};

/// Why the host interrupted a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StopReason {
    /// The task's deadline passed.
    Deadline,
    /// It was cancelled and did not return within the grace period.
    Cancelled,
}

/// Whether a guest must be interrupted now: its deadline passed, or it was cancelled at
/// `cancelled_at` and the grace period since then is over. The deadline wins.
pub(super) fn stop_reason(
    now: Instant,
    deadline: Instant,
    cancelled_at: Option<Instant>,
    grace: Duration,
) -> Option<StopReason> {
    if now >= deadline {
        Some(StopReason::Deadline)
    } else if cancelled_at.is_some_and(|at| now >= at + grace) {
        Some(StopReason::Cancelled)
    } else {
        None
    }
}

/// Cancellation as seen from the store's thread.
#[derive(Default)]
pub(super) struct StopSignal {
    pub(super) cancelled: AtomicBool,
    cancelled_at: Mutex<Option<Instant>>,
}

impl StopSignal {
    pub(super) fn cancel(&self) {
        let mut at = self.cancelled_at.lock().unwrap_or_else(|e| e.into_inner());
        at.get_or_insert_with(Instant::now);
        self.cancelled.store(true, Ordering::Release);
    }

    pub(super) fn cancelled_at(&self) -> Option<Instant> {
        if !self.cancelled.load(Ordering::Acquire) {
            return None;
        }
        *self.cancelled_at.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `StoreLimits`, remembering whether the cap was hit (to explain the trap).
pub(super) struct CapLimiter {
    pub(super) inner: StoreLimits,
    pub(super) cap: usize,
    pub(super) hit: bool,
}

impl ResourceLimiter for CapLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit = true;
        }
        self.inner.memory_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_wins_and_a_cancelled_guest_gets_its_grace() {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(10);
        let grace = Duration::from_secs(2);
        assert_eq!(stop_reason(start, deadline, None, grace), None);
        assert_eq!(
            stop_reason(deadline, deadline, None, grace),
            Some(StopReason::Deadline)
        );
        let cancelled = Some(start + Duration::from_secs(1));
        assert_eq!(
            stop_reason(start + Duration::from_secs(2), deadline, cancelled, grace),
            None,
            "still within the grace"
        );
        assert_eq!(
            stop_reason(start + Duration::from_secs(3), deadline, cancelled, grace),
            Some(StopReason::Cancelled)
        );
        assert_eq!(
            stop_reason(deadline, deadline, cancelled, grace),
            Some(StopReason::Deadline)
        );
    }

    #[test]
    fn a_stop_signal_remembers_the_first_cancellation() {
        let signal = StopSignal::default();
        assert_eq!(signal.cancelled_at(), None);
        signal.cancel();
        let first = signal.cancelled_at().unwrap();
        signal.cancel();
        assert_eq!(signal.cancelled_at(), Some(first));
        assert!(signal.cancelled.load(Ordering::Acquire));
    }
}
