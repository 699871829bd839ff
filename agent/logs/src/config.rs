//! `[logs]`: what to ship and the bounds. Every key has a default; with the embedded
//! default and any logs exporter, `/var/log/pods` and `/dev/kmsg` are shipped.

use std::path::PathBuf;
use std::time::Duration;

use nodescope_model::config::Issues;
use serde::Deserialize;

use crate::format::Format;
use crate::glob::Glob;
use crate::tailer::StartAt;

/// `[logs]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// On by default; the sources run only when an exporter takes logs.
    pub enabled: bool,
    /// Checkpoints (one JSON file per source).
    pub state_dir: PathBuf,
    /// Open file descriptors per source; more files are read in turns.
    pub max_open_files: usize,
    /// Files tailed per source (more are counted in `nodescope_logs_files_skipped_total`).
    pub max_tracked_files: usize,
    /// Longer lines are cut and shipped with `truncated=true`. Loki's default
    /// `max_line_size` is 256KB (256,000 bytes, go-humanize); a longer line would make Loki
    /// refuse the entry.
    pub max_line_bytes: usize,
    /// Bytes read from one file per turn (fairness between busy files).
    pub read_chunk_bytes: usize,
    /// Source bytes read but not yet acknowledged, per source.
    pub max_inflight_bytes: u64,
    /// Lines per batch handed to the pipeline.
    pub batch_lines: usize,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub discover_interval: Duration,
    /// A renamed or deleted file is closed once read to its end and acknowledged, or when
    /// it made no progress (nothing read, nothing acknowledged) for this long.
    #[serde(with = "humantime_serde")]
    pub rotated_close_after: Duration,
    /// Where files without a checkpoint start when the agent starts (files that appear
    /// later are always read from their beginning).
    pub start_at: StartAt,
    pub rate_limit: RateLimitConfig,
    pub pods: PodsConfig,
    pub files: Vec<FilesConfig>,
    pub kmsg: KmsgConfig,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            enabled: true,
            state_dir: "/var/lib/nodescope/logs".into(),
            max_open_files: 256,
            max_tracked_files: 10_000,
            max_line_bytes: 256_000,
            read_chunk_bytes: 256 * 1024,
            max_inflight_bytes: 16 << 20,
            batch_lines: 2000,
            poll_interval: Duration::from_millis(250),
            discover_interval: Duration::from_secs(1),
            rotated_close_after: Duration::from_secs(60),
            start_at: StartAt::Beginning,
            rate_limit: RateLimitConfig::default(),
            pods: PodsConfig::default(),
            files: Vec::new(),
            kmsg: KmsgConfig::default(),
        }
    }
}

/// `[logs.rate_limit]`: reading slows down (lines stay in the file); nothing is dropped.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Per file (stream), bytes per second; 0 = unlimited.
    pub file_bytes_per_sec: u64,
    /// Per source (the node's pod logs, each `[[logs.files]]`), bytes per second.
    pub source_bytes_per_sec: u64,
    /// All file sources of the node together (pod logs and every `[[logs.files]]`),
    /// bytes per second; 0 = unlimited. The kernel log is not counted.
    pub node_bytes_per_sec: u64,
}

/// `[logs.pods]`: container logs of the node's pods.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PodsConfig {
    pub enabled: bool,
    /// Under `agent.host_root`.
    pub path: PathBuf,
    /// Globs (under `path`'s root, e.g. `/var/log/pods/kube-system_*/**`) not to ship.
    pub exclude: Vec<String>,
    /// `auto` (CRI or docker json-file, from the first line), `cri` or `docker`.
    pub format: Format,
}

impl Default for PodsConfig {
    fn default() -> Self {
        PodsConfig {
            enabled: true,
            path: "/var/log/pods".into(),
            exclude: Vec::new(),
            format: Format::Auto,
        }
    }
}

/// `[[logs.files]]`: host files by glob.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// The `job` label and the source name in self metrics.
    pub name: String,
    /// Absolute globs under `agent.host_root` (`*`, `?`, `[..]`, `**`).
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub format: Format,
    pub follow_links: bool,
    pub multiline: Option<MultilineConfig>,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            name: String::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            format: Format::Raw,
            follow_links: true,
            multiline: None,
        }
    }
}

/// `[logs.files.multiline]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MultilineConfig {
    /// A regular expression matching the first line of a record.
    pub start: String,
    pub max_lines: usize,
    pub max_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for MultilineConfig {
    fn default() -> Self {
        MultilineConfig {
            start: String::new(),
            max_lines: 500,
            max_bytes: 256 * 1024,
            timeout: Duration::from_secs(3),
        }
    }
}

/// `[logs.kmsg]`: the kernel log.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KmsgConfig {
    pub enabled: bool,
    /// Not under the host root: the kernel log is the kernel's, wherever it is read.
    pub path: PathBuf,
}

impl Default for KmsgConfig {
    fn default() -> Self {
        KmsgConfig {
            enabled: true,
            path: "/dev/kmsg".into(),
        }
    }
}

impl LogsConfig {
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        issues.check(
            self.state_dir.is_absolute(),
            format!("{prefix}.state_dir"),
            "must be an absolute path",
        );
        for (v, k) in [
            (self.max_open_files, "max_open_files"),
            (self.max_tracked_files, "max_tracked_files"),
            (self.max_line_bytes, "max_line_bytes"),
            (self.read_chunk_bytes, "read_chunk_bytes"),
            (self.batch_lines, "batch_lines"),
        ] {
            issues.check(v > 0, format!("{prefix}.{k}"), "must be greater than 0");
        }
        issues.check(
            self.max_inflight_bytes >= self.read_chunk_bytes as u64,
            format!("{prefix}.max_inflight_bytes"),
            "must be at least read_chunk_bytes",
        );
        issues.check(
            !self.poll_interval.is_zero(),
            format!("{prefix}.poll_interval"),
            "must be greater than 0",
        );
        issues.check(
            self.pods.path.is_absolute(),
            format!("{prefix}.pods.path"),
            "must be an absolute path",
        );
        for (i, g) in self.pods.exclude.iter().enumerate() {
            if let Err(e) = Glob::new(g) {
                issues.push(format!("{prefix}.pods.exclude[{i}]"), e.to_string());
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, f) in self.files.iter().enumerate() {
            let p = format!("{prefix}.files[{i}]");
            issues.check(
                !f.name.is_empty()
                    && f.name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                format!("{p}.name"),
                "must be a non-empty name of letters, digits, '_' and '-'",
            );
            issues.check(
                names.insert(f.name.clone()),
                format!("{p}.name"),
                "is used by another [[logs.files]]",
            );
            issues.check(
                !f.include.is_empty(),
                format!("{p}.include"),
                "must list at least one glob",
            );
            for (j, g) in f.include.iter().chain(&f.exclude).enumerate() {
                if let Err(e) = Glob::new(g) {
                    issues.push(format!("{p}.include/exclude[{j}]"), e.to_string());
                }
            }
            if let Some(m) = &f.multiline {
                if let Err(e) = regex::Regex::new(&m.start) {
                    issues.push(format!("{p}.multiline.start"), e.to_string());
                }
                issues.check(
                    !m.start.is_empty(),
                    format!("{p}.multiline.start"),
                    "must not be empty",
                );
                issues.check(
                    m.max_lines > 0 && m.max_bytes > 0,
                    format!("{p}.multiline"),
                    "max_lines and max_bytes must be greater than 0",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem() {
        let c: LogsConfig = toml::from_str(
            r#"
            state_dir = "relative"
            max_open_files = 0
            [[files]]
            name = "bad name"
            include = ["var/log/x"]
            multiline = { start = "(" }
            "#,
        )
        .unwrap();
        let mut issues = Issues::default();
        c.validate("logs", &mut issues);
        let keys: Vec<String> = issues.list.iter().map(|i| i.key.clone()).collect();
        for k in [
            "logs.state_dir",
            "logs.max_open_files",
            "logs.files[0].name",
            "logs.files[0].include/exclude[0]",
            "logs.files[0].multiline.start",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing in {keys:?}");
        }
        let mut issues = Issues::default();
        LogsConfig::default().validate("logs", &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
    }
}
