//! Which plugin API a component was built against, read from its bytes before compiling.

use std::path::Path;

use agentserver_plugin_api::wit::API_VERSION_SECTION;

use crate::plugins::PluginError;

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
        let payload = payload
            .map_err(|e| invalid(format!("not a valid WebAssembly binary: {}", brief(&e))))?;
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

/// A parser error on one line and short: wasmparser's message for a bad header carries a
/// multi-line dump of the bytes it expected.
fn brief(error: &wasmparser::BinaryReaderError) -> String {
    let message = error.message();
    let message = message.split(" - expected").next().unwrap_or(message);
    let text = super::backend::one_line(&format!("{message} (at offset {:#x})", error.offset()));
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::super::componentize::{WitSource, append_custom_section, component_from_wat};
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
}
