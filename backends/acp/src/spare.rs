//! The spare session: one ACP session created ahead of time in the sandbox's work directory,
//! so that the next task there skips `session/new` (opencode answers it in milliseconds once
//! warm, but Claude's adapter starts a Claude Code process per session: about a second).
//! It is made after the agent starts and after each task; a task whose workspace is that
//! directory takes it, or, while it is still being made, waits for it (it was asked for
//! earlier than the task could ask for its own).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::agent::AgentProcess;
use crate::workspace::Workspace;

enum State {
    Empty,
    Making {
        agent: Arc<AgentProcess>,
        cwd: PathBuf,
    },
    Ready {
        agent: Arc<AgentProcess>,
        cwd: PathBuf,
        session: String,
    },
}

/// At most one session made ahead of time.
pub struct Spare {
    state: Mutex<State>,
    changed: Notify,
}

impl Default for Spare {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::Empty),
            changed: Notify::new(),
        }
    }
}

impl Spare {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts making a session in `workdir` on `agent`, unless one is ready or being made
    /// there by it.
    pub fn prepare(self: &Arc<Self>, agent: &Arc<AgentProcess>, workdir: &Path, within: Duration) {
        let Ok(ws) = Workspace::new(workdir) else {
            return;
        };
        let cwd = ws.root().to_path_buf();
        {
            let mut state = self.lock();
            match &*state {
                State::Making { agent: a, .. } | State::Ready { agent: a, .. }
                    if Arc::ptr_eq(a, agent) && !a.is_dead() =>
                {
                    return;
                }
                _ => {}
            }
            *state = State::Making {
                agent: agent.clone(),
                cwd: cwd.clone(),
            };
        }
        let (spare, agent) = (self.clone(), agent.clone());
        tokio::spawn(async move {
            let made = agent.new_session(&cwd, within).await;
            {
                let mut state = spare.lock();
                let ours =
                    matches!(&*state, State::Making { agent: a, .. } if Arc::ptr_eq(a, &agent));
                if ours {
                    *state = match made {
                        Ok(session) => State::Ready {
                            agent,
                            cwd,
                            session,
                        },
                        Err(e) => {
                            tracing::debug!(error = %e, "no spare ACP session");
                            State::Empty
                        }
                    };
                }
            }
            spare.changed.notify_waiters();
        });
    }

    /// The session made by `agent` in `cwd`, waiting for it while it is being made; `None`
    /// when there is none to be had.
    pub async fn take(&self, agent: &Arc<AgentProcess>, cwd: &Path) -> Option<String> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.lock();
                match &*state {
                    State::Ready {
                        agent: a, cwd: c, ..
                    } if Arc::ptr_eq(a, agent) && !a.is_dead() && c == cwd => {
                        let State::Ready { session, .. } =
                            std::mem::replace(&mut *state, State::Empty)
                        else {
                            unreachable!("matched above");
                        };
                        return Some(session);
                    }
                    State::Making {
                        agent: a, cwd: c, ..
                    } if Arc::ptr_eq(a, agent) && !a.is_dead() && c == cwd => {}
                    _ => return None,
                }
            }
            tokio::select! {
                () = changed => {}
                () = agent.died() => return None,
            }
        }
    }
}
