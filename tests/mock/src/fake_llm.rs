//! A fake LLM server for driving the real `claude` and `opencode` CLIs offline.
//!
//! It speaks just enough of two APIs for both CLIs to run whole turns against it on loopback:
//!
//! * Anthropic Messages: `POST /v1/messages` (JSON, or SSE when `"stream": true`) and
//!   `POST /v1/messages/count_tokens`;
//! * OpenAI chat completions: `POST /v1/chat/completions` (JSON or SSE), `GET /v1/models`.
//!
//! Anything else is recorded and answered 404 with a JSON error body.
//!
//! What it answers is decided from the **last user message** of each request (the event
//! sequences are those of `../shared/reference/fake_llm_reference.py`, which the real CLIs accept):
//!
//! | last user message | answer |
//! |---|---|
//! | carries a tool result (Anthropic `tool_result` block, OpenAI `role: tool`) | text `FAKE_DONE: tool said <first 80 chars of the result>` |
//! | contains `FAKE_STALL` | starts the answer (SSE headers, `message_start`, …) and then never finishes: the connection stays open until the client goes away or the server stops |
//! | contains `FAKE_ERR_<code>` | HTTP `<code>` with an Anthropic/OpenAI error body and `retry-after-ms` |
//! | contains `FAKE_SLOW_<s>` | waits `<s>` seconds, then answers as below |
//! | contains `FAKE_RATE_LIMIT_<s>` | HTTP 429 `rate_limit_error` with the headers of a usage limit that resets in `<s>` seconds: `retry-after: <s>` and Anthropic's `anthropic-ratelimit-unified-status: rejected`, `…-reset: <unix seconds>`, `…-representative-claim: five_hour` (`claude` logged in with an OAuth token turns these into a `rate_limit_event` with `resetsAt`) |
//! | contains `TOOL_SH[<command>]` and a `Bash`/`bash` tool is offered | a `tool_use` of that tool running `<command>` |
//! | contains `TOOL_BASH` and a `Bash`/`bash` tool is offered | a `tool_use` of that tool with `{"command": "echo hi"}` |
//! | contains `TOOL_WRITE:<abs path>` and a `Write`/`write` tool is offered | a `tool_use` writing `hello from fake\n` to the path |
//! | otherwise | text [`FakeLlmConfig::text`] (default `Hello from the fake LLM.`) |
//!
//! Every request is recorded ([`FakeLlmHandle::requests`]).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let llm = agentserver_mock::fake_llm::FakeLlm::start().await?;
//! // claude: ANTHROPIC_BASE_URL=<llm.url()>; opencode: baseURL <llm.openai_base_url()>
//! println!("{}", llm.url());
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The text answered when no keyword matches.
pub const DEFAULT_TEXT: &str = "Hello from the fake LLM.";

/// Keyword: answer with a `Bash` tool call (`echo hi`).
pub const TOOL_BASH: &str = "TOOL_BASH";
/// Keyword: `TOOL_SH[echo hi > out.txt]` answers with a `Bash` tool call running the
/// command between the brackets (in the agent's working directory).
pub const TOOL_SH: &str = "TOOL_SH[";
/// Keyword prefix: `TOOL_WRITE:/abs/path` answers with a `Write` tool call for that path.
pub const TOOL_WRITE: &str = "TOOL_WRITE:";
/// Keyword prefix: `FAKE_ERR_500` answers HTTP 500 (any three-digit code).
pub const FAKE_ERR: &str = "FAKE_ERR_";
/// Keyword prefix: `FAKE_SLOW_3` waits 3 seconds before answering.
pub const FAKE_SLOW: &str = "FAKE_SLOW_";
/// Keyword: start the answer and never finish it (the connection stays open).
pub const FAKE_STALL: &str = "FAKE_STALL";
/// Keyword prefix: `FAKE_RATE_LIMIT_60` answers 429 with a usage limit resetting in 60 s.
pub const FAKE_RATE_LIMIT: &str = "FAKE_RATE_LIMIT_";

/// How the fake server answers.
#[derive(Clone, Debug)]
pub struct FakeLlmConfig {
    /// Text of plain answers.
    pub text: String,
    /// Value of the `retry-after-ms` header on injected errors (`None` omits the header). The
    /// default `1` makes both CLIs retry at once instead of backing off for minutes.
    pub retry_after_ms: Option<String>,
}

impl Default for FakeLlmConfig {
    fn default() -> Self {
        Self {
            text: DEFAULT_TEXT.to_owned(),
            retry_after_ms: Some("1".to_owned()),
        }
    }
}

/// One request the fake server received.
#[derive(Clone, Debug, Serialize)]
pub struct RecordedRequest {
    /// Milliseconds since the Unix epoch when it arrived.
    pub at_ms: u64,
    /// HTTP method.
    pub method: String,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
    /// `anthropic-version` header.
    pub anthropic_version: Option<String>,
    /// `anthropic-beta` header.
    pub anthropic_beta: Option<String>,
    /// Whether an `x-api-key` header was sent (its value is never recorded).
    pub has_x_api_key: bool,
    /// Whether an `Authorization` header was sent (its value is never recorded).
    pub has_authorization: bool,
    /// `model` of the body.
    pub model: Option<String>,
    /// `stream` of the body.
    pub stream: bool,
    /// Number of `messages` in the body.
    pub n_messages: usize,
    /// Text of the last user (or tool) message.
    pub last_user: String,
    /// Names of the tools offered.
    pub tools: Vec<String>,
    /// The whole body as JSON (`null` when empty, `{"_raw": …}` when not JSON).
    pub body: Value,
}

/// Starts fake LLM servers.
#[derive(Debug)]
pub struct FakeLlm;

impl FakeLlm {
    /// Starts a server with the default answers on `127.0.0.1:<random port>`.
    pub async fn start() -> std::io::Result<FakeLlmHandle> {
        Self::start_with(FakeLlmConfig::default()).await
    }

    /// Starts a server with the given answers on `127.0.0.1:<random port>`.
    pub async fn start_with(config: FakeLlmConfig) -> std::io::Result<FakeLlmHandle> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let state = Arc::new(Shared {
            config,
            requests: Mutex::new(Vec::new()),
            recorded: Notify::new(),
            stalled: AtomicUsize::new(0),
            shutdown: shutdown.clone(),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(err) = serve.await {
                tracing::warn!(%err, "fake LLM server stopped with an error");
            }
        });
        tracing::debug!(%addr, "fake LLM listening");
        Ok(FakeLlmHandle {
            addr,
            state,
            shutdown,
            task,
        })
    }
}

/// A running fake LLM server; stops when dropped.
#[derive(Debug)]
pub struct FakeLlmHandle {
    addr: SocketAddr,
    state: Arc<Shared>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl FakeLlmHandle {
    /// Base URL, e.g. `http://127.0.0.1:41234` (claude: `ANTHROPIC_BASE_URL`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// OpenAI-style base URL, e.g. `http://127.0.0.1:41234/v1` (opencode's `baseURL`).
    pub fn openai_base_url(&self) -> String {
        format!("{}/v1", self.url())
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// Waits until at least `count` requests have been received, or `timeout` passes.
    /// Returns all requests received so far either way.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.recorded.notified();
            let current = self.requests();
            if current.len() >= count {
                return current;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.requests();
            }
        }
    }

    /// How many answers are stalled right now (`FAKE_STALL` responses still open).
    pub fn stalled_now(&self) -> usize {
        self.state.stalled.load(Ordering::SeqCst)
    }

    /// Stops the server and ends stalled answers.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }
}

impl Drop for FakeLlmHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Debug)]
struct Shared {
    config: FakeLlmConfig,
    requests: Mutex<Vec<RecordedRequest>>,
    recorded: Notify,
    stalled: AtomicUsize,
    shutdown: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Decrements the stalled counter when a stalled answer ends.
struct StallGuard(Arc<Shared>);

impl Drop for StallGuard {
    fn drop(&mut self) {
        self.0.stalled.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What to answer.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    Text(String),
    Tool { name: String, input: Value },
}

/// Flattens Anthropic/OpenAI message content into plain text.
fn text_of(content: Option<&Value>) -> String {
    match content {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::new();
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => parts.push(
                        b.get("text")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                    ),
                    Some("tool_result") => parts.push(text_of(b.get("content"))),
                    _ => {}
                }
            }
            parts.join("\n")
        }
        Some(other) => other.to_string(),
    }
}

fn last_user(messages: &[Value]) -> Option<&Value> {
    messages.iter().rev().find(|m| {
        matches!(
            m.get("role").and_then(Value::as_str),
            Some("user") | Some("tool")
        )
    })
}

fn messages_of(body: &Value) -> &[Value] {
    body.get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn first_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect::<String>().trim().to_owned()
}

/// The number right after `prefix` in `text` (digits only), if any.
fn number_after(text: &str, prefix: &str) -> Option<u64> {
    text.match_indices(prefix).find_map(|(i, _)| {
        let digits: String = text[i + prefix.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

/// The status of `FAKE_ERR_<ddd>` in `text`.
fn error_code(text: &str) -> Option<u16> {
    text.match_indices(FAKE_ERR).find_map(|(i, _)| {
        let rest = &text[i + FAKE_ERR.len()..];
        let digits: String = rest.chars().take(3).collect();
        if digits.len() == 3 && digits.chars().all(|c| c.is_ascii_digit()) {
            digits
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=999).contains(c))
        } else {
            None
        }
    })
}

fn decide(
    messages: &[Value],
    tool_names: &[String],
    openai: bool,
    config: &FakeLlmConfig,
) -> Decision {
    let Some(lu) = last_user(messages) else {
        return Decision::Text(config.text.clone());
    };
    let content = lu.get("content");
    if openai && lu.get("role").and_then(Value::as_str) == Some("tool") {
        return Decision::Text(format!(
            "FAKE_DONE: tool said {}",
            first_chars(&text_of(content), 80)
        ));
    }
    if let Some(Value::Array(blocks)) = content
        && let Some(res) = blocks
            .iter()
            .find(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
    {
        return Decision::Text(format!(
            "FAKE_DONE: tool said {}",
            first_chars(&text_of(res.get("content")), 80)
        ));
    }
    let prompt = text_of(content);
    let find_tool = |lower: &str| {
        tool_names
            .iter()
            .find(|n| n.to_lowercase() == lower)
            .cloned()
    };
    if let Some(i) = prompt.find(TOOL_SH)
        && let Some(end) = prompt[i..].find(']')
        && let Some(name) = find_tool("bash")
    {
        let command = &prompt[i + TOOL_SH.len()..i + end];
        return Decision::Tool {
            name,
            input: json!({"command": command, "description": "Run the test's command"}),
        };
    }
    if prompt.contains(TOOL_BASH)
        && let Some(name) = find_tool("bash")
    {
        return Decision::Tool {
            name,
            input: json!({"command": "echo hi", "description": "Print hi"}),
        };
    }
    if let Some(i) = prompt.find(TOOL_WRITE)
        && let Some(name) = find_tool("write")
    {
        let path: String = prompt[i + TOOL_WRITE.len()..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        if !path.is_empty() {
            let key = if name == "Write" {
                "file_path"
            } else {
                "filePath"
            };
            return Decision::Tool {
                name,
                input: json!({key: path, "content": "hello from fake\n"}),
            };
        }
    }
    Decision::Text(config.text.clone())
}

fn new_id(prefix: &str, len: usize) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &hex[..len.min(hex.len())])
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn json_response(status: StatusCode, body: &Value, extra: &[(&str, String)]) -> Response {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("request-id", new_id("req_fake_", 12));
    for (k, v) in extra {
        builder = builder.header(*k, v.as_str());
    }
    builder
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn not_found(path: &str) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"type": "error", "error": {"type": "not_found_error", "message": format!("fake: no route {path}")}}),
        &[],
    )
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .map(str::to_owned)
}

fn tool_names(body: &Value) -> Vec<String> {
    body.get("tools")
        .and_then(Value::as_array)
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| {
                    t.get("name")
                        .or_else(|| t.get("function").and_then(|f| f.get("name")))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn handle(
    State(state): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| uri.path().to_owned());
    let path = uri.path().to_owned();
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or_else(
            |_| json!({"_raw": String::from_utf8_lossy(&body[..body.len().min(500)])}),
        )
    };
    let messages = messages_of(&body);
    let last = text_of(last_user(messages).and_then(|m| m.get("content")));
    let record = RecordedRequest {
        at_ms: now_ms(),
        method: method.to_string(),
        path: path_and_query,
        user_agent: header(&headers, "user-agent"),
        anthropic_version: header(&headers, "anthropic-version"),
        anthropic_beta: header(&headers, "anthropic-beta"),
        has_x_api_key: headers.contains_key("x-api-key"),
        has_authorization: headers.contains_key("authorization"),
        model: body.get("model").and_then(Value::as_str).map(str::to_owned),
        stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
        n_messages: messages.len(),
        last_user: last.clone(),
        tools: tool_names(&body),
        body: body.clone(),
    };
    lock(&state.requests).push(record);
    state.recorded.notify_waiters();

    if method == Method::GET {
        return match path.as_str() {
            "/v1/models" | "/models" => json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": [
                    {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"},
                    {"id": "claude-fake", "type": "model", "display_name": "Claude Fake",
                     "created_at": "2025-01-01T00:00:00Z"}]}),
                &[],
            ),
            "/api/hello" => json_response(StatusCode::OK, &json!({}), &[]),
            _ => not_found(&path),
        };
    }
    if method == Method::HEAD {
        return Response::new(Body::empty());
    }
    if method != Method::POST {
        return not_found(&path);
    }

    let has_messages = !messages.is_empty();
    if has_messages {
        if let Some(secs) = number_after(&last, FAKE_SLOW) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
                _ = state.shutdown.cancelled() => return Response::new(Body::empty()),
            }
        }
        if let Some(secs) = number_after(&last, FAKE_RATE_LIMIT) {
            let resets_at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                + secs;
            return json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"type": "error", "error": {"type": "rate_limit_error", "message": format!("fake usage limit, resets in {secs}s")}}),
                &[
                    ("retry-after", secs.to_string()),
                    ("anthropic-ratelimit-unified-status", "rejected".to_owned()),
                    ("anthropic-ratelimit-unified-reset", resets_at.to_string()),
                    (
                        "anthropic-ratelimit-unified-representative-claim",
                        "five_hour".to_owned(),
                    ),
                ],
            );
        }
        if let Some(code) = error_code(&last) {
            let kind = match code {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let extra: Vec<(&str, String)> = state
                .config
                .retry_after_ms
                .iter()
                .map(|v| ("retry-after-ms", v.clone()))
                .collect();
            return json_response(
                status,
                &json!({"type": "error", "error": {"type": kind, "message": format!("fake injected {code}")}}),
                &extra,
            );
        }
    }
    if path.ends_with("/v1/messages/count_tokens") {
        return json_response(StatusCode::OK, &json!({"input_tokens": 42}), &[]);
    }
    let stall = has_messages && last.contains(FAKE_STALL);
    if path.ends_with("/v1/messages") {
        return anthropic(&state, &body, stall).await;
    }
    if path.ends_with("/chat/completions") {
        return openai(&state, &body, stall).await;
    }
    not_found(&path)
}

type Frames = Vec<String>;

/// An SSE response from frames, optionally never finishing (a stall).
fn sse_response(state: &Arc<Shared>, frames: Frames, stall: bool) -> Response {
    let head = futures_util::stream::iter(
        frames
            .into_iter()
            .map(|f| Ok::<Bytes, Infallible>(Bytes::from(f))),
    );
    let body = if stall {
        state.stalled.fetch_add(1, Ordering::SeqCst);
        let guard = StallGuard(state.clone());
        let token = state.shutdown.clone();
        let tail = futures_util::stream::once(async move {
            let _guard = guard;
            token.cancelled().await;
            Ok::<Bytes, Infallible>(Bytes::new())
        });
        Body::from_stream(head.chain(tail))
    } else {
        Body::from_stream(head)
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("request-id", new_id("req_fake_", 12))
        .body(body)
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Waits until the server stops (a stalled non-streaming answer).
async fn stall_forever(state: &Arc<Shared>) -> Response {
    state.stalled.fetch_add(1, Ordering::SeqCst);
    let _guard = StallGuard(state.clone());
    state.shutdown.cancelled().await;
    Response::new(Body::empty())
}

/// Splits text into words keeping their trailing whitespace (`\S+\s*`).
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            out.push(std::mem::take(&mut cur));
            in_space = false;
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    if out.is_empty() {
        out.push(text.to_owned());
    }
    out
}

async fn anthropic(state: &Arc<Shared>, body: &Value, stall: bool) -> Response {
    let tools = tool_names(body);
    let decision = decide(messages_of(body), &tools, false, &state.config);
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-fake")
        .to_owned();
    let mid = new_id("msg_fake_", 20);
    let usage_in = json!({"input_tokens": 100, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0});
    let with_output = |n: u64| {
        let mut u = usage_in.clone();
        u["output_tokens"] = json!(n);
        u
    };
    let (block, stop) = match &decision {
        Decision::Text(t) => (json!({"type": "text", "text": t}), "end_turn"),
        Decision::Tool { name, input } => (
            json!({"type": "tool_use", "id": new_id("toolu_fake_", 16), "name": name, "input": input}),
            "tool_use",
        ),
    };
    let streaming = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !streaming {
        if stall {
            return stall_forever(state).await;
        }
        return json_response(
            StatusCode::OK,
            &json!({"id": mid, "type": "message", "role": "assistant", "model": model,
                    "content": [block], "stop_reason": stop, "stop_sequence": null,
                    "usage": with_output(10)}),
            &[],
        );
    }
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut frames = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": with_output(1)}}),
    )];
    match &decision {
        Decision::Text(text) => {
            frames.push(ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            frames.push(ev("ping", json!({"type": "ping"})));
            if stall {
                return sse_response(state, frames, true);
            }
            for w in words(text) {
                frames.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}),
                ));
            }
        }
        Decision::Tool { .. } => {
            frames.push(ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {
                    "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}),
            ));
            if stall {
                return sse_response(state, frames, true);
            }
            let js = block["input"].to_string();
            let half = js.len() / 2;
            let half = (0..=half)
                .rev()
                .find(|i| js.is_char_boundary(*i))
                .unwrap_or(0);
            for part in [&js[..half], &js[half..]] {
                frames.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": part}}),
                ));
            }
        }
    }
    frames.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    frames.push(ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
               "usage": {"output_tokens": 10}}),
    ));
    frames.push(ev("message_stop", json!({"type": "message_stop"})));
    sse_response(state, frames, false)
}

async fn openai(state: &Arc<Shared>, body: &Value, stall: bool) -> Response {
    let tools = tool_names(body);
    let decision = decide(messages_of(body), &tools, true, &state.config);
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("fake-model")
        .to_owned();
    let cid = new_id("chatcmpl-fake", 12);
    let now = now_ms() / 1000;
    let usage = json!({"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110});
    let (msg, finish) = match &decision {
        Decision::Text(t) => (json!({"role": "assistant", "content": t}), "stop"),
        Decision::Tool { name, input } => (
            json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": new_id("call_fake_", 12), "type": "function",
                "function": {"name": name, "arguments": input.to_string()}}]}),
            "tool_calls",
        ),
    };
    let streaming = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !streaming {
        if stall {
            return stall_forever(state).await;
        }
        return json_response(
            StatusCode::OK,
            &json!({"id": cid, "object": "chat.completion", "created": now, "model": model,
                    "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                    "usage": usage}),
            &[],
        );
    }
    let chunk = |delta: Value, finish_reason: Value, usage: Option<&Value>| {
        let mut c = json!({"id": cid, "object": "chat.completion.chunk", "created": now, "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]});
        if let Some(u) = usage {
            c["usage"] = u.clone();
        }
        format!("data: {c}\n\n")
    };
    let mut frames = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
        None,
    )];
    if stall {
        return sse_response(state, frames, true);
    }
    match &decision {
        Decision::Text(t) => {
            for w in words(t) {
                frames.push(chunk(json!({"content": w}), Value::Null, None));
            }
        }
        Decision::Tool { .. } => {
            let tc = &msg["tool_calls"][0];
            frames.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": tc["id"], "type": "function",
                                       "function": {"name": tc["function"]["name"], "arguments": ""}}]}),
                Value::Null,
                None,
            ));
            frames.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": tc["function"]["arguments"]}}]}),
                Value::Null,
                None,
            ));
        }
    }
    frames.push(chunk(json!({}), json!(finish), Some(&usage)));
    frames.push("data: [DONE]\n\n".to_owned());
    sse_response(state, frames, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FakeLlmConfig {
        FakeLlmConfig::default()
    }

    #[test]
    fn keyword_parsing() {
        assert_eq!(error_code("x FAKE_ERR_500 y"), Some(500));
        assert_eq!(error_code("FAKE_ERR_50"), None);
        assert_eq!(number_after("FAKE_SLOW_12s", FAKE_SLOW), Some(12));
        assert_eq!(number_after("nothing", FAKE_SLOW), None);
        assert_eq!(words("a b  c"), vec!["a ", "b  ", "c"]);
    }

    #[test]
    fn decide_covers_tools_and_results() {
        let tools = vec!["Bash".to_owned(), "Write".to_owned()];
        let m = vec![json!({"role": "user", "content": "please TOOL_BASH"})];
        assert!(
            matches!(decide(&m, &tools, false, &cfg()), Decision::Tool { name, .. } if name == "Bash")
        );
        let m = vec![
            json!({"role": "user", "content": [{"type": "text", "text": "TOOL_WRITE:/tmp/x y"}]}),
        ];
        match decide(&m, &tools, false, &cfg()) {
            Decision::Tool { name, input } => {
                assert_eq!(name, "Write");
                assert_eq!(input["file_path"], "/tmp/x");
            }
            other => panic!("unexpected {other:?}"),
        }
        let m = vec![
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "hi"}]}),
        ];
        assert_eq!(
            decide(&m, &tools, false, &cfg()),
            Decision::Text("FAKE_DONE: tool said hi".into())
        );
        let m = vec![json!({"role": "tool", "content": "out"})];
        assert_eq!(
            decide(&m, &tools, true, &cfg()),
            Decision::Text("FAKE_DONE: tool said out".into())
        );
        // A tool keyword without the tool on offer is a plain answer.
        let m = vec![json!({"role": "user", "content": "TOOL_BASH"})];
        assert_eq!(
            decide(&m, &[], false, &cfg()),
            Decision::Text(DEFAULT_TEXT.into())
        );
    }

    async fn post(url: &str, body: Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(url)
            .header("x-api-key", "sk-ant-fake")
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    #[tokio::test]
    async fn anthropic_sse_text_and_request_log() {
        let llm = FakeLlm::start().await.unwrap();
        let resp = post(
            &format!("{}/v1/messages?beta=true", llm.url()),
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let text = resp.text().await.unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(names.first(), Some(&"message_start"));
        assert_eq!(names.last(), Some(&"message_stop"));
        let said: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(said, DEFAULT_TEXT);
        let reqs = llm.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].path, "/v1/messages?beta=true");
        assert!(reqs[0].has_x_api_key && reqs[0].stream);
        assert_eq!(reqs[0].last_user, "hi");
    }

    #[tokio::test]
    async fn openai_json_tool_call_and_models() {
        let llm = FakeLlm::start().await.unwrap();
        let resp = post(
            &format!("{}/chat/completions", llm.openai_base_url()),
            json!({"model": "fake-model", "messages": [{"role": "user", "content": "TOOL_BASH"}],
                   "tools": [{"type": "function", "function": {"name": "bash"}}]}),
        )
        .await;
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "bash"
        );
        let models: Value = reqwest::get(format!("{}/models", llm.openai_base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(models["data"][0]["id"], "fake-model");
        let resp = post(
            &format!("{}/chat/completions", llm.openai_base_url()),
            json!({"stream": true, "messages": [{"role": "user", "content": "yo"}]}),
        )
        .await;
        let text = resp.text().await.unwrap();
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    }

    #[tokio::test]
    async fn injected_error_and_stall() {
        let llm = FakeLlm::start().await.unwrap();
        let resp = post(
            &format!("{}/v1/messages", llm.url()),
            json!({"messages": [{"role": "user", "content": "FAKE_ERR_529"}]}),
        )
        .await;
        assert_eq!(resp.status(), 529);
        assert_eq!(resp.headers()["retry-after-ms"], "1");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");

        let url = format!("{}/v1/messages", llm.url());
        let stalled = tokio::spawn(async move {
            post(
                &url,
                json!({"stream": true, "messages": [{"role": "user", "content": "FAKE_STALL"}]}),
            )
            .await
            .text()
            .await
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while llm.stalled_now() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "stall never started"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!stalled.is_finished());
        llm.shutdown().await;
        let body = tokio::time::timeout(Duration::from_secs(10), stalled)
            .await
            .expect("stalled answer ends at shutdown")
            .unwrap();
        assert!(body.is_ok_and(|b| b.contains("message_start")));
    }
}
