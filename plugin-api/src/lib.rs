//! The contract between the `agentserver` host and the backends that run its tasks.
//!
//! A backend is anything that implements [`Backend`]: the built-in `claudecode` and `opencode`
//! crates, a native plugin loaded through the C ABI, or a WebAssembly component. The host never
//! needs to know which: it hands a [`Task`] to [`Backend::execute`] together with an
//! [`EventSink`] and a [`CancellationToken`], and gets a [`TaskOutcome`] back.
//!
//! Nothing in this crate knows about HTTP clients, WebSockets or the agentserver server.

mod backend;
mod http;
mod task;
pub mod wit;

pub use agentserver_plugin_sdk::{export_native_plugin, ffi, native};

pub use backend::{Backend, BackendError, BackendInfo, SessionType, TerminalIo, TerminalStream};
pub use http::{HttpBody, HttpRequest, HttpResponse, InvalidPath, LocalPath, RequestBody};
pub use task::{EventSink, FailureKind, Task, TaskEvent, TaskOutcome, TaskStatus, UsageLimit};
pub use tokio_util::sync::CancellationToken;

/// The plugin API version (the SDK's): see [`agentserver_plugin_sdk::API_VERSION`]. It matches
/// the WIT package `agentserver:backend@1.0.0` and `AGENTSERVER_PLUGIN_API_VERSION` in the C
/// header.
pub use agentserver_plugin_sdk::{API_MAJOR, API_VERSION};
