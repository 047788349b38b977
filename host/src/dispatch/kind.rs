//! [`BackendKind`]: which backend a sandbox runs, the one place the built-in names live.

use std::fmt;
use std::str::FromStr;

use agentserver_plugin_api::SessionType;

/// A backend the host can run: a built-in one, or an installed plugin by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// `claudecode`: the `claude` CLI.
    ClaudeCode,
    /// `opencode`: `opencode serve`.
    Opencode,
    /// `acp`: any Agent Client Protocol agent (`opencode acp`, `claude-agent-acp`, …) on its
    /// stdio. Registers as `custom` (the spec has no ACP type); the session file records
    /// `acp` as its backend, which is how `--resume` finds it again.
    Acp,
    /// A plugin (native library or WASM component) with this name.
    Plugin(String),
}

/// Why a backend name cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid backend name `{0}`: use letters, digits, `-`, `_` or `.`")]
pub struct InvalidBackendName(pub String);

impl BackendKind {
    /// The built-in backends.
    pub const BUILTINS: [BackendKind; 3] = [
        BackendKind::ClaudeCode,
        BackendKind::Opencode,
        BackendKind::Acp,
    ];

    /// The backend the root command runs (and a new `run` without `--backend`).
    pub const DEFAULT: BackendKind = BackendKind::ClaudeCode;

    /// The name `--backend` takes and session files record.
    pub fn name(&self) -> &str {
        match self {
            Self::ClaudeCode => "claudecode",
            Self::Opencode => "opencode",
            Self::Acp => "acp",
            Self::Plugin(name) => name,
        }
    }

    /// The sandbox type it registers as (spec §3.1): `claudecode` and `opencode` their own,
    /// `acp` and plugins `custom` (the spec knows no other type; a server answers anything
    /// else with 400).
    pub fn session_type(&self) -> SessionType {
        match self {
            Self::ClaudeCode => SessionType::Claudecode,
            Self::Opencode => SessionType::Opencode,
            Self::Acp | Self::Plugin(_) => SessionType::Custom,
        }
    }

    /// The built-in backend whose sandboxes are registered as `session_type`, if that type
    /// names one: `claudecode` and `opencode`. `custom` is shared by `acp` and every plugin,
    /// so it names none (the session file's recorded backend decides).
    pub fn builtin_for_session_type(session_type: &str) -> Option<Self> {
        Self::BUILTINS.into_iter().find(|kind| {
            kind.session_type() != SessionType::Custom
                && kind.session_type().as_str() == session_type
        })
    }

    /// Whether this is a built-in backend.
    pub fn is_builtin(&self) -> bool {
        !matches!(self, Self::Plugin(_))
    }

    /// Whether a plugin may not take this name (a built-in has it).
    pub fn is_reserved_name(name: &str) -> bool {
        Self::BUILTINS.iter().any(|kind| kind.name() == name)
    }

    /// The command that resumes `sandbox_id` with this backend.
    pub fn resume_hint(&self, sandbox_id: &str) -> String {
        match self {
            Self::ClaudeCode => format!("agentserver --resume {sandbox_id}"),
            other => format!(
                "agentserver run --backend {} --resume {sandbox_id}",
                other.name()
            ),
        }
    }
}

impl FromStr for BackendKind {
    type Err = InvalidBackendName;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if let Some(builtin) = Self::BUILTINS.into_iter().find(|kind| kind.name() == name) {
            return Ok(builtin);
        }
        let usable = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if usable {
            Ok(Self::Plugin(name.to_owned()))
        } else {
            Err(InvalidBackendName(name.to_owned()))
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_builtins_are_recognised() {
        for kind in BackendKind::BUILTINS {
            assert_eq!(kind.name().parse::<BackendKind>().unwrap(), kind);
            assert!(kind.is_builtin());
            assert!(BackendKind::is_reserved_name(kind.name()));
        }
        let plugin: BackendKind = "my-plugin_2.x".parse().unwrap();
        assert_eq!(plugin, BackendKind::Plugin("my-plugin_2.x".into()));
        assert_eq!(plugin.to_string(), "my-plugin_2.x");
        assert!(!plugin.is_builtin());
        assert!(!BackendKind::is_reserved_name("my-plugin_2.x"));
        for bad in ["", "a b", "../x", "x/y", "tab\t"] {
            assert!(bad.parse::<BackendKind>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn session_types_and_resume_hints() {
        assert_eq!(
            BackendKind::ClaudeCode.session_type(),
            SessionType::Claudecode
        );
        assert_eq!(BackendKind::Opencode.session_type(), SessionType::Opencode);
        assert_eq!(
            BackendKind::Plugin("p".into()).session_type(),
            SessionType::Custom
        );
        assert_eq!(
            BackendKind::builtin_for_session_type("opencode"),
            Some(BackendKind::Opencode)
        );
        assert_eq!(BackendKind::builtin_for_session_type("custom"), None);
        assert_eq!(BackendKind::Acp.session_type(), SessionType::Custom);
        assert_eq!("acp".parse::<BackendKind>().unwrap(), BackendKind::Acp);
        assert!(BackendKind::is_reserved_name("acp"));
        assert_eq!(
            BackendKind::Acp.resume_hint("sb1"),
            "agentserver run --backend acp --resume sb1"
        );
        assert_eq!(
            BackendKind::ClaudeCode.resume_hint("sb1"),
            "agentserver --resume sb1"
        );
        assert_eq!(
            BackendKind::Plugin("p".into()).resume_hint("sb1"),
            "agentserver run --backend p --resume sb1"
        );
    }
}
