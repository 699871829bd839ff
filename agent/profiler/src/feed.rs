//! The profiler's side of the flight-recorder contracts (`nodescope_model::feeds`):
//! timestamped, symbolized sample batches for a [`SampleSink`], and [`ProfilerControl`]
//! (a temporary rate boost of the continuous profiler).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use nodescope_model::feeds::{
    OnDemandProfiler, ProfilerControl, SampleBatch, SampleKind, StackRecord, TimedSample,
};
use parking_lot::Mutex;

use crate::sampler::TimedRaw;
use crate::symbolize::ResolvedSample;

/// Builds one batch from a drain's symbolized distinct stacks (`resolved[i]` is the
/// sample `timed[..].sample == i` points at).
pub fn build_batch(hz: u32, resolved: &[ResolvedSample], timed: &[TimedRaw]) -> SampleBatch {
    let mut stacks: Vec<StackRecord> = Vec::new();
    // Distinct (pid, tid) keys share a stack record when their frames are the same.
    let mut by_stack: HashMap<StackRecord, u32> = HashMap::new();
    let mut index: Vec<u32> = Vec::with_capacity(resolved.len());
    for r in resolved {
        let rec = StackRecord {
            frames: r
                .frames
                .iter()
                .flat_map(|f| crate::output::model_frames(f))
                .collect(),
            process: r.comm.clone(),
            workload: Arc::from(r.workload.label.as_str()),
        };
        let i = match by_stack.get(&rec) {
            Some(&i) => i,
            None => {
                let i = stacks.len() as u32;
                by_stack.insert(rec.clone(), i);
                stacks.push(rec);
                i
            }
        };
        index.push(i);
    }
    let samples = timed
        .iter()
        .filter_map(|t| {
            let r = resolved.get(t.sample as usize)?;
            Some(TimedSample {
                time: t.time,
                pid: r.pid,
                tid: r.tid,
                cpu: t.cpu,
                stack: index[t.sample as usize],
                kind: SampleKind::OnCpu,
            })
        })
        .collect();
    SampleBatch {
        hz,
        stacks,
        samples,
    }
}

const STARTING: u8 = 0;
const RUNNING: u8 = 1;
const DOWN: u8 = 2;
const OFF: u8 = 3;

/// The continuous profiler's rate: the configured one, or a boost until a deadline.
/// Read by the continuous loop every drain tick; provided as `dyn ProfilerControl`.
#[derive(Debug)]
pub struct RateControl {
    base: u32,
    max: u32,
    state: AtomicU8,
    current: AtomicU32,
    boost: Mutex<Option<(u32, SystemTime)>>,
    down_reason: Mutex<String>,
}

impl RateControl {
    pub fn new(base: u32, max: u32, continuous: bool) -> Self {
        RateControl {
            base,
            max,
            state: AtomicU8::new(if continuous { STARTING } else { OFF }),
            current: AtomicU32::new(0),
            boost: Mutex::new(None),
            down_reason: Mutex::new(String::new()),
        }
    }

    /// The rate the sampler should run at `now` (an expired boost is forgotten).
    pub fn desired(&self, now: SystemTime) -> u32 {
        let mut b = self.boost.lock();
        match *b {
            Some((hz, until)) if now < until => hz,
            Some(_) => {
                *b = None;
                self.base
            }
            None => self.base,
        }
    }

    pub(crate) fn set_running(&self, hz: u32) {
        self.current.store(hz, Ordering::Release);
        self.state.store(RUNNING, Ordering::Release);
    }

    pub(crate) fn set_down(&self, reason: String) {
        *self.down_reason.lock() = reason;
        self.current.store(0, Ordering::Release);
        self.state.store(DOWN, Ordering::Release);
    }

    pub(crate) fn set_stopped(&self) {
        self.current.store(0, Ordering::Release);
        self.state.store(OFF, Ordering::Release);
    }
}

impl ProfilerControl for RateControl {
    fn boost(&self, hz: u32, until: SystemTime) -> Result<(), String> {
        match self.state.load(Ordering::Acquire) {
            OFF => {
                return Err(
                    "continuous profiling is off (profiling.continuous = false, or neither a \
                     profile exporter nor the flight recorder consumes samples)"
                        .into(),
                )
            }
            DOWN => {
                return Err(format!(
                    "the eBPF sampler is unavailable: {}",
                    self.down_reason.lock()
                ))
            }
            _ => {}
        }
        if hz == 0 || hz > self.max {
            return Err(format!(
                "hz must be between 1 and profiling.max_hz ({}), got {hz}",
                self.max
            ));
        }
        *self.boost.lock() = Some((hz, until));
        Ok(())
    }

    fn current_hz(&self) -> u32 {
        self.current.load(Ordering::Acquire)
    }
}

/// [`OnDemandProfiler`] over the profiler service: the recorder's off-CPU profile of the
/// node during an incident's after window. Runs like `GET /debug/pprof/profile?all=1&type=offcpu`
/// (same slot, same limits), so it counts against `max_concurrent` and is refused while
/// an off-CPU profile of the whole node is already running.
pub struct OnDemand(pub Arc<crate::ProfilerService>);

#[async_trait::async_trait]
impl OnDemandProfiler for OnDemand {
    async fn offcpu_node(&self, seconds: u64) -> Result<Vec<u8>, String> {
        let limits = self.0.limits();
        let req = crate::request::ProfileRequest {
            target: crate::request::Target::All,
            seconds: seconds.clamp(1, limits.max_seconds.max(1)),
            hz: limits.default_hz,
            format: crate::Format::Pprof,
            kind: crate::request::ProfileKind::OffCpu,
        };
        self.0
            .profile(req, tokio_util::sync::CancellationToken::new())
            .await
            .map(|r| r.body)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn boost_then_expire() {
        let c = RateControl::new(19, 499, true);
        let now = SystemTime::now();
        assert_eq!(c.desired(now), 19);
        c.boost(99, now + Duration::from_secs(5)).unwrap();
        assert_eq!(c.desired(now), 99);
        assert_eq!(c.desired(now + Duration::from_secs(6)), 19);
        assert!(c.boost(500, now).unwrap_err().contains("499"));
        assert!(c.boost(0, now).is_err());
        c.set_running(99);
        assert_eq!(c.current_hz(), 99);
        c.set_down("no BPF".into());
        assert!(c.boost(99, now).unwrap_err().contains("no BPF"));
        assert_eq!(c.current_hz(), 0);
        let off = RateControl::new(19, 499, false);
        assert!(off
            .boost(99, now)
            .unwrap_err()
            .contains("continuous profiling is off"));
    }
}
