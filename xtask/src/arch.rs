//! `cargo xtask check-arch`: ARCHITECTURE.md's invariants as checks.
//!
//! * Dependencies (from `cargo metadata`, normal dependencies only, followed
//!   transitively): no crate under `exporters/` reaches `aya`; no crate under `agent/`
//!   other than the binary (`agent/nodescope`, which wires everything) reaches a crate under
//!   `exporters/`; only `ebpf`, `netprobe` and `profiler` depend on `aya` directly.
//! * Bounds: no unbounded channel in non-test code of `agent/`, `exporters/` and `ebpf/`
//!   (tokio's `unbounded_channel`, `UnboundedSender`, std's `mpsc::channel()`, crossbeam's
//!   and flume's `unbounded`). Test modules (everything from a file's `#[cfg(test)]`, which
//!   clippy keeps last), `tests/`, `examples/` and `benches/` are not scanned.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One workspace or registry package and its normal dependencies.
#[derive(Debug, Clone)]
pub struct Pkg {
    pub name: String,
    /// The manifest's directory relative to the workspace root (`None`: not ours).
    pub dir: Option<String>,
    pub deps: Vec<String>,
}

/// Packages by id, read from `cargo metadata`.
pub fn read_metadata(root: &Path) -> Result<BTreeMap<String, Pkg>, String> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root)
        .output()
        .map_err(|e| format!("running cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata output: {e}"))?;
    parse_metadata(&v, root)
}

pub fn parse_metadata(v: &serde_json::Value, root: &Path) -> Result<BTreeMap<String, Pkg>, String> {
    let members: BTreeSet<&str> = v["workspace_members"]
        .as_array()
        .ok_or("no workspace_members")?
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let mut pkgs = BTreeMap::new();
    for p in v["packages"].as_array().ok_or("no packages")? {
        let id = p["id"].as_str().ok_or("package without id")?;
        let dir = members.contains(id).then(|| {
            let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap_or(""));
            let dir = manifest.parent().unwrap_or(Path::new("")).to_path_buf();
            dir.strip_prefix(root)
                .unwrap_or(&dir)
                .to_string_lossy()
                .into_owned()
        });
        pkgs.insert(
            id.to_string(),
            Pkg {
                name: p["name"].as_str().unwrap_or("").to_string(),
                dir,
                deps: Vec::new(),
            },
        );
    }
    for node in v["resolve"]["nodes"].as_array().ok_or("no resolve graph")? {
        let id = node["id"].as_str().unwrap_or("");
        let deps: Vec<String> = node["deps"]
            .as_array()
            .map(|d| d.as_slice())
            .unwrap_or(&[])
            .iter()
            .filter(|d| {
                // Normal (or build) dependencies: dev-dependencies may use anything.
                d["dep_kinds"].as_array().is_some_and(|ks| {
                    ks.iter()
                        .any(|k| k["kind"].is_null() || k["kind"] == "build")
                })
            })
            .filter_map(|d| d["pkg"].as_str().map(String::from))
            .collect();
        if let Some(p) = pkgs.get_mut(id) {
            p.deps = deps;
        }
    }
    Ok(pkgs)
}

/// The ids `id` reaches through normal dependencies, itself excluded, with the path to each.
fn reach(pkgs: &BTreeMap<String, Pkg>, id: &str) -> BTreeMap<String, Vec<String>> {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut stack = vec![(id.to_string(), vec![pkgs[id].name.clone()])];
    while let Some((cur, path)) = stack.pop() {
        for d in &pkgs[&cur].deps {
            if seen.contains_key(d) || !pkgs.contains_key(d) {
                continue;
            }
            let mut p = path.clone();
            p.push(pkgs[d].name.clone());
            seen.insert(d.clone(), p.clone());
            stack.push((d.clone(), p));
        }
    }
    seen
}

/// Every violation of the dependency rules, as a sentence with the offending path.
pub fn check_deps(pkgs: &BTreeMap<String, Pkg>) -> Vec<String> {
    let mut errs = Vec::new();
    let under = |p: &Pkg, prefix: &str| p.dir.as_deref().is_some_and(|d| d.starts_with(prefix));
    for (id, p) in pkgs {
        let Some(dir) = &p.dir else { continue };
        let reached = reach(pkgs, id);
        if dir.starts_with("exporters/") {
            for (rid, path) in &reached {
                if pkgs[rid].name == "aya" || pkgs[rid].name == "aya-obj" {
                    errs.push(format!(
                        "exporter crate {} reaches {}: {}",
                        p.name,
                        pkgs[rid].name,
                        path.join(" -> ")
                    ));
                }
            }
        }
        if dir.starts_with("agent/") && dir != "agent/nodescope" {
            for (rid, path) in &reached {
                if under(&pkgs[rid], "exporters/") {
                    errs.push(format!(
                        "agent crate {} reaches exporter crate {}: {}",
                        p.name,
                        pkgs[rid].name,
                        path.join(" -> ")
                    ));
                }
            }
        }
        let direct_aya = p
            .deps
            .iter()
            .any(|d| pkgs.get(d).is_some_and(|x| x.name == "aya"));
        if direct_aya && !matches!(dir.as_str(), "ebpf" | "agent/netprobe" | "agent/profiler") {
            errs.push(format!(
                "{} ({dir}) depends on aya; only ebpf, netprobe and profiler may",
                p.name
            ));
        }
    }
    errs
}

/// Patterns of an unbounded channel.
const UNBOUNDED: [&str; 5] = [
    "unbounded_channel",
    "UnboundedSender",
    "UnboundedReceiver",
    "crossbeam_channel::unbounded",
    "flume::unbounded",
];

/// Unbounded channels in one file's non-test code: `(line number, line)`.
pub fn scan_source(text: &str) -> Vec<(usize, String)> {
    let mut hits = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        if UNBOUNDED.iter().any(|p| t.contains(p)) || std_unbounded(t) {
            hits.push((i + 1, line.trim().to_string()));
        }
    }
    hits
}

/// `mpsc::channel()` / `mpsc::channel::<T>()` with no capacity: std's unbounded channel
/// (tokio's takes a capacity; std's bounded one is `sync_channel(n)`).
fn std_unbounded(line: &str) -> bool {
    let mut rest = line;
    while let Some(at) = rest.find("mpsc::channel") {
        let after = &rest[at + "mpsc::channel".len()..];
        let after = match after.strip_prefix("::<") {
            Some(a) => match a.find(">(") {
                Some(end) => &a[end + 1..],
                None => a,
            },
            None => after,
        };
        if after.trim_start().starts_with("()") {
            return true;
        }
        rest = after;
    }
    false
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if p.is_dir() {
            if !matches!(
                name.as_ref(),
                "tests" | "examples" | "benches" | "target" | "node_modules"
            ) {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

pub fn check_channels(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for d in ["agent", "exporters", "ebpf"] {
        rust_files(&root.join(d), &mut files);
    }
    files.sort();
    let mut errs = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for (n, line) in scan_source(&text) {
            errs.push(format!(
                "{}:{n}: unbounded channel (every queue needs a bound and a drop counter): {line}",
                f.strip_prefix(root).unwrap_or(&f).display()
            ));
        }
    }
    errs
}

pub fn check_arch(root: &Path) -> Result<(), String> {
    let pkgs = read_metadata(root)?;
    let mut errs = check_deps(&pkgs);
    errs.extend(check_channels(root));
    if errs.is_empty() {
        println!(
            "architecture invariants hold ({} workspace crates checked)",
            pkgs.values().filter(|p| p.dir.is_some()).count()
        );
        Ok(())
    } else {
        Err(format!(
            "{} violation(s):\n  {}",
            errs.len(),
            errs.join("\n  ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, dir: Option<&str>, deps: &[&str]) -> (String, Pkg) {
        (
            name.to_string(),
            Pkg {
                name: name.to_string(),
                dir: dir.map(String::from),
                deps: deps.iter().map(|d| d.to_string()).collect(),
            },
        )
    }

    #[test]
    fn dependency_rules_catch_transitive_violations() {
        let ok: BTreeMap<_, _> = [
            pkg("aya", None, &[]),
            pkg("nodescope-model", Some("agent/model"), &[]),
            pkg("nodescope-ebpf", Some("ebpf"), &["aya"]),
            pkg(
                "nodescope-netprobe",
                Some("agent/netprobe"),
                &["nodescope-ebpf", "nodescope-model"],
            ),
            pkg(
                "nodescope-delivery",
                Some("exporters/delivery"),
                &["nodescope-model"],
            ),
            pkg(
                "nodescope",
                Some("agent/nodescope"),
                &["nodescope-netprobe", "nodescope-delivery"],
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(check_deps(&ok), Vec::<String>::new());

        let mut bad = ok.clone();
        // An exporter reaching aya through a collector, and that collector an exporter.
        bad.insert(
            "nodescope-delivery".into(),
            pkg(
                "nodescope-delivery",
                Some("exporters/delivery"),
                &["nodescope-host"],
            )
            .1,
        );
        bad.insert(
            "nodescope-host".into(),
            pkg(
                "nodescope-host",
                Some("agent/host"),
                &["nodescope-netprobe", "nodescope-delivery"],
            )
            .1,
        );
        bad.insert(
            "nodescope-k8s".into(),
            pkg("nodescope-k8s", Some("agent/k8s"), &["aya"]).1,
        );
        let errs = check_deps(&bad);
        assert!(errs.iter().any(|e| e.starts_with("exporter crate nodescope-delivery reaches aya: nodescope-delivery -> nodescope-host -> nodescope-netprobe -> nodescope-ebpf -> aya")), "{errs:#?}");
        assert!(
            errs.iter().any(|e| e.starts_with(
                "agent crate nodescope-host reaches exporter crate nodescope-delivery"
            )),
            "{errs:#?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("nodescope-k8s (agent/k8s) depends on aya")),
            "{errs:#?}"
        );
    }

    #[test]
    fn unbounded_channels_are_found_outside_tests() {
        let src = "use tokio::sync::mpsc;\n\
                   fn a() { let (tx, rx) = mpsc::channel(16); }\n\
                   fn b() { let (tx, rx) = std::sync::mpsc::sync_channel::<u8>(0); }\n\
                   fn c() { let (tx, rx) = mpsc::unbounded_channel::<u8>(); }\n\
                   fn d() { let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>(); }\n\
                   fn e() { let (tx, rx) = mpsc::channel(); }\n\
                   // mpsc::unbounded_channel() in a comment\n\
                   #[cfg(test)]\n\
                   mod tests { fn t() { let _ = std::sync::mpsc::channel::<()>(); } }\n";
        let lines: Vec<usize> = scan_source(src).into_iter().map(|(n, _)| n).collect();
        assert_eq!(lines, vec![4, 5, 6]);
    }

    #[test]
    fn reads_this_workspace() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let pkgs = read_metadata(root).unwrap();
        assert!(pkgs
            .values()
            .any(|p| p.name == "nodescope-model" && p.dir.as_deref() == Some("agent/model")));
        assert!(pkgs.values().any(|p| p.name == "aya" && p.dir.is_none()));
    }
}
