//! Reading the CLI's output: stdout lines of any length (the bounded stderr tail is
//! `agentserver_common::process::StderrTail`).

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
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
}
