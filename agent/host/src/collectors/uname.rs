//! `uname`: node_uname_info{sysname,release,version,machine,nodename,domainname} from the
//! uname(2) system call (rustix), as node_exporter does. The values are those of the
//! agent's UTS namespace, which is the host's for a `hostNetwork` pod (Kubernetes shares
//! the host UTS namespace with host-network pods) or a process on the host.

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

pub(crate) struct UnameCollector;

fn s(c: &std::ffi::CStr) -> String {
    c.to_string_lossy().into_owned()
}

impl Collector for UnameCollector {
    fn name(&self) -> &'static str {
        "uname"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let u = rustix::system::uname();
        let mut f = MetricFamily::new(
            "node_uname_info",
            "Labeled system information as provided by the uname system call.",
            MetricType::Gauge,
        );
        f.push(
            [
                ("sysname", s(u.sysname())),
                ("release", s(u.release())),
                ("version", s(u.version())),
                ("machine", s(u.machine())),
                ("nodename", s(u.nodename())),
                ("domainname", s(u.domainname())),
            ],
            1.0,
        );
        Ok(vec![f])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_this_kernel() {
        let f = UnameCollector.collect().unwrap();
        let p = &f[0].points[0];
        let get = |k: &str| p.labels.iter().find(|l| l.0 == k).unwrap().1.clone();
        assert_eq!(get("sysname"), "Linux");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(get("release"), release.trim());
    }
}
