//! The WIT package WebAssembly plugins target, embedded as text.
//!
//! The files live in `plugin-api/wit/v1/` (one folder per major API version, as Zed's extension
//! host does): `backend.wit` holds `agentserver:backend@1.0.0`, `deps/` the WASI 0.2 packages
//! the host links. Hosts and tools that build components at run time (the bundled example, the
//! tests) read the package from here instead of from the file system.

/// Path of the version-1 WIT folder, relative to the `plugin-api` crate root.
pub const V1_DIR: &str = "wit/v1";

/// The text of `wit/v1/backend.wit` (package `agentserver:backend@1.0.0`).
pub const BACKEND_V1: &str = include_str!("../wit/v1/backend.wit");

/// The WASI 0.2 packages in `wit/v1/deps/` as `(file name, text)`, in dependency order (each
/// only uses packages listed before it), for building a `wit_parser::Resolve` in memory.
pub const WASI_DEPS_V1: &[(&str, &str)] = &[
    ("io.wit", include_str!("../wit/v1/deps/io.wit")),
    ("clocks.wit", include_str!("../wit/v1/deps/clocks.wit")),
    ("random.wit", include_str!("../wit/v1/deps/random.wit")),
    (
        "filesystem.wit",
        include_str!("../wit/v1/deps/filesystem.wit"),
    ),
    ("sockets.wit", include_str!("../wit/v1/deps/sockets.wit")),
    ("cli.wit", include_str!("../wit/v1/deps/cli.wit")),
];

/// Name of the WIT package, without its version.
pub const PACKAGE: &str = "agentserver:backend";

/// Name of the world plugins target.
pub const WORLD: &str = "backend";

/// Name of the custom section in which a component may state the API version it was built
/// against (UTF-8 semver text). The host reads it, or the version of the `agentserver:backend`
/// interfaces the component imports, before compiling anything.
pub const API_VERSION_SECTION: &str = "agentserver:api-version";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_package_version_matches_api_version() {
        let decl = format!("package {PACKAGE}@{};", crate::API_VERSION);
        assert!(
            BACKEND_V1.contains(&decl),
            "backend.wit must declare {decl}"
        );
        assert_eq!(
            crate::ffi::semver_major(crate::API_VERSION),
            Some(crate::API_MAJOR)
        );
    }

    #[test]
    fn c_header_matches_api_and_abi_versions() {
        let header = include_str!("../include/agentserver_plugin.h");
        assert!(header.contains(&format!(
            "#define AGENTSERVER_PLUGIN_API_VERSION \"{}\"",
            crate::API_VERSION
        )));
        assert!(header.contains(&format!(
            "#define AGENTSERVER_PLUGIN_ABI_VERSION {}u",
            crate::ffi::ABI_VERSION
        )));
        assert!(header.contains(crate::ffi::ENTRY_SYMBOL));
    }
}
