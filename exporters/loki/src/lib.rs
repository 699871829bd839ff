//! Loki push exporter: `POST /loki/api/v1/push` with a snappy-compressed protobuf
//! `logproto.PushRequest`.
//!
//! Stream labels are low-cardinality: `job`, `node`, `kind` (the event class) and the
//! record's own `labels` (workload class and the like). Identifiers (pid, comm, peer) and
//! the severity travel as structured metadata (EntryAdapter field 3), so they never
//! multiply streams. 429 and 5xx are retried; 400 is never retried: the batch is counted as
//! `dropped_total{reason="rejected"}` and each affected stream is logged once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use nodescope_delivery::http::{self, RetryPolicy};
use nodescope_delivery::{
    config, AuthConfig, BatchConfig, Delivery, DeliveryConfig, DeliveryError, Encoder,
    ExporterContext, Payload, PushExporter, RetryConfig, TlsConfig, Transport, WalConfig,
};
use nodescope_model::config::Issues;
use nodescope_model::{ExportError, Exporter, LogRecord, Signal, SignalKind};
use parking_lot::Mutex;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use serde::Deserialize;

/// Wire types of Loki's `pkg/push/push.proto` (package `logproto`), including
/// `structuredMetadata` (EntryAdapter field 3), which the `loki-api` 0.1.3 crate lacks.
/// Hand-written prost derives with the upstream field numbers: four messages do not
/// justify a protoc build step.
pub mod logproto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub streams: Vec<StreamAdapter>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StreamAdapter {
        #[prost(string, tag = "1")]
        pub labels: String,
        #[prost(message, repeated, tag = "2")]
        pub entries: Vec<EntryAdapter>,
        #[prost(uint64, tag = "3")]
        pub hash: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EntryAdapter {
        #[prost(message, optional, tag = "1")]
        pub timestamp: Option<prost_types::Timestamp>,
        #[prost(string, tag = "2")]
        pub line: String,
        #[prost(message, repeated, tag = "3")]
        pub structured_metadata: Vec<LabelPairAdapter>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPairAdapter {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
}

pub const NAME: &str = "loki";
/// Streams whose rejection was already logged, remembered up to this many.
pub const MAX_LOGGED_STREAMS: usize = 1024;

/// `[exporters.loki]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LokiConfig {
    pub enabled: bool,
    /// Base URL of Loki (`/loki/api/v1/push` is appended when the URL has no path).
    pub endpoint: String,
    /// Sent as `X-Scope-OrgID`.
    pub tenant_id: Option<String>,
    /// The `job` stream label.
    pub job: String,
    /// Extra static stream labels (keep them low-cardinality).
    pub labels: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub wal: WalConfig,
}

impl Default for LokiConfig {
    fn default() -> Self {
        LokiConfig {
            enabled: false,
            endpoint: "http://127.0.0.1:3100".into(),
            tenant_id: None,
            job: "nodescope".into(),
            labels: BTreeMap::new(),
            headers: BTreeMap::new(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            batch: BatchConfig {
                max_items: 10_000,
                ..BatchConfig::default()
            },
            retry: RetryConfig::default(),
            wal: WalConfig::default(),
        }
    }
}

/// Loki label names must match `[a-zA-Z_][a-zA-Z0-9_]*`; anything else becomes `_`.
pub fn sanitize_label_name(s: &str) -> String {
    // Fast path: already valid (the common case, checked without allocating twice).
    if !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return s.to_string();
    }
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

impl LokiConfig {
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        config::validate_endpoint(&self.endpoint, &format!("{prefix}.endpoint"), issues);
        issues.check(
            !self.job.is_empty(),
            format!("{prefix}.job"),
            "must not be empty",
        );
        // Names are sanitised (docs/exporters.md); only what no sanitising can save is
        // refused: an empty name and Loki's reserved `__` prefix.
        for k in self.labels.keys() {
            issues.check(
                !k.is_empty() && !sanitize_label_name(k).starts_with("__"),
                format!("{prefix}.labels.{k}"),
                "is empty or starts with \"__\" (reserved by Loki)",
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

    /// The push URL derived from `endpoint`.
    pub fn push_url(&self) -> String {
        match reqwest::Url::parse(&self.endpoint) {
            Ok(u) if u.path() == "/" || u.path().is_empty() => {
                format!("{}/loki/api/v1/push", self.endpoint.trim_end_matches('/'))
            }
            _ => self.endpoint.clone(),
        }
    }

    pub fn build(&self, ctx: &ExporterContext) -> Result<Box<dyn Exporter>, LokiError> {
        let client = http::build_client(&self.tls, self.retry.request_timeout)?;
        let mut headers = http::build_headers(&self.headers, &self.auth)?;
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        if let Some(t) = &self.tenant_id {
            let v = HeaderValue::from_str(t).map_err(|e| LokiError::Tenant(e.to_string()))?;
            headers.insert("X-Scope-OrgID", v);
        }
        let mut static_labels: Vec<(String, String)> = vec![("job".into(), self.job.clone())];
        if let Some(h) = ctx.resource.get("host.name") {
            static_labels.push(("node".into(), h.to_string()));
        }
        for (k, v) in &self.labels {
            static_labels.push((sanitize_label_name(k), v.clone()));
        }
        let delivery = Delivery::new(NAME, &self.delivery(), ctx)?;
        Ok(Box::new(PushExporter::new(
            NAME,
            &[SignalKind::Logs],
            delivery,
            LokiEncoder::new(static_labels),
            LokiTransport {
                client,
                url: self.push_url(),
                headers: Arc::new(headers),
                logged: Mutex::new(HashSet::new()),
            },
        )))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LokiError {
    #[error("exporters.loki: {0}")]
    Client(#[from] http::ClientError),
    #[error("exporters.loki.tenant_id: {0}")]
    Tenant(String),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Groups records into streams and encodes the push request.
pub struct LokiEncoder {
    static_labels: Vec<(String, String)>,
    snappy: snap::raw::Encoder,
}

impl LokiEncoder {
    pub fn new(static_labels: Vec<(String, String)>) -> Self {
        LokiEncoder {
            static_labels,
            snappy: snap::raw::Encoder::new(),
        }
    }

    /// The stream selector of a record, e.g. `{job="nodescope", kind="tcp_reset", node="a"}`.
    pub fn stream_labels(&self, r: &LogRecord) -> String {
        let mut l: Vec<(String, &str)> =
            Vec::with_capacity(self.static_labels.len() + r.labels.len() + 1);
        for (k, v) in &self.static_labels {
            l.push((k.clone(), v));
        }
        l.push(("kind".into(), &r.kind));
        for (k, v) in &r.labels {
            let k = sanitize_label_name(k);
            if let Some(slot) = l.iter_mut().find(|(n, _)| *n == k) {
                slot.1 = v;
            } else {
                l.push((k, v));
            }
        }
        l.sort_by(|a, b| a.0.cmp(&b.0));
        let mut s = String::with_capacity(64);
        s.push('{');
        for (i, (k, v)) in l.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            s.push_str(k);
            s.push_str("=\"");
            escape_into(&mut s, v);
            s.push('"');
        }
        s.push('}');
        s
    }

    /// The batch's records grouped into Loki streams, each stream's entries in time order,
    /// with the sanitized names of the attributes they carry and the record count.
    fn group<'a>(&self, batch: &'a [Signal]) -> Grouped<'a> {
        let mut streams: Vec<Stream<'a>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut items = 0u32;
        // Consecutive records of one source usually share their labels: reuse the stream.
        let mut prev: Option<(&LogRecord, usize)> = None;
        // Sanitized attribute names, once per distinct name (a handful: a linear scan).
        let mut names: Vec<(&'a str, String)> = Vec::new();
        for s in batch {
            let Signal::Logs(records) = s else { continue };
            for r in records.iter() {
                items += 1;
                let i = match prev {
                    Some((p, i)) if p.kind == r.kind && p.labels == r.labels => i,
                    _ => {
                        let labels = self.stream_labels(r);
                        match index.get(&labels) {
                            Some(&i) => i,
                            None => {
                                index.insert(labels.clone(), streams.len());
                                streams.push(Stream {
                                    labels,
                                    entries: Vec::new(),
                                });
                                streams.len() - 1
                            }
                        }
                    }
                };
                prev = Some((r, i));
                for (k, _) in &r.attributes {
                    if pb::name(&names, k).is_none() {
                        names.push((k.as_ref(), sanitize_label_name(k)));
                    }
                }
                let d = r.timestamp.duration_since(UNIX_EPOCH).unwrap_or_default();
                streams[i]
                    .entries
                    .push((d.as_secs() as i64, d.subsec_nanos() as i32, r));
            }
        }
        for s in &mut streams {
            // Stable: records with equal timestamps keep their arrival order.
            s.entries.sort_by_key(|(sec, nanos, _)| (*sec, *nanos));
        }
        Grouped {
            streams,
            names,
            items,
        }
    }

    /// The request as prost messages (what [`LokiEncoder::encode_request`] writes).
    pub fn request(&self, batch: &[Signal]) -> (logproto::PushRequest, u32) {
        let g = self.group(batch);
        let pair = |name: &str, value: &str| logproto::LabelPairAdapter {
            name: name.into(),
            value: value.into(),
        };
        let streams = g
            .streams
            .into_iter()
            .map(|s| logproto::StreamAdapter {
                labels: s.labels,
                entries: s
                    .entries
                    .into_iter()
                    .map(|(seconds, nanos, r)| logproto::EntryAdapter {
                        timestamp: Some(prost_types::Timestamp { seconds, nanos }),
                        line: r.body.clone(),
                        structured_metadata: std::iter::once(pair("level", r.severity.as_str()))
                            .chain(
                                r.attributes
                                    .iter()
                                    .map(|(k, v)| pair(pb::name(&g.names, k).unwrap_or(""), v)),
                            )
                            .collect(),
                    })
                    .collect(),
                hash: 0,
            })
            .collect();
        (logproto::PushRequest { streams }, g.items)
    }

    /// The same `PushRequest` as [`LokiEncoder::request`] encoded straight from the
    /// records (byte for byte: `tests::direct_encoding_is_prost_encoding`), without
    /// copying every line and attribute into owned messages first: those copies were a
    /// third of the log shipper's CPU.
    pub fn encode_request(&self, batch: &[Signal]) -> (Vec<u8>, u32) {
        let Grouped {
            streams,
            names: sanitized,
            items,
        } = self.group(batch);
        // Lengths first (protobuf prefixes each message with its length), then the bytes.
        let entry_lens: Vec<Vec<usize>> = streams
            .iter()
            .map(|s| {
                s.entries
                    .iter()
                    .map(|(sec, nanos, r)| pb::entry_len(*sec, *nanos, r, &sanitized))
                    .collect()
            })
            .collect();
        let stream_lens: Vec<usize> = streams
            .iter()
            .zip(&entry_lens)
            .map(|(s, lens)| pb::stream_len(&s.labels, lens))
            .collect();
        let total: usize = stream_lens.iter().map(|&l| pb::field_len(1, l)).sum();
        let mut buf = Vec::with_capacity(total);
        for ((s, lens), &slen) in streams.iter().zip(&entry_lens).zip(&stream_lens) {
            pb::len_key(1, slen, &mut buf);
            pb::string(1, &s.labels, &mut buf);
            for ((sec, nanos, r), &elen) in s.entries.iter().zip(lens) {
                pb::len_key(2, elen, &mut buf);
                pb::entry(*sec, *nanos, r, &sanitized, &mut buf);
            }
        }
        (buf, items)
    }
}

/// One Loki stream of a batch: its label string and its entries (seconds, nanos, record).
struct Stream<'a> {
    labels: String,
    entries: Vec<(i64, i32, &'a LogRecord)>,
}

struct Grouped<'a> {
    streams: Vec<Stream<'a>>,
    /// (attribute name, sanitized label name)
    names: Vec<(&'a str, String)>,
    items: u32,
}

/// Protobuf wire encoding of Loki's `PushRequest` from borrowed records (field numbers
/// and proto3 default omission as in the `logproto` messages above).
mod pb {
    use nodescope_model::LogRecord;
    use prost::encoding::{encode_varint, encoded_len_varint};

    /// The sanitized form of attribute name `k` (names are mostly `&'static str`: the
    /// pointer comparison usually decides).
    pub fn name<'a>(names: &'a [(&str, String)], k: &str) -> Option<&'a str> {
        names
            .iter()
            .find(|(raw, _)| std::ptr::eq(*raw, k) || *raw == k)
            .map(|(_, n)| n.as_str())
    }

    /// Bytes of a length-delimited field `tag` holding `len` bytes.
    pub fn field_len(tag: u32, len: usize) -> usize {
        encoded_len_varint(u64::from(tag << 3 | 2)) + encoded_len_varint(len as u64) + len
    }

    pub fn len_key(tag: u32, len: usize, buf: &mut Vec<u8>) {
        encode_varint(u64::from(tag << 3 | 2), buf);
        encode_varint(len as u64, buf);
    }

    fn string_len(tag: u32, v: &str) -> usize {
        if v.is_empty() {
            0
        } else {
            field_len(tag, v.len())
        }
    }

    pub fn string(tag: u32, v: &str, buf: &mut Vec<u8>) {
        if !v.is_empty() {
            len_key(tag, v.len(), buf);
            buf.extend_from_slice(v.as_bytes());
        }
    }

    fn varint_len(tag: u32, v: u64) -> usize {
        if v == 0 {
            0
        } else {
            encoded_len_varint(u64::from(tag << 3)) + encoded_len_varint(v)
        }
    }

    fn varint(tag: u32, v: u64, buf: &mut Vec<u8>) {
        if v != 0 {
            encode_varint(u64::from(tag << 3), buf);
            encode_varint(v, buf);
        }
    }

    fn timestamp_len(sec: i64, nanos: i32) -> usize {
        varint_len(1, sec as u64) + varint_len(2, i64::from(nanos) as u64)
    }

    fn pair_len(name: &str, value: &str) -> usize {
        string_len(1, name) + string_len(2, value)
    }

    pub fn entry_len(sec: i64, nanos: i32, r: &LogRecord, names: &[(&str, String)]) -> usize {
        let mut n = field_len(1, timestamp_len(sec, nanos)) + string_len(2, &r.body);
        n += field_len(3, pair_len("level", r.severity.as_str()));
        for (k, v) in &r.attributes {
            let name = name(names, k).unwrap_or("");
            n += field_len(3, pair_len(name, v));
        }
        n
    }

    pub fn entry(sec: i64, nanos: i32, r: &LogRecord, names: &[(&str, String)], buf: &mut Vec<u8>) {
        len_key(1, timestamp_len(sec, nanos), buf);
        varint(1, sec as u64, buf);
        varint(2, i64::from(nanos) as u64, buf);
        string(2, &r.body, buf);
        let pair = |name: &str, value: &str, buf: &mut Vec<u8>| {
            len_key(3, pair_len(name, value), buf);
            string(1, name, buf);
            string(2, value, buf);
        };
        pair("level", r.severity.as_str(), buf);
        for (k, v) in &r.attributes {
            let name = name(names, k).unwrap_or("");
            pair(name, v, buf);
        }
    }

    pub fn stream_len(labels: &str, entry_lens: &[usize]) -> usize {
        string_len(1, labels) + entry_lens.iter().map(|&l| field_len(2, l)).sum::<usize>()
    }
}

impl Encoder for LokiEncoder {
    fn encode(&mut self, batch: &[Signal]) -> Result<Vec<Payload>, ExportError> {
        let (raw, items) = self.encode_request(batch);
        if raw.is_empty() {
            return Ok(vec![]);
        }
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

pub struct LokiTransport {
    client: reqwest::Client,
    url: String,
    headers: Arc<HeaderMap>,
    logged: Mutex<HashSet<String>>,
}

/// Decodes a payload body back into the request (used to name rejected streams).
pub fn decode_body(body: &[u8]) -> Option<logproto::PushRequest> {
    use prost::Message;
    let raw = snap::raw::Decoder::new().decompress_vec(body).ok()?;
    logproto::PushRequest::decode(raw.as_slice()).ok()
}

#[async_trait::async_trait]
impl Transport for LokiTransport {
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
        let Some(req) = decode_body(&p.body) else {
            tracing::warn!(%reason, items = p.items, "Loki rejected a batch");
            return;
        };
        let mut logged = self.logged.lock();
        for s in &req.streams {
            if logged.contains(&s.labels) {
                continue;
            }
            if logged.len() < MAX_LOGGED_STREAMS {
                logged.insert(s.labels.clone());
            }
            tracing::warn!(stream = %s.labels, entries = s.entries.len(), %reason,
                "Loki rejected entries of this stream; not retrying (logged once per stream)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodescope_model::Severity;
    use std::time::{Duration, SystemTime};

    fn rec(kind: &'static str, t: u64, body: &str) -> LogRecord {
        LogRecord {
            timestamp: UNIX_EPOCH + Duration::from_secs(t),
            severity: Severity::Warn,
            kind: kind.into(),
            body: body.into(),
            labels: vec![("workload_kind".into(), "systemd_unit".into())],
            attributes: vec![
                ("pid".into(), "42".into()),
                ("peer.addr".into(), "1.2.3.4".into()),
            ],
        }
    }

    #[test]
    fn streams_are_grouped_sorted_and_escaped() {
        let e = LokiEncoder::new(vec![
            ("job".into(), "ns".into()),
            ("node".into(), "a\"b".into()),
        ]);
        let batch = [Signal::Logs(nodescope_model::LogBatch::from(vec![
            rec("tcp_reset", 20, "second"),
            rec("tcp_connect_failed", 5, "x"),
            rec("tcp_reset", 10, "first"),
        ]))];
        let (req, items) = e.request(&batch);
        assert_eq!(items, 3);
        assert_eq!(req.streams.len(), 2);
        assert_eq!(
            req.streams[0].labels,
            r#"{job="ns", kind="tcp_reset", node="a\"b", workload_kind="systemd_unit"}"#
        );
        let lines: Vec<_> = req.streams[0]
            .entries
            .iter()
            .map(|e| e.line.as_str())
            .collect();
        assert_eq!(lines, vec!["first", "second"]);
        let md = &req.streams[0].entries[0].structured_metadata;
        assert_eq!(md[0].name, "level");
        assert_eq!(md[2].name, "peer_addr");
        let _ = SystemTime::now();
    }

    proptest::proptest! {
        #[test]
        fn direct_encoding_is_prost_encoding(
            batches in proptest::collection::vec(
                proptest::collection::vec(
                    (
                        0usize..3,
                        proptest::option::of(0u64..4_000_000_000u64),
                        0u32..1_000_000_000,
                        ".{0,40}",
                        proptest::collection::vec(("[a-z.\\-_/ ]{0,8}", ".{0,6}"), 0..4),
                        proptest::collection::vec(("[a-z_]{1,6}", ".{0,6}"), 0..3),
                        0usize..4,
                    ),
                    0..12,
                ),
                0..3,
            )
        ) {
            use prost::Message;
            let e = LokiEncoder::new(vec![("job".into(), "nodescope".into())]);
            let kinds = ["tcp_reset", "container_log", "kernel"];
            let sev = [Severity::Info, Severity::Warn, Severity::Error, Severity::Debug];
            let batch: Vec<Signal> = batches
                .into_iter()
                .map(|recs| {
                    Signal::Logs(nodescope_model::LogBatch::from(
                        recs.into_iter()
                            .map(|(k, secs, nanos, body, attrs, labels, s)| LogRecord {
                                // None: a time before the epoch.
                                timestamp: match secs {
                                    Some(t) => UNIX_EPOCH + Duration::new(t, nanos),
                                    None => UNIX_EPOCH - Duration::from_secs(5),
                                },
                                severity: sev[s],
                                kind: kinds[k].into(),
                                body,
                                labels: labels.into_iter().map(|(k, v)| (k.into(), v)).collect(),
                                attributes: attrs.into_iter().map(|(k, v)| (k.into(), v)).collect(),
                            })
                            .collect::<Vec<_>>(),
                    ))
                })
                .collect();
            let (req, items) = e.request(&batch);
            let (raw, direct_items) = e.encode_request(&batch);
            proptest::prop_assert_eq!(items, direct_items);
            proptest::prop_assert_eq!(raw, req.encode_to_vec());
        }
    }

    #[test]
    fn rejected_streams_are_remembered_once() {
        let mut e = LokiEncoder::new(vec![("job".into(), "ns".into())]);
        let batch = [Signal::Logs(nodescope_model::LogBatch::from(vec![
            rec("a", 1, "x"),
            rec("b", 2, "y"),
            rec("a", 3, "z"),
        ]))];
        let p = e.encode(&batch).unwrap().remove(0);
        let t = LokiTransport {
            client: reqwest::Client::new(),
            url: String::new(),
            headers: Arc::new(HeaderMap::new()),
            logged: Mutex::new(HashSet::new()),
        };
        t.rejected(&p, "HTTP 400: entry too far behind");
        assert_eq!(t.logged.lock().len(), 2);
        t.rejected(&p, "HTTP 400: entry too far behind");
        assert_eq!(t.logged.lock().len(), 2, "a stream is logged once");
        assert_eq!(decode_body(&p.body).unwrap().streams[0].entries.len(), 2);
    }

    #[test]
    fn push_url_and_validation() {
        let mut c = LokiConfig::default();
        assert_eq!(c.push_url(), "http://127.0.0.1:3100/loki/api/v1/push");
        c.endpoint = "https://logs.example.invalid/custom/push".into();
        assert_eq!(c.push_url(), "https://logs.example.invalid/custom/push");
        let c: LokiConfig = toml::from_str(
            "endpoint = \"nope\"\njob = \"\"\ntenant_id = \"\"\n[labels]\n\"__a\" = \"x\"\n\"a-b\" = \"y\"\n[auth]\nusername = \"u\"\nbearer_token = \"t\"\n",
        )
        .unwrap();
        let mut i = Issues::default();
        c.validate("exporters.loki", &mut i);
        let keys: Vec<_> = i.list.iter().map(|x| x.key.as_str()).collect();
        for k in [
            "exporters.loki.endpoint",
            "exporters.loki.job",
            "exporters.loki.tenant_id",
            "exporters.loki.labels.__a",
            "exporters.loki.auth",
        ] {
            assert!(keys.contains(&k), "{k} not in {keys:?}");
        }
        // As documented, a name Loki would refuse is sanitised, not refused.
        assert!(!keys.contains(&"exporters.loki.labels.a-b"), "{keys:?}");
        let mut ok = LokiConfig::default();
        ok.labels.insert("team-name".into(), "x".into());
        let mut i = Issues::default();
        ok.validate("exporters.loki", &mut i);
        assert!(i.is_empty(), "{:?}", i.list);
    }
}

nodescope_delivery::exporter_component!(LokiConfig, "exporters.loki");
