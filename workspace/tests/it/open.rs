//! What `open` refuses, and the non-git check.

use std::os::unix::fs::PermissionsExt;

use agentserver_workspace::{WorkspaceError, WorktreeConfig, Worktrees, is_git_work_tree};

use crate::support::Fixture;

#[test]
fn a_base_dir_inside_the_repository_is_refused() {
    let fx = Fixture::new();
    for inside in [
        fx.repo.join(".worktrees"),
        fx.repo.clone(),
        fx.repo.join("a/b"),
    ] {
        let err = Worktrees::open(WorktreeConfig::new(&fx.repo, &inside)).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::BaseDirInsideRepo { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("base dir inside the repository"),
            "{err}"
        );
        assert!(!fx.repo.join(".worktrees").exists());
    }
    // The repository inside the base dir is refused too.
    let parent = fx.repo.parent().unwrap();
    let err = Worktrees::open(WorktreeConfig::new(&fx.repo, parent)).unwrap_err();
    assert!(
        matches!(err, WorkspaceError::RepoInsideBaseDir { .. }),
        "{err:?}"
    );
}

#[test]
fn a_non_git_directory_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    assert!(!is_git_work_tree(&plain));
    let err = Worktrees::open(WorktreeConfig::new(&plain, tmp.path().join("wt"))).unwrap_err();
    assert!(matches!(err, WorkspaceError::NotAGitRepo { .. }), "{err:?}");
    assert!(err.to_string().contains("is not a git work tree"), "{err}");
    let missing = tmp.path().join("missing");
    assert!(!is_git_work_tree(&missing));
    assert!(matches!(
        Worktrees::open(WorktreeConfig::new(&missing, tmp.path().join("wt"))),
        Err(WorkspaceError::NotAGitRepo { .. })
    ));
}

#[test]
fn open_resolves_the_top_level_and_makes_a_private_base_dir() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.repo.join("sub")).unwrap();
    assert!(is_git_work_tree(&fx.repo));
    assert!(is_git_work_tree(&fx.repo.join("sub")));
    let wt = Worktrees::open(WorktreeConfig::new(fx.repo.join("sub"), &fx.base)).unwrap();
    assert_eq!(wt.repo(), fx.repo.canonicalize().unwrap());
    let mode = std::fs::metadata(wt.base_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(format!("{wt:?}").contains("Worktrees"));
}

#[test]
fn a_repository_without_commits_cannot_prepare() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("empty");
    std::fs::create_dir(&repo).unwrap();
    crate::support::git(&repo, &["init", "-q"]);
    let wt = Worktrees::open(WorktreeConfig::new(&repo, tmp.path().join("wt"))).unwrap();
    let err = wt.prepare("t", None).unwrap_err();
    assert!(matches!(err, WorkspaceError::NoCommits { .. }), "{err:?}");
    // Nothing half-made stays behind: a later prepare after a commit works.
    std::fs::write(repo.join("f"), "f").unwrap();
    crate::support::git(&repo, &["add", "f"]);
    crate::support::git(&repo, &["commit", "-q", "-m", "f"]);
    wt.finish(wt.prepare("t", None).unwrap()).unwrap();
}
