//! Prometheus remote_write 1.0 exporter: snappy (block format) compressed protobuf
//! `prometheus.WriteRequest`, for nodes that cannot be scraped.
//!
//! Histograms go out as classic `_bucket{le}` / `_sum` / `_count` series. 5xx and 429 are
//! retried (honouring `Retry-After`); any other 4xx is final and counted as rejected.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use nodescope_delivery::http::{self, RetryPolicy};
use nodescope_delivery::{
    config, AuthConfig, BatchConfig, Delivery, DeliveryConfig, DeliveryError, Encoder,
    ExporterContext, Payload, PushExporter, RetryConfig, TlsConfig, Transport, WalConfig,
};
use nodescope_model::config::Issues;
use nodescope_model::{ExportError, Exporter, MetricType, Signal, SignalKind, Value};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use serde::Deserialize;

/// Wire types of Prometheus' `prompb/remote.proto` and `prompb/types.proto` (remote
/// write 1.0). Written as prost derives rather than generated: five small messages do not
/// justify a protoc build step; field numbers follow the upstream schema.
pub mod prompb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
        #[prost(message, repeated, tag = "3")]
        pub metadata: Vec<MetricMetadata>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(double, tag = "1")]
        pub value: f64,
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MetricMetadata {
        /// UNKNOWN=0 COUNTER=1 GAUGE=2 HISTOGRAM=3 GAUGEHISTOGRAM=4 SUMMARY=5 INFO=6 STATESET=7
        #[prost(int32, tag = "1")]
        pub r#type: i32,
        #[prost(string, tag = "2")]
        pub metric_family_name: String,
        #[prost(string, tag = "4")]
        pub help: String,
        #[prost(string, tag = "5")]
        pub unit: String,
    }
}

pub const NAME: &str = "remote_write";

/// `[exporters.remote_write]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteConfig {
    pub enabled: bool,
    /// Full URL of the receiver, e.g. `http://prometheus:9090/api/v1/write`.
    pub endpoint: String,
    /// Labels added to every series (a series' own label wins on conflict).
    pub external_labels: BTreeMap<String, String>,
    /// Adds `instance=<host.name>` unless `external_labels` sets `instance`.
    pub instance_from_host: bool,
    /// Sends metric metadata (type, help) with each request.
    pub send_metadata: bool,
    pub headers: BTreeMap<String, String>,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub wal: WalConfig,
}

impl Default for RemoteWriteConfig {
    fn default() -> Self {
        RemoteWriteConfig {
            enabled: false,
            endpoint: "http://127.0.0.1:9090/api/v1/write".into(),
            external_labels: BTreeMap::from([("job".to_string(), "nodescope".to_string())]),
            instance_from_host: true,
            send_metadata: true,
            headers: BTreeMap::new(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            batch: BatchConfig {
                max_items: 5000,
                ..BatchConfig::default()
            },
            retry: RetryConfig::default(),
            wal: WalConfig::default(),
        }
    }
}

impl RemoteWriteConfig {
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        config::validate_endpoint(&self.endpoint, &format!("{prefix}.endpoint"), issues);
        for k in self.external_labels.keys() {
            issues.check(
                config::valid_user_label_name(k),
                format!("{prefix}.external_labels.{k}"),
                "is not a valid Prometheus label name",
            );
        }
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

    pub fn build(&self, ctx: &ExporterContext) -> Result<Box<dyn Exporter>, RemoteWriteError> {
        let mut ext = self.external_labels.clone();
        if self.instance_from_host && !ext.contains_key("instance") {
            if let Some(h) = ctx.resource.get("host.name") {
                ext.insert("instance".into(), h.to_string());
            }
        }
        let client = http::build_client(&self.tls, self.retry.request_timeout)?;
        let mut headers = http::build_headers(&self.headers, &self.auth)?;
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("snappy"));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        headers.insert(
            "X-Prometheus-Remote-Write-Version",
            HeaderValue::from_static("0.1.0"),
        );
        let delivery = Delivery::new(NAME, &self.delivery(), ctx)?;
        Ok(Box::new(PushExporter::new(
            NAME,
            &[SignalKind::Metrics],
            delivery,
            RwEncoder {
                external: ext.into_iter().collect(),
                send_metadata: self.send_metadata,
                snappy: snap::raw::Encoder::new(),
            },
            RwTransport {
                client,
                url: self.endpoint.clone(),
                headers: Arc::new(headers),
            },
        )))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    #[error("exporters.remote_write: {0}")]
    Client(#[from] http::ClientError),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

/// Encodes metric batches as a snappy-compressed `WriteRequest`.
pub struct RwEncoder {
    external: Vec<(String, String)>,
    send_metadata: bool,
    snappy: snap::raw::Encoder,
}

fn format_le(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

impl RwEncoder {
    /// A standalone encoder (tests, benchmarks).
    pub fn new(external: Vec<(String, String)>, send_metadata: bool) -> Self {
        RwEncoder {
            external,
            send_metadata,
            snappy: snap::raw::Encoder::new(),
        }
    }

    /// Builds the (uncompressed) write request for a batch.
    pub fn request(&self, batch: &[Signal]) -> (prompb::WriteRequest, u32) {
        let mut req = prompb::WriteRequest::default();
        let mut seen = HashSet::new();
        for s in batch {
            let Signal::Metrics(b) = s else { continue };
            let ts = b
                .timestamp
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            for f in &b.families {
                if self.send_metadata && seen.insert(f.name.clone()) {
                    req.metadata.push(prompb::MetricMetadata {
                        r#type: match f.kind {
                            MetricType::Counter => 1,
                            MetricType::Gauge => 2,
                            MetricType::Histogram => 3,
                            MetricType::Untyped => 0,
                        },
                        metric_family_name: f.name.to_string(),
                        help: f.help.to_string(),
                        unit: String::new(),
                    });
                }
                for p in &f.points {
                    let labels = |name: &str, extra: Option<(&str, String)>| {
                        let mut l: Vec<prompb::Label> =
                            Vec::with_capacity(p.labels.len() + self.external.len() + 2);
                        l.push(prompb::Label {
                            name: "__name__".into(),
                            value: name.to_string(),
                        });
                        // An empty label value is no label (Prometheus drops them too).
                        for (k, v) in p.labels.iter().filter(|(_, v)| !v.is_empty()) {
                            l.push(prompb::Label {
                                name: k.to_string(),
                                value: v.clone(),
                            });
                        }
                        if let Some((k, v)) = extra {
                            l.push(prompb::Label {
                                name: k.into(),
                                value: v,
                            });
                        }
                        for (k, v) in &self.external {
                            if !v.is_empty() && !l.iter().any(|x| &x.name == k) {
                                l.push(prompb::Label {
                                    name: k.clone(),
                                    value: v.clone(),
                                });
                            }
                        }
                        l.sort_by(|a, b| a.name.cmp(&b.name));
                        l
                    };
                    let sample = |v: f64| {
                        vec![prompb::Sample {
                            value: v,
                            timestamp: ts,
                        }]
                    };
                    match &p.value {
                        Value::Number(v) => req.timeseries.push(prompb::TimeSeries {
                            labels: labels(&f.name, None),
                            samples: sample(*v),
                        }),
                        Value::Histogram(h) => {
                            let bucket = format!("{}_bucket", f.name);
                            for b in &h.buckets {
                                req.timeseries.push(prompb::TimeSeries {
                                    labels: labels(&bucket, Some(("le", format_le(b.upper_bound)))),
                                    samples: sample(b.cumulative_count as f64),
                                });
                            }
                            req.timeseries.push(prompb::TimeSeries {
                                labels: labels(&bucket, Some(("le", "+Inf".into()))),
                                samples: sample(h.count as f64),
                            });
                            req.timeseries.push(prompb::TimeSeries {
                                labels: labels(&format!("{}_sum", f.name), None),
                                samples: sample(h.sum),
                            });
                            req.timeseries.push(prompb::TimeSeries {
                                labels: labels(&format!("{}_count", f.name), None),
                                samples: sample(h.count as f64),
                            });
                        }
                    }
                }
            }
        }
        // Items are samples, Prometheus' unit (`prometheus_remote_storage_samples_total`): one
        // per series written, so a histogram counts its buckets, `+Inf`, `_sum` and `_count`.
        let items = u32::try_from(req.timeseries.len()).unwrap_or(u32::MAX);
        (req, items)
    }
}

impl Encoder for RwEncoder {
    fn encode(&mut self, batch: &[Signal]) -> Result<Vec<Payload>, ExportError> {
        use prost::Message;
        let (req, items) = self.request(batch);
        if req.timeseries.is_empty() {
            return Ok(vec![]);
        }
        let raw = req.encode_to_vec();
        let body = self
            .snappy
            .compress_vec(&raw)
            .map_err(|e| ExportError::Encode {
                backend: NAME.into(),
                reason: e.to_string(),
            })?;
        Ok(vec![Payload {
            items,
            meta: vec![],
            body,
        }])
    }
}

pub struct RwTransport {
    client: reqwest::Client,
    url: String,
    headers: Arc<HeaderMap>,
}

#[async_trait::async_trait]
impl Transport for RwTransport {
    async fn send(&self, p: &Payload) -> Result<u64, ExportError> {
        http::post(
            &self.client,
            NAME,
            &self.url,
            (*self.headers).clone(),
            p.body.clone(),
            RetryPolicy::TooManyAnd5xx,
        )
        .await
        .map(|()| 0)
    }

    fn rejected(&self, p: &Payload, reason: &str) {
        tracing::warn!(items = p.items, %reason, "remote write receiver rejected a batch; not retrying");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodescope_model::{Histogram, MetricBatch, MetricFamily};
    use prost::Message;
    use std::time::{Duration, SystemTime};

    #[test]
    fn empty_label_values_are_dropped() {
        let mut c = MetricFamily::new("node_cpu_info", "c", MetricType::Gauge);
        c.push([("model", ""), ("cpu", "0"), ("build_id", "")], 1.0);
        let b = MetricBatch {
            source: "t".into(),
            timestamp: UNIX_EPOCH,
            families: vec![c],
        };
        let e = RwEncoder::new(vec![("cluster".into(), String::new())], false);
        let (req, items) = e.request(&[Signal::Metrics(Arc::new(b))]);
        assert_eq!(items, 1);
        let names: Vec<_> = req.timeseries[0]
            .labels
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(names, vec!["__name__", "cpu"]);
    }

    #[test]
    fn encodes_sorted_labels_histograms_and_external_labels() {
        let mut f = MetricFamily::new("x_seconds", "h", MetricType::Histogram);
        f.push_histogram(
            [("path", "/a")],
            Histogram::from_bucket_counts(&[0.1, 1.0], &[1, 2, 3], 4.5),
        );
        let mut c = MetricFamily::new("c_total", "c", MetricType::Counter);
        c.push([("mode", "idle"), ("cpu", "0")], 7.0);
        let b = MetricBatch {
            source: "t".into(),
            timestamp: UNIX_EPOCH + Duration::from_millis(1234),
            families: vec![f, c],
        };
        let mut e = RwEncoder::new(
            vec![("job".into(), "ns".into()), ("cpu".into(), "X".into())],
            true,
        );
        let sig = [Signal::Metrics(Arc::new(b))];
        let p = e.encode(&sig).unwrap().remove(0);
        // Samples, as Prometheus counts them: 2 buckets + +Inf + _sum + _count, and 1.
        assert_eq!(p.items, 6);
        let raw = snap::raw::Decoder::new().decompress_vec(&p.body).unwrap();
        let req = prompb::WriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(req.timeseries.len(), 3 + 2 + 1);
        let last = req.timeseries.last().unwrap();
        let names: Vec<_> = last.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, vec!["__name__", "cpu", "job", "mode"]);
        assert_eq!(last.labels[1].value, "0", "series label wins over external");
        assert_eq!(last.samples[0].value, 7.0);
        assert_eq!(last.samples[0].timestamp, 1234);
        let inf = &req.timeseries[2];
        assert!(inf
            .labels
            .iter()
            .any(|l| l.name == "le" && l.value == "+Inf"));
        assert_eq!(inf.samples[0].value, 6.0);
        assert_eq!(
            req.timeseries[0]
                .labels
                .iter()
                .find(|l| l.name == "le")
                .unwrap()
                .value,
            "0.1"
        );
        assert_eq!(req.metadata.len(), 2);
        let _ = SystemTime::now();
    }

    #[test]
    fn config_validation_reports_every_problem() {
        let c: RemoteWriteConfig = toml::from_str(
            r#"
            endpoint = "ftp://x"
            external_labels = { "bad-name" = "v" }
            [batch]
            max_items = 0
            [wal]
            enabled = true
            dir = "relative"
            "#,
        )
        .unwrap();
        let mut issues = Issues::default();
        c.validate("exporters.remote_write", &mut issues);
        let keys: Vec<_> = issues.list.iter().map(|i| i.key.as_str()).collect();
        for k in [
            "exporters.remote_write.endpoint",
            "exporters.remote_write.external_labels.bad-name",
            "exporters.remote_write.batch.max_items",
            "exporters.remote_write.wal.dir",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert!(toml::from_str::<RemoteWriteConfig>("endpont = \"x\"").is_err());
    }
}

nodescope_delivery::exporter_component!(RemoteWriteConfig, "exporters.remote_write");
