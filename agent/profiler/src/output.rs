//! Output formats built from symbolized samples: gzip-compressed pprof
//! (`perftools.profiles.Profile`), collapsed ("folded") stacks, and an interactive SVG
//! flame graph (inferno).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use crate::proto;
use crate::symbolize::{MappingInfo, ResolvedFrame, ResolvedSample};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("compressing the profile: {0}")]
    Gzip(#[source] std::io::Error),
    #[error("rendering the flame graph: {0}")]
    FlameGraph(String),
}

/// The format of an on-demand profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// gzip-compressed pprof protobuf (what `go tool pprof` reads).
    #[default]
    Pprof,
    /// Interactive SVG flame graph.
    Svg,
    /// Collapsed stacks, one `frame;frame;... count` line per stack.
    Folded,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pprof" | "proto" => Some(Format::Pprof),
            "svg" => Some(Format::Svg),
            "folded" | "collapsed" => Some(Format::Folded),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Pprof => "pprof",
            Format::Svg => "svg",
            Format::Folded => "folded",
        }
    }
}

/// Facts about how the samples were taken.
#[derive(Clone, Debug)]
pub struct ProfileMeta {
    pub start: SystemTime,
    pub duration: Duration,
    pub hz: u32,
    /// Free-form comments (sampler, truncation notes).
    pub comments: Vec<String>,
}

struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Strings {
            table: Vec::new(),
            index: HashMap::new(),
        };
        s.get("");
        s
    }
    fn get(&mut self, v: &str) -> i64 {
        if let Some(&i) = self.index.get(v) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(v.to_string());
        self.index.insert(v.to_string(), i);
        i
    }
}

/// Builds the pprof message (uncompressed) from symbolized samples.
pub fn build_pprof(samples: &[ResolvedSample], meta: &ProfileMeta) -> proto::Profile {
    let hz = meta.hz.max(1) as i64;
    let period = 1_000_000_000i64 / hz;
    let mut st = Strings::new();
    let sample_type = vec![
        proto::ValueType {
            r#type: st.get("samples"),
            unit: st.get("count"),
        },
        proto::ValueType {
            r#type: st.get("cpu"),
            unit: st.get("nanoseconds"),
        },
    ];
    let period_type = proto::ValueType {
        r#type: st.get("cpu"),
        unit: st.get("nanoseconds"),
    };
    let k_pid = st.get("pid");
    let k_tid = st.get("tid");
    let k_comm = st.get("comm");
    let k_workload = st.get("workload");

    let mut mappings: Vec<proto::Mapping> = Vec::new();
    let mut mapping_ids: HashMap<*const MappingInfo, u64> = HashMap::new();
    let mut locations: Vec<proto::Location> = Vec::new();
    let mut location_ids: HashMap<*const ResolvedFrame, u64> = HashMap::new();
    let mut functions: Vec<proto::Function> = Vec::new();
    let mut function_ids: HashMap<Arc<str>, u64> = HashMap::new();
    let mut out_samples = Vec::with_capacity(samples.len());
    // Keep the Arcs alive while their pointers key the maps.
    let mut keep: Vec<Arc<ResolvedFrame>> = Vec::new();

    for s in samples {
        let mut loc_ids = Vec::with_capacity(s.frames.len());
        for f in &s.frames {
            let ptr = Arc::as_ptr(f);
            let id = match location_ids.get(&ptr) {
                Some(&id) => id,
                None => {
                    keep.push(f.clone());
                    let mapping_id = match &f.mapping {
                        None => 0,
                        Some(m) => {
                            let mptr = Arc::as_ptr(m);
                            match mapping_ids.get(&mptr) {
                                Some(&id) => id,
                                None => {
                                    let id = mappings.len() as u64 + 1;
                                    mappings.push(proto::Mapping {
                                        id,
                                        memory_start: m.start,
                                        memory_limit: m.limit,
                                        file_offset: m.file_offset,
                                        filename: st.get(&m.filename),
                                        build_id: st.get(m.build_id.as_deref().unwrap_or("")),
                                        has_functions: m.has_functions,
                                        has_filenames: false,
                                        has_line_numbers: false,
                                        has_inline_frames: m.has_functions && m.pid != 0,
                                    });
                                    mapping_ids.insert(mptr, id);
                                    id
                                }
                            }
                        }
                    };
                    let line = f
                        .names
                        .iter()
                        .map(|n| {
                            let fid = match function_ids.get(n) {
                                Some(&id) => id,
                                None => {
                                    let id = functions.len() as u64 + 1;
                                    let name = st.get(n);
                                    functions.push(proto::Function {
                                        id,
                                        name,
                                        system_name: name,
                                        filename: 0,
                                        start_line: 0,
                                    });
                                    function_ids.insert(n.clone(), id);
                                    id
                                }
                            };
                            proto::Line {
                                function_id: fid,
                                line: 0,
                            }
                        })
                        .collect();
                    let id = locations.len() as u64 + 1;
                    locations.push(proto::Location {
                        id,
                        mapping_id,
                        address: f.address,
                        line,
                        is_folded: false,
                    });
                    location_ids.insert(ptr, id);
                    id
                }
            };
            loc_ids.push(id);
        }
        let count = s.count.min(i64::MAX as u64) as i64;
        out_samples.push(proto::Sample {
            location_id: loc_ids,
            value: vec![count, count.saturating_mul(period)],
            label: vec![
                proto::Label {
                    key: k_pid,
                    num: s.pid as i64,
                    ..Default::default()
                },
                proto::Label {
                    key: k_tid,
                    num: s.tid as i64,
                    ..Default::default()
                },
                proto::Label {
                    key: k_comm,
                    str: st.get(&s.comm),
                    ..Default::default()
                },
                proto::Label {
                    key: k_workload,
                    str: st.get(&s.workload.label),
                    ..Default::default()
                },
            ],
            breakdown: Vec::new(),
        });
    }
    drop(keep);
    let comment = meta.comments.iter().map(|c| st.get(c)).collect();
    let default_sample_type = st.get("cpu");
    let time_nanos = meta
        .start
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .min(i64::MAX as u128) as i64;
    proto::Profile {
        sample_type,
        sample: out_samples,
        mapping: mappings,
        location: locations,
        function: functions,
        string_table: st.table,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos,
        duration_nanos: meta.duration.as_nanos().min(i64::MAX as u128) as i64,
        period_type: Some(period_type),
        period,
        comment,
        default_sample_type,
        tick_unit: 0,
        label_set: Vec::new(),
    }
}

/// Encodes and gzips a profile, as Go's `/debug/pprof/profile` serves it.
pub fn gzip_pprof(p: &proto::Profile) -> Result<Vec<u8>, OutputError> {
    let raw = p.encode_to_vec();
    let mut gz = GzEncoder::new(
        Vec::with_capacity(raw.len() / 3 + 64),
        Compression::default(),
    );
    gz.write_all(&raw).map_err(OutputError::Gzip)?;
    gz.finish().map_err(OutputError::Gzip)
}

/// Sanitizes a frame name for the folded format (`;` separates frames, the last space
/// separates the count).
fn folded_name(s: &str) -> String {
    s.replace([';', '\n', '\r'], ":")
}

/// Collapsed stacks: `comm;root;...;leaf count`, kernel frames suffixed `_[k]` (the
/// convention inferno and FlameGraph colour as kernel). Inlined functions appear as
/// separate frames. Lines are sorted for stable output.
pub fn folded(samples: &[ResolvedSample]) -> String {
    let mut agg: HashMap<String, u64> = HashMap::new();
    for s in samples {
        let mut line = folded_name(&s.comm);
        if line.is_empty() {
            line.push_str("[unknown]");
        }
        for f in s.frames.iter().rev() {
            for n in f.names.iter().rev() {
                line.push(';');
                line.push_str(&folded_name(n));
                if f.kernel {
                    line.push_str("_[k]");
                }
            }
        }
        *agg.entry(line).or_default() += s.count;
    }
    let mut lines: Vec<_> = agg.into_iter().collect();
    lines.sort();
    let mut out = String::new();
    for (l, c) in lines {
        out.push_str(&l);
        out.push(' ');
        out.push_str(&c.to_string());
        out.push('\n');
    }
    out
}

/// An interactive SVG flame graph (inferno) of the collapsed stacks.
pub fn svg(samples: &[ResolvedSample], title: &str) -> Result<Vec<u8>, OutputError> {
    let folded = folded(samples);
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = "samples".into();
    let mut out = Vec::new();
    if folded.is_empty() {
        // inferno refuses empty input; an empty profile is still a valid answer.
        opts.subtitle = Some("no samples".into());
        inferno::flamegraph::from_lines(&mut opts, std::iter::once("no-samples 0"), &mut out)
            .or_else(|_| {
                out.clear();
                out.extend_from_slice(EMPTY_SVG.as_bytes());
                Ok::<(), OutputError>(())
            })?;
        return Ok(out);
    }
    inferno::flamegraph::from_lines(&mut opts, folded.lines(), &mut out)
        .map_err(|e| OutputError::FlameGraph(e.to_string()))?;
    Ok(out)
}

const EMPTY_SVG: &str = "<?xml version=\"1.0\" standalone=\"no\"?><svg version=\"1.1\" width=\"1200\" height=\"60\" xmlns=\"http://www.w3.org/2000/svg\"><text x=\"600\" y=\"30\" text-anchor=\"middle\">no samples</text></svg>";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::WorkloadInfo;

    fn frame(name: &str, addr: u64, kernel: bool, m: &Arc<MappingInfo>) -> Arc<ResolvedFrame> {
        Arc::new(ResolvedFrame {
            address: addr,
            mapping: Some(m.clone()),
            names: vec![Arc::from(name)].into(),
            kernel,
        })
    }

    pub(crate) fn fixture() -> Vec<ResolvedSample> {
        let m = Arc::new(MappingInfo {
            pid: 7,
            start: 0x1000,
            limit: 0x9000,
            file_offset: 0,
            filename: "/bin/burn".into(),
            build_id: Some("abcd".into()),
            has_functions: true,
        });
        let km = Arc::new(MappingInfo {
            pid: 0,
            start: 0xffff_8000_0000_0000,
            limit: u64::MAX,
            file_offset: 0,
            filename: "[kernel.kallsyms]".into(),
            build_id: None,
            has_functions: true,
        });
        let main = frame("main", 0x1100, false, &m);
        let hot = frame("hot;fn", 0x1200, false, &m);
        let sys = frame("__x64_sys_write", 0xffff_ffff_8100_0000, true, &km);
        let w = Arc::new(WorkloadInfo::host());
        vec![
            ResolvedSample {
                pid: 7,
                tid: 8,
                comm: "burn".into(),
                workload: w.clone(),
                frames: vec![hot.clone(), main.clone()],
                count: 3,
            },
            ResolvedSample {
                pid: 7,
                tid: 8,
                comm: "burn".into(),
                workload: w,
                frames: vec![sys, main],
                count: 1,
            },
        ]
    }

    #[test]
    fn pprof_tables_are_consistent() {
        let meta = ProfileMeta {
            start: SystemTime::now(),
            duration: Duration::from_secs(1),
            hz: 100,
            comments: vec!["test".into()],
        };
        let p = build_pprof(&fixture(), &meta);
        assert_eq!(p.string_table[0], "");
        assert_eq!(p.period, 10_000_000);
        assert_eq!(p.sample.len(), 2);
        assert_eq!(p.sample[0].value, vec![3, 30_000_000]);
        assert_eq!(p.location.len(), 3, "main is shared");
        assert_eq!(p.mapping.len(), 2);
        for l in &p.location {
            assert!(p.mapping.iter().any(|m| m.id == l.mapping_id));
            assert!(l.address != 0);
        }
        let bid = p.mapping[0].build_id as usize;
        assert_eq!(p.string_table[bid], "abcd");
        let gz = gzip_pprof(&p).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
        assert_eq!(proto::Profile::decode(&raw[..]).unwrap(), p);
    }

    #[test]
    fn folded_is_root_first_with_kernel_suffix() {
        let f = folded(&fixture());
        assert_eq!(f, "burn;main;__x64_sys_write_[k] 1\nburn;main;hot:fn 3\n");
    }

    #[test]
    fn svg_is_xml_with_names() {
        let s = String::from_utf8(svg(&fixture(), "t").unwrap()).unwrap();
        let opt = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        let doc = roxmltree::Document::parse_with_options(&s, opt).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        assert!(s.contains("hot:fn"));
        let empty = String::from_utf8(svg(&[], "t").unwrap()).unwrap();
        roxmltree::Document::parse_with_options(&empty, opt).unwrap();
    }
}
