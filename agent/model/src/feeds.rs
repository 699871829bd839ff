//! Contracts between the producers and the flight recorder: timestamped CPU (and off-CPU)
//! samples with their symbolized stacks, and the profiler's rate control.
//!
//! The profiler aggregates in the kernel for pprof; the recorder also needs *when* each
//! sample was taken (a sub-second heatmap, an incident window and a baseline window cut
//! out of the same recording), which pprof does not store. The profiler hands its samples
//! over in batches through [`SampleSink::offer`], which never blocks: the sink bounds
//! itself and counts what it drops. Stacks come already symbolized (processes may be gone
//! by the time a bundle is written).

use std::sync::Arc;
use std::time::SystemTime;

/// One symbolized frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Function name (demangled), or `[unknown]` / `module+0xoffset` when unresolved.
    pub function: Arc<str>,
    /// Binary or `[kernel.kallsyms]`.
    pub module: Arc<str>,
    /// Source file, when known.
    pub file: Option<Arc<str>>,
    pub line: u32,
    /// Instruction address (virtual, in the process), 0 when not meaningful.
    pub address: u64,
    pub kernel: bool,
}

/// What a sample measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SampleKind {
    /// A CPU sample at the profiler's rate (one sample stands for 1/hz seconds of CPU).
    OnCpu,
    /// Time off the CPU, in nanoseconds (already rescaled for the sampling probability).
    OffCpu { nanos: u64, preempted: bool },
}

/// One sample, pointing at a stack of its batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedSample {
    /// When the sample was taken.
    pub time: SystemTime,
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    /// Index into [`SampleBatch::stacks`].
    pub stack: u32,
    pub kind: SampleKind,
}

/// A symbolized stack and who ran it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StackRecord {
    /// Leaf first.
    pub frames: Vec<Frame>,
    /// Process name (`comm`).
    pub process: Arc<str>,
    /// The `workload` label value the profiler and the network probes use.
    pub workload: Arc<str>,
}

/// Samples taken since the previous batch, with the stacks they use.
#[derive(Clone, Debug, Default)]
pub struct SampleBatch {
    /// Sampling frequency of the on-CPU samples in this batch.
    pub hz: u32,
    pub stacks: Vec<StackRecord>,
    pub samples: Vec<TimedSample>,
}

/// Receives sample batches (the flight recorder). Must not block; bounds itself.
pub trait SampleSink: Send + Sync + 'static {
    fn offer(&self, batch: SampleBatch);
}

/// Lets the recorder raise the continuous profiler's rate for a while (the `--after`
/// window of an incident), provided by the profiler.
pub trait ProfilerControl: Send + Sync + 'static {
    /// Samples at `hz` until `until` (then back to the configured rate). Errors say why
    /// not (continuous profiling off, eBPF unavailable, `hz` above the cap).
    fn boost(&self, hz: u32, until: SystemTime) -> Result<(), String>;
    /// The rate in force now (0 when continuous profiling is off).
    fn current_hz(&self) -> u32;
}

/// Profiles that exist only on demand, which the recorder asks for during an incident's
/// `--after` window (the off-CPU programs are attached only while a profile runs, so the
/// recorder has no off-CPU history to cut a window from). Provided by the profiler.
#[async_trait::async_trait]
pub trait OnDemandProfiler: Send + Sync + 'static {
    /// An off-CPU profile of the whole node for `seconds` (clamped to the profiler's
    /// maximum): gzip-compressed pprof, nanoseconds off CPU per stack. Errors say why not
    /// (profiling off, eBPF unavailable, another off-CPU profile of the node running).
    async fn offcpu_node(&self, seconds: u64) -> Result<Vec<u8>, String>;
}

/// Receives every log record / event that enters the pipeline (network events, kernel log
/// lines), whether or not an exporter takes logs: the flight recorder's events ring. Called
/// on the pipeline's fan-out task: must not block; bounds itself.
pub trait EventSink: Send + Sync + 'static {
    fn offer(&self, records: &Arc<Vec<crate::LogRecord>>);
}

/// The agent's collectors, for components that sample them on their own schedule (the
/// flight recorder: host collectors every second, the rest every 10 s). A collection that
/// overlaps a scrape shares each collector's run; every run is under the collector
/// timeout. Provided by the agent once all components are built.
#[async_trait::async_trait]
pub trait MetricsSource: Send + Sync + 'static {
    /// Names of the collectors (`cpu`, `meminfo`, `network`, ...).
    fn collector_names(&self) -> Vec<&'static str>;
    /// Runs the named collectors (unknown names are ignored) and returns the batches of
    /// those that succeeded.
    async fn collect(&self, names: &[&str]) -> Vec<Arc<crate::MetricBatch>>;
}

/// Renders the self-contained `index.html` of an incident bundle (the web UI with the
/// bundle's data inlined, opening from `file://` with no network request). Provided by
/// the UI component; the recorder looks it up when it writes a bundle.
pub trait BundleRenderer: Send + Sync + 'static {
    /// `data_json` is the bundle's data document (see docs/incidents.md).
    fn index_html(&self, data_json: &str) -> Vec<u8>;
}
