//! The client side of ACP: what this host answers when the agent asks something —
//! `session/request_permission` by the [`PermissionPolicy`], `fs/read_text_file` and
//! `fs/write_text_file` inside the task's workspace only, `terminal/*` through
//! [`crate::terminal::Terminals`] with the working directory inside it.

use std::path::Path;
use std::sync::Arc;

use agent_client_protocol::v1::schema::{
    PermissionOptionKind, ReadTextFileRequest, ReadTextFileResponse, RequestPermissionOutcome,
    RequestPermissionRequest, RequestPermissionResponse, SelectedPermissionOutcome,
    WriteTextFileRequest, WriteTextFileResponse,
};
use agent_client_protocol::{Error, ErrorCode};

use crate::config::PermissionPolicy;
use crate::sessions::Sessions;
use crate::terminal::Terminals;
use crate::workspace::{PathRefused, Workspace};

/// The largest file `fs/read_text_file` returns.
pub const MAX_READ_BYTES: u64 = 16 * 1024 * 1024;

/// Keys of a tool call's `rawInput` that name a path the permission policy checks as well
/// as its `locations` (opencode fills `locations` only after the permission is granted).
const RAW_INPUT_PATH_KEYS: [&str; 4] = ["path", "filePath", "file_path", "notebook_path"];

/// Answers the agent's requests for one agent process.
pub struct ClientSide {
    /// The sessions of the agent process.
    pub sessions: Arc<Sessions>,
    /// The permission policy.
    pub policy: PermissionPolicy,
    /// The terminals the agent created.
    pub terminals: Arc<Terminals>,
}

impl ClientSide {
    /// The answer to `session/request_permission`: `cancelled` once the session's task is
    /// cancelling (the ACP cancellation rule), else the policy's choice among the options.
    pub fn permission(&self, request: &RequestPermissionRequest) -> RequestPermissionResponse {
        let session = request.session_id.0.as_ref();
        let outcome = match self.sessions.ctx(session) {
            None => {
                tracing::warn!(session, "permission request for an unknown ACP session");
                pick(request, false)
            }
            Some(ctx) if ctx.cancelling.load(std::sync::atomic::Ordering::Acquire) => {
                RequestPermissionOutcome::Cancelled
            }
            Some(ctx) => {
                let allow = match self.policy {
                    PermissionPolicy::Deny => false,
                    PermissionPolicy::AllowInWorkspace => {
                        paths_named(request).all(|p| ctx.workspace.contains(Path::new(&p)))
                    }
                };
                tracing::debug!(session, allow, "answering an ACP permission request");
                pick(request, allow)
            }
        };
        RequestPermissionResponse::new(outcome)
    }

    /// `fs/read_text_file`: the file's text (from 1-based `line`, at most `limit` lines).
    pub async fn read_text_file(
        &self,
        request: &ReadTextFileRequest,
    ) -> Result<ReadTextFileResponse, Error> {
        let workspace = self.workspace(request.session_id.0.as_ref())?;
        let path = workspace.resolve_existing(&request.path).map_err(refused)?;
        let meta = tokio::fs::metadata(&path).await.map_err(io_error)?;
        if !meta.is_file() {
            return Err(invalid(format!(
                "`{}` is not a regular file",
                request.path.display()
            )));
        }
        if meta.len() > MAX_READ_BYTES {
            return Err(invalid(format!(
                "`{}` is larger than {MAX_READ_BYTES} bytes",
                request.path.display()
            )));
        }
        let text = tokio::fs::read_to_string(&path).await.map_err(io_error)?;
        Ok(ReadTextFileResponse::new(slice_lines(
            &text,
            request.line,
            request.limit,
        )))
    }

    /// `fs/write_text_file`: writes the whole file (creating it; its directory must exist).
    pub async fn write_text_file(
        &self,
        request: &WriteTextFileRequest,
    ) -> Result<WriteTextFileResponse, Error> {
        let workspace = self.workspace(request.session_id.0.as_ref())?;
        let path = workspace
            .resolve_for_write(&request.path)
            .map_err(refused)?;
        tokio::fs::write(&path, request.content.as_bytes())
            .await
            .map_err(io_error)?;
        Ok(WriteTextFileResponse::new())
    }

    /// `terminal/create` in the session's workspace.
    pub fn create_terminal(
        &self,
        request: &agent_client_protocol::v1::schema::CreateTerminalRequest,
    ) -> Result<agent_client_protocol::v1::schema::CreateTerminalResponse, Error> {
        let ctx = self
            .sessions
            .ctx(request.session_id.0.as_ref())
            .ok_or_else(|| invalid(format!("unknown session `{}`", request.session_id.0)))?;
        self.terminals.create(&ctx.workspace, &ctx.scope, request)
    }

    /// The workspace of a session a task owns.
    pub fn workspace(&self, session: &str) -> Result<Workspace, Error> {
        self.sessions
            .ctx(session)
            .map(|c| c.workspace.clone())
            .ok_or_else(|| invalid(format!("unknown session `{session}`")))
    }
}

/// Every path the tool call names: its locations and the usual path keys of its raw input.
fn paths_named(request: &RequestPermissionRequest) -> impl Iterator<Item = String> + '_ {
    let fields = &request.tool_call.fields;
    let locations = fields
        .locations
        .iter()
        .flatten()
        .map(|l| l.path.display().to_string());
    let raw = fields
        .raw_input
        .as_ref()
        .and_then(|v| v.as_object())
        .into_iter()
        .flat_map(|o| RAW_INPUT_PATH_KEYS.iter().filter_map(|k| o.get(*k)))
        .filter_map(|v| v.as_str().map(str::to_owned));
    locations.chain(raw)
}

/// The option of the wanted kind (once preferred over always), or `cancelled` when the agent
/// offered none.
fn pick(request: &RequestPermissionRequest, allow: bool) -> RequestPermissionOutcome {
    let kinds = if allow {
        [
            PermissionOptionKind::AllowOnce,
            PermissionOptionKind::AllowAlways,
        ]
    } else {
        [
            PermissionOptionKind::RejectOnce,
            PermissionOptionKind::RejectAlways,
        ]
    };
    kinds
        .iter()
        .find_map(|kind| request.options.iter().find(|o| o.kind == *kind))
        .map_or(RequestPermissionOutcome::Cancelled, |o| {
            RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(o.option_id.clone()))
        })
}

fn slice_lines(text: &str, line: Option<u32>, limit: Option<u32>) -> String {
    if line.is_none() && limit.is_none() {
        return text.to_owned();
    }
    let skip = line.map_or(0, |l| l.saturating_sub(1) as usize);
    let take = limit.map_or(usize::MAX, |l| l as usize);
    text.split_inclusive('\n').skip(skip).take(take).collect()
}

fn invalid(message: String) -> Error {
    Error::new(ErrorCode::INVALID_PARAMS, message)
}

fn refused(err: PathRefused) -> Error {
    match err {
        PathRefused::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::new(ErrorCode::RESOURCE_NOT_FOUND, err.to_string())
        }
        other => invalid(other.to_string()),
    }
}

fn io_error(err: std::io::Error) -> Error {
    Error::new(ErrorCode::INTERNAL_ERROR, err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_lines() {
        let text = "a\nb\nc\n";
        assert_eq!(slice_lines(text, None, None), text);
        assert_eq!(slice_lines(text, Some(2), None), "b\nc\n");
        assert_eq!(slice_lines(text, Some(2), Some(1)), "b\n");
        assert_eq!(slice_lines(text, None, Some(1)), "a\n");
    }
}
