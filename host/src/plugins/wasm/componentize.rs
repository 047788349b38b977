//! Building WASM plugin components without a wasm32 toolchain: WebAssembly text (WAT) is
//! assembled with `wat`, the WIT world is embedded as a `component-type` custom section with
//! `wit_component::embed_component_metadata`, and `wit_component::ComponentEncoder` turns the
//! core module into a component. The bundled example and the tests' fixtures are built this way.
//!
//! The core module follows the canonical ABI by hand: it imports host functions from modules
//! named after the interfaces (`agentserver:backend/host@1.0.0`), exports `describe`,
//! `execute`, `memory` and `cabi_realloc`. See `backends/examples/wasm/echo.wat`.

use agentserver_plugin_api::wit::{API_VERSION_SECTION, BACKEND_V1, WASI_DEPS_V1, WORLD};
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::Resolve;

/// Errors while building a component.
#[derive(Debug, thiserror::Error)]
pub enum ComponentizeError {
    /// The WIT did not parse or resolve.
    #[error("WIT: {0}")]
    Wit(String),
    /// The WAT did not assemble.
    #[error("WAT: {0}")]
    Wat(String),
    /// wit-component refused the module (it does not match the world).
    #[error("component encoding: {0}")]
    Encode(String),
}

/// What to build against.
#[derive(Clone, Debug)]
pub struct WitSource<'a> {
    /// The text of the `agentserver:backend` package ([`BACKEND_V1`] unless testing another
    /// version).
    pub backend: &'a str,
    /// An extra package (e.g. a world that adds WASI imports), resolved after the others.
    pub extra: Option<&'a str>,
    /// The world to target: in `extra` when given, else in `backend`.
    pub world: &'a str,
    /// Whether to add the `agentserver:api-version` custom section (on by default; the host
    /// also reads the version from the import names, which tests check without it).
    pub api_version_section: bool,
}

impl Default for WitSource<'_> {
    fn default() -> Self {
        Self {
            backend: BACKEND_V1,
            extra: None,
            world: WORLD,
            api_version_section: true,
        }
    }
}

/// Assembles `wat` and encodes it as a component of the chosen world. The component carries an
/// `agentserver:api-version` custom section with the backend package's version.
pub fn component_from_wat(wat: &str, wit: &WitSource<'_>) -> Result<Vec<u8>, ComponentizeError> {
    let wit_error = |e: anyhow::Error| ComponentizeError::Wit(format!("{e:#}"));
    let mut resolve = Resolve::default();
    for (name, text) in WASI_DEPS_V1 {
        resolve.push_str(name, text).map_err(wit_error)?;
    }
    let backend = resolve
        .push_str("backend.wit", wit.backend)
        .map_err(wit_error)?;
    let api_version = resolve.packages[backend]
        .name
        .version
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let main = match wit.extra {
        Some(extra) => resolve.push_str("extra.wit", extra).map_err(wit_error)?,
        None => backend,
    };
    let world = resolve
        .select_world(&[main], Some(wit.world))
        .map_err(wit_error)?;
    let mut module = wat::parse_str(wat).map_err(|e| ComponentizeError::Wat(e.to_string()))?;
    wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
        .map_err(|e| ComponentizeError::Encode(format!("{e:#}")))?;
    let mut component = ComponentEncoder::default()
        .module(&module)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|e| ComponentizeError::Encode(format!("{e:#}")))?;
    if wit.api_version_section {
        append_custom_section(&mut component, API_VERSION_SECTION, api_version.as_bytes());
    }
    Ok(component)
}

/// Appends a custom section (id 0) to a module or component binary.
pub fn append_custom_section(binary: &mut Vec<u8>, name: &str, data: &[u8]) {
    let mut payload = Vec::with_capacity(name.len() + data.len() + 5);
    leb128(&mut payload, name.len() as u64);
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(data);
    binary.push(0);
    leb128(binary, payload.len() as u64);
    binary.extend_from_slice(&payload);
}

fn leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
