//! The reconnect schedule of spec §6.2, with jitter.
//!
//! 1 s, doubling, capped at 60 s; a connection that lived longer than 30 s resets it to 1 s.
//! Each sleep is stretched by a random 0–10 %: after a server restart every host would
//! otherwise redial in lockstep (1 s, 2 s, 4 s, … after the same instant), and the jitter
//! spreads that herd out without changing the schedule by more than a tenth.

use std::time::Duration;

/// The reconnect schedule's knobs. [`Default`] is the upstream schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct BackoffPolicy {
    /// First delay (and the delay after a reset). Default 1 s.
    pub initial: Duration,
    /// Largest delay. Default 60 s.
    pub max: Duration,
    /// A connection that lived longer than this resets the delay. Default 30 s.
    pub reset_after: Duration,
    /// Each delay is multiplied by `1 + U[0, jitter)`. Default 0.1.
    pub jitter: f64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(30),
            jitter: 0.1,
        }
    }
}

/// The state of the schedule between attempts.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    current: Duration,
}

impl Backoff {
    /// A fresh schedule.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            current: policy.initial,
            policy,
        }
    }

    /// The delay before the next attempt, given how long the last connection attempt lived
    /// (from just before dialing until it ended), without jitter; advances the schedule.
    pub fn next_base(&mut self, lived: Duration) -> Duration {
        if lived > self.policy.reset_after {
            self.current = self.policy.initial;
        }
        let delay = self.current;
        self.current = (self.current * 2).min(self.policy.max);
        delay
    }

    /// [`Backoff::next_base`] with the jitter applied.
    pub fn next_delay(&mut self, lived: Duration) -> Duration {
        let base = self.next_base(lived);
        let factor = if self.policy.jitter > 0.0 {
            1.0 + rand::random::<f64>() * self.policy.jitter
        } else {
            1.0
        };
        base.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_schedule() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let short = Duration::from_secs(1);
        let got: Vec<u64> = (0..9).map(|_| b.next_base(short).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // A connection that lived more than 30 s resets the schedule.
        assert_eq!(b.next_base(Duration::from_secs(31)).as_secs(), 1);
        assert_eq!(b.next_base(short).as_secs(), 2);
        // Exactly 30 s does not.
        assert_eq!(b.next_base(Duration::from_secs(30)).as_secs(), 4);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let mut b = Backoff::new(BackoffPolicy::default());
        for expected in [1.0f64, 2.0, 4.0, 8.0] {
            let d = b.next_delay(Duration::ZERO).as_secs_f64();
            assert!(d >= expected && d < expected * 1.1, "{d} vs {expected}");
        }
    }
}
