//! A mock agentserver for tests and for `agentserver dev-server`.

pub mod fake_llm;
