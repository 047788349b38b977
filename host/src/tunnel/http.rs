//! HTTP streams (spec §6.4.2): the server sends `[0x01][len]{method,path,headers,body_len}` and
//! `body_len` body bytes; the host answers `[0x01][len]{status,headers}`, the body verbatim,
//! then `FIN`.

use std::collections::HashMap;
use std::sync::Arc;

use agentserver_mux::{StreamType, write_header};
use agentserver_plugin_api::{
    Backend, BackendError, HttpRequest, HttpResponse, LocalPath, RequestBody,
};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The request metadata the server sends (`HTTPStreamMeta`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct HttpStreamMeta {
    /// Request method.
    pub method: String,
    /// Path and query as the browser sent it.
    pub path: String,
    /// First value of each request header.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub headers: HashMap<String, String>,
    /// Exact number of body bytes that follow.
    #[serde(default)]
    pub body_len: i64,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<HashMap<String, String>, D::Error> {
    Ok(Option::<HashMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

/// The response header the host writes back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HttpResponseMeta {
    /// Status code.
    pub status: u16,
    /// First value of each response header, Go-canonical names.
    pub headers: HashMap<String, String>,
}

/// Go's `CanonicalMIMEHeaderKey`: `content-type` → `Content-Type`. Names with characters that
/// are not valid in a header token are returned unchanged.
pub fn canonical_header_name(name: &str) -> String {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return name.to_string();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// Keeps the first value of each (canonicalised) header name, as upstream's single-valued maps do.
pub fn first_values(headers: &[(String, String)]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in headers {
        out.entry(canonical_header_name(k))
            .or_insert_with(|| v.clone());
    }
    out
}

async fn write_error<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, status: u16, message: &str) {
    let meta = HttpResponseMeta {
        status,
        headers: HashMap::from([("Content-Type".to_string(), "text/plain".to_string())]),
    };
    let res = async {
        write_header(w, StreamType::Http, &serde_json::to_vec(&meta)?).await?;
        w.write_all(message.as_bytes()).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(())
    }
    .await;
    if let Err(e) = res {
        tracing::debug!(error = %e, "could not write an HTTP error reply to the tunnel");
    }
}

/// Largest chunk of a request body read from the tunnel before it is handed to the backend.
/// With the one-chunk channel between the two, the host holds at most about two chunks
/// (128 KiB) of a request body at a time, whatever `body_len` says.
pub const BODY_CHUNK: usize = 64 * 1024;

/// How reading the request body from the tunnel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pumped {
    /// All `body_len` bytes came (forwarded, or drained once the backend dropped the body).
    Complete,
    /// The stream ended or failed first.
    Short,
}

/// Reads `len` body bytes from the tunnel in chunks of at most [`BODY_CHUNK`] and hands each to
/// the backend's body through `tx` (capacity 1: the backend's reading paces the tunnel, and the
/// yamux window paces the server). The chunks are the received frames' own buffers, never
/// copied. If the backend drops the body, the rest is read and discarded, so a short body is
/// still noticed. Returning drops `tx`: a body not complete by then ends with an error
/// ([`RequestBody::into_stream`] checks the length), so the backend never sees a short body
/// as complete.
async fn pump_body(
    rd: &agentserver_mux::Stream,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    len: u64,
) -> Pumped {
    let mut remaining = len;
    let mut forwarding = true;
    while remaining > 0 {
        let want = remaining.min(BODY_CHUNK as u64) as usize;
        let chunk = match rd.read_chunk(want).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) | Err(_) => return Pumped::Short,
        };
        remaining -= chunk.len() as u64;
        if forwarding && tx.send(Ok(chunk)).await.is_err() {
            forwarding = false;
        }
    }
    Pumped::Complete
}

/// Serves one HTTP stream whose stream header (type 1, `meta`) has been read. Returns `false`
/// when the reply could not be completed (the response body failed midway or the stream
/// broke); the caller should then reset the stream rather than let it end with `FIN`.
///
/// The path becomes a [`LocalPath`] here, once, before anything else (400 `invalid request
/// path`). The body streams to the backend as it consumes it; a body shorter than `body_len`
/// answers 502 `failed to read request body` and aborts what the backend was sent.
pub async fn serve_http_stream(
    stream: &agentserver_mux::Stream,
    meta: &[u8],
    backend: Arc<dyn Backend>,
) -> bool {
    let mut wr = stream;
    let meta: HttpStreamMeta = match serde_json::from_slice(meta) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "invalid HTTP stream metadata");
            write_error(&mut wr, 400, "invalid metadata").await;
            return true;
        }
    };
    let Ok(path) = LocalPath::parse(&meta.path) else {
        write_error(&mut wr, 400, "invalid request path").await;
        return true;
    };
    let body_len = u64::try_from(meta.body_len).unwrap_or(0);
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(1);
    let weak_tx = tx.downgrade();
    let tx = (body_len > 0).then_some(tx);
    let body = if body_len == 0 {
        RequestBody::empty()
    } else {
        let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        RequestBody::from_stream(body_len, chunks.boxed())
    };
    let request = HttpRequest {
        method: meta.method,
        path,
        headers: meta.headers.into_iter().collect(),
        body,
    };
    tracing::debug!(method = %request.method, path = %request.path, body_len, "tunnel HTTP request");
    let mut pumped = (body_len == 0).then_some(Pumped::Complete);
    let pump = async {
        match tx {
            Some(tx) => pump_body(stream, tx, body_len).await,
            None => Pumped::Complete,
        }
    };
    let mut pump = std::pin::pin!(pump);
    let mut handle = std::pin::pin!(backend.handle_http(request));
    let result = loop {
        tokio::select! {
            r = &mut handle => break r,
            p = &mut pump, if pumped.is_none() => pumped = Some(p),
        }
    };
    // The backend has answered. If it dropped the body, finish reading it (the pump drains
    // what is left) to know whether it was complete; if it still holds it (it answered before
    // reading it all), keep feeding it while the response is written.
    if pumped.is_none() && weak_tx.upgrade().is_none_or(|tx| tx.is_closed()) {
        pumped = Some(pump.as_mut().await);
    }
    if pumped == Some(Pumped::Short) {
        drop(result);
        write_error(&mut wr, 502, "failed to read request body").await;
        return true;
    }
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            let message = match &e {
                BackendError::Internal(m) => format!("local service error: {m}"),
                other => format!("local service error: {other}"),
            };
            write_error(&mut wr, 502, &message).await;
            return true;
        }
    };
    if pumped.is_some() {
        return write_response(&mut wr, response).await;
    }
    let mut write = std::pin::pin!(write_response(&mut wr, response));
    loop {
        tokio::select! {
            ok = &mut write => return ok,
            // A body that turns out short after the header went out: the reply cannot become
            // a 502 any more, so the stream is reset.
            p = &mut pump, if pumped.is_none() => {
                pumped = Some(p);
                if p == Pumped::Short {
                    return false;
                }
            }
        }
    }
}

/// Writes a response header and streams the body, one flush per chunk, then `FIN`. Returns
/// `false` when a body fails midway (then no `FIN` is sent, so the server never mistakes a
/// truncated body for a complete one).
async fn write_response<S: AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    response: HttpResponse,
) -> bool {
    let HttpResponse {
        status,
        headers,
        mut body,
    } = response;
    let meta = HttpResponseMeta {
        status,
        headers: first_values(&headers),
    };
    let head = match serde_json::to_vec(&meta) {
        Ok(h) => h,
        Err(_) => return false,
    };
    if write_header(stream, StreamType::Http, &head).await.is_err() {
        return false;
    }
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "backend response body failed midway");
                return false;
            }
        };
        if stream.write_all(&chunk).await.is_err() || stream.flush().await.is_err() {
            return false;
        }
    }
    stream.shutdown().await.is_ok()
}

/// Serves an HTTP stream on a yamux stream, resetting it when the reply cannot be completed.
pub(crate) async fn serve_on_mux_stream(
    mut stream: agentserver_mux::Stream,
    meta: Vec<u8>,
    backend: Arc<dyn Backend>,
) {
    if !serve_http_stream(&stream, &meta, backend).await {
        stream.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(canonical_header_name("content-type"), "Content-Type");
        assert_eq!(canonical_header_name("X-FOO-bar"), "X-Foo-Bar");
        assert_eq!(canonical_header_name("etag"), "Etag");
        assert_eq!(canonical_header_name("bad name"), "bad name");
    }

    #[test]
    fn first_value_wins() {
        let h = first_values(&[
            ("set-cookie".into(), "a=1".into()),
            ("Set-Cookie".into(), "b=2".into()),
            ("content-type".into(), "text/html".into()),
        ]);
        assert_eq!(h["Set-Cookie"], "a=1");
        assert_eq!(h["Content-Type"], "text/html");
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn meta_parses_go_shapes() {
        let m: HttpStreamMeta =
            serde_json::from_str(r#"{"method":"POST","path":"/x","headers":null,"body_len":3}"#)
                .unwrap();
        assert!(m.headers.is_empty());
        assert_eq!(m.body_len, 3);
    }
}
