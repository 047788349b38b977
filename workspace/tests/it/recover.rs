//! A host killed mid-task: recover at the next start, and stale admin entries.

use crate::support::{Fixture, base_entries, git, show, worktree_paths};

/// Prepares a task, lets the "agent" commit one file itself and leave others uncommitted, and
/// drops the `Worktrees` without finishing (the host was killed).
fn killed_mid_task(fx: &Fixture) -> (std::path::PathBuf, String) {
    let wt = fx.open();
    let ws = wt.prepare("killed", None).unwrap();
    let p = ws.path().to_path_buf();
    std::fs::write(p.join("agent.txt"), "committed by the agent\n").unwrap();
    git(&p, &["add", "agent.txt"]);
    git(&p, &["commit", "-q", "-m", "agent's own commit"]);
    std::fs::write(p.join("README.md"), "uncommitted edit\n").unwrap();
    std::fs::write(p.join("loose.txt"), "untracked\n").unwrap();
    let branch = ws.branch().to_string();
    drop(ws);
    drop(wt);
    (p, branch)
}

#[test]
fn recover_commits_a_finished_tasks_leftovers_and_removes_it() {
    let fx = Fixture::new();
    let (p, branch) = killed_mid_task(&fx);
    let wt = fx.open();
    let r = wt.recover(|id| id == "killed").unwrap();
    assert_eq!(r.finished.len(), 1, "{r:?}");
    assert!(r.finished[0].committed_changes);
    assert_eq!(r.finished[0].branch, branch);
    assert!(
        r.kept.is_empty() && r.failed.is_empty() && r.strays.is_empty(),
        "{r:?}"
    );
    assert!(!p.exists());
    assert_eq!(
        show(&fx.repo, &branch, "agent.txt"),
        "committed by the agent"
    );
    assert_eq!(show(&fx.repo, &branch, "README.md"), "uncommitted edit");
    assert_eq!(show(&fx.repo, &branch, "loose.txt"), "untracked");
    let log = git(&fx.repo, &["log", "--format=%s", &branch]);
    assert!(log.contains("agent's own commit"), "{log}");
    assert_eq!(worktree_paths(&fx.repo).len(), 1);
    assert_eq!(base_entries(wt.base_dir()), Vec::<String>::new());
}

#[test]
fn recover_keeps_an_unfinished_tasks_worktree() {
    let fx = Fixture::new();
    let (p, branch) = killed_mid_task(&fx);
    let wt = fx.open();
    let r = wt.recover(|_| false).unwrap();
    assert!(r.finished.is_empty());
    assert_eq!(r.kept.len(), 1);
    let k = &r.kept[0];
    assert_eq!(k.task_id.as_deref(), Some("killed"));
    assert_eq!(k.branch.as_deref(), Some(branch.as_str()));
    assert!(k.dirty);
    assert!(k.bytes > 0);
    assert_eq!(
        std::fs::read_to_string(p.join("loose.txt")).unwrap(),
        "untracked\n"
    );

    // Finished later: a second recover commits and removes it.
    let r = wt.recover(|_| true).unwrap();
    assert_eq!(r.finished.len(), 1);
    assert_eq!(show(&fx.repo, &branch, "loose.txt"), "untracked");
}

#[test]
fn a_worktree_deleted_by_hand_is_pruned_and_forgotten() {
    let fx = Fixture::new();
    let wt = fx.open();
    let ws = wt.prepare("gone", None).unwrap();
    std::fs::remove_dir_all(ws.path()).unwrap();
    drop(ws);
    drop(wt);
    assert_eq!(worktree_paths(&fx.repo).len(), 2);
    let wt = fx.open();
    let r = wt.recover(|_| false).unwrap();
    assert!(r.kept.is_empty() && r.finished.is_empty(), "{r:?}");
    assert_eq!(worktree_paths(&fx.repo).len(), 1);
    let index = std::fs::read_to_string(wt.base_dir().join("index.json")).unwrap();
    assert!(!index.contains("t-gone"), "{index}");
    // The branch stays.
    git(&fx.repo, &["rev-parse", "--verify", "agentserver/gone"]);
}

#[test]
fn finishing_a_task_whose_directory_was_deleted_still_succeeds() {
    let fx = Fixture::new();
    let wt = fx.open();
    let ws = wt.prepare("vanished", None).unwrap();
    std::fs::remove_dir_all(ws.path()).unwrap();
    let f = wt.finish(ws).unwrap();
    assert!(!f.committed_changes);
    assert_eq!(f.head_commit, git(&fx.repo, &["rev-parse", "HEAD"]));
    assert_eq!(worktree_paths(&fx.repo).len(), 1);
}

#[test]
fn a_stray_directory_under_the_base_dir_is_reported_not_touched() {
    let fx = Fixture::new();
    let wt = fx.open();
    std::fs::create_dir(wt.base_dir().join("someone-elses")).unwrap();
    std::fs::write(wt.base_dir().join("someone-elses/f"), "f").unwrap();
    let r = wt.recover(|_| true).unwrap();
    assert_eq!(r.strays, vec![wt.base_dir().join("someone-elses")]);
    assert!(wt.base_dir().join("someone-elses/f").exists());
}

#[test]
fn a_stale_index_lock_left_by_a_killed_git_does_not_block_recovery() {
    let fx = Fixture::new();
    let (p, branch) = killed_mid_task(&fx);
    let gitdir = git(&p, &["rev-parse", "--absolute-git-dir"]);
    let lock = std::path::Path::new(&gitdir).join("index.lock");
    let f = std::fs::File::create(&lock).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(600))
        .unwrap();
    drop(f);
    let r = fx.open().recover(|_| true).unwrap();
    assert_eq!(r.finished.len(), 1, "{r:?}");
    assert_eq!(show(&fx.repo, &branch, "loose.txt"), "untracked");
    assert!(!p.exists());
}

#[test]
fn a_prepare_cut_short_during_checkout_is_removed_without_committing_the_partial_tree() {
    let fx = Fixture::new();
    let wt = fx.open();
    let ws = wt.prepare("cut", Some("sess")).unwrap();
    let p = ws.path().to_path_buf();
    let base_commit = ws.base_commit().to_string();
    drop(ws);
    drop(wt);
    // As if the host died while `git reset --hard` was checking out: the index entry is not
    // ready yet, some files are missing.
    let index_path = fx.base.join("index.json");
    let index = std::fs::read_to_string(&index_path).unwrap();
    assert!(index.contains("\"ready\": true"), "{index}");
    std::fs::write(
        &index_path,
        index.replace("\"ready\": true", "\"ready\": false"),
    )
    .unwrap();
    std::fs::remove_file(p.join("keep.txt")).unwrap();

    let wt = fx.open();
    let r = wt.recover(|_| true).unwrap();
    assert_eq!(r.finished.len(), 1, "{r:?}");
    assert!(!r.finished[0].committed_changes);
    assert_eq!(
        git(&fx.repo, &["rev-parse", "agentserver/cut"]),
        base_commit
    );
    assert!(!p.exists());
    // The session's next task gets every file.
    let next = wt.prepare("cut-2", Some("sess")).unwrap();
    assert!(next.path().join("keep.txt").exists());
    wt.finish(next).unwrap();
}
