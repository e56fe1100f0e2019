//! Which files get the TLS probes and the runtime hooks (nginx, Go
//! net/http, CPython asyncio): per file (a uprobe is set on an inode, and one attachment covers
//! every process and container that maps it), apart from which processes
//! use the file.
//!
//! Processes are found in /proc: every process at start, then each tick the
//! processes not seen before and those that exec'd another program (their
//! executable changed); a process whose TLS connection is seen while none of
//! its files is probed is looked at again at once (libraries loaded late,
//! e.g. Python's `ssl`), and reported once per executable as "TLS not
//! covered" when it still has none. Files are opened through
//! `/proc/PID/root`, so a container's libraries are found in its own
//! filesystem. A file is detached when the last process mapping it is gone.
use std::{
    collections::{HashSet, VecDeque},
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::programs::uprobe::{
    UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope,
};
use foldhash::{HashMap, HashMapExt};
use object::{Object, ObjectSection, ObjectSymbol, SectionKind};
use tracer_common::{
    gotls::{programs as go_programs, GO_OFF_UNKNOWN, GO_TLS_FILES_MAX},
    hook_programs, tls_programs, GO_HOOK_FILES_MAX, TLS_BIO_METHOD_AT_OSSL3, TLS_COOKIE_MEMBIO,
};

use super::{
    execs::ExecWatch,
    go::{self, GoFile},
    inner,
    worker::Worker,
};
use crate::{clock::monotonic_ns, kernel::Kernel, profile::unwind::parse_maps};

/// A file, as the kernel knows it (device and inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

/// A process id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pid(pub u32);

/// The functions probed, with the entry program of each (the sends and
/// receives also get the return program): OpenSSL's (and BoringSSL's),
/// then GnuTLS's, whose send and receive take the same first three
/// arguments (session, buffer, length) and return the bytes moved, as
/// `SSL_write` and `SSL_read` do.
const FUNCTIONS: [(&str, &str); 11] = [
    ("SSL_write", tls_programs::WRITE),
    ("SSL_write_ex", tls_programs::WRITE_EX),
    ("SSL_read", tls_programs::READ),
    ("SSL_read_ex", tls_programs::READ_EX),
    ("SSL_free", tls_programs::FREE),
    (SSL_SET_BIO, tls_programs::SET_BIO),
    (SSL_SET0_RBIO, tls_programs::SET_BIO),
    (GNUTLS_SEND2, tls_programs::WRITE),
    (GNUTLS_SEND, tls_programs::WRITE),
    ("gnutls_record_recv", tls_programs::READ),
    ("gnutls_deinit", tls_programs::FREE),
];

const GNUTLS_SEND2: &str = "gnutls_record_send2";
const GNUTLS_SEND: &str = "gnutls_record_send";
const SSL_SET_BIO: &str = "SSL_set_bio";
const SSL_SET0_RBIO: &str = "SSL_set0_rbio";

/// A function left unprobed when its file has the one it calls with the
/// same first arguments: probing both would see one call twice (nested).
/// `gnutls_record_send` jumps into `gnutls_record_send2` (3.6.3 on);
/// `SSL_set_bio` calls `SSL_set0_rbio` (OpenSSL 1.1 on, BoringSSL), which
/// then marks both ways of setting a BIO with one trap. (A static build
/// that inlines the call into `SSL_set_bio` leaves those objects on the
/// socket-BIO rule, as before the mark.)
const SUPERSEDED: [(&str, &str); 2] = [(GNUTLS_SEND, GNUTLS_SEND2), (SSL_SET_BIO, SSL_SET0_RBIO)];

/// nginx's function where a request starts its way upstream (the runtime
/// hook's entry and return probes).
const NGX_UPSTREAM_INIT: &str = "ngx_http_upstream_init";

/// CPython's `_asyncio` functions the asyncio hooks probe: where a task
/// step begins, the two functions that step a task (their returns end
/// it), and task creation.
const PY_ENTER: &str = "enter_task";
const PY_STEPS: [&str; 2] = ["task_step", "TaskStepMethWrapper_call"];
const PY_CREATE: &str = "_asyncio_Task___init__";

/// What an `_asyncio` extension offers the asyncio hooks.
#[derive(Debug)]
enum PyAsyncio {
    /// Not CPython's `_asyncio`.
    No,
    /// Its probes: (program, file offset, attach cookie).
    Covered(Vec<(&'static str, u64, Option<u64>)>),
    /// `_asyncio` without the symbols (a stripped build, as Debian's).
    Stripped,
}

/// The asyncio hooks of a file: `_asyncio` as an extension module
/// (`_asyncio.cpython-3XY-...so`) or built into an interpreter; `offs`:
/// the offsets of `enter_task`, `Task.__init__` and the two step functions.
fn py_asyncio(offs: [Option<u64>; 4], path: &Path) -> PyAsyncio {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let [Some(enter), Some(create), Some(step), Some(step_wrapper)] = offs else {
        return if name.starts_with("_asyncio.") {
            PyAsyncio::Stripped
        } else {
            PyAsyncio::No
        };
    };
    // `enter_task` took the module state first from 3.12 on.
    let minor = name
        .split("cpython-3")
        .nth(1)
        .or_else(|| path.to_str().and_then(|p| p.split("python3.").nth(1)))
        .and_then(|r| {
            let d: String = r.chars().take_while(char::is_ascii_digit).collect();
            d.parse::<u32>().ok()
        });
    let Some(minor) = minor else {
        return PyAsyncio::Stripped;
    };
    let arg3 = (minor >= 12).then_some(tracer_common::PY_TASK_ARG3);
    PyAsyncio::Covered(vec![
        (hook_programs::PY_TASK_ENTER, enter, arg3),
        (hook_programs::PY_TASK_CREATE, create, None),
        (hook_programs::PY_TASK_LEAVE, step, None),
        (hook_programs::PY_TASK_LEAVE, step_wrapper, None),
    ])
}

/// The host's TLS libraries, by file name prefix, probed from the start
/// and for the agent's life: short-lived clients (curl, wget, a script
/// run by cron) are over before a /proc scan finds them, and they load
/// these.
const HOST_TLS_LIBS: [&str; 2] = ["libssl.so.", "libgnutls.so."];

/// Where the host keeps them (under its root, each also with the
/// multiarch directory, e.g. `usr/lib/x86_64-linux-gnu`).
const HOST_LIB_DIRS: [&str; 5] = ["lib", "usr/lib", "lib64", "usr/lib64", "usr/local/lib"];

/// Files remembered as holding nothing to probe (the set is cleared when it
/// reaches this size: a file is then looked at again, nothing is lost).
const MAX_CHECKED: usize = 65_536;

/// Counters of the attachment.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttachCounters {
    /// Processes whose mappings were read.
    pub processes_scanned: u64,
    /// Files the probes were attached to.
    pub files_attached: u64,
    /// Files detached (no process maps them any more).
    pub files_detached: u64,
    /// Of those, files whose probes were closed on the event loop: the
    /// detaching thread's queue was full (see [`worker`](super::worker)).
    pub detached_inline: u64,
    /// Files found after start read on the event loop: the reading
    /// thread's queue was full.
    pub analysed_inline: u64,
    /// Probes the kernel refused (that function of that file is not covered).
    pub attach_errors: u64,
    /// ELF files that could not be read or parsed.
    pub unreadable_files: u64,
    /// Executables reported as using TLS the agent does not cover.
    pub not_covered: u64,
    /// Go TLS calls in progress removed because their process exited.
    pub go_calls_forgotten: u64,
    /// Of the files attached, those whose TLS runs over memory BIOs (Node).
    pub membio_files: u64,
    /// Files given runtime hooks (nginx, Go net/http executables).
    pub hook_files: u64,
    /// Go net/http executables whose ServeHTTP hooks were attached at a
    /// program's first outbound call (held back until then).
    pub hooks_attached_late: u64,
    /// Go net/http executables the runtime hooks cannot read (older than
    /// Go 1.17, no function table or type descriptors found).
    pub hooks_not_covered: u64,
    /// Reads of processes the kernel reported as starting a program
    /// (exec), each read after each delay of `EXEC_LOOKS`.
    pub exec_looks: u64,
    /// Later looks after an exec not scheduled: too many pending.
    pub exec_looks_shed: u64,
    /// Programs started lately handed on to be described (service name,
    /// resource) at their first look, while they run: a client whose
    /// whole exchange fits in the ring's drain period is gone by the time
    /// its first record is read.
    pub exec_described: u64,
    /// Started programs not described then: over the budget of a second
    /// (they are described at their first record, as others).
    pub exec_described_shed: u64,
    /// Exec events the kernel could not deliver (the agent's socket was
    /// full): those programs are found by the periodic scan.
    pub exec_events_lost: u64,
}

/// A probe to attach: program, file offset, attach cookie.
type Probe = (&'static str, u64, Option<u64>);

/// Probes attached: program and link.
type Links = Vec<(&'static str, UProbeLinkId)>;

/// One TLS library (or executable with a TLS library inside), attached.
struct TlsFile {
    path: PathBuf,
    links: Vec<(&'static str, UProbeLinkId)>,
    users: usize,
    /// A Go executable's slot in `GO_TLS_FILES` (its probes' cookie).
    go_slot: Option<u32>,
    /// Its slot in `GO_HOOK_FILES` (the net/http hooks' cookie).
    hook_slot: Option<u32>,
    /// Go net/http hooks held back until a program of the file makes a
    /// client call they serve (see [`TlsAttach::attach_wanted_hooks`]).
    deferred: Vec<Probe>,
}

/// The slots a file's probes use as their attach cookie, and the hooks it
/// holds back.
#[derive(Default)]
struct Slots {
    /// In `GO_TLS_FILES`.
    go: Option<u32>,
    /// In `GO_HOOK_FILES`.
    hook: Option<u32>,
    /// Go net/http hooks attached once wanted.
    deferred: Vec<Probe>,
}

/// What is known of one process.
#[derive(Default)]
struct Proc {
    exe: Option<FileId>,
    /// The attached files it maps.
    files: Vec<FileId>,
    /// When its TLS traffic last made the agent read it again.
    rescanned: Option<Instant>,
    /// Since when (kernel monotonic ns) it has mapped a probed file.
    covered_since_ns: Option<u64>,
}

/// After an exec, when the process is read: the loader has mapped a
/// program's libraries within milliseconds, and a slow start (an
/// interpreter importing its TLS module) has by the second, read only
/// when the first found nothing to probe. A program is seldom ready to
/// send before the first, and reading at once would cost one more read
/// per exec.
const EXEC_LOOKS: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(150)];

/// Started programs handed on to be described at most per second (an
/// exec storm, a build, would otherwise cost a read of /proc per program
/// that never touches the network).
const MAX_DESCRIBED_PER_SEC: u32 = 200;

/// Later looks pending at most per delay (a burst of execs beyond it is left to
/// the periodic scan).
const MAX_LOOKS: usize = 4096;

/// A process whose TLS traffic is not covered is read again at most this
/// often (a client without probes may open many TLS connections a second).
const RESCAN_EVERY: Duration = Duration::from_secs(5);

/// A process seen speaking TLS while none of its files was probed,
/// remembered past its exit: a short-lived client (a request, then gone)
/// exits before its connection's wait for plaintext ends, and would never
/// be reported otherwise.
struct Uncovered {
    exe: FileId,
    path: String,
    at: Instant,
}

/// Uncovered TLS processes remembered at most, and for how long: well past
/// the dispatcher's wait for plaintext (2 s).
const MAX_UNCOVERED: usize = 1024;
const UNCOVERED_KEEP: Duration = Duration::from_secs(10);

/// Per-file probes and the processes that use them.
pub struct TlsAttach {
    proc_root: PathBuf,
    files: HashMap<FileId, TlsFile>,
    /// Files looked at that have nothing to probe.
    checked: HashSet<FileId>,
    procs: HashMap<Pid, Proc>,
    /// Later looks at programs started lately: (when, process), one
    /// queue per delay of [`EXEC_LOOKS`] (each in time order).
    looks: [VecDeque<(Instant, Pid)>; 2],
    /// The kernel's exec events, when they can be read.
    execs: Option<ExecWatch>,
    /// Processes of the exec events being taken in (kept for reuse).
    exec_pids: Vec<u32>,
    /// Started programs found running at their first look, to be
    /// described (see [`TlsAttach::started`]).
    started: Vec<u32>,
    /// The second of `described` and how many were handed on in it.
    described: (Option<Instant>, u32),
    /// Executables already reported as not covered.
    reported: HashSet<FileId>,
    /// Processes seen speaking TLS without a probed file, by process.
    uncovered: HashMap<Pid, Uncovered>,
    /// The host's TLS libraries, attached for the agent's life (each holds
    /// one user of its file that no process releases).
    pinned: HashSet<FileId>,
    counters: AttachCounters,
    own_pid: u32,
    /// Free slots of `GO_TLS_FILES`.
    go_slots: Vec<u32>,
    /// Free slots of `GO_HOOK_FILES`.
    hook_slots: Vec<u32>,
    /// TLS probes are attached.
    tls: bool,
    /// Runtime hooks are attached.
    hooks: bool,
    /// Go's goroutine-creation hooks too.
    goroutines: bool,
    /// Closes the links of files no process maps, off the event loop; gives
    /// back their path and slots once closed.
    detacher: Worker<Detach, (PathBuf, Slots)>,
    /// Reads the files found after start, off the event loop.
    analyser: Worker<Analyse, Analysed>,
    /// Files being read by the analyser, and the processes (with the
    /// executable they ran) that map them, waiting.
    analysing: HashMap<FileId, Vec<(Pid, Option<FileId>)>>,
    /// New files are read by the analyser (once the agent started).
    background: bool,
}

/// A file's links to close, with its path and slots to give back.
type Detach = (Vec<UProbeLink>, PathBuf, Slots);

/// Closes a file's links (the kernel waits out a grace period per link).
fn detach((links, path, slots): Detach) -> (PathBuf, Slots) {
    drop(links);
    (path, slots)
}

/// Files the detaching thread may be behind by.
const DETACH_QUEUE: usize = 256;

/// Files the reading thread may be behind by.
const ANALYSE_QUEUE: usize = 64;

/// A file to read: opened on the event loop, so that the file read is the
/// one the process maps even if the process is gone by then.
struct Analyse {
    id: FileId,
    path: PathBuf,
    file: File,
    hooks: bool,
}

/// What a file offers, read.
struct Analysed {
    id: FileId,
    path: PathBuf,
    probed: Result<Probed, Unreadable>,
}

fn analyse(job: Analyse) -> Analysed {
    let probed = probe_file(&job.file, &job.path, job.hooks);
    Analysed {
        id: job.id,
        path: job.path,
        probed,
    }
}

/// What [`TlsAttach::hold`] made of a file.
#[derive(PartialEq, Eq)]
enum Hold {
    /// Attached: the process is one more user.
    Held,
    /// Nothing to probe in it.
    Nothing,
    /// Being read: attached to its waiting processes once read.
    Pending,
}

/// Probes without the return program: a free, a BIO setting.
fn entry_only(prog: &str) -> bool {
    prog == tls_programs::FREE || prog == tls_programs::SET_BIO
}

/// A symbol only Node's TLS stream has (`node::crypto::TLSWrap`): its
/// OpenSSL reads and writes memory BIOs, the socket I/O happens outside
/// the TLS calls.
const MEMBIO_MARK: &str = "_ZN4node6crypto7TLSWrap";

/// What one ELF file offers to probe.
struct Probed {
    /// File offsets of the probed OpenSSL functions, with their entry
    /// program.
    offsets: Vec<(&'static str, u64)>,
    /// Directions (reads, writes) probed on OpenSSL's inner function
    /// rather than its wrappers (see [`inner`](super::inner)).
    single_trap: u8,
    /// Its TLS runs over memory BIOs (Node).
    membio: bool,
    /// Where its `struct bio_st` keeps the method pointer (the attach
    /// cookie of the `SSL_set_bio` probes).
    bio_method_at: u64,
    /// What it is for the Go probes.
    go: GoFile,
    /// File offset of nginx's `ngx_http_upstream_init`.
    ngx_upstream: Option<u64>,
    /// What it is for the Go net/http hooks (see [`go::Program::http_hooks`]).
    go_hooks: Result<Option<go::GoHooks>, &'static str>,
    /// What it is for the asyncio hooks.
    asyncio: PyAsyncio,
}

/// Why a file's symbols could not be read.
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    #[error("opening it")]
    Open(#[source] std::io::Error),
    #[error("mapping it")]
    Map(#[source] std::io::Error),
    #[error("parsing it as ELF")]
    Parse(#[source] object::Error),
}

/// What one ELF file offers to probe.
fn probe_offsets(path: &Path, hooks: bool) -> Result<Probed, Unreadable> {
    let file = File::open(path).map_err(Unreadable::Open)?;
    probe_file(&file, path, hooks)
}

/// What one ELF file, open, offers to probe (`path` names it).
fn probe_file(file: &File, path: &Path, hooks: bool) -> Result<Probed, Unreadable> {
    // SAFETY: a read-only private mapping; a file truncated meanwhile can
    // fault the agent, which is why only executable mappings of running
    // processes (files the loader keeps open and unchanged) are read.
    let map = unsafe { memmap2::Mmap::map(file) }.map_err(Unreadable::Map)?;
    let obj = object::File::parse(&*map).map_err(Unreadable::Parse)?;
    let offs = symbol_offsets(&obj, SYMBOLS);
    let present = |name: &str| {
        FUNCTIONS
            .iter()
            .zip(offs)
            .any(|((n, _), off)| *n == name && off.is_some())
    };
    let superseded = |name: &str| {
        SUPERSEDED
            .iter()
            .any(|&(old, new)| old == name && present(new))
    };
    let mut found: Vec<(&'static str, u64)> = FUNCTIONS
        .iter()
        .zip(offs)
        .filter(|((name, _), _)| !superseded(name))
        .filter_map(|(&(_, prog), off)| Some((prog, off?)))
        .collect();
    let single_trap = single_trap_probes(&obj, &map, &offs, &mut found);
    let ngx_upstream = offs[NGX_AT];
    // A program with OpenSSL is probed there, not as a Go program.
    let program = go::read(
        &obj,
        go::Wanted {
            tls: found.is_empty(),
            hooks,
        },
    );
    let go = if found.is_empty() {
        program.tls()
    } else {
        GoFile::NotGo
    };
    let membio = !found.is_empty()
        && obj
            .symbols()
            .any(|s| s.name().is_ok_and(|n| n.starts_with(MEMBIO_MARK)));
    let (go_hooks, asyncio) = if hooks {
        let py = [
            offs[PY_AT],
            offs[PY_AT + 1],
            offs[PY_AT + 2],
            offs[PY_AT + 3],
        ];
        (program.http_hooks(), py_asyncio(py, path))
    } else {
        (Ok(None), PyAsyncio::No)
    };
    let bio_method_at = if offs[OSSL3_AT].is_some() {
        TLS_BIO_METHOD_AT_OSSL3
    } else {
        0
    };
    Ok(Probed {
        offsets: found,
        single_trap,
        membio,
        bio_method_at,
        go,
        ngx_upstream,
        go_hooks,
        asyncio,
    })
}

/// Moves the probes of OpenSSL's read and write wrappers in `found` onto
/// the inner function both wrappers of a direction call, where that
/// function starts with an instruction the kernel emulates (one trap per
/// call instead of two: see [`inner`](super::inner)). The inner write
/// function of OpenSSL 3.2 on takes flags before the count's pointer: its
/// writes stay on the wrappers. Returns how many directions moved.
fn single_trap_probes(
    obj: &object::File<'_>,
    file: &[u8],
    offs: &[Option<u64>],
    found: &mut Vec<(&'static str, u64)>,
) -> u8 {
    let text_of = |off: u64| {
        obj.sections()
            .filter(|s| s.kind() == SectionKind::Text)
            .filter_map(|s| s.file_range())
            .find(|&(start, len)| off >= start && off - start < len)
            .map(|(start, len)| start..start + len)
    };
    let mut moved = 0;
    for ((plain, ex), wanted) in [
        (SSL_READ_AT, true),
        (SSL_WRITE_AT, offs[OSSL32_AT].is_none()),
    ] {
        let (Some(p), Some(e), true) = (offs[plain], offs[ex], wanted) else {
            continue;
        };
        let Some(text) = text_of(e) else {
            continue;
        };
        let Some(at) = (inner::Code { file, text }).shared_inner(p, e) else {
            continue;
        };
        found.retain(|&(_, off)| off != p);
        for f in found.iter_mut().filter(|f| f.1 == e) {
            f.1 = at;
        }
        moved += 1;
    }
    moved
}

/// Go probes with their file's `slot` in their attach cookie.
fn with_cookie(probes: &[go::Probe], slot: u32) -> Vec<(&'static str, u64, Option<u64>)> {
    probes
        .iter()
        .map(|&(name, off, bits)| (name, off, Some(u64::from(slot) | bits)))
        .collect()
}

/// The file offsets, for uprobes, of the functions `names` the file
/// defines (one pass over its symbols), in the order of `names`.
fn symbol_offsets<const N: usize>(obj: &object::File<'_>, names: [&str; N]) -> [Option<u64>; N] {
    let mut out = [None; N];
    for sym in obj.dynamic_symbols().chain(obj.symbols()) {
        let Some(i) = sym
            .name()
            .ok()
            .and_then(|n| names.iter().position(|w| *w == n))
        else {
            continue;
        };
        if out[i].is_some() || !sym.is_definition() {
            continue;
        }
        out[i] = sym
            .section_index()
            .and_then(|si| obj.section_by_index(si).ok())
            .and_then(|section| {
                let (file_off, _) = section.file_range()?;
                match UProbeAttachLocation::from_virtual_address(
                    sym.address(),
                    section.address(),
                    file_off,
                ) {
                    Ok(UProbeAttachLocation::AbsoluteOffset(off)) => Some(off),
                    _ => None,
                }
            });
    }
    out
}

/// Every function any probe or hook is set on, looked up in one pass:
/// the TLS libraries' (`FUNCTIONS`), nginx's, then `_asyncio`'s.
const SYMBOLS: [&str; 18] = [
    FUNCTIONS[0].0,
    FUNCTIONS[1].0,
    FUNCTIONS[2].0,
    FUNCTIONS[3].0,
    FUNCTIONS[4].0,
    FUNCTIONS[5].0,
    FUNCTIONS[6].0,
    FUNCTIONS[7].0,
    FUNCTIONS[8].0,
    FUNCTIONS[9].0,
    FUNCTIONS[10].0,
    NGX_UPSTREAM_INIT,
    PY_ENTER,
    PY_CREATE,
    PY_STEPS[0],
    PY_STEPS[1],
    OSSL3_MARK,
    OSSL32_MARK,
];
/// Where nginx's and `_asyncio`'s functions, and OpenSSL 3's mark, are in
/// `SYMBOLS`.
const NGX_AT: usize = FUNCTIONS.len();
const PY_AT: usize = NGX_AT + 1;
const OSSL3_AT: usize = PY_AT + 4;
const OSSL32_AT: usize = OSSL3_AT + 1;

/// A function only OpenSSL 3 has: its `struct bio_st` starts with the
/// library context, then the method (1.1 and BoringSSL: the method first).
const OSSL3_MARK: &str = "SSL_CTX_new_ex";

/// A function only OpenSSL 3.2 on has: its inner write function takes a
/// flags argument before the count's pointer (not the `_ex` signature).
const OSSL32_MARK: &str = "SSL_write_ex2";

/// Where OpenSSL's wrappers are in `FUNCTIONS`: (plain, `_ex`).
const SSL_WRITE_AT: (usize, usize) = (0, 1);
const SSL_READ_AT: (usize, usize) = (2, 3);

/// The executable files a process maps (paths as the process sees them),
/// each once.
fn mapped_files(maps: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in parse_maps(maps) {
        if m.exec && m.is_file() && !m.deleted && !out.contains(&m.path) {
            out.push(m.path);
        }
    }
    out
}

fn file_id(path: &Path) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

impl TlsAttach {
    /// Nothing attached yet; processes are read from `proc_root` (/proc).
    /// `tls`: attach the TLS probes; `hooks`: the runtime hooks.
    pub fn new(proc_root: impl Into<PathBuf>, tls: bool, hooks: bool) -> TlsAttach {
        TlsAttach {
            proc_root: proc_root.into(),
            files: HashMap::new(),
            checked: HashSet::new(),
            procs: HashMap::new(),
            looks: Default::default(),
            execs: None,
            exec_pids: Vec::new(),
            started: Vec::new(),
            described: (None, 0),
            reported: HashSet::new(),
            uncovered: HashMap::new(),
            pinned: HashSet::new(),
            counters: AttachCounters::default(),
            own_pid: std::process::id(),
            go_slots: (0..GO_TLS_FILES_MAX).rev().collect(),
            hook_slots: (0..GO_HOOK_FILES_MAX).rev().collect(),
            tls,
            hooks,
            goroutines: false,
            detacher: Worker::new("tracer-detach", DETACH_QUEUE, detach),
            analyser: Worker::new("tracer-elf", ANALYSE_QUEUE, analyse),
            analysing: HashMap::new(),
            background: false,
        }
    }

    /// Attach Go's goroutine-creation hooks with the net/http ones.
    pub fn follow_goroutines(&mut self, on: bool) {
        self.goroutines = on;
    }

    /// The path of a process's executable, as `/proc/PID/exe` names it.
    fn exe_path(&self, pid: Pid) -> Option<String> {
        let path = std::fs::read_link(self.exe_link(pid)).ok()?;
        Some(path.display().to_string())
    }

    /// `/proc/PID/exe` of a process.
    fn exe_link(&self, pid: Pid) -> PathBuf {
        self.proc_root.join(pid.0.to_string()).join("exe")
    }

    /// Every process not seen before (or that exec'd), looked at; every
    /// process gone, forgotten (and the files nobody maps any more,
    /// detached).
    pub fn tick(&mut self, kernel: &mut Kernel) {
        self.reap_detached();
        self.reap_analysed(kernel);
        let Ok(dir) = std::fs::read_dir(&self.proc_root) else {
            return;
        };
        let mut live = HashSet::new();
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == self.own_pid {
                continue;
            }
            let pid = Pid(pid);
            live.insert(pid);
            let exe = file_id(&self.exe_link(pid));
            self.look(pid, exe, kernel);
        }
        let gone: Vec<Pid> = self
            .procs
            .keys()
            .filter(|p| !live.contains(p))
            .copied()
            .collect();
        for pid in gone {
            self.forget(pid, kernel);
        }
    }

    /// Reads a process (running `exe`) not seen before, or one running
    /// another program since it was (exec).
    fn look(&mut self, pid: Pid, exe: Option<FileId>, kernel: &mut Kernel) {
        if self.procs.get(&pid).is_none_or(|p| p.exe != exe) {
            self.reread(pid, exe, false, kernel);
        }
    }

    /// Subscribes to the kernel's exec events (see [`ExecWatch`]);
    /// without them, programs started later are found by [`TlsAttach::tick`].
    pub fn watch_execs(&mut self) -> std::io::Result<()> {
        self.execs = Some(ExecWatch::open()?);
        Ok(())
    }

    /// Takes in the exec events since the last call and reads the programs
    /// started lately whose time has come (call it every few ms; the events
    /// are read here, not on their own wake-ups, which cost more than the
    /// reads when programs start by the hundred). A process read before
    /// with the same program is read again when nothing it maps is probed
    /// yet (a TLS library loaded since), any other read afresh.
    pub fn follow_execs(&mut self, kernel: &mut Kernel) {
        self.reap_detached();
        self.reap_analysed(kernel);
        let now = Instant::now();
        if let Some(w) = &mut self.execs {
            self.exec_pids.clear();
            w.read(&mut self.exec_pids);
            self.counters.exec_events_lost = w.overflows();
        }
        for &pid in self.exec_pids.iter().filter(|&&p| p != self.own_pid) {
            for (queue, after) in self.looks.iter_mut().zip(EXEC_LOOKS) {
                if queue.len() >= MAX_LOOKS {
                    // The periodic scan still finds its libraries.
                    self.counters.exec_looks_shed += 1;
                } else {
                    queue.push_back((now + after, Pid(pid)));
                }
            }
        }
        self.exec_pids.clear();
        for i in 0..self.looks.len() {
            while let Some(&(at, pid)) = self.looks[i].front() {
                if at > now {
                    break;
                }
                self.looks[i].pop_front();
                let exe = file_id(&self.exe_link(pid));
                if exe.is_none() {
                    // Gone already: the next tick forgets it.
                    continue;
                }
                if i == 0 {
                    self.hand_on_started(pid, now);
                }
                let same = self.procs.get(&pid).filter(|p| p.exe == exe);
                if same.is_some_and(|p| !p.files.is_empty()) {
                    continue;
                }
                self.counters.exec_looks += 1;
                self.reread(pid, exe, same.is_some(), kernel);
            }
        }
    }

    /// Queues `pid` to be described, within the budget of a second.
    fn hand_on_started(&mut self, pid: Pid, now: Instant) {
        let (since, n) = &mut self.described;
        if since.is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1)) {
            (*since, *n) = (Some(now), 0);
        }
        if *n >= MAX_DESCRIBED_PER_SEC {
            self.counters.exec_described_shed += 1;
            return;
        }
        *n += 1;
        self.counters.exec_described += 1;
        self.started.push(pid.0);
    }

    /// Programs started lately and running at their first look (20 ms
    /// after their exec, when their command line is set), taken: to be
    /// described now, while /proc still has them.
    pub fn started(&mut self) -> impl Iterator<Item = correlate::Pid> + '_ {
        self.started.drain(..).map(correlate::Pid)
    }

    /// Attaches the host's TLS libraries (see [`HOST_TLS_LIBS`]), found
    /// under the root of pid 1 (the host's, also when the agent runs in a
    /// container) and the agent's, and keeps them attached until the agent
    /// stops. Returns the files newly pinned.
    pub fn pin_host_libraries(&mut self, kernel: &mut Kernel) -> Vec<PathBuf> {
        if !self.tls {
            return Vec::new();
        }
        // The agent's own root too: where pid 1's is not readable (a
        // sandbox), or is the agent's.
        let roots = [self.proc_root.join("1").join("root"), PathBuf::from("/")];
        let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
        let dirs = roots
            .iter()
            .flat_map(|r| HOST_LIB_DIRS.map(|d| r.join(d)))
            .flat_map(|d| [d.join(&multiarch), d]);
        let libs = dirs
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| HOST_TLS_LIBS.iter().any(|p| n.starts_with(p)))
            });
        let mut pinned = Vec::new();
        for entry in libs {
            let path = entry.path();
            // Symlinks and merged /usr name one file many times.
            let Some(id) = file_id(&path).filter(|id| !self.pinned.contains(id)) else {
                continue;
            };
            if self.hold(id, &path, kernel, None) == Hold::Held {
                self.pinned.insert(id);
                pinned.push(path);
            }
        }
        pinned
    }

    /// A TLS connection of `pid` was seen: when none of its files is
    /// probed, it is looked at again (a library loaded since, e.g. Python's
    /// `ssl` imported late).
    pub fn tls_seen(&mut self, pid: u32, kernel: &mut Kernel) {
        let pid = Pid(pid);
        if self.procs.get(&pid).is_some_and(|p| !p.files.is_empty()) {
            return;
        }
        self.rescan(pid, kernel);
        self.note_uncovered(pid);
    }

    /// Remembers `pid`'s executable while it speaks TLS with nothing
    /// probed (forgets it once something is).
    fn note_uncovered(&mut self, pid: Pid) {
        let exe = match self.procs.get(&pid) {
            Some(p) if p.files.is_empty() => p.exe,
            _ => None,
        };
        let Some(exe) = exe.filter(|e| !self.reported.contains(e)) else {
            self.uncovered.remove(&pid);
            return;
        };
        if self.uncovered.get(&pid).is_some_and(|u| u.exe == exe) {
            return;
        }
        let now = Instant::now();
        if self.uncovered.len() >= MAX_UNCOVERED {
            self.uncovered
                .retain(|_, u| now.duration_since(u.at) < UNCOVERED_KEEP);
            if self.uncovered.len() >= MAX_UNCOVERED {
                return;
            }
        }
        if let Some(path) = self.exe_path(pid) {
            self.uncovered.insert(pid, Uncovered { exe, path, at: now });
        }
    }

    /// Looks at a process again (at most every [`RESCAN_EVERY`]).
    fn rescan(&mut self, pid: Pid, kernel: &mut Kernel) {
        let now = Instant::now();
        let old = self.procs.get(&pid);
        if old
            .and_then(|p| p.rescanned)
            .is_some_and(|at| now.duration_since(at) < RESCAN_EVERY)
        {
            return;
        }
        let exe = file_id(&self.exe_link(pid));
        self.reread(pid, exe, true, kernel);
        if let Some(p) = self.procs.get_mut(&pid) {
            p.rescanned = Some(now);
        }
    }

    /// Reads a process's mappings (it runs `exe`): files mapped since it
    /// was last read are attached, those it no longer maps released.
    /// `same_program`: what is known of it (covered since, read again
    /// when) is kept, else it is read as a new process.
    fn reread(&mut self, pid: Pid, exe: Option<FileId>, same_program: bool, kernel: &mut Kernel) {
        // Scanned before forgetting: a file it keeps mapping stays attached.
        let old = self.procs.remove(&pid);
        let kept = old.as_ref().filter(|_| same_program);
        let covered = kept.and_then(|p| p.covered_since_ns);
        let rescanned = kept.and_then(|p| p.rescanned);
        self.scan(pid, exe, covered, kernel);
        if let Some(p) = self.procs.get_mut(&pid) {
            p.rescanned = rescanned;
        }
        if let Some(old) = old {
            self.release(old.files, kernel);
        }
    }

    /// A TLS connection of `pid`, recognised at `seen_ns` (kernel monotonic),
    /// carried ciphertext and no plaintext came from any probe. After
    /// another look at the process (a library loaded since is attached
    /// then), its executable is reported once as not covered, unless the
    /// process got its probes only after that connection began (its next
    /// connections will tell).
    pub fn no_plaintext(&mut self, pid: u32, seen_ns: u64, kernel: &mut Kernel) {
        let pid = Pid(pid);
        self.rescan(pid, kernel);
        let remembered = self.uncovered.remove(&pid);
        let (exe, since) = self
            .procs
            .get(&pid)
            .map_or((None, None), |p| (p.exe, p.covered_since_ns));
        tracing::debug!(
            pid = pid.0,
            ?exe,
            ?since,
            seen_ns,
            "TLS connection without plaintext"
        );
        // A file of it still being read: its next connections will tell.
        if since.is_some_and(|t| t > seen_ns) || self.awaits_a_file(pid) {
            return;
        }
        // A process gone since is reported as it was seen.
        let (exe, path) = match (exe, remembered) {
            (None, Some(u)) => (u.exe, u.path),
            (Some(exe), Some(u)) if u.exe == exe => (exe, u.path),
            (Some(exe), _) => (exe, self.exe_path(pid).unwrap_or_else(|| "?".into())),
            (None, None) => return,
        };
        if !self.reported.insert(exe) {
            return;
        }
        self.counters.not_covered += 1;
        if since.is_some() {
            tracing::warn!(
                pid = pid.0,
                executable = %path,
                "TLS not covered: this program's TLS library is probed, but a TLS \
                 connection of it carried no plaintext tied to its socket (socket I/O \
                 outside the TLS calls, as with memory BIOs in Python's asyncio or \
                 h2o; or a request read with the handshake); such traffic is counted, \
                 not traced"
            );
        } else {
            tracing::warn!(
                pid = pid.0,
                executable = %path,
                "TLS not covered: this program's TLS connection carried no plaintext \
                 the agent could see (a TLS library without symbols, or one not \
                 probed); its encrypted traffic is counted, not traced"
            );
        }
    }

    /// Reads a process's mappings; `covered_since_ns`: since when it was
    /// covered, if it was before.
    fn scan(
        &mut self,
        pid: Pid,
        exe: Option<FileId>,
        covered_since_ns: Option<u64>,
        kernel: &mut Kernel,
    ) {
        self.counters.processes_scanned += 1;
        let base = self.proc_root.join(pid.0.to_string());
        let mut proc = Proc {
            exe,
            ..Proc::default()
        };
        let maps = std::fs::read_to_string(base.join("maps")).unwrap_or_default();
        for path in mapped_files(&maps) {
            let full = base.join("root").join(path.trim_start_matches('/'));
            let Some(id) = file_id(&full) else { continue };
            if !proc.files.contains(&id)
                && self.hold(id, &full, kernel, Some((pid, exe))) == Hold::Held
            {
                proc.files.push(id);
            }
        }
        if !proc.files.is_empty() {
            proc.covered_since_ns = Some(covered_since_ns.unwrap_or_else(monotonic_ns));
        }
        self.procs.insert(pid, proc);
    }

    /// One more user of file `id` (at `path`): attached already, or
    /// attached now when it has something to probe, or, found after start
    /// by a process (`waiter`: its pid and executable), read off the event
    /// loop and attached for it then. A file with nothing to probe is
    /// remembered (bounded), so that it is not read again.
    fn hold(
        &mut self,
        id: FileId,
        path: &Path,
        kernel: &mut Kernel,
        waiter: Option<(Pid, Option<FileId>)>,
    ) -> Hold {
        if let Some(f) = self.files.get_mut(&id) {
            f.users += 1;
            return Hold::Held;
        }
        if self.checked.contains(&id) {
            return Hold::Nothing;
        }
        if let Some(waiters) = self.analysing.get_mut(&id) {
            if let Some(w) = waiter.filter(|w| !waiters.contains(w)) {
                waiters.push(w);
            }
            return Hold::Pending;
        }
        let Some(w) = waiter.filter(|_| self.background) else {
            let probed = probe_offsets(path, self.hooks);
            return self.attach_or_remember(id, path, probed, kernel);
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => return self.attach_or_remember(id, path, Err(Unreadable::Open(e)), kernel),
        };
        let job = Analyse {
            id,
            path: path.to_path_buf(),
            file,
            hooks: self.hooks,
        };
        match self.analyser.submit(job) {
            Ok(()) => {
                self.analysing.insert(id, vec![w]);
                Hold::Pending
            }
            Err(job) => {
                self.counters.analysed_inline += 1;
                let read = self.analyser.run_here(job);
                self.attach_or_remember(id, path, read.probed, kernel)
            }
        }
    }

    /// Attaches what `probed` found in file `id`, or remembers that it
    /// has nothing.
    fn attach_or_remember(
        &mut self,
        id: FileId,
        path: &Path,
        probed: Result<Probed, Unreadable>,
        kernel: &mut Kernel,
    ) -> Hold {
        if self.attach(id, path, probed, kernel) {
            return Hold::Held;
        }
        if self.checked.len() >= MAX_CHECKED {
            self.checked.clear();
        }
        self.checked.insert(id);
        Hold::Nothing
    }

    /// Attaches the probes to a file that has the functions; false when it
    /// has none (or none could be attached).
    fn attach(
        &mut self,
        id: FileId,
        path: &Path,
        probed: Result<Probed, Unreadable>,
        kernel: &mut Kernel,
    ) -> bool {
        let Probed {
            offsets,
            single_trap,
            membio,
            bio_method_at,
            go,
            ngx_upstream,
            go_hooks,
            asyncio,
        } = match probed {
            Ok(o) => o,
            Err(e) => {
                self.counters.unreadable_files += 1;
                tracing::debug!(
                    path = %path.display(),
                    error = %crate::error::chain(&e),
                    "file not probed for TLS: its symbols could not be read"
                );
                return false;
            }
        };
        // A Go executable is never nginx.
        let mut links = match ngx_upstream {
            Some(off) if self.hooks && matches!(go, GoFile::NotGo) => {
                let probes = [
                    (hook_programs::NGX_UPSTREAM, off, None),
                    (hook_programs::NGX_UPSTREAM_RET, off, None),
                ];
                let what = "nginx upstream (ngx_http_upstream_init); this program's upstream \
                            calls link to the request they serve";
                self.attach_hooks(path, &probes, what, kernel)
            }
            _ => Vec::new(),
        };
        let mut slots = Slots::default();
        match go_hooks {
            Ok(None) => {}
            Ok(Some(h)) => {
                if let Some((slot, l, deferred)) = self.attach_go_hooks(path, h, kernel) {
                    links.extend(l);
                    slots.hook = Some(slot);
                    slots.deferred = deferred;
                }
            }
            Err(reason) => {
                self.counters.hooks_not_covered += 1;
                tracing::info!(
                    executable = %path.display(),
                    reason,
                    "runtime hooks not covered: a Go net/http program the hooks cannot \
                     read; its calls link by the other rules"
                );
            }
        }
        match asyncio {
            PyAsyncio::No => {}
            PyAsyncio::Covered(probes) => {
                let what = "CPython asyncio (task steps and creation); calls link to the \
                            request whose response their task or an ancestor wrote";
                links.extend(self.attach_hooks(path, &probes, what, kernel));
            }
            PyAsyncio::Stripped => {
                self.counters.hooks_not_covered += 1;
                tracing::info!(
                    file = %path.display(),
                    "runtime hooks not covered: CPython's _asyncio without symbols (a stripped \
                     build); its asyncio calls link by the other rules"
                );
            }
        }
        if !self.tls {
            return self.keep(id, path, links, slots);
        }
        match go {
            GoFile::NotGo => {}
            GoFile::Covered(probes) => {
                if let Some((slot, l)) = self.attach_go(path, *probes, kernel) {
                    links.extend(l);
                    slots.go = Some(slot);
                }
                return self.keep(id, path, links, slots);
            }
            GoFile::NotCovered { version, reason } => {
                if self.reported.insert(id) {
                    self.counters.not_covered += 1;
                    tracing::warn!(
                        executable = %path.display(),
                        go = version.as_deref().unwrap_or("?"),
                        reason,
                        "TLS not covered: a Go program the crypto/tls probes cannot cover; \
                         its encrypted traffic is counted, not traced"
                    );
                }
                return self.keep(id, path, links, slots);
            }
        }
        // Frees and BIO settings without the reads and writes (a program
        // that only calls SSL_free or SSL_set_bio through its PLT) are no
        // TLS library to probe.
        if offsets.iter().all(|(p, _)| entry_only(p)) {
            return self.keep(id, path, links, slots);
        }
        let hook_links = links.len();
        for (prog, off) in offsets {
            let ret = (!entry_only(prog)).then_some(tls_programs::RET);
            for name in std::iter::once(prog).chain(ret) {
                let Some(p) = kernel.uprobe(name) else {
                    continue;
                };
                // The cookie tells the programs that this file's TLS runs
                // over memory BIOs, from its first call on; the BIO probes,
                // where a BIO keeps its method.
                let cookie = if name == tls_programs::SET_BIO {
                    Some(bio_method_at)
                } else {
                    membio.then_some(TLS_COOKIE_MEMBIO)
                };
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(off),
                    cookie,
                };
                match p.attach(point, path, UProbeScope::AllProcesses) {
                    Ok(link) => links.push((name, link)),
                    Err(e) => {
                        self.counters.attach_errors += 1;
                        tracing::warn!(file = %path.display(), program = name, error = %e, "cannot attach a TLS probe");
                    }
                }
            }
        }
        if links.len() > hook_links {
            if membio {
                self.counters.membio_files += 1;
            }
            // single_trap: directions (reads, writes) probed on OpenSSL's
            // inner function, one trap per call.
            tracing::info!(file = %path.display(), probes = links.len() - hook_links, membio, single_trap, "TLS plaintext probes attached");
        }
        self.keep(id, path, links, slots)
    }

    /// Attaches one program's runtime hooks (`probes`: program, file
    /// offset, attach cookie), all or none, and says so: `what` names them.
    fn attach_hooks(
        &mut self,
        path: &Path,
        probes: &[(&'static str, u64, Option<u64>)],
        what: &str,
        kernel: &mut Kernel,
    ) -> Vec<(&'static str, UProbeLinkId)> {
        let Some(links) = self.attach_all(path, probes, kernel) else {
            return Vec::new();
        };
        self.counters.hook_files += 1;
        tracing::info!(file = %path.display(), "runtime hooks attached: {what}");
        links
    }

    /// Keeps a file with the probes attached to it (false when none was).
    fn keep(
        &mut self,
        id: FileId,
        path: &Path,
        links: Vec<(&'static str, UProbeLinkId)>,
        slots: Slots,
    ) -> bool {
        if links.is_empty() {
            self.free_slots(slots);
            return false;
        }
        self.counters.files_attached += 1;
        self.files.insert(
            id,
            TlsFile {
                path: path.to_path_buf(),
                links,
                users: 1,
                go_slot: slots.go,
                hook_slot: slots.hook,
                deferred: slots.deferred,
            },
        );
        true
    }

    fn free_slots(&mut self, slots: Slots) {
        self.go_slots.extend(slots.go);
        self.hook_slots.extend(slots.hook);
    }

    /// Attaches the Go net/http hooks held back for a file once a program
    /// of it made a client call they serve (the roundTrip probe says so in
    /// `GO_HOOK_WANTED`). Until then ServeHTTP's traps (two per request)
    /// would buy nothing: the hooks link outbound calls only. The calls made
    /// before (at least the first) link by the other rules.
    pub fn attach_wanted_hooks(&mut self, kernel: &mut Kernel) {
        let wanted: Vec<FileId> = self
            .files
            .iter()
            .filter(|(_, f)| !f.deferred.is_empty())
            .filter(|(_, f)| f.hook_slot.is_some_and(|slot| kernel.go_hook_wanted(slot)))
            .map(|(id, _)| *id)
            .collect();
        for id in wanted {
            let Some(f) = self.files.get_mut(&id) else {
                continue;
            };
            let probes = std::mem::take(&mut f.deferred);
            let path = f.path.clone();
            let Some(links) = self.attach_all(&path, &probes, kernel) else {
                tracing::warn!(
                    file = %path.display(),
                    "cannot attach Go's ServeHTTP hooks: this program's calls link by the other rules"
                );
                continue;
            };
            self.counters.hooks_attached_late += 1;
            tracing::info!(
                file = %path.display(),
                probes = links.len(),
                "runtime hooks attached: Go net/http ServeHTTP{}, at the program's first \
                 outbound call over net/http; calls from now on link to the request their \
                 goroutine serves",
                if self.goroutines { " and goroutine creation" } else { "" }
            );
            if let Some(f) = self.files.get_mut(&id) {
                f.links.extend(links);
            }
        }
    }

    /// Attaches the Go net/http hooks to an executable (see
    /// `tracer-ebpf/src/gohooks.rs`): its offsets go to a free slot of
    /// `GO_HOOK_FILES`, whose index every probe carries as its cookie. All
    /// or nothing.
    fn attach_go_hooks(
        &mut self,
        path: &Path,
        hooks: go::GoHooks,
        kernel: &mut Kernel,
    ) -> Option<(u32, Links, Vec<Probe>)> {
        let Some(slot) = self.hook_slots.pop() else {
            self.counters.attach_errors += 1;
            tracing::warn!(file = %path.display(), "cannot attach Go runtime hooks: every slot is in use");
            return None;
        };
        let set = kernel
            .set_go_hook_file(slot, &hooks.layout)
            .and_then(|()| kernel.clear_go_hook_wanted(slot));
        if let Err(e) = set {
            self.hook_slots.push(slot);
            self.counters.attach_errors += 1;
            tracing::warn!(file = %path.display(), error = %e, "cannot attach Go runtime hooks");
            return None;
        }
        let probes = with_cookie(&hooks.probes, slot);
        let (now, deferred): (Vec<_>, Vec<_>) = probes
            .into_iter()
            .filter(|(name, _, _)| {
                self.goroutines
                    || (*name != hook_programs::GO_SPAWN && *name != hook_programs::GO_SPAWN_RET)
            })
            .partition(|(name, _, _)| *name == hook_programs::GO_ROUND_TRIP);
        if now.is_empty() {
            // No net/http client in the program: nothing for the hooks to link.
            self.hook_slots.push(slot);
            return None;
        }
        let what = format!(
            "Go net/http ({}, persistConn.roundTrip; ServeHTTP{} once the program calls out \
             over net/http); calls link to the request their goroutine serves",
            hooks.version,
            if self.goroutines {
                " and goroutine creation"
            } else {
                ""
            }
        );
        let links = self.attach_hooks(path, &now, &what, kernel);
        if links.is_empty() {
            self.hook_slots.push(slot);
            return None;
        }
        Some((slot, links, deferred))
    }

    /// Attaches every (program, file offset, attach cookie) of `probes`:
    /// all, or none (a call whose return is not probed would leave its
    /// entry behind).
    fn attach_all(
        &mut self,
        path: &Path,
        probes: &[(&'static str, u64, Option<u64>)],
        kernel: &mut Kernel,
    ) -> Option<Vec<(&'static str, UProbeLinkId)>> {
        let mut links = Vec::new();
        for &(name, off, cookie) in probes {
            let Some(p) = kernel.uprobe(name) else {
                continue;
            };
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(off),
                cookie,
            };
            match p.attach(point, path, UProbeScope::AllProcesses) {
                Ok(link) => links.push((name, link)),
                Err(e) => {
                    self.counters.attach_errors += 1;
                    tracing::warn!(file = %path.display(), program = name, error = %e, "cannot attach a probe");
                }
            }
        }
        if links.len() != probes.len() {
            self.detach_links(links, kernel);
            return None;
        }
        Some(links)
    }

    /// Attaches the Go probes to an executable (see [`go`]): its offsets
    /// go to a free slot of `GO_TLS_FILES`, whose index every probe of the
    /// file carries as its cookie.
    fn attach_go(
        &mut self,
        path: &Path,
        probes: go::GoProbes,
        kernel: &mut Kernel,
    ) -> Option<(u32, Vec<(&'static str, UProbeLinkId)>)> {
        let Some(slot) = self.go_slots.pop() else {
            self.counters.attach_errors += 1;
            tracing::warn!(file = %path.display(), "cannot attach Go TLS probes: every Go file slot is in use");
            return None;
        };
        if let Err(e) = kernel.set_go_tls_file(slot, &probes.layout) {
            self.go_slots.push(slot);
            self.counters.attach_errors += 1;
            tracing::warn!(file = %path.display(), error = %e, "cannot attach Go TLS probes");
            return None;
        }
        let Some(links) = self.attach_all(path, &with_cookie(&probes.probes, slot), kernel) else {
            self.go_slots.push(slot);
            return None;
        };
        tracing::info!(
            file = %path.display(),
            go = %probes.version,
            probes = links.len(),
            functions = if probes.symbols { "symbol table" } else { "Go function table (stripped)" },
            offsets = probes.offsets.name(),
            read_ahead = probes.layout.raw_input != GO_OFF_UNKNOWN,
            read_end = if probes.probes.iter().any(|p| p.0 == go_programs::COPY) {
                "memmove call"
            } else {
                "RET instructions"
            },
            conn_wrappers = probes.layout.wrappers.types.iter().filter(|&&t| t != 0).count(),
            "Go crypto/tls plaintext probes attached"
        );
        Some((slot, links))
    }

    /// Closes `links` now, on the event loop: for probes that must be gone
    /// before the caller goes on (see [`TlsAttach::release`] for the rest).
    fn detach_links(&mut self, links: Vec<(&'static str, UProbeLinkId)>, kernel: &mut Kernel) {
        for (name, link) in links {
            if let Some(p) = kernel.uprobe(name) {
                let _ = p.detach(link);
            }
        }
    }

    fn forget(&mut self, pid: Pid, kernel: &mut Kernel) {
        if let Some(proc) = self.procs.remove(&pid) {
            if !proc.files.is_empty() {
                // Probed since it was noted: the connection noted may have
                // begun before its probes, and would be reported wrongly.
                self.uncovered.remove(&pid);
            }
            // A Go process that exited inside a Read leaves its entry.
            let go = proc
                .files
                .iter()
                .any(|id| self.files.get(id).is_some_and(|f| f.go_slot.is_some()));
            if go {
                self.counters.go_calls_forgotten += kernel.forget_go_calls(pid.0) as u64;
            }
            self.release(proc.files, kernel);
        }
    }

    /// One process fewer maps `files`: a file nobody maps is detached.
    fn release(&mut self, files: Vec<FileId>, kernel: &mut Kernel) {
        for id in files {
            let Some(f) = self.files.get_mut(&id) else {
                continue;
            };
            f.users = f.users.saturating_sub(1);
            if f.users > 0 {
                continue;
            }
            if let Some(f) = self.files.remove(&id) {
                let links = f
                    .links
                    .into_iter()
                    .filter_map(|(name, link)| kernel.uprobe(name)?.take_link(link).ok())
                    .collect();
                let slots = Slots {
                    go: f.go_slot,
                    hook: f.hook_slot,
                    ..Slots::default()
                };
                if let Err(job) = self.detacher.submit((links, f.path, slots)) {
                    self.counters.detached_inline += 1;
                    let (path, slots) = self.detacher.run_here(job);
                    self.detached(&path, slots);
                }
            }
        }
    }

    fn detached(&mut self, path: &Path, slots: Slots) {
        self.free_slots(slots);
        self.counters.files_detached += 1;
        tracing::info!(file = %path.display(), "probes detached: no process maps the file");
    }

    /// Frees the slots of the files whose probes are closed since the last
    /// call: no probe fires with them any more.
    fn reap_detached(&mut self) {
        for (path, slots) in self.detacher.finished() {
            self.detached(&path, slots);
        }
    }

    /// From now on, files found are read off the event loop (the agent's
    /// start reads the running processes' files before it says attached).
    pub fn read_in_background(&mut self) {
        self.background = true;
    }

    /// Attaches the files read since the last call to the processes still
    /// waiting for them (a process gone, or running another program since,
    /// waits no more; a file nobody waits for is read again when a process
    /// maps it).
    fn reap_analysed(&mut self, kernel: &mut Kernel) {
        for Analysed { id, path, probed } in self.analyser.finished() {
            let Some(waiters) = self.analysing.remove(&id) else {
                continue;
            };
            let waiters: Vec<Pid> = waiters
                .into_iter()
                .filter(|(pid, exe)| {
                    self.procs
                        .get(pid)
                        .is_some_and(|p| p.exe == *exe && !p.files.contains(&id))
                })
                .map(|(pid, _)| pid)
                .collect();
            if waiters.is_empty() {
                tracing::debug!(file = %path.display(), "file read, no process maps it any more");
                continue;
            }
            if self.attach_or_remember(id, &path, probed, kernel) != Hold::Held {
                continue;
            }
            if let Some(f) = self.files.get_mut(&id) {
                f.users = waiters.len();
            }
            let now = monotonic_ns();
            for pid in waiters {
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.files.push(id);
                    p.covered_since_ns.get_or_insert(now);
                }
            }
        }
    }

    /// A process of `pid` waits for a file being read.
    fn awaits_a_file(&self, pid: Pid) -> bool {
        self.analysing
            .values()
            .any(|waiters| waiters.iter().any(|(p, _)| *p == pid))
    }

    /// Files attached now.
    pub fn attached_files(&self) -> usize {
        self.files.len()
    }

    /// The counters.
    pub fn counters(&self) -> &AttachCounters {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_files_keeps_executable_file_mappings_once() {
        let maps = "\
55d0a000-55d0b000 r--p 00000000 fd:01 123 /usr/bin/curl
55d0b000-55d0c000 r-xp 00001000 fd:01 123 /usr/bin/curl
7f00-7f01 r-xp 00000000 fd:01 456 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f01-7f02 r-xp 00010000 fd:01 456 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f02-7f03 rw-p 00000000 00:00 0
7f03-7f04 r-xp 00000000 fd:01 789 /tmp/a b.so (deleted)
7f05-7f06 r-xp 00000000 fd:01 790 /opt/with space/lib.so
7ffd-7ffe r-xp 00000000 00:00 0 [vdso]
";
        assert_eq!(
            mapped_files(maps),
            vec![
                "/usr/bin/curl",
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                "/opt/with space/lib.so"
            ]
        );
    }

    #[test]
    fn libssl_offsets_are_found() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !lib.exists() {
            return;
        }
        let Probed {
            offsets: found,
            single_trap,
            membio,
            bio_method_at,
            ..
        } = probe_offsets(lib, true).expect("libssl parses");
        assert!(!membio, "libssl does its own socket I/O");
        assert_eq!(bio_method_at, TLS_BIO_METHOD_AT_OSSL3, "OpenSSL 3");
        let names: Vec<_> = found.iter().map(|(n, _)| *n).collect();
        let bytes = std::fs::read(lib).expect("readable");
        let obj = object::File::parse(&*bytes).expect("an ELF file");
        let wrappers = symbol_offsets(
            &obj,
            ["SSL_write", "SSL_write_ex", "SSL_read", "SSL_read_ex"],
        );
        let ex2 = symbol_offsets(&obj, [OSSL32_MARK])[0];
        if ex2.is_some() {
            // OpenSSL 3.2 on: the reads on the inner function, the writes
            // on the wrappers.
            assert_eq!(single_trap, 1);
            assert_eq!(
                names,
                vec![
                    tls_programs::WRITE,
                    tls_programs::WRITE_EX,
                    tls_programs::READ_EX,
                    tls_programs::FREE,
                    tls_programs::SET_BIO
                ]
            );
        } else {
            // Debian 12's 3.0: both directions on the inner functions, one
            // probe each, neither at a wrapper, each starting with `push`.
            assert_eq!(single_trap, 2);
            assert_eq!(
                names,
                vec![
                    tls_programs::WRITE_EX,
                    tls_programs::READ_EX,
                    tls_programs::FREE,
                    tls_programs::SET_BIO
                ]
            );
            for &(_, off) in &found[..2] {
                assert!(!wrappers.contains(&Some(off)), "{off:#x} is a wrapper");
                let at = &bytes[off as usize..];
                assert!(
                    (0x50..=0x57).contains(&at[0])
                        || (at[0] == 0x41 && (0x50..=0x57).contains(&at[1])),
                    "{off:#x} starts with {:02x?}",
                    &at[..4]
                );
            }
        }
        assert!(found.iter().all(|(_, off)| *off > 0));
        // The BIO probe sits on the function `SSL_set_bio` calls.
        let [rbio] = symbol_offsets(&obj, [SSL_SET0_RBIO]);
        assert_eq!(Some(found[found.len() - 1].1), rbio);
    }

    /// GnuTLS: the send every other send jumps to, the receive and the
    /// free; `gnutls_record_send` itself not (its call would nest).
    #[test]
    fn libgnutls_offsets_are_found() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libgnutls.so.30");
        if !lib.exists() {
            return;
        }
        let p = probe_offsets(lib, true).expect("libgnutls parses");
        assert!(!p.membio);
        let names: Vec<_> = p.offsets.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            vec![tls_programs::WRITE, tls_programs::READ, tls_programs::FREE]
        );
        let obj_bytes = std::fs::read(lib).expect("readable");
        let obj = object::File::parse(&*obj_bytes).expect("an ELF file");
        let [send2, send] = symbol_offsets(&obj, [GNUTLS_SEND2, GNUTLS_SEND]);
        assert_eq!(Some(p.offsets[0].1), send2);
        assert_ne!(send, send2);
    }

    #[test]
    fn node_is_found_to_use_memory_bios() {
        let node = Path::new("/usr/bin/node");
        if !node.exists() {
            return;
        }
        let Probed {
            offsets: found,
            membio,
            ..
        } = probe_offsets(node, true).expect("node parses");
        assert!(found.len() >= 4, "{found:?}");
        assert!(membio);
    }

    #[test]
    fn nginx_gets_the_upstream_hook_and_libssl_does_not() {
        let nginx = Path::new("/usr/sbin/nginx");
        if !nginx.exists() {
            return;
        }
        let p = probe_offsets(nginx, true).expect("nginx parses");
        assert!(p.ngx_upstream.is_some_and(|off| off > 0));
        assert!(matches!(p.go_hooks, Ok(None)));
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if lib.exists() {
            let p = probe_offsets(lib, true).expect("libssl parses");
            assert!(p.ngx_upstream.is_none());
        }
    }
}
