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

/// What a task's handlers know of its session.
#[derive(Debug)]
pub struct SessionCtx {
    /// The task's workspace.
    pub workspace: Workspace,
    /// Set once the task sent `session/cancel`: permission requests are then answered
    /// `cancelled`.
    pub cancelling: AtomicBool,
}

struct Route {
    tx: mpsc::Sender<String>,
    /// Present until a task claims the session.
    rx: Option<mpsc::Receiver<String>>,
    ctx: Option<Arc<SessionCtx>>,
}

/// The sessions of one agent process.
#[derive(Default)]
pub struct Sessions {
    routes: Mutex<HashMap<String, Route>>,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A task takes `session_id`: updates already seen for it and every later one arrive on
    /// the receiver, and the handlers find `ctx`.
    pub fn claim(&self, session_id: &str, ctx: Arc<SessionCtx>) -> mpsc::Receiver<String> {
        let mut routes = self.lock();
        let route = routes.entry(session_id.to_owned()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(SESSION_QUEUE);
            Route {
                tx,
                rx: Some(rx),
                ctx: None,
            }
        });
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
        self.lock().remove(session_id);
    }

    /// The context of a claimed session.
    pub fn ctx(&self, session_id: &str) -> Option<Arc<SessionCtx>> {
        self.lock().get(session_id).and_then(|r| r.ctx.clone())
    }

    /// Routes one `session/update` line. Waits while a claimed session's queue is full.
    pub async fn route(&self, session_id: &str, line: &str) {
        let (tx, claimed) = {
            let mut routes = self.lock();
            if !routes.contains_key(session_id) {
                let unclaimed = routes.values().filter(|r| r.ctx.is_none()).count();
                if unclaimed >= MAX_UNCLAIMED {
                    tracing::warn!(session_id, "update for an unknown ACP session dropped");
                    return;
                }
                let (tx, rx) = mpsc::channel(SESSION_QUEUE);
                routes.insert(
                    session_id.to_owned(),
                    Route {
                        tx,
                        rx: Some(rx),
                        ctx: None,
                    },
                );
            }
            let route = &routes[session_id];
            (route.tx.clone(), route.ctx.is_some())
        };
        if claimed {
            // An error means the task has stopped listening: nothing to deliver to.
            let _ = tx.send(line.to_owned()).await;
        } else if tx.try_send(line.to_owned()).is_err() {
            tracing::warn!(session_id, "update for an unclaimed ACP session dropped");
        }
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
        });
        let mut rx = sessions.claim("s1", ctx);
        sessions.route("s1", "three").await;
        for want in ["one", "two", "three"] {
            assert_eq!(rx.recv().await.as_deref(), Some(want));
        }
        assert!(!sessions.is_cancelling("s1"));
        sessions.release("s1");
        assert!(sessions.ctx("s1").is_none());
    }
}
