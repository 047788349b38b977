//! Plugins: backends loaded at run time, either native shared libraries speaking the C ABI in
//! `plugin-api/include/agentserver_plugin.h` (trusted code) or WebAssembly components targeting
//! the WIT package `agentserver:backend@1.0.0` in `plugin-api/wit/v1` (sandboxed).
//!
//! - Discovery: every `<dir>/<name>/plugin.toml` under `~/.agentserver/plugins` and the
//!   `--plugin-dir` folders (a `--plugin-dir` may also be a plugin folder itself).
//! - [`load_backend`] turns a plugin name into an `Arc<dyn Backend>` that registers as
//!   [`SessionType::Custom`](agentserver_plugin_api::SessionType::Custom), so the dispatcher
//!   runs it like a built-in backend.
//! - API versions are checked first: from the manifest, then from the artifact itself (the
//!   vtable of a native library, the import names or custom section of a component) before it is
//!   compiled or called. Any other major version is refused with both versions named.
//! - Native libraries are loaded only when the user allowed them (config or `--allow-native`)
//!   and are never unloaded. WASM plugins get only the permissions the manifest asks for and the
//!   user grants (see [`config`]), a fresh store per task, a memory cap and an epoch deadline.

pub mod config;
pub mod manifest;
pub mod native;
pub mod process;
pub mod scaffold;
pub mod validate;
pub mod wasm;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentserver_plugin_api::ffi::PluginDescription;
use agentserver_plugin_api::{API_MAJOR, API_VERSION, Backend};

pub use config::{Grant, PluginsConfig};
pub use manifest::{Isolation, Limits, MANIFEST_FILE, Manifest, Permissions, PluginKind};

/// Everything that can go wrong finding, installing or loading a plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// No plugin has this name.
    #[error("no plugin named `{name}` (looked in {searched})")]
    NotFound {
        /// The name asked for.
        name: String,
        /// The folders searched, comma-separated.
        searched: String,
    },
    /// `plugin.toml` is missing fields, malformed or unsafe.
    #[error("invalid plugin manifest {path}: {reason}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The config file does not parse.
    #[error("invalid config file {path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The plugin was built against another major version of the plugin API.
    #[error(
        "plugin `{name}` was built against plugin API {plugin_version}, but this host \
         implements plugin API {host_version} (only {host_major}.x plugins can be loaded): \
         rebuild the plugin against API {host_major}.x (WASM: the WIT package \
         agentserver:backend@{host_version}; C: agentserver_plugin.h with \
         AGENTSERVER_PLUGIN_API_VERSION \"{host_version}\"; Rust: agentserver-plugin-sdk \
         {host_major}.x)"
    )]
    IncompatibleApi {
        /// Plugin name (or file, when the name is unknown).
        name: String,
        /// The version the plugin declares.
        plugin_version: String,
        /// The host's [`API_VERSION`].
        host_version: String,
        /// The host's [`API_MAJOR`].
        host_major: u32,
    },
    /// The plugin was built against a newer minor version of the plugin API than the host
    /// implements: it may rely on what this host does not have (see the versioning policy in
    /// `docs/plugins.md`).
    #[error(
        "plugin `{name}` was built against plugin API {plugin_version}, newer than this host's \
         plugin API {host_version}: a minor version may add imports, callbacks and fields this \
         host does not have, so it is refused; upgrade agentserver, or rebuild the plugin \
         against API {host_version} (WASM: the WIT package agentserver:backend@{host_version}; \
         C: AGENTSERVER_PLUGIN_API_VERSION \"{host_version}\"; Rust: agentserver-plugin-sdk \
         {host_version})"
    )]
    NewerApi {
        /// Plugin name (or file, when the name is unknown).
        name: String,
        /// The version the plugin declares.
        plugin_version: String,
        /// The host's [`API_VERSION`].
        host_version: String,
    },
    /// `plugins install` found the plugin already installed and was not told to replace it.
    #[error(
        "plugin `{name}` is already installed in {dir}: pass `--force` to replace it, or \
         `agentserver plugins remove {name}` first"
    )]
    AlreadyInstalled {
        /// Plugin name.
        name: String,
        /// Its folder.
        dir: PathBuf,
    },
    /// `plugins remove` found no installed plugin of that name.
    #[error("no plugin named `{name}` is installed in {dir}")]
    NotInstalled {
        /// Plugin name.
        name: String,
        /// The folder of installed plugins.
        dir: PathBuf,
    },
    /// A native plugin the user has not allowed.
    #[error(
        "native plugin `{name}` is not allowed: native plugins run as trusted code inside the \
         host; add it to `allow_native` under `[plugins]` in {config} or pass \
         `--allow-native {name}`"
    )]
    NativeNotAllowed {
        /// Plugin name.
        name: String,
        /// The config file to edit.
        config: PathBuf,
    },
    /// The shared library could not be loaded (missing, truncated, wrong architecture).
    #[error("cannot load native plugin library {path}: {reason}")]
    NativeLoad {
        /// The library.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The library does not export the entry symbol.
    #[error(
        "{path} is not an agentserver native plugin: it does not export the symbol \
         `{symbol}` ({reason})"
    )]
    MissingEntry {
        /// The library.
        path: PathBuf,
        /// The symbol looked for.
        symbol: &'static str,
        /// The loader's message.
        reason: String,
    },
    /// The vtable's ABI version is not the host's.
    #[error(
        "native plugin {path} uses C ABI version {found}, but this host speaks C ABI version \
         {expected}: rebuild it against this host's agentserver_plugin.h"
    )]
    AbiMismatch {
        /// The library.
        path: PathBuf,
        /// The version in the plugin's vtable.
        found: u32,
        /// [`agentserver_plugin_api::ffi::ABI_VERSION`].
        expected: u32,
    },
    /// The library exports the entry symbol but breaks the ABI otherwise.
    #[error("invalid native plugin {path}: {reason}")]
    NativeInvalid {
        /// The library.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An out-of-process native plugin's host process could not load or describe it.
    #[error("native plugin {path} failed in its plugin-host process: {reason}")]
    PluginHost {
        /// The library.
        path: PathBuf,
        /// What the child reported, or how it ended.
        reason: String,
    },
    /// The file is not a WebAssembly component of our API.
    #[error("invalid WASM plugin {path}: {reason}")]
    WasmInvalid {
        /// The component file (or a label for in-memory components).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Compiling or linking the component failed.
    #[error("cannot compile WASM plugin {path}: {reason}")]
    WasmCompile {
        /// The component file.
        path: PathBuf,
        /// The engine's message.
        reason: String,
    },
}

/// How plugins are found and run. [`PluginOptions::default`] reads `~/.agentserver`.
#[derive(Clone, Debug)]
pub struct PluginOptions {
    /// Extra folders to search first (`--plugin-dir`).
    pub plugin_dirs: Vec<PathBuf>,
    /// Native plugins allowed on the command line (`--allow-native`), on top of the config.
    pub allow_native: Vec<String>,
    /// The state directory (`~/.agentserver`): holds `plugins/`, `config.toml` and the cache.
    pub state_dir: PathBuf,
    /// Overrides the manifest's per-task deadline.
    pub task_timeout: Option<Duration>,
    /// Overrides the manifest's memory cap (bytes, WASM only).
    pub memory_limit_bytes: Option<u64>,
    /// How long a plugin may take to return after cancellation or its deadline before the host
    /// interrupts (WASM) or abandons (native) the call.
    pub cancel_grace: Duration,
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// The executable that hosts out-of-process native plugins (`EXE plugin-host LIB`);
    /// `None` means the running executable, which must then be `agentserver`.
    pub plugin_host: Option<PathBuf>,
}

impl Default for PluginOptions {
    fn default() -> Self {
        Self::with_state_dir(crate::paths::state_dir())
    }
}

impl PluginOptions {
    /// Options rooted at `state_dir` (tests, several hosts on one machine).
    pub fn with_state_dir(state_dir: PathBuf) -> Self {
        Self {
            plugin_dirs: Vec::new(),
            allow_native: Vec::new(),
            cache_dir: Some(state_dir.join("cache").join("plugins")),
            state_dir,
            task_timeout: None,
            memory_limit_bytes: None,
            cancel_grace: Duration::from_secs(5),
            plugin_host: None,
        }
    }

    /// `state_dir/plugins`, where `plugins install` puts plugins.
    pub fn installed_dir(&self) -> PathBuf {
        self.state_dir.join("plugins")
    }

    /// `state_dir/config.toml`.
    pub fn config_file(&self) -> PathBuf {
        config::config_file(&self.state_dir)
    }

    /// The folders searched, in order.
    pub fn search_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = self.plugin_dirs.clone();
        dirs.push(self.installed_dir());
        dirs
    }
}

/// A plugin found on disk (its manifest parsed, nothing loaded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredPlugin {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The folder holding `plugin.toml`.
    pub dir: PathBuf,
}

impl DiscoveredPlugin {
    /// The library or component file.
    pub fn file(&self) -> PathBuf {
        self.manifest.file_path(&self.dir)
    }
}

/// What discovery found: the usable plugins and the folders that could not be read.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Plugins by search order; a name found twice keeps the first.
    pub plugins: Vec<DiscoveredPlugin>,
    /// Broken manifests and shadowed duplicates, as errors to show.
    pub problems: Vec<PluginError>,
}

/// Scans the search folders.
pub fn discover(options: &PluginOptions) -> Discovery {
    let mut found = Discovery::default();
    for dir in options.search_dirs() {
        // Any manifest entry counts (a FIFO, a symlink out): `Manifest::load` refuses the
        // unsafe ones, and the refusal is reported as a problem naming the file.
        let has_manifest = |p: &Path| std::fs::symlink_metadata(p.join(MANIFEST_FILE)).is_ok();
        let candidates: Vec<PathBuf> = if has_manifest(&dir) {
            vec![dir.clone()]
        } else {
            match std::fs::read_dir(&dir) {
                Ok(entries) => {
                    let mut dirs: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| {
                            has_manifest(p)
                                && !p
                                    .file_name()
                                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                        })
                        .collect();
                    dirs.sort();
                    dirs
                }
                Err(_) => Vec::new(),
            }
        };
        for candidate in candidates {
            match Manifest::load(&candidate) {
                Ok(manifest) => {
                    if let Some(first) = found
                        .plugins
                        .iter()
                        .find(|p| p.manifest.name == manifest.name)
                    {
                        found.problems.push(PluginError::Manifest {
                            path: candidate.join(MANIFEST_FILE),
                            reason: format!(
                                "plugin `{}` is shadowed by {}",
                                manifest.name,
                                first.dir.display()
                            ),
                        });
                    } else {
                        found.plugins.push(DiscoveredPlugin {
                            manifest,
                            dir: candidate,
                        });
                    }
                }
                Err(e) => found.problems.push(e),
            }
        }
    }
    found
}

/// Finds the plugin called `name`.
pub fn find(name: &str, options: &PluginOptions) -> Result<DiscoveredPlugin, PluginError> {
    discover(options)
        .plugins
        .into_iter()
        .find(|p| p.manifest.name == name)
        .ok_or_else(|| PluginError::NotFound {
            name: name.to_owned(),
            searched: options
                .search_dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A loaded plugin with what `plugins inspect` shows.
pub struct LoadedPlugin {
    /// The backend, ready for the dispatcher.
    pub backend: Arc<dyn Backend>,
    /// What the plugin said about itself.
    pub description: PluginDescription,
    /// The API version read from the artifact (vtable or component), not the manifest.
    pub api_version: String,
    /// The permissions it actually gets (WASM; native plugins are trusted with everything).
    pub effective_permissions: Permissions,
    /// Time to load (and, for WASM, compile or read from the cache) and describe it.
    pub load_time: Duration,
    /// WASM only: whether the compiled component came from the cache.
    pub from_cache: Option<bool>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("backend", &self.backend.info())
            .field("description", &self.description)
            .field("api_version", &self.api_version)
            .field("effective_permissions", &self.effective_permissions)
            .field("load_time", &self.load_time)
            .field("from_cache", &self.from_cache)
            .finish()
    }
}

/// The versioning policy (`docs/plugins.md`, "Versioning"): refuses a version whose major is
/// not [`API_MAJOR`], and a version of the same major whose minor is newer than the host's (it
/// may use what this host lacks). Older minors and any patch load.
pub fn check_api_version(name: &str, version: &str) -> Result<(), PluginError> {
    use agentserver_plugin_api::ffi::{semver_major, semver_minor};
    match semver_major(version) {
        Some(API_MAJOR) => {}
        _ => {
            return Err(PluginError::IncompatibleApi {
                name: name.to_owned(),
                plugin_version: version.to_owned(),
                host_version: API_VERSION.to_owned(),
                host_major: API_MAJOR,
            });
        }
    }
    let host_minor = semver_minor(API_VERSION).unwrap_or(0);
    if semver_minor(version).unwrap_or(0) > host_minor {
        return Err(PluginError::NewerApi {
            name: name.to_owned(),
            plugin_version: version.to_owned(),
            host_version: API_VERSION.to_owned(),
        });
    }
    Ok(())
}

/// Whether the native plugin `name` is allowed by the options or the config.
pub fn native_allowed(
    name: &str,
    options: &PluginOptions,
    config: &PluginsConfig,
) -> Result<(), PluginError> {
    if options.allow_native.iter().any(|n| n == name)
        || config.allow_native.iter().any(|n| n == name)
    {
        Ok(())
    } else {
        Err(PluginError::NativeNotAllowed {
            name: name.to_owned(),
            config: options.config_file(),
        })
    }
}

/// Loads a discovered plugin: checks, loads/compiles, describes.
pub fn load_plugin(
    plugin: &DiscoveredPlugin,
    options: &PluginOptions,
) -> Result<LoadedPlugin, PluginError> {
    let manifest = &plugin.manifest;
    check_api_version(&manifest.name, &manifest.api_version)?;
    let config = PluginsConfig::load(&options.config_file())?;
    match manifest.kind {
        PluginKind::Native => {
            native_allowed(&manifest.name, options, &config)?;
            match isolation(manifest, &config) {
                Isolation::InProcess => native::load(plugin, options),
                Isolation::Process => process::load(plugin, options),
            }
        }
        PluginKind::Wasm => {
            let grant = config.grant(&manifest.name);
            wasm::load(plugin, options, &grant)
        }
    }
}

/// Where a native plugin runs: the user's config, else its manifest, else in-process.
pub fn isolation(manifest: &Manifest, config: &PluginsConfig) -> Isolation {
    config
        .isolation
        .get(&manifest.name)
        .copied()
        .or(manifest.isolation)
        .unwrap_or_default()
}

/// Finds and loads the plugin `name` as a backend (type `custom`).
pub fn load_backend(name: &str, options: &PluginOptions) -> Result<Arc<dyn Backend>, PluginError> {
    let plugin = find(name, options)?;
    let loaded = load_plugin(&plugin, options)?;
    tracing::info!(
        plugin = name,
        kind = %plugin.manifest.kind,
        api_version = %loaded.api_version,
        load_ms = loaded.load_time.as_secs_f64() * 1000.0,
        "loaded plugin"
    );
    Ok(loaded.backend)
}

/// The example WASM backend bundled in the host (built at run time from the WAT source in
/// `backends/examples/wasm/`, no wasm32 toolchain needed). It echoes the prompt; see
/// [`wasm::bundled`].
pub fn bundled_example_backend() -> Result<Arc<dyn Backend>, PluginError> {
    wasm::bundled::backend(&PluginOptions::default())
}

/// Reads a plugin's library or component `file` from its directory `dir`: only a regular
/// file of at most [`PLUGIN_CODE_CAP`](crate::fsutil::PLUGIN_CODE_CAP) bytes that does
/// not lead out of `dir` (see [`read_regular_file`](crate::fsutil::read_regular_file)).
pub fn read_code(dir: &Path, file: &Path) -> Result<Vec<u8>, PluginError> {
    crate::fsutil::read_regular_file(dir, file, crate::fsutil::PLUGIN_CODE_CAP).map_err(|source| {
        PluginError::Io {
            path: file.to_owned(),
            source,
        }
    })
}

/// The lock file that serialises installs into `state_dir/plugins`.
pub const INSTALL_LOCK_FILE: &str = ".install.lock";

/// Installs the plugin in `source` (a folder holding `plugin.toml`, or the manifest itself)
/// into `state_dir/plugins/<name>`, replacing an older copy. Copies the manifest and the file
/// it names, and only when each is a regular file inside the source folder (a symlink out of
/// it, a FIFO or a device is refused, naming the file); the copies are 0600 in 0700 folders.
/// Checks the manifest's API version and, for a component, the version inside it. Native code
/// is not run at install time.
///
/// Installs serialise on `plugins/.install.lock`, so concurrent installs of one plugin all
/// succeed, the last one winning; the staging (`.install-*`) and replaced (`.old-*`) folders
/// are removed on every path, and ones left by a killed install are removed by the next.
pub fn install(source: &Path, options: &PluginOptions) -> Result<DiscoveredPlugin, PluginError> {
    install_with(source, options, Replace::Yes)
}

/// Whether [`install_with`] may replace an installed plugin of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// Replace it (`plugins install --force`; what [`install`] does).
    Yes,
    /// Refuse with [`PluginError::AlreadyInstalled`] (`plugins install` without `--force`).
    No,
}

/// The folder holding `plugin.toml` for an install source (the folder, or the manifest file).
pub fn source_dir(source: &Path) -> PathBuf {
    match std::fs::symlink_metadata(source) {
        Ok(m) if !m.is_dir() => source.parent().unwrap_or(Path::new(".")).to_owned(),
        _ => source.to_owned(),
    }
}

/// [`install`], refusing to replace an installed plugin unless `replace` says so.
pub fn install_with(
    source: &Path,
    options: &PluginOptions,
    replace: Replace,
) -> Result<DiscoveredPlugin, PluginError> {
    use crate::fsutil::{LockFile, ensure_private_dir, write_private_atomic};
    let source_dir = source_dir(source);
    let manifest_text = manifest::read_manifest_text(&source_dir)?;
    let manifest = Manifest::parse(&manifest_text, &source_dir.join(MANIFEST_FILE))?;
    check_api_version(&manifest.name, &manifest.api_version)?;
    let file = manifest.file_path(&source_dir);
    let bytes = read_code(&source_dir, &file)?;
    if manifest.kind == PluginKind::Wasm {
        let found = wasm::component_api_version(&bytes, &file)?;
        check_api_version(&manifest.name, &found)?;
    }
    let root = options.installed_dir();
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PluginError::Io { path, source }
    };
    // Directories under the state directory are private (0700), like every other one there.
    ensure_private_dir(&root).map_err(io(&root))?;
    let lock_path = root.join(INSTALL_LOCK_FILE);
    let _lock = LockFile::acquire(&lock_path).map_err(io(&lock_path))?;
    // Holding the lock, any staging or replaced folder of this plugin is a leftover.
    remove_leftovers(&root, &manifest.name);
    let suffix = format!("{}-{}", manifest.name, std::process::id());
    let staging = root.join(format!(".install-{suffix}"));
    let old = root.join(format!(".old-{suffix}"));
    let dest = root.join(&manifest.name);
    if replace == Replace::No && std::fs::symlink_metadata(&dest).is_ok() {
        return Err(PluginError::AlreadyInstalled {
            name: manifest.name.clone(),
            dir: dest,
        });
    }
    let result = (|| {
        ensure_private_dir(&staging).map_err(io(&staging))?;
        let staged_file = manifest.file_path(&staging);
        write_private_atomic(&staged_file, &bytes).map_err(io(&staged_file))?;
        let staged_manifest = staging.join(MANIFEST_FILE);
        write_private_atomic(&staged_manifest, manifest_text.as_bytes())
            .map_err(io(&staged_manifest))?;
        if std::fs::symlink_metadata(&dest).is_ok() {
            std::fs::rename(&dest, &old).map_err(io(&dest))?;
        }
        std::fs::rename(&staging, &dest).map_err(io(&dest))
    })();
    for leftover in [&staging, &old] {
        if let Err(e) = std::fs::remove_dir_all(leftover)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %leftover.display(), error = %e, "cannot remove an install folder");
        }
    }
    result?;
    Ok(DiscoveredPlugin {
        manifest,
        dir: dest,
    })
}

/// Removes the installed plugin `name` (its folder under `state_dir/plugins`), under the install
/// lock. Plugins found through `--plugin-dir` are not touched. Returns the removed folder.
pub fn remove(name: &str, options: &PluginOptions) -> Result<PathBuf, PluginError> {
    use crate::fsutil::LockFile;
    let root = options.installed_dir();
    let io = |path: &Path, source| PluginError::Io {
        path: path.to_owned(),
        source,
    };
    if !manifest::valid_name(name) {
        return Err(PluginError::NotInstalled {
            name: name.to_owned(),
            dir: root,
        });
    }
    let dest = root.join(name);
    if std::fs::symlink_metadata(dest.join(MANIFEST_FILE)).is_err() {
        return Err(PluginError::NotInstalled {
            name: name.to_owned(),
            dir: root,
        });
    }
    let lock_path = root.join(INSTALL_LOCK_FILE);
    let _lock = LockFile::acquire(&lock_path).map_err(|e| io(&lock_path, e))?;
    // Renamed first, so a reader never sees half a plugin folder.
    let doomed = root.join(format!(".old-{name}-{}", std::process::id()));
    std::fs::rename(&dest, &doomed).map_err(|e| io(&dest, e))?;
    std::fs::remove_dir_all(&doomed).map_err(|e| io(&doomed, e))?;
    Ok(dest)
}

/// Removes `.install-<name>-*` and `.old-<name>-*` folders under `root` (call with the install
/// lock held).
fn remove_leftovers(root: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let prefixes = [format!(".install-{name}-"), format!(".old-{name}-")];
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        let Some(rest) = prefixes
            .iter()
            .find_map(|p| file_name.strip_prefix(p.as_str()))
        else {
            continue;
        };
        // `<name>-<pid>`: a plugin `a` must not sweep the folders of a plugin `a-b`.
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path();
        tracing::debug!(path = %path.display(), "removing a leftover install folder");
        if let Err(e) = std::fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover install folder");
        }
    }
}

/// Measures `f`, for load times.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

/// Registers every discovered plugin with the dispatcher's registry under its name, as type
/// `custom`. Plugins load lazily on the first `resolve` (then the same backend is reused); a
/// load failure surfaces there as [`BackendError::Start`](agentserver_plugin_api::BackendError).
/// Returns the problems met (broken manifests, names already taken).
pub fn register_all(
    registry: &mut crate::dispatch::BackendRegistry,
    options: &PluginOptions,
) -> Vec<PluginError> {
    let found = discover(options);
    let mut problems = found.problems;
    for plugin in found.plugins {
        let name = plugin.manifest.name.clone();
        let options = options.clone();
        let loaded: Arc<std::sync::Mutex<Option<Arc<dyn Backend>>>> = Arc::default();
        let factory: crate::dispatch::BackendFactory = Arc::new(move |_spec| {
            let mut slot = loaded.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(backend) = slot.as_ref() {
                return Ok(Arc::clone(backend));
            }
            let backend = load_plugin(&plugin, &options)
                .map_err(|e| agentserver_plugin_api::BackendError::Start(e.to_string()))?
                .backend;
            *slot = Some(Arc::clone(&backend));
            Ok(backend)
        });
        if let Err(e) = registry.register(
            &name,
            Some(agentserver_plugin_api::SessionType::Custom),
            factory,
        ) {
            problems.push(PluginError::Manifest {
                path: PathBuf::from(&name),
                reason: e.to_string(),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_versioning_policy_loads_older_minors_and_refuses_newer_ones_and_other_majors() {
        assert!(check_api_version("p", "1.0.0").is_ok());
        assert!(check_api_version("p", "1.0.9").is_ok());
        let newer = check_api_version("p", "1.7.0").unwrap_err();
        assert!(matches!(newer, PluginError::NewerApi { .. }), "{newer}");
        let text = newer.to_string();
        assert!(
            text.contains("1.7.0") && text.contains("agentserver:backend@1.0.0"),
            "{text}"
        );
        let other = check_api_version("p", "2.0.0").unwrap_err();
        assert!(
            matches!(other, PluginError::IncompatibleApi { .. }),
            "{other}"
        );
        assert!(other.to_string().contains("agentserver:backend@1.0.0"));
        assert!(check_api_version("p", "0.9.0").is_err());
        assert!(check_api_version("p", "garbage").is_err());
    }
}
