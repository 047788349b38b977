//! The SDK for writing agentserver backend plugins in Rust: the task and outcome types, the C
//! ABI mirrors ([`ffi`]) and [`native`], whose [`export_native_plugin!`] macro turns a
//! [`native::NativePlugin`] into a native plugin library.
//!
//! It depends only on `serde` and `serde_json`: no async runtime. The host's side of the
//! contract (the async `Backend` trait, event channels) is `agentserver-plugin-api`, which
//! re-exports these types.
//!
//! Versioning: the crate's version is the plugin API version it implements (see
//! [`API_VERSION`] and "Versioning" in `docs/plugins.md`): `agentserver-plugin-sdk = "1"`
//! builds plugins for every 1.x host at or above the SDK's minor.

pub mod ffi;
pub mod native;
mod task;

pub use task::{FailureKind, Task, TaskOutcome, TaskStatus, UsageLimit};

/// The semver version of the plugin API this SDK implements. The host refuses a plugin of
/// another **major** version, and one of a newer **minor** than its own, with an error naming
/// both. It matches the WIT package `agentserver:backend@1.0.0`, `AGENTSERVER_PLUGIN_API_VERSION`
/// in the C header, and this crate's version.
pub const API_VERSION: &str = "1.0.0";

/// Major version of [`API_VERSION`], the part that decides compatibility.
pub const API_MAJOR: u32 = 1;

#[cfg(test)]
mod tests {
    #[test]
    fn the_crate_version_is_the_api_version() {
        assert_eq!(env!("CARGO_PKG_VERSION"), super::API_VERSION);
    }
}
