//! OTLP encode-and-send throughput, per core.
//!
//! `cargo run --release -p nodescope-exporter-otlp --example otlp_bench -- [rounds] [points_per_round]`
//!
//! The exporter runs on a current-thread runtime on the main thread, so everything it does
//! (batching, protobuf encoding, gzip, HTTP/2, gRPC framing) is on one thread whose CPU
//! time (CLOCK_THREAD_CPUTIME_ID) is measured: points / thread CPU second is the per-core
//! rate. Local sinks (a tonic OTLP gRPC server and an axum HTTP server that only count)
//! run on another thread. Configurations alternate round by round; medians are reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nodescope_delivery::ExporterContext;
use nodescope_exporter_otlp::{Compression, OtlpConfig, Protocol};
use nodescope_model::{ExporterQueue, MetricBatch, MetricFamily, MetricType, Resource, Signal};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};

static RECEIVED: AtomicU64 = AtomicU64::new(0);

struct Sink;

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let n: usize = req
            .get_ref()
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(|m| match &m.data {
                Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(s)) => {
                    s.data_points.len()
                }
                Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Gauge(g)) => {
                    g.data_points.len()
                }
                _ => 0,
            })
            .sum();
        RECEIVED.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A host-like batch: 16 CPUs x 8 modes, 8 NICs x 4 counters, 8 disks x 6 counters,
/// load and memory gauges, plus nodescope_* series: 1000 points.
fn batch(ts: SystemTime) -> MetricBatch {
    let mut fams = vec![];
    let mut cpu = MetricFamily::new("node_cpu_seconds_total", "cpu", MetricType::Counter);
    for c in 0..16 {
        for m in [
            "idle", "user", "system", "iowait", "irq", "softirq", "steal", "nice",
        ] {
            cpu.push(
                [("cpu", c.to_string()), ("mode", m.to_string())],
                12345.6 + c as f64,
            );
        }
    }
    fams.push(cpu);
    for n in [
        "node_network_receive_bytes_total",
        "node_network_transmit_bytes_total",
        "node_network_receive_packets_total",
        "node_network_transmit_packets_total",
    ] {
        let mut f = MetricFamily::new(n, "net", MetricType::Counter);
        for d in 0..8 {
            f.push([("device", format!("eth{d}"))], 1e9 + d as f64);
        }
        fams.push(f);
    }
    for n in [
        "node_disk_read_bytes_total",
        "node_disk_written_bytes_total",
        "node_disk_reads_completed_total",
        "node_disk_writes_completed_total",
        "node_disk_io_time_seconds_total",
        "node_disk_read_time_seconds_total",
    ] {
        let mut f = MetricFamily::new(n, "disk", MetricType::Counter);
        for d in 0..8 {
            f.push([("device", format!("nvme{d}n1"))], 5e8 + d as f64);
        }
        fams.push(f);
    }
    fams.push(MetricFamily::single(
        "node_load1",
        "",
        MetricType::Gauge,
        1.5,
    ));
    let used: usize = fams.iter().map(|f| f.points.len()).sum();
    let mut own = MetricFamily::new(
        "nodescope_tcp_retransmits_total",
        "own",
        MetricType::Counter,
    );
    for i in 0..(1000 - used) {
        own.push(
            [
                ("workload", format!("pod-{}", i % 97)),
                ("peer", format!("10.0.{}.{}:443", i / 250, i % 250)),
            ],
            i as f64,
        );
    }
    fams.push(own);
    MetricBatch {
        source: "bench".into(),
        timestamp: ts,
        families: fams,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let points: usize = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);

    let grpc_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let http = axum::Router::new().route(
                "/v1/metrics",
                axum::routing::post(|body: axum::body::Bytes| async move {
                    RECEIVED.fetch_add(body.len() as u64, Ordering::Relaxed);
                    ""
                }),
            );
            let l = tokio::net::TcpListener::bind(("127.0.0.1", http_port))
                .await
                .unwrap();
            tokio::spawn(async move { axum::serve(l, http).await });
            tonic::transport::Server::builder()
                .add_service(
                    MetricsServiceServer::new(Sink)
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                        .max_decoding_message_size(64 << 20),
                )
                .serve(([127, 0, 0, 1], grpc_port).into())
                .await
                .unwrap();
        });
    });
    std::thread::sleep(Duration::from_millis(300));

    let mut r = Resource::default();
    r.set("service.name", "nodescope");
    r.set("host.name", "bench");
    let ctx = ExporterContext {
        resource: r,
        ..Default::default()
    };
    let b = Arc::new(batch(SystemTime::now()));
    let per = b.point_count();
    let n_batches = points / per;
    let configs: Vec<(&str, Protocol, Compression, String)> = vec![
        (
            "grpc+gzip",
            Protocol::Grpc,
            Compression::Gzip,
            format!("http://127.0.0.1:{grpc_port}"),
        ),
        (
            "http+gzip",
            Protocol::HttpProtobuf,
            Compression::Gzip,
            format!("http://127.0.0.1:{http_port}"),
        ),
        (
            "http+none",
            Protocol::HttpProtobuf,
            Compression::None,
            format!("http://127.0.0.1:{http_port}"),
        ),
    ];
    let mut results: Vec<Vec<(f64, f64)>> = vec![vec![]; configs.len()];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for round in 0..rounds {
        for (i, (name, proto, comp, ep)) in configs.iter().enumerate() {
            let mut cfg = OtlpConfig {
                enabled: true,
                protocol: *proto,
                compression: *comp,
                endpoint: Some(ep.clone()),
                logs: false,
                ..Default::default()
            };
            cfg.batch.max_items = 8192;
            cfg.batch.memory_limit_bytes = 256 << 20;
            let exporter = cfg.build(&ctx).unwrap();
            let sent0 = ctx
                .self_metrics
                .collect()
                .iter()
                .find(|f| f.name == "nodescope_exporter_sent_total")
                .map(|f| match f.points[0].value {
                    nodescope_model::Value::Number(v) => v,
                    _ => 0.0,
                })
                .unwrap_or(0.0);
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let cpu0 = thread_cpu();
            let t0 = Instant::now();
            rt.block_on(async {
                let prod = {
                    let b = b.clone();
                    async move {
                        for _ in 0..n_batches {
                            tx.send(Signal::Metrics(b.clone())).await.unwrap();
                        }
                    }
                };
                let run = exporter.run(ExporterQueue {
                    rx,
                    flush_timeout: Duration::from_secs(120),
                });
                tokio::join!(prod, run);
            });
            let cpu = (thread_cpu() - cpu0).as_secs_f64();
            let wall = t0.elapsed().as_secs_f64();
            let sent = ctx
                .self_metrics
                .collect()
                .iter()
                .find(|f| f.name == "nodescope_exporter_sent_total")
                .map(|f| match f.points[0].value {
                    nodescope_model::Value::Number(v) => v,
                    _ => 0.0,
                })
                .unwrap_or(0.0)
                - sent0;
            assert_eq!(
                sent as usize,
                n_batches * per,
                "{name}: not everything was delivered"
            );
            let per_cpu = sent / cpu;
            let per_wall = sent / wall;
            println!("round {round:2} {name:10} points {sent:.0}  {per_cpu:>12.0} points/cpu-s  {per_wall:>12.0} points/s wall  cpu {cpu:.2}s");
            results[i].push((per_cpu, per_wall));
        }
    }
    println!(
        "\nmedians over {rounds} rounds ({} points per round):",
        n_batches * per
    );
    for (i, (name, ..)) in configs.iter().enumerate() {
        let c = median(results[i].iter().map(|x| x.0).collect());
        let w = median(results[i].iter().map(|x| x.1).collect());
        println!("{name:10} {c:>12.0} points per CPU-second (one core)   {w:>12.0} points/s wall");
    }
}
