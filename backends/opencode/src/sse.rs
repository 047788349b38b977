//! A minimal Server-Sent Events decoder for opencode's `GET /event` stream: it yields the
//! `data` of each event (multi-line data joined with `\n`); comments, `event:`, `id:` and
//! `retry:` fields are ignored, as opencode puts everything into `data`.

/// Incremental SSE decoder: feed it bytes as they arrive, take complete events out.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    data: Vec<String>,
}

impl SseDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and returns the `data` of every event they completed, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line(&line, &mut out);
        }
        out
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<String>) {
        if line.is_empty() {
            if !self.data.is_empty() {
                out.push(std::mem::take(&mut self.data).join("\n"));
            }
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
    fn joins_multi_line_data_and_ignores_other_fields() {
        let mut d = SseDecoder::new();
        let events = d.push(b"event: message\nid: 3\ndata: one\ndata:two\nretry: 5\n\n\n");
        assert_eq!(events, vec!["one\ntwo".to_owned()]);
    }
}
