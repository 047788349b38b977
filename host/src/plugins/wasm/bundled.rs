//! The example WASM backend bundled in the host: `backends/examples/wasm/echo.wat`, built into
//! a component at run time (no wasm32 toolchain needed) and compiled through the usual cache,
//! so `agentserver demo` can run a real WASM plugin on a fresh machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentserver_plugin_api::Backend;

use super::componentize::{WitSource, component_from_wat};
use super::{ComponentSettings, LoadedComponent, load_component};
use crate::plugins::manifest::{DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_SECS};
use crate::plugins::{Manifest, Permissions, PluginError, PluginOptions};

/// The example's WebAssembly text.
pub const ECHO_WAT: &str = include_str!("../../../../backends/examples/wasm/echo.wat");

/// The example's plugin name.
pub const NAME: &str = "wasm-example";

/// The example's manifest (`backends/examples/wasm/plugin.toml`), as `plugins install` expects
/// it next to `wasm-example.wasm`.
pub const MANIFEST: &str = include_str!("../../../../backends/examples/wasm/plugin.toml");

/// Builds the example component's bytes.
pub fn component_bytes() -> Result<Vec<u8>, PluginError> {
    component_from_wat(ECHO_WAT, &WitSource::default()).map_err(|e| PluginError::WasmInvalid {
        path: PathBuf::from("<bundled wasm-example>"),
        reason: e.to_string(),
    })
}

/// Builds, compiles (or reads from the cache in `options.cache_dir`) and loads the example,
/// with the limits of its manifest.
pub fn load(options: &PluginOptions) -> Result<LoadedComponent, PluginError> {
    let manifest = Manifest::parse(MANIFEST, Path::new("<bundled wasm-example>/plugin.toml"))?;
    let bytes = component_bytes()?;
    let settings = ComponentSettings {
        name: manifest.name,
        version: manifest.version,
        permissions: Permissions::default(),
        asked_http: Vec::new(),
        memory_cap_bytes: options
            .memory_limit_bytes
            .unwrap_or(manifest.limits.memory_mb.unwrap_or(DEFAULT_MEMORY_MB) << 20),
        timeout: options.task_timeout.unwrap_or(Duration::from_secs(
            manifest.limits.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
        )),
        cancel_grace: options.cancel_grace,
        cache_dir: options.cache_dir.clone(),
    };
    load_component(&bytes, Path::new("<bundled wasm-example>"), &settings)
}

/// The example as a backend.
pub fn backend(options: &PluginOptions) -> Result<Arc<dyn Backend>, PluginError> {
    Ok(Arc::new(load(options)?.backend))
}
