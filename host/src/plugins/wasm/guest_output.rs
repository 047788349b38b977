//! A guest's stdout and stderr: each line goes to the host log at INFO (stdout) or WARN
//! (stderr), prefixed with the plugin's name, bounded per task; the last lines are kept for the
//! failure reason of a task whose guest trapped (a Python traceback, a thrown JS error).
//!
//! Writes never block and never fail: output past the bounds is counted and dropped, so a
//! chatty guest cannot stall or trap on its own logging.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Most lines of one task's output written to the host log.
pub const MAX_LOGGED_LINES: usize = 200;
/// Most characters of one line written to the host log or kept for the failure reason.
pub const MAX_LINE_CHARS: usize = 1000;
/// How many of the last lines a failure reason quotes.
pub const TAIL_LINES: usize = 12;
/// The longest partial line buffered while waiting for its newline.
const MAX_PENDING_BYTES: usize = 16 << 10;

/// Which stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Stdout,
    Stderr,
}

#[derive(Debug, Default)]
struct State {
    pending: Vec<u8>,
    tail: VecDeque<String>,
    logged: usize,
    dropped: usize,
}

/// One task's guest output (stdout and stderr share the tail, in order).
#[derive(Clone, Debug)]
pub(super) struct GuestOutput {
    plugin: Arc<str>,
    state: Arc<Mutex<[State; 2]>>,
}

impl GuestOutput {
    pub(super) fn new(plugin: Arc<str>) -> Self {
        Self {
            plugin,
            state: Arc::default(),
        }
    }

    /// The stream to give WASI as the guest's stdout.
    pub(super) fn stdout(&self) -> GuestStream {
        GuestStream {
            output: self.clone(),
            which: Which::Stdout,
        }
    }

    /// The stream to give WASI as the guest's stderr.
    pub(super) fn stderr(&self) -> GuestStream {
        GuestStream {
            output: self.clone(),
            which: Which::Stderr,
        }
    }

    fn write(&self, which: Which, bytes: &[u8]) {
        let mut states = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut states[which as usize];
        state.pending.extend_from_slice(bytes);
        while let Some(end) = state.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = state.pending.drain(..=end).collect();
            self.line(which, state, &line[..line.len() - 1]);
        }
        if state.pending.len() > MAX_PENDING_BYTES {
            let line = std::mem::take(&mut state.pending);
            self.line(which, state, &line);
        }
    }

    fn line(&self, which: Which, state: &mut State, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches('\r');
        let text: String = match text.char_indices().nth(MAX_LINE_CHARS) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text.to_owned(),
        };
        if state.logged < MAX_LOGGED_LINES {
            state.logged += 1;
            let plugin = &*self.plugin;
            match which {
                Which::Stdout => tracing::info!(plugin, "[{plugin} stdout] {text}"),
                Which::Stderr => tracing::warn!(plugin, "[{plugin} stderr] {text}"),
            }
        } else {
            if state.dropped == 0 {
                tracing::warn!(
                    plugin = &*self.plugin,
                    "[{} {}] more than {MAX_LOGGED_LINES} lines; the rest is not logged",
                    self.plugin,
                    if which == Which::Stdout {
                        "stdout"
                    } else {
                        "stderr"
                    }
                );
            }
            state.dropped += 1;
        }
        if state.tail.len() == TAIL_LINES {
            state.tail.pop_front();
        }
        state.tail.push_back(text);
    }

    /// Flushes partial lines to the log (the task is over).
    pub(super) fn finish(&self) {
        let mut states = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for which in [Which::Stdout, Which::Stderr] {
            let state = &mut states[which as usize];
            if !state.pending.is_empty() {
                let line = std::mem::take(&mut state.pending);
                self.line(which, state, &line);
            }
        }
    }

    /// The last lines of stderr, else of stdout, as one `; `-joined text (`None` when the guest
    /// wrote nothing).
    pub(super) fn tail(&self) -> Option<(&'static str, String)> {
        self.finish();
        let states = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (which, name) in [(Which::Stderr, "stderr"), (Which::Stdout, "stdout")] {
            let tail = &states[which as usize].tail;
            let lines: Vec<&str> = tail
                .iter()
                .map(|l| l.trim())
                .filter(|l| !l.is_empty())
                .collect();
            if !lines.is_empty() {
                return Some((name, lines.join(" | ")));
            }
        }
        None
    }
}

/// One of a task's two output streams, as WASI sees it.
#[derive(Clone, Debug)]
pub(super) struct GuestStream {
    output: GuestOutput,
    which: Which,
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestStream {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.output.write(self.which, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for GuestStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.output.write(self.which, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_bounded_and_the_tail_prefers_stderr() {
        let out = GuestOutput::new(Arc::from("p"));
        let mut stdout = out.stdout();
        OutputStream::write(&mut stdout, Bytes::from_static(b"hello\nwor")).unwrap();
        assert_eq!(out.tail(), Some(("stdout", "hello | wor".to_owned())));
        let mut stderr = out.stderr();
        let long = "x".repeat(MAX_LINE_CHARS + 50);
        for i in 0..(TAIL_LINES + 3) {
            let line = format!("err {i} {long}\n");
            OutputStream::write(&mut stderr, Bytes::from(line)).unwrap();
        }
        let (which, tail) = out.tail().unwrap();
        assert_eq!(which, "stderr");
        assert!(!tail.contains("err 2 "), "only the last lines are kept");
        assert!(tail.contains(&format!("err {} ", TAIL_LINES + 2)));
        assert!(tail.len() < TAIL_LINES * (MAX_LINE_CHARS + 20));
    }
}
