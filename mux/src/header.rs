//! The agentserver stream header (spec §6.4): the first bytes of every tunnel stream,
//! `[1 byte type][4 byte big-endian metadata length][metadata]`.
//!
//! The same layout is used for the HTTP response header the agent writes back on an HTTP stream
//! (`[0x01][len]{"status":…,"headers":…}`).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest metadata a reader accepts (1 MiB; exactly 1 MiB is allowed).
pub const MAX_META_LEN: u32 = 1 << 20;

/// The stream type byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// `0x01`: an HTTP request (server → agent), or the HTTP response header (agent → server).
    Http,
    /// `0x02`: a terminal stream (server → agent), no metadata.
    Terminal,
    /// `0x03`: a control stream carrying agent info (agent → server), no metadata.
    Control,
    /// Any other byte.
    Unknown(u8),
}

impl StreamType {
    /// The wire byte.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Http => 1,
            Self::Terminal => 2,
            Self::Control => 3,
            Self::Unknown(b) => b,
        }
    }

    /// Parses the wire byte.
    pub fn from_u8(b: u8) -> Self {
        match b {
            1 => Self::Http,
            2 => Self::Terminal,
            3 => Self::Control,
            other => Self::Unknown(other),
        }
    }
}

/// Why a stream header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The stream failed or ended before the header was complete.
    #[error("reading the stream header: {0}")]
    Io(#[from] std::io::Error),
    /// The declared metadata length exceeds [`MAX_META_LEN`].
    #[error("stream metadata of {0} bytes exceeds the 1 MiB limit")]
    MetaTooLarge(u32),
}

/// Encodes a header into bytes (type, length, metadata).
pub fn encode_header(stream_type: StreamType, meta: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + meta.len());
    out.push(stream_type.as_u8());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(meta);
    out
}

/// Writes a header in one write. Does not flush.
pub async fn write_header<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    stream_type: StreamType,
    meta: &[u8],
) -> std::io::Result<()> {
    if meta.len() > MAX_META_LEN as usize {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "stream metadata exceeds the 1 MiB limit",
        ));
    }
    w.write_all(&encode_header(stream_type, meta)).await
}

/// Reads a header: the type and the metadata bytes. Metadata longer than [`MAX_META_LEN`] is
/// rejected before anything is allocated for it.
pub async fn read_header<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
) -> Result<(StreamType, Vec<u8>), HeaderError> {
    let mut fixed = [0u8; 5];
    r.read_exact(&mut fixed).await?;
    let len = u32::from_be_bytes([fixed[1], fixed[2], fixed[3], fixed[4]]);
    if len > MAX_META_LEN {
        return Err(HeaderError::MetaTooLarge(len));
    }
    let mut meta = vec![0u8; len as usize];
    r.read_exact(&mut meta).await?;
    Ok((StreamType::from_u8(fixed[0]), meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_header_bytes() {
        assert_eq!(encode_header(StreamType::Control, b""), [3, 0, 0, 0, 0]);
        assert_eq!(
            encode_header(StreamType::Http, b"{}"),
            [1, 0, 0, 0, 2, b'{', b'}']
        );
        assert_eq!(StreamType::from_u8(9), StreamType::Unknown(9));
        assert_eq!(StreamType::Unknown(9).as_u8(), 9);
    }

    #[tokio::test]
    async fn roundtrip_and_limits() {
        let mut wire = Vec::new();
        write_header(&mut wire, StreamType::Terminal, b"")
            .await
            .unwrap();
        write_header(&mut wire, StreamType::Http, b"abc")
            .await
            .unwrap();
        let mut r = &wire[..];
        assert_eq!(
            read_header(&mut r).await.unwrap(),
            (StreamType::Terminal, vec![])
        );
        assert_eq!(
            read_header(&mut r).await.unwrap(),
            (StreamType::Http, b"abc".to_vec())
        );
        // Exactly 1 MiB is accepted.
        let big = vec![b'x'; MAX_META_LEN as usize];
        let wire = encode_header(StreamType::Http, &big);
        let (_, meta) = read_header(&mut &wire[..]).await.unwrap();
        assert_eq!(meta.len(), big.len());
        // 2 MiB declared: rejected without reading the body.
        let wire = [1u8, 0, 0x20, 0, 0];
        assert!(matches!(
            read_header(&mut &wire[..]).await,
            Err(HeaderError::MetaTooLarge(0x20_0000))
        ));
        // Truncated header.
        assert!(matches!(
            read_header(&mut &[1u8, 0][..]).await,
            Err(HeaderError::Io(_))
        ));
        // The writer refuses oversized metadata too.
        let too_big = vec![0u8; MAX_META_LEN as usize + 1];
        assert!(
            write_header(&mut Vec::new(), StreamType::Http, &too_big)
                .await
                .is_err()
        );
    }
}
