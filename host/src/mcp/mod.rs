//! `agentserver mcp-server`: the stdio MCP bridge with the five workspace tools (spec §10.2).
