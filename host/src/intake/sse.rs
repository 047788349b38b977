//! An incremental Server-Sent Events parser (the subset the bridge uses: `event:`, `id:`,
//! `data:`, `:` comments, blank line dispatches).

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
        }
    }

    /// Consumes a chunk and returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        for &b in chunk {
            if self.last_was_cr {
                self.last_was_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(&mut out)?,
                b'\r' => {
                    self.last_was_cr = true;
                    self.end_line(&mut out)?;
                }
                _ => {
                    if self.line.len() >= self.max_line {
                        return Err(SseError::LineTooLong(self.max_line));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(out)
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let line = std::mem::take(&mut self.line);
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
