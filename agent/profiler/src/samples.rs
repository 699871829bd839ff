//! Raw (unsymbolized) stack samples and their bounded aggregation in user space.

use std::collections::HashMap;
use std::sync::Arc;

/// One aggregated stack as read from the kernel (or from the SIGPROF fallback):
/// instruction pointers, leaf first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub pid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    pub comm: Arc<str>,
    /// Kernel frames, leaf first (empty: none or not collected).
    pub kernel: Arc<[u64]>,
    /// User frames, leaf first.
    pub user: Arc<[u64]>,
    /// How the user stack was walked and where it ended (`profile_sample.flags`:
    /// `UNWIND_FLAG_DWARF` | `UNWIND_END_*`); 0 for frame pointers.
    pub unwind: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawSample {
    pub key: StackKey,
    pub count: u64,
}

/// Sums counts per [`StackKey`], bounded: keys past `max_keys` are dropped and counted.
#[derive(Debug)]
pub struct Aggregator {
    map: HashMap<StackKey, u64>,
    max_keys: usize,
    dropped_samples: u64,
}

impl Aggregator {
    pub fn new(max_keys: usize) -> Self {
        Aggregator {
            map: HashMap::new(),
            max_keys: max_keys.max(1),
            dropped_samples: 0,
        }
    }

    /// Adds a sample; returns false (and counts it) when the bound is reached.
    pub fn add(&mut self, s: RawSample) -> bool {
        if let Some(c) = self.map.get_mut(&s.key) {
            *c = c.saturating_add(s.count);
            return true;
        }
        if self.map.len() >= self.max_keys {
            self.dropped_samples = self.dropped_samples.saturating_add(s.count);
            return false;
        }
        self.map.insert(s.key, s.count);
        true
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Samples dropped because the bound was reached.
    pub fn dropped_samples(&self) -> u64 {
        self.dropped_samples
    }

    pub fn total(&self) -> u64 {
        self.map.values().sum()
    }

    /// Takes everything out, resetting the aggregator (the drop counter is kept).
    pub fn take(&mut self) -> Vec<RawSample> {
        self.map
            .drain()
            .map(|(key, count)| RawSample { key, count })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pid: u32, ips: &[u64], count: u64) -> RawSample {
        RawSample {
            key: StackKey {
                unwind: 0,
                pid,
                tid: pid,
                cgroup_id: 1,
                comm: "c".into(),
                kernel: Arc::from(Vec::new()),
                user: ips.into(),
            },
            count,
        }
    }

    #[test]
    fn sums_and_bounds() {
        let mut a = Aggregator::new(2);
        assert!(a.add(s(1, &[1, 2], 3)));
        assert!(a.add(s(1, &[1, 2], 4)));
        assert!(a.add(s(2, &[1], 1)));
        assert!(!a.add(s(3, &[1], 5)));
        assert_eq!(a.len(), 2);
        assert_eq!(a.total(), 8);
        assert_eq!(a.dropped_samples(), 5);
        let v = a.take();
        assert_eq!(v.len(), 2);
        assert!(a.is_empty());
        assert_eq!(a.dropped_samples(), 5);
    }
}
