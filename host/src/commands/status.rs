//! `agentserver status`: what the running hosts of this state directory are doing, read from
//! their status sockets (`~/.agentserver/status/<pid>.sock`).

use std::process::ExitCode;

use agentserver::metrics::HostStatus;
use anyhow::Result;

use crate::cli::StatusArgs;

/// Prints every running host's status; exit 1 when none runs.
pub async fn status(args: StatusArgs) -> Result<ExitCode> {
    let dir = agentserver::ops::status_dir();
    let hosts = agentserver::ops::query_all(&dir).await;
    if hosts.is_empty() {
        eprintln!(
            "No agentserver host is running for {} (no status socket answers in {}).",
            agentserver::paths::state_dir().display(),
            dir.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "hosts": hosts }))?
        );
    } else {
        print!("{}", table(&hosts));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human-readable form.
fn table(hosts: &[HostStatus]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for host in hosts {
        let _ = writeln!(
            out,
            "Host pid {} (agentserver {}), up since {}{}",
            host.pid,
            host.version,
            host.started_at,
            host.metrics_listen
                .as_deref()
                .map(|a| format!(", metrics on http://{a}/metrics"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "  health: {}",
            host.unhealthy.as_deref().unwrap_or("ok")
        );
        for sb in &host.sandboxes {
            let _ = writeln!(
                out,
                "  sandbox {} ({}) on {}",
                sb.sandbox_id, sb.backend, sb.server
            );
            let _ = writeln!(
                out,
                "    tunnel: {} since {} ({} reconnects)",
                sb.tunnel, sb.tunnel_since, sb.tunnel_reconnects
            );
            let finished: Vec<String> = sb
                .tasks_finished
                .iter()
                .map(|(outcome, n)| format!("{n} {outcome}"))
                .collect();
            let _ = writeln!(
                out,
                "    intake: {}; {} received, finished: {}; outbox: {} waiting",
                sb.intake,
                sb.tasks_received,
                if finished.is_empty() {
                    "none".to_owned()
                } else {
                    finished.join(", ")
                },
                sb.outbox_pending
            );
            let _ = writeln!(
                out,
                "    last successful poll: {}",
                sb.last_poll_success.as_deref().unwrap_or("none yet")
            );
            if sb.tasks_running.is_empty() {
                let _ = writeln!(out, "    running: none");
            } else {
                let _ = writeln!(out, "    running:");
                for task in &sb.tasks_running {
                    let _ = writeln!(
                        out,
                        "      {}  {}s (since {})",
                        task.task_id, task.age_seconds, task.started_at
                    );
                }
            }
            if let Some(err) = &sb.last_error {
                let _ = writeln!(out, "    last error: {} at {}", err.message, err.at);
            }
        }
    }
    out
}
