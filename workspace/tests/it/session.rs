//! A task that continues a session runs at the session's path, from its previous branch.

use agentserver_workspace::WorkspaceError;

use crate::support::{Fixture, git, show};

#[test]
fn a_continued_session_runs_at_the_same_path_on_top_of_the_first_task() {
    let fx = Fixture::new();
    let wt = fx.open();
    let first = wt.prepare("task-a", Some("sess-1")).unwrap();
    let path = first.path().to_path_buf();
    std::fs::write(path.join("a.txt"), "from a\n").unwrap();
    let fa = wt.finish(first).unwrap();
    assert!(!path.exists());

    let second = wt.prepare("task-b", Some("sess-1")).unwrap();
    assert_eq!(second.path(), path);
    assert_eq!(second.base_commit(), fa.head_commit);
    assert_eq!(
        std::fs::read_to_string(path.join("a.txt")).unwrap(),
        "from a\n"
    );
    std::fs::write(path.join("b.txt"), "from b\n").unwrap();
    let fb = wt.finish(second).unwrap();
    assert_eq!(fb.branch, "agentserver/task-b");
    git(
        &fx.repo,
        &["merge-base", "--is-ancestor", &fa.head_commit, &fb.branch],
    );
    assert_eq!(show(&fx.repo, &fb.branch, "a.txt"), "from a");
    assert_eq!(show(&fx.repo, &fb.branch, "b.txt"), "from b");

    // The session survives a reopen (the index is on disk).
    drop(wt);
    let wt = fx.open();
    let third = wt.prepare("task-c", Some("sess-1")).unwrap();
    assert_eq!(third.path(), path);
    assert_eq!(third.base_commit(), fb.head_commit);
    wt.finish(third).unwrap();

    // Another session, or none, starts from HEAD elsewhere.
    let other = wt.prepare("task-d", Some("sess-2")).unwrap();
    assert_ne!(other.path(), path);
    assert_eq!(other.base_commit(), git(&fx.repo, &["rev-parse", "HEAD"]));
    wt.finish(other).unwrap();
}

#[test]
fn two_tasks_of_one_session_at_once_are_refused() {
    let fx = Fixture::new();
    let wt = fx.open();
    let first = wt.prepare("x1", Some("s")).unwrap();
    let err = wt.prepare("x2", Some("s")).unwrap_err();
    assert!(matches!(err, WorkspaceError::Busy { .. }), "{err:?}");
    wt.finish(first).unwrap();
    let second = wt.prepare("x2", Some("s")).unwrap();
    wt.finish(second).unwrap();
}
