//! Which task owns which ACP session: the raw `session/update` lines routed to it (read off
//! the agent's stdout before the SDK parses them, so they reach the server byte for byte) and
//! what the client-side handlers need to know of it (its workspace, whether it is being
//! cancelled).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::workspace::Workspace;

/// Lines held for one session before its task has claimed it, and queued for a task that
/// has (the reader waits when a claimed queue is full).
pub const SESSION_QUEUE: usize = 256;

/// Sessions seen in updates but not (yet) claimed by a task that are remembered; updates for
/// further unknown sessions are dropped with a warning.
const MAX_UNCLAIMED: usize = 64;

/// Bytes of updates held for unclaimed sessions, all together; beyond it they are dropped
/// with a warning.
pub const MAX_UNCLAIMED_BYTES: usize = 8 * 1024 * 1024;

/// Released sessions remembered, so that a late update for one is dropped instead of being
/// held for a task that will never come.
const REMEMBERED_RELEASED: usize = 1024;

/// What a task's handlers know of its session.
#[derive(Debug)]
pub struct SessionCtx {
    /// The task's workspace.
    pub workspace: Workspace,
    /// Set once the task sent `session/cancel`: permission requests are then answered
    /// `cancelled`.
    pub cancelling: AtomicBool,
    /// The task's scope: the terminal commands it asks for are tagged with it.
    pub scope: agentserver_common::process::Scope,
}

struct Route {
    tx: mpsc::Sender<String>,
    /// Present until a task claims the session.
    rx: Option<mpsc::Receiver<String>>,
    ctx: Option<Arc<SessionCtx>>,
    /// Bytes queued while unclaimed.
    held: usize,
}

impl Route {
    fn unclaimed() -> Self {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        Self {
            tx,
            rx: Some(rx),
            ctx: None,
            held: 0,
        }
    }
}

#[derive(Default)]
struct Table {
    routes: HashMap<String, Route>,
    released: std::collections::VecDeque<String>,
    unclaimed_bytes: usize,
}

/// The sessions of one agent process.
#[derive(Default)]
pub struct Sessions {
    table: Mutex<Table>,
}

/// The part of a JSON-RPC message the router reads.
#[derive(Deserialize)]
struct Probe {
    method: Option<String>,
    params: Option<ProbeParams>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProbeParams {
    session_id: Option<String>,
}

/// What the reader should do with a line of the agent's stdout.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A `session/update` notification for this session: route it, then hand it on.
    Update(String),
    /// Any other JSON: hand it on to the SDK.
    Other,
    /// Not JSON at all.
    NotJson,
}

/// Classifies one line of the agent's stdout.
pub fn classify(line: &str) -> Line {
    match serde_json::from_str::<Probe>(line) {
        Ok(Probe {
            method: Some(method),
            params: Some(ProbeParams {
                session_id: Some(id),
            }),
        }) if method == "session/update" => Line::Update(id),
        Ok(_) => Line::Other,
        Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(line).is_ok() => Line::Other,
        Err(_) => Line::NotJson,
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A task takes `session_id`: updates already seen for it and every later one arrive on
    /// the receiver, and the handlers find `ctx`.
    pub fn claim(&self, session_id: &str, ctx: Arc<SessionCtx>) -> mpsc::Receiver<String> {
        let mut table = self.lock();
        let table = &mut *table;
        table.released.retain(|id| id != session_id);
        let route = table
            .routes
            .entry(session_id.to_owned())
            .or_insert_with(Route::unclaimed);
        table.unclaimed_bytes = table.unclaimed_bytes.saturating_sub(route.held);
        route.held = 0;
        route.ctx = Some(ctx);
        route.rx.take().unwrap_or_else(|| {
            // Claimed twice (the agent reused a session id): a fresh queue for the new owner.
            let (tx, rx) = mpsc::channel(SESSION_QUEUE);
            route.tx = tx;
            rx
        })
    }

    /// The task is done with `session_id`; later updates for it are dropped.
    pub fn release(&self, session_id: &str) {
        let mut table = self.lock();
        if let Some(route) = table.routes.remove(session_id) {
            table.unclaimed_bytes = table.unclaimed_bytes.saturating_sub(route.held);
        }
        if table.released.len() >= REMEMBERED_RELEASED {
            table.released.pop_front();
        }
        table.released.push_back(session_id.to_owned());
    }

    /// The context of a claimed session.
    pub fn ctx(&self, session_id: &str) -> Option<Arc<SessionCtx>> {
        self.lock()
            .routes
            .get(session_id)
            .and_then(|r| r.ctx.clone())
    }

    /// Routes one `session/update` line. Waits while a claimed session's queue is full.
    pub async fn route(&self, session_id: &str, line: &str) {
        let tx = {
            let mut table = self.lock();
            let table = &mut *table;
            if table.released.iter().any(|id| id == session_id) {
                tracing::debug!(session_id, "update for a finished ACP session dropped");
                return;
            }
            if !table.routes.contains_key(session_id) {
                let unclaimed = table.routes.values().filter(|r| r.ctx.is_none()).count();
                if unclaimed >= MAX_UNCLAIMED {
                    tracing::warn!(session_id, "update for an unknown ACP session dropped");
                    return;
                }
                table
                    .routes
                    .insert(session_id.to_owned(), Route::unclaimed());
            }
            let route = table.routes.get_mut(session_id).expect("inserted above");
            if route.ctx.is_none() {
                if table.unclaimed_bytes + line.len() > MAX_UNCLAIMED_BYTES
                    || route.tx.try_send(line.to_owned()).is_err()
                {
                    tracing::warn!(session_id, "update for an unclaimed ACP session dropped");
                } else {
                    route.held += line.len();
                    table.unclaimed_bytes += line.len();
                }
                return;
            }
            route.tx.clone()
        };
        // An error means the task has stopped listening: nothing to deliver to.
        let _ = tx.send(line.to_owned()).await;
    }

    /// Whether the session's task is cancelling it.
    pub fn is_cancelling(&self, session_id: &str) -> bool {
        self.ctx(session_id)
            .is_some_and(|c| c.cancelling.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_lines() {
        assert_eq!(
            classify(
                r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{}}}"#
            ),
            Line::Update("s1".into())
        );
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            Line::Other
        );
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","method":"x/y","params":[1]}"#),
            Line::Other
        );
        assert_eq!(classify("[1,2]"), Line::Other);
        assert_eq!(classify("Listening on port 3000"), Line::NotJson);
        assert_eq!(classify(r#"{"jsonrpc":"2.0","#), Line::NotJson);
    }

    #[tokio::test]
    async fn updates_before_the_claim_are_kept_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = Sessions::default();
        sessions.route("s1", "one").await;
        sessions.route("s1", "two").await;
        let ctx = Arc::new(SessionCtx {
            workspace: Workspace::new(dir.path()).unwrap(),
            cancelling: AtomicBool::new(false),
            scope: agentserver_common::process::Scope::task("test"),
        });
        let mut rx = sessions.claim("s1", ctx);
        sessions.route("s1", "three").await;
        for want in ["one", "two", "three"] {
            assert_eq!(rx.recv().await.as_deref(), Some(want));
        }
        assert!(!sessions.is_cancelling("s1"));
        sessions.release("s1");
        assert!(sessions.ctx("s1").is_none());
        // A late update for a finished session is not held for anyone.
        sessions.route("s1", "late").await;
        assert!(sessions.lock().routes.is_empty());
        assert_eq!(sessions.lock().unclaimed_bytes, 0);
    }

    #[tokio::test]
    async fn held_updates_are_bounded_in_bytes() {
        let sessions = Sessions::default();
        let big = "x".repeat(MAX_UNCLAIMED_BYTES / 2 + 1);
        sessions.route("a", &big).await;
        sessions.route("b", &big).await; // over the total: dropped
        sessions.route("b", "small").await;
        assert_eq!(sessions.lock().unclaimed_bytes, big.len() + 5);
        let dir = tempfile::tempdir().unwrap();
        let ctx = Arc::new(SessionCtx {
            workspace: Workspace::new(dir.path()).unwrap(),
            cancelling: AtomicBool::new(false),
            scope: agentserver_common::process::Scope::task("test"),
        });
        let mut rx = sessions.claim("b", ctx);
        assert_eq!(rx.recv().await.as_deref(), Some("small"));
        assert_eq!(sessions.lock().unclaimed_bytes, big.len());
    }
}
