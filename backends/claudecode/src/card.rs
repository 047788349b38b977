//! The agent card of spec §8.5 (upstream v0.30.1–v0.36), for servers that still want one.
//!
//! Upstream v0.37+ no longer registers it (the server derives a card from the capabilities in
//! agent info), so the host sends it only behind a flag, off by default:
//! `POST {server}/api/agent/discovery/cards`, Bearer = tunnel token, this body, timeout 10 s.

use serde_json::{Value, json};

/// Path of the card registration endpoint (append to the server URL).
pub const AGENT_CARD_PATH: &str = "/api/agent/discovery/cards";

/// Description of the claudecode agent card.
pub const AGENT_CARD_DESCRIPTION: &str =
    "Claude Code agent with full coding, terminal, and search capabilities";

/// The JSON body of the card registration for a sandbox shown as `display_name`.
pub fn agent_card_body(display_name: &str) -> Value {
    json!({
        "display_name": display_name,
        "description": AGENT_CARD_DESCRIPTION,
        "agent_type": "claudecode",
        "card": {
            "skills": [
                {"name": "code-editing", "description": "Read, write, and edit source code"},
                {"name": "code-review", "description": "Review code for bugs and best practices"},
                {"name": "terminal", "description": "Execute shell commands"},
                {"name": "code-search", "description": "Search and navigate codebases"}
            ],
            "tags": ["code", "terminal", "search"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_matches_spec() {
        let body = agent_card_body("my box");
        assert_eq!(body["display_name"], "my box");
        assert_eq!(body["agent_type"], "claudecode");
        assert_eq!(body["card"]["skills"].as_array().unwrap().len(), 4);
        assert_eq!(body["card"]["skills"][2]["name"], "terminal");
        assert_eq!(body["card"]["tags"], json!(["code", "terminal", "search"]));
    }
}
