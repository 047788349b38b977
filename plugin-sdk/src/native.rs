//! Writing a native plugin in Rust: implement [`NativePlugin`] and call
//! [`export_native_plugin!`](crate::export_native_plugin).
//!
//! ```
//! use agentserver_plugin_sdk::native::{NativeContext, NativePlugin};
//! use agentserver_plugin_sdk::ffi::PluginDescription;
//! use agentserver_plugin_sdk::{Task, TaskOutcome};
//!
//! #[derive(Default)]
//! struct Echo;
//!
//! impl NativePlugin for Echo {
//!     fn describe(&self) -> PluginDescription {
//!         PluginDescription { name: "echo".into(), version: "0.1.0".into(), description: "Echoes".into() }
//!     }
//!     fn execute(&self, task: Task, ctx: &NativeContext<'_>) -> TaskOutcome {
//!         ctx.emit(&serde_json::json!({"type": "echo", "text": task.prompt}));
//!         TaskOutcome::completed(task.prompt)
//!     }
//! }
//!
//! agentserver_plugin_sdk::export_native_plugin!(Echo);
//! ```
//!
//! The crate must be built as a `cdylib`. The macro exports `agentserver_plugin_entry` with a
//! static vtable (see `include/agentserver_plugin.h`), parses the task JSON, serialises the
//! outcome, and catches panics at the boundary: a panic becomes a failed outcome (a system
//! failure whose reason carries the panic message) instead of unwinding into the host.

use std::ffi::CStr;

use serde::Serialize;

use crate::ffi::{AgentserverHost, PluginDescription};
use crate::task::{Task, TaskOutcome};

/// A native plugin written in Rust. `execute` may be called from several threads at once.
pub trait NativePlugin: Send + Sync + 'static {
    /// Name, version and a one-line description.
    fn describe(&self) -> PluginDescription;

    /// Runs one task to its end. Poll [`NativeContext::is_cancelled`] in long loops.
    fn execute(&self, task: Task, ctx: &NativeContext<'_>) -> TaskOutcome;
}

/// Why the host did not accept an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmitError {
    /// The text is not UTF-8 JSON: the event was dropped, the host still listens.
    InvalidJson,
    /// The host no longer listens (the task is over): return from `execute`.
    Closed,
}

impl std::fmt::Display for EmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::InvalidJson => "the event is not valid JSON",
            Self::Closed => "the host no longer listens to this task's events",
        })
    }
}

impl std::error::Error for EmitError {}

/// Log levels for [`NativeContext::log`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// The ABI value (`AGENTSERVER_LOG_*`).
    pub fn as_abi(self) -> i32 {
        match self {
            Self::Trace => crate::ffi::LOG_TRACE,
            Self::Debug => crate::ffi::LOG_DEBUG,
            Self::Info => crate::ffi::LOG_INFO,
            Self::Warn => crate::ffi::LOG_WARN,
            Self::Error => crate::ffi::LOG_ERROR,
        }
    }
}

/// The host's callbacks for one task, as safe methods.
pub struct NativeContext<'a> {
    host: &'a AgentserverHost,
}

// SAFETY: the ABI requires every host callback to be thread-safe (see the header), and the
// context only forwards to them.
unsafe impl Sync for NativeContext<'_> {}

impl std::fmt::Debug for NativeContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeContext").finish_non_exhaustive()
    }
}

impl<'a> NativeContext<'a> {
    /// Wraps the host's callbacks.
    ///
    /// # Safety
    /// `host` must be the pointer the host passed to `execute`, used only during that call.
    pub unsafe fn from_raw(host: &'a AgentserverHost) -> Self {
        Self { host }
    }

    /// Emits one event (any serialisable value that serialises to a JSON object). Returns
    /// `false` if the host no longer listens: the plugin should return.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &T) -> bool {
        match serde_json::to_string(event) {
            Ok(text) => self.emit_json(&text),
            Err(_) => false,
        }
    }

    /// Emits one event given as JSON text. Returns `false` if it is not valid JSON or the host
    /// no longer listens; [`NativeContext::try_emit_json`] tells the two apart.
    pub fn emit_json(&self, json: &str) -> bool {
        self.try_emit_json(json).is_ok()
    }

    /// Emits one event given as JSON text, saying why it was not accepted:
    /// [`EmitError::InvalidJson`] (dropped; keep going) or [`EmitError::Closed`] (the host no
    /// longer listens: return).
    pub fn try_emit_json(&self, json: &str) -> Result<(), EmitError> {
        // SAFETY: the callback and ctx come from the host for the duration of this call; the
        // text is borrowed for the call only, as the ABI says.
        let code =
            unsafe { (self.host.emit_event)(self.host.ctx, json.as_ptr().cast(), json.len()) };
        match code {
            crate::ffi::EMIT_OK => Ok(()),
            crate::ffi::EMIT_INVALID => Err(EmitError::InvalidJson),
            _ => Err(EmitError::Closed),
        }
    }

    /// Writes a line to the host's log.
    pub fn log(&self, level: LogLevel, message: &str) {
        // SAFETY: as in `emit_json`.
        unsafe {
            (self.host.log)(
                self.host.ctx,
                level.as_abi(),
                message.as_ptr().cast(),
                message.len(),
            )
        }
    }

    /// True once the task is cancelled (or its deadline passed).
    pub fn is_cancelled(&self) -> bool {
        // SAFETY: as in `emit_json`.
        unsafe { (self.host.is_cancelled)(self.host.ctx) != 0 }
    }
}

/// Exports a [`NativePlugin`] as a native plugin: the `agentserver_plugin_entry` symbol and a
/// static vtable.
///
/// `export_native_plugin!(MyPlugin)` builds the instance with `Default`;
/// `export_native_plugin!(MyPlugin, MyPlugin::new)` with a constructor. The instance is built on
/// first use and lives as long as the process.
#[macro_export]
macro_rules! export_native_plugin {
    ($ty:ty) => {
        $crate::export_native_plugin!($ty, <$ty as ::core::default::Default>::default);
    };
    ($ty:ty, $ctor:expr) => {
        #[doc(hidden)]
        fn __agentserver_plugin_instance() -> &'static $ty {
            static INSTANCE: ::std::sync::OnceLock<$ty> = ::std::sync::OnceLock::new();
            INSTANCE.get_or_init($ctor)
        }

        #[doc(hidden)]
        unsafe extern "C" fn __agentserver_plugin_describe() -> *mut ::std::ffi::c_char {
            $crate::native::__private::describe(__agentserver_plugin_instance)
        }

        #[doc(hidden)]
        unsafe extern "C" fn __agentserver_plugin_execute(
            task_json: *const ::std::ffi::c_char,
            task_len: usize,
            host: *const $crate::ffi::AgentserverHost,
        ) -> *mut ::std::ffi::c_char {
            // SAFETY: the host upholds the ABI contract for these pointers.
            unsafe {
                $crate::native::__private::execute(
                    __agentserver_plugin_instance,
                    task_json,
                    task_len,
                    host,
                )
            }
        }

        #[doc(hidden)]
        static __AGENTSERVER_PLUGIN_VTABLE: $crate::ffi::AgentserverPluginVTable =
            $crate::ffi::AgentserverPluginVTable {
                abi_version: $crate::ffi::ABI_VERSION,
                struct_size: ::core::mem::size_of::<$crate::ffi::AgentserverPluginVTable>() as u32,
                api_version: $crate::native::__private::API_VERSION_C.as_ptr(),
                describe: __agentserver_plugin_describe,
                execute: __agentserver_plugin_execute,
                free_string: $crate::native::__private::free_string,
            };

        /// The native plugin entry point (see `agentserver_plugin.h`).
        #[unsafe(no_mangle)]
        pub extern "C" fn agentserver_plugin_entry() -> *const $crate::ffi::AgentserverPluginVTable
        {
            &__AGENTSERVER_PLUGIN_VTABLE
        }
    };
}

/// Support code for [`export_native_plugin!`](crate::export_native_plugin); not a stable API.
#[doc(hidden)]
pub mod __private {
    use std::ffi::{CString, c_char};
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::{CStr, NativeContext, NativePlugin, PluginDescription};
    use crate::ffi::AgentserverHost;
    use crate::task::{FailureKind, Task, TaskOutcome};

    /// [`crate::API_VERSION`] as a C string.
    pub const API_VERSION_C: &CStr = c"1.0.0";

    /// Turns a caught panic payload into text.
    pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
        if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a panic with a non-text payload".to_owned()
        }
    }

    fn into_c_string(text: String) -> *mut c_char {
        // serde_json escapes NUL, so this only fails on a bug; fall back to NULL.
        CString::new(text).map_or(std::ptr::null_mut(), CString::into_raw)
    }

    /// `describe` behind the boundary.
    pub fn describe<P: NativePlugin>(instance: fn() -> &'static P) -> *mut c_char {
        let result = catch_unwind(AssertUnwindSafe(|| instance().describe()));
        let description = result.unwrap_or_else(|panic| PluginDescription {
            name: String::new(),
            version: String::new(),
            description: format!("describe panicked: {}", panic_message(&*panic)),
        });
        serde_json::to_string(&description).map_or(std::ptr::null_mut(), into_c_string)
    }

    /// `execute` behind the boundary: parse, run, catch panics, serialise.
    ///
    /// # Safety
    /// `task_json` must point to `task_len` readable bytes and `host` to a valid host struct,
    /// both for the duration of the call.
    pub unsafe fn execute<P: NativePlugin>(
        instance: fn() -> &'static P,
        task_json: *const c_char,
        task_len: usize,
        host: *const AgentserverHost,
    ) -> *mut c_char {
        let result = catch_unwind(AssertUnwindSafe(|| {
            if task_json.is_null() || host.is_null() {
                return TaskOutcome::failed(
                    FailureKind::System,
                    "the host passed a NULL task or host pointer",
                );
            }
            // SAFETY: the caller guarantees both pointers for the duration of the call.
            let (bytes, host) = unsafe {
                (
                    std::slice::from_raw_parts(task_json.cast::<u8>(), task_len),
                    &*host,
                )
            };
            let task: Task = match serde_json::from_slice(bytes) {
                Ok(task) => task,
                Err(e) => {
                    return TaskOutcome::failed(
                        FailureKind::System,
                        format!("the plugin could not parse the task JSON: {e}"),
                    );
                }
            };
            // SAFETY: `host` is the pointer handed to `execute`, used only during the call.
            let ctx = unsafe { NativeContext::from_raw(host) };
            instance().execute(task, &ctx)
        }));
        let outcome = result.unwrap_or_else(|panic| {
            TaskOutcome::failed(
                FailureKind::System,
                format!("the plugin panicked: {}", panic_message(&*panic)),
            )
        });
        serde_json::to_string(&outcome).map_or(std::ptr::null_mut(), into_c_string)
    }

    /// Frees a string this side returned.
    ///
    /// # Safety
    /// `s` must come from `describe` or `execute` above and be freed once.
    pub unsafe extern "C" fn free_string(s: *mut c_char) {
        if !s.is_null() {
            // SAFETY: `s` came from `CString::into_raw` in this module.
            drop(unsafe { CString::from_raw(s) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_c_matches() {
        assert_eq!(
            __private::API_VERSION_C.to_str().unwrap(),
            crate::API_VERSION
        );
    }

    #[test]
    fn log_levels_map_to_abi() {
        assert_eq!(LogLevel::Trace.as_abi(), 0);
        assert_eq!(LogLevel::Error.as_abi(), 4);
    }
}
