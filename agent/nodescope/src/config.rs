//! The agent's configuration: TOML, `deny_unknown_fields` everywhere, environment
//! overrides for the listen address and host root, and validation that reports *every*
//! problem with the key it concerns.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodescope_component::{AgentSettings, Component, ValidateContext};
use nodescope_exporter_loki::LokiConfig;
use nodescope_exporter_otlp::OtlpConfig;
use nodescope_exporter_pyroscope::PyroscopeConfig;
use nodescope_exporter_remote_write::RemoteWriteConfig;
use nodescope_host::HostMetricsConfig;
use nodescope_httpguard::SecurityConfig;
use nodescope_k8s::KubernetesConfig;
use nodescope_logs::LogsConfig;
use nodescope_model::config::{ConfigIssue, Issues};
use nodescope_netprobe::NetworkConfig;
use nodescope_profiler::ProfilingConfig;
use nodescope_recorder::RecorderConfig;
use nodescope_ui::UiConfig;
use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = include_str!("default.toml");
pub const ENV_LISTEN: &str = "NODESCOPE_LISTEN";
pub const ENV_HOST_ROOT: &str = "NODESCOPE_HOST_ROOT";
pub const ENV_NODE_NAME: &str = "NODE_NAME";

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub host: HostMetricsConfig,
    pub network: NetworkConfig,
    pub profiling: ProfilingConfig,
    pub logs: LogsConfig,
    pub recorder: RecorderConfig,
    pub exporters: ExportersConfig,
    pub kubernetes: KubernetesConfig,
    pub http: HttpConfig,
    pub ui: UiConfig,
}

/// `[http]`: the agent's HTTP API.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `[http.security]`: credentials off loopback, request limits, profile rate limit.
    pub security: SecurityConfig,
}

/// `[exporters.*]`: every push exporter is off unless its table says `enabled = true`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportersConfig {
    pub otlp: OtlpConfig,
    pub loki: LokiConfig,
    pub remote_write: RemoteWriteConfig,
    pub pyroscope: PyroscopeConfig,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// HTTP listen address (`NODESCOPE_LISTEN` overrides).
    pub listen: String,
    /// Where the host's filesystem is visible: `/` on a bare host, `/host` in a container
    /// with /proc, /sys and / mounted at /host/proc, /host/sys, /host/root
    /// (`NODESCOPE_HOST_ROOT` overrides).
    pub host_root: PathBuf,
    /// Upper bound for one collector run; a run past it is abandoned and reported.
    #[serde(with = "humantime_serde")]
    pub collector_timeout: Duration,
    /// How often collectors feed push exporters (scrapes collect on demand).
    #[serde(with = "humantime_serde")]
    pub collect_interval: Duration,
    /// How long shutdown may take to flush exporters.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Capacity (in signals) of the pipeline intake and of each exporter queue.
    pub queue_capacity: usize,
    /// Node name for resource attributes; defaults to $NODE_NAME, then the hostname.
    pub node_name: Option<String>,
    pub log_level: String,
    pub log_format: LogFormat,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: "127.0.0.1:9780".into(),
            host_root: PathBuf::from("/"),
            collector_timeout: Duration::from_secs(5),
            collect_interval: Duration::from_secs(15),
            shutdown_timeout: Duration::from_secs(10),
            queue_capacity: 1024,
            node_name: None,
            log_level: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

/// A configuration that failed to load: every problem found, each naming its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not a regular file, too large, unreadable: the message names the path and why.
    #[error("cannot read the configuration: {0}")]
    Read(nodescope_model::files::ReadFileError),
    #[error("{origin}: TOML syntax error: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: {} problem(s):\n{}", issues.len(), render(issues))]
    Invalid {
        origin: String,
        issues: Vec<ConfigIssue>,
    },
}

fn render(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Bound on the remove-and-retry loop that finds every deserialization error.
const MAX_SCHEMA_ERRORS: usize = 64;

/// What validation checks besides the file itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checks {
    /// Also what `run` depends on: the host root, token and TLS files, WAL directories.
    /// `run` and `nodescope validate` use this, so what `validate` accepts, `run` starts.
    Environment,
    /// Syntax, types and values only (`nodescope validate --offline`: a config checked on a
    /// machine other than the node it is for).
    Offline,
}

/// Which settings came from the environment (their errors name the variable).
#[derive(Debug, Default, Clone, Copy)]
struct FromEnv {
    listen: bool,
    host_root: bool,
}

impl Config {
    /// Loads `path` (or the embedded default when `None`), applies the environment
    /// overrides (`NODESCOPE_LISTEN`, `NODESCOPE_HOST_ROOT`, read through `env`), then
    /// validates the result once: a file that listens on 0.0.0.0 without a token is
    /// accepted when the environment moves the listener to loopback, and vice versa.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        checks: Checks,
    ) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let text = nodescope_model::files::read_capped_text(
                    path,
                    nodescope_model::files::MAX_CONFIG_BYTES,
                    "config file",
                )
                .map_err(ConfigError::Read)?;
                Config::parse_with_env(&text, &path.display().to_string(), env, checks)
            }
            None => Config::parse_with_env(DEFAULT_CONFIG, "embedded default config", env, checks),
        }
    }

    /// Parses and validates (no environment overrides).
    #[cfg(test)]
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, origin, |_| None, Checks::Offline)
    }

    /// Parses, applies the environment overrides, validates. Schema errors (unknown key,
    /// wrong type) are all collected: after each one the offending key is removed and
    /// parsing is retried, so a file with five mistakes gets five messages, each with its
    /// dotted key path.
    fn parse_with_env(
        text: &str,
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
        checks: Checks,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_string(),
            message: e.message().to_string() + &span_hint(text, e.span()),
        })?;
        let mut issues = Issues::default();
        let mut config = loop {
            let value = toml::Value::Table(table.clone());
            match serde_path_to_error::deserialize::<_, Config>(value) {
                Ok(c) => break c,
                Err(err) => {
                    let path = err.path().to_string();
                    let inner = err.into_inner();
                    let message = inner.message().to_string();
                    let (key, removed) = locate_and_remove(&mut table, &path, &message);
                    issues.push(key, message);
                    if !removed || issues.list.len() >= MAX_SCHEMA_ERRORS {
                        return Err(ConfigError::Invalid {
                            origin: origin.to_string(),
                            issues: issues.list,
                        });
                    }
                }
            }
        };
        let from_env = config.override_from_env(env);
        config.validate(from_env, checks, &mut issues);
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                issues: issues.list,
            })
        }
    }

    /// The embedded default configuration.
    #[cfg(test)]
    pub fn embedded_default() -> Config {
        Config::parse(DEFAULT_CONFIG, "embedded default config")
            .expect("the embedded default config is valid (checked by a unit test)")
    }

    /// Applies `NODESCOPE_LISTEN` / `NODESCOPE_HOST_ROOT` (empty values are ignored).
    fn override_from_env(&mut self, get: impl Fn(&str) -> Option<String>) -> FromEnv {
        let mut from = FromEnv::default();
        if let Some(listen) = get(ENV_LISTEN).filter(|s| !s.is_empty()) {
            self.agent.listen = listen;
            from.listen = true;
        }
        if let Some(root) = get(ENV_HOST_ROOT).filter(|s| !s.is_empty()) {
            self.agent.host_root = PathBuf::from(root);
            from.host_root = true;
        }
        from
    }

    fn validate(&self, from_env: FromEnv, checks: Checks, issues: &mut Issues) {
        let a = &self.agent;
        let listen_key = if from_env.listen {
            ENV_LISTEN
        } else {
            "agent.listen"
        };
        let root_key = if from_env.host_root {
            ENV_HOST_ROOT
        } else {
            "agent.host_root"
        };
        validate_listen(&a.listen, listen_key, issues);
        issues.check(
            a.host_root.is_absolute(),
            root_key,
            format!("must be an absolute path, got {:?}", a.host_root),
        );
        issues.check(
            a.collector_timeout >= Duration::from_millis(10)
                && a.collector_timeout <= Duration::from_secs(300),
            "agent.collector_timeout",
            "must be between 10ms and 5m",
        );
        issues.check(
            a.collect_interval >= Duration::from_secs(1),
            "agent.collect_interval",
            "must be at least 1s",
        );
        issues.check(
            a.shutdown_timeout >= Duration::from_millis(100)
                && a.shutdown_timeout <= Duration::from_secs(600),
            "agent.shutdown_timeout",
            "must be between 100ms and 10m",
        );
        issues.check(
            (16..=1_000_000).contains(&a.queue_capacity),
            "agent.queue_capacity",
            "must be between 16 and 1000000",
        );
        issues.check(
            a.log_level
                .parse::<tracing_subscriber::filter::EnvFilter>()
                .is_ok()
                || tracing_subscriber::EnvFilter::try_new(&a.log_level).is_ok(),
            "agent.log_level",
            "is not a valid level or filter (e.g. info, debug, nodescope=debug)",
        );
        if let Some(n) = &a.node_name {
            issues.check(!n.trim().is_empty(), "agent.node_name", "must not be empty");
        }
        self.http.security.validate("http.security", issues);
        if let Ok(addr) = self.agent.listen.parse::<SocketAddr>() {
            self.http.security.validate_for_listen(
                nodescope_httpguard::is_loopback(&addr),
                "http.security",
                issues,
            );
        }
        // What `run` reads before serving (token file, TLS material) is read here too, so
        // that what `validate` accepts, `run` starts.
        let sec = &self.http.security;
        let environment = checks == Checks::Environment;
        if environment && (sec.token_file.is_some() || sec.tls.is_some()) {
            if let Err(e) = sec.build() {
                issues.push("http.security", e.to_string());
            }
        }
        let ctx = ValidateContext {
            agent: self.agent_settings(),
            host_root_key: root_key,
            environment,
        };
        for c in self.components() {
            if c.enabled() || c.validate_when_disabled() {
                c.validate(&ctx, issues);
            }
        }
    }

    /// Every component of the agent, in build order: exporters first (so producers know
    /// which signals are wanted), then Kubernetes (the pod lookup), then the producers.
    /// `app.rs` builds this list; `validate` checks it.
    pub fn components(&self) -> Vec<&dyn Component> {
        let e = &self.exporters;
        vec![
            &e.otlp,
            &e.loki,
            &e.remote_write,
            &e.pyroscope,
            &self.kubernetes,
            &self.host,
            &self.network,
            // Before the profiler: the recorder provides the sample sink it feeds.
            &self.recorder,
            &self.profiling,
            &self.logs,
            &self.ui,
        ]
    }

    /// `[agent]` as every component sees it (after the environment overrides).
    pub fn agent_settings(&self) -> AgentSettings {
        let a = &self.agent;
        AgentSettings {
            listen: self.listen_addr(),
            host_root: a.host_root.clone(),
            collect_interval: a.collect_interval,
            collector_timeout: a.collector_timeout,
            shutdown_timeout: a.shutdown_timeout,
            queue_capacity: a.queue_capacity,
            node_name: a
                .node_name
                .clone()
                .or_else(|| std::env::var(ENV_NODE_NAME).ok().filter(|s| !s.is_empty())),
        }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        // Validated in `validate`/`apply_env`.
        self.agent
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9780)))
    }
}

fn validate_listen(listen: &str, key: &str, issues: &mut Issues) {
    if listen.parse::<SocketAddr>().is_err() {
        issues.push(
            key,
            format!("{listen:?} is not an IP:port socket address (e.g. 127.0.0.1:9780, [::]:9780)"),
        );
    }
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let start = span.start.min(text.len());
    let line = text[..start].matches('\n').count() + 1;
    format!(" (line {line})")
}

/// Finds the key a deserialization error points at and removes it so parsing can go on.
/// Returns the dotted key to report and whether anything was removed.
fn locate_and_remove(table: &mut toml::Table, path: &str, message: &str) -> (String, bool) {
    let mut segments: Vec<String> = if path.is_empty() || path == "." {
        Vec::new()
    } else {
        path.split('.').map(str::to_string).collect()
    };
    // Depending on the deserializer, the path of an unknown field may stop at the
    // containing table; the key itself is in the message: "unknown field `foo`, ...".
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            let field = &rest[..end];
            if segments.last().map(String::as_str) != Some(field) {
                segments.push(field.to_string());
            }
        }
    }
    let key = if segments.is_empty() {
        "(top level)".to_string()
    } else {
        segments.join(".")
    };
    let removed = remove_path(table, &segments);
    (key, removed)
}

fn remove_path(table: &mut toml::Table, segments: &[String]) -> bool {
    match segments {
        [] => false,
        [last] => table.remove(last).is_some(),
        [first, rest @ ..] => match table.get_mut(first) {
            Some(toml::Value::Table(t)) => {
                // A path into a non-table value (e.g. an array element) ends here: remove
                // the nearest table key we can reach.
                if remove_path(t, rest) {
                    true
                } else {
                    table.remove(first).is_some()
                }
            }
            Some(_) => table.remove(first).is_some(),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default();
        assert_eq!(c.agent.listen, "127.0.0.1:9780");
        assert!(c.host.enabled && c.network.enabled && c.profiling.enabled);
        assert!(!c.exporters.otlp.enabled && !c.exporters.loki.enabled);
        assert!(!c.exporters.remote_write.enabled && !c.exporters.pyroscope.enabled);
    }

    #[test]
    fn every_schema_error_is_reported_with_its_key() {
        let text = r#"
[agent]
listen = 9780
bogus = true
collector_timeout = "soon"

[host]
enabled = "yes"

[nonsense]
x = 1
"#;
        let err = Config::parse(text, "t.toml").unwrap_err();
        let ConfigError::Invalid { issues, .. } = &err else {
            panic!("expected Invalid, got {err}");
        };
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        for k in [
            "agent.listen",
            "agent.bogus",
            "agent.collector_timeout",
            "host.enabled",
            "nonsense",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}\n{err}");
        }
        let text = err.to_string();
        assert!(text.contains("unknown field `bogus`"), "{text}");
        assert!(text.contains("invalid type"), "{text}");
    }

    #[test]
    fn semantic_errors_are_all_collected() {
        let text = r#"
[agent]
listen = "not-an-address"
host_root = "relative/path"
collect_interval = "10ms"
queue_capacity = 1
"#;
        let err = Config::parse(text, "t.toml").unwrap_err();
        let ConfigError::Invalid { issues, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(issues.len(), 4, "{err}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let err = Config::parse("[agent]\nlisten = \n", "t.toml").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }));
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn env_overrides_listen_and_root() {
        let c = Config::load(
            None,
            |k| match k {
                ENV_LISTEN => Some("127.0.0.2:9999".into()),
                ENV_HOST_ROOT => Some("/host".into()),
                _ => None,
            },
            Checks::Offline,
        )
        .unwrap();
        assert_eq!(c.listen_addr().port(), 9999);
        assert_eq!(c.agent.host_root, PathBuf::from("/host"));
        let err = Config::load(
            None,
            |k| (k == ENV_LISTEN).then(|| "nope".to_string()),
            Checks::Offline,
        )
        .unwrap_err();
        assert!(err.to_string().contains(ENV_LISTEN), "{err}");
        let err = Config::load(
            None,
            |k| (k == ENV_HOST_ROOT).then(|| "host".to_string()),
            Checks::Offline,
        )
        .unwrap_err();
        assert!(err.to_string().contains(ENV_HOST_ROOT), "{err}");
        // Off loopback without credentials, /debug and /api would be unreachable: refused.
        let err = Config::load(
            None,
            |k| (k == ENV_LISTEN).then(|| "0.0.0.0:9780".to_string()),
            Checks::Offline,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("http.security.token_file"),
            "{err}"
        );
    }

    /// The environment is applied before validation: a file listening on 0.0.0.0 with no
    /// credentials is valid once NODESCOPE_LISTEN moves it to loopback (the systemd unit
    /// and the DaemonSet set the variable), and a loopback file moved off loopback by the
    /// environment is refused.
    #[test]
    fn env_is_applied_before_validation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[agent]\nlisten = \"0.0.0.0:9780\"\n").unwrap();
        let err = Config::load(Some(&path), |_| None, Checks::Offline).unwrap_err();
        assert!(err.to_string().contains("http.security"), "{err}");
        let c = Config::load(
            Some(&path),
            |k| (k == ENV_LISTEN).then(|| "127.0.0.1:9781".to_string()),
            Checks::Offline,
        )
        .unwrap();
        assert_eq!(c.listen_addr().port(), 9781);
        std::fs::write(&path, "[agent]\nlisten = \"127.0.0.1:9780\"\n").unwrap();
        let err = Config::load(
            Some(&path),
            |k| (k == ENV_LISTEN).then(|| "0.0.0.0:9780".to_string()),
            Checks::Offline,
        )
        .unwrap_err();
        assert!(err.to_string().contains("http.security"), "{err}");
    }

    /// Issue 16 item 6: what `validate` accepts, `run` starts. A missing host root, token
    /// file, or a WAL directory that cannot be created are reported by validation (with
    /// their keys), not first by `run`.
    #[test]
    fn environment_checks_catch_what_run_would_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let text = format!(
            "[agent]\nhost_root = \"{root}\"\n[http.security]\ntoken_file = \"{tok}\"\n\
             [exporters.loki]\nenabled = true\nendpoint = \"http://127.0.0.1:1/loki/api/v1/push\"\n\
             [exporters.loki.wal]\nenabled = true\ndir = \"{wal}\"\n",
            root = dir.path().join("no-such-root").display(),
            tok = dir.path().join("no-such-token").display(),
            wal = file.join("wal").display(),
        );
        assert!(Config::parse_with_env(&text, "t.toml", |_| None, Checks::Offline).is_ok());
        let err =
            Config::parse_with_env(&text, "t.toml", |_| None, Checks::Environment).unwrap_err();
        let ConfigError::Invalid { issues, .. } = &err else {
            panic!("{err}");
        };
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        for k in ["agent.host_root", "http.security", "exporters.loki.wal.dir"] {
            assert!(keys.contains(&k), "{k} missing in {err}");
        }
        // The environment variable is named when it set the root.
        let err = Config::load(
            None,
            |k| (k == ENV_HOST_ROOT).then(|| "/no/such/host".to_string()),
            Checks::Environment,
        )
        .unwrap_err();
        assert!(err.to_string().contains(ENV_HOST_ROOT), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,400}") {
            let _ = Config::parse(&s, "fuzz");
        }
    }
}
