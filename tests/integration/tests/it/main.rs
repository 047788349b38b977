//! The crate's integration tests, one test binary: each module is one former test file
//! (same tests, same assertions), sharing the support modules below. One binary links once
//! instead of once per file; nextest still runs every test in its own process, so tests that
//! install a global tracing subscriber keep that process to themselves.

mod intake_support;

mod bench_entry;
mod claudecode_e2e;
mod intake_bridge;
mod intake_hostile_server;
mod intake_process;
mod intake_scale;
mod intake_status;
mod opencode;
mod tunnel;
