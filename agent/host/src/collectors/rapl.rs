//! `rapl`: `node_rapl_<zone>_joules_total{index,path}` from
//! `<sys>/class/powercap/*/{name,energy_uj}` (RAPL energy counters), as node_exporter 1.5
//! exports them by default (no zone label). `path` is the zone's path as the host sees it
//! (`/sys/class/powercap/...`).

use std::collections::HashMap;
use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{dir_names, read_uint, sanitize_name};
use crate::HostPaths;

/// procfs' `getIndexAndName`: `package-1` → (1, `package`); otherwise the name's usage
/// count so far.
pub fn rapl_index_and_name(counts: &HashMap<String, usize>, name: &str) -> (usize, String) {
    let parts: Vec<&str> = name.split('-').collect();
    if parts.len() == 2 {
        if let Ok(i) = parts[1].parse::<usize>() {
            return (i, parts[0].to_string());
        }
    }
    (counts.get(name).copied().unwrap_or(0), name.to_string())
}

pub(crate) struct RaplCollector {
    dir: PathBuf,
}

impl RaplCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        RaplCollector {
            dir: paths.sys.join("class/powercap"),
        }
    }
}

impl Collector for RaplCollector {
    fn name(&self) -> &'static str {
        "rapl"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let entries = dir_names(&self.dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                CollectError::Unavailable {
                    what: self.dir.display().to_string(),
                    reason: e.to_string(),
                }
            } else {
                CollectError::io(&self.dir, e)
            }
        })?;
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut out: Vec<MetricFamily> = Vec::new();
        for entry in entries {
            let zone = self.dir.join(&entry);
            let Ok(raw) = std::fs::read_to_string(zone.join("name")) else {
                continue;
            };
            let (index, name) = rapl_index_and_name(&counts, raw.trim());
            read_uint(&zone.join("max_energy_range_uj"))?;
            counts.insert(name.clone(), index + 1);
            let uj = read_uint(&zone.join("energy_uj")).map_err(|e| match e {
                CollectError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    CollectError::Unavailable {
                        what: zone.join("energy_uj").display().to_string(),
                        reason: "permission denied (root only since CVE-2020-8694)".into(),
                    }
                }
                other => other,
            })?;
            let fname = format!("node_rapl_{}_joules_total", sanitize_name(&name));
            let labels = [
                ("index", index.to_string()),
                ("path", format!("/sys/class/powercap/{entry}")),
            ];
            match out.iter_mut().find(|f| f.name == fname) {
                Some(f) => {
                    f.push(labels, uj as f64 / 1e6);
                }
                None => {
                    let mut f = MetricFamily::new(
                        fname,
                        format!("Current RAPL {name} value in joules"),
                        MetricType::Counter,
                    );
                    f.push(labels, uj as f64 / 1e6);
                    out.push(f);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_name() {
        let mut c = HashMap::new();
        assert_eq!(rapl_index_and_name(&c, "package-1"), (1, "package".into()));
        assert_eq!(rapl_index_and_name(&c, "core"), (0, "core".into()));
        c.insert("core".to_string(), 1);
        assert_eq!(rapl_index_and_name(&c, "core"), (1, "core".into()));
        assert_eq!(rapl_index_and_name(&c, "a-b-c"), (0, "a-b-c".into()));
    }
}
