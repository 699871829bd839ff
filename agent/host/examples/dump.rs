//! Prints every family the host collectors produce, in a Prometheus-text-like form
//! (`# TYPE` line, then `name{labels} value`). Debugging aid, not the agent's encoder.
//!
//! `cargo run -p nodescope-host --example dump [HOST_ROOT]`

use std::path::Path;

use nodescope_host::{check_host_root, HostMetricsConfig, HostPaths};
use nodescope_model::Value;

fn main() {
    let root = std::env::args().nth(1).unwrap_or_else(|| "/".into());
    let paths = HostPaths::from_root(Path::new(&root));
    if let Err(e) = check_host_root(&paths) {
        eprintln!("{e}");
        std::process::exit(2);
    }
    let collectors = match HostMetricsConfig::default().build(&paths) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    for c in collectors {
        match c.collect() {
            Ok(fams) => {
                for f in fams {
                    println!("# HELP {} {}", f.name, f.help);
                    println!("# TYPE {} {}", f.name, f.kind.as_str());
                    for p in f.points {
                        let labels: Vec<String> =
                            p.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                        let v = match p.value {
                            Value::Number(v) => v,
                            Value::Histogram(h) => h.sum,
                        };
                        if labels.is_empty() {
                            println!("{} {}", f.name, v);
                        } else {
                            println!("{}{{{}}} {}", f.name, labels.join(","), v);
                        }
                    }
                }
            }
            Err(e) => eprintln!("collector {} failed: {e}", c.name()),
        }
    }
}
