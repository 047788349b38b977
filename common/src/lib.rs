//! The single owner of concerns the host, the built-in backends and the probe share, so that
//! each exists once (issue 16, "one owner per concern"):
//!
//! - [`process`]: child processes in their own process group or session, with the signal mask
//!   reset and a parent-death signal; the stop ladder (signal → grace → SIGKILL of the group);
//!   the leftover sweep; a bounded stderr tail. The only place that calls `killpg`. Its
//!   [`process::scope`]: the subreaper and [`process::Scope`], which finds and kills what a task
//!   or a shared server started even after it left its group and session (issue 18).
//! - [`backoff`]: the one retry schedule ([`backoff::Backoff`]: initial, cap, jitter,
//!   reset after a long-lived attempt) and a jittered interval helper.
//! - [`sse`]: the one bounded, incremental Server-Sent Events parser.
//! - [`secret`]: [`secret::Secret`], a string that never prints itself, and the process-wide
//!   redaction registry the host's log writer scrubs.
//! - [`forward`]: the one HTTP forwarder of tunnel requests to a local server (hop-by-hop
//!   headers, the final URL's origin check, streamed request bodies with an exact
//!   `Content-Length`), shipped by the opencode backend and run by the tunnel tests.
//!
//! - [`grace`]: [`grace::call_with_grace`], the one "run a call, tell it to stop, give it a
//!   grace period, then abandon it" rule (the task runner, native and WASM plugins).
//!
//! Of the workspace it depends only on `agentserver-plugin-api` (the HTTP types `forward`
//! speaks), so the backends (which otherwise depend only on the plugin API) can use it.

pub mod backoff;
pub mod forward;
pub mod grace;
#[cfg(unix)]
pub mod process;
pub mod secret;
pub mod sse;

pub use backoff::{Backoff, BackoffPolicy};
pub use secret::Secret;
