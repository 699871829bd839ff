//! The UI's files, embedded in the binary at compile time (`include_bytes!`), with their
//! gzip form and ETag computed once on first use.

use std::io::Write;
use std::sync::OnceLock;

use flate2::write::GzEncoder;
use flate2::Compression;

/// One embedded file, served at `/ui/<path>`.
#[derive(Debug)]
pub struct Asset {
    /// Path below `/ui/` (`index.html`, `js/core.js`, ...).
    pub path: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

/// `asset!("js/core.js", JS)` embeds `web/js/core.js`; `asset!(vendor "uplot/LICENSE", TEXT)`
/// embeds `vendor/uplot/LICENSE` (the npm packages, each with its license), served at
/// `/ui/vendor/uplot/LICENSE`.
macro_rules! asset {
    ($path:literal, $ctype:expr) => {
        Asset {
            path: $path,
            content_type: $ctype,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $path)),
        }
    };
    (vendor $path:literal, $ctype:expr) => {
        Asset {
            path: concat!("vendor/", $path),
            content_type: $ctype,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/vendor/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Every file of the UI. The offline bundle page inlines the scripts listed in
/// [`BUNDLE_SCRIPTS`] and the styles in [`BUNDLE_STYLES`] from this table.
pub static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("css/app.css", CSS),
    asset!("js/core.js", JS),
    asset!("js/flame.js", JS),
    asset!("js/charts.js", JS),
    asset!("js/reader.js", JS),
    asset!("js/node.js", JS),
    asset!("js/network.js", JS),
    asset!("js/profiles.js", JS),
    asset!("js/incidents.js", JS),
    asset!("js/main.js", JS),
    asset!("js/pprof.mjs", JS),
    asset!(vendor "uplot/uPlot.iife.min.js", JS),
    asset!(vendor "uplot/uPlot.min.css", CSS),
    asset!(vendor "uplot/LICENSE", TEXT),
    asset!(vendor "pprof-format/index.js", JS),
    asset!(vendor "pprof-format/LICENSE", TEXT),
    asset!(vendor "pprof-format/NOTICE", TEXT),
    asset!(vendor "pprof-format/LICENSE-3rdparty.csv", TEXT),
];

/// Scripts inlined (in this order) into a bundle's offline `index.html`: everything but
/// the live pages and the pprof decoder (the bundle carries folded stacks).
pub(crate) const BUNDLE_SCRIPTS: &[&str] = &[
    "vendor/uplot/uPlot.iife.min.js",
    "js/core.js",
    "js/flame.js",
    "js/charts.js",
    "js/reader.js",
    "js/main.js",
];

/// Stylesheets inlined into a bundle's offline `index.html`.
pub(crate) const BUNDLE_STYLES: &[&str] = &["vendor/uplot/uPlot.min.css", "css/app.css"];

pub(crate) fn find(path: &str) -> Option<(usize, &'static Asset)> {
    ASSETS.iter().enumerate().find(|(_, a)| a.path == path)
}

pub(crate) fn text(path: &str) -> &'static str {
    let a = find(path)
        .unwrap_or_else(|| panic!("asset {path} is listed in the bundle but not embedded"))
        .1;
    std::str::from_utf8(a.bytes).unwrap_or_else(|_| panic!("asset {path} is not UTF-8"))
}

/// What is computed once per asset: its gzip form (when smaller) and its ETag.
pub(crate) struct Prepared {
    pub gzip: Option<Vec<u8>>,
    pub etag: String,
}

pub(crate) fn prepared(index: usize) -> &'static Prepared {
    static ALL: OnceLock<Vec<Prepared>> = OnceLock::new();
    &ALL.get_or_init(|| ASSETS.iter().map(prepare).collect())[index]
}

fn prepare(a: &Asset) -> Prepared {
    let digest = ring::digest::digest(&ring::digest::SHA256, a.bytes);
    let etag = format!(
        "\"{}\"",
        digest.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let gzip = if a.content_type.starts_with("image/") && !a.path.ends_with(".svg") {
        None
    } else {
        let mut enc = GzEncoder::new(Vec::with_capacity(a.bytes.len() / 3), Compression::best());
        // Writing into a Vec cannot fail.
        let _ = enc.write_all(a.bytes);
        enc.finish().ok().filter(|z| z.len() < a.bytes.len())
    };
    Prepared { gzip, etag }
}

/// Total size of the JavaScript and CSS the browser loads for `/ui/`, raw and gzipped
/// (the budget in docs/benchmarks.md).
pub fn js_css_sizes() -> (usize, usize) {
    let mut raw = 0;
    let mut gz = 0;
    for (i, a) in ASSETS.iter().enumerate() {
        if a.content_type == JS || a.content_type == CSS {
            raw += a.bytes.len();
            gz += prepared(i).gzip.as_ref().map_or(a.bytes.len(), Vec::len);
        }
    }
    (raw, gz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_unique_and_non_empty() {
        for (i, a) in ASSETS.iter().enumerate() {
            assert!(!a.bytes.is_empty(), "{} is empty", a.path);
            assert!(
                ASSETS[..i].iter().all(|b| b.path != a.path),
                "{} listed twice",
                a.path
            );
        }
        for p in BUNDLE_SCRIPTS.iter().chain(BUNDLE_STYLES) {
            assert!(!text(p).is_empty());
        }
    }

    /// Every vendored package ships with its license next to it.
    #[test]
    fn vendored_packages_carry_their_license() {
        let dirs: std::collections::BTreeSet<&str> = ASSETS
            .iter()
            .filter_map(|a| a.path.strip_prefix("vendor/"))
            .filter_map(|p| p.split('/').next())
            .collect();
        assert!(dirs.len() >= 2, "{dirs:?}");
        for d in dirs {
            let lic = format!("vendor/{d}/LICENSE");
            let (_, a) = find(&lic).unwrap_or_else(|| panic!("{lic} is not embedded"));
            let t = std::str::from_utf8(a.bytes).unwrap();
            assert!(t.contains("Permission is hereby granted"), "{lic}: {t}");
        }
    }

    /// The page references only embedded files (a missing one would be a failed request).
    #[test]
    fn index_references_only_embedded_assets() {
        let html = text("index.html");
        let mut refs = 0;
        for attr in ["src=\"", "href=\""] {
            for part in html.split(attr).skip(1) {
                let url = &part[..part.find('"').unwrap()];
                if url.starts_with('#') {
                    continue;
                }
                refs += 1;
                assert!(
                    find(url).is_some(),
                    "index.html references {url}, not embedded"
                );
            }
        }
        assert!(refs >= 10, "{refs}");
        // No inline script or style: the CSP is script-src 'self', style-src 'self'.
        assert!(!html.contains("<script>") && !html.contains("style="));
        assert!(!html.contains("<style"));
    }

    #[test]
    fn gzip_is_smaller_and_etags_differ() {
        let (raw, gz) = js_css_sizes();
        assert!(gz * 2 < raw, "{gz} vs {raw}");
        let a = prepared(find("js/core.js").unwrap().0);
        let b = prepared(find("js/flame.js").unwrap().0);
        assert_ne!(a.etag, b.etag);
        assert!(a.gzip.is_some());
    }
}
