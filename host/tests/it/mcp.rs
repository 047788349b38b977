//! `agentserver mcp-server` end to end: the real binary as a child process, driven by the
//! official Python MCP SDK (`tests/mcp_client.py`) or by raw JSON-RPC lines, against the mock
//! agentserver (spec §10.2, §14).

use std::process::Stdio;
use std::time::Duration;

use agentserver::mcp::{BridgeConfig, McpBridge};
use agentserver::secret::Secret;
use agentserver_mock::state::SandboxRecord;
use agentserver_mock::{MockConfig, MockServer};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_agentserver");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp_client.py");
const EXPECTED_MISSING: &str =
    "Error: AGENTSERVER_URL, AGENTSERVER_TOKEN, and AGENTSERVER_WORKSPACE_ID are required";

/// The environment `.mcp.json` gives the server for `me`.
fn env_for(url: &str, me: &SandboxRecord) -> Value {
    json!({
        "AGENTSERVER_URL": url,
        "AGENTSERVER_TOKEN": me.tunnel_token,
        "AGENTSERVER_WORKSPACE_ID": me.workspace_id,
        "AGENTSERVER_SANDBOX_ID": me.id,
    })
}

/// Runs the Python MCP client on `plan` (see `mcp_client.py`) and returns its report.
async fn python_client(plan: Value) -> Value {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new("python3")
            .arg(CLIENT)
            .arg(plan.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python MCP client finished within 30 s")
    .expect("python3 runs (install the test deps: scripts/install-test-deps.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'mcp'"),
        "the Python `mcp` package is missing: run scripts/install-test-deps.sh"
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("client report is not JSON ({e}): {stdout}\nstderr: {stderr}"))
}

fn session_plan(env: Value, calls: Value) -> Value {
    json!({"command": BIN, "args": ["mcp-server"], "env": env, "calls": calls})
}

fn result(report: &Value, i: usize) -> (bool, String) {
    let r = &report["results"][i];
    let texts = r["texts"].as_array().expect("texts");
    assert_eq!(texts.len(), 1, "one text content item: {r}");
    (
        r["is_error"].as_bool().unwrap(),
        texts[0].as_str().unwrap().to_owned(),
    )
}

/// `agentserver mcp-server` as Claude Code starts it for `me` (only the environment of
/// §10.2 and `PATH`), with stdin and stdout piped; stderr is the caller's to set.
fn mcp_server_for(mock: &MockServer, me: &SandboxRecord) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("mcp-server")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AGENTSERVER_URL", mock.url())
        .env("AGENTSERVER_TOKEN", &me.proxy_token)
        .env("AGENTSERVER_WORKSPACE_ID", &me.workspace_id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A workspace with `me` (filtered out of the listing), a helper with a full card, and an
/// agent in another workspace (never listed).
async fn workspace() -> (MockServer, SandboxRecord, SandboxRecord) {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let state = mock.state();
    let me = state.add_agent("Me", "claudecode", "myself", json!({}));
    let helper = state.add_agent(
        "Helper",
        "claudecode",
        "helps",
        json!({
            "tags": ["go", "gpu"],
            "languages": [{"name": "go", "version": "1.22"}],
            "tools": [{"name": "git", "version": "2.43"}],
            "hardware": {"cpu_summary": "8 cores", "memory_gb": 31.9, "disk_gb": 250,
                         "has_gpu": true, "gpu_info": "1x H100"}
        }),
    );
    let other = state.add_sandbox_in("other-workspace", "Stranger", "claudecode");
    state.add_agent_card(agentserver_mock::state::AgentCardRecord {
        agent_id: other.id.clone(),
        workspace_id: other.workspace_id.clone(),
        display_name: "Stranger".into(),
        description: String::new(),
        agent_type: "claudecode".into(),
        status: "available".into(),
        card: json!({}),
        version: 1,
    });
    (mock, me, helper)
}

#[tokio::test]
async fn python_client_initializes_lists_and_calls_every_tool() {
    let (mock, me, helper) = workspace().await;
    let state = mock.state();
    // A completed and a failed task to check, and two unread messages for me.
    let done = state.create_task(&helper.id, "earlier work");
    let failed = state.create_task(&helper.id, "doomed work");
    let http = reqwest::Client::new();
    for (id, body) in [
        (&done, json!({"status": "completed", "result": "all done"})),
        (
            &failed,
            json!({"status": "failed", "failure_reason": "boom"}),
        ),
    ] {
        let resp = http
            .put(format!("{}/api/agent/tasks/{id}/status", mock.url()))
            .bearer_auth(&helper.proxy_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    state.send_mail(&helper.id, &me.id, "first", "text");
    state.send_mail(&helper.id, &me.id, "second", "note");

    let report = python_client(session_plan(
        env_for(&mock.url(), &me),
        json!([
            {"name": "discover_agents", "arguments": {"skill": "ignored"}},
            {"name": "delegate_task", "arguments": {"target_id": helper.id, "prompt": "review it", "skill": "code-review"}},
            {"name": "check_task", "arguments": {"task_id": done, "include_output": true}},
            {"name": "check_task", "arguments": {"task_id": failed}},
            {"name": "send_message", "arguments": {"to": helper.id, "text": "hello"}},
            {"name": "read_inbox", "arguments": {"limit": 1}},
            {"name": "read_inbox", "arguments": {}},
            {"name": "read_inbox", "arguments": {}},
        ]),
    ))
    .await;
    assert!(report.get("error").is_none(), "{report}");

    // initialize: the client's (newest handshake) version is echoed, upstream's identity.
    assert_eq!(report["protocol_version"], "2025-11-25");
    assert_eq!(
        report["server_info"],
        json!({"name": "agentserver-mcp-bridge", "version": "0.1.0"})
    );
    assert!(report["capabilities"]["tools"].is_object(), "{report}");

    // tools/list: five tools; the delegate_task description lists the helper, not me, not
    // the other workspace.
    let tools = report["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "discover_agents",
            "delegate_task",
            "check_task",
            "send_message",
            "read_inbox"
        ]
    );
    let delegate = &tools[1];
    assert_eq!(
        delegate["description"].as_str().unwrap(),
        format!(
            "Delegate a task to another agent in your workspace. The target agent will execute \
             the task and stream results back.\n\nAvailable agents in this workspace:\n- Helper \
             ({}): go 1.22, git [go, gpu] — available\n  Hardware: 8 cores / 31GB RAM / 250GB \
             disk / 1x H100\n",
            helper.id
        )
    );
    assert_eq!(
        delegate["inputSchema"]["required"],
        json!(["target_id", "prompt"])
    );
    assert_eq!(tools[0]["annotations"]["readOnlyHint"], true);
    assert_eq!(tools[2]["annotations"]["readOnlyHint"], true);
    assert_eq!(tools[4]["annotations"]["readOnlyHint"], false);

    // discover_agents: the raw body (self included, as the server sends it).
    let (is_error, text) = result(&report, 0);
    assert!(!is_error);
    let listed: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(listed.len(), 2);
    assert!(text.contains(&helper.id) && text.contains(&me.id));

    // delegate_task: upstream's text; the task carries me as requester and the skill.
    let (is_error, text) = result(&report, 1);
    assert!(!is_error, "{text}");
    let task = state
        .tasks()
        .into_iter()
        .find(|t| t.prompt == "review it")
        .expect("task created");
    assert_eq!(task.requester_id.as_deref(), Some(me.id.as_str()));
    assert_eq!(task.skill.as_deref(), Some("code-review"));
    assert_eq!(
        text,
        format!(
            "Task delegated successfully.\n\nTask ID: {}\nSession ID: {}\nStatus: pending\n\n\
             Use check_task with task_id to monitor progress.",
            task.id,
            task.session_id.clone().unwrap_or_default()
        )
    );
    let posted = state.requests_to("POST", "/api/agent/tasks");
    let body = posted.last().unwrap().json().unwrap();
    assert_eq!(body["requester_id"], json!(me.id));
    assert_eq!(
        posted.last().unwrap().header("authorization"),
        Some(format!("Bearer {}", me.tunnel_token).as_str())
    );

    // check_task.
    assert_eq!(
        result(&report, 2),
        (
            false,
            format!("Task {done}: completed\n\nResult:\nall done")
        )
    );
    let gets = state.requests_to("GET", &format!("/api/agent/tasks/{done}"));
    assert_eq!(
        gets[0].query_param("include_output").as_deref(),
        Some("true")
    );
    assert_eq!(
        result(&report, 3),
        (
            false,
            format!("Task {failed}: failed\n\nFailure reason: boom")
        )
    );
    let gets = state.requests_to("GET", &format!("/api/agent/tasks/{failed}"));
    assert_eq!(gets[0].query_param("include_output"), None);

    // send_message: default msg_type `text`.
    let (is_error, text) = result(&report, 4);
    assert!(!is_error, "{text}");
    let sent = state.inbox_of(&helper.id);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].text.as_str(), sent[0].msg_type.as_str()),
        ("hello", "text")
    );
    assert_eq!(text, format!("Message sent (ID: {})", sent[0].id));

    // read_inbox: limit passed on; raw arrays; then the empty text.
    let (is_error, text) = result(&report, 5);
    assert!(!is_error);
    let first: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["text"], "first");
    let (_, text) = result(&report, 6);
    let second: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!((second.len(), &second[0]["msg_type"]), (1, &json!("note")));
    assert_eq!(
        result(&report, 7),
        (false, "No new messages in your inbox.".into())
    );
    let inbox = state.requests_to("GET", "/api/agent/mailbox/inbox");
    assert_eq!(inbox[0].query_param("limit").as_deref(), Some("1"));
    assert_eq!(inbox[1].query_param("limit"), None);
}

#[tokio::test]
async fn http_errors_from_the_server_are_is_error_results() {
    let (mock, me, helper) = workspace().await;
    let state = mock.state();
    let report = python_client(session_plan(
        env_for(&mock.url(), &me),
        json!([
            // Unknown ids: the server's 404s.
            {"name": "delegate_task", "arguments": {"target_id": "no-such-agent", "prompt": "x"}},
            {"name": "check_task", "arguments": {"task_id": "task_unknown"}},
            {"name": "send_message", "arguments": {"to": "no-such-agent", "text": "x"}},
            // Missing required fields are the server's to reject (400), as upstream.
            {"name": "delegate_task", "arguments": {"target_id": helper.id}},
            // Wrongly typed arguments never reach the server.
            {"name": "check_task", "arguments": {"task_id": 7}},
        ]),
    ))
    .await;
    assert!(report.get("error").is_none(), "{report}");
    assert_eq!(
        result(&report, 0),
        (
            true,
            "Failed to delegate task: HTTP 404: target agent not found\n".into()
        )
    );
    assert_eq!(
        result(&report, 1),
        (
            true,
            "Failed to check task: HTTP 404: task not found\n".into()
        )
    );
    assert_eq!(
        result(&report, 2),
        (
            true,
            "Failed to send message: HTTP 404: target agent not found\n".into()
        )
    );
    assert_eq!(
        result(&report, 3),
        (
            true,
            "Failed to delegate task: HTTP 400: target_id and prompt required\n".into()
        )
    );
    let (is_error, text) = result(&report, 4);
    assert!(
        is_error && text.starts_with("Invalid arguments: "),
        "{text}"
    );
    assert_eq!(state.requests_to("GET", "/api/agent/tasks/7").len(), 0);

    // Every endpoint failing (a proxy in trouble): still answers, listing falls back.
    state.fail_with(503, Duration::from_secs(120));
    let report = python_client(session_plan(
        env_for(&mock.url(), &me),
        json!([
            {"name": "discover_agents", "arguments": {}},
            {"name": "delegate_task", "arguments": {"target_id": helper.id, "prompt": "x"}},
            {"name": "check_task", "arguments": {"task_id": "t"}},
            {"name": "send_message", "arguments": {"to": helper.id, "text": "x"}},
            {"name": "read_inbox", "arguments": {}},
        ]),
    ))
    .await;
    assert!(report.get("error").is_none(), "{report}");
    for (i, verb) in [
        "discover agents",
        "delegate task",
        "check task",
        "send message",
        "read inbox",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(
            result(&report, i),
            (
                true,
                format!("Failed to {verb}: HTTP 503: Service Unavailable\n")
            )
        );
    }
    assert!(
        report["tools"][1]["description"]
            .as_str()
            .unwrap()
            .ends_with("\n\nNo other agents are currently available in this workspace."),
        "{report}"
    );
}

#[tokio::test]
async fn unreachable_server_is_an_is_error_result() {
    // A port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let report = python_client(session_plan(
        json!({
            "AGENTSERVER_URL": format!("http://127.0.0.1:{port}"),
            "AGENTSERVER_TOKEN": "t",
            "AGENTSERVER_WORKSPACE_ID": "w",
        }),
        json!([{"name": "read_inbox", "arguments": {}}]),
    ))
    .await;
    assert!(report.get("error").is_none(), "{report}");
    let (is_error, text) = result(&report, 0);
    assert!(is_error);
    assert!(text.starts_with("Failed to read inbox: "), "{text}");
    assert!(text.contains("/api/agent/mailbox/inbox"), "{text}");
}

#[tokio::test]
async fn a_missing_variable_exits_1_with_the_upstream_message() {
    let full = [
        ("AGENTSERVER_URL", "http://127.0.0.1:9"),
        ("AGENTSERVER_TOKEN", "t"),
        ("AGENTSERVER_WORKSPACE_ID", "w"),
    ];
    for missing in [
        "AGENTSERVER_URL",
        "AGENTSERVER_TOKEN",
        "AGENTSERVER_WORKSPACE_ID",
    ] {
        let mut cmd = Command::new(BIN);
        cmd.arg("mcp-server")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null());
        for (k, v) in full.iter().filter(|(k, _)| *k != missing) {
            cmd.env(k, v);
        }
        let out = tokio::time::timeout(Duration::from_secs(15), cmd.output())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "missing {missing}");
        assert!(out.stdout.is_empty(), "stdout must stay clean");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end(), EXPECTED_MISSING, "missing {missing}");
    }

    // And a real MCP client gets no session out of it.
    let report = python_client(json!({
        "command": BIN, "args": ["mcp-server"], "env": {"AGENTSERVER_URL": "http://x"},
        "timeout": 10,
    }))
    .await;
    assert!(report.get("error").is_some(), "{report}");
}

/// Raw JSON-RPC lines: exact initialize answer for an older client, protocol errors, and what
/// gets no answer at all.
#[tokio::test]
async fn raw_json_rpc_over_stdio() {
    let (mock, me, _helper) = workspace().await;
    let mut child = mcp_server_for(&mock, &me)
        // Most verbose logging: the token must still never show up.
        .arg("-vv")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain stderr while the server runs (verbose logs could fill the pipe).
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr_pipe, &mut text).await;
        text
    });
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .expect("a reply within 15 s")
            .unwrap()
            .expect("stdout open");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line not JSON ({e}): {line}"))
    };
    let input = [
        "this is not json".to_owned(),
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2024-11-05", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}})
        .to_string(),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string(),
        json!({"jsonrpc": "2.0", "method": "no/such/notification"}).to_string(),
        json!({"jsonrpc": "2.0", "id": 2, "method": "no/such/method", "params": {}}).to_string(),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": "no_such_tool", "arguments": {}}})
        .to_string(),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
               "params": {"name": "read_inbox"}})
        .to_string(),
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"arguments": {}}})
            .to_string(),
    ];
    for line in &input {
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
    }
    stdin.flush().await.unwrap();

    let init = next().await;
    assert_eq!(
        init,
        json!({"jsonrpc": "2.0", "id": 1, "result": {
            "protocolVersion": "2024-11-05",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "agentserver-mcp-bridge", "version": "0.1.0"}}})
    );
    let mut rest = Vec::new();
    for _ in 0..4 {
        rest.push(next().await);
    }
    rest.sort_by_key(|v| v["id"].as_i64());
    assert_eq!(rest[0]["id"], 2);
    assert_eq!(rest[0]["error"]["code"], -32601);
    assert_eq!(
        rest[0]["error"]["message"],
        "method not found: no/such/method"
    );
    assert_eq!(rest[1]["id"], 3);
    assert_eq!(rest[1]["error"]["code"], -32602);
    // A success result has no isError (upstream sends it only when true).
    assert_eq!(
        rest[2]["result"],
        json!({"content": [{"type": "text", "text": "No new messages in your inbox."}]})
    );
    assert_eq!(rest[3]["id"], 5);
    assert_eq!(rest[3]["error"]["code"], -32602);
    assert_eq!(rest[3]["error"]["message"], "invalid params");

    // stdin EOF ends the server cleanly.
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits after stdin EOF")
        .unwrap();
    assert!(status.success(), "{status}");
    let stderr = stderr_task.await.unwrap();
    assert!(
        stderr.contains("mcp: serving on stdio"),
        "logs go to stderr: {stderr}"
    );
    assert!(
        !stderr.contains(&me.proxy_token),
        "the token leaked into the logs"
    );
}

/// The listing behind `delegate_task` follows the server: refreshed on its period, self left
/// out, and the last good listing kept when a refresh fails.
#[tokio::test]
async fn agent_listing_refreshes_periodically() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let state = mock.state();
    let me = state.add_agent("Me", "claudecode", "", json!({}));
    let bridge = McpBridge::new(&BridgeConfig {
        server_url: mock.url(),
        token: Secret::new(me.proxy_token.clone()),
        workspace_id: me.workspace_id.clone(),
        sandbox_id: Some(me.id.clone()),
    });
    let listing = bridge.listing().clone();
    let refresher = bridge.start_listing(Duration::from_millis(100));
    listing.wait_first_fetch(Duration::from_secs(10)).await;
    assert!(
        listing
            .delegate_description()
            .ends_with("No other agents are currently available in this workspace.")
    );

    let helper = state.add_agent("Helper", "claudecode", "does stuff", json!({}));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listing.agents().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listing never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listing.agents().len(), 1);
    assert!(listing.delegate_description().ends_with(&format!(
        "- Helper ({}): does stuff — available\n",
        helper.id
    )));

    // A failing refresh keeps the last good listing.
    state.fail_with(500, Duration::from_secs(60));
    let before = state
        .requests_to("GET", "/api/agent/discovery/agents")
        .len();
    assert!(
        state
            .wait_until(Duration::from_secs(10), |s| s
                .requests_to("GET", "/api/agent/discovery/agents")
                .len()
                >= before + 2)
            .await
    );
    assert_eq!(listing.agents().len(), 1);
    refresher.abort();
}

/// The `.mcp.json` the claudecode backend writes starts this server correctly: the test reads
/// the file and launches exactly the command, args and env it names (as Claude Code does).
#[tokio::test]
async fn mcp_json_from_the_claudecode_backend_launches_the_server() {
    let (mock, me, helper) = workspace().await;
    let workdir = tempfile::tempdir().unwrap();
    let path = agentserver_backend_claudecode::inject_mcp_config(
        workdir.path(),
        &mock.url(),
        &me.tunnel_token,
        &me.workspace_id,
        &me.id,
        std::path::Path::new(BIN),
    )
    .unwrap();
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let entry = &file["mcpServers"]["agentserver"];
    let report = python_client(json!({
        "command": entry["command"],
        "args": entry["args"],
        "env": entry["env"],
        "calls": [{"name": "discover_agents", "arguments": {}}],
    }))
    .await;
    assert!(report.get("error").is_none(), "{report}");
    assert_eq!(report["server_info"]["name"], "agentserver-mcp-bridge");
    assert_eq!(report["tools"].as_array().unwrap().len(), 5);
    let description = report["tools"][1]["description"].as_str().unwrap();
    assert!(description.contains(&helper.id), "{description}");
    assert!(
        !description.contains(&me.id),
        "self is filtered out: {description}"
    );
    // The tunnel token from the file authenticates the tool calls.
    let (is_error, text) = result(&report, 0);
    assert!(!is_error, "{text}");
    assert!(text.contains(&helper.id));
}

/// A client asking for a protocol version this server does not know gets the newest one it
/// speaks (MCP version negotiation), not an error and not upstream's fixed `2024-11-05`.
#[tokio::test]
async fn an_unknown_protocol_version_is_answered_with_the_newest_supported() {
    let (mock, me, _helper) = workspace().await;
    let mut child = mcp_server_for(&mock, &me)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "1999-01-01", "capabilities": {},
        "clientInfo": {"name": "time-traveller", "version": "0"}}});
    stdin
        .write_all(format!("{init}\n").as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("a reply within 15 s")
        .unwrap()
        .expect("stdout open");
    let reply: Value = serde_json::from_str(&line).unwrap();
    let newest =
        serde_json::to_value(agentserver::mcp::server::SUPPORTED_PROTOCOL_VERSIONS.last()).unwrap();
    assert_eq!(reply["id"], 1, "{reply}");
    assert_eq!(reply["result"]["protocolVersion"], newest, "{reply}");
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits on stdin EOF")
        .unwrap();
    assert!(status.success());
}
