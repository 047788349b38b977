//! Four tasks at once in one repository, each writing a file of the same name.

use std::sync::Arc;

use crate::support::{Fixture, base_entries, git, show, worktree_paths};

#[test]
fn four_concurrent_tasks_get_four_branches_and_leave_the_checkout_untouched() {
    let fx = Fixture::new();
    let head_before = git(&fx.repo, &["rev-parse", "HEAD"]);
    let wt = Arc::new(fx.open());
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let wt = Arc::clone(&wt);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let ws = wt.prepare(&format!("task-{i}"), None).unwrap();
                assert!(ws.path().starts_with(wt.base_dir()));
                std::fs::write(ws.path().join("out.txt"), format!("content {i}\n")).unwrap();
                wt.finish(ws).unwrap()
            })
        })
        .collect();
    let finished: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    let mut contents = Vec::new();
    for (i, f) in finished.iter().enumerate() {
        assert_eq!(f.branch, format!("agentserver/task-{i}"));
        assert!(f.committed_changes);
        assert_eq!(git(&fx.repo, &["rev-parse", &f.branch]), f.head_commit);
        let c = show(&fx.repo, &f.branch, "out.txt");
        assert_eq!(c, format!("content {i}"));
        contents.push(c);
        assert!(!f.path.exists());
    }
    contents.sort();
    contents.dedup();
    assert_eq!(contents.len(), 4);

    // The user's checkout: clean, same HEAD, no out.txt.
    assert_eq!(git(&fx.repo, &["status", "--porcelain"]), "");
    assert_eq!(git(&fx.repo, &["rev-parse", "HEAD"]), head_before);
    assert_eq!(git(&fx.repo, &["symbolic-ref", "--short", "HEAD"]), "main");
    assert!(!fx.repo.join("out.txt").exists());
    // Nothing left behind.
    assert_eq!(base_entries(wt.base_dir()), Vec::<String>::new());
    assert_eq!(worktree_paths(&fx.repo).len(), 1);
}
