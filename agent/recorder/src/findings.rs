//! Findings: what changed between the baseline window and the incident window, ranked.
//!
//! Each candidate compares one quantity in both windows. Its score is
//! `weight × ln((incident + floor) / (baseline + floor))` when it grew by more than its
//! minimum change: a relative change, damped by a floor below which values are noise,
//! and weighted by how specific the quantity is (a workload's or a peer's beats the
//! node's total, which a fault in one workload also moves). OOM kills always rank first.
//! Every finding names the files and series that show it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::events::Event;
use crate::query::{NetRow, NetworkDoc, Timeline, WorkloadAgg};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Finding {
    pub rank: usize,
    pub score: f64,
    pub kind: String,
    pub title: String,
    pub subject: BTreeMap<String, String>,
    pub incident_value: f64,
    pub baseline_value: f64,
    pub unit: String,
    pub evidence: Vec<String>,
}

/// Everything the findings compare, for one window.
pub struct WindowData<'a> {
    pub secs: f64,
    pub workloads: &'a BTreeMap<String, WorkloadAgg>,
    pub network: &'a NetworkDoc,
    pub timelines: &'a BTreeMap<String, Timeline>,
    pub events: &'a [Event],
    /// The workload ring holds data for this window (else gauges are not compared).
    pub workloads_covered: bool,
}

struct Rule {
    floor: f64,
    weight: f64,
    min_change: f64,
}

fn score(inc: f64, base: f64, r: &Rule) -> Option<f64> {
    if !(inc.is_finite() && base.is_finite()) || inc - base < r.min_change {
        return None;
    }
    let s = r.weight * ((inc + r.floor) / (base.max(0.0) + r.floor)).ln();
    (s > 0.05).then_some(s)
}

fn subj(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn fmt_sel(name: &str, labels: &[(&str, &str)]) -> String {
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("metrics.om: {name}{{{}}}", l.join(","))
}

pub fn compute(inc: &WindowData<'_>, base: &WindowData<'_>) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    let mut push = |score: f64,
                    kind: &str,
                    title: String,
                    subject: BTreeMap<String, String>,
                    iv: f64,
                    bv: f64,
                    unit: &str,
                    evidence: Vec<String>| {
        out.push(Finding {
            rank: 0,
            score: (score * 1000.0).round() / 1000.0,
            kind: kind.into(),
            title,
            subject,
            incident_value: iv,
            baseline_value: bv,
            unit: unit.into(),
            evidence,
        })
    };
    let zero = WorkloadAgg::default();

    // Workloads.
    for (w, a) in inc.workloads {
        let b = base.workloads.get(w).unwrap_or(&zero);
        if a.oom_kills > b.oom_kills && a.oom_kills >= 1.0 {
            push(
                10.0 + a.oom_kills.min(100.0),
                "oom_kill",
                format!(
                    "{w}: {} OOM kill(s) (baseline {})",
                    a.oom_kills, b.oom_kills
                ),
                subj(&[("workload", w)]),
                a.oom_kills,
                b.oom_kills,
                "count",
                vec![
                    fmt_sel(
                        "nodescope_workload_memory_events_total",
                        &[("workload", w), ("event", "oom_kill")],
                    ),
                    "events.ndjson: kind=workload_oom_kill".into(),
                ],
            );
        }
        let r = Rule {
            floor: 0.05,
            weight: 1.5,
            min_change: 0.1,
        };
        if let Some(s) = score(a.cpu_cores, b.cpu_cores, &r) {
            push(
                s,
                "workload_cpu",
                format!(
                    "{w}: CPU {:.2} cores (baseline {:.2})",
                    a.cpu_cores, b.cpu_cores
                ),
                subj(&[("workload", w)]),
                a.cpu_cores,
                b.cpu_cores,
                "cores",
                vec![
                    fmt_sel(
                        "nodescope_workload_cpu_usage_seconds_total",
                        &[("workload", w)],
                    ),
                    format!("cpu-incident.pb.gz vs cpu-baseline.pb.gz: -tagfocus workload={w}"),
                ],
            );
        }
        for (res, iv, bv) in [
            ("cpu", a.psi_cpu, b.psi_cpu),
            ("memory", a.psi_memory, b.psi_memory),
            ("io", a.psi_io, b.psi_io),
        ] {
            let r = Rule {
                floor: 0.02,
                weight: 1.0,
                min_change: 0.05,
            };
            if let Some(s) = score(iv, bv, &r) {
                push(
                    s,
                    &format!("workload_psi_{res}"),
                    format!(
                        "{w}: {res} pressure {:.0}% of the time (baseline {:.0}%)",
                        iv * 100.0,
                        bv * 100.0
                    ),
                    subj(&[("workload", w), ("resource", res)]),
                    iv,
                    bv,
                    "ratio",
                    vec![fmt_sel(
                        "nodescope_workload_pressure_waiting_seconds_total",
                        &[("workload", w), ("resource", res)],
                    )],
                );
            }
        }
        let r = Rule {
            floor: 64.0 * 1048576.0,
            weight: 0.5,
            min_change: 64.0 * 1048576.0,
        };
        if !base.workloads_covered {
            continue;
        }
        if let Some(s) = score(a.memory_max_bytes, b.memory_max_bytes, &r) {
            push(
                s,
                "workload_memory",
                format!(
                    "{w}: memory up to {:.0} MiB (baseline {:.0} MiB)",
                    a.memory_max_bytes / 1048576.0,
                    b.memory_max_bytes / 1048576.0
                ),
                subj(&[("workload", w)]),
                a.memory_max_bytes,
                b.memory_max_bytes,
                "bytes",
                vec![fmt_sel(
                    "nodescope_workload_memory_usage_bytes",
                    &[("workload", w)],
                )],
            );
        }
    }

    // Peers.
    let base_rows: BTreeMap<String, &NetRow> =
        base.network.rows.iter().map(|r| (r.key(), r)).collect();
    for r in &inc.network.rows {
        let b = base_rows.get(&r.key()).copied();
        let s = |v: u64, secs: f64| v as f64 / secs;
        let sel = |name: &str, extra: &[(&str, &str)]| {
            let mut l = vec![
                ("workload", r.workload.as_str()),
                ("peer", r.peer.as_str()),
                ("peer_port", r.peer_port.as_str()),
            ];
            l.extend_from_slice(extra);
            fmt_sel(name, &l)
        };
        let subject = subj(&[
            ("workload", &r.workload),
            ("peer", &r.peer),
            ("peer_port", &r.peer_port),
            ("direction", &r.direction),
        ]);
        let row_ev = format!("network.json: row {}", r.key());
        for (reason, v) in &r.errors {
            let iv: u64 = v.iter().sum();
            let bv: u64 = b
                .and_then(|b| b.errors.get(reason))
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            let rule = Rule {
                floor: 0.2,
                weight: 2.0,
                min_change: 3.0 / inc.secs,
            };
            if let Some(sc) = score(s(iv, inc.secs), s(bv, base.secs), &rule) {
                let mut subject = subject.clone();
                subject.insert("reason".into(), reason.clone());
                push(
                    sc,
                    "connect_errors",
                    format!(
                        "{} → {}:{} connect errors ({reason}) {:.2}/s (baseline {:.2}/s)",
                        r.workload,
                        r.peer,
                        r.peer_port,
                        s(iv, inc.secs),
                        s(bv, base.secs)
                    ),
                    subject,
                    s(iv, inc.secs),
                    s(bv, base.secs),
                    "per_second",
                    vec![
                        sel("nodescope_tcp_connect_errors_total", &[("reason", reason)]),
                        row_ev.clone(),
                        "events.ndjson: kind=tcp_connect_failed".into(),
                    ],
                );
            }
        }
        let (ir, br) = (
            r.total_retransmits(),
            b.map(|b| b.total_retransmits()).unwrap_or(0),
        );
        let rule = Rule {
            floor: 0.5,
            weight: 1.5,
            min_change: 5.0 / inc.secs,
        };
        if let Some(sc) = score(s(ir, inc.secs), s(br, base.secs), &rule) {
            push(
                sc,
                "retransmits",
                format!(
                    "{} → {}:{} retransmits {:.2}/s (baseline {:.2}/s)",
                    r.workload,
                    r.peer,
                    r.peer_port,
                    s(ir, inc.secs),
                    s(br, base.secs)
                ),
                subject.clone(),
                s(ir, inc.secs),
                s(br, base.secs),
                "per_second",
                vec![sel("nodescope_tcp_retransmits_total", &[]), row_ev.clone()],
            );
        }
        let (irs, brs) = (r.total_resets(), b.map(|b| b.total_resets()).unwrap_or(0));
        // Loopback chatter resets a few times a second on a busy node: below 2/s is noise.
        let rule = Rule {
            floor: 2.0,
            weight: 1.0,
            min_change: 3.0 / inc.secs,
        };
        if let Some(sc) = score(s(irs, inc.secs), s(brs, base.secs), &rule) {
            push(
                sc,
                "resets",
                format!(
                    "{} → {}:{} resets {:.2}/s (baseline {:.2}/s)",
                    r.workload,
                    r.peer,
                    r.peer_port,
                    s(irs, inc.secs),
                    s(brs, base.secs)
                ),
                subject.clone(),
                s(irs, inc.secs),
                s(brs, base.secs),
                "per_second",
                vec![
                    sel("nodescope_tcp_resets_total", &[]),
                    row_ev.clone(),
                    "events.ndjson: kind=tcp_reset_received|tcp_reset_sent".into(),
                ],
            );
        }
        for (rtt, kind, floor, min, least) in [
            (false, "connect_p99", 0.001, 0.005, 3),
            // RTT rises by milliseconds whenever the CPUs are busy: a floor of 5 ms.
            (true, "rtt_p99", 0.005, 0.002, 10),
        ] {
            let (ib, bb) = if rtt {
                (&inc.network.rtt_buckets, &base.network.rtt_buckets)
            } else {
                (&inc.network.connect_buckets, &base.network.connect_buckets)
            };
            let n: u64 = if rtt {
                r.rtt_hist.iter().flatten().sum()
            } else {
                r.total_connects()
            };
            if n < least {
                continue;
            }
            let Some(iv) = r.p99(ib, rtt) else { continue };
            let bv = b.and_then(|b| b.p99(bb, rtt)).unwrap_or(0.0);
            let rule = Rule {
                floor,
                weight: 1.2,
                min_change: min,
            };
            if let Some(sc) = score(iv, bv, &rule) {
                let fam = if rtt {
                    "nodescope_tcp_rtt_seconds_bucket"
                } else {
                    "nodescope_tcp_connect_duration_seconds_bucket"
                };
                push(
                    sc,
                    kind,
                    format!(
                        "{} → {}:{} {} {:.1} ms (baseline {:.1} ms)",
                        r.workload,
                        r.peer,
                        r.peer_port,
                        kind.replace('_', " "),
                        iv * 1000.0,
                        bv * 1000.0
                    ),
                    subject.clone(),
                    iv,
                    bv,
                    "seconds",
                    vec![sel(fam, &[]), row_ev.clone()],
                );
            }
        }
    }

    // The node.
    let host = |t: &BTreeMap<String, Timeline>, g: &str, s: &str| -> Option<f64> {
        let tl = t.get(g)?;
        let st = crate::query::timeline_stats(tl);
        st.get(s).map(|x| x.0)
    };
    for (g, s, kind, floor, unit, fam) in [
        (
            "cpu",
            "idle",
            "node_cpu_busy",
            0.05,
            "ratio",
            "node_cpu_seconds_total",
        ),
        (
            "psi",
            "cpu_some",
            "node_psi_cpu",
            0.02,
            "ratio",
            "node_pressure_cpu_waiting_seconds_total",
        ),
        (
            "psi",
            "memory_some",
            "node_psi_memory",
            0.02,
            "ratio",
            "node_pressure_memory_waiting_seconds_total",
        ),
        (
            "psi",
            "io_some",
            "node_psi_io",
            0.02,
            "ratio",
            "node_pressure_io_waiting_seconds_total",
        ),
        (
            "network",
            "receive_drops",
            "node_receive_drops",
            1.0,
            "per_second",
            "node_network_receive_drop_total",
        ),
        (
            "network",
            "tcp_retransmits",
            "node_tcp_retransmits",
            1.0,
            "per_second",
            "node_netstat_Tcp_RetransSegs",
        ),
        (
            "disk",
            "io_time",
            "node_disk_busy",
            0.05,
            "ratio",
            "node_disk_io_time_seconds_total",
        ),
        ("load", "load1", "node_load", 0.5, "load", "node_load1"),
    ] {
        let (Some(mut iv), Some(mut bv)) = (host(inc.timelines, g, s), host(base.timelines, g, s))
        else {
            continue;
        };
        if s == "idle" {
            iv = 1.0 - iv;
            bv = 1.0 - bv;
        }
        let rule = Rule {
            floor,
            weight: 0.8,
            min_change: floor,
        };
        if let Some(sc) = score(iv, bv, &rule) {
            push(
                sc,
                kind,
                format!(
                    "node: {} {iv:.3} (baseline {bv:.3})",
                    kind.trim_start_matches("node_").replace('_', " ")
                ),
                subj(&[("node", "")]),
                iv,
                bv,
                unit,
                vec![
                    format!("metrics.om: {fam}"),
                    format!("data.json: timelines.{g}.{s}"),
                ],
            );
        }
    }

    // Events by kind.
    let count = |ev: &[Event]| -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for e in ev {
            if e.kind != "incident" {
                *m.entry(e.kind.clone()).or_insert(0) += 1;
            }
        }
        m
    };
    let (ic, bc) = (count(inc.events), count(base.events));
    for (k, n) in &ic {
        let b = bc.get(k).copied().unwrap_or(0);
        let rule = Rule {
            floor: 1.0,
            weight: 0.7,
            min_change: 3.0,
        };
        if let Some(sc) = score(*n as f64, b as f64, &rule) {
            push(
                sc,
                "events",
                format!("{n} {k} events (baseline {b})"),
                subj(&[("event_kind", k)]),
                *n as f64,
                b as f64,
                "count",
                vec![format!("events.ndjson: kind={k}")],
            );
        }
    }

    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.title.cmp(&b.title))
    });
    out.truncate(100);
    for (i, f) in out.iter_mut().enumerate() {
        f.rank = i + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wl(cpu: f64, oom: f64) -> WorkloadAgg {
        WorkloadAgg {
            cpu_cores: cpu,
            oom_kills: oom,
            ..Default::default()
        }
    }

    fn empty_net() -> NetworkDoc {
        NetworkDoc {
            step_seconds: 10,
            timestamps: vec![],
            connect_buckets: vec![None],
            rtt_buckets: vec![None],
            rows: vec![],
        }
    }

    #[test]
    fn a_new_hog_outranks_a_busy_neighbour_and_oom_outranks_all() {
        let tl = BTreeMap::new();
        let net = empty_net();
        let inc_w: BTreeMap<String, WorkloadAgg> = [
            ("/hog".to_string(), wl(0.9, 0.0)),
            ("/build".to_string(), wl(1.2, 0.0)),
        ]
        .into();
        let base_w: BTreeMap<String, WorkloadAgg> = [("/build".to_string(), wl(0.6, 0.0))].into();
        let w = |wls, evs| WindowData {
            secs: 60.0,
            workloads: wls,
            network: &net,
            timelines: &tl,
            events: evs,
            workloads_covered: true,
        };
        let f = compute(&w(&inc_w, &[]), &w(&base_w, &[]));
        assert_eq!(f[0].subject["workload"], "/hog");
        assert_eq!(f[0].rank, 1);
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.contains("nodescope_workload_cpu_usage_seconds_total")));
        let inc_w: BTreeMap<String, WorkloadAgg> = [
            ("/hog".to_string(), wl(0.9, 0.0)),
            ("/mem".to_string(), wl(0.1, 1.0)),
        ]
        .into();
        let f = compute(&w(&inc_w, &[]), &w(&base_w, &[]));
        assert_eq!(f[0].kind, "oom_kill");
        // Nothing changed: no finding.
        assert!(compute(&w(&base_w, &[]), &w(&base_w, &[])).is_empty());
    }
}
