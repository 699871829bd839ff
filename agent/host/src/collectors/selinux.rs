//! `selinux`: `node_selinux_enabled`, and when enabled `node_selinux_config_mode` (from
//! `<root>/etc/selinux/config`) and `node_selinux_current_mode` (from selinuxfs'
//! `enforce`), as node_exporter 1.5 exports them (modes: -1 disabled, 0 permissive, 1
//! enforcing).

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::sys_read;
use crate::HostPaths;

/// `SELINUX=` of `/etc/selinux/config` as opencontainers/selinux' `DefaultEnforceMode`.
pub fn parse_selinux_config(text: &str) -> i64 {
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("SELINUX=") {
            return match v.trim().trim_matches('"') {
                "enforcing" => 1,
                "permissive" => 0,
                _ => -1,
            };
        }
    }
    -1
}

pub(crate) struct SelinuxCollector {
    selinuxfs: PathBuf,
    config: PathBuf,
}

impl SelinuxCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        SelinuxCollector {
            selinuxfs: paths.sys.join("fs/selinux"),
            config: paths.root.join("etc/selinux/config"),
        }
    }
}

impl Collector for SelinuxCollector {
    fn name(&self) -> &'static str {
        "selinux"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        // selinuxfs is mounted (and has an `enforce` file) exactly when SELinux is on.
        let enforce = sys_read(&self.selinuxfs.join("enforce"));
        let Some(enforce) = enforce else {
            return Ok(vec![MetricFamily::single(
                "node_selinux_enabled",
                "SELinux is enabled, 1 is true, 0 is false",
                MetricType::Gauge,
                0.0,
            )]);
        };
        let current = match enforce.as_str() {
            "1" => 1.0,
            "0" => 0.0,
            _ => -1.0,
        };
        let config = std::fs::read_to_string(&self.config)
            .map(|t| parse_selinux_config(&t))
            .unwrap_or(-1);
        Ok(vec![
            MetricFamily::single(
                "node_selinux_enabled",
                "SELinux is enabled, 1 is true, 0 is false",
                MetricType::Gauge,
                1.0,
            ),
            MetricFamily::single(
                "node_selinux_config_mode",
                "Configured SELinux enforcement mode",
                MetricType::Gauge,
                config as f64,
            ),
            MetricFamily::single(
                "node_selinux_current_mode",
                "Current SELinux enforcement mode",
                MetricType::Gauge,
                current,
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn config_modes() {
        assert_eq!(parse_selinux_config("# c\nSELINUX=enforcing\n"), 1);
        assert_eq!(parse_selinux_config("SELINUX=permissive"), 0);
        assert_eq!(parse_selinux_config("SELINUX=disabled"), -1);
        assert_eq!(parse_selinux_config(""), -1);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_selinux_config(&s);
        }
    }
}
