//! Terminal streams (spec §12) against a PTY running a stand-in program via `claude_bin`.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use agentserver_backend_claudecode::{
    ClaudeCodeBackend, ClaudeCodeConfig, FRAME_DATA, FRAME_RESIZE, TerminalStatus,
};
use agentserver_plugin_api::Backend;
use support::LIMIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

/// The server's end of one terminal stream.
struct Client {
    io: DuplexStream,
    /// Data received so far (frame type bytes removed).
    seen: Vec<u8>,
    /// The data of the first read (which starts with the first frame).
    first_frame: Option<Vec<u8>>,
    handler: JoinHandle<()>,
}

impl Client {
    fn attach(backend: &ClaudeCodeBackend) -> Self {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let b = backend.clone();
        let handler = tokio::spawn(async move {
            let _ = b.attach_terminal(Box::new(theirs)).await;
        });
        Self {
            io: ours,
            seen: Vec::new(),
            first_frame: None,
            handler,
        }
    }

    async fn send(&mut self, kind: u8, body: &[u8]) {
        let mut frame = vec![kind];
        frame.extend_from_slice(body);
        self.io.write_all(&frame).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// Reads until the received data contains `needle`; panics on EOF or after the limit.
    async fn read_until(&mut self, needle: &str) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        let mut buf = vec![0u8; 1 << 20];
        // Only the bytes that arrived since the last look (plus an overlap) are searched, so
        // draining a lot of output stays linear.
        let mut from = 0;
        while !contains(&self.seen[from..], needle.as_bytes()) {
            from = self.seen.len().saturating_sub(needle.len());
            let n = tokio::time::timeout_at(deadline, self.io.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {needle:?} in time; got {:?}",
                        String::from_utf8_lossy(&self.seen)
                    )
                })
                .unwrap();
            assert!(
                n > 0,
                "stream closed before {needle:?}; got {:?}",
                String::from_utf8_lossy(&self.seen)
            );
            if self.first_frame.is_none() {
                assert_eq!(buf[0], FRAME_DATA, "outbound frames start with 0x00");
                self.first_frame = Some(buf[1..n].to_vec());
            }
            // Frames may be coalesced by the byte stream; the stand-ins never print NUL, so
            // every 0x00 is a frame type byte.
            self.seen
                .extend(buf[..n].iter().copied().filter(|&b| b != FRAME_DATA));
        }
    }

    /// Reads until the stream is closed by the backend.
    async fn wait_closed(&mut self) {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = tokio::time::timeout(LIMIT, self.io.read(&mut buf))
                .await
                .expect("stream closed in time")
                .unwrap_or(0);
            if n == 0 {
                return;
            }
            self.seen
                .extend(buf[..n].iter().copied().filter(|&b| b != FRAME_DATA));
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn wait_status(backend: &ClaudeCodeBackend, what: impl Fn(&TerminalStatus) -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let status = backend.terminal_status();
        if what(&status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "terminal never reached the state; last {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn backend_running(program: PathBuf, workdir: PathBuf) -> ClaudeCodeBackend {
    ClaudeCodeBackend::new(ClaudeCodeConfig {
        claude_bin: Some(program),
        workdir,
        ..ClaudeCodeConfig::default()
    })
}

#[tokio::test]
async fn resize_keystrokes_echo_and_replay_on_second_attach() {
    support::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // `cat` as a bare name is looked up in PATH.
    let backend = backend_running("cat".into(), dir.path().to_path_buf());
    let mut first = Client::attach(&backend);
    wait_status(&backend, |s| s.running && s.attached).await;
    assert_eq!(backend.terminal_status().size, Some((120, 40)));

    first
        .send(FRAME_RESIZE, br#"{"type":"resize","cols":100,"rows":30}"#)
        .await;
    wait_status(&backend, |s| s.size == Some((100, 30))).await;

    first.send(FRAME_DATA, b"hello pty\n").await;
    // The line discipline echoes the keystrokes, then cat prints the line again.
    first.read_until("hello pty\r\nhello pty\r\n").await;

    // A second attach detaches the first and starts with the replay of recent output.
    let mut second = Client::attach(&backend);
    first.wait_closed().await;
    second.read_until("hello pty\r\nhello pty\r\n").await;
    let replay = second.first_frame.clone().unwrap();
    assert!(
        String::from_utf8_lossy(&replay).starts_with("hello pty\r\nhello pty"),
        "the first frame is the replay buffer: {replay:?}"
    );
    // Same PTY process: nothing was restarted.
    assert_eq!(backend.terminal_status().starts, 1);

    // Live output keeps flowing to the new stream; a resize coalesced with data still works.
    let mut both = vec![FRAME_RESIZE];
    both.extend_from_slice(br#"{"type":"resize","cols":90,"rows":20}"#);
    both.push(FRAME_DATA);
    both.extend_from_slice(b"again\n");
    second.io.write_all(&both).await.unwrap();
    second.read_until("again\r\nagain\r\n").await;
    wait_status(&backend, |s| s.size == Some((90, 20))).await;

    backend.shutdown().await;
    second.wait_closed().await;
    let _ = tokio::time::timeout(LIMIT, second.handler).await;
    assert!(!backend.terminal_status().running);
}

#[tokio::test]
async fn pty_environment_and_restart_after_exit() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("stand-in");
    // Prints what it sees, waits for one line, then exits.
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"term=$TERM size=$(stty size) pwd=$(pwd)\"\nread line\necho \"bye $line\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let workdir = std::fs::canonicalize(dir.path()).unwrap();
    let backend = backend_running(script, workdir.clone());

    let mut first = Client::attach(&backend);
    first
        .read_until(&format!(
            "term=xterm-256color size=40 120 pwd={}",
            workdir.display()
        ))
        .await;
    first.send(FRAME_DATA, b"now\n").await;
    first.read_until("bye now").await;
    // The process exited: the stream is closed.
    first.wait_closed().await;
    wait_status(&backend, |s| !s.running).await;

    // The next attach starts a fresh process (and no stale replay).
    let mut second = Client::attach(&backend);
    second.read_until("term=xterm-256color").await;
    assert!(!String::from_utf8_lossy(&second.seen).contains("bye"));
    assert_eq!(backend.terminal_status().starts, 2);
    backend.shutdown().await;
}

#[tokio::test]
async fn missing_program_fails_the_attach() {
    let dir = tempfile::tempdir().unwrap();
    let backend = backend_running(dir.path().join("nothing-here"), dir.path().to_path_buf());
    let (_ours, theirs) = tokio::io::duplex(1024);
    let err = backend.attach_terminal(Box::new(theirs)).await.unwrap_err();
    assert!(err.to_string().contains("nothing-here"), "{err}");
}

/// The replay buffer keeps the NEWEST 256 KiB: after far more output, a new attach receives
/// one frame of exactly that much, ending with the last bytes written and without the start.
/// The PTY program is also started bare: no arguments at all.
#[tokio::test]
async fn replay_is_bounded_to_the_newest_256_kib_and_the_program_gets_no_arguments() {
    const REPLAY: usize = 256 * 1024;
    const LINES: u32 = 20_000;
    support::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("stand-in");
    // Reports its arguments, waits for a go, floods ~1.2 MiB of numbered lines between two
    // markers, then waits (still running) for input that never comes.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             echo \"argc=$# argv=[$*] ready\"\n\
             read go\n\
             echo FIRST-MARKER\n\
             seq -f 'line %08g abcdefghijklmnopqrstuvwxyz0123456789' 1 {LINES}\n\
             echo LAST-MARKER\n\
             read never\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let backend = backend_running(script, dir.path().to_path_buf());

    let mut first = Client::attach(&backend);
    first.read_until("ready").await;
    let hello = String::from_utf8_lossy(&first.seen).into_owned();
    assert!(
        hello.contains("argc=0 argv=[] ready"),
        "the PTY program is started with no arguments: {hello:?}"
    );

    first.send(FRAME_DATA, b"go\n").await;
    first.read_until("LAST-MARKER\r\n").await;
    let written = first.seen.len();
    assert!(
        written > 3 * REPLAY,
        "the program wrote well over the replay size: {written} bytes"
    );
    assert!(contains(&first.seen, b"FIRST-MARKER"));

    // Nothing is written after LAST-MARKER: a new attach gets the replay frame, and only it.
    let mut second = Client::attach(&backend);
    first.wait_closed().await;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !raw.ends_with(b"LAST-MARKER\r\n") {
        let n = tokio::time::timeout_at(deadline, second.io.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no end of the replay in time; got {} bytes", raw.len()))
            .unwrap();
        assert!(n > 0, "stream closed after {} bytes", raw.len());
        raw.extend_from_slice(&buf[..n]);
    }
    assert_eq!(raw[0], FRAME_DATA, "the replay is one data frame");
    let replay = &raw[1..];
    assert!(
        !replay.contains(&FRAME_DATA),
        "the replay arrives as a single frame"
    );
    assert!(
        replay.len() <= REPLAY,
        "the replay is at most 256 KiB: {} bytes",
        replay.len()
    );
    // More than 256 KiB was written, so the buffer is full.
    assert_eq!(replay.len(), REPLAY, "the replay buffer is kept full");
    // The newest output: it ends with the last bytes written, the oldest are gone.
    assert!(
        replay.ends_with(
            format!("line {LINES:08} abcdefghijklmnopqrstuvwxyz0123456789\r\nLAST-MARKER\r\n")
                .as_bytes()
        )
    );
    assert!(
        !contains(replay, b"FIRST-MARKER"),
        "the oldest output is dropped"
    );
    assert!(
        !contains(replay, b"line 00000001 "),
        "the oldest output is dropped"
    );
    assert!(!contains(replay, b"ready"), "the oldest output is dropped");
    // And it is one contiguous tail: every whole line follows the previous one.
    let text = String::from_utf8(replay.to_vec()).unwrap();
    let numbers: Vec<u32> = text
        .split("\r\n")
        .skip(1) // the first line is cut by the buffer boundary
        .filter_map(|l| l.strip_prefix("line "))
        .map(|l| l[..8].parse().unwrap())
        .collect();
    assert!(numbers.len() > 4000, "{} whole lines", numbers.len());
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "the replay is a contiguous tail of the output"
    );
    assert_eq!(numbers.last(), Some(&LINES));
    // The same process all along: the replay was not of a restarted program.
    assert_eq!(backend.terminal_status().starts, 1);

    backend.shutdown().await;
    second.wait_closed().await;
    let _ = tokio::time::timeout(LIMIT, second.handler).await;
}
