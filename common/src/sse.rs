//! The one Server-Sent Events parser: incremental, bounded (a line, and the `data` of one
//! event, are capped) and reading each byte once (no rescans of what it holds). It serves the
//! bridge's event stream (`event:`, `id:`, `data:`, `:` comments, blank line dispatches) and
//! opencode's `GET /event` stream.
//!
//! [`SseParser::feed`] refuses a stream that passes a cap (the bridge reconnects);
//! [`SseParser::feed_lossy`] drops the oversized event up to its end and goes on (opencode).

/// One dispatched SSE event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; empty when none was sent.
    pub event: String,
    /// The last `id:` field of the event, when one was sent.
    pub id: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Error from [`SseParser::feed`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    /// A single line grew beyond the parser's limit.
    #[error("SSE line longer than {0} bytes")]
    LineTooLong(usize),
    /// The `data` of one event (never dispatched by a blank line) grew beyond the limit.
    #[error("SSE event larger than {0} bytes")]
    EventTooLong(usize),
}

/// Feeds bytes in, gets events out. Lines may end in `\n`, `\r\n` or `\r`.
#[derive(Debug)]
pub struct SseParser {
    max_line: usize,
    line: Vec<u8>,
    last_was_cr: bool,
    event: String,
    id: Option<String>,
    data: Vec<String>,
    data_len: usize,
    has_fields: bool,
    /// Lossy mode: the rest of an oversized line is being skipped up to its end.
    skipping_line: bool,
    /// Lossy mode: the rest of an oversized event is being skipped up to its blank line.
    skipping_event: bool,
}

impl SseParser {
    /// A parser that refuses a line, or the `data` of one event, longer than `max_line`
    /// bytes: what it holds is bounded by twice that, whatever the stream sends.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            line: Vec::new(),
            last_was_cr: false,
            event: String::new(),
            id: None,
            data: Vec::new(),
            data_len: 0,
            has_fields: false,
            skipping_line: false,
            skipping_event: false,
        }
    }

    /// Consumes a chunk and returns the events it completed; the first line or event past the
    /// cap is an error (what follows it in `chunk` is not read).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        self.run(chunk, &mut out, None)?;
        Ok(out)
    }

    /// Consumes a chunk and returns the events it completed. A line or an event past the cap
    /// is dropped up to its end (`on_drop` is told why) and parsing goes on with the next one.
    pub fn feed_lossy(&mut self, chunk: &[u8], mut on_drop: impl FnMut(SseError)) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let result = self.run(chunk, &mut out, Some(&mut on_drop));
        debug_assert!(result.is_ok(), "lossy mode never fails");
        out
    }

    /// Bytes of the unfinished line held now (at most the cap).
    pub fn held_line_bytes(&self) -> usize {
        self.line.len()
    }

    /// Bytes of `data` of the undispatched event held now (at most the cap).
    pub fn held_data_bytes(&self) -> usize {
        self.data_len
    }

    fn run(
        &mut self,
        chunk: &[u8],
        out: &mut Vec<SseEvent>,
        mut lossy: Option<&mut dyn FnMut(SseError)>,
    ) -> Result<(), SseError> {
        for &b in chunk {
            if self.last_was_cr {
                self.last_was_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            let ended = match b {
                b'\n' => true,
                b'\r' => {
                    self.last_was_cr = true;
                    true
                }
                _ => false,
            };
            if ended {
                if std::mem::take(&mut self.skipping_line) {
                    continue;
                }
                if let Err(e) = self.end_line(out) {
                    self.overflow(e, &mut lossy)?;
                }
            } else if !self.skipping_line {
                if self.line.len() >= self.max_line {
                    self.line.clear();
                    self.skipping_line = true;
                    self.overflow(SseError::LineTooLong(self.max_line), &mut lossy)?;
                } else {
                    self.line.push(b);
                }
            }
        }
        Ok(())
    }

    /// A cap was passed: an error in strict mode; in lossy mode the event is dropped up to its
    /// blank line and `on_drop` is told.
    fn overflow(
        &mut self,
        error: SseError,
        lossy: &mut Option<&mut dyn FnMut(SseError)>,
    ) -> Result<(), SseError> {
        let Some(on_drop) = lossy else {
            return Err(error);
        };
        self.data.clear();
        self.data_len = 0;
        self.event.clear();
        self.id = None;
        self.has_fields = false;
        self.skipping_event = true;
        on_drop(error);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let line = std::mem::take(&mut self.line);
        if self.skipping_event {
            if line.is_empty() {
                self.skipping_event = false;
            }
            return Ok(());
        }
        let line = String::from_utf8_lossy(&line);
        if line.is_empty() {
            if self.has_fields {
                out.push(SseEvent {
                    event: std::mem::take(&mut self.event),
                    id: self.id.take(),
                    data: std::mem::take(&mut self.data).join("\n"),
                });
            }
            self.data_len = 0;
            self.has_fields = false;
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "id" => self.id = Some(value.to_owned()),
            "data" => {
                self.data_len += value.len() + 1;
                if self.data_len > self.max_line {
                    self.data.clear();
                    self.data_len = 0;
                    return Err(SseError::EventTooLong(self.max_line));
                }
                self.data.push(value.to_owned());
            }
            _ => return Ok(()),
        }
        self.has_fields = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_comments_and_multiline_data() {
        let mut p = SseParser::new(1024);
        let text = b":keepalive\n\nevent: client_event\nid: 7\ndata: {\"a\":\ndata: 1}\n\n";
        let ev = p.feed(text).unwrap();
        assert_eq!(
            ev,
            vec![SseEvent {
                event: "client_event".into(),
                id: Some("7".into()),
                data: "{\"a\":\n1}".into()
            }]
        );
    }

    #[test]
    fn handles_split_chunks_and_crlf() {
        let mut p = SseParser::new(1024);
        let mut all = Vec::new();
        for piece in [
            &b"id: 1\r"[..],
            b"\ndata: x\r\n",
            b"\r\n",
            b"data: y\n",
            b"\n",
        ] {
            all.extend(p.feed(piece).unwrap());
        }
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].id.as_deref(), Some("1"));
        assert_eq!(all[0].data, "x");
        assert_eq!(all[1].data, "y");
        assert_eq!(all[1].id, None);
    }

    #[test]
    fn refuses_overlong_lines() {
        let mut p = SseParser::new(4);
        assert_eq!(p.feed(b"data: long"), Err(SseError::LineTooLong(4)));
    }

    #[test]
    fn lossy_mode_drops_the_oversized_event_and_goes_on() {
        let mut p = SseParser::new(16);
        let mut dropped = Vec::new();
        let ev = p.feed_lossy(
            b"id: 1\ndata: far too long for the cap\nid: 2\n\nid: 3\ndata: ok\n\n",
            |e| dropped.push(e),
        );
        assert_eq!(dropped, [SseError::LineTooLong(16)]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].id.as_deref(), Some("3"));
        assert_eq!(ev[0].data, "ok");
        assert!(p.held_line_bytes() == 0 && p.held_data_bytes() == 0);
    }

    #[test]
    fn refuses_an_event_that_is_never_dispatched() {
        // Short lines, but one event that never ends: refused once its data passes the cap.
        let mut p = SseParser::new(64);
        let mut result = Ok(Vec::new());
        for _ in 0..100 {
            result = p.feed(b"data: 0123456789\n");
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::EventTooLong(64)));
        // Dispatched events reset the count.
        let mut p = SseParser::new(64);
        for _ in 0..100 {
            assert_eq!(p.feed(b"data: 0123456789\n\n").unwrap().len(), 1);
        }
    }
}
