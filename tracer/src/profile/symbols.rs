//! Symbolization of unwound frames.
//!
//! User frames are resolved by (binary, file offset) with blazesym, which
//! reads the ELF symbol tables and, where present, DWARF (source lines,
//! inlined functions) and demangles Rust and C++ names. Results are cached
//! per (binary serial, offset), and the binary is read through the file
//! descriptor the unwinder keeps open, so frames of processes that have
//! exited still resolve. Kernel frames are resolved from /proc/kallsyms
//! (a compact table of its functions, see [`super::kallsyms`]).
//! JIT code (anonymous executable memory) is resolved from the process's
//! perf map (`/tmp/perf-PID.map`, read incrementally: it only grows).
//!
//! Nothing is dropped: an address that cannot be resolved becomes a frame
//! with its module and offset and no function name.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{Read, Seek, SeekFrom},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use blazesym::symbolize::{
    source::{Elf, Source},
    CodeInfo, Input, Sym, Symbolized, Symbolizer,
};

use super::{
    kallsyms::KernelSymbols,
    types::Frame,
    unwind::{Binary, FrameLoc, UserFrame},
};

/// Settings of the symbolizer.
#[derive(Clone, Debug)]
pub struct SymbolConfig {
    /// Resolved (binary, offset) cached at most; the cache starts over
    /// when full.
    pub max_cached: usize,
    /// Perf-map entries kept per process at most.
    pub max_perf_map_entries: usize,
    /// Processes whose perf map is kept at most.
    pub max_perf_maps: usize,
    /// Shortest time between two reads of one process's perf map.
    pub perf_map_min_reload: Duration,
    /// Report source lines where DWARF has them.
    pub lines: bool,
    /// Bound on the DWARF (bytes of its sections) of the binaries read
    /// with it at once: the symbolizer keeps what it parsed (line tables
    /// several times the section size) for as long as the binary is
    /// cached. A binary that does not fit is symbolized from its ELF
    /// symbol tables alone (function names, no lines or inlined
    /// functions), counted.
    pub max_dwarf_bytes: u64,
}

/// Small programs and libraries built with debug information fit; libc's
/// debug file (~10 MiB) and binaries with full debug information (tens of
/// MiB) do not: held whole, they would be most of the agent's memory.
pub const DWARF_BYTES_DEFAULT: u64 = 4 << 20;

impl Default for SymbolConfig {
    fn default() -> Self {
        SymbolConfig {
            max_cached: 1 << 18,
            max_perf_map_entries: 1 << 20,
            max_perf_maps: 256,
            perf_map_min_reload: Duration::from_millis(500),
            lines: true,
            max_dwarf_bytes: DWARF_BYTES_DEFAULT,
        }
    }
}

/// Counters of the symbolization stage.
#[derive(Clone, Debug, Default)]
pub struct SymbolCounters {
    /// User addresses looked up (cache hits included).
    pub user_lookups: u64,
    /// Kernel addresses looked up (cache hits included).
    pub kernel_lookups: u64,
    /// Lookups answered by the caches.
    pub cache_hits: u64,
    /// Times a cache was full and started over.
    pub cache_resets: u64,
    /// Frames without a function name (shown as module+offset).
    pub unresolved: u64,
    /// JIT frames resolved from a perf map.
    pub jit_resolved: u64,
    /// Perf-map reads.
    pub perf_map_reads: u64,
    /// Perf-map lines that could not be parsed or did not fit.
    pub perf_map_skipped: u64,
    /// Wall time spent symbolizing (cache misses), ns.
    pub symbolize_ns: u64,
    /// Binaries with DWARF symbolized from their symbol tables alone
    /// (their DWARF did not fit in `max_dwarf_bytes`).
    pub dwarf_skipped: u64,
}

/// A resolved address: one entry per function, the innermost inlined
/// function first.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Resolved {
    function: Option<Arc<str>>,
    line: Option<(Arc<str>, u32)>,
}

/// A process's JIT symbols.
struct PerfMap {
    /// start -> (end, name)
    symbols: BTreeMap<u64, (u64, Arc<str>)>,
    path: PathBuf,
    /// Bytes read so far (the file only grows).
    read_to: u64,
    /// A partial last line, completed by the next read.
    partial: Vec<u8>,
    last_read: Option<Instant>,
    last_used: u64,
}

/// The symbolizer and its caches.
pub struct Symbols {
    cfg: SymbolConfig,
    blaze: Symbolizer,
    user: HashMap<(u64, u64), Arc<[Resolved]>>,
    /// Per binary (serial) seen: whether its DWARF is read, and its bytes.
    dwarf: HashMap<u64, (bool, u64)>,
    /// DWARF bytes of the binaries read with it.
    dwarf_held: u64,
    /// Read at the first kernel frame (or [`Symbols::warm_up`]); a lookup
    /// in it is a binary search, cheaper than a cache in front of it.
    kallsyms: Option<KernelSymbols>,
    perf_maps: HashMap<u32, PerfMap>,
    names: Interner,
    module_kernel: Arc<str>,
    module_jit: Arc<str>,
    module_unknown: Arc<str>,
    tick: u64,
    counters: SymbolCounters,
}

impl Symbols {
    /// A symbolizer with empty caches.
    pub fn new(cfg: SymbolConfig) -> Symbols {
        let blaze = Symbolizer::builder()
            .enable_code_info(cfg.lines)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        Symbols {
            cfg,
            blaze,
            user: HashMap::new(),
            dwarf: HashMap::new(),
            dwarf_held: 0,
            kallsyms: None,
            perf_maps: HashMap::new(),
            names: Interner::default(),
            module_kernel: Arc::from("[kernel]"),
            module_jit: Arc::from("[jit]"),
            module_unknown: Arc::from("[unknown]"),
            tick: 0,
            counters: SymbolCounters::default(),
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> &SymbolCounters {
        &self.counters
    }

    /// Entries in the cache of user addresses.
    pub fn cached(&self) -> usize {
        self.user.len()
    }

    /// Lets go of a binary the unwinder no longer caches.
    pub fn forget_binary(&mut self, b: &Binary) {
        for path in b.symbol_path().iter().chain(&b.debug_file) {
            let _ = self
                .blaze
                .evict(&blazesym::symbolize::evict::Elf::new(path).into());
        }
        self.user.retain(|(serial, _), _| *serial != b.serial);
        if let Some((true, n)) = self.dwarf.remove(&b.serial) {
            self.dwarf_held -= n;
        }
    }

    /// Whether binary `b` is read with its DWARF: decided on first sight,
    /// within the bound on DWARF held (see [`SymbolConfig::max_dwarf_bytes`]).
    fn read_dwarf(&mut self, b: &Binary) -> bool {
        if let Some(&(yes, _)) = self.dwarf.get(&b.serial) {
            return yes;
        }
        let yes = self.dwarf_held + b.dwarf_bytes <= self.cfg.max_dwarf_bytes;
        if yes {
            self.dwarf_held += b.dwarf_bytes;
        } else {
            self.counters.dwarf_skipped += 1;
        }
        self.dwarf.insert(b.serial, (yes, b.dwarf_bytes));
        yes
    }

    /// Forgets a process's perf map (it exited and its samples are in).
    pub fn forget_process(&mut self, pid: u32) {
        self.perf_maps.remove(&pid);
    }

    fn make_room(&mut self) {
        if self.user.len() >= self.cfg.max_cached {
            self.user.clear();
            self.names.0.clear();
            self.counters.cache_resets += 1;
        }
    }

    /// Reads /proc/kallsyms now rather than at the first kernel frame.
    pub fn warm_up(&mut self) {
        load_kallsyms(&mut self.kallsyms, &mut self.counters.symbolize_ns);
    }

    /// Appends the frames of kernel return addresses (leaf first: the
    /// first is where the tick interrupted, the others are return
    /// addresses, looked up one byte back inside the call).
    pub fn kernel_frames(&mut self, ips: &[u64], out: &mut Vec<Frame>) {
        for (i, &ip) in ips.iter().enumerate() {
            let addr = if i == 0 { ip } else { ip.saturating_sub(1) };
            self.counters.kernel_lookups += 1;
            let names = &mut self.names;
            let function = load_kallsyms(&mut self.kallsyms, &mut self.counters.symbolize_ns)
                .lookup(addr)
                .map(|name| names.intern(name));
            if function.is_none() {
                self.counters.unresolved += 1;
            }
            out.push(Frame {
                function,
                module: self.module_kernel.clone(),
                offset: addr,
                kernel: true,
                line: None,
            });
        }
    }

    /// Appends the frames of one user frame of process `pid` (several
    /// when functions were inlined there, innermost first).
    pub fn user_frames(&mut self, pid: u32, f: &UserFrame, out: &mut Vec<Frame>) {
        self.counters.user_lookups += 1;
        self.tick += 1;
        match &f.loc {
            FrameLoc::Binary { binary, offset } => {
                let resolved = self.resolve_binary(binary, *offset);
                for r in resolved.iter() {
                    if r.function.is_none() {
                        self.counters.unresolved += 1;
                    }
                    out.push(Frame {
                        function: r.function.clone(),
                        module: binary.name.clone(),
                        offset: *offset,
                        kernel: false,
                        line: r.line.clone(),
                    });
                }
            }
            FrameLoc::Anon => {
                let function = self.jit_symbol(pid, f.addr);
                if function.is_some() {
                    self.counters.jit_resolved += 1;
                } else {
                    self.counters.unresolved += 1;
                }
                out.push(Frame {
                    function,
                    module: self.module_jit.clone(),
                    offset: f.addr,
                    kernel: false,
                    line: None,
                });
            }
            FrameLoc::Unknown => {
                self.counters.unresolved += 1;
                out.push(Frame {
                    function: None,
                    module: self.module_unknown.clone(),
                    offset: f.addr,
                    kernel: false,
                    line: None,
                });
            }
        }
    }

    fn resolve_binary(&mut self, b: &Arc<Binary>, offset: u64) -> Arc<[Resolved]> {
        if let Some(r) = self.user.get(&(b.serial, offset)) {
            self.counters.cache_hits += 1;
            return r.clone();
        }
        let t0 = Instant::now();
        let resolved: Arc<[Resolved]> = if b.mem_symbols.is_empty() {
            // DWARF over the bound: the separate debug file's symbol table
            // (every function, static ones included) by address, else the
            // binary's own symbol tables by file offset.
            let dwarf = self.read_dwarf(b);
            let source = match (&b.debug_file, b.vaddr_of(offset)) {
                (Some(debug), Some(vaddr)) if !dwarf => Some((
                    Elf {
                        debug_syms: false,
                        ..Elf::new(debug)
                    },
                    Input::VirtOffset(vaddr),
                )),
                _ => b.symbol_path().map(|path| {
                    (
                        Elf {
                            debug_syms: dwarf,
                            ..Elf::new(path)
                        },
                        Input::FileOffset(offset),
                    )
                }),
            };
            match source {
                Some((elf, input)) => {
                    let src = Source::Elf(elf);
                    match self.blaze.symbolize_single(&src, input) {
                        Ok(Symbolized::Sym(sym)) => from_sym(&mut self.names, &sym),
                        _ => Arc::from(vec![Resolved {
                            function: None,
                            line: None,
                        }]),
                    }
                }
                None => Arc::from(vec![Resolved {
                    function: None,
                    line: None,
                }]),
            }
        } else {
            // In-memory image (vDSO): file offsets are its addresses.
            let i = b.mem_symbols.partition_point(|s| s.addr <= offset);
            let function = i
                .checked_sub(1)
                .and_then(|i| b.mem_symbols.get(i))
                .filter(|s| s.size == 0 || offset < s.addr.saturating_add(s.size))
                .map(|s| s.name.clone());
            Arc::from(vec![Resolved {
                function,
                line: None,
            }])
        };
        self.counters.symbolize_ns += t0.elapsed().as_nanos() as u64;
        self.make_room();
        self.user.insert((b.serial, offset), resolved.clone());
        resolved
    }

    /// The JIT symbol covering `addr` in `pid`'s perf map.
    fn jit_symbol(&mut self, pid: u32, addr: u64) -> Option<Arc<str>> {
        if !self.perf_maps.contains_key(&pid) {
            if self.perf_maps.len() >= self.cfg.max_perf_maps {
                let oldest = self
                    .perf_maps
                    .iter()
                    .min_by_key(|(_, m)| m.last_used)
                    .map(|(&p, _)| p);
                if let Some(p) = oldest {
                    self.perf_maps.remove(&p);
                }
            }
            let path = perf_map_path(pid);
            self.perf_maps.insert(
                pid,
                PerfMap {
                    symbols: BTreeMap::new(),
                    path,
                    read_to: 0,
                    partial: Vec::new(),
                    last_read: None,
                    last_used: 0,
                },
            );
        }
        let tick = self.tick;
        let cfg = self.cfg.clone();
        let counters = &mut self.counters;
        let map = self.perf_maps.get_mut(&pid)?;
        map.last_used = tick;
        if let Some(name) = map.lookup(addr) {
            return Some(name);
        }
        if map
            .last_read
            .is_some_and(|t| t.elapsed() < cfg.perf_map_min_reload)
        {
            return None;
        }
        map.read_more(&cfg, counters);
        map.lookup(addr)
    }
}

/// The frames of a blazesym symbol.
fn from_sym(names: &mut Interner, sym: &Sym<'_>) -> Arc<[Resolved]> {
    let mut line = |ci: Option<&CodeInfo<'_>>| {
        let ci = ci?;
        let l = ci.line?;
        Some((names.intern(&ci.file.to_string_lossy()), l))
    };
    // blazesym lists inlined functions outermost first, each with the
    // location inside that function (the symbol's own code info is the
    // location inside the outermost one); innermost first here.
    let mut v: Vec<Resolved> = Vec::with_capacity(1 + sym.inlined.len());
    let mut lines: Vec<Option<(Arc<str>, u32)>> = sym
        .inlined
        .iter()
        .rev()
        .map(|i| line(i.code_info.as_ref()))
        .collect();
    lines.push(line(sym.code_info.as_deref()));
    let fns = sym
        .inlined
        .iter()
        .rev()
        .map(|i| &*i.name)
        .chain(std::iter::once(&*sym.name));
    for (name, line) in fns.zip(lines) {
        v.push(Resolved {
            function: Some(names.intern(name)),
            line,
        });
    }
    Arc::from(v)
}

/// Function and file names, shared by every frame that shows them.
#[derive(Default)]
struct Interner(HashSet<Arc<str>>);

impl Interner {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(a.clone());
        a
    }
}

/// The kernel's symbols, read on first use (the time it takes counted in
/// `symbolize_ns`).
fn load_kallsyms<'a>(
    k: &'a mut Option<KernelSymbols>,
    symbolize_ns: &mut u64,
) -> &'a KernelSymbols {
    k.get_or_insert_with(|| {
        let t0 = Instant::now();
        let read = KernelSymbols::read();
        *symbolize_ns += t0.elapsed().as_nanos() as u64;
        match read {
            Ok(k) => {
                tracing::debug!(functions = k.len(), bytes = k.heap_bytes(), took = ?t0.elapsed(), "read /proc/kallsyms");
                k
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read /proc/kallsyms: kernel frames stay unnamed");
                KernelSymbols::default()
            }
        }
    })
}

/// /proc/PID/root/tmp/perf-NSPID.map: the process writes it with the pid
/// it sees (its own pid namespace) into its own /tmp.
fn perf_map_path(pid: u32) -> PathBuf {
    let nspid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|l| l.split_whitespace().last().map(str::to_owned))
        })
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(pid);
    PathBuf::from(format!("/proc/{pid}/root/tmp/perf-{nspid}.map"))
}

/// One perf-map line: `START SIZE NAME` (hex, optional 0x).
pub fn parse_perf_map_line(line: &str) -> Option<(u64, u64, &str)> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (start, rest) = line.split_once(' ')?;
    let (size, name) = rest.split_once(' ')?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let start = hex(start)?;
    let size = hex(size)?;
    let name = name.trim();
    (!name.is_empty() && size > 0).then_some((start, size, name))
}

impl PerfMap {
    fn lookup(&self, addr: u64) -> Option<Arc<str>> {
        let (_, (end, name)) = self.symbols.range(..=addr).next_back()?;
        (addr < *end).then(|| name.clone())
    }

    /// Reads what was appended since the last read.
    fn read_more(&mut self, cfg: &SymbolConfig, c: &mut SymbolCounters) {
        self.last_read = Some(Instant::now());
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        c.perf_map_reads += 1;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.read_to {
            // Rewritten: start over.
            self.symbols.clear();
            self.read_to = 0;
            self.partial.clear();
        }
        if f.seek(SeekFrom::Start(self.read_to)).is_err() {
            return;
        }
        // At most 64 MiB per read, so one huge map cannot stall the agent.
        let mut buf = std::mem::take(&mut self.partial);
        let start = buf.len();
        if f.take(64 << 20).read_to_end(&mut buf).is_err() {
            return;
        }
        self.read_to += (buf.len() - start) as u64;
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in buf[..complete].split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let parsed = std::str::from_utf8(line).ok().and_then(parse_perf_map_line);
            match parsed {
                Some((start, size, name)) if self.symbols.len() < cfg.max_perf_map_entries => {
                    self.symbols
                        .insert(start, (start.saturating_add(size), Arc::from(name)));
                }
                _ => c.perf_map_skipped += 1,
            }
        }
        self.partial = buf[complete..].to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_map_lines() {
        assert_eq!(
            parse_perf_map_line("7f1c2a001000 40 LazyCompile:~foo /app/x.js:3"),
            Some((0x7f1c2a001000, 0x40, "LazyCompile:~foo /app/x.js:3"))
        );
        assert_eq!(
            parse_perf_map_line("0x1000 0x10 bar\n"),
            Some((0x1000, 0x10, "bar"))
        );
        for bad in ["", "1000", "1000 10", "zz 10 x", "1000 0 x", "1000 10  "] {
            assert_eq!(parse_perf_map_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn perf_map_is_read_incrementally() {
        let dir = std::env::temp_dir().join(format!("tracer-perfmap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("perf.map");
        std::fs::write(&path, "1000 100 first\n2000 10 sec").unwrap();
        let mut m = PerfMap {
            symbols: BTreeMap::new(),
            path: path.clone(),
            read_to: 0,
            partial: Vec::new(),
            last_read: None,
            last_used: 0,
        };
        let cfg = SymbolConfig::default();
        let mut c = SymbolCounters::default();
        m.read_more(&cfg, &mut c);
        assert_eq!(m.lookup(0x1050).as_deref(), Some("first"));
        assert_eq!(m.lookup(0x1100), None);
        assert_eq!(m.lookup(0x2000), None); // line not complete yet
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"ond\n3000 10 third\n").unwrap();
        m.read_more(&cfg, &mut c);
        assert_eq!(m.lookup(0x2005).as_deref(), Some("second"));
        assert_eq!(m.lookup(0x3000).as_deref(), Some("third"));
        assert_eq!(m.lookup(0xfff), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jit_frames_resolve_from_the_process_perf_map() {
        // This process's own perf map: /proc/self/root/tmp/perf-PID.map.
        let pid = std::process::id();
        let path = PathBuf::from(format!("/tmp/perf-{pid}.map"));
        std::fs::write(&path, "7f0000001000 100 LazyCompile:*hot /app/x.js:1\n").unwrap();
        let mut s = Symbols::new(SymbolConfig::default());
        let mut out = Vec::new();
        for addr in [0x7f00_0000_1010, 0x7f00_0000_2000] {
            s.user_frames(
                pid,
                &UserFrame {
                    addr,
                    loc: FrameLoc::Anon,
                },
                &mut out,
            );
        }
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            out[0].function.as_deref(),
            Some("LazyCompile:*hot /app/x.js:1")
        );
        assert_eq!(&*out[0].module, "[jit]");
        assert_eq!(out[1].function, None);
        assert_eq!(out[1].offset, 0x7f00_0000_2000);
        assert_eq!(s.counters().jit_resolved, 1);
        assert_eq!(s.counters().unresolved, 1);
    }

    #[test]
    fn resolves_own_functions_and_keeps_unknown_addresses() {
        let mut s = Symbols::new(SymbolConfig::default());
        let mut out = Vec::new();
        s.user_frames(
            1,
            &UserFrame {
                addr: 0x1234,
                loc: FrameLoc::Unknown,
            },
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].function, None);
        assert_eq!(&*out[0].module, "[unknown]");
        assert_eq!(out[0].offset, 0x1234);
        assert_eq!(s.counters().unresolved, 1);
    }

    /// A stripped library with its debug file installed, as distributions
    /// ship them, built here: gcc, then objcopy and strip (binutils).
    fn stripped_library_with_debug_file(dir: &std::path::Path) -> (PathBuf, PathBuf, u64) {
        use object::{Object, ObjectSegment, ObjectSymbol};
        let run = |cmd: &str, args: &[&str]| {
            let st = std::process::Command::new(cmd)
                .args(args)
                .current_dir(dir)
                .status()
                .unwrap_or_else(|e| panic!("{cmd} (gcc and binutils are build dependencies): {e}"));
            assert!(st.success(), "{cmd} {args:?}");
        };
        std::fs::write(
            dir.join("lib.c"),
            "__attribute__((noinline)) static int tracer_hidden_fn(int x) { return x * 3 + 1; }\n\
             int tracer_public_fn(int x) { return tracer_hidden_fn(x) + 2; }\n",
        )
        .unwrap();
        run(
            "gcc",
            &[
                "-g",
                "-O1",
                "-shared",
                "-fPIC",
                "-Wl,--build-id",
                "-o",
                "lib.so",
                "lib.c",
            ],
        );
        // The static function's file offset, from the unstripped library.
        let data = std::fs::read(dir.join("lib.so")).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let addr = obj
            .symbols()
            .find(|s| s.name() == Ok("tracer_hidden_fn"))
            .expect("the static function in .symtab")
            .address();
        let offset = obj
            .segments()
            .find_map(|seg| {
                let (off, size) = seg.file_range();
                (seg.address() <= addr && addr < seg.address() + size)
                    .then(|| off + (addr - seg.address()))
            })
            .unwrap();
        let id = obj.build_id().unwrap().expect("a build id");
        let debug = crate::profile::unwind::debug_file_path(&dir.join("debug"), id).unwrap();
        std::fs::create_dir_all(debug.parent().unwrap()).unwrap();
        run(
            "objcopy",
            &["--only-keep-debug", "lib.so", debug.to_str().unwrap()],
        );
        run("strip", &["--strip-all", "lib.so"]);
        run(
            "objcopy",
            &[
                &format!("--add-gnu-debuglink={}", debug.display()),
                "lib.so",
            ],
        );
        (dir.join("lib.so"), dir.join("debug"), offset)
    }

    #[test]
    fn a_stripped_binary_over_the_dwarf_bound_is_named_from_its_debug_file_symbols() {
        let dir = std::env::temp_dir().join(format!("tracer-debugsyms-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (lib, debug_dir, offset) = stripped_library_with_debug_file(&dir);
        let open = |debug_dirs: &[&str]| {
            let file = std::fs::File::open(&lib).unwrap();
            let id = crate::profile::unwind::FileId { dev: 0, inode: 1 };
            Arc::new(Binary::open(1, id, lib.to_str().unwrap(), file, debug_dirs).unwrap())
        };
        let frame = |b: &Arc<Binary>| UserFrame {
            addr: 0,
            loc: FrameLoc::Binary {
                binary: b.clone(),
                offset,
            },
        };
        let name_of = |b: &Arc<Binary>, max_dwarf_bytes: u64| {
            let mut s = Symbols::new(SymbolConfig {
                max_dwarf_bytes,
                ..SymbolConfig::default()
            });
            let mut out = Vec::new();
            s.user_frames(1, &frame(b), &mut out);
            (
                out.iter()
                    .map(|f| f.function.as_deref().map(str::to_owned))
                    .collect::<Vec<_>>(),
                s.counters().dwarf_skipped,
            )
        };
        let with_debug = open(&[debug_dir.to_str().unwrap()]);
        assert!(
            with_debug.debug_file.is_some(),
            "debug file found by build id"
        );
        assert!(with_debug.dwarf_bytes > 0, "its DWARF counted");
        // Over the bound: the debug file's symbol table names the static
        // function the stripped file's dynamic symbols lack.
        assert_eq!(
            name_of(&with_debug, 0),
            (vec![Some("tracer_hidden_fn".to_owned())], 1)
        );
        // Without the debug file nothing names it.
        let without = open(&["/nonexistent-debug-dir"]);
        assert!(without.debug_file.is_none());
        assert_ne!(
            name_of(&without, 0).0,
            vec![Some("tracer_hidden_fn".to_owned())]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
