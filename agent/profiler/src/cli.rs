//! `nodescope profile ...`: asks the local agent's HTTP API for a profile and writes it.

use std::path::PathBuf;
use std::time::Duration;

use crate::output::Format;

/// Arguments of `nodescope profile`.
#[derive(clap::Args, Clone, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "container", "cgroup", "all"])))]
pub struct ProfileArgs {
    /// Profile this process (all its threads).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Profile this container (id or a prefix of at least 12 hex characters).
    #[arg(long)]
    pub container: Option<String>,
    /// Profile this cgroup v2 path (e.g. /system.slice/nginx.service).
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Profile every process on the node.
    #[arg(long)]
    pub all: bool,
    /// Duration in seconds.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Sampling frequency (default: the agent's `profiling.default_hz`, 99).
    #[arg(long)]
    pub hz: Option<u32>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Pprof)]
    pub format: Format,
    /// What to measure: `cpu` (on-CPU samples), `offcpu` (time off CPU: blocked, waking,
    /// preempted) or `wall` (both, in nanoseconds).
    #[arg(long = "type", default_value = "cpu", value_parser = ["cpu", "offcpu", "wall"])]
    pub kind: String,
    /// Output file (`-` for stdout).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Address of the local agent's HTTP API.
    #[arg(long, default_value = "127.0.0.1:9780")]
    pub addr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileCliError {
    #[error("invalid --addr {addr:?}: {reason}")]
    Addr { addr: String, reason: String },
    #[error("cannot reach the agent at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the agent refused the profile ({status}): {message}")]
    Agent { status: u16, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ProfileArgs {
    /// The request URL for these arguments.
    pub fn url(&self) -> Result<String, ProfileCliError> {
        let addr = self.addr.trim();
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{addr}")
        };
        let parsed = reqwest::Url::parse(&base).map_err(|e| ProfileCliError::Addr {
            addr: self.addr.clone(),
            reason: e.to_string(),
        })?;
        let mut url = parsed
            .join("/debug/pprof/profile")
            .map_err(|e| ProfileCliError::Addr {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(p) = self.pid {
                q.append_pair("pid", &p.to_string());
            }
            if let Some(c) = &self.container {
                q.append_pair("container", c);
            }
            if let Some(c) = &self.cgroup {
                q.append_pair("cgroup", c);
            }
            if self.all {
                q.append_pair("all", "true");
            }
            q.append_pair("seconds", &self.seconds.to_string());
            if let Some(h) = self.hz {
                q.append_pair("hz", &h.to_string());
            }
            q.append_pair("format", self.format.as_str());
            if self.kind != "cpu" {
                q.append_pair("type", &self.kind);
            }
        }
        Ok(url.to_string())
    }
}

/// Requests the profile from the agent and writes it to `args.output`.
pub async fn run_profile_cli(args: &ProfileArgs) -> Result<(), ProfileCliError> {
    let url = args.url()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.seconds.saturating_add(60)))
        .build()
        .map_err(|e| ProfileCliError::Connect {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| ProfileCliError::Connect {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| ProfileCliError::Connect {
        url: url.clone(),
        reason: format!("reading the response: {e}"),
    })?;
    if !status.is_success() {
        return Err(ProfileCliError::Agent {
            status: status.as_u16(),
            message: String::from_utf8_lossy(&body).trim().to_string(),
        });
    }
    if args.output.as_os_str() == "-" {
        use std::io::Write;
        std::io::stdout()
            .write_all(&body)
            .map_err(|source| ProfileCliError::Write {
                path: args.output.clone(),
                source,
            })?;
    } else {
        tokio::fs::write(&args.output, &body)
            .await
            .map_err(|source| ProfileCliError::Write {
                path: args.output.clone(),
                source,
            })?;
    }
    tracing::info!(bytes = body.len(), output = %args.output.display(), "profile written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        p: ProfileArgs,
    }

    #[test]
    fn builds_the_url() {
        let c = Cli::try_parse_from([
            "x",
            "--pid",
            "12",
            "--seconds",
            "5",
            "--format",
            "svg",
            "-o",
            "f.svg",
        ])
        .unwrap();
        assert_eq!(
            c.p.url().unwrap(),
            "http://127.0.0.1:9780/debug/pprof/profile?pid=12&seconds=5&format=svg"
        );
        let c = Cli::try_parse_from([
            "x",
            "--cgroup",
            "/a b",
            "--hz",
            "49",
            "-o",
            "-",
            "--addr",
            "http://h:1/",
        ])
        .unwrap();
        assert_eq!(
            c.p.url().unwrap(),
            "http://h:1/debug/pprof/profile?cgroup=%2Fa+b&seconds=30&hz=49&format=pprof"
        );
        let c = Cli::try_parse_from(["x", "--all", "--type", "offcpu", "-o", "-"]).unwrap();
        assert_eq!(
            c.p.url().unwrap(),
            "http://127.0.0.1:9780/debug/pprof/profile?all=true&seconds=30&format=pprof&type=offcpu"
        );
        assert!(Cli::try_parse_from(["x", "--all", "--type", "bogus", "-o", "-"]).is_err());
    }

    #[test]
    fn needs_exactly_one_target() {
        assert!(Cli::try_parse_from(["x", "-o", "f"]).is_err());
        assert!(Cli::try_parse_from(["x", "--pid", "1", "--all", "-o", "f"]).is_err());
        assert!(Cli::try_parse_from(["x", "--all", "-o", "f"]).is_ok());
    }

    #[tokio::test]
    async fn unreachable_agent_is_a_clear_error() {
        let port = nodescope_testsupport::free_port();
        let c = Cli::try_parse_from([
            "x",
            "--all",
            "-o",
            "-",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--seconds",
            "1",
        ])
        .unwrap();
        let e = run_profile_cli(&c.p).await.unwrap_err();
        assert!(matches!(e, ProfileCliError::Connect { .. }), "{e}");
    }
}
