//! `os`: node_os_info and node_os_version from `<root>/etc/os-release`, falling back to
//! `<root>/usr/lib/os-release` (symlinks resolved inside the host root). The file is small
//! and shell-quoted `KEY=value` lines; it is parsed by hand (a few lines) rather than with a
//! crate, with the quoting rules node_exporter's parser applies.

use std::path::{Path, PathBuf};

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{read_small, resolve_in_root};
use crate::HostPaths;

fn unquote(v: &str) -> String {
    let v = v.trim();
    let inner = if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        &v[1..v.len() - 1]
    } else {
        v
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `KEY=value` pairs of an os-release file (comments and malformed lines skipped).
pub fn parse_os_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .map(|(k, v)| (k.to_string(), unquote(v)))
        .collect()
}

/// node_exporter's `^[0-9]+\.?[0-9]*` prefix of VERSION_ID as a number.
pub fn parse_os_version(version_id: &str) -> Option<f64> {
    let b = version_id.as_bytes();
    let mut end = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if end == 0 {
        return None;
    }
    if b.get(end) == Some(&b'.') {
        end += 1;
        end += b[end..].iter().take_while(|c| c.is_ascii_digit()).count();
    }
    version_id[..end].trim_end_matches('.').parse().ok()
}

const INFO_LABELS: [(&str, &str); 12] = [
    ("build_id", "BUILD_ID"),
    ("id", "ID"),
    ("id_like", "ID_LIKE"),
    ("image_id", "IMAGE_ID"),
    ("image_version", "IMAGE_VERSION"),
    ("name", "NAME"),
    ("pretty_name", "PRETTY_NAME"),
    ("variant", "VARIANT"),
    ("variant_id", "VARIANT_ID"),
    ("version", "VERSION"),
    ("version_codename", "VERSION_CODENAME"),
    ("version_id", "VERSION_ID"),
];

pub(crate) struct OsCollector {
    root: PathBuf,
}

impl OsCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        OsCollector {
            root: paths.root.clone(),
        }
    }
}

impl Collector for OsCollector {
    fn name(&self) -> &'static str {
        "os"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let candidates = ["/etc/os-release", "/usr/lib/os-release"];
        let path = candidates
            .iter()
            .find_map(|c| resolve_in_root(&self.root, Path::new(c)).filter(|p| p.is_file()))
            .ok_or_else(|| CollectError::Unavailable {
                what: format!("{}/etc/os-release", self.root.display()),
                reason: "neither etc/os-release nor usr/lib/os-release exists under the host root"
                    .into(),
            })?;
        let kv = parse_os_release(&read_small(&path)?);
        let get = |k: &str| {
            kv.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let mut info = MetricFamily::new(
            "node_os_info",
            "A metric with a constant '1' value labeled by build_id, id, id_like, image_id, image_version, name, pretty_name, variant, variant_id, version, version_codename, version_id.",
            MetricType::Gauge,
        );
        info.push(INFO_LABELS.iter().map(|(l, k)| (*l, get(k))), 1.0);
        let mut out = vec![info];
        if let Some(v) = parse_os_version(&get("VERSION_ID")) {
            let mut f = MetricFamily::new(
                "node_os_version",
                "Metric containing the major.minor part of the OS version.",
                MetricType::Gauge,
            );
            f.push(
                [
                    ("id", get("ID")),
                    ("id_like", get("ID_LIKE")),
                    ("name", get("NAME")),
                ],
                v,
            );
            out.push(f);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_real_file() {
        let kv = parse_os_release(include_str!("../../tests/fixtures/os-release"));
        let get = |k: &str| kv.iter().find(|(key, _)| key == k).unwrap().1.as_str();
        assert_eq!(get("ID"), "debian");
        assert_eq!(get("PRETTY_NAME"), "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(get("VERSION_CODENAME"), "bookworm");
    }

    #[test]
    fn quoting_and_versions() {
        let kv = parse_os_release("# c\nA='x y'\nB=\"q\\\"uote\"\nbad line\n=v\nC=plain\n");
        assert_eq!(
            kv,
            vec![
                ("A".into(), "x y".into()),
                ("B".into(), "q\"uote".into()),
                ("C".into(), "plain".into())
            ]
        );
        assert_eq!(parse_os_version("12"), Some(12.0));
        assert_eq!(parse_os_version("22.04"), Some(22.04));
        assert_eq!(parse_os_version("3.18.4"), Some(3.18));
        assert_eq!(parse_os_version("7."), Some(7.0));
        assert_eq!(parse_os_version("rolling"), None);
        assert_eq!(parse_os_version(""), None);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_os_release(&s);
            let _ = parse_os_version(&s);
        }

        #[test]
        fn quote_shaped_garbage_never_panics(lines in proptest::collection::vec("[A-Z_]{0,5}=[\"'\\\\a-z ]{0,8}", 0..8)) {
            let _ = parse_os_release(&lines.join("\n"));
        }
    }
}
