//! The native plugin loader: shared libraries speaking the C ABI of
//! `plugin-api/include/agentserver_plugin.h`.
//!
//! Order of checks, each one before anything that depends on it: the library loads, it exports
//! `agentserver_plugin_entry`, the entry returns a non-NULL vtable, the vtable's first field is
//! our ABI version (nothing else is read otherwise), `struct_size` covers the fields we use, the
//! plugin API major matches. Libraries are leaked, never unloaded: code from them may still run
//! on an abandoned thread, and unloading is a classic source of crashes.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agentserver_common::grace::{Graceful, call_with_grace};
use agentserver_plugin_api::ffi::{
    ABI_VERSION, AgentserverHost, AgentserverPluginEntryFn, AgentserverPluginVTable, ENTRY_SYMBOL,
    PluginDescription,
};
use agentserver_plugin_api::{
    Backend, BackendInfo, CancellationToken, EventSink, FailureKind, SessionType, Task, TaskEvent,
    TaskOutcome, TaskStatus,
};
use async_trait::async_trait;

use super::{DiscoveredPlugin, LoadedPlugin, Permissions, PluginError, PluginOptions};

/// A loaded library and its checked vtable. Lives for the rest of the process.
#[derive(Debug)]
pub struct NativeLibrary {
    /// The library file (canonical path).
    pub path: PathBuf,
    /// The API version the plugin declares in its vtable.
    pub api_version: String,
    vtable: &'static AgentserverPluginVTable,
}

fn registry() -> &'static Mutex<HashMap<PathBuf, &'static NativeLibrary>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, &'static NativeLibrary>>> = OnceLock::new();
    LOADED.get_or_init(Default::default)
}

/// Loads (once per path; never unloaded) and checks a native plugin library.
pub fn load_library(path: &Path) -> Result<&'static NativeLibrary, PluginError> {
    let path = path.canonicalize().map_err(|source| PluginError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut loaded = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(lib) = loaded.get(&path) {
        return Ok(lib);
    }
    check_elf(&path)?;
    // SAFETY: loading a library runs its initialisers. Native plugins are trusted code: the
    // caller has checked that the user allowed this one.
    let library =
        unsafe { libloading::Library::new(&path) }.map_err(|e| PluginError::NativeLoad {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    // Never unloaded, even when refused below: its initialisers already ran.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    // SAFETY: the symbol's type is the one the ABI specifies.
    let entry: libloading::Symbol<'static, AgentserverPluginEntryFn> =
        unsafe { library.get(ENTRY_SYMBOL.as_bytes()) }.map_err(|e| PluginError::MissingEntry {
            path: path.clone(),
            symbol: ENTRY_SYMBOL,
            reason: e.to_string(),
        })?;
    // SAFETY: calling the entry is the first step of the ABI; it takes no arguments.
    let raw = catch_unwind(|| unsafe { entry() }).map_err(|_| PluginError::NativeInvalid {
        path: path.clone(),
        reason: format!("`{ENTRY_SYMBOL}` panicked"),
    })?;
    if raw.is_null() {
        return Err(PluginError::NativeInvalid {
            path,
            reason: format!("`{ENTRY_SYMBOL}` returned NULL"),
        });
    }
    // SAFETY: every ABI version starts the vtable with a u32 version; read only that first.
    let found = unsafe { raw.cast::<u32>().read() };
    if found != ABI_VERSION {
        return Err(PluginError::AbiMismatch {
            path,
            found,
            expected: ABI_VERSION,
        });
    }
    // SAFETY: the ABI version matches, so the vtable has this layout and static lifetime.
    let vtable: &'static AgentserverPluginVTable = unsafe { &*raw };
    let needed = std::mem::size_of::<AgentserverPluginVTable>();
    if (vtable.struct_size as usize) < needed {
        return Err(PluginError::NativeInvalid {
            path,
            reason: format!(
                "vtable struct_size is {} bytes, expected at least {needed}",
                vtable.struct_size
            ),
        });
    }
    if vtable.api_version.is_null() {
        return Err(PluginError::NativeInvalid {
            path,
            reason: "vtable api_version is NULL".into(),
        });
    }
    // SAFETY: the ABI says `api_version` is a static NUL-terminated string.
    let api_version = unsafe { CStr::from_ptr(vtable.api_version) }
        .to_string_lossy()
        .into_owned();
    let lib: &'static NativeLibrary = Box::leak(Box::new(NativeLibrary {
        path: path.clone(),
        api_version,
        vtable,
    }));
    loaded.insert(path, lib);
    Ok(lib)
}

/// Checks, before `dlopen`, that an ELF file is complete: its program headers, loadable
/// segments and section headers lie inside the file. The dynamic loader maps a truncated file
/// and then dies with SIGBUS touching the missing pages, so this must be caught first.
/// Files that are not ELF are left to the platform loader (Mach-O, PE).
fn check_elf(path: &Path) -> Result<(), PluginError> {
    let bytes = std::fs::read(path).map_err(|source| PluginError::Io {
        path: path.to_owned(),
        source,
    })?;
    let refuse = |reason: String| PluginError::NativeLoad {
        path: path.to_owned(),
        reason,
    };
    if !bytes.starts_with(b"\x7fELF") {
        if cfg!(target_os = "linux") {
            return Err(refuse("not an ELF shared library".into()));
        }
        return Ok(());
    }
    let len = bytes.len() as u64;
    let truncated = |what: &str| {
        refuse(format!(
            "truncated file ({len} bytes): {what} lies past its end; the copy is incomplete \
             or damaged, so copy or rebuild the plugin library again"
        ))
    };
    let (is64, little) = match (bytes.get(4), bytes.get(5)) {
        (Some(1), Some(1)) => (false, true),
        (Some(1), Some(2)) => (false, false),
        (Some(2), Some(1)) => (true, true),
        (Some(2), Some(2)) => (true, false),
        _ => return Err(refuse("malformed ELF header".into())),
    };
    let read = |offset: u64, size: usize| -> Option<u64> {
        let start = usize::try_from(offset).ok()?;
        let raw = bytes.get(start..start.checked_add(size)?)?;
        let mut value = 0u64;
        for i in 0..size {
            let byte = if little { raw[size - 1 - i] } else { raw[i] };
            value = (value << 8) | u64::from(byte);
        }
        Some(value)
    };
    let header = |off64: u64, off32: u64, size64: usize, size32: usize| {
        if is64 {
            read(off64, size64)
        } else {
            read(off32, size32)
        }
    };
    let fields = (|| {
        Some((
            header(0x20, 0x1C, 8, 4)?,
            header(0x28, 0x20, 8, 4)?,
            header(0x36, 0x2A, 2, 2)?,
            header(0x38, 0x2C, 2, 2)?,
            header(0x3A, 0x2E, 2, 2)?,
            header(0x3C, 0x30, 2, 2)?,
        ))
    })();
    let Some((phoff, shoff, phentsize, phnum, shentsize, shnum)) = fields else {
        return Err(truncated("the ELF header"));
    };
    if phoff.saturating_add(phnum.saturating_mul(phentsize)) > len {
        return Err(truncated("the program header table"));
    }
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let (p_type, p_offset, p_filesz) = if is64 {
            (read(ph, 4), read(ph + 8, 8), read(ph + 0x20, 8))
        } else {
            (read(ph, 4), read(ph + 4, 4), read(ph + 0x10, 4))
        };
        let (Some(p_type), Some(p_offset), Some(p_filesz)) = (p_type, p_offset, p_filesz) else {
            return Err(truncated("a program header"));
        };
        const PT_LOAD: u64 = 1;
        if p_type == PT_LOAD && p_offset.saturating_add(p_filesz) > len {
            return Err(truncated("a loadable segment"));
        }
    }
    if shoff != 0 && shoff.saturating_add(shnum.saturating_mul(shentsize)) > len {
        return Err(truncated("the section header table"));
    }
    Ok(())
}

impl NativeLibrary {
    /// Calls `describe` and parses its JSON.
    pub fn describe(&self) -> Result<PluginDescription, PluginError> {
        let invalid = |reason: String| PluginError::NativeInvalid {
            path: self.path.clone(),
            reason,
        };
        // SAFETY: a checked vtable; `describe` takes no arguments.
        let raw = unsafe { (self.vtable.describe)() };
        if raw.is_null() {
            return Err(invalid("describe returned NULL".into()));
        }
        let text = take_plugin_string(self.vtable, raw);
        serde_json::from_str(&text).map_err(|e| invalid(format!("describe returned bad JSON: {e}")))
    }
}

impl NativeLibrary {
    /// Calls `execute` with these host callbacks and returns the outcome text (`None` when the
    /// plugin returned NULL). Used by the out-of-process plugin host.
    ///
    /// # Safety
    /// `host` and its `ctx` must stay valid for the whole call, and its callbacks must be
    /// thread-safe.
    pub(crate) unsafe fn execute_with(
        &self,
        task_json: &str,
        host: &AgentserverHost,
    ) -> Option<String> {
        // SAFETY: a checked vtable; the caller keeps `host` valid; the task text outlives the
        // call.
        let raw =
            unsafe { (self.vtable.execute)(task_json.as_ptr().cast(), task_json.len(), host) };
        (!raw.is_null()).then(|| take_plugin_string(self.vtable, raw))
    }
}

/// Copies a plugin-owned string and hands it back to the plugin's `free_string`.
fn take_plugin_string(vtable: &AgentserverPluginVTable, raw: *mut c_char) -> String {
    // SAFETY: `raw` is a non-NULL NUL-terminated string the plugin returned.
    let text = unsafe { CStr::from_ptr(raw) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: freed once, by the side that allocated it.
    unsafe { (vtable.free_string)(raw) };
    text
}

/// Loads a discovered native plugin (the caller checked it is allowed).
pub fn load(
    plugin: &DiscoveredPlugin,
    options: &PluginOptions,
) -> Result<LoadedPlugin, PluginError> {
    let manifest = &plugin.manifest;
    let (result, load_time) = super::timed(|| -> Result<_, PluginError> {
        // Only a regular file inside the plugin directory is handed to the loader.
        super::read_code(&plugin.dir, &plugin.file())?;
        let lib = load_library(&plugin.file())?;
        super::check_api_version(&manifest.name, &lib.api_version)?;
        let description = lib.describe()?;
        Ok((lib, description))
    });
    let (lib, description) = result?;
    if !description.name.is_empty() && description.name != manifest.name {
        tracing::warn!(
            manifest = %manifest.name,
            plugin = %description.name,
            "native plugin describes itself under another name than its manifest"
        );
    }
    let timeout = options.task_timeout.unwrap_or_else(|| {
        Duration::from_secs(
            manifest
                .limits
                .timeout_secs
                .unwrap_or(super::manifest::DEFAULT_TIMEOUT_SECS),
        )
    });
    let backend = NativeBackend {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        lib,
        timeout,
        grace: options.cancel_grace,
    };
    Ok(LoadedPlugin {
        backend: Arc::new(backend),
        api_version: lib.api_version.clone(),
        description,
        effective_permissions: Permissions::default(),
        load_time,
        from_cache: None,
    })
}

/// A native plugin as a [`Backend`].
#[derive(Debug)]
pub struct NativeBackend {
    name: String,
    version: String,
    lib: &'static NativeLibrary,
    timeout: Duration,
    grace: Duration,
}

impl NativeBackend {
    /// Wraps an already loaded library (benchmarks, tests).
    pub fn new(
        name: &str,
        lib: &'static NativeLibrary,
        timeout: Duration,
        grace: Duration,
    ) -> Self {
        Self {
            name: name.to_owned(),
            version: String::new(),
            lib,
            timeout,
            grace,
        }
    }
}

/// The state behind `AgentserverHost::ctx` for one call.
struct CallState {
    plugin: String,
    events: EventSink,
    cancelled: AtomicBool,
}

unsafe extern "C" fn host_emit_event(ctx: *mut c_void, json: *const c_char, len: usize) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(|| {
        if ctx.is_null() || json.is_null() {
            return 0;
        }
        // SAFETY: `ctx` is the `CallState` of the running call (kept alive by the calling
        // thread); `json` points to `len` bytes owned by the plugin for this call.
        let (state, bytes) = unsafe {
            (
                &*ctx.cast::<CallState>(),
                std::slice::from_raw_parts(json.cast::<u8>(), len),
            )
        };
        let Ok(text) = std::str::from_utf8(bytes) else {
            tracing::warn!(plugin = %state.plugin, "plugin emitted an event that is not UTF-8");
            return agentserver_plugin_api::ffi::EMIT_INVALID;
        };
        let event = match TaskEvent::from_json(text) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(plugin = %state.plugin, error = %e, "plugin emitted an event that is not JSON");
                return agentserver_plugin_api::ffi::EMIT_INVALID;
            }
        };
        i32::from(state.events.emit_blocking(event))
    }));
    result.unwrap_or(0)
}

unsafe extern "C" fn host_log(ctx: *mut c_void, level: i32, message: *const c_char, len: usize) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if ctx.is_null() || message.is_null() {
            return;
        }
        // SAFETY: as in `host_emit_event`.
        let (state, bytes) = unsafe {
            (
                &*ctx.cast::<CallState>(),
                std::slice::from_raw_parts(message.cast::<u8>(), len),
            )
        };
        let message = String::from_utf8_lossy(bytes);
        log_line(&state.plugin, level, &message);
    }));
}

/// Writes a plugin's log line at the matching level.
pub(crate) fn log_line(plugin: &str, level: i32, message: &str) {
    match level {
        i32::MIN..=0 => tracing::trace!(plugin, "{message}"),
        1 => tracing::debug!(plugin, "{message}"),
        2 => tracing::info!(plugin, "{message}"),
        3 => tracing::warn!(plugin, "{message}"),
        _ => tracing::error!(plugin, "{message}"),
    }
}

unsafe extern "C" fn host_is_cancelled(ctx: *mut c_void) -> i32 {
    if ctx.is_null() {
        return 1;
    }
    // SAFETY: as in `host_emit_event`.
    let state = unsafe { &*ctx.cast::<CallState>() };
    i32::from(state.cancelled.load(Ordering::Acquire))
}

/// Runs `execute` on the current (blocking) thread.
fn call_execute(lib: &NativeLibrary, task_json: &str, state: &Arc<CallState>) -> TaskOutcome {
    let host = AgentserverHost {
        ctx: Arc::as_ptr(state).cast_mut().cast(),
        emit_event: host_emit_event,
        log: host_log,
        is_cancelled: host_is_cancelled,
    };
    // SAFETY: a checked vtable; the task text and `host` outlive the call; `ctx` stays valid
    // because `state` is borrowed for the whole call.
    let raw = unsafe { (lib.vtable.execute)(task_json.as_ptr().cast(), task_json.len(), &host) };
    if raw.is_null() {
        return TaskOutcome::failed(
            FailureKind::System,
            "the native plugin returned no outcome (NULL)",
        );
    }
    let text = take_plugin_string(lib.vtable, raw);
    match serde_json::from_str::<TaskOutcome>(&text) {
        Ok(outcome) => normalise(outcome),
        Err(e) => TaskOutcome::failed(
            FailureKind::System,
            format!("the native plugin returned an invalid outcome: {e}"),
        ),
    }
}

/// Fills in what a plugin left out of a failed outcome.
pub(crate) fn normalise(mut outcome: TaskOutcome) -> TaskOutcome {
    if outcome.status != TaskStatus::Completed && outcome.failure_reason.is_none() {
        outcome.failure_reason = Some("the plugin gave no reason".into());
    }
    if outcome.status == TaskStatus::Failed && outcome.failure_kind.is_none() {
        outcome.failure_kind = Some(FailureKind::User);
    }
    outcome
}

#[async_trait]
impl Backend for NativeBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: self.name.clone(),
            version: self.version.clone(),
            session_type: SessionType::Custom,
        }
    }

    async fn execute(
        &self,
        task: Task,
        events: EventSink,
        cancel: CancellationToken,
    ) -> TaskOutcome {
        let task_json = match serde_json::to_string(&task) {
            Ok(json) => json,
            Err(e) => {
                return TaskOutcome::failed(FailureKind::System, format!("bad task: {e}"));
            }
        };
        let state = Arc::new(CallState {
            plugin: self.name.clone(),
            events,
            cancelled: AtomicBool::new(false),
        });
        let lib = self.lib;
        let call_state = Arc::clone(&state);
        let call = tokio::task::spawn_blocking(move || call_execute(lib, &task_json, &call_state));
        let joined = |r: Result<TaskOutcome, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| {
                TaskOutcome::failed(FailureKind::System, format!("native call failed: {e}"))
            })
        };
        // The stop is either the user's cancellation or the deadline (`true`).
        let stop = async {
            tokio::select! {
                () = cancel.cancelled() => false,
                () = tokio::time::sleep(self.timeout) => true,
            }
        };
        let tell_stop = |_: &bool| state.cancelled.store(true, Ordering::Release);
        let (deadline_hit, result) = match call_with_grace(call, stop, tell_stop, self.grace).await
        {
            Graceful::Finished(result) => return joined(result),
            Graceful::Stopped { reason, result } => (reason, result),
        };
        let outcome = match result {
            Some(result) => joined(result),
            None => {
                tracing::warn!(
                    plugin = %self.name,
                    grace_ms = self.grace.as_millis() as u64,
                    "native plugin did not return after cancellation; abandoning the call"
                );
                TaskOutcome::cancelled(format!(
                    "the native plugin did not return within {} ms of being told to stop; the \
                     call was abandoned",
                    self.grace.as_millis()
                ))
            }
        };
        outcome_after_stop(outcome, deadline_hit, self.timeout)
    }
}

/// What a native plugin's task ends with once it was told to stop: a passed deadline turns any
/// outcome but `completed` into a failed, system one (shared by the in-process and the
/// out-of-process modes).
pub(super) fn outcome_after_stop(
    outcome: TaskOutcome,
    deadline_hit: bool,
    timeout: std::time::Duration,
) -> TaskOutcome {
    if deadline_hit && outcome.status != TaskStatus::Completed {
        return TaskOutcome::failed(
            FailureKind::System,
            format!(
                "the native plugin ran past its deadline of {} ms and was stopped",
                timeout.as_millis()
            ),
        );
    }
    outcome
}
