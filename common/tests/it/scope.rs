//! `Scope`: processes that left their group and session are found and killed; nothing else is.
//!
//! Each test makes its own process a subreaper (nextest runs every test in a process of its
//! own), so the orphans are reparented to it as they are to the host.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentserver_common::process::{self, Detach, SCOPE_ENV, Scope};

/// A daemonizing helper: `python3 -c DAEMON <pidfile> <mode>` writes the pid of what it
/// leaves behind to `<pidfile>` (one per line) and exits (or, for `server`, stays).
const HELPER: &str = r#"
import os, sys, time
out, mode = sys.argv[1], sys.argv[2]
def note(pid):
    with open(out, "a") as f:
        f.write(f"{pid}\n")
def daemon(env=None):
    # double fork + setsid: the grandchild is in a new session and is reparented.
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        pid = os.fork()
        if pid == 0:
            if env is not None:
                os.execve("/bin/sleep", ["sleep", "60"], env)
            time.sleep(60)
            os._exit(0)
        os.write(w, str(pid).encode())
        os._exit(0)
    os.close(w)
    pid = int(os.read(r, 32))
    os.wait()
    note(pid)
def new_group():
    # a child that moves to a process group of its own and stays a child of ours
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        time.sleep(60)
        os._exit(0)
    note(pid)
    return pid
if mode == "task":
    daemon()
    new_group()
    if len(sys.argv) > 3:
        daemon(env={})   # scrubbed environment: only a cgroup finds it
    os.close(1)
    sys.exit(0)
elif mode == "server":
    daemon()
    new_group()
    note(os.getpid())
    time.sleep(60)
"#;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("asv-scope-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("pids")
}

fn read_pids(file: &Path, want: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<u32> = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.len() >= want {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "helper wrote {pids:?}, wanted {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn helper(scope: &Scope, file: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(HELPER).arg(file).args(args);
    cmd.stdin(Stdio::null());
    process::isolate(&mut cmd, Detach::Group);
    scope.apply(&mut cmd);
    cmd
}

/// Whether `/proc/<pid>` still exists at all (a zombie counts: it must be reaped too).
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_task_sweep_kills_what_left_the_group_and_the_session() {
    assert!(process::become_subreaper());
    let scope = Scope::task(&format!("sweep-test-{}", std::process::id()));
    let file = tmp("task");
    let scrubbed = scope.cgroup_dir().is_some();
    let mut args = vec!["task"];
    if scrubbed {
        args.push("scrubbed");
    }
    let status = helper(&scope, &file, &args).status().unwrap();
    assert!(status.success());
    let pids = read_pids(&file, args.len());
    let (daemon, grouped) = (pids[0], pids[1]);
    // Both outlived the helper, the daemon in a session of its own, reparented to us.
    assert!(
        process::is_alive(daemon) && process::is_alive(grouped),
        "{pids:?}"
    );
    assert_eq!(parent_of(daemon), Some(std::process::id()));

    // A process outside the scope survives the sweep.
    let mut outsider = Command::new("sleep").arg("30").spawn().unwrap();

    let started = Instant::now();
    let leftovers = scope.sweep();
    let took = started.elapsed();
    let killed: Vec<u32> = leftovers.iter().map(|l| l.pid).collect();
    for pid in &pids {
        assert!(killed.contains(pid), "{pid} not in {leftovers:?}");
        assert!(
            !exists(*pid),
            "{pid} survived the sweep (or is an unreaped zombie)"
        );
    }
    assert!(
        leftovers
            .iter()
            .any(|l| l.pid == daemon && l.comm == "python3")
    );
    if scrubbed {
        assert!(
            leftovers
                .iter()
                .any(|l| l.pid == pids[2] && l.comm == "sleep")
        );
        assert!(
            !scope.cgroup_dir().unwrap().exists(),
            "the cgroup is removed"
        );
    }
    assert!(
        process::is_alive(outsider.id()),
        "an untagged process was killed"
    );
    outsider.kill().unwrap();
    outsider.wait().unwrap();
    eprintln!("sweep of {} leftovers took {took:?}", leftovers.len());

    // Nothing left: a second sweep finds nothing.
    assert!(scope.sweep().is_empty());
}

#[test]
fn orphans_of_a_shared_server_are_killed_and_its_children_kept() {
    assert!(process::become_subreaper());
    let scope = Scope::shared("test-server");
    let file = tmp("server");
    let mut server = helper(&scope, &file, &["server"]).spawn().unwrap();
    let pids = read_pids(&file, 3);
    let (daemon, own_child, server_pid) = (pids[0], pids[1], pids[2]);
    assert_eq!(server_pid, server.id());
    assert_eq!(parent_of(daemon), Some(std::process::id()));
    assert_eq!(parent_of(own_child), Some(server_pid));

    let leftovers = scope.sweep_orphans(&[server.id()]);
    assert_eq!(
        leftovers.iter().map(|l| l.pid).collect::<Vec<_>>(),
        [daemon],
        "{leftovers:?}"
    );
    assert!(!exists(daemon));
    assert!(process::is_alive(server_pid), "the kept server was killed");
    assert!(
        process::is_alive(own_child),
        "the server's own child was killed"
    );

    // At shutdown: the server is stopped and awaited, then the whole scope goes.
    server.kill().unwrap();
    server.wait().unwrap();
    let rest = scope.sweep();
    assert!(rest.iter().any(|l| l.pid == own_child), "{rest:?}");
    assert!(!exists(own_child));
}

#[test]
fn a_stale_hosts_processes_are_killed_at_start() {
    // A "host" that is gone: the pid of an exited process, with a start time it never had.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let mut stale = Command::new("sleep");
    stale.arg("30").env(
        SCOPE_ENV,
        format!("{dead_pid}-1.task.stale-{}", std::process::id()),
    );
    let mut stale = stale.spawn().unwrap();
    let mut live = Command::new("sleep");
    live.arg("30");
    let not_stale = Scope::task("not-stale");
    not_stale.apply(&mut live);
    let mut live = live.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let killed = process::sweep_stale();
    assert!(killed.iter().any(|l| l.pid == stale.id()), "{killed:?}");
    assert!(!killed.iter().any(|l| l.pid == live.id()), "{killed:?}");
    // It is our child (a `Child` owns it): the stale sweep killed it but left the reaping.
    assert!(stale.wait().is_ok());
    assert!(process::is_alive(live.id()));
    live.kill().unwrap();
    live.wait().unwrap();
    assert!(not_stale.sweep().is_empty());
}

#[test]
fn a_sweep_with_nothing_tagged_is_one_cheap_scan() {
    let scope = Scope::task("nothing-here");
    let started = Instant::now();
    for _ in 0..10 {
        assert!(scope.sweep().is_empty());
    }
    let each = started.elapsed() / 10;
    eprintln!("an empty sweep took {each:?}");
    assert!(each < Duration::from_millis(500), "{each:?}");
}
