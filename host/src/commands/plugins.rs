//! `agentserver plugins list | inspect NAME | install PATH`.

use std::process::ExitCode;

use agentserver::plugins::{self, PluginKind, PluginOptions, PluginsConfig};
use anyhow::{Context, Result};

use crate::cli::{PluginArgs, PluginsAction, PluginsArgs};

/// The plugin options a command line asks for.
pub fn options(args: &PluginArgs) -> PluginOptions {
    PluginOptions {
        plugin_dirs: args.plugin_dir.clone(),
        allow_native: args.allow_native.clone(),
        ..PluginOptions::default()
    }
}

/// Runs one `plugins` subcommand.
pub fn plugins(args: PluginsArgs) -> Result<ExitCode> {
    let options = options(&args.plugins);
    match args.action {
        PluginsAction::List => list(&options),
        PluginsAction::Inspect { name } => inspect(&name, &options),
        PluginsAction::Install { path } => install(&path, &options),
    }
}

fn list(options: &PluginOptions) -> Result<ExitCode> {
    let found = plugins::discover(options);
    for problem in &found.problems {
        eprintln!("warning: {problem}");
    }
    if found.plugins.is_empty() {
        println!(
            "No plugins (looked in {}).",
            options
                .search_dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = found
        .plugins
        .iter()
        .map(|p| {
            [
                p.manifest.name.clone(),
                p.manifest.kind.to_string(),
                p.manifest.version.clone(),
                p.manifest.api_version.clone(),
                p.dir.display().to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "KIND", "VERSION", "API", "DIRECTORY"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out
    };
    println!("{}", line(header));
    for row in &rows {
        println!("{}", line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(name: &str, options: &PluginOptions) -> Result<ExitCode> {
    let plugin = plugins::find(name, options)?;
    let manifest = &plugin.manifest;
    println!("name:         {}", manifest.name);
    println!("version:      {}", manifest.version);
    println!("kind:         {}", manifest.kind);
    println!("directory:    {}", plugin.dir.display());
    println!("file:         {}", plugin.file().display());
    println!("api_version:  {} (manifest)", manifest.api_version);
    if !manifest.description.is_empty() {
        println!("description:  {}", manifest.description);
    }
    println!("manifest:");
    let text = plugins::manifest::read_manifest_text(&plugin.dir)?;
    for line in text.lines() {
        println!("    {line}");
    }
    if manifest.kind == PluginKind::Wasm {
        let p = &manifest.permissions;
        println!(
            "permissions requested: workdir={} env=[{}] http=[{}]",
            p.workdir,
            p.env.join(", "),
            p.http.join(", ")
        );
    } else {
        let config = PluginsConfig::load(&options.config_file())?;
        let allowed = plugins::native_allowed(name, options, &config).is_ok();
        println!(
            "permissions: native code runs with the host's privileges (allowed: {})",
            if allowed { "yes" } else { "no" }
        );
    }
    match plugins::load_plugin(&plugin, options) {
        Ok(loaded) => {
            println!(
                "api_version:  {} (read from the plugin)",
                loaded.api_version
            );
            if manifest.kind == PluginKind::Wasm {
                let p = &loaded.effective_permissions;
                println!(
                    "permissions granted:   workdir={} env=[{}] http=[{}]",
                    p.workdir,
                    p.env.join(", "),
                    p.http.join(", ")
                );
            }
            let cache = match loaded.from_cache {
                Some(true) => " (compiled code from the cache)",
                Some(false) => " (compiled now)",
                None => "",
            };
            println!(
                "load time:    {:.1} ms{cache}",
                loaded.load_time.as_secs_f64() * 1000.0
            );
            println!(
                "describe:     {} {}: {}",
                loaded.description.name, loaded.description.version, loaded.description.description
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("load:         FAILED: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn install(path: &std::path::Path, options: &PluginOptions) -> Result<ExitCode> {
    let installed = plugins::install(path, options)
        .with_context(|| format!("installing the plugin in {}", path.display()))?;
    let manifest = &installed.manifest;
    println!(
        "Installed {} {} ({}) in {}",
        manifest.name,
        manifest.version,
        manifest.kind,
        installed.dir.display()
    );
    match manifest.kind {
        PluginKind::Native => println!(
            "Native plugins run as trusted code. To allow it, add it to `allow_native` under \
             `[plugins]` in {} or pass `--allow-native {}`.",
            options.config_file().display(),
            manifest.name
        ),
        PluginKind::Wasm if !manifest.permissions.is_empty() => {
            let p = &manifest.permissions;
            println!(
                "It asks for: workdir={} env=[{}] http=[{}]. The workdir is granted unless \
                 you refuse it; grant env and http under `[plugins.grants.{}]` in {}.",
                p.workdir,
                p.env.join(", "),
                p.http.join(", "),
                manifest.name,
                options.config_file().display()
            );
        }
        PluginKind::Wasm => {}
    }
    println!("Run it with `agentserver run --backend {}`.", manifest.name);
    Ok(ExitCode::SUCCESS)
}
