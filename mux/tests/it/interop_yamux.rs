//! Interoperability with an independent yamux implementation (rust-libp2p's `yamux` crate)
//! playing the server, as the agentserver's hashicorp/yamux does: streams opened by either
//! side, concurrent, large enough to need window updates, half-closed with FIN. The other
//! session tests pit our session against itself, which cannot catch a mistake both sides
//! share; these cannot either be fooled by one.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use agentserver_mux::{Config, Mode, Session};
use futures::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

const T: Duration = Duration::from_secs(30);

type OpenRequest = oneshot::Sender<yamux::Stream>;

/// Drives the yamux crate's connection: echoes every inbound stream (read to EOF, write it
/// back, close) and opens outbound streams on request.
async fn drive(
    mut conn: yamux::Connection<Compat<DuplexStream>>,
    mut open: mpsc::UnboundedReceiver<OpenRequest>,
) {
    let mut waiting: Option<OpenRequest> = None;
    poll_fn(|cx| {
        loop {
            if waiting.is_none()
                && let Poll::Ready(Some(tx)) = open.poll_recv(cx)
            {
                waiting = Some(tx);
            }
            if waiting.is_some() {
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        let _ = waiting.take().expect("waiting").send(stream);
                        continue;
                    }
                    Poll::Ready(Err(e)) => panic!("yamux crate cannot open a stream: {e}"),
                    Poll::Pending => {}
                }
            }
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    tokio::spawn(echo(stream));
                }
                Poll::Ready(Some(Err(e))) => panic!("yamux crate connection failed: {e}"),
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

async fn echo(mut stream: yamux::Stream) {
    let mut data = Vec::new();
    stream
        .read_to_end(&mut data)
        .await
        .expect("yamux crate reads");
    stream.write_all(&data).await.expect("yamux crate writes");
    stream.close().await.expect("yamux crate closes");
}

/// Our client session and a yamux-crate server on an in-memory pipe.
fn connect() -> (
    agentserver_mux::Control,
    agentserver_mux::Incoming,
    mpsc::UnboundedSender<OpenRequest>,
) {
    connect_with(Config::default())
}

/// [`connect`] with our session's settings.
fn connect_with(
    config: Config,
) -> (
    agentserver_mux::Control,
    agentserver_mux::Incoming,
    mpsc::UnboundedSender<OpenRequest>,
) {
    let (ours, theirs) = tokio::io::duplex(1024 * 1024);
    let (control, incoming) = Session::new(ours, Mode::Client, config);
    let conn = yamux::Connection::new(
        theirs.compat(),
        yamux::Config::default(),
        yamux::Mode::Server,
    );
    let (open_tx, open_rx) = mpsc::unbounded_channel();
    tokio::spawn(drive(conn, open_rx));
    (control, incoming, open_tx)
}

/// Deterministic test data: `len` bytes depending on `seed`.
fn payload(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_streams_are_echoed_by_the_yamux_crate() {
    let (control, _incoming, _open) = connect();
    let sizes = [
        0usize,
        1,
        1000,
        64 * 1024,
        256 * 1024,
        256 * 1024 + 1,
        3 * 1024 * 1024,
    ];
    let mut tasks = Vec::new();
    for (i, &len) in sizes.iter().cycle().take(24).enumerate() {
        let control = control.clone();
        tasks.push(tokio::spawn(async move {
            let data = payload(i as u32, len);
            let stream = control.open_stream().await.expect("open");
            let (mut rd, mut wr) = tokio::io::split(stream);
            let sent = data.clone();
            let writer = tokio::spawn(async move {
                wr.write_all(&sent).await.expect("write");
                wr.shutdown().await.expect("FIN");
            });
            let mut back = Vec::new();
            rd.read_to_end(&mut back).await.expect("read echo");
            writer.await.unwrap();
            assert_eq!(back.len(), data.len(), "stream {i}");
            assert!(back == data, "stream {i}: echo differs");
        }));
    }
    for task in tasks {
        timeout(T, task).await.expect("in time").unwrap();
    }
    assert!(!control.is_closed());
}

/// Window auto-tuning (the host's settings) against a peer that knows nothing of it: the
/// larger updates are plain window updates, the bodies come back whole whether read copied or
/// as chunks, and the session stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grown_windows_are_honoured_by_the_yamux_crate() {
    let config = Config {
        grown_window_limit: 1024 * 1024,
        grown_window_budget: 2 * 1024 * 1024,
        ..Config::default()
    };
    let (control, _incoming, _open) = connect_with(config);
    let mut tasks = Vec::new();
    for i in 0..6u32 {
        let control = control.clone();
        tasks.push(tokio::spawn(async move {
            let data = payload(100 + i, 8 * 1024 * 1024);
            let stream = control.open_stream().await.expect("open");
            let mut wr = &stream;
            let sent = data.clone();
            let write = async move {
                wr.write_all(&sent).await.expect("write");
                wr.shutdown().await.expect("FIN");
            };
            let read = async {
                let mut back = Vec::with_capacity(data.len());
                if i % 2 == 0 {
                    while let Some(chunk) = stream.read_chunk(64 * 1024).await.expect("chunk") {
                        assert!(chunk.len() <= 64 * 1024);
                        back.extend_from_slice(&chunk);
                    }
                } else {
                    let mut rd = &stream;
                    rd.read_to_end(&mut back).await.expect("read echo");
                }
                back
            };
            let ((), back) = tokio::join!(write, read);
            assert!(back == data, "stream {i}: echo differs");
        }));
    }
    for task in tasks {
        timeout(T, task).await.expect("in time").unwrap();
    }
    assert!(!control.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_yamux_crate_opens_are_accepted_and_answered() {
    let (control, mut incoming, open) = connect();
    // Our side echoes what the server-side implementation sends, like an HTTP stream.
    tokio::spawn(async move {
        while let Some(stream) = incoming.next().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = tokio::io::split(stream);
                let mut data = Vec::new();
                rd.read_to_end(&mut data).await.expect("read");
                wr.write_all(&data).await.expect("write");
                wr.shutdown().await.expect("FIN");
            });
        }
    });
    // From 1: the crate sends nothing at all for a stream closed before its first write (its
    // SYN is lazy, unlike hashicorp's), so an empty server-opened stream never reaches us;
    // `session.rs` covers the `SYN|FIN` frame such a stream would be.
    let mut tasks = Vec::new();
    for i in 1..16u32 {
        let open = open.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = oneshot::channel();
            open.send(tx).expect("driver runs");
            let mut stream = rx.await.expect("stream opened");
            let data = payload(1000 + i, (i as usize) * 97 * 1024);
            stream.write_all(&data).await.expect("write");
            stream.close().await.expect("FIN");
            let mut back = Vec::new();
            stream.read_to_end(&mut back).await.expect("read echo");
            assert!(back == data, "server stream {i}: echo differs");
        }));
    }
    for task in tasks {
        timeout(T, task).await.expect("in time").unwrap();
    }
    assert!(!control.is_closed());
}
