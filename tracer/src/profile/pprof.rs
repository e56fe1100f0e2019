//! A [`ServiceProfile`] as a pprof `Profile` protobuf, gzip-compressed as
//! Pyroscope and `go tool pprof` read it.
//!
//! The message types below follow pprof's public definition
//! (`proto/profile.proto` of github.com/google/pprof; the same file is in
//! tests/py/profile.proto for the test receiver), written as `prost`
//! structs. The encoding:
//! - sample types `samples/count` and `cpu/nanoseconds`, period type
//!   `cpu/nanoseconds`, period = 1e9 / frequency (what Go's CPU profiles
//!   carry; Pyroscope files them as `process_cpu`);
//! - one `Sample` per (stack, span): values [count, count × period],
//!   locations leaf first, and for span-attributed samples the labels
//!   `span_id` (16 hex digits) and `span_name`, which Grafana's
//!   trace-to-profiles link looks up;
//! - one `Location` per distinct frame (address = offset in its module),
//!   one `Function` per distinct (name, file), one `Mapping` per module;
//!   a frame without a symbol is the function `module+0xoffset`.
use std::collections::HashMap;

use super::aggregate::{ServiceProfile, StackCount};
use super::types::Frame;
use crate::export::transport::gzip;

/// Longest `span_name` label value, in bytes.
pub const MAX_SPAN_NAME: usize = 256;

/// pprof `Profile`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    /// What each sample value is.
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    /// The samples.
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    /// Loaded modules.
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    /// Code locations.
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    /// Functions.
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Strings referred to by index; index 0 is "".
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    /// Regex of frames to drop (string index).
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    /// Regex of frames to keep (string index).
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    /// Unix time of the start of the collection, ns.
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    /// Duration of the collection, ns.
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    /// What the period is.
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    /// Events between two samples.
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Free-form comments (string indexes).
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    /// Index into `sample_type` of the value shown by default.
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// pprof `ValueType`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    /// Type (string index).
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    /// Unit (string index).
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// pprof `Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Location ids, leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per sample type.
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    /// Labels.
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// pprof `Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    /// Key (string index).
    #[prost(int64, tag = "1")]
    pub key: i64,
    /// String value (string index), or 0.
    #[prost(int64, tag = "2")]
    pub str: i64,
    /// Numeric value.
    #[prost(int64, tag = "3")]
    pub num: i64,
    /// Unit of `num` (string index).
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

/// pprof `Mapping`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    /// Id (non-zero).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Start address of the mapping.
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    /// End address of the mapping.
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    /// File offset of the start address.
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    /// File name (string index).
    #[prost(int64, tag = "5")]
    pub filename: i64,
    /// Build id (string index).
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    /// Symbols were resolved.
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    /// File names were resolved.
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    /// Line numbers were resolved.
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    /// Inlined frames were resolved.
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// pprof `Location`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    /// Id (non-zero).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Its mapping (0: none).
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    /// Instruction address.
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// Functions at this address, inlined callees first.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    /// Frames were folded.
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

/// pprof `Line`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    /// Its function.
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    /// Source line.
    #[prost(int64, tag = "2")]
    pub line: i64,
    /// Source column.
    #[prost(int64, tag = "3")]
    pub column: i64,
}

/// pprof `Function`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    /// Id (non-zero).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Name (string index).
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// Mangled or system name (string index).
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    /// Source file (string index).
    #[prost(int64, tag = "4")]
    pub filename: i64,
    /// First line of the function.
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

/// The name a frame is shown by: its function, else `module+0xoffset`.
pub fn function_name(frame: &Frame) -> String {
    match &frame.function {
        Some(f) if !f.is_empty() => f.to_string(),
        _ if frame.module.is_empty() => format!("0x{:x}", frame.offset),
        _ => format!("{}+0x{:x}", frame.module, frame.offset),
    }
}

/// The string table under construction.
#[derive(Default)]
struct Strings {
    index: HashMap<String, i64>,
    table: Vec<String>,
}

impl Strings {
    fn new() -> Strings {
        let mut s = Strings::default();
        s.get("");
        s
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

fn truncate(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The profile as a pprof message.
pub fn to_pprof(p: &ServiceProfile) -> Profile {
    let mut strings = Strings::new();
    let samples = strings.get("samples");
    let count = strings.get("count");
    let cpu = strings.get("cpu");
    let nanoseconds = strings.get("nanoseconds");

    // Mappings: one per module.
    let mut mappings: Vec<Mapping> = Vec::new();
    let mut mapping_of: HashMap<&str, usize> = HashMap::new();
    for f in &p.frames {
        if f.module.is_empty() {
            continue;
        }
        let i = match mapping_of.get(&*f.module) {
            Some(&i) => i,
            None => {
                let i = mappings.len();
                mappings.push(Mapping {
                    id: i as u64 + 1,
                    filename: strings.get(&f.module),
                    ..Mapping::default()
                });
                mapping_of.insert(&f.module, i);
                i
            }
        };
        if let Some(m) = mappings.get_mut(i) {
            m.has_functions |= f.function.is_some();
            m.has_filenames |= f.line.is_some();
            m.has_line_numbers |= f.line.is_some();
        }
    }

    // Functions (deduplicated by name and file) and one location per frame.
    let mut functions: Vec<Function> = Vec::new();
    let mut function_of: HashMap<(i64, i64), u64> = HashMap::new();
    let mut locations: Vec<Location> = Vec::with_capacity(p.frames.len());
    for (i, f) in p.frames.iter().enumerate() {
        let name = strings.get(&function_name(f));
        let (file, line) = match &f.line {
            Some((file, line)) => (strings.get(file), i64::from(*line)),
            None => (strings.get(&f.module), 0),
        };
        let fid = *function_of.entry((name, file)).or_insert_with(|| {
            let id = functions.len() as u64 + 1;
            functions.push(Function {
                id,
                name,
                system_name: name,
                filename: file,
                start_line: 0,
            });
            id
        });
        let mapping_id = mapping_of.get(&*f.module).map_or(0, |&m| m as u64 + 1);
        locations.push(Location {
            id: i as u64 + 1,
            mapping_id,
            address: f.offset,
            line: vec![Line {
                function_id: fid,
                line,
                column: 0,
            }],
            is_folded: false,
        });
    }

    let span_id_key = strings.get("span_id");
    let span_name_key = strings.get("span_name");
    let period = to_i64(p.period_ns);
    let sample: Vec<Sample> = p
        .stacks
        .iter()
        .filter(|s| s.count > 0)
        .map(|s: &StackCount| {
            let mut label = Vec::new();
            if let Some(span) = &s.span {
                label.push(Label {
                    key: span_id_key,
                    str: strings.get(&span.span_id.to_string()),
                    ..Label::default()
                });
                if let Some(name) = &span.name {
                    label.push(Label {
                        key: span_name_key,
                        str: strings.get(truncate(name, MAX_SPAN_NAME)),
                        ..Label::default()
                    });
                }
            }
            let n = to_i64(s.count);
            Sample {
                location_id: s
                    .frames
                    .iter()
                    .filter(|&&f| (f as usize) < p.frames.len())
                    .map(|&f| u64::from(f) + 1)
                    .collect(),
                value: vec![n, n.saturating_mul(period)],
                label,
            }
        })
        .collect();

    Profile {
        sample_type: vec![
            ValueType {
                r#type: samples,
                unit: count,
            },
            ValueType {
                r#type: cpu,
                unit: nanoseconds,
            },
        ],
        sample,
        mapping: mappings,
        location: locations,
        function: functions,
        string_table: strings.table,
        time_nanos: to_i64(p.start_unix_ns),
        duration_nanos: to_i64(p.end_unix_ns.saturating_sub(p.start_unix_ns)),
        period_type: Some(ValueType {
            r#type: cpu,
            unit: nanoseconds,
        }),
        period,
        default_sample_type: 1,
        ..Profile::default()
    }
}

/// The profile as gzip-compressed pprof bytes.
pub fn encode_gzip(p: &ServiceProfile) -> Vec<u8> {
    let raw = prost::Message::encode_to_vec(&to_pprof(p));
    gzip(&raw, flate2::Compression::default())
}

/// Bytes that are not a (gzip-compressed) pprof profile.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Bad gzip.
    #[error("gzip")]
    Gzip(#[source] std::io::Error),
    /// Not a `Profile` message.
    #[error("pprof")]
    Pprof(#[source] prost::DecodeError),
}

/// Decodes gzip-compressed (or plain) pprof bytes (tests, tools).
pub fn decode(bytes: &[u8]) -> Result<Profile, DecodeError> {
    let raw;
    let body = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        let mut d = flate2::read::GzDecoder::new(bytes);
        std::io::Read::read_to_end(&mut d, &mut out).map_err(DecodeError::Gzip)?;
        raw = out;
        &raw[..]
    } else {
        bytes
    };
    <Profile as prost::Message>::decode(body).map_err(DecodeError::Pprof)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::aggregate::{SpanLabel, StackCount};
    use correlate::{SpanId, TraceId};
    use std::sync::Arc;

    pub(crate) fn frame(function: Option<&str>, module: &str, offset: u64) -> Frame {
        Frame {
            function: function.map(Arc::from),
            module: Arc::from(module),
            offset,
            kernel: false,
            line: None,
        }
    }

    fn profile() -> ServiceProfile {
        let frames = vec![
            frame(
                Some("sha256_block_data_order_avx2"),
                "libcrypto.so.3",
                0x1000,
            ),
            frame(Some("PKCS5_PBKDF2_HMAC"), "libcrypto.so.3", 0x2000),
            frame(None, "python3.11", 0x1234),
            frame(Some("main"), "python3.11", 0x10),
            Frame {
                function: Some(Arc::from("do_syscall_64")),
                module: Arc::from("[kernel]"),
                offset: 0xffff_ffff_8100_0000,
                kernel: true,
                line: None,
            },
            Frame {
                line: Some((Arc::from("main.c"), 42)),
                ..frame(Some("main"), "python3.11", 0x20)
            },
        ];
        let span = SpanLabel {
            span_id: SpanId([1, 2, 3, 4, 5, 6, 7, 8]),
            trace_id: Some(TraceId([9; 16])),
            name: Some(Arc::from("GET /cpu")),
        };
        ServiceProfile {
            service: Arc::from("checkout"),
            resource: Arc::new(crate::export::resource::Resource::new([])),
            start_unix_ns: 1_700_000_000_000_000_000,
            end_unix_ns: 1_700_000_010_000_000_000,
            frequency_hz: 99,
            period_ns: 10_101_010,
            frames,
            stacks: vec![
                StackCount {
                    frames: vec![0, 1, 2, 3],
                    span: Some(span.clone()),
                    count: 7,
                },
                StackCount {
                    frames: vec![0, 1, 2, 3],
                    span: None,
                    count: 2,
                },
                StackCount {
                    frames: vec![4, 5],
                    span: Some(SpanLabel { name: None, ..span }),
                    count: 1,
                },
            ],
        }
    }

    fn s(p: &Profile, i: i64) -> &str {
        &p.string_table[i as usize]
    }

    #[test]
    fn encodes_and_decodes() {
        let bytes = encode_gzip(&profile());
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip");
        let p = decode(&bytes).unwrap();
        assert_eq!(p.string_table[0], "");
        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (s(&p, t.r#type), s(&p, t.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        let pt = p.period_type.clone().unwrap();
        assert_eq!((s(&p, pt.r#type), s(&p, pt.unit)), ("cpu", "nanoseconds"));
        assert_eq!(p.period, 10_101_010);
        assert_eq!(p.time_nanos, 1_700_000_000_000_000_000);
        assert_eq!(p.duration_nanos, 10_000_000_000);
        assert_eq!(p.sample.len(), 3);

        // Samples: values, labels, function names leaf first.
        let func_name = |loc: u64| -> String {
            let l = &p.location[(loc - 1) as usize];
            assert_eq!(l.id, loc);
            let f = &p.function[(l.line[0].function_id - 1) as usize];
            s(&p, f.name).to_string()
        };
        let s0 = &p.sample[0];
        assert_eq!(s0.value, vec![7, 7 * 10_101_010]);
        let labels: Vec<(&str, &str)> = s0
            .label
            .iter()
            .map(|l| (s(&p, l.key), s(&p, l.str)))
            .collect();
        assert_eq!(
            labels,
            [("span_id", "0102030405060708"), ("span_name", "GET /cpu")]
        );
        let names: Vec<String> = s0.location_id.iter().map(|&l| func_name(l)).collect();
        assert_eq!(
            names,
            [
                "sha256_block_data_order_avx2",
                "PKCS5_PBKDF2_HMAC",
                "python3.11+0x1234",
                "main"
            ]
        );
        assert!(p.sample[1].label.is_empty());
        assert_eq!(p.sample[1].value, vec![2, 2 * 10_101_010]);
        // Unknown name: span_id only.
        assert_eq!(p.sample[2].label.len(), 1);
        let names: Vec<String> = p.sample[2]
            .location_id
            .iter()
            .map(|&l| func_name(l))
            .collect();
        assert_eq!(names, ["do_syscall_64", "main"]);

        // Deduplication: two modules (+ kernel), "main" twice as functions
        // only because one has a source file.
        let modules: Vec<&str> = p.mapping.iter().map(|m| s(&p, m.filename)).collect();
        assert_eq!(modules, ["libcrypto.so.3", "python3.11", "[kernel]"]);
        assert_eq!(p.location.len(), 6);
        assert_eq!(p.function.len(), 6);
        let mut strings = p.string_table.clone();
        strings.sort();
        strings.dedup();
        assert_eq!(strings.len(), p.string_table.len(), "strings unique");
        let main_line = &p.location[5].line[0];
        assert_eq!(main_line.line, 42);
        assert_eq!(
            s(
                &p,
                p.function[(main_line.function_id - 1) as usize].filename
            ),
            "main.c"
        );
        assert!(p.mapping[1].has_functions && p.mapping[1].has_line_numbers);
        assert_eq!(p.location[2].address, 0x1234);
        assert_eq!(p.location[2].mapping_id, 2);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(
            decode(&[0x1f, 0x8b, 0, 1, 2]),
            Err(DecodeError::Gzip(_))
        ));
        assert!(matches!(
            decode(&[0xff, 0xff, 0xff]),
            Err(DecodeError::Pprof(_))
        ));
        let empty = ServiceProfile {
            stacks: vec![],
            frames: vec![],
            ..profile()
        };
        let p = decode(&encode_gzip(&empty)).unwrap();
        assert!(p.sample.is_empty());
    }

    #[test]
    fn long_names_are_cut_on_char_boundaries() {
        let long = "é".repeat(300);
        assert_eq!(truncate(&long, MAX_SPAN_NAME).len(), MAX_SPAN_NAME);
        assert_eq!(truncate("abc", 2), "ab");
        let mut p = profile();
        if let Some(l) = p.stacks[0].span.as_mut() {
            l.name = Some(Arc::from(long.as_str()));
        }
        let d = decode(&encode_gzip(&p)).unwrap();
        let v = &d.string_table[d.sample[0].label[1].str as usize];
        assert_eq!(v.len(), MAX_SPAN_NAME);
    }
}
