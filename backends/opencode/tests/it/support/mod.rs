//! Helpers shared by the opencode backend's integration tests: the real `opencode` binary, an
//! isolated HOME with the pre-seeded config of `real-clis.md`, the fake LLM as the provider.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentserver_backend_opencode::{OpencodeBackend, OpencodeConfig};
/// Waiting until a pid is no live process: the process owner's.
pub use agentserver_common::process::wait_gone;
use agentserver_mock::fake_llm::{FakeLlm, FakeLlmHandle};
use agentserver_plugin_api::{CancellationToken, EventSink, Task, TaskOutcome};
use serde_json::Value;
use tempfile::TempDir;

/// Generous bound around every await that could hang.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Overrides the binary's location.
pub const OPENCODE_BIN_ENV: &str = "AGENTSERVER_TEST_OPENCODE_BIN";

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The real `opencode` (pinned by scripts/install-test-deps.sh), or a failing test that says
/// how to install it.
pub fn real_opencode() -> PathBuf {
    if let Some(path) = std::env::var_os(OPENCODE_BIN_ENV) {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.npm-clis/node_modules/.bin/opencode");
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

/// Writes the files opencode otherwise npm-installs in the background (real-clis.md).
pub fn seed_home(home: &Path) {
    let dir = home.join(".config/opencode");
    std::fs::create_dir_all(dir.join("node_modules")).unwrap();
    std::fs::write(
        dir.join("package.json"),
        r#"{"dependencies":{"@opencode-ai/plugin":"*"}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("package-lock.json"),
        r#"{"lockfileVersion":3,"packages":{"":{"dependencies":{"@opencode-ai/plugin":"*"}}}}"#,
    )
    .unwrap();
}

/// The provider config pointing opencode at the fake LLM.
pub fn provider_config(llm: &FakeLlmHandle) -> String {
    serde_json::json!({
        "provider": {"fake": {
            "npm": "@ai-sdk/openai-compatible",
            "options": {"baseURL": llm.openai_base_url(), "apiKey": "x"},
            "models": {"fake-model": {"tool_call": true, "limit": {"context": 100000, "output": 4096}}}
        }},
        "model": "fake/fake-model",
        "small_model": "fake/fake-model",
        "autoupdate": false,
        "share": "disabled"
    })
    .to_string()
}

/// The fake LLM, a private HOME/TMPDIR and a work directory.
pub struct Env {
    /// The fake LLM.
    pub llm: FakeLlmHandle,
    /// Holds `home`, `tmp` and `work`.
    pub dir: TempDir,
}

impl Env {
    /// A fresh environment.
    pub async fn new() -> Self {
        init_tracing();
        let llm = FakeLlm::start().await.expect("fake LLM");
        let dir = tempfile::tempdir().unwrap();
        for sub in ["home", "tmp", "work"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        seed_home(&dir.path().join("home"));
        Self { llm, dir }
    }

    /// The work directory (canonical).
    pub fn workdir(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path().join("work")).unwrap()
    }

    /// A backend configuration running the real opencode here, offline, on `port`.
    pub fn config(&self, port: u16) -> OpencodeConfig {
        let home = self.dir.path().join("home");
        let mut config = OpencodeConfig {
            opencode_bin: real_opencode(),
            opencode_port: port,
            workdir: self.workdir(),
            clear_env: true,
            restart_backoff_initial: Duration::from_millis(200),
            restart_backoff_max: Duration::from_secs(2),
            ..OpencodeConfig::default()
        };
        for (k, v) in [
            ("PATH", "/usr/local/bin:/usr/bin:/bin".to_owned()),
            ("HOME", home.display().to_string()),
            ("TMPDIR", self.dir.path().join("tmp").display().to_string()),
            ("OPENCODE_DISABLE_MODELS_FETCH", "1".to_owned()),
            ("OPENCODE_DISABLE_AUTOUPDATE", "1".to_owned()),
            ("OPENCODE_DISABLE_DEFAULT_PLUGINS", "1".to_owned()),
            ("OPENCODE_DISABLE_LSP_DOWNLOAD", "1".to_owned()),
            ("OPENCODE_DISABLE_SHARE", "1".to_owned()),
            ("OPENCODE_CONFIG_CONTENT", provider_config(&self.llm)),
        ] {
            config = config.with_env(k, v);
        }
        config
    }

    /// A task with this prompt in the work directory.
    pub fn task(&self, prompt: &str) -> Task {
        Task {
            task_id: format!("task_{}", uuid_like()),
            prompt: prompt.to_owned(),
            workdir: self.workdir().display().to_string(),
            ..Task::default()
        }
    }
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// A finished task: its outcome and every event, parsed.
pub struct Finished {
    /// The outcome.
    pub outcome: TaskOutcome,
    /// The events, in order.
    pub events: Vec<Value>,
}

impl Finished {
    /// `type` (+ `/subtype`) of each event.
    pub fn kinds(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|v| {
                let t = v["type"].as_str().unwrap_or("?").to_owned();
                match v["subtype"].as_str() {
                    Some(s) => format!("{t}/{s}"),
                    None => t,
                }
            })
            .collect()
    }

    /// Index of the first event matching `pred`, or a panic naming `what`.
    pub fn find(&self, what: &str, pred: impl Fn(&Value) -> bool) -> usize {
        self.events
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("no {what} in {:?}", self.kinds()))
    }
}

/// Runs a task to its end (bounded), collecting its events.
pub async fn run(backend: &OpencodeBackend, task: Task, cancel: CancellationToken) -> Finished {
    let (sink, mut rx) = EventSink::channel(1024);
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(ev) = rx.recv().await {
            events.push(serde_json::from_str(ev.as_json()).expect("events are JSON"));
        }
        events
    });
    let outcome = tokio::time::timeout(LIMIT, backend.run(task, sink, cancel))
        .await
        .expect("the task ended in time");
    let events = collector.await.expect("collector");
    Finished { outcome, events }
}
