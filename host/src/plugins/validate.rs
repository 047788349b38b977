//! What `plugins install` checks before it copies anything: that the plugin would load here.
//!
//! - A native library is loaded in a `agentserver plugin-host` child (never in the installing
//!   process): it must export `agentserver_plugin_entry`, carry this host's C ABI version and a
//!   plugin API version this host accepts (see [`super::check_api_version`]).
//! - A WASM component is version-checked, compiled (into the compile cache, so the first task
//!   does not wait for the compiler), linked against exactly what the host provides (it must
//!   export `execute` and `describe` and import nothing else) and described.

use std::time::Duration;

use super::{
    DiscoveredPlugin, LoadedPlugin, PluginError, PluginKind, PluginOptions, PluginsConfig,
};

/// Checks that `plugin` (a folder not yet installed) loads on this host, as
/// [`super::load_plugin`] would, without asking whether a native plugin is allowed (that is
/// the user's decision after installing). Native code runs only in a child process.
pub fn validate(
    plugin: &DiscoveredPlugin,
    options: &PluginOptions,
) -> Result<LoadedPlugin, PluginError> {
    let manifest = &plugin.manifest;
    super::check_api_version(&manifest.name, &manifest.api_version)?;
    match manifest.kind {
        PluginKind::Native => super::process::load(plugin, options),
        PluginKind::Wasm => {
            let config = PluginsConfig::load(&options.config_file())?;
            let mut options = options.clone();
            // Compiling is the point; a short deadline is enough for `describe`.
            options.task_timeout = Some(Duration::from_secs(30));
            super::wasm::load(plugin, &options, &config.grant(&manifest.name))
        }
    }
}
