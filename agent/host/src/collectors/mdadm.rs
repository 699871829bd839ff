//! `mdadm`: software RAID state from `<proc>/mdstat` (`node_md_state{device,state}`,
//! `node_md_disks{device,state}`, `node_md_disks_required`, `node_md_blocks`,
//! `node_md_blocks_synced`), parsed as procfs 0.8's `parseMDStat`.

use std::path::PathBuf;
use std::sync::OnceLock;

use nodescope_model::{CollectError, Collector, MetricFamily, MetricType};
use regex::Regex;

use crate::util::Buf;
use crate::HostPaths;

/// One md device of `/proc/mdstat`.
#[derive(Clone, Debug, PartialEq)]
pub struct MdStat {
    pub name: String,
    pub activity_state: String,
    pub disks_active: i64,
    pub disks_total: i64,
    pub disks_failed: i64,
    pub disks_spare: i64,
    pub blocks_total: i64,
    pub blocks_synced: i64,
}

fn re(cell: &'static OnceLock<Regex>, pat: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pat).expect("static regex"))
}

static STATUS: OnceLock<Regex> = OnceLock::new();
static BLOCKS: OnceLock<Regex> = OnceLock::new();
static PCT: OnceLock<Regex> = OnceLock::new();
static FINISH: OnceLock<Regex> = OnceLock::new();
static SPEED: OnceLock<Regex> = OnceLock::new();

fn eval_status(device_line: &str, status_line: &str) -> Result<(i64, i64, i64), String> {
    let size: i64 = status_line
        .split_ascii_whitespace()
        .next()
        .ok_or_else(|| format!("unexpected statusLine {status_line:?}"))?
        .parse()
        .map_err(|_| format!("unexpected statusLine {status_line:?}"))?;
    if device_line.contains("raid0") || device_line.contains("linear") {
        let total = device_line.matches('[').count() as i64;
        return Ok((total, total, size));
    }
    if device_line.contains("inactive") {
        return Ok((0, 0, size));
    }
    let caps = re(&STATUS, r"(\d+) blocks .*\[(\d+)/(\d+)\] \[([U_]+)\]")
        .captures(status_line)
        .ok_or_else(|| format!("couldn't find all the substring matches: {status_line}"))?;
    let total = caps[2]
        .parse()
        .map_err(|_| format!("unexpected statusLine {status_line:?}"))?;
    let active = caps[3]
        .parse()
        .map_err(|_| format!("unexpected statusLine {status_line:?}"))?;
    Ok((active, total, size))
}

fn eval_recovery(line: &str) -> Result<i64, String> {
    let err = || format!("unexpected recoveryLine: {line}");
    let b = re(&BLOCKS, r"\((\d+)/\d+\)")
        .captures(line)
        .ok_or_else(err)?;
    let synced: i64 = b[1].parse().map_err(|_| err())?;
    // procfs also requires the percentage, finish time and speed to parse.
    let p = re(&PCT, r"= (.+)%").captures(line).ok_or_else(err)?;
    p[1].trim().parse::<f64>().map_err(|_| err())?;
    let f = re(&FINISH, r"finish=(.+)min")
        .captures(line)
        .ok_or_else(err)?;
    f[1].parse::<f64>().map_err(|_| err())?;
    let s = re(&SPEED, r"speed=(.+)[A-Z]")
        .captures(line)
        .ok_or_else(err)?;
    s[1].parse::<f64>().map_err(|_| err())?;
    Ok(synced)
}

/// Parses `/proc/mdstat`; any malformed device block fails the whole file, as in procfs.
pub fn parse_mdstat(text: &str) -> Result<Vec<MdStat>, String> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty()
            || line.starts_with(' ')
            || line.starts_with("Personalities")
            || line.starts_with("unused")
        {
            continue;
        }
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.len() < 3 {
            return Err(format!(
                "not enough fields in mdline (expected at least 3): {line}"
            ));
        }
        let name = fields[0];
        let mut state = fields[2].to_string();
        if lines.len() <= i + 3 {
            return Err(format!(
                "error parsing {name:?}: too few lines for md device"
            ));
        }
        let fail = line.matches("(F)").count() as i64;
        let spare = line.matches("(S)").count() as i64;
        let (active, total, size) = eval_status(line, lines[i + 1])?;
        let mut sync_idx = i + 2;
        if lines[i + 2].contains("bitmap") {
            sync_idx += 1;
        }
        let sync_line = lines[sync_idx];
        let mut synced = size;
        let recovering = sync_line.contains("recovery");
        let resyncing = sync_line.contains("resync");
        let checking = sync_line.contains("check");
        if recovering || resyncing || checking {
            state = if recovering {
                "recovering"
            } else if checking {
                "checking"
            } else {
                "resyncing"
            }
            .into();
            if sync_line.contains("PENDING") || sync_line.contains("DELAYED") {
                synced = 0;
            } else {
                synced = eval_recovery(sync_line)
                    .map_err(|e| format!("error parsing sync line in md device {name:?}: {e}"))?;
            }
        }
        out.push(MdStat {
            name: name.to_string(),
            activity_state: state,
            disks_active: active,
            disks_total: total,
            disks_failed: fail,
            disks_spare: spare,
            blocks_total: size,
            blocks_synced: synced,
        });
    }
    Ok(out)
}

pub(crate) struct MdadmCollector {
    path: PathBuf,
    buf: Buf,
}

impl MdadmCollector {
    pub(crate) fn new(paths: &HostPaths) -> Self {
        MdadmCollector {
            path: paths.proc.join("mdstat"),
            buf: Buf::new(),
        }
    }
}

impl Collector for MdadmCollector {
    fn name(&self) -> &'static str {
        "mdadm"
    }

    fn collect(&self) -> Result<Vec<MetricFamily>, CollectError> {
        let mds = self.buf.with_file(&self.path, |t| {
            parse_mdstat(t).map_err(|r| CollectError::parse(&self.path, r))
        })?;
        let g = MetricType::Gauge;
        let mut required = MetricFamily::new(
            "node_md_disks_required",
            "Total number of disks of device.",
            g,
        );
        let mut disks = MetricFamily::new(
            "node_md_disks",
            "Number of active/failed/spare disks of device.",
            g,
        );
        let mut state = MetricFamily::new("node_md_state", "Indicates the state of md-device.", g);
        let mut blocks =
            MetricFamily::new("node_md_blocks", "Total number of blocks on device.", g);
        let mut synced = MetricFamily::new(
            "node_md_blocks_synced",
            "Number of blocks synced on device.",
            g,
        );
        for md in mds {
            let d = md.name.clone();
            required.push([("device", d.clone())], md.disks_total as f64);
            for (s, v) in [
                ("active", md.disks_active),
                ("failed", md.disks_failed),
                ("spare", md.disks_spare),
            ] {
                disks.push([("device", d.clone()), ("state", s.into())], v as f64);
            }
            for (label, activity) in [
                ("active", "active"),
                ("inactive", "inactive"),
                ("recovering", "recovering"),
                ("resync", "resyncing"),
                ("check", "checking"),
            ] {
                state.push(
                    [("device", d.clone()), ("state", label.into())],
                    if md.activity_state == activity {
                        1.0
                    } else {
                        0.0
                    },
                );
            }
            blocks.push([("device", d.clone())], md.blocks_total as f64);
            synced.push([("device", d)], md.blocks_synced as f64);
        }
        Ok(vec![required, disks, state, blocks, synced])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_recovering_and_raid0() {
        let t = "Personalities : [raid1] [raid0]\n\
md127 : active raid1 sdi2[0] sdj2[1]\n      312319552 blocks [2/2] [UU]\n      \n\
md6 : active raid1 sdb2[2](F) sdc[1](S) sda2[0]\n      195310144 blocks [2/1] [U_]\n      [=>...................]  recovery =  8.5% (16775552/195310144) finish=17.0min speed=259783K/sec\n      \n\
md8 : active raid0 sdb1[1] sda1[0]\n      7813120 blocks super 1.2 512k chunks\n      \n\
unused devices: <none>\n";
        let m = parse_mdstat(t).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].activity_state, "recovering");
        assert_eq!(m[1].blocks_synced, 16775552);
        assert_eq!(
            (m[1].disks_failed, m[1].disks_spare, m[1].disks_active),
            (1, 1, 1)
        );
        assert_eq!((m[2].disks_total, m[2].disks_active), (2, 2));
        assert!(parse_mdstat("md0 : active raid1\n").is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse_mdstat(&s);
        }
    }
}
