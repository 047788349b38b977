//! The environment contract of `agentserver mcp-server` (spec §10.2).

use crate::secret::Secret;

/// The message printed (after `Error: `) when a required variable is missing.
pub const MISSING_ENV_MESSAGE: &str =
    "AGENTSERVER_URL, AGENTSERVER_TOKEN, and AGENTSERVER_WORKSPACE_ID are required";

/// Server base URL (required).
pub const ENV_URL: &str = "AGENTSERVER_URL";
/// Bearer token: the sandbox's tunnel or proxy token (required).
pub const ENV_TOKEN: &str = "AGENTSERVER_TOKEN";
/// Workspace id (required; only checked for presence, as upstream).
pub const ENV_WORKSPACE_ID: &str = "AGENTSERVER_WORKSPACE_ID";
/// This sandbox's id (optional): filtered out of the agent listing, sent as `requester_id`.
pub const ENV_SANDBOX_ID: &str = "AGENTSERVER_SANDBOX_ID";

/// A required variable was unset or empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{MISSING_ENV_MESSAGE}")]
pub struct MissingEnv;

/// What the bridge needs to talk to the server.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Server base URL without a trailing `/`.
    pub server_url: String,
    /// Bearer token for every request.
    pub token: Secret,
    /// The workspace the token belongs to.
    pub workspace_id: String,
    /// This sandbox's id, if known.
    pub sandbox_id: Option<String>,
}

impl BridgeConfig {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, MissingEnv> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (a variable's value, or `None` when unset).
    /// Empty values count as unset, as upstream's `os.Getenv` checks do.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, MissingEnv> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let (Some(url), Some(token), Some(workspace_id)) =
            (get(ENV_URL), get(ENV_TOKEN), get(ENV_WORKSPACE_ID))
        else {
            return Err(MissingEnv);
        };
        Ok(Self {
            server_url: url.trim_end_matches('/').to_owned(),
            token: Secret::new(token),
            workspace_id,
            sandbox_id: get(ENV_SANDBOX_ID),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn reads_all_variables_and_trims_the_url() {
        let cfg = BridgeConfig::from_lookup(lookup(&[
            (ENV_URL, "http://127.0.0.1:9/"),
            (ENV_TOKEN, "tok"),
            (ENV_WORKSPACE_ID, "ws"),
            (ENV_SANDBOX_ID, "sb"),
        ]))
        .unwrap();
        assert_eq!(cfg.server_url, "http://127.0.0.1:9");
        assert_eq!(cfg.token.expose(), "tok");
        assert_eq!(cfg.workspace_id, "ws");
        assert_eq!(cfg.sandbox_id.as_deref(), Some("sb"));
        assert!(!format!("{cfg:?}").contains("tok\""));
    }

    #[test]
    fn sandbox_id_is_optional() {
        let cfg = BridgeConfig::from_lookup(lookup(&[
            (ENV_URL, "http://x"),
            (ENV_TOKEN, "tok"),
            (ENV_WORKSPACE_ID, "ws"),
            (ENV_SANDBOX_ID, ""),
        ]))
        .unwrap();
        assert_eq!(cfg.sandbox_id, None);
    }

    #[test]
    fn each_required_variable_is_required() {
        for missing in [ENV_URL, ENV_TOKEN, ENV_WORKSPACE_ID] {
            let mut vars = vec![
                (ENV_URL, "http://x"),
                (ENV_TOKEN, "t"),
                (ENV_WORKSPACE_ID, "w"),
            ];
            vars.retain(|(k, _)| *k != missing);
            assert_eq!(
                BridgeConfig::from_lookup(lookup(&vars)).unwrap_err(),
                MissingEnv
            );
            // Empty counts as missing.
            vars.push((missing, ""));
            assert_eq!(
                BridgeConfig::from_lookup(lookup(&vars)).unwrap_err(),
                MissingEnv
            );
        }
        assert_eq!(MissingEnv.to_string(), MISSING_ENV_MESSAGE);
    }
}
