//! The tunnel's HTTP streams forwarded to the local opencode (spec §6.4.2 step 3 and §11):
//! single-valued headers minus hop-by-hop ones, `Authorization` replaced by Basic
//! `opencode:<token>` when a token is set, no timeout (SSE), no decompression, and the body
//! streamed back chunk by chunk as it arrives.

use agentserver_plugin_api::{HttpRequest, HttpResponse};
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use url::Url;

use crate::api::{Api, error_chain};

/// Headers that describe a hop, not the request or response (RFC 9110 §7.6.1), plus `Host`
/// and `Content-Length`, which the HTTP client sets itself.
const HOP_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
];

/// Response headers not passed back (the tunnel carries the body verbatim until `FIN`).
const HOP_RESPONSE_HEADERS: &[&str] = &[
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "trailers",
];

fn is_hop(name: &str, list: &[&str]) -> bool {
    list.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Why a request could not be forwarded.
#[derive(Debug)]
pub(crate) enum ForwardError {
    /// Nothing reached opencode (connection refused): safe to retry once it is back.
    Connect(String),
    /// The exchange failed after the request may have been sent (a reset pooled connection
    /// of a server that just died): only idempotent requests may be retried.
    Lost(String),
    /// Any other failure, already turned into the reply to send.
    Reply(HttpResponse),
}

/// The URL `path` resolves to under `base`, or `None` if it would leave `base`'s origin or
/// path prefix (an absolute URL, `//host/x`, `..` above the base path).
pub fn target_url(base: &Url, path: &str) -> Option<Url> {
    if !path.starts_with('/') || path.starts_with("//") || path.starts_with("/\\") {
        return None;
    }
    let prefix = base.as_str().trim_end_matches('/');
    let url = Url::parse(&format!("{prefix}{path}")).ok()?;
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default();
    let base_path = base.path().trim_end_matches('/');
    (same_origin && url.path().starts_with(base_path) && url.username().is_empty()).then_some(url)
}

/// Forwards one request to the opencode at `base`.
pub(crate) async fn forward(
    api: &Api,
    base: &Url,
    request: &HttpRequest,
) -> Result<HttpResponse, ForwardError> {
    let Some(url) = target_url(base, &request.path) else {
        return Err(ForwardError::Reply(HttpResponse::text(
            400,
            "invalid request path",
        )));
    };
    let Ok(method) = reqwest::Method::from_bytes(request.method.as_bytes()) else {
        return Err(ForwardError::Reply(HttpResponse::text(
            502,
            "failed to create request",
        )));
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        if is_hop(name, HOP_HEADERS) {
            continue;
        }
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            return Err(ForwardError::Reply(HttpResponse::text(
                502,
                "failed to create request",
            )));
        };
        headers.insert(n, v);
    }
    if let Some(auth) = api.auth() {
        headers.insert(AUTHORIZATION, auth.clone());
    }
    let result = api
        .client()
        .request(method, url)
        .headers(headers)
        .body(request.body.clone())
        .send()
        .await;
    let response = match result {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Err(ForwardError::Connect(error_chain(&e))),
        Err(e) => return Err(ForwardError::Lost(error_chain(&e))),
    };
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter(|(k, _)| !is_hop(k.as_str(), HOP_RESPONSE_HEADERS))
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .bytes_stream()
        .map_err(|e| std::io::Error::other(error_chain(&e)))
        .boxed();
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_stay_on_the_local_server() {
        let base = Url::parse("http://127.0.0.1:4096").unwrap();
        assert_eq!(
            target_url(&base, "/session?directory=/x").unwrap().as_str(),
            "http://127.0.0.1:4096/session?directory=/x"
        );
        assert_eq!(
            target_url(&base, "/").unwrap().as_str(),
            "http://127.0.0.1:4096/"
        );
        assert!(target_url(&base, "//evil.example/x").is_none());
        assert!(target_url(&base, "/\\evil/x").is_none());
        assert!(target_url(&base, "http://evil/x").is_none());
        assert!(target_url(&base, "@evil.example/x").is_none());
        // `/@evil` is a path on the local server, not a userinfo.
        assert_eq!(
            target_url(&base, "/@evil.example/x").unwrap().host_str(),
            Some("127.0.0.1")
        );
        let prefixed = Url::parse("http://127.0.0.1:4096/oc/").unwrap();
        assert!(target_url(&prefixed, "/../admin").is_none());
        assert_eq!(
            target_url(&prefixed, "/event").unwrap().as_str(),
            "http://127.0.0.1:4096/oc/event"
        );
    }

    #[test]
    fn hop_headers() {
        assert!(is_hop("Connection", HOP_HEADERS));
        assert!(is_hop("HOST", HOP_HEADERS));
        assert!(!is_hop("Authorization", HOP_HEADERS));
        assert!(!is_hop("Content-Length", HOP_RESPONSE_HEADERS));
    }
}
