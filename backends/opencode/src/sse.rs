//! A minimal Server-Sent Events decoder for opencode's `GET /event` stream: it yields the
//! `data` of each event (multi-line data joined with `\n`); comments, `event:`, `id:` and
//! `retry:` fields are ignored, as opencode puts everything into `data`.

/// The largest line, and the largest `data` of one event, the decoder holds: past it the
/// event is dropped with a warning (an opencode event is a few KiB; a file diff can be large).
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Incremental SSE decoder: feed it bytes as they arrive, take complete events out. What it
/// holds is bounded by [`MAX_EVENT_BYTES`] (twice, at most) whatever the stream sends.
#[derive(Debug)]
pub struct SseDecoder {
    buf: Vec<u8>,
    data: Vec<String>,
    data_len: usize,
    max: usize,
    /// An oversized line or event is being skipped up to its end.
    skipping_line: bool,
    skipping_event: bool,
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
            buf: Vec::new(),
            data: Vec::new(),
            data_len: 0,
            max,
            skipping_line: false,
            skipping_event: false,
        }
    }

    /// Adds bytes and returns the `data` of every event they completed, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            if std::mem::take(&mut self.skipping_line) {
                continue;
            }
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line(&line, &mut out);
        }
        if self.buf.len() > self.max {
            tracing::warn!(
                limit = self.max,
                "opencode sent an event line larger than the limit; dropping that event"
            );
            self.buf.clear();
            self.skipping_line = true;
            self.drop_event();
        }
        out
    }

    fn drop_event(&mut self) {
        self.data.clear();
        self.data_len = 0;
        self.skipping_event = true;
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<String>) {
        if line.is_empty() {
            if !std::mem::take(&mut self.skipping_event) && !self.data.is_empty() {
                out.push(std::mem::take(&mut self.data).join("\n"));
            }
            self.data.clear();
            self.data_len = 0;
            return;
        }
        if self.skipping_event {
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            self.data_len += value.len() + 1;
            if self.data_len > self.max {
                tracing::warn!(
                    limit = self.max,
                    "opencode sent an event larger than the limit; dropping it"
                );
                self.drop_event();
                return;
            }
            self.data.push(String::from_utf8_lossy(value).into_owned());
        }
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
        assert!(d.buf.len() <= 32);
        assert!(
            d.push(b"yyy\n\n").is_empty(),
            "the rest of that event is dropped"
        );
        // …an event of many short lines that is never dispatched within the limit…
        for _ in 0..10 {
            assert!(d.push(b"data: 0123456789\n").is_empty());
        }
        assert!(d.data_len <= 32);
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
