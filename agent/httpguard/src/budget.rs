//! The bound on response bytes held for slow clients, and giving memory back afterwards.
//!
//! A response body that has been built but not yet sent lives in memory until the client
//! reads it. Each body of at least [`COUNTED_BYTES`] takes its size from one budget
//! (`http.security.max_response_buffer_bytes`) until it is dropped (sent, or its connection
//! closed by `write_timeout`); a body that does not fit is replaced by a 503 at once, so
//! clients that never read cannot hold more than the budget. When the last large body is
//! dropped, glibc is asked to return freed memory to the kernel (`malloc_trim`), which it
//! otherwise keeps in its arenas.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies smaller than this are not counted (their number is bounded by
/// `max_connections`).
pub const COUNTED_BYTES: u64 = 64 * 1024;
const UNIT: u64 = 1024;

#[derive(Clone, Debug)]
pub(crate) struct ResponseBudget {
    sem: Arc<Semaphore>,
    units: u32,
    large_alive: Arc<AtomicUsize>,
}

impl ResponseBudget {
    pub(crate) fn new(max_bytes: u64) -> Self {
        let units = u32::try_from((max_bytes / UNIT).max(1))
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        Self {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
            large_alive: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Bytes of counted bodies alive now.
    pub(crate) fn in_use_bytes(&self) -> u64 {
        u64::from(self.units - self.sem.available_permits() as u32) * UNIT
    }

    /// Takes budget for a body of `len` bytes; `None` when it does not fit. A body larger
    /// than the whole budget fits only when nothing else is held.
    pub(crate) fn admit(&self, body: Body, len: u64) -> Result<Body, Body> {
        if len < COUNTED_BYTES {
            return Ok(body);
        }
        let want = u32::try_from(len.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.units);
        match self.sem.clone().try_acquire_many_owned(want) {
            Ok(permit) => {
                self.large_alive.fetch_add(1, Ordering::AcqRel);
                Ok(Body::new(Budgeted {
                    inner: body,
                    rest: Bytes::new(),
                    _permit: permit,
                    large_alive: self.large_alive.clone(),
                }))
            }
            Err(_) => Err(body),
        }
    }
}

/// Hands hyper the body in pieces of at most [`CHUNK`] bytes. hyper pulls a piece only when
/// its write buffer has room, so the body (and its budget) stays here, and is counted,
/// until the client has read all but the last few pieces; had hyper been given the whole
/// body in one frame, it would have dropped this wrapper, and released the budget, at once.
struct Budgeted {
    inner: Body,
    rest: Bytes,
    _permit: OwnedSemaphorePermit,
    large_alive: Arc<AtomicUsize>,
}

/// The most hyper is handed at once.
pub const CHUNK: usize = 64 * 1024;

impl Drop for Budgeted {
    fn drop(&mut self) {
        if self.large_alive.fetch_sub(1, Ordering::AcqRel) == 1 {
            trim_soon();
        }
    }
}

static TRIM_PENDING: AtomicBool = AtomicBool::new(false);

/// Trims 250 ms from now: the last pieces of a body are still in hyper's write queue (and
/// its connection may be closing) when the body is dropped. One trim at a time.
fn trim_soon() {
    if TRIM_PENDING.swap(true, Ordering::AcqRel) {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(async {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                TRIM_PENDING.store(false, Ordering::Release);
                release_free_memory();
            });
        }
        Err(_) => {
            TRIM_PENDING.store(false, Ordering::Release);
            release_free_memory();
        }
    }
}

impl http_body::Body for Budgeted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.rest.is_empty() {
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return Poll::Ready(other),
            }
        }
        let n = this.rest.len().min(CHUNK);
        Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut h = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        h.set_lower(h.lower() + rest);
        if let Some(u) = h.upper() {
            h.set_upper(u + rest);
        }
        h
    }
}

/// Returns memory glibc holds in its free lists to the kernel. A no-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_admits_until_full_and_frees_on_drop() {
        let b = ResponseBudget::new(1024 * 1024);
        let small = b.admit(Body::from("x"), 1).ok().unwrap();
        assert_eq!(b.in_use_bytes(), 0);
        let one = b.admit(Body::empty(), 600 * 1024).ok().unwrap();
        assert_eq!(b.in_use_bytes(), 600 * 1024);
        assert!(b.admit(Body::empty(), 600 * 1024).is_err());
        drop(one);
        assert_eq!(b.in_use_bytes(), 0);
        // Larger than the whole budget: fits alone.
        let big = b.admit(Body::empty(), 5 * 1024 * 1024).ok().unwrap();
        assert!(b.admit(Body::empty(), 64 * 1024).is_err());
        drop(big);
        drop(small);
        assert_eq!(b.large_alive.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn counted_bodies_are_handed_out_in_chunks() {
        use http_body_util::BodyExt;
        let b = ResponseBudget::new(4 * 1024 * 1024);
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut body = b
            .admit(Body::from(data.clone()), data.len() as u64)
            .ok()
            .unwrap();
        assert_eq!(
            http_body::Body::size_hint(&body).exact(),
            Some(data.len() as u64)
        );
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(f) = body.frame().await {
            let d = f.unwrap().into_data().unwrap();
            assert!(d.len() <= CHUNK);
            got.extend_from_slice(&d);
            frames += 1;
            if frames == 1 {
                // Still counted while the rest waits.
                assert_eq!(b.in_use_bytes(), data.len().div_ceil(1024) as u64 * 1024);
            }
        }
        assert_eq!(got, data);
        assert_eq!(frames, 4);
        drop(body);
        assert_eq!(b.in_use_bytes(), 0);
    }
}
