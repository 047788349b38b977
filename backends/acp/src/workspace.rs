//! The task's workspace as the agent's file-system boundary: `fs/read_text_file`,
//! `fs/write_text_file` and the permission policy only ever touch paths that resolve inside it.
//!
//! A path is refused when it is relative, has a `..` component, or resolves (symlinks
//! followed) outside the workspace root. For a write the file may not exist yet: its parent
//! directory must exist and resolve inside, and the file itself, when it exists, must too (a
//! symlink inside pointing out is refused).

use std::io;
use std::path::{Component, Path, PathBuf};

/// Why a path is refused.
#[derive(Debug, thiserror::Error)]
pub enum PathRefused {
    /// Not absolute (ACP requires absolute paths).
    #[error("path `{0}` is not absolute")]
    Relative(PathBuf),
    /// Has a `..` component.
    #[error("path `{0}` contains `..`")]
    ParentComponent(PathBuf),
    /// Resolves outside the workspace.
    #[error("path `{path}` is outside the task's workspace `{root}`")]
    Outside {
        /// The path asked for.
        path: PathBuf,
        /// The workspace root.
        root: PathBuf,
    },
    /// Could not be resolved (a missing file or directory, no permission).
    #[error("path `{path}`: {source}")]
    Io {
        /// The path asked for.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A workspace root, resolved once.
#[derive(Clone, Debug)]
pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    /// The workspace at `root` (resolved: symlinks followed).
    pub fn new(root: &Path) -> io::Result<Self> {
        Ok(Self {
            root: std::fs::canonicalize(root)?,
        })
    }

    /// The resolved root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `path` is lexically acceptable and resolves inside (a path that does not
    /// exist is judged by its nearest existing ancestor): the permission policy's test.
    pub fn contains(&self, path: &Path) -> bool {
        if check_lexically(path).is_err() {
            return false;
        }
        let mut probe = path;
        loop {
            if let Ok(real) = std::fs::canonicalize(probe) {
                return real.starts_with(&self.root);
            }
            match probe.parent() {
                Some(parent) => probe = parent,
                None => return false,
            }
        }
    }

    /// The resolved path of an existing file to read.
    pub fn resolve_existing(&self, path: &Path) -> Result<PathBuf, PathRefused> {
        check_lexically(path)?;
        let real = std::fs::canonicalize(path).map_err(|source| PathRefused::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.inside(path, real)
    }

    /// The path to write: its parent resolved inside, the file itself (if it exists) too.
    pub fn resolve_for_write(&self, path: &Path) -> Result<PathBuf, PathRefused> {
        check_lexically(path)?;
        match std::fs::symlink_metadata(path) {
            Ok(_) => return self.resolve_existing(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(PathRefused::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(self.outside(path));
        };
        let parent = std::fs::canonicalize(parent).map_err(|source| PathRefused::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.inside(path, parent.join(name))
    }

    fn inside(&self, asked: &Path, real: PathBuf) -> Result<PathBuf, PathRefused> {
        if real.starts_with(&self.root) {
            Ok(real)
        } else {
            Err(self.outside(asked))
        }
    }

    fn outside(&self, asked: &Path) -> PathRefused {
        PathRefused::Outside {
            path: asked.to_path_buf(),
            root: self.root.clone(),
        }
    }
}

fn check_lexically(path: &Path) -> Result<(), PathRefused> {
    if !path.is_absolute() {
        return Err(PathRefused::Relative(path.to_path_buf()));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(PathRefused::ParentComponent(path.to_path_buf()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_relative_dotdot_outside_and_symlinks_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("work");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("dirlink")).unwrap();
        let ws = Workspace::new(&root).unwrap();

        assert!(ws.resolve_existing(&root.join("sub/a.txt")).is_ok());
        assert!(matches!(
            ws.resolve_existing(Path::new("sub/a.txt")),
            Err(PathRefused::Relative(_))
        ));
        assert!(matches!(
            ws.resolve_existing(&root.join("sub/../sub/a.txt")),
            Err(PathRefused::ParentComponent(_))
        ));
        assert!(matches!(
            ws.resolve_existing(&dir.path().join("secret.txt")),
            Err(PathRefused::Outside { .. })
        ));
        assert!(matches!(
            ws.resolve_existing(&root.join("link")),
            Err(PathRefused::Outside { .. })
        ));
        assert!(matches!(
            ws.resolve_for_write(&root.join("link")),
            Err(PathRefused::Outside { .. })
        ));
        assert!(matches!(
            ws.resolve_for_write(&root.join("dirlink/new.txt")),
            Err(PathRefused::Outside { .. })
        ));
        assert_eq!(
            ws.resolve_for_write(&root.join("sub/new.txt")).unwrap(),
            ws.root().join("sub/new.txt")
        );
        assert!(ws.contains(&root.join("not/yet/there.txt")));
        assert!(!ws.contains(&root.join("dirlink/x")));
        assert!(!ws.contains(Path::new("/etc/passwd")));
    }
}
