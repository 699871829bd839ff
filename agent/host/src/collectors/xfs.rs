//! `xfs`: per-filesystem XFS statistics from `<sys>/fs/xfs/<device>/stats/stats`
//! (`node_xfs_*_total{device}`), as node_exporter 1.5 exports them.

use std::path::PathBuf;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};

use crate::util::{dir_names, read_small};
use crate::HostPaths;

/// (section, index, expected section lengths, metric suffix, help).
const METRICS: &[(&str, usize, &[usize], &str, &str)] = &[
    ("extent_alloc", 0, &[4], "extent_allocation_extents_allocated_total", "Number of extents allocated for a filesystem."),
    ("extent_alloc", 1, &[4], "extent_allocation_blocks_allocated_total", "Number of blocks allocated for a filesystem."),
    ("extent_alloc", 2, &[4], "extent_allocation_extents_freed_total", "Number of extents freed for a filesystem."),
    ("extent_alloc", 3, &[4], "extent_allocation_blocks_freed_total", "Number of blocks freed for a filesystem."),
    ("abt", 0, &[4], "allocation_btree_lookups_total", "Number of allocation B-tree lookups for a filesystem."),
    ("abt", 1, &[4], "allocation_btree_compares_total", "Number of allocation B-tree compares for a filesystem."),
    ("abt", 2, &[4], "allocation_btree_records_inserted_total", "Number of allocation B-tree records inserted for a filesystem."),
    ("abt", 3, &[4], "allocation_btree_records_deleted_total", "Number of allocation B-tree records deleted for a filesystem."),
    ("blk_map", 0, &[7], "block_mapping_reads_total", "Number of block map for read operations for a filesystem."),
    ("blk_map", 1, &[7], "block_mapping_writes_total", "Number of block map for write operations for a filesystem."),
    ("blk_map", 2, &[7], "block_mapping_unmaps_total", "Number of block unmaps (deletes) for a filesystem."),
    ("blk_map", 3, &[7], "block_mapping_extent_list_insertions_total", "Number of extent list insertions for a filesystem."),
    ("blk_map", 4, &[7], "block_mapping_extent_list_deletions_total", "Number of extent list deletions for a filesystem."),
    ("blk_map", 5, &[7], "block_mapping_extent_list_lookups_total", "Number of extent list lookups for a filesystem."),
    ("blk_map", 6, &[7], "block_mapping_extent_list_compares_total", "Number of extent list compares for a filesystem."),
    ("bmbt", 0, &[4], "block_map_btree_lookups_total", "Number of block map B-tree lookups for a filesystem."),
    ("bmbt", 1, &[4], "block_map_btree_compares_total", "Number of block map B-tree compares for a filesystem."),
    ("bmbt", 2, &[4], "block_map_btree_records_inserted_total", "Number of block map B-tree records inserted for a filesystem."),
    ("bmbt", 3, &[4], "block_map_btree_records_deleted_total", "Number of block map B-tree records deleted for a filesystem."),
    ("dir", 0, &[4], "directory_operation_lookup_total", "Number of file name directory lookups which miss the operating systems directory name lookup cache."),
    ("dir", 1, &[4], "directory_operation_create_total", "Number of times a new directory entry was created for a filesystem."),
    ("dir", 2, &[4], "directory_operation_remove_total", "Number of times an existing directory entry was created for a filesystem."),
    ("dir", 3, &[4], "directory_operation_getdents_total", "Number of times the directory getdents operation was performed for a filesystem."),
    ("ig", 0, &[7], "inode_operation_attempts_total", "Number of times the OS looked for an XFS inode in the inode cache."),
    ("ig", 1, &[7], "inode_operation_found_total", "Number of times the OS looked for and found an XFS inode in the inode cache."),
    ("ig", 2, &[7], "inode_operation_recycled_total", "Number of times the OS found an XFS inode in the cache, but could not use it as it was being recycled."),
    ("ig", 3, &[7], "inode_operation_missed_total", "Number of times the OS looked for an XFS inode in the cache, but did not find it."),
    ("ig", 4, &[7], "inode_operation_duplicates_total", "Number of times the OS tried to add a missing XFS inode to the inode cache, but found it had already been added by another process."),
    ("ig", 5, &[7], "inode_operation_reclaims_total", "Number of times the OS reclaimed an XFS inode from the inode cache to free memory for another purpose."),
    ("ig", 6, &[7], "inode_operation_attribute_changes_total", "Number of times the OS explicitly changed the attributes of an XFS inode."),
    ("rw", 1, &[2], "read_calls_total", "Number of read(2) system calls made to files in a filesystem."),
    ("rw", 0, &[2], "write_calls_total", "Number of write(2) system calls made to files in a filesystem."),
    ("vnodes", 0, &[7, 8], "vnode_active_total", "Number of vnodes not on free lists for a filesystem."),
    ("vnodes", 1, &[7, 8], "vnode_allocate_total", "Number of times vn_alloc called for a filesystem."),
    ("vnodes", 2, &[7, 8], "vnode_get_total", "Number of times vn_get called for a filesystem."),
    ("vnodes", 3, &[7, 8], "vnode_hold_total", "Number of times vn_hold called for a filesystem."),
    ("vnodes", 4, &[7, 8], "vnode_release_total", "Number of times vn_rele called for a filesystem."),
    ("vnodes", 5, &[7, 8], "vnode_reclaim_total", "Number of times vn_reclaim called for a filesystem."),
    ("vnodes", 6, &[7, 8], "vnode_remove_total", "Number of times vn_remove called for a filesystem."),
];

/// The values of the sections node_exporter exports, `None` for a section absent from the
/// file (reported as 0, as procfs' zero-valued structs). A malformed number or a section
/// of the wrong length fails the file, as in procfs.
pub fn parse_xfs_stats(text: &str) -> Result<Vec<u64>, String> {
    let mut out = vec![0u64; METRICS.len()];
    for line in text.lines() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.len() < 2 {
            continue;
        }
        let wide = f[0] == "xpc";
        let vals: Vec<u64> = f[1..]
            .iter()
            .map(|s| {
                if wide {
                    s.parse::<u64>().ok()
                } else {
                    s.parse::<u32>().ok().map(u64::from)
                }
            })
            .collect::<Option<_>>()
            .ok_or_else(|| format!("invalid number in {line:?}"))?;
        for (i, (sec, idx, lens, _, _)) in METRICS.iter().enumerate() {
            if *sec == f[0] {
                if !lens.contains(&vals.len()) {
                    return Err(format!(
                        "incorrect number of values for XFS {sec} stats: {}",
                        vals.len()
                    ));
                }
                out[i] = vals[*idx];
            }
        }
    }
    Ok(out)
}

pub(crate) struct XfsCollector {
    dir: PathBuf,
}

impl XfsCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        XfsCollector {
            dir: paths.sys.join("fs/xfs"),
        }
    }
}

impl Collector for XfsCollector {
    fn name(&self) -> &'static str {
        "xfs"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let mut fams: Vec<MetricFamily> = METRICS
            .iter()
            .map(|(.., n, h)| MetricFamily::new(format!("node_xfs_{n}"), *h, MetricType::Counter))
            .collect();
        for dev in dir_names(&self.dir).unwrap_or_default() {
            let path = self.dir.join(&dev).join("stats/stats");
            if !path.is_file() {
                continue;
            }
            let text = read_small(&path)?;
            let vals = parse_xfs_stats(&text).map_err(|r| CollectError::parse(&path, r))?;
            for (f, v) in fams.iter_mut().zip(vals) {
                f.push([("device", dev.clone())], v as f64);
            }
        }
        fams.retain(|f| !f.points.is_empty());
        Ok(fams)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rw_is_write_then_read() {
        let v = parse_xfs_stats("rw 7 9\nextent_alloc 1 2 3 4\n").unwrap();
        let i = METRICS
            .iter()
            .position(|m| m.3 == "read_calls_total")
            .unwrap();
        assert_eq!(v[i], 9);
        assert!(parse_xfs_stats("rw 1 2 3\n").is_err());
        assert!(parse_xfs_stats("rw x 2\n").is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_xfs_stats(&s);
        }
    }
}
