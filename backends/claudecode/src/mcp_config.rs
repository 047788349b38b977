//! `.mcp.json` injection (spec §10.1): registers `agentserver mcp-server` with Claude Code.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// Name of the file in the work directory.
pub const MCP_CONFIG_FILE: &str = ".mcp.json";
/// Key of our entry under `mcpServers`.
pub const MCP_SERVER_NAME: &str = "agentserver";

/// Writing `.mcp.json` failed. Never carries the token.
#[derive(Debug, thiserror::Error)]
pub enum McpConfigError {
    /// Reading, writing or renaming the file failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Sets the `agentserver` entry of `<workdir>/.mcp.json` and returns the file's path:
///
/// ```json
/// {"mcpServers": {"agentserver": {"command": "<exe, symlinks resolved>", "args": ["mcp-server"],
///   "env": {"AGENTSERVER_URL": "…", "AGENTSERVER_TOKEN": "<tunnel token>",
///           "AGENTSERVER_WORKSPACE_ID": "…", "AGENTSERVER_SANDBOX_ID": "…"}}}}
/// ```
///
/// Other servers and top-level keys are kept; a file that is not a JSON object is replaced.
/// Written pretty (2-space indent) with a trailing newline, atomically (temporary file in the
/// same directory, then rename), mode 0600 because it holds the token. Keys come out sorted.
pub fn inject_mcp_config(
    workdir: &Path,
    server_url: &str,
    tunnel_token: &str,
    workspace_id: &str,
    sandbox_id: &str,
    exe_path: &Path,
) -> Result<PathBuf, McpConfigError> {
    let path = workdir.join(MCP_CONFIG_FILE);
    let mut root = match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => map,
            _ => {
                tracing::warn!(path = %path.display(), "replacing an .mcp.json that is not a JSON object");
                Map::new()
            }
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Map::new(),
        Err(source) => {
            return Err(McpConfigError::Io {
                action: "read",
                path,
                source,
            });
        }
    };
    let command = std::fs::canonicalize(exe_path).unwrap_or_else(|_| exe_path.to_path_buf());
    let entry = json!({
        "command": command.to_string_lossy(),
        "args": ["mcp-server"],
        "env": {
            "AGENTSERVER_URL": server_url,
            "AGENTSERVER_TOKEN": tunnel_token,
            "AGENTSERVER_WORKSPACE_ID": workspace_id,
            "AGENTSERVER_SANDBOX_ID": sandbox_id,
        }
    });
    let servers = root
        .entry("mcpServers")
        .or_insert_with(|| Value::Object(Map::new()));
    if !servers.is_object() {
        *servers = Value::Object(Map::new());
    }
    if let Value::Object(servers) = servers {
        servers.insert(MCP_SERVER_NAME.to_owned(), entry);
    }
    let mut text =
        serde_json::to_string_pretty(&Value::Object(root)).unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');

    let io_err = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| McpConfigError::Io {
            action,
            path,
            source,
        }
    };
    // NamedTempFile creates the file with mode 0600.
    let mut tmp = tempfile::Builder::new()
        .prefix(".mcp.json.")
        .suffix(".tmp")
        .tempfile_in(workdir)
        .map_err(io_err("create a temporary file in", workdir))?;
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_err("write", tmp.path()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("set permissions of", tmp.path()))?;
    }
    tmp.persist(&path).map_err(|e| McpConfigError::Io {
        action: "replace",
        path: path.clone(),
        source: e.error,
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_file_with_entry_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("agentserver-real");
        std::fs::write(&exe, "").unwrap();
        let link = dir.path().join("agentserver-link");
        std::os::unix::fs::symlink(&exe, &link).unwrap();
        let path = inject_mcp_config(dir.path(), "https://s", "tok", "ws1", "sb1", &link).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n"));
        assert!(
            text.contains("\n  \"mcpServers\": {\n    \"agentserver\""),
            "{text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        let e = &v["mcpServers"]["agentserver"];
        assert_eq!(
            e["command"],
            std::fs::canonicalize(&exe).unwrap().to_str().unwrap()
        );
        assert_eq!(e["args"], json!(["mcp-server"]));
        assert_eq!(
            e["env"],
            json!({"AGENTSERVER_URL":"https://s","AGENTSERVER_TOKEN":"tok",
                   "AGENTSERVER_WORKSPACE_ID":"ws1","AGENTSERVER_SANDBOX_ID":"sb1"})
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Nothing else left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn keeps_other_servers_and_keys_and_replaces_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MCP_CONFIG_FILE);
        std::fs::write(
            &path,
            r#"{"mcpServers":{"other":{"command":"x"},"agentserver":{"command":"old"}},"extra":[1,2]}"#,
        )
        .unwrap();
        inject_mcp_config(dir.path(), "u", "t", "w", "s", Path::new("/bin/sh")).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["mcpServers"]["other"], json!({"command":"x"}));
        assert_eq!(v["extra"], json!([1, 2]));
        assert_eq!(
            v["mcpServers"]["agentserver"]["env"]["AGENTSERVER_URL"],
            "u"
        );
        assert_ne!(v["mcpServers"]["agentserver"]["command"], "old");
    }

    #[test]
    fn replaces_invalid_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MCP_CONFIG_FILE);
        for bad in ["not json", "[1,2]", r#"{"mcpServers": 5}"#] {
            std::fs::write(&path, bad).unwrap();
            inject_mcp_config(dir.path(), "u", "t", "w", "s", Path::new("/bin/sh")).unwrap();
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(
                v["mcpServers"]["agentserver"]["args"],
                json!(["mcp-server"])
            );
        }
    }

    #[test]
    fn error_does_not_leak_token() {
        let err = inject_mcp_config(
            Path::new("/nonexistent/dir"),
            "u",
            "SECRET-TOKEN",
            "w",
            "s",
            Path::new("/bin/sh"),
        )
        .unwrap_err();
        assert!(!format!("{err} {err:?}").contains("SECRET-TOKEN"));
    }
}
