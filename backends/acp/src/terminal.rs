//! The client's `terminal/*` methods: commands the agent asks this host to run, each in a
//! process group of its own (through `agentserver_common::process`), in a directory inside the
//! task's workspace, with stdout and stderr kept in one bounded tail (`StderrTail`, the newest
//! bytes, cut at a character boundary). A terminal belongs to the session that created it: it
//! is killed (group SIGTERM, grace, SIGKILL, sweep) on `terminal/kill`, `terminal/release`, at
//! the end of the session's task, and when the agent stops.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agent_client_protocol::v1::schema::{
    CreateTerminalRequest, CreateTerminalResponse, TerminalExitStatus, TerminalOutputResponse,
};
use agent_client_protocol::{Error, ErrorCode};
use agentserver_common::process::{self, Detach, Scope, StderrTail, StopLadder};
use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::workspace::Workspace;

/// The most output a terminal keeps, whatever `outputByteLimit` asks (1 MiB); also the limit
/// when the agent names none.
pub const MAX_OUTPUT_BYTES: u64 = 1024 * 1024;

/// Terminals alive at once per agent process; more are refused.
pub const MAX_TERMINALS: usize = 32;

/// Time a killed command gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

struct Terminal {
    session: String,
    output: Arc<Mutex<StderrTail>>,
    limit: usize,
    exit: watch::Receiver<Option<TerminalExitStatus>>,
    kill: CancellationToken,
}

/// The terminals of one agent process.
#[derive(Default)]
pub struct Terminals {
    map: Mutex<HashMap<String, Arc<Terminal>>>,
    next: AtomicU64,
}

impl Terminals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Terminal>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `terminal/create`: starts the command (no shell) in `cwd` (the workspace root when
    /// none), which must lie inside `workspace`.
    pub fn create(
        &self,
        workspace: &Workspace,
        scope: &Scope,
        request: &CreateTerminalRequest,
    ) -> Result<CreateTerminalResponse, Error> {
        if self.lock().len() >= MAX_TERMINALS {
            return Err(invalid(format!(
                "too many terminals (at most {MAX_TERMINALS} at once)"
            )));
        }
        let cwd: PathBuf = match &request.cwd {
            Some(dir) => workspace
                .resolve_existing(dir)
                .map_err(|e| invalid(e.to_string()))?,
            None => workspace.root().to_path_buf(),
        };
        let limit = request
            .output_byte_limit
            .unwrap_or(MAX_OUTPUT_BYTES)
            .min(MAX_OUTPUT_BYTES) as usize;
        let mut cmd = tokio::process::Command::new(&request.command);
        cmd.args(&request.args)
            .envs(request.env.iter().map(|v| (&v.name, &v.value)))
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        process::isolate(cmd.as_std_mut(), Detach::Group);
        // Tagged with the task that asked, swept when it ends.
        scope.apply(cmd.as_std_mut());
        let mut child = cmd.spawn().map_err(|e| {
            Error::new(
                ErrorCode::INTERNAL_ERROR,
                format!("cannot run `{}`: {e}", request.command),
            )
        })?;
        let pid = child.id().unwrap_or(0);
        let output = Arc::new(Mutex::new(StderrTail::new(limit)));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            tokio::spawn(process::collect_tail(
                pipe,
                output.clone(),
                "ACP terminal output",
            ));
        }
        let (exit_tx, exit) = watch::channel(None);
        let kill = CancellationToken::new();
        tokio::spawn(own_command(child, pid, kill.clone(), exit_tx));
        let id = format!("term-{}", self.next.fetch_add(1, Ordering::Relaxed) + 1);
        tracing::debug!(pid, id, command = %request.command, "ACP terminal started");
        self.lock().insert(
            id.clone(),
            Arc::new(Terminal {
                session: request.session_id.0.to_string(),
                output,
                limit,
                exit,
                kill,
            }),
        );
        Ok(CreateTerminalResponse::new(id))
    }

    fn get(&self, session: &str, id: &str) -> Result<Arc<Terminal>, Error> {
        self.lock()
            .get(id)
            .filter(|t| t.session == session)
            .cloned()
            .ok_or_else(|| invalid(format!("unknown terminal `{id}`")))
    }

    /// `terminal/output`: the output so far (the newest `limit` bytes), and the exit status
    /// once the command has ended.
    pub fn output(&self, session: &str, id: &str) -> Result<TerminalOutputResponse, Error> {
        let terminal = self.get(session, id)?;
        let (bytes, total) = {
            let tail = terminal
                .output
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (tail.tail(terminal.limit), tail.total())
        };
        let truncated = total > bytes.len() as u64;
        let text = if truncated {
            text_from_cut(&bytes)
        } else {
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let status = terminal.exit.borrow().clone();
        Ok(TerminalOutputResponse::new(text, truncated).exit_status(status))
    }

    /// `terminal/wait_for_exit`: a future resolving with the exit status (to be awaited
    /// outside the SDK's dispatch loop).
    pub fn wait_for_exit(
        &self,
        session: &str,
        id: &str,
    ) -> Result<impl Future<Output = TerminalExitStatus> + Send + 'static, Error> {
        let mut exit = self.get(session, id)?.exit.clone();
        Ok(async move {
            match exit.wait_for(Option::is_some).await {
                Ok(status) => status.clone().unwrap_or_default(),
                Err(_) => TerminalExitStatus::new(),
            }
        })
    }

    /// `terminal/kill`: stops the command's group; the terminal stays for its output.
    pub fn kill(&self, session: &str, id: &str) -> Result<(), Error> {
        self.get(session, id)?.kill.cancel();
        Ok(())
    }

    /// `terminal/release`: kills the command if it still runs and forgets the terminal.
    pub fn release(&self, session: &str, id: &str) -> Result<(), Error> {
        let terminal = self.get(session, id)?;
        terminal.kill.cancel();
        self.lock().remove(id);
        Ok(())
    }

    /// Kills and forgets every terminal of `session` (its task ended), and waits (bounded)
    /// until each command was reaped, so that the task's scope can be swept after it.
    pub async fn release_session(&self, session: &str) {
        let mut exits = Vec::new();
        self.lock().retain(|_, t| {
            let keep = t.session != session;
            if !keep {
                t.kill.cancel();
                exits.push(t.exit.clone());
            }
            keep
        });
        for mut exit in exits {
            let _ = tokio::time::timeout(
                KILL_GRACE + Duration::from_secs(6),
                exit.wait_for(Option::is_some),
            )
            .await;
        }
    }

    /// Kills and forgets every terminal (the agent stops).
    pub fn release_all(&self) {
        for (_, t) in self.lock().drain() {
            t.kill.cancel();
        }
    }
}

/// Reaps the command, or stops its group when asked; sweeps the group either way.
async fn own_command(
    mut child: tokio::process::Child,
    pid: u32,
    kill: CancellationToken,
    exit_tx: watch::Sender<Option<TerminalExitStatus>>,
) {
    let status = tokio::select! {
        status = child.wait() => status.ok(),
        () = kill.cancelled() => {
            let ladder = StopLadder {
                signal: Signal::SIGTERM,
                grace: KILL_GRACE,
                kill_wait: Duration::from_secs(5),
            };
            ladder.stop(&mut child, pid).await.status
        }
    };
    process::sweep(pid);
    let status = status.map_or_else(TerminalExitStatus::new, |s| {
        use std::os::unix::process::ExitStatusExt;
        TerminalExitStatus::new()
            .exit_code(s.code().and_then(|c| u32::try_from(c).ok()))
            .signal(
                s.signal()
                    .and_then(|n| Signal::try_from(n).ok())
                    .map(|sig| sig.as_str().to_owned()),
            )
    });
    let _ = exit_tx.send(Some(status));
}

/// Text of bytes whose start may cut a character: the partial character is dropped.
fn text_from_cut(bytes: &[u8]) -> String {
    let start = bytes
        .iter()
        .take(3)
        .take_while(|b| (**b & 0b1100_0000) == 0b1000_0000)
        .count();
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn invalid(message: String) -> Error {
    Error::new(ErrorCode::INVALID_PARAMS, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_character_is_dropped() {
        let text = "aé€b";
        let bytes = text.as_bytes();
        assert_eq!(text_from_cut(&bytes[2..]), "€b");
        assert_eq!(text_from_cut(&bytes[4..]), "b");
        assert_eq!(text_from_cut(bytes), text);
    }
}
