//! `go tool pprof` (the reference reader) reads what the builder writes: sample types,
//! values, inlined frames, mappings with build ids, labels, comments.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nodescope_model::feeds::Frame;
use nodescope_pprof::{Label, Location, Mapping, ProfileBuilder};

const GO_PATHS: &[&str] = &["/usr/lib/go/bin/go", "/usr/bin/go"];

fn frame(function: &str, module: &str, address: u64) -> Frame {
    Frame {
        function: function.into(),
        module: module.into(),
        file: None,
        line: 0,
        address,
        kernel: false,
    }
}

fn pprof(go: &std::path::Path, args: &[&str], file: &std::path::Path) -> String {
    let out = Command::new(go)
        .args(["tool", "pprof"])
        .args(args)
        .arg(file)
        .env("PPROF_TMPDIR", std::env::temp_dir())
        .output()
        .expect("running go tool pprof");
    assert!(
        out.status.success(),
        "go tool pprof {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn go_tool_pprof_reads_the_builder_output() {
    let Some(go) = nodescope_testsupport::require_tool(
        "go_tool_pprof_reads_the_builder_output",
        "go",
        GO_PATHS,
    ) else {
        return;
    };
    let mut b = ProfileBuilder::new(
        &[("samples", "count"), ("offcpu", "nanoseconds")],
        ("offcpu", "nanoseconds"),
        1,
    );
    b.time(SystemTime::now())
        .duration(Duration::from_secs(3))
        .comment("nodescope test profile")
        .comment("unwind: 2 of 2 stacks reached a process root");
    let m = b.add_mapping(&Mapping {
        start: 0x40_0000,
        limit: 0x50_0000,
        file_offset: 0,
        filename: Arc::from("/usr/bin/worker"),
        build_id: Some(Arc::from("0123456789abcdef")),
        has_functions: true,
        has_inline_frames: true,
        ..Default::default()
    });
    let inlined = [
        frame("parse_header", "/usr/bin/worker", 0x40_1000),
        frame("handle_request", "/usr/bin/worker", 0x40_1000),
    ];
    let main = [frame("main", "/usr/bin/worker", 0x40_2000)];
    b.add_sample_locations(
        [
            Location {
                address: 0x40_1000,
                mapping: Some(m),
                functions: &inlined,
            },
            Location {
                address: 0x40_2000,
                mapping: Some(m),
                functions: &main,
            },
        ],
        &[3, 3_000_000],
        &[Label::str("state", "blocked"), Label::num("pid", 42)],
    )
    .unwrap();
    // Frame-level stacks (the flight recorder's way): module mappings on the fly.
    b.add_sample(
        &[
            frame("futex_wait", "/lib/libc.so.6", 0x7f00_0000_1000),
            frame("main", "/usr/bin/worker", 0x40_2000),
        ],
        &[1, 7_000_000],
        &[Label::str("state", "preempted"), Label::num("pid", 42)],
    )
    .unwrap();
    let gz = b.finish_gzip().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("profile.pb.gz");
    std::fs::write(&file, gz).unwrap();

    let top = pprof(&go, &["-top", "-sample_index=offcpu"], &file);
    assert!(top.contains("10ms") || top.contains("10.00ms"), "{top}");
    for f in ["parse_header", "handle_request", "main", "futex_wait"] {
        assert!(top.contains(f), "{f} missing: {top}");
    }
    let raw = pprof(&go, &["-raw"], &file);
    assert!(raw.contains("samples/count offcpu/nanoseconds"), "{raw}");
    assert!(raw.contains("3    3000000"), "{raw}");
    assert!(raw.contains("0123456789abcdef"), "build id: {raw}");
    assert!(raw.contains("state:[blocked]"), "{raw}");
    assert!(raw.contains("pid:[42]"), "{raw}");
    let comments = pprof(&go, &["-comments"], &file);
    assert!(comments.contains("reached a process root"), "{comments}");
    let tags = pprof(&go, &["-tags", "-sample_index=offcpu"], &file);
    assert!(
        tags.contains("blocked") && tags.contains("preempted"),
        "{tags}"
    );
}
