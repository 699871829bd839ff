//! `thermal_zone`: `node_thermal_zone_temp{zone,type}` and
//! `node_cooling_device_{cur,max}_state{name,type}` from `<sys>/class/thermal`.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{absent, glob_digit, read_int, read_uint, sys_read};
use crate::HostPaths;

pub(crate) struct ThermalZoneCollector {
    dir: PathBuf,
}

impl ThermalZoneCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        ThermalZoneCollector {
            dir: paths.sys.join("class/thermal"),
        }
    }
}

fn req(path: PathBuf) -> Result<String, CollectError> {
    sys_read(&path).ok_or_else(|| CollectError::Io {
        path,
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

fn parse_i64(path: PathBuf) -> Result<i64, CollectError> {
    let t = req(path.clone())?;
    t.parse()
        .map_err(|_| CollectError::parse(path, format!("not an integer: {t:?}")))
}

impl Collector for ThermalZoneCollector {
    fn name(&self) -> &'static str {
        "thermal_zone"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let mut temp = MetricFamily::new(
            "node_thermal_zone_temp",
            "Zone temperature in Celsius",
            MetricType::Gauge,
        );
        for (zone, name) in glob_digit(&self.dir, "thermal_zone") {
            let ty = req(zone.join("type"))?;
            req(zone.join("policy"))?;
            // ENODATA (a zone whose sensor is not ready) skips the zone, as in procfs.
            let t = match read_int(&zone.join("temp")) {
                Ok(t) => t,
                Err(CollectError::Io { source, .. }) if source.raw_os_error() == Some(61) => {
                    continue
                }
                Err(e) => return Err(e),
            };
            if let Err(e) = read_uint(&zone.join("passive")) {
                if !absent(&e) {
                    return Err(e);
                }
            }
            temp.push([("zone", name), ("type", ty)], t as f64 / 1000.0);
        }
        let mut cur = MetricFamily::new(
            "node_cooling_device_cur_state",
            "Current throttle state of the cooling device",
            MetricType::Gauge,
        );
        let mut max = MetricFamily::new(
            "node_cooling_device_max_state",
            "Maximum throttle state of the cooling device",
            MetricType::Gauge,
        );
        for (cd, name) in glob_digit(&self.dir, "cooling_device") {
            let ty = req(cd.join("type"))?;
            let m = parse_i64(cd.join("max_state"))?;
            let c = parse_i64(cd.join("cur_state"))?;
            cur.push([("name", name.clone()), ("type", ty.clone())], c as f64);
            max.push([("name", name), ("type", ty)], m as f64);
        }
        let mut out = vec![temp, cur, max];
        out.retain(|f| !f.points.is_empty());
        Ok(out)
    }
}
