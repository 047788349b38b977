//! `agentserver list`: the saved sessions (spec §13, v0.35+ table), or JSON with `--json`.

use std::process::ExitCode;

use agentserver::state::{Session, SessionStore, rfc3339};
use anyhow::Result;
use serde::Serialize;

use crate::cli::ListArgs;

/// Prints the sessions, newest first. The JSON form leaves the tokens out.
pub fn list(args: ListArgs) -> Result<ExitCode> {
    let sessions = SessionStore::default_location().list()?;
    if args.json {
        let views: Vec<SessionView<'_>> = sessions.iter().map(SessionView::from).collect();
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else if sessions.is_empty() {
        println!("No sessions.");
    } else {
        print!("{}", table(&sessions));
    }
    Ok(ExitCode::SUCCESS)
}

/// A session as `--json` shows it: everything but the tokens, plus liveness.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionView<'a> {
    sandbox_id: &'a str,
    name: &'a str,
    #[serde(rename = "type")]
    session_type: &'a str,
    workspace_id: &'a str,
    server_url: &'a str,
    dir: &'a str,
    created_at: String,
    /// The pid of the live process running it, or null.
    pid: Option<i32>,
    running: bool,
}

impl<'a> From<&'a Session> for SessionView<'a> {
    fn from(s: &'a Session) -> Self {
        let pid = s.live_pid();
        Self {
            sandbox_id: &s.sandbox_id,
            name: &s.name,
            session_type: &s.session_type,
            workspace_id: &s.workspace_id,
            server_url: &s.server_url,
            dir: &s.dir,
            created_at: rfc3339::format(&s.created_at),
            pid,
            running: pid.is_some(),
        }
    }
}

const HEADERS: [&str; 6] = [
    "SANDBOX",
    "NAME",
    "TYPE",
    "WORKSPACE",
    "DIRECTORY",
    "STATUS",
];

/// The table: ids cut to 8 characters, directories longer than 35 shown as `...` + the last
/// 32, status `Running (PID n)` or empty; columns padded to their widest cell, 2 spaces apart.
fn table(sessions: &[Session]) -> String {
    let rows: Vec<[String; 6]> = sessions
        .iter()
        .map(|s| {
            [
                first_chars(&s.sandbox_id, 8),
                s.name.clone(),
                s.session_type.clone(),
                first_chars(&s.workspace_id, 8),
                short_dir(&s.dir),
                s.live_pid()
                    .map(|pid| format!("Running (PID {pid})"))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADERS.map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn first_chars(text: &str, n: usize) -> String {
    text.chars().take(n).collect()
}

fn short_dir(dir: &str) -> String {
    let len = dir.chars().count();
    if len > 35 {
        format!("...{}", dir.chars().skip(len - 32).collect::<String>())
    } else {
        dir.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, dir: &str, pid: Option<i32>) -> Session {
        Session {
            sandbox_id: id.into(),
            tunnel_token: "tt-secret".into(),
            proxy_token: "pt-secret".into(),
            workspace_id: "workspace-123456".into(),
            name: "laptop".into(),
            session_type: "claudecode".into(),
            server_url: "http://s".into(),
            dir: dir.into(),
            created_at: rfc3339::now_local(),
            pid,
            backend: None,
        }
    }

    #[test]
    fn table_truncates_and_shows_status() {
        let long_dir = "/home/someone/projects/very/long/directory/name/here";
        let me = i32::try_from(std::process::id()).unwrap();
        let out = table(&[
            session("0f6c1f0e-8a43-4c36-9d3e-6a1f0c7e2b11", long_dir, Some(me)),
            session("abc", "/p", None),
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("SANDBOX   NAME    TYPE        WORKSPACE  DIRECTORY"));
        assert!(lines[1].starts_with("0f6c1f0e  laptop  claudecode  workspac   ..."));
        assert!(lines[1].contains(&long_dir[long_dir.len() - 32..]));
        assert!(lines[1].ends_with(&format!("Running (PID {me})")));
        assert!(lines[2].ends_with("/p"), "{}", lines[2]);
        assert!(!out.contains("secret"));
    }

    #[test]
    fn short_dir_keeps_35() {
        let d = "x".repeat(35);
        assert_eq!(short_dir(&d), d);
        let d = format!("/{}", "y".repeat(35));
        assert_eq!(short_dir(&d), format!("...{}", "y".repeat(32)));
    }

    #[test]
    fn json_view_has_no_tokens() {
        let s = session("a", "/p", None);
        let v = serde_json::to_value(SessionView::from(&s)).unwrap();
        assert_eq!(v["sandboxId"], "a");
        assert_eq!(v["running"], false);
        assert!(!v.to_string().contains("secret"));
    }
}
