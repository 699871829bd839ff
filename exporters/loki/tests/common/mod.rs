//! A Loki push receiver for tests: decodes snappy + protobuf with Loki's official push
//! schema (`tests/proto/pkg/push/push.proto`, vendored verbatim from grafana/loki with its
//! `gogoproto/gogo.proto` import, see `tests/proto/README.md`; compiled at run time by protox
//! and decoded dynamically by prost-reflect, independently of the exporter's prost types),
//! rejects any field the schema does not define, records every request, and can be told to
//! fail, delay, or go down (stop listening) and come back on the same port.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, Value};

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub ts_nanos: i128,
    pub line: String,
    pub metadata: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
pub struct Stream {
    pub labels: String,
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub at: Instant,
    pub headers: HeaderMap,
    pub streams: Vec<Stream>,
    pub status: u16,
}

#[derive(Clone, Debug)]
pub enum Mode {
    Accept,
    /// Answer with this status (and optional Retry-After), `remaining` times (None = forever),
    /// then accept.
    Fail {
        status: u16,
        retry_after: Option<String>,
        remaining: Option<u32>,
    },
    /// Accept, but only after sleeping this long.
    Delay(Duration),
}

#[derive(Default)]
struct State0 {
    mode: Option<Mode>,
    requests: Vec<Request>,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<State0>>);

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The include root under which the upstream `import` lines resolve unchanged;
        // protox supplies google/protobuf/{timestamp,descriptor}.proto itself.
        // Relative to the workspace, so the agent's end-to-end tests can include this
        // receiver too (`#[path]`).
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../exporters/loki/tests/proto"
        );
        protox::Compiler::new([dir])
            .expect("protox compiler")
            .include_imports(true)
            .open_file("pkg/push/push.proto")
            .expect("compiling the vendored pkg/push/push.proto")
            .descriptor_pool()
    })
}

fn field<'a>(m: &'a DynamicMessage, name: &str) -> std::borrow::Cow<'a, Value> {
    m.get_field_by_name(name)
        .unwrap_or_else(|| panic!("no field {name}"))
}

/// A field number the upstream schema does not define means we put something on the wire
/// that Loki would silently ignore: refuse it.
fn no_unknown_fields(m: &DynamicMessage) -> Result<(), String> {
    match m.unknown_fields().next() {
        None => Ok(()),
        Some(u) => Err(format!(
            "{}: field number {} ({:?}) is not in the upstream schema",
            m.descriptor().full_name(),
            u.number(),
            u.wire_type()
        )),
    }
}

/// Decodes a snappy-compressed `logproto.PushRequest` with the schema.
pub fn decode_push(body: &[u8]) -> Result<Vec<Stream>, String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("snappy: {e}"))?;
    let desc = pool()
        .get_message_by_name("logproto.PushRequest")
        .ok_or("no PushRequest in schema")?;
    let msg = DynamicMessage::decode(desc, raw.as_slice()).map_err(|e| format!("protobuf: {e}"))?;
    no_unknown_fields(&msg)?;
    let mut out = vec![];
    for s in field(&msg, "streams").as_list().unwrap_or(&[]) {
        let s = s.as_message().ok_or("stream is not a message")?;
        no_unknown_fields(s)?;
        let labels = field(s, "labels").as_str().unwrap_or_default().to_string();
        let mut entries = vec![];
        for e in field(s, "entries").as_list().unwrap_or(&[]) {
            let e = e.as_message().ok_or("entry is not a message")?;
            no_unknown_fields(e)?;
            // Upstream: "This field shouldn't be used by clients to push data to Loki."
            if e.has_field_by_name("parsed") {
                return Err("EntryAdapter.parsed is set; clients must not send it".into());
            }
            let ts = field(e, "timestamp");
            let ts = ts.as_message().ok_or("timestamp")?;
            no_unknown_fields(ts)?;
            let secs = field(ts, "seconds").as_i64().unwrap_or(0);
            let nanos = field(ts, "nanos").as_i32().unwrap_or(0);
            let mut metadata = vec![];
            for p in field(e, "structuredMetadata").as_list().unwrap_or(&[]) {
                let p = p.as_message().ok_or("label pair")?;
                no_unknown_fields(p)?;
                metadata.push((
                    field(p, "name").as_str().unwrap_or_default().to_string(),
                    field(p, "value").as_str().unwrap_or_default().to_string(),
                ));
            }
            entries.push(Entry {
                ts_nanos: i128::from(secs) * 1_000_000_000 + i128::from(nanos),
                line: field(e, "line").as_str().unwrap_or_default().to_string(),
                metadata,
            });
        }
        out.push(Stream { labels, entries });
    }
    Ok(out)
}

async fn push(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let at = Instant::now();
    let mode = s.0.lock().mode.clone().unwrap_or(Mode::Accept);
    let streams = match decode_push(&body) {
        Ok(st) => st,
        Err(e) => return (StatusCode::UNPROCESSABLE_ENTITY, e).into_response(),
    };
    let (status, retry_after) = match mode {
        Mode::Accept => (200, None),
        Mode::Delay(d) => {
            tokio::time::sleep(d).await;
            (200, None)
        }
        Mode::Fail {
            status,
            retry_after,
            remaining,
        } => {
            let mut st = s.0.lock();
            match remaining {
                Some(0) => (200, None),
                Some(n) => {
                    st.mode = Some(Mode::Fail {
                        status,
                        retry_after: retry_after.clone(),
                        remaining: Some(n - 1),
                    });
                    (status, retry_after)
                }
                None => (status, retry_after),
            }
        }
    };
    s.0.lock().requests.push(Request {
        at,
        headers,
        streams,
        status,
    });
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (code, "sink").into_response();
    if let Some(ra) = retry_after {
        r.headers_mut()
            .insert("retry-after", ra.parse().expect("retry-after value"));
    }
    r
}

pub struct Sink {
    pub port: u16,
    shared: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sink {
    pub async fn start() -> Sink {
        let mut s = Sink {
            port: 0,
            shared: Shared(Arc::new(Mutex::new(State0::default()))),
            stop: None,
            task: None,
        };
        s.listen(0).await;
        s
    }

    async fn listen(&mut self, port: u16) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("binding the sink");
        self.port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/loki/api/v1/push", axum::routing::post(push))
            .with_state(self.shared.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        }));
    }

    /// Stops listening (connections are refused) until [`Sink::up`].
    pub async fn down(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut t) = self.task.take() {
            // Graceful shutdown closes idle keep-alive connections too.
            if tokio::time::timeout(Duration::from_secs(3), &mut t)
                .await
                .is_err()
            {
                t.abort();
                let _ = t.await;
            }
        }
    }

    pub async fn up(&mut self) {
        let port = self.port;
        for _ in 0..50 {
            if tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.listen(port).await;
    }

    pub fn set_mode(&self, m: Mode) {
        self.shared.0.lock().mode = Some(m);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.0.lock().requests.clone()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every entry of every accepted request, in arrival order, with its stream.
    pub fn accepted_entries(&self) -> Vec<(String, Entry)> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 200)
            .flat_map(|r| {
                r.streams
                    .into_iter()
                    .flat_map(|s| s.entries.into_iter().map(move |e| (s.labels.clone(), e)))
            })
            .collect()
    }
}
