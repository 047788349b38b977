//! A throwaway repository with one commit, and git helpers that assert success.

use std::path::{Path, PathBuf};
use std::process::Command;

use agentserver_workspace::{WorktreeConfig, Worktrees};

/// A temp dir holding `repo/` (one commit on `main`) and the path for `worktrees/`.
pub struct Fixture {
    pub _tmp: tempfile::TempDir,
    pub repo: PathBuf,
    pub base: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("README.md"), "hello\n").unwrap();
        std::fs::write(repo.join("keep.txt"), "keep\n").unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "first"]);
        let base = tmp.path().join("worktrees");
        Fixture {
            _tmp: tmp,
            repo,
            base,
        }
    }

    pub fn config(&self) -> WorktreeConfig {
        WorktreeConfig::new(&self.repo, &self.base)
    }

    pub fn open(&self) -> Worktrees {
        Worktrees::open(self.config()).unwrap()
    }
}

/// Runs git in `dir` with a fixed identity and returns its trimmed stdout; panics on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `git show <rev>:<file>` in the repository.
pub fn show(repo: &Path, rev: &str, file: &str) -> String {
    git(repo, &["show", &format!("{rev}:{file}")])
}

/// The paths `git worktree list --porcelain` reports.
pub fn worktree_paths(repo: &Path) -> Vec<String> {
    git(repo, &["worktree", "list", "--porcelain"])
        .lines()
        .filter_map(|l| l.strip_prefix("worktree ").map(str::to_string))
        .collect()
}

/// Entries of the base directory other than the index.
pub fn base_entries(base: &Path) -> Vec<String> {
    std::fs::read_dir(base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "index.json")
        .collect()
}
