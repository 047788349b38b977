//! Nothing left behind (issue 18, point 3): every process a task or a long-lived server
//! started, found and killed even after it left its process group and session.
//!
//! - [`become_subreaper`]: the host adopts the orphans of its children's descendants
//!   (`PR_SET_CHILD_SUBREAPER`), so a daemonized grandchild is reparented to the host, not to
//!   init, and its zombie can be reaped here.
//! - [`Scope`]: who a process belongs to (a task, or a shared server), unique per host process.
//!   [`Scope::apply`] tags a command through the environment ([`SCOPE_ENV`], inherited by every
//!   descendant that keeps its environment) and, where cgroup v2 can be delegated, starts the
//!   child in the scope's own cgroup (which catches even a descendant that scrubbed its
//!   environment). [`Scope::sweep`] SIGKILLs every live process of the scope, reaps those
//!   that became our children, removes the cgroup and logs each leftover at WARN;
//!   [`Scope::sweep_orphans`] kills only what was reparented to the host.
//! - [`sweep_stale`]: at start, kills what a host that no longer runs (killed with SIGKILL)
//!   left tagged.
//!
//! **Zombies.** A killed orphan of ours is our zombie. Nothing here calls `waitpid(-1)`, and
//! nothing waits for a pid a `tokio::process::Child` may own: only for a process that was
//! tagged and that the caller no longer owns a handle to (the contract of [`Scope::sweep`]:
//! call it after every child spawned with the scope was awaited; [`Scope::sweep_orphans`]:
//! pass every such child still running in `keep`), for a zombie that `/proc/<pid>/cgroup`
//! places in the scope's cgroup, and for one this process saw tagged and alive as another
//! process's child (so never one of ours by birth), matched by pid and start time.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// The environment variable that tags a process (and its descendants) with its scope.
pub const SCOPE_ENV: &str = "AGENTSERVER_SCOPE";

/// Setting it to `off` (or `0`) keeps scopes out of cgroups (environment tags only).
pub const CGROUP_SWITCH_ENV: &str = "AGENTSERVER_CGROUPS";

/// Prefix of a scope's cgroup directory name.
const CGROUP_PREFIX: &str = "agentserver-";

/// How long a sweep goes on killing newly found processes and waiting for the killed to die.
const SWEEP_BOUND: Duration = Duration::from_secs(2);

/// Most identities of tagged non-children remembered for reaping later.
const SEEN_CAP: usize = 4096;

/// Makes this process a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`): orphaned descendants
/// are reparented to it instead of init. Returns whether it is one now (always `false` off
/// Linux). Call it once, early, in the host binary.
pub fn become_subreaper() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer argument and touches no
        // memory of ours.
        let ok = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) } == 0;
        if !ok {
            tracing::warn!(err = %std::io::Error::last_os_error(), "cannot become a child subreaper");
        }
        ok
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// A leftover process a sweep found and killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// Its pid.
    pub pid: u32,
    /// Its parent when it was found (this process's pid for a reparented orphan).
    pub ppid: u32,
    /// Its command name (`comm`).
    pub comm: String,
}

/// Who a process belongs to: a task, or a long-lived server shared by tasks. Unique per host
/// process (the value names the host's pid and start time), so two hosts, or two test
/// processes, never sweep each other's processes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    value: String,
}

impl Scope {
    /// The scope of what task `task_id` starts. The same id gives the same scope in one
    /// process, so the backend and the task runner sweep the same set.
    pub fn task(task_id: &str) -> Self {
        Self {
            value: format!("{}.task.{}", host_id(), sanitize(task_id)),
        }
    }

    /// The scope of a long-lived server (`opencode serve`, an ACP agent) named `name`, with a
    /// random instance part: each call gives a new scope.
    pub fn shared(name: &str) -> Self {
        Self {
            value: format!(
                "{}.shared.{}-{:016x}",
                host_id(),
                sanitize(name),
                rand::random::<u64>()
            ),
        }
    }

    /// The tag value (what [`SCOPE_ENV`] is set to).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Tags `cmd`: sets [`SCOPE_ENV`] (call it after any `env_clear`), and, where a cgroup v2
    /// of the scope could be made, starts the child in it. For a `tokio::process::Command`,
    /// pass `cmd.as_std_mut()`.
    pub fn apply(&self, cmd: &mut std::process::Command) {
        cmd.env(SCOPE_ENV, &self.value);
        #[cfg(target_os = "linux")]
        if let Some(fd) = self.cgroup_procs_for_write() {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the forked child before exec and only calls
            // write(2) on a descriptor opened before the fork (close-on-exec); it allocates
            // nothing. A failure is ignored: the environment tag still finds the child.
            unsafe {
                cmd.pre_exec(move || {
                    let _ = libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1);
                    Ok(())
                });
            }
        }
    }

    /// The scope's cgroup directory, when cgroups are in use (it may not exist yet).
    pub fn cgroup_dir(&self) -> Option<PathBuf> {
        cgroup_base().map(|base| base.join(format!("{CGROUP_PREFIX}{}", self.value)))
    }

    /// Live processes of the scope (tagged, or in its cgroup), this process excluded.
    pub fn members(&self) -> Vec<Tagged> {
        let mut found: Vec<Tagged> = scan()
            .into_iter()
            .filter(|p| p.scope.as_deref() == Some(self.value.as_str()))
            .collect();
        if let Some(dir) = self.cgroup_dir() {
            for pid in cgroup_pids(&dir) {
                if !found.iter().any(|p| p.pid == pid)
                    && let Some(p) = read_tagged(pid, false)
                    && !p.zombie
                {
                    found.push(p);
                }
            }
        }
        found
    }

    /// Kills every live process of the scope with SIGKILL, rescanning (bounded) until none is
    /// left, reaps those that are (now) our children, removes the scope's cgroup and logs each
    /// leftover at WARN. Call it when every child spawned with this scope has been awaited
    /// (a pid a `Child` still owns would be reaped here, and its `wait` would fail). Cheap
    /// when nothing is tagged: one `/proc` scan and no sleep.
    pub fn sweep(&self) -> Vec<Leftover> {
        let dir = self.cgroup_dir().filter(|d| d.is_dir());
        let killed = kill_until_gone(|| {
            let found = self.members();
            if let Some(dir) = &dir {
                // Also what scrubbed its environment, and what forked since the scan.
                cgroup_kill(dir);
            }
            found
        });
        if !killed.is_empty() || dir.is_some() || seen_any() {
            reap_ours(&killed, dir.as_deref(), &[]);
        }
        if let Some(dir) = &dir {
            remove_cgroup(dir);
        }
        report(&self.value, killed)
    }

    /// For a shared scope: kills only its processes that were reparented to this process
    /// (their server is not their parent any more: a tool daemonized out of it) and whose pid
    /// is not in `keep` (pass the server's pid, and any other child of the scope a `Child`
    /// owns). A live server's own children are left alone.
    pub fn sweep_orphans(&self, keep: &[u32]) -> Vec<Leftover> {
        let me = std::process::id();
        let dir = self.cgroup_dir().filter(|d| d.is_dir());
        let killed = kill_until_gone(|| {
            self.members()
                .into_iter()
                .filter(|p| p.ppid == me && !keep.contains(&p.pid))
                .collect()
        });
        reap_ours(&killed, dir.as_deref(), keep);
        report(&self.value, killed)
    }
}

/// A process as a scan saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    /// Its pid.
    pub pid: u32,
    /// Its parent's pid.
    pub ppid: u32,
    /// Its command name.
    pub comm: String,
    /// Its start time (clock ticks after boot): with the pid, its identity.
    pub start: u64,
    /// Its scope tag, if it has one.
    pub scope: Option<String>,
    zombie: bool,
}

/// Kills what the processes tagged by a host that no longer runs left behind (a host killed
/// with SIGKILL; with `PR_SET_PDEATHSIG` its direct children died with it, their descendants
/// did not), and removes such a host's cgroups. Call it once at start. Returns what it killed.
pub fn sweep_stale() -> Vec<Leftover> {
    let mine = host_id();
    let stale = |value: &str| {
        let host = value.split('.').next().unwrap_or_default();
        host != mine && !host_alive(host)
    };
    let mut dirs = Vec::new();
    if let Some(base) = cgroup_base()
        && let Ok(entries) = std::fs::read_dir(base)
    {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let Some(value) = name.to_str().and_then(|n| n.strip_prefix(CGROUP_PREFIX)) else {
                continue;
            };
            if stale(value) {
                dirs.push(entry.path());
            }
        }
    }
    let killed = kill_until_gone(|| {
        let mut found: Vec<Tagged> = scan()
            .into_iter()
            .filter(|p| p.scope.as_deref().is_some_and(stale))
            .collect();
        for dir in &dirs {
            for pid in cgroup_pids(dir) {
                if let Some(p) = read_tagged(pid, false)
                    && !p.zombie
                    && !found.iter().any(|f| f.pid == pid)
                {
                    found.push(p);
                }
            }
            cgroup_kill(dir);
        }
        found
    });
    // A stale host's orphans are not ours (they went to init, or to a subreaper above it);
    // one that is our child was spawned by us with a forged tag and is a `Child`'s to reap.
    let me = std::process::id();
    let not_ours: Vec<Tagged> = killed.iter().filter(|p| p.ppid != me).cloned().collect();
    reap_ours(&not_ours, None, &[]);
    for dir in &dirs {
        remove_cgroup(dir);
    }
    report("stale", killed)
}

/// This host process's identity in tags: `<pid>-<start time>`.
fn host_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let pid = std::process::id();
        let start = read_tagged(pid, false).map_or(0, |p| p.start);
        format!("{pid}-{start}")
    })
}

/// Whether the host named `<pid>-<start>` still runs.
fn host_alive(host: &str) -> bool {
    let Some((pid, start)) = host.split_once('-') else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    read_tagged(pid, false).is_some_and(|p| !p.zombie && p.start == start)
}

/// Keeps `[A-Za-z0-9_-]` (cut at 96 characters), so a value is a safe cgroup name and never
/// contains the `.` that separates its parts.
fn sanitize(raw: &str) -> String {
    raw.chars()
        .take(96)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One pass over `/proc`: every live tagged process of our uid, this process excluded. Tagged processes that are another's child are remembered
/// ([`SEEN`]) so their zombie can be reaped if they are later reparented to us.
fn scan() -> Vec<Tagged> {
    let me = std::process::id();
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::geteuid() };
    let mut live = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return live;
    };
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        {
            use std::os::unix::fs::MetadataExt;
            if entry.metadata().ok().map(|m| m.uid()) != Some(uid) {
                continue;
            }
        }
        let Some(p) = read_tagged(pid, true) else {
            continue;
        };
        if p.zombie || p.scope.is_none() {
            continue;
        }
        if p.ppid != me {
            remember(p.pid, p.start);
        }
        live.push(p);
    }
    live
}

/// Reads `/proc/<pid>/stat` (and `environ` when `with_tag` and the process is alive).
fn read_tagged(pid: u32, with_tag: bool) -> Option<Tagged> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (comm, state, ppid, start) = parse_stat(&stat)?;
    let zombie = matches!(state, "Z" | "X" | "x");
    let scope = if with_tag && !zombie {
        read_tag(pid)
    } else {
        None
    };
    Some(Tagged {
        pid,
        ppid,
        comm,
        start,
        scope,
        zombie,
    })
}

/// `comm`, state, ppid and start time of a `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<(String, &str, u32, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the comm: state(3) ppid(4) … starttime(22), so index 0 is field 3.
    let state = *fields.first()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((comm, state, ppid, start))
}

/// The value of [`SCOPE_ENV`] in `/proc/<pid>/environ`, if set.
fn read_tag(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let key = SCOPE_ENV.as_bytes();
    environ.split(|b| *b == 0).find_map(|var| {
        let value = var.strip_prefix(key)?.strip_prefix(b"=")?;
        String::from_utf8(value.to_vec()).ok()
    })
}

/// Tagged processes seen alive as another process's child: `pid → start time`.
static SEEN: Mutex<Option<HashMap<u32, u64>>> = Mutex::new(None);

fn remember(pid: u32, start: u64) {
    let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    let seen = seen.get_or_insert_with(HashMap::new);
    if seen.len() >= SEEN_CAP {
        seen.retain(|pid, start| read_tagged(*pid, false).is_some_and(|p| p.start == *start));
        if seen.len() >= SEEN_CAP {
            return;
        }
    }
    seen.insert(pid, start);
}

fn seen_any() -> bool {
    let seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    seen.as_ref().is_some_and(|s| !s.is_empty())
}

fn was_seen(pid: u32, start: u64) -> bool {
    let seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    seen.as_ref().and_then(|s| s.get(&pid)) == Some(&start)
}

fn forget(pid: u32) {
    let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(s) = seen.as_mut() {
        s.remove(&pid);
    }
}

/// SIGKILLs what `find` returns until it returns nothing new alive, within [`SWEEP_BOUND`];
/// then waits (same bound) until each killed process is dead. Returns what it killed.
fn kill_until_gone(mut find: impl FnMut() -> Vec<Tagged>) -> Vec<Tagged> {
    let deadline = Instant::now() + SWEEP_BOUND;
    let mut killed: Vec<Tagged> = Vec::new();
    loop {
        let found = find();
        if found.is_empty() {
            break;
        }
        for p in found {
            if p.pid > 1
                && let Ok(raw) = i32::try_from(p.pid)
            {
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
            if !killed.iter().any(|k| k.pid == p.pid && k.start == p.start) {
                killed.push(p);
            }
        }
        if Instant::now() >= deadline {
            tracing::error!("processes kept appearing in a scope; giving up the sweep");
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // SIGKILL is not instant: wait until each is a zombie or gone.
    while killed
        .iter()
        .any(|k| read_tagged(k.pid, false).is_some_and(|p| p.start == k.start && !p.zombie))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    killed
}

/// Reaps zombies that are our children and known not to be a `Child`'s: the processes just
/// killed, zombies placed in `cgroup` by `/proc/<pid>/cgroup`, and tagged processes once seen
/// as another's child. Never a pid in `keep`, never `waitpid(-1)`.
fn reap_ours(killed: &[Tagged], cgroup: Option<&Path>, keep: &[u32]) {
    let me = std::process::id();
    let cgroup_line = cgroup.and_then(cgroup_proc_line);
    let mut candidates: Vec<(u32, u64)> = killed.iter().map(|k| (k.pid, k.start)).collect();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(p) = read_tagged(pid, false) else {
                continue;
            };
            if !p.zombie || p.ppid != me {
                continue;
            }
            let in_cgroup = cgroup_line.as_deref().is_some_and(|line| {
                std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|c| c.lines().any(|l| l == line))
            });
            if in_cgroup || was_seen(pid, p.start) {
                candidates.push((pid, p.start));
            }
        }
    }
    for (pid, start) in candidates {
        if keep.contains(&pid) {
            continue;
        }
        let Some(p) = read_tagged(pid, false) else {
            forget(pid);
            continue;
        };
        if p.zombie && p.ppid == me && p.start == start {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            match waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
                Ok(status) => tracing::debug!(pid, ?status, "reaped a leftover"),
                Err(err) => tracing::debug!(pid, %err, "could not reap a leftover"),
            }
            forget(pid);
        }
    }
}

/// Logs each killed process at WARN and turns them into [`Leftover`]s.
fn report(scope: &str, killed: Vec<Tagged>) -> Vec<Leftover> {
    killed
        .into_iter()
        .map(|p| {
            tracing::warn!(scope, pid = p.pid, comm = %p.comm, "killed a leftover process");
            Leftover {
                pid: p.pid,
                ppid: p.ppid,
                comm: p.comm,
            }
        })
        .collect()
}

// ---- cgroup v2 ------------------------------------------------------------------------

/// The cgroup v2 directory this process is in, when scopes can make child cgroups there:
/// a cgroup2 mount, our path in it, a directory we may write. `None` under cgroup v1 only,
/// a read-only `/sys/fs/cgroup`, [`CGROUP_SWITCH_ENV`]`=off`, or off Linux.
fn cgroup_base() -> Option<&'static Path> {
    static BASE: OnceLock<Option<PathBuf>> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = find_cgroup_base();
        match &base {
            Some(dir) => tracing::debug!(dir = %dir.display(), "scopes use cgroup v2"),
            None => tracing::debug!("scopes use environment tags only (no writable cgroup v2)"),
        }
        base
    })
    .as_deref()
}

fn find_cgroup_base() -> Option<PathBuf> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    if let Ok(v) = std::env::var(CGROUP_SWITCH_ENV)
        && matches!(v.trim(), "off" | "0" | "false" | "no")
    {
        return None;
    }
    let (mount, root) = cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let rel = if root == "/" {
        path
    } else {
        path.strip_prefix(root.as_str())?
    };
    let dir = mount.join(rel.trim_start_matches('/'));
    // Writable, and new enough to kill a whole cgroup at once (`cgroup.kill`, Linux 5.14) or
    // at least list it; a probe directory shows both.
    let probe = dir.join(format!("{CGROUP_PREFIX}probe-{}", std::process::id()));
    if std::fs::create_dir(&probe).is_err() {
        return None;
    }
    let usable = probe.join("cgroup.procs").exists()
        && std::fs::OpenOptions::new()
            .write(true)
            .open(probe.join("cgroup.procs"))
            .is_ok();
    let _ = std::fs::remove_dir(&probe);
    usable.then_some(dir)
}

/// The mount point and root of the cgroup2 mount in `/proc/self/mountinfo`.
fn cgroup2_mount(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        Some((PathBuf::from(fields.get(4)?), (*fields.get(3)?).to_owned()))
    })
}

impl Scope {
    /// Creates the scope's cgroup (if cgroups are in use) and opens its `cgroup.procs`.
    fn cgroup_procs_for_write(&self) -> Option<OwnedFd> {
        let dir = self.cgroup_dir()?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                tracing::debug!(dir = %dir.display(), %err, "cannot create the scope's cgroup");
                return None;
            }
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .ok()
            .map(OwnedFd::from)
    }
}

/// The `/proc/<pid>/cgroup` line of a process in `dir` (`0::/<path>`).
fn cgroup_proc_line(dir: &Path) -> Option<String> {
    let base = cgroup_base()?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own_path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let name = dir.strip_prefix(base).ok()?;
    let path = Path::new(own_path).join(name);
    Some(format!("0::{}", path.display()))
}

/// Pids listed in a cgroup's `cgroup.procs`.
fn cgroup_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills every process in the cgroup at once (`cgroup.kill`), when the kernel has it.
fn cgroup_kill(dir: &Path) {
    let path = dir.join("cgroup.kill");
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(path) {
        let _ = f.write_all(b"1");
    }
}

/// Removes an (emptied) cgroup, retrying briefly while the kernel finishes the kills.
fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(err) if Instant::now() >= deadline => {
                tracing::warn!(dir = %dir.display(), %err, "cannot remove a scope's cgroup");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fields_a_scan_needs() {
        let stat = "77 (a (b) c) S 12 77 77 0 -1 4194560 0 0 0 0 1 2 0 0 20 0 1 0 98765 0 0";
        let (comm, state, ppid, start) = parse_stat(stat).unwrap();
        assert_eq!(
            (comm.as_str(), state, ppid, start),
            ("a (b) c", "S", 12, 98765)
        );
    }

    #[test]
    fn values_are_per_host_and_sanitized() {
        let a = Scope::task("t/1 x");
        assert_eq!(a, Scope::task("t/1 x"));
        assert!(a.value().ends_with(".task.t_1_x"), "{}", a.value());
        assert!(a.value().starts_with(&format!("{}-", std::process::id())));
        assert_ne!(Scope::shared("opencode"), Scope::shared("opencode"));
        assert!(host_alive(host_id()));
        assert!(!host_alive("1-1"));
        assert!(!host_alive("nonsense"));
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let info = "30 24 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                    31 24 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";
        assert_eq!(
            cgroup2_mount(info),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".to_owned()))
        );
        assert_eq!(cgroup2_mount("31 24 0:27 / /x rw - cgroup cgroup rw"), None);
    }
}
