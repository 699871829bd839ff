//! The container image, built and run the way the DaemonSet runs it (issue 16, items 12–13).
//!
//! `scripts/image-build.sh` builds deploy/Dockerfile's runtime stage with buildah on a
//! debootstrapped bookworm (no registry), from the binary this `cargo test` built (or
//! `$NODESCOPE_IMAGE_BINARY`), stripped with its debug info split off. Each test renders an
//! overlay with `kubectl kustomize`, translates the DaemonSet's pod spec into podman flags
//! ([`pod_to_podman`]: host PID/network/UTS, user, capabilities, seccomp, read-only root,
//! no-new-privileges, memory limit, env, args, every volume mount) and runs the image with runc.
//!
//! Two things differ from a cluster and are the only edits made: `[kubernetes]` is off (no API
//! server here) and the listen port comes from `NODESCOPE_LISTEN` (a free port, since the host
//! network is shared with other tests). The host's tracefs is mounted at /sys/kernel/tracing
//! when it is not (as on any node) because the `full` overlay mounts it from the host.
//!
//! Needs root, podman, buildah, runc, debootstrap, kubectl, python3 (PyYAML) and go; skipped
//! without them (a failure with NODESCOPE_STRICT_TESTS=1).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{free_port, require_root, require_tool, BIN};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("NODESCOPE_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/image-test"))
}

/// Runs `cmd`, returns (success, stdout, stderr).
fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    {
        let mut si = child.stdin.take().expect("stdin");
        if let Some(data) = stdin {
            si.write_all(data).expect("write stdin");
        }
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Tools {
    podman: PathBuf,
    kubectl: PathBuf,
    python: PathBuf,
    go: PathBuf,
}

fn tools(test: &str) -> Option<Tools> {
    if !require_root(test) {
        return None;
    }
    // buildah, runc and debootstrap are used by scripts/image-build.sh.
    require_tool(test, "buildah", &[])?;
    require_tool(test, "runc", &[])?;
    require_tool(test, "debootstrap", &["/usr/sbin/debootstrap"])?;
    require_tool(test, "objcopy", &[])?;
    Some(Tools {
        podman: require_tool(test, "podman", &[])?,
        kubectl: require_tool(test, "kubectl", &[])?,
        python: require_tool(test, "python3", &[])?,
        go: require_tool(test, "go", &["/usr/lib/go/bin/go"])?,
    })
}

struct Image {
    name: String,
    /// CONTAINERS_CONF written by image-build.sh (runc, default_ulimits).
    conf: PathBuf,
    /// `usr/lib/debug` of the split debug artifact.
    debug_dir: PathBuf,
    build_secs: f64,
}

/// Builds the image once per test binary (both tests share it).
fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        // An image already built by scripts/image-build.sh (the benchmark builds it once).
        if let Ok(name) = std::env::var("NODESCOPE_IMAGE_NAME") {
            return Image {
                name,
                conf: cache_dir().join("containers.conf"),
                debug_dir: cache_dir().join("ctx/out/debug/usr/lib/debug"),
                build_secs: 0.0,
            };
        }
        let bin = std::env::var("NODESCOPE_IMAGE_BINARY").unwrap_or_else(|_| BIN.to_string());
        let name = "localhost/nodescope:image-test";
        let started = Instant::now();
        let (ok, out, err) = run(
            Command::new("bash")
                .arg(repo().join("scripts/image-build.sh"))
                .arg(&bin)
                .arg(name)
                .env("NODESCOPE_IMAGE_CACHE", cache_dir()),
            None,
        );
        assert!(ok, "scripts/image-build.sh {bin} failed:\n{out}\n{err}");
        eprintln!("{}", err.trim_end());
        let build_secs = started.elapsed().as_secs_f64();
        eprintln!("image: built {name} in {build_secs:.1} s");
        Image {
            name: out.trim().to_string(),
            conf: cache_dir().join("containers.conf"),
            debug_dir: cache_dir().join("ctx/out/debug/usr/lib/debug"),
            build_secs,
        }
    })
}

fn podman(t: &Tools, img: &Image) -> Command {
    let mut c = Command::new(&t.podman);
    c.env("CONTAINERS_CONF", &img.conf);
    c
}

/// `kubectl kustomize <overlay>` as JSON objects (via PyYAML).
fn render(t: &Tools, overlay: &str) -> Vec<Value> {
    let dir = repo().join("deploy/kubernetes/overlays").join(overlay);
    let (ok, yaml, err) = run(Command::new(&t.kubectl).arg("kustomize").arg(&dir), None);
    assert!(ok, "kubectl kustomize {} failed:\n{err}", dir.display());
    let (ok, out, err) = run(
        Command::new(&t.python).args([
            "-c",
            "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ]),
        Some(yaml.as_bytes()),
    );
    assert!(ok, "YAML to JSON failed: {err}");
    serde_json::from_str(&out).expect("JSON from python")
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let v: Vec<_> = objs.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(v.len(), 1, "exactly one {kind} expected");
    v[0]
}

/// Kubernetes quantity (`320Mi`, `1Gi`, `500M`, plain bytes) in bytes.
fn quantity_bytes(q: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (u, m) in units {
        if let Some(n) = q.strip_suffix(u) {
            return n.parse::<u64>().expect("quantity number") * m;
        }
    }
    q.parse().expect("plain quantity")
}

/// A pod spec turned into `podman run` arguments, with the files its volumes need.
struct PodRun {
    args: Vec<String>,
    /// configMap / secret / emptyDir contents.
    _dir: tempfile::TempDir,
    user: String,
    caps_added: Vec<String>,
}

/// Translates the rendered DaemonSet (first container) into podman flags. `edit_config`
/// changes the ConfigMap's nodescope.toml; `env` adds variables.
fn pod_to_podman(
    objs: &[Value],
    image: &str,
    name: &str,
    edit_config: &dyn Fn(&str) -> String,
    env: &[(&str, String)],
    extra: &[String],
) -> PodRun {
    let ds = one(objs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container in the pod");
    let c = &containers[0];
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a: Vec<String> = vec!["run".into(), "-d".into(), format!("--name={name}")];
    if pod["hostPID"] == true {
        a.push("--pid=host".into());
    }
    if pod["hostNetwork"] == true {
        // A hostNetwork pod also shares the node's UTS namespace (its hostname).
        a.push("--network=host".into());
        a.push("--uts=host".into());
    }
    let psc = &pod["securityContext"];
    let csc = &c["securityContext"];
    let pick = |k: &str| {
        if csc[k].is_null() {
            psc[k].clone()
        } else {
            csc[k].clone()
        }
    };
    let uid = pick("runAsUser").as_u64().unwrap_or(0);
    let gid = pick("runAsGroup").as_u64().unwrap_or(uid);
    if pick("runAsNonRoot") == true {
        assert_ne!(uid, 0, "runAsNonRoot with uid 0");
    }
    let user = format!("{uid}:{gid}");
    a.push(format!("--user={user}"));
    match pick("seccompProfile")["type"].as_str() {
        Some("Unconfined") => a.push("--security-opt=seccomp=unconfined".into()),
        Some("RuntimeDefault") | None => {} // podman's default profile
        Some(o) => panic!("seccompProfile {o} not translated"),
    }
    if pick("appArmorProfile")["type"] == "Unconfined" {
        a.push("--security-opt=apparmor=unconfined".into());
    }
    if csc["allowPrivilegeEscalation"] == false {
        a.push("--security-opt=no-new-privileges".into());
    }
    if csc["readOnlyRootFilesystem"] == true {
        // Kubernetes adds no tmpfs of its own: neither does this.
        a.push("--read-only".into());
        a.push("--read-only-tmpfs=false".into());
    }
    assert!(csc["privileged"] != true, "privileged is not translated");
    for cap in csc["capabilities"]["drop"].as_array().into_iter().flatten() {
        a.push(format!("--cap-drop={}", cap.as_str().expect("cap")));
    }
    let mut caps_added = Vec::new();
    for cap in csc["capabilities"]["add"].as_array().into_iter().flatten() {
        let cap = cap.as_str().expect("cap").to_string();
        a.push(format!("--cap-add={cap}"));
        caps_added.push(cap);
    }
    if let Some(m) = c["resources"]["limits"]["memory"].as_str() {
        a.push(format!("--memory={}", quantity_bytes(m)));
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string();
    for e in c["env"].as_array().into_iter().flatten() {
        let k = e["name"].as_str().expect("env name");
        let v = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
            hostname.clone()
        } else {
            panic!("env {k}: valueFrom not translated: {}", e["valueFrom"]);
        };
        a.push(format!("--env={k}={v}"));
    }
    for (k, v) in env {
        a.push(format!("--env={k}={v}"));
    }
    let volumes = pod["volumes"].as_array().expect("volumes");
    for (i, m) in c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .enumerate()
    {
        let vname = m["name"].as_str().expect("mount name");
        let target = m["mountPath"].as_str().expect("mountPath");
        let v = volumes
            .iter()
            .find(|v| v["name"] == vname)
            .unwrap_or_else(|| panic!("volume {vname} not in the pod"));
        let mut opts = vec![];
        if m["readOnly"] == true {
            opts.push("ro");
        }
        match m["mountPropagation"].as_str() {
            Some("HostToContainer") => opts.push("rslave"),
            Some("Bidirectional") => opts.push("rshared"),
            _ => {}
        }
        let source: PathBuf = if let Some(p) = v["hostPath"]["path"].as_str() {
            // The agent's own state on the node (WAL, log checkpoints): a directory of
            // this run, so the test leaves nothing on the machine.
            let p = if p == "/var/lib/nodescope" {
                dir.path().join(format!("v{i}"))
            } else {
                PathBuf::from(p)
            };
            match v["hostPath"]["type"].as_str() {
                Some("DirectoryOrCreate") => std::fs::create_dir_all(&p).expect("hostPath dir"),
                Some("Directory") => {
                    assert!(p.is_dir(), "hostPath {} is not a directory", p.display())
                }
                _ => {}
            }
            p
        } else if let Some(cm) = v["configMap"]["name"].as_str() {
            let obj = objs
                .iter()
                .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == cm)
                .unwrap_or_else(|| panic!("ConfigMap {cm} not rendered"));
            let d = dir.path().join(format!("v{i}"));
            std::fs::create_dir_all(&d).expect("configMap dir");
            for (k, val) in obj["data"].as_object().expect("configMap data") {
                let text = val.as_str().expect("configMap value");
                let text = if k == "nodescope.toml" {
                    edit_config(text)
                } else {
                    text.to_string()
                };
                std::fs::write(d.join(k), text).expect("configMap file");
            }
            d
        } else if v["secret"].is_object() {
            // The service-account token Kubernetes would fill in: a random token.
            let d = dir.path().join(format!("v{i}"));
            std::fs::create_dir_all(&d).expect("secret dir");
            let items = v["secret"]["items"].as_array().expect("secret items");
            for it in items {
                let path = it["path"].as_str().expect("item path");
                std::fs::write(d.join(path), format!("image-test-{}", free_port()))
                    .expect("secret file");
            }
            d
        } else if v["emptyDir"].is_object() {
            let d = dir.path().join(format!("v{i}"));
            std::fs::create_dir_all(&d).expect("emptyDir");
            d
        } else {
            panic!("volume {vname}: kind not translated: {v}");
        };
        // Files written here must be readable by the pod's user (Kubernetes makes
        // configMap/secret files 0644 by default).
        if source.starts_with(dir.path()) {
            chmod_tree(&source, uid, gid);
        }
        let source = match m["subPath"].as_str() {
            Some(sp) => source.join(sp),
            None => source,
        };
        let mut spec = format!("{}:{}", source.display(), target);
        if !opts.is_empty() {
            spec.push(':');
            spec.push_str(&opts.join(","));
        }
        a.push(format!("--volume={spec}"));
    }
    a.extend(extra.iter().cloned());
    a.push(image.to_string());
    for arg in c["args"].as_array().into_iter().flatten() {
        a.push(arg.as_str().expect("arg").to_string());
    }
    PodRun {
        args: a,
        _dir: dir,
        user,
        caps_added,
    }
}

fn chmod_tree(p: &Path, uid: u64, gid: u64) {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(p).expect("metadata");
    let mode = if meta.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    // emptyDir is writable by the pod's user, as fsGroup-less emptyDirs are world-writable.
    let _ = std::os::unix::fs::chown(p, Some(uid as u32), Some(gid as u32));
    if meta.is_dir() {
        for e in std::fs::read_dir(p).expect("read_dir") {
            chmod_tree(&e.expect("entry").path(), uid, gid);
        }
    }
}

/// A container removed on drop (its log printed when the test is failing).
struct Container<'a> {
    t: &'a Tools,
    img: &'a Image,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let (_, out, err) = run(podman(self.t, self.img).args(["logs", &self.name]), None);
            eprintln!("--- podman logs {}:\n{out}{err}", self.name);
        }
        let _ = run(
            podman(self.t, self.img).args(["rm", "-f", "-t", "2", &self.name]),
            None,
        );
    }
}

impl Container<'_> {
    fn inspect(&self, fmt: &str) -> String {
        let (ok, out, err) = run(
            podman(self.t, self.img).args(["inspect", "-f", fmt, &self.name]),
            None,
        );
        assert!(ok, "podman inspect {}: {err}", self.name);
        out.trim().to_string()
    }
}

fn start<'a>(t: &'a Tools, img: &'a Image, name: &str, args: &[String]) -> Container<'a> {
    let _ = run(podman(t, img).args(["rm", "-f", name]), None);
    let (ok, out, err) = run(podman(t, img).args(args), None);
    assert!(ok, "podman {}\nfailed: {out}{err}", args.join(" "));
    Container {
        t,
        img,
        name: name.to_string(),
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// GET `url`, waiting out 429s (the profile rate limit) up to a minute.
fn get(url: &str) -> (u16, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client()
            .get(url)
            .send()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let code = r.status().as_u16();
        let wait = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(5);
        let body = r.bytes().expect("body").to_vec();
        if code == 429 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(wait.clamp(1, 30)));
            continue;
        }
        return (code, body);
    }
}

fn wait_ready(base: &str, c: &Container) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Ok(r) = client().get(format!("{base}/readyz")).send() {
            if r.status().as_u16() == 200 {
                return;
            }
        }
        let state = c.inspect("{{.State.Status}}");
        assert_eq!(state, "running", "container {} exited before ready", c.name);
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{} did not become ready at {base}", c.name);
}

fn scrape(base: &str) -> prometheus_parse::Scrape {
    let (code, body) = get(&format!("{base}/metrics"));
    assert_eq!(code, 200, "/metrics");
    let text = String::from_utf8(body).expect("utf-8 metrics");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

fn value(s: &prometheus_parse::Sample) -> f64 {
    match s.value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => f64::NAN,
    }
}

fn host_meminfo_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .expect("meminfo")
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/meminfo"))
}

fn statvfs_size(path: &str) -> u64 {
    let c = std::ffi::CString::new(path).expect("path");
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and an out-pointer to a zeroed statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0, "statvfs {path}");
    s.f_blocks * s.f_frsize
}

fn status(base: &str) -> Vec<Value> {
    let (code, body) = get(&format!("{base}/api/v1/status"));
    assert_eq!(code, 200, "/api/v1/status");
    let v: Value = serde_json::from_slice(&body).expect("status JSON");
    v["components"].as_array().expect("components").clone()
}

fn component<'a>(comps: &'a [Value], name: &str) -> &'a Value {
    comps
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("component {name} not in /api/v1/status"))
}

/// The host's view checked against the agent's metrics: MemTotal, the root filesystem's
/// size, the set of interfaces and the nodename.
fn check_host_metrics(base: &str) {
    let s = scrape(base);
    let find = |name: &str, label: Option<(&str, &str)>| {
        s.samples
            .iter()
            .filter(|x| x.metric == name)
            .find(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("{name} {label:?} not exported"))
    };
    let mem = value(find("node_memory_MemTotal_bytes", None));
    assert_eq!(mem as u64, host_meminfo_kb("MemTotal") * 1024, "MemTotal");
    let root = value(find(
        "node_filesystem_size_bytes",
        Some(("mountpoint", "/")),
    ));
    assert_eq!(root as u64, statvfs_size("/"), "size of the host's /");
    let host_ifaces: BTreeSet<String> = std::fs::read_dir("/sys/class/net")
        .expect("/sys/class/net")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        // The default `host.netdev.device_exclude` (node_exporter's, as Debian runs it).
        .filter(|d| d != "lo")
        .collect();
    let ifaces: BTreeSet<String> = s
        .samples
        .iter()
        .filter(|x| x.metric == "node_network_receive_bytes_total")
        .filter_map(|x| x.labels.get("device").map(str::to_string))
        .collect();
    assert_eq!(ifaces, host_ifaces, "interfaces");
    let uname = find("node_uname_info", None);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(uname.labels.get("nodename"), Some(host.trim()), "nodename");
}

/// Mounts tracefs where nodes have it, once per test binary (the `full` overlay mounts the
/// host's /sys/kernel/tracing read-only; the agent cannot mount it without CAP_SYS_ADMIN).
fn ensure_host_tracefs() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if !Path::new("/sys/kernel/tracing/events").exists() {
            let (ok, _, err) = run(
                Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]),
                None,
            );
            assert!(ok, "mounting tracefs on the host: {err}");
        }
    });
}

/// A CPU-bound shell loop (killed on drop).
fn burner() -> common::Proc {
    let child = Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .expect("spawn sh");
    common::Proc {
        child,
        name: "burner",
    }
}

/// Total sample count of a folded profile, and its lines.
fn folded(body: &[u8]) -> (u64, Vec<String>) {
    let text = String::from_utf8_lossy(body);
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let total = lines
        .iter()
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    (total, lines)
}

#[test]
fn image_runs_as_the_full_overlay() {
    const TEST: &str = "image_runs_as_the_full_overlay";
    let Some(t) = tools(TEST) else { return };
    let img = image();
    ensure_host_tracefs();
    let objs = render(&t, "full");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let name = format!("nodescope-image-full-{}", std::process::id());
    let pod = pod_to_podman(
        &objs,
        &img.name,
        &name,
        &|toml| {
            let edited = toml.replace(
                "[kubernetes]\nenabled = true",
                "[kubernetes]\nenabled = false",
            );
            assert_ne!(edited, toml, "the full overlay enables [kubernetes]");
            edited
        },
        &[("NODESCOPE_LISTEN", format!("127.0.0.1:{port}"))],
        // The split debug artifact, installed where the agent looks for it.
        &[format!(
            "--volume={}:/usr/lib/debug:ro",
            img.debug_dir.display()
        )],
    );
    assert_eq!(
        pod.user, "0:0",
        "the full overlay runs as root with a capability list"
    );
    // The image's binary (what image-build.sh copied in) is stripped and links its debug file.
    let shipped = cache_dir().join("ctx/out/nodescope");
    let (ok, sections, err) = run(
        Command::new("readelf").args(["-S", "-W"]).arg(&shipped),
        None,
    );
    assert!(ok, "readelf {}: {err}", shipped.display());
    assert!(
        // (.debug_gdb_scripts is an allocated section of Rust binaries, not debug info.)
        ![".symtab", ".debug_info", ".debug_line", ".debug_str"]
            .iter()
            .any(|s| sections.contains(s)),
        "{} is not stripped:\n{sections}",
        shipped.display()
    );
    assert!(
        sections.contains(".gnu_debuglink"),
        "no debug link:\n{sections}"
    );
    assert!(
        pod.caps_added.iter().any(|c| c == "BPF"),
        "{:?}",
        pod.caps_added
    );
    let started = Instant::now();
    let c = start(&t, img, &name, &pod.args);
    wait_ready(&base, &c);
    eprintln!(
        "image: full overlay ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The container's capability bounding set is exactly the overlay's list (the agent
    // may drop some of its effective ones itself).
    let pid = c.inspect("{{.State.Pid}}");
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    let caps = |key: &str| {
        st.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
            .unwrap_or_else(|| panic!("{key} in {st}"))
    };
    let bit = |cap: &str| match cap {
        "DAC_READ_SEARCH" => 2,
        "NET_ADMIN" => 12,
        "SYS_PTRACE" => 19,
        "SYS_RESOURCE" => 24,
        "SYSLOG" => 34,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other}: add its bit number here"),
    };
    // Only what this test process holds can be granted (this machine's sandbox has no
    // CAP_SYS_RESOURCE, for one).
    let ours = std::fs::read_to_string("/proc/self/status")
        .expect("own status")
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
        .expect("own CapBnd");
    let listed = pod.caps_added.iter().fold(0u64, |m, c| m | (1 << bit(c)));
    if listed & !ours != 0 {
        eprintln!(
            "image: this test cannot grant {:#x} (not in its own bounding set)",
            listed & !ours
        );
    }
    let want = listed & ours;
    let (bnd, eff) = (caps("CapBnd:"), caps("CapEff:"));
    assert_eq!(
        bnd, want,
        "bounding set {bnd:#x}, the overlay lists {:?}",
        pod.caps_added
    );
    assert_eq!(
        eff & !bnd,
        0,
        "effective {eff:#x} outside the bounding set {bnd:#x}"
    );

    check_host_metrics(&base);

    // Every network probe is up.
    let comps = status(&base);
    let net = component(&comps, "network");
    let probes: Vec<(&String, &Value)> = net["details"]
        .as_object()
        .expect("network details")
        .iter()
        .filter(|(k, _)| k.starts_with("probe."))
        .collect();
    assert!(!probes.is_empty(), "no probes in {net}");
    for (k, v) in &probes {
        assert!(
            v.as_str().is_some_and(|s| s.starts_with("up:")),
            "{k} is not up: {v}"
        );
    }
    assert_eq!(net["state"], "ok", "network: {net}");

    // A host pid (outside any container) is profiled.
    let b = burner();
    let (code, body) = get(&format!(
        "{base}/debug/pprof/profile?pid={}&seconds=2&format=folded",
        b.child.id()
    ));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let (total, lines) = folded(&body);
    assert!(
        total >= 20,
        "{total} samples of a busy host process: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("sh;") || l.starts_with("sh ")),
        "{lines:?}"
    );
    drop(b);

    // A process in another container is attributed to that container's id.
    let busy_name = format!("nodescope-image-busy-{}", std::process::id());
    let busy = start(
        &t,
        img,
        &busy_name,
        &[
            "run".into(),
            "-d".into(),
            format!("--name={busy_name}"),
            "--network=none".into(),
            "--entrypoint=/bin/sh".into(),
            img.name.clone(),
            "-c".into(),
            "while :; do :; done".into(),
        ],
    );
    let busy_id = busy.inspect("{{.Id}}");
    let busy_pid = busy.inspect("{{.State.Pid}}");
    let (code, body) = get(&format!("{base}/debug/pprof/profile?all=true&seconds=2"));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let dir = tempfile::tempdir().expect("tempdir");
    let pb = dir.path().join("all.pb.gz");
    std::fs::write(&pb, &body).expect("write profile");
    let (ok, out, err) = run(
        Command::new(&t.go)
            .args([
                "tool",
                "pprof",
                "-tags",
                &format!("-tagfocus=pid={busy_pid}"),
            ])
            .arg(&pb),
        None,
    );
    assert!(ok, "go tool pprof -tags: {err}");
    let workload = format!("container:{busy_id}");
    assert!(
        out.lines()
            .any(|l| l.trim_end().ends_with(&workload) && l.contains("100%")),
        "samples of pid {busy_pid} not all attributed to {workload}:\n{out}"
    );
    drop(busy);

    // The agent's own profile is symbolized from the split debug file (the image's binary
    // has no symbol table).
    let (code, body) = get(&format!(
        "{base}/debug/pprof/profile?seconds=3&hz=499&format=folded"
    ));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let (_, lines) = folded(&body);
    assert!(
        lines
            .iter()
            // Function names; without the debug file the frames are `nodescope+0x…`.
            .any(|l| l.contains("nodescope_") || l.contains("tokio::")),
        "no agent function names in its own profile: {lines:?}"
    );
    eprintln!(
        "image: full overlay checks done in {:.1} s (image build {:.1} s)",
        started.elapsed().as_secs_f64(),
        img.build_secs
    );
}

#[test]
fn image_runs_as_the_host_metrics_only_overlay() {
    const TEST: &str = "image_runs_as_the_host_metrics_only_overlay";
    let Some(t) = tools(TEST) else { return };
    let img = image();
    let objs = render(&t, "host-metrics-only");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let name = format!("nodescope-image-hmo-{}", std::process::id());
    // The probes are switched on so the reasons they cannot run here are shown.
    let pod = pod_to_podman(
        &objs,
        &img.name,
        &name,
        &|toml| {
            let edited = toml
                .replace("[network]\nenabled = false", "[network]\nenabled = true")
                .replace(
                    "[profiling]\nenabled = false",
                    "[profiling]\nenabled = true",
                );
            assert_ne!(edited, toml, "the base disables network and profiling");
            edited
        },
        &[("NODESCOPE_LISTEN", format!("127.0.0.1:{port}"))],
        &[],
    );
    assert_eq!(pod.user, "65534:65534");
    assert!(pod.caps_added.is_empty(), "{:?}", pod.caps_added);
    let c = start(&t, img, &name, &pod.args);
    wait_ready(&base, &c);
    let pid = c.inspect("{{.State.Pid}}");
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    assert!(
        st.lines().any(|l| l.starts_with("Uid:\t65534\t65534")),
        "{st}"
    );
    assert!(st.lines().any(|l| l == "CapEff:\t0000000000000000"), "{st}");

    check_host_metrics(&base);

    // Every eBPF part says why it is not running.
    let comps = status(&base);
    let net = component(&comps, "network");
    assert_ne!(net["state"], "ok", "{net}");
    let probes: Vec<_> = net["details"]
        .as_object()
        .expect("details")
        .iter()
        .filter(|(k, _)| k.starts_with("probe."))
        .collect();
    assert!(!probes.is_empty(), "{net}");
    for (k, v) in probes {
        let v = v.as_str().unwrap_or_default();
        assert!(
            v.starts_with("down:") && v.contains("not permitted") && v.contains("CAP_BPF"),
            "{k}: {v}"
        );
    }
    // The profiler's eBPF check runs in the background after start.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let comps = status(&base);
        let prof = component(&comps, "profiler");
        let why = prof["last_error"].as_str().unwrap_or_default();
        if why.contains("not permitted") && why.contains("CAP_BPF") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "profiler shows no eBPF reason: {prof}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, body) = get(&format!("{base}/debug/pprof/profile?pid=1&seconds=1"));
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not permitted"), "{body}");
}

/// One `/proc/<pid>/status` field in kB.
fn status_kb(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resident kB per kind of mapping from `/proc/<pid>/smaps`: the binary, shared libraries,
/// the main heap, other anonymous memory (glibc arenas, thread stacks, mmapped buffers).
fn smaps_breakdown(pid: &str) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut out: std::collections::BTreeMap<String, u64> = Default::default();
    let mut kind = String::new();
    for l in text.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let path = l.split_whitespace().nth(5).unwrap_or("");
            kind = match path {
                "" => "anonymous (arenas, stacks, mmaps)".into(),
                "[heap]" => "[heap] (main arena)".into(),
                "/usr/bin/nodescope" => "the agent's binary".into(),
                p if p.starts_with('[') || p.starts_with("anon_inode:") => p.to_string(),
                _ => "other files (mapped by the symbolizer, libc)".into(),
            };
        } else if let Some(v) = l.strip_prefix("Rss:") {
            let kb: u64 = v
                .split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            *out.entry(kind.clone()).or_default() += kb;
        }
    }
    let mut v: Vec<_> = out.into_iter().filter(|(_, kb)| *kb > 0).collect();
    v.sort_by_key(|b| std::cmp::Reverse(b.1));
    v
}

/// utime + stime of a process in clock ticks (USER_HZ = 100).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The memory benchmark of docs/benchmarks.md ("Container memory"), run by
/// scripts/bench-image-memory.sh with the release binary: the image as the `full` overlay
/// (everything the overlay turns on), under a steady load: a gzip scrape of /metrics every
/// second, TCP connects to 500 distinct loopback peers (about 50/s), a 5 s node-wide profile
/// every 20 s, and /api/v1/status, /api/v1/network/connections and /ui/ every 5 s. Prints
/// VmRSS every 10 s, the steady state (median of the last `NODESCOPE_BENCH_MEASURE` seconds,
/// default 60, after `NODESCOPE_BENCH_WARMUP`, default 120) and VmHWM, and where the resident
/// memory is (smaps). `NODESCOPE_BENCH_ENV="K=V ..."` adds container env (e.g. to compare
/// allocator settings); `NODESCOPE_BENCH_OVERLAY` picks another overlay than `full`.
#[test]
#[ignore = "benchmark: scripts/bench-image-memory.sh"]
fn image_memory_bench() {
    const TEST: &str = "image_memory_bench";
    let Some(t) = tools(TEST) else { return };
    let img = image();
    ensure_host_tracefs();
    let secs = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (warmup, measure) = (
        secs("NODESCOPE_BENCH_WARMUP", 120),
        secs("NODESCOPE_BENCH_MEASURE", 60),
    );
    let overlay = std::env::var("NODESCOPE_BENCH_OVERLAY").unwrap_or_else(|_| "full".into());
    let objs = render(&t, &overlay);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let name = format!("nodescope-image-bench-{}", std::process::id());
    let mut env = vec![("NODESCOPE_LISTEN", format!("127.0.0.1:{port}"))];
    let extra_env = std::env::var("NODESCOPE_BENCH_ENV").unwrap_or_default();
    for kv in extra_env.split_whitespace() {
        let (k, v) = kv.split_once('=').expect("NODESCOPE_BENCH_ENV: K=V");
        env.push((k, v.to_string()));
    }
    let pod = pod_to_podman(
        &objs,
        &img.name,
        &name,
        &|toml| {
            toml.replace(
                "[kubernetes]\nenabled = true",
                "[kubernetes]\nenabled = false",
            )
        },
        &env,
        &[],
    );
    let c = start(&t, img, &name, &pod.args);
    wait_ready(&base, &c);
    let pid = c.inspect("{{.State.Pid}}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = {
        let stop = stop.clone();
        move || !stop.load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut threads = Vec::new();
    // Prometheus-like scrape, gzip, every second.
    {
        let (running, url) = (running.clone(), format!("{base}/metrics"));
        threads.push(std::thread::spawn(move || {
            let cl = reqwest::blocking::Client::builder()
                .gzip(true)
                .build()
                .expect("client");
            while running() {
                let _ = cl.get(&url).send().and_then(|r| r.bytes());
                std::thread::sleep(Duration::from_secs(1));
            }
        }));
    }
    // TCP connects to 500 distinct loopback peers.
    {
        let running = running.clone();
        let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("listener");
        let lport = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        threads.push(std::thread::spawn(move || {
            let mut i = 0u32;
            while running() {
                let peer = std::net::Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
                if let Ok(s) = std::net::TcpStream::connect_timeout(
                    &(peer, lport).into(),
                    Duration::from_millis(200),
                ) {
                    let _ = std::io::Write::write_all(&mut &s, b"x");
                }
                while let Ok((s, _)) = listener.accept() {
                    drop(s);
                }
                i = (i + 1) % 500;
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    // Node-wide profiles.
    {
        let (running, url) = (
            running.clone(),
            format!("{base}/debug/pprof/profile?all=true&seconds=5"),
        );
        threads.push(std::thread::spawn(move || {
            while running() {
                let _ = client().get(&url).send().and_then(|r| r.bytes());
                for _ in 0..150 {
                    if !running() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }));
    }
    // API and UI.
    {
        let (running, base) = (running.clone(), base.clone());
        threads.push(std::thread::spawn(move || {
            while running() {
                for p in ["/api/v1/status", "/api/v1/network/connections", "/ui/"] {
                    let _ = client()
                        .get(format!("{base}{p}"))
                        .send()
                        .and_then(|r| r.bytes());
                }
                std::thread::sleep(Duration::from_secs(5));
            }
        }));
    }
    let started = Instant::now();
    let mut rss = Vec::new();
    let mut cpu_start = 0;
    let total = warmup + measure;
    for s in 0..total {
        std::thread::sleep(
            Duration::from_secs(1)
                .saturating_sub(started.elapsed().saturating_sub(Duration::from_secs(s))),
        );
        let kb = status_kb(&pid, "VmRSS:");
        if s == warmup {
            cpu_start = cpu_ticks(&pid);
        }
        if s >= warmup {
            rss.push(kb);
        }
        if s % 10 == 0 {
            eprintln!("bench: t={s:>4}s VmRSS {:.1} MB", kb as f64 / 1024.0);
        }
    }
    let cpu = (cpu_ticks(&pid) - cpu_start) as f64 / 100.0 / measure as f64;
    let hwm = status_kb(&pid, "VmHWM:");
    let (anon, file) = (status_kb(&pid, "RssAnon:"), status_kb(&pid, "RssFile:"));
    let breakdown = smaps_breakdown(&pid);
    let (_, metrics) = get(&format!("{base}/metrics"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for th in threads {
        let _ = th.join();
    }
    let steady = median(&mut rss);
    println!(
        "image_memory_bench: {overlay}: steady VmRSS {:.1} MB (median of {}s after {}s), VmHWM {:.1} MB, at the end RssAnon {:.1} MB RssFile {:.1} MB, CPU {:.2} % of a core, /metrics {} bytes, env [{}]",
        steady as f64 / 1024.0,
        measure,
        warmup,
        hwm as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0,
        cpu * 100.0,
        metrics.len(),
        extra_env
    );
    for (k, kb) in breakdown {
        println!("  {:>8.1} MB  {k}", kb as f64 / 1024.0);
    }
}
