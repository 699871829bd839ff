//! `[recorder]`: the flight recorder's configuration.

use std::path::PathBuf;
use std::time::Duration;

use nodescope_model::config::Issues;
use serde::{Deserialize, Deserializer};

/// A byte size written `"64MiB"`, `"500MB"`, `"1GiB"` or a plain number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size such as \"64MiB\""))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            u => {
                return Err(format!(
                    "{s:?}: unknown unit {u:?} (B, KiB, MiB, GiB, KB, MB, GB)"
                ))
            }
        };
        let v = n * mult as f64;
        if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 / 2.0 {
            return Err(format!("{s:?} is out of range"));
        }
        Ok(ByteSize(v as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// What a rule watches.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleMetric {
    /// Node CPU busy (non-idle) ratio, 0–1, every second.
    Cpu,
    /// Node PSI "some" ratio of CPU / memory / I/O, every second.
    PsiCpu,
    PsiMemory,
    PsiIo,
    /// CPU of one workload in cores, every 10 s.
    WorkloadCpu,
    /// TCP retransmits per second of one workload, every 10 s.
    RetransmitRate,
    /// p99 TCP connect latency of one workload in seconds over the last 10 s.
    ConnectP99,
    /// OOM kills in one workload during the last 10 s.
    OomKill,
}

impl RuleMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleMetric::Cpu => "cpu",
            RuleMetric::PsiCpu => "psi_cpu",
            RuleMetric::PsiMemory => "psi_memory",
            RuleMetric::PsiIo => "psi_io",
            RuleMetric::WorkloadCpu => "workload_cpu",
            RuleMetric::RetransmitRate => "retransmit_rate",
            RuleMetric::ConnectP99 => "connect_p99",
            RuleMetric::OomKill => "oom_kill",
        }
    }
    pub fn per_workload(self) -> bool {
        matches!(
            self,
            RuleMetric::WorkloadCpu
                | RuleMetric::RetransmitRate
                | RuleMetric::ConnectP99
                | RuleMetric::OomKill
        )
    }
}

/// `[[recorder.rules]]`: fires an incident when `metric` stays above `threshold` for
/// `hold`, then not again for `cooldown`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    pub metric: RuleMetric,
    pub threshold: f64,
    #[serde(with = "humantime_serde", default = "default_hold")]
    pub hold: Duration,
    #[serde(with = "humantime_serde", default = "default_rule_cooldown")]
    pub cooldown: Duration,
    /// Only workloads whose name contains this (per-workload metrics).
    #[serde(default)]
    pub workload: Option<String>,
    #[serde(with = "humantime_serde", default)]
    pub before: Option<Duration>,
    #[serde(with = "humantime_serde", default)]
    pub after: Option<Duration>,
}

fn default_hold() -> Duration {
    Duration::from_secs(30)
}
fn default_rule_cooldown() -> Duration {
    Duration::from_secs(20 * 60)
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecorderConfig {
    pub enabled: bool,
    /// Hard cap of everything the rings hold.
    pub memory_cap: ByteSize,
    /// Collectors sampled every second (the rest of the host is not recorded).
    pub host_collectors: Vec<String>,
    /// How often workloads (the `cgroup` collector) and peers (`network`) are recorded.
    #[serde(with = "humantime_serde")]
    pub workload_interval: Duration,
    /// How long host metrics are kept at 1 s.
    #[serde(with = "humantime_serde")]
    pub fine_retention: Duration,
    /// How long host metrics (at 10 s), per-workload and per-peer series and sample
    /// counts are kept.
    #[serde(with = "humantime_serde")]
    pub coarse_retention: Duration,
    /// How long CPU samples keep their timestamps.
    #[serde(with = "humantime_serde")]
    pub sample_retention: Duration,
    /// Most series per ring (host, workload, network).
    pub series_cap: usize,
    /// Most distinct stacks kept.
    pub stack_cap: usize,
    pub spool_dir: PathBuf,
    pub spool_max_bundles: usize,
    pub spool_max_bytes: ByteSize,
    #[serde(with = "humantime_serde")]
    pub default_before: Duration,
    #[serde(with = "humantime_serde")]
    pub default_after: Duration,
    #[serde(with = "humantime_serde")]
    pub max_after: Duration,
    /// Least time between two incidents by hand, API or Alertmanager (429 meanwhile).
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Profiling rate asked of the profiler during the after window (0: no boost).
    pub boost_hz: u32,
    /// Ask the profiler for an off-CPU profile of the whole node during the after window
    /// (`offcpu-incident.pb.gz`). The off-CPU programs run only on demand, so there is no
    /// off-CPU history before the trigger and no off-CPU baseline.
    pub offcpu_after: bool,
    pub rules: Vec<RuleConfig>,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            enabled: true,
            memory_cap: ByteSize(64 << 20),
            host_collectors: [
                "cpu",
                "stat",
                "meminfo",
                "loadavg",
                "pressure",
                "diskstats",
                "netdev",
                "netstat",
                "vmstat",
            ]
            .map(String::from)
            .to_vec(),
            workload_interval: Duration::from_secs(10),
            fine_retention: Duration::from_secs(15 * 60),
            coarse_retention: Duration::from_secs(2 * 3600),
            sample_retention: Duration::from_secs(10 * 60),
            series_cap: 50_000,
            stack_cap: 100_000,
            spool_dir: PathBuf::from("/var/lib/nodescope/incidents"),
            spool_max_bundles: 20,
            spool_max_bytes: ByteSize(500 << 20),
            default_before: Duration::from_secs(10 * 60),
            default_after: Duration::from_secs(30),
            max_after: Duration::from_secs(10 * 60),
            cooldown: Duration::from_secs(60),
            boost_hz: 99,
            offcpu_after: true,
            rules: Vec::new(),
        }
    }
}

impl RecorderConfig {
    pub fn validate(&self, p: &str, issues: &mut Issues) {
        issues.check(
            self.memory_cap.0 >= 4 << 20 && self.memory_cap.0 <= 4 << 30,
            format!("{p}.memory_cap"),
            format!("{} bytes is outside 4MiB–4GiB", self.memory_cap.0),
        );
        issues.check(
            !self.host_collectors.is_empty(),
            format!("{p}.host_collectors"),
            "is empty: nothing would be recorded every second",
        );
        let secs = |d: Duration| d.as_secs_f64();
        issues.check(
            self.workload_interval >= Duration::from_secs(1)
                && self.workload_interval <= Duration::from_secs(60)
                && self.workload_interval.subsec_nanos() == 0,
            format!("{p}.workload_interval"),
            "must be whole seconds between 1s and 60s",
        );
        issues.check(
            self.fine_retention >= Duration::from_secs(60)
                && self.fine_retention <= self.coarse_retention,
            format!("{p}.fine_retention"),
            format!(
                "{}s must be at least 60s and at most coarse_retention",
                secs(self.fine_retention)
            ),
        );
        issues.check(
            self.coarse_retention <= Duration::from_secs(24 * 3600),
            format!("{p}.coarse_retention"),
            "must be at most 24h",
        );
        issues.check(
            self.sample_retention >= Duration::from_secs(10)
                && self.sample_retention <= self.coarse_retention,
            format!("{p}.sample_retention"),
            "must be between 10s and coarse_retention",
        );
        issues.check(
            (100..=1_000_000).contains(&self.series_cap),
            format!("{p}.series_cap"),
            format!("{} is outside 100–1000000", self.series_cap),
        );
        issues.check(
            (100..=1_000_000).contains(&self.stack_cap),
            format!("{p}.stack_cap"),
            format!("{} is outside 100–1000000", self.stack_cap),
        );
        issues.check(
            self.spool_dir.is_absolute(),
            format!("{p}.spool_dir"),
            format!("{:?} is not an absolute path", self.spool_dir),
        );
        issues.check(
            (1..=10_000).contains(&self.spool_max_bundles),
            format!("{p}.spool_max_bundles"),
            "must be 1–10000",
        );
        issues.check(
            self.spool_max_bytes.0 >= 1 << 20,
            format!("{p}.spool_max_bytes"),
            "must be at least 1MiB",
        );
        issues.check(
            self.default_before >= Duration::from_secs(1)
                && self.default_before <= self.coarse_retention,
            format!("{p}.default_before"),
            "must be between 1s and coarse_retention",
        );
        issues.check(
            self.default_after <= self.max_after,
            format!("{p}.default_after"),
            "must be at most max_after",
        );
        issues.check(
            self.max_after <= Duration::from_secs(3600),
            format!("{p}.max_after"),
            "must be at most 1h",
        );
        issues.check(
            self.cooldown <= Duration::from_secs(24 * 3600),
            format!("{p}.cooldown"),
            "must be at most 24h",
        );
        issues.check(
            self.boost_hz <= 1000,
            format!("{p}.boost_hz"),
            "must be at most 1000",
        );
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let k = format!("{p}.rules[{i}]");
            issues.check(
                !r.name.trim().is_empty() && names.insert(r.name.clone()),
                format!("{k}.name"),
                format!("{:?} is empty or used twice", r.name),
            );
            issues.check(
                r.threshold.is_finite() && r.threshold >= 0.0,
                format!("{k}.threshold"),
                format!("{} is not a finite number ≥ 0", r.threshold),
            );
            issues.check(
                r.hold <= Duration::from_secs(3600),
                format!("{k}.hold"),
                "must be at most 1h",
            );
            issues.check(
                r.cooldown >= Duration::from_secs(1),
                format!("{k}.cooldown"),
                "must be at least 1s (a flapping rule would fill the spool)",
            );
            if let Some(b) = r.before {
                issues.check(
                    b >= Duration::from_secs(1) && b <= self.coarse_retention,
                    format!("{k}.before"),
                    "must be between 1s and coarse_retention",
                );
            }
            if let Some(a) = r.after {
                issues.check(
                    a <= self.max_after,
                    format!("{k}.after"),
                    "must be at most max_after",
                );
            }
            issues.check(
                r.workload.is_none() || r.metric.per_workload(),
                format!("{k}.workload"),
                format!("{} is a node-wide metric", r.metric.as_str()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_bad_ones_say_why() {
        assert_eq!(ByteSize::parse("64MiB").unwrap().0, 64 << 20);
        assert_eq!(ByteSize::parse("1.5 KB").unwrap().0, 1500);
        assert_eq!(ByteSize::parse("100").unwrap().0, 100);
        assert!(ByteSize::parse("12 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(ByteSize::parse("lots").is_err());
    }

    #[test]
    fn every_problem_is_reported_with_its_dotted_key() {
        let c: RecorderConfig = toml::from_str(
            r#"
            memory_cap = "1MiB"
            spool_dir = "relative"
            [[rules]]
            name = "x"
            metric = "cpu"
            threshold = -1
            workload = "w"
            cooldown = "0s"
            "#,
        )
        .unwrap();
        let mut issues = Issues::default();
        c.validate("recorder", &mut issues);
        let text = format!("{issues:?}");
        for k in [
            "recorder.memory_cap",
            "recorder.spool_dir",
            "recorder.rules[0].threshold",
            "recorder.rules[0].workload",
            "recorder.rules[0].cooldown",
        ] {
            assert!(text.contains(k), "{k} missing in {text}");
        }
        let mut ok = Issues::default();
        RecorderConfig::default().validate("recorder", &mut ok);
        assert!(ok.is_empty(), "{ok:?}");
        assert!(toml::from_str::<RecorderConfig>("bogus = 1").is_err());
    }
}
