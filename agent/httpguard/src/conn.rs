//! Connection-level hardening below hyper: a stalled-write timeout, clear bodies for the
//! answers hyper writes on its own (400/414/431), and the bytes sent when a connection is
//! refused before any request is served (408, 503, HTTP/2 `GOAWAY`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// An I/O stream whose writes fail with `TimedOut` once they have made no progress for
/// `write_timeout` (a client that stopped reading), and which replaces hyper's own empty
/// error answers with answers that say why.
pub(crate) struct GuardedIo<S> {
    inner: S,
    write_timeout: Duration,
    stall: Option<Pin<Box<Sleep>>>,
    /// Bytes substituted for an automatic answer of hyper's, still to be written.
    pending: Vec<u8>,
    pending_at: usize,
    /// Bytes read from the client so far.
    pub(crate) read_bytes: Arc<AtomicU64>,
    /// Set when a write stalled past `write_timeout`.
    pub(crate) write_timed_out: bool,
    /// The status of the automatic answer replaced, if any.
    pub(crate) replaced: Option<u16>,
    max_header_bytes: u64,
}

impl<S> GuardedIo<S> {
    pub(crate) fn new(inner: S, write_timeout: Duration, max_header_bytes: u64) -> Self {
        Self {
            inner,
            write_timeout,
            stall: None,
            pending: Vec::new(),
            pending_at: 0,
            read_bytes: Arc::new(AtomicU64::new(0)),
            write_timed_out: false,
            replaced: None,
            max_header_bytes,
        }
    }
}

impl<S: AsyncWrite + Unpin> GuardedIo<S> {
    /// Maps a `Pending` write to `TimedOut` once writes have stalled for `write_timeout`;
    /// any progress resets the clock.
    fn stalled<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(v) => {
                self.stall = None;
                Poll::Ready(v)
            }
            Poll::Pending => {
                let timeout = self.write_timeout;
                let sleep = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    self.write_timed_out = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client did not read the response within write_timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }

    /// Writes what is left of a substituted answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_at < self.pending.len() {
            let r = Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.pending_at..]);
            let n = ready!(self.stalled(cx, r))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending_at += n;
        }
        Poll::Ready(Ok(()))
    }

    /// If `buf` is an automatic error answer of hyper's (a bare status line with
    /// `content-length: 0` and a date), queues a full answer instead and returns true.
    fn substitute(&mut self, buf: &[u8]) -> bool {
        if self.replaced.is_some() {
            return false;
        }
        let Some(status) = hyper_auto_answer(buf) else {
            return false;
        };
        let reason = match status {
            400 => "the request could not be parsed as HTTP/1.1".to_string(),
            414 => "the request URI is too long".to_string(),
            _ => format!(
                "request headers too large (limit {} bytes: http.security.max_header_bytes)",
                self.max_header_bytes
            ),
        };
        self.pending = answer(status, &reason, &[]);
        self.pending_at = 0;
        self.replaced = Some(status);
        true
    }
}

/// Recognises the head hyper writes for a request it could not parse: `HTTP/1.1 400 Bad
/// Request`, `414 URI Too Long` or `431 Request Header Fields Too Large`, with no headers
/// but `content-length: 0`, `date` and `connection`. Responses from handlers pass the guard
/// middleware, which gives every error a body, so they never match.
fn hyper_auto_answer(buf: &[u8]) -> Option<u16> {
    let status = [
        (400u16, &b"HTTP/1.1 400 Bad Request\r\n"[..]),
        (414, b"HTTP/1.1 414 URI Too Long\r\n"),
        (431, b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
    ]
    .into_iter()
    .find(|(_, line)| buf.starts_with(line))?;
    let head = &buf[status.1.len()..];
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != head.len() {
        return None; // a body follows: not hyper's empty answer
    }
    let mut saw_len0 = false;
    for line in head[..end].split(|b| *b == b'\n') {
        let line = line
            .strip_suffix(b"\r")
            .unwrap_or(line)
            .to_ascii_lowercase();
        if line == b"content-length: 0" {
            saw_len0 = true;
        } else if !(line.starts_with(b"date: ") || line.starts_with(b"connection: ")) {
            return None;
        }
    }
    saw_len0.then_some(status.0)
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let n = (buf.filled().len() - before) as u64;
            self.read_bytes.fetch_add(n, Ordering::AcqRel);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if this.substitute(buf) {
            ready!(this.poll_pending(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.stalled(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let [only] = bufs.iter().filter(|b| !b.is_empty()).collect::<Vec<_>>()[..] {
            if this.substitute(only) {
                ready!(this.poll_pending(cx))?;
                return Poll::Ready(Ok(only.len()));
            }
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.stalled(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.stalled(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.stalled(cx, r)
    }
}

/// A complete HTTP/1.1 answer that closes the connection, with a plain-text body.
pub(crate) fn answer(status: u16, body: &str, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = format!("{body}\n");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in extra_headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// The server's answer to an HTTP/2 prior-knowledge client: an empty SETTINGS frame (the
/// server preface) and a GOAWAY with `HTTP_1_1_REQUIRED` (RFC 9113 §7) whose debug data
/// says why, so h2 clients report the reason instead of a reset.
pub(crate) fn h2_goaway() -> Vec<u8> {
    const DEBUG: &[u8] = b"nodescope serves HTTP/1.1 only";
    let mut out = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0]; // SETTINGS, no parameters
    let len = 8 + DEBUG.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, 0x7, 0]);
    out.extend_from_slice(&[0, 0, 0, 0]); // stream 0
    out.extend_from_slice(&[0, 0, 0, 0]); // last stream id
    out.extend_from_slice(&0x0du32.to_be_bytes()); // HTTP_1_1_REQUIRED
    out.extend_from_slice(DEBUG);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn recognises_only_hyper_automatic_answers() {
        let auto = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Fri, 04 Dec 2026 05:00:00 GMT\r\n\r\n";
        assert_eq!(hyper_auto_answer(auto), Some(400));
        let auto431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(hyper_auto_answer(auto431), Some(431));
        // A handler's 400 carries a content type and a body.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 4\r\ndate: x\r\n\r\n";
        assert_eq!(hyper_auto_answer(ours), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\nabc";
        assert_eq!(hyper_auto_answer(with_body), None);
        assert_eq!(
            hyper_auto_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(hyper_auto_answer(b"garbage"), None);
    }

    #[tokio::test]
    async fn substituted_answer_is_written_in_full() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut io = GuardedIo::new(server, Duration::from_secs(5), 2048);
        let auto =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        io.write_all(auto).await.unwrap();
        io.flush().await.unwrap();
        drop(io);
        let mut got = String::new();
        let mut client = client;
        tokio::io::AsyncReadExt::read_to_string(&mut client, &mut got)
            .await
            .unwrap();
        assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
        assert!(got.contains("max_header_bytes"), "{got}");
        let (head, body) = got.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{got}"
        );
    }

    #[tokio::test]
    async fn stalled_write_times_out() {
        let (_client, server) = tokio::io::duplex(1024);
        let mut io = GuardedIo::new(server, Duration::from_millis(200), 2048);
        let t0 = std::time::Instant::now();
        let e = io.write_all(&vec![7u8; 64 * 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(io.write_timed_out);
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn goaway_frame_is_well_formed() {
        let f = h2_goaway();
        assert_eq!(&f[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let len = (usize::from(f[9]) << 16) | (usize::from(f[10]) << 8) | usize::from(f[11]);
        assert_eq!(f[12], 7);
        assert_eq!(f.len(), 9 + 9 + len);
        assert_eq!(&f[9 + 9 + 4..9 + 9 + 8], &[0, 0, 0, 0x0d]);
    }
}
