//! `nodescope incident` against a real agent: triggers, waits for the bundle, downloads it;
//! a second one in the cooldown fails with the time left.

mod common;

use std::process::Command;

use common::*;

#[test]
fn incident_cli_downloads_the_bundle_and_reports_the_cooldown() {
    let spool = tempfile::tempdir().unwrap();
    let agent = start_agent(&format!(
        "[recorder]\nspool_dir = {:?}\ncooldown = \"10m\"\n[network]\nenabled = false\n[profiling]\nenabled = false\n",
        spool.path().display().to_string()
    ));
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", agent.port);
    let o = Command::new(BIN)
        .args([
            "incident", "--before", "2s", "--after", "1s", "--reason", "cli test", "--addr", &addr,
            "-o",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let path = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert!(path.ends_with(".tar.gz"), "{path}");
    let b = std::fs::read(&path).unwrap();
    assert_eq!(&b[..2], &[0x1f, 0x8b]);
    let list = Command::new("tar").arg("-tzf").arg(&path).output().unwrap();
    let names = String::from_utf8_lossy(&list.stdout);
    for f in [
        "manifest.json",
        "metrics.om",
        "cpu-incident.pb.gz",
        "summary.md",
        "findings.json",
        "data.json",
    ] {
        assert!(names.contains(f), "{f} not in {names}");
    }
    let o = Command::new(BIN)
        .args(["incident", "--no-wait", "--addr", &addr])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("HTTP 429") && err.contains("cooldown:") && err.contains("s left"),
        "{err}"
    );
}
