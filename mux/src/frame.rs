//! The yamux frame codec (spec v0): a 12-byte header, followed by `length` body bytes for data
//! frames only.
//!
//! ```text
//! +---------+------+---------+-----------+-----------+
//! | version | type |  flags  | stream id |  length   |
//! |   u8    |  u8  | u16 BE  |  u32 BE   |  u32 BE   |
//! +---------+------+---------+-----------+-----------+
//! ```
//!
//! `length` is the body length for [`FrameType::Data`], the window delta for
//! [`FrameType::WindowUpdate`], the opaque ping id for [`FrameType::Ping`] and the error code
//! for [`FrameType::GoAway`].

use bytes::{Buf, Bytes, BytesMut};

/// Length of a frame header in bytes.
pub const HEADER_LEN: usize = 12;

/// The only protocol version there is.
pub const VERSION: u8 = 0;

/// The frame type byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Stream data; `length` body bytes follow the header.
    Data,
    /// A flow-control window increase (also carries SYN/ACK/FIN/RST with no data).
    WindowUpdate,
    /// A ping (SYN) or ping reply (ACK); `length` is the opaque ping id.
    Ping,
    /// The sender will open no more streams; `length` is a [`GoAwayCode`].
    GoAway,
}

impl FrameType {
    /// The wire byte.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Data => 0,
            Self::WindowUpdate => 1,
            Self::Ping => 2,
            Self::GoAway => 3,
        }
    }

    /// Parses the wire byte.
    pub fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Data),
            1 => Some(Self::WindowUpdate),
            2 => Some(Self::Ping),
            3 => Some(Self::GoAway),
            _ => None,
        }
    }
}

/// The frame flags, a bit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u16);

impl Flags {
    /// No flags.
    pub const NONE: Self = Self(0);
    /// Opens a stream (or marks an outbound ping).
    pub const SYN: Self = Self(1);
    /// Acknowledges a stream open (or marks a ping reply).
    pub const ACK: Self = Self(2);
    /// Half-closes the sender's side of a stream.
    pub const FIN: Self = Self(4);
    /// Resets a stream.
    pub const RST: Self = Self(8);

    /// True when every bit of `other` is set in `self`.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// `GoAway` error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoAwayCode {
    /// Normal termination.
    Normal,
    /// The peer violated the protocol.
    ProtocolError,
    /// An internal error.
    InternalError,
    /// A code outside the spec.
    Other(u32),
}

impl GoAwayCode {
    /// The wire value.
    pub fn as_u32(self) -> u32 {
        match self {
            Self::Normal => 0,
            Self::ProtocolError => 1,
            Self::InternalError => 2,
            Self::Other(v) => v,
        }
    }

    /// Parses the wire value.
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::Normal,
            1 => Self::ProtocolError,
            2 => Self::InternalError,
            other => Self::Other(other),
        }
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub frame_type: FrameType,
    /// Flags.
    pub flags: Flags,
    /// Stream id (0 for session-level frames).
    pub stream_id: u32,
    /// Body length, window delta, ping id or go-away code depending on the type.
    pub length: u32,
}

impl Header {
    /// A data frame header.
    pub fn data(stream_id: u32, flags: Flags, len: u32) -> Self {
        Self {
            frame_type: FrameType::Data,
            flags,
            stream_id,
            length: len,
        }
    }

    /// A window update header.
    pub fn window_update(stream_id: u32, flags: Flags, delta: u32) -> Self {
        Self {
            frame_type: FrameType::WindowUpdate,
            flags,
            stream_id,
            length: delta,
        }
    }

    /// A ping (`flags` = SYN) or ping reply (`flags` = ACK).
    pub fn ping(flags: Flags, opaque: u32) -> Self {
        Self {
            frame_type: FrameType::Ping,
            flags,
            stream_id: 0,
            length: opaque,
        }
    }

    /// A go-away frame.
    pub fn go_away(code: GoAwayCode) -> Self {
        Self {
            frame_type: FrameType::GoAway,
            flags: Flags::NONE,
            stream_id: 0,
            length: code.as_u32(),
        }
    }

    /// Encodes the header into its 12 wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = VERSION;
        out[1] = self.frame_type.as_u8();
        out[2..4].copy_from_slice(&self.flags.0.to_be_bytes());
        out[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        out[8..12].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Decodes 12 wire bytes.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, FrameError> {
        if bytes[0] != VERSION {
            return Err(FrameError::UnsupportedVersion(bytes[0]));
        }
        let frame_type =
            FrameType::from_u8(bytes[1]).ok_or(FrameError::UnknownFrameType(bytes[1]))?;
        Ok(Self {
            frame_type,
            flags: Flags(u16::from_be_bytes([bytes[2], bytes[3]])),
            stream_id: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            length: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        })
    }
}

/// A whole frame: header plus body (empty except for data frames).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub header: Header,
    /// The body of a data frame; empty for every other type.
    pub body: Bytes,
}

/// Why a byte sequence is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The version byte is not 0.
    #[error("unsupported yamux version {0}")]
    UnsupportedVersion(u8),
    /// The type byte is not 0–3.
    #[error("unknown yamux frame type {0}")]
    UnknownFrameType(u8),
    /// A data frame declares a body larger than the decoder accepts.
    #[error("yamux data frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Declared body length.
        len: u32,
        /// The limit.
        max: u32,
    },
}

/// An incremental frame decoder over a byte buffer.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    max_body: u32,
    pending: Option<Header>,
}

impl FrameDecoder {
    /// A decoder that rejects data frames with a body larger than `max_body`.
    pub fn new(max_body: u32) -> Self {
        Self {
            max_body,
            pending: None,
        }
    }

    /// Takes one frame off the front of `buf`. Returns `Ok(None)` when `buf` holds only part of
    /// a frame (call again after appending more bytes); the partial header is remembered.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let header = match self.pending {
            Some(h) => h,
            None => {
                if buf.len() < HEADER_LEN {
                    return Ok(None);
                }
                let mut raw = [0u8; HEADER_LEN];
                raw.copy_from_slice(&buf[..HEADER_LEN]);
                let header = Header::decode(&raw)?;
                if header.frame_type == FrameType::Data && header.length > self.max_body {
                    return Err(FrameError::FrameTooLarge {
                        len: header.length,
                        max: self.max_body,
                    });
                }
                buf.advance(HEADER_LEN);
                header
            }
        };
        let body_len = if header.frame_type == FrameType::Data {
            header.length as usize
        } else {
            0
        };
        if buf.len() < body_len {
            self.pending = Some(header);
            buf.reserve(body_len - buf.len());
            return Ok(None);
        }
        self.pending = None;
        let body = buf.split_to(body_len).freeze();
        Ok(Some(Frame { header, body }))
    }

    /// True when a frame has been started but not finished (a header or body is incomplete).
    pub fn is_mid_frame(&self, buf: &BytesMut) -> bool {
        self.pending.is_some() || !buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_data_frame_header_exactly() {
        // version 0, type 0, flags 0x0000, stream 1, length 5
        let h = Header::data(1, Flags::NONE, 5);
        assert_eq!(h.encode(), [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5]);
    }

    #[test]
    fn encodes_syn_window_update() {
        // A client opening stream 3 the hashicorp way: WindowUpdate, SYN, delta 0.
        let h = Header::window_update(3, Flags::SYN, 0);
        assert_eq!(h.encode(), [0, 1, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0]);
    }

    #[test]
    fn encodes_ack_fin_rst_and_big_endian_fields() {
        let h = Header::window_update(0x0102_0304, Flags::ACK, 0x0004_0000);
        assert_eq!(h.encode(), [0, 1, 0, 2, 1, 2, 3, 4, 0, 4, 0, 0]);
        let fin = Header::window_update(2, Flags::FIN, 0);
        assert_eq!(fin.encode(), [0, 1, 0, 4, 0, 0, 0, 2, 0, 0, 0, 0]);
        let rst = Header::window_update(2, Flags::RST, 0);
        assert_eq!(rst.encode(), [0, 1, 0, 8, 0, 0, 0, 2, 0, 0, 0, 0]);
        let combo = Header::data(7, Flags::ACK | Flags::FIN, 0);
        assert_eq!(combo.encode(), [0, 0, 0, 6, 0, 0, 0, 7, 0, 0, 0, 0]);
    }

    #[test]
    fn encodes_ping_and_go_away() {
        let ping = Header::ping(Flags::SYN, 0xdead_beef);
        assert_eq!(
            ping.encode(),
            [0, 2, 0, 1, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]
        );
        let pong = Header::ping(Flags::ACK, 0xdead_beef);
        assert_eq!(
            pong.encode(),
            [0, 2, 0, 2, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]
        );
        let ga = Header::go_away(GoAwayCode::ProtocolError);
        assert_eq!(ga.encode(), [0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            Header::go_away(GoAwayCode::InternalError).encode()[11],
            2,
            "internal error code"
        );
    }

    #[test]
    fn decode_roundtrip_and_errors() {
        for h in [
            Header::data(9, Flags::FIN, 3),
            Header::window_update(4, Flags::SYN | Flags::ACK, 262_144),
            Header::ping(Flags::ACK, 7),
            Header::go_away(GoAwayCode::Normal),
        ] {
            assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        }
        let mut bad = Header::data(1, Flags::NONE, 0).encode();
        bad[0] = 1;
        assert_eq!(Header::decode(&bad), Err(FrameError::UnsupportedVersion(1)));
        bad[0] = 0;
        bad[1] = 4;
        assert_eq!(Header::decode(&bad), Err(FrameError::UnknownFrameType(4)));
    }

    #[test]
    fn decoder_handles_split_input() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&Header::data(1, Flags::NONE, 4).encode());
        wire.extend_from_slice(b"abcd");
        wire.extend_from_slice(&Header::window_update(1, Flags::FIN, 0).encode());
        let mut dec = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in wire {
            buf.extend_from_slice(&[byte]);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[0].body[..], b"abcd");
        assert_eq!(frames[1].header.flags, Flags::FIN);
        assert!(frames[1].body.is_empty());
        assert!(!dec.is_mid_frame(&buf));
    }

    #[test]
    fn decoder_rejects_oversized_data_frame() {
        let mut buf = BytesMut::from(&Header::data(1, Flags::NONE, 2048).encode()[..]);
        let mut dec = FrameDecoder::new(1024);
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::FrameTooLarge {
                len: 2048,
                max: 1024
            })
        );
        // Non-data frames carry no body whatever their length says.
        let mut buf = BytesMut::from(&Header::window_update(1, Flags::NONE, u32::MAX).encode()[..]);
        assert!(dec.decode(&mut buf).unwrap().is_some());
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Any byte sequence, fed in any chunking, decodes to frames or an error: never a
            /// panic, never an unbounded allocation.
            #[test]
            fn random_bytes_never_panic(
                data in proptest::collection::vec(any::<u8>(), 0..4096),
                chunk in 1usize..64,
            ) {
                let mut dec = FrameDecoder::new(256 * 1024);
                let mut buf = BytesMut::new();
                'outer: for piece in data.chunks(chunk) {
                    buf.extend_from_slice(piece);
                    loop {
                        match dec.decode(&mut buf) {
                            Ok(Some(f)) => {
                                if f.header.frame_type != FrameType::Data {
                                    prop_assert!(f.body.is_empty());
                                } else {
                                    prop_assert_eq!(f.body.len(), f.header.length as usize);
                                }
                            }
                            Ok(None) => break,
                            Err(_) => break 'outer,
                        }
                    }
                }
            }

            /// Valid frames survive an encode/decode round trip under any chunking.
            #[test]
            fn valid_frames_roundtrip(
                frames in proptest::collection::vec(
                    (0u8..4, any::<u16>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300)),
                    0..20),
                chunk in 1usize..100,
            ) {
                let mut wire = Vec::new();
                let mut expected = Vec::new();
                for (ty, flags, id, body) in frames {
                    let frame_type = FrameType::from_u8(ty).unwrap();
                    let (length, body) = if frame_type == FrameType::Data {
                        (body.len() as u32, Bytes::from(body))
                    } else {
                        (id ^ 0x5555, Bytes::new())
                    };
                    let header = Header { frame_type, flags: Flags(flags), stream_id: id, length };
                    wire.extend_from_slice(&header.encode());
                    wire.extend_from_slice(&body);
                    expected.push(Frame { header, body });
                }
                let mut dec = FrameDecoder::new(1024);
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                for piece in wire.chunks(chunk) {
                    buf.extend_from_slice(piece);
                    while let Some(f) = dec.decode(&mut buf).unwrap() {
                        got.push(f);
                    }
                }
                prop_assert_eq!(got, expected);
            }
        }
    }
}
