//! The crate's integration tests, one test binary: each module is one former test file
//! (same tests, same assertions), sharing the support modules below. One binary links once
//! instead of once per file; nextest still runs every test in its own process, so tests that
//! install a global tracing subscriber keep that process to themselves.

mod support;

mod proxy;
mod real_opencode;
mod startup;
