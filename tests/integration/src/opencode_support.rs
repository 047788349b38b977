//! Support for the opencode tests and benchmark: the real `opencode` binary (installed by
//! `scripts/install-test-deps.sh`), run offline against the fake LLM with an isolated HOME
//! pre-seeded as `../shared/spec/real-clis.md` describes.
//!
//! The host's tests use it too (`host/tests/it/run_opencode.rs`, through a dev-dependency).

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentserver_backend_opencode::OpencodeConfig;
use tempfile::TempDir;

/// Overrides the binary's location.
pub const OPENCODE_BIN_ENV: &str = "AGENTSERVER_TEST_OPENCODE_BIN";

/// The real `opencode`; panics with the install instruction when it is missing, so tests that
/// need it fail instead of passing silently.
pub fn real_opencode() -> PathBuf {
    if let Some(path) = std::env::var_os(OPENCODE_BIN_ENV) {
        return PathBuf::from(path);
    }
    // The workspace root: the nearest directory above this package holding `Cargo.lock`.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").exists())
        .expect("the package lies inside the workspace");
    let path = root.join(".npm-clis/node_modules/.bin/opencode");
    assert!(
        path.exists(),
        "the real opencode CLI is missing at {}: run `bash scripts/install-test-deps.sh` \
         (CI does this in .ci/run) or set {OPENCODE_BIN_ENV}",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (released before returning).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Writes the files opencode would otherwise npm-install in the background.
pub fn seed_home(home: &Path) -> std::io::Result<()> {
    let dir = home.join(".config/opencode");
    std::fs::create_dir_all(dir.join("node_modules"))?;
    std::fs::write(
        dir.join("package.json"),
        r#"{"dependencies":{"@opencode-ai/plugin":"*"}}"#,
    )?;
    std::fs::write(
        dir.join("package-lock.json"),
        r#"{"lockfileVersion":3,"packages":{"":{"dependencies":{"@opencode-ai/plugin":"*"}}}}"#,
    )
}

/// opencode's provider config pointing at an OpenAI-compatible endpoint (`…/v1`).
pub fn provider_config(openai_base_url: &str) -> String {
    serde_json::json!({
        "provider": {"fake": {
            "npm": "@ai-sdk/openai-compatible",
            "options": {"baseURL": openai_base_url, "apiKey": "x"},
            "models": {"fake-model": {"tool_call": true, "limit": {"context": 100000, "output": 4096}}}
        }},
        "model": "fake/fake-model",
        "small_model": "fake/fake-model",
        "autoupdate": false,
        "share": "disabled"
    })
    .to_string()
}

/// The environment of real-clis.md for an opencode run offline: the private `home` and `tmp`,
/// the switches that keep it from fetching anything, and the fake LLM as its provider.
pub fn offline_env(home: &Path, tmp: &Path, openai_base_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME", home.display().to_string()),
        ("TMPDIR", tmp.display().to_string()),
        ("OPENCODE_DISABLE_MODELS_FETCH", "1".to_owned()),
        ("OPENCODE_DISABLE_AUTOUPDATE", "1".to_owned()),
        ("OPENCODE_DISABLE_DEFAULT_PLUGINS", "1".to_owned()),
        ("OPENCODE_DISABLE_LSP_DOWNLOAD", "1".to_owned()),
        ("OPENCODE_DISABLE_SHARE", "1".to_owned()),
        ("OPENCODE_CONFIG_CONTENT", provider_config(openai_base_url)),
    ]
}

/// A private HOME, TMPDIR and work directory for one opencode server.
#[derive(Debug)]
pub struct OpencodeEnv {
    /// Holds `home`, `tmp` and `work`.
    pub dir: TempDir,
    openai_base_url: String,
}

impl OpencodeEnv {
    /// A fresh environment whose opencode talks to the fake LLM at `openai_base_url`.
    pub fn new(openai_base_url: impl Into<String>) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        for sub in ["home", "tmp", "work"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        seed_home(&dir.path().join("home"))?;
        Ok(Self {
            dir,
            openai_base_url: openai_base_url.into(),
        })
    }

    /// The work directory (canonical).
    pub fn workdir(&self) -> PathBuf {
        let work = self.dir.path().join("work");
        std::fs::canonicalize(&work).unwrap_or(work)
    }

    /// A backend configuration running the real opencode here, offline, on `port`.
    pub fn config(&self, port: u16) -> OpencodeConfig {
        let mut config = OpencodeConfig {
            opencode_bin: real_opencode(),
            opencode_port: port,
            workdir: self.workdir(),
            clear_env: true,
            restart_backoff_initial: Duration::from_millis(200),
            restart_backoff_max: Duration::from_secs(2),
            ..OpencodeConfig::default()
        };
        for (k, v) in offline_env(
            &self.dir.path().join("home"),
            &self.dir.path().join("tmp"),
            &self.openai_base_url,
        ) {
            config = config.with_env(k, v);
        }
        config
    }
}
