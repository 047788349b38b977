//! Process groups: signalling the CLI's group and finding what is left of it.
//!
//! Every task's CLI is started with `setsid()`, so it leads a new session and a new process
//! group whose id is its pid; everything it starts stays in both unless it moves itself.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Sends `signal` to the process group `pgid`. Returns `false` if the group no longer exists.
pub fn signal_group(pgid: u32, signal: Signal) -> bool {
    let Ok(raw) = i32::try_from(pgid) else {
        return false;
    };
    if raw <= 1 {
        // Never signal group 0 (our own) or 1.
        return false;
    }
    killpg(Pid::from_raw(raw), signal).is_ok()
}

/// A live (non-zombie) process as read from `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// Process id.
    pub pid: u32,
    /// Process group id.
    pub pgid: u32,
    /// Session id.
    pub sid: u32,
    /// Command name (`comm`).
    pub comm: String,
}

/// Live processes (zombies excluded) whose process group **or** session is `id`.
///
/// Reads `/proc`; on systems without it the result is empty.
pub fn processes_in_group(id: u32) -> Vec<ProcInfo> {
    all_processes()
        .into_iter()
        .filter(|p| p.pgid == id || p.sid == id)
        .collect()
}

fn all_processes() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(pid, &stat)
        })
        .collect()
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid pgrp session …`. `comm` may contain spaces
/// and parentheses, so the fields are read after the last `)`. Zombies and dead entries give
/// `None`.
fn parse_stat(pid: u32, stat: &str) -> Option<ProcInfo> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let mut fields = stat.get(close + 1..)?.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" || state == "x" {
        return None;
    }
    let _ppid = fields.next()?;
    let pgid = fields.next()?.parse().ok()?;
    let sid = fields.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        pgid,
        sid,
        comm,
    })
}

/// SIGKILLs the group `id` and every live process still in session `id` (a process that moved
/// to its own group but stayed in the session). Returns how many live processes it found.
pub fn kill_leftovers(id: u32) -> usize {
    let found = processes_in_group(id);
    signal_group(id, Signal::SIGKILL);
    for p in &found {
        if p.pid > 1
            && let Ok(raw) = i32::try_from(p.pid)
        {
            let _ = nix::sys::signal::kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
    // A process that forked between the scan and the group kill is caught by the group kill
    // unless it also left the group; scan the session once more for those.
    for p in processes_in_group(id) {
        if p.pid > 1
            && let Ok(raw) = i32::try_from(p.pid)
        {
            let _ = nix::sys::signal::kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
    found.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let s = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 0 0";
        assert_eq!(
            parse_stat(1234, s),
            Some(ProcInfo {
                pid: 1234,
                pgid: 1234,
                sid: 1234,
                comm: "my (odd) cmd".into()
            })
        );
        assert_eq!(parse_stat(5, "5 (z) Z 1 5 5 0"), None);
    }

    #[test]
    fn finds_own_process() {
        let me = std::process::id();
        assert!(all_processes().iter().any(|p| p.pid == me));
    }

    #[test]
    fn refuses_dangerous_groups() {
        assert!(!signal_group(0, Signal::SIGCONT));
        assert!(!signal_group(1, Signal::SIGCONT));
    }
}
