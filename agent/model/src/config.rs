//! Configuration validation shared by every `*Config` type: validation collects *all*
//! problems, each naming the key and the reason, instead of stopping at the first.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted TOML key, e.g. `exporters.otlp.endpoint`.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Accumulates issues under a key prefix.
#[derive(Debug, Default)]
pub struct Issues {
    pub list: Vec<ConfigIssue>,
}

impl Issues {
    pub fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.list.push(ConfigIssue {
            key: key.into(),
            reason: reason.into(),
        });
    }
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    /// Checks `cond`; records `reason` against `key` when it is false.
    pub fn check(&mut self, cond: bool, key: impl Into<String>, reason: impl Into<String>) {
        if !cond {
            self.push(key, reason);
        }
    }
}
