//! `bonding`: `node_bonding_slaves{master}` and `node_bonding_active{master}` from
//! `<sys>/class/net/bonding_masters` and each slave's `bonding_slave/mii_status`.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::read_small;
use crate::HostPaths;

pub(crate) struct BondingCollector {
    dir: PathBuf,
}

impl BondingCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        BondingCollector {
            dir: paths.sys.join("class/net"),
        }
    }
}

impl Collector for BondingCollector {
    fn name(&self) -> &'static str {
        "bonding"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let masters = read_small(&self.dir.join("bonding_masters"))?;
        let mut slaves_f = MetricFamily::new(
            "node_bonding_slaves",
            "Number of configured slaves per bonding interface.",
            MetricType::Gauge,
        );
        let mut active_f = MetricFamily::new(
            "node_bonding_active",
            "Number of active slaves per bonding interface.",
            MetricType::Gauge,
        );
        for master in masters.split_ascii_whitespace() {
            let slaves = read_small(&self.dir.join(master).join("bonding/slaves"))?;
            let (mut n, mut up) = (0u64, 0u64);
            for slave in slaves.split_ascii_whitespace() {
                let lower = self
                    .dir
                    .join(master)
                    .join(format!("lower_{slave}"))
                    .join("bonding_slave/mii_status");
                let state = match read_small(&lower) {
                    Err(e) if e.is_unavailable() => read_small(
                        &self
                            .dir
                            .join(master)
                            .join(format!("slave_{slave}"))
                            .join("bonding_slave/mii_status"),
                    )?,
                    r => r?,
                };
                n += 1;
                if state.trim() == "up" {
                    up += 1;
                }
            }
            slaves_f.push([("master", master)], n as f64);
            active_f.push([("master", master)], up as f64);
        }
        Ok(vec![slaves_f, active_f])
    }
}
