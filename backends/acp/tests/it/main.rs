//! The acp backend's integration tests, one test binary: a misbehaving fake agent (a Python
//! script spawned as the agent command) for bad input, and the real `opencode acp` against
//! the fake LLM.

mod support;

#[path = "../../../../tests/integration/src/opencode_support.rs"]
#[allow(dead_code)]
mod opencode_support;

mod fake_agent;
mod real_claude_acp;
mod real_opencode;
