//! The host-wide task capacity: several sandboxes in one process share one limit on the tasks
//! running at once (GitLab Runner's `concurrent`), on top of each sandbox's own
//! `max_concurrent_tasks`. An intake takes a [`Slot`] before it polls (a polled task is
//! assigned at once, so it must be able to start) and hands it to the task it got; the slot
//! goes back when the task's runner ends, or at once when the poll brought nothing.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A share of the host's capacity; clones share the same limit.
#[derive(Clone, Debug)]
pub struct HostCapacity {
    limit: Option<Arc<Semaphore>>,
}

/// One task's place in the host's capacity (`None` inside when the host has no limit).
#[derive(Debug)]
pub struct Slot {
    /// Given back to the host's capacity when the slot is dropped.
    _permit: Option<OwnedSemaphorePermit>,
}

impl HostCapacity {
    /// No host-wide limit.
    pub fn unlimited() -> Self {
        Self { limit: None }
    }

    /// At most `tasks` tasks at once across every intake sharing this value (at least 1).
    pub fn limited(tasks: usize) -> Self {
        Self {
            limit: Some(Arc::new(Semaphore::new(tasks.max(1)))),
        }
    }

    /// A slot now, if one is free.
    pub fn try_take(&self) -> Option<Slot> {
        match &self.limit {
            None => Some(Slot { _permit: None }),
            Some(limit) => limit
                .clone()
                .try_acquire_owned()
                .ok()
                .map(|p| Slot { _permit: Some(p) }),
        }
    }

    /// Waits for a free slot.
    pub async fn take(&self) -> Slot {
        match &self.limit {
            None => Slot { _permit: None },
            Some(limit) => match limit.clone().acquire_owned().await {
                Ok(permit) => Slot {
                    _permit: Some(permit),
                },
                // The semaphore is never closed; should it be, no limit is left to keep.
                Err(_) => Slot { _permit: None },
            },
        }
    }

    /// Free slots now (`None`: no limit).
    pub fn available(&self) -> Option<usize> {
        self.limit.as_ref().map(|l| l.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_shared_and_given_back_on_drop() {
        let a = HostCapacity::limited(2);
        let b = a.clone();
        let one = a.try_take().expect("a first slot");
        let two = b.try_take().expect("a second slot");
        assert!(a.try_take().is_none() && b.try_take().is_none());
        assert_eq!(a.available(), Some(0));
        drop(one);
        let three = tokio::time::timeout(std::time::Duration::from_secs(1), b.take())
            .await
            .expect("a freed slot is taken at once");
        drop((two, three));
        assert_eq!(a.available(), Some(2));
        let unlimited = HostCapacity::unlimited();
        let held: Vec<_> = (0..100).filter_map(|_| unlimited.try_take()).collect();
        assert_eq!(held.len(), 100);
    }
}
