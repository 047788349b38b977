//! One running ACP agent process: spawned through the one process owner
//! (`agentserver_common::process`: its own process group, stopped with the [`StopLadder`]),
//! its stdio spoken as ACP v1 through the official SDK (`agent-client-protocol`) over a
//! [`Lines`] transport whose incoming side this module reads first: every line is classified
//! ([`crate::sessions::classify`]) so that `session/update` lines are routed raw to their
//! task, and a line that is not JSON ends the connection as a clear failure.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::v1::schema::{
    CancelNotification, ClientCapabilities, ContentBlock, CreateTerminalRequest,
    FileSystemCapabilities, Implementation, InitializeRequest, KillTerminalRequest,
    KillTerminalResponse, NewSessionRequest, PromptRequest, PromptResponse, ReadTextFileRequest,
    ReleaseTerminalRequest, ReleaseTerminalResponse, RequestPermissionRequest,
    TerminalOutputRequest, TextContent, WaitForTerminalExitRequest, WaitForTerminalExitResponse,
    WriteTextFileRequest,
};
use agent_client_protocol::{Agent as AgentRole, Client, Lines};
use agentserver_common::process::{self, Detach, Scope, StderrTail, StopLadder};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, watch};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

use crate::client::ClientSide;
use crate::config::AcpConfig;
use crate::sessions::{Line, Sessions, classify};
use crate::terminal::Terminals;

/// The longest line the agent may print (one JSON-RPC message).
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Bytes of the agent's stderr kept for failure reports.
const STDERR_TAIL_BYTES: usize = 64 * 1024;

/// Lines of that tail quoted in a failure reason.
const STDERR_LINES_QUOTED: usize = 10;

/// How much of a non-JSON line is quoted.
const QUOTED_LINE_CHARS: usize = 200;

/// Why an agent could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No command configured.
    #[error("no ACP agent command configured (--acp-command or --acp-preset)")]
    NoCommand,
    /// The process could not be spawned.
    #[error("cannot start the ACP agent `{command}`: {source}")]
    Spawn {
        /// The program.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A start-up step did not finish in time.
    #[error("the ACP agent did not answer `{step}` within {}s", .within.as_secs_f32())]
    Timeout {
        /// `start`, `initialize`.
        step: &'static str,
        /// The limit.
        within: Duration,
    },
    /// The agent broke during start-up (exited, printed non-JSON, answered an error).
    #[error("the ACP agent failed during `{step}`: {reason}")]
    Failed {
        /// The step.
        step: &'static str,
        /// Why.
        reason: String,
    },
}

/// The first failure of an agent process, and when it died.
#[derive(Default)]
struct Health {
    failure: Mutex<Option<String>>,
    /// Cancelled when the connection is unusable (exit, EOF, non-JSON, stopped).
    dead: CancellationToken,
}

impl Health {
    fn fail(&self, reason: impl Into<String>) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        if failure.is_none() {
            *failure = Some(reason.into());
        }
        drop(failure);
        self.dead.cancel();
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A running agent process and its ACP connection.
pub struct AgentProcess {
    conn: ConnectionTo<AgentRole>,
    /// The agent's `agentInfo` from `initialize`, when it sent one.
    pub info: Option<Implementation>,
    /// The agent's process id (the leader of its process group).
    pub pid: u32,
    /// Its sessions.
    pub sessions: Arc<Sessions>,
    /// The terminals it created.
    pub terminals: Arc<Terminals>,
    /// The shared scope the agent and everything it starts are tagged with.
    pub scope: Scope,
    /// Tasks running on it now; the last one to end sweeps the scope's orphans.
    tasks: AtomicUsize,
    health: Arc<Health>,
    stderr: Arc<Mutex<StderrTail>>,
    /// `Some(status text)` once the process is reaped.
    exited: watch::Receiver<Option<String>>,
    /// Ends the connection task.
    shutdown: CancellationToken,
}

impl AgentProcess {
    /// Spawns the agent and runs `initialize`.
    pub async fn start(config: &AcpConfig) -> Result<Arc<Self>, StartError> {
        let (program, args) = config.command.split_first().ok_or(StartError::NoCommand)?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(&config.workdir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if config.clear_env {
            cmd.env_clear();
        }
        cmd.envs(config.env.iter().map(|(k, v)| (k, v)));
        process::isolate(cmd.as_std_mut(), Detach::Group);
        let scope = Scope::shared("acp-agent");
        scope.apply(cmd.as_std_mut());
        let mut child = cmd.spawn().map_err(|source| StartError::Spawn {
            command: program.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(pid, command = ?config.command, "ACP agent started");
        let (Some(stdin), Some(stdout), Some(stderr_pipe)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three stdio streams are piped");
        };

        let stderr = Arc::new(Mutex::new(StderrTail::new(STDERR_TAIL_BYTES)));
        tokio::spawn(process::collect_tail(
            stderr_pipe,
            stderr.clone(),
            "ACP agent stderr",
        ));
        let health = Arc::new(Health::default());
        let terminals = Arc::new(Terminals::default());
        let (exited_tx, exited) = watch::channel(None);
        let ladder = StopLadder {
            signal: Signal::SIGTERM,
            grace: config.stop_grace,
            kill_wait: Duration::from_secs(5),
        };
        tokio::spawn(own_process(
            child,
            pid,
            ladder,
            exited_tx,
            health.clone(),
            terminals.clone(),
            scope.clone(),
        ));

        let sessions = Arc::new(Sessions::default());
        let client = Arc::new(ClientSide {
            sessions: sessions.clone(),
            policy: config.permissions,
            terminals: terminals.clone(),
        });
        let shutdown = CancellationToken::new();
        let (conn_tx, conn_rx) = oneshot::channel();
        tokio::spawn(run_connection(
            client,
            transport(stdin, stdout, sessions.clone(), health.clone()),
            conn_tx,
            shutdown.clone(),
            health.clone(),
        ));

        let conn = match tokio::time::timeout(config.start_timeout, conn_rx).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(_)) => Err(StartError::Failed {
                step: "start",
                reason: health.failure().unwrap_or_default(),
            }),
            Err(_) => Err(StartError::Timeout {
                step: "start",
                within: config.start_timeout,
            }),
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(err) => {
                shutdown.cancel();
                health.fail(err.to_string());
                let mut exited = exited;
                let _ = exited.wait_for(Option::is_some).await;
                return Err(err);
            }
        };
        let mut agent = Self {
            conn,
            info: None,
            pid,
            sessions,
            terminals,
            scope,
            tasks: AtomicUsize::new(0),
            health,
            stderr,
            exited,
            shutdown,
        };
        let request = InitializeRequest::new(ProtocolVersion::V1)
            .client_capabilities(
                ClientCapabilities::new()
                    .fs(FileSystemCapabilities::new()
                        .read_text_file(true)
                        .write_text_file(true))
                    .terminal(true),
            )
            .client_info(Implementation::new(
                "agentserver",
                env!("CARGO_PKG_VERSION"),
            ));
        let answer = agent
            .bounded(
                "initialize",
                config.initialize_timeout,
                agent.conn.send_request(request).block_task(),
            )
            .await;
        match answer {
            Ok(response) => {
                agent.info = response.agent_info;
                tracing::info!(pid, agent = ?agent.info, "ACP agent initialized");
                Ok(Arc::new(agent))
            }
            Err(err) => {
                agent.stop().await;
                Err(err)
            }
        }
    }

    /// Awaits `answer` within `within`, failing early (with the reason) when the agent dies.
    async fn bounded<T>(
        &self,
        step: &'static str,
        within: Duration,
        answer: impl Future<Output = Result<T, agent_client_protocol::Error>>,
    ) -> Result<T, StartError> {
        tokio::select! {
            biased;
            result = answer => match result {
                Ok(value) => Ok(value),
                Err(err) if self.is_dead() => Err(StartError::Failed {
                    step,
                    reason: self.failure_reason().await.unwrap_or_else(|| err.to_string()),
                }),
                Err(err) => Err(StartError::Failed { step, reason: describe(&err) }),
            },
            () = self.health.dead.cancelled() => Err(StartError::Failed {
                step,
                reason: self.failure_reason().await.unwrap_or_default(),
            }),
            () = tokio::time::sleep(within) => Err(StartError::Timeout { step, within }),
        }
    }

    /// `session/new` in `cwd`: the new session's id.
    pub async fn new_session(
        &self,
        cwd: &std::path::Path,
        within: Duration,
    ) -> Result<String, StartError> {
        let response = self
            .bounded(
                "session/new",
                within,
                self.conn
                    .send_request(NewSessionRequest::new(cwd.to_path_buf()))
                    .block_task(),
            )
            .await?;
        Ok(response.session_id.0.to_string())
    }

    /// Sends `session/prompt` now; the future resolves with the agent's answer.
    pub fn prompt(
        &self,
        session_id: &str,
        blocks: Vec<String>,
    ) -> impl Future<Output = Result<PromptResponse, agent_client_protocol::Error>> + use<> {
        let prompt = blocks
            .into_iter()
            .map(|text| ContentBlock::Text(TextContent::new(text)))
            .collect();
        self.conn
            .send_request(PromptRequest::new(session_id.to_owned(), prompt))
            .block_task()
    }

    /// Sends `session/cancel` for the session.
    pub fn cancel(&self, session_id: &str) {
        if let Err(err) = self
            .conn
            .send_notification(CancelNotification::new(session_id.to_owned()))
        {
            tracing::warn!(error = %err, "cannot send session/cancel");
        }
    }

    /// Whether the connection is unusable (the process exited or misbehaved, or was stopped).
    pub fn is_dead(&self) -> bool {
        self.health.dead.is_cancelled()
    }

    /// Resolves when the connection becomes unusable.
    pub async fn died(&self) {
        self.health.dead.cancelled().await;
    }

    /// Why the agent died: the first failure seen, the exit status (waited for up to 1 s)
    /// and the last lines of its stderr. `None` while it is healthy.
    pub async fn failure_reason(&self) -> Option<String> {
        let failure = self.health.failure()?;
        let mut exited = self.exited.clone();
        let status = tokio::time::timeout(Duration::from_secs(1), exited.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|s| s.clone()));
        let mut reason = failure;
        if let Some(status) = status {
            reason.push_str(&format!(" ({status})"));
        }
        let lines = self
            .stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_lines(STDERR_LINES_QUOTED);
        if !lines.is_empty() {
            reason.push_str("; stderr: ");
            reason.push_str(&lines.join("\n"));
        }
        Some(reason)
    }

    /// Counts a task in; the returned guard counts it out, and the last task out kills what
    /// the agent's tools daemonized (the scope's processes reparented to the host), keeping
    /// the agent and its own children.
    pub fn task_started(self: &Arc<Self>) -> TaskGuard {
        self.tasks.fetch_add(1, Ordering::SeqCst);
        TaskGuard(Some(self.clone()))
    }

    /// Stops the agent's process group (SIGTERM, grace, SIGKILL) and waits until it is reaped.
    pub async fn stop(&self) {
        self.health.fail("the ACP agent was stopped");
        self.shutdown.cancel();
        let mut exited = self.exited.clone();
        let _ = exited.wait_for(Option::is_some).await;
    }
}

/// Counts a task out of its agent (see [`AgentProcess::task_started`]).
pub struct TaskGuard(Option<Arc<AgentProcess>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let Some(agent) = self.0.take() else {
            return;
        };
        if agent.tasks.fetch_sub(1, Ordering::SeqCst) != 1 || agent.is_dead() {
            return;
        }
        let sweep = move || {
            if agent.tasks.load(Ordering::SeqCst) == 0 && !agent.is_dead() {
                agent.scope.sweep_orphans(&[agent.pid]);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(sweep)),
            Err(_) => sweep(),
        }
    }
}

/// The owner of the child: reaps it when it exits by itself, or stops its group once the
/// connection is unusable (stopped, non-JSON output, stdout closed); sweeps what it left in
/// its group either way.
async fn own_process(
    mut child: tokio::process::Child,
    pid: u32,
    ladder: StopLadder,
    exited_tx: watch::Sender<Option<String>>,
    health: Arc<Health>,
    terminals: Arc<Terminals>,
    scope: Scope,
) {
    let status = tokio::select! {
        status = child.wait() => {
            let text = match status {
                Ok(s) => format!("the ACP agent exited: {s}"),
                Err(e) => format!("the ACP agent could not be waited for: {e}"),
            };
            health.fail(text.clone());
            text
        }
        () = health.dead.cancelled() => {
            let stopped = ladder.stop(&mut child, pid).await;
            match stopped.status {
                Some(s) => format!("stopped: {s}"),
                None => "stopped".to_owned(),
            }
        }
    };
    process::sweep(pid);
    terminals.release_all();
    // The agent was awaited: whatever of its scope still lives is left over.
    drop(child);
    let _ = tokio::task::spawn_blocking(move || scope.sweep()).await;
    tracing::info!(pid, %status, "ACP agent gone");
    let _ = exited_tx.send(Some(status));
}

type LineSink = std::pin::Pin<Box<dyn futures_util::Sink<String, Error = std::io::Error> + Send>>;
type LineStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = std::io::Result<String>> + Send>>;

/// The SDK's line transport over the agent's stdio, with the incoming lines classified and
/// routed first.
fn transport(
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    sessions: Arc<Sessions>,
    health: Arc<Health>,
) -> Lines<LineSink, LineStream> {
    let outgoing: LineSink = Box::pin(futures_util::sink::unfold(
        stdin,
        |mut stdin, line: String| async move {
            stdin.write_all(line.as_bytes()).await?;
            stdin.write_all(b"\n").await?;
            stdin.flush().await?;
            Ok::<_, std::io::Error>(stdin)
        },
    ));
    let lines = FramedRead::new(stdout, LinesCodec::new_with_max_length(MAX_LINE_BYTES));
    let incoming: LineStream = Box::pin(futures_util::stream::unfold(
        (lines, sessions, health),
        |(mut lines, sessions, health)| async move {
            loop {
                let line = match lines.next().await {
                    Some(Ok(line)) => line,
                    Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                        health.fail(format!(
                            "the ACP agent printed a line longer than {MAX_LINE_BYTES} bytes"
                        ));
                        return None;
                    }
                    Some(Err(LinesCodecError::Io(e))) => {
                        health.fail(format!("reading the ACP agent's stdout: {e}"));
                        return None;
                    }
                    None => {
                        health.fail("the ACP agent closed its stdout");
                        return None;
                    }
                };
                let trimmed = line.trim();
                if trimmed.is_empty() {
                    continue;
                }
                match classify(trimmed) {
                    Line::NotJson => {
                        let quoted: String = trimmed.chars().take(QUOTED_LINE_CHARS).collect();
                        health.fail(format!(
                            "the ACP agent printed a line that is not JSON-RPC on stdout: {quoted:?}"
                        ));
                        return None;
                    }
                    Line::Update(session_id) => sessions.route(&session_id, trimmed).await,
                    Line::Other => {}
                }
                return Some((Ok(line), (lines, sessions, health)));
            }
        },
    ));
    Lines::new(outgoing, incoming)
}

/// Runs the SDK connection until the agent's stdout ends or `shutdown`, handing the
/// connection handle out first.
async fn run_connection(
    client: Arc<ClientSide>,
    transport: Lines<LineSink, LineStream>,
    conn_tx: oneshot::Sender<ConnectionTo<AgentRole>>,
    shutdown: CancellationToken,
    health: Arc<Health>,
) {
    let (permissions, reads, writes, terminals) =
        (client.clone(), client.clone(), client.clone(), client);
    let result = Client
        .v1()
        .name("agentserver")
        .on_receive_request(
            async move |request: RequestPermissionRequest, responder, _cx| {
                responder.respond(permissions.permission(&request))
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |request: ReadTextFileRequest, responder, _cx| {
                responder.respond_with_result(reads.read_text_file(&request).await)
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |request: WriteTextFileRequest, responder, _cx| {
                responder.respond_with_result(writes.write_text_file(&request).await)
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let client = terminals.clone();
                async move |request: CreateTerminalRequest, responder, _cx| {
                    responder.respond_with_result(client.create_terminal(&request))
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let client = terminals.clone();
                async move |request: TerminalOutputRequest, responder, _cx| {
                    responder.respond_with_result(client.terminals.output(
                        request.session_id.0.as_ref(),
                        request.terminal_id.0.as_ref(),
                    ))
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let client = terminals.clone();
                async move |request: WaitForTerminalExitRequest, responder, _cx| {
                    // Answered from a task of its own: waiting here would stop the dispatch
                    // loop (and every other message) until the command exits.
                    match client.terminals.wait_for_exit(
                        request.session_id.0.as_ref(),
                        request.terminal_id.0.as_ref(),
                    ) {
                        Ok(exit) => {
                            tokio::spawn(async move {
                                let _ =
                                    responder.respond(WaitForTerminalExitResponse::new(exit.await));
                            });
                            Ok(())
                        }
                        Err(err) => responder.respond_with_error(err),
                    }
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let client = terminals.clone();
                async move |request: KillTerminalRequest, responder, _cx| {
                    responder.respond_with_result(
                        client
                            .terminals
                            .kill(
                                request.session_id.0.as_ref(),
                                request.terminal_id.0.as_ref(),
                            )
                            .map(|()| KillTerminalResponse::new()),
                    )
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let client = terminals;
                async move |request: ReleaseTerminalRequest, responder, _cx| {
                    responder.respond_with_result(
                        client
                            .terminals
                            .release(
                                request.session_id.0.as_ref(),
                                request.terminal_id.0.as_ref(),
                            )
                            .map(|()| ReleaseTerminalResponse::new()),
                    )
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .connect_with(transport, async move |cx: ConnectionTo<AgentRole>| {
            let _ = conn_tx.send(cx.clone());
            tokio::select! {
                () = cx.incoming_closed() => {}
                () = shutdown.cancelled() => {}
            }
            Ok(())
        })
        .await;
    match result {
        Ok(()) => health.fail("the ACP connection ended"),
        Err(err) => health.fail(format!("the ACP connection failed: {}", describe(&err))),
    }
}

/// An SDK error as one line: message and data.
pub fn describe(err: &agent_client_protocol::Error) -> String {
    match &err.data {
        Some(data) => format!("{} ({data})", err.message),
        None => err.message.clone(),
    }
}
