//! `filefd`: node_filefd_allocated and node_filefd_maximum from `<proc>/sys/fs/file-nr`.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{num, Buf};
use crate::HostPaths;

/// `(allocated, maximum)` from `file-nr` (`allocated unused maximum`).
pub fn parse_file_nr(text: &str) -> Option<(f64, f64)> {
    let mut it = text.split_ascii_whitespace();
    let allocated = num(it.next()?)?;
    let _unused = it.next()?;
    let maximum = num(it.next()?)?;
    Some((allocated, maximum))
}

pub(crate) struct FilefdCollector {
    path: PathBuf,
    buf: Buf,
}

impl FilefdCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        FilefdCollector {
            path: paths.proc.join("sys/fs/file-nr"),
            buf: Buf::new(),
        }
    }
}

impl Collector for FilefdCollector {
    fn name(&self) -> &'static str {
        "filefd"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let (a, m) = self.buf.with_file(&self.path, |t| {
            parse_file_nr(t)
                .ok_or_else(|| CollectError::parse(&self.path, "expected three numbers"))
        })?;
        Ok(vec![
            MetricFamily::single(
                "node_filefd_allocated",
                "File descriptor statistics: allocated.",
                MetricType::Gauge,
                a,
            ),
            MetricFamily::single(
                "node_filefd_maximum",
                "File descriptor statistics: maximum.",
                MetricType::Gauge,
                m,
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses() {
        assert_eq!(parse_file_nr("430\t0\t2464775\n"), Some((430.0, 2464775.0)));
        assert_eq!(parse_file_nr("430\t0"), None);
        assert_eq!(parse_file_nr("a 0 1"), None);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_file_nr(&s);
        }
    }
}
