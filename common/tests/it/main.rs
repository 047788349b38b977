//! Integration tests of `agentserver-common` with real processes.

mod scope;
