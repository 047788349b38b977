//! The example WASM backend bundled in the host: `backends/examples/wasm/echo.wat`, built into
//! a component at run time (no wasm32 toolchain needed) and compiled through the usual cache,
//! so `agentserver demo` can run a real WASM plugin on a fresh machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentserver_plugin_api::Backend;

use super::componentize::{WitSource, component_from_wat};
use super::{ComponentSettings, LoadedComponent, load_component};
use crate::plugins::{Permissions, PluginError, PluginOptions};

/// The example's WebAssembly text.
pub const ECHO_WAT: &str = include_str!("../../../../backends/examples/wasm/echo.wat");

/// The example's plugin name.
pub const NAME: &str = "wasm-example";

/// The example's manifest, as `plugins install` expects it next to `wasm-example.wasm`.
pub const MANIFEST: &str = r#"name = "wasm-example"
version = "0.1.0"
kind = "wasm"
file = "wasm-example.wasm"
api_version = "1.0.0"
description = "Echoes the prompt (bundled WebAssembly example)"

[limits]
memory_mb = 16
timeout_secs = 60
"#;

/// Builds the example component's bytes.
pub fn component_bytes() -> Result<Vec<u8>, PluginError> {
    component_from_wat(ECHO_WAT, &WitSource::default()).map_err(|e| PluginError::WasmInvalid {
        path: PathBuf::from("<bundled wasm-example>"),
        reason: e.to_string(),
    })
}

/// Builds, compiles (or reads from the cache in `options.cache_dir`) and loads the example.
pub fn load(options: &PluginOptions) -> Result<LoadedComponent, PluginError> {
    let bytes = component_bytes()?;
    let settings = ComponentSettings {
        name: NAME.into(),
        version: "0.1.0".into(),
        permissions: Permissions::default(),
        memory_cap_bytes: options.memory_limit_bytes.unwrap_or(16 << 20),
        timeout: options.task_timeout.unwrap_or(Duration::from_secs(60)),
        cancel_grace: options.cancel_grace,
        cache_dir: options.cache_dir.clone(),
    };
    load_component(&bytes, Path::new("<bundled wasm-example>"), &settings)
}

/// The example as a backend.
pub fn backend(options: &PluginOptions) -> Result<Arc<dyn Backend>, PluginError> {
    Ok(Arc::new(load(options)?.backend))
}
