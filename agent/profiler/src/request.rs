//! Query parameters of `GET /debug/pprof/profile`, parsed strictly: every problem is a
//! 400 naming the parameter.

use crate::output::Format;

/// What to profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// No target parameter: the agent itself.
    Agent,
    Pid(u32),
    /// A container id (full 64-hex id or a prefix of at least 12 hex characters).
    Container(String),
    /// A cgroup v2 path relative to the cgroup2 mount, e.g. `/system.slice/nginx.service`.
    Cgroup(String),
    All,
}

impl Target {
    /// Stable text form, used as the "one profile at a time" key and in messages.
    pub fn key(&self) -> String {
        match self {
            Target::Agent => "self".into(),
            Target::Pid(p) => format!("pid={p}"),
            Target::Container(c) => format!("container={c}"),
            Target::Cgroup(c) => format!("cgroup={c}"),
            Target::All => "all".into(),
        }
    }
}

/// What a profile measures (`type=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProfileKind {
    /// On-CPU samples (cpu-clock perf events): `samples/count`, `cpu/nanoseconds`.
    #[default]
    Cpu,
    /// Time off CPU (sched_switch): `switches/count`, `offcpu/nanoseconds`.
    OffCpu,
    /// On-CPU plus off-CPU time: `cpu/nanoseconds`, `offcpu/nanoseconds`, `wall/nanoseconds`.
    Wall,
}

impl ProfileKind {
    pub const ALLOWED: &'static str = "cpu, offcpu or wall";

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cpu" => Some(ProfileKind::Cpu),
            "offcpu" | "off-cpu" => Some(ProfileKind::OffCpu),
            "wall" => Some(ProfileKind::Wall),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "cpu",
            ProfileKind::OffCpu => "offcpu",
            ProfileKind::Wall => "wall",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileRequest {
    pub target: Target,
    pub seconds: u64,
    pub hz: u32,
    pub format: Format,
    pub kind: ProfileKind,
}

impl ProfileRequest {
    /// The "one profile at a time" key: the target, and the type when it is not `cpu`
    /// (a cpu and an off-CPU profile of one target may run side by side).
    pub fn key(&self) -> String {
        match self.kind {
            ProfileKind::Cpu => self.target.key(),
            k => format!("{} type={}", self.target.key(), k.as_str()),
        }
    }
}

/// Limits and defaults applied while parsing.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    pub default_seconds: u64,
    pub max_seconds: u64,
    pub default_hz: u32,
    pub max_hz: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter `{param}`: {reason}")]
pub struct RequestError {
    pub param: String,
    pub reason: String,
}

fn bad(param: &str, reason: impl Into<String>) -> RequestError {
    let mut p: String = param.chars().take(64).collect();
    if p.len() < param.len() {
        p.push('…');
    }
    RequestError {
        param: p,
        reason: reason.into(),
    }
}

const KNOWN: &[&str] = &[
    "seconds",
    "hz",
    "format",
    "pid",
    "container",
    "cgroup",
    "all",
    "type",
];

fn parse_u64(param: &str, v: &str) -> Result<u64, RequestError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(
            param,
            format!("must be a positive integer, got {:?}", clip(v)),
        ));
    }
    v.parse::<u64>()
        .map_err(|_| bad(param, format!("is too large: {:?}", clip(v))))
}

fn clip(v: &str) -> String {
    v.chars().take(40).collect()
}

/// Parses decoded query pairs.
pub fn parse(
    pairs: &[(String, String)],
    limits: RequestLimits,
) -> Result<ProfileRequest, RequestError> {
    for (i, (k, _)) in pairs.iter().enumerate() {
        if !KNOWN.contains(&k.as_str()) {
            return Err(bad(
                k,
                format!("unknown parameter (known: {})", KNOWN.join(", ")),
            ));
        }
        if pairs[..i].iter().any(|(k2, _)| k2 == k) {
            return Err(bad(k, "given more than once"));
        }
    }
    let get = |k: &str| pairs.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());

    let seconds = match get("seconds") {
        None => limits.default_seconds,
        Some(v) => parse_u64("seconds", v)?,
    };
    if seconds == 0 {
        return Err(bad("seconds", "must be at least 1"));
    }
    if seconds > limits.max_seconds {
        return Err(bad(
            "seconds",
            format!("{seconds} exceeds the maximum of {}", limits.max_seconds),
        ));
    }
    let hz = match get("hz") {
        None => limits.default_hz,
        Some(v) => {
            let h = parse_u64("hz", v)?;
            if h == 0 || h > limits.max_hz as u64 {
                return Err(bad(
                    "hz",
                    format!("must be between 1 and {}, got {h}", limits.max_hz),
                ));
            }
            h as u32
        }
    };
    let format = match get("format") {
        None => Format::Pprof,
        Some(v) => Format::parse(v).ok_or_else(|| {
            bad(
                "format",
                format!("must be pprof, svg or folded, got {:?}", clip(v)),
            )
        })?,
    };
    let kind = match get("type") {
        None => ProfileKind::Cpu,
        Some(v) => ProfileKind::parse(v).ok_or_else(|| {
            bad(
                "type",
                format!("must be {}, got {:?}", ProfileKind::ALLOWED, clip(v)),
            )
        })?,
    };
    let mut targets = Vec::new();
    if let Some(v) = get("pid") {
        let p = parse_u64("pid", v)?;
        if p == 0 || p > i32::MAX as u64 {
            return Err(bad(
                "pid",
                format!("must be between 1 and {}, got {p}", i32::MAX),
            ));
        }
        targets.push(("pid", Target::Pid(p as u32)));
    }
    if let Some(v) = get("container") {
        let v = v
            .strip_prefix("containerd://")
            .or_else(|| v.strip_prefix("docker://"))
            .unwrap_or(v);
        if v.len() < 12 || v.len() > 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "container",
                "must be a container id: 12 to 64 hexadecimal characters",
            ));
        }
        targets.push(("container", Target::Container(v.to_ascii_lowercase())));
    }
    if let Some(v) = get("cgroup") {
        if !v.starts_with('/')
            || v.len() > 4096
            || v.contains('\0')
            || v.split('/').any(|c| c == ".." || c == ".")
        {
            return Err(bad(
                "cgroup",
                "must be an absolute cgroup v2 path without . or .. components, e.g. /system.slice/nginx.service",
            ));
        }
        targets.push(("cgroup", Target::Cgroup(v.to_string())));
    }
    if let Some(v) = get("all") {
        match v {
            "true" | "1" => targets.push(("all", Target::All)),
            _ => {
                return Err(bad(
                    "all",
                    format!("must be true when given, got {:?}", clip(v)),
                ))
            }
        }
    }
    if targets.len() > 1 {
        let names: Vec<_> = targets.iter().map(|(n, _)| *n).collect();
        return Err(bad(
            names[1],
            format!(
                "only one of pid, container, cgroup, all may be given (got {})",
                names.join(", ")
            ),
        ));
    }
    let target = targets.pop().map(|(_, t)| t).unwrap_or(Target::Agent);
    Ok(ProfileRequest {
        target,
        seconds,
        hz,
        format,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const L: RequestLimits = RequestLimits {
        default_seconds: 30,
        max_seconds: 300,
        default_hz: 99,
        max_hz: 499,
    };

    fn q(s: &[(&str, &str)]) -> Result<ProfileRequest, RequestError> {
        let v: Vec<(String, String)> = s
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        parse(&v, L)
    }

    #[test]
    fn defaults_profile_the_agent() {
        let r = q(&[]).unwrap();
        assert_eq!(
            r,
            ProfileRequest {
                target: Target::Agent,
                seconds: 30,
                hz: 99,
                format: Format::Pprof,
                kind: ProfileKind::Cpu,
            }
        );
    }

    #[test]
    fn parses_targets() {
        assert_eq!(
            q(&[("pid", "42"), ("seconds", "5")]).unwrap().target,
            Target::Pid(42)
        );
        assert_eq!(q(&[("all", "true")]).unwrap().target, Target::All);
        let id = "ABCDEF0123456789";
        assert_eq!(
            q(&[("container", id)]).unwrap().target,
            Target::Container(id.to_ascii_lowercase())
        );
        assert_eq!(
            q(&[("cgroup", "/system.slice/x.service")]).unwrap().target,
            Target::Cgroup("/system.slice/x.service".into())
        );
        assert_eq!(q(&[("format", "svg"), ("hz", "499")]).unwrap().hz, 499);
        assert_eq!(q(&[("type", "offcpu")]).unwrap().kind, ProfileKind::OffCpu);
        assert_eq!(q(&[("type", "wall")]).unwrap().kind, ProfileKind::Wall);
        assert_eq!(q(&[("type", "cpu")]).unwrap().kind, ProfileKind::Cpu);
        let r = q(&[("pid", "7"), ("type", "offcpu")]).unwrap();
        assert_eq!(r.key(), "pid=7 type=offcpu");
        assert_eq!(q(&[("pid", "7")]).unwrap().key(), "pid=7");
        let e = q(&[("type", "bogus")]).unwrap_err().to_string();
        assert!(e.contains("cpu, offcpu or wall"), "{e}");
    }

    #[test]
    fn errors_name_the_parameter() {
        for (pairs, param) in [
            (vec![("seconds", "0")], "seconds"),
            (vec![("seconds", "301")], "seconds"),
            (vec![("seconds", "-1")], "seconds"),
            (vec![("seconds", "1.5")], "seconds"),
            (vec![("hz", "500")], "hz"),
            (vec![("hz", "0")], "hz"),
            (vec![("format", "png")], "format"),
            (vec![("type", "bogus")], "type"),
            (vec![("type", "")], "type"),
            (vec![("pid", "abc")], "pid"),
            (vec![("pid", "0")], "pid"),
            (vec![("container", "xyz")], "container"),
            (vec![("cgroup", "relative")], "cgroup"),
            (vec![("cgroup", "/a/../b")], "cgroup"),
            (vec![("all", "false")], "all"),
            (vec![("bogus", "1")], "bogus"),
            (vec![("pid", "1"), ("pid", "2")], "pid"),
            (vec![("pid", "1"), ("all", "true")], "all"),
            (vec![("seconds", "99999999999999999999999")], "seconds"),
        ] {
            let e = q(&pairs).unwrap_err();
            assert_eq!(e.param, param, "{pairs:?}: {e}");
            assert!(e.to_string().contains(param));
        }
    }

    proptest! {
        #[test]
        fn never_panics(pairs in proptest::collection::vec(("(seconds|hz|format|pid|container|cgroup|all|type|\\PC{0,8})", "\\PC{0,30}"), 0..6)) {
            let _ = parse(&pairs, L);
        }

        #[test]
        fn valid_seconds_and_hz_roundtrip(s in 1u64..=300, h in 1u32..=499) {
            let r = q(&[("seconds", &s.to_string()), ("hz", &h.to_string())]).unwrap();
            prop_assert_eq!(r.seconds, s);
            prop_assert_eq!(r.hz, h);
        }
    }
}
