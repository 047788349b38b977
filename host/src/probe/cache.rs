//! Capabilities cached for the heartbeat: the first call probes (≤ ~2 s), later calls return
//! the last result at once and, once it is older than the maximum age, start one background
//! re-probe whose result the following calls see.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{AgentInfo, CAPABILITIES_MAX_AGE, CapabilityReport, Prober};

/// Cached capabilities plus the agent-info builder used by the tunnel. Cheap to clone; clones
/// share the cache.
#[derive(Debug, Clone)]
pub struct CapabilityCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    prober: Prober,
    max_age: Duration,
    state: Mutex<State>,
    /// Serialises the first probe so concurrent first callers share it.
    first: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    report: Option<(Arc<CapabilityReport>, Instant)>,
    refreshing: bool,
}

impl CapabilityCache {
    /// A cache over `prober`, re-probing after [`CAPABILITIES_MAX_AGE`] (1 h).
    pub fn new(prober: Prober) -> Self {
        Self::with_max_age(prober, CAPABILITIES_MAX_AGE)
    }

    /// A cache re-probing after `max_age`.
    pub fn with_max_age(prober: Prober, max_age: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                prober,
                max_age,
                state: Mutex::new(State::default()),
                first: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The prober used.
    pub fn prober(&self) -> &Prober {
        &self.inner.prober
    }

    /// The last capabilities. Waits only when nothing was probed yet; otherwise returns at
    /// once and, if the result is stale and no re-probe is running, starts one in the
    /// background (needs a Tokio runtime).
    pub async fn capabilities(&self) -> Arc<CapabilityReport> {
        if let Some(report) = self.cached_or_refresh() {
            return report;
        }
        let _first = self.inner.first.lock().await;
        if let Some(report) = self.cached_or_refresh() {
            return report;
        }
        let report = Arc::new(self.inner.prober.probe_capabilities().await);
        self.store(report.clone());
        report
    }

    /// The cached report if any, starting a background refresh when it is stale.
    fn cached_or_refresh(&self) -> Option<Arc<CapabilityReport>> {
        let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let (report, at) = state.report.clone()?;
        if at.elapsed() >= self.inner.max_age && !state.refreshing {
            state.refreshing = true;
            let this = self.clone();
            tokio::spawn(async move {
                let fresh = Arc::new(this.inner.prober.probe_capabilities().await);
                tracing::debug!(elapsed = ?fresh.elapsed, "capabilities re-probed");
                this.store(fresh);
            });
        }
        Some(report)
    }

    fn store(&self, report: Arc<CapabilityReport>) {
        let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        state.report = Some((report, Instant::now()));
        state.refreshing = false;
    }

    /// The full agent-info document: system info collected now (within its budget) and the
    /// cached capabilities.
    pub async fn agent_info(&self, workdir: &str, opencode_version: &str) -> AgentInfo {
        let (system, capabilities) =
            tokio::join!(self.inner.prober.system_info(), self.capabilities());
        AgentInfo::from_parts(
            &system.info,
            Some(capabilities.capabilities.clone()),
            workdir,
            opencode_version,
        )
    }

    /// The agent-info JSON bytes written on a control stream (§6.4.1): no envelope, no
    /// trailing newline.
    pub async fn agent_info_json(&self, workdir: &str, opencode_version: &str) -> Vec<u8> {
        let mut fields = serde_json::Map::new();
        fields.insert("opencode_version".into(), opencode_version.into());
        self.agent_info_json_with(workdir, &fields).await
    }

    /// [`CapabilityCache::agent_info_json`] with a backend's own fields
    /// ([`AgentInfo::with_backend_fields`]).
    pub async fn agent_info_json_with(
        &self,
        workdir: &str,
        backend_fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Vec<u8> {
        let info = self
            .agent_info(workdir, "")
            .await
            .with_backend_fields(backend_fields);
        // Serialising plain structs of strings and numbers cannot fail; an empty object is
        // still a valid (partial) agent info should it ever happen.
        serde_json::to_vec(&info).unwrap_or_else(|_| b"{}".to_vec())
    }
}
