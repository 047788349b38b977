//! A loaded component as a [`Backend`]: load (version check, compile or cache, link,
//! describe), and one fresh store and instance per task.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use agentserver_common::grace::{Graceful, call_with_grace};
use agentserver_plugin_api::ffi::PluginDescription;
use agentserver_plugin_api::{
    Backend, BackendInfo, CancellationToken, EventSink, FailureKind, SessionType, Task, TaskOutcome,
};
use async_trait::async_trait;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use super::GUEST_WORKDIR;
use super::bindings::{self, agentserver::backend::types as wit_types};
use super::cache::compile;
use super::engine::{engine, tick_while_running};
use super::grants::HttpGrant;
use super::guest_output::GuestOutput;
use super::host_state::{HostState, HttpAccess};
use super::limits::{CapLimiter, StopReason, StopSignal, stop_reason};
use super::version::component_api_version;
use crate::plugins::{
    DiscoveredPlugin, Grant, LoadedPlugin, Permissions, PluginError, PluginOptions,
};

/// A compiled, linked plugin: what every task instantiates.
struct WasmPlugin {
    engine: &'static Engine,
    name: Arc<str>,
    version: String,
    pre: bindings::BackendPre<HostState>,
    permissions: Permissions,
    asked_http: Vec<String>,
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
    /// The HTTP hosts its manifest asks for (to say, when a fetch is refused, whether the
    /// manifest or the user's grant lacks the host).
    pub asked_http: Vec<String>,
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
    crate::plugins::check_api_version(&settings.name, &api_version)?;
    let (component, from_cache) = compile(bytes, path, settings.cache_dir.as_deref())?;
    let link_error = |e: wasmtime::Error| PluginError::WasmCompile {
        path: path.to_owned(),
        reason: format!("cannot link: {}; {LINK_HINT}", one_line(&format!("{e:#}"))),
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
            asked_http: settings.asked_http.clone(),
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

/// What every link error adds: what the host provides and how to build for it.
pub const LINK_HINT: &str = "the host links only the world `backend` of the WIT package \
    agentserver:backend@1.0.0 (plugin-api/wit/v1): its imports `host`, `http` and `types`, plus \
    the WASI 0.2 worlds wasi:cli/imports (environment, exit, stdin/stdout/stderr, terminal-*), \
    wasi:io, wasi:clocks, wasi:random, wasi:filesystem and wasi:sockets at 0.2.x; not wasi:http \
    or any other package. The component must export `describe` and `execute`. componentize-js: \
    build with `--disable http fetch-event`; componentize-py: target `-w backend` with \
    `-d plugin-api/wit/v1` (see docs/plugins.md)";

/// `text` on one line: line breaks and runs of spaces become one space.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Warns, once per load, about each permission the manifest asks for that the user's grant
/// leaves out, saying what to add to the config.
fn warn_ungranted(name: &str, asked: &Permissions, got: &Permissions, config: &Path) {
    if asked.workdir && !got.workdir {
        tracing::warn!(
            plugin = name,
            "plugin asks for the task workdir but `workdir = false` in [plugins.grants.{name}] \
             of {}: it gets no files; remove that line to grant it",
            config.display()
        );
    }
    let env: Vec<&String> = asked.env.iter().filter(|v| !got.env.contains(v)).collect();
    if !env.is_empty() {
        tracing::warn!(
            plugin = name,
            "plugin asks for environment variables {env:?} that are not granted: it will not \
             see them; add `env = {env:?}` under [plugins.grants.{name}] in {}",
            config.display()
        );
    }
    let http: Vec<&String> = asked
        .http
        .iter()
        .filter(|h| !got.http.contains(h))
        .collect();
    if !http.is_empty() {
        tracing::warn!(
            plugin = name,
            "plugin asks for HTTP to {http:?} that is not granted: fetches there will be \
             refused; add `http = {http:?}` under [plugins.grants.{name}] in {}",
            config.display()
        );
    }
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
    warn_ungranted(
        &manifest.name,
        &manifest.permissions,
        &permissions,
        &options.config_file(),
    );
    let settings = ComponentSettings {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        permissions: permissions.clone(),
        asked_http: manifest.permissions.http.clone(),
        memory_cap_bytes: options.memory_limit_bytes.unwrap_or(
            manifest
                .limits
                .memory_mb
                .unwrap_or(crate::plugins::manifest::DEFAULT_MEMORY_MB)
                << 20,
        ),
        timeout: options.task_timeout.unwrap_or_else(|| {
            Duration::from_secs(
                manifest
                    .limits
                    .timeout_secs
                    .unwrap_or(crate::plugins::manifest::DEFAULT_TIMEOUT_SECS),
            )
        }),
        cancel_grace: options.cancel_grace,
        cache_dir: options.cache_dir.clone(),
    };
    let (loaded, load_time) = crate::plugins::timed(|| -> Result<LoadedComponent, PluginError> {
        let bytes = crate::plugins::read_code(&plugin.dir, &path)?;
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
    /// The trap or error on one line, without the wasm backtrace.
    error: String,
}

/// A wasmtime error on one line: its root cause (the trap: "wasm trap: wasm `unreachable`
/// instruction executed"), not the multi-line wasm backtrace wrapped around it.
fn summarize(error: &wasmtime::Error) -> String {
    one_line(&error.root_cause().to_string())
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
                grant: HttpGrant::for_plugin(
                    plugin.permissions.http.clone(),
                    plugin.asked_http.clone(),
                    &plugin.name,
                ),
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
            match stop_reason(now, deadline, signal.cancelled_at(), grace) {
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
        tracing::debug!(plugin = %store.data().plugin, error = format!("{error:#}"), "WASM plugin trapped");
        RunFailure {
            stop: store.data().stop,
            memory_cap_hit: store.data().limits.hit,
            error: summarize(&error),
        }
    }

    /// Calls `describe` on a fresh instance (no permissions, a short deadline).
    fn describe(&self) -> Result<PluginDescription, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let _ticking = tick_while_running(self.inner.engine);
        let output = GuestOutput::new(Arc::clone(&self.inner.name));
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(output.stdout()).stderr(output.stderr());
        let mut store = self.new_store(None, Arc::default(), deadline, wasi.build());
        let explain = |e: wasmtime::Error| match output.tail() {
            Some((stream, tail)) => format!("{}; its last {stream} lines: {tail}", summarize(&e)),
            None => summarize(&e),
        };
        let instance = self.inner.pre.instantiate(&mut store).map_err(explain)?;
        let info = instance.call_describe(&mut store).map_err(explain)?;
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
        let output = GuestOutput::new(Arc::clone(&plugin.name));
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(output.stdout())
            .stderr(output.stderr());
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
        output.finish();
        match result {
            // A guest that returned on its own, but after its deadline (it was blocked in a
            // host call, or returned before the next epoch check): the deadline still wins.
            Ok(_) if Instant::now() >= deadline => self.past_deadline(started),
            Ok(outcome) => crate::plugins::native::normalise(convert_outcome(outcome)),
            Err(failure) => {
                let mut outcome = self.explain(failure, started);
                if let (Some(reason), Some((stream, tail))) =
                    (outcome.failure_reason.as_mut(), output.tail())
                {
                    reason.push_str(&format!("; its last {stream} lines: {tail}"));
                }
                outcome
            }
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
        // The WIT outcome (API 1.x) has no usage limit; a WASM plugin cannot pause its sandbox.
        usage_limit: None,
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
        let call = tokio::task::spawn_blocking(move || this.run_task(task, events, run_signal));
        let joined = |r: Result<TaskOutcome, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| {
                TaskOutcome::failed(FailureKind::System, format!("WASM task thread failed: {e}"))
            })
        };
        // The epoch callback interrupts the guest once the grace period is over; the extra
        // margin only covers a guest blocked inside a host call (an HTTP fetch).
        let limit = self.inner.grace + Duration::from_secs(5);
        match call_with_grace(call, cancel.cancelled(), |_| signal.cancel(), limit).await {
            Graceful::Finished(result)
            | Graceful::Stopped {
                result: Some(result),
                ..
            } => joined(result),
            Graceful::Stopped { result: None, .. } => TaskOutcome::cancelled(format!(
                "cancelled; the WASM plugin did not stop within {} ms and was abandoned",
                limit.as_millis()
            )),
        }
    }
}
