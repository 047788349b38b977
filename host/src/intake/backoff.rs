//! Exponential backoff with jitter, and a jittered interval helper.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff: `initial`, doubling up to `max`, each delay jittered by ±`jitter`.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `initial` and capped at `max`, with ±10 % jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            jitter: 0.1,
            next: initial,
        }
    }

    /// The delay to wait now; the following one is twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        jittered(base, self.jitter)
    }

    /// Starts over at the initial delay.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// `base` scaled by a random factor in `[1 - fraction, 1 + fraction]`.
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

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
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
}
