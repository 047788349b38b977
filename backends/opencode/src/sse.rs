//! opencode's `GET /event` stream: the `data` of each event (multi-line data joined with
//! `\n`); comments, `event:`, `id:` and `retry:` fields are ignored, as opencode puts
//! everything into `data`. The parsing is the workspace's one SSE parser
//! (`agentserver_common::sse::SseParser`) in its lossy mode: an oversized line or event is
//! dropped with a warning and decoding goes on.

use agentserver_common::sse::{SseError, SseParser};

/// The largest line, and the largest `data` of one event, the decoder holds: past it the
/// event is dropped with a warning (an opencode event is a few KiB; a file diff can be large).
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Incremental SSE decoder: feed it bytes as they arrive, take complete events out. What it
/// holds is bounded by [`MAX_EVENT_BYTES`] (twice, at most) whatever the stream sends.
#[derive(Debug)]
pub struct SseDecoder {
    parser: SseParser,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::with_limit(MAX_EVENT_BYTES)
    }
}

impl SseDecoder {
    /// An empty decoder with the [`MAX_EVENT_BYTES`] limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty decoder that drops lines and events larger than `max` bytes.
    pub fn with_limit(max: usize) -> Self {
        Self {
            parser: SseParser::new(max),
        }
    }

    /// Adds bytes and returns the `data` of every event they completed, in order (events
    /// without data are skipped).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.parser
            .feed_lossy(bytes, |e| match e {
                SseError::LineTooLong(limit) => tracing::warn!(
                    limit,
                    "opencode sent an event line larger than the limit; dropping that event"
                ),
                SseError::EventTooLong(limit) => tracing::warn!(
                    limit,
                    "opencode sent an event larger than the limit; dropping it"
                ),
            })
            .into_iter()
            .filter(|event| !event.data.is_empty())
            .map(|event| event.data)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunks() {
        let mut d = SseDecoder::new();
        assert!(d.push(b"data: {\"a\"").is_empty());
        assert!(d.push(b":1}\n").is_empty());
        assert_eq!(
            d.push(b"\ndata: x\r\n\r\n: comment\n\n"),
            vec!["{\"a\":1}".to_owned(), "x".to_owned()]
        );
    }

    #[test]
    fn oversized_lines_and_events_are_dropped_and_decoding_goes_on() {
        let mut d = SseDecoder::with_limit(32);
        // A line that never ends within the limit…
        assert!(d.push(&[b'x'; 100]).is_empty());
        assert!(d.parser.held_line_bytes() <= 32);
        assert!(
            d.push(b"yyy\n\n").is_empty(),
            "the rest of that event is dropped"
        );
        // …an event of many short lines that is never dispatched within the limit…
        for _ in 0..10 {
            assert!(d.push(b"data: 0123456789\n").is_empty());
        }
        assert!(d.parser.held_data_bytes() <= 32);
        assert!(d.push(b"\n").is_empty());
        // …and the next event is decoded as usual.
        assert_eq!(d.push(b"data: ok\n\n"), vec!["ok".to_owned()]);
    }

    #[test]
    fn joins_multi_line_data_and_ignores_other_fields() {
        let mut d = SseDecoder::new();
        let events = d.push(b"event: message\nid: 3\ndata: one\ndata:two\nretry: 5\n\n\n");
        assert_eq!(events, vec!["one\ntwo".to_owned()]);
    }
}
