//! HTTP API hardening for the nodescope agent.
//!
//! Two entry points:
//! - [`harden`] wraps an [`axum::Router`] in one middleware that enforces, in order:
//!   header size (431), authentication for protected paths when the listener is not
//!   loopback (401 no credential / 403 wrong credential), the profile rate limit (429 +
//!   `Retry-After`), and the request body size (413) and body read time (408).
//! - [`serve`] runs the hardened router on a [`TcpListener`] with hyper's header read
//!   timeout and header buffer bound, a connection cap, a stalled-write timeout and clear
//!   answers for what hyper refuses itself (400/414/431/408, HTTP/2), optionally
//!   terminating TLS (and verifying client certificates for mTLS) with rustls.
//!
//! Memory is bounded whatever clients do: at most `max_connections` connections, each with
//! hyper's buffers bounded, and large response bodies held for clients only within
//! `max_response_buffer_bytes` (see `budget.rs`).
//!
//! Every refusal is counted in `nodescope_http_refused_total{reason}`.
//!
//! Protected paths (when not on loopback): everything except `/healthz` and `/readyz`
//! (kubelet probes) and `/metrics` (unless `protect_metrics = true`) — so `/debug/*` and
//! `/api/*` always need the bearer token or a verified client certificate.
//!
//! Call [`harden`] on the fully built router: routes added afterwards are not guarded.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use nodescope_model::config::Issues;
use nodescope_model::selfmetrics::{Counter, SelfMetrics};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

mod budget;
mod conn;
pub use budget::release_free_memory;
pub mod malloc;
pub use malloc::tune_allocator;

/// Name of the refusal counter.
pub const REFUSED_METRIC: &str = "nodescope_http_refused_total";

/// `[http.security]` configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// File holding the bearer token (whitespace trimmed), e.g. a mounted Secret. Required
    /// for `/debug/*` and `/api/*` when the agent listens on a non-loopback address,
    /// unless mTLS client certificates are configured.
    pub token_file: Option<PathBuf>,
    /// Require the token / client certificate for `/metrics` too.
    pub protect_metrics: bool,
    /// Largest accepted request body in bytes (413 above).
    pub max_body_bytes: u64,
    /// Largest accepted total size of request header names + values in bytes (431 above).
    pub max_header_bytes: u64,
    /// Time allowed to receive a request's headers and body, e.g. `"10s"` (408 with a body
    /// naming this setting, then close). An idle keep-alive connection is closed after it
    /// too, quietly. Handler time (a 30 s profile) is not limited by it.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Sustained rate of `/debug/pprof/*` requests per minute from clients that are not
    /// on loopback (429 above). Loopback clients (a person at the node) are not limited;
    /// refused requests (4xx) give their token back.
    pub profile_requests_per_minute: u32,
    /// Burst of `/debug/pprof/*` requests allowed at once from non-loopback clients.
    pub profile_burst: u32,
    /// Open connections served at once; connections above it get a 503 and are closed.
    pub max_connections: u32,
    /// Time a response write may make no progress (a client that stopped reading) before
    /// the connection is closed and its response freed, e.g. `"30s"`.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Bytes of built response bodies (each of 64 KiB or more) that may wait for slow
    /// clients at once; a response that does not fit is answered 503 instead.
    pub max_response_buffer_bytes: u64,
    /// Serve HTTPS; with `client_ca_file`, a client certificate signed by that CA counts
    /// as authenticated (mTLS).
    pub tls: Option<TlsConfig>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            token_file: None,
            protect_metrics: false,
            max_body_bytes: 64 * 1024,
            max_header_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(10),
            profile_requests_per_minute: 12,
            profile_burst: 4,
            max_connections: 64,
            write_timeout: Duration::from_secs(30),
            max_response_buffer_bytes: 64 * 1024 * 1024,
            tls: None,
        }
    }
}

/// `[http.security.tls]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: PathBuf,
    /// PEM private key of the server (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle for client certificates. When set, clients *may* present a
    /// certificate; a verified one authenticates like the bearer token. Clients without a
    /// certificate can still reach unprotected paths (`/healthz`, `/metrics`).
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Missing, unreadable, not a regular file, or too large; names the file and why.
    #[error("{0}")]
    Read(nodescope_model::files::ReadFileError),
    #[error("token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("{what} {path}: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl SecurityConfig {
    /// Records every problem under `prefix` (e.g. `http.security`).
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        issues.check(
            self.max_body_bytes > 0,
            format!("{prefix}.max_body_bytes"),
            "must be > 0",
        );
        issues.check(
            self.max_header_bytes >= 1024,
            format!("{prefix}.max_header_bytes"),
            "must be >= 1024",
        );
        issues.check(
            self.request_timeout >= Duration::from_millis(10)
                && self.request_timeout <= Duration::from_secs(3600),
            format!("{prefix}.request_timeout"),
            "must be between 10ms and 1h",
        );
        issues.check(
            self.profile_requests_per_minute > 0,
            format!("{prefix}.profile_requests_per_minute"),
            "must be > 0",
        );
        issues.check(
            self.profile_burst > 0,
            format!("{prefix}.profile_burst"),
            "must be > 0",
        );
        issues.check(
            (1..=65_536).contains(&self.max_connections),
            format!("{prefix}.max_connections"),
            "must be between 1 and 65536",
        );
        issues.check(
            self.write_timeout >= Duration::from_millis(10)
                && self.write_timeout <= Duration::from_secs(3600),
            format!("{prefix}.write_timeout"),
            "must be between 10ms and 1h",
        );
        issues.check(
            self.max_response_buffer_bytes >= 1024 * 1024,
            format!("{prefix}.max_response_buffer_bytes"),
            "must be >= 1048576 (1 MiB)",
        );
        if let Some(p) = &self.token_file {
            issues.check(
                !p.as_os_str().is_empty(),
                format!("{prefix}.token_file"),
                "must not be empty (omit the key to disable)",
            );
        }
        if let Some(tls) = &self.tls {
            issues.check(
                !tls.cert_file.as_os_str().is_empty(),
                format!("{prefix}.tls.cert_file"),
                "is required when [tls] is present",
            );
            issues.check(
                !tls.key_file.as_os_str().is_empty(),
                format!("{prefix}.tls.key_file"),
                "is required when [tls] is present",
            );
        }
    }

    /// Extra check that needs the listen address: a non-loopback listener without a token
    /// or client CA would refuse every `/debug` and `/api` request.
    pub fn validate_for_listen(&self, listen_is_loopback: bool, prefix: &str, issues: &mut Issues) {
        let has_client_ca = self
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca_file.is_some());
        issues.check(
            listen_is_loopback || self.token_file.is_some() || has_client_ca,
            format!("{prefix}.token_file"),
            "the agent listens on a non-loopback address: set token_file (or tls.client_ca_file) \
             so /debug and /api can be reached, or listen on 127.0.0.1",
        );
    }

    /// Reads the token and TLS material and produces the runtime settings.
    pub fn build(&self) -> Result<GuardSettings, GuardError> {
        let mut issues = Issues::default();
        self.validate("http.security", &mut issues);
        if let Some(i) = issues.list.first() {
            return Err(GuardError::Invalid {
                key: "http.security",
                reason: i.to_string(),
            });
        }
        let token = match &self.token_file {
            Some(p) => Some(read_token(p)?),
            None => None,
        };
        let tls = match &self.tls {
            Some(t) => Some(TlsSettings::load(t)?),
            None => None,
        };
        Ok(GuardSettings {
            token,
            protect_metrics: self.protect_metrics,
            max_body_bytes: self.max_body_bytes,
            max_header_bytes: self.max_header_bytes,
            request_timeout: self.request_timeout,
            profile_per_minute: self.profile_requests_per_minute,
            profile_burst: self.profile_burst,
            max_connections: self.max_connections,
            write_timeout: self.write_timeout,
            max_response_buffer_bytes: self.max_response_buffer_bytes,
            tls,
        })
    }
}

/// Token, certificate and key files: regular files of at most 1 MiB.
fn read_file(p: &Path, what: &'static str) -> Result<Vec<u8>, GuardError> {
    nodescope_model::files::read_capped(p, nodescope_model::files::MAX_SECRET_BYTES, what)
        .map_err(GuardError::Read)
}

fn read_token(p: &Path) -> Result<Arc<[u8]>, GuardError> {
    let raw = read_file(p, "token file")?;
    let trimmed = raw.trim_ascii();
    if trimmed.is_empty() {
        return Err(GuardError::EmptyToken(p.to_path_buf()));
    }
    Ok(Arc::from(trimmed))
}

/// Runtime settings built from [`SecurityConfig`].
#[derive(Clone)]
pub struct GuardSettings {
    token: Option<Arc<[u8]>>,
    pub protect_metrics: bool,
    pub max_body_bytes: u64,
    pub max_header_bytes: u64,
    pub request_timeout: Duration,
    pub profile_per_minute: u32,
    pub profile_burst: u32,
    pub max_connections: u32,
    pub write_timeout: Duration,
    pub max_response_buffer_bytes: u64,
    pub tls: Option<TlsSettings>,
}

impl std::fmt::Debug for GuardSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardSettings")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("protect_metrics", &self.protect_metrics)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("request_timeout", &self.request_timeout)
            .field("profile_per_minute", &self.profile_per_minute)
            .field("profile_burst", &self.profile_burst)
            .field("max_connections", &self.max_connections)
            .field("write_timeout", &self.write_timeout)
            .field("max_response_buffer_bytes", &self.max_response_buffer_bytes)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl GuardSettings {
    /// Settings with a token given directly (tests, embedding).
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(Arc::from(token.trim().as_bytes()));
        self
    }
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }
}

/// A TLS server configuration loaded from PEM files.
#[derive(Clone)]
pub struct TlsSettings {
    pub server_config: Arc<rustls::ServerConfig>,
    /// True when client certificates are requested and verified against a CA.
    pub client_auth: bool,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, GuardError> {
    use rustls::pki_types::pem::PemObject;
    let bytes = read_file(path, what)?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| GuardError::Pem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(GuardError::Pem {
            what,
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

impl TlsSettings {
    pub fn load(cfg: &TlsConfig) -> Result<Self, GuardError> {
        use rustls::pki_types::pem::PemObject;
        let certs = load_certs("certificate file", &cfg.cert_file)?;
        let key_bytes = read_file(&cfg.key_file, "key file")?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
            GuardError::Pem {
                what: "key file",
                path: cfg.key_file.clone(),
                reason: e.to_string(),
            }
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| GuardError::Tls(e.to_string()))?;
        let (builder, client_auth) = match &cfg.client_ca_file {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in load_certs("client CA file", ca)? {
                    roots.add(c).map_err(|e| GuardError::Pem {
                        what: "client CA file",
                        path: ca.clone(),
                        reason: e.to_string(),
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| GuardError::Tls(e.to_string()))?;
                (builder.with_client_cert_verifier(verifier), true)
            }
            None => (builder.with_no_client_auth(), false),
        };
        let mut server = builder
            .with_single_cert(certs, key)
            .map_err(|e| GuardError::Tls(e.to_string()))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            server_config: Arc::new(server),
            client_auth,
        })
    }
}

/// Request extension inserted by [`serve`] on connections whose client presented a
/// certificate that verified against `client_ca_file`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedClientCert;

/// Why a request (or connection) was refused; the `reason` label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 401: protected path, no credential.
    Unauthenticated,
    /// 403: protected path, wrong token.
    Forbidden,
    /// 429: profile rate limit.
    RateLimited,
    /// 413: body over `max_body_bytes`.
    BodyTooLarge,
    /// 431: headers over `max_header_bytes`.
    HeadersTooLarge,
    /// 408: body not received within `request_timeout`.
    Timeout,
    /// 408 and connection closed: headers not received within `request_timeout`.
    HeaderTimeout,
    /// Connection closed: TLS handshake failed or timed out.
    TlsHandshake,
    /// 503: more than `max_connections` open connections.
    TooManyConnections,
    /// 503: the response did not fit in `max_response_buffer_bytes`.
    ResponseBufferFull,
    /// Connection closed: the client read nothing for `write_timeout`.
    WriteTimeout,
    /// 400: a request hyper could not parse.
    Malformed,
    /// An HTTP/2 prior-knowledge connection: answered with GOAWAY `HTTP_1_1_REQUIRED`.
    Http2,
}

impl Refusal {
    pub const ALL: [Refusal; 13] = [
        Refusal::Unauthenticated,
        Refusal::Forbidden,
        Refusal::RateLimited,
        Refusal::BodyTooLarge,
        Refusal::HeadersTooLarge,
        Refusal::Timeout,
        Refusal::HeaderTimeout,
        Refusal::TlsHandshake,
        Refusal::TooManyConnections,
        Refusal::ResponseBufferFull,
        Refusal::WriteTimeout,
        Refusal::Malformed,
        Refusal::Http2,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::Forbidden => "forbidden",
            Refusal::RateLimited => "rate_limited",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::Timeout => "timeout",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::TlsHandshake => "tls_handshake",
            Refusal::TooManyConnections => "too_many_connections",
            Refusal::ResponseBufferFull => "response_buffer_full",
            Refusal::WriteTimeout => "write_timeout",
            Refusal::Malformed => "malformed",
            Refusal::Http2 => "http2",
        }
    }
}

/// The refusal counters, one per reason, registered up front so every reason is visible
/// (at 0) from the first scrape.
#[derive(Clone, Debug)]
pub struct RefusalCounters([Counter; 13]);

impl RefusalCounters {
    pub fn register(metrics: &SelfMetrics) -> Self {
        Self(Refusal::ALL.map(|r| {
            metrics.counter(
                REFUSED_METRIC,
                "HTTP requests or connections refused by the API guard, by reason.",
                &[("reason", r.as_str())],
            )
        }))
    }
    pub fn inc(&self, r: Refusal) {
        let idx = Refusal::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.0[idx].inc();
    }
    pub fn get(&self, r: Refusal) -> u64 {
        let idx = Refusal::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.0[idx].get()
    }
}

/// Token bucket for `/debug/pprof/*`. Hand-written (20 lines) rather than `governor`
/// because one global bucket does not justify its dependency tree.
#[derive(Debug)]
struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(per_minute: u32, burst: u32) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            capacity,
            per_sec: f64::from(per_minute.max(1)) / 60.0,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// Takes one token, or returns the whole seconds until one is available.
    fn take(&self, now: Instant) -> Result<(), u64> {
        let mut st = self.state.lock();
        let elapsed = now.saturating_duration_since(st.1).as_secs_f64();
        st.0 = (st.0 + elapsed * self.per_sec).min(self.capacity);
        st.1 = now;
        if st.0 >= 1.0 {
            st.0 -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - st.0) / self.per_sec).ceil().max(1.0) as u64)
        }
    }

    /// Gives back a token taken for a request that was then refused.
    fn refund(&self) {
        let mut st = self.state.lock();
        st.0 = (st.0 + 1.0).min(self.capacity);
    }
}

#[derive(Clone)]
struct GuardState {
    settings: GuardSettings,
    loopback: bool,
    bucket: Arc<TokenBucket>,
    refused: RefusalCounters,
    budget: budget::ResponseBudget,
}

/// Wraps `router` in the guard middleware. `listen_is_loopback` is true when the
/// listener's address is a loopback address: then no credential is required (rate and
/// size limits still apply).
pub fn harden(
    router: Router,
    cfg: &GuardSettings,
    listen_is_loopback: bool,
    metrics: &SelfMetrics,
) -> Router {
    if !listen_is_loopback
        && cfg.token.is_none()
        && !cfg.tls.as_ref().is_some_and(|t| t.client_auth)
    {
        warn!(
            component = "httpguard",
            "listening on a non-loopback address without a token or client CA: /debug and /api will refuse every request"
        );
    }
    let state = GuardState {
        settings: cfg.clone(),
        loopback: listen_is_loopback,
        bucket: Arc::new(TokenBucket::new(cfg.profile_per_minute, cfg.profile_burst)),
        refused: RefusalCounters::register(metrics),
        budget: budget::ResponseBudget::new(cfg.max_response_buffer_bytes),
    };
    router.layer(axum::middleware::from_fn_with_state(state, guard))
}

/// Default deny: everything needs a credential off loopback except the health endpoints
/// and (unless `protect_metrics`) `/metrics`. `/debug/*` and `/api/*` are therefore always
/// protected, and so is any route added later or reached through an odd spelling.
fn is_protected(path: &str, protect_metrics: bool) -> bool {
    match path {
        "/healthz" | "/readyz" => false,
        "/metrics" => protect_metrics,
        _ => true,
    }
}

fn refuse(state: &GuardState, r: Refusal, status: StatusCode, msg: &str) -> Response {
    let mut resp = refusal_text(state, r, status, msg);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn refusal_text(state: &GuardState, r: Refusal, status: StatusCode, msg: &str) -> Response {
    state.refused.inc(r);
    debug!(
        component = "httpguard",
        reason = r.as_str(),
        status = status.as_u16(),
        "request refused"
    );
    (status, format!("{msg}\n")).into_response()
}

async fn guard(State(st): State<GuardState>, req: Request, next: Next) -> Response {
    // 1. Header size.
    let header_bytes: u64 = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().len() + v.len()) as u64)
        .sum();
    if header_bytes > st.settings.max_header_bytes {
        return refuse(
            &st,
            Refusal::HeadersTooLarge,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large",
        );
    }

    let path = req.uri().path().to_string();
    // 2. Authentication.
    if !st.loopback && is_protected(&path, st.settings.protect_metrics) {
        let has_cert = req.extensions().get::<VerifiedClientCert>().is_some();
        if !has_cert {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, rest) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
                });
            match presented {
                None | Some("") => {
                    let mut resp = refuse(
                        &st,
                        Refusal::Unauthenticated,
                        StatusCode::UNAUTHORIZED,
                        "a bearer token (or a client certificate) is required for this path",
                    );
                    resp.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"nodescope\""),
                    );
                    return resp;
                }
                Some(tok) => {
                    let ok = st
                        .settings
                        .token
                        .as_ref()
                        .is_some_and(|want| bool::from(want.as_ref().ct_eq(tok.as_bytes())));
                    if !ok {
                        return refuse(
                            &st,
                            Refusal::Forbidden,
                            StatusCode::FORBIDDEN,
                            "the bearer token is not valid",
                        );
                    }
                }
            }
        }
    }

    // 3. Profile rate limit for clients off loopback (after auth, so anonymous requests
    //    cannot drain it). A person at the node profiles freely.
    let client_local = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(st.loopback, |c| c.0.ip().is_loopback());
    let mut took_token = false;
    if path.starts_with("/debug/pprof") && !client_local {
        if let Err(wait) = st.bucket.take(Instant::now()) {
            let mut resp = refuse(
                &st,
                Refusal::RateLimited,
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "too many profile requests from non-loopback clients (http.security.profile_requests_per_minute = {}, profile_burst = {}); retry in {wait} s",
                    st.settings.profile_per_minute, st.settings.profile_burst
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return resp;
        }
        took_token = true;
    }
    let method = req.method().clone();
    let resp = body_limits(&st, req, next).await;
    let status = resp.status();
    // A refused profile request (bad parameter, 404, ...) gives its token back.
    if took_token && status.is_client_error() {
        st.bucket.refund();
    }
    let resp = explain_empty_error(resp, &method, &path);
    // Bound the bytes held for clients that read slowly or never.
    let (parts, body) = resp.into_parts();
    let Some(len) = http_body::Body::size_hint(&body).exact() else {
        return Response::from_parts(parts, body);
    };
    match st.budget.admit(body, len) {
        Ok(body) => Response::from_parts(parts, body),
        Err(body) => {
            drop(body);
            let held = st.budget.in_use_bytes();
            let mut resp = refuse(
                &st,
                Refusal::ResponseBufferFull,
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "busy: {held} bytes of responses are waiting for slow clients (http.security.max_response_buffer_bytes = {}); retry",
                    st.settings.max_response_buffer_bytes
                ),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
    }
}

/// Gives an error answer without a body (axum's 404 and 405, a handler's bare status) a
/// plain-text body that says what went wrong.
fn explain_empty_error(resp: Response, method: &axum::http::Method, path: &str) -> Response {
    let status = resp.status();
    let empty = http_body::Body::size_hint(resp.body()).exact() == Some(0);
    if !(status.is_client_error() || status.is_server_error())
        || !empty
        || *method == axum::http::Method::HEAD
    {
        return resp;
    }
    let msg = match status {
        StatusCode::NOT_FOUND => format!("no such path: {path}"),
        StatusCode::METHOD_NOT_ALLOWED => format!("method {method} is not allowed for {path}"),
        s => s.canonical_reason().unwrap_or("error").to_string(),
    };
    let (mut parts, _) = resp.into_parts();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(format!("{msg}\n")))
}

async fn body_limits(st: &GuardState, req: Request, next: Next) -> Response {
    // 4. Body size and body read time.
    let max = st.settings.max_body_bytes;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max {
            return refuse(
                st,
                Refusal::BodyTooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            );
        }
    }
    let (parts, body) = req.into_parts();
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let collected = tokio::time::timeout(
        st.settings.request_timeout,
        Limited::new(body, limit).collect(),
    )
    .await;
    let bytes = match collected {
        Err(_) => {
            return refuse(
                st,
                Refusal::Timeout,
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time",
            )
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return refuse(
                st,
                Refusal::BodyTooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            )
        }
        Ok(Err(e)) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("reading request body: {e}\n"),
            )
                .into_response()
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Serves `router` (already passed through [`harden`]) on `listener` until `shutdown`
/// resolves to the drain deadline; then asks every connection to finish its request in
/// flight and close, and drops those still open at the deadline.
///
/// HTTP/1.1 only (an HTTP/2 prior-knowledge client gets a GOAWAY with
/// `HTTP_1_1_REQUIRED`). At most `max_connections` connections are served at once (503
/// above). `request_timeout` bounds the wait for a request's headers, idle keep-alive time
/// included (408 and close); `write_timeout` bounds a stalled response write (close).
/// hyper's read buffer is bounded by `max_header_bytes` (431 above, with a body that says
/// so). TLS is terminated when `cfg.tls` is set. Each request carries
/// `ConnectInfo<SocketAddr>` and, for a verified client certificate,
/// [`VerifiedClientCert`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cfg: &GuardSettings,
    metrics: &SelfMetrics,
    shutdown: impl Future<Output = tokio::time::Instant> + Send,
) -> std::io::Result<()> {
    let refused = RefusalCounters::register(metrics);
    let open_gauge = metrics.gauge(
        "nodescope_http_connections",
        "Open HTTP API connections.",
        &[],
    );
    let acceptor = cfg
        .tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.server_config.clone()));
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections as usize));
    // Refusing over-cap connections takes a small task each; bounded too.
    let refusal_slots = Arc::new(tokio::sync::Semaphore::new(64));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    info!(component = "httpguard", addr = ?listener.local_addr().ok(), tls = acceptor.is_some(),
          max_connections = cfg.max_connections, "serving HTTP API");
    tokio::pin!(shutdown);
    let deadline = loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(component = "httpguard", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next() => continue,
            d = &mut shutdown => break d,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.inc(Refusal::TooManyConnections);
            debug!(component = "httpguard", %remote, "connection refused: max_connections reached");
            if acceptor.is_none() {
                if let Ok(p) = refusal_slots.clone().try_acquire_owned() {
                    let max = cfg.max_connections;
                    conns.spawn(async move {
                        refuse_connection(stream, max).await;
                        drop(p);
                    });
                }
            }
            continue;
        };
        let conn = Connection {
            router: router.clone(),
            acceptor: acceptor.clone(),
            refused: refused.clone(),
            settings: cfg.clone(),
            remote,
            stop: stop_rx.clone(),
        };
        let gauge = open_gauge.clone();
        gauge.set((cfg.max_connections as usize - slots.available_permits()) as f64);
        let slots2 = slots.clone();
        let max = cfg.max_connections as usize;
        conns.spawn(async move {
            conn.run(stream).await;
            drop(slot);
            gauge.set((max - slots2.available_permits()) as f64);
        });
    };
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout_at(deadline, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            component = "httpguard",
            open = conns.len(),
            "connections still open at the shutdown deadline; dropping them"
        );
        conns.abort_all();
    }
    Ok(())
}

/// Answers a connection over `max_connections` with a 503, then lets the client read it
/// before closing (closing with its request unread would reset the connection).
async fn refuse_connection(mut stream: tokio::net::TcpStream, max: u32) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let msg = conn::answer(
        503,
        &format!("too many open connections (http.security.max_connections = {max}); retry"),
        &[("retry-after", "1")],
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&msg).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024;
        while left > 0 {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left -= n.min(left);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

struct Connection {
    router: Router,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    refused: RefusalCounters,
    settings: GuardSettings,
    remote: SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Connection {
    async fn run(self, stream: tokio::net::TcpStream) {
        let timeout = self.settings.request_timeout;
        match self.acceptor.clone() {
            Some(acc) => match tokio::time::timeout(timeout, acc.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty());
                    self.serve_io(tls, cert).await;
                }
                Ok(Err(e)) => {
                    self.refused.inc(Refusal::TlsHandshake);
                    debug!(component = "httpguard", remote = %self.remote, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    self.refused.inc(Refusal::TlsHandshake);
                    debug!(component = "httpguard", remote = %self.remote, "TLS handshake timed out");
                }
            },
            None => self.serve_io(stream, false).await,
        }
    }

    async fn serve_io<S>(self, stream: S, cert: bool)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        use hyper_util::rt::{TokioIo, TokioTimer};
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::AsyncWriteExt;

        let s = &self.settings;
        let max_buf = usize::try_from(s.max_header_bytes.saturating_mul(2))
            .unwrap_or(usize::MAX)
            .max(8192);
        let mut io = conn::GuardedIo::new(stream, s.write_timeout, s.max_header_bytes);
        // Bytes read when the last response was ready (u64::MAX: none yet): more than that
        // at a header timeout means a request was being received (408), not an idle
        // keep-alive connection.
        let read_at_request = Arc::new(AtomicU64::new(u64::MAX));
        let result = {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(s.request_timeout)
                .max_buf_size(max_buf);
            let router = self.router.clone();
            let remote = self.remote;
            let seen = read_at_request.clone();
            let read = io.read_bytes.clone();
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(ConnectInfo::<SocketAddr>(remote));
                    if cert {
                        req.extensions_mut().insert(VerifiedClientCert);
                    }
                    let mut router = router.clone();
                    let (seen, read) = (seen.clone(), read.clone());
                    async move {
                        use tower::Service;
                        let resp = router.call(req.map(Body::new)).await;
                        // The guard has read the whole request body by now.
                        seen.store(read.load(Ordering::Acquire), Ordering::Release);
                        resp
                    }
                },
            );
            let conn = builder.serve_connection(TokioIo::new(&mut io), svc);
            tokio::pin!(conn);
            let mut stop = self.stop.clone();
            let stopping = async move {
                let _ = stop.wait_for(|v| *v).await.map(|_| ());
            };
            tokio::select! {
                r = conn.as_mut() => r,
                _ = stopping => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        };
        let Err(e) = result else { return };
        let remote = self.remote;
        let reply = if e.is_parse_version_h2() {
            self.refused.inc(Refusal::Http2);
            debug!(component = "httpguard", %remote, "HTTP/2 prior-knowledge connection refused");
            Some(conn::h2_goaway())
        } else if e.is_timeout() {
            let seen = read_at_request.load(Ordering::Acquire);
            // Not after an idle keep-alive period (closed quietly, not a refusal): only when
            // a request was being received, or none ever came.
            let begun = seen == u64::MAX || io.read_bytes.load(Ordering::Acquire) > seen;
            if begun {
                self.refused.inc(Refusal::HeaderTimeout);
                debug!(component = "httpguard", %remote, "request headers not received in time");
            } else {
                debug!(component = "httpguard", %remote, "idle keep-alive connection closed");
            }
            begun.then(|| {
                conn::answer(
                    408,
                    &format!(
                        "request headers not received within {:?} (http.security.request_timeout)",
                        s.request_timeout
                    ),
                    &[],
                )
            })
        } else if io.write_timed_out {
            self.refused.inc(Refusal::WriteTimeout);
            debug!(component = "httpguard", %remote, "client did not read the response; connection closed");
            None
        } else if e.is_parse_too_large() || io.replaced == Some(431) {
            self.refused.inc(Refusal::HeadersTooLarge);
            None
        } else if e.is_parse() {
            self.refused.inc(Refusal::Malformed);
            None
        } else {
            debug!(component = "httpguard", %remote, error = %e, "connection error");
            None
        };
        if let Some(bytes) = reply {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                io.write_all(&bytes).await?;
                io.shutdown().await
            })
            .await;
        }
    }
}

/// True when `addr` is a loopback address (127.0.0.0/8 or ::1).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_and_reports_wait() {
        let b = TokenBucket::new(6, 2); // one token per 10 s
        let t0 = Instant::now();
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, 10);
        assert!(b.take(t0 + Duration::from_secs(5)).is_err());
        assert!(b.take(t0 + Duration::from_secs(11)).is_ok());
    }

    #[test]
    fn protected_paths() {
        assert!(is_protected("/debug/pprof/profile", false));
        assert!(is_protected("/api/v1/status", false));
        assert!(is_protected("/api", false));
        assert!(is_protected("/apix", false), "default deny");
        assert!(is_protected("//debug/pprof/profile", false));
        assert!(is_protected("/metrics/", false));
        assert!(!is_protected("/metrics", false));
        assert!(is_protected("/metrics", true));
        assert!(!is_protected("/healthz", true));
        assert!(!is_protected("/readyz", true));
    }

    #[test]
    fn validate_reports_every_problem() {
        let cfg = SecurityConfig {
            max_body_bytes: 0,
            max_header_bytes: 10,
            request_timeout: Duration::ZERO,
            profile_requests_per_minute: 0,
            profile_burst: 0,
            tls: Some(TlsConfig::default()),
            ..Default::default()
        };
        let mut issues = Issues::default();
        cfg.validate("http.security", &mut issues);
        let keys: Vec<_> = issues.list.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.security.max_body_bytes",
                "http.security.max_header_bytes",
                "http.security.request_timeout",
                "http.security.profile_requests_per_minute",
                "http.security.profile_burst",
                "http.security.tls.cert_file",
                "http.security.tls.key_file",
            ]
        );
        let mut issues = Issues::default();
        SecurityConfig::default().validate_for_listen(false, "http.security", &mut issues);
        assert_eq!(issues.list.len(), 1);
        let mut issues = Issues::default();
        SecurityConfig::default().validate_for_listen(true, "http.security", &mut issues);
        assert!(issues.is_empty());
    }

    #[test]
    fn config_parses_from_toml_and_rejects_unknown_keys() {
        let cfg: SecurityConfig = toml::from_str(
            "token_file = \"/etc/nodescope/token\"\nprotect_metrics = true\n[tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\n",
        )
        .unwrap();
        assert!(cfg.protect_metrics);
        assert_eq!(cfg.max_body_bytes, 64 * 1024);
        assert_eq!(cfg.tls.unwrap().cert_file, PathBuf::from("/c"));
        assert!(toml::from_str::<SecurityConfig>("tokn_file = \"x\"").is_err());
    }

    #[test]
    fn build_reads_and_trims_token_and_names_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "s3cret\n").unwrap();
        let s = SecurityConfig {
            token_file: Some(p.clone()),
            ..Default::default()
        }
        .build()
        .unwrap();
        assert_eq!(s.token.as_deref(), Some(&b"s3cret"[..]));
        assert!(!format!("{s:?}").contains("s3cret"));
        std::fs::write(&p, "  \n").unwrap();
        let e = SecurityConfig {
            token_file: Some(p.clone()),
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert!(matches!(e, GuardError::EmptyToken(_)));
        let e = SecurityConfig {
            token_file: Some(dir.path().join("missing")),
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
