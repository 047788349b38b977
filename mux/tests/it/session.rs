//! Session tests over in-memory pipes: two sessions talking to each other, and one session
//! talking to a hand-driven "raw" peer that writes and reads frames byte by byte.

use std::time::Duration;

use agentserver_mux::frame::{Flags, Frame, FrameDecoder, FrameType, GoAwayCode, Header};
use agentserver_mux::{
    Config, Error, HeaderError, Mode, ProtocolError, Session, SessionError, StreamType,
    read_header, write_header,
};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

fn pair(
    client_cfg: Config,
    server_cfg: Config,
) -> (
    (agentserver_mux::Control, agentserver_mux::Incoming),
    (agentserver_mux::Control, agentserver_mux::Incoming),
) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let client = Session::new(a, Mode::Client, client_cfg);
    let server = Session::new(b, Mode::Server, server_cfg);
    (client, server)
}

/// A peer driven by hand, frame by frame.
struct RawPeer {
    io: DuplexStream,
    buf: BytesMut,
    dec: FrameDecoder,
}

impl RawPeer {
    fn new(io: DuplexStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            dec: FrameDecoder::new(16 * 1024 * 1024),
        }
    }

    async fn send(&mut self, h: Header, body: &[u8]) {
        let mut wire = h.encode().to_vec();
        wire.extend_from_slice(body);
        self.io.write_all(&wire).await.unwrap();
    }

    /// The next frame, or `None` at end of stream.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            let n = timeout(T, self.io.read_buf(&mut self.buf))
                .await
                .expect("raw peer read timed out")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// The next frame that is not a window update without flags.
    async fn recv_interesting(&mut self) -> Option<Frame> {
        loop {
            let f = self.recv().await?;
            if f.header.frame_type == FrameType::WindowUpdate && f.header.flags == Flags::NONE {
                continue;
            }
            return Some(f);
        }
    }
}

fn raw_client_session(
    cfg: Config,
) -> (
    (agentserver_mux::Control, agentserver_mux::Incoming),
    RawPeer,
) {
    let (a, b) = tokio::io::duplex(1024 * 1024);
    (Session::new(a, Mode::Client, cfg), RawPeer::new(b))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn many_concurrent_streams_both_directions() {
    let ((cc, ci), (sc, si)) = pair(Config::default(), Config::default());
    // Echo servers on both sides.
    for mut inc in [ci, si] {
        tokio::spawn(async move {
            while let Some(mut s) = inc.next().await {
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    s.read_to_end(&mut data).await.unwrap();
                    s.write_all(&data).await.unwrap();
                    s.shutdown().await.unwrap();
                });
            }
        });
    }
    let mut tasks = Vec::new();
    for i in 0..100usize {
        let control = if i % 2 == 0 { cc.clone() } else { sc.clone() };
        tasks.push(tokio::spawn(async move {
            let mut s = control.open_stream().await.unwrap();
            let data = pattern(i * 997 % 70_000, i as u8);
            let (mut r, mut w) = tokio::io::split(&mut s);
            let send = async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let recv = r.read_to_end(&mut got);
            let (_, n) = tokio::join!(send, recv);
            n.unwrap();
            assert_eq!(got, data, "stream {i}");
            s.id()
        }));
    }
    for t in tasks {
        let id = timeout(T, t).await.unwrap().unwrap();
        assert!(id != 0);
    }
    // Client ids odd, server ids even.
    let s = cc.open_stream().await.unwrap();
    assert_eq!(s.id() % 2, 1);
    let s2 = sc.open_stream().await.unwrap();
    assert_eq!(s2.id() % 2, 0);
}

#[tokio::test]
async fn transfer_64_mib_respects_windows() {
    let ((cc, _ci), (_sc, mut si)) = pair(Config::default(), Config::default());
    const LEN: usize = 64 * 1024 * 1024;
    let server = tokio::spawn(async move {
        let mut s = si.next().await.unwrap();
        let mut total = 0usize;
        let mut hash: u64 = 0;
        let mut buf = vec![0u8; 100_000];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                hash = hash.wrapping_mul(1_000_003).wrapping_add(b as u64);
            }
            total += n;
        }
        (total, hash)
    });
    let mut s = cc.open_stream().await.unwrap();
    let chunk = pattern(1 << 20, 7);
    let mut expect_hash: u64 = 0;
    for _ in 0..64 {
        for &b in &chunk {
            expect_hash = expect_hash.wrapping_mul(1_000_003).wrapping_add(b as u64);
        }
    }
    let writer = async {
        for _ in 0..64 {
            s.write_all(&chunk).await.unwrap();
        }
        s.shutdown().await.unwrap();
    };
    timeout(T, writer).await.unwrap();
    let (total, hash) = timeout(T, server).await.unwrap().unwrap();
    assert_eq!(total, LEN);
    assert_eq!(hash, expect_hash);
    // The session survived: a window violation would have closed it.
    assert!(cc.close_reason().is_none());
}

#[tokio::test]
async fn slow_reader_is_never_sent_more_than_its_window() {
    // Raw peer as server: opens a stream and never reads; the client writes 1 MiB.
    let ((_cc, mut ci), mut peer) = raw_client_session(Config::default());
    peer.send(Header::window_update(2, Flags::SYN, 0), &[])
        .await;
    let mut s = ci.next().await.unwrap();
    let ack = peer.recv().await.unwrap();
    assert_eq!(ack.header, Header::window_update(2, Flags::ACK, 0));
    let writer = tokio::spawn(async move {
        let data = vec![1u8; 1 << 20];
        let _ = s.write_all(&data).await;
        s
    });
    let mut received = 0usize;
    while received < 256 * 1024 {
        let f = peer.recv().await.unwrap();
        assert_eq!(f.header.frame_type, FrameType::Data);
        received += f.body.len();
    }
    assert_eq!(received, 256 * 1024, "exactly one window");
    // Nothing more arrives without a window update.
    assert!(
        timeout(Duration::from_millis(300), peer.io.read_buf(&mut peer.buf))
            .await
            .is_err()
    );
    peer.send(Header::window_update(2, Flags::NONE, 1000), &[])
        .await;
    let f = peer.recv().await.unwrap();
    assert_eq!(f.body.len(), 1000);
    writer.abort();
}

#[tokio::test]
async fn fin_half_close_keeps_the_other_direction_open() {
    let ((cc, _ci), (_sc, mut si)) = pair(Config::default(), Config::default());
    let server = tokio::spawn(async move {
        let mut s = si.next().await.unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).await.unwrap(); // EOF after the client's FIN
        // Still writable after the peer's FIN.
        s.write_all(b"reply to ").await.unwrap();
        s.write_all(&req).await.unwrap();
        s.shutdown().await.unwrap();
        // Writing after our own FIN fails.
        assert!(s.write_all(b"x").await.is_err());
    });
    let mut s = cc.open_stream().await.unwrap();
    s.write_all(b"question").await.unwrap();
    s.shutdown().await.unwrap();
    let mut resp = Vec::new();
    timeout(T, s.read_to_end(&mut resp)).await.unwrap().unwrap();
    assert_eq!(resp, b"reply to question");
    timeout(T, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn inbound_stream_is_acked_before_the_application_accepts_it() {
    let ((_cc, _ci), mut peer) = raw_client_session(Config::default());
    // The application never calls `next()`. The ACK must come anyway, byte-exact.
    peer.send(Header::window_update(2, Flags::SYN, 0), &[])
        .await;
    let f = timeout(Duration::from_secs(2), peer.recv())
        .await
        .expect("ACK not sent promptly")
        .unwrap();
    assert_eq!(
        f.header.encode(),
        [0, 1, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0],
        "window update, ACK, stream 2, delta 0"
    );
    // A SYN carried by a data frame is ACKed too, and its data is kept.
    peer.send(Header::data(4, Flags::SYN, 3), b"abc").await;
    let f = peer.recv().await.unwrap();
    assert_eq!(f.header, Header::window_update(4, Flags::ACK, 0));
}

#[tokio::test]
async fn server_open_timeout_is_not_tripped_by_a_slow_application() {
    // Mock-like server with a short open timeout; the client application waits before accepting.
    let server_cfg = Config {
        stream_open_timeout: Some(Duration::from_millis(300)),
        ..Config::default()
    };
    let ((_cc, mut ci), (sc, _si)) = pair(Config::default(), server_cfg);
    let mut s = sc.open_stream().await.unwrap();
    s.write_all(b"hello").await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(sc.close_reason().is_none(), "server session must stay up");
    let mut c = ci.next().await.unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
}

#[tokio::test]
async fn unacked_outbound_stream_closes_the_session() {
    let cfg = Config {
        stream_open_timeout: Some(Duration::from_millis(200)),
        ..Config::default()
    };
    let ((cc, _ci), mut peer) = raw_client_session(cfg);
    let _s = cc.open_stream().await.unwrap();
    let syn = peer.recv().await.unwrap();
    assert_eq!(syn.header, Header::window_update(1, Flags::SYN, 0));
    let reason = timeout(T, cc.closed()).await.unwrap();
    assert!(
        matches!(reason, SessionError::StreamOpenTimeout(1)),
        "{reason:?}"
    );
}

#[tokio::test]
async fn acked_outbound_stream_does_not_close_the_session() {
    let cfg = Config {
        stream_open_timeout: Some(Duration::from_millis(200)),
        ..Config::default()
    };
    let ((cc, _ci), mut peer) = raw_client_session(cfg);
    let _s = cc.open_stream().await.unwrap();
    peer.recv().await.unwrap();
    peer.send(Header::window_update(1, Flags::ACK, 0), &[])
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cc.close_reason().is_none());
}

#[tokio::test]
async fn pings_are_answered_and_can_be_sent() {
    let ((_cc, _ci), mut peer) = raw_client_session(Config::default());
    peer.send(Header::ping(Flags::SYN, 0x0102_0304), &[]).await;
    let f = peer.recv().await.unwrap();
    assert_eq!(f.header.encode(), [0, 2, 0, 2, 0, 0, 0, 0, 1, 2, 3, 4]);

    let ((cc, _ci2), (_sc, _si)) = pair(Config::default(), Config::default());
    let rtt = timeout(T, cc.ping()).await.unwrap().unwrap();
    assert!(rtt < Duration::from_secs(5));
}

#[tokio::test]
async fn keepalive_detects_a_silent_peer() {
    let cfg = Config {
        keepalive_interval: Some(Duration::from_millis(100)),
        write_timeout: Some(Duration::from_millis(200)),
        ..Config::default()
    };
    let ((cc, _ci), mut peer) = raw_client_session(cfg);
    let f = peer.recv().await.unwrap();
    assert_eq!(f.header.frame_type, FrameType::Ping);
    assert_eq!(f.header.flags, Flags::SYN);
    let reason = timeout(T, cc.closed()).await.unwrap();
    assert!(
        matches!(reason, SessionError::KeepaliveTimeout),
        "{reason:?}"
    );
}

#[tokio::test]
async fn unknown_frame_type_is_a_session_error_not_a_panic() {
    let ((cc, _ci), mut peer) = raw_client_session(Config::default());
    let mut bad = Header::ping(Flags::SYN, 1).encode();
    bad[1] = 9;
    peer.io.write_all(&bad).await.unwrap();
    let reason = timeout(T, cc.closed()).await.unwrap();
    assert!(
        matches!(reason, SessionError::Protocol(ProtocolError::Frame(_))),
        "{reason:?}"
    );
    // The session tells the peer why before it goes.
    let f = peer.recv_interesting().await.unwrap();
    assert_eq!(f.header, Header::go_away(GoAwayCode::ProtocolError));
    assert!(peer.recv().await.is_none(), "connection shut down");
    assert!(matches!(
        cc.open_stream().await,
        Err(Error::SessionClosed(_))
    ));
}

#[tokio::test]
async fn truncated_frame_is_a_session_error() {
    let ((cc, _ci), peer) = raw_client_session(Config::default());
    let mut io = peer.io;
    let wire = Header::data(2, Flags::SYN, 100).encode();
    io.write_all(&wire).await.unwrap();
    io.write_all(b"only part").await.unwrap();
    io.shutdown().await.unwrap();
    drop(io);
    let reason = timeout(T, cc.closed()).await.unwrap();
    assert!(
        matches!(
            reason,
            SessionError::Protocol(ProtocolError::TruncatedFrame)
        ),
        "{reason:?}"
    );
}

#[tokio::test]
async fn clean_eof_is_remote_closed() {
    let ((cc, _ci), peer) = raw_client_session(Config::default());
    drop(peer);
    let reason = timeout(T, cc.closed()).await.unwrap();
    assert!(matches!(reason, SessionError::RemoteClosed), "{reason:?}");
}

#[tokio::test]
async fn window_overflow_and_bad_ids_are_protocol_errors() {
    let ((cc, _ci), mut peer) = raw_client_session(Config::default());
    peer.send(Header::window_update(2, Flags::SYN, 0), &[])
        .await;
    peer.recv().await.unwrap();
    let big = vec![0u8; 256 * 1024 + 1];
    peer.send(Header::data(2, Flags::NONE, big.len() as u32), &big)
        .await;
    let reason = timeout(T, cc.closed()).await.unwrap();
    assert!(
        matches!(
            reason,
            SessionError::Protocol(ProtocolError::Frame(_) | ProtocolError::WindowExceeded { .. })
        ),
        "{reason:?}"
    );

    let ((cc, _ci), mut peer) = raw_client_session(Config::default());
    peer.send(Header::window_update(3, Flags::SYN, 0), &[])
        .await;
    let reason = timeout(T, cc.closed()).await.unwrap();
    assert!(
        matches!(
            reason,
            SessionError::Protocol(ProtocolError::WrongStreamId(3))
        ),
        "{reason:?}"
    );

    let ((cc, _ci), mut peer) = raw_client_session(Config::default());
    peer.send(Header::window_update(2, Flags::SYN, 0), &[])
        .await;
    peer.send(Header::window_update(2, Flags::SYN, 0), &[])
        .await;
    let reason = timeout(T, cc.closed()).await.unwrap();
    assert!(
        matches!(
            reason,
            SessionError::Protocol(ProtocolError::DuplicateStream(2))
        ),
        "{reason:?}"
    );
}

#[tokio::test]
async fn window_update_past_u32_max_is_a_protocol_error_with_go_away() {
    let ((cc, _ci), mut peer) = raw_client_session(Config::default());
    peer.send(Header::window_update(2, Flags::SYN, 0), &[])
        .await;
    peer.recv().await.unwrap();
    // The send window starts at 256 KiB; a delta of 2^32 - 1 would take it past u32::MAX.
    peer.send(Header::window_update(2, Flags::NONE, u32::MAX), &[])
        .await;
    let reason = timeout(T, cc.closed()).await.unwrap();
    assert!(
        matches!(
            reason,
            SessionError::Protocol(ProtocolError::WindowOverflow {
                stream: 2,
                delta: u32::MAX,
                window: 262_144,
            })
        ),
        "{reason:?}"
    );
    // The peer is told why: a GoAway with the protocol-error code, then the end of the stream.
    let go_away = loop {
        let frame = peer.recv().await.expect("a GoAway before the end");
        if frame.header.frame_type == FrameType::GoAway {
            break frame;
        }
    };
    assert_eq!(
        GoAwayCode::from_u32(go_away.header.length),
        GoAwayCode::ProtocolError
    );
}

#[tokio::test]
async fn window_update_up_to_u32_max_is_accepted() {
    let ((cc, _ci), mut peer) = raw_client_session(Config::default());
    peer.send(Header::window_update(2, Flags::SYN, 0), &[])
        .await;
    peer.recv().await.unwrap();
    // Exactly to 2^32 - 1: legal.
    peer.send(
        Header::window_update(2, Flags::NONE, u32::MAX - 262_144),
        &[],
    )
    .await;
    peer.send(Header::ping(Flags::SYN, 7), &[]).await;
    let pong = peer.recv_interesting().await.unwrap();
    assert_eq!(pong.header.frame_type, FrameType::Ping);
    assert!(!cc.is_closed(), "the session stays open");
}

#[tokio::test]
async fn frames_for_unknown_streams_are_ignored() {
    let ((cc, mut ci), mut peer) = raw_client_session(Config::default());
    peer.send(Header::data(40, Flags::NONE, 4), b"lost").await;
    peer.send(Header::window_update(42, Flags::FIN, 0), &[])
        .await;
    peer.send(Header::window_update(2, Flags::SYN, 0), &[])
        .await;
    peer.send(Header::data(2, Flags::NONE, 2), b"ok").await;
    let mut s = ci.next().await.unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ok");
    assert!(cc.close_reason().is_none());
}

#[tokio::test]
async fn reset_fails_reads_and_writes() {
    let ((cc, _ci), (_sc, mut si)) = pair(Config::default(), Config::default());
    let mut s = cc.open_stream().await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut remote = si.next().await.unwrap();
    remote.reset();
    let mut buf = [0u8; 4];
    let err = timeout(T, s.read(&mut buf)).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(s.write_all(b"more").await.is_err());
    assert!(remote.read(&mut buf).await.is_err());
}

#[tokio::test]
async fn full_backlog_resets_new_streams() {
    let cfg = Config {
        accept_backlog: 1,
        ..Config::default()
    };
    let ((_cc, _ci), mut peer) = raw_client_session(cfg);
    peer.send(Header::window_update(2, Flags::SYN, 0), &[])
        .await;
    peer.send(Header::window_update(4, Flags::SYN, 0), &[])
        .await;
    let f1 = peer.recv().await.unwrap();
    assert_eq!(f1.header, Header::window_update(2, Flags::ACK, 0));
    let f2 = peer.recv().await.unwrap();
    assert_eq!(f2.header, Header::window_update(4, Flags::RST, 0));
}

#[tokio::test]
async fn remote_go_away_refuses_new_streams() {
    let ((cc, _ci), mut peer) = raw_client_session(Config::default());
    peer.send(Header::go_away(GoAwayCode::Normal), &[]).await;
    // Make sure the GoAway has been processed: a ping round trip.
    peer.send(Header::ping(Flags::SYN, 5), &[]).await;
    peer.recv().await.unwrap();
    assert!(matches!(cc.open_stream().await, Err(Error::RemoteGoAway)));
}

#[tokio::test]
async fn close_flushes_then_sends_go_away() {
    let ((cc, _ci), mut peer) = raw_client_session(Config::default());
    let mut s = cc.open_stream().await.unwrap();
    s.write_all(b"last words").await.unwrap();
    cc.close();
    timeout(T, cc.finished()).await.unwrap();
    let syn = peer.recv().await.unwrap();
    assert!(syn.header.flags.contains(Flags::SYN));
    let data = peer.recv().await.unwrap();
    assert_eq!(&data.body[..], b"last words");
    let ga = peer.recv().await.unwrap();
    assert_eq!(ga.header, Header::go_away(GoAwayCode::Normal));
    assert!(peer.recv().await.is_none());
    assert!(matches!(cc.close_reason(), Some(SessionError::LocalClose)));
    let mut buf = [0u8; 1];
    assert!(s.read(&mut buf).await.is_err(), "reads fail after close");
}

#[tokio::test]
async fn dropping_every_control_closes_the_session() {
    let ((cc, _ci), mut peer) = raw_client_session(Config::default());
    drop(cc);
    let ga = peer.recv().await.unwrap();
    assert_eq!(ga.header, Header::go_away(GoAwayCode::Normal));
}

#[tokio::test]
async fn dropped_stream_sends_fin_and_is_cleaned_up() {
    let ((cc, _ci), (_sc, mut si)) = pair(Config::default(), Config::default());
    let s = cc.open_stream().await.unwrap();
    drop(s);
    let mut remote = si.next().await.unwrap();
    let mut buf = Vec::new();
    timeout(T, remote.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf.is_empty());
    remote.shutdown().await.unwrap();
    drop(remote);
    // Both sides forget the stream once both FINs are through.
    timeout(T, async {
        while cc.stream_count() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn oversized_stream_meta_is_rejected() {
    let ((cc, _ci), (_sc, mut si)) = pair(Config::default(), Config::default());
    let mut s = cc.open_stream().await.unwrap();
    // Declare 2 MiB of metadata.
    s.write_all(&[1, 0, 0x20, 0, 0]).await.unwrap();
    let mut remote = si.next().await.unwrap();
    let err = timeout(T, read_header(&mut remote))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, HeaderError::MetaTooLarge(0x20_0000)));
    // A normal header on another stream still works.
    let mut s2 = cc.open_stream().await.unwrap();
    write_header(&mut s2, StreamType::Control, b"")
        .await
        .unwrap();
    s2.write_all(b"{}").await.unwrap();
    s2.shutdown().await.unwrap();
    let mut r2 = si.next().await.unwrap();
    let (ty, meta) = read_header(&mut r2).await.unwrap();
    assert_eq!(ty, StreamType::Control);
    assert!(meta.is_empty());
    let mut body = Vec::new();
    r2.read_to_end(&mut body).await.unwrap();
    assert_eq!(body, b"{}");
}

#[tokio::test]
async fn random_garbage_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for _ in 0..50 {
        let ((cc, _ci), peer) = raw_client_session(Config::default());
        let len = rng.random_range(1..2000);
        let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let mut io = peer.io;
        let _ = io.write_all(&junk).await;
        drop(io);
        let reason = timeout(T, cc.closed()).await.unwrap();
        assert!(!matches!(reason, SessionError::LocalClose));
    }
}

/// Frames a server may legally send that the other tests do not: a stream opened and
/// closed in one frame (`SYN|FIN`, what an empty request looks like from some
/// implementations), and one data frame as large as the whole initial window.
#[tokio::test]
async fn syn_fin_in_one_frame_and_a_full_window_data_frame_are_accepted() {
    let ((_control, mut incoming), mut peer) = raw_client_session(Config::default());
    peer.send(Header::window_update(2, Flags::SYN | Flags::FIN, 0), &[])
        .await;
    let ack = peer.recv_interesting().await.unwrap();
    assert_eq!(ack.header, Header::window_update(2, Flags::ACK, 0));
    let mut stream = timeout(T, incoming.next()).await.unwrap().unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert!(got.is_empty(), "an empty, already finished request");
    stream.write_all(b"reply").await.unwrap();
    stream.shutdown().await.unwrap();
    let data = peer.recv_interesting().await.unwrap();
    assert_eq!(data.header.stream_id, 2);
    assert_eq!(&data.body[..], b"reply");
    let fin = peer.recv_interesting().await.unwrap();
    assert!(fin.header.flags.contains(Flags::FIN), "{:?}", fin.header);

    // 256 KiB in a single data frame: exactly the window, so it must be accepted whole.
    let body = pattern(256 * 1024, 7);
    peer.send(Header::data(4, Flags::SYN, body.len() as u32), &body)
        .await;
    let mut stream = timeout(T, incoming.next()).await.unwrap().unwrap();
    let mut got = vec![0u8; body.len()];
    timeout(T, stream.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got == body, "the full-window frame arrived intact");
}

/// Window auto-tuning against a hand-driven peer: once the peer has used three quarters of the
/// window and the application read it all, the update grants a doubled window, and the peer
/// may then send all of it in one data frame (hashicorp sends up to the window at once).
#[tokio::test]
async fn a_grown_window_is_granted_and_a_frame_of_its_whole_size_is_accepted() {
    const W: u32 = 256 * 1024;
    let cfg = Config {
        grown_window_limit: 4 * W,
        grown_window_budget: 16 * W as usize,
        ..Config::default()
    };
    let ((_control, mut incoming), mut peer) = raw_client_session(cfg);
    let first = pattern((W / 4 * 3 + 1) as usize, 3);
    peer.send(Header::data(2, Flags::SYN, first.len() as u32), &first)
        .await;
    let ack = peer.recv_interesting().await.unwrap();
    assert_eq!(ack.header, Header::window_update(2, Flags::ACK, 0));
    let stream = timeout(T, incoming.next()).await.unwrap().unwrap();
    let mut got = Vec::new();
    while got.len() < first.len() {
        let chunk = timeout(T, stream.read_chunk(usize::MAX))
            .await
            .unwrap()
            .unwrap()
            .expect("data");
        got.extend_from_slice(&chunk);
    }
    assert!(got == first);
    let update = peer.recv().await.unwrap();
    let credit = W - first.len() as u32 + update.header.length;
    assert_eq!(update.header.frame_type, FrameType::WindowUpdate);
    assert_eq!(credit, 2 * W, "the window doubled: {:?}", update.header);

    let second = pattern(credit as usize, 9);
    peer.send(Header::data(2, Flags::NONE, credit), &second)
        .await;
    let mut got = Vec::new();
    while got.len() < second.len() {
        let chunk = timeout(T, stream.read_chunk(64 * 1024))
            .await
            .unwrap()
            .unwrap()
            .expect("data");
        assert!(chunk.len() <= 64 * 1024);
        got.extend_from_slice(&chunk);
    }
    assert!(
        got == second,
        "the frame of the grown window arrived intact"
    );
}
