//! Helpers for the agent's integration tests: start the real `nodescope` binary (and real
//! peers) on free loopback ports, wait for them, and stop them on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use nodescope_testsupport::{free_port, require_root, require_tool, skip};

pub const BIN: &str = env!("CARGO_BIN_EXE_nodescope");

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(url: &str) -> Result<(u16, String), String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let r = client.get(url).send().map_err(|e| e.to_string())?;
    let code = r.status().as_u16();
    Ok((code, r.text().map_err(|e| e.to_string())?))
}

pub fn wait_http_ok(url: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if matches!(http_get(url), Ok((200, _))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

pub struct Agent {
    pub proc: Proc,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Agent {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
}

/// Starts the agent with `extra_toml` appended to a config that sets the listen port.
pub fn start_agent(extra_toml: &str) -> Agent {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = dir.path().join("nodescope.toml");
    std::fs::write(
        &cfg,
        format!("[agent]\nlisten = \"127.0.0.1:{port}\"\n{extra_toml}\n"),
    )
    .expect("write config");
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nodescope");
    let agent = Agent {
        proc: Proc {
            child,
            name: "nodescope",
        },
        port,
        dir,
    };
    assert!(
        wait_http_ok(&agent.url("/readyz"), Duration::from_secs(20)),
        "nodescope did not become ready on port {port}"
    );
    agent
}

pub fn node_exporter_bin(test: &str) -> Option<PathBuf> {
    require_tool(
        test,
        "prometheus-node-exporter",
        &["/usr/bin/prometheus-node-exporter"],
    )
}

/// Starts Debian's node_exporter on a free port with its default collectors.
pub fn start_node_exporter(bin: &Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn node_exporter");
    let p = Proc {
        child,
        name: "node_exporter",
    };
    assert!(
        wait_http_ok(
            &format!("http://127.0.0.1:{port}/metrics"),
            Duration::from_secs(20)
        ),
        "node_exporter did not come up"
    );
    (p, port)
}

/// Starts a real Prometheus scraping `targets` (host:port) every second.
pub fn start_prometheus(bin: &Path, dir: &Path, targets: &[(&str, String)]) -> (Proc, u16) {
    start_prometheus_with(bin, dir, targets, &[])
}

/// As [`start_prometheus`], with extra command-line flags.
pub fn start_prometheus_with(
    bin: &Path,
    dir: &Path,
    targets: &[(&str, String)],
    extra: &[&str],
) -> (Proc, u16) {
    let port = free_port();
    let mut cfg =
        String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n");
    for (job, target) in targets {
        cfg.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        ));
    }
    let cfg_path = dir.join("prometheus.yml");
    std::fs::write(&cfg_path, cfg).expect("write prometheus.yml");
    let data = dir.join("prom-data");
    let child = Command::new(bin)
        .arg(format!("--config.file={}", cfg_path.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn prometheus");
    let p = Proc {
        child,
        name: "prometheus",
    };
    assert!(
        wait_http_ok(
            &format!("http://127.0.0.1:{port}/-/ready"),
            Duration::from_secs(30)
        ),
        "prometheus did not become ready"
    );
    (p, port)
}

/// Runs an instant PromQL query; returns the result vector.
pub fn prom_query(port: u16, q: &str) -> Vec<serde_json::Value> {
    let client = reqwest::blocking::Client::new();
    let r: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .and_then(|r| r.json())
        .unwrap_or(serde_json::Value::Null);
    r["data"]["result"].as_array().cloned().unwrap_or_default()
}
