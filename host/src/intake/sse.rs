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
    has_fields: bool,
}

impl SseParser {
    /// A parser that refuses lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            line: Vec::new(),
            last_was_cr: false,
            event: String::new(),
            id: None,
            data: Vec::new(),
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
                b'\n' => self.end_line(&mut out),
                b'\r' => {
                    self.last_was_cr = true;
                    self.end_line(&mut out);
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

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
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
            self.has_fields = false;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "id" => self.id = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            _ => return,
        }
        self.has_fields = true;
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
}
