//! A *lane*: a dedicated thread that runs a batch of blocking items one after another, each
//! under a timeout measured from the moment it starts, and that is abandoned when an item
//! overruns.
//!
//! The agent reads `/proc`, `/sys` and mounts with blocking calls that can hang for good
//! (a `statfs` on a dead NFS server). A lane keeps that from hanging the caller or piling
//! up threads:
//! - items run in order on the lane's own OS thread (not tokio's blocking pool, which can
//!   be busy: a timeout that fires before the thread ever starts must not be mistaken for
//!   an item that overran);
//! - when the running item passes its timeout, the caller stops waiting, reports that item
//!   [`ItemOutcome::TimedOut`] and continues the remaining items on a fresh thread; the
//!   abandoned thread exits once its item returns (its later results are discarded);
//! - at most `max_abandoned` threads may be blocked at once; past that the remaining items
//!   are reported [`ItemOutcome::NotRun`] (the caller says why) instead of risking another
//!   thread;
//! - one thread hand-off and one wake-up per batch, not per item (on a 2-core node the
//!   context switches of a fan-out cost more than reading `/proc` itself); the lane's thread
//!   is kept between batches, and a batch that arrives while it is busy gets a thread of its
//!   own.
//!
//! Used by the agent's collector runner and by the filesystem collector (one `statfs` per
//! mount). Both a blocking ([`Lane::run_blocking`]) and an async ([`Lane::run`]) waiter.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

/// What happened to one item of a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum ItemOutcome<T> {
    /// It ran and returned this.
    Done(T),
    /// It panicked (a bug); the lane carried on.
    Panicked,
    /// It was still running when its timeout passed; its thread was abandoned.
    TimedOut,
    /// It was not run: too many abandoned threads, the lane thread could not be started or
    /// was never scheduled within the timeout (see [`NotRunReason`]).
    NotRun(NotRunReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotRunReason {
    /// `max_abandoned` lane threads are still blocked in items that overran.
    TooManyAbandoned,
    /// The OS refused a new thread.
    SpawnFailed,
    /// The lane thread did not start the item within the timeout (machine overloaded).
    NotScheduled,
}

impl NotRunReason {
    pub fn as_str(self) -> &'static str {
        match self {
            NotRunReason::TooManyAbandoned => "too many blocked lane threads",
            NotRunReason::SpawnFailed => "cannot start a lane thread",
            NotRunReason::NotScheduled => "lane thread not scheduled within the timeout",
        }
    }
}

/// Shared by one lane thread and its waiter.
struct Progress<T> {
    /// Index (into the batch) of the item running now, and when it started.
    current: Option<(usize, Instant)>,
    /// Results in batch order; `None` until the item returns.
    results: Vec<Option<ItemOutcome<T>>>,
    /// The thread finished the batch (or stopped because it was abandoned).
    finished: bool,
    /// The thread has started at least one item.
    started_any: bool,
}

struct Shared<T> {
    /// When the lane thread was asked to start.
    created: Instant,
    progress: Mutex<Progress<T>>,
    cond: Condvar,
    notify: Notify,
    abandoned: AtomicBool,
}

impl<T> Shared<T> {
    fn wake(&self) {
        self.cond.notify_all();
        self.notify.notify_one();
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A named lane with a bound on abandoned threads. Cheap to share (`Arc<Lane>`).
pub struct Lane {
    name: String,
    max_abandoned: usize,
    /// Lane threads still blocked in an item that overran.
    blocked: Arc<AtomicUsize>,
    /// The kept thread, waiting for its next batch (rendezvous channel: a send succeeds
    /// only when it is idle).
    worker: Mutex<Option<std::sync::mpsc::SyncSender<Job>>>,
}

/// Decrements the blocked-thread count when an abandoned lane thread finally exits.
struct BlockedGuard {
    shared_abandoned: bool,
    blocked: Arc<AtomicUsize>,
}

impl Drop for BlockedGuard {
    fn drop(&mut self) {
        if self.shared_abandoned {
            self.blocked.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Lane {
    pub fn new(name: impl Into<String>, max_abandoned: usize) -> Self {
        Lane {
            name: name.into(),
            max_abandoned: max_abandoned.max(1),
            blocked: Arc::new(AtomicUsize::new(0)),
            worker: Mutex::new(None),
        }
    }

    /// Runs `job` on the kept thread if it is idle, else on a thread of its own (which
    /// becomes the kept one if there is none).
    fn dispatch(&self, job: Job) -> Result<(), NotRunReason> {
        let mut worker = self.worker.lock();
        let job = match worker.as_ref() {
            Some(tx) => match tx.try_send(job) {
                Ok(()) => return Ok(()),
                Err(std::sync::mpsc::TrySendError::Full(job)) => {
                    // Busy with another batch: this one gets its own thread.
                    return self.spawn(job, false).map(|_| ());
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(job)) => job,
            },
            None => job,
        };
        *worker = self.spawn(job, true)?;
        Ok(())
    }

    /// Starts a thread running `job`; a kept thread then waits for more jobs.
    fn spawn(
        &self,
        job: Job,
        keep: bool,
    ) -> Result<Option<std::sync::mpsc::SyncSender<Job>>, NotRunReason> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(0);
        std::thread::Builder::new()
            .name(format!("ns-lane-{}", self.name))
            .spawn(move || {
                job();
                if keep {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                }
            })
            .map_err(|_| NotRunReason::SpawnFailed)?;
        Ok(keep.then_some(tx))
    }

    /// Lane threads still blocked in items that overran.
    pub fn blocked(&self) -> usize {
        self.blocked.load(Ordering::Acquire)
    }

    /// Runs `work(item)` for every item, in order, on lane threads; returns one outcome
    /// per item, in order. Waits asynchronously (never blocks a runtime thread).
    pub async fn run<I, T, F>(
        &self,
        items: Vec<I>,
        timeout: Duration,
        work: F,
    ) -> Vec<ItemOutcome<T>>
    where
        I: Send + Sync + 'static,
        T: Send + 'static,
        F: Fn(&I) -> T + Send + Sync + 'static,
    {
        let items = Arc::new(items);
        let work = Arc::new(work);
        let mut out: Vec<Option<ItemOutcome<T>>> = (0..items.len()).map(|_| None).collect();
        let mut next = 0;
        while next < items.len() {
            let shared = match self.start(&items, next, &work) {
                Ok(s) => s,
                Err(reason) => {
                    fill_not_run(&mut out, next, reason);
                    break;
                }
            };
            next = loop {
                let deadline = {
                    let mut p = shared.progress.lock();
                    if let Some(n) = self.step(&shared, &mut p, next, timeout, &mut out) {
                        break n;
                    }
                    deadline(&shared, &p, timeout)
                };
                // A wake between the unlock and here is kept as a permit by notify_one.
                let _ = tokio::time::timeout_at(deadline.into(), shared.notify.notified()).await;
            };
        }
        out.into_iter()
            .map(|o| o.unwrap_or(ItemOutcome::NotRun(NotRunReason::NotScheduled)))
            .collect()
    }

    /// Like [`Lane::run`] but the caller's thread waits (for use inside a blocking
    /// collector).
    pub fn run_blocking<I, T, F>(
        &self,
        items: Vec<I>,
        timeout: Duration,
        work: F,
    ) -> Vec<ItemOutcome<T>>
    where
        I: Send + Sync + 'static,
        T: Send + 'static,
        F: Fn(&I) -> T + Send + Sync + 'static,
    {
        let items = Arc::new(items);
        let work = Arc::new(work);
        let mut out: Vec<Option<ItemOutcome<T>>> = (0..items.len()).map(|_| None).collect();
        let mut next = 0;
        while next < items.len() {
            let shared = match self.start(&items, next, &work) {
                Ok(s) => s,
                Err(reason) => {
                    fill_not_run(&mut out, next, reason);
                    break;
                }
            };
            next = loop {
                let mut p = shared.progress.lock();
                if let Some(n) = self.step(&shared, &mut p, next, timeout, &mut out) {
                    break n;
                }
                let deadline = deadline(&shared, &p, timeout);
                // Checked and waited under one lock: no wake-up is lost.
                shared.cond.wait_until(&mut p, deadline);
            };
        }
        out.into_iter()
            .map(|o| o.unwrap_or(ItemOutcome::NotRun(NotRunReason::NotScheduled)))
            .collect()
    }

    /// Starts a lane thread for `items[from..]`.
    fn start<I, T, F>(
        &self,
        items: &Arc<Vec<I>>,
        from: usize,
        work: &Arc<F>,
    ) -> Result<Arc<Shared<T>>, NotRunReason>
    where
        I: Send + Sync + 'static,
        T: Send + 'static,
        F: Fn(&I) -> T + Send + Sync + 'static,
    {
        if self.blocked() >= self.max_abandoned {
            return Err(NotRunReason::TooManyAbandoned);
        }
        let shared = Arc::new(Shared {
            created: Instant::now(),
            progress: Mutex::new(Progress {
                current: None,
                results: (0..items.len()).map(|_| None).collect(),
                finished: false,
                started_any: false,
            }),
            cond: Condvar::new(),
            notify: Notify::new(),
            abandoned: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        let items = items.clone();
        let work = work.clone();
        let blocked = self.blocked.clone();
        self.dispatch(Box::new(move || {
            let s = thread_shared;
            for i in from..items.len() {
                if s.abandoned.load(Ordering::Acquire) {
                    break;
                }
                {
                    let mut p = s.progress.lock();
                    p.current = Some((i, Instant::now()));
                    p.started_any = true;
                }
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| work(&items[i])));
                let outcome = match r {
                    Ok(v) => ItemOutcome::Done(v),
                    Err(_) => ItemOutcome::Panicked,
                };
                let mut p = s.progress.lock();
                p.current = None;
                p.results[i] = Some(outcome);
            }
            // An abandoned batch's thread counts as blocked until here.
            let _guard = BlockedGuard {
                shared_abandoned: s.abandoned.load(Ordering::Acquire),
                blocked,
            };
            s.progress.lock().finished = true;
            // One wake-up per batch: the waiter computes item deadlines itself.
            s.wake();
        }))?;
        Ok(shared)
    }

    /// Moves finished results into `out`; decides whether this lane is done. Returns the
    /// index to continue from on a fresh lane (or `len` when all are done), or `None` to
    /// keep waiting.
    fn step<T>(
        &self,
        shared: &Shared<T>,
        p: &mut Progress<T>,
        from: usize,
        timeout: Duration,
        out: &mut [Option<ItemOutcome<T>>],
    ) -> Option<usize> {
        for (i, r) in p.results.iter_mut().enumerate().skip(from) {
            if let Some(r) = r.take() {
                out[i] = Some(r);
            }
        }
        let len = out.len();
        if p.finished {
            return Some(len);
        }
        let now = Instant::now();
        match p.current {
            Some((i, started)) if now >= started + timeout => {
                // Abandon: the thread exits when item `i` returns; it counts as blocked
                // until then. Mark before releasing the lock so the thread sees it.
                shared.abandoned.store(true, Ordering::Release);
                self.blocked.fetch_add(1, Ordering::AcqRel);
                // Its thread may be the kept one: later batches go to a new thread.
                *self.worker.lock() = None;
                out[i] = Some(ItemOutcome::TimedOut);
                Some(i + 1)
            }
            None if !p.started_any && now >= shared.created + timeout => {
                // The thread (ours alone) has not started its first item within the
                // timeout: the machine is badly overloaded. Give up on the batch; if the
                // thread ever runs it sees `abandoned` and exits without running anything.
                shared.abandoned.store(true, Ordering::Release);
                fill_not_run(out, from, NotRunReason::NotScheduled);
                Some(len)
            }
            _ => None,
        }
    }
}

/// When the waiter must look again without a wake-up: the running item's timeout, or the
/// lane's start-up timeout while nothing has started.
fn deadline<T>(shared: &Shared<T>, p: &Progress<T>, timeout: Duration) -> Instant {
    match p.current {
        Some((_, started)) => started + timeout,
        None if !p.started_any => shared.created + timeout,
        // Between two items: the next one starts at once.
        None => Instant::now() + timeout,
    }
}

fn fill_not_run<T>(out: &mut [Option<ItemOutcome<T>>], from: usize, reason: NotRunReason) {
    for o in out.iter_mut().skip(from) {
        if o.is_none() {
            *o = Some(ItemOutcome::NotRun(reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn done<T>(o: &ItemOutcome<T>) -> Option<&T> {
        match o {
            ItemOutcome::Done(v) => Some(v),
            _ => None,
        }
    }

    #[test]
    fn runs_items_in_order_on_one_thread() {
        let lane = Lane::new("t", 4);
        let out = lane.run_blocking(vec![1, 2, 3], Duration::from_secs(5), |i| {
            (*i * 10, std::thread::current().id())
        });
        let v: Vec<_> = out.iter().map(|o| done(o).unwrap().0).collect();
        assert_eq!(v, [10, 20, 30]);
        let threads: std::collections::HashSet<_> =
            out.iter().map(|o| done(o).unwrap().1).collect();
        assert_eq!(threads.len(), 1, "one hand-off per batch");
        assert_ne!(*threads.iter().next().unwrap(), std::thread::current().id());
    }

    #[test]
    fn an_overrunning_item_is_abandoned_and_the_rest_continue() {
        let lane = Lane::new("t", 4);
        let (release, rx) = mpsc::channel::<()>();
        let rx = Mutex::new(rx);
        let t = Instant::now();
        // Timeouts leave room for a loaded machine's scheduling delays (a lane thread that
        // does not start within the timeout is reported NotScheduled instead).
        let out = lane.run_blocking(vec![0, 1, 2], Duration::from_secs(1), move |i| {
            if *i == 1 {
                let _ = rx.lock().recv();
            }
            if *i == 2 {
                panic!("bug");
            }
            *i
        });
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(out[0], ItemOutcome::Done(0));
        assert_eq!(out[1], ItemOutcome::TimedOut);
        assert_eq!(out[2], ItemOutcome::Panicked);
        assert_eq!(lane.blocked(), 1);
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while lane.blocked() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            lane.blocked(),
            0,
            "the abandoned thread exits once its item returns"
        );
    }

    #[test]
    fn the_timeout_counts_from_the_start_of_each_item() {
        // Three items of 400 ms each with a 700 ms timeout: none overruns, though the batch
        // takes longer than the timeout.
        let lane = Lane::new("t", 1);
        let out = lane.run_blocking(vec![0, 1, 2], Duration::from_millis(700), |i| {
            std::thread::sleep(Duration::from_millis(400));
            *i
        });
        assert!(
            out.iter().all(|o| matches!(o, ItemOutcome::Done(_))),
            "{out:?}"
        );
    }

    #[test]
    fn too_many_blocked_threads_refuse_new_work() {
        let lane = Lane::new("t", 1);
        let (release, rx) = mpsc::channel::<()>();
        let rx = Arc::new(Mutex::new(rx));
        let r = rx.clone();
        let out = lane.run_blocking(vec![0, 1], Duration::from_secs(1), move |i| {
            if *i == 0 {
                let _ = r.lock().recv();
            }
            *i
        });
        assert_eq!(out[0], ItemOutcome::TimedOut);
        assert_eq!(
            out[1],
            ItemOutcome::NotRun(NotRunReason::TooManyAbandoned),
            "one thread is blocked and max_abandoned = 1"
        );
        release.send(()).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn async_waiter_works_on_a_single_threaded_runtime() {
        // The waiter never blocks the runtime: a current-thread runtime still makes progress.
        let lane = Lane::new("t", 2);
        let (release, rx) = mpsc::channel::<()>();
        let rx = Mutex::new(rx);
        let out = lane
            .run(vec![0, 1, 2], Duration::from_secs(1), move |i| {
                if *i == 0 {
                    let _ = rx.lock().recv();
                }
                *i + 1
            })
            .await;
        assert_eq!(out[0], ItemOutcome::TimedOut);
        assert_eq!(out[1], ItemOutcome::Done(2));
        assert_eq!(out[2], ItemOutcome::Done(3));
        release.send(()).unwrap();
    }
}
