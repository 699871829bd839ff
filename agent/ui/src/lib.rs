//! nodescope's built-in web UI.
//!
//! * `GET /ui/` serves a single-page application whose assets (HTML, CSS, JavaScript and
//!   the vendored npm libraries, each with its license) are embedded in the binary: no CDN,
//!   no download at run time. `GET /` redirects there. The routes are merged into the
//!   agent's router, so off loopback they sit behind the same credentials and limits as
//!   `/api` (httpguard). Every response carries a strict Content-Security-Policy
//!   (`script-src 'self'`, `connect-src 'self'`: the page can talk to the agent only).
//! * The pages read the agent's existing endpoints (`/api/v1/status`,
//!   `/api/v1/network/connections`, `/debug/pprof/profile`) and the flight recorder's
//!   (`/api/v1/recorder/*`, `/api/v1/incidents`, docs/incidents.md) when it runs.
//! * [`OfflineRenderer`] implements [`nodescope_model::feeds::BundleRenderer`]: the same
//!   reader as one self-contained `index.html` with an incident bundle's `data.json`
//!   inlined, for `file://` with no network request (hash-based CSP in a meta tag).
//!
//! See docs/ui.md.

mod assets;
mod bundle;
mod component;
mod http;

use std::time::Duration;

use nodescope_model::config::Issues;
use serde::Deserialize;

pub use assets::{Asset, ASSETS};
pub use bundle::{OfflineRenderer, BUNDLE_DATA_ELEMENT_ID};
pub use http::{router, UiState, CSP};

/// `[ui]`: the built-in web UI.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// Serve `/ui/` (and redirect `/` there), and provide the renderer of the incident
    /// bundles' offline `index.html` (without it a bundle has no index.html; its manifest
    /// says why).
    pub enabled: bool,
    /// How often the live pages (Node, Network, Incidents) poll the agent, e.g. `"5s"`.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            enabled: true,
            refresh_interval: Duration::from_secs(5),
        }
    }
}

impl UiConfig {
    /// Records every problem under `prefix` (`ui`).
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        issues.check(
            self.refresh_interval >= Duration::from_secs(1)
                && self.refresh_interval <= Duration::from_secs(3600),
            format!("{prefix}.refresh_interval"),
            format!(
                "must be between 1s and 1h, got {}",
                humantime_serde::re::humantime::format_duration(self.refresh_interval)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_refresh_is_named() {
        let mut issues = Issues::default();
        UiConfig::default().validate("ui", &mut issues);
        assert!(issues.is_empty(), "{:?}", issues.list);
        let c = UiConfig {
            refresh_interval: Duration::from_millis(100),
            ..Default::default()
        };
        c.validate("ui", &mut issues);
        assert_eq!(issues.list.len(), 1);
        assert_eq!(issues.list[0].key, "ui.refresh_interval");
        assert!(issues.list[0].reason.contains("100ms"), "{:?}", issues.list);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<UiConfig>("enabled = true\nrefresh = \"1s\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `refresh`"), "{err}");
        let c: UiConfig = toml::from_str("refresh_interval = \"10s\"\n").unwrap();
        assert_eq!(c.refresh_interval, Duration::from_secs(10));
        assert!(c.enabled);
    }
}
