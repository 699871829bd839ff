//! Pyroscope exporter for continuous profiles: `POST {endpoint}/ingest?name=<app>{labels}
//! &from=&until=&format=pprof&sampleRate=&spyName=nodescope`.
//!
//! The body is `multipart/form-data` with the gzip-compressed pprof in the `profile` field,
//! the form Pyroscope's own Go client uses and the server's ingest handler parses (it also
//! accepts gzip-compressed pprof). One profile is one request; batching, retries (429 and
//! 5xx, honouring `Retry-After`), the memory bound and the WAL come from
//! `nodescope-delivery`. The query string is computed at batch time and stored with the
//! profile, so a profile resumed from the WAL goes out with its original time range.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use nodescope_delivery::http::{self, RetryPolicy};
use nodescope_delivery::{
    config, AuthConfig, BatchConfig, Delivery, DeliveryConfig, DeliveryError, Encoder,
    ExporterContext, Payload, PushExporter, RetryConfig, TlsConfig, Transport, WalConfig,
};
use nodescope_model::config::Issues;
use nodescope_model::{ExportError, Exporter, Profile, Signal, SignalKind};
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;

pub const NAME: &str = "pyroscope";

/// `[exporters.pyroscope]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PyroscopeConfig {
    pub enabled: bool,
    /// Base URL of Pyroscope; `/ingest` is appended.
    pub endpoint: String,
    /// Application name (`service_name` in Pyroscope).
    pub app_name: String,
    /// Sent as `X-Scope-OrgID` (multi-tenant Pyroscope).
    pub tenant_id: Option<String>,
    /// Static labels added to every profile (the profile's own labels win).
    pub labels: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub wal: WalConfig,
}

impl Default for PyroscopeConfig {
    fn default() -> Self {
        PyroscopeConfig {
            enabled: false,
            endpoint: "http://127.0.0.1:4040".into(),
            app_name: "nodescope".into(),
            tenant_id: None,
            labels: BTreeMap::new(),
            headers: BTreeMap::new(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            batch: BatchConfig {
                max_items: 64,
                ..BatchConfig::default()
            },
            retry: RetryConfig::default(),
            wal: WalConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PyroscopeError {
    #[error("exporters.pyroscope: {0}")]
    Client(#[from] http::ClientError),
    #[error("exporters.pyroscope.tenant_id: {0}")]
    Tenant(String),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

/// Pyroscope application names: letters, digits, `_`, `.` and `-` (`my-app.cpu`).
fn valid_app_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'))
}

/// Label names: `[a-zA-Z_][a-zA-Z0-9_.]*`; other characters become `_`.
pub fn sanitize_key(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

/// Label values must not break the `name{k=v,...}` syntax: `{ } , =` and control
/// characters become `_`.
pub fn sanitize_value(s: &str) -> String {
    s.chars()
        .map(|c| {
            if matches!(c, '{' | '}' | ',' | '=') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

impl PyroscopeConfig {
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        config::validate_endpoint(&self.endpoint, &format!("{prefix}.endpoint"), issues);
        issues.check(
            valid_app_name(&self.app_name),
            format!("{prefix}.app_name"),
            "must be letters, digits, '_', '.' or '-' (e.g. \"my-app.cpu\")",
        );
        // Label names are sanitised (docs/exporters.md); only an empty name is refused.
        for k in self.labels.keys() {
            issues.check(
                !k.is_empty(),
                format!("{prefix}.labels.{k}"),
                "must not be empty",
            );
        }
        config::validate_tenant(prefix, &self.tenant_id, issues);
        config::validate_client(prefix, &self.headers, &self.auth, &self.tls, issues);
        self.delivery().validate(prefix, issues);
    }

    pub fn delivery(&self) -> DeliveryConfig {
        DeliveryConfig {
            batch: self.batch.clone(),
            retry: self.retry.clone(),
            wal: self.wal.clone(),
        }
    }

    pub fn build(&self, ctx: &ExporterContext) -> Result<Box<dyn Exporter>, PyroscopeError> {
        let client = http::build_client(&self.tls, self.retry.request_timeout)?;
        let mut headers = http::build_headers(&self.headers, &self.auth)?;
        if let Some(t) = &self.tenant_id {
            let v = HeaderValue::from_str(t).map_err(|e| PyroscopeError::Tenant(e.to_string()))?;
            headers.insert("X-Scope-OrgID", v);
        }
        let mut static_labels: Vec<(String, String)> = Vec::new();
        if let Some(h) = ctx.resource.get("host.name") {
            static_labels.push(("node".into(), h.to_string()));
        }
        for (k, v) in &self.labels {
            static_labels.push((k.clone(), v.clone()));
        }
        let delivery = Delivery::new(NAME, &self.delivery(), ctx)?;
        Ok(Box::new(PushExporter::new(
            NAME,
            &[SignalKind::Profiles],
            delivery,
            PyroscopeEncoder {
                app_name: self.app_name.clone(),
                static_labels,
            },
            PyroscopeTransport {
                client,
                url: format!("{}/ingest", self.endpoint.trim_end_matches('/')),
                headers: Arc::new(headers),
            },
        )))
    }
}

pub struct PyroscopeEncoder {
    app_name: String,
    static_labels: Vec<(String, String)>,
}

impl PyroscopeEncoder {
    pub fn new(app_name: &str, static_labels: Vec<(String, String)>) -> Self {
        PyroscopeEncoder {
            app_name: app_name.into(),
            static_labels,
        }
    }

    /// `name{k=v,...}` with sorted, sanitised labels.
    pub fn name(&self, p: &Profile) -> String {
        let mut labels: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in &self.static_labels {
            labels.insert(sanitize_key(k), sanitize_value(v));
        }
        for (k, v) in &p.labels {
            labels.insert(sanitize_key(k), sanitize_value(v));
        }
        let body: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}{{{}}}", self.app_name, body.join(","))
    }

    /// The full query string of the ingest request for a profile.
    pub fn query(&self, p: &Profile) -> String {
        let from = p
            .start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let until = (p.start + p.duration)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs().max(from + 1))
            .unwrap_or(from + 1);
        let mut q = reqwest::Url::parse("http://x/ingest").expect("static URL");
        q.query_pairs_mut()
            .append_pair("name", &self.name(p))
            .append_pair("from", &from.to_string())
            .append_pair("until", &until.to_string())
            .append_pair("format", "pprof")
            .append_pair("sampleRate", &p.sample_rate_hz.to_string())
            .append_pair("spyName", "nodescope");
        q.query().unwrap_or_default().to_string()
    }
}

impl Encoder for PyroscopeEncoder {
    fn encode(&mut self, batch: &[Signal]) -> Result<Vec<Payload>, ExportError> {
        Ok(batch
            .iter()
            .filter_map(|s| match s {
                Signal::Profile(p) => Some(Payload {
                    items: 1,
                    meta: self.query(p).into_bytes(),
                    body: p.pprof_gz.clone(),
                }),
                _ => None,
            })
            .collect())
    }
}

pub struct PyroscopeTransport {
    client: reqwest::Client,
    url: String,
    headers: Arc<HeaderMap>,
}

#[async_trait::async_trait]
impl Transport for PyroscopeTransport {
    async fn send(&self, p: &Payload) -> Result<u64, ExportError> {
        let query = String::from_utf8_lossy(&p.meta);
        let url = format!("{}?{query}", self.url);
        let part = reqwest::multipart::Part::bytes(p.body.clone())
            .file_name("profile.pprof")
            .mime_str("application/octet-stream")
            .map_err(|e| ExportError::Encode {
                backend: NAME.into(),
                reason: e.to_string(),
            })?;
        let form = reqwest::multipart::Form::new().part("profile", part);
        let resp = self
            .client
            .post(url)
            .headers((*self.headers).clone())
            .multipart(form)
            .send()
            .await
            .map_err(|e| http::transport_error(NAME, &e))?;
        let status = resp.status();
        let h = resp.headers().clone();
        let body = resp.bytes().await.unwrap_or_default();
        http::classify(NAME, status, &h, &body, RetryPolicy::TooManyAnd5xx).map(|()| 0)
    }

    fn rejected(&self, p: &Payload, reason: &str) {
        tracing::warn!(query = %String::from_utf8_lossy(&p.meta), %reason, "Pyroscope rejected a profile; not retrying");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn name_and_query() {
        let e = PyroscopeEncoder::new("nodescope", vec![("node".into(), "n1".into())]);
        let p = Profile {
            start: UNIX_EPOCH + Duration::from_secs(1000),
            duration: Duration::from_secs(15),
            sample_rate_hz: 19,
            labels: vec![
                ("workload".into(), "cri-containerd{x},y=z".into()),
                ("pod-name".into(), "web-0".into()),
            ],
            pprof_gz: vec![1, 2, 3],
        };
        assert_eq!(
            e.name(&p),
            "nodescope{node=n1,pod_name=web-0,workload=cri-containerd_x__y_z}"
        );
        let q: BTreeMap<String, String> =
            reqwest::Url::parse(&format!("http://x/?{}", e.query(&p)))
                .unwrap()
                .query_pairs()
                .into_owned()
                .collect();
        assert_eq!(q["from"], "1000");
        assert_eq!(q["until"], "1015");
        assert_eq!(q["format"], "pprof");
        assert_eq!(q["sampleRate"], "19");
        assert_eq!(q["name"], e.name(&p));
    }

    #[test]
    fn validation() {
        let c: PyroscopeConfig =
            toml::from_str("endpoint = \"x\"\napp_name = \"bad app\"\n[labels]\n\"\" = \"c\"\n")
                .unwrap();
        let mut i = Issues::default();
        c.validate("exporters.pyroscope", &mut i);
        let keys: Vec<_> = i.list.iter().map(|x| x.key.as_str()).collect();
        for k in [
            "exporters.pyroscope.endpoint",
            "exporters.pyroscope.app_name",
            "exporters.pyroscope.labels.",
        ] {
            assert!(keys.contains(&k), "{k} not in {keys:?}");
        }
        // A hyphenated app name and a label name that needs sanitising are accepted.
        let c: PyroscopeConfig = toml::from_str(
            "endpoint = \"http://127.0.0.1:4040\"\napp_name = \"my-app.cpu\"\n[labels]\n\"team name\" = \"x\"\n",
        )
        .unwrap();
        let mut i = Issues::default();
        c.validate("exporters.pyroscope", &mut i);
        assert!(i.is_empty(), "{:?}", i.list);
    }
}

nodescope_delivery::exporter_component!(PyroscopeConfig, "exporters.pyroscope");
