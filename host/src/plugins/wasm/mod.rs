//! The WASM plugin loader: WebAssembly components targeting `agentserver:backend@1.0.0`, run
//! with wasmtime.
//!
//! - The plugin API version is read from the component's bytes (its `agentserver:api-version`
//!   custom section and the versions in its `agentserver:backend/...@x.y.z` import and export
//!   names) before anything is compiled; another major version is refused.
//! - Compiled components are cached on disk, keyed by the SHA-256 of the component and a hash of
//!   the engine's compatibility settings (wasmtime version included).
//! - One `InstancePre` per plugin; every task gets a fresh `Store` and instance.
//! - WASI gets only what the manifest asks and the user grants: the task workdir preopened as
//!   `/workdir`, the listed environment variables. No sockets, no stdin, no other files.
//! - A `StoreLimits` memory cap (growth past it traps) and epoch interruption: a ticker thread
//!   bumps the engine's epoch every [`EPOCH_TICK`] while tasks run, and each store's callback
//!   interrupts the guest once its deadline passed, or once it was cancelled and did not return
//!   within the grace period.

//!
//! Modules: `engine` (the engine and the epoch ticker), `version` (the API version read from
//! the bytes), `cache` (compiled components on disk), `limits` (deadline, cancellation grace,
//! memory cap), `grants` (what a guest may reach, a small tested type), `guest_output` (the
//! guest's stdout and stderr: to the log, bounded, their tail into failure reasons), `host_state` (the WIT
//! imports' host side), `backend` (load, and the `Backend` adapter).

mod backend;
pub mod bundled;
mod cache;
pub mod componentize;
mod engine;
mod grants;
mod guest_output;
mod host_state;
mod limits;
mod version;

/// Generated bindings for the `backend` world of `plugin-api/wit/v1`.
#[allow(missing_docs, clippy::all)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugin-api/wit/v1",
        world: "backend",
    });
}

/// Where the WASI preopen of the task workdir appears inside the guest.
pub const GUEST_WORKDIR: &str = "/workdir";

pub use backend::{
    ComponentSettings, LINK_HINT, LoadedComponent, WasmBackend, load, load_component, one_line,
};
pub use cache::{cache_key, compile};
pub use engine::{EPOCH_TICK, engine};
pub use version::component_api_version;
