//! Flame graphs without any backend: folded stacks and SVG (rendered by
//! `inferno`), one per service and one per span with samples, written to a
//! directory.
//!
//! [`FlameGraphs::add`] merges each interval's [`ServiceProfile`] into
//! per-service and per-span graphs that cover the whole run (a span's
//! samples may straddle two intervals); [`FlameGraphs::write`] rewrites the
//! graphs that changed since the last write, each file replaced atomically
//! (written aside, then renamed):
//! - `<service>.folded` / `<service>.svg` for every service;
//! - `span-<span id>.folded` / `span-<span id>.svg` for the spans with the
//!   most samples, at most [`FlameConfig::max_span_graphs`] (a span pushed
//!   out by one with more samples has its files removed).
//!
//! Folded stacks are `root;…;leaf count` lines (Brendan Gregg's format,
//! what `inferno-flamegraph` and `flamegraph.pl` read); kernel frames carry
//! the conventional `_[k]` suffix. Frame names are interned once, stacks
//! are lists of name ids, and every table is bounded: past a bound, samples
//! go to an `[overflow]` line (counted), so totals stay right.
use std::{
    collections::HashMap,
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use correlate::SpanId;

use super::aggregate::{is_synthetic, ServiceProfile, OVERFLOW_FRAME};
use super::pprof::function_name;
use super::types::Frame;

/// Title part of a span graph whose span has not finished yet.
const UNFINISHED: &str = "(span not finished)";

/// Default `--flamegraph-max-spans`.
pub const DEFAULT_MAX_SPAN_GRAPHS: usize = 100;

/// Local flame graph flags of `tracer run`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct FlameArgs {
    /// Write CPU flame graphs to this directory: `<service>.svg` per
    /// service and `span-<span id>.svg` per span with samples (with the
    /// folded stacks next to each, `.folded`), updated every profile
    /// interval. Created if missing.
    #[arg(long, value_name = "DIR")]
    pub flamegraph_dir: Option<PathBuf>,

    /// Span flame graphs kept at most: those of the spans with the most
    /// samples. Default 100.
    #[arg(long, value_name = "N")]
    pub flamegraph_max_spans: Option<usize>,
}

/// Flame graph flags that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlameError {
    /// `--flamegraph-max-spans` alone.
    #[error("--flamegraph-max-spans needs --flamegraph-dir")]
    NoDir,
    /// An empty `--flamegraph-dir`.
    #[error("--flamegraph-dir is empty")]
    EmptyDir,
    /// `--flamegraph-dir` names something else than a directory.
    #[error("--flamegraph-dir {}: exists and is not a directory", dir.display())]
    NotDir {
        /// The path given.
        dir: PathBuf,
    },
    /// `--flamegraph-max-spans` out of range.
    #[error("--flamegraph-max-spans must be at most 100000")]
    MaxSpans,
}

impl FlameArgs {
    /// Validates the flags; `Ok(None)` without `--flamegraph-dir`.
    pub fn resolve(&self) -> Result<Option<FlameConfig>, FlameError> {
        let Some(dir) = &self.flamegraph_dir else {
            if self.flamegraph_max_spans.is_some() {
                return Err(FlameError::NoDir);
            }
            return Ok(None);
        };
        if dir.as_os_str().is_empty() {
            return Err(FlameError::EmptyDir);
        }
        if dir.exists() && !dir.is_dir() {
            return Err(FlameError::NotDir { dir: dir.clone() });
        }
        let max = self.flamegraph_max_spans.unwrap_or(DEFAULT_MAX_SPAN_GRAPHS);
        if max > 100_000 {
            return Err(FlameError::MaxSpans);
        }
        Ok(Some(FlameConfig {
            max_span_graphs: max,
            ..FlameConfig::new(dir.clone())
        }))
    }
}

/// Validated flame graph settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlameConfig {
    /// Where the files go.
    pub dir: PathBuf,
    /// Span graphs kept (0: none, services only).
    pub max_span_graphs: usize,
    /// Service graphs kept; samples of further services are not drawn.
    pub max_service_graphs: usize,
    /// Distinct stacks per service graph.
    pub max_lines_service: usize,
    /// Distinct stacks per span graph.
    pub max_lines_span: usize,
    /// Distinct frame names in all.
    pub max_names: usize,
}

impl FlameConfig {
    /// Defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> FlameConfig {
        FlameConfig {
            dir: dir.into(),
            max_span_graphs: DEFAULT_MAX_SPAN_GRAPHS,
            max_service_graphs: 256,
            max_lines_service: 20_000,
            max_lines_span: 2_000,
            max_names: 200_000,
        }
    }
}

/// What the flame graph writer did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlameCounters {
    /// Graph files (SVG) written.
    pub svgs_written: u64,
    /// Failed writes (each graph counts once per attempt).
    pub write_errors: u64,
    /// Samples drawn as `[overflow]` because a graph or the name table was
    /// full.
    pub overflow_samples: u64,
    /// Spans whose graph was not kept (fewer samples than the kept ones).
    pub spans_not_kept: u64,
    /// Span graphs removed for a span with more samples.
    pub spans_evicted: u64,
    /// Samples of services beyond [`FlameConfig::max_service_graphs`].
    pub services_not_kept: u64,
}

impl std::fmt::Display for FlameCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "svgs_written={} write_errors={} overflow_samples={} spans_not_kept={} \
             spans_evicted={} services_not_kept={}",
            self.svgs_written,
            self.write_errors,
            self.overflow_samples,
            self.spans_not_kept,
            self.spans_evicted,
            self.services_not_kept
        )
    }
}

/// A frame as a folded-stack name: the function (or `module+0xoffset`),
/// `_[k]` appended for kernel frames; `;` and control characters replaced
/// so that the line format stays unambiguous.
pub fn frame_label(frame: &Frame) -> String {
    let mut name = function_name(frame);
    if name.contains(|c: char| c == ';' || c.is_control()) {
        name = name
            .chars()
            .map(|c| match c {
                ';' => ':',
                c if c.is_control() => ' ',
                c => c,
            })
            .collect();
    }
    let name = name.trim_end();
    let mut name = if name.is_empty() {
        "[unknown]".to_string()
    } else {
        name.to_string()
    };
    // A name ending in " <digits>" would read as a second count.
    if name.rsplit(char::is_whitespace).next().is_some_and(|t| {
        !t.is_empty() && t.len() < name.len() && t.bytes().all(|b| b.is_ascii_digit())
    }) {
        name.push('_');
    }
    if frame.kernel && !is_synthetic(frame) {
        name.push_str("_[k]");
    }
    name
}

/// The folded stacks of a profile, root first, merged and sorted: of all
/// its samples (`span` = `None`), or of one span's.
pub fn folded(p: &ServiceProfile, span: Option<SpanId>) -> Vec<String> {
    let labels: Vec<String> = p.frames.iter().map(frame_label).collect();
    let mut merged: HashMap<String, u64> = HashMap::new();
    for s in &p.stacks {
        if span.is_some() && s.span.as_ref().map(|l| l.span_id) != span {
            continue;
        }
        let names: Vec<&str> = s
            .frames
            .iter()
            .rev()
            .filter_map(|&f| labels.get(f as usize).map(String::as_str))
            .collect();
        if names.is_empty() || s.count == 0 {
            continue;
        }
        *merged.entry(names.join(";")).or_insert(0) += s.count;
    }
    let mut lines: Vec<String> = merged
        .into_iter()
        .map(|(stack, n)| format!("{stack} {n}"))
        .collect();
    lines.sort();
    lines
}

/// Renders folded `lines` as an SVG flame graph.
pub fn render_svg(
    title: &str,
    subtitle: Option<&str>,
    lines: &[String],
    out: impl Write,
) -> io::Result<()> {
    if lines.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no samples to draw",
        ));
    }
    let mut opt = inferno::flamegraph::Options::default();
    opt.title = title.to_string();
    opt.subtitle = subtitle.map(str::to_string);
    opt.count_name = "samples".into();
    // Same function, same color, in every graph.
    opt.hash = true;
    opt.deterministic = true;
    inferno::flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), out)
}

/// A file name part from a service name: `[A-Za-z0-9._-]`, at most 80
/// bytes, with a hash when anything was changed (so that two services do
/// not share a file).
pub fn file_stem(service: &str) -> String {
    let mut s: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    if s.starts_with('.') {
        s.replace_range(..1, "_");
    }
    if s != service || s.is_empty() || s.starts_with("span-") {
        let h = service.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        s.push_str(&format!("-{:08x}", h as u32));
    }
    s
}

/// One graph: stacks as name ids, root first.
struct Graph {
    title: String,
    subtitle: String,
    lines: HashMap<Box<[u32]>, u64>,
    total: u64,
    dirty: bool,
}

impl Graph {
    fn new(title: String, subtitle: String) -> Graph {
        Graph {
            title,
            subtitle,
            lines: HashMap::new(),
            total: 0,
            dirty: true,
        }
    }

    /// Adds `n` samples of `stack`; false when the graph is full (the
    /// caller adds them to the overflow line).
    fn add(&mut self, stack: &[u32], n: u64, max_lines: usize) -> bool {
        if let Some(c) = self.lines.get_mut(stack) {
            *c += n;
        } else if self.lines.len() < max_lines {
            self.lines.insert(stack.into(), n);
        } else {
            return false;
        }
        self.total += n;
        self.dirty = true;
        true
    }

    fn add_overflow(&mut self, overflow: u32, n: u64) {
        *self.lines.entry(Box::new([overflow])).or_insert(0) += n;
        self.total += n;
        self.dirty = true;
    }

    fn folded(&self, names: &[Arc<str>]) -> Vec<String> {
        let mut out: Vec<String> = self
            .lines
            .iter()
            .map(|(stack, n)| {
                let mut line = String::new();
                for (i, &id) in stack.iter().enumerate() {
                    if i > 0 {
                        line.push(';');
                    }
                    line.push_str(names.get(id as usize).map_or("[unknown]", |s| s));
                }
                line.push(' ');
                line.push_str(&n.to_string());
                line
            })
            .collect();
        out.sort();
        out
    }
}

/// The flame graph writer; see the module docs.
pub struct FlameGraphs {
    cfg: FlameConfig,
    name_ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
    overflow: u32,
    services: HashMap<Arc<str>, Graph>,
    spans: HashMap<SpanId, Graph>,
    /// Files of evicted spans still to delete.
    to_delete: Vec<PathBuf>,
    counters: FlameCounters,
}

impl FlameGraphs {
    /// A writer into `cfg.dir`, which is created if missing.
    pub fn new(cfg: FlameConfig) -> io::Result<FlameGraphs> {
        fs::create_dir_all(&cfg.dir)?;
        let mut g = FlameGraphs {
            cfg,
            name_ids: HashMap::new(),
            names: Vec::new(),
            overflow: 0,
            services: HashMap::new(),
            spans: HashMap::new(),
            to_delete: Vec::new(),
            counters: FlameCounters::default(),
        };
        g.overflow = g.name(OVERFLOW_FRAME).unwrap_or(0);
        Ok(g)
    }

    /// The directory written to.
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    /// The counters now.
    pub fn counters(&self) -> FlameCounters {
        self.counters
    }

    fn name(&mut self, s: &str) -> Option<u32> {
        if let Some(&id) = self.name_ids.get(s) {
            return Some(id);
        }
        if self.names.len() >= self.cfg.max_names {
            return None;
        }
        let id = u32::try_from(self.names.len()).ok()?;
        let s: Arc<str> = Arc::from(s);
        self.names.push(s.clone());
        self.name_ids.insert(s, id);
        Some(id)
    }

    /// Merges one interval's profile into the graphs.
    pub fn add(&mut self, p: &ServiceProfile) {
        // Frame index -> name id (None: the name table is full).
        let ids: Vec<Option<u32>> = p
            .frames
            .iter()
            .map(|f| self.name(&frame_label(f)))
            .collect();
        // Each stack as name ids, root first (None: a name is missing).
        let stacks: Vec<Option<Vec<u32>>> = p
            .stacks
            .iter()
            .map(|s| {
                s.frames
                    .iter()
                    .rev()
                    .map(|&f| ids.get(f as usize).copied().flatten())
                    .collect()
            })
            .collect();
        let subtitle = format!(
            "CPU samples at {} Hz (1 sample = {:.1} ms of CPU)",
            p.frequency_hz,
            p.period_ns as f64 / 1e6
        );
        let overflow = self.overflow;

        let known = self.services.contains_key(&p.service);
        if !known && self.services.len() >= self.cfg.max_service_graphs {
            self.counters.services_not_kept += p.samples();
        } else {
            let g = self
                .services
                .entry(p.service.clone())
                .or_insert_with(|| Graph::new(format!("{} (CPU)", p.service), subtitle.clone()));
            for (s, stack) in p.stacks.iter().zip(&stacks) {
                let added = match stack {
                    Some(stack) => g.add(stack, s.count, self.cfg.max_lines_service),
                    None => false,
                };
                if !added {
                    g.add_overflow(overflow, s.count);
                    self.counters.overflow_samples += s.count;
                }
            }
        }

        // Spans, most samples first, each admitted then filled.
        let mut of_span: HashMap<SpanId, Vec<usize>> = HashMap::new();
        for (i, s) in p.stacks.iter().enumerate() {
            if let Some(l) = &s.span {
                of_span.entry(l.span_id).or_default().push(i);
            }
        }
        for (label, n) in p.spans() {
            let title = || {
                let name = label.name.as_deref().unwrap_or(UNFINISHED);
                let trace = label
                    .trace_id
                    .map(|t| format!(" trace {t}"))
                    .unwrap_or_default();
                format!("{} {name}: span {}{trace}", p.service, label.span_id)
            };
            if !self.admit_span(label.span_id, n, title, &subtitle) {
                continue;
            }
            let Some(g) = self.spans.get_mut(&label.span_id) else {
                continue;
            };
            if let Some(name) = &label.name {
                if g.title.contains(UNFINISHED) {
                    g.title = g.title.replace(UNFINISHED, name);
                }
            }
            for &i in of_span.get(&label.span_id).map_or(&[][..], Vec::as_slice) {
                let (Some(s), Some(stack)) = (p.stacks.get(i), stacks.get(i)) else {
                    continue;
                };
                let added = match stack {
                    Some(stack) => g.add(stack, s.count, self.cfg.max_lines_span),
                    None => false,
                };
                if !added {
                    g.add_overflow(overflow, s.count);
                    self.counters.overflow_samples += s.count;
                }
            }
        }
    }

    /// Whether span `id` with `n` new samples gets (or has) a graph: kept
    /// spans are the ones with the most samples.
    fn admit_span(
        &mut self,
        id: SpanId,
        n: u64,
        title: impl FnOnce() -> String,
        subtitle: &str,
    ) -> bool {
        if self.spans.contains_key(&id) {
            return true;
        }
        if self.cfg.max_span_graphs == 0 {
            self.counters.spans_not_kept += 1;
            return false;
        }
        if self.spans.len() >= self.cfg.max_span_graphs {
            let smallest = self
                .spans
                .iter()
                .min_by_key(|(sid, g)| (g.total, **sid))
                .map(|(sid, g)| (*sid, g.total));
            match smallest {
                Some((victim, total)) if total < n => {
                    self.spans.remove(&victim);
                    let stem = format!("span-{victim}");
                    self.to_delete
                        .push(self.cfg.dir.join(format!("{stem}.svg")));
                    self.to_delete
                        .push(self.cfg.dir.join(format!("{stem}.folded")));
                    self.counters.spans_evicted += 1;
                }
                _ => {
                    self.counters.spans_not_kept += 1;
                    return false;
                }
            }
        }
        self.spans
            .insert(id, Graph::new(title(), subtitle.to_string()));
        true
    }

    /// Writes the graphs that changed since the last call and removes the
    /// files of evicted spans. Returns the number of SVG files written, or
    /// the first error (the others are still attempted and all counted).
    pub fn write(&mut self) -> io::Result<usize> {
        let mut first_err: Option<io::Error> = None;
        let mut written = 0;
        for path in std::mem::take(&mut self.to_delete) {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    first_err.get_or_insert(e);
                }
            }
        }
        let mut jobs: Vec<(String, &mut Graph)> = Vec::new();
        for (service, g) in self.services.iter_mut() {
            if g.dirty {
                jobs.push((file_stem(service), g));
            }
        }
        for (id, g) in self.spans.iter_mut() {
            if g.dirty {
                jobs.push((format!("span-{id}"), g));
            }
        }
        for (stem, g) in jobs {
            match write_graph(&self.cfg.dir, &stem, g, &self.names) {
                Ok(()) => {
                    g.dirty = false;
                    written += 1;
                    self.counters.svgs_written += 1;
                }
                Err(e) => {
                    self.counters.write_errors += 1;
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }
}

/// Writes `<stem>.folded` and `<stem>.svg`, each through a temporary file
/// renamed into place.
fn write_graph(dir: &Path, stem: &str, g: &Graph, names: &[Arc<str>]) -> io::Result<()> {
    let lines = g.folded(names);
    let mut text = lines.join("\n");
    text.push('\n');
    replace_file(&dir.join(format!("{stem}.folded")), |f| {
        f.write_all(text.as_bytes())
    })?;
    replace_file(&dir.join(format!("{stem}.svg")), |f| {
        render_svg(&g.title, Some(&g.subtitle), &lines, f)
    })
}

fn replace_file(
    path: &Path,
    fill: impl FnOnce(&mut io::BufWriter<fs::File>) -> io::Result<()>,
) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut w = io::BufWriter::new(fs::File::create(&tmp)?);
        fill(&mut w)?;
        w.flush()?;
        drop(w);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::resource::tests::TempDir;
    use crate::export::resource::Resource;
    use crate::profile::aggregate::{SpanLabel, StackCount};

    fn frame(function: Option<&str>, module: &str, offset: u64, kernel: bool) -> Frame {
        Frame {
            function: function.map(Arc::from),
            module: Arc::from(module),
            offset,
            kernel,
            line: None,
        }
    }

    fn span(n: u8, name: Option<&str>) -> SpanLabel {
        SpanLabel {
            span_id: SpanId([n; 8]),
            trace_id: None,
            name: name.map(Arc::from),
        }
    }

    fn profile(service: &str, stacks: Vec<StackCount>) -> ServiceProfile {
        ServiceProfile {
            service: Arc::from(service),
            resource: Arc::new(Resource::new([])),
            start_unix_ns: 0,
            end_unix_ns: 1,
            frequency_hz: 99,
            period_ns: 10_101_010,
            frames: vec![
                frame(Some("leaf;fn"), "a.so", 1, false),
                frame(None, "libc.so.6", 0x2a, false),
                frame(Some("main"), "app", 3, false),
                frame(Some("do_syscall_64"), "[kernel]", 4, true),
                frame(Some("odd 12"), "app", 5, false),
            ],
            stacks,
        }
    }

    fn sc(frames: &[u32], span: Option<SpanLabel>, count: u64) -> StackCount {
        StackCount {
            frames: frames.to_vec(),
            span,
            count,
        }
    }

    #[test]
    fn folds_root_first() {
        let p = profile(
            "svc",
            vec![
                sc(&[0, 1, 2], Some(span(1, Some("GET /a"))), 5),
                sc(&[0, 1, 2], None, 2),
                sc(&[3, 2], Some(span(2, None)), 1),
                sc(&[4, 2], None, 1),
            ],
        );
        assert_eq!(
            folded(&p, None),
            [
                "main;do_syscall_64_[k] 1",
                "main;libc.so.6+0x2a;leaf:fn 7",
                "main;odd 12_ 1",
            ]
        );
        assert_eq!(
            folded(&p, Some(SpanId([1; 8]))),
            ["main;libc.so.6+0x2a;leaf:fn 5"]
        );
        assert!(folded(&p, Some(SpanId([9; 8]))).is_empty());
    }

    #[test]
    fn file_stems_are_safe() {
        assert_eq!(file_stem("checkout-api.v2"), "checkout-api.v2");
        let odd = file_stem("../etc/passwd");
        assert!(!odd.contains('/') && !odd.starts_with('.'), "{odd}");
        assert_ne!(file_stem("a/b"), file_stem("a_b"));
        assert!(file_stem("span-x").starts_with("span-x-"));
        assert!(!file_stem("").is_empty());
        assert!(file_stem(&"x".repeat(500)).len() < 100);
    }

    #[test]
    fn writes_svgs_per_service_and_span() {
        let t = TempDir::new("flame");
        let dir = t.0.join("out");
        let mut g = FlameGraphs::new(FlameConfig::new(&dir)).unwrap();
        g.add(&profile(
            "svc<&>",
            vec![
                sc(&[0, 1, 2], Some(span(1, Some("GET /a<b>"))), 5),
                sc(&[3, 2], Some(span(2, None)), 1),
                sc(&[0, 1, 2], None, 2),
            ],
        ));
        assert_eq!(g.write().unwrap(), 3);
        let stem = file_stem("svc<&>");
        let svg = fs::read_to_string(dir.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("</svg>"));
        assert!(svg.contains("leaf:fn"), "function names drawn");
        assert!(svg.contains("svc&lt;&amp;&gt; (CPU)"), "escaped title");
        let folded = fs::read_to_string(dir.join(format!("{stem}.folded"))).unwrap();
        assert_eq!(
            folded,
            "main;do_syscall_64_[k] 1\nmain;libc.so.6+0x2a;leaf:fn 7\n"
        );
        let s1 = format!("span-{}", SpanId([1; 8]));
        let span_svg = fs::read_to_string(dir.join(format!("{s1}.svg"))).unwrap();
        assert!(span_svg.contains("GET /a&lt;b&gt;"));
        assert_eq!(
            fs::read_to_string(dir.join(format!("{s1}.folded"))).unwrap(),
            "main;libc.so.6+0x2a;leaf:fn 5\n"
        );
        // Nothing changed: nothing written. The next interval merges.
        assert_eq!(g.write().unwrap(), 0);
        g.add(&profile(
            "svc<&>",
            vec![sc(&[0, 1, 2], Some(span(2, Some("GET /b"))), 3)],
        ));
        assert_eq!(g.write().unwrap(), 2);
        let s2 = format!("span-{}", SpanId([2; 8]));
        assert_eq!(
            fs::read_to_string(dir.join(format!("{s2}.folded"))).unwrap(),
            "main;do_syscall_64_[k] 1\nmain;libc.so.6+0x2a;leaf:fn 3\n"
        );
        let svg2 = fs::read_to_string(dir.join(format!("{s2}.svg"))).unwrap();
        assert!(svg2.contains("GET /b"), "title learned the span name");
        assert_eq!(g.counters().svgs_written, 5);
        // No temporary files left.
        for e in fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(!name.ends_with(".tmp"), "{name}");
        }
    }

    #[test]
    fn keeps_the_spans_with_most_samples() {
        let t = TempDir::new("flame");
        let mut cfg = FlameConfig::new(&t.0);
        cfg.max_span_graphs = 2;
        let mut g = FlameGraphs::new(cfg).unwrap();
        g.add(&profile(
            "svc",
            vec![
                sc(&[0, 2], Some(span(1, Some("a"))), 1),
                sc(&[0, 2], Some(span(2, Some("b"))), 5),
            ],
        ));
        g.write().unwrap();
        assert!(t.0.join(format!("span-{}.svg", SpanId([1; 8]))).exists());
        // Span 3 has more samples than span 1: span 1's files go.
        g.add(&profile(
            "svc",
            vec![
                sc(&[0, 2], Some(span(3, Some("c"))), 3),
                sc(&[0, 2], Some(span(4, Some("d"))), 1),
            ],
        ));
        g.write().unwrap();
        assert!(!t.0.join(format!("span-{}.svg", SpanId([1; 8]))).exists());
        assert!(!t.0.join(format!("span-{}.folded", SpanId([1; 8]))).exists());
        assert!(t.0.join(format!("span-{}.svg", SpanId([3; 8]))).exists());
        assert!(!t.0.join(format!("span-{}.svg", SpanId([4; 8]))).exists());
        let c = g.counters();
        assert_eq!((c.spans_evicted, c.spans_not_kept), (1, 1));
        assert_eq!(g.spans.len(), 2);
    }

    #[test]
    fn bounded_lines_overflow() {
        let t = TempDir::new("flame");
        let mut cfg = FlameConfig::new(&t.0);
        cfg.max_lines_service = 2;
        cfg.max_names = 3; // [overflow] + two names
        let mut g = FlameGraphs::new(cfg).unwrap();
        g.add(&profile(
            "svc",
            vec![sc(&[0], None, 1), sc(&[1], None, 2), sc(&[2], None, 4)],
        ));
        g.write().unwrap();
        let folded = fs::read_to_string(t.0.join("svc.folded")).unwrap();
        assert_eq!(folded, "[overflow] 4\nleaf:fn 1\nlibc.so.6+0x2a 2\n");
        assert_eq!(g.counters().overflow_samples, 4);
    }

    #[test]
    fn rejects_bad_flags() {
        let t = TempDir::new("flame");
        let file = t.0.join("f");
        fs::write(&file, "x").unwrap();
        let args = |dir: Option<PathBuf>, max: Option<usize>| FlameArgs {
            flamegraph_dir: dir,
            flamegraph_max_spans: max,
        };
        assert_eq!(args(None, None).resolve(), Ok(None));
        assert_eq!(args(None, Some(3)).resolve(), Err(FlameError::NoDir));
        assert!(args(Some(file), None)
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
        let cfg = args(Some(t.0.join("new")), Some(7))
            .resolve()
            .unwrap()
            .unwrap();
        assert_eq!(cfg.max_span_graphs, 7);
        assert!(render_svg("t", None, &[], io::sink()).is_err());
    }
}
