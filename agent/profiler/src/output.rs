//! Output formats built from symbolized samples: gzip-compressed pprof
//! (`perftools.profiles.Profile`), collapsed ("folded") stacks, and an interactive SVG
//! flame graph (inferno).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nodescope_model::feeds::Frame;
use nodescope_pprof::{proto, Label, Location, Mapping, MappingId, ProfileBuilder};

use crate::symbolize::{MappingInfo, ResolvedFrame, ResolvedSample};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("building the profile: {0}")]
    Pprof(#[from] nodescope_pprof::PprofError),
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

fn pprof_mapping(m: &MappingInfo) -> Mapping {
    Mapping {
        start: m.start,
        limit: m.limit,
        file_offset: m.file_offset,
        filename: Arc::from(m.filename.as_str()),
        build_id: m.build_id.as_deref().map(Arc::from),
        has_functions: m.has_functions,
        has_filenames: false,
        has_line_numbers: false,
        has_inline_frames: m.has_functions && m.pid != 0,
    }
}

/// The model frames of a resolved frame (innermost inlined function first).
pub(crate) fn model_frames(f: &ResolvedFrame) -> Vec<Frame> {
    let module: Arc<str> = f
        .mapping
        .as_ref()
        .map(|m| Arc::from(m.filename.as_str()))
        .unwrap_or_else(|| Arc::from("[unknown]"));
    f.names
        .iter()
        .map(|n| Frame {
            function: n.clone(),
            module: module.clone(),
            file: None,
            line: 0,
            address: f.address,
            kernel: f.kernel,
        })
        .collect()
}

/// Builds the pprof message (uncompressed) from symbolized samples.
pub fn build_pprof(samples: &[ResolvedSample], meta: &ProfileMeta) -> proto::Profile {
    let hz = meta.hz.max(1) as i64;
    let period = 1_000_000_000i64 / hz;
    let shape = PprofShape {
        sample_types: &[("samples", "count"), ("cpu", "nanoseconds")],
        period_type: ("cpu", "nanoseconds"),
        period,
        default_type: None,
    };
    build_pprof_with(samples, meta, &shape, |_, s| {
        let count = s.count.min(i64::MAX as u64) as i64;
        (vec![count, count.saturating_mul(period)], [None, None])
    })
}

/// The sample types and period of a pprof message.
#[derive(Clone, Copy, Debug)]
pub struct PprofShape<'a> {
    pub sample_types: &'a [(&'a str, &'a str)],
    pub period_type: (&'a str, &'a str),
    pub period: i64,
    /// The type `go tool pprof` shows by default (`None`: the last one).
    pub default_type: Option<&'a str>,
}

/// Extra string labels of one sample (key, value).
pub type ExtraLabels = [Option<(&'static str, &'static str)>; 2];

/// Builds a pprof message whose values (one per sample type) and extra labels come from
/// `values(index, sample)`.
pub fn build_pprof_with(
    samples: &[ResolvedSample],
    meta: &ProfileMeta,
    shape: &PprofShape<'_>,
    values: impl Fn(usize, &ResolvedSample) -> (Vec<i64>, ExtraLabels),
) -> proto::Profile {
    let mut b = ProfileBuilder::new(shape.sample_types, shape.period_type, shape.period);
    if let Some(t) = shape.default_type {
        b.default_sample_type(t);
    }
    b.time(meta.start).duration(meta.duration);
    // Resolved frames are interned by the symbolizer (one Arc per distinct frame): convert
    // each once.
    let mut mappings: HashMap<*const MappingInfo, MappingId> = HashMap::new();
    let mut frames: HashMap<*const ResolvedFrame, (Option<MappingId>, Vec<Frame>)> = HashMap::new();
    let mut keep: Vec<Arc<ResolvedFrame>> = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        for f in &s.frames {
            let ptr = Arc::as_ptr(f);
            if frames.contains_key(&ptr) {
                continue;
            }
            keep.push(f.clone());
            let mapping = f.mapping.as_ref().map(|m| {
                *mappings
                    .entry(Arc::as_ptr(m))
                    .or_insert_with(|| b.add_mapping(&pprof_mapping(m)))
            });
            frames.insert(ptr, (mapping, model_frames(f)));
        }
        let stack = s.frames.iter().map(|f| {
            let (mapping, functions) = &frames[&Arc::as_ptr(f)];
            Location {
                address: f.address,
                mapping: *mapping,
                functions,
            }
        });
        let (vals, extra) = values(i, s);
        let mut labels = vec![
            Label::num("pid", s.pid as i64),
            Label::num("tid", s.tid as i64),
            Label::str("comm", &s.comm),
            Label::str("workload", &s.workload.label),
        ];
        labels.extend(extra.iter().flatten().map(|(k, v)| Label::str(k, v)));
        // As many values as sample types and non-empty functions per location: cannot fail.
        if let Err(e) = b.add_sample_locations(stack, &vals, &labels) {
            tracing::warn!(error = %e, "sample left out of the profile");
        }
    }
    drop(keep);
    for c in &meta.comments {
        b.comment(c);
    }
    b.build()
}

/// Encodes and gzips a profile, as Go's `/debug/pprof/profile` serves it.
pub fn gzip_pprof(p: &proto::Profile) -> Result<Vec<u8>, OutputError> {
    Ok(nodescope_pprof::gzip(p)?)
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
                unwind: 0,
                reached_root: false,
                leaf_binary: "burn".into(),
            },
            ResolvedSample {
                pid: 7,
                tid: 8,
                comm: "burn".into(),
                workload: w,
                frames: vec![sys, main],
                count: 1,
                unwind: 0,
                reached_root: false,
                leaf_binary: "burn".into(),
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
        assert_eq!(nodescope_pprof::decode_gzip(&gz, 1 << 20).unwrap(), p);
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
