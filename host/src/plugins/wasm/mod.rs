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

pub mod bundled;
pub mod componentize;

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use agentserver_plugin_api::ffi::PluginDescription;
use agentserver_plugin_api::wit::API_VERSION_SECTION;
use agentserver_plugin_api::{
    Backend, BackendInfo, CancellationToken, EventSink, FailureKind, SessionType, Task, TaskEvent,
    TaskOutcome,
};
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{DiscoveredPlugin, Grant, LoadedPlugin, Permissions, PluginError, PluginOptions};

/// Generated bindings for the `backend` world of `plugin-api/wit/v1`.
#[allow(missing_docs, clippy::all)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugin-api/wit/v1",
        world: "backend",
    });
}

use bindings::agentserver::backend::{host as wit_host, http as wit_http, types as wit_types};

/// How often the epoch ticks while WASM tasks run; the precision of deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Largest HTTP response body handed to a plugin.
const MAX_HTTP_BODY: usize = 16 << 20;

/// Where the WASI preopen of the task workdir appears inside the guest.
pub const GUEST_WORKDIR: &str = "/workdir";

/// The shared engine (component model, epoch interruption).
pub fn engine() -> Result<&'static Engine, PluginError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config.wasm_component_model(true);
            config.epoch_interruption(true);
            Engine::new(&config).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|reason| PluginError::WasmCompile {
            path: PathBuf::from("<engine>"),
            reason: reason.clone(),
        })
}

/// Bumps the engine's epoch while at least one task runs; sleeps otherwise.
struct Ticker {
    active: Mutex<usize>,
    wake: Condvar,
}

/// Keeps the ticker running while alive.
struct TickGuard(&'static Ticker);

impl Drop for TickGuard {
    fn drop(&mut self) {
        let mut active = self.0.active.lock().unwrap_or_else(|e| e.into_inner());
        *active = active.saturating_sub(1);
    }
}

fn tick_while_running(engine: &'static Engine) -> TickGuard {
    static TICKER: OnceLock<&'static Ticker> = OnceLock::new();
    let ticker = *TICKER.get_or_init(|| {
        let ticker: &'static Ticker = Box::leak(Box::new(Ticker {
            active: Mutex::new(0),
            wake: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("agentserver-wasm-epoch".into())
            .spawn(move || {
                loop {
                    {
                        let mut active = ticker.active.lock().unwrap_or_else(|e| e.into_inner());
                        while *active == 0 {
                            active = ticker.wake.wait(active).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the WASM epoch thread; deadlines will not fire");
        }
        ticker
    });
    *ticker.active.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    ticker.wake.notify_all();
    TickGuard(ticker)
}

/// Reads the plugin API version a component was built against, without compiling it: its
/// `agentserver:api-version` custom section and the `@x.y.z` of every `agentserver:backend/…`
/// import or export name. All of them must agree on the major version; the first one found is
/// returned, or the first of another major (so that the error names it).
pub fn component_api_version(bytes: &[u8], path: &Path) -> Result<String, PluginError> {
    use wasmparser::{Encoding, Parser, Payload};
    let invalid = |reason: String| PluginError::WasmInvalid {
        path: path.to_owned(),
        reason,
    };
    let mut versions: Vec<String> = Vec::new();
    let mut checked_header = false;
    let prefix = format!("{}/", agentserver_plugin_api::wit::PACKAGE);
    let name_version = |name: &str, versions: &mut Vec<String>| {
        if let Some(rest) = name.strip_prefix(&prefix)
            && let Some((_, version)) = rest.split_once('@')
        {
            versions.push(version.to_owned());
        }
    };
    for payload in Parser::new(0).parse_all(bytes) {
        let payload =
            payload.map_err(|e| invalid(format!("not a valid WebAssembly binary: {e}")))?;
        match payload {
            Payload::Version { encoding, .. } if !checked_header => {
                checked_header = true;
                if encoding != Encoding::Component {
                    return Err(invalid(
                        "this is a core WebAssembly module, not a component; wrap it with \
                         wit-component (`wasm-tools component new`)"
                            .into(),
                    ));
                }
            }
            Payload::ComponentImportSection(reader) => {
                for import in reader {
                    let import = import.map_err(|e| invalid(format!("bad import: {e}")))?;
                    name_version(import.name.name, &mut versions);
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(|e| invalid(format!("bad export: {e}")))?;
                    name_version(export.name.name, &mut versions);
                }
            }
            Payload::CustomSection(reader) if reader.name() == API_VERSION_SECTION => {
                let text = std::str::from_utf8(reader.data()).map_err(|_| {
                    invalid(format!("the {API_VERSION_SECTION} section is not UTF-8"))
                })?;
                versions.insert(0, text.trim().to_owned());
            }
            _ => {}
        }
    }
    if !checked_header {
        return Err(invalid("empty file".into()));
    }
    let Some(first) = versions.first().cloned() else {
        return Err(invalid(format!(
            "cannot tell which plugin API it was built against: it neither imports an \
             `{}` interface nor carries an `{API_VERSION_SECTION}` custom section",
            agentserver_plugin_api::wit::PACKAGE
        )));
    };
    let first_major = agentserver_plugin_api::ffi::semver_major(&first);
    Ok(versions
        .into_iter()
        .find(|v| agentserver_plugin_api::ffi::semver_major(v) != first_major)
        .unwrap_or(first))
}

/// A `Hasher` over SHA-256, so cache keys are stable across Rust versions.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]))
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The cache file name for a component: content hash + engine compatibility hash.
pub fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    let content = hex::encode(Sha256::digest(bytes));
    let mut hasher = ShaHasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    format!("{content}-{:016x}.cwasm", hasher.finish())
}

/// Compiles a component, or reads it from the cache. Returns whether it came from the cache.
pub fn compile(
    bytes: &[u8],
    path: &Path,
    cache_dir: Option<&Path>,
) -> Result<(Component, bool), PluginError> {
    let engine = engine()?;
    let compile_error = |e: wasmtime::Error| PluginError::WasmCompile {
        path: path.to_owned(),
        reason: format!("{e:#}"),
    };
    let Some(cache_dir) = cache_dir else {
        return Ok((Component::new(engine, bytes).map_err(compile_error)?, false));
    };
    let cached = cache_dir.join(cache_key(engine, bytes));
    if cached.is_file() {
        // SAFETY: the file was written by `Component::serialize` below into the host's own
        // state directory; wasmtime checks the engine compatibility header itself.
        match unsafe { Component::deserialize_file(engine, &cached) } {
            Ok(component) => return Ok((component, true)),
            Err(e) => {
                tracing::warn!(file = %cached.display(), error = %e, "dropping unusable compiled component");
                let _ = std::fs::remove_file(&cached);
            }
        }
    }
    let component = Component::new(engine, bytes).map_err(compile_error)?;
    match component.serialize() {
        Ok(serialized) => {
            // The cache lives under the private state directory: written like every file
            // there (0700 directory, 0600 file, fsync, rename).
            if let Err(e) = crate::fsutil::write_private_atomic(&cached, &serialized) {
                tracing::warn!(file = %cached.display(), error = %e, "cannot cache compiled component");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot serialize compiled component"),
    }
    Ok((component, false))
}

/// Why the host interrupted a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopReason {
    Deadline,
    Cancelled,
}

/// Cancellation as seen from the store's thread.
#[derive(Default)]
struct StopSignal {
    cancelled: AtomicBool,
    cancelled_at: Mutex<Option<Instant>>,
}

impl StopSignal {
    fn cancel(&self) {
        let mut at = self.cancelled_at.lock().unwrap_or_else(|e| e.into_inner());
        at.get_or_insert_with(Instant::now);
        self.cancelled.store(true, Ordering::Release);
    }

    fn cancelled_at(&self) -> Option<Instant> {
        if !self.cancelled.load(Ordering::Acquire) {
            return None;
        }
        *self.cancelled_at.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `StoreLimits`, remembering whether the cap was hit (to explain the trap).
struct CapLimiter {
    inner: StoreLimits,
    cap: usize,
    hit: bool,
}

impl ResourceLimiter for CapLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit = true;
        }
        self.inner.memory_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// What outbound HTTP a task may do.
struct HttpAccess {
    allowed: Vec<String>,
    client: Arc<OnceLock<reqwest::Client>>,
    runtime: Option<tokio::runtime::Handle>,
}

/// The data of one task's store.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: CapLimiter,
    plugin: Arc<str>,
    events: Option<EventSink>,
    signal: Arc<StopSignal>,
    deadline: Instant,
    http: Arc<HttpAccess>,
    stop: Option<StopReason>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit_types::Host for HostState {}

impl wit_host::Host for HostState {
    fn emit_event(&mut self, event: String) -> bool {
        let Some(events) = &self.events else {
            return false;
        };
        match TaskEvent::from_json(&event) {
            Ok(event) => events.emit_blocking(event),
            Err(e) => {
                tracing::warn!(plugin = %self.plugin, error = %e, "plugin emitted an event that is not JSON");
                false
            }
        }
    }

    fn log(&mut self, level: wit_host::LogLevel, message: String) {
        let level = match level {
            wit_host::LogLevel::Trace => 0,
            wit_host::LogLevel::Debug => 1,
            wit_host::LogLevel::Info => 2,
            wit_host::LogLevel::Warn => 3,
            wit_host::LogLevel::Error => 4,
        };
        super::native::log_line(&self.plugin, level, &message);
    }

    fn cancelled(&mut self) -> bool {
        self.signal.cancelled.load(Ordering::Acquire) || Instant::now() >= self.deadline
    }
}

impl wit_http::Host for HostState {
    fn fetch(&mut self, request: wit_http::Request) -> Result<wit_http::Response, String> {
        let url = url::Url::parse(&request.url).map_err(|e| format!("bad URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("unsupported URL scheme `{}`", url.scheme()));
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        if !self
            .http
            .allowed
            .iter()
            .any(|h| h == "*" || h.eq_ignore_ascii_case(&host))
        {
            return Err(format!(
                "not permitted: `{host}` is not among the HTTP hosts this plugin was granted"
            ));
        }
        let Some(runtime) = self.http.runtime.clone() else {
            return Err("HTTP is unavailable outside the host's runtime".into());
        };
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| format!("bad method `{}`", request.method))?;
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let allowed = self.http.allowed.clone();
        let client = self.http.client.get_or_init(|| {
            // A redirect must not take the plugin to a host it was not granted.
            let policy = reqwest::redirect::Policy::custom(move |attempt| {
                let host = attempt.url().host_str().unwrap_or_default();
                if attempt.previous().len() >= 10 {
                    attempt.error("too many redirects")
                } else if allowed
                    .iter()
                    .any(|h| h == "*" || h.eq_ignore_ascii_case(host))
                {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            });
            reqwest::Client::builder()
                .redirect(policy)
                .build()
                .unwrap_or_default()
        });
        let mut builder = client.request(method, url).timeout(remaining);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        let builder = builder.body(request.body);
        runtime.block_on(async move {
            let response = builder.send().await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let mut body = Vec::new();
            let mut response = response;
            while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                if body.len() + chunk.len() > MAX_HTTP_BODY {
                    return Err(format!("response body larger than {MAX_HTTP_BODY} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(wit_http::Response {
                status,
                headers,
                body,
            })
        })
    }
}

/// A compiled, linked plugin: what every task instantiates.
struct WasmPlugin {
    engine: &'static Engine,
    name: Arc<str>,
    version: String,
    pre: bindings::BackendPre<HostState>,
    permissions: Permissions,
    memory_cap: usize,
    timeout: Duration,
    grace: Duration,
    /// Created on the first permitted fetch, then shared by the plugin's tasks.
    http_client: Arc<OnceLock<reqwest::Client>>,
}

/// Settings for [`load_component`].
#[derive(Clone, Debug)]
pub struct ComponentSettings {
    /// Plugin name (logs, `BackendInfo`).
    pub name: String,
    /// Plugin version (`BackendInfo`).
    pub version: String,
    /// What the plugin may use (already intersected with the user's grant).
    pub permissions: Permissions,
    /// Memory cap per task, bytes.
    pub memory_cap_bytes: u64,
    /// Per-task deadline.
    pub timeout: Duration,
    /// Time allowed to return after cancellation before the guest is interrupted.
    pub cancel_grace: Duration,
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

/// A WASM plugin as a [`Backend`]: a fresh store and instance per task.
#[derive(Clone)]
pub struct WasmBackend {
    inner: Arc<WasmPlugin>,
}

impl std::fmt::Debug for WasmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmBackend")
            .field("name", &self.inner.name)
            .field("permissions", &self.inner.permissions)
            .finish_non_exhaustive()
    }
}

/// A loaded component with facts about the load.
#[derive(Debug)]
pub struct LoadedComponent {
    /// The backend.
    pub backend: WasmBackend,
    /// API version read from the component.
    pub api_version: String,
    /// Whether the compiled code came from the cache.
    pub from_cache: bool,
    /// What `describe` returned.
    pub description: PluginDescription,
}

/// Checks, compiles (or reads from the cache), links and describes a component.
pub fn load_component(
    bytes: &[u8],
    path: &Path,
    settings: &ComponentSettings,
) -> Result<LoadedComponent, PluginError> {
    // The API version first: an incompatible component is never compiled.
    let api_version = component_api_version(bytes, path)?;
    super::check_api_version(&settings.name, &api_version)?;
    let (component, from_cache) = compile(bytes, path, settings.cache_dir.as_deref())?;
    let link_error = |e: wasmtime::Error| PluginError::WasmCompile {
        path: path.to_owned(),
        reason: format!("cannot link: {e:#}"),
    };
    let engine = engine()?;
    let mut linker: Linker<HostState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link_error)?;
    bindings::Backend::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
        .map_err(link_error)?;
    let instance_pre = linker.instantiate_pre(&component).map_err(link_error)?;
    let pre = bindings::BackendPre::new(instance_pre).map_err(link_error)?;
    let backend = WasmBackend {
        inner: Arc::new(WasmPlugin {
            engine,
            name: Arc::from(settings.name.as_str()),
            version: settings.version.clone(),
            pre,
            permissions: settings.permissions.clone(),
            memory_cap: usize::try_from(settings.memory_cap_bytes).unwrap_or(usize::MAX),
            timeout: settings.timeout,
            grace: settings.cancel_grace,
            http_client: Arc::default(),
        }),
    };
    let description = backend
        .describe()
        .map_err(|reason| PluginError::WasmInvalid {
            path: path.to_owned(),
            reason: format!("describe failed: {reason}"),
        })?;
    Ok(LoadedComponent {
        backend,
        api_version,
        from_cache,
        description,
    })
}

/// Loads a discovered WASM plugin with the user's grant.
pub fn load(
    plugin: &DiscoveredPlugin,
    options: &PluginOptions,
    grant: &Grant,
) -> Result<LoadedPlugin, PluginError> {
    let manifest = &plugin.manifest;
    let path = plugin.file();
    let permissions = grant.effective(&manifest.permissions);
    let settings = ComponentSettings {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        permissions: permissions.clone(),
        memory_cap_bytes: options.memory_limit_bytes.unwrap_or(
            manifest
                .limits
                .memory_mb
                .unwrap_or(super::manifest::DEFAULT_MEMORY_MB)
                << 20,
        ),
        timeout: options.task_timeout.unwrap_or_else(|| {
            Duration::from_secs(
                manifest
                    .limits
                    .timeout_secs
                    .unwrap_or(super::manifest::DEFAULT_TIMEOUT_SECS),
            )
        }),
        cancel_grace: options.cancel_grace,
        cache_dir: options.cache_dir.clone(),
    };
    let (loaded, load_time) = super::timed(|| -> Result<LoadedComponent, PluginError> {
        let bytes = super::read_code(&plugin.dir, &path)?;
        load_component(&bytes, &path, &settings)
    });
    let loaded = loaded?;
    Ok(LoadedPlugin {
        backend: Arc::new(loaded.backend),
        description: loaded.description,
        api_version: loaded.api_version,
        effective_permissions: permissions,
        load_time,
        from_cache: Some(loaded.from_cache),
    })
}

/// How one run on a store ended badly.
struct RunFailure {
    stop: Option<StopReason>,
    memory_cap_hit: bool,
    error: String,
}

impl WasmBackend {
    fn new_store(
        &self,
        events: Option<EventSink>,
        signal: Arc<StopSignal>,
        deadline: Instant,
        wasi: WasiCtx,
    ) -> Store<HostState> {
        let plugin = &self.inner;
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limits: CapLimiter {
                inner: StoreLimitsBuilder::new()
                    .memory_size(plugin.memory_cap)
                    .trap_on_grow_failure(true)
                    .instances(64)
                    .build(),
                cap: plugin.memory_cap,
                hit: false,
            },
            plugin: Arc::clone(&plugin.name),
            events,
            signal: Arc::clone(&signal),
            deadline,
            http: Arc::new(HttpAccess {
                allowed: plugin.permissions.http.clone(),
                client: Arc::clone(&plugin.http_client),
                runtime: tokio::runtime::Handle::try_current().ok(),
            }),
            stop: None,
        };
        let mut store = Store::new(plugin.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(1);
        let grace = plugin.grace;
        store.epoch_deadline_callback(move |mut ctx| {
            let now = Instant::now();
            let stop = if now >= deadline {
                Some(StopReason::Deadline)
            } else if signal.cancelled_at().is_some_and(|at| now >= at + grace) {
                Some(StopReason::Cancelled)
            } else {
                None
            };
            match stop {
                Some(reason) => {
                    ctx.data_mut().stop = Some(reason);
                    Err(wasmtime::format_err!("interrupted by the host: {reason:?}"))
                }
                None => Ok(UpdateDeadline::Continue(1)),
            }
        });
        store
    }

    fn failure(store: &Store<HostState>, error: wasmtime::Error) -> RunFailure {
        RunFailure {
            stop: store.data().stop,
            memory_cap_hit: store.data().limits.hit,
            error: format!("{error:#}"),
        }
    }

    /// Calls `describe` on a fresh instance (no permissions, a short deadline).
    fn describe(&self) -> Result<PluginDescription, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let _ticking = tick_while_running(self.inner.engine);
        let mut store = self.new_store(
            None,
            Arc::default(),
            deadline,
            WasiCtxBuilder::new().build(),
        );
        let instance = self
            .inner
            .pre
            .instantiate(&mut store)
            .map_err(|e| format!("{e:#}"))?;
        let info = instance
            .call_describe(&mut store)
            .map_err(|e| format!("{e:#}"))?;
        Ok(PluginDescription {
            name: info.name,
            version: info.version,
            description: info.description,
        })
    }

    /// Instantiates the component once and drops it: the per-task setup cost (benchmarks).
    pub fn instantiate_once(&self) -> Result<(), PluginError> {
        let mut store = self.new_store(
            None,
            Arc::default(),
            Instant::now() + Duration::from_secs(10),
            WasiCtxBuilder::new().build(),
        );
        self.inner
            .pre
            .instantiate(&mut store)
            .map(drop)
            .map_err(|e| PluginError::WasmInvalid {
                path: PathBuf::from(&*self.inner.name),
                reason: format!("{e:#}"),
            })
    }

    /// Runs one task on this (blocking) thread.
    fn run_task(&self, task: Task, events: EventSink, signal: Arc<StopSignal>) -> TaskOutcome {
        let plugin = &self.inner;
        let started = Instant::now();
        let deadline = started + plugin.timeout;
        let mut wasi = WasiCtxBuilder::new();
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let mut guest_workdir = String::new();
        if plugin.permissions.workdir && !task.workdir.is_empty() {
            if let Err(e) = wasi.preopened_dir(
                &task.workdir,
                GUEST_WORKDIR,
                wasmtime_wasi::FsPerms::ReadWrite,
            ) {
                return TaskOutcome::failed(
                    FailureKind::System,
                    format!("cannot open the task workdir {}: {e:#}", task.workdir),
                );
            }
            wasi.initial_cwd(GUEST_WORKDIR);
            guest_workdir = GUEST_WORKDIR.to_owned();
        }
        for var in &plugin.permissions.env {
            if let Ok(value) = std::env::var(var) {
                wasi.env(var, value);
            }
        }
        let _ticking = tick_while_running(plugin.engine);
        let mut store = self.new_store(Some(events), Arc::clone(&signal), deadline, wasi.build());
        let wit_task = wit_types::Task {
            task_id: task.task_id,
            prompt: task.prompt,
            system_context: task.system_context,
            max_turns: task.max_turns,
            max_budget_usd: task.max_budget_usd,
            session_id: task.session_id,
            workdir: guest_workdir,
        };
        let result = match plugin.pre.instantiate(&mut store) {
            Ok(instance) => instance
                .call_execute(&mut store, &wit_task)
                .map_err(|e| Self::failure(&store, e)),
            Err(e) => Err(Self::failure(&store, e)),
        };
        match result {
            // A guest that returned on its own, but after its deadline (it was blocked in a
            // host call, or returned before the next epoch check): the deadline still wins.
            Ok(_) if Instant::now() >= deadline => self.past_deadline(started),
            Ok(outcome) => super::native::normalise(convert_outcome(outcome)),
            Err(failure) => self.explain(failure, started),
        }
    }

    /// The outcome of a task that ran past its deadline: failed, `system`.
    fn past_deadline(&self, started: Instant) -> TaskOutcome {
        TaskOutcome::failed(
            FailureKind::System,
            format!(
                "the WASM plugin ran past its deadline of {} ms (returned after {} ms)",
                self.inner.timeout.as_millis(),
                started.elapsed().as_millis()
            ),
        )
    }

    fn explain(&self, failure: RunFailure, started: Instant) -> TaskOutcome {
        let plugin = &self.inner;
        match failure.stop {
            Some(StopReason::Deadline) => TaskOutcome::failed(
                FailureKind::System,
                format!(
                    "the WASM plugin ran past its deadline of {} ms and was interrupted \
                     (after {} ms)",
                    plugin.timeout.as_millis(),
                    started.elapsed().as_millis()
                ),
            ),
            Some(StopReason::Cancelled) => TaskOutcome::cancelled(format!(
                "cancelled; the WASM plugin did not return within {} ms and was interrupted",
                plugin.grace.as_millis()
            )),
            None if failure.memory_cap_hit => TaskOutcome::failed(
                FailureKind::System,
                format!(
                    "the WASM plugin exceeded its memory cap of {} MiB and trapped: {}",
                    plugin.memory_cap >> 20,
                    failure.error
                ),
            ),
            None => TaskOutcome::failed(
                FailureKind::System,
                format!("the WASM plugin trapped: {}", failure.error),
            ),
        }
    }
}

fn convert_outcome(outcome: wit_types::Outcome) -> TaskOutcome {
    use agentserver_plugin_api::TaskStatus;
    TaskOutcome {
        status: match outcome.status {
            wit_types::TaskStatus::Completed => TaskStatus::Completed,
            wit_types::TaskStatus::Failed => TaskStatus::Failed,
            wit_types::TaskStatus::Cancelled => TaskStatus::Cancelled,
        },
        result: outcome.result,
        total_cost_usd: outcome.total_cost_usd,
        num_turns: outcome.num_turns,
        failure_reason: outcome.failure_reason,
        failure_kind: outcome.failure_kind.map(|k| match k {
            wit_types::FailureKind::User => FailureKind::User,
            wit_types::FailureKind::System => FailureKind::System,
        }),
    }
}

#[async_trait]
impl Backend for WasmBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: self.inner.name.to_string(),
            version: self.inner.version.clone(),
            session_type: SessionType::Custom,
        }
    }

    async fn execute(
        &self,
        task: Task,
        events: EventSink,
        cancel: CancellationToken,
    ) -> TaskOutcome {
        let signal = Arc::new(StopSignal::default());
        let this = self.clone();
        let run_signal = Arc::clone(&signal);
        let mut call = tokio::task::spawn_blocking(move || this.run_task(task, events, run_signal));
        let joined = |r: Result<TaskOutcome, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| {
                TaskOutcome::failed(FailureKind::System, format!("WASM task thread failed: {e}"))
            })
        };
        tokio::select! {
            result = &mut call => return joined(result),
            () = cancel.cancelled() => signal.cancel(),
        }
        // The epoch callback interrupts the guest once the grace period is over; the extra
        // margin only covers a guest blocked inside a host call (an HTTP fetch).
        let limit = self.inner.grace + Duration::from_secs(5);
        match tokio::time::timeout(limit, &mut call).await {
            Ok(result) => joined(result),
            Err(_) => TaskOutcome::cancelled(format!(
                "cancelled; the WASM plugin did not stop within {} ms and was abandoned",
                limit.as_millis()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::componentize::{WitSource, append_custom_section, component_from_wat};
    use super::*;

    const MINIMAL: &str = r#"(module
      (import "agentserver:backend/host@VERSION" "cancelled" (func (result i32)))
      (memory (export "memory") 1)
      (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096))
      (func (export "describe") (result i32) (i32.const 1024))
      (func (export "execute") (param i32 i32 i32 i32 i32 i32 i32 f64 i32 i32 i32 i32) (result i32)
        (i32.const 1088)))"#;

    fn minimal(version: &str, section: bool) -> Vec<u8> {
        let backend =
            agentserver_plugin_api::wit::BACKEND_V1.replace("@1.0.0", &format!("@{version}"));
        let wit = WitSource {
            backend: &backend,
            api_version_section: section,
            ..WitSource::default()
        };
        component_from_wat(&MINIMAL.replace("VERSION", version), &wit).unwrap()
    }

    #[test]
    fn version_comes_from_imports_or_the_section() {
        let path = Path::new("x.wasm");
        assert_eq!(
            component_api_version(&minimal("1.2.3", false), path).unwrap(),
            "1.2.3"
        );
        assert_eq!(
            component_api_version(&minimal("1.2.3", true), path).unwrap(),
            "1.2.3"
        );
        // A section that disagrees with the imports on the major: the odd one is reported.
        let mut mixed = minimal("2.0.0", false);
        append_custom_section(&mut mixed, API_VERSION_SECTION, b"1.0.0");
        assert_eq!(component_api_version(&mixed, path).unwrap(), "2.0.0");
    }

    #[test]
    fn cache_keys_follow_the_content() {
        let engine = engine().unwrap();
        let a = cache_key(engine, b"one");
        assert_eq!(a, cache_key(engine, b"one"));
        assert_ne!(a, cache_key(engine, b"two"));
        assert!(a.ends_with(".cwasm"));
    }
}
