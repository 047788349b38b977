//! `agentserver remove`: delete an entry of the legacy ~/.agentserver/registry.json.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use agentserver::state::{RegistryEntry, RegistryFile};
use anyhow::{Context, Result, bail};

use crate::cli::RemoveArgs;

/// Removes the entry of `--dir` (default: the current directory), `--workspace` choosing among
/// several. Asks `[y/N]` unless `-y`. The removal itself is a read-modify-write under the
/// registry lock.
pub async fn remove(args: RemoveArgs) -> Result<ExitCode> {
    let file = RegistryFile::default_location();
    let dir = match args.dir {
        Some(d) => d,
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let dir = std::path::absolute(&dir)
        .with_context(|| format!("cannot make {} absolute", dir.display()))?;
    let dir = dir.to_string_lossy().into_owned();

    let registry = file.load()?;
    let candidates: Vec<&RegistryEntry> = registry
        .find_by_dir(&dir)
        .into_iter()
        .filter(|e| {
            args.workspace
                .as_deref()
                .is_none_or(|w| e.workspace_id == w)
        })
        .collect();
    let entry = match candidates.as_slice() {
        [] => match &args.workspace {
            Some(ws) => bail!("No agent registered for directory {dir} in workspace {ws}."),
            None => bail!("No agent registered for directory {dir}."),
        },
        [one] => (*one).clone(),
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|e| format!("  {}  {}  {}", e.workspace_id, e.name, e.sandbox_id))
                .collect();
            bail!(
                "Multiple agents registered for directory {dir}. Use --workspace to specify which one:\n{}",
                list.join("\n")
            );
        }
    };

    if !args.yes {
        let question = format!(
            "Remove agent \"{}\" for directory {}? [y/N] ",
            entry.name, entry.dir
        );
        let answer = tokio::task::spawn_blocking(move || ask(&question)).await??;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            println!("Cancelled.");
            return Ok(ExitCode::SUCCESS);
        }
    }

    let (dir, ws) = (entry.dir.clone(), entry.workspace_id.clone());
    let removed =
        tokio::task::spawn_blocking(move || file.update(|r| r.remove(&dir, &ws))).await??;
    match removed {
        Some(e) => {
            println!("Removed agent \"{}\" (sandbox {}).", e.name, e.sandbox_id);
            Ok(ExitCode::SUCCESS)
        }
        None => bail!(
            "The entry for {} was removed by another process meanwhile.",
            entry.dir
        ),
    }
}

fn ask(question: &str) -> std::io::Result<String> {
    let mut stdout = std::io::stdout();
    stdout.write_all(question.as_bytes())?;
    stdout.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line)
}
