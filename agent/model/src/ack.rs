//! Acknowledgement of a log batch, carried with it from the producer through the pipeline
//! to every exporter that takes logs.
//!
//! An [`Ack`] is a set of *holders*: cloning adds a holder, and each holder ends exactly
//! once, by [`Ack::complete`] (its part is delivered, or durably appended to a WAL) or by
//! being dropped (overflow of a bounded queue, shutdown, give-up: not delivered). When the
//! last holder ends, the producer's callback runs once with `true` if every holder
//! completed, else `false`. The pipeline clones the ack for each exporter route, so a batch
//! is acknowledged only when every logs exporter has it; with no logs exporter it is
//! acknowledged at once (there is nothing to wait for).
//!
//! The log tailer advances a file's checkpoint only on `true`, and rewinds to its last
//! checkpoint on `false`: the backlog of an outage stays in the source files and the WAL.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

type Callback = Box<dyn FnOnce(bool) + Send + 'static>;

struct Inner {
    holders: AtomicUsize,
    failed: AtomicBool,
    done: Mutex<Option<Callback>>,
}

/// One holder of a batch's acknowledgement. See the module documentation.
pub struct Ack {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ack")
    }
}

impl Ack {
    /// A new acknowledgement with one holder; `on_done(delivered)` runs once, on the
    /// thread that ends the last holder (keep it short and non-blocking).
    pub fn new(on_done: impl FnOnce(bool) + Send + 'static) -> Ack {
        Ack {
            inner: Some(Arc::new(Inner {
                holders: AtomicUsize::new(1),
                failed: AtomicBool::new(false),
                done: Mutex::new(Some(Box::new(on_done))),
            })),
        }
    }

    /// This holder's part is delivered (or durably stored).
    pub fn complete(mut self) {
        if let Some(i) = self.inner.take() {
            release(&i);
        }
    }
}

fn release(i: &Arc<Inner>) {
    if i.holders.fetch_sub(1, Ordering::AcqRel) == 1 {
        let ok = !i.failed.load(Ordering::Acquire);
        if let Some(cb) = i.done.lock().take() {
            cb(ok);
        }
    }
}

impl Clone for Ack {
    fn clone(&self) -> Self {
        if let Some(i) = &self.inner {
            i.holders.fetch_add(1, Ordering::AcqRel);
        }
        Ack {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(i) = self.inner.take() {
            i.failed.store(true, Ordering::Release);
            release(&i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU8;

    fn tracked() -> (Ack, Arc<AtomicU8>) {
        let r = Arc::new(AtomicU8::new(0));
        let r2 = r.clone();
        (
            Ack::new(move |ok| {
                r2.fetch_add(if ok { 1 } else { 10 }, Ordering::SeqCst);
            }),
            r,
        )
    }

    #[test]
    fn completes_once_when_every_holder_completed() {
        let (a, r) = tracked();
        let b = a.clone();
        let c = b.clone();
        a.complete();
        b.complete();
        assert_eq!(r.load(Ordering::SeqCst), 0);
        c.complete();
        assert_eq!(r.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_dropped_holder_fails_the_batch() {
        let (a, r) = tracked();
        let b = a.clone();
        drop(a);
        assert_eq!(r.load(Ordering::SeqCst), 0);
        b.complete();
        assert_eq!(r.load(Ordering::SeqCst), 10);
        let (a, r) = tracked();
        drop(a);
        assert_eq!(r.load(Ordering::SeqCst), 10);
    }
}
