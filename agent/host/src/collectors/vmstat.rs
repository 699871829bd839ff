//! `vmstat`: the `<proc>/vmstat` keys matching the field filter (node_exporter's default
//! `^(oom_kill|pgpg|pswp|pg.*fault).*`), untyped, as `node_vmstat_<key>`. Parsed directly
//! so keys the filter rejects cost no allocation (procfs-core's `VmStat` builds a map of
//! every key).

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::filter::NameFilter;
use crate::util::{is_name_part, num, Buf};
use crate::HostPaths;

/// `key value` pairs of `/proc/vmstat` accepted by `keep`; malformed lines are skipped.
pub fn parse_vmstat<'a>(text: &'a str, keep: &dyn Fn(&str) -> bool) -> Vec<(&'a str, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let (Some(k), Some(v), None) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if !is_name_part(k) || !keep(k) {
            continue;
        }
        if let Some(v) = num(v) {
            out.push((k, v));
        }
    }
    out
}

pub(crate) struct VmstatCollector {
    path: PathBuf,
    buf: Buf,
    fields: NameFilter,
}

impl VmstatCollector {
    pub(crate) fn new(paths: &HostPaths, fields: NameFilter) -> Self {
        VmstatCollector {
            path: paths.proc.join("vmstat"),
            buf: Buf::new(),
            fields,
        }
    }
}

impl Collector for VmstatCollector {
    fn name(&self) -> &'static str {
        "vmstat"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        self.buf.with_file(&self.path, |t| {
            let keep = |k: &str| self.fields.allows(k);
            Ok(parse_vmstat(t, &keep)
                .into_iter()
                .map(|(k, v)| {
                    MetricFamily::single(
                        format!("node_vmstat_{k}"),
                        format!("/proc/vmstat information field {k}."),
                        MetricType::Untyped,
                        v,
                    )
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_VMSTAT_FIELDS;
    use proptest::prelude::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/proc/vmstat");

    #[test]
    fn default_filter_matches_node_exporter() {
        let f = NameFilter::new("i", DEFAULT_VMSTAT_FIELDS, "e", "").unwrap();
        let keep = |k: &str| f.allows(k);
        let got: Vec<&str> = parse_vmstat(FIXTURE, &keep)
            .iter()
            .map(|(k, _)| *k)
            .collect();
        for k in [
            "oom_kill",
            "pgfault",
            "pgmajfault",
            "pgpgin",
            "pgpgout",
            "pswpin",
            "pswpout",
        ] {
            assert!(got.contains(&k), "{k} missing from {got:?}");
        }
        assert!(!got.contains(&"nr_free_pages"));
        assert!(got.len() < 20, "{got:?}");
    }

    #[test]
    fn skips_bad_lines() {
        let all = |_: &str| true;
        let got = parse_vmstat("a 1\nb\nc x\nd 2 3\nbad-key 4\ne -5\n", &all);
        assert_eq!(got, vec![("a", 1.0), ("e", -5.0)]);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let all = |_: &str| true;
            let _ = parse_vmstat(&s, &all);
        }

        #[test]
        fn truncated_never_panics(cut in 0usize..5000) {
            let cut = cut.min(FIXTURE.len());
            let all = |_: &str| true;
            let _ = parse_vmstat(&FIXTURE[..cut], &all);
        }
    }
}
