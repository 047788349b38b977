//! `agentserver plugins list | inspect NAME | install PATH [--force] | remove NAME |
//! run NAME --prompt … | new NAME --lang …`.

use std::io::Write;
use std::process::ExitCode;

use agentserver::plugins::{self, PluginKind, PluginOptions, PluginsConfig};
use agentserver_plugin_api::{CancellationToken, EventSink, Task, TaskStatus};
use anyhow::{Context, Result};

use crate::cli::{PluginArgs, PluginRunArgs, PluginsAction, PluginsArgs};

/// `plugins run` exit status of a completed task.
pub const EXIT_COMPLETED: u8 = 0;
/// `plugins run` exit status of a failed task.
pub const EXIT_FAILED: u8 = 1;
/// `plugins run` exit status of a cancelled task.
pub const EXIT_CANCELLED: u8 = 2;
/// `plugins run` exit status when the plugin could not be found or loaded.
pub const EXIT_NOT_LOADED: u8 = 3;

/// The plugin options a command line asks for.
pub fn options(args: &PluginArgs) -> PluginOptions {
    PluginOptions {
        plugin_dirs: args.plugin_dir.clone(),
        allow_native: args.allow_native.clone(),
        ..PluginOptions::default()
    }
}

/// Runs one `plugins` subcommand.
pub async fn plugins(args: PluginsArgs) -> Result<ExitCode> {
    let options = options(&args.plugins);
    match args.action {
        PluginsAction::List => list(&options),
        PluginsAction::Inspect { name } => inspect(&name, &options),
        PluginsAction::Install { path, force } => install(&path, force, &options),
        PluginsAction::Remove { name } => {
            let dir = plugins::remove(&name, &options)?;
            println!("Removed {name} ({})", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        PluginsAction::Run(run_args) => run(run_args, options).await,
        PluginsAction::New { name, lang, dir } => {
            let lang: plugins::scaffold::Lang = lang.parse().map_err(anyhow::Error::msg)?;
            let dir = dir.unwrap_or_else(|| std::path::PathBuf::from(&name));
            let written = plugins::scaffold::write(&name, lang, &dir)?;
            println!("Wrote a {lang} plugin `{name}` in {}:", dir.display());
            for file in &written {
                println!("  {}", file.display());
            }
            println!("{}", lang.next_steps(&name, &dir));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `plugins run`: one task, no server. Events go to stdout as they come (`event <json>`), then
/// the outcome (`outcome <json>`); the exit status says how it ended.
async fn run(args: PluginRunArgs, options: PluginOptions) -> Result<ExitCode> {
    let name = args.name.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        plugins::find(&name, &options).and_then(|p| plugins::load_plugin(&p, &options))
    })
    .await
    .context("the plugin loader panicked")?;
    let loaded = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_NOT_LOADED));
        }
    };
    let workdir = match args.workdir {
        Some(dir) => dir,
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let workdir = std::path::absolute(&workdir)
        .with_context(|| format!("bad --workdir {}", workdir.display()))?;
    let task = Task {
        task_id: format!("task_local_{}", std::process::id()),
        prompt: args.prompt,
        system_context: args.system_context,
        max_turns: args.max_turns,
        workdir: workdir.display().to_string(),
        ..Task::default()
    };
    eprintln!(
        "running {} {} (API {}) on task {} in {}",
        loaded.description.name,
        loaded.description.version,
        loaded.api_version,
        task.task_id,
        workdir.display()
    );
    let (sink, mut events) = EventSink::channel(256);
    let printer = tokio::spawn(async move {
        let mut count = 0usize;
        while let Some(event) = events.recv().await {
            count += 1;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "event {}", event.as_json());
            let _ = out.flush();
        }
        count
    });
    let cancel = CancellationToken::new();
    if let Some(after) = args.cancel_after {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!("cancelling the task after {:.1} s", after.as_secs_f64());
            cancel.cancel();
        });
    }
    let started = std::time::Instant::now();
    let outcome = loaded.backend.execute(task, sink, cancel).await;
    let count = printer.await.unwrap_or(0);
    loaded.backend.shutdown().await;
    println!("outcome {}", serde_json::to_string(&outcome)?);
    eprintln!(
        "{} after {} ms, {count} events{}",
        match outcome.status {
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        },
        started.elapsed().as_millis(),
        outcome
            .failure_reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    Ok(ExitCode::from(match outcome.status {
        TaskStatus::Completed => EXIT_COMPLETED,
        TaskStatus::Failed => EXIT_FAILED,
        TaskStatus::Cancelled => EXIT_CANCELLED,
    }))
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

fn install(path: &std::path::Path, force: bool, options: &PluginOptions) -> Result<ExitCode> {
    let context = || format!("installing the plugin in {}", path.display());
    // Everything that would make the plugin fail to load is found now, not at the first task.
    let source = plugins::source_dir(path);
    let manifest = plugins::Manifest::load(&source).with_context(context)?;
    let candidate = plugins::DiscoveredPlugin {
        manifest,
        dir: source,
    };
    let checked = plugins::validate::validate(&candidate, options).with_context(context)?;
    let replace = if force {
        plugins::Replace::Yes
    } else {
        plugins::Replace::No
    };
    let installed = plugins::install_with(path, options, replace).with_context(context)?;
    println!(
        "Checked: API {}, describes itself as {} {}{}",
        checked.api_version,
        checked.description.name,
        checked.description.version,
        match checked.from_cache {
            Some(true) => ", compiled code already cached".to_owned(),
            Some(false) => format!(
                ", compiled and cached in {:.1} s",
                checked.load_time.as_secs_f64()
            ),
            None => String::new(),
        }
    );
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
