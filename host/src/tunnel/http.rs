//! HTTP streams (spec §6.4.2): the server sends `[0x01][len]{method,path,headers,body_len}` and
//! `body_len` body bytes; the host answers `[0x01][len]{status,headers}`, the body verbatim,
//! then `FIN`.

use std::collections::HashMap;
use std::sync::Arc;

use agentserver_mux::{StreamType, write_header};
use agentserver_plugin_api::{Backend, BackendError, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Checks and normalises a request path: adds a leading `/` when missing; rejects anything that
/// would be read as an authority (`//host/x`, `/\host`) or that holds control characters or
/// spaces (which Go's URL parser refuses).
pub fn validate_path(path: &str) -> Option<String> {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    if path.starts_with("//") || path.starts_with("/\\") {
        return None;
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return None;
    }
    Some(path)
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

/// Serves one HTTP stream whose stream header (type 1, `meta`) has been read. Returns `false`
/// when the reply could not be completed (the response body failed midway or the stream
/// broke); the caller should then reset the stream rather than let it end with `FIN`.
pub async fn serve_http_stream<S>(stream: &mut S, meta: &[u8], backend: Arc<dyn Backend>) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let meta: HttpStreamMeta = match serde_json::from_slice(meta) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "invalid HTTP stream metadata");
            write_error(stream, 400, "invalid metadata").await;
            return true;
        }
    };
    let body_len = u64::try_from(meta.body_len).unwrap_or(0);
    let mut body = Vec::with_capacity(body_len.min(1 << 20) as usize);
    match (&mut *stream).take(body_len).read_to_end(&mut body).await {
        Ok(n) if n as u64 == body_len => {}
        Ok(_) | Err(_) => {
            write_error(stream, 502, "failed to read request body").await;
            return true;
        }
    }
    let Some(path) = validate_path(&meta.path) else {
        write_error(stream, 400, "invalid request path").await;
        return true;
    };
    let request = HttpRequest {
        method: meta.method,
        path,
        headers: meta.headers.into_iter().collect(),
        body: Bytes::from(body),
    };
    tracing::debug!(method = %request.method, path = %request.path, "tunnel HTTP request");
    let response = match backend.handle_http(request).await {
        Ok(r) => r,
        Err(e) => {
            let message = match &e {
                BackendError::Internal(m) => format!("local service error: {m}"),
                other => format!("local service error: {other}"),
            };
            write_error(stream, 502, &message).await;
            return true;
        }
    };
    write_response(stream, response).await
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
    if !serve_http_stream(&mut stream, &meta, backend).await {
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
    fn paths() {
        assert_eq!(validate_path("/a?b=c").as_deref(), Some("/a?b=c"));
        assert_eq!(validate_path("x/y").as_deref(), Some("/x/y"));
        assert_eq!(validate_path("").as_deref(), Some("/"));
        assert_eq!(validate_path("//evil/x"), None);
        assert_eq!(validate_path("/\\evil/x"), None);
        assert_eq!(validate_path("/a\nb"), None);
        assert_eq!(validate_path("/a b"), None);
        // A scheme-looking path is just a path once it starts with `/`.
        assert_eq!(
            validate_path("http://evil/x").as_deref(),
            Some("/http://evil/x")
        );
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
