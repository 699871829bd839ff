//! Configuration shared by every push exporter: batching, retry, memory bound, WAL and the
//! HTTP client (TLS, auth, headers). Each exporter's `XConfig` embeds these with
//! `#[serde(flatten)]`-free nesting: `[exporters.<x>.batch]`, `.retry`, `.wal`, `.tls`, `.auth`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use nodescope_component::creatable_dir;
use nodescope_model::config::Issues;
use serde::Deserialize;

/// How payloads are grouped and how much memory an exporter may hold.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// A batch is closed when it holds this many items (metric points, log lines, profiles).
    pub max_items: usize,
    /// ... or when the signals in it are this large (approximate in-memory size).
    pub max_bytes: usize,
    /// ... or when its first signal is this old.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Upper bound on encoded payloads waiting in memory (plus the one in flight). Past it
    /// the oldest waiting payload is dropped and counted (`reason="memory_limit"`). With
    /// the WAL on, waiting payloads live on disk and this bounds only what is in flight.
    pub memory_limit_bytes: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_items: 8192,
            max_bytes: 4 << 20,
            timeout: Duration::from_secs(1),
            memory_limit_bytes: 64 << 20,
        }
    }
}

impl BatchConfig {
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        issues.check(
            self.max_items > 0,
            format!("{prefix}.max_items"),
            "must be at least 1",
        );
        issues.check(
            self.max_bytes >= 1024,
            format!("{prefix}.max_bytes"),
            "must be at least 1024 bytes",
        );
        issues.check(
            !self.timeout.is_zero() && self.timeout <= Duration::from_secs(300),
            format!("{prefix}.timeout"),
            "must be between 1ns and 5m",
        );
        issues.check(
            self.memory_limit_bytes >= 1 << 20,
            format!("{prefix}.memory_limit_bytes"),
            "must be at least 1 MiB",
        );
        issues.check(
            self.max_bytes <= self.memory_limit_bytes / 2,
            format!("{prefix}.max_bytes"),
            "must be at most half of memory_limit_bytes",
        );
    }
}

/// Exponential backoff with jitter.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// Each delay is multiplied by a random factor in `[1 - jitter, 1 + jitter]`.
    pub jitter: f64,
    /// Give up on a payload after retrying it this long (`0s` = never give up; the memory
    /// bound or the WAL cap then decides what is dropped).
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
    /// Upper bound on a server-provided `Retry-After` / gRPC `RetryInfo` delay.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// Timeout of one request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
            max_elapsed: Duration::ZERO,
            max_retry_after: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryConfig {
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        issues.check(
            !self.initial_backoff.is_zero(),
            format!("{prefix}.initial_backoff"),
            "must be greater than 0",
        );
        issues.check(
            self.max_backoff >= self.initial_backoff,
            format!("{prefix}.max_backoff"),
            "must be at least initial_backoff",
        );
        issues.check(
            self.multiplier >= 1.0 && self.multiplier <= 10.0,
            format!("{prefix}.multiplier"),
            "must be between 1 and 10",
        );
        issues.check(
            (0.0..=1.0).contains(&self.jitter),
            format!("{prefix}.jitter"),
            "must be between 0 and 1",
        );
        issues.check(
            !self.request_timeout.is_zero(),
            format!("{prefix}.request_timeout"),
            "must be greater than 0",
        );
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// fsync after every appended record and every acknowledgement (safest, slowest).
    Always,
    /// fsync at most every `fsync_interval` (a power loss loses at most that window).
    Interval,
    /// Leave flushing to the OS (survives a process crash, not a power loss).
    Never,
}

/// The optional per-exporter disk write-ahead log.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    pub enabled: bool,
    /// Parent directory; each exporter writes to `<dir>/<exporter name>/`.
    pub dir: PathBuf,
    /// Cap on the WAL's size on disk. Past it the oldest segment is deleted and its
    /// unsent items are counted (`reason="wal_full"`).
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            enabled: false,
            dir: PathBuf::from("/var/lib/nodescope/wal"),
            max_bytes: 512 << 20,
            segment_bytes: 16 << 20,
            fsync: FsyncPolicy::Interval,
            fsync_interval: Duration::from_secs(1),
        }
    }
}

impl WalConfig {
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        if !self.enabled {
            return;
        }
        issues.check(
            self.dir.is_absolute(),
            format!("{prefix}.dir"),
            "must be an absolute path",
        );
        issues.check(
            self.segment_bytes >= 64 << 10,
            format!("{prefix}.segment_bytes"),
            "must be at least 64 KiB",
        );
        issues.check(
            self.max_bytes >= 2 * self.segment_bytes,
            format!("{prefix}.max_bytes"),
            "must be at least twice segment_bytes",
        );
        issues.check(
            self.fsync != FsyncPolicy::Interval || !self.fsync_interval.is_zero(),
            format!("{prefix}.fsync_interval"),
            "must be greater than 0 when fsync = \"interval\"",
        );
    }

    /// The environment part of validation: the WAL directory exists as a writable directory
    /// or can be created (`run` would fail to open the WAL otherwise).
    pub fn check_environment(&self, prefix: &str, issues: &mut Issues) {
        if self.enabled && self.dir.is_absolute() {
            if let Err(reason) = creatable_dir(&self.dir) {
                issues.push(format!("{prefix}.dir"), reason);
            }
        }
    }
}

/// Everything the batching/retry/WAL engine needs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub wal: WalConfig,
}

impl DeliveryConfig {
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        self.batch.validate(&format!("{prefix}.batch"), issues);
        self.retry.validate(&format!("{prefix}.retry"), issues);
        self.wal.validate(&format!("{prefix}.wal"), issues);
    }
}

/// TLS settings of an exporter's client. Files are PEM.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Extra CA bundle trusted in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (mutual TLS); requires `key_file`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Skip server certificate verification (testing only).
    pub insecure_skip_verify: bool,
}

impl TlsConfig {
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        issues.check(
            self.cert_file.is_some() == self.key_file.is_some(),
            format!("{prefix}.cert_file"),
            "cert_file and key_file must be set together",
        );
        for (k, p) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(p) = p {
                issues.check(
                    p.is_file(),
                    format!("{prefix}.{k}"),
                    format!("{} is not a readable file", p.display()),
                );
            }
        }
    }
}

/// HTTP authentication. At most one of basic and bearer.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub username: Option<String>,
    pub password: Option<String>,
    pub bearer_token: Option<String>,
    /// Read the bearer token from this file at start-up (Kubernetes secrets).
    pub bearer_token_file: Option<PathBuf>,
}

impl AuthConfig {
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        let bearer = self.bearer_token.is_some() || self.bearer_token_file.is_some();
        issues.check(
            !(bearer && self.username.is_some()),
            prefix.to_string(),
            "set either username/password or bearer_token, not both",
        );
        issues.check(
            !(self.bearer_token.is_some() && self.bearer_token_file.is_some()),
            format!("{prefix}.bearer_token_file"),
            "set either bearer_token or bearer_token_file, not both",
        );
        issues.check(
            self.password.is_none() || self.username.is_some(),
            format!("{prefix}.username"),
            "password is set without username",
        );
        if let Some(p) = &self.bearer_token_file {
            issues.check(
                p.is_file(),
                format!("{prefix}.bearer_token_file"),
                format!("{} is not a readable file", p.display()),
            );
        }
    }
}

/// Validates a header map: names must be valid HTTP header names, values visible ASCII.
pub fn validate_headers(headers: &BTreeMap<String, String>, prefix: &str, issues: &mut Issues) {
    for (k, v) in headers {
        issues.check(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_ok(),
            format!("{prefix}.{k}"),
            "is not a valid HTTP header name",
        );
        issues.check(
            reqwest::header::HeaderValue::from_str(v).is_ok(),
            format!("{prefix}.{k}"),
            "value is not a valid HTTP header value",
        );
    }
}

/// Validates the HTTP client keys every push exporter shares: `headers`, `auth`, `tls`.
pub fn validate_client(
    prefix: &str,
    headers: &BTreeMap<String, String>,
    auth: &AuthConfig,
    tls: &TlsConfig,
    issues: &mut Issues,
) {
    validate_headers(headers, &format!("{prefix}.headers"), issues);
    auth.validate(&format!("{prefix}.auth"), issues);
    tls.validate(&format!("{prefix}.tls"), issues);
}

/// Validates an optional tenant id sent as `X-Scope-OrgID` (Loki, Pyroscope, Mimir).
pub fn validate_tenant(prefix: &str, tenant_id: &Option<String>, issues: &mut Issues) {
    if let Some(t) = tenant_id {
        issues.check(
            !t.is_empty() && reqwest::header::HeaderValue::from_str(t).is_ok(),
            format!("{prefix}.tenant_id"),
            "must be a non-empty header value",
        );
    }
}

/// A Prometheus / Loki label name a user may set: `[a-zA-Z_][a-zA-Z0-9_]*`, and not
/// starting with the reserved `__`.
pub fn valid_user_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !s.starts_with("__")
}

/// Validates an endpoint URL (http or https, with a host).
pub fn validate_endpoint(endpoint: &str, key: &str, issues: &mut Issues) {
    match reqwest::Url::parse(endpoint) {
        Ok(u) => {
            issues.check(
                matches!(u.scheme(), "http" | "https"),
                key,
                format!("scheme {:?} is not http or https", u.scheme()),
            );
            issues.check(u.host().is_some(), key, "has no host");
        }
        Err(e) => issues.push(key, format!("{endpoint:?} is not a URL: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_dir_must_be_creatable() {
        let t = tempfile::tempdir().unwrap();
        assert!(creatable_dir(&t.path().join("a/b/c")).is_ok());
        let file = t.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = creatable_dir(&file.join("wal")).unwrap_err();
        assert!(e.contains("is not a directory"), "{e}");
        let mut issues = Issues::default();
        WalConfig {
            enabled: true,
            dir: file.join("wal"),
            ..Default::default()
        }
        .check_environment("exporters.loki.wal", &mut issues);
        assert_eq!(issues.list.len(), 1);
        assert_eq!(issues.list[0].key, "exporters.loki.wal.dir");
    }
}
