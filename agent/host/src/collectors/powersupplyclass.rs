//! `powersupplyclass`: `<sys>/class/power_supply/<supply>/*` as node_exporter 1.5 exports
//! it: one gauge per numeric attribute (`node_power_supply_<name>{power_supply}`, micro
//! units scaled to base units, tenths of a degree to degrees) and
//! `node_power_supply_info{...}` with the non-empty string attributes.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::filter::NameFilter;
use crate::util::{dir_names, go_int, sys_read};
use crate::HostPaths;

/// sysfs file → (metric suffix, divisor).
const NUMERIC: &[(&str, &str, f64)] = &[
    ("authentic", "authentic", 1.0),
    ("calibrate", "calibrate", 1.0),
    ("capacity", "capacity", 1.0),
    ("capacity_alert_max", "capacity_alert_max", 1.0),
    ("capacity_alert_min", "capacity_alert_min", 1.0),
    ("cycle_count", "cyclecount", 1.0),
    ("online", "online", 1.0),
    ("present", "present", 1.0),
    ("time_to_empty_now", "time_to_empty_seconds", 1.0),
    ("time_to_full_now", "time_to_full_seconds", 1.0),
    ("current_boot", "current_boot", 1e6),
    ("current_max", "current_max", 1e6),
    ("current_now", "current_ampere", 1e6),
    ("energy_empty", "energy_empty", 1e6),
    ("energy_empty_design", "energy_empty_design", 1e6),
    ("energy_full", "energy_full", 1e6),
    ("energy_full_design", "energy_full_design", 1e6),
    ("energy_now", "energy_watthour", 1e6),
    ("voltage_boot", "voltage_boot", 1e6),
    ("voltage_max", "voltage_max", 1e6),
    ("voltage_max_design", "voltage_max_design", 1e6),
    ("voltage_min", "voltage_min", 1e6),
    ("voltage_min_design", "voltage_min_design", 1e6),
    ("voltage_now", "voltage_volt", 1e6),
    ("voltage_ocv", "voltage_ocv", 1e6),
    ("charge_control_limit", "charge_control_limit", 1e6),
    ("charge_control_limit_max", "charge_control_limit_max", 1e6),
    ("charge_counter", "charge_counter", 1e6),
    ("charge_empty", "charge_empty", 1e6),
    ("charge_empty_design", "charge_empty_design", 1e6),
    ("charge_full", "charge_full", 1e6),
    ("charge_full_design", "charge_full_design", 1e6),
    ("charge_now", "charge_ampere", 1e6),
    ("charge_term_current", "charge_term_current", 1e6),
    ("constant_charge_current", "constant_charge_current", 1e6),
    (
        "constant_charge_current_max",
        "constant_charge_current_max",
        1e6,
    ),
    ("constant_charge_voltage", "constant_charge_voltage", 1e6),
    (
        "constant_charge_voltage_max",
        "constant_charge_voltage_max",
        1e6,
    ),
    ("precharge_current", "precharge_current", 1e6),
    ("input_current_limit", "input_current_limit", 1e6),
    ("power_now", "power_watt", 1e6),
    ("temp", "temp_celsius", 10.0),
    ("temp_alert_max", "temp_alert_max_celsius", 10.0),
    ("temp_alert_min", "temp_alert_min_celsius", 10.0),
    ("temp_ambient", "temp_ambient_celsius", 10.0),
    ("temp_ambient_max", "temp_ambient_max_celsius", 10.0),
    ("temp_ambient_min", "temp_ambient_min_celsius", 10.0),
    ("temp_max", "temp_max_celsius", 10.0),
    ("temp_min", "temp_min_celsius", 10.0),
];

/// Numeric attributes procfs parses but node_exporter does not export.
const PARSED_ONLY: &[&str] = &[
    "charge_avg",
    "current_avg",
    "energy_avg",
    "power_avg",
    "time_to_empty_avg",
    "time_to_full_avg",
    "voltage_avg",
];

/// String attributes → `node_power_supply_info` labels (after `power_supply`).
const STRINGS: &[&str] = &[
    "capacity_level",
    "charge_type",
    "health",
    "manufacturer",
    "model_name",
    "serial_number",
    "status",
    "technology",
    "type",
    "usb_type",
    "scope",
];

pub(crate) struct PowerSupplyClassCollector {
    dir: PathBuf,
    ignored: NameFilter,
}

impl PowerSupplyClassCollector {
    pub(crate) fn new(paths: &HostPaths, ignored: NameFilter) -> Self {
        PowerSupplyClassCollector {
            dir: paths.sys.join("class/power_supply"),
            ignored,
        }
    }
}

impl Collector for PowerSupplyClassCollector {
    fn name(&self) -> &'static str {
        "powersupplyclass"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let supplies = dir_names(&self.dir).map_err(|e| CollectError::io(&self.dir, e))?;
        let mut out: Vec<MetricFamily> = Vec::new();
        let push = |out: &mut Vec<MetricFamily>,
                    name: String,
                    help: String,
                    l: Vec<(&'static str, String)>,
                    v: f64| {
            match out.iter_mut().find(|f| f.name == name) {
                Some(f) => {
                    f.push(l, v);
                }
                None => {
                    let mut f = MetricFamily::new(name, help, MetricType::Gauge);
                    f.push(l, v);
                    out.push(f);
                }
            }
        };
        for supply in supplies {
            let dir = self.dir.join(&supply);
            let mut numbers: Vec<(usize, i64)> = Vec::new();
            let mut strings: Vec<(&'static str, String)> = vec![("power_supply", supply.clone())];
            let entries = std::fs::read_dir(&dir).map_err(|e| CollectError::io(&dir, e))?;
            let mut files: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect();
            files.sort();
            for file in files {
                let idx = NUMERIC.iter().position(|(f, _, _)| *f == file);
                let is_str = STRINGS.contains(&file.as_str());
                if idx.is_none() && !is_str && !PARSED_ONLY.contains(&file.as_str()) {
                    continue;
                }
                let path = dir.join(&file);
                let Some(value) = sys_read(&path) else {
                    continue;
                };
                if is_str {
                    if !value.is_empty() {
                        let label = STRINGS.iter().find(|s| **s == file).expect("listed");
                        strings.push((label, value));
                    }
                    continue;
                }
                let v = go_int(&value).ok_or_else(|| {
                    CollectError::parse(&path, format!("not an integer: {value:?}"))
                })?;
                if let Some(i) = idx {
                    numbers.push((i, v));
                }
            }
            if !self.ignored.allows(&supply) {
                continue;
            }
            for (i, v) in numbers {
                let (_, suffix, div) = NUMERIC[i];
                push(
                    &mut out,
                    format!("node_power_supply_{suffix}"),
                    format!("{suffix} value of /sys/class/power_supply/<power_supply>."),
                    vec![("power_supply", supply.clone())],
                    v as f64 / div,
                );
            }
            push(
                &mut out,
                "node_power_supply_info".into(),
                "info of /sys/class/power_supply/<power_supply>.".into(),
                strings,
                1.0,
            );
        }
        Ok(out)
    }
}
