//! The HTTP side shared by the HTTP exporters: a reqwest client with TLS, auth and static
//! headers, and the mapping of responses to retryable / rejected outcomes.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use nodescope_model::ExportError;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;

use crate::config::{AuthConfig, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Read(nodescope_model::files::ReadFileError),
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
}

fn read(what: &'static str, p: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    nodescope_model::files::read_capped(p, nodescope_model::files::MAX_SECRET_BYTES, what)
        .map_err(ClientError::Read)
}

/// Builds a client: rustls, optional extra CA, optional client certificate.
pub fn build_client(tls: &TlsConfig, timeout: Duration) -> Result<reqwest::Client, ClientError> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(4)
        .user_agent(concat!("nodescope/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &tls.ca_file {
        let pem = read("CA file", ca)?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ClientError::Invalid {
                what: format!("CA file {}", ca.display()),
                reason: e.to_string(),
            })?;
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        let mut pem = read("client certificate", cert)?;
        pem.push(b'\n');
        pem.extend(read("client key", key)?);
        let id = reqwest::Identity::from_pem(&pem).map_err(|e| ClientError::Invalid {
            what: format!("client certificate {}", cert.display()),
            reason: e.to_string(),
        })?;
        b = b.identity(id);
    }
    if tls.insecure_skip_verify {
        b = b.danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| ClientError::Invalid {
        what: "HTTP client".into(),
        reason: e.to_string(),
    })
}

/// Static headers plus the authorization header.
pub fn build_headers(
    headers: &BTreeMap<String, String>,
    auth: &AuthConfig,
) -> Result<HeaderMap, ClientError> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| ClientError::Invalid {
            what: format!("header name {k:?}"),
            reason: e.to_string(),
        })?;
        let value = HeaderValue::from_str(v).map_err(|e| ClientError::Invalid {
            what: format!("header {k:?} value"),
            reason: e.to_string(),
        })?;
        h.insert(name, value);
    }
    let token = match (&auth.bearer_token, &auth.bearer_token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(p)) => Some(
            String::from_utf8_lossy(&read("bearer token file", p)?)
                .trim()
                .to_string(),
        ),
        _ => None,
    };
    let value = if let Some(t) = token {
        Some(format!("Bearer {t}"))
    } else {
        auth.username.as_ref().map(|u| {
            use base64::Engine;
            let pw = auth.password.as_deref().unwrap_or("");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{pw}"))
            )
        })
    };
    if let Some(v) = value {
        let mut v = HeaderValue::from_str(&v).map_err(|e| ClientError::Invalid {
            what: "authorization".into(),
            reason: e.to_string(),
        })?;
        v.set_sensitive(true);
        h.insert(AUTHORIZATION, v);
    }
    Ok(h)
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s));
    }
    let t = httpdate::parse_http_date(v).ok()?;
    Some(t.duration_since(SystemTime::now()).unwrap_or_default())
}

/// How a backend's HTTP status is treated.
#[derive(Clone, Copy, Debug)]
pub enum RetryPolicy {
    /// 429 and every 5xx are retried (Loki, Prometheus remote write, Pyroscope).
    TooManyAnd5xx,
    /// 429, 502, 503, 504 are retried; everything else is final (OTLP/HTTP spec).
    Otlp,
}

/// Maps a non-success response to an error; 2xx is `Ok`.
pub fn classify(
    backend: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    policy: RetryPolicy,
) -> Result<(), ExportError> {
    if status.is_success() {
        return Ok(());
    }
    let mut reason = format!("HTTP {}", status.as_u16());
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    let text = text.trim();
    if !text.is_empty() {
        reason.push_str(": ");
        reason.push_str(text);
    }
    let code = status.as_u16();
    let retry = match policy {
        RetryPolicy::TooManyAnd5xx => code == 429 || status.is_server_error(),
        RetryPolicy::Otlp => matches!(code, 429 | 502 | 503 | 504),
    };
    if retry {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        Err(ExportError::Retryable {
            backend: backend.to_string(),
            reason,
            retry_after,
        })
    } else {
        Err(ExportError::Rejected {
            backend: backend.to_string(),
            reason,
        })
    }
}

/// A transport-level failure (connection refused, timeout, reset) is always retryable.
pub fn transport_error(backend: &str, e: &reqwest::Error) -> ExportError {
    let mut reason = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        src = s.source();
    }
    ExportError::Retryable {
        backend: backend.to_string(),
        reason,
        retry_after: None,
    }
}

/// POSTs `body` and classifies the answer.
pub async fn post(
    client: &reqwest::Client,
    backend: &str,
    url: &str,
    headers: HeaderMap,
    body: Vec<u8>,
    policy: RetryPolicy,
) -> Result<(), ExportError> {
    let resp = client
        .post(url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| transport_error(backend, &e))?;
    let status = resp.status();
    let h = resp.headers().clone();
    let body = resp.bytes().await.unwrap_or_default();
    classify(backend, status, &h, &body, policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 1.5 "),
            Some(Duration::from_millis(1500))
        );
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(100));
        let d = parse_retry_after(&future).unwrap();
        assert!(
            d > Duration::from_secs(95) && d <= Duration::from_secs(100),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-3"), None);
    }

    #[test]
    fn classification() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        let e = classify(
            "x",
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            b"slow down",
            RetryPolicy::TooManyAnd5xx,
        );
        assert!(
            matches!(e, Err(ExportError::Retryable { retry_after: Some(d), .. }) if d == Duration::from_secs(3))
        );
        let e = classify(
            "x",
            StatusCode::BAD_REQUEST,
            &h,
            b"bad",
            RetryPolicy::TooManyAnd5xx,
        );
        assert!(matches!(e, Err(ExportError::Rejected { .. })));
        let e = classify(
            "x",
            StatusCode::INTERNAL_SERVER_ERROR,
            &h,
            b"",
            RetryPolicy::TooManyAnd5xx,
        );
        assert!(matches!(e, Err(ExportError::Retryable { .. })));
        let e = classify(
            "x",
            StatusCode::INTERNAL_SERVER_ERROR,
            &h,
            b"",
            RetryPolicy::Otlp,
        );
        assert!(matches!(e, Err(ExportError::Rejected { .. })));
        let e = classify(
            "x",
            StatusCode::SERVICE_UNAVAILABLE,
            &h,
            b"",
            RetryPolicy::Otlp,
        );
        assert!(matches!(e, Err(ExportError::Retryable { .. })));
        assert!(classify("x", StatusCode::NO_CONTENT, &h, b"", RetryPolicy::Otlp).is_ok());
    }

    #[test]
    fn auth_header() {
        let a = AuthConfig {
            username: Some("Aladdin".into()),
            password: Some("open sesame".into()),
            ..Default::default()
        };
        let h = build_headers(&BTreeMap::new(), &a).unwrap();
        assert_eq!(h[AUTHORIZATION], "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        let a = AuthConfig {
            bearer_token: Some("t0k".into()),
            ..Default::default()
        };
        let mut hs = BTreeMap::new();
        hs.insert("X-Scope-OrgID".to_string(), "tenant1".to_string());
        let h = build_headers(&hs, &a).unwrap();
        assert_eq!(h[AUTHORIZATION], "Bearer t0k");
        assert_eq!(h["x-scope-orgid"], "tenant1");
    }
}
