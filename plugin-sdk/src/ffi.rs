//! The C ABI of native plugins: Rust mirrors of `include/agentserver_plugin.h`.
//!
//! The header is the source of truth; these `#[repr(C)]` types must match it field for field.
//! The host uses them to read a plugin's vtable, and [`crate::native`] uses them to build one
//! from a Rust implementation.

use std::ffi::{c_char, c_void};

/// Version of the binary interface (vtable layout and calling conventions). The host refuses a
/// plugin whose vtable carries another value, before reading any other field.
pub const ABI_VERSION: u32 = 1;

/// Name of the one symbol a native plugin exports (without a trailing NUL).
pub const ENTRY_SYMBOL: &str = "agentserver_plugin_entry";

/// `emit_event` accepted the event.
pub const EMIT_OK: i32 = 1;
/// `emit_event`: the host no longer listens (the task is over): return soon.
pub const EMIT_CLOSED: i32 = 0;
/// `emit_event`: the text is not UTF-8 JSON; it was dropped, the host still listens.
pub const EMIT_INVALID: i32 = -1;

/// Log level `trace` for [`AgentserverHost::log`].
pub const LOG_TRACE: i32 = 0;
/// Log level `debug`.
pub const LOG_DEBUG: i32 = 1;
/// Log level `info`.
pub const LOG_INFO: i32 = 2;
/// Log level `warn`.
pub const LOG_WARN: i32 = 3;
/// Log level `error`.
pub const LOG_ERROR: i32 = 4;

/// Callbacks the host hands to `execute` for one task (C: `AgentserverHost`). Valid only
/// during that call; every callback is thread-safe.
#[repr(C)]
#[derive(Debug)]
pub struct AgentserverHost {
    /// Opaque host state, passed back as the first argument of every callback.
    pub ctx: *mut c_void,
    /// Emits one event (`len` bytes of UTF-8 JSON). Returns [`EMIT_OK`] (1) if accepted,
    /// [`EMIT_CLOSED`] (0) once the host no longer listens, [`EMIT_INVALID`] (-1) for text that
    /// is not UTF-8 JSON.
    pub emit_event: unsafe extern "C" fn(ctx: *mut c_void, json: *const c_char, len: usize) -> i32,
    /// Writes `len` bytes of UTF-8 text to the host's log at `level` (`LOG_*`).
    pub log: unsafe extern "C" fn(ctx: *mut c_void, level: i32, message: *const c_char, len: usize),
    /// Returns 1 once the task is cancelled, else 0.
    pub is_cancelled: unsafe extern "C" fn(ctx: *mut c_void) -> i32,
}

/// A plugin's vtable (C: `AgentserverPluginVTable`), returned by the entry symbol.
#[repr(C)]
#[derive(Debug)]
pub struct AgentserverPluginVTable {
    /// Must be the first field and equal [`ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<AgentserverPluginVTable>()` as the plugin was compiled.
    pub struct_size: u32,
    /// NUL-terminated semver of the plugin API the plugin was built against (static).
    pub api_version: *const c_char,
    /// Returns a NUL-terminated JSON object `{"name","version","description"}` owned by the
    /// plugin.
    pub describe: unsafe extern "C" fn() -> *mut c_char,
    /// Runs one task: task JSON in (borrowed), outcome JSON out (owned by the plugin) or NULL.
    pub execute: unsafe extern "C" fn(
        task_json: *const c_char,
        task_len: usize,
        host: *const AgentserverHost,
    ) -> *mut c_char,
    /// Frees a string returned by `describe` or `execute`.
    pub free_string: unsafe extern "C" fn(s: *mut c_char),
}

// SAFETY: a vtable is immutable static data: function pointers and a pointer to a static
// string. Sharing it between threads is what the ABI requires.
unsafe impl Sync for AgentserverPluginVTable {}
// SAFETY: see the `Sync` impl.
unsafe impl Send for AgentserverPluginVTable {}

/// Signature of the entry symbol (C: `AgentserverPluginEntryFn`).
pub type AgentserverPluginEntryFn = unsafe extern "C" fn() -> *const AgentserverPluginVTable;

/// What `describe` returns, as JSON.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PluginDescription {
    /// The plugin's name (should match `name` in plugin.toml).
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// One line saying what it does.
    #[serde(default)]
    pub description: String,
}

/// The major part of a semver string (`"1.2.3"` → `Some(1)`), `None` if it does not parse.
pub fn semver_major(version: &str) -> Option<u32> {
    let core = version.trim().trim_start_matches('v');
    let major = core.split(['.', '-', '+']).next()?;
    major.parse().ok()
}

/// The minor part of a semver string (`"1.2.3"` → `Some(2)`, `"1"` → `Some(0)`), `None` if it
/// does not parse.
pub fn semver_minor(version: &str) -> Option<u32> {
    let core = version.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    match core.split('.').nth(1) {
        None => Some(0),
        Some(minor) => minor.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_minor_parses() {
        assert_eq!(semver_minor("1.7.0"), Some(7));
        assert_eq!(semver_minor("v1.12.3-rc1"), Some(12));
        assert_eq!(semver_minor("1"), Some(0));
        assert_eq!(semver_minor("1.x"), None);
    }

    #[test]
    fn semver_major_parses() {
        assert_eq!(semver_major("1.0.0"), Some(1));
        assert_eq!(semver_major("v2.3.4-rc1"), Some(2));
        assert_eq!(semver_major("12"), Some(12));
        assert_eq!(semver_major("x.1"), None);
        assert_eq!(semver_major(""), None);
    }

    #[test]
    fn vtable_layout_matches_header() {
        // u32, u32, then four pointers: 8 + 4 * pointer size on every platform we support.
        assert_eq!(
            std::mem::size_of::<AgentserverPluginVTable>(),
            8 + 4 * std::mem::size_of::<usize>()
        );
        assert_eq!(
            std::mem::offset_of!(AgentserverPluginVTable, abi_version),
            0
        );
        assert_eq!(
            std::mem::size_of::<AgentserverHost>(),
            4 * std::mem::size_of::<usize>()
        );
    }
}
