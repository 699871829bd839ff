//! The offline `index.html` of an incident bundle: the UI's reader with the bundle's
//! `data.json` inlined, opening from `file://` with no network request.
//!
//! A file opened from disk cannot get HTTP headers, so the Content-Security-Policy is a
//! `<meta>` tag, and since everything must be inline, scripts and styles are allowed by
//! their SHA-256 hashes (never `'unsafe-inline'`), with `connect-src 'none'`: the page
//! could not phone home even if a script tried. The data sits in a non-executed
//! `<script type="application/json">` block with every `<` escaped as `\u003c`, so no
//! string in the data (a process name, a kernel log line) can close the block.

use std::sync::OnceLock;

use base64::Engine;
use nodescope_model::feeds::BundleRenderer;

use crate::assets::{self, BUNDLE_SCRIPTS, BUNDLE_STYLES};

/// `id` of the element holding the bundle's data document.
pub const BUNDLE_DATA_ELEMENT_ID: &str = "ns-bundle-data";

/// Renders the offline page; the UI component provides it as
/// `Arc<dyn BundleRenderer>` (the flight recorder looks it up when writing a bundle).
#[derive(Clone, Copy, Debug, Default)]
pub struct OfflineRenderer;

struct Parts {
    head: String,
    tail: String,
}

fn sha256_source(text: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(d.as_ref())
    )
}

fn parts() -> &'static Parts {
    static P: OnceLock<Parts> = OnceLock::new();
    P.get_or_init(|| {
        let mut script = String::new();
        for s in BUNDLE_SCRIPTS {
            script.push_str(assets::text(s));
            script.push_str("\n;\n");
        }
        let mut style = String::new();
        for s in BUNDLE_STYLES {
            style.push_str(assets::text(s));
            style.push('\n');
        }
        let csp = format!(
            "default-src 'none'; script-src {}; style-src {}; img-src data: blob:; \
             connect-src 'none'; font-src 'none'; base-uri 'none'; form-action 'none'",
            sha256_source(&script),
            sha256_source(&style)
        );
        let head = format!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">\n\
<meta name=\"referrer\" content=\"no-referrer\">\n\
<title>nodescope incident bundle</title>\n<link rel=\"icon\" href=\"data:,\">\n\
<style>{style}</style>\n</head>\n<body class=\"bundle\">\n\
<header class=\"top\"><span class=\"brand\">nodescope</span>\
<span class=\"muted\" id=\"ns-node\">incident bundle (offline)</span></header>\n\
<main id=\"main\" tabindex=\"-1\"></main>\n\
<div id=\"ns-toast\" role=\"status\" aria-live=\"polite\"></div>\n\
<script type=\"application/json\" id=\"{BUNDLE_DATA_ELEMENT_ID}\">"
        );
        let tail = format!("</script>\n<script>{script}</script>\n</body>\n</html>\n");
        Parts { head, tail }
    })
}

/// Escapes a JSON document for a `<script type="application/json">` block. `<` occurs in
/// valid JSON only inside strings, where `\u003c` means the same character.
fn escape_json(data_json: &str) -> String {
    let mut out = String::with_capacity(data_json.len() + 64);
    for c in data_json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            // Valid JSON has these only inside strings too; escaping keeps the block free
            // of line separators some tools mishandle.
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

impl OfflineRenderer {
    /// The page for `data_json` (the bundle's data document, docs/incidents.md). Data that
    /// is not valid JSON still yields a page, which says so instead of rendering.
    pub fn render(&self, data_json: &str) -> String {
        let p = parts();
        let data = escape_json(data_json);
        let mut out = String::with_capacity(p.head.len() + data.len() + p.tail.len());
        out.push_str(&p.head);
        out.push_str(&data);
        out.push_str(&p.tail);
        out
    }
}

impl BundleRenderer for OfflineRenderer {
    fn index_html(&self, data_json: &str) -> Vec<u8> {
        self.render(data_json).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
        let a = s.find(start).unwrap() + start.len();
        let b = a + s[a..].find(end).unwrap();
        &s[a..b]
    }

    #[test]
    fn hashes_match_the_inline_script_and_style() {
        let page = OfflineRenderer.render("{\"version\":1}");
        let script = between(&page, "</script>\n<script>", "</script>");
        let style = between(&page, "<style>", "</style>");
        let csp = between(&page, "Content-Security-Policy\" content=\"", "\"");
        assert!(csp.contains(&sha256_source(script)), "{csp}");
        assert!(csp.contains(&sha256_source(style)), "{csp}");
        assert!(csp.contains("connect-src 'none'"));
        assert!(!csp.contains("unsafe-inline"));
        // The inlined files cannot end their own block early.
        assert!(!script.to_ascii_lowercase().contains("</script"));
        assert!(!style.to_ascii_lowercase().contains("</style"));
        // No reference to anything outside the file.
        for needle in ["src=\"", "href=\"http", "url(http", "@import"] {
            assert!(!page.contains(needle), "page contains {needle}");
        }
    }

    #[test]
    fn data_cannot_close_its_block() {
        let hostile = r#"{"summary_md":"</script><script>alert(1)</script><!-- & \u2028"}"#;
        let page = OfflineRenderer.render(hostile);
        let data = between(
            &page,
            &format!("id=\"{BUNDLE_DATA_ELEMENT_ID}\">"),
            "</script>",
        );
        let back: serde_json::Value = serde_json::from_str(data).unwrap();
        let orig: serde_json::Value = serde_json::from_str(hostile).unwrap();
        assert_eq!(back, orig);
        assert_eq!(page.matches("<script").count(), 2, "{page}");
    }

    proptest::proptest! {
        /// Any string value survives the escaping, and the block is never closed early.
        #[test]
        fn escaping_round_trips(s in "\\PC{0,200}") {
            let json = serde_json::to_string(&serde_json::json!({ "s": s })).unwrap();
            let esc = escape_json(&json);
            proptest::prop_assert!(!esc.contains('<'));
            let back: serde_json::Value = serde_json::from_str(&esc).unwrap();
            proptest::prop_assert_eq!(back["s"].as_str().unwrap(), s.as_str());
        }
    }
}
