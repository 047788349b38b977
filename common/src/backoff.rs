//! The one retry schedule: the tunnel's reconnects (spec §6.2), the bridge SSE reader, intake
//! requests, the status reporter and the opencode server's restarts all use [`Backoff`].
//!
//! `initial`, doubling, capped at `max`; an attempt that lived longer than `reset_after` starts
//! the schedule over. Each delay is stretched by a random 0–`jitter` fraction: after a server
//! restart every host would otherwise retry in lockstep (1 s, 2 s, 4 s, … after the same
//! instant), and the jitter spreads that herd out without ever making a delay shorter than its
//! schedule. [`jittered`] spreads a fixed interval (a poll, a heartbeat) both ways instead.

use std::time::Duration;

use rand::Rng;

/// The schedule's knobs. [`Default`] is the tunnel's upstream schedule (spec §6.2): 1 s doubling
/// to 60 s, reset after an attempt that lived more than 30 s, 10 % jitter.
#[derive(Clone, Debug, PartialEq)]
pub struct BackoffPolicy {
    /// First delay (and the delay after a reset). Default 1 s.
    pub initial: Duration,
    /// Largest delay (never below `initial`). Default 60 s.
    pub max: Duration,
    /// An attempt that lived longer than this resets the delay ([`Backoff::next_delay_after`]).
    /// Default 30 s; [`Duration::MAX`] never resets.
    pub reset_after: Duration,
    /// Each delay is multiplied by `1 + U[0, jitter)`; 0 for none. Default 0.1.
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

impl BackoffPolicy {
    /// `initial` doubling to `max`, 10 % jitter, never reset by how long an attempt lived
    /// (a caller may still [`Backoff::reset`]).
    pub fn capped(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            reset_after: Duration::MAX,
            jitter: 0.1,
        }
    }

    /// The same schedule without jitter.
    pub fn without_jitter(self) -> Self {
        Self {
            jitter: 0.0,
            ..self
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
        let policy = BackoffPolicy {
            max: policy.max.max(policy.initial),
            ..policy
        };
        Self {
            current: policy.initial,
            policy,
        }
    }

    /// The delay before the next attempt without jitter; advances the schedule.
    pub fn next_base(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.policy.max);
        delay
    }

    /// [`Backoff::next_base`] after an attempt that lived `lived` (from just before it started
    /// until it ended): one that lived longer than the policy's `reset_after` starts over.
    pub fn next_base_after(&mut self, lived: Duration) -> Duration {
        if lived > self.policy.reset_after {
            self.reset();
        }
        self.next_base()
    }

    /// The delay to wait now, jittered; the following one is twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next_base();
        self.stretch(base)
    }

    /// [`Backoff::next_delay`] after an attempt that lived `lived`
    /// (see [`Backoff::next_base_after`]).
    pub fn next_delay_after(&mut self, lived: Duration) -> Duration {
        let base = self.next_base_after(lived);
        self.stretch(base)
    }

    /// Starts over at the initial delay.
    pub fn reset(&mut self) {
        self.current = self.policy.initial;
    }

    fn stretch(&self, base: Duration) -> Duration {
        if self.policy.jitter > 0.0 {
            base.mul_f64(1.0 + rand::random::<f64>() * self.policy.jitter)
        } else {
            base
        }
    }
}

/// `base` scaled by a random factor in `[1 - fraction, 1 + fraction]`: an interval (a poll, a
/// heartbeat) spread both ways so that many hosts do not tick together.
pub fn jittered(base: Duration, fraction: f64) -> Duration {
    if base.is_zero() || fraction <= 0.0 {
        return base;
    }
    let factor = rand::rng().random_range((1.0 - fraction)..=(1.0 + fraction));
    base.mul_f64(factor.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    // From the tunnel's schedule (host/src/tunnel/backoff.rs).
    #[test]
    fn upstream_schedule() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let short = Duration::from_secs(1);
        let got: Vec<u64> = (0..9).map(|_| b.next_base_after(short).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // A connection that lived more than 30 s resets the schedule.
        assert_eq!(b.next_base_after(Duration::from_secs(31)).as_secs(), 1);
        assert_eq!(b.next_base_after(short).as_secs(), 2);
        // Exactly 30 s does not.
        assert_eq!(b.next_base_after(Duration::from_secs(30)).as_secs(), 4);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let mut b = Backoff::new(BackoffPolicy::default());
        for expected in [1.0f64, 2.0, 4.0, 8.0] {
            let d = b.next_delay_after(Duration::ZERO).as_secs_f64();
            assert!(d >= expected && d < expected * 1.1, "{d} vs {expected}");
        }
    }

    // From intake's backoff (host/src/intake/backoff.rs).
    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(BackoffPolicy::capped(
            Duration::from_secs(1),
            Duration::from_secs(4),
        ));
        let d: Vec<_> = (0..5).map(|_| b.next_delay().as_secs_f64()).collect();
        let expect = [1.0, 2.0, 4.0, 4.0, 4.0];
        for (got, want) in d.iter().zip(expect) {
            assert!((got - want).abs() <= want * 0.1 + 1e-9, "{got} vs {want}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1100));
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(20), 0.1);
            assert!(d >= Duration::from_secs(18) && d <= Duration::from_secs(22));
        }
        assert_eq!(jittered(Duration::ZERO, 0.1), Duration::ZERO);
    }

    // The opencode server's restarts: no jitter, reset after a server that lived longer than
    // the cap (backends/opencode/src/server.rs).
    #[test]
    fn without_jitter_is_exact_and_never_resets_by_default() {
        let mut b = Backoff::new(
            BackoffPolicy::capped(Duration::from_millis(200), Duration::from_secs(2))
                .without_jitter(),
        );
        let got: Vec<u64> = (0..6)
            .map(|_| b.next_delay_after(Duration::from_secs(3600)).as_millis() as u64)
            .collect();
        assert_eq!(got, [200, 400, 800, 1600, 2000, 2000]);
    }
}
