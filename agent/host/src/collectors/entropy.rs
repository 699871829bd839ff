//! `entropy`: `node_entropy_available_bits` and `node_entropy_pool_size_bits` from
//! `<proc>/sys/kernel/random/{entropy_avail,poolsize}`.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::read_small;
use crate::HostPaths;

pub(crate) struct EntropyCollector {
    avail: PathBuf,
    pool: PathBuf,
}

impl EntropyCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        let dir = paths.proc.join("sys/kernel/random");
        EntropyCollector {
            avail: dir.join("entropy_avail"),
            pool: dir.join("poolsize"),
        }
    }
}

fn read_u64(path: &PathBuf) -> Result<f64, CollectError> {
    let t = read_small(path)?;
    t.trim()
        .parse::<u64>()
        .map(|v| v as f64)
        .map_err(|_| CollectError::parse(path, format!("not an integer: {:?}", t.trim())))
}

impl Collector for EntropyCollector {
    fn name(&self) -> &'static str {
        "entropy"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        Ok(vec![
            MetricFamily::single(
                "node_entropy_available_bits",
                "Bits of available entropy.",
                MetricType::Gauge,
                read_u64(&self.avail)?,
            ),
            MetricFamily::single(
                "node_entropy_pool_size_bits",
                "Bits of entropy pool.",
                MetricType::Gauge,
                read_u64(&self.pool)?,
            ),
        ])
    }
}
