//! Usage limits: when a backend's outcome says the model provider refuses requests until a
//! reset ([`UsageLimit`]), this sandbox's intake takes no task until then (other sandboxes of
//! the host keep working: each intake has its own gate).
//!
//! The pause lasts until the reset time plus a little jitter (so a fleet does not poll in the
//! same second), capped at [`MAX_PAUSE`]; a limit without a reset time backs off from
//! [`NO_RESET_INITIAL`], doubling up to [`NO_RESET_MAX`], until a task completes again.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use agentserver_common::backoff::{Backoff, BackoffPolicy};
use agentserver_plugin_api::UsageLimit;
use tokio::time::Instant;

/// The longest pause, whatever the provider says.
pub const MAX_PAUSE: Duration = Duration::from_secs(24 * 60 * 60);
/// The first pause after a limit without a reset time.
pub const NO_RESET_INITIAL: Duration = Duration::from_secs(60);
/// The longest pause after limits without a reset time.
pub const NO_RESET_MAX: Duration = Duration::from_secs(60 * 60);
/// The jitter added after a reset time: up to 5 % of the wait, at least 1 s, at most 60 s.
const JITTER_FRACTION: f64 = 0.05;

/// A pause of task intake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pause {
    /// When polling resumes (wall clock, for people and the agent info).
    pub until: SystemTime,
    /// When polling resumes (monotonic, for the intake's timers).
    pub until_instant: Instant,
    /// The limit's kind, in the provider's words (`five_hour`, `rate_limit`, …), when known.
    pub kind: Option<String>,
    /// When the limit itself resets (Unix seconds), when the provider said.
    pub resets_at: Option<u64>,
}

impl Pause {
    /// The failure reason of the task that hit the limit: the kind, the reset time (RFC 3339,
    /// UTC) or that none was given, and when intake resumes.
    pub fn reason(&self, backend_reason: &str) -> String {
        let kind = self
            .kind
            .as_deref()
            .map(|k| format!(" ({k})"))
            .unwrap_or_default();
        let reset = match self.resets_at {
            Some(at) => format!("resets at {}", utc(unix(at))),
            None => "no reset time given".to_owned(),
        };
        let detail = if backend_reason.is_empty() {
            String::new()
        } else {
            format!(": {backend_reason}")
        };
        format!(
            "usage limit reached{kind}; {reset}; this sandbox takes no task until {}{detail}",
            utc(self.until)
        )
    }
}

/// The pause for `limit` reported at `now`: until its reset plus jitter, or `fallback` (the
/// backoff's next delay) when it has none or the reset is already past; never more than
/// [`MAX_PAUSE`]. `jitter_unit` in `[0, 1)` picks the jitter (random in the intake).
pub fn pause_for(
    limit: &UsageLimit,
    now: SystemTime,
    fallback: Duration,
    jitter_unit: f64,
) -> Duration {
    let wait = limit
        .resets_at
        .map(unix)
        .and_then(|at| at.duration_since(now).ok())
        .filter(|wait| !wait.is_zero());
    match wait {
        Some(wait) => {
            let jitter = wait
                .mul_f64(JITTER_FRACTION * jitter_unit.clamp(0.0, 1.0))
                .clamp(Duration::from_secs(1), Duration::from_secs(60));
            (wait + jitter).min(MAX_PAUSE)
        }
        None => fallback.min(MAX_PAUSE),
    }
}

/// One sandbox's usage gate: the current pause, and the backoff for limits without a reset.
#[derive(Debug)]
pub struct UsageGate {
    state: Mutex<GateState>,
}

#[derive(Debug)]
struct GateState {
    pause: Option<Pause>,
    no_reset: Backoff,
}

impl Default for UsageGate {
    fn default() -> Self {
        Self {
            state: Mutex::new(GateState {
                pause: None,
                no_reset: Backoff::new(BackoffPolicy::capped(NO_RESET_INITIAL, NO_RESET_MAX)),
            }),
        }
    }
}

impl UsageGate {
    /// A task ran into `limit`: pause (or extend the pause) and return it.
    pub fn hit(&self, limit: &UsageLimit) -> Pause {
        let mut state = self.lock();
        let has_reset = limit
            .resets_at
            .is_some_and(|at| unix(at) > SystemTime::now());
        let fallback = if has_reset {
            NO_RESET_INITIAL
        } else {
            state.no_reset.next_base()
        };
        let wait = pause_for(limit, SystemTime::now(), fallback, rand::random::<f64>());
        let pause = Pause {
            until: SystemTime::now() + wait,
            until_instant: Instant::now() + wait,
            kind: limit.kind.clone(),
            resets_at: limit.resets_at,
        };
        // Two tasks hitting the limit at once: the later end wins.
        let keep = match &state.pause {
            Some(current) if current.until_instant > pause.until_instant => current.clone(),
            _ => pause,
        };
        state.pause = Some(keep.clone());
        keep
    }

    /// A task completed: the provider takes requests again, so the no-reset backoff starts
    /// over.
    pub fn completed(&self) {
        self.lock().no_reset.reset();
    }

    /// The pause in force now, if any (an expired one is cleared).
    pub fn current(&self) -> Option<Pause> {
        let mut state = self.lock();
        if state
            .pause
            .as_ref()
            .is_some_and(|p| p.until_instant <= Instant::now())
        {
            state.pause = None;
        }
        state.pause.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unix(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// RFC 3339 in UTC, whole seconds.
pub fn utc(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(resets_at: Option<u64>) -> UsageLimit {
        UsageLimit {
            resets_at,
            kind: Some("five_hour".into()),
        }
    }

    #[test]
    fn a_reset_time_decides_the_pause_with_a_little_jitter() {
        let now = unix(1_000_000);
        let fallback = Duration::from_secs(60);
        // 63 s to the reset (the orchestrator that waited 2 h 13 min): 63 s + 1..3 s.
        let p = pause_for(&limit(Some(1_000_063)), now, fallback, 0.0);
        assert_eq!(p, Duration::from_secs(64));
        let p = pause_for(&limit(Some(1_000_063)), now, fallback, 0.999);
        assert!(
            p > Duration::from_secs(64) && p <= Duration::from_secs(67),
            "{p:?}"
        );
        // Long waits get at most a minute of jitter, and never more than a day in all.
        let p = pause_for(&limit(Some(1_000_000 + 5 * 3600)), now, fallback, 0.999);
        assert!(p <= Duration::from_secs(5 * 3600 + 60), "{p:?}");
        let p = pause_for(&limit(Some(1_000_000 + 3 * 86_400)), now, fallback, 0.5);
        assert_eq!(p, MAX_PAUSE);
    }

    #[test]
    fn no_reset_time_or_a_past_one_backs_off() {
        let now = unix(1_000_000);
        let fallback = Duration::from_secs(120);
        assert_eq!(pause_for(&limit(None), now, fallback, 0.5), fallback);
        assert_eq!(
            pause_for(&limit(Some(999_000)), now, fallback, 0.5),
            fallback
        );
    }

    #[test]
    fn the_gate_doubles_without_a_reset_and_starts_over_after_a_completion() {
        let gate = UsageGate::default();
        assert_eq!(gate.current(), None);
        let first = gate.hit(&limit(None));
        let first_wait = first.until_instant - Instant::now();
        assert!(
            first_wait > NO_RESET_INITIAL - Duration::from_secs(1),
            "{first_wait:?}"
        );
        assert!(first_wait <= NO_RESET_INITIAL, "{first_wait:?}");
        assert_eq!(gate.current(), Some(first));
        // The pause ends (as if its time had come).
        gate.lock().pause.as_mut().unwrap().until_instant = Instant::now();
        assert_eq!(gate.current(), None, "an expired pause is over");
        let second = gate.hit(&limit(None));
        assert!(
            second.until_instant - Instant::now() > NO_RESET_INITIAL * 2 - Duration::from_secs(1)
        );
        gate.completed();
        gate.lock().pause = None;
        let third = gate.hit(&limit(None));
        assert!(third.until_instant - Instant::now() <= NO_RESET_INITIAL);
    }

    #[test]
    fn the_reason_names_the_reset_time() {
        let pause = Pause {
            until: unix(1_796_183_380),
            until_instant: Instant::now(),
            kind: Some("five_hour".into()),
            resets_at: Some(1_796_183_377),
        };
        let reason = pause.reason("You've hit your 5-hour limit");
        assert_eq!(
            reason,
            "usage limit reached (five_hour); resets at 2026-12-02T03:49:37Z; this sandbox \
             takes no task until 2026-12-02T03:49:40Z: You've hit your 5-hour limit"
        );
    }
}
