//! Shared delivery machinery for nodescope's push exporters.
//!
//! An exporter supplies two halves and this crate does the rest:
//! - an [`Encoder`] that turns a batch of [`Signal`]s into wire [`Payload`]s (already
//!   compressed, ready to send), and
//! - a [`Transport`] that sends one payload and says whether a failure is retryable.
//!
//! [`Delivery::run`] then batches by size and time, keeps encoded payloads in a byte-bounded
//! memory backlog or in the disk [`wal::Wal`], and sends them one at a time, in order, with
//! exponential backoff and jitter that honours server hints (`Retry-After`, gRPC
//! `RetryInfo`). Invariants:
//! - the intake never waits for the network: it only batches, encodes and appends;
//! - at most one payload is in flight per exporter, so payloads (and Loki streams) arrive
//!   in order, and a crash re-sends at most that one payload (WAL on);
//! - every item that does not reach the backend is counted in
//!   `nodescope_exporter_dropped_total{exporter,reason}`.

pub mod backoff;
pub mod config;
pub mod http;
pub mod metrics;
pub mod wal;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodescope_model::selfmetrics::SelfMetrics;
use nodescope_model::{
    Ack, ComponentKind, ComponentState, ExportError, Exporter, ExporterQueue, LogBatch,
    MetricBatch, MetricFamily, Resource, Signal, SignalKind, StatusHandle, StatusRegistry,
};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::Instrument;

pub use backoff::Backoff;
pub use config::{
    AuthConfig, BatchConfig, DeliveryConfig, FsyncPolicy, RetryConfig, TlsConfig, WalConfig,
};
pub use metrics::{DropReason, ExporterMetrics};
pub use wal::{Wal, WalError};

/// What every exporter's `build()` receives from the agent.
#[derive(Clone, Debug, Default)]
pub struct ExporterContext {
    pub resource: Resource,
    pub self_metrics: SelfMetrics,
    pub status: StatusRegistry,
}

/// One encoded request body (or the parts an exporter needs to build one).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Payload {
    /// Items it carries (metric points, log lines, profiles), for the self metrics.
    pub items: u32,
    /// Exporter-defined metadata (e.g. Pyroscope's query string); stored in the WAL.
    pub meta: Vec<u8>,
    /// The request body, already encoded and compressed.
    pub body: Vec<u8>,
}

impl Payload {
    pub fn size(&self) -> usize {
        self.meta.len() + self.body.len() + 32
    }
}

/// Turns batches of signals into payloads. Runs on tokio's blocking pool (one batch at a
/// time per exporter), never on a runtime worker thread.
pub trait Encoder: Send + 'static {
    fn encode(&mut self, batch: &[Signal]) -> Result<Vec<Payload>, ExportError>;
}

#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends one payload. `Ok(n)`: accepted, except `n` items the backend refused
    /// (OTLP partial success). `Err(Retryable)` is retried with backoff; `Err(Rejected)`
    /// and `Err(Encode)` are final.
    async fn send(&self, payload: &Payload) -> Result<u64, ExportError>;

    /// Called once for each payload refused for good, after it was counted; exporters use
    /// it to log what was refused (Loki logs once per stream).
    fn rejected(&self, _payload: &Payload, _reason: &str) {}
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("exporter {exporter}: opening WAL in {dir}: {source}")]
    Wal {
        exporter: String,
        dir: PathBuf,
        #[source]
        source: WalError,
    },
}

/// Items a signal carries.
pub fn signal_items(s: &Signal) -> usize {
    match s {
        Signal::Metrics(b) => b.point_count(),
        Signal::Logs(l) => l.len(),
        Signal::Profile(_) => 1,
    }
}

/// Splits a signal with more than `max_items` items into several, so no request exceeds
/// the batch size (gRPC receivers refuse messages over 4 MiB by default).
pub fn split_signal(s: Signal, max_items: usize) -> Vec<Signal> {
    let max_items = max_items.max(1);
    if signal_items(&s) <= max_items {
        return vec![s];
    }
    match s {
        Signal::Metrics(b) => {
            let mut out = Vec::new();
            let mut cur: Vec<MetricFamily> = Vec::new();
            let mut n = 0;
            for f in &b.families {
                for chunk in f.points.chunks(max_items) {
                    if n + chunk.len() > max_items && n > 0 {
                        out.push(std::mem::take(&mut cur));
                        n = 0;
                    }
                    cur.push(MetricFamily {
                        name: f.name.clone(),
                        help: f.help.clone(),
                        kind: f.kind,
                        points: chunk.to_vec(),
                    });
                    n += chunk.len();
                }
            }
            if !cur.is_empty() {
                out.push(cur);
            }
            out.into_iter()
                .map(|families| {
                    Signal::Metrics(Arc::new(MetricBatch {
                        source: b.source.clone(),
                        timestamp: b.timestamp,
                        families,
                    }))
                })
                .collect()
        }
        Signal::Logs(mut l) => {
            // The acknowledgement goes with the last part: payloads are sent in order.
            let ack = l.ack.take();
            let mut parts: Vec<LogBatch> = l
                .chunks(max_items)
                .map(|c| LogBatch::new(c.to_vec()))
                .collect();
            if let Some(last) = parts.last_mut() {
                last.ack = ack;
            }
            parts.into_iter().map(Signal::Logs).collect()
        }
        p @ Signal::Profile(_) => vec![p],
    }
}

enum Backlog {
    Memory {
        /// Each payload with the log acknowledgements it completes once delivered.
        queue: VecDeque<(Payload, Vec<Ack>)>,
        bytes: usize,
    },
    Wal(Box<Wal>),
}

/// Where the next payload to send came from, so it can be acknowledged.
enum Source {
    /// With the producers' acknowledgements it completes.
    Memory(Vec<Ack>),
    Wal(wal::Pos),
}

struct Shared {
    name: String,
    cfg: DeliveryConfig,
    metrics: ExporterMetrics,
    status: StatusHandle,
    backlog: Mutex<Backlog>,
    in_flight_bytes: Mutex<usize>,
    wake: Notify,
    closing: AtomicBool,
    deadline: Mutex<Option<Instant>>,
}

/// The batching / retry / WAL engine of one exporter.
pub struct Delivery {
    shared: Arc<Shared>,
}

enum Outcome {
    /// Delivered, or refused for good by the backend.
    Done,
    /// `retry.max_elapsed` passed.
    GaveUp,
    /// Shutdown deadline reached while the payload was still unsent.
    Abandoned,
}

impl Delivery {
    /// Registers the exporter's status and self metrics and opens its WAL (if enabled)
    /// under `<wal.dir>/<name>`.
    pub fn new(
        name: &str,
        cfg: &DeliveryConfig,
        ctx: &ExporterContext,
    ) -> Result<Delivery, DeliveryError> {
        let metrics = ExporterMetrics::register(&ctx.self_metrics, name);
        let status = ctx.status.register(name, ComponentKind::Exporter);
        let backlog = if cfg.wal.enabled {
            let dir = cfg.wal.dir.join(name);
            let mut w = Wal::open(&dir, &cfg.wal).map_err(|source| DeliveryError::Wal {
                exporter: name.to_string(),
                dir: dir.clone(),
                source,
            })?;
            let ev = w.take_events();
            metrics.wal_corrupt.add(ev.corrupt);
            metrics.wal_bytes.set(w.bytes() as f64);
            status.set_detail("wal_dir", dir.display().to_string());
            Backlog::Wal(Box::new(w))
        } else {
            Backlog::Memory {
                queue: VecDeque::new(),
                bytes: 0,
            }
        };
        Ok(Delivery {
            shared: Arc::new(Shared {
                name: name.to_string(),
                cfg: cfg.clone(),
                metrics,
                status,
                backlog: Mutex::new(backlog),
                in_flight_bytes: Mutex::new(0),
                wake: Notify::new(),
                closing: AtomicBool::new(false),
                deadline: Mutex::new(None),
            }),
        })
    }

    pub fn metrics(&self) -> &ExporterMetrics {
        &self.shared.metrics
    }

    pub fn status(&self) -> &StatusHandle {
        &self.shared.status
    }

    /// Runs until `queue` is closed and drained, then flushes within `queue.flush_timeout`
    /// (the WAL keeps whatever could not be sent; without a WAL it is counted as
    /// `reason="shutdown"`).
    pub async fn run<E: Encoder, T: Transport>(
        self,
        mut queue: ExporterQueue,
        encoder: E,
        transport: T,
    ) {
        let shared = self.shared;
        // Encoding and WAL writes (with their fsyncs) block: they run on the blocking pool,
        // one at a time per exporter, so a slow disk or a large batch cannot stall the
        // runtime's two worker threads (and with them the HTTP server).
        let encoder = Arc::new(Mutex::new(encoder));
        let span = tracing::info_span!("exporter", exporter = %shared.name);
        let sender = tokio::spawn(sender_loop(shared.clone(), transport).instrument(span.clone()));
        async {
            shared.status.set_state(ComponentState::Ok, None);
            let max_items = shared.cfg.batch.max_items;
            let max_bytes = shared.cfg.batch.max_bytes;
            let mut batch: Vec<Signal> = Vec::new();
            let (mut items, mut bytes) = (0usize, 0usize);
            let mut first_at: Option<Instant> = None;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let deadline = first_at.map(|t| t + shared.cfg.batch.timeout);
                tokio::select! {
                    s = queue.recv() => match s {
                        Some(sig) => {
                            for part in split_signal(sig, max_items) {
                                let n = signal_items(&part);
                                if items + n > max_items && !batch.is_empty() {
                                    flush_off_runtime(&shared, &encoder, &mut batch).await;
                                    (items, bytes, first_at) = (0, 0, None);
                                }
                                bytes += part.approx_size();
                                items += n;
                                batch.push(part);
                                first_at.get_or_insert_with(Instant::now);
                                if items >= max_items || bytes >= max_bytes {
                                    flush_off_runtime(&shared, &encoder, &mut batch).await;
                                    (items, bytes, first_at) = (0, 0, None);
                                }
                            }
                        }
                        None => break,
                    },
                    _ = sleep_until_opt(deadline) => {
                        flush_off_runtime(&shared, &encoder, &mut batch).await;
                        (items, bytes, first_at) = (0, 0, None);
                    }
                    _ = tick.tick() => off_runtime(&shared, housekeeping).await.unwrap_or(()),
                }
            }
            flush_off_runtime(&shared, &encoder, &mut batch).await;
            // Leave a margin before the pipeline aborts the task.
            let grace = queue.flush_timeout.mul_f64(0.9);
            *shared.deadline.lock() = Some(Instant::now() + grace);
            shared.closing.store(true, Ordering::SeqCst);
            shared.wake.notify_one();
            let mut sender = sender;
            if tokio::time::timeout(grace + Duration::from_millis(200), &mut sender)
                .await
                .is_err()
            {
                sender.abort();
            }
            finish(&shared);
        }
        .instrument(span)
        .await
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Runs `f` on the blocking pool (the WAL's file I/O and fsyncs); `None` if it panicked.
async fn off_runtime<R: Send + 'static>(shared: &Arc<Shared>, f: fn(&Shared) -> R) -> Option<R> {
    if !matches!(&*shared.backlog.lock(), Backlog::Wal(_)) {
        return Some(f(shared)); // memory only: nothing blocks
    }
    let sh = shared.clone();
    match tokio::task::spawn_blocking(move || f(&sh)).await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "WAL task failed");
            None
        }
    }
}

/// [`flush`] on the blocking pool.
async fn flush_off_runtime<E: Encoder>(
    shared: &Arc<Shared>,
    encoder: &Arc<Mutex<E>>,
    batch: &mut Vec<Signal>,
) {
    if batch.is_empty() {
        return;
    }
    let mut b = std::mem::take(batch);
    let (sh, enc) = (shared.clone(), encoder.clone());
    let items: usize = b.iter().map(signal_items).sum();
    if let Err(e) = tokio::task::spawn_blocking(move || flush(&sh, &mut *enc.lock(), &mut b)).await
    {
        tracing::error!(error = %e, items, "encoding task failed; batch dropped");
        shared.metrics.dropped(DropReason::Encode).add(items as u64);
    }
}

fn housekeeping(shared: &Shared) {
    let mut b = shared.backlog.lock();
    if let Backlog::Wal(w) = &mut *b {
        if let Err(e) = w.maybe_sync() {
            tracing::warn!(error = %e, "WAL fsync failed");
        }
    }
    drop(b);
    update_gauges(shared);
}

fn update_gauges(shared: &Shared) {
    let inflight = *shared.in_flight_bytes.lock();
    let (depth, qbytes, wbytes) = match &*shared.backlog.lock() {
        Backlog::Memory { queue, bytes } => (queue.len() as u64, *bytes, None),
        Backlog::Wal(w) => (0, 0, Some(w.bytes())),
    };
    shared.metrics.queue_bytes.set((qbytes + inflight) as f64);
    shared.status.set_queue_depth(depth);
    shared.status.set_dropped(shared.metrics.dropped_total());
    if let Some(w) = wbytes {
        shared.metrics.wal_bytes.set(w as f64);
        shared.status.set_detail("wal_bytes", w.to_string());
    }
    shared
        .status
        .set_detail("queue_bytes", (qbytes + inflight).to_string());
}

/// Encodes the batch and appends the payloads to the backlog.
///
/// Log acknowledgements ([`Ack`]) are taken out of the batch first. With the memory
/// backlog they travel with the batch's last payload and complete when it is delivered;
/// with the WAL they complete once every payload of the batch is appended (and synced,
/// unless `fsync = "never"`). A batch that carries acknowledgements and does not fit (memory
/// limit, WAL size) is refused instead of evicting older data: its acknowledgements are
/// dropped, so the producer keeps the lines in its source and offers them again later.
fn flush<E: Encoder>(shared: &Shared, encoder: &mut E, batch: &mut Vec<Signal>) {
    if batch.is_empty() {
        return;
    }
    let items: usize = batch.iter().map(signal_items).sum();
    let mut acks: Vec<Ack> = batch
        .iter_mut()
        .filter_map(|s| match s {
            Signal::Logs(l) => l.ack.take(),
            _ => None,
        })
        .collect();
    let has_acks = !acks.is_empty();
    let payloads = match encoder.encode(batch) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, items, "cannot encode batch; dropping it");
            shared.metrics.dropped(DropReason::Encode).add(items as u64);
            shared
                .status
                .failure(ComponentState::Degraded, e.to_string(), None);
            batch.clear();
            return;
        }
    };
    batch.clear();
    let n = payloads.len();
    let limit = shared.cfg.batch.memory_limit_bytes;
    let mut refused = false;
    let mut wal_appended = false;
    {
        let mut b = shared.backlog.lock();
        for (i, p) in payloads.into_iter().enumerate() {
            if refused {
                break;
            }
            match &mut *b {
                Backlog::Memory { queue, bytes } => {
                    let inflight = *shared.in_flight_bytes.lock();
                    let size = p.size();
                    if has_acks && *bytes + size + inflight > limit {
                        refused = true;
                        continue;
                    }
                    if size + inflight > limit {
                        shared
                            .metrics
                            .dropped(DropReason::MemoryLimit)
                            .add(u64::from(p.items));
                        continue;
                    }
                    while *bytes + size + inflight > limit {
                        let Some((old, _acks)) = queue.pop_front() else {
                            break;
                        };
                        *bytes -= old.size();
                        shared
                            .metrics
                            .dropped(DropReason::MemoryLimit)
                            .add(u64::from(old.items));
                    }
                    *bytes += size;
                    let mine = if i + 1 == n {
                        std::mem::take(&mut acks)
                    } else {
                        Vec::new()
                    };
                    queue.push_back((p, mine));
                }
                Backlog::Wal(w) => {
                    if has_acks && w.bytes() + p.size() as u64 + 64 > shared.cfg.wal.max_bytes {
                        refused = true;
                        continue;
                    }
                    match w.append(&p) {
                        Ok(()) => wal_appended = true,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot append to the WAL; dropping payload");
                            refused = true;
                            shared
                                .metrics
                                .dropped(DropReason::Encode)
                                .add(u64::from(p.items));
                        }
                    }
                    let ev = w.take_events();
                    shared
                        .metrics
                        .dropped(DropReason::WalFull)
                        .add(ev.dropped_items);
                    shared.metrics.wal_corrupt.add(ev.corrupt);
                }
            }
        }
        if let Backlog::Wal(w) = &mut *b {
            if has_acks && !refused && wal_appended && shared.cfg.wal.fsync == FsyncPolicy::Interval
            {
                if let Err(e) = w.sync() {
                    tracing::warn!(error = %e, "WAL fsync failed; the batch is not acknowledged");
                    refused = true;
                }
            }
            if !refused {
                for a in acks.drain(..) {
                    a.complete();
                }
            }
        } else if n == 0 && !refused {
            // Nothing to send (the encoder found nothing for this backend).
            for a in acks.drain(..) {
                a.complete();
            }
        }
    }
    if refused && has_acks {
        shared.metrics.refused.inc();
        tracing::debug!(items, "backlog full: batch refused, its producer keeps it");
    }
    // Acknowledgements still here were not taken by the backlog: dropping them tells
    // their producers the batch was not stored.
    drop(acks);
    update_gauges(shared);
    shared.wake.notify_one();
}

fn next_payload(shared: &Shared) -> Option<(Payload, Source)> {
    let mut b = shared.backlog.lock();
    match &mut *b {
        Backlog::Memory { queue, bytes } => {
            let (p, acks) = queue.pop_front()?;
            *bytes -= p.size();
            *shared.in_flight_bytes.lock() = p.size();
            Some((p, Source::Memory(acks)))
        }
        Backlog::Wal(w) => {
            let r = w.read_next();
            let ev = w.take_events();
            shared.metrics.wal_corrupt.add(ev.corrupt);
            match r {
                Ok(Some((p, pos))) => {
                    *shared.in_flight_bytes.lock() = p.size();
                    Some((p, Source::Wal(pos)))
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the WAL");
                    shared
                        .status
                        .failure(ComponentState::Degraded, e.to_string(), None);
                    None
                }
            }
        }
    }
}

/// The payload is done with: delivered (or refused for good) when `delivered`, else given
/// up (its log acknowledgements are dropped, so their producers offer the lines again).
fn ack(shared: &Shared, a: Source, delivered: bool) {
    *shared.in_flight_bytes.lock() = 0;
    match a {
        Source::Wal(pos) => {
            if let Backlog::Wal(w) = &mut *shared.backlog.lock() {
                if let Err(e) = w.ack(pos) {
                    tracing::warn!(error = %e, "cannot persist the WAL cursor");
                }
            }
        }
        Source::Memory(acks) => {
            if delivered {
                for a in acks {
                    a.complete();
                }
            }
        }
    }
}

fn past_deadline(shared: &Shared, at: Instant) -> bool {
    shared.deadline.lock().is_some_and(|d| at >= d)
}

async fn deadline_reached(shared: &Shared) {
    loop {
        let d = *shared.deadline.lock();
        match d {
            Some(d) => {
                tokio::time::sleep_until(d.into()).await;
                return;
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn sender_loop<T: Transport>(shared: Arc<Shared>, transport: T) {
    let mut backoff = Backoff::new(&shared.cfg.retry);
    loop {
        if past_deadline(&shared, Instant::now()) {
            return;
        }
        // Read before looking: `closing` is set after the intake's last flush, so a read
        // that starts after it was seen finds everything; one that started before may not.
        let closing = shared.closing.load(Ordering::SeqCst);
        let Some((p, a)) = off_runtime(&shared, next_payload).await.flatten() else {
            if closing {
                return;
            }
            // Woken by the intake, or periodically so the WAL reader can pick up data.
            let _ = tokio::time::timeout(Duration::from_millis(500), shared.wake.notified()).await;
            continue;
        };
        let outcome = deliver(&shared, &transport, &p, &mut backoff).await;
        match outcome {
            Outcome::Done | Outcome::GaveUp => {
                let delivered = matches!(outcome, Outcome::Done);
                if matches!(a, Source::Wal(_)) {
                    let sh = shared.clone();
                    if let Err(e) =
                        tokio::task::spawn_blocking(move || ack(&sh, a, delivered)).await
                    {
                        tracing::error!(error = %e, "WAL ack failed");
                    }
                } else {
                    ack(&shared, a, delivered);
                }
            }
            Outcome::Abandoned => {
                *shared.in_flight_bytes.lock() = 0;
                if let Source::Memory(_) = a {
                    shared
                        .metrics
                        .dropped(DropReason::Shutdown)
                        .add(u64::from(p.items));
                }
                return;
            }
        }
        update_gauges(&shared);
    }
}

async fn deliver<T: Transport>(
    shared: &Shared,
    transport: &T,
    p: &Payload,
    backoff: &mut Backoff,
) -> Outcome {
    let started = Instant::now();
    backoff.reset();
    let timeout = shared.cfg.retry.request_timeout;
    loop {
        let t0 = Instant::now();
        let res = tokio::select! {
            r = tokio::time::timeout(timeout, transport.send(p)) => match r {
                Ok(r) => r,
                Err(_) => Err(ExportError::Retryable {
                    backend: shared.name.clone(),
                    reason: format!("request timed out after {timeout:?}"),
                    retry_after: None,
                }),
            },
            // The shutdown deadline cancels a request still in flight.
            _ = deadline_reached(shared) => return Outcome::Abandoned,
        };
        match res {
            Ok(refused) => {
                let items = u64::from(p.items);
                let refused = refused.min(items);
                shared.metrics.sent.add(items - refused);
                if refused > 0 {
                    shared.metrics.dropped(DropReason::Rejected).add(refused);
                }
                shared.status.success(t0.elapsed());
                return Outcome::Done;
            }
            Err(e @ (ExportError::Rejected { .. } | ExportError::Encode { .. })) => {
                shared.metrics.failed.inc();
                let reason = e.to_string();
                shared
                    .metrics
                    .dropped(DropReason::Rejected)
                    .add(u64::from(p.items));
                shared
                    .status
                    .failure(ComponentState::Degraded, reason.clone(), Some(t0.elapsed()));
                transport.rejected(p, &reason);
                return Outcome::Done;
            }
            Err(ExportError::Retryable {
                reason,
                retry_after,
                ..
            }) => {
                shared.metrics.failed.inc();
                let max = shared.cfg.retry.max_elapsed;
                if !max.is_zero() && started.elapsed() >= max {
                    tracing::warn!(%reason, items = p.items, "giving up after retry.max_elapsed");
                    shared
                        .metrics
                        .dropped(DropReason::RetriesExhausted)
                        .add(u64::from(p.items));
                    return Outcome::GaveUp;
                }
                let delay = backoff.next_delay(retry_after);
                shared.status.failure(
                    ComponentState::Degraded,
                    format!("{reason} (retrying in {delay:?})"),
                    Some(t0.elapsed()),
                );
                tracing::debug!(%reason, ?delay, "send failed; retrying");
                let wake_at = Instant::now() + delay;
                // Sleep in short steps so a shutdown that begins meanwhile is noticed.
                loop {
                    let now = Instant::now();
                    if past_deadline(shared, now) || past_deadline(shared, wake_at) {
                        return Outcome::Abandoned;
                    }
                    if now >= wake_at {
                        break;
                    }
                    tokio::time::sleep((wake_at - now).min(Duration::from_millis(200))).await;
                }
                shared.metrics.retries.inc();
            }
        }
    }
}

fn finish(shared: &Shared) {
    let mut b = shared.backlog.lock();
    match &mut *b {
        Backlog::Memory { queue, bytes } => {
            let lost: u64 = queue.iter().map(|(p, _)| u64::from(p.items)).sum();
            if lost > 0 {
                tracing::warn!(items = lost, "stopping with unsent data and no WAL");
                shared.metrics.dropped(DropReason::Shutdown).add(lost);
            }
            queue.clear();
            *bytes = 0;
        }
        Backlog::Wal(w) => {
            if let Err(e) = w.sync() {
                tracing::warn!(error = %e, "final WAL fsync failed");
            }
            if !w.is_drained() {
                tracing::info!(
                    wal_bytes = w.bytes(),
                    "stopping; unsent data stays in the WAL"
                );
            }
        }
    }
    drop(b);
    update_gauges(shared);
    shared.status.set_state(ComponentState::Stopped, None);
}

/// A push exporter: the shared delivery engine driving one backend's encoder and
/// transport. Every nodescope push exporter is one of these; only the encoder, the
/// transport and the signals it takes differ.
pub struct PushExporter<E: Encoder, T: Transport> {
    name: &'static str,
    /// Metrics, logs, profiles.
    accepts: [bool; 3],
    delivery: Delivery,
    encoder: E,
    transport: T,
}

impl<E: Encoder, T: Transport> PushExporter<E, T> {
    pub fn new(
        name: &'static str,
        signals: &[SignalKind],
        delivery: Delivery,
        encoder: E,
        transport: T,
    ) -> Self {
        let accepts = SignalKind::ALL.map(|k| signals.contains(&k));
        PushExporter {
            name,
            accepts,
            delivery,
            encoder,
            transport,
        }
    }
}

#[async_trait::async_trait]
impl<E: Encoder, T: Transport> Exporter for PushExporter<E, T> {
    fn name(&self) -> &str {
        self.name
    }
    fn accepts(&self, kind: SignalKind) -> bool {
        self.accepts[kind.index()]
    }
    async fn run(self: Box<Self>, queue: ExporterQueue) {
        let s = *self;
        s.delivery.run(queue, s.encoder, s.transport).await
    }
}

impl From<&nodescope_component::BuildContext> for ExporterContext {
    fn from(ctx: &nodescope_component::BuildContext) -> Self {
        ExporterContext {
            resource: ctx.resource.clone(),
            self_metrics: ctx.self_metrics.clone(),
            status: ctx.status.clone(),
        }
    }
}

/// Implements [`nodescope_component::Component`] for an exporter's `*Config`, which must
/// have `enabled` and `wal` fields, `validate(&self, prefix, &mut Issues)` and
/// `build(&self, &ExporterContext) -> Result<Box<dyn Exporter>, E>`.
#[macro_export]
macro_rules! exporter_component {
    ($config:ty, $key:literal) => {
        impl nodescope_component::Component for $config {
            fn key(&self) -> &'static str {
                $key
            }
            fn enabled(&self) -> bool {
                self.enabled
            }
            fn validate(
                &self,
                ctx: &nodescope_component::ValidateContext,
                issues: &mut nodescope_model::config::Issues,
            ) {
                <$config>::validate(self, $key, issues);
                if ctx.environment {
                    self.wal.check_environment(concat!($key, ".wal"), issues);
                }
            }
            fn build(
                &self,
                ctx: &nodescope_component::BuildContext,
            ) -> Result<nodescope_component::Parts, nodescope_component::BuildError> {
                let exporter = <$config>::build(self, &$crate::ExporterContext::from(ctx))
                    .map_err(|e| nodescope_component::BuildError::new($key, e))?;
                tracing::info!(exporter = exporter.name(), "exporter enabled");
                Ok(nodescope_component::Parts::default().with_exporter(exporter))
            }
        }
    };
}

#[cfg(test)]
mod ack_tests {
    use super::*;
    use nodescope_model::{LogRecord, Severity};
    use std::sync::atomic::AtomicU8;
    use tokio::sync::mpsc;

    struct Enc;
    impl Encoder for Enc {
        fn encode(&mut self, batch: &[Signal]) -> Result<Vec<Payload>, ExportError> {
            let items: usize = batch.iter().map(signal_items).sum();
            Ok(vec![Payload {
                items: items as u32,
                meta: vec![],
                body: vec![7; items * 100],
            }])
        }
    }

    struct Tr(Arc<AtomicBool>);
    #[async_trait::async_trait]
    impl Transport for Tr {
        async fn send(&self, _p: &Payload) -> Result<u64, ExportError> {
            if self.0.load(Ordering::SeqCst) {
                Ok(0)
            } else {
                Err(ExportError::Retryable {
                    backend: "t".into(),
                    reason: "down".into(),
                    retry_after: None,
                })
            }
        }
    }

    /// 0 = pending, 1 = acknowledged, 2 = not acknowledged.
    fn batch(n: usize) -> (Signal, Arc<AtomicU8>) {
        let st = Arc::new(AtomicU8::new(0));
        let st2 = st.clone();
        let recs = (0..n)
            .map(|i| LogRecord {
                timestamp: std::time::SystemTime::now(),
                severity: Severity::Info,
                kind: "t".into(),
                body: i.to_string(),
                labels: vec![],
                attributes: vec![],
            })
            .collect();
        let ack = Ack::new(move |ok| st2.store(if ok { 1 } else { 2 }, Ordering::SeqCst));
        (Signal::Logs(LogBatch::with_ack(recs, ack)), st)
    }

    fn cfg(wal_dir: Option<&std::path::Path>, wal_max: u64) -> DeliveryConfig {
        let mut c = DeliveryConfig::default();
        c.batch.timeout = Duration::from_millis(20);
        c.batch.max_items = 5;
        c.retry.initial_backoff = Duration::from_millis(20);
        c.retry.max_backoff = Duration::from_millis(50);
        if let Some(d) = wal_dir {
            c.wal.enabled = true;
            c.wal.dir = d.to_path_buf();
            c.wal.max_bytes = wal_max;
            c.wal.segment_bytes = 4096;
        }
        c
    }

    async fn wait_for(st: &AtomicU8, want: u8) -> bool {
        for _ in 0..200 {
            if st.load(Ordering::SeqCst) == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_backlog_acknowledges_on_delivery_only() {
        let up = Arc::new(AtomicBool::new(false));
        let d = Delivery::new("t", &cfg(None, 0), &ExporterContext::default()).unwrap();
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(d.run(
            ExporterQueue {
                rx,
                flush_timeout: Duration::from_millis(300),
            },
            Enc,
            Tr(up.clone()),
        ));
        // 12 records: split into 3 parts of at most 5; the ack rides on the last.
        let (s, st) = batch(12);
        tx.send(s).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(st.load(Ordering::SeqCst), 0, "not acknowledged while down");
        up.store(true, Ordering::SeqCst);
        assert!(wait_for(&st, 1).await, "acknowledged once delivered");
        // Backend down again at shutdown: the batch is not acknowledged.
        up.store(false, Ordering::SeqCst);
        let (s, st) = batch(3);
        tx.send(s).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(tx);
        task.await.unwrap();
        assert_eq!(st.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wal_acknowledges_on_append_and_refuses_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let up = Arc::new(AtomicBool::new(false));
        let d = Delivery::new(
            "t",
            &cfg(Some(dir.path()), 16 << 10),
            &ExporterContext::default(),
        )
        .unwrap();
        let refused = d.metrics().refused.clone();
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(d.run(
            ExporterQueue {
                rx,
                flush_timeout: Duration::from_millis(300),
            },
            Enc,
            Tr(up.clone()),
        ));
        let (s, st) = batch(4);
        tx.send(s).await.unwrap();
        assert!(
            wait_for(&st, 1).await,
            "acknowledged once in the WAL, backend down"
        );
        // Fill the WAL: later batches are refused, never acknowledged.
        let mut last = None;
        for _ in 0..60 {
            let (s, st) = batch(5);
            tx.send(s).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            last = Some(st);
        }
        assert!(wait_for(last.as_ref().unwrap(), 2).await);
        assert!(refused.get() > 0);
        drop(tx);
        task.await.unwrap();
    }
}
