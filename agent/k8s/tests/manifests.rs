//! deploy/kubernetes: every kustomization renders with `kubectl kustomize`, the output
//! validates offline against the Kubernetes 1.31 JSON schemas (`kubernetes-validate
//! --strict`), prometheus-operator resources validate against the CRD schemas from
//! `@kubernetes-models/prometheus-operator`, and the objects are consistent with each
//! other and with the agent's config types. Also checks deploy/systemd with
//! `systemd-analyze verify`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nodescope_k8s::KubernetesConfig;
use nodescope_model::config::Issues;
use nodescope_testsupport::{require_tool, skip};
use serde_json::Value;

const K8S_VERSION: &str = "1.31";
const NPM_PREFIX_ENV: &str = "NODESCOPE_TEST_NPM_PREFIX";
const NPM_PREFIX_DEFAULT: &str = "/usr/local/lib/nodescope-test-npm";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    {
        let mut si = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            si.write_all(data).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Tools {
    kubectl: PathBuf,
    validate: PathBuf,
    python: PathBuf,
}

fn tools(test: &str) -> Option<Tools> {
    Some(Tools {
        kubectl: require_tool(test, "kubectl", &[])?,
        validate: require_tool(test, "kubernetes-validate", &[])?,
        python: require_tool(test, "python3", &[])?,
    })
}

fn render(t: &Tools, dir: &Path) -> String {
    let (ok, out, err) = run(Command::new(&t.kubectl).arg("kustomize").arg(dir), None);
    assert!(ok, "kubectl kustomize {} failed:\n{err}", dir.display());
    out
}

fn to_json(t: &Tools, yaml: &str) -> Vec<Value> {
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

/// Runs kubernetes-validate; returns (passed, kinds without a built-in schema, output).
fn k8s_validate(t: &Tools, yaml: &str) -> (bool, BTreeSet<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("rendered.yaml");
    std::fs::write(&f, yaml).unwrap();
    let (ok, out, err) = run(
        Command::new(&t.validate)
            .args(["--strict", "-k", K8S_VERSION])
            .arg(&f),
        None,
    );
    let all = format!("{out}{err}");
    let mut unknown = BTreeSet::new();
    for line in all.lines() {
        if let Some(rest) = line.split("Couldn't find schema for kind ").nth(1) {
            if let Some(kind) = rest.split_whitespace().next() {
                unknown.insert(kind.to_string());
            }
        }
    }
    let no_errors = ok && !all.lines().any(|l| l.starts_with("ERROR"));
    (no_errors, unknown, all)
}

fn npm_prefix() -> PathBuf {
    std::env::var_os(NPM_PREFIX_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(NPM_PREFIX_DEFAULT))
}

/// Validates PodMonitor/ServiceMonitor objects with the CRD schemas; None when the
/// validator is unavailable (skipped / failed in strict mode by the caller).
fn crd_validate(test: &str, objects: &[Value]) -> Option<(bool, String)> {
    let node = require_tool(test, "node", &[])?;
    let prefix = npm_prefix();
    if !prefix
        .join("node_modules/@kubernetes-models/prometheus-operator")
        .is_dir()
    {
        skip(
            test,
            &format!(
                "npm package @kubernetes-models/prometheus-operator is not installed under {} \
                 (npm install --prefix {} @kubernetes-models/prometheus-operator@6.0.0)",
                prefix.display(),
                prefix.display()
            ),
        );
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/validate-crd.mjs");
    let input = serde_json::to_vec(objects).unwrap();
    let (ok, out, err) = run(Command::new(node).arg(script).arg(&prefix), Some(&input));
    Some((ok, format!("{out}{err}")))
}

fn kind<'a>(objs: &'a [Value], k: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == k).collect()
}

fn one<'a>(objs: &'a [Value], k: &str) -> &'a Value {
    let v = kind(objs, k);
    assert_eq!(v.len(), 1, "expected exactly one {k}");
    v[0]
}

fn has_named(objs: &[Value], k: &str, name: &str) -> bool {
    kind(objs, k).iter().any(|o| o["metadata"]["name"] == name)
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .map(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
        .unwrap_or(false)
}

fn secs(s: &str) -> u64 {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("duration {s:?}"));
    match unit {
        "s" | "" => n,
        "m" => n * 60,
        other => panic!("unexpected unit {other:?} in {s:?}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    HostOnly,
    Full,
    Privileged,
}

/// The capabilities the eBPF variant may add. SYS_ADMIN is deliberately absent: tracefs
/// and bpffs are mounted from the host.
const ALLOWED_CAPS: &[&str] = &[
    "BPF",
    "PERFMON",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
    "SYSLOG",
    "SYS_RESOURCE",
    "CHECKPOINT_RESTORE",
    // The DNS probe's cgroup_skb programs: the kernel loads networking program types only
    // with CAP_NET_ADMIN (or SYS_ADMIN).
    "NET_ADMIN",
];

fn check_objects(name: &str, objs: &[Value], variant: Variant) {
    let ns = one(objs, "Namespace");
    let ns_name = ns["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
        "{name}: hostPID/hostNetwork/hostPath need the privileged Pod Security level"
    );
    for o in objs {
        let k = o["kind"].as_str().unwrap();
        if !["Namespace", "ClusterRole", "ClusterRoleBinding"].contains(&k) {
            assert_eq!(
                o["metadata"]["namespace"], ns_name,
                "{name}: {k} outside the namespace"
            );
        }
    }

    // RBAC: read-only access to pods, Services and EndpointSlices (peer naming), nothing
    // else.
    let role = one(objs, "ClusterRole");
    assert_eq!(
        role["rules"],
        serde_json::json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}
        ]),
        "{name}: ClusterRole"
    );
    let binding = one(objs, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);

    let ds = one(objs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert!(labels_match(
        &ds["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    assert_eq!(pod["hostPID"], true, "{name}: hostPID");
    assert_eq!(pod["hostNetwork"], true, "{name}: hostNetwork");
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "{name}: must tolerate every taint"
    );
    let sa = pod["serviceAccountName"].as_str().unwrap();
    assert!(
        has_named(objs, "ServiceAccount", sa),
        "{name}: service account {sa}"
    );
    assert!(binding["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == sa && s["namespace"] == ns_name));

    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let env: Vec<&Value> = c["env"].as_array().unwrap().iter().collect();
    let env_of = |n: &str| env.iter().find(|e| e["name"] == n).copied();
    assert_eq!(
        env_of("NODE_NAME").expect("NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        env_of("NODESCOPE_HOST_ROOT").expect("host root")["value"],
        "/host"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for r in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c["resources"][r][res].is_string(),
                "{name}: resources.{r}.{res}"
            );
        }
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");

    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = |p: &str| mounts.iter().find(|m| m["mountPath"] == p);
    for p in ["/host/proc", "/host/sys", "/host/root"] {
        let m = mount(p).unwrap_or_else(|| panic!("{name}: mount {p}"));
        assert_eq!(m["readOnly"], true, "{name}: {p} must be read-only");
    }
    let volumes = pod["volumes"].as_array().unwrap();
    for m in mounts {
        assert!(
            volumes.iter().any(|v| v["name"] == m["name"]),
            "{name}: mount {} has no volume",
            m["name"]
        );
    }
    let host_path = |vol: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == vol)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .map(str::to_string)
    };
    assert_eq!(
        host_path(mount("/host/root").unwrap()["name"].as_str().unwrap()).as_deref(),
        Some("/")
    );

    // Config and token volumes reference generated objects that exist.
    let cm_name = volumes
        .iter()
        .find_map(|v| v["configMap"]["name"].as_str())
        .expect("config volume");
    let cm = kind(objs, "ConfigMap")
        .into_iter()
        .find(|o| o["metadata"]["name"] == cm_name)
        .unwrap_or_else(|| panic!("{name}: ConfigMap {cm_name} referenced but not rendered"));
    let secret_name = volumes
        .iter()
        .find_map(|v| v["secret"]["secretName"].as_str())
        .expect("token volume");
    assert!(
        has_named(objs, "Secret", secret_name),
        "{name}: Secret {secret_name}"
    );

    // The config parses as TOML; the sections owned by this repo's crates parse with their
    // own types (deny_unknown_fields) and validate.
    let toml_text = cm["data"]["nodescope.toml"]
        .as_str()
        .expect("nodescope.toml key");
    let cfg: toml::Table = toml::from_str(toml_text).expect("config is TOML");
    let agent = cfg["agent"].as_table().unwrap();
    assert_eq!(agent["host_root"].as_str(), Some("/host"));
    let listen = agent["listen"].as_str().unwrap();
    assert!(
        listen.starts_with("0.0.0.0:"),
        "{name}: DaemonSet listens node-wide"
    );
    let port: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let http_port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .expect("http port");
    assert_eq!(
        http_port["containerPort"], port,
        "{name}: port matches listen"
    );
    let security: nodescope_httpguard::SecurityConfig = cfg["http"]["security"]
        .clone()
        .try_into()
        .expect("[http.security] parses as SecurityConfig");
    let mut issues = Issues::default();
    security.validate("http.security", &mut issues);
    security.validate_for_listen(false, "http.security", &mut issues);
    assert!(issues.is_empty(), "{name}: {:?}", issues.list);
    let token_path = security
        .token_file
        .as_deref()
        .and_then(Path::to_str)
        .expect("token_file when not on loopback");
    let token_mount = mounts
        .iter()
        .find(|m| token_path.starts_with(m["mountPath"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("{name}: {token_path} is not on a mounted volume"));
    let token_vol = volumes
        .iter()
        .find(|v| v["name"] == token_mount["name"])
        .unwrap();
    assert_eq!(token_vol["secret"]["secretName"], secret_name);
    // Shutdown flush fits in the grace period.
    let shutdown = agent
        .get("shutdown_timeout")
        .and_then(|v| v.as_str())
        .map(secs)
        .unwrap_or(10);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace >= shutdown + 5,
        "{name}: grace {grace}s < shutdown {shutdown}s + 5s"
    );

    let mut k8s: KubernetesConfig = match cfg.get("kubernetes") {
        Some(t) => t
            .clone()
            .try_into()
            .expect("[kubernetes] parses as KubernetesConfig"),
        None => KubernetesConfig::default(),
    };
    // In the pod these come from $NODE_NAME and $KUBERNETES_SERVICE_HOST.
    if k8s.node_name.is_empty() {
        k8s.node_name = "validation-node".into();
    }
    if k8s.api_server.is_empty() {
        k8s.api_server = "https://10.96.0.1:443".into();
    }
    let mut issues = Issues::default();
    k8s.validate("kubernetes", &mut issues);
    assert!(issues.is_empty(), "{name}: {:?}", issues.list);

    // Service selects the agent pods and exposes the http port.
    let svc = one(objs, "Service");
    assert_eq!(svc["spec"]["clusterIP"], "None", "{name}: headless");
    assert!(
        labels_match(&svc["spec"]["selector"], pod_labels),
        "{name}: Service selector"
    );
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");

    let enabled = |section: &str| {
        cfg.get(section)
            .and_then(|s| s.get("enabled"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    };
    let mount_paths: BTreeSet<&str> = mounts
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    let pod_sc = &pod["securityContext"];
    match variant {
        Variant::HostOnly => {
            assert_eq!(pod_sc["runAsUser"], 65534, "{name}");
            assert_eq!(pod_sc["runAsNonRoot"], true, "{name}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{name}"
            );
            assert!(
                sc["capabilities"].get("add").is_none(),
                "{name}: no capabilities added"
            );
            assert_eq!(sc["allowPrivilegeEscalation"], false);
            assert!(sc.get("privileged").is_none_or(|p| p == false));
            assert!(
                !enabled("network") && !enabled("profiling"),
                "{name}: no eBPF"
            );
        }
        Variant::Full => {
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{name}"
            );
            let add: Vec<&str> = sc["capabilities"]["add"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            for cap in &add {
                assert!(
                    ALLOWED_CAPS.contains(cap),
                    "{name}: capability {cap} not allowed"
                );
            }
            for need in ["BPF", "PERFMON", "SYS_PTRACE"] {
                assert!(add.contains(&need), "{name}: needs {need}");
            }
            assert!(
                sc.get("privileged").is_none_or(|p| p == false),
                "{name}: not privileged"
            );
            assert_eq!(sc["allowPrivilegeEscalation"], false);
            assert!(
                mount_paths.contains("/sys/kernel/tracing") && mount_paths.contains("/sys/fs/bpf")
            );
            assert!(enabled("network") && enabled("profiling") && enabled("kubernetes"));
        }
        Variant::Privileged => {
            assert_eq!(sc["privileged"], true, "{name}");
            assert!(
                sc.get("capabilities").is_none(),
                "{name}: privileged has no cap list"
            );
            assert!(enabled("network") && enabled("profiling"));
        }
    }

    // prometheus-operator objects select the agent pods on a real port.
    for pm in kind(objs, "PodMonitor") {
        assert!(
            labels_match(&pm["spec"]["selector"]["matchLabels"], pod_labels),
            "{name}: PodMonitor selector does not match the agent pods"
        );
        for ep in pm["spec"]["podMetricsEndpoints"].as_array().unwrap() {
            assert!(
                c["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == ep["port"]),
                "{name}: PodMonitor port {} not on the container",
                ep["port"]
            );
            assert_eq!(ep["path"], "/metrics");
        }
    }
}

#[test]
fn every_kustomization_renders_and_validates_offline() {
    let test = "every_kustomization_renders_and_validates_offline";
    let Some(t) = tools(test) else { return };
    let root = repo().join("deploy/kubernetes");
    let variants = [
        ("deploy/kubernetes", ".", Variant::Full, false),
        ("base", "base", Variant::HostOnly, false),
        (
            "host-metrics-only",
            "overlays/host-metrics-only",
            Variant::HostOnly,
            false,
        ),
        ("full", "overlays/full", Variant::Full, false),
        (
            "privileged",
            "overlays/privileged",
            Variant::Privileged,
            false,
        ),
        (
            "prometheus-operator",
            "overlays/prometheus-operator",
            Variant::Full,
            true,
        ),
    ];
    // Every overlay directory is covered.
    let on_disk: BTreeSet<String> = std::fs::read_dir(root.join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let covered: BTreeSet<String> = variants
        .iter()
        .filter_map(|v| v.1.strip_prefix("overlays/").map(str::to_string))
        .collect();
    assert_eq!(on_disk, covered, "an overlay is not covered by this test");

    for (name, dir, variant, has_crd) in variants {
        let yaml = render(&t, &root.join(dir));
        let (ok, unknown, out) = k8s_validate(&t, &yaml);
        assert!(
            ok,
            "{name}: kubernetes-validate {K8S_VERSION} failed:\n{out}"
        );
        let objs = to_json(&t, &yaml);
        check_objects(name, &objs, variant);
        if has_crd {
            assert_eq!(
                unknown,
                BTreeSet::from(["PodMonitor".to_string()]),
                "{name}: only the PodMonitor lacks a built-in schema"
            );
            match crd_validate(test, &objs) {
                Some((true, out)) => assert!(out.contains("VALID PodMonitor/nodescope"), "{out}"),
                Some((false, out)) => panic!("{name}: PodMonitor CRD validation failed:\n{out}"),
                None => return,
            }
        } else {
            assert!(
                unknown.is_empty(),
                "{name}: kinds without schema: {unknown:?}\n{out}"
            );
        }
        eprintln!("{name}: {} objects rendered and validated", objs.len());
    }
}

/// The validators can fail: broken objects are rejected (guards against a validator
/// that silently passes everything).
#[test]
fn validators_reject_broken_objects() {
    let test = "validators_reject_broken_objects";
    let Some(t) = tools(test) else { return };
    let yaml = render(
        &t,
        &repo().join("deploy/kubernetes/overlays/prometheus-operator"),
    );
    let broken_ds = yaml.replace("hostPID: true", "hostPID: \"yes\"");
    assert_ne!(broken_ds, yaml);
    let (ok, _, out) = k8s_validate(&t, &broken_ds);
    assert!(!ok, "a string hostPID must not validate:\n{out}");
    let unknown_field = yaml.replace("hostPID: true", "hostPID: true\n      hostPDI: true");
    let (ok, _, out) = k8s_validate(&t, &unknown_field);
    assert!(!ok, "--strict must reject an unknown field:\n{out}");

    let mut objs = to_json(&t, &yaml);
    for o in objs.iter_mut() {
        if o["kind"] == "PodMonitor" {
            o["spec"]["podMetricsEndpoints"][0]["interval"] = Value::from("fifteen seconds");
        }
    }
    if let Some((ok, out)) = crd_validate(test, &objs) {
        assert!(!ok, "a bad interval must not validate:\n{out}");
        assert!(out.contains("interval"), "{out}");
    }
}

#[test]
fn systemd_unit_verifies() {
    let test = "systemd_unit_verifies";
    let Some(sa) = require_tool(test, "systemd-analyze", &[]) else {
        return;
    };
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/nodescope.service")).unwrap();
    assert!(unit
        .contains("ExecStart=/usr/local/bin/nodescope run --config /etc/nodescope/nodescope.toml"));
    // systemd-analyze checks that ExecStart exists: point it at a real executable.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("nodescope.service");
    std::fs::write(&f, unit.replace("/usr/local/bin/nodescope", "/bin/true")).unwrap();
    let mut cmd = Command::new(sa);
    cmd.args(["verify", "--man=no"]).arg(&f);
    let (_, out, err) = run(&mut cmd, None);
    let all = format!("{out}{err}");
    let complaints: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("nodescope.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify:\n{}",
        complaints.join("\n")
    );
    // Hardening that must not regress.
    for line in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/nodescope",
        "PrivateTmp=yes",
        "ProtectKernelModules=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
    }
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet");
    assert!(!caps.contains("CAP_NET_ADMIN") && !caps.contains("CAP_SYS_MODULE"));
}
