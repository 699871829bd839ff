//! Component status, served as JSON by `/api/v1/status`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    Collector,
    Exporter,
    Probe,
    Profiler,
    Server,
    Pipeline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentState {
    Starting,
    Ok,
    /// Works, but something is wrong (retrying, dropping, a sub-part down).
    Degraded,
    /// Its source or kernel feature is missing; `last_error` says what.
    Unavailable,
    Failed,
    /// A previous run is still blocked (hung NFS mount, ...); new runs are skipped.
    Stuck,
    Disabled,
    Stopped,
}

#[derive(Clone, Debug, Serialize)]
pub struct ComponentStatus {
    pub name: String,
    pub kind: ComponentKind,
    pub state: ComponentState,
    /// Seconds since the Unix epoch.
    pub last_success: Option<f64>,
    pub last_error: Option<String>,
    pub last_duration_seconds: Option<f64>,
    pub queue_depth: Option<u64>,
    pub dropped: u64,
    /// Free-form facts (probe attach points, verifier log excerpt, WAL bytes, ...).
    pub details: BTreeMap<String, String>,
}

/// A handle a component keeps to report its own status.
#[derive(Clone, Debug)]
pub struct StatusHandle(Arc<RwLock<ComponentStatus>>);

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl StatusHandle {
    pub fn success(&self, duration: Duration) {
        let mut s = self.0.write();
        s.state = ComponentState::Ok;
        s.last_success = Some(epoch_secs(SystemTime::now()));
        s.last_duration_seconds = Some(duration.as_secs_f64());
    }
    pub fn set_state(&self, state: ComponentState, error: Option<String>) {
        let mut s = self.0.write();
        s.state = state;
        if error.is_some() {
            s.last_error = error;
        }
    }
    pub fn failure(&self, state: ComponentState, error: String, duration: Option<Duration>) {
        let mut s = self.0.write();
        s.state = state;
        s.last_error = Some(error);
        if let Some(d) = duration {
            s.last_duration_seconds = Some(d.as_secs_f64());
        }
    }
    pub fn set_queue_depth(&self, depth: u64) {
        self.0.write().queue_depth = Some(depth);
    }
    pub fn set_dropped(&self, dropped: u64) {
        self.0.write().dropped = dropped;
    }
    pub fn set_detail(&self, key: impl Into<String>, value: impl Into<String>) {
        self.0.write().details.insert(key.into(), value.into());
    }
    pub fn state(&self) -> ComponentState {
        self.0.read().state
    }
    pub fn snapshot(&self) -> ComponentStatus {
        self.0.read().clone()
    }
}

/// All components' status handles. Registration happens at start-up (one entry per
/// configured component), so the registry's size is bounded by the configuration.
#[derive(Clone, Debug, Default)]
pub struct StatusRegistry(Arc<Mutex<Vec<StatusHandle>>>);

impl StatusRegistry {
    pub fn register(&self, name: impl Into<String>, kind: ComponentKind) -> StatusHandle {
        let name = name.into();
        let mut all = self.0.lock();
        if let Some(h) = all
            .iter()
            .find(|h| h.0.read().name == name && h.0.read().kind == kind)
        {
            return h.clone();
        }
        let h = StatusHandle(Arc::new(RwLock::new(ComponentStatus {
            name,
            kind,
            state: ComponentState::Starting,
            last_success: None,
            last_error: None,
            last_duration_seconds: None,
            queue_depth: None,
            dropped: 0,
            details: BTreeMap::new(),
        })));
        all.push(h.clone());
        h
    }

    pub fn snapshot(&self) -> Vec<ComponentStatus> {
        self.0.lock().iter().map(StatusHandle::snapshot).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_is_idempotent_and_reports() {
        let r = StatusRegistry::default();
        let a = r.register("cpu", ComponentKind::Collector);
        let b = r.register("cpu", ComponentKind::Collector);
        a.success(Duration::from_millis(3));
        assert_eq!(b.state(), ComponentState::Ok);
        assert_eq!(r.snapshot().len(), 1);
        b.failure(ComponentState::Unavailable, "no PSI".into(), None);
        let s = &r.snapshot()[0];
        assert_eq!(s.state, ComponentState::Unavailable);
        assert_eq!(s.last_error.as_deref(), Some("no PSI"));
    }
}
