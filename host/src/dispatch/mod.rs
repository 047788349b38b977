//! Dispatch: from the backend a sandbox runs ([`BackendKind`]) to a `Backend`.
//!
//! A [`BackendRegistry`] maps names to factories. [`BackendRegistry::with_builtins`] holds
//! `claudecode`, `opencode` and `acp`, built from their typed options in a [`BackendSpec`]; plugins
//! are registered by the plugin loader ([`crate::plugins::register_all`]) or, when a name is
//! not registered, loaded on demand from the plugin directories ([`BackendRegistry::resolve`]),
//! so the plugin's own load error is what the user sees. `run`, `task-worker`, `demo` and
//! resume all build their backend here.

mod kind;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use agentserver_backend_acp::{AcpBackend, AcpConfig};
use agentserver_backend_claudecode::{ClaudeCodeBackend, ClaudeCodeConfig};
use agentserver_backend_opencode::{OpencodeBackend, OpencodeConfig};
use agentserver_plugin_api::{Backend, BackendError, SessionType};

pub use kind::{BackendKind, InvalidBackendName};

use crate::plugins::{PluginError, PluginOptions};

/// What a factory gets to build a backend from: the work directory and each backend's own,
/// typed options (only the chosen backend's are read).
#[derive(Clone, Debug, Default)]
pub struct BackendSpec {
    /// Directory tasks run in (it overrides the `workdir` of the typed options).
    pub workdir: PathBuf,
    /// Options of the `claudecode` backend.
    pub claudecode: ClaudeCodeConfig,
    /// Options of the `opencode` backend.
    pub opencode: OpencodeConfig,
    /// Options of the `acp` backend.
    pub acp: AcpConfig,
    /// Where plugins are found and which native ones are allowed.
    pub plugins: PluginOptions,
}

/// Builds a backend from a [`BackendSpec`].
pub type BackendFactory =
    Arc<dyn Fn(&BackendSpec) -> Result<Arc<dyn Backend>, BackendError> + Send + Sync>;

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// No backend is registered under this name.
    #[error("unknown backend `{name}` (available: {})", list(.available))]
    UnknownBackend {
        /// The name asked for.
        name: String,
        /// The names registered.
        available: Vec<String>,
    },
    /// A backend with this name is registered already.
    #[error("a backend named `{0}` is registered already")]
    Duplicate(String),
    /// The name is not usable (empty or with whitespace).
    #[error("invalid backend name `{0}`")]
    InvalidName(String),
    /// The factory failed.
    #[error("cannot create the `{name}` backend: {source}")]
    Create {
        /// The backend.
        name: String,
        /// Why.
        #[source]
        source: BackendError,
    },
    /// A plugin that is not registered could not be loaded from the plugin directories.
    #[error(
        "cannot load the plugin `{name}`: {source} (built-in backends: claudecode, opencode, acp; \
         installed plugins: `agentserver plugins list`)"
    )]
    Plugin {
        /// The plugin.
        name: String,
        /// Why: the plugin's own load error.
        #[source]
        source: PluginError,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

struct Entry {
    factory: BackendFactory,
    session_type: Option<SessionType>,
}

/// Name → backend factory.
#[derive(Default)]
pub struct BackendRegistry {
    entries: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for BackendRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendRegistry")
            .field("names", &self.names())
            .finish()
    }
}

impl BackendRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding the built-in backends, `claudecode`, `opencode` and `acp`.
    pub fn with_builtins() -> Self {
        let mut registry = Self::new();
        let claudecode: BackendFactory = Arc::new(|spec: &BackendSpec| {
            let config = ClaudeCodeConfig {
                workdir: spec.workdir.clone(),
                ..spec.claudecode.clone()
            };
            Ok(Arc::new(ClaudeCodeBackend::new(config)) as Arc<dyn Backend>)
        });
        let opencode: BackendFactory = Arc::new(|spec: &BackendSpec| {
            let config = OpencodeConfig {
                workdir: spec.workdir.clone(),
                ..spec.opencode.clone()
            };
            Ok(Arc::new(OpencodeBackend::new(config)) as Arc<dyn Backend>)
        });
        let acp: BackendFactory = Arc::new(|spec: &BackendSpec| {
            let config = AcpConfig {
                workdir: spec.workdir.clone(),
                ..spec.acp.clone()
            };
            Ok(Arc::new(AcpBackend::new(config)) as Arc<dyn Backend>)
        });
        for (kind, factory) in [
            (BackendKind::ClaudeCode, claudecode),
            (BackendKind::Opencode, opencode),
            (BackendKind::Acp, acp),
        ] {
            registry
                .register(kind.name(), Some(kind.session_type()), factory)
                .expect("the built-in names are valid and distinct");
        }
        registry
    }

    /// Builds the backend of `kind`: a registered factory, else (for a plugin) the plugin
    /// loaded from `spec.plugins`' directories.
    pub fn build(
        &self,
        kind: &BackendKind,
        spec: &BackendSpec,
    ) -> Result<Arc<dyn Backend>, DispatchError> {
        match kind {
            BackendKind::Plugin(name) if !self.contains(name) => {
                crate::plugins::load_backend(name, &spec.plugins).map_err(|source| {
                    DispatchError::Plugin {
                        name: name.clone(),
                        source,
                    }
                })
            }
            _ => self.resolve(kind.name(), spec),
        }
    }

    /// Registers a factory under `name`. `session_type` is the sandbox type the backend
    /// registers as, when known without building it (built-ins know it; plugins say `custom`).
    pub fn register(
        &mut self,
        name: &str,
        session_type: Option<SessionType>,
        factory: BackendFactory,
    ) -> Result<(), DispatchError> {
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(DispatchError::InvalidName(name.to_owned()));
        }
        if self.entries.contains_key(name) {
            return Err(DispatchError::Duplicate(name.to_owned()));
        }
        self.entries.insert(
            name.to_owned(),
            Entry {
                factory,
                session_type,
            },
        );
        Ok(())
    }

    /// Registers a ready backend instance under `name` (every resolve returns the same one).
    pub fn register_instance(
        &mut self,
        name: &str,
        backend: Arc<dyn Backend>,
    ) -> Result<(), DispatchError> {
        let session_type = Some(backend.info().session_type);
        self.register(name, session_type, Arc::new(move |_| Ok(backend.clone())))
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The sandbox type registered for `name`, if known.
    pub fn session_type(&self, name: &str) -> Option<SessionType> {
        self.entries.get(name).and_then(|e| e.session_type)
    }

    /// Builds the backend registered as `name`.
    pub fn resolve(
        &self,
        name: &str,
        spec: &BackendSpec,
    ) -> Result<Arc<dyn Backend>, DispatchError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| DispatchError::UnknownBackend {
                name: name.to_owned(),
                available: self.names(),
            })?;
        (entry.factory)(spec).map_err(|source| DispatchError::Create {
            name: name.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentserver_plugin_api::{BackendInfo, EventSink, Task, TaskOutcome};
    use async_trait::async_trait;
    use tokio_util::sync::CancellationToken;

    struct Nop;

    #[async_trait]
    impl Backend for Nop {
        fn info(&self) -> BackendInfo {
            BackendInfo {
                name: "nop".into(),
                version: "1".into(),
                session_type: SessionType::Custom,
            }
        }
        async fn execute(&self, _: Task, _: EventSink, _: CancellationToken) -> TaskOutcome {
            TaskOutcome::completed("ok")
        }
    }

    #[test]
    fn resolves_and_lists_names() {
        let mut reg = BackendRegistry::new();
        reg.register_instance("nop", Arc::new(Nop)).unwrap();
        reg.register(
            "broken",
            Some(SessionType::Claudecode),
            Arc::new(|_| Err(BackendError::Start("no binary".into()))),
        )
        .unwrap();
        assert_eq!(reg.names(), ["broken", "nop"]);
        assert_eq!(reg.session_type("nop"), Some(SessionType::Custom));
        assert_eq!(
            reg.resolve("nop", &BackendSpec::default())
                .unwrap()
                .info()
                .name,
            "nop"
        );
        let err = reg.resolve("zzz", &BackendSpec::default()).err().unwrap();
        assert_eq!(
            err.to_string(),
            "unknown backend `zzz` (available: broken, nop)"
        );
        let err = reg
            .resolve("broken", &BackendSpec::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("no binary"), "{err}");
        assert!(matches!(
            reg.register_instance("nop", Arc::new(Nop)),
            Err(DispatchError::Duplicate(_))
        ));
        assert!(matches!(
            reg.register_instance("a b", Arc::new(Nop)),
            Err(DispatchError::InvalidName(_))
        ));
    }

    #[test]
    fn builtins_are_registered_with_their_session_types() {
        let reg = BackendRegistry::with_builtins();
        assert_eq!(reg.names(), ["acp", "claudecode", "opencode"]);
        let spec = BackendSpec {
            workdir: PathBuf::from("/srv/work"),
            ..BackendSpec::default()
        };
        for kind in BackendKind::BUILTINS {
            assert_eq!(reg.session_type(kind.name()), Some(kind.session_type()));
            let backend = reg.build(&kind, &spec).unwrap();
            assert_eq!(backend.info().name, kind.name());
            assert_eq!(backend.info().session_type, kind.session_type());
        }
    }

    #[test]
    fn an_unregistered_plugin_reports_its_own_load_error() {
        let dir = tempfile::tempdir().unwrap();
        let spec = BackendSpec {
            plugins: PluginOptions::with_state_dir(dir.path().to_path_buf()),
            ..BackendSpec::default()
        };
        let err = BackendRegistry::with_builtins()
            .build(&BackendKind::Plugin("nowhere".into()), &spec)
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.starts_with("cannot load the plugin `nowhere`: "),
            "{text}"
        );
        assert!(matches!(err, DispatchError::Plugin { .. }));
    }

    #[test]
    fn empty_registry_says_none() {
        let reg = BackendRegistry::new();
        let err = reg.resolve("x", &BackendSpec::default()).err().unwrap();
        assert_eq!(err.to_string(), "unknown backend `x` (available: none)");
    }
}
