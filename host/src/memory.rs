//! Giving memory back after bursts and after start-up.
//!
//! Two kinds of memory stay resident after work is done:
//! - **freed heap**: glibc's malloc keeps what a burst of concurrent requests freed in its
//!   per-thread arenas (measured: 7 MiB after connecting, 97 MiB after three bursts of 200
//!   concurrent echoes and still 97 MiB after 10 s idle, while heaptrack showed 35 KiB live at
//!   the end). `malloc_trim(0)` returns the free pages of every arena to the system.
//! - **code only start-up ran**: the pages of the executable that login, registration, the
//!   capability probes and a WASM compile touched stay mapped (an idle `agentserver run` held
//!   15 MiB of its 57 MB binary, 3 MiB of heap). [`release_idle_code`] unmaps the clean
//!   read-only pages of the executable and the shared libraries; the kernel's page cache keeps
//!   them, so what runs again costs a minor fault each, not a read from disk.
//!
//! Both happen when the host is quiet: every tunnel stream holds a [`busy`] guard, and the
//! first agent info of the process calls [`started`]. [`QUIET`] after the last guard of a
//! burst is dropped the heap is trimmed; [`SETTLED`] after it, when the local forwarder's idle
//! connections have closed too (`agentserver_common::forward::IDLE_TIMEOUT`), the heap is
//! trimmed again and the idle code is released. Why this and not another allocator:
//! `docs/decisions/allocator.md`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// How long the host must be quiet after busy work before freed heap is given back.
pub const QUIET: Duration = Duration::from_secs(1);

/// How long the host must be quiet before the heap is trimmed again and idle code is released:
/// by then the local forwarder has closed the idle connections a burst left (they are checked
/// every `IDLE_TIMEOUT`, so one goes at most twice that after its last use).
pub const SETTLED: Duration = QUIET
    .saturating_add(agentserver_common::forward::IDLE_TIMEOUT)
    .saturating_add(agentserver_common::forward::IDLE_TIMEOUT);

struct Trimmer {
    /// Busy guards alive.
    active: AtomicUsize,
    /// Busy guards ever taken (a settled trim is skipped when work started meanwhile).
    taken: AtomicU64,
    /// Times the host went quiet (the last guard dropped, or start-up ended).
    quieted: AtomicU64,
    trims: AtomicU64,
    settled: AtomicU64,
    idle: Notify,
}

fn trimmer() -> &'static Trimmer {
    static TRIMMER: OnceLock<&'static Trimmer> = OnceLock::new();
    TRIMMER.get_or_init(|| {
        let trimmer: &'static Trimmer = Box::leak(Box::new(Trimmer {
            active: AtomicUsize::new(0),
            taken: AtomicU64::new(0),
            quieted: AtomicU64::new(0),
            trims: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            idle: Notify::new(),
        }));
        // Started on the first call, which is made on a Tokio runtime.
        tokio::spawn(trim_when_quiet(trimmer));
        trimmer
    })
}

async fn trim_when_quiet(trimmer: &'static Trimmer) {
    loop {
        trimmer.idle.notified().await;
        // One quiet period; restarted when more work ends before it has settled.
        loop {
            let quieted = trimmer.quieted.load(Ordering::Acquire);
            let taken = trimmer.taken.load(Ordering::Acquire);
            tokio::time::sleep(QUIET).await;
            // A notification stored meanwhile is about work this check covers.
            let _ = futures_util::FutureExt::now_or_never(trimmer.idle.notified());
            if trimmer.active.load(Ordering::Acquire) != 0 {
                // Its end notifies.
                break;
            }
            if trimmer.quieted.load(Ordering::Acquire) != quieted {
                // More work came and went: quiet for a whole period first.
                continue;
            }
            let _ = tokio::task::spawn_blocking(give_back_now).await;
            trimmer.trims.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                () = tokio::time::sleep(SETTLED.saturating_sub(QUIET)) => {}
                () = trimmer.idle.notified() => continue,
            }
            // Work that started meanwhile and still runs notifies when it ends.
            if trimmer.active.load(Ordering::Acquire) == 0
                && trimmer.taken.load(Ordering::Acquire) == taken
            {
                let _ = tokio::task::spawn_blocking(|| {
                    give_back_now();
                    release_idle_code()
                })
                .await;
                trimmer.settled.fetch_add(1, Ordering::Relaxed);
            }
            break;
        }
    }
}

/// Marks the host busy (a tunnel stream is being served) until the guard is dropped. Must be
/// called on a Tokio runtime.
pub fn busy() -> BusyGuard {
    let trimmer = trimmer();
    trimmer.taken.fetch_add(1, Ordering::AcqRel);
    trimmer.active.fetch_add(1, Ordering::AcqRel);
    BusyGuard(trimmer)
}

/// See [`busy`].
pub struct BusyGuard(&'static Trimmer);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.quieted.fetch_add(1, Ordering::AcqRel);
            self.0.idle.notify_one();
        }
    }
}

/// Says that start-up is over (the first agent info went out): once the host has been quiet
/// for [`SETTLED`], what start-up freed and the code only it ran are given back. Later calls do
/// nothing. Must be called on a Tokio runtime.
pub fn started() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if !STARTED.swap(true, Ordering::AcqRel) {
        let trimmer = trimmer();
        trimmer.quieted.fetch_add(1, Ordering::AcqRel);
        trimmer.idle.notify_one();
    }
}

/// How many times freed heap was given back after a quiet period. Must be called on a Tokio
/// runtime.
pub fn trims() -> u64 {
    trimmer().trims.load(Ordering::Relaxed)
}

/// How many times the host settled (heap trimmed again, idle code released). Must be called
/// on a Tokio runtime.
pub fn settled_trims() -> u64 {
    trimmer().settled.load(Ordering::Relaxed)
}

/// Returns the free pages of the allocator to the system now (glibc: `malloc_trim(0)`; other
/// C libraries: nothing).
pub fn give_back_now() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and madvises the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The files mapped before `main` ran (see [`note_startup_files`]).
static STARTUP_FILES: OnceLock<Vec<String>> = OnceLock::new();

/// Records which files are mapped now: called first thing in `main`, that is the executable
/// and the shared libraries the dynamic loader mapped for it, none of which is ever unmapped.
/// Only their pages are released by [`release_idle_code`]: a file mapped later (a native
/// plugin, a compiled WASM component) can be unmapped, and its addresses reused by anonymous
/// memory, between reading `/proc/self/smaps` and the `madvise`. Without this call only the
/// executable's pages are released.
pub fn note_startup_files() {
    #[cfg(target_os = "linux")]
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        let mut files: Vec<String> = maps
            .lines()
            .filter_map(|line| mapped_path(line.split_whitespace().skip(5)))
            .collect();
        files.sort();
        files.dedup();
        let _ = STARTUP_FILES.set(files);
    }
}

/// The path column of a maps/smaps header, given the fields after the inode; `None` unless it
/// names a file that still exists.
fn mapped_path<'a>(fields: impl Iterator<Item = &'a str>) -> Option<String> {
    let path = fields.collect::<Vec<&str>>().join(" ");
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

/// Unmaps the resident pages of the read-only mappings of the files mapped before `main` (the
/// executable's and the shared libraries' code and constants) that hold nothing but the file's
/// own bytes, never a relocated or written page, so the process's resident set is what it
/// still uses. Returns the bytes released. Linux only; elsewhere, or when `/proc` cannot be
/// read, nothing happens.
///
/// The pages stay in the page cache: touching one again maps it back (a minor fault) with the
/// same bytes, because a private mapping that was never written reads from the file.
pub fn release_idle_code() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return 0;
        };
        let exe;
        let files: &[String] = match STARTUP_FILES.get() {
            Some(files) => files,
            None => {
                let Ok(path) = std::fs::read_link("/proc/self/exe") else {
                    return 0;
                };
                exe = [path.to_string_lossy().into_owned()];
                &exe
            }
        };
        let mut released = 0;
        for mapping in clean_file_mappings(&smaps, files) {
            // SAFETY: the range is a whole mapping of a file that is private, not writable
            // and holds no anonymous (copied-on-write) page: every page of it is the file's
            // content, which the kernel maps back on the next access, exactly as after
            // reclaiming it under memory pressure. No Rust object lives in it, and it cannot
            // have been unmapped since: the file was mapped before `main` and is never
            // unmapped.
            let rc = unsafe {
                libc::madvise(
                    mapping.start as *mut libc::c_void,
                    mapping.len,
                    libc::MADV_DONTNEED,
                )
            };
            if rc == 0 {
                released += mapping.resident;
            }
        }
        tracing::debug!(
            released_kib = released / 1024,
            "released idle code and constants"
        );
        released
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// One mapping [`release_idle_code`] may release.
#[derive(Debug, PartialEq, Eq)]
struct CleanMapping {
    start: usize,
    len: usize,
    /// Resident bytes (`Rss`).
    resident: u64,
}

/// The mappings in `smaps` (the text of `/proc/PID/smaps`) of one of `files` that are
/// private, not writable, hold no anonymous page and are not locked.
fn clean_file_mappings(smaps: &str, files: &[String]) -> Vec<CleanMapping> {
    struct Current {
        start: usize,
        end: usize,
        eligible: bool,
        resident: u64,
        anonymous: Option<u64>,
        locked: Option<u64>,
    }
    let kib = |rest: &str| -> Option<u64> { rest.split_whitespace().next()?.parse().ok() };
    let mut out = Vec::new();
    let mut current: Option<Current> = None;
    let finish = |c: Option<Current>, out: &mut Vec<CleanMapping>| {
        if let Some(c) = c
            && c.eligible
            && c.anonymous == Some(0)
            && c.locked.unwrap_or(0) == 0
            && c.resident > 0
        {
            out.push(CleanMapping {
                start: c.start,
                len: c.end - c.start,
                resident: c.resident * 1024,
            });
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        // A mapping's header: `start-end perms offset dev inode [path]`.
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            finish(current.take(), &mut out);
            let perms = fields.next().unwrap_or("");
            let eligible = perms.len() == 4
                && perms.as_bytes()[1] == b'-'
                && perms.as_bytes()[3] == b'p'
                && mapped_path(fields.skip(3)).is_some_and(|p| files.contains(&p))
                && end > start;
            current = Some(Current {
                start,
                end,
                eligible,
                resident: 0,
                anonymous: None,
                locked: None,
            });
            continue;
        }
        if let Some(c) = current.as_mut() {
            match first {
                "Rss:" => c.resident = kib(&line[4..]).unwrap_or(0),
                "Anonymous:" => c.anonymous = kib(&line[10..]),
                "Locked:" => c.locked = kib(&line[7..]),
                _ => {}
            }
        }
    }
    finish(current.take(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_is_given_back_once_after_a_burst_goes_quiet() {
        let before = trims();
        let guards: Vec<_> = (0..3).map(|_| busy()).collect();
        drop(guards);
        // Busy again within the quiet period: still one trim for the whole burst.
        tokio::time::sleep(QUIET / 4).await;
        drop(busy());
        tokio::time::sleep(QUIET * 3).await;
        assert_eq!(trims(), before + 1);
        // Quiet with nothing done since: no further trim.
        tokio::time::sleep(QUIET * 2).await;
        assert_eq!(trims(), before + 1);
    }

    #[tokio::test]
    async fn the_host_settles_once_quiet_long_enough_and_not_while_busy() {
        let before = settled_trims();
        started();
        // Busy past the quiet period: no settling while a stream is served.
        let guard = busy();
        tokio::time::sleep(SETTLED + QUIET).await;
        assert_eq!(settled_trims(), before);
        drop(guard);
        tokio::time::sleep(SETTLED + QUIET).await;
        assert_eq!(settled_trims(), before + 1);
    }

    const SMAPS: &str = "\
55d0c0000000-55d0c0400000 r--p 00000000 fe:01 123 /opt/agent server/bin
Rss:                1024 kB
Anonymous:             0 kB
Locked:                0 kB
55d0c0400000-55d0c1400000 r-xp 00400000 fe:01 123 /opt/agent server/bin
Size:              16384 kB
Rss:                8192 kB
Anonymous:             0 kB
Locked:                0 kB
55d0c1400000-55d0c1500000 r--p 01400000 fe:01 123 /opt/agent server/bin
Rss:                 512 kB
Anonymous:           500 kB
Locked:                0 kB
55d0c1500000-55d0c1600000 rw-p 01500000 fe:01 123 /opt/agent server/bin
Rss:                 100 kB
Anonymous:           100 kB
55d0c1600000-55d0c1700000 r-xp 00000000 fe:01 456 /usr/lib/libc.so.6
Rss:                 900 kB
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Rss:                  32 kB
Anonymous:            32 kB
7ffd00100000-7ffd00102000 r-xp 00000000 00:00 0 [vdso]
Rss:                   8 kB
Anonymous:             0 kB
7ffd00200000-7ffd00300000 r--p 00000000 00:00 0
Rss:                  20 kB
Anonymous:             0 kB
55d0c1700000-55d0c1800000 r-xp 00000000 fe:01 123 /opt/agent server/bin (deleted)
Rss:                 900 kB
Anonymous:             0 kB
55d0c1800000-55d0c1900000 r-xp 00000000 fe:01 123 /opt/agent server/bin
Rss:                 900 kB
Anonymous:             0 kB
Locked:                4 kB
7f0000000000-7f0000100000 r-xp 00000000 fe:01 789 /home/u/.agentserver/plugins/p/libp.so
Rss:                 400 kB
Anonymous:             0 kB
";

    #[test]
    fn only_untouched_read_only_pages_of_startup_files_are_released() {
        let files = [
            "/opt/agent server/bin".to_owned(),
            "/usr/lib/libc.so.6".to_owned(),
        ];
        let found = clean_file_mappings(SMAPS, &files);
        assert_eq!(
            found,
            vec![
                CleanMapping {
                    start: 0x55d0c0000000,
                    len: 0x400000,
                    resident: 1024 * 1024,
                },
                CleanMapping {
                    start: 0x55d0c0400000,
                    len: 0x1000000,
                    resident: 8192 * 1024,
                },
                CleanMapping {
                    start: 0x55d0c1600000,
                    len: 0x100000,
                    resident: 900 * 1024,
                },
            ],
            "the relocated, the writable, the locked, the deleted ones, what no file backs and \
             files mapped later stay"
        );
    }

    #[test]
    fn released_code_still_runs() {
        // This test binary's own code and constants (and its libraries') are released, then
        // used again.
        note_startup_files();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let files = STARTUP_FILES.get().unwrap();
        assert!(
            files.contains(&exe.to_string_lossy().into_owned()),
            "{files:?}"
        );
        assert!(files.iter().any(|f| f.contains("libc")), "{files:?}");
        let released = release_idle_code();
        assert!(released > 0, "nothing of the test binary was resident?");
        let text = format!("{:?}", clean_file_mappings(SMAPS, files));
        assert_eq!(text, "[]", "the sample's files are not this process's");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(status.contains("RssFile:"));
    }
}
