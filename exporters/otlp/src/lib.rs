//! OTLP exporter for metrics and logs, over gRPC or HTTP/protobuf, with gzip, headers and
//! TLS (CA and client certificate).
//!
//! The model is pre-aggregated (cumulative counters and histograms with the collector's own
//! timestamps), which the OpenTelemetry SDK's instruments cannot carry, so this crate
//! builds the official wire types (`opentelemetry-proto`) directly and sends them with
//! tonic (gRPC) or reqwest (HTTP). Payloads are encoded once, at batch time; the gRPC path
//! passes the encoded bytes through a pass-through codec so a payload resumed from the WAL
//! is never decoded and re-encoded.

pub mod semconv;

use std::collections::BTreeMap;
use std::io::Write;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};
use nodescope_delivery::http::{self, RetryPolicy};
use nodescope_delivery::{
    config, AuthConfig, BatchConfig, Delivery, DeliveryConfig, DeliveryError, Encoder,
    ExporterContext, Payload, PushExporter, RetryConfig, TlsConfig, Transport, WalConfig,
};
use nodescope_model::config::Issues;
use nodescope_model::{
    ExportError, Exporter, Labels, LogRecord, Resource, Signal, SignalKind, Value,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1 as logs_pb;
use opentelemetry_proto::tonic::metrics::v1 as metrics_pb;
use opentelemetry_proto::tonic::resource::v1 as resource_pb;
use prost::Message;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use serde::Deserialize;

use semconv::{Kind, OtelMetric};

pub const NAME: &str = "otlp";
const META_METRICS: u8 = b'm';
const META_LOGS: u8 = b'l';

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
}

/// Which name map metrics go out under.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MetricNames {
    /// OpenTelemetry semantic conventions (`system.cpu.time`, ...) for host metrics that
    /// have one; every other metric keeps its own name.
    Otel,
    /// The model's node_exporter-compatible names for everything.
    Prometheus,
}

/// `[exporters.otlp]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    pub enabled: bool,
    pub protocol: Protocol,
    /// gRPC: `http(s)://host:4317`. HTTP: base URL (`/v1/metrics`, `/v1/logs` appended
    /// when it has no path) — default `http://127.0.0.1:4318` for http_protobuf.
    pub endpoint: Option<String>,
    pub compression: Compression,
    pub metrics: bool,
    pub logs: bool,
    pub metric_names: MetricNames,
    /// Extra resource attributes, added to those the agent detects.
    pub resource_attributes: BTreeMap<String, String>,
    /// Headers (HTTP) / metadata (gRPC) sent with every request.
    pub headers: BTreeMap<String, String>,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub wal: WalConfig,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            enabled: false,
            protocol: Protocol::Grpc,
            endpoint: None,
            compression: Compression::Gzip,
            metrics: true,
            logs: true,
            metric_names: MetricNames::Otel,
            resource_attributes: BTreeMap::new(),
            headers: BTreeMap::new(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            batch: BatchConfig::default(),
            retry: RetryConfig::default(),
            wal: WalConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("exporters.otlp: {0}")]
    Client(#[from] http::ClientError),
    #[error("exporters.otlp.endpoint: {0}")]
    Endpoint(String),
    #[error("exporters.otlp.tls: {0}")]
    Tls(String),
    #[error("exporters.otlp.headers: {0}")]
    Header(String),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

impl OtlpConfig {
    pub fn endpoint(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| match self.protocol {
                Protocol::Grpc => "http://127.0.0.1:4317".into(),
                Protocol::HttpProtobuf => "http://127.0.0.1:4318".into(),
            })
    }

    fn http_url(&self, signal: &str) -> String {
        let e = self.endpoint();
        match reqwest::Url::parse(&e) {
            Ok(u) if u.path() == "/" || u.path().is_empty() => {
                format!("{}/v1/{signal}", e.trim_end_matches('/'))
            }
            _ => e,
        }
    }

    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        config::validate_endpoint(&self.endpoint(), &format!("{prefix}.endpoint"), issues);
        issues.check(
            self.metrics || self.logs,
            format!("{prefix}.metrics"),
            "at least one of metrics and logs must be enabled",
        );
        if self.protocol == Protocol::HttpProtobuf {
            if let Some(e) = &self.endpoint {
                let has_path = reqwest::Url::parse(e).is_ok_and(|u| u.path().len() > 1);
                issues.check(
                    !(has_path && self.metrics && self.logs),
                    format!("{prefix}.endpoint"),
                    "with both metrics and logs enabled, give the base URL without a path (/v1/metrics and /v1/logs are appended)",
                );
            }
        }
        config::validate_client(prefix, &self.headers, &self.auth, &self.tls, issues);
        for k in self.headers.keys() {
            issues.check(
                tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(
                    k.to_ascii_lowercase().as_bytes(),
                )
                .is_ok(),
                format!("{prefix}.headers.{k}"),
                "is not a valid gRPC metadata key",
            );
        }
        self.delivery().validate(prefix, issues);
    }

    pub fn delivery(&self) -> DeliveryConfig {
        DeliveryConfig {
            batch: self.batch.clone(),
            retry: self.retry.clone(),
            wal: self.wal.clone(),
        }
    }

    pub fn build(&self, ctx: &ExporterContext) -> Result<Box<dyn Exporter>, OtlpError> {
        let mut resource = ctx.resource.clone();
        for (k, v) in &self.resource_attributes {
            resource.set(k.clone(), v.clone());
        }
        let encoder = OtlpEncoder::new(
            &resource,
            self.metric_names,
            self.protocol == Protocol::HttpProtobuf && self.compression == Compression::Gzip,
        );
        let headers = http::build_headers(&self.headers, &self.auth)?;
        let transport = match self.protocol {
            Protocol::HttpProtobuf => {
                let client = http::build_client(&self.tls, self.retry.request_timeout)?;
                let mut h = headers;
                h.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-protobuf"),
                );
                if self.compression == Compression::Gzip {
                    h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                }
                OtlpTransport::Http {
                    client,
                    metrics_url: self.http_url("metrics"),
                    logs_url: self.http_url("logs"),
                    headers: Arc::new(h),
                }
            }
            Protocol::Grpc => {
                let endpoint =
                    grpc_endpoint(&self.endpoint(), &self.tls, self.retry.request_timeout)?;
                let mut md = tonic::metadata::MetadataMap::new();
                for (k, v) in &headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.as_str().as_bytes())
                        .map_err(|e| OtlpError::Header(format!("{k}: {e}")))?;
                    let val = tonic::metadata::MetadataValue::try_from(v.as_bytes())
                        .map_err(|e| OtlpError::Header(format!("{k}: {e}")))?;
                    md.insert(key, val);
                }
                OtlpTransport::Grpc {
                    endpoint: Box::new(endpoint),
                    channel: tokio::sync::OnceCell::new(),
                    metadata: md,
                    gzip: self.compression == Compression::Gzip,
                }
            }
        };
        let delivery = Delivery::new(NAME, &self.delivery(), ctx)?;
        let mut signals = Vec::new();
        if self.metrics {
            signals.push(SignalKind::Metrics);
        }
        if self.logs {
            signals.push(SignalKind::Logs);
        }
        Ok(Box::new(PushExporter::new(
            NAME, &signals, delivery, encoder, transport,
        )))
    }
}

fn grpc_endpoint(
    endpoint: &str,
    tls: &TlsConfig,
    timeout: Duration,
) -> Result<tonic::transport::Endpoint, OtlpError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut ep = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| OtlpError::Endpoint(format!("{endpoint:?}: {e}")))?
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)));
    let https = endpoint.starts_with("https://");
    if https || tls.ca_file.is_some() || tls.cert_file.is_some() {
        let read = |p: &std::path::Path| {
            nodescope_model::files::read_capped(
                p,
                nodescope_model::files::MAX_SECRET_BYTES,
                "TLS file",
            )
            .map_err(|e| OtlpError::Tls(e.to_string()))
        };
        let mut t = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &tls.ca_file {
            t = t.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(c), Some(k)) = (&tls.cert_file, &tls.key_file) {
            t = t.identity(Identity::from_pem(read(c)?, read(k)?));
        }
        if tls.insecure_skip_verify {
            return Err(OtlpError::Tls(
                "insecure_skip_verify is not supported with protocol = \"grpc\"".into(),
            ));
        }
        ep = ep
            .tls_config(t)
            .map_err(|e| OtlpError::Tls(e.to_string()))?;
    }
    Ok(ep)
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
    }
}

fn attrs(l: &Labels) -> Vec<KeyValue> {
    l.iter().map(|(k, v)| kv(k, v)).collect()
}

/// A log record's stream label as an OpenTelemetry semantic-convention attribute: the
/// Loki-style pod labels the log sources set (`namespace`, `pod`, `container`,
/// `node_name`, `service_name`) become `k8s.*` / `service.name`; others keep their name.
pub fn log_label_key(k: &str) -> &str {
    match k {
        "namespace" => "k8s.namespace.name",
        "pod" => "k8s.pod.name",
        "container" => "k8s.container.name",
        "node_name" => "k8s.node.name",
        "service_name" => "service.name",
        k => k,
    }
}

/// Data points of one OTLP metric.
fn data_points(m: &metrics_pb::Metric) -> usize {
    use metrics_pb::metric::Data;
    match &m.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

/// Samples in Prometheus' sense: one per gauge or sum data point; a histogram data point
/// is one per bucket (`+Inf` included) plus `_sum` and `_count`.
fn samples(m: &metrics_pb::Metric) -> usize {
    use metrics_pb::metric::Data;
    match &m.data {
        Some(Data::Histogram(h)) => h
            .data_points
            .iter()
            .map(|d| d.bucket_counts.len() + 2)
            .sum(),
        Some(Data::ExponentialHistogram(h)) => h
            .data_points
            .iter()
            .map(|d| {
                d.positive.as_ref().map_or(0, |b| b.bucket_counts.len())
                    + d.negative.as_ref().map_or(0, |b| b.bucket_counts.len())
                    + 3
            })
            .sum(),
        Some(Data::Summary(s)) => s
            .data_points
            .iter()
            .map(|d| d.quantile_values.len() + 2)
            .sum(),
        _ => data_points(m),
    }
}

/// A receiver's rejected data points in samples, in proportion (`points`: data points in
/// the payload).
fn rejected_samples(rejected_points: u64, items: u32, points: u32) -> u64 {
    if rejected_points == 0 || points == 0 {
        return 0;
    }
    let items = u64::from(items);
    (rejected_points.saturating_mul(items))
        .div_ceil(u64::from(points))
        .min(items)
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Builds OTLP requests from the model.
pub struct OtlpEncoder {
    resource: resource_pb::Resource,
    scope: InstrumentationScope,
    names: MetricNames,
    gzip: bool,
    /// Start of the cumulative series: when this exporter was built (the model carries no
    /// per-series start time).
    start_nanos: u64,
}

impl OtlpEncoder {
    pub fn new(resource: &Resource, names: MetricNames, gzip: bool) -> Self {
        OtlpEncoder {
            resource: resource_pb::Resource {
                attributes: resource.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
                ..Default::default()
            },
            scope: InstrumentationScope {
                name: "nodescope".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            },
            names,
            gzip,
            start_nanos: nanos(SystemTime::now()),
        }
    }

    fn metric(&self, m: OtelMetric, ts: u64) -> metrics_pb::Metric {
        use metrics_pb::metric::Data;
        let start = self.start_nanos.min(ts);
        let number =
            |points: Vec<(Labels, Value)>, start: u64| -> Vec<metrics_pb::NumberDataPoint> {
                points
                    .into_iter()
                    .filter_map(|(l, v)| match v {
                        Value::Number(n) => Some(metrics_pb::NumberDataPoint {
                            attributes: attrs(&l),
                            start_time_unix_nano: start,
                            time_unix_nano: ts,
                            value: Some(metrics_pb::number_data_point::Value::AsDouble(n)),
                            ..Default::default()
                        }),
                        Value::Histogram(_) => None,
                    })
                    .collect()
            };
        let cumulative = metrics_pb::AggregationTemporality::Cumulative as i32;
        let data = match m.kind {
            Kind::Counter | Kind::UpDown => Data::Sum(metrics_pb::Sum {
                data_points: number(m.points, start),
                aggregation_temporality: cumulative,
                is_monotonic: m.kind == Kind::Counter,
            }),
            Kind::Gauge => Data::Gauge(metrics_pb::Gauge {
                data_points: number(m.points, 0),
            }),
            Kind::Histogram => Data::Histogram(metrics_pb::Histogram {
                data_points: m
                    .points
                    .into_iter()
                    .filter_map(|(l, v)| match v {
                        Value::Histogram(h) => {
                            // OTLP wants per-bucket counts with one overflow bucket.
                            let mut prev = 0u64;
                            let mut counts: Vec<u64> = h
                                .buckets
                                .iter()
                                .map(|b| {
                                    let c = b.cumulative_count.saturating_sub(prev);
                                    prev = b.cumulative_count;
                                    c
                                })
                                .collect();
                            counts.push(h.count.saturating_sub(prev));
                            Some(metrics_pb::HistogramDataPoint {
                                attributes: attrs(&l),
                                start_time_unix_nano: start,
                                time_unix_nano: ts,
                                count: h.count,
                                sum: Some(h.sum),
                                bucket_counts: counts,
                                explicit_bounds: h.buckets.iter().map(|b| b.upper_bound).collect(),
                                ..Default::default()
                            })
                        }
                        Value::Number(_) => None,
                    })
                    .collect(),
                aggregation_temporality: cumulative,
            }),
        };
        metrics_pb::Metric {
            name: m.name.into_owned(),
            description: m.description.into_owned(),
            unit: m.unit.to_string(),
            data: Some(data),
            ..Default::default()
        }
    }

    /// The request for the batch's metrics and its number of samples.
    pub fn metrics_request(&self, batch: &[Signal]) -> (ExportMetricsServiceRequest, u32) {
        let mut metrics: Vec<metrics_pb::Metric> = Vec::new();
        for s in batch {
            let Signal::Metrics(b) = s else { continue };
            let ts = nanos(b.timestamp);
            let mapped = match self.names {
                MetricNames::Otel => semconv::to_semconv(&b.families),
                MetricNames::Prometheus => semconv::identity(&b.families),
            };
            for m in mapped {
                metrics.push(self.metric(m, ts));
            }
        }
        // A family without points (nothing observed yet) would be a metric with no data
        // points, which receivers count as an error.
        metrics.retain(|m| data_points(m) > 0);
        // Items are samples, the one unit of every exporter (docs/exporters.md): as
        // Prometheus counts them, so a histogram data point is its buckets (`+Inf`
        // included) plus `_sum` and `_count`. A receiver's `rejected_data_points` is
        // converted to that unit in proportion.
        let items = metrics.iter().map(samples).sum::<usize>() as u32;
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![metrics_pb::ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![metrics_pb::ScopeMetrics {
                    scope: Some(self.scope.clone()),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        (req, items)
    }

    pub fn logs_request(&self, batch: &[Signal]) -> (ExportLogsServiceRequest, u32) {
        let now = nanos(SystemTime::now());
        let mut records = Vec::new();
        for s in batch {
            let Signal::Logs(l) = s else { continue };
            records.extend(l.iter().map(|r: &LogRecord| {
                let mut a: Vec<KeyValue> = r
                    .labels
                    .iter()
                    .map(|(k, v)| kv(log_label_key(k), v))
                    .collect();
                a.extend(attrs(&r.attributes));
                logs_pb::LogRecord {
                    time_unix_nano: nanos(r.timestamp),
                    observed_time_unix_nano: now,
                    severity_number: r.severity.otel_number(),
                    severity_text: r.severity.as_str().to_uppercase(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(r.body.clone())),
                    }),
                    attributes: a,
                    event_name: r.kind.to_string(),
                    ..Default::default()
                }
            }));
        }
        let n = records.len() as u32;
        let req = ExportLogsServiceRequest {
            resource_logs: vec![logs_pb::ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![logs_pb::ScopeLogs {
                    scope: Some(self.scope.clone()),
                    log_records: records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        (req, n)
    }

    fn finish(&self, raw: Vec<u8>) -> Result<Vec<u8>, ExportError> {
        if !self.gzip {
            return Ok(raw);
        }
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(raw.len() / 4),
            flate2::Compression::fast(),
        );
        gz.write_all(&raw)
            .and_then(|_| gz.finish())
            .map_err(|e| ExportError::Encode {
                backend: NAME.into(),
                reason: format!("gzip: {e}"),
            })
    }
}

impl Encoder for OtlpEncoder {
    fn encode(&mut self, batch: &[Signal]) -> Result<Vec<Payload>, ExportError> {
        let mut out = Vec::new();
        if batch.iter().any(|s| matches!(s, Signal::Metrics(_))) {
            let (req, items) = self.metrics_request(batch);
            let points = req
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
                .map(data_points)
                .sum::<usize>() as u32;
            let mut meta = vec![META_METRICS];
            meta.extend_from_slice(&points.to_le_bytes());
            out.push(Payload {
                items,
                meta,
                body: self.finish(req.encode_to_vec())?,
            });
        }
        if batch.iter().any(|s| matches!(s, Signal::Logs(_))) {
            let (req, items) = self.logs_request(batch);
            out.push(Payload {
                items,
                meta: vec![META_LOGS],
                body: self.finish(req.encode_to_vec())?,
            });
        }
        Ok(out)
    }
}

/// A tonic codec that sends already-encoded protobuf bytes and decodes the response `R`.
struct RawCodec<R>(PhantomData<R>);

struct RawEncoder;
struct ProstDecoder<R>(PhantomData<R>);

impl tonic::codec::Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl<R: Message + Default + 'static> tonic::codec::Decoder for ProstDecoder<R> {
    type Item = R;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<R>, tonic::Status> {
        let mut b = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut b);
        R::decode(b.as_slice())
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("decoding response: {e}")))
    }
}

impl<R: Message + Default + Send + 'static> tonic::codec::Codec for RawCodec<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = RawEncoder;
    type Decoder = ProstDecoder<R>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ProstDecoder<R> {
        ProstDecoder(PhantomData)
    }
}

pub enum OtlpTransport {
    Http {
        client: reqwest::Client,
        metrics_url: String,
        logs_url: String,
        headers: Arc<HeaderMap>,
    },
    Grpc {
        endpoint: Box<tonic::transport::Endpoint>,
        /// Created on first use (inside the runtime); reconnects on its own.
        channel: tokio::sync::OnceCell<tonic::transport::Channel>,
        metadata: tonic::metadata::MetadataMap,
        gzip: bool,
    },
}

/// Maps a gRPC status to retryable or final, per the OTLP specification: RESOURCE_EXHAUSTED
/// is retried only when the server sends RetryInfo.
pub fn classify_status(s: &tonic::Status) -> ExportError {
    use tonic::Code;
    use tonic_types::StatusExt;
    let retry_info = s.get_details_retry_info().and_then(|r| r.retry_delay);
    let reason = format!("gRPC {:?}: {}", s.code(), s.message());
    let retryable = match s.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => retry_info.is_some(),
        _ => false,
    };
    if retryable {
        ExportError::Retryable {
            backend: NAME.into(),
            reason,
            retry_after: retry_info,
        }
    } else {
        ExportError::Rejected {
            backend: NAME.into(),
            reason,
        }
    }
}

impl OtlpTransport {
    async fn grpc<R: Message + Default + Send + 'static>(
        channel: &tonic::transport::Channel,
        metadata: &tonic::metadata::MetadataMap,
        gzip: bool,
        path: &'static str,
        body: Bytes,
    ) -> Result<R, ExportError> {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        if gzip {
            grpc = grpc
                .send_compressed(tonic::codec::CompressionEncoding::Gzip)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        grpc.ready().await.map_err(|e| ExportError::Retryable {
            backend: NAME.into(),
            reason: format!("gRPC channel: {e}"),
            retry_after: None,
        })?;
        let mut req = tonic::Request::new(body);
        *req.metadata_mut() = metadata.clone();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        grpc.unary(req, path, RawCodec::<R>(PhantomData))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| classify_status(&s))
    }
}

#[async_trait::async_trait]
impl Transport for OtlpTransport {
    async fn send(&self, p: &Payload) -> Result<u64, ExportError> {
        let is_logs = p.meta.first() == Some(&META_LOGS);
        match self {
            OtlpTransport::Http {
                client,
                metrics_url,
                logs_url,
                headers,
            } => {
                let url = if is_logs { logs_url } else { metrics_url };
                let resp = client
                    .post(url)
                    .headers((**headers).clone())
                    .body(p.body.clone())
                    .send()
                    .await
                    .map_err(|e| http::transport_error(NAME, &e))?;
                let status = resp.status();
                let h = resp.headers().clone();
                let body = resp.bytes().await.unwrap_or_default();
                http::classify(NAME, status, &h, &body, RetryPolicy::Otlp)?;
                Ok(partial(is_logs, p.items, &p.meta, &body))
            }
            OtlpTransport::Grpc {
                endpoint,
                channel,
                metadata,
                gzip,
            } => {
                let channel = channel
                    .get_or_init(|| async { endpoint.connect_lazy() })
                    .await;
                let body = Bytes::from(p.body.clone());
                if is_logs {
                    let r: ExportLogsServiceResponse = Self::grpc(
                        channel,
                        metadata,
                        *gzip,
                        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                        body,
                    )
                    .await?;
                    Ok(r.partial_success.map_or(0, |ps| {
                        partial_success("logs", p.items, ps.rejected_log_records, &ps.error_message)
                    }))
                } else {
                    let r: ExportMetricsServiceResponse = Self::grpc(
                        channel,
                        metadata,
                        *gzip,
                        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                        body,
                    )
                    .await?;
                    Ok(r.partial_success.map_or(0, |ps| {
                        rejected_samples(
                            partial_success(
                                "metrics",
                                p.items,
                                ps.rejected_data_points,
                                &ps.error_message,
                            ),
                            p.items,
                            payload_points(&p.meta),
                        )
                    }))
                }
            }
        }
    }

    fn rejected(&self, p: &Payload, reason: &str) {
        tracing::warn!(items = p.items, %reason, "OTLP receiver rejected a batch; not retrying");
    }
}

/// Handles a receiver's `partial_success` (OTLP: the request succeeded, so it is never
/// retried): logs it once at warn and returns the number of rejected items, which the
/// delivery engine counts in `nodescope_exporter_dropped_total{reason="rejected"}`. A
/// message with nothing rejected is a warning from the receiver and is logged too.
fn partial_success(signal: &'static str, items: u32, rejected: i64, error_message: &str) -> u64 {
    let rejected = u64::try_from(rejected).unwrap_or(0);
    if rejected > 0 {
        tracing::warn!(
            signal,
            rejected,
            items,
            error_message,
            "OTLP receiver rejected part of a batch (partial success); not retrying"
        );
    } else if !error_message.is_empty() {
        tracing::warn!(
            signal,
            items,
            error_message,
            "OTLP receiver accepted the batch with a warning"
        );
    }
    rejected
}

/// Data points in a metrics payload (written after the kind byte).
fn payload_points(meta: &[u8]) -> u32 {
    meta.get(1..5)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes)
}

/// Rejected items reported by an HTTP response body's partial success (0 if none).
fn partial(is_logs: bool, items: u32, meta: &[u8], body: &[u8]) -> u64 {
    if body.is_empty() {
        return 0;
    }
    let decoded = if is_logs {
        ExportLogsServiceResponse::decode(body).map(|r| {
            r.partial_success.map_or(0, |ps| {
                partial_success("logs", items, ps.rejected_log_records, &ps.error_message)
            })
        })
    } else {
        ExportMetricsServiceResponse::decode(body).map(|r| {
            r.partial_success.map_or(0, |ps| {
                let points = payload_points(meta);
                rejected_samples(
                    partial_success("metrics", items, ps.rejected_data_points, &ps.error_message),
                    items,
                    points,
                )
            })
        })
    };
    decoded.unwrap_or_else(|e| {
        // The request succeeded (2xx); only the optional partial-success report is lost.
        tracing::debug!(error = %e, bytes = body.len(), "cannot decode the OTLP response body");
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodescope_model::{Histogram, MetricBatch, MetricFamily, MetricType};

    #[test]
    fn histogram_buckets_become_per_bucket_counts() {
        let mut f = MetricFamily::new("lat_seconds", "", MetricType::Histogram);
        f.push_histogram(
            [("a", "b")],
            Histogram::from_bucket_counts(&[1.0, 2.0], &[3, 0, 4], 9.0),
        );
        let e = OtlpEncoder::new(&Resource::default(), MetricNames::Otel, false);
        let sig = [Signal::Metrics(Arc::new(MetricBatch {
            source: "t".into(),
            timestamp: UNIX_EPOCH + Duration::from_secs(5),
            families: vec![f],
        }))];
        let (req, items) = e.metrics_request(&sig);
        // One data point: 3 buckets (+Inf included), _sum and _count samples.
        assert_eq!(items, 5);
        let m = &req.resource_metrics[0].scope_metrics[0].metrics[0];
        assert_eq!(m.unit, "s");
        let Some(metrics_pb::metric::Data::Histogram(h)) = &m.data else {
            panic!("not a histogram")
        };
        assert_eq!(h.data_points[0].bucket_counts, vec![3, 0, 4]);
        assert_eq!(h.data_points[0].explicit_bounds, vec![1.0, 2.0]);
        assert_eq!(h.data_points[0].time_unix_nano, 5_000_000_000);
        assert_eq!(h.data_points[0].start_time_unix_nano, 5_000_000_000);
    }

    #[test]
    fn grpc_status_classification() {
        assert!(matches!(
            classify_status(&tonic::Status::unavailable("down")),
            ExportError::Retryable { .. }
        ));
        assert!(matches!(
            classify_status(&tonic::Status::invalid_argument("bad")),
            ExportError::Rejected { .. }
        ));
        assert!(matches!(
            classify_status(&tonic::Status::resource_exhausted("full")),
            ExportError::Rejected { .. }
        ));
        use tonic_types::{ErrorDetails, StatusExt};
        let s = tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(4))),
        );
        assert!(matches!(
            classify_status(&s),
            ExportError::Retryable { retry_after: Some(d), .. } if d == Duration::from_secs(4)
        ));
    }

    #[test]
    fn http_partial_success_body() {
        use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess;
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess;
        let m = |rejected, msg: &str| {
            ExportMetricsServiceResponse {
                partial_success: Some(ExportMetricsPartialSuccess {
                    rejected_data_points: rejected,
                    error_message: msg.into(),
                }),
            }
            .encode_to_vec()
        };
        // 10 samples in 5 data points: 3 rejected points are 6 samples.
        let meta = |points: u32| {
            let mut v = vec![META_METRICS];
            v.extend_from_slice(&points.to_le_bytes());
            v
        };
        assert_eq!(partial(false, 10, &meta(5), &m(3, "bad unit")), 6);
        assert_eq!(partial(false, 10, &meta(10), &m(3, "bad unit")), 3);
        assert_eq!(partial(false, 10, &meta(5), &m(9, "")), 10, "capped");
        // A message with nothing rejected is a warning, not a rejection.
        assert_eq!(
            partial(false, 10, &meta(5), &m(0, "deprecated attribute")),
            0
        );
        assert_eq!(partial(false, 10, &meta(5), &m(-5, "")), 0);
        let l = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 2,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(partial(true, 4, &[META_LOGS], &l), 2);
        // Empty (full success) and undecodable bodies reject nothing.
        assert_eq!(partial(true, 4, &[META_LOGS], &[]), 0);
        assert_eq!(
            partial(true, 4, &[META_LOGS], b"{\"partialSuccess\":{}}"),
            0
        );
    }

    #[test]
    fn families_without_points_are_not_sent() {
        let e = OtlpEncoder::new(&Resource::default(), MetricNames::Prometheus, false);
        let sig = [Signal::Metrics(Arc::new(MetricBatch {
            source: "t".into(),
            timestamp: UNIX_EPOCH,
            families: vec![
                MetricFamily::new("nodescope_tcp_retransmits_total", "", MetricType::Counter),
                MetricFamily::single("node_load1", "", MetricType::Gauge, 1.0),
            ],
        }))];
        let (req, items) = e.metrics_request(&sig);
        let names: Vec<_> = req.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, vec!["node_load1"]);
        assert_eq!(items, 1);
    }

    #[test]
    fn metric_items_are_samples() {
        let e = OtlpEncoder::new(&Resource::default(), MetricNames::Otel, false);
        let sig = [Signal::Metrics(Arc::new(MetricBatch {
            source: "t".into(),
            timestamp: UNIX_EPOCH + Duration::from_secs(5),
            families: vec![
                MetricFamily::single("node_memory_MemTotal_bytes", "", MetricType::Gauge, 8.0),
                MetricFamily::single("node_memory_MemFree_bytes", "", MetricType::Gauge, 3.0),
            ],
        }))];
        // limit, usage{free}, derived usage{used}
        assert_eq!(e.metrics_request(&sig).1, 3);
        let e = OtlpEncoder::new(&Resource::default(), MetricNames::Prometheus, false);
        assert_eq!(e.metrics_request(&sig).1, 2);
    }

    #[test]
    fn config_defaults_and_validation() {
        let c: OtlpConfig = toml::from_str("protocol = \"http_protobuf\"").unwrap();
        assert_eq!(c.http_url("metrics"), "http://127.0.0.1:4318/v1/metrics");
        let c: OtlpConfig = toml::from_str(
            "protocol = \"http_protobuf\"\nendpoint = \"http://x:4318/v1/metrics\"\nmetrics = true\nlogs = true\n[tls]\ncert_file = \"/nonexistent\"\n",
        )
        .unwrap();
        let mut i = Issues::default();
        c.validate("exporters.otlp", &mut i);
        let keys: Vec<_> = i.list.iter().map(|x| x.key.as_str()).collect();
        assert!(keys.contains(&"exporters.otlp.endpoint"), "{keys:?}");
        assert!(keys.contains(&"exporters.otlp.tls.cert_file"), "{keys:?}");
        assert!(toml::from_str::<OtlpConfig>("protocol = \"udp\"").is_err());
    }

    #[test]
    fn pod_log_labels_follow_the_semantic_conventions() {
        let e = OtlpEncoder::new(&Resource::default(), MetricNames::Otel, false);
        let r = LogRecord {
            timestamp: SystemTime::now(),
            severity: nodescope_model::Severity::Info,
            kind: "container_log".into(),
            body: "hello".into(),
            labels: vec![
                ("namespace".into(), "shop".into()),
                ("pod".into(), "cart-1".into()),
                ("container".into(), "cart".into()),
                ("node_name".into(), "n1".into()),
                ("job".into(), "shop/cart".into()),
            ],
            attributes: vec![
                ("log.file.path".into(), "/var/log/pods/x/cart/0.log".into()),
                ("log.iostream".into(), "stderr".into()),
                ("k8s.pod.uid".into(), "u1".into()),
            ],
        };
        let (req, n) = e.logs_request(&[Signal::Logs(vec![r].into())]);
        assert_eq!(n, 1);
        let keys: Vec<String> = req.resource_logs[0].scope_logs[0].log_records[0]
            .attributes
            .iter()
            .map(|kv| kv.key.clone())
            .collect();
        for k in [
            "k8s.namespace.name",
            "k8s.pod.name",
            "k8s.container.name",
            "k8s.node.name",
            "job",
            "log.file.path",
            "log.iostream",
            "k8s.pod.uid",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing in {keys:?}");
        }
    }
}

nodescope_delivery::exporter_component!(OtlpConfig, "exporters.otlp");
