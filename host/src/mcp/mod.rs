//! `agentserver mcp-server`: the stdio MCP bridge with the five workspace tools (spec §10.2).
//!
//! Claude Code starts it from the `.mcp.json` the claudecode backend writes. It reads
//! [`BridgeConfig`] from the environment, speaks MCP (newline-delimited JSON-RPC 2.0, via the
//! official `rmcp` SDK) on stdin/stdout, and turns tool calls into requests to the server's
//! agent API (spec §14): [`api`] is the HTTP side, [`listing`] the agent listing shown in
//! `delegate_task`'s description, [`tools`] the five tools, [`server`] the MCP side.
//! Nothing but protocol messages is written to stdout; logs go to stderr.

pub mod api;
pub mod config;
pub mod listing;
pub mod server;
pub mod tools;

pub use config::{BridgeConfig, MISSING_ENV_MESSAGE, MissingEnv};
pub use server::{McpBridge, ServeError, run_stdio, serve};
