//! `hwmon`: hardware sensors from `<sys>/class/hwmon/hwmonN` (and each chip's `device/`),
//! named as node_exporter 1.5 names them: `node_hwmon_<type>[_<property>]_<unit>{chip,sensor}`
//! (temperatures in °C, voltages in V, currents in A, power in W, energy in J, fans in rpm),
//! `node_hwmon_chip_names{chip,chip_name}` and `node_hwmon_sensor_label{chip,sensor,label}`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};
use regex::Regex;

use crate::util::dir_names;
use crate::HostPaths;

const SENSOR_TYPES: &[&str] = &[
    "vrm",
    "beep_enable",
    "update_interval",
    "in",
    "cpu",
    "fan",
    "pwm",
    "temp",
    "curr",
    "power",
    "energy",
    "humidity",
    "intrusion",
];

/// node_exporter's `cleanMetricName`: lower case, `[^a-z0-9:_]` → `_`, `_` trimmed.
pub fn clean_metric_name(name: &str) -> String {
    let s: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == ':' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.trim_matches('_').to_string()
}

/// `(type, number, property)` of a sensor file name (`temp1_crit_alarm` → temp, 1,
/// crit_alarm), or `None` when it does not match node_exporter's pattern.
pub fn explode_sensor_filename(name: &str) -> Option<(String, u32, String)> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"^(?P<type>[^0-9]+)(?P<id>[0-9]*)?(_(?P<property>.+))?$").expect("regex")
    });
    let c = re.captures(name)?;
    let ty = c.name("type").map(|m| m.as_str()).unwrap_or("");
    let id = match c.name("id").map(|m| m.as_str()).unwrap_or("") {
        "" => 0,
        d => d.parse::<i32>().ok().and_then(|v| u32::try_from(v).ok())?,
    };
    let prop = c.name("property").map(|m| m.as_str()).unwrap_or("");
    Some((ty.to_string(), id, prop.to_string()))
}

/// Reads at most 128 bytes with one read, as node_exporter's hwmon `sysReadFile`.
fn read_128(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut b = [0u8; 128];
    let n = f.read(&mut b).ok()?;
    Some(
        String::from_utf8_lossy(&b[..n])
            .trim_matches('\n')
            .to_string(),
    )
}

type SensorData = BTreeMap<String, BTreeMap<String, String>>;

fn collect_sensor_data(dir: &Path, data: &mut SensorData) -> std::io::Result<()> {
    for name in dir_names(dir)? {
        let Some((ty, num, prop)) = explode_sensor_filename(&name) else {
            continue;
        };
        if !SENSOR_TYPES.contains(&ty.as_str()) {
            continue;
        }
        if let Some(v) = read_128(&dir.join(&name)) {
            data.entry(format!("{ty}{num}"))
                .or_default()
                .insert(prop, v);
        }
    }
    Ok(())
}

fn hwmon_name(dir: &Path) -> Option<String> {
    if let Ok(dev) = std::fs::canonicalize(dir.join("device")) {
        let dev_name = dev
            .file_name()
            .map(|s| clean_metric_name(&s.to_string_lossy()))
            .unwrap_or_default();
        let dev_type = dev
            .parent()
            .and_then(|p| p.file_name())
            .map(|s| clean_metric_name(&s.to_string_lossy()))
            .unwrap_or_default();
        if !dev_type.is_empty() && !dev_name.is_empty() {
            return Some(format!("{dev_type}_{dev_name}"));
        }
        if !dev_name.is_empty() {
            return Some(dev_name);
        }
    }
    if let Ok(raw) = std::fs::read_to_string(dir.join("name")) {
        let c = clean_metric_name(&raw);
        if !c.is_empty() {
            return Some(c);
        }
    }
    let real = std::fs::canonicalize(dir).ok()?;
    let c = clean_metric_name(&real.file_name()?.to_string_lossy());
    (!c.is_empty()).then_some(c)
}

/// Families keyed by name; the first help of a name wins (as client_golang's gather).
#[derive(Default)]
struct Out {
    fams: Vec<MetricFamily>,
}

impl Out {
    fn push(
        &mut self,
        name: String,
        help: String,
        kind: MetricType,
        labels: Vec<(&'static str, String)>,
        v: f64,
    ) {
        match self.fams.iter_mut().find(|f| f.name == name) {
            Some(f) => {
                // Another help or type, or a series already collected (two chips that
                // derive the same name): dropped, as client_golang's gather drops them.
                let dup = f.points.iter().any(|p| {
                    p.labels.len() == labels.len()
                        && p.labels
                            .iter()
                            .zip(&labels)
                            .all(|((a, b), (c, d))| a == c && b == d)
                });
                if f.help == help && f.kind == kind && !dup {
                    f.push(labels, v);
                }
            }
            None => {
                let mut f = MetricFamily::new(name, help, kind);
                f.push(labels, v);
                self.fams.push(f);
            }
        }
    }
}

fn update_chip(dir: &Path, out: &mut Out) -> Result<(), String> {
    let chip = hwmon_name(dir)
        .ok_or_else(|| format!("could not derive a monitoring name for {}", dir.display()))?;
    let mut data = SensorData::new();
    collect_sensor_data(dir, &mut data).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dev = dir.join("device");
    if std::fs::metadata(&dev).is_ok() {
        collect_sensor_data(&dev, &mut data).map_err(|e| format!("{}: {e}", dev.display()))?;
    }
    if let Ok(raw) = std::fs::read_to_string(dir.join("name")) {
        let c = clean_metric_name(&raw);
        if !c.is_empty() {
            out.push(
                "node_hwmon_chip_names".into(),
                "Annotation metric for human-readable chip names".into(),
                MetricType::Gauge,
                vec![("chip", chip.clone()), ("chip_name", c)],
                1.0,
            );
        }
    }
    let g = MetricType::Gauge;
    for (sensor, props) in &data {
        let Some((ty, _, _)) = explode_sensor_filename(sensor) else {
            continue;
        };
        let labels = || vec![("chip", chip.clone()), ("sensor", sensor.clone())];
        if let Some(label) = props.get("label") {
            out.push(
                "node_hwmon_sensor_label".into(),
                "Label for given chip and sensor".into(),
                g,
                vec![
                    ("chip", chip.clone()),
                    ("sensor", sensor.clone()),
                    ("label", label.clone()),
                ],
                1.0,
            );
        }
        let plain = props.get("").map(String::as_str);
        match ty.as_str() {
            "beep_enable" => {
                let v = if plain == Some("1") { 1.0 } else { 0.0 };
                out.push(
                    "node_hwmon_beep_enabled".into(),
                    "Hardware beep enabled".into(),
                    g,
                    labels(),
                    v,
                );
                continue;
            }
            "vrm" => {
                if let Some(v) = plain.and_then(|p| p.parse::<f64>().ok()) {
                    out.push(
                        "node_hwmon_voltage_regulator_version".into(),
                        "Hardware voltage regulator".into(),
                        g,
                        labels(),
                        v,
                    );
                }
                continue;
            }
            "update_interval" => {
                if let Some(v) = plain.and_then(|p| p.parse::<f64>().ok()) {
                    out.push(
                        "node_hwmon_update_interval_seconds".into(),
                        "Hardware monitor update interval".into(),
                        g,
                        labels(),
                        v * 0.001,
                    );
                }
                continue;
            }
            _ => {}
        }
        let prefix = format!("node_hwmon_{ty}");
        for (element, value) in props {
            if element == "label" {
                continue;
            }
            let mut name = prefix.clone();
            if element == "input" {
                if plain.is_some() {
                    name.push_str("_input");
                }
            } else if !element.is_empty() {
                name.push('_');
                name.push_str(&clean_metric_name(element));
            }
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            let e = element.as_str();
            let (name, help, kind, v) = if e == "fault" || e == "alarm" {
                (name, format!("Hardware sensor {e} status ({ty})"), g, v)
            } else if e == "beep" {
                (
                    format!("{name}_enabled"),
                    "Hardware monitor sensor has beeping enabled".into(),
                    g,
                    v,
                )
            } else if ty == "in" || ty == "cpu" {
                (
                    format!("{name}_volts"),
                    format!("Hardware monitor for voltage ({e})"),
                    g,
                    v * 0.001,
                )
            } else if ty == "temp" && e != "type" {
                let e = if e.is_empty() { "input" } else { e };
                (
                    format!("{name}_celsius"),
                    format!("Hardware monitor for temperature ({e})"),
                    g,
                    v * 0.001,
                )
            } else if ty == "curr" {
                (
                    format!("{name}_amps"),
                    format!("Hardware monitor for current ({e})"),
                    g,
                    v * 0.001,
                )
            } else if ty == "energy" {
                (
                    format!("{name}_joule_total"),
                    format!("Hardware monitor for joules used so far ({e})"),
                    MetricType::Counter,
                    v / 1_000_000.0,
                )
            } else if ty == "power" && e == "accuracy" {
                (
                    name,
                    "Hardware monitor power meter accuracy, as a ratio".into(),
                    g,
                    v / 1_000_000.0,
                )
            } else if ty == "power"
                && matches!(
                    e,
                    "average_interval" | "average_interval_min" | "average_interval_max"
                )
            {
                (
                    format!("{name}_seconds"),
                    format!("Hardware monitor power usage update interval ({e})"),
                    g,
                    v * 0.001,
                )
            } else if ty == "power" {
                (
                    format!("{name}_watt"),
                    format!("Hardware monitor for power usage in watts ({e})"),
                    g,
                    v / 1_000_000.0,
                )
            } else if ty == "humidity" {
                (
                    name,
                    format!("Hardware monitor for humidity, as a ratio (multiply with 100.0 to get the humidity as a percentage) ({e})"),
                    g,
                    v / 1_000_000.0,
                )
            } else if ty == "fan" && matches!(e, "input" | "min" | "max" | "target") {
                (
                    format!("{name}_rpm"),
                    format!("Hardware monitor for fan revolutions per minute ({e})"),
                    g,
                    v,
                )
            } else {
                (name, format!("Hardware monitor {ty} element {e}"), g, v)
            };
            out.push(name, help, kind, labels(), v);
        }
    }
    Ok(())
}

pub(crate) struct HwmonCollector {
    dir: PathBuf,
}

impl HwmonCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        HwmonCollector {
            dir: paths.sys.join("class/hwmon"),
        }
    }
}

impl Collector for HwmonCollector {
    fn name(&self) -> &'static str {
        "hwmon"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let chips = dir_names(&self.dir).map_err(|e| CollectError::io(&self.dir, e))?;
        let mut out = Out::default();
        for c in chips {
            let dir = self.dir.join(&c);
            if !std::fs::metadata(&dir).map(|m| m.is_dir()).unwrap_or(false) {
                continue;
            }
            // node_exporter reports the collector failed but still exports the other
            // chips; we export them and log the chip that failed.
            if let Err(e) = update_chip(&dir, &mut out) {
                tracing::warn!(chip = %dir.display(), error = %e, "hwmon: chip skipped");
            }
        }
        Ok(out.fams)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn file_names() {
        assert_eq!(
            explode_sensor_filename("temp1_crit_alarm"),
            Some(("temp".into(), 1, "crit_alarm".into()))
        );
        assert_eq!(
            explode_sensor_filename("beep_enable"),
            Some(("beep_enable".into(), 0, "".into()))
        );
        assert_eq!(
            explode_sensor_filename("pwm2"),
            Some(("pwm".into(), 2, "".into()))
        );
        assert_eq!(explode_sensor_filename("1abc"), None);
        assert_eq!(clean_metric_name("  Foo-Bar.1 \n"), "foo_bar_1");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = explode_sensor_filename(&s);
            let _ = clean_metric_name(&s);
        }
    }
}
