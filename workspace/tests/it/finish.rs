//! What `finish` commits, and that a failing hook does not stop it.

use std::os::unix::fs::PermissionsExt;

use agentserver_workspace::WorkspaceError;

use crate::support::{Fixture, git, show, worktree_paths};

#[test]
fn modified_untracked_and_deleted_files_all_end_up_in_the_commit() {
    let fx = Fixture::new();
    let wt = fx.open();
    let ws = wt.prepare("t1", None).unwrap();
    let p = ws.path().to_path_buf();
    std::fs::write(p.join("README.md"), "changed\n").unwrap();
    std::fs::create_dir_all(p.join("new/dir")).unwrap();
    std::fs::write(p.join("new/dir/file.txt"), "untracked\n").unwrap();
    std::fs::remove_file(p.join("keep.txt")).unwrap();
    // Staged but not committed counts too.
    std::fs::write(p.join("staged.txt"), "staged\n").unwrap();
    git(&p, &["add", "staged.txt"]);

    let f = wt.finish(ws).unwrap();
    assert!(f.committed_changes);
    assert!(!p.exists());
    assert_eq!(show(&fx.repo, &f.branch, "README.md"), "changed");
    assert_eq!(show(&fx.repo, &f.branch, "new/dir/file.txt"), "untracked");
    assert_eq!(show(&fx.repo, &f.branch, "staged.txt"), "staged");
    let files = git(&fx.repo, &["ls-tree", "-r", "--name-only", &f.branch]);
    assert!(!files.lines().any(|l| l == "keep.txt"), "{files}");
    let message = git(&fx.repo, &["log", "-1", "--format=%an <%ae> %s", &f.branch]);
    assert_eq!(
        message,
        "agentserver <agentserver@localhost> agentserver: uncommitted work of task t1"
    );
    // The user's checkout still has keep.txt and its README.
    assert!(fx.repo.join("keep.txt").exists());
    assert_eq!(git(&fx.repo, &["status", "--porcelain"]), "");
}

#[test]
fn a_clean_task_commits_nothing_and_its_branch_stays_at_base() {
    let fx = Fixture::new();
    let wt = fx.open();
    let ws = wt.prepare("t-clean", None).unwrap();
    let base = ws.base_commit().to_string();
    let f = wt.finish(ws).unwrap();
    assert!(!f.committed_changes);
    assert_eq!(f.head_commit, base);
    assert_eq!(git(&fx.repo, &["rev-parse", "HEAD"]), base);
    assert_eq!(worktree_paths(&fx.repo).len(), 1);
}

#[test]
fn failing_commit_hooks_do_not_stop_finish() {
    let fx = Fixture::new();
    let hooks = fx.repo.join(".git/hooks");
    for hook in [
        "pre-commit",
        "commit-msg",
        "prepare-commit-msg",
        "post-commit",
    ] {
        let p = hooks.join(hook);
        std::fs::write(&p, "#!/bin/sh\necho refused by hook >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let wt = fx.open();
    let ws = wt.prepare("hooked", None).unwrap();
    std::fs::write(ws.path().join("x.txt"), "x\n").unwrap();
    let f = wt.finish(ws).unwrap();
    assert!(f.committed_changes);
    assert_eq!(show(&fx.repo, &f.branch, "x.txt"), "x");
}

#[test]
fn a_failed_commit_keeps_the_directory_and_says_where() {
    let fx = Fixture::new();
    let wt = fx.open();
    let ws = wt.prepare("stuck", None).unwrap();
    let p = ws.path().to_path_buf();
    std::fs::write(p.join("work.txt"), "precious\n").unwrap();
    // A held index lock makes `git add` fail for good.
    let gitdir = git(&p, &["rev-parse", "--absolute-git-dir"]);
    let lock = std::path::Path::new(&gitdir).join("index.lock");
    std::fs::write(&lock, "").unwrap();
    let err = wt.finish(ws).unwrap_err();
    assert!(
        matches!(err, WorkspaceError::CommitFailed { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("commit failed; the work is left in"),
        "{text}"
    );
    assert!(text.contains(&p.display().to_string()), "{text}");
    assert_eq!(
        std::fs::read_to_string(p.join("work.txt")).unwrap(),
        "precious\n"
    );

    // Once the cause is gone, preparing the same task again finishes the leftover first.
    std::fs::remove_file(&lock).unwrap();
    let ws = wt.prepare("stuck", None).unwrap();
    assert_eq!(ws.branch(), "agentserver/stuck-2");
    assert_eq!(show(&fx.repo, "agentserver/stuck", "work.txt"), "precious");
    wt.finish(ws).unwrap();
}

#[test]
fn a_detached_head_gets_a_branch_before_the_directory_goes() {
    let fx = Fixture::new();
    let wt = fx.open();
    let ws = wt.prepare("det", None).unwrap();
    git(ws.path(), &["checkout", "-q", "--detach"]);
    std::fs::write(ws.path().join("d.txt"), "d\n").unwrap();
    let f = wt.finish(ws).unwrap();
    assert!(
        f.branch.starts_with("agentserver/det-detached-"),
        "{}",
        f.branch
    );
    assert_eq!(show(&fx.repo, &f.branch, "d.txt"), "d");
}

#[test]
fn odd_task_ids_make_valid_branches_and_paths() {
    let fx = Fixture::new();
    let wt = fx.open();
    let ws = wt.prepare("weird id/with:chars..lock", None).unwrap();
    git(
        &fx.repo,
        &["check-ref-format", &format!("refs/heads/{}", ws.branch())],
    );
    assert_eq!(ws.path().parent().unwrap(), wt.base_dir());
    std::fs::write(ws.path().join("w.txt"), "w\n").unwrap();
    let f = wt.finish(ws).unwrap();
    assert_eq!(show(&fx.repo, &f.branch, "w.txt"), "w");
}

#[test]
fn a_worktree_whose_git_file_was_replaced_is_not_committed_anywhere() {
    let fx = Fixture::new();
    let wt = fx.open();
    let ws = wt.prepare("reinit", None).unwrap();
    let p = ws.path().to_path_buf();
    std::fs::remove_file(p.join(".git")).unwrap();
    git(&p, &["init", "-q"]);
    std::fs::write(p.join("mine.txt"), "keep me\n").unwrap();
    let err = wt.finish(ws).unwrap_err();
    let WorkspaceError::CommitFailed { source, dir, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        matches!(**source, WorkspaceError::NotAWorktree { .. }),
        "{source:?}"
    );
    assert_eq!(dir, &p);
    assert!(p.join("mine.txt").exists());
    // Nothing was committed in the nested repository either.
    let out = std::process::Command::new("git")
        .args(["-C"])
        .arg(&p)
        .args(["rev-parse", "--verify", "-q", "HEAD"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn host_files_are_copied_into_each_worktree_and_never_committed() {
    let fx = Fixture::new();
    // The host's `.mcp.json` in the user's checkout (untracked there, as the host writes it).
    std::fs::write(fx.repo.join(".mcp.json"), "{\"mcpServers\":{}}\n").unwrap();
    let mut config = fx.config();
    config.host_files = vec![".mcp.json".into()];
    let wt = agentserver_workspace::Worktrees::open(config).unwrap();
    let ws = wt.prepare("t1", None).unwrap();
    let p = ws.path().to_path_buf();
    assert_eq!(
        std::fs::read_to_string(p.join(".mcp.json")).unwrap(),
        "{\"mcpServers\":{}}\n",
        "the agent finds the host's MCP config in its worktree"
    );
    std::fs::write(p.join("work.txt"), "done\n").unwrap();
    let f = wt.finish(ws).unwrap();
    let files = git(&fx.repo, &["ls-tree", "-r", "--name-only", &f.branch]);
    assert!(files.lines().any(|l| l == "work.txt"), "{files}");
    assert!(
        !files.lines().any(|l| l == ".mcp.json"),
        "the host file (it holds a token) reached the branch: {files}"
    );
    assert!(fx.repo.join(".mcp.json").exists(), "the original stays");
}
