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

/// Prepares and finishes overlapping (one thread's finish prunes while another's add runs):
/// the race that made bare concurrent `git worktree add`s fail ("failed to read …/commondir").
#[test]
fn overlapping_prepares_and_finishes_from_eight_threads_all_succeed() {
    let fx = Fixture::new();
    for i in 0..50 {
        std::fs::write(fx.repo.join(format!("f{i}.txt")), "x".repeat(1000)).unwrap();
    }
    git(&fx.repo, &["add", "-A"]);
    git(&fx.repo, &["commit", "-q", "-m", "files"]);
    let wt = Arc::new(fx.open());
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let wt = Arc::clone(&wt);
            std::thread::spawn(move || {
                for round in 0..2 {
                    let session = format!("s{}", i % 4);
                    let key = (i < 4).then_some(session.as_str());
                    let id = format!("o-{i}-{round}");
                    let ws = wt.prepare(&id, key).unwrap();
                    std::fs::write(ws.path().join(format!("{id}.txt")), &id).unwrap();
                    wt.finish(ws).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // Sessions s0..s3 each carry both of their tasks' files.
    for i in 0..4 {
        let files = git(
            &fx.repo,
            &["ls-tree", "--name-only", &format!("agentserver/o-{i}-1")],
        );
        for round in 0..2 {
            assert!(files.contains(&format!("o-{i}-{round}.txt")), "{files}");
        }
    }
    assert_eq!(worktree_paths(&fx.repo).len(), 1);
    assert_eq!(base_entries(wt.base_dir()), Vec::<String>::new());
}
