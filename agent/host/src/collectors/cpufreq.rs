//! `cpufreq`: `node_cpu_frequency{,_min,_max}_hertz{cpu}` and
//! `node_cpu_scaling_frequency{,_min,_max}_hertz{cpu}` from
//! `<sys>/devices/system/cpu/cpuN/cpufreq/*` (kHz × 1000), as procfs' `SystemCpufreq`.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{absent, glob_digit, read_small, read_uint};
use crate::HostPaths;

const FILES: &[(&str, &str, &str)] = &[
    (
        "cpuinfo_cur_freq",
        "node_cpu_frequency_hertz",
        "Current cpu thread frequency in hertz.",
    ),
    (
        "cpuinfo_min_freq",
        "node_cpu_frequency_min_hertz",
        "Minimum cpu thread frequency in hertz.",
    ),
    (
        "cpuinfo_max_freq",
        "node_cpu_frequency_max_hertz",
        "Maximum cpu thread frequency in hertz.",
    ),
    (
        "scaling_cur_freq",
        "node_cpu_scaling_frequency_hertz",
        "Current scaled CPU thread frequency in hertz.",
    ),
    (
        "scaling_min_freq",
        "node_cpu_scaling_frequency_min_hertz",
        "Minimum scaled CPU thread frequency in hertz.",
    ),
    (
        "scaling_max_freq",
        "node_cpu_scaling_frequency_max_hertz",
        "Maximum scaled CPU thread frequency in hertz.",
    ),
];

/// Attributes procfs requires to be readable (a CPU lacking one fails the collect).
const REQUIRED: &[&str] = &[
    "scaling_available_governors",
    "scaling_driver",
    "scaling_governor",
    "related_cpus",
    "scaling_setspeed",
];

pub(crate) struct CpufreqCollector {
    dir: PathBuf,
}

impl CpufreqCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        CpufreqCollector {
            dir: paths.sys.join("devices/system/cpu"),
        }
    }
}

impl Collector for CpufreqCollector {
    fn name(&self) -> &'static str {
        "cpufreq"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let mut fams: Vec<MetricFamily> = FILES
            .iter()
            .map(|(_, n, h)| MetricFamily::new(*n, *h, MetricType::Gauge))
            .collect();
        for (cpu_dir, cpu) in glob_digit(&self.dir, "cpu") {
            let dir = cpu_dir.join("cpufreq");
            if !dir.exists() {
                continue;
            }
            let mut values = Vec::with_capacity(FILES.len());
            for (file, _, _) in FILES {
                match read_uint(&dir.join(file)) {
                    Ok(v) => values.push(Some(v)),
                    Err(e) if absent(&e) => values.push(None),
                    Err(e) => return Err(e),
                }
            }
            for f in REQUIRED {
                read_small(&dir.join(f))?;
            }
            for (fam, v) in fams.iter_mut().zip(values) {
                if let Some(v) = v {
                    fam.push([("cpu", cpu.clone())], v as f64 * 1000.0);
                }
            }
        }
        fams.retain(|f| !f.points.is_empty());
        Ok(fams)
    }
}
