//! Encoding and WAL writes run off the runtime's worker threads: a slow encoder (or disk)
//! must not stall other tasks. On a current-thread runtime any blocking call in the
//! exporter's task would stop the ticker below for its whole duration.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nodescope_delivery::{Delivery, DeliveryConfig, Encoder, ExporterContext, Payload, Transport};
use nodescope_model::{ExportError, ExporterQueue, MetricBatch, Signal};

struct SlowEncoder;

impl Encoder for SlowEncoder {
    fn encode(&mut self, batch: &[Signal]) -> Result<Vec<Payload>, ExportError> {
        // A large batch or a slow fsync: blocks this thread.
        std::thread::sleep(Duration::from_millis(800));
        Ok(vec![Payload {
            items: batch.len() as u32,
            meta: Vec::new(),
            body: vec![0; 16],
        }])
    }
}

struct Sink(Arc<AtomicU64>);

#[async_trait::async_trait]
impl Transport for Sink {
    async fn send(&self, p: &Payload) -> Result<u64, ExportError> {
        self.0.fetch_add(u64::from(p.items), Ordering::SeqCst);
        Ok(0)
    }
}

fn run_case(wal_dir: Option<&std::path::Path>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = DeliveryConfig::default();
        cfg.batch.timeout = Duration::from_millis(50);
        if let Some(d) = wal_dir {
            cfg.wal.enabled = true;
            cfg.wal.dir = d.to_path_buf();
        }
        let delivery = Delivery::new("slow", &cfg, &ExporterContext::default()).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let sent = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(delivery.run(
            ExporterQueue {
                rx,
                flush_timeout: Duration::from_secs(2),
            },
            SlowEncoder,
            Sink(sent.clone()),
        ));
        // A ticker standing in for the HTTP server: how late does it get?
        let ticker = tokio::spawn(async {
            let mut worst = Duration::ZERO;
            let mut last = Instant::now();
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let now = Instant::now();
                worst = worst.max(now - last);
                last = now;
            }
            worst
        });
        for _ in 0..2 {
            tx.send(Signal::Metrics(Arc::new(MetricBatch {
                source: "test".into(),
                timestamp: SystemTime::now(),
                families: Vec::new(),
            })))
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let worst = ticker.await.unwrap();
        eprintln!(
            "worst ticker gap while encoding (wal: {}): {worst:?}",
            wal_dir.is_some()
        );
        drop(tx);
        task.await.unwrap();
        assert!(sent.load(Ordering::SeqCst) >= 1, "nothing delivered");
        assert!(
            worst < Duration::from_millis(300),
            "a 20 ms ticker was stalled for {worst:?} while the exporter encoded"
        );
    });
}

#[test]
fn slow_encoding_does_not_stall_the_runtime() {
    run_case(None);
}

#[test]
fn slow_encoding_with_a_wal_does_not_stall_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    run_case(Some(dir.path()));
}
