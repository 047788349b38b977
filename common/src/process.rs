//! Child processes, owned here once for the host, the built-in backends and the probe:
//!
//! - [`isolate`]: a child starts in a new process group (or session) of its own, with the
//!   signal mask emptied and SIGINT/SIGTERM at their default dispositions (an ignored
//!   disposition, as a host started in the background by a shell has, survives `exec` and would
//!   make the child deaf to the signal that stops it), and on Linux with a parent-death signal
//!   (SIGKILL), so it dies with the host even when the host is killed.
//! - [`kill_group`]: the only call of `killpg(2)`, never for group 0 (our own) or 1.
//! - [`StopLadder`]: signal the group, wait a grace, SIGKILL the group, wait.
//! - [`sweep`]: SIGKILL whatever is left in a child's group or session after it is gone.
//! - [`StderrTail`] and [`collect_tail`]: the newest bytes a child printed, bounded.
//! - [`Scope`] ([`scope`]), [`become_subreaper`] and [`sweep_stale`]: what a task or a shared
//!   server started, found and killed even after it left the group and the session.
//!
//! A parent-death signal fires when the *thread* that spawned the child ends, not the process:
//! spawn from a thread that lives as long as the child should (a runtime worker, never a
//! short-lived blocking-pool thread).

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;

pub mod scope;

pub use scope::{Leftover, SCOPE_ENV, Scope, become_subreaper, sweep_stale};

/// How a child is detached from the host's process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detach {
    /// A new process group whose id is the child's pid (`setpgid(0, 0)`).
    Group,
    /// A new session, and so a new process group, both with the child's pid as id (`setsid`):
    /// what it starts stays in the session even when it moves to another group, and
    /// [`sweep`] finds it there.
    Session,
}

/// Prepares `cmd` so that its child starts detached as `detach` says, with an empty signal
/// mask, SIGINT/SIGTERM at their defaults and (on Linux) SIGKILL as its parent-death signal.
/// For a `tokio::process::Command`, pass `cmd.as_std_mut()`.
pub fn isolate(cmd: &mut std::process::Command, detach: Detach) {
    use std::os::unix::process::CommandExt;
    if detach == Detach::Group {
        cmd.process_group(0);
    }
    let new_session = detach == Detach::Session;
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2),
    // sigemptyset(3), sigprocmask(2), signal(2) and prctl(2), which are async-signal-safe; it
    // touches no memory of the parent and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if new_session && libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            #[cfg(target_os = "linux")]
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `signal` to the process group `pgid`. Returns `false` if the group no longer exists,
/// and never signals group 0 (our own) or 1.
pub fn kill_group(pgid: u32, signal: Signal) -> bool {
    match i32::try_from(pgid) {
        Ok(raw) if raw > 1 => killpg(Pid::from_raw(raw), signal).is_ok(),
        _ => false,
    }
}

/// The stop ladder: `signal` to the child's group, up to `grace` for it to exit, then SIGKILL
/// to the group and up to `kill_wait` for it to be reaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopLadder {
    /// The polite signal (SIGTERM for claude, SIGINT for opencode).
    pub signal: Signal,
    /// How long the child may take to exit after it.
    pub grace: Duration,
    /// How long to wait for the child to be reaped after SIGKILL.
    pub kill_wait: Duration,
}

/// What [`StopLadder::stop`] did.
#[derive(Debug)]
pub struct Stopped {
    /// The exit status, if the child was reaped.
    pub status: Option<ExitStatus>,
    /// The signals sent to the group, in order.
    pub signals: Vec<Signal>,
}

impl Stopped {
    /// True when the child had to be SIGKILLed.
    pub fn killed(&self) -> bool {
        self.signals.contains(&Signal::SIGKILL)
    }
}

impl StopLadder {
    /// Stops `child`, the leader of group `pgid`. Whatever else is in the group is left for
    /// [`sweep`] (or a last [`kill_group`]).
    pub async fn stop(&self, child: &mut Child, pgid: u32) -> Stopped {
        let mut signals = Vec::new();
        tracing::debug!(pgid, signal = %self.signal, "signalling the child's process group");
        kill_group(pgid, self.signal);
        signals.push(self.signal);
        if let Ok(status) = tokio::time::timeout(self.grace, child.wait()).await {
            return Stopped {
                status: status.ok(),
                signals,
            };
        }
        tracing::debug!(pgid, "SIGKILL to the child's process group");
        kill_group(pgid, Signal::SIGKILL);
        signals.push(Signal::SIGKILL);
        let status = match tokio::time::timeout(self.kill_wait, child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                tracing::error!(pgid, "the child did not die after SIGKILL");
                None
            }
        };
        Stopped { status, signals }
    }
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

/// The live (non-zombie) process `pid`, if there is one (read from `/proc`).
pub fn process(pid: u32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &stat)
}

/// Whether `pid` is a live process (a zombie, or no process, is not).
pub fn is_alive(pid: u32) -> bool {
    process(pid).is_some()
}

/// Waits (bounded, looking every 20 ms) until `pid` is no live process; returns whether it is
/// gone.
pub async fn wait_gone(pid: u32, within: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while is_alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    true
}

fn all_processes() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(process)
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

/// The leftover sweep: SIGKILLs the group `id` and every live process still in session `id` (a process that moved
/// to its own group but stayed in the session), and reaps those of them that were reparented
/// to this process (a subreaper, [`become_subreaper`]). Call it after the leader `id` was
/// awaited: the leader itself is never reaped here. Returns how many live processes it found.
pub fn sweep(id: u32) -> usize {
    let found = processes_in_group(id);
    kill_group(id, Signal::SIGKILL);
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
    // Also when nothing was alive: claude's MCP servers, reparented to us when claude exited,
    // may have exited on their own since and be our zombies now.
    let wait = if found.is_empty() { 0 } else { 500 };
    reap_group_zombies(id, std::time::Instant::now() + Duration::from_millis(wait));
    found.len()
}

/// Reaps our zombie children in group or session `id` other than its leader: none of them is
/// a child we spawned (each of ours leads a group of its own), so no `Child` owns them. Waits
/// (bounded) for the killed ones to die first.
fn reap_group_zombies(id: u32, deadline: std::time::Instant) {
    let me = std::process::id();
    while std::time::Instant::now() < deadline && !processes_in_group(id).is_empty() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for pid in dir
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
    {
        if pid == id {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let zombie = fields.first() == Some(&"Z");
        let parent = fields.get(1).and_then(|f| f.parse::<u32>().ok());
        let in_group = fields[2.min(fields.len())..]
            .iter()
            .take(2)
            .any(|f| f.parse::<u32>().ok() == Some(id));
        if zombie
            && parent == Some(me)
            && in_group
            && let Ok(raw) = i32::try_from(pid)
        {
            let _ = nix::sys::wait::waitpid(
                Pid::from_raw(raw),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
}

/// The newest bytes of a stream, bounded: the tail of a child's stderr kept for failure
/// reports (and the claudecode terminal's replay buffer).
#[derive(Debug)]
pub struct StderrTail {
    buf: VecDeque<u8>,
    cap: usize,
    total: u64,
}

impl StderrTail {
    /// A tail keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            buf: VecDeque::with_capacity(cap.min(64 * 1024)),
            cap,
            total: 0,
        }
    }

    /// Appends bytes, dropping the oldest beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if self.cap == 0 {
            return;
        }
        let data = if data.len() > self.cap {
            &data[data.len() - self.cap..]
        } else {
            data
        };
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }

    /// Appends `line` cut to its first `max_chars` characters, and a newline.
    pub fn push_line(&mut self, line: &str, max_chars: usize) {
        let end = line
            .char_indices()
            .nth(max_chars)
            .map_or(line.len(), |(i, _)| i);
        self.push(&line.as_bytes()[..end]);
        self.push(b"\n");
    }

    /// The newest `n` bytes (all if fewer).
    pub fn tail(&self, n: usize) -> Vec<u8> {
        let skip = self.buf.len().saturating_sub(n);
        self.buf.iter().skip(skip).copied().collect()
    }

    /// The newest `n` complete lines (lossy UTF-8), oldest first. A line cut by the capacity
    /// is left out while `n` complete lines are held after it.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.to_vec()).into_owned();
        let text = text.strip_suffix('\n').unwrap_or(&text);
        if text.is_empty() {
            return Vec::new();
        }
        let lines: Vec<&str> = text.split('\n').collect();
        let skip = lines.len().saturating_sub(n);
        lines[skip..].iter().map(|l| (*l).to_owned()).collect()
    }

    /// Everything kept.
    pub fn to_vec(&self) -> Vec<u8> {
        self.buf.iter().copied().collect()
    }

    /// Bytes ever pushed.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.total = 0;
    }
}

/// Copies `reader` into `tail` until EOF or an error, logging each chunk at trace level with
/// `label` (e.g. "claude stderr").
pub async fn collect_tail<R: AsyncRead + Unpin>(
    mut reader: R,
    tail: Arc<Mutex<StderrTail>>,
    label: &'static str,
) {
    let mut buf = vec![0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                tracing::trace!(output = %String::from_utf8_lossy(&buf[..n]), "{label}");
                tail.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(&buf[..n]);
            }
        }
    }
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
        assert!(!kill_group(0, Signal::SIGCONT));
        assert!(!kill_group(1, Signal::SIGCONT));
    }

    // From backends/claudecode/src/io.rs (`Ring`).
    #[test]
    fn ring_keeps_newest() {
        let mut r = StderrTail::new(5);
        r.push(b"abc");
        r.push(b"defg");
        assert_eq!(r.to_vec(), b"cdefg");
        assert_eq!(r.tail(2), b"fg");
        r.push(b"0123456789");
        assert_eq!(r.to_vec(), b"56789");
        assert_eq!(r.total(), 17);
        r.clear();
        assert!(r.to_vec().is_empty());
    }

    #[test]
    fn last_lines_are_cut_and_whole() {
        let mut r = StderrTail::new(3 * 5);
        for line in ["one", "two-too-long", "three", "four"] {
            r.push_line(line, 4);
        }
        // "one\n" fell out; each line kept at most 4 characters.
        assert_eq!(r.last_lines(2), ["thre", "four"]);
        assert_eq!(r.last_lines(10), ["two-", "thre", "four"]);
        r.push_line("é€x", 2);
        assert_eq!(r.last_lines(1), ["é€"]);
        assert!(StderrTail::new(8).last_lines(3).is_empty());
    }

    #[tokio::test]
    async fn isolated_child_leads_its_group_and_the_ladder_stops_it() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "trap '' TERM; sleep 30"]);
        isolate(cmd.as_std_mut(), Detach::Group);
        let mut child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(processes_in_group(pid).iter().any(|p| p.pid == pid));
        let ladder = StopLadder {
            signal: Signal::SIGTERM,
            grace: Duration::from_millis(200),
            kill_wait: Duration::from_secs(5),
        };
        let stopped = ladder.stop(&mut child, pid).await;
        assert_eq!(stopped.signals, [Signal::SIGTERM, Signal::SIGKILL]);
        assert!(stopped.killed() && stopped.status.is_some());
        sweep(pid);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(processes_in_group(pid).is_empty());
    }
}
