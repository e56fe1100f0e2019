//! User-stack unwinding from a sample's registers and stack copy.
//!
//! Per-binary state apart from per-process state: a [`Binary`] (unwind
//! sections, load segments, an open file descriptor) is read once per file
//! identity (device + inode from /proc/PID/maps; the open descriptor keeps
//! the inode from being reused while it is cached) and shared by every
//! process that maps it. A process holds its executable mappings and a
//! `framehop` unwinder whose modules point at those shared sections; its
//! list is re-read from /proc/PID/maps when an address falls outside it
//! (rate-limited per process), and changed modules are swapped one by one.
//!
//! framehop unwinds with .eh_frame_hdr/.eh_frame (or .debug_frame) and
//! falls back to the frame pointer where a module has no unwind
//! information (JIT code, some hand-written assembly). A stack counts as
//! unwound to its root only when the unwind rules said so (the CFI of
//! `_start`/`clone` marks the return address undefined, or a frame-pointer
//! chain ends at 0) and every frame lies in an executable mapping.
use std::{
    collections::HashMap,
    fs::File,
    ops::{Deref, Range},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use framehop::{
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
    Error as UnwindError, ExplicitModuleSectionInfo, Module, Unwinder as _,
};
use object::{Object, ObjectSection, ObjectSegment, SegmentFlags};

use super::sample::Sample;

/// Identity of a mapped file: device and inode as /proc/PID/maps shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// `major << 32 | minor`.
    pub dev: u64,
    /// Inode number.
    pub inode: u64,
}

/// One line of /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `r` permission.
    pub read: bool,
    /// `x` permission.
    pub exec: bool,
    /// File offset of `start`.
    pub offset: u64,
    /// Device and inode (inode 0 for anonymous and special mappings).
    pub file: FileId,
    /// Path, `[vdso]`-style name, or empty for anonymous memory; without
    /// the ` (deleted)` suffix.
    pub path: String,
    /// The file was deleted (or replaced) after it was mapped.
    pub deleted: bool,
}

impl MapEntry {
    /// A mapping of a file (as opposed to anonymous or special memory).
    pub fn is_file(&self) -> bool {
        self.file.inode != 0 && self.path.starts_with('/')
    }
}

/// Parses one line of /proc/PID/maps; None for a malformed line.
pub fn parse_maps_line(line: &str) -> Option<MapEntry> {
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let r = rest.trim_start_matches(' ');
        let end = r.find(' ').unwrap_or(r.len());
        let (f, tail) = r.split_at(end);
        rest = tail;
        (!f.is_empty()).then_some(f)
    };
    let range = field()?;
    let perms = field()?.as_bytes();
    let offset = field()?;
    let dev = field()?;
    let inode = field()?;
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    if perms.len() < 4 {
        return None;
    }
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    let start = hex(start)?;
    let end = hex(end)?;
    if end < start {
        return None;
    }
    let mut path = rest.trim_start_matches(' ');
    let deleted = path.ends_with(" (deleted)");
    if deleted {
        path = &path[..path.len() - " (deleted)".len()];
    }
    Some(MapEntry {
        start,
        end,
        read: perms[0] == b'r',
        exec: perms[2] == b'x',
        offset: hex(offset)?,
        file: FileId {
            dev: (hex(major)? << 32) | hex(minor)?,
            inode: inode.parse().ok()?,
        },
        path: path.to_owned(),
        deleted,
    })
}

/// Parses /proc/PID/maps text, skipping malformed lines.
pub fn parse_maps(text: &str) -> Vec<MapEntry> {
    text.lines().filter_map(parse_maps_line).collect()
}

/// Section bytes shared between the binary cache and every process's
/// unwinder modules: a region of the file mapped read-only (its pages
/// are the page cache's: only those the unwinder touches are resident,
/// and the kernel may reclaim them), or a copy (the vDSO, tests).
#[derive(Clone, Debug)]
pub struct Bytes(Backing);

#[derive(Clone, Debug)]
enum Backing {
    Copied(Arc<[u8]>),
    Mapped(Arc<memmap2::Mmap>, Range<usize>),
}

impl Default for Bytes {
    fn default() -> Bytes {
        Bytes(Backing::Copied(Arc::from(&[][..])))
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Backing::Copied(b) => b,
            Backing::Mapped(m, r) => &m[r.clone()],
        }
    }
}

/// A loadable segment of an ELF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LoadSegment {
    offset: u64,
    vaddr: u64,
    filesz: u64,
    exec: bool,
}

/// The unwind sections of a binary, with their stated addresses.
#[derive(Clone, Debug, Default)]
struct UnwindSections {
    text: Option<Range<u64>>,
    got: Option<Range<u64>>,
    eh_frame: Option<(Range<u64>, Bytes)>,
    eh_frame_hdr: Option<(Range<u64>, Bytes)>,
    debug_frame: Option<Bytes>,
}

/// A symbol of an in-memory image (the vDSO), which blazesym cannot read
/// from a path.
#[derive(Clone, Debug)]
pub struct MemSymbol {
    /// Stated address.
    pub addr: u64,
    /// Size (0 = up to the next symbol).
    pub size: u64,
    /// Name.
    pub name: Arc<str>,
}

/// One file's data, read once and shared.
#[derive(Debug)]
pub struct Binary {
    /// Unique per loaded binary (symbol caches key on it).
    pub serial: u64,
    /// File identity.
    pub id: FileId,
    /// File name, e.g. `libcrypto.so.3`, or `[vdso]`.
    pub name: Arc<str>,
    /// Path as the process mapped it.
    pub path: Arc<str>,
    /// Kept open: symbolization reads the file through
    /// `/proc/self/fd/N` even after every process mapping it is gone.
    file: Option<File>,
    segments: Vec<LoadSegment>,
    unwind: Option<UnwindSections>,
    /// Bytes of the file's DWARF sections (uncompressed), or of its separate
    /// debug file's: what the symbolizer would parse for source lines and
    /// inlined functions.
    pub dwarf_bytes: u64,
    /// Its separate debug file (a stripped binary's, installed by a `-dbg`
    /// package), whose full symbol table names what the stripped file's
    /// dynamic symbols do not.
    pub debug_file: Option<PathBuf>,
    /// Symbols of an in-memory image (vDSO only).
    pub mem_symbols: Vec<MemSymbol>,
}

impl Binary {
    /// Reads the ELF file `file`, mapped from `path`, keeping it open;
    /// its separate debug file, if any, is looked for in `debug_dirs`.
    pub(crate) fn open(
        serial: u64,
        id: FileId,
        path: &str,
        file: File,
        debug_dirs: &[&str],
    ) -> Option<Binary> {
        // SAFETY: a read-only mapping of a file the agent does not
        // write. A binary truncated in place while mapped would fault on
        // access; binaries are replaced, not truncated, in practice, and
        // the symbolizer maps the same files.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.ok()?);
        let ElfImage {
            segments,
            unwind,
            dwarf_bytes,
            debug_file,
        } = read_elf(&map, Some(&map), debug_dirs)?;
        let name = path.rsplit('/').next().unwrap_or(path);
        Some(Binary {
            serial,
            id,
            name: Arc::from(name),
            path: Arc::from(path),
            file: Some(file),
            segments,
            unwind: Some(unwind),
            dwarf_bytes,
            debug_file,
            mem_symbols: Vec::new(),
        })
    }

    /// A path that opens this binary for as long as it is cached.
    pub fn symbol_path(&self) -> Option<PathBuf> {
        use std::os::fd::AsRawFd;
        self.file
            .as_ref()
            .map(|f| PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())))
    }

    /// The address the file's offset `offset` is loaded at (before
    /// relocation), by its load segments: how a debug file, whose own
    /// segments have no file contents, is looked up.
    pub fn vaddr_of(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| s.offset <= offset && offset < s.offset.saturating_add(s.filesz))
            .map(|s| s.vaddr.wrapping_add(offset - s.offset))
    }

    /// Bytes of unwind sections held.
    pub fn section_bytes(&self) -> u64 {
        self.unwind.as_ref().map_or(0, |u| {
            let len = |b: &Option<(Range<u64>, Bytes)>| b.as_ref().map_or(0, |(_, b)| b.len());
            (len(&u.eh_frame)
                + len(&u.eh_frame_hdr)
                + u.debug_frame.as_ref().map_or(0, |b| b.len())) as u64
        })
    }

    /// Whether the file had unwind information.
    pub fn has_unwind_info(&self) -> bool {
        self.unwind
            .as_ref()
            .is_some_and(|u| u.eh_frame.is_some() || u.debug_frame.is_some())
    }

    /// The address the file's address 0 is mapped at, for a mapping of
    /// this file: `start - offset + p_offset - p_vaddr` of the segment the
    /// mapping holds.
    fn bias(&self, m: &MapEntry) -> u64 {
        let map_end = m.offset.saturating_add(m.end - m.start);
        let seg = self
            .segments
            .iter()
            .filter(|s| s.offset & !0xfff < map_end && m.offset < s.offset.saturating_add(s.filesz))
            .max_by_key(|s| (s.exec, u64::MAX - s.offset.abs_diff(m.offset)));
        let base = m.start.wrapping_sub(m.offset);
        match seg {
            Some(s) => base.wrapping_add(s.offset).wrapping_sub(s.vaddr),
            None => base,
        }
    }

    fn section_info(&self) -> ExplicitModuleSectionInfo<Bytes> {
        let Some(u) = &self.unwind else {
            return ExplicitModuleSectionInfo::default();
        };
        ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: u.text.clone(),
            got_svma: u.got.clone(),
            eh_frame_svma: u.eh_frame.as_ref().map(|(r, _)| r.clone()),
            eh_frame: u.eh_frame.as_ref().map(|(_, b)| b.clone()),
            eh_frame_hdr_svma: u.eh_frame_hdr.as_ref().map(|(r, _)| r.clone()),
            eh_frame_hdr: u.eh_frame_hdr.as_ref().map(|(_, b)| b.clone()),
            debug_frame: u.debug_frame.clone(),
            ..Default::default()
        }
    }
}

/// Largest unwind section copied (a bound on per-binary memory).
const MAX_SECTION: u64 = 64 << 20;

/// Bytes of an ELF image's DWARF sections, uncompressed.
fn dwarf_section_bytes(obj: &object::File) -> u64 {
    obj.sections()
        .filter(|s| {
            s.name()
                .is_ok_and(|n| n.starts_with(".debug_") || n.starts_with(".zdebug_"))
        })
        .map(|s| s.compressed_file_range().map_or(0, |r| r.uncompressed_size))
        .sum()
}

/// Where distributions install separate debug files (`-dbg` packages),
/// by build id; the symbolizer looks there first.
const DEBUG_DIRS: [&str; 2] = ["/usr/lib/debug", "/lib/debug"];

/// The DWARF the symbolizer would parse for an image: its bytes, and the
/// separate debug file they are in. An image that names a separate debug
/// file (`.gnu_debuglink`, as distributions' stripped binaries do) has that
/// file's DWARF parsed instead of its own when the file is installed;
/// other images only their own.
fn symbolized_dwarf(obj: &object::File, dirs: &[&str]) -> (u64, Option<PathBuf>) {
    if obj.section_by_name(".gnu_debuglink").is_some() {
        if let Some((path, bytes)) = separate_debug_file(obj, dirs) {
            return (bytes, Some(path));
        }
    }
    (dwarf_section_bytes(obj), None)
}

/// Where a debug directory keeps the separate debug file of build id `id`
/// (`DIR/.build-id/xx/rest.debug`, as `-dbg` packages install them).
pub(crate) fn debug_file_path(dir: &Path, id: &[u8]) -> Option<PathBuf> {
    let (first, rest) = id.split_first()?;
    let hex: String = rest.iter().map(|b| format!("{b:02x}")).collect();
    Some(
        dir.join(".build-id")
            .join(format!("{first:02x}"))
            .join(format!("{hex}.debug")),
    )
}

/// An image's separate debug file, found in `dirs` by its build id, and the
/// bytes of its DWARF: the bound on DWARF held must count what the
/// symbolizer really parses (a stripped Python with its debug package
/// installed carries ~40 MiB of it). Only section headers are read.
fn separate_debug_file(obj: &object::File, dirs: &[&str]) -> Option<(PathBuf, u64)> {
    let id = obj.build_id().ok()??;
    for dir in dirs {
        let path = debug_file_path(Path::new(dir), id)?;
        let Ok(file) = File::open(&path) else {
            continue;
        };
        // SAFETY: read-only private mapping; only its headers are parsed,
        // and it is unmapped before this returns.
        let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        let bytes = object::File::parse(&*map).map_or(0, |o| dwarf_section_bytes(&o));
        return Some((path, bytes));
    }
    None
}

/// Reads the load segments and unwind sections of an ELF image, and the
/// bytes of its DWARF (see [`Binary::dwarf_bytes`]). Sections of a mapped
/// file (`map`, whose bytes `data` is) are referred to, not copied.
fn read_elf(
    data: &[u8],
    map: Option<&Arc<memmap2::Mmap>>,
    debug_dirs: &[&str],
) -> Option<ElfImage> {
    let obj = object::File::parse(data).ok()?;
    let segments = obj
        .segments()
        .map(|s| {
            let (offset, filesz) = s.file_range();
            let exec = match s.flags() {
                SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
                _ => false,
            };
            LoadSegment {
                offset,
                vaddr: s.address(),
                filesz,
                exec,
            }
        })
        .collect();
    let range = |name: &str| {
        obj.section_by_name(name)
            .map(|s| s.address()..s.address().saturating_add(s.size()))
    };
    let bytes = |name: &str| -> Option<(Range<u64>, Bytes)> {
        let s = obj.section_by_name(name)?;
        if s.size() == 0 || s.size() > MAX_SECTION {
            return None;
        }
        let section = s.data().ok()?;
        let start = (section.as_ptr() as usize).wrapping_sub(data.as_ptr() as usize);
        let backing = match map {
            Some(m) if start.saturating_add(section.len()) <= data.len() => {
                Backing::Mapped(m.clone(), start..start + section.len())
            }
            _ => Backing::Copied(Arc::from(section)),
        };
        Some((
            s.address()..s.address().saturating_add(s.size()),
            Bytes(backing),
        ))
    };
    let dwarf = symbolized_dwarf(&obj, debug_dirs);
    let eh_frame = bytes(".eh_frame");
    let unwind = UnwindSections {
        text: range(".text"),
        got: range(".got"),
        eh_frame_hdr: eh_frame.as_ref().and_then(|_| bytes(".eh_frame_hdr")),
        // .debug_frame only when there is no .eh_frame (framehop prefers
        // the latter); compressed sections are skipped.
        debug_frame: if eh_frame.is_none() {
            bytes(".debug_frame")
                .filter(|_| {
                    obj.section_by_name(".debug_frame")
                        .is_some_and(|s| matches!(s.compressed_file_range(), Ok(r) if r.format == object::CompressionFormat::None))
                })
                .map(|(_, b)| b)
        } else {
            None
        },
        eh_frame,
    };
    let (dwarf_bytes, debug_file) = dwarf;
    Some(ElfImage {
        segments,
        unwind,
        dwarf_bytes,
        debug_file,
    })
}

/// What [`read_elf`] reads of an image.
struct ElfImage {
    segments: Vec<LoadSegment>,
    unwind: UnwindSections,
    dwarf_bytes: u64,
    debug_file: Option<PathBuf>,
}

/// Symbols of an in-memory ELF image (its dynamic symbol table).
fn mem_symbols(data: &[u8]) -> Vec<MemSymbol> {
    use object::ObjectSymbol;
    let Ok(obj) = object::File::parse(data) else {
        return Vec::new();
    };
    let mut syms: Vec<MemSymbol> = obj
        .dynamic_symbols()
        .chain(obj.symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
        .filter_map(|s| {
            Some(MemSymbol {
                addr: s.address(),
                size: s.size(),
                name: Arc::from(s.name().ok()?),
            })
        })
        .collect();
    syms.sort_by_key(|s| s.addr);
    syms.dedup_by_key(|s| s.addr);
    syms
}

/// Settings of the unwinder.
#[derive(Clone, Debug)]
pub struct UnwindConfig {
    /// User frames kept per stack.
    pub max_frames: usize,
    /// Binaries cached at most (those mapped by a tracked process stay).
    /// Each holds two file descriptors (ours and blazesym's) while cached.
    pub max_binaries: usize,
    /// Processes tracked at most (least recently sampled go first).
    pub max_processes: usize,
    /// Shortest time between two re-reads of one process's maps.
    pub min_refresh: Duration,
    /// A binary that could not be read is retried after this long.
    pub retry_failed: Duration,
}

impl Default for UnwindConfig {
    fn default() -> Self {
        UnwindConfig {
            max_frames: 256,
            max_binaries: 256,
            max_processes: 4096,
            min_refresh: Duration::from_millis(100),
            retry_failed: Duration::from_secs(30),
        }
    }
}

/// Counters of the unwinding stage.
#[derive(Clone, Debug, Default)]
pub struct UnwindCounters {
    /// Stacks unwound.
    pub stacks: u64,
    /// Stacks that reached their root.
    pub complete: u64,
    /// Stacks cut short (stack copy ended, no unwind rule, bad address,
    /// frame limit).
    pub truncated: u64,
    /// User frames produced.
    pub frames: u64,
    /// Reads of /proc/PID/maps.
    pub maps_reads: u64,
    /// Reads of /proc/PID/maps that failed (process gone).
    pub maps_failed: u64,
    /// Binaries read.
    pub binaries_loaded: u64,
    /// Binaries without .eh_frame/.debug_frame (frame pointers only).
    pub binaries_without_unwind_info: u64,
    /// Binaries that could not be opened or parsed.
    pub binaries_failed: u64,
    /// Binaries dropped from the cache.
    pub binaries_evicted: u64,
    /// Processes dropped from the table to make room.
    pub processes_evicted: u64,
    /// Processes dropped by `sweep` (exited).
    pub processes_exited: u64,
    /// Bytes of unwind sections held by cached binaries (loaded so far,
    /// evicted ones included).
    pub section_bytes: u64,
    /// Wall time spent unwinding (maps and binary loading included), ns.
    pub unwind_ns: u64,
}

/// Where a user frame's address lies.
#[derive(Clone, Debug)]
pub enum FrameLoc {
    /// In a mapped file (or the vDSO): `offset` is the file offset.
    Binary {
        /// The file.
        binary: Arc<Binary>,
        /// File offset of the address.
        offset: u64,
    },
    /// Anonymous executable memory (JIT code): symbolized from the
    /// process's perf map, if it writes one.
    Anon,
    /// In no executable mapping known for the process.
    Unknown,
}

/// One user frame.
#[derive(Clone, Debug)]
pub struct UserFrame {
    /// Address to look up: the instruction pointer for the leaf, the
    /// return address minus one (inside the call) for callers.
    pub addr: u64,
    /// What the address belongs to.
    pub loc: FrameLoc,
}

/// One executable mapping of a process.
#[derive(Clone, Debug)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    file: FileId,
    binary: Option<Arc<Binary>>,
    /// Where the file's address 0 is mapped.
    bias: u64,
    anon: bool,
}

/// A tracked process.
struct Process {
    mappings: Vec<Mapping>,
    unwinder: UnwinderX86_64<Bytes>,
    last_refresh: Option<Instant>,
    last_seen: u64,
}

impl Process {
    fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }
}

enum CachedBinary {
    Loaded(Arc<Binary>),
    Failed(Instant),
}

/// The unwinder: binary cache, process table, framehop's rule cache.
pub struct Unwinder {
    cfg: UnwindConfig,
    binaries: HashMap<FileId, CachedBinary>,
    processes: HashMap<u32, Process>,
    cache: CacheX86_64,
    vdso: Option<Arc<Binary>>,
    next_serial: u64,
    tick: u64,
    last_sweep: u64,
    /// Module additions and removals since the rule cache was last reset:
    /// framehop tags cached rules with a global 16-bit generation that
    /// every change bumps, so the cache starts over well before it wraps.
    module_changes: u32,
    counters: UnwindCounters,
    /// Binaries dropped from the cache since the last `take_evicted`.
    evicted: Vec<Arc<Binary>>,
}

impl Unwinder {
    /// An empty unwinder.
    pub fn new(cfg: UnwindConfig) -> Unwinder {
        let mut u = Unwinder {
            cfg,
            binaries: HashMap::new(),
            processes: HashMap::new(),
            cache: CacheX86_64::new(),
            vdso: None,
            next_serial: 1,
            tick: 0,
            last_sweep: 0,
            module_changes: 0,
            counters: UnwindCounters::default(),
            evicted: Vec::new(),
        };
        u.vdso = u.load_own_vdso();
        u
    }

    /// Counters so far.
    pub fn counters(&self) -> &UnwindCounters {
        &self.counters
    }

    /// Processes tracked.
    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    /// Binaries cached.
    pub fn binaries(&self) -> usize {
        self.binaries.len()
    }

    /// Binaries evicted since the last call (so symbol caches can let go
    /// of them too).
    pub fn take_evicted(&mut self) -> Vec<Arc<Binary>> {
        std::mem::take(&mut self.evicted)
    }

    /// Forgets a process (it exited). Its binaries stay cached.
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// Drops processes that were not sampled since the previous sweep and
    /// are gone from /proc; returns their pids. Call it every few seconds:
    /// samples still in flight when a process exits find its modules until
    /// then.
    pub fn sweep(&mut self) -> Vec<u32> {
        let since = self.last_sweep;
        self.last_sweep = self.tick;
        let gone: Vec<u32> = self
            .processes
            .iter()
            .filter(|(pid, p)| {
                p.last_seen <= since && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            })
            .map(|(&pid, _)| pid)
            .collect();
        for pid in &gone {
            self.processes.remove(pid);
            self.counters.processes_exited += 1;
        }
        gone
    }

    /// Unwinds the user stack of `s` into `out` (leaf first). Returns
    /// whether the stack reached its root. Nothing is pushed for samples
    /// without user registers.
    pub fn unwind(&mut self, s: &Sample<'_>, out: &mut Vec<UserFrame>) -> bool {
        let Some(regs) = s.user else {
            return false;
        };
        let t0 = Instant::now();
        self.tick += 1;
        self.counters.stacks += 1;
        if !self.processes.contains_key(&s.pid) {
            self.make_room_for_process();
            self.processes.insert(
                s.pid,
                Process {
                    mappings: Vec::new(),
                    unwinder: UnwinderX86_64::new(),
                    last_refresh: None,
                    last_seen: 0,
                },
            );
            self.refresh(s.pid);
        } else if self.proc_find(s.pid, regs.ip).is_none() {
            self.maybe_refresh(s.pid);
        }
        let mut complete = self.walk(s, out);
        // A return address outside every known mapping: a library loaded
        // since the last read of the maps, or garbage. Re-read once.
        if !complete
            && out.iter().any(|f| matches!(f.loc, FrameLoc::Unknown))
            && self.maybe_refresh(s.pid)
        {
            out.clear();
            complete = self.walk(s, out);
        }
        if let Some(p) = self.processes.get_mut(&s.pid) {
            p.last_seen = self.tick;
        }
        if complete {
            self.counters.complete += 1;
        } else {
            self.counters.truncated += 1;
        }
        self.counters.frames += out.len() as u64;
        self.counters.unwind_ns += t0.elapsed().as_nanos() as u64;
        complete
    }

    fn proc_find(&self, pid: u32, addr: u64) -> Option<&Mapping> {
        self.processes.get(&pid)?.find(addr)
    }

    /// One pass of framehop over the stack copy.
    fn walk(&mut self, s: &Sample<'_>, out: &mut Vec<UserFrame>) -> bool {
        let Some(regs) = s.user else {
            return false;
        };
        let Some(p) = self.processes.get(&s.pid) else {
            return false;
        };
        let mut read = |addr: u64| s.read_stack(addr).ok_or(());
        let mut frames = p.unwinder.iter_frames(
            regs.ip,
            UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp),
            &mut self.cache,
            &mut read,
        );
        loop {
            if out.len() >= self.cfg.max_frames {
                return false;
            }
            match frames.next() {
                Ok(Some(f)) => {
                    let addr = f.address_for_lookup();
                    let loc = match p.find(addr) {
                        Some(m) => match (&m.binary, m.anon) {
                            (Some(b), _) => FrameLoc::Binary {
                                binary: b.clone(),
                                offset: (addr - m.start).wrapping_add(m.offset),
                            },
                            (None, true) => FrameLoc::Anon,
                            (None, false) => FrameLoc::Unknown,
                        },
                        None => FrameLoc::Unknown,
                    };
                    let unknown = matches!(loc, FrameLoc::Unknown);
                    out.push(UserFrame { addr, loc });
                    if unknown {
                        // Not code: unwinding further would follow garbage.
                        return false;
                    }
                }
                Ok(None) => return true,
                // A zero return address is how some thread entry points end
                // the chain.
                Err(UnwindError::ReturnAddressIsNull) => return !out.is_empty(),
                Err(_) => return false,
            }
        }
    }

    /// Re-reads the maps unless that was done very recently.
    fn maybe_refresh(&mut self, pid: u32) -> bool {
        let due = self.processes.get(&pid).is_some_and(|p| {
            p.last_refresh
                .is_none_or(|t| t.elapsed() >= self.cfg.min_refresh)
        });
        if due {
            self.refresh(pid);
        }
        due
    }

    /// Reads /proc/PID/maps and brings the process's modules up to date.
    fn refresh(&mut self, pid: u32) {
        self.counters.maps_reads += 1;
        if let Some(p) = self.processes.get_mut(&pid) {
            p.last_refresh = Some(Instant::now());
        }
        let text = match std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            Ok(t) => t,
            Err(_) => {
                self.counters.maps_failed += 1;
                return;
            }
        };
        let entries: Vec<MapEntry> = parse_maps(&text).into_iter().filter(|e| e.exec).collect();
        let mut mappings = Vec::with_capacity(entries.len());
        for e in &entries {
            let binary = if e.is_file() {
                self.binary(pid, e)
            } else if e.path == "[vdso]" {
                self.vdso.clone()
            } else {
                None
            };
            mappings.push(Mapping {
                start: e.start,
                end: e.end,
                offset: e.offset,
                file: e.file,
                bias: binary.as_ref().map_or(0, |b| b.bias(e)),
                binary,
                anon: e.path.is_empty(),
            });
        }
        mappings.sort_by_key(|m| m.start);
        let Some(p) = self.processes.get_mut(&pid) else {
            return;
        };
        let same = |a: &Mapping, b: &Mapping| {
            a.start == b.start
                && a.end == b.end
                && a.offset == b.offset
                && a.file == b.file
                && a.binary.as_ref().map(|x| x.serial) == b.binary.as_ref().map(|x| x.serial)
        };
        let mut changes = 0;
        for old in &p.mappings {
            if !mappings.iter().any(|m| same(m, old)) {
                p.unwinder.remove_module(old.start);
                changes += 1;
            }
        }
        for m in &mappings {
            if p.mappings.iter().any(|old| same(m, old)) {
                continue;
            }
            if let Some(b) = &m.binary {
                p.unwinder.add_module(Module::new(
                    b.path.to_string(),
                    m.start..m.end,
                    m.bias,
                    b.section_info(),
                ));
                changes += 1;
            }
        }
        p.mappings = mappings;
        self.module_changes = self.module_changes.saturating_add(changes);
        if self.module_changes > 30_000 {
            self.cache = CacheX86_64::new();
            self.module_changes = 0;
        }
    }

    /// The cached binary of a file mapping, reading it on first sight.
    fn binary(&mut self, pid: u32, e: &MapEntry) -> Option<Arc<Binary>> {
        match self.binaries.get(&e.file) {
            Some(CachedBinary::Loaded(b)) => return Some(b.clone()),
            Some(CachedBinary::Failed(t)) if t.elapsed() < self.cfg.retry_failed => return None,
            _ => {}
        }
        self.make_room_for_binary();
        let loaded = self.load_binary(pid, e);
        match &loaded {
            Some(b) => {
                self.counters.binaries_loaded += 1;
                self.counters.section_bytes += b.section_bytes();
                if !b.has_unwind_info() {
                    self.counters.binaries_without_unwind_info += 1;
                }
                self.binaries
                    .insert(e.file, CachedBinary::Loaded(b.clone()));
            }
            None => {
                self.counters.binaries_failed += 1;
                self.binaries
                    .insert(e.file, CachedBinary::Failed(Instant::now()));
            }
        }
        loaded
    }

    fn load_binary(&mut self, pid: u32, e: &MapEntry) -> Option<Arc<Binary>> {
        // map_files works across mount namespaces and for deleted files;
        // the root path and the plain path are fallbacks.
        let candidates = [
            PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", e.start, e.end)),
            PathBuf::from(format!("/proc/{pid}/root{}", e.path)),
            PathBuf::from(&e.path),
        ];
        let file = candidates.iter().find_map(|p| File::open(p).ok())?;
        let serial = self.next_serial;
        self.next_serial += 1;
        Binary::open(serial, e.file, &e.path, file, &DEBUG_DIRS).map(Arc::new)
    }

    /// The vDSO is the same image in every 64-bit process: read it from
    /// this process's memory once.
    fn load_own_vdso(&mut self) -> Option<Arc<Binary>> {
        let text = std::fs::read_to_string("/proc/self/maps").ok()?;
        let m = parse_maps(&text).into_iter().find(|m| m.path == "[vdso]")?;
        // SAFETY: getauxval has no preconditions.
        let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        if base != m.start || m.end <= m.start || m.end - m.start > (1 << 20) {
            return None;
        }
        // SAFETY: [m.start, m.end) is this process's vDSO mapping: mapped
        // readable for the process's lifetime and never written.
        let image =
            unsafe { std::slice::from_raw_parts(m.start as *const u8, (m.end - m.start) as usize) }
                .to_vec();
        let ElfImage {
            segments, unwind, ..
        } = read_elf(image.as_slice(), None, &[])?;
        let serial = self.next_serial;
        self.next_serial += 1;
        Some(Arc::new(Binary {
            serial,
            id: FileId { dev: 0, inode: 0 },
            name: Arc::from("[vdso]"),
            path: Arc::from("[vdso]"),
            file: None,
            segments,
            unwind: Some(unwind),
            dwarf_bytes: 0,
            debug_file: None,
            mem_symbols: mem_symbols(&image),
        }))
    }

    fn make_room_for_process(&mut self) {
        if self.processes.len() < self.cfg.max_processes {
            return;
        }
        // Drop the least recently sampled eighth.
        let mut seen: Vec<(u64, u32)> = self
            .processes
            .iter()
            .map(|(&pid, p)| (p.last_seen, pid))
            .collect();
        seen.sort_unstable();
        let n = (seen.len() / 8).max(1);
        for (_, pid) in seen.into_iter().take(n) {
            self.processes.remove(&pid);
            self.counters.processes_evicted += 1;
        }
    }

    fn make_room_for_binary(&mut self) {
        if self.binaries.len() < self.cfg.max_binaries {
            return;
        }
        // Failed entries first, then binaries no tracked process maps.
        let victims: Vec<FileId> = self
            .binaries
            .iter()
            .filter(|(_, b)| match b {
                CachedBinary::Failed(_) => true,
                CachedBinary::Loaded(b) => Arc::strong_count(b) == 1,
            })
            .map(|(id, _)| *id)
            .take((self.cfg.max_binaries / 8).max(1))
            .collect();
        for id in victims {
            if let Some(CachedBinary::Loaded(b)) = self.binaries.remove(&id) {
                self.counters.binaries_evicted += 1;
                self.evicted.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_separate_debug_file_counts_as_the_binary_s_dwarf() {
        // This test binary has a build id and DWARF of its own: laid out as
        // its own separate debug file, that file's DWARF is found.
        let data = std::fs::read("/proc/self/exe").unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let own = dwarf_section_bytes(&obj);
        assert!(own > 0, "the test binary carries DWARF");
        let id = obj.build_id().unwrap().expect("a build id");
        let dir = std::env::temp_dir().join(format!("tracer-debugdir-{}", std::process::id()));
        let path = debug_file_path(&dir, id).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &data).unwrap();
        let dirs = ["/nonexistent-debug-dir", dir.to_str().unwrap()];
        let found = separate_debug_file(&obj, &dirs);
        let none = separate_debug_file(&obj, &["/nonexistent-debug-dir"]);
        std::fs::remove_dir_all(&dir).unwrap();
        let (path, bytes) = found.expect("the debug file");
        assert!(path.starts_with(&dir));
        assert_eq!(bytes, own);
        assert_eq!(none, None);
    }

    #[test]
    fn parses_maps_lines() {
        let text = "\
55d0c8a00000-55d0c8a2c000 r--p 00000000 fd:01 1311130                    /usr/bin/python3.11
55d0c8a2c000-55d0c8d1d000 r-xp 0002c000 fd:01 1311130                    /usr/bin/python3.11
7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0 
7f1c2b5d1000-7f1c2b5f7000 r-xp 00026000 08:02 42 /tmp/my lib.so (deleted)
7ffd5e9f4000-7ffd5e9f6000 r-xp 00000000 00:00 0                          [vdso]
7f00 bad line
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";
        let m = parse_maps(text);
        assert_eq!(m.len(), 6);
        assert_eq!(m[1].start, 0x55d0c8a2c000);
        assert_eq!(m[1].end, 0x55d0c8d1d000);
        assert!(m[1].exec && m[1].read && m[1].is_file());
        assert_eq!(m[1].offset, 0x2c000);
        assert_eq!(
            m[1].file,
            FileId {
                dev: (0xfd << 32) | 1,
                inode: 1311130
            }
        );
        assert_eq!(m[1].path, "/usr/bin/python3.11");
        assert!(!m[2].exec && m[2].path.is_empty() && !m[2].is_file());
        assert_eq!(m[3].path, "/tmp/my lib.so");
        assert!(m[3].deleted);
        assert_eq!(m[4].path, "[vdso]");
        assert!(!m[4].is_file());
        assert!(!m[5].read && m[5].exec);
    }

    #[test]
    fn garbage_maps_lines_are_skipped() {
        for line in [
            "",
            "-",
            "zz-10 r-xp 0 0:0 0",
            "20-10 r-xp 0 0:0 0",
            "10-20 r 0 0:0 0",
            "10-20 r-xp 0 00 0",
            "10-20 r-xp 0 0:0 x",
            "\u{1F600}-20 r-xp 0 0:0 0",
        ] {
            assert_eq!(parse_maps_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn own_process_maps_and_vdso() {
        let text = std::fs::read_to_string("/proc/self/maps").unwrap();
        let maps = parse_maps(&text);
        assert_eq!(maps.len(), text.lines().count());
        let u = Unwinder::new(UnwindConfig::default());
        if let Some(v) = &u.vdso {
            assert!(v.has_unwind_info());
            assert!(v
                .mem_symbols
                .iter()
                .any(|s| s.name.contains("clock_gettime")));
        }
    }

    #[test]
    fn bias_follows_the_executable_segment() {
        let b = Binary {
            serial: 1,
            id: FileId { dev: 0, inode: 1 },
            name: Arc::from("x"),
            path: Arc::from("/x"),
            file: None,
            dwarf_bytes: 0,
            debug_file: None,
            segments: vec![
                LoadSegment {
                    offset: 0,
                    vaddr: 0,
                    filesz: 0x1000,
                    exec: false,
                },
                LoadSegment {
                    offset: 0x1000,
                    vaddr: 0x401000,
                    filesz: 0x2000,
                    exec: true,
                },
            ],
            unwind: None,
            mem_symbols: Vec::new(),
        };
        let m = parse_maps_line("401000-403000 r-xp 00001000 fd:01 1 /x").unwrap();
        assert_eq!(b.bias(&m), 0);
        let m = parse_maps_line("7f0000001000-7f0000003000 r-xp 00001000 fd:01 1 /x").unwrap();
        assert_eq!(b.bias(&m), 0x7f0000001000 - 0x401000);
    }
}
