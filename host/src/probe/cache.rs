//! Capabilities cached for the heartbeat. The first probe starts as early as the caller asks
//! ([`CapabilityCache::start_probe`], at process start) and runs in the background (≤ ~2 s);
//! the tunnel's agent info never waits for it ([`CapabilityCache::agent_info_json_now`]: no
//! capabilities until they are probed, and [`CapabilityCache::updates`] fires when they are,
//! so the next agent info goes out then). Later calls return the last result at once and,
//! once it is older than the maximum age, start one background re-probe.

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
    /// Notified each time a probe stores its result.
    updates: tokio::sync::watch::Sender<u64>,
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
                updates: tokio::sync::watch::Sender::new(0),
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

    /// Starts the first probe in the background unless it ran or is running (needs a Tokio
    /// runtime). Call it as early as possible: the probe then overlaps login, registration
    /// and the tunnel's connect.
    pub fn start_probe(&self) {
        {
            let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.report.is_some() || state.refreshing {
                return;
            }
            state.refreshing = true;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let report = this.capabilities().await;
            tracing::debug!(elapsed = ?report.elapsed, "capabilities probed");
        });
    }

    /// The capabilities probed so far, without waiting: `None` until the first probe is done
    /// (which this starts if nobody did); a stale result starts a background re-probe.
    pub fn current(&self) -> Option<Arc<CapabilityReport>> {
        let report = self.cached_or_refresh();
        if report.is_none() {
            self.start_probe();
        }
        report
    }

    /// Changes (a count of finished probes) each time a probe finishes, for every receiver:
    /// each sandbox's tunnel sends agent info then instead of waiting for its next period.
    pub fn updates(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.updates.subscribe()
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
        drop(state);
        self.inner.updates.send_modify(|n| *n += 1);
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

    /// The agent-info JSON for the tunnel, at once: system info collected now (within its
    /// budget), the capabilities only if they are probed already (the next agent info carries
    /// them otherwise), and the backend's own fields.
    pub async fn agent_info_json_now(
        &self,
        workdir: &str,
        backend_fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Vec<u8> {
        let system = self.inner.prober.system_info().await;
        let capabilities = self.current().map(|r| r.capabilities.clone());
        let info = AgentInfo::from_parts(&system.info, capabilities, workdir, "")
            .with_backend_fields(backend_fields);
        serde_json::to_vec(&info).unwrap_or_else(|_| b"{}".to_vec())
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
