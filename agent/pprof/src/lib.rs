//! pprof for nodescope: the `perftools.profiles` messages ([`proto`]) and a builder that
//! turns stacks of [`nodescope_model::feeds::Frame`] (leaf first) with their values into a
//! gzip-compressed `Profile`, the format `go tool pprof`, Pyroscope and Go's
//! `/debug/pprof/profile` use.
//!
//! The builder interns strings, functions, locations and mappings, so a profile of many
//! samples sharing frames stays small. Two ways to give a stack:
//!
//! * [`ProfileBuilder::add_sample`]: one location per [`Frame`]; the mapping of a frame is
//!   the registered [`Mapping`] of its module that contains its address, or else one
//!   mapping per module created on the fly (covering the addresses seen). This is what a
//!   consumer of [`nodescope_model::feeds::StackRecord`]s uses.
//! * [`ProfileBuilder::add_sample_locations`]: the caller groups frames into locations
//!   (inlined functions share their caller's address) and names the mapping of each.
//!
//! Nothing here depends on aya or on the profiler: the flight recorder writes pprof files
//! with the same code.

pub mod proto;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use nodescope_model::feeds::Frame;
use prost::Message;

#[derive(Debug, thiserror::Error)]
pub enum PprofError {
    #[error("sample has {got} values but the profile has {want} sample types")]
    ValueCount { got: usize, want: usize },
    #[error("a location needs at least one function")]
    EmptyLocation,
    #[error("unknown mapping id {0}")]
    UnknownMapping(u64),
    #[error("compressing the profile: {0}")]
    Gzip(#[source] std::io::Error),
    #[error("the data is not gzip-compressed: {0}")]
    Gunzip(#[source] std::io::Error),
    #[error("the decompressed profile exceeds {max} bytes")]
    TooLarge { max: usize },
    #[error("the data is not a perftools.profiles.Profile: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// A memory mapping as it goes into the profile's `Mapping` table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Mapping {
    pub start: u64,
    pub limit: u64,
    pub file_offset: u64,
    /// Path of the mapped file (or `[kernel.kallsyms]`, `[vdso]`, ...).
    pub filename: Arc<str>,
    /// GNU build id as lowercase hex, when known.
    pub build_id: Option<Arc<str>>,
    /// The locations of this mapping carry function names (pprof will not try to
    /// symbolize them again).
    pub has_functions: bool,
    pub has_filenames: bool,
    pub has_line_numbers: bool,
    pub has_inline_frames: bool,
}

/// Handle of a mapping added with [`ProfileBuilder::add_mapping`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MappingId(u64);

impl MappingId {
    /// The id in the profile's mapping table.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// One location of a stack: an address and the functions at it.
#[derive(Clone, Copy, Debug)]
pub struct Location<'a> {
    pub address: u64,
    pub mapping: Option<MappingId>,
    /// Innermost inlined function first; the last is the function whose frame this is.
    /// Must not be empty.
    pub functions: &'a [Frame],
}

/// A label value of a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LabelValue<'a> {
    Str(&'a str),
    Num { value: i64, unit: Option<&'a str> },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Label<'a> {
    pub key: &'a str,
    pub value: LabelValue<'a>,
}

impl<'a> Label<'a> {
    pub fn str(key: &'a str, value: &'a str) -> Self {
        Label {
            key,
            value: LabelValue::Str(value),
        }
    }
    pub fn num(key: &'a str, value: i64) -> Self {
        Label {
            key,
            value: LabelValue::Num { value, unit: None },
        }
    }
    pub fn num_with_unit(key: &'a str, value: i64, unit: &'a str) -> Self {
        Label {
            key,
            value: LabelValue::Num {
                value,
                unit: Some(unit),
            },
        }
    }
}

/// `(type, unit)` of a sample value, e.g. `("cpu", "nanoseconds")`.
pub type ValueType<'a> = (&'a str, &'a str);

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

/// Module-keyed mapping made on the fly for frames without a registered mapping.
struct AutoMapping {
    id: u64,
    min: u64,
    max: u64,
}

/// Builds one `perftools.profiles.Profile`.
pub struct ProfileBuilder {
    st: Strings,
    sample_type: Vec<proto::ValueType>,
    period_type: Option<proto::ValueType>,
    period: i64,
    default_sample_type: i64,
    time_nanos: i64,
    duration_nanos: i64,
    comments: Vec<i64>,
    mappings: Vec<proto::Mapping>,
    mapping_ids: HashMap<Mapping, u64>,
    /// Registered mappings by file name, for [`ProfileBuilder::add_sample`].
    by_module: HashMap<Arc<str>, Vec<u64>>,
    auto: HashMap<(Arc<str>, bool), AutoMapping>,
    locations: Vec<proto::Location>,
    /// (mapping id, address, outer function name) -> location id.
    location_ids: HashMap<(u64, u64, Arc<str>), u64>,
    functions: Vec<proto::Function>,
    function_ids: HashMap<(Arc<str>, Option<Arc<str>>), u64>,
    samples: Vec<proto::Sample>,
}

impl std::fmt::Debug for ProfileBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileBuilder")
            .field("samples", &self.samples.len())
            .field("locations", &self.locations.len())
            .finish_non_exhaustive()
    }
}

impl ProfileBuilder {
    /// A profile whose samples carry one value per entry of `sample_types`, each sample
    /// standing for `period` units of `period_type` (e.g. `("cpu", "nanoseconds")` and
    /// 1e9/hz). The default sample type is the last one (as Go's CPU profiles).
    pub fn new(sample_types: &[ValueType<'_>], period_type: ValueType<'_>, period: i64) -> Self {
        let mut st = Strings::new();
        let sample_type: Vec<proto::ValueType> = sample_types
            .iter()
            .map(|(t, u)| proto::ValueType {
                r#type: st.get(t),
                unit: st.get(u),
            })
            .collect();
        let period_type = Some(proto::ValueType {
            r#type: st.get(period_type.0),
            unit: st.get(period_type.1),
        });
        let default_sample_type = sample_type.last().map(|v| v.r#type).unwrap_or(0);
        ProfileBuilder {
            st,
            sample_type,
            period_type,
            period,
            default_sample_type,
            time_nanos: 0,
            duration_nanos: 0,
            comments: Vec::new(),
            mappings: Vec::new(),
            mapping_ids: HashMap::new(),
            by_module: HashMap::new(),
            auto: HashMap::new(),
            locations: Vec::new(),
            location_ids: HashMap::new(),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            samples: Vec::new(),
        }
    }

    /// The sample type `go tool pprof` shows by default (by its type name).
    pub fn default_sample_type(&mut self, r#type: &str) -> &mut Self {
        self.default_sample_type = self.st.get(r#type);
        self
    }

    /// When the profile starts.
    pub fn time(&mut self, start: SystemTime) -> &mut Self {
        self.time_nanos = start
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .min(i64::MAX as u128) as i64;
        self
    }

    pub fn duration(&mut self, d: Duration) -> &mut Self {
        self.duration_nanos = d.as_nanos().min(i64::MAX as u128) as i64;
        self
    }

    /// A free-form comment (`go tool pprof -comments` prints them).
    pub fn comment(&mut self, c: &str) -> &mut Self {
        let i = self.st.get(c);
        self.comments.push(i);
        self
    }

    /// Number of samples added so far.
    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }

    /// Adds (or finds the identical) mapping.
    pub fn add_mapping(&mut self, m: &Mapping) -> MappingId {
        if let Some(&id) = self.mapping_ids.get(m) {
            return MappingId(id);
        }
        let id = self.mappings.len() as u64 + 1;
        self.mappings.push(proto::Mapping {
            id,
            memory_start: m.start,
            memory_limit: m.limit,
            file_offset: m.file_offset,
            filename: self.st.get(&m.filename),
            build_id: self.st.get(m.build_id.as_deref().unwrap_or("")),
            has_functions: m.has_functions,
            has_filenames: m.has_filenames,
            has_line_numbers: m.has_line_numbers,
            has_inline_frames: m.has_inline_frames,
        });
        self.mapping_ids.insert(m.clone(), id);
        self.by_module
            .entry(m.filename.clone())
            .or_default()
            .push(id);
        MappingId(id)
    }

    fn function_id(&mut self, f: &Frame) -> u64 {
        let key = (f.function.clone(), f.file.clone());
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let name = self.st.get(&f.function);
        let filename = f.file.as_deref().map_or(0, |p| self.st.get(p));
        self.functions.push(proto::Function {
            id,
            name,
            system_name: name,
            filename,
            start_line: 0,
        });
        self.function_ids.insert(key, id);
        id
    }

    fn location_id(&mut self, loc: &Location<'_>) -> Result<u64, PprofError> {
        let outer = loc.functions.last().ok_or(PprofError::EmptyLocation)?;
        let mapping_id = loc.mapping.map_or(0, |m| m.0);
        if mapping_id > self.mappings.len() as u64 {
            return Err(PprofError::UnknownMapping(mapping_id));
        }
        let key = (mapping_id, loc.address, outer.function.clone());
        if let Some(&id) = self.location_ids.get(&key) {
            return Ok(id);
        }
        let line = loc
            .functions
            .iter()
            .map(|f| proto::Line {
                function_id: self.function_id(f),
                line: f.line as i64,
            })
            .collect();
        let id = self.locations.len() as u64 + 1;
        self.locations.push(proto::Location {
            id,
            mapping_id,
            address: loc.address,
            line,
            is_folded: false,
        });
        self.location_ids.insert(key, id);
        Ok(id)
    }

    fn labels(&mut self, labels: &[Label<'_>]) -> Vec<proto::Label> {
        labels
            .iter()
            .map(|l| {
                let key = self.st.get(l.key);
                match l.value {
                    LabelValue::Str(s) => proto::Label {
                        key,
                        str: self.st.get(s),
                        ..Default::default()
                    },
                    LabelValue::Num { value, unit } => proto::Label {
                        key,
                        num: value,
                        num_unit: unit.map_or(0, |u| self.st.get(u)),
                        ..Default::default()
                    },
                }
            })
            .collect()
    }

    fn check_values(&self, values: &[i64]) -> Result<(), PprofError> {
        if values.len() != self.sample_type.len() {
            return Err(PprofError::ValueCount {
                got: values.len(),
                want: self.sample_type.len(),
            });
        }
        Ok(())
    }

    /// Adds a sample whose stack is given as locations (leaf first).
    pub fn add_sample_locations<'a>(
        &mut self,
        stack: impl IntoIterator<Item = Location<'a>>,
        values: &[i64],
        labels: &[Label<'_>],
    ) -> Result<(), PprofError> {
        self.check_values(values)?;
        let mut location_id = Vec::new();
        for loc in stack {
            location_id.push(self.location_id(&loc)?);
        }
        let label = self.labels(labels);
        self.samples.push(proto::Sample {
            location_id,
            value: values.to_vec(),
            label,
            breakdown: Vec::new(),
        });
        Ok(())
    }

    /// The registered mapping of `f.module` containing `f.address`, or the module's
    /// on-the-fly mapping.
    fn mapping_for(&mut self, f: &Frame) -> u64 {
        if let Some(ids) = self.by_module.get(&f.module) {
            for &id in ids {
                let m = &self.mappings[id as usize - 1];
                if (m.memory_start..m.memory_limit).contains(&f.address) {
                    return id;
                }
            }
        }
        let key = (f.module.clone(), f.kernel);
        if let Some(a) = self.auto.get_mut(&key) {
            a.min = a.min.min(f.address);
            a.max = a.max.max(f.address);
            return a.id;
        }
        let id = self.mappings.len() as u64 + 1;
        self.mappings.push(proto::Mapping {
            id,
            filename: self.st.get(&f.module),
            has_functions: true,
            ..Default::default()
        });
        self.auto.insert(
            key,
            AutoMapping {
                id,
                min: f.address,
                max: f.address,
            },
        );
        id
    }

    /// Adds a sample whose stack is one location per frame (leaf first).
    pub fn add_sample(
        &mut self,
        stack: &[Frame],
        values: &[i64],
        labels: &[Label<'_>],
    ) -> Result<(), PprofError> {
        self.check_values(values)?;
        let mut location_id = Vec::with_capacity(stack.len());
        for f in stack {
            let m = self.mapping_for(f);
            let loc = Location {
                address: f.address,
                mapping: Some(MappingId(m)),
                functions: std::slice::from_ref(f),
            };
            location_id.push(self.location_id(&loc)?);
        }
        let label = self.labels(labels);
        self.samples.push(proto::Sample {
            location_id,
            value: values.to_vec(),
            label,
            breakdown: Vec::new(),
        });
        Ok(())
    }

    /// The finished message (uncompressed).
    pub fn build(mut self) -> proto::Profile {
        for a in self.auto.values() {
            let m = &mut self.mappings[a.id as usize - 1];
            m.memory_start = a.min;
            m.memory_limit = a.max.saturating_add(1);
        }
        proto::Profile {
            sample_type: self.sample_type,
            sample: self.samples,
            mapping: self.mappings,
            location: self.locations,
            function: self.functions,
            string_table: self.st.table,
            drop_frames: 0,
            keep_frames: 0,
            time_nanos: self.time_nanos,
            duration_nanos: self.duration_nanos,
            period_type: self.period_type,
            period: self.period,
            comment: self.comments,
            default_sample_type: self.default_sample_type,
            tick_unit: 0,
            label_set: Vec::new(),
        }
    }

    /// The finished profile, encoded and gzip-compressed.
    pub fn finish_gzip(self) -> Result<Vec<u8>, PprofError> {
        gzip(&self.build())
    }
}

/// Encodes and gzips a profile, as Go's `/debug/pprof/profile` serves it.
pub fn gzip(p: &proto::Profile) -> Result<Vec<u8>, PprofError> {
    let raw = p.encode_to_vec();
    let mut gz = GzEncoder::new(
        Vec::with_capacity(raw.len() / 3 + 64),
        Compression::default(),
    );
    gz.write_all(&raw).map_err(PprofError::Gzip)?;
    gz.finish().map_err(PprofError::Gzip)
}

/// Decodes a gzip'd profile, refusing one that decompresses to more than `max_bytes`.
pub fn decode_gzip(data: &[u8], max_bytes: usize) -> Result<proto::Profile, PprofError> {
    let mut raw = Vec::new();
    GzDecoder::new(data)
        .take(max_bytes as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(PprofError::Gunzip)?;
    if raw.len() > max_bytes {
        return Err(PprofError::TooLarge { max: max_bytes });
    }
    Ok(proto::Profile::decode(&raw[..])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fr(function: &str, module: &str, address: u64) -> Frame {
        Frame {
            function: function.into(),
            module: module.into(),
            file: None,
            line: 0,
            address,
            kernel: module == "[kernel.kallsyms]",
        }
    }

    fn s(p: &proto::Profile, i: i64) -> &str {
        &p.string_table[i as usize]
    }

    #[test]
    fn frames_become_interned_locations_and_module_mappings() {
        let mut b = ProfileBuilder::new(
            &[("samples", "count"), ("cpu", "nanoseconds")],
            ("cpu", "nanoseconds"),
            10_000_000,
        );
        b.comment("hello").duration(Duration::from_secs(2));
        let main = fr("main", "/bin/burn", 0x1100);
        let hot = fr("hot", "/bin/burn", 0x1200);
        let k = fr(
            "__x64_sys_write",
            "[kernel.kallsyms]",
            0xffff_ffff_8100_0000,
        );
        b.add_sample(
            &[hot.clone(), main.clone()],
            &[3, 30_000_000],
            &[Label::num("pid", 7), Label::str("comm", "burn")],
        )
        .unwrap();
        b.add_sample(&[k, main], &[1, 10_000_000], &[]).unwrap();
        assert!(matches!(
            b.add_sample(&[hot], &[1], &[]),
            Err(PprofError::ValueCount { got: 1, want: 2 })
        ));
        let p = b.build();
        assert_eq!(p.sample.len(), 2);
        assert_eq!(p.location.len(), 3, "main is shared");
        assert_eq!(p.function.len(), 3);
        assert_eq!(p.mapping.len(), 2, "one per module");
        let burn = p
            .mapping
            .iter()
            .find(|m| s(&p, m.filename) == "/bin/burn")
            .unwrap();
        assert_eq!((burn.memory_start, burn.memory_limit), (0x1100, 0x1201));
        assert!(burn.has_functions);
        assert_eq!(s(&p, p.default_sample_type), "cpu");
        assert_eq!(s(&p, p.comment[0]), "hello");
        assert_eq!(p.duration_nanos, 2_000_000_000);
        assert_eq!(s(&p, p.sample[0].label[1].str), "burn");
        assert_eq!(p.sample[0].label[0].num, 7);
    }

    #[test]
    fn registered_mappings_and_inlined_locations() {
        let mut b = ProfileBuilder::new(&[("samples", "count")], ("cpu", "nanoseconds"), 1);
        let m = Mapping {
            start: 0x1000,
            limit: 0x9000,
            filename: "/bin/x".into(),
            build_id: Some("abcd".into()),
            has_functions: true,
            has_inline_frames: true,
            ..Default::default()
        };
        let id = b.add_mapping(&m);
        assert_eq!(b.add_mapping(&m), id, "same mapping interned");
        let inl = [
            fr("inlined", "/bin/x", 0x1500),
            fr("outer", "/bin/x", 0x1500),
        ];
        let caller = [fr("main", "/bin/x", 0x1600)];
        for _ in 0..2 {
            b.add_sample_locations(
                [
                    Location {
                        address: 0x1500,
                        mapping: Some(id),
                        functions: &inl,
                    },
                    Location {
                        address: 0x1600,
                        mapping: Some(id),
                        functions: &caller,
                    },
                ],
                &[1],
                &[Label::num_with_unit("bytes", 5, "bytes")],
            )
            .unwrap();
        }
        // A frame-level sample in the same module lands in the registered mapping.
        b.add_sample(&caller, &[1], &[]).unwrap();
        let bad = b.add_sample_locations(
            [Location {
                address: 1,
                mapping: Some(MappingId(99)),
                functions: &caller,
            }],
            &[1],
            &[],
        );
        assert!(matches!(bad, Err(PprofError::UnknownMapping(99))));
        let p = b.build();
        assert_eq!(p.mapping.len(), 1);
        assert_eq!(s(&p, p.mapping[0].build_id), "abcd");
        assert_eq!(p.location.len(), 2);
        assert_eq!(
            p.location[0].line.len(),
            2,
            "inlined function and its caller"
        );
        assert_eq!(s(&p, p.sample[0].label[0].num_unit), "bytes");
        assert_eq!(p.sample[2].location_id, vec![2]);
        let gz = gzip(&p).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        assert_eq!(decode_gzip(&gz, 1 << 20).unwrap(), p);
        assert!(matches!(
            decode_gzip(&gz, 8),
            Err(PprofError::TooLarge { max: 8 })
        ));
        assert!(matches!(
            decode_gzip(b"not gzip", 1 << 20),
            Err(PprofError::Gunzip(_))
        ));
    }

    proptest::proptest! {
        /// Whatever the frames, the tables are consistent: every id a sample or location
        /// refers to exists, and the encoded bytes decode to the same message.
        #[test]
        fn tables_are_consistent(stacks in proptest::collection::vec(
            proptest::collection::vec((0u8..6, 0u8..3, 0u64..8), 0..12), 0..20)) {
            let mut b = ProfileBuilder::new(&[("samples", "count")], ("cpu", "nanoseconds"), 1);
            for st in &stacks {
                let frames: Vec<Frame> = st.iter().map(|(f, m, a)| fr(&format!("f{f}"), &format!("/m{m}"), *a)).collect();
                b.add_sample(&frames, &[1], &[]).unwrap();
            }
            let p = b.build();
            for smp in &p.sample {
                for l in &smp.location_id {
                    proptest::prop_assert!(p.location.iter().any(|x| x.id == *l));
                }
            }
            for l in &p.location {
                proptest::prop_assert!(p.mapping.iter().any(|m| m.id == l.mapping_id));
                for line in &l.line {
                    proptest::prop_assert!(p.function.iter().any(|f| f.id == line.function_id));
                }
            }
            let gz = gzip(&p).unwrap();
            proptest::prop_assert_eq!(decode_gzip(&gz, 1 << 24).unwrap(), p);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_gzip(&data, 1 << 16);
        }
    }
}
