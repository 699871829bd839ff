//! The binary's command-line contract: validation reports every error, start-up failures
//! are clear and non-zero, SIGTERM shuts down cleanly.

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn run_validate(toml: &str) -> (bool, String) {
    run_validate_with(toml, &[])
}

fn run_validate_with(toml: &str, flags: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, toml).unwrap();
    let out = Command::new(BIN)
        .arg("validate")
        .args(flags)
        .arg(&f)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn validate_accepts_the_documented_example() {
    // A DaemonSet's config checked off the node: --offline leaves out /host and the token.
    let example = "[agent]\nlisten = \"0.0.0.0:9780\"\nhost_root = \"/host\"\ncollector_timeout = \"2s\"\n\n[host]\nenabled = true\n\n[http.security]\ntoken_file = \"/etc/nodescope/token\"\n";
    let (ok, out) = run_validate_with(example, &["--offline"]);
    assert!(ok, "{out}");
    assert!(out.contains("configuration is valid"));
    // On this machine there is no /host and no token: plain validate says so, like run.
    let (ok, out) = run_validate(example);
    assert!(!ok, "{out}");
    assert!(out.contains("agent.host_root"), "{out}");
    assert!(out.contains("http.security"), "{out}");
}

/// Issue 16 item 6: what `validate` accepts, `run` starts, and `run`'s error names the key
/// and does not repeat the OS error.
#[test]
fn run_refuses_what_validate_refuses_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("missing-token");
    let toml = format!(
        "[agent]\nlisten = \"127.0.0.1:{}\"\n[http.security]\ntoken_file = \"{}\"\n",
        free_port(),
        token.display()
    );
    let (ok, vout) = run_validate(&toml);
    assert!(!ok, "{vout}");
    let f = dir.path().join("c.toml");
    std::fs::write(&f, &toml).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http.security"), "{err}");
    assert!(err.contains("missing-token"), "{err}");
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the OS error once: {err}"
    );
    // The same problem, reported the same way by both commands.
    let line = |s: &str| {
        s.lines()
            .find(|l| l.contains("missing-token"))
            .map(|l| l.trim().trim_start_matches("- ").to_string())
    };
    assert_eq!(line(&vout), line(&err), "validate: {vout}\nrun: {err}");
}

#[test]
fn non_loopback_listen_without_credentials_is_refused() {
    let (ok, out) = run_validate("[agent]\nlisten = \"0.0.0.0:9780\"\n");
    assert!(!ok);
    assert!(out.contains("http.security.token_file"), "{out}");
}

/// Every configuration file shipped in the repository (ConfigMaps, systemd, examples)
/// passes `nodescope validate`.
#[test]
fn shipped_config_files_validate() {
    let root = nodescope_testsupport::workspace_root();
    let mut files = Vec::new();
    let mut dirs = vec![root.join("deploy")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                files.push(p);
            }
        }
    }
    files.push(root.join("agent/nodescope/src/default.toml"));
    assert!(files.len() >= 2, "no shipped config files found: {files:?}");
    for f in files {
        // Outside a pod: NODE_NAME and the in-cluster service address are resolved at run
        // time, not by `validate`, so a DaemonSet's config checks anywhere.
        // --offline: they are written for a node (its /host mounts, its token Secret).
        let out = Command::new(BIN)
            .args(["validate", "--offline"])
            .arg(&f)
            .env_remove("NODE_NAME")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn validate_prints_every_error_with_its_key() {
    let (ok, out) = run_validate(
        "[agent]\nlisten = 9780\ncolector_timeout = \"5s\"\nshutdown_timeout = \"forever\"\n\n[host]\nenabled = \"yes\"\n\n[exporter]\nx = 1\n",
    );
    assert!(!ok, "an invalid config must fail: {out}");
    for needle in [
        "agent.listen",
        "agent.colector_timeout",
        "unknown field `colector_timeout`",
        "agent.shutdown_timeout",
        "host.enabled",
        "exporter",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn validate_reports_a_missing_file() {
    let out = Command::new(BIN)
        .args(["validate", "/nonexistent/nodescope.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/nodescope.toml"), "{err}");
}

#[test]
fn validate_refuses_devices_fifos_and_huge_files_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let fifo = dir.path().join("fifo.toml");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let huge = dir.path().join("huge.toml");
    std::fs::write(&huge, "#".repeat(2 * 1024 * 1024)).unwrap();
    let token = dir.path().join("token.toml");
    std::fs::write(
        &token,
        format!("[http.security]\ntoken_file = \"{}\"\n", fifo.display()),
    )
    .unwrap();
    for (path, want) in [
        (&zero, "not a regular file (it is a character device)"),
        (&fifo, "not a regular file (it is a FIFO)"),
        (&huge, "larger than the 1048576 bytes allowed"),
        (&token, "not a regular file (it is a FIFO)"),
    ] {
        let t0 = Instant::now();
        let out = Command::new(BIN)
            .arg("validate")
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{text}");
        assert!(text.contains(want), "{}: {text}", path.display());
        assert!(t0.elapsed() < Duration::from_secs(5), "{}", path.display());
    }
}

#[test]
fn version_flag() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

fn run_expect_failure(envs: &[(&str, String)], args: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!out.status.success(), "agent should have failed to start");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn listen_port_in_use_is_a_clear_error() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let err = run_expect_failure(&[("NODESCOPE_LISTEN", addr.clone())], &[]);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(
        err.to_lowercase().contains("address already in use"),
        "{err}"
    );
}

#[test]
fn unreadable_host_root_is_a_clear_error() {
    let port = free_port();
    let err = run_expect_failure(
        &[
            ("NODESCOPE_LISTEN", format!("127.0.0.1:{port}")),
            ("NODESCOPE_HOST_ROOT", "/nonexistent-host-root".into()),
        ],
        &[],
    );
    assert!(err.contains("/nonexistent-host-root"), "{err}");
    assert!(err.contains("host root"), "{err}");
}

#[test]
fn bad_env_listen_is_rejected() {
    let err = run_expect_failure(&[("NODESCOPE_LISTEN", "localhost".into())], &[]);
    assert!(err.contains("NODESCOPE_LISTEN"), "{err}");
}

#[test]
fn sigterm_shuts_down_cleanly_and_fast() {
    let mut agent = start_agent("");
    let pid = agent.proc.child.id() as i32;
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let started = Instant::now();
    loop {
        if let Some(status) = agent.proc.child.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "agent did not stop within its shutdown deadline"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_with_a_profile_in_flight_honours_shutdown_timeout() {
    let agent = start_agent("shutdown_timeout = \"2s\"\n");
    let mut agent = agent;
    let url = agent.url("/debug/pprof/profile?seconds=30");
    let client = std::thread::spawn(move || {
        let r = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(40))
            .build()
            .unwrap()
            .get(url)
            .send()
            .map_err(|e| e.to_string())?;
        let code = r.status().as_u16();
        let body = r.bytes().map_err(|e| e.to_string())?;
        Ok::<_, String>((code, body))
    });
    std::thread::sleep(Duration::from_millis(1500));
    let pid = agent.proc.child.id() as i32;
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let signalled = Instant::now();
    let exited = loop {
        if let Some(status) = agent.proc.child.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            break signalled.elapsed();
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "agent did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        exited < Duration::from_millis(2600),
        "shutdown_timeout is 2 s; the agent took {exited:?}"
    );
    // The profile ended early with what it had: a gzip'd pprof, not a dropped connection.
    let (code, body) = client.join().unwrap().expect("profile answered");
    assert_eq!(code, 200);
    assert!(
        body.starts_with(&[0x1f, 0x8b]),
        "not gzip: {:?}",
        &body[..body.len().min(16)]
    );
    eprintln!(
        "SIGTERM to exit: {exited:?}; profile of {} bytes",
        body.len()
    );
}

#[test]
fn embedded_default_serves_the_documented_endpoints() {
    let agent = start_agent("");
    let (code, body) = http_get(&agent.url("/healthz")).unwrap();
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, body) = http_get(&agent.url("/api/v1/status")).unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let comps = v["components"].as_array().unwrap();
    let cpu = comps
        .iter()
        .find(|c| c["name"] == "cpu" && c["kind"] == "collector")
        .expect("cpu collector in status");
    // Status appears after the first scrape; before it, collectors are `starting`.
    assert!(cpu["state"] == "starting" || cpu["state"] == "ok", "{cpu}");
    let (code, metrics) = http_get(&agent.url("/metrics")).unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("nodescope_build_info{version=\""));
    assert!(metrics.contains("nodescope_collector_success{collector=\"cpu\"} 1"));
    let (_, body) = http_get(&agent.url("/api/v1/status")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cpu = v["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "cpu")
        .unwrap()
        .clone();
    assert_eq!(cpu["state"], "ok", "{cpu}");
    assert!(cpu["last_success"].as_f64().unwrap() > 0.0);
    assert!(cpu["last_duration_seconds"].as_f64().is_some());
}
