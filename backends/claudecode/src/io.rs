//! Reading the CLI's output: stdout lines of any length, and a bounded ring of stderr.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

/// One item read from stdout.
#[derive(Debug)]
pub(crate) enum LineItem {
    /// A line (newline and surrounding whitespace removed), valid UTF-8, not empty.
    Text(String),
    /// An empty or all-whitespace line.
    Blank,
    /// A line that is not UTF-8.
    NotUtf8,
    /// A line longer than the limit (its length in bytes); its content was discarded.
    Oversized(usize),
    /// A read error; nothing follows.
    Failed(std::io::Error),
}

/// Reads `reader` line by line until EOF, sending each line to `tx`. Lines of any length up to
/// `max_line` are kept whole; longer ones are reported as [`LineItem::Oversized`] without
/// holding them in memory. Stops early if the receiver goes away.
pub(crate) async fn read_lines<R: AsyncRead + Unpin>(
    reader: R,
    max_line: usize,
    tx: mpsc::Sender<LineItem>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut line: Vec<u8> = Vec::new();
    let mut line_len = 0usize;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok(chunk) => chunk,
            Err(err) => {
                let _ = tx.send(LineItem::Failed(err)).await;
                return;
            }
        };
        if chunk.is_empty() {
            if line_len > 0 {
                let _ = tx
                    .send(classify(std::mem::take(&mut line), line_len, max_line))
                    .await;
            }
            return;
        }
        let (take, complete) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if line_len + take <= max_line {
            line.extend_from_slice(&chunk[..take]);
        } else {
            line = Vec::new();
        }
        line_len += take;
        reader.consume(take + usize::from(complete));
        if complete {
            let item = classify(std::mem::take(&mut line), line_len, max_line);
            line_len = 0;
            if tx.send(item).await.is_err() {
                return;
            }
        }
    }
}

fn classify(line: Vec<u8>, len: usize, max_line: usize) -> LineItem {
    if len > max_line {
        return LineItem::Oversized(len);
    }
    match String::from_utf8(line) {
        Ok(text) => {
            let trimmed = text.trim();
            if trimmed.is_empty() {
                LineItem::Blank
            } else if trimmed.len() == text.len() {
                LineItem::Text(text)
            } else {
                LineItem::Text(trimmed.to_owned())
            }
        }
        Err(_) => LineItem::NotUtf8,
    }
}

/// The newest bytes of a stream, bounded.
#[derive(Debug)]
pub(crate) struct Ring {
    buf: VecDeque<u8>,
    cap: usize,
    total: u64,
}

impl Ring {
    /// A ring keeping at most `cap` bytes.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            buf: VecDeque::with_capacity(cap.min(64 * 1024)),
            cap,
            total: 0,
        }
    }

    /// Appends bytes, dropping the oldest beyond the capacity.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if self.cap == 0 {
            return;
        }
        let data = if data.len() > self.cap {
            &data[data.len() - self.cap..]
        } else {
            data
        };
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }

    /// The newest `n` bytes (all if fewer).
    pub(crate) fn tail(&self, n: usize) -> Vec<u8> {
        let skip = self.buf.len().saturating_sub(n);
        self.buf.iter().skip(skip).copied().collect()
    }

    /// Everything kept.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        self.buf.iter().copied().collect()
    }

    /// Bytes ever pushed.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.total = 0;
    }
}

/// Copies `reader` into `ring` until EOF, logging each chunk at trace level.
pub(crate) async fn collect_stderr<R: AsyncRead + Unpin>(mut reader: R, ring: Arc<Mutex<Ring>>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                tracing::trace!(stderr = %String::from_utf8_lossy(&buf[..n]), "claude stderr");
                crate::lock(&ring).push(&buf[..n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8], max: usize) -> Vec<String> {
        let (tx, mut rx) = mpsc::channel(4);
        let data = input.to_vec();
        let reader = tokio::spawn(async move { read_lines(&data[..], max, tx).await });
        let mut out = Vec::new();
        while let Some(item) = rx.recv().await {
            out.push(match item {
                LineItem::Text(t) => format!("T:{t}"),
                LineItem::Blank => "B".into(),
                LineItem::NotUtf8 => "U".into(),
                LineItem::Oversized(n) => format!("O:{n}"),
                LineItem::Failed(e) => format!("E:{e}"),
            });
        }
        reader.await.unwrap();
        out
    }

    #[tokio::test]
    async fn splits_lines_and_classifies() {
        let out = lines_of(b"{\"a\":1}\n\n  \r\n\xff\xfe\n{\"b\":2}\r\nlast", 100).await;
        assert_eq!(out, ["T:{\"a\":1}", "B", "B", "U", "T:{\"b\":2}", "T:last"]);
    }

    #[tokio::test]
    async fn long_lines_whole_and_oversized_skipped() {
        let big = "x".repeat(300_000);
        let input = format!("{big}\nshort\n{big}{big}\nend\n");
        let out = lines_of(input.as_bytes(), 400_000).await;
        assert_eq!(out.len(), 4);
        assert_eq!(out[0].len(), 2 + 300_000);
        assert_eq!(out[1], "T:short");
        assert_eq!(out[2], "O:600000");
        assert_eq!(out[3], "T:end");
    }

    #[test]
    fn ring_keeps_newest() {
        let mut r = Ring::new(5);
        r.push(b"abc");
        r.push(b"defg");
        assert_eq!(r.to_vec(), b"cdefg");
        assert_eq!(r.tail(2), b"fg");
        r.push(b"0123456789");
        assert_eq!(r.to_vec(), b"56789");
        assert_eq!(r.total(), 17);
        r.clear();
        assert!(r.to_vec().is_empty());
    }
}
