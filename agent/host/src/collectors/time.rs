//! `time`: node_time_seconds, node_time_zone_offset_seconds{time_zone} and the clocksource
//! info families node_exporter 1.5 exports.
//!
//! The zone is the HOST's: `<root>/etc/localtime` (symlinks resolved inside the host root)
//! is decoded with the `tz-rs` crate and cached until the file changes; without it the zone
//! is UTC, as Go's runtime assumes. Clocksources come from
//! `<sys>/devices/system/clocksource/clocksource<N>/{available,current}_clocksource`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};
use parking_lot::Mutex;

use crate::util::{read_small, resolve_in_root};
use crate::HostPaths;

/// Clocksource names in an `available_clocksource` / `current_clocksource` file.
pub fn parse_clocksources(text: &str) -> Vec<&str> {
    text.split_ascii_whitespace().collect()
}

type ZoneKey = (PathBuf, Option<SystemTime>, u64);

pub(crate) struct TimeCollector {
    root: PathBuf,
    clocksource: PathBuf,
    zone: Mutex<Option<(ZoneKey, tz::TimeZone)>>,
}

impl TimeCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        TimeCollector {
            root: paths.root.clone(),
            clocksource: paths.sys.join("devices/system/clocksource"),
            zone: Mutex::new(None),
        }
    }

    /// `(abbreviation, offset seconds)` of the host's zone at `now`.
    fn zone(&self, now: i64) -> (String, f64) {
        let utc = ("UTC".to_string(), 0.0);
        let Some(path) = resolve_in_root(&self.root, Path::new("/etc/localtime")) else {
            return utc;
        };
        let Ok(meta) = std::fs::metadata(&path) else {
            return utc;
        };
        let key: ZoneKey = (path.clone(), meta.modified().ok(), meta.len());
        let mut cache = self.zone.lock();
        if cache.as_ref().map(|(k, _)| k) != Some(&key) {
            let parsed = std::fs::read(&path)
                .ok()
                .and_then(|b| tz::TimeZone::from_tz_data(&b).ok());
            match parsed {
                Some(z) => *cache = Some((key, z)),
                None => {
                    tracing::debug!(collector = "time", path = %path.display(), "cannot decode localtime; using UTC");
                    *cache = None;
                    return utc;
                }
            }
        }
        match cache.as_ref().map(|(_, z)| z.find_local_time_type(now)) {
            Some(Ok(t)) => (
                t.time_zone_designation().to_string(),
                f64::from(t.ut_offset()),
            ),
            _ => utc,
        }
    }

    fn clocksources(&self, available: &mut MetricFamily, current: &mut MetricFamily) {
        let Ok(dir) = std::fs::read_dir(&self.clocksource) else {
            return;
        };
        let mut devices: Vec<(String, PathBuf)> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n = name.strip_prefix("clocksource")?;
                n.parse::<u32>().ok()?;
                Some((n.to_string(), e.path()))
            })
            .take(64)
            .collect();
        devices.sort();
        for (n, p) in devices {
            if let Ok(t) = read_small(&p.join("available_clocksource")) {
                for cs in parse_clocksources(&t) {
                    available.push(
                        [("clocksource", cs.to_string()), ("device", n.clone())],
                        1.0,
                    );
                }
            }
            if let Ok(t) = read_small(&p.join("current_clocksource")) {
                for cs in parse_clocksources(&t) {
                    current.push(
                        [("clocksource", cs.to_string()), ("device", n.clone())],
                        1.0,
                    );
                }
            }
        }
    }
}

impl Collector for TimeCollector {
    fn name(&self) -> &'static str {
        "time"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| CollectError::Other(format!("system clock before 1970: {e}")))?;
        let (zone, offset) = self.zone(now.as_secs() as i64);
        let mut tz = MetricFamily::new(
            "node_time_zone_offset_seconds",
            "System time zone offset in seconds.",
            MetricType::Gauge,
        );
        tz.push([("time_zone", zone)], offset);
        let mut available = MetricFamily::new(
            "node_time_clocksource_available_info",
            "Available clocksources read from '/sys/devices/system/clocksource'.",
            MetricType::Gauge,
        );
        let mut current = MetricFamily::new(
            "node_time_clocksource_current_info",
            "Current clocksource read from '/sys/devices/system/clocksource'.",
            MetricType::Gauge,
        );
        self.clocksources(&mut available, &mut current);
        let mut out = vec![
            MetricFamily::single(
                "node_time_seconds",
                "System time in seconds since epoch (1970).",
                MetricType::Gauge,
                now.as_secs_f64(),
            ),
            tz,
        ];
        for f in [available, current] {
            if !f.points.is_empty() {
                out.push(f);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil::value;
    use proptest::prelude::*;

    #[test]
    fn host_zone_through_root_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::from_root(dir.path());
        std::fs::create_dir_all(paths.root.join("etc")).unwrap();
        std::fs::create_dir_all(paths.root.join("usr/share/zoneinfo")).unwrap();
        let c = TimeCollector::new(&paths);
        let f = c.collect().unwrap();
        assert_eq!(
            value(&f, "node_time_zone_offset_seconds", &[("time_zone", "UTC")]),
            0.0
        );
        // A TZif file for a fixed +05:30 zone, from the system's zoneinfo when present.
        let src = Path::new("/usr/share/zoneinfo/Asia/Kolkata");
        if src.exists() {
            std::fs::copy(src, paths.root.join("usr/share/zoneinfo/Kolkata")).unwrap();
            std::os::unix::fs::symlink(
                "/usr/share/zoneinfo/Kolkata",
                paths.root.join("etc/localtime"),
            )
            .unwrap();
            let f = c.collect().unwrap();
            assert_eq!(
                value(&f, "node_time_zone_offset_seconds", &[("time_zone", "IST")]),
                19800.0
            );
        }
    }

    #[test]
    fn clocksources_of_this_machine() {
        let c = TimeCollector::new(&HostPaths::default());
        let f = c.collect().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((value(&f, "node_time_seconds", &[]) - now).abs() < 5.0);
        if Path::new("/sys/devices/system/clocksource/clocksource0/current_clocksource").exists() {
            let cur = std::fs::read_to_string(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
            )
            .unwrap();
            assert_eq!(
                value(
                    &f,
                    "node_time_clocksource_current_info",
                    &[("clocksource", cur.trim()), ("device", "0")]
                ),
                1.0
            );
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_clocksources(&s);
        }
    }
}
