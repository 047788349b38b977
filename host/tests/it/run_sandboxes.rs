//! Several sandboxes in one host (`agentserver run --config FILE`), with the real CLIs: a
//! `claudecode` sandbox running the real `claude` and an `opencode` sandbox running the real
//! `opencode serve`, both against the fake LLM and the mock server. Tasks to each reach the
//! right backend, both tunnels hold, each status is reported once; a usage limit with a reset
//! time (the fake LLM's 429, which `claude` logged in with an OAuth token turns into a
//! `rate_limit_event`) pauses only the claudecode sandbox until the reset while the opencode
//! one keeps taking tasks; a restart with the same config resumes the same two sandboxes; a
//! sandbox whose backend cannot start is reported by name and retried while the other works.

use crate::support::run as support_run;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentserver_integration::claude_support::{self, real_claude};
use agentserver_integration::opencode_support::{offline_env, real_opencode, seed_home};
use agentserver_mock::fake_llm::{DEFAULT_TEXT, FAKE_RATE_LIMIT, FakeLlm};
use agentserver_mock::{MockConfig, MockServer, MockState};
use serde_json::Value;
use support_run::{KillOnDrop, drain, sigterm, wait_exit};

const LIMIT: Duration = Duration::from_secs(60);

/// Polls the mock received for `sandbox_id`.
fn polls_of(mock: &MockState, sandbox_id: &str) -> usize {
    mock.requests_to("GET", "/api/agent/tasks/poll")
        .iter()
        .filter(|r| r.query_param("sandbox_id").as_deref() == Some(sandbox_id))
        .count()
}

struct Host {
    child: KillOnDrop,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Host {
    fn start(config: &Path, server: &str, env: &[(&'static str, String)], state: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentserver"))
            .args(["run", "--skip-open-browser", "--poll-interval", "0.2"])
            .arg("--config")
            .arg(config)
            .arg("--server")
            .arg(server)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("AGENTSERVER_HOME", state)
            .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
            .env("RUST_LOG", "warn,agentserver=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = drain(child.stdout.take().unwrap());
        let stderr = drain(child.stderr.take().unwrap());
        Self {
            child: KillOnDrop(child),
            stdout,
            stderr,
        }
    }

    fn logs(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    async fn stop(mut self) {
        sigterm(self.child.0.id());
        let status = wait_exit(&mut self.child.0, LIMIT).await;
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "exit after SIGTERM\n{}",
            self.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claudecode_and_an_opencode_sandbox_in_one_host_each_get_their_tasks() {
    let claude = real_claude();
    let opencode = real_opencode();
    let llm = FakeLlm::start().await.expect("fake LLM");
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let (state, home, tmp) = (root.join("state"), root.join("home"), root.join("tmp"));
    for d in [&home, &tmp, &root.join("web"), &root.join("api")] {
        std::fs::create_dir_all(d).unwrap();
    }
    seed_home(&home).unwrap();
    let mut env = offline_env(&home, &tmp, &llm.openai_base_url());
    env.extend(claude_support::offline_flags(&llm.url()));
    // Logged in with a (fake) OAuth token, claude reads the usage-limit headers of a 429.
    env.push(("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-fake".to_owned()));
    let config = root.join("agentserver.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[host]
max_concurrent_tasks = 2

[[sandbox]]
name = "web"
backend = "claudecode"
work_dir = "web"
claude_bin = "{}"

[[sandbox]]
name = "api"
backend = "opencode"
work_dir = "api"
opencode_bin = "{}"
"#,
            claude.display(),
            opencode.display()
        ),
    )
    .unwrap();

    let host = Host::start(&config, &server.url(), &env, &state);
    assert!(
        mock.wait_until(LIMIT, |s| s.sandboxes().len() == 2).await,
        "two sandboxes registered\n{}",
        host.logs()
    );
    let sandboxes = mock.sandboxes();
    let by_name = |name: &str| {
        sandboxes
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no sandbox named {name}: {sandboxes:?}"))
            .clone()
    };
    let (web, api) = (by_name("web"), by_name("api"));
    assert_eq!(web.sandbox_type, "claudecode");
    assert_eq!(api.sandbox_type, "opencode");
    for sb in [&web, &api] {
        assert!(
            mock.wait_until(LIMIT, |s| s
                .sandbox(&sb.id)
                .is_some_and(|x| x.agent_info.is_some()))
                .await,
            "no agent info from {}\n{}",
            sb.name,
            host.logs()
        );
    }
    let info = |id: &str| mock.sandbox(id).unwrap().agent_info.unwrap();
    assert_eq!(
        info(&web.id)["workdir"],
        root.join("web").display().to_string()
    );
    assert_eq!(
        info(&api.id)["workdir"],
        root.join("api").display().to_string()
    );

    // A task to each reaches its own backend.
    let to_web = mock.create_task(&web.id, "Say hello");
    let to_api = mock.create_task(&api.id, "Say hello");
    for id in [&to_web, &to_api] {
        let record = mock
            .wait_task_final(id, LIMIT)
            .await
            .unwrap_or_else(|| panic!("{id} got no final status\n{}", host.logs()));
        assert_eq!(record.status, "completed", "{record:?}\n{}", host.logs());
        assert_eq!(record.final_updates().len(), 1, "{record:?}");
        assert_eq!(record.result, Some(Value::from(DEFAULT_TEXT)));
    }
    let init_of = |task: &str| -> Value {
        let sid = mock
            .task(task)
            .unwrap()
            .session_id
            .expect("a bridge session");
        mock.bridge_worker_events(&sid)
            .into_iter()
            .find(|e| e["type"] == "system" && e["subtype"] == "init")
            .expect("a system/init event")
    };
    assert!(
        init_of(&to_web)["claude_code_version"].is_string(),
        "the web task ran in claude: {}",
        init_of(&to_web)
    );
    assert_eq!(init_of(&to_api)["backend"], "opencode");
    assert_eq!(
        init_of(&to_web)["cwd"],
        root.join("web").display().to_string()
    );

    // A usage limit that resets in 8 s: the web task fails saying when; the web sandbox
    // stops polling until then, the api sandbox keeps taking tasks.
    let limited = mock.create_task(&web.id, &format!("{FAKE_RATE_LIMIT}8 please"));
    let record = mock
        .wait_task_final(&limited, LIMIT)
        .await
        .unwrap_or_else(|| panic!("the limited task got no final status\n{}", host.logs()));
    let paused_at = Instant::now();
    assert_eq!(record.status, "failed", "{record:?}");
    let reason = record.failure_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("usage limit reached (five_hour); resets at ")
            && reason.contains("this sandbox takes no task until"),
        "{reason}"
    );
    let polls_then = polls_of(&mock, &web.id);
    let waiting = mock.create_task(&web.id, "Say hello");
    let meanwhile = mock.create_task(&api.id, "Say hello");
    let record = mock
        .wait_task_final(&meanwhile, LIMIT)
        .await
        .unwrap_or_else(|| panic!("the api task got no final status\n{}", host.logs()));
    assert_eq!(record.status, "completed", "{record:?}");
    assert!(
        mock.wait_until(LIMIT, |s| s
            .sandbox(&web.id)
            .and_then(|x| x.agent_info)
            .is_some_and(|i| i["usage_limit"]["paused_until"].is_string()))
            .await,
        "the pause shows in the web sandbox's agent info: {}",
        info(&web.id)
    );
    assert_eq!(info(&web.id)["usage_limit"]["kind"], "five_hour");
    assert!(
        paused_at.elapsed() < Duration::from_secs(7),
        "the checks above took too long to prove anything"
    );
    assert_eq!(
        polls_of(&mock, &web.id),
        polls_then,
        "the paused sandbox polled"
    );
    assert!(mock.task(&waiting).unwrap().assigned_at.is_none());
    // After the reset the waiting task runs.
    let record = mock
        .wait_task_final(&waiting, LIMIT)
        .await
        .unwrap_or_else(|| panic!("the waiting task got no final status\n{}", host.logs()));
    assert_eq!(record.status, "completed", "{record:?}");
    assert!(
        paused_at.elapsed() >= Duration::from_secs(7),
        "it waited for the reset: {:?}",
        paused_at.elapsed()
    );
    let logs = host.logs();
    assert!(
        logs.contains("sandbox{name=web}") && logs.contains("usage limit reached"),
        "the log names the sandbox and the pause\n{logs}"
    );
    host.stop().await;

    // The same config again: the same two sandboxes, no new registration.
    let host = Host::start(&config, &server.url(), &env, &state);
    let again = mock.create_task(&api.id, "Say hello");
    let record = mock
        .wait_task_final(&again, LIMIT)
        .await
        .unwrap_or_else(|| panic!("no final status after the restart\n{}", host.logs()));
    assert_eq!(record.status, "completed", "{record:?}");
    assert_eq!(mock.sandboxes().len(), 2, "{:?}", mock.sandboxes());
    assert!(host.logs().contains("Resumed sandbox"), "{}", host.logs());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_whose_backend_cannot_start_is_retried_while_the_other_works() {
    let claude = real_claude();
    let llm = FakeLlm::start().await.expect("fake LLM");
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let (state, home, tmp) = (root.join("state"), root.join("home"), root.join("tmp"));
    for d in [&home, &tmp, &root.join("web"), &root.join("agent")] {
        std::fs::create_dir_all(d).unwrap();
    }
    let env = claude_support::offline_env(&home, &tmp, &llm.url());
    let missing_agent = root.join("no-such-agent");
    let config = root.join("agentserver.toml");
    std::fs::write(
        &config,
        format!(
            "[[sandbox]]\nname = \"web\"\nwork_dir = \"web\"\nclaude_bin = \"{}\"\n\n\
             [[sandbox]]\nname = \"broken\"\nbackend = \"acp\"\nwork_dir = \"agent\"\nacp_command = \"{}\"\n",
            claude.display(),
            missing_agent.display()
        ),
    )
    .unwrap();
    let host = Host::start(&config, &server.url(), &env, &state);
    assert!(
        mock.wait_until(LIMIT, |s| s.sandboxes().len() == 2).await,
        "two sandboxes registered\n{}",
        host.logs()
    );
    let web = mock
        .sandboxes()
        .into_iter()
        .find(|s| s.name == "web")
        .expect("the web sandbox");
    let task = mock.create_task(&web.id, "Say hello");
    let record = mock
        .wait_task_final(&task, LIMIT)
        .await
        .unwrap_or_else(|| panic!("no final status\n{}", host.logs()));
    assert_eq!(record.status, "completed", "{record:?}");
    // The broken sandbox is reported, by name, and tried again (the first retry comes after
    // 5 s and some jitter).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = host.logs();
        let reports = logs
            .lines()
            .filter(|l| {
                l.contains("sandbox{name=broken}")
                    && l.contains("the sandbox's backend cannot start")
            })
            .count();
        if reports >= 2 {
            assert!(logs.contains("attempt=2"), "{logs}");
            break;
        }
        assert!(Instant::now() < deadline, "no retry was reported\n{logs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    host.stop().await;
}
