//! Name filters (node_exporter's `--collector.*.exclude` style regexes), memoised.
//!
//! The names a filter sees (netstat fields, vmstat keys, device names, mount points) come
//! from a small, stable set, so each distinct name is matched against the regex once and
//! the answer is remembered; a scrape then costs one hash lookup per name instead of a
//! regex run. The memo is bounded ([`MEMO_CAP`]); past it names are matched directly
//! (still correct, only slower) and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use regex::Regex;

use crate::HostError;

/// Most distinct names one filter remembers.
pub(crate) const MEMO_CAP: usize = 8192;

#[derive(Debug)]
pub(crate) struct NameFilter {
    include: Option<Regex>,
    exclude: Option<Regex>,
    memo: Mutex<HashMap<String, bool, foldhash::fast::RandomState>>,
    uncached: AtomicU64,
}

pub(crate) fn compile(key: &str, pattern: &str) -> Result<Option<Regex>, HostError> {
    if pattern.is_empty() {
        return Ok(None);
    }
    Regex::new(pattern)
        .map(Some)
        .map_err(|e| HostError::InvalidRegex {
            key: key.to_string(),
            source: Box::new(e),
        })
}

impl NameFilter {
    /// `include`/`exclude` are regexes as node_exporter takes them (unanchored unless the
    /// pattern anchors itself); an empty string means "no such filter".
    pub(crate) fn new(
        include_key: &str,
        include: &str,
        exclude_key: &str,
        exclude: &str,
    ) -> Result<Self, HostError> {
        Ok(NameFilter {
            include: compile(include_key, include)?,
            exclude: compile(exclude_key, exclude)?,
            memo: Mutex::new(HashMap::default()),
            uncached: AtomicU64::new(0),
        })
    }

    #[cfg(test)]
    pub(crate) fn accept_all() -> Self {
        NameFilter {
            include: None,
            exclude: None,
            memo: Mutex::new(HashMap::default()),
            uncached: AtomicU64::new(0),
        }
    }

    fn decide(&self, name: &str) -> bool {
        if let Some(inc) = &self.include {
            if !inc.is_match(name) {
                return false;
            }
        }
        if let Some(exc) = &self.exclude {
            if exc.is_match(name) {
                return false;
            }
        }
        true
    }

    pub(crate) fn allows(&self, name: &str) -> bool {
        if self.include.is_none() && self.exclude.is_none() {
            return true;
        }
        let mut memo = self.memo.lock();
        if let Some(&v) = memo.get(name) {
            return v;
        }
        let v = self.decide(name);
        if memo.len() < MEMO_CAP {
            memo.insert(name.to_string(), v);
        } else {
            self.uncached.fetch_add(1, Ordering::Relaxed);
        }
        v
    }

    #[cfg(test)]
    pub(crate) fn uncached(&self) -> u64 {
        self.uncached.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_and_exclude() {
        let f = NameFilter::new("i", "^(a|b)", "e", "x$").unwrap();
        assert!(f.allows("abc"));
        assert!(f.allows("abc"));
        assert!(!f.allows("abx"));
        assert!(!f.allows("cab"));
        assert!(NameFilter::accept_all().allows("anything"));
    }

    #[test]
    fn bad_regex_names_the_key() {
        let e = NameFilter::new("host.netdev.device_include", "(", "e", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("host.netdev.device_include"), "{e}");
    }

    #[test]
    fn memo_is_bounded() {
        let f = NameFilter::new("i", "", "e", "^z").unwrap();
        for i in 0..MEMO_CAP + 10 {
            assert!(f.allows(&format!("n{i}")));
        }
        assert_eq!(f.memo.lock().len(), MEMO_CAP);
        assert_eq!(f.uncached(), 10);
        assert!(!f.allows("zz"));
    }
}
