//! The workspace's agent listing behind the `delegate_task` description: fetched from
//! `GET /api/agent/discovery/agents` at start and every 60 s, self filtered out (spec §10.2).

use std::fmt::Write as _;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::api::{ApiError, LISTING_TIMEOUT, WorkspaceApi};

/// How often the listing is refreshed.
pub const REFRESH_PERIOD: Duration = Duration::from_secs(60);

/// The fixed first part of the `delegate_task` description.
pub const DELEGATE_BASE_DESCRIPTION: &str = "Delegate a task to another agent in your workspace. \
     The target agent will execute the task and stream results back.";

/// The discovery endpoint's path.
pub const DISCOVERY_PATH: &str = "/api/agent/discovery/agents";

/// One agent of the listing, with only what the description shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListedAgent {
    /// `agent_id` (the sandbox id).
    pub agent_id: String,
    /// `display_name`.
    pub display_name: String,
    /// `description`.
    pub description: String,
    /// `status`: available, busy or offline.
    pub status: String,
    /// `card.tags`.
    pub tags: Vec<String>,
    /// `card.languages[]` as `(name, version)`.
    pub languages: Vec<(String, String)>,
    /// `card.tools[].name`.
    pub tools: Vec<String>,
    /// `card.hardware`, when it has a `cpu_summary`.
    pub hardware: Option<Hardware>,
}

/// The hardware line of a listed agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hardware {
    /// `cpu_summary`.
    pub cpu_summary: String,
    /// `memory_gb`, truncated to whole GB.
    pub memory_gb: i64,
    /// `disk_gb`, truncated to whole GB.
    pub disk_gb: i64,
    /// `gpu_info` when `has_gpu` is true.
    pub gpu_info: Option<String>,
}

/// Why a listing refresh failed (the old listing is kept).
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    /// The request failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The body is not a JSON array.
    #[error("invalid agent listing: {0}")]
    Invalid(String),
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn num_field(v: &Value, key: &str) -> i64 {
    // Go's int(float64) truncates toward zero.
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0) as i64
}

impl ListedAgent {
    /// Reads one discovery entry; fields of an unexpected type count as absent.
    pub fn from_json(v: &Value) -> Self {
        let card = v.get("card").cloned().unwrap_or(Value::Null);
        let list = |key: &str| -> Vec<Value> {
            card.get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let tags = list("tags")
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
        let languages = list("languages")
            .iter()
            .map(|l| (str_field(l, "name"), str_field(l, "version")))
            .collect();
        let tools = list("tools").iter().map(|t| str_field(t, "name")).collect();
        let hardware = card.get("hardware").and_then(|hw| {
            let cpu_summary = hw.get("cpu_summary")?.as_str()?.to_owned();
            let has_gpu = hw.get("has_gpu").and_then(Value::as_bool).unwrap_or(false);
            Some(Hardware {
                cpu_summary,
                memory_gb: num_field(hw, "memory_gb"),
                disk_gb: num_field(hw, "disk_gb"),
                gpu_info: has_gpu
                    .then(|| {
                        hw.get("gpu_info")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .flatten(),
            })
        });
        Self {
            agent_id: str_field(v, "agent_id"),
            display_name: str_field(v, "display_name"),
            description: str_field(v, "description"),
            status: str_field(v, "status"),
            tags,
            languages,
            tools,
            hardware,
        }
    }
}

/// Parses a discovery response and drops the entry whose `agent_id` is `self_id`.
pub fn parse_listing(body: &str, self_id: Option<&str>) -> Result<Vec<ListedAgent>, ListingError> {
    let entries: Vec<Value> =
        serde_json::from_str(body).map_err(|e| ListingError::Invalid(e.to_string()))?;
    Ok(entries
        .iter()
        .map(ListedAgent::from_json)
        .filter(|a| Some(a.agent_id.as_str()) != self_id)
        .collect())
}

/// The text appended to [`DELEGATE_BASE_DESCRIPTION`] for this listing.
pub fn format_listing(agents: &[ListedAgent]) -> String {
    if agents.is_empty() {
        return "\n\nNo other agents are currently available in this workspace.".to_owned();
    }
    let mut out = String::from("\n\nAvailable agents in this workspace:\n");
    for a in agents {
        let _ = write!(out, "- {} ({}):", a.display_name, a.agent_id);
        let parts: Vec<String> = a
            .languages
            .iter()
            .map(|(name, version)| format!("{name} {version}"))
            .chain(a.tools.iter().cloned())
            .collect();
        if !parts.is_empty() {
            let _ = write!(out, " {}", parts.join(", "));
        } else if !a.description.is_empty() {
            let _ = write!(out, " {}", a.description);
        }
        if !a.tags.is_empty() {
            let _ = write!(out, " [{}]", a.tags.join(", "));
        }
        let _ = write!(out, " — {}", a.status);
        if let Some(hw) = &a.hardware {
            let _ = write!(
                out,
                "\n  Hardware: {} / {}GB RAM / {}GB disk",
                hw.cpu_summary, hw.memory_gb, hw.disk_gb
            );
            if let Some(gpu) = &hw.gpu_info {
                let _ = write!(out, " / {gpu}");
            }
        }
        out.push('\n');
    }
    out
}

/// The full `delegate_task` description for this listing.
pub fn delegate_description(agents: &[ListedAgent]) -> String {
    format!("{DELEGATE_BASE_DESCRIPTION}{}", format_listing(agents))
}

/// The current listing, shared between the refresh task and the MCP handler.
#[derive(Debug)]
pub struct AgentListing {
    api: WorkspaceApi,
    self_id: Option<String>,
    agents: RwLock<Vec<ListedAgent>>,
    /// Becomes true once the first fetch has finished (successfully or not).
    first_done: watch::Sender<bool>,
}

impl AgentListing {
    /// An empty listing fetched through `api`, leaving out `self_id`.
    pub fn new(api: WorkspaceApi, self_id: Option<String>) -> Self {
        Self {
            api,
            self_id,
            agents: RwLock::new(Vec::new()),
            first_done: watch::Sender::new(false),
        }
    }

    /// Fetches the listing once; on failure the previous listing stays. Returns the count kept.
    pub async fn refresh(&self) -> Result<usize, ListingError> {
        let body = self.api.get(DISCOVERY_PATH, LISTING_TIMEOUT).await?;
        let agents = parse_listing(&body, self.self_id.as_deref())?;
        let n = agents.len();
        *self.agents.write().unwrap_or_else(|e| e.into_inner()) = agents;
        Ok(n)
    }

    /// Starts the refresh loop: one fetch now, then one every `period`.
    pub fn spawn_refresh(self: &Arc<Self>, period: Duration) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match this.refresh().await {
                    Ok(n) => tracing::debug!(agents = n, "mcp: refreshed agent listing"),
                    Err(err) => tracing::warn!("mcp: agent listing refresh failed: {err}"),
                }
                this.first_done.send_replace(true);
            }
        })
    }

    /// Waits (at most `max`) until the first fetch has finished, so that the first
    /// `tools/list` shows the real listing without delaying `initialize`.
    pub async fn wait_first_fetch(&self, max: Duration) {
        let mut rx = self.first_done.subscribe();
        let _ = tokio::time::timeout(max, rx.wait_for(|done| *done)).await;
    }

    /// The agents currently listed.
    pub fn agents(&self) -> Vec<ListedAgent> {
        self.agents
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current `delegate_task` description.
    pub fn delegate_description(&self) -> String {
        delegate_description(&self.agents.read().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_listing() {
        assert_eq!(
            delegate_description(&[]),
            "Delegate a task to another agent in your workspace. The target agent will execute \
             the task and stream results back.\n\nNo other agents are currently available in \
             this workspace."
        );
    }

    #[test]
    fn full_entry_with_languages_tools_tags_and_hardware() {
        let body = json!([{
            "agent_id": "sb-1", "display_name": "Builder", "description": "ignored when card has parts",
            "agent_type": "claudecode", "status": "available", "version": 3,
            "card": {
                "tags": ["rust", "gpu"],
                "languages": [{"name": "go", "version": "1.22"}, {"name": "python", "version": "3.11"}],
                "tools": [{"name": "git", "version": "2.4"}, {"name": "docker"}],
                "hardware": {"cpu_summary": "16 cores", "memory_gb": 62.7, "disk_gb": 500.2,
                             "has_gpu": true, "gpu_info": "1x H100"}
            }
        }])
        .to_string();
        let agents = parse_listing(&body, None).unwrap();
        assert_eq!(
            format_listing(&agents),
            "\n\nAvailable agents in this workspace:\n- Builder (sb-1): go 1.22, python 3.11, git, \
             docker [rust, gpu] — available\n  Hardware: 16 cores / 62GB RAM / 500GB disk / 1x H100\n"
        );
    }

    #[test]
    fn description_fallback_no_gpu_and_self_filtered() {
        let body = json!([
            {"agent_id": "me", "display_name": "Me", "status": "available", "card": {}},
            {"agent_id": "sb-2", "display_name": "Helper", "description": "Does things",
             "status": "busy", "card": {"hardware": {"cpu_summary": "4 cores", "memory_gb": 8,
             "disk_gb": 100, "has_gpu": false, "gpu_info": "none"}}},
            {"agent_id": "sb-3", "display_name": "Bare", "status": "offline", "card": null}
        ])
        .to_string();
        let agents = parse_listing(&body, Some("me")).unwrap();
        assert_eq!(agents.len(), 2);
        assert_eq!(
            format_listing(&agents),
            "\n\nAvailable agents in this workspace:\n- Helper (sb-2): Does things — busy\n  \
             Hardware: 4 cores / 8GB RAM / 100GB disk\n- Bare (sb-3): — offline\n"
        );
    }

    #[test]
    fn not_an_array_is_an_error() {
        assert!(matches!(
            parse_listing("{\"error\":1}", None),
            Err(ListingError::Invalid(_))
        ));
    }
}
