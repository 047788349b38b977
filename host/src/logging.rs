//! The process's log output: `tracing` to stderr through a writer that scrubs every secret
//! value the process holds ([`crate::secret::redact`]) from each line, whichever crate wrote it
//! (our own, or a dependency's `log` records such as tungstenite's TRACE dump of the WebSocket
//! handshake request) and whatever `RUST_LOG` says.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How log lines look (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line (for log shippers): `timestamp`, `level`, `target`, `fields`
    /// (with `message`), and the span. Secrets are scrubbed as in text lines.
    Json,
}

static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Whether the process logs JSON lines: then the commands' own progress lines on stderr
/// go through `tracing` too, so stderr stays one JSON object a line.
pub fn json_logs() -> bool {
    JSON_LOGS.load(Ordering::Relaxed)
}

/// A progress line for the terminal: `eprintln!` with text logs, an INFO event with JSON
/// logs.
pub fn notice(message: &str) {
    if json_logs() {
        tracing::info!(target: "agentserver", "{message}");
    } else {
        // Not through the log writer: scrubbed here.
        match crate::secret::redact(message) {
            Some(clean) => eprintln!("{clean}"),
            None => eprintln!("{message}"),
        }
    }
}

/// The filter for `-v` counts (0, 1, 2+) when `RUST_LOG` is not set.
pub fn default_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "warn,agentserver=info,agentserver_mock::tasks=info",
        1 => "info,agentserver=debug,agentserver_mux=debug,agentserver_mock=debug",
        _ => "debug,agentserver=trace,agentserver_mux=trace,agentserver_mock=trace",
    }
}

/// Installs the global subscriber: `RUST_LOG` wins over `verbose`; lines go to `writer` with
/// secrets scrubbed; targets are shown when `verbose > 0` (always in JSON).
pub fn init<W>(verbose: u8, ansi: bool, format: LogFormat, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    use tracing_subscriber::util::SubscriberInitExt;
    // A second init (tests) keeps the first subscriber. `log` records (tungstenite's among
    // them) are forwarded too.
    if subscriber(verbose, ansi, format, writer).try_init().is_ok() {
        JSON_LOGS.store(format == LogFormat::Json, Ordering::Relaxed);
    }
}

/// The subscriber [`init`] installs, every line through [`Redacting`].
pub fn subscriber<W>(
    verbose: u8,
    ansi: bool,
    format: LogFormat,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_filter(verbose)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Redacting(writer));
    match format {
        LogFormat::Text => Box::new(builder.with_target(verbose > 0).with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .with_ansi(false)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// A [`MakeWriter`] whose writers hold each formatted line and scrub it before passing it on.
#[derive(Clone, Debug)]
pub struct Redacting<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            line: Vec::new(),
            inner: self.0.make_writer(),
        }
    }
}

/// Collects one event's output (the fmt layer writes an event, then drops its writer) and
/// writes it, secrets replaced by `***`, when flushed or dropped.
pub struct RedactingWriter<W: Write> {
    line: Vec<u8>,
    inner: W,
}

impl<W: Write> RedactingWriter<W> {
    fn pass_on(&mut self) -> io::Result<()> {
        if self.line.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.line);
        let result = match crate::secret::redact(&text) {
            Some(clean) => self.inner.write_all(clean.as_bytes()),
            None => self.inner.write_all(&self.line),
        };
        self.line.clear();
        result
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.pass_on()?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.pass_on();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_writer_scrubs_registered_secrets_from_each_line() {
        let token = crate::secret::Secret::new("tunnel-token-for-the-writer-test");
        let sink = Sink::default();
        let make = Redacting({
            let sink = sink.clone();
            move || sink.clone()
        });
        {
            let mut w = make.make_writer();
            write!(w, "Request: \"GET /api/tunnel/x?to").unwrap();
            writeln!(w, "ken={} HTTP/1.1\"", token.expose()).unwrap();
        }
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out, "Request: \"GET /api/tunnel/x?token=*** HTTP/1.1\"\n");
    }

    #[test]
    fn json_lines_are_one_object_each_and_scrubbed() {
        let token = crate::secret::Secret::new("proxy-token-for-the-json-log-test");
        let sink = Sink::default();
        let subscriber = subscriber(0, false, LogFormat::Json, {
            let sink = sink.clone();
            move || sink.clone()
        });
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("task", id = "t1");
            let _entered = span.enter();
            tracing::warn!(url = %format!("http://x/?token={}", token.expose()), "dialing with {}", token.expose());
            tracing::warn!(header = ?format!("Bearer {}", token.expose()), "second");
        });
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(!out.contains(token.expose()), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        for line in lines {
            let value: serde_json::Value = serde_json::from_str(line).expect(line);
            assert_eq!(value["level"], "WARN", "{line}");
            assert_eq!(value["span"]["id"], "t1", "{line}");
        }
        assert!(out.contains("dialing with ***"), "{out}");
    }
}
