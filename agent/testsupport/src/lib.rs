//! Gates for tests that need root or an external tool.
//!
//! A developer without root (or without `prometheus` installed) sees a clear `SKIP` line
//! and the test returns early. When `NODESCOPE_STRICT_TESTS=1` (CI sets it), every such
//! skip is a failure instead, so a CI run can never pass by skipping.

use std::net::TcpListener;
use std::path::PathBuf;

pub const STRICT_ENV: &str = "NODESCOPE_STRICT_TESTS";

pub fn strict() -> bool {
    std::env::var(STRICT_ENV).is_ok_and(|v| v == "1" || v == "true")
}

/// Skips (or, in strict mode, fails) the calling test with `reason`.
pub fn skip(test: &str, reason: &str) {
    if strict() {
        panic!("{test}: cannot run: {reason} ({STRICT_ENV}=1 turns skips into failures)");
    }
    eprintln!("SKIP {test}: {reason} (set {STRICT_ENV}=1 to make this a failure)");
}

/// True when running as root; otherwise skips/fails with a message naming the test.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip(test, "needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)");
    false
}

/// Finds `tool` on PATH (or at one of `extra` absolute paths); otherwise skips/fails.
pub fn require_tool(test: &str, tool: &str, extra: &[&str]) -> Option<PathBuf> {
    for p in extra {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(tool);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    skip(
        test,
        &format!("`{tool}` is not installed (scripts/install-test-deps.sh installs it)"),
    );
    None
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// Path of a workspace binary built by cargo for integration tests (`nodescope`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .expect("testsupport lives two levels below the workspace root")
}

/// What a child test prints on success; `run_unprivileged_child` looks for it.
pub const CHILD_OK: &str = "UNPRIVILEGED CHILD OK";

/// Re-runs the current test binary as uid/gid 65534 with no capabilities (`setpriv`),
/// running only the test `child_test` with `child_env=1` set, and asserts that the child
/// succeeded and printed [`CHILD_OK`]. The child test must return early unless `child_env`
/// is set, check it is not root, and print `CHILD_OK` when its assertions passed. Needs
/// root (to drop to 65534) and `setpriv`; returns false (skipped / failed in strict mode)
/// when either is missing.
pub fn run_unprivileged_child(test: &str, child_test: &str, child_env: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    let Some(setpriv) = require_tool(test, "setpriv", &["/usr/bin/setpriv"]) else {
        return false;
    };
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&exe)
        .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
        .env(child_env, "1")
        .env_remove(STRICT_ENV)
        .output()
        .expect("running setpriv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{test}: child failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(CHILD_OK),
        "{test}: child {child_test} did not run:\n{stdout}\n{stderr}"
    );
    true
}
