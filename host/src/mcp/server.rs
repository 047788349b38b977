//! The MCP side: an `rmcp` server handler serving the five tools over newline-delimited
//! JSON-RPC 2.0 on any byte stream (stdin/stdout for `agentserver mcp-server`).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, CustomRequest,
    CustomResult, ErrorCode, Implementation, ListToolsResult, PaginatedRequestParams,
    ProtocolVersion, ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RoleServer, ServerInitializeError, serve_server};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::{ErrorData, ServerHandler};
use tokio::io::{AsyncRead, AsyncWrite};

use super::api::{LISTING_TIMEOUT, WorkspaceApi};
use super::config::BridgeConfig;
use super::listing::{AgentListing, REFRESH_PERIOD};
use super::tools::{self, ToolOutput, Tools};

/// `serverInfo.name` in the `initialize` answer (upstream's).
pub const SERVER_NAME: &str = "agentserver-mcp-bridge";
/// `serverInfo.version` in the `initialize` answer (upstream's).
pub const SERVER_VERSION: &str = "0.1.0";
/// Longest accepted input line; longer lines are dropped (upstream's scanner limit).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// The protocol versions this server answers `initialize` with: the one the client asks for
/// when it is one of these, else the newest.
pub const SUPPORTED_PROTOCOL_VERSIONS: &[ProtocolVersion] = &[
    ProtocolVersion::V_2024_11_05,
    ProtocolVersion::V_2025_03_26,
    ProtocolVersion::V_2025_06_18,
    ProtocolVersion::V_2025_11_25,
];

/// Methods this server implements: a request for one of them that reaches the custom-request
/// fallback had params rmcp could not decode.
const KNOWN_METHODS: &[&str] = &["initialize", "ping", "tools/list", "tools/call"];

/// Why serving ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The MCP handshake failed (not a clean EOF before `initialize`).
    #[error("MCP initialization failed: {0}")]
    Initialize(Box<ServerInitializeError>),
    /// The service task panicked or was aborted.
    #[error("MCP service task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The MCP server: the tools plus the agent listing behind `delegate_task`'s description.
#[derive(Debug, Clone)]
pub struct McpBridge {
    tools: Tools,
    listing: Arc<AgentListing>,
}

impl McpBridge {
    /// A bridge for `config`. Call [`McpBridge::start_listing`] (or [`serve`]) to fill the listing.
    pub fn new(config: &BridgeConfig) -> Self {
        let api = WorkspaceApi::new(config.server_url.clone(), config.token.clone());
        Self {
            tools: Tools::new(api.clone(), config.sandbox_id.clone()),
            listing: Arc::new(AgentListing::new(api, config.sandbox_id.clone())),
        }
    }

    /// The agent listing.
    pub fn listing(&self) -> &Arc<AgentListing> {
        &self.listing
    }

    /// Starts refreshing the listing every `period` (first fetch at once).
    pub fn start_listing(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        self.listing.spawn_refresh(period)
    }
}

fn to_result(out: ToolOutput) -> CallToolResult {
    if out.is_error {
        CallToolResult::error(vec![ContentBlock::text(out.text)])
    } else {
        let mut res = CallToolResult::success(vec![ContentBlock::text(out.text)]);
        // Upstream sends `isError` only when true.
        res.is_error = None;
        res
    }
}

impl ServerHandler for McpBridge {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(SERVER_NAME, SERVER_VERSION))
            .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(SUPPORTED_PROTOCOL_VERSIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        // The first fetch runs concurrently with the handshake; let it land (bounded by its
        // own timeout) so the first listing Claude Code sees is the real one.
        self.listing
            .wait_first_fetch(LISTING_TIMEOUT + Duration::from_secs(1))
            .await;
        Ok(ListToolsResult::with_all_items(tools::definitions(
            self.listing.delegate_description(),
        )))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        match self.tools.call(&request.name, &args).await {
            Some(out) => {
                if out.is_error {
                    tracing::debug!(tool = %request.name, "mcp: tool error: {}", out.text);
                }
                Ok(to_result(out).into())
            }
            None => Err(ErrorData::invalid_params(
                format!("unknown tool: {}", request.name),
                None,
            )),
        }
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        // rmcp hands a known method whose params did not parse (e.g. `tools/call` without a
        // `name`) to this fallback too; that is upstream's -32602, not -32601.
        if KNOWN_METHODS.contains(&request.method.as_str()) {
            return Err(ErrorData::invalid_params("invalid params", None));
        }
        Err(ErrorData::new(
            ErrorCode::METHOD_NOT_FOUND,
            format!("method not found: {}", request.method),
            None,
        ))
    }
}

/// Serves `bridge` on `read`/`write` until `read` reaches EOF, refreshing the agent listing
/// every 60 s meanwhile. EOF before `initialize` is a clean end too.
pub async fn serve<R, W>(bridge: McpBridge, read: R, write: W) -> Result<(), ServeError>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let refresher = bridge.start_listing(REFRESH_PERIOD);
    let transport = AsyncRwTransport::new_server(read, write).with_max_line_length(MAX_LINE_BYTES);
    let result = match serve_server(bridge, transport).await {
        Ok(running) => running.waiting().await.map(|reason| {
            tracing::debug!(?reason, "mcp: client went away");
        }),
        Err(ServerInitializeError::ConnectionClosed(_)) => {
            tracing::debug!("mcp: stdin closed before initialize");
            Ok(())
        }
        Err(err) => {
            refresher.abort();
            return Err(ServeError::Initialize(Box::new(err)));
        }
    };
    refresher.abort();
    Ok(result?)
}

/// Serves `config`'s bridge on this process's stdin and stdout.
pub async fn run_stdio(config: &BridgeConfig) -> Result<(), ServeError> {
    serve(
        McpBridge::new(config),
        tokio::io::stdin(),
        tokio::io::stdout(),
    )
    .await
}
