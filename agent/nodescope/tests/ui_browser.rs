//! The web UI in a real browser: Debian's chromium driven by playwright-core (node), against
//! the real agent, plus the offline bundle page from file:// and the UI's auth off loopback.
//! The browser scripts live in agent/ui/tests/browser/ (their npm packages are installed
//! there by scripts/install-test-deps.sh with `npm ci`).

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ui/tests/browser")
}

/// Where screenshots go (kept for the test log): `target/ui-screenshots`.
fn screenshot_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
    std::fs::create_dir_all(&d).expect("creating target/ui-screenshots");
    d
}

/// node, chromium and the test's npm packages, or a skip (a failure under
/// NODESCOPE_STRICT_TESTS=1).
fn browser_tools(test: &str) -> Option<PathBuf> {
    let node = require_tool(test, "node", &["/usr/bin/node"])?;
    require_tool(test, "chromium", &["/usr/bin/chromium"])?;
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        skip(
            test,
            "playwright-core is not installed in agent/ui/tests/browser (scripts/install-test-deps.sh runs npm ci there)",
        );
        return None;
    }
    Some(node)
}

/// Runs `node --test <script>` with `env`; panics with its output when it fails.
fn run_node_test(node: &Path, script: &str, env: &[(&str, String)]) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(node)
        .arg("--test")
        .arg("--test-reporter=spec")
        .arg(script)
        .current_dir(browser_dir())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("NS_SCREENSHOTS", screenshot_dir())
        .env("NS_TMP", tmp.path())
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "browser test {script} failed:\n{stdout}\n{stderr}"
    );
}

fn build_burn(dir: &Path) -> Option<PathBuf> {
    let cc = require_tool("ui_pages_in_chromium", "cc", &[])?;
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../profiler/tests/workloads/burn.c");
    let out = dir.join("burn");
    let st = Command::new(cc)
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("running cc");
    assert!(st.success(), "compiling {}", src.display());
    Some(out)
}

/// Every page against the running agent (root: the network probe and the profiler need
/// eBPF): no console error or failed request, every request to the agent, real data (the
/// 75/25 workload's flame graph, the peer this test connected to), click-to-zoom, and a
/// screenshot per page in target/ui-screenshots.
#[test]
fn ui_pages_in_chromium() {
    let test = "ui_pages_in_chromium";
    if !require_root(test) {
        return;
    }
    let Some(node) = browser_tools(test) else {
        return;
    };
    let agent = start_agent("[network]\nenabled = true\n[profiling]\nenabled = true\n");
    let Some(burn_bin) = build_burn(agent.dir.path()) else {
        return;
    };
    let burn = Proc {
        child: Command::new(&burn_bin)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawning burn"),
        name: "burn",
    };

    // A peer the Network page must show (the listener keeps accepting: with the flight
    // recorder on, the browser test connects again so a recorded 10 s step holds them).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    for _ in 0..3 {
        drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = http_get(&agent.url("/api/v1/network/connections?limit=500")).unwrap();
        if body.contains(&format!("\"peer_port\":\"{port}\"")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the probe never reported port {port}: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    run_node_test(
        &node,
        "live.test.mjs",
        &[
            ("NS_AGENT", agent.url("")),
            ("NS_BURN_PID", burn.child.id().to_string()),
            ("NS_PEER_PORT", port.to_string()),
        ],
    );
    drop(burn);
}

/// The recorder-backed views against the recorder's HTTP contract: the real agent serves
/// the UI, the browser answers /api/v1/recorder/* and /api/v1/incidents* with documents
/// built per the contract (agent/ui/tests/browser/contract.test.mjs). Needs no root.
#[test]
fn recorder_views_against_the_contract_in_chromium() {
    let test = "recorder_views_against_the_contract_in_chromium";
    let Some(node) = browser_tools(test) else {
        return;
    };
    let agent = start_agent("[network]\nenabled = false\n");
    run_node_test(&node, "contract.test.mjs", &[("NS_AGENT", agent.url(""))]);
}

/// A data document per docs/incidents.md (the contract), with a hostile event body.
fn bundle_data(summary: &str) -> serde_json::Value {
    let now = 1_764_000_000.0_f64;
    let ts: Vec<f64> = (0..60).map(|i| now - 60.0 + i as f64).collect();
    let series = |names: &[&str], unit: &str, scale: f64| {
        names
            .iter()
            .enumerate()
            .map(|(k, n)| {
                json!({"name": n, "unit": unit, "values": ts.iter().enumerate()
                    .map(|(i, _)| scale * (((i + k * 7) % 13) as f64 + 1.0) / 14.0).collect::<Vec<_>>()})
            })
            .collect::<Vec<_>>()
    };
    let tl = |group: &str, names: &[&str], unit: &str, scale: f64| json!({"group": group, "step_seconds": 1, "timestamps": ts, "series": series(names, unit, scale)});
    let timelines = json!({
        "cpu": tl("cpu", &["user", "system", "iowait", "irq", "softirq", "steal", "idle"], "ratio", 0.5),
        "memory": tl("memory", &["used", "available", "cached", "buffers", "swap_used"], "bytes", 8e9),
        "psi": tl("psi", &["cpu_some", "memory_some", "memory_full", "io_some", "io_full"], "ratio", 0.2),
        "disk": tl("disk", &["read_bytes", "write_bytes"], "bytes_per_second", 5e7),
        "network": tl("network", &["receive_bytes", "transmit_bytes", "receive_drops", "transmit_errors", "tcp_retransmits"], "bytes_per_second", 1e6),
        "load": tl("load", &["load1", "load5", "load15"], "load", 4.0),
    });
    json!({
        "version": 1,
        "manifest": {"version": 1, "id": "t1", "node": "test-node", "time": now,
            "trigger": {"kind": "manual", "name": "ui-test", "reason": "browser test"},
            "window": {"from": now - 60.0, "to": now}, "baseline": {"from": now - 600.0, "to": now - 540.0},
            "kernel": "6.18.0"},
        "summary_md": summary,
        "findings": [{"rank": 1, "score": 3.2, "kind": "cpu_hog", "title": "burn_hot_75 uses 75 % of the CPU samples",
            "subject": {"workload": "host", "peer": null}, "incident_value": 0.75, "baseline_value": 0.5, "unit": "ratio",
            "evidence": ["cpu-incident.pb.gz: function burn_hot_75"]}],
        "events": [
            {"time": now - 30.0, "kind": "kernel_oom_kill", "severity": "error", "body": "</script><script>window.__pwned=1</script>", "labels": {"workload": "host"}, "attributes": {}},
            {"time": now - 10.0, "kind": "incident", "severity": "info", "body": "manual trigger", "labels": {}, "attributes": {}}
        ],
        "network": {"step_seconds": 10, "timestamps": [now - 60.0, now - 50.0], "connect_buckets": [0.001, 0.01, 0.1], "rtt_buckets": [0.0001, 0.001, 0.01],
            "rows": [{"workload": "host", "peer": "127.0.0.1", "peer_port": "8080", "direction": "outbound",
                "connects": [3, 4], "errors": {"refused": [0, 2]}, "retransmits": [0, 1], "resets": [0, 0],
                "connect_p50": [0.0005, 0.0006], "connect_p99": [0.002, 0.05], "rtt_p50": [0.0001, 0.0001], "rtt_p99": [0.0009, 0.002],
                "connect_hist": [[3, 0, 0], [2, 1, 1]], "rtt_hist": [[5, 1, 0], [4, 2, 1]]}]},
        "timelines": timelines.clone(),
        "baseline_timelines": timelines,
        "profiles": {
            "incident": "burn;main;burn_hot_75 750\nburn;main;burn_cold_25 250\n",
            "baseline": "burn;main;burn_hot_75 500\nburn;main;burn_cold_25 500\n"
        },
        "heatmap": {"hz": 19, "start": now - 60.0, "offsets_ms": (0..600).map(|i| i * 97 % 60_000).collect::<std::collections::BTreeSet<_>>(), "count": 600}
    })
}

/// The offline index.html from file:// with the network off renders its summary, findings,
/// timelines and flame graph (zoom and diff included) and requests nothing. Needs no root.
#[test]
fn bundle_page_offline_in_chromium() {
    let test = "bundle_page_offline_in_chromium";
    let Some(node) = browser_tools(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let summary = "Q1 load: the run queue grew from 1.0 to 4.2 <b>not bold</b>";
    let data = serde_json::to_string(&bundle_data(summary)).unwrap();
    let html = nodescope_ui::OfflineRenderer.render(&data);
    let file = dir.path().join("index.html");
    std::fs::write(&file, html).unwrap();
    run_node_test(
        &node,
        "bundle.test.mjs",
        &[
            ("NS_BUNDLE_HTML", file.display().to_string()),
            ("NS_BUNDLE_SUMMARY", summary.to_string()),
        ],
    );
}

/// Off loopback, /ui/ (and / and /ui/env.json) get exactly the refusals /api gets: 401
/// without a credential, 403 with a wrong one, 200 with the token.
#[test]
fn ui_is_refused_like_api_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let port = free_port();
    let cfg = dir.path().join("nodescope.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nlisten = \"0.0.0.0:{port}\"\n[network]\nenabled = false\n[profiling]\nenabled = false\n\
             [http.security]\ntoken_file = \"{}\"\n",
            token.display()
        ),
    )
    .unwrap();
    let _agent = Proc {
        child: Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn nodescope"),
        name: "nodescope",
    };
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        wait_http_ok(&format!("{base}/readyz"), Duration::from_secs(20)),
        "agent not ready"
    );
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let code = |path: &str, auth: Option<&str>| {
        let mut r = client.get(format!("{base}{path}"));
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        r.send().unwrap().status().as_u16()
    };
    for auth in [None, Some("wrong"), Some("s3cret-token")] {
        let api = code("/api/v1/status", auth);
        for path in ["/ui/", "/ui/js/core.js", "/ui/env.json", "/"] {
            let ui = code(path, auth);
            let expect = if auth == Some("s3cret-token") && path == "/" {
                307
            } else {
                api
            };
            assert_eq!(ui, expect, "{path} with {auth:?}: {ui}, /api gave {api}");
        }
    }
    assert_eq!(code("/api/v1/status", None), 401);
    assert_eq!(code("/api/v1/status", Some("wrong")), 403);
    assert_eq!(code("/ui/", Some("s3cret-token")), 200);
}
