//! The WebSocket byte-stream adapter over real loopback WebSockets (tokio-tungstenite).
#![cfg(feature = "tungstenite")]

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use agentserver_mux::frame::{Flags, FrameDecoder, Header};
use agentserver_mux::{Config, Mode, Session, WsByteStream};
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::PollSender;

const T: Duration = Duration::from_secs(20);

/// A read half and a write half joined into one `Stream + Sink`.
struct Joined<St, Si> {
    stream: St,
    sink: Si,
}

impl<St: Stream + Unpin, Si: Unpin> Stream for Joined<St, Si> {
    type Item = St::Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<St::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }
}

impl<St: Unpin, Si: Sink<M> + Unpin, M> Sink<M> for Joined<St, Si> {
    type Error = Si::Error;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.sink).poll_ready(cx)
    }
    fn start_send(mut self: Pin<&mut Self>, item: M) -> Result<(), Self::Error> {
        Pin::new(&mut self.sink).start_send(item)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.sink).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.sink).poll_close(cx)
    }
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", l.local_addr().unwrap());
    (l, url)
}

#[tokio::test]
async fn frames_split_across_text_and_binary_messages_and_close_1000() {
    let (l, url) = listener().await;
    let client = tokio::spawn(async move {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (control, mut incoming) =
            Session::new(WsByteStream::new(ws), Mode::Client, Config::default());
        let mut s = incoming.next().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        s.write_all(b"world").await.unwrap();
        s.shutdown().await.unwrap();
        // Wait for the server to hang up, then close.
        let _ = s.read(&mut buf).await;
        control.close();
        control.finished().await;
    });
    let (tcp, _) = l.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    // SYN header split over a binary and a text message, then data in one binary message.
    let syn = Header::window_update(2, Flags::SYN, 0).encode();
    ws.send(Message::Binary(Bytes::copy_from_slice(&syn[..5])))
        .await
        .unwrap();
    ws.send(Message::text(std::str::from_utf8(&syn[5..]).unwrap()))
        .await
        .unwrap();
    let mut data = Header::data(2, Flags::NONE, 5).encode().to_vec();
    data.extend_from_slice(b"hello");
    ws.send(Message::Binary(data.into())).await.unwrap();
    // Read the client's frames from binary messages.
    let mut buf = BytesMut::new();
    let mut dec = FrameDecoder::new(1 << 20);
    let mut got = Vec::new();
    let mut close_code = None;
    while let Some(msg) = timeout(T, ws.next()).await.unwrap() {
        match msg.unwrap() {
            Message::Binary(b) => {
                buf.extend_from_slice(&b);
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    if f.header.flags.contains(Flags::FIN) {
                        // Let the client finish: FIN back.
                        let fin = Header::window_update(2, Flags::FIN, 0).encode();
                        ws.send(Message::Binary(Bytes::copy_from_slice(&fin)))
                            .await
                            .unwrap();
                    }
                    got.push(f);
                }
            }
            Message::Close(frame) => {
                close_code = frame.map(|f| (f.code, f.reason.to_string()));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(got[0].header, Header::window_update(2, Flags::ACK, 0));
    let body: Vec<u8> = got.iter().flat_map(|f| f.body.to_vec()).collect();
    assert_eq!(body, b"world");
    assert_eq!(close_code, Some((CloseCode::Normal, String::new())));
    timeout(T, client).await.unwrap().unwrap();
}

#[tokio::test]
async fn websocket_pings_are_answered_while_the_mux_is_busy() {
    let (l, url) = listener().await;
    // Client: uploads 48 MiB on one stream.
    let client = tokio::spawn(async move {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (control, _incoming) =
            Session::new(WsByteStream::new(ws), Mode::Client, Config::default());
        let mut s = control.open_stream().await.unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..48 {
            s.write_all(&chunk).await.unwrap();
        }
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        control
    });
    let (tcp, _) = l.accept().await.unwrap();
    let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let (mut sink, stream) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(64);
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    let pongs: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let pongs2 = Arc::clone(&pongs);
    let stream = stream.inspect(move |m| {
        if let Ok(Message::Pong(_)) = m {
            pongs2.lock().unwrap().push(Instant::now());
        }
    });
    let joined = Joined {
        stream,
        sink: PollSender::new(tx.clone()),
    };
    let (_sc, mut si) = Session::new(WsByteStream::new(joined), Mode::Server, Config::default());
    let mut s = si.next().await.unwrap();

    // Phase 1: the server application does not read; the client is blocked on its window.
    let mut worst = Duration::ZERO;
    for i in 0..5u8 {
        let sent = Instant::now();
        let before = pongs.lock().unwrap().len();
        tx.send(Message::Ping(Bytes::from(vec![i]))).await.unwrap();
        timeout(Duration::from_secs(5), async {
            while pongs.lock().unwrap().len() == before {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("pong while the mux is window-blocked");
        worst = worst.max(sent.elapsed());
    }
    // Phase 2: read at full speed while pinging.
    let pinger = {
        let tx = tx.clone();
        tokio::spawn(async move {
            for i in 0..1000u32 {
                if tx
                    .send(Message::Ping(Bytes::from(i.to_be_bytes().to_vec())))
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = timeout(T, s.read(&mut buf)).await.unwrap().unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    pinger.abort();
    assert_eq!(total, 48 << 20);
    assert!(
        worst < Duration::from_secs(1),
        "worst pong latency {worst:?}"
    );
    assert!(pongs.lock().unwrap().len() >= 5);
    s.shutdown().await.unwrap();
    drop(s);
    let _control = timeout(T, client).await.unwrap().unwrap();
}
