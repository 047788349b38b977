//! Support for the tests and benchmarks that run the real `claude` CLI (installed by
//! `scripts/install-test-deps.sh`) offline against the fake LLM, with the environment
//! `../shared/spec/real-clis.md` describes. The host's tests use it too (through a
//! dev-dependency), like [`crate::opencode_support`].

use std::path::{Path, PathBuf};

/// Overrides the binary's location.
pub const CLAUDE_BIN_ENV: &str = "AGENTSERVER_TEST_CLAUDE_BIN";

/// The real `claude`; panics with the install instruction when it is missing, so tests that
/// need it fail instead of passing silently.
pub fn real_claude() -> PathBuf {
    if let Some(path) = std::env::var_os(CLAUDE_BIN_ENV) {
        return PathBuf::from(path);
    }
    // The workspace root: the nearest directory above this package holding `Cargo.lock`.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").exists())
        .expect("the package lies inside the workspace");
    let path = root.join(".npm-clis/node_modules/.bin/claude");
    assert!(
        path.exists(),
        "the real claude CLI is missing at {}: run `bash scripts/install-test-deps.sh` \
         (CI does this in .ci/run) or set {CLAUDE_BIN_ENV}",
        path.display()
    );
    path
}

/// What makes `claude` talk to the fake LLM at `base_url` and nothing else: the base URL, no
/// updater, telemetry, error reports or retries, and `IS_SANDBOX` (bypassPermissions as root).
/// No credentials: add `ANTHROPIC_API_KEY` or `CLAUDE_CODE_OAUTH_TOKEN`.
pub fn offline_flags(base_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ANTHROPIC_BASE_URL", base_url.to_owned()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_owned()),
        ("DISABLE_AUTOUPDATER", "1".to_owned()),
        ("DISABLE_TELEMETRY", "1".to_owned()),
        ("DISABLE_ERROR_REPORTING", "1".to_owned()),
        ("CLAUDE_CODE_MAX_RETRIES", "0".to_owned()),
        ("IS_SANDBOX", "1".to_owned()),
    ]
}

/// A whole environment for `claude` (start from an empty one): a plain `PATH`, its own `HOME`
/// and `TMPDIR`, a fake API key and [`offline_flags`].
pub fn offline_env(home: &Path, tmp: &Path, base_url: &str) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME", home.display().to_string()),
        ("TMPDIR", tmp.display().to_string()),
        ("ANTHROPIC_API_KEY", "sk-ant-fake".to_owned()),
    ];
    env.extend(offline_flags(base_url));
    env
}
