//! opencode's `/event` payloads as a typed enum: the event types this backend acts on, with
//! the fields it reads, parsed once and leniently (a missing or mistyped field reads as
//! absent, as opencode's own clients treat them); every other type is [`Event::Other`].
//! A message part stays JSON ([`Event::PartUpdated`]): its fields differ by part type and
//! the translator reads them where it turns them into Claude-shaped events.

use serde_json::Value;

/// The session state of a `session.status` event.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionState {
    /// Working.
    Busy,
    /// Waiting to retry a failed API call.
    Retry(Box<Retry>),
    /// Done with the turn.
    Idle,
    /// A state this backend does not know.
    Other,
}

/// A `retry` session state's fields, as sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    /// `attempt`.
    pub attempt: Value,
    /// `message`.
    pub message: Value,
    /// `next` (when the retry happens, ms since the epoch).
    pub next: Value,
}

/// One `/event` payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// `message.updated`: a message's info.
    MessageUpdated {
        /// `info.id`.
        id: Option<String>,
        /// `info.role` (`user`, `assistant`).
        role: Option<String>,
        /// `info.providerID` and `info.modelID`, when both are there.
        model: Option<(String, String)>,
    },
    /// `message.part.updated`: a part (text, reasoning, tool, step start or finish) as JSON.
    PartUpdated {
        /// `part`.
        part: Value,
    },
    /// `message.part.delta`: text appended to a part still being written.
    PartDelta {
        /// `field` (`text` for text parts).
        field: Option<String>,
        /// `partID`.
        part_id: Option<String>,
        /// `delta`.
        delta: Option<String>,
    },
    /// `session.status`.
    SessionStatus(SessionState),
    /// `session.idle` (older servers).
    SessionIdle,
    /// `session.error`: `error` as sent.
    SessionError {
        /// `error` (`name`, `data.message`, `data.statusCode`).
        error: Value,
    },
    /// `permission.asked`.
    PermissionAsked {
        /// The request id.
        id: String,
        /// What is asked (`bash`, `edit`, `external_directory`, …).
        permission: String,
    },
    /// `question.asked`.
    QuestionAsked {
        /// The request id.
        id: String,
    },
    /// Any other event type.
    Other,
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

impl Event {
    /// Reads one payload (`{"type": …, "properties": {…}}`).
    pub fn parse(event: &Value) -> Self {
        let p = &event["properties"];
        match event["type"].as_str().unwrap_or("") {
            "message.updated" => {
                let info = &p["info"];
                Event::MessageUpdated {
                    id: text(&info["id"]),
                    role: text(&info["role"]),
                    model: text(&info["providerID"]).zip(text(&info["modelID"])),
                }
            }
            "message.part.updated" => Event::PartUpdated {
                part: p["part"].clone(),
            },
            "message.part.delta" => Event::PartDelta {
                field: text(&p["field"]),
                part_id: text(&p["partID"]),
                delta: text(&p["delta"]),
            },
            "session.status" => {
                let status = &p["status"];
                Event::SessionStatus(match status["type"].as_str() {
                    Some("busy") => SessionState::Busy,
                    Some("retry") => SessionState::Retry(Box::new(Retry {
                        attempt: status["attempt"].clone(),
                        message: status["message"].clone(),
                        next: status["next"].clone(),
                    })),
                    Some("idle") => SessionState::Idle,
                    _ => SessionState::Other,
                })
            }
            "session.idle" => Event::SessionIdle,
            "session.error" => Event::SessionError {
                error: p["error"].clone(),
            },
            "permission.asked" => Event::PermissionAsked {
                id: text(&p["id"]).unwrap_or_default(),
                permission: text(&p["permission"]).unwrap_or_default(),
            },
            "question.asked" => Event::QuestionAsked {
                id: text(&p["id"]).unwrap_or_default(),
            },
            _ => Event::Other,
        }
    }
}

/// The session a `/event` payload belongs to, if any.
pub fn event_session(event: &Value) -> Option<&str> {
    let p = &event["properties"];
    p["sessionID"]
        .as_str()
        .or_else(|| p["part"]["sessionID"].as_str())
        .or_else(|| p["info"]["sessionID"].as_str())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn known_types_are_read_with_their_fields() {
        let e = json!({"type":"message.updated","properties":{"info":{"id":"m1","role":"assistant","providerID":"p","modelID":"x","sessionID":"s"}}});
        assert_eq!(
            Event::parse(&e),
            Event::MessageUpdated {
                id: Some("m1".into()),
                role: Some("assistant".into()),
                model: Some(("p".into(), "x".into()))
            }
        );
        assert_eq!(event_session(&e), Some("s"));
        let e = json!({"type":"session.status","properties":{"sessionID":"s","status":{"type":"retry","attempt":2,"message":"busy","next":5}}});
        assert_eq!(
            Event::parse(&e),
            Event::SessionStatus(SessionState::Retry(Box::new(Retry {
                attempt: json!(2),
                message: json!("busy"),
                next: json!(5)
            })))
        );
        let e = json!({"type":"permission.asked","properties":{"id":"per1","permission":"bash"}});
        assert_eq!(
            Event::parse(&e),
            Event::PermissionAsked {
                id: "per1".into(),
                permission: "bash".into()
            }
        );
    }

    #[test]
    fn missing_fields_read_as_absent_and_unknown_types_are_other() {
        let e = json!({"type":"message.updated","properties":{"info":{"id":7}}});
        assert_eq!(
            Event::parse(&e),
            Event::MessageUpdated {
                id: None,
                role: None,
                model: None
            }
        );
        assert_eq!(Event::parse(&json!({"type":"lsp.updated"})), Event::Other);
        assert_eq!(Event::parse(&json!({"no":"type"})), Event::Other);
        assert_eq!(
            Event::parse(&json!({"type":"session.status","properties":{"status":{"type":"new"}}})),
            Event::SessionStatus(SessionState::Other)
        );
        assert_eq!(event_session(&json!({"properties":{}})), None);
    }
}
