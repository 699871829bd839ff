//! Repository chores. `cargo xtask build-ebpf` rebuilds every `ebpf/c/*.bpf.c` into
//! `ebpf/objects/*.bpf.o`; `cargo xtask check-ebpf` rebuilds into a temporary directory
//! and fails, naming the object, when a committed object differs from its source.
//!
//! Determinism: clang runs from the workspace root with relative paths and
//! `-fdebug-prefix-map=<root>=.`, and `llvm-strip -g` drops DWARF (keeping `.BTF` /
//! `.BTF.ext` for CO-RE), so the bytes do not depend on the checkout location.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod arch;

const CLANG: &str = "clang-19";
const STRIP: &str = "llvm-strip-19";

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <command>\n\n\
         commands:\n  \
         build-ebpf   rebuild ebpf/objects/*.bpf.o from ebpf/c/*.bpf.c\n  \
         check-ebpf   fail if a committed object differs from what its source produces\n  \
         check-arch   fail if a dependency or an unbounded channel breaks ARCHITECTURE.md's invariants"
    );
    ExitCode::from(2)
}

fn workspace_root() -> PathBuf {
    // xtask lives at <root>/xtask. `cargo run` sets CARGO_MANIFEST_DIR for the process:
    // prefer it to the compile-time value, which names whichever checkout built the
    // binary last when several checkouts share one target directory.
    let here = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// Every `ebpf/c/*.bpf.c`, sorted, as paths relative to the root.
fn sources(root: &Path) -> Result<Vec<String>, String> {
    let dir = root.join("ebpf/c");
    let rd = std::fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".bpf.c") {
            out.push(stem.to_string());
        }
    }
    out.sort();
    Ok(out)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().map_err(|e| {
        format!("running {shown}: {e} (install clang-19 / llvm-19: scripts/install-test-deps.sh)")
    })?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed: {st}"))
    }
}

/// Compiles `ebpf/c/<stem>.bpf.c` to `out` (absolute or relative to root).
fn build_one(root: &Path, stem: &str, out: &Path) -> Result<(), String> {
    let root_s = root.to_string_lossy();
    run(Command::new(CLANG)
        .current_dir(root)
        .args([
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            "-O2",
            "-g",
            "-Wall",
            "-Werror",
        ])
        .args(["-Iebpf/include", "-I/usr/include/x86_64-linux-gnu"])
        .arg(format!("-fdebug-prefix-map={root_s}=."))
        .arg("-c")
        .arg(format!("ebpf/c/{stem}.bpf.c"))
        .arg("-o")
        .arg(out))?;
    run(Command::new(STRIP).current_dir(root).arg("-g").arg(out))
}

fn build_all(root: &Path) -> Result<(), String> {
    let stems = sources(root)?;
    std::fs::create_dir_all(root.join("ebpf/objects"))
        .map_err(|e| format!("creating ebpf/objects: {e}"))?;
    for stem in &stems {
        let out = PathBuf::from(format!("ebpf/objects/{stem}.bpf.o"));
        build_one(root, stem, &out)?;
        println!("built ebpf/objects/{stem}.bpf.o");
    }
    Ok(())
}

fn check_all(root: &Path) -> Result<(), String> {
    let stems = sources(root)?;
    let tmp = tempfile::tempdir().map_err(|e| format!("creating a temp dir: {e}"))?;
    let mut stale = Vec::new();
    for stem in &stems {
        let fresh = tmp.path().join(format!("{stem}.bpf.o"));
        build_one(root, stem, &fresh)?;
        let committed_path = root.join(format!("ebpf/objects/{stem}.bpf.o"));
        let fresh_bytes =
            std::fs::read(&fresh).map_err(|e| format!("reading {}: {e}", fresh.display()))?;
        match std::fs::read(&committed_path) {
            Ok(b) if b == fresh_bytes => println!("ok    ebpf/objects/{stem}.bpf.o"),
            Ok(_) => {
                println!("STALE ebpf/objects/{stem}.bpf.o differs from what ebpf/c/{stem}.bpf.c produces");
                stale.push(format!("ebpf/objects/{stem}.bpf.o"));
            }
            Err(e) => {
                println!("MISSING ebpf/objects/{stem}.bpf.o: {e}");
                stale.push(format!("ebpf/objects/{stem}.bpf.o"));
            }
        }
    }
    // Objects without a source are stale too.
    if let Ok(rd) = std::fs::read_dir(root.join("ebpf/objects")) {
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".bpf.o") {
                if !stems.iter().any(|s| s == stem) {
                    println!("ORPHAN ebpf/objects/{name} has no ebpf/c/{stem}.bpf.c");
                    stale.push(format!("ebpf/objects/{name}"));
                }
            }
        }
    }
    if stale.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "stale eBPF objects: {} (run `cargo xtask build-ebpf` and commit)",
            stale.join(", ")
        ))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let res = match args.first().map(String::as_str) {
        Some("build-ebpf") => build_all(&root),
        Some("check-ebpf") => check_all(&root),
        Some("check-arch") => arch::check_arch(&root),
        _ => return usage(),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
