//! The events a backend streams while running a task, and where they go. [`Task`] and
//! [`TaskOutcome`] are the SDK's (`agentserver-plugin-sdk`), re-exported here.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

pub use agentserver_plugin_sdk::{FailureKind, Task, TaskOutcome, TaskStatus, UsageLimit};

/// One event a backend emits while running a task: a JSON object forwarded to the server
/// byte-for-byte (the host never re-serialises it, so key order and formatting survive).
#[derive(Clone, Debug)]
pub struct TaskEvent(Box<RawValue>);

impl PartialEq for TaskEvent {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for TaskEvent {}

impl TaskEvent {
    /// Wraps a JSON text; fails if it is not valid JSON.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.to_owned()).map(Self)
    }

    /// Serialises any value into an event.
    pub fn from_value<T: Serialize>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// The exact JSON text of the event.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    /// The event as a raw JSON value (for embedding into a larger document unchanged).
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }
}

impl Serialize for TaskEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TaskEvent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Self)
    }
}

/// Where a backend sends its events. Cloneable; sending never blocks for long because the
/// host drains the channel continuously.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: mpsc::Sender<TaskEvent>,
}

impl EventSink {
    /// Creates a sink and the receiver the host reads from.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<TaskEvent>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx }, rx)
    }

    /// Sends one event. Returns `false` if the host no longer listens (the task is over).
    pub async fn emit(&self, event: TaskEvent) -> bool {
        self.tx.send(event).await.is_ok()
    }

    /// Sends one event from synchronous code (plugin threads). Returns `false` if the host no
    /// longer listens.
    pub fn emit_blocking(&self, event: TaskEvent) -> bool {
        self.tx.blocking_send(event).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_keeps_exact_bytes() {
        let text = r#"{"type":"assistant","b":1,  "a":[2]}"#;
        let ev = TaskEvent::from_json(text).unwrap();
        assert_eq!(ev.as_json(), text);
        #[derive(Serialize)]
        struct Wrapper<'a> {
            payload: &'a TaskEvent,
        }
        let wrapped = serde_json::to_string(&Wrapper { payload: &ev }).unwrap();
        assert!(wrapped.contains(text));
    }

    #[test]
    fn event_rejects_invalid_json() {
        assert!(TaskEvent::from_json("{not json").is_err());
    }
}
