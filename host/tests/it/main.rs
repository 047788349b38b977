//! The crate's integration tests, one test binary: each module is one former test file
//! (same tests, same assertions), sharing the support modules below. One binary links once
//! instead of once per file; nextest still runs every test in its own process, so tests that
//! install a global tracing subscriber keep that process to themselves.

mod support;

mod cli_verbose;
mod demo;
mod deploy_manifests;
mod dev_server;
mod fleet;
mod login_device_flow;
mod login_no_token_in_logs;
mod login_refresh_register;
mod mcp;
mod ops_lifecycle;
mod ops_metrics;
mod outbox_flush;
mod plugins_cli;
mod plugins_events;
mod plugins_hostile_files;
mod plugins_kit;
mod plugins_native;
mod plugins_process;
mod plugins_run;
mod plugins_sdk;
mod plugins_wasm;
mod probe_golden;
mod probe_info_command;
mod probe_parsers;
mod probe_tools;
mod run_acp;
mod run_command;
mod run_headless;
mod run_no_token_in_logs;
mod run_opencode;
mod run_sandboxes;
mod run_worktrees;
mod service;
mod state_commands;
mod state_hostile_files;
mod state_registry_concurrency;
mod state_sessions;
mod task_worker_command;

/// The libtest name of the test `name` in the module `module` (`module_path!()`), for tests that
/// re-run this binary to execute one ignored child test in another process.
pub fn test_name(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{name}"),
        None => name.to_owned(),
    }
}
