//! Privileged ground-truth tests of the DNS probe on the real kernel (root; CI runs them
//! with NODESCOPE_STRICT_TESTS=1). A DNS server under the test's control
//! (tests/dns_server.py, dnslib) answers in a network namespace the test creates, with
//! known delays and answer codes, and logs every query it receives: that log is the
//! capture the counts are compared with. Clients (`dig`, and glibc through `getent`) run
//! in cgroups the test creates, so each scenario is one workload.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nodescope_ebpf::dns::BOUNDS_NS;
use nodescope_model::{ComponentState, LogRecord, Value};
use nodescope_netprobe::dns::{DnsRows, LookupRows};
use nodescope_netprobe::probe::points_of;
use nodescope_netprobe::{DnsConfig, NetworkConfig};

/// The test DNS server, running in `ns` on port 53 of its address.
struct DnsServer {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl DnsServer {
    fn start(ns: &NetNs) -> DnsServer {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("queries.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dns_server.py");
        // Real-time priority: the injected delays stay exact while other work loads the
        // machine (a late wake-up of the server's timer thread would add to them).
        let mut child = Command::new("chrt")
            .args(["-f", "10", "ip", "netns", "exec", &ns.name, "python3"])
            .arg(&script)
            .args(["--addr", &ns.ns_ip.to_string(), "--port", "53", "--log"])
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting tests/dns_server.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "DNS server did not start (dnslib installed?)"
        );
        DnsServer {
            child,
            log,
            _dir: dir,
        }
    }

    /// Every query the server received so far (the capture).
    fn queries(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn count(&self, f: impl Fn(&serde_json::Value) -> bool) -> u64 {
        self.queries().iter().filter(|q| f(q)).count() as u64
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn first_label(q: &serde_json::Value) -> String {
    q["name"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_string()
}

/// Runs `cmd` (a shell command line) as a process of cgroup `cg`.
fn run_in_cgroup(cg: &TestCgroup, cmd: &str) -> std::process::Output {
    let procs = cg.dir.join("cgroup.procs");
    Command::new("bash")
        .arg("-c")
        .arg(format!("echo $$ > {} && {cmd}", procs.display()))
        .output()
        .expect("bash")
}

fn dig(cg: &TestCgroup, server: &str, name: &str, extra: &str) {
    let out = run_in_cgroup(
        cg,
        &format!("dig @{server} +tries=1 +timeout=3 {extra} {name} A"),
    );
    // dig exits 9 when no answer came: the drop scenario. Anything else is a test bug.
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 9,
        "dig {name}: {code} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn dns_config() -> NetworkConfig {
    NetworkConfig {
        dns: DnsConfig {
            timeout_seconds: 1.5,
            slow_threshold_seconds: 0.1,
            ..DnsConfig::default()
        },
        ..NetworkConfig::default()
    }
}

fn rows_of(h: &Harness, workload: &str) -> (DnsRows, LookupRows) {
    let (rows, lookups) = h.probe.dns_snapshot().expect("DNS probe up");
    (
        rows.into_iter()
            .filter(|(k, _)| k.workload == workload)
            .collect(),
        lookups
            .into_iter()
            .filter(|(k, _)| k.workload == workload)
            .collect(),
    )
}

/// requests of `workload`'s rows with this rcode (and transport, when given).
fn requests(rows: &DnsRows, rcode: &str, transport: Option<&str>) -> u64 {
    rows.iter()
        .filter(|(k, _)| k.rcode == rcode && transport.is_none_or(|t| k.transport == t))
        .map(|(_, s)| s.requests)
        .sum()
}

fn slot_of(v_ns: u64) -> usize {
    BOUNDS_NS
        .iter()
        .position(|&b| v_ns <= b)
        .unwrap_or(BOUNDS_NS.len())
}

fn wait_logs(
    rt: &tokio::runtime::Runtime,
    h: &mut Harness,
    want: impl Fn(&[LogRecord]) -> bool,
) -> Vec<LogRecord> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut all = Vec::new();
    loop {
        rt.block_on(tokio::time::sleep(Duration::from_millis(50)));
        all.extend(h.drain_logs());
        if want(&all) || Instant::now() > deadline {
            return all;
        }
    }
}

fn attr<'a>(r: &'a LogRecord, k: &str) -> &'a str {
    r.attributes
        .iter()
        .chain(r.labels.iter())
        .find(|(a, _)| a == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

const N: usize = 5;

/// Latency within ±10 % of the injected 30 ms and 120 ms delays, in the right buckets;
/// NOERROR / NXDOMAIN / SERVFAIL / REFUSED counted exactly; everything attributed to the
/// client's cgroup; slow and failed answers become events carrying the query name.
#[test]
fn latency_rcodes_events_and_attribution_with_dig() {
    if !require(
        "dns::latency_rcodes_events_and_attribution_with_dig",
        &["ip", "dig", "python3", "chrt"],
    ) {
        return;
    }
    let _g = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let ns = NetNs::new();
    let srv = DnsServer::start(&ns);
    let root = nodescope_netprobe::workload::default_cgroup_root();
    let mut h = start_probe(dns_config());
    assert!(
        h.probe.health().iter().any(|p| p.probe == "dns" && p.up),
        "{:?}",
        h.probe.health()
    );
    let token = tokio_util::sync::CancellationToken::new();
    h.probe.spawn(token.clone()).expect("event reader");
    let server = ns.ns_ip.to_string();

    let names = ["fast", "slow30", "slow120", "nx", "fail", "refused"];
    let cgs: Vec<TestCgroup> = names.iter().map(|_| TestCgroup::new(&root)).collect();
    for _ in 0..N {
        for (name, cg) in names.iter().zip(&cgs) {
            dig(cg, &server, &format!("{name}.test"), "");
        }
    }
    for name in names {
        assert_eq!(
            srv.count(|q| first_label(q) == name),
            N as u64,
            "the server's capture for {name}"
        );
    }

    let check_delay = |cg: &TestCgroup, delay_ms: f64| {
        let (rows, _) = rows_of(&h, &cg.rel);
        let ok: Vec<_> = rows.iter().filter(|(k, _)| k.rcode == "NOERROR").collect();
        assert_eq!(ok.len(), 1, "{rows:?}");
        let (k, s) = ok[0];
        assert_eq!(
            (k.server.as_str(), k.qtype, k.transport),
            (server.as_str(), "A", "udp")
        );
        assert_eq!(s.requests, N as u64);
        let n: u64 = s.hist.iter().sum();
        assert_eq!(n, N as u64, "{s:?}");
        let mean_ms = s.sum_ns as f64 / n as f64 / 1e6;
        eprintln!(
            "{}: {n} answers, mean {mean_ms:.3} ms (injected {delay_ms} ms)",
            k.workload
        );
        if delay_ms > 0.0 {
            assert!(
                (delay_ms * 0.9..=delay_ms * 1.1).contains(&mean_ms),
                "mean {mean_ms} ms, injected {delay_ms} ms"
            );
            // Every answer in the bucket holding the delay and its ±10 %.
            let want = slot_of((delay_ms * 1e6) as u64);
            assert_eq!(slot_of((delay_ms * 0.9e6) as u64), want);
            assert_eq!(slot_of((delay_ms * 1.1e6) as u64), want);
            assert_eq!(s.hist[want], N as u64, "{:?}", s.hist);
        } else {
            assert!(mean_ms < 20.0, "fast answers took {mean_ms} ms");
        }
    };
    check_delay(&cgs[0], 0.0);
    check_delay(&cgs[1], 30.0);
    check_delay(&cgs[2], 120.0);
    for (cg, rcode) in [
        (&cgs[3], "NXDOMAIN"),
        (&cgs[4], "SERVFAIL"),
        (&cgs[5], "REFUSED"),
    ] {
        let (rows, lookups) = rows_of(&h, &cg.rel);
        assert_eq!(
            requests(&rows, rcode, Some("udp")),
            N as u64,
            "{rcode}: {rows:?}"
        );
        let total: u64 = rows.values().map(|s| s.requests).sum();
        assert_eq!(total, N as u64, "only {rcode} for this workload: {rows:?}");
        let l: Vec<_> = lookups.values().collect();
        assert_eq!((l[0].lookups, l[0].queries), (N as u64, N as u64));
    }

    // The exposed families, with their exact names and labels.
    let fams = h.probe.collector().collect().unwrap();
    let reqs = points_of(&fams, "nodescope_dns_requests_total");
    let (l, v) = reqs
        .iter()
        .find(|(l, _)| l["workload"] == cgs[4].rel)
        .expect("requests point");
    assert_eq!(l["rcode"], "SERVFAIL");
    assert_eq!(l["server"], server);
    assert_eq!(l["qtype"], "A");
    assert_eq!(l["transport"], "udp");
    assert_eq!(**v, Value::Number(N as f64));
    assert!(!points_of(&fams, "nodescope_dns_request_duration_seconds").is_empty());
    let up = points_of(&fams, "nodescope_probe_up");
    assert!(up
        .iter()
        .any(|(l, v)| l["probe"] == "dns" && **v == Value::Number(1.0)));

    // Events: slow (120 ms > 100 ms threshold) and failed, with the query name.
    let logs = wait_logs(&rt, &mut h, |all| {
        all.iter().filter(|r| r.kind == "dns_failed").count() >= 2 * N
            && all.iter().filter(|r| r.kind == "dns_slow").count() >= N
    });
    let ours: Vec<&LogRecord> = logs
        .iter()
        .filter(|r| attr(r, "server") == server)
        .collect();
    let slow: Vec<_> = ours.iter().filter(|r| r.kind == "dns_slow").collect();
    assert_eq!(slow.len(), N, "{ours:?}");
    eprintln!("slow event: {}", slow[0].body);
    assert!(slow.iter().all(|r| attr(r, "query_name") == "slow120.test"
        && attr(r, "workload") == cgs[2].rel
        && !attr(r, "process").is_empty()
        && !attr(r, "pid").is_empty()));
    let failed: Vec<_> = ours.iter().filter(|r| r.kind == "dns_failed").collect();
    assert_eq!(failed.len(), 2 * N, "{ours:?}");
    assert!(failed
        .iter()
        .any(|r| attr(r, "query_name") == "fail.test" && attr(r, "rcode") == "SERVFAIL"));
    assert!(failed
        .iter()
        .any(|r| attr(r, "query_name") == "refused.test" && attr(r, "rcode") == "REFUSED"));
    assert!(
        !ours
            .iter()
            .any(|r| r.labels.iter().any(|(k, _)| k == "query_name")),
        "the query name is never a label"
    );
    token.cancel();
}

/// A name the server never answers: every attempt dig makes (two, one second apart) is
/// counted as `rcode="timeout"`, whether the kernel saw it re-sent or user space swept it
/// after `timeout_seconds`, and each is an event with the query name.
#[test]
fn unanswered_queries_are_timeouts() {
    if !require(
        "dns::unanswered_queries_are_timeouts",
        &["ip", "dig", "python3", "chrt"],
    ) {
        return;
    }
    let _g = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let ns = NetNs::new();
    let srv = DnsServer::start(&ns);
    let root = nodescope_netprobe::workload::default_cgroup_root();
    let cg = TestCgroup::new(&root);
    let mut h = start_probe(dns_config());
    let token = tokio_util::sync::CancellationToken::new();
    h.probe.spawn(token.clone()).expect("event reader");
    let server = ns.ns_ip.to_string();
    let n = 3;
    for _ in 0..n {
        let out = run_in_cgroup(
            &cg,
            &format!("dig @{server} +tries=2 +timeout=1 drop.test A"),
        );
        assert_eq!(out.status.code(), Some(9), "dig must time out");
    }
    let sent = srv.count(|q| first_label(q) == "drop");
    assert!(sent >= n as u64, "capture: {sent}");
    // Past the 1.5 s timeout, the event task's sweep (once a second) has run.
    std::thread::sleep(Duration::from_millis(2600));
    h.probe.sweep_dns_now();
    let (rows, lookups) = rows_of(&h, &cg.rel);
    assert_eq!(
        requests(&rows, "timeout", Some("udp")),
        sent,
        "every attempt the server received is a timeout: {rows:?}"
    );
    assert_eq!(rows.values().map(|s| s.requests).sum::<u64>(), sent);
    assert!(
        rows.values().all(|s| s.hist.iter().sum::<u64>() == 0),
        "timeouts have no latency"
    );
    let l = lookups.values().next().expect("lookups");
    assert_eq!(l.queries, sent);
    let logs = wait_logs(&rt, &mut h, |all| {
        all.iter()
            .filter(|r| r.kind == "dns_timeout" && attr(r, "query_name") == "drop.test")
            .count() as u64
            >= sent
    });
    let t: Vec<_> = logs
        .iter()
        .filter(|r| r.kind == "dns_timeout" && attr(r, "query_name") == "drop.test")
        .collect();
    assert_eq!(t.len() as u64, sent, "{logs:?}");
    assert!(t.iter().all(|r| attr(r, "workload") == cg.rel));
    token.cancel();
}

/// A truncated UDP answer makes dig retry over TCP: the UDP request is counted as
/// `rcode="truncated", transport="udp"`, the retry as `NOERROR` over `tcp`, and the lookup
/// once (two queries).
#[test]
fn tcp_retry_after_truncation_is_one_lookup() {
    if !require(
        "dns::tcp_retry_after_truncation_is_one_lookup",
        &["ip", "dig", "python3", "chrt"],
    ) {
        return;
    }
    let _g = serial();
    let ns = NetNs::new();
    let srv = DnsServer::start(&ns);
    let root = nodescope_netprobe::workload::default_cgroup_root();
    let cg = TestCgroup::new(&root);
    let h = start_probe(dns_config());
    let server = ns.ns_ip.to_string();
    for _ in 0..N {
        dig(&cg, &server, "tc.test", "");
    }
    let udp = srv.count(|q| first_label(q) == "tc" && q["transport"] == "udp");
    let tcp = srv.count(|q| first_label(q) == "tc" && q["transport"] == "tcp");
    assert_eq!((udp, tcp), (N as u64, N as u64), "capture");
    let (rows, lookups) = rows_of(&h, &cg.rel);
    assert_eq!(
        requests(&rows, "truncated", Some("udp")),
        N as u64,
        "{rows:?}"
    );
    assert_eq!(
        requests(&rows, "NOERROR", Some("tcp")),
        N as u64,
        "{rows:?}"
    );
    assert_eq!(rows.values().map(|s| s.requests).sum::<u64>(), 2 * N as u64);
    let (_, tcp_row) = rows.iter().find(|(k, _)| k.transport == "tcp").unwrap();
    assert_eq!(
        tcp_row.hist.iter().sum::<u64>(),
        N as u64,
        "TCP latency observed"
    );
    let l = lookups.values().next().expect("lookups");
    assert_eq!(
        (l.lookups, l.queries),
        (N as u64, 2 * N as u64),
        "{lookups:?}"
    );
}

/// glibc with a search path: `getent ahosts` (getaddrinfo, A and AAAA) of a short name
/// with `ndots:5` tries every search domain. The fan-out the probe reports (queries per
/// lookup) equals what the server received; one getent is one lookup.
#[test]
fn glibc_search_path_fan_out_matches_the_capture() {
    if !require(
        "dns::glibc_search_path_fan_out_matches_the_capture",
        &["ip", "getent", "unshare", "mount", "python3", "chrt"],
    ) {
        return;
    }
    let _g = serial();
    let ns = NetNs::new();
    let srv = DnsServer::start(&ns);
    let root = nodescope_netprobe::workload::default_cgroup_root();
    let h = start_probe(dns_config());
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!(
            "nameserver {}\nsearch a.test b.test\noptions ndots:5 attempts:1 timeout:2\n",
            ns.ns_ip
        ),
    )
    .unwrap();
    let n = 4;
    for (name, first) in [("srch", "srch"), ("srchnx", "srchnx")] {
        let cg = TestCgroup::new(&root);
        for _ in 0..n {
            // A private mount namespace: glibc reads the test's resolv.conf, the host's
            // stays untouched.
            let out = run_in_cgroup(
                &cg,
                &format!(
                    "unshare -m --propagation private bash -c 'mount --bind {} /etc/resolv.conf && getent ahosts {name}'",
                    resolv.display()
                ),
            );
            eprintln!("getent ahosts {name}: {}", out.status);
            // Spaced beyond the lookup gap (0.1 s): separate lookups.
            std::thread::sleep(Duration::from_millis(300));
        }
        let captured = srv.count(|q| first_label(q) == first);
        let (rows, lookups) = rows_of(&h, &cg.rel);
        let l = lookups.values().next().expect("lookups");
        eprintln!(
            "{name}: {} lookups, {} queries, server received {captured}; rows {rows:?}",
            l.lookups, l.queries
        );
        assert_eq!(l.lookups, n as u64, "one lookup per getaddrinfo");
        assert_eq!(l.queries, captured, "fan-out = queries glibc sent");
        assert!(captured >= 4 * n as u64, "the search path was used");
        assert_eq!(
            rows.values().map(|s| s.requests).sum::<u64>(),
            captured,
            "every query answered and counted"
        );
    }
}

/// The DNS probe degrades on its own: without its hook (the cgroup2 directory to attach
/// to does not exist) it is down with a reason naming it, the TCP probes run on.
#[test]
fn missing_cgroup_takes_only_dns_down() {
    if !require("dns::missing_cgroup_takes_only_dns_down", &["ip"]) {
        return;
    }
    let _g = serial();
    let (emitter, _events) = nodescope_model::Emitter::for_test(16);
    let status = nodescope_model::StatusRegistry::default();
    let probe = NetworkConfig::default().build(nodescope_netprobe::NetProbeContext {
        emitter,
        status: status.clone(),
        self_metrics: nodescope_model::selfmetrics::SelfMetrics::new(),
        pods: None,
        cgroup_root: PathBuf::from("/nonexistent/nsnet-cgroup2"),
    });
    let health = probe.health();
    let dns = health.iter().find(|p| p.probe == "dns").unwrap();
    assert!(!dns.up);
    let reason = dns.reason.as_deref().unwrap_or("");
    assert!(reason.contains("/nonexistent/nsnet-cgroup2"), "{reason}");
    assert!(
        health.iter().filter(|p| p.probe != "dns").all(|p| p.up),
        "{health:?}"
    );
    let st = &status.snapshot()[0];
    assert_eq!(st.state, ComponentState::Degraded);
    assert!(
        st.details["probe.dns"].starts_with("down:"),
        "{:?}",
        st.details
    );
    let fams = probe.collector().collect().unwrap();
    let up = points_of(&fams, "nodescope_probe_up");
    assert!(up
        .iter()
        .any(|(l, v)| l["probe"] == "dns" && **v == Value::Number(0.0)));
    assert!(up
        .iter()
        .any(|(l, v)| l["probe"] == "tcp_connect" && **v == Value::Number(1.0)));
    assert!(probe.dns_snapshot().is_none());
    // The TCP probes measure: a refused loopback connect is counted.
    let port = nodescope_testsupport::free_port();
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    let rows = probe.snapshot().unwrap();
    assert!(rows
        .iter()
        .any(|(k, s)| k.peer_port == port.to_string() && s.connect_errors[0] == 1));
}
