//! The contract between the `agentserver` host and the backends that run its tasks.
//!
//! A backend is anything that implements [`Backend`]: the built-in `claudecode` and `opencode`
//! crates, a native plugin loaded through the C ABI, or a WebAssembly component. The host never
//! needs to know which: it hands a [`Task`] to [`Backend::execute`] together with an
//! [`EventSink`] and a [`CancellationToken`], and gets a [`TaskOutcome`] back.
//!
//! Nothing in this crate knows about HTTP clients, WebSockets or the agentserver server.

mod backend;
pub mod ffi;
mod http;
pub mod native;
mod task;
pub mod wit;

pub use backend::{Backend, BackendError, BackendInfo, SessionType, TerminalIo, TerminalStream};
pub use http::{HttpBody, HttpRequest, HttpResponse, InvalidPath, LocalPath, RequestBody};
pub use task::{EventSink, FailureKind, Task, TaskEvent, TaskOutcome, TaskStatus, UsageLimit};
pub use tokio_util::sync::CancellationToken;

/// The semver version of this API. A plugin built against a different **major** version is
/// refused by the host with an error naming both versions. Deliberately not the crate version:
/// it changes only when the contract (C ABI JSON, WIT package) changes, and matches the WIT
/// package `agentserver:backend@1.0.0` and `AGENTSERVER_PLUGIN_API_VERSION` in the C header.
pub const API_VERSION: &str = "1.0.0";

/// Major version of [`API_VERSION`], the part that decides compatibility.
pub const API_MAJOR: u32 = 1;
