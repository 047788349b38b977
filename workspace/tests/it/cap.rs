//! The disk cap at recover: the oldest clean worktrees go first, a dirty one never.

use agentserver_workspace::{WorktreeConfig, Worktrees};

use crate::support::{Fixture, git};

/// Leaves worktrees of unfinished tasks behind: `c1`, `d`, `c2`, `c3` in that order (oldest
/// first), `d` dirty, the others clean.
fn leftovers(fx: &Fixture) {
    // Something worth counting in every worktree.
    std::fs::write(fx.repo.join("big.bin"), vec![7u8; 64 * 1024]).unwrap();
    git(&fx.repo, &["add", "big.bin"]);
    git(&fx.repo, &["commit", "-q", "-m", "big"]);
    let wt = fx.open();
    for id in ["c1", "d", "c2", "c3"] {
        let ws = wt.prepare(id, None).unwrap();
        if id == "d" {
            std::fs::write(ws.path().join("unsaved.txt"), "work\n").unwrap();
        } else {
            // Clean but with the agent's own commit: on the branch, so nothing is lost.
            std::fs::write(ws.path().join("done.txt"), id).unwrap();
            git(ws.path(), &["add", "-A"]);
            git(ws.path(), &["commit", "-q", "-m", id]);
        }
    }
}

fn open_with_cap(fx: &Fixture, cap: u64) -> Worktrees {
    Worktrees::open(WorktreeConfig {
        disk_cap_bytes: Some(cap),
        ..fx.config()
    })
    .unwrap()
}

fn ids(list: &[agentserver_workspace::KeptWorktree]) -> Vec<&str> {
    list.iter().map(|k| k.task_id.as_deref().unwrap()).collect()
}

#[test]
fn the_oldest_clean_worktrees_go_until_under_the_cap() {
    let fx = Fixture::new();
    leftovers(&fx);
    let r = fx.open().recover(|_| false).unwrap();
    assert_eq!(ids(&r.kept), ["c1", "d", "c2", "c3"]);
    assert!(!r.cap_exceeded);
    let size = |id: &str| {
        r.kept
            .iter()
            .find(|k| k.task_id.as_deref() == Some(id))
            .unwrap()
            .bytes
    };
    // Room for all but c1 and half of c2: both must go, c3 and d stay.
    let cap = r.disk_usage_bytes - size("c1") - size("c2") / 2;

    let r = open_with_cap(&fx, cap).recover(|_| false).unwrap();
    assert_eq!(ids(&r.removed_for_cap), ["c1", "c2"]);
    assert_eq!(ids(&r.kept), ["d", "c3"]);
    assert!(!r.cap_exceeded && r.disk_usage_bytes <= cap, "{r:?}");
    for k in &r.removed_for_cap {
        assert!(!k.path.exists());
        // The work is on the branch.
        let branch = format!("agentserver/{}", k.task_id.as_deref().unwrap());
        assert_eq!(
            crate::support::show(&fx.repo, &branch, "done.txt"),
            k.task_id.as_deref().unwrap()
        );
    }
}

#[test]
fn a_dirty_worktree_is_never_removed_even_over_the_cap() {
    let fx = Fixture::new();
    leftovers(&fx);
    let r = open_with_cap(&fx, 1).recover(|_| false).unwrap();
    assert_eq!(ids(&r.removed_for_cap), ["c1", "c2", "c3"]);
    assert_eq!(ids(&r.kept), ["d"]);
    assert!(r.kept[0].dirty);
    assert!(r.cap_exceeded);
    assert!(r.kept[0].path.join("unsaved.txt").exists());
}
