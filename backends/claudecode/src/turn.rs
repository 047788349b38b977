//! The pure steps of supervising one `claude` run: what the loop in `driver::supervise` knows
//! so far ([`Turn`]), when it stops waiting ([`Turn::deadline`], [`Turn::on_quiet`]), what
//! each stdout line means ([`Turn::on_line`]) and the outcome a run ends with
//! ([`final_outcome`]). No I/O and no clock reads here, so each step is unit-tested.

use std::process::ExitStatus;
use std::time::Duration;

use agentserver_plugin_api::{FailureKind, TaskEvent, TaskOutcome, TaskStatus, UsageLimit};
use serde_json::Value;
use tokio::time::Instant;

use crate::config::ClaudeCodeConfig;
use crate::driver::{Ending, RunStats};
use crate::io::LineItem;
use crate::protocol::{Peek, ResultInfo, control_response};

/// What the supervision loop knows about the run so far.
#[derive(Debug)]
pub(crate) struct Turn {
    /// The `result` message, once it came.
    pub(crate) result: Option<ResultInfo>,
    result_at: Option<Instant>,
    /// The exit status and when it was seen.
    pub(crate) exited: Option<(ExitStatus, Instant)>,
    /// The last `rate_limit_event` that said a limit rejects requests (`status: rejected`).
    pub(crate) rate_limit: Option<UsageLimit>,
    last_line_at: Instant,
}

/// What to do with one stdout line.
#[derive(Debug)]
pub(crate) enum LineStep {
    /// Nothing (counted in the stats).
    Skip,
    /// A control request: write this answer to the CLI's stdin; nothing is forwarded.
    Answer(String),
    /// Forward the event; `close_stdin` after the first `result` (a one-shot query: closing
    /// stdin lets the CLI exit).
    Emit {
        /// The line as a task event, byte for byte.
        event: TaskEvent,
        /// Whether this line was the result.
        close_stdin: bool,
    },
}

impl Turn {
    /// A run that started at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            result: None,
            result_at: None,
            exited: None,
            rate_limit: None,
            last_line_at: now,
        }
    }

    /// Until when to wait for the next line: the idle timeout before a result; the
    /// post-result exit timeout after it; after the exit, until stdout has been quiet that
    /// long (bounded).
    pub(crate) fn deadline(&self, config: &ClaudeCodeConfig) -> Instant {
        match (self.exited, self.result_at) {
            (Some((_, at)), _) => (at.max(self.last_line_at) + config.post_result_exit_timeout)
                .min(at + config.idle_timeout.max(config.post_result_exit_timeout)),
            (None, Some(at)) => at + config.post_result_exit_timeout,
            (None, None) => self.last_line_at + config.idle_timeout,
        }
    }

    /// How the run ends when the deadline passes with no line.
    pub(crate) fn on_quiet(&self) -> Ending {
        match (self.exited, self.result.is_some()) {
            // Exited, but something it started still holds stdout open.
            (Some(_), _) => Ending::Exited,
            (None, true) => Ending::NoExitAfterResult,
            (None, false) => Ending::IdleTimeout,
        }
    }

    /// The CLI exited at `at`.
    pub(crate) fn on_exit(&mut self, status: ExitStatus, at: Instant) {
        self.exited = Some((status, at));
    }

    /// One stdout item, read at `now`.
    pub(crate) fn on_line(
        &mut self,
        item: LineItem,
        now: Instant,
        stats: &mut RunStats,
    ) -> LineStep {
        self.last_line_at = now;
        let text = match item {
            LineItem::Text(text) => text,
            LineItem::Blank => {
                stats.blank_lines += 1;
                return LineStep::Skip;
            }
            LineItem::NotUtf8 => {
                stats.invalid_lines += 1;
                return LineStep::Skip;
            }
            LineItem::Oversized(len) => {
                stats.oversized_lines += 1;
                tracing::warn!(len, "skipped an oversized stdout line from claude");
                return LineStep::Skip;
            }
            LineItem::Failed(err) => {
                tracing::warn!(%err, "reading claude's stdout failed");
                return LineStep::Skip;
            }
        };
        let Some(peek) = Peek::parse(&text) else {
            stats.invalid_lines += 1;
            tracing::debug!(line = %crate::driver::truncate(&text, 200), "skipped a non-JSON stdout line from claude");
            return LineStep::Skip;
        };
        let mut close_stdin = false;
        match peek.kind() {
            Some("control_request") => {
                stats.control_requests += 1;
                return serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| control_response(&v))
                    .map_or(LineStep::Skip, LineStep::Answer);
            }
            Some("rate_limit_event") => {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    self.on_rate_limit_event(&v);
                }
            }
            Some("result") if self.result.is_none() => {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    self.result = Some(ResultInfo::from_value(&v));
                    self.result_at = Some(now);
                    stats.saw_result = true;
                    close_stdin = true;
                }
            }
            _ => {}
        }
        match TaskEvent::from_json(&text) {
            Ok(event) => {
                stats.events += 1;
                LineStep::Emit { event, close_stdin }
            }
            Err(_) => {
                stats.invalid_lines += 1;
                LineStep::Skip
            }
        }
    }
}

impl Turn {
    /// A `rate_limit_event` (`{"rate_limit_info": {"status", "resetsAt", "rateLimitType"}}`):
    /// `rejected` means requests fail until `resetsAt` (Unix seconds); `allowed` (and the
    /// warnings) clear what an earlier event said.
    fn on_rate_limit_event(&mut self, event: &Value) {
        let info = event.get("rate_limit_info");
        let field = |k: &str| info.and_then(|i| i.get(k));
        if field("status").and_then(Value::as_str) == Some("rejected") {
            self.rate_limit = Some(UsageLimit {
                resets_at: field("resetsAt").and_then(Value::as_u64),
                kind: field("rateLimitType")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            });
        } else {
            self.rate_limit = None;
        }
    }
}

/// The usage limit a failed run ran into: what a `rejected` rate-limit event said, else a 429
/// from the API (no reset time: claude does not pass `retry-after` on).
fn usage_limit_of(result: &ResultInfo, rate_limit: Option<&UsageLimit>) -> Option<UsageLimit> {
    if !result.is_error {
        return None;
    }
    match rate_limit {
        Some(limit) => Some(limit.clone()),
        None if result.api_error_status == Some(429) => Some(UsageLimit {
            resets_at: None,
            kind: Some("rate_limit".to_owned()),
        }),
        None => None,
    }
}

/// The outcome of a run that ended with `ending`: the result message decides when there is
/// one (an API error's reason gains the stderr tail, which may say more); otherwise the
/// ending does, with the exit status and the stderr tail in the reason.
pub(crate) fn final_outcome(
    ending: Ending,
    result: Option<&ResultInfo>,
    rate_limit: Option<&UsageLimit>,
    exit_status: Option<&str>,
    stderr_text: &str,
    idle_timeout: Duration,
) -> TaskOutcome {
    let stderr_tail = if stderr_text.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr_text}")
    };
    if let Some(result) = result {
        let mut outcome = result.to_outcome();
        if outcome.status == TaskStatus::Failed
            && result.is_api_error()
            && let Some(reason) = outcome.failure_reason.as_mut()
            && !stderr_text.is_empty()
            && !reason.contains(stderr_text)
        {
            reason.push_str(&stderr_tail);
        }
        outcome.usage_limit = usage_limit_of(result, rate_limit);
        return outcome;
    }
    let exit = exit_status.unwrap_or("an unknown status");
    match ending {
        Ending::Cancelled => TaskOutcome::cancelled("task cancelled"),
        Ending::IdleTimeout => TaskOutcome::failed(
            FailureKind::System,
            format!(
                "claude printed nothing for {}s before its result (stuck mid-turn) and was killed{stderr_tail}",
                idle_timeout.as_secs_f64()
            ),
        ),
        Ending::NoExit => TaskOutcome::failed(
            FailureKind::System,
            format!(
                "claude closed its output without a result and did not exit; killed{stderr_tail}"
            ),
        ),
        _ => TaskOutcome::failed(
            FailureKind::System,
            format!("claude exited with {exit} without a result message{stderr_tail}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn config() -> ClaudeCodeConfig {
        ClaudeCodeConfig {
            idle_timeout: Duration::from_secs(100),
            post_result_exit_timeout: Duration::from_secs(10),
            ..ClaudeCodeConfig::default()
        }
    }

    fn text(line: &str) -> LineItem {
        LineItem::Text(line.to_owned())
    }

    #[test]
    fn deadlines_follow_the_phase_of_the_run() {
        let config = config();
        let t0 = Instant::now();
        let mut turn = Turn::new(t0);
        assert_eq!(turn.deadline(&config), t0 + Duration::from_secs(100));
        assert_eq!(turn.on_quiet(), Ending::IdleTimeout);
        let mut stats = RunStats::default();
        let at = t0 + Duration::from_secs(1);
        turn.on_line(
            text(r#"{"type":"result","subtype":"success","is_error":false}"#),
            at,
            &mut stats,
        );
        assert_eq!(turn.deadline(&config), at + Duration::from_secs(10));
        assert_eq!(turn.on_quiet(), Ending::NoExitAfterResult);
        let exit = t0 + Duration::from_secs(2);
        turn.on_exit(ExitStatus::from_raw(0), exit);
        assert_eq!(turn.deadline(&config), exit + Duration::from_secs(10));
        assert_eq!(turn.on_quiet(), Ending::Exited);
    }

    #[test]
    fn after_the_exit_output_is_drained_only_up_to_a_bound() {
        let config = config();
        let t0 = Instant::now();
        let mut turn = Turn::new(t0);
        turn.on_exit(ExitStatus::from_raw(0), t0);
        let mut stats = RunStats::default();
        // A descendant keeps printing long after the exit: the wait still ends at the bound.
        turn.on_line(
            text(r#"{"type":"assistant"}"#),
            t0 + Duration::from_secs(500),
            &mut stats,
        );
        assert_eq!(turn.deadline(&config), t0 + Duration::from_secs(100));
    }

    #[test]
    fn lines_are_skipped_answered_or_forwarded() {
        let mut turn = Turn::new(Instant::now());
        let mut stats = RunStats::default();
        let now = Instant::now();
        assert!(matches!(
            turn.on_line(LineItem::Blank, now, &mut stats),
            LineStep::Skip
        ));
        assert!(matches!(
            turn.on_line(LineItem::NotUtf8, now, &mut stats),
            LineStep::Skip
        ));
        assert!(matches!(
            turn.on_line(LineItem::Oversized(9), now, &mut stats),
            LineStep::Skip
        ));
        assert!(matches!(
            turn.on_line(text("not json"), now, &mut stats),
            LineStep::Skip
        ));
        let ask = r#"{"type":"control_request","request_id":"r1","request":{"subtype":"can_use_tool","tool_name":"Bash","input":{}}}"#;
        assert!(matches!(
            turn.on_line(text(ask), now, &mut stats),
            LineStep::Answer(_)
        ));
        let line = r#"{"type":"assistant","message":{"content":[]}}"#;
        match turn.on_line(text(line), now, &mut stats) {
            LineStep::Emit { event, close_stdin } => {
                assert_eq!(event.as_json(), line);
                assert!(!close_stdin);
            }
            other => panic!("{other:?}"),
        }
        let result = r#"{"type":"result","subtype":"success","is_error":false,"result":"ok"}"#;
        assert!(matches!(
            turn.on_line(text(result), now, &mut stats),
            LineStep::Emit {
                close_stdin: true,
                ..
            }
        ));
        // A second result is forwarded but changes nothing.
        assert!(matches!(
            turn.on_line(text(result), now, &mut stats),
            LineStep::Emit {
                close_stdin: false,
                ..
            }
        ));
        assert_eq!(
            (
                stats.blank_lines,
                stats.invalid_lines,
                stats.oversized_lines
            ),
            (1, 2, 1)
        );
        assert_eq!((stats.control_requests, stats.events), (1, 3));
        assert!(stats.saw_result);
    }

    #[test]
    fn outcomes_without_a_result_say_why_with_the_stderr_tail() {
        let idle = Duration::from_secs(100);
        let cancelled = final_outcome(Ending::Cancelled, None, None, None, "", idle);
        assert_eq!(cancelled.status, TaskStatus::Cancelled);
        let stuck = final_outcome(Ending::IdleTimeout, None, None, None, "boom", idle);
        let reason = stuck.failure_reason.unwrap();
        assert!(reason.contains("printed nothing for 100s"), "{reason}");
        assert!(reason.ends_with("; stderr: boom"), "{reason}");
        let exited = final_outcome(Ending::Exited, None, None, Some("exit status: 3"), "", idle);
        assert_eq!(
            exited.failure_reason.as_deref(),
            Some("claude exited with exit status: 3 without a result message")
        );
        assert_eq!(exited.failure_kind, Some(FailureKind::System));
    }

    #[test]
    fn a_result_decides_and_an_api_error_gains_the_stderr_tail_once() {
        let idle = Duration::from_secs(100);
        let ok = ResultInfo::from_value(
            &serde_json::json!({"subtype":"success","is_error":false,"result":"fine"}),
        );
        let outcome = final_outcome(
            Ending::NoExitAfterResult,
            Some(&ok),
            None,
            None,
            "noise",
            idle,
        );
        assert_eq!(outcome.status, TaskStatus::Completed);
        assert_eq!(outcome.result.as_deref(), Some("fine"));
        let api = ResultInfo::from_value(&serde_json::json!({
            "subtype":"success","is_error":true,"result":"API Error: 500","api_error_status":500
        }));
        let outcome = final_outcome(Ending::Exited, Some(&api), None, None, "retrying", idle);
        let reason = outcome.failure_reason.unwrap();
        assert!(reason.ends_with("; stderr: retrying"), "{reason}");
        assert_eq!(outcome.usage_limit, None);
    }

    #[test]
    fn a_rejected_rate_limit_or_a_429_is_a_usage_limit() {
        let idle = Duration::from_secs(100);
        let mut turn = Turn::new(Instant::now());
        let mut stats = RunStats::default();
        let rejected = r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1796183377,"rateLimitType":"five_hour","isUsingOverage":false}}"#;
        assert!(matches!(
            turn.on_line(text(rejected), Instant::now(), &mut stats),
            LineStep::Emit { .. }
        ));
        let limit = UsageLimit {
            resets_at: Some(1796183377),
            kind: Some("five_hour".into()),
        };
        assert_eq!(turn.rate_limit, Some(limit.clone()));
        let failed = ResultInfo::from_value(&serde_json::json!({
            "subtype":"success","is_error":true,"result":"You've hit your 5-hour limit","api_error_status":429
        }));
        let outcome = final_outcome(
            Ending::Exited,
            Some(&failed),
            turn.rate_limit.as_ref(),
            None,
            "",
            idle,
        );
        assert_eq!(outcome.status, TaskStatus::Failed);
        assert_eq!(outcome.usage_limit, Some(limit));
        // A 429 without an event: a limit with no reset time.
        let outcome = final_outcome(Ending::Exited, Some(&failed), None, None, "", idle);
        assert_eq!(
            outcome.usage_limit,
            Some(UsageLimit {
                resets_at: None,
                kind: Some("rate_limit".into())
            })
        );
        // An `allowed` event clears it; a completed run never carries one.
        let allowed = r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed"}}"#;
        turn.on_line(text(allowed), Instant::now(), &mut stats);
        assert_eq!(turn.rate_limit, None);
        let ok = ResultInfo::from_value(
            &serde_json::json!({"subtype":"success","is_error":false,"result":"fine"}),
        );
        let limit = UsageLimit::default();
        let outcome = final_outcome(Ending::Exited, Some(&ok), Some(&limit), None, "", idle);
        assert_eq!(outcome.usage_limit, None);
    }
}
