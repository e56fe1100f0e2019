//! Go executables: where `crypto/tls.(*Conn).Write` and `Read` are, their
//! RET instructions, and the struct offsets the probes need.
//!
//! A Go program links crypto/tls statically, so the executable itself is the
//! file to probe. Its Go version comes from the build info
//! (`.go.buildinfo`); the register ABI the probes read arguments by exists
//! since Go 1.17 on amd64, so older programs are not covered. The functions
//! come from the symbol table, or in a stripped program from the runtime's
//! own function table (`gofunctab`, with the itab the probes check found
//! by its methods; only the net/http hooks need symbols and DWARF); each gets
//! a uprobe on its entry and one on every RET instruction (found by decoding
//! its code), never a uretprobe: the runtime moves goroutine stacks, and a
//! uretprobe's rewritten return address with them.
//!
//! Struct offsets come from the program's DWARF when it has some; without
//! DWARF (`-ldflags=-w`), from the runtime's type descriptors (`gotypes`);
//! where those are left to the loader (a position-independent program),
//! the offsets that have held since Go 1.12 are used
//! for the socket (`tls.Conn.conn` at 0, `net.TCPConn` -> `*netFD` at 0,
//! `netFD.pfd.Sysfd` at 16), and the read-ahead buffers are known only for
//! the releases checked (else reads carry no sequence number of their own;
//! see docs/design/010-tls-plaintext.md).
use std::borrow::Cow;

use super::{
    gofunctab::FuncTab,
    gotypes::{read_vaddr, Types},
};
use gimli::{EndianSlice, LittleEndian};
use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{CompressionFormat, Object, ObjectKind, ObjectSection, ObjectSymbol, SectionKind};
use tracer_common::{
    gotls::{programs, GoTlsFile, GoWrappers, GO_AT_STACK_CHECK, GO_OFF_UNKNOWN},
    hook_programs as programs_hook, GoHookFile,
};

/// The probed functions.
const WRITE: &str = "crypto/tls.(*Conn).Write";
const READ: &str = "crypto/tls.(*Conn).Read";
/// What Read's copy of the plaintext into the caller's buffer calls.
const MEMMOVE: &str = "runtime.memmove";
/// `*tls.Conn`'s methods of `net.Conn`, in the order of their names.
const TLS_CONN_METHODS: [&str; 8] = [
    "crypto/tls.(*Conn).Close",
    "crypto/tls.(*Conn).LocalAddr",
    "crypto/tls.(*Conn).Read",
    "crypto/tls.(*Conn).RemoteAddr",
    "crypto/tls.(*Conn).SetDeadline",
    "crypto/tls.(*Conn).SetReadDeadline",
    "crypto/tls.(*Conn).SetWriteDeadline",
    "crypto/tls.(*Conn).Write",
];
/// `*net.TCPConn`'s methods of `net.Conn`, in the order of their names (an
/// itab's method table).
const TCP_CONN_METHODS: [&str; 8] = [
    "net.(*TCPConn).Close",
    "net.(*TCPConn).LocalAddr",
    "net.(*TCPConn).Read",
    "net.(*TCPConn).RemoteAddr",
    "net.(*TCPConn).SetDeadline",
    "net.(*TCPConn).SetReadDeadline",
    "net.(*TCPConn).SetWriteDeadline",
    "net.(*TCPConn).Write",
];
/// The itab of `*net.TCPConn` as a `net.Conn` (the linker's name changed in
/// Go 1.22).
const TCP_ITABS: [&str; 2] = [
    "go.itab.*net.TCPConn,net.Conn",
    "go:itab.*net.TCPConn,net.Conn",
];

/// Oldest Go release whose amd64 functions take arguments in registers.
const MIN_MINOR: u32 = 17;

/// A probe: (program, file offset, attach cookie bits besides the file's
/// slot: [`GO_AT_STACK_CHECK`] or 0).
pub type Probe = (&'static str, u64, u64);

/// What a Go executable offers the probes.
#[derive(Debug)]
pub struct GoProbes {
    /// The Go release that built it (`go1.19.8`).
    pub version: String,
    /// Offsets for the probes (`GO_TLS_FILES`).
    pub layout: GoTlsFile,
    /// The two entries, then every RET.
    pub probes: Vec<Probe>,
    /// Where the struct offsets came from.
    pub offsets: Offsets,
    /// Whether the functions came from the symbol table (else from the
    /// runtime's function table: a stripped program).
    pub symbols: bool,
}

/// Where a Go program's struct offsets came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offsets {
    Dwarf,
    /// The runtime's type descriptors (no DWARF).
    TypeDescriptors,
    /// The offsets that have held since Go 1.12 (neither).
    Defaults,
}

impl Offsets {
    pub fn name(self) -> &'static str {
        match self {
            Offsets::Dwarf => "DWARF",
            Offsets::TypeDescriptors => "type descriptors",
            Offsets::Defaults => "Go 1.12+ defaults",
        }
    }
}

/// What an ELF file is, for the Go probes.
#[derive(Debug)]
pub enum GoFile {
    /// Not a Go program, or one without crypto/tls.
    NotGo,
    /// A Go program using crypto/tls, probed.
    Covered(Box<GoProbes>),
    /// A Go program the probes cannot cover, and why.
    NotCovered {
        /// Its Go release, when known.
        version: Option<String>,
        /// Why not.
        reason: &'static str,
    },
}

/// What the caller will ask of a Go program: the TLS probes, the net/http
/// hooks or both. Its DWARF is searched once, for the members of those.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    pub tls: bool,
    pub hooks: bool,
}

/// One ELF file as a Go program, read once for the TLS probes
/// ([`Program::tls`]) and the net/http hooks ([`Program::http_hooks`]).
pub enum Program<'a, 'd> {
    /// Not a Go program.
    NotGo,
    /// A Go program neither can cover, and why.
    Unsupported {
        /// Its Go release, when known.
        version: Option<String>,
        reason: &'static str,
    },
    Go(Box<GoProgram<'a, 'd>>),
}

/// What both the TLS probes and the hooks read of a Go program: its
/// release, type descriptors and function table, the functions they probe,
/// the itabs they check, the connection wrappers they follow and the
/// struct members from DWARF.
pub struct GoProgram<'a, 'd> {
    obj: &'a object::File<'d>,
    wanted: Wanted,
    version: Option<String>,
    minor: u32,
    types: Types<'a, 'd>,
    tab: Option<FuncTab<'d>>,
    /// Whether it has a symbol table (else stripped: functions and itabs
    /// come from the runtime's function table).
    symbols: bool,
    /// (address, size) of the functions of `FUNCS`.
    funcs: [Option<(u64, u64)>; FUNCS.len()],
    /// The itab of `*net.TCPConn` as a `net.Conn` (0: not found).
    tcp_itab: u64,
    /// The itab of `*net/http.response` as a `ResponseWriter` (0: not found).
    response_itab: u64,
    wrappers: GoWrappers,
    /// The members either needs, from DWARF (None without DWARF).
    members: Option<Members>,
}

/// The functions the TLS probes and the hooks probe, by index.
const FUNCS: [&str; 6] = [WRITE, READ, SERVE, NEWPROC, ROUND_TRIP, MEMMOVE];
const F_WRITE: usize = 0;
const F_READ: usize = 1;
const F_SERVE: usize = 2;
const F_NEWPROC: usize = 3;
const F_ROUND_TRIP: usize = 4;
const F_MEMMOVE: usize = 5;

/// Reads one parsed ELF file as a Go program.
pub fn read<'a, 'd>(obj: &'a object::File<'d>, wanted: Wanted) -> Program<'a, 'd> {
    if !wanted.tls && !wanted.hooks {
        return Program::NotGo;
    }
    let Some(info) = obj.section_by_name(".go.buildinfo") else {
        return Program::NotGo;
    };
    let version = info.data().ok().and_then(|d| build_version(obj, d));
    let unsupported = |reason| Program::Unsupported {
        version: version.clone(),
        reason,
    };
    let Some(minor) = version.as_deref().and_then(go_minor) else {
        return unsupported("Go version unknown");
    };
    if minor < MIN_MINOR {
        return unsupported("Go older than 1.17 (arguments on the stack)");
    }
    if obj.architecture() != object::Architecture::X86_64 {
        return unsupported("only amd64 Go programs are covered");
    }
    let types = Types::new(obj, minor);
    let tab = FuncTab::parse(obj);
    let mut funcs = [None; FUNCS.len()];
    let (mut tcp_itab, mut response_itab) = (0, 0);
    let mut symbols = false;
    for s in obj.symbols() {
        symbols = true;
        let Ok(name) = s.name() else { continue };
        if let Some(i) = FUNCS.iter().position(|f| *f == name) {
            funcs[i] = Some((s.address(), s.size()));
        } else if TCP_ITABS.contains(&name) {
            tcp_itab = s.address();
        } else if RESPONSE_ITABS.contains(&name) {
            response_itab = s.address();
        }
    }
    // Stripped: the runtime's function table names the functions, and an
    // itab is found by the methods it lists.
    let stripped_tab = tab.as_ref().filter(|_| !symbols);
    if let Some(tab) = stripped_tab {
        funcs.copy_from_slice(&tab.find(&FUNCS));
    }
    let tls = wanted.tls && funcs[F_WRITE].is_some() && funcs[F_READ].is_some();
    let hooks = wanted.hooks && funcs[F_SERVE].is_some() && funcs[F_NEWPROC].is_some();
    if let Some(tab) = stripped_tab {
        if tls || hooks {
            tcp_itab = types.itab_of(tab, &TCP_CONN_METHODS).unwrap_or(0);
        }
        if hooks {
            response_itab = types.itab_of(tab, &RESPONSE_METHODS).unwrap_or(0);
        }
    }
    let (wrappers, members) = if tls || hooks {
        let mut want = SOCKET_MEMBERS.to_vec();
        if tls {
            want.extend(TLS_MEMBERS);
        }
        if hooks {
            want.extend(HOOK_MEMBERS);
        }
        let members =
            dwarf_members(obj, &want).map(|found| Members(want.into_iter().zip(found).collect()));
        (wrappers(&types, tcp_itab), members)
    } else {
        (GoWrappers::default(), None)
    };
    Program::Go(Box::new(GoProgram {
        obj,
        wanted,
        version,
        minor,
        types,
        tab,
        symbols,
        funcs,
        tcp_itab,
        response_itab,
        wrappers,
        members,
    }))
}

impl Program<'_, '_> {
    /// What it offers the TLS probes (read with `wanted.tls`).
    pub fn tls(&self) -> GoFile {
        match self {
            Program::NotGo => GoFile::NotGo,
            Program::Unsupported { version, reason } => GoFile::NotCovered {
                version: version.clone(),
                reason,
            },
            Program::Go(p) => p.tls(),
        }
    }

    /// Its net/http runtime hooks (read with `wanted.hooks`): `Ok(None)`
    /// when it is not a Go program serving HTTP with net/http, `Err(why)`
    /// when it is one the hooks cannot cover.
    pub fn http_hooks(&self) -> Result<Option<GoHooks>, &'static str> {
        match self {
            Program::NotGo => Ok(None),
            Program::Unsupported { reason, .. } => Err(reason),
            Program::Go(p) => p.http_hooks(),
        }
    }
}

/// Struct members found in DWARF: ((struct, member), offset).
struct Members(Vec<((&'static str, &'static str), Option<u64>)>);

impl Members {
    fn get(&self, member: (&str, &str)) -> Option<u32> {
        self.0
            .iter()
            .find(|(m, _)| *m == member)
            .and_then(|(_, off)| u32::try_from((*off)?).ok())
    }

    /// The socket's path: `*net.TCPConn` -> its `*netFD`, `netFD` ->
    /// `pfd.Sysfd`.
    fn socket(&self) -> Option<(u32, u32)> {
        let tcp_fd = self.get(TCP_CONN_CONN)?.checked_add(self.get(CONN_FD)?)?;
        let sysfd = self.get(NETFD_PFD)?.checked_add(self.get(FD_SYSFD)?)?;
        Some((tcp_fd, sysfd))
    }
}

impl GoProgram<'_, '_> {
    fn not_covered(&self, reason: &'static str) -> GoFile {
        GoFile::NotCovered {
            version: self.version.clone(),
            reason,
        }
    }

    fn tls(&self) -> GoFile {
        debug_assert!(self.wanted.tls, "read without the TLS probes wanted");
        if !self.symbols && self.tab.is_none() {
            return self.not_covered("stripped, and its function table is of an unknown layout");
        }
        let (Some(write), Some(read)) = (self.funcs[F_WRITE], self.funcs[F_READ]) else {
            return GoFile::NotGo;
        };
        if !self.symbols && self.tcp_itab == 0 {
            return self
                .not_covered("stripped, and the itab of *net.TCPConn as a net.Conn not found");
        }
        let obj = self.obj;
        let mut probes = Vec::new();
        let mut bodies = [0u64; 2];
        let mut read_end_at_copy = false;
        for (i, (addr, size)) in [write, read].into_iter().enumerate() {
            let Some((code, file_off)) = code_of(obj, addr, size) else {
                return self.not_covered("function code not found in the file");
            };
            let insns = decode(code, addr);
            let (at, bits) = entry_point(&insns);
            bodies[i] = addr + at;
            if i == 0 {
                // Write is complete at its entry (see tracer-ebpf/src/gotls.rs):
                // no RET probe.
                probes.push((programs::WRITE, file_off + at, bits));
                continue;
            }
            probes.push((programs::READ, file_off + at, bits));
            let memmove = self.funcs[F_MEMMOVE].map(|(a, _)| a);
            if let Some(off) = memmove.and_then(|m| only_call_to(code, addr, m)) {
                probes.push((programs::COPY, file_off + off, 0));
                read_end_at_copy = true;
                continue;
            }
            let rets = ret_offsets(&insns);
            if rets.is_empty() {
                return self.not_covered("no RET instruction found in crypto/tls.(*Conn).Read");
            }
            probes.extend(
                rets.into_iter()
                    .map(|off| (programs::RET, file_off + off, 0)),
            );
        }
        let tcp_type = self.types.itab_type(self.tcp_itab);
        let (mut layout, offsets) = match self.members.as_ref().and_then(dwarf_layout) {
            Some(l) => (l, Offsets::Dwarf),
            None => match self
                .tab
                .as_ref()
                .and_then(|tab| type_layout(&self.types, tab, tcp_type))
            {
                Some(l) => (l, Offsets::TypeDescriptors),
                None => (fallback_layout(self.minor), Offsets::Defaults),
            },
        };
        layout.write_entry = bodies[0];
        layout.read_entry = bodies[1];
        layout.read_end_at_copy = u32::from(read_end_at_copy);
        layout.tcp_itab = self.tcp_itab;
        layout.tcp_type = tcp_type;
        layout.wrappers = self.wrappers;
        GoFile::Covered(Box::new(GoProbes {
            version: self.version.clone().unwrap_or_default(),
            layout,
            probes,
            offsets,
            symbols: self.symbols,
        }))
    }

    fn http_hooks(&self) -> Result<Option<GoHooks>, &'static str> {
        debug_assert!(self.wanted.hooks, "read without the hooks wanted");
        if !self.symbols && self.tab.is_none() {
            return Err("stripped, and its function table is of an unknown layout");
        }
        let (Some(serve), Some(newproc)) = (self.funcs[F_SERVE], self.funcs[F_NEWPROC]) else {
            return Ok(None);
        };
        let (response_itab, tcp_itab) = (self.response_itab, self.tcp_itab);
        if response_itab == 0 || tcp_itab == 0 {
            return Err("net/http's itabs not found");
        }
        let tcp_type = self.types.itab_type(tcp_itab);
        let offsets = match &self.members {
            Some(m) => {
                let socket = m.socket();
                HookOffsets {
                    response_conn: m.get(RESPONSE_CONN),
                    conn_rwc: m.get(CONN_RWC),
                    pconn_conn: m.get(PCONN_CONN),
                    tcp_fd: socket.map(|s| s.0),
                    sysfd: socket.map(|s| s.1),
                }
            }
            None => {
                let tab = self.tab.as_ref().ok_or("no DWARF, and no function table")?;
                hook_type_offsets(&self.types, tab, response_itab, tcp_type)
            }
        };
        let missing = "a net/http struct member is in neither its DWARF nor its type descriptors";
        let mut layout = GoHookFile {
            response_itab,
            tcp_itab,
            tcp_type,
            response_conn: offsets.response_conn.ok_or(missing)?,
            conn_rwc: offsets.conn_rwc.ok_or(missing)?,
            pconn_conn: offsets.pconn_conn.unwrap_or(0),
            tcp_fd: offsets.tcp_fd.ok_or(missing)?,
            sysfd: offsets.sysfd.ok_or(missing)?,
            wrappers: self.wrappers,
            ..GoHookFile::default()
        };
        let mut probes = Vec::new();
        let with_ret = [
            (
                serve,
                programs_hook::GO_SERVE,
                Some(programs_hook::GO_SERVE_RET),
            ),
            (
                newproc,
                programs_hook::GO_SPAWN,
                Some(programs_hook::GO_SPAWN_RET),
            ),
        ];
        let client = self.funcs[F_ROUND_TRIP]
            .filter(|_| offsets.pconn_conn.is_some())
            .map(|f| (f, programs_hook::GO_ROUND_TRIP, None));
        for (i, ((addr, size), entry, ret)) in with_ret.into_iter().chain(client).enumerate() {
            let (code, file_off) =
                code_of(self.obj, addr, size).ok_or("function code not found")?;
            let insns = decode(code, addr);
            let (at, bits) = entry_point(&insns);
            probes.push((entry, file_off + at, bits));
            match i {
                0 => layout.serve_entry = addr + at,
                2 => layout.round_trip_entry = addr + at,
                _ => {}
            }
            if let Some(ret) = ret {
                let rets = ret_offsets(&insns);
                if rets.is_empty() {
                    return Err("no RET instruction found");
                }
                probes.extend(rets.into_iter().map(|off| (ret, file_off + off, 0)));
            }
        }
        Ok(Some(GoHooks {
            version: self.version.clone().unwrap_or_default(),
            layout,
            probes,
        }))
    }
}

/// The connection wrappers of the program whose `*net.TCPConn` itab is
/// `tcp_itab` the probes follow through a field other than their first,
/// each in an entry of its own: of the hash multipliers tried, the first
/// that gives every type its own entry, else the one that places most (a
/// connection under a type left out is counted as `go_tls_no_socket`).
fn wrappers(types: &Types<'_, '_>, tcp_itab: u64) -> GoWrappers {
    let found: Vec<(u64, u32)> = types
        .conn_wrappers(tcp_itab)
        .into_iter()
        .filter_map(|(typ, offset)| Some((typ, u32::try_from(offset).ok()?)))
        .collect();
    let (w, placed) = place_wrappers(&found);
    if placed < found.len() {
        tracing::debug!(
            found = found.len(),
            followed = placed,
            "Go connection wrappers not all followed: the table is full"
        );
    }
    w
}

/// The table of wrappers `found` ((type, offset)), and how many it holds.
fn place_wrappers(found: &[(u64, u32)]) -> (GoWrappers, usize) {
    let mut best = (0, GoWrappers::default());
    for k in 0..MULTIPLIERS_TRIED {
        let mut w = GoWrappers {
            // Odd: a product of odd numbers.
            mul: GOLDEN.wrapping_mul(2 * k + 1),
            ..GoWrappers::default()
        };
        let mut placed = 0;
        for &(typ, offset) in found {
            let i = w.slot(typ);
            if w.types[i] == 0 {
                (w.types[i], w.offsets[i]) = (typ, offset);
                placed += 1;
            }
        }
        if placed > best.0 {
            best = (placed, w);
        }
        if placed == found.len() {
            break;
        }
    }
    (best.1, best.0)
}

/// 2^64 divided by the golden ratio: consecutive keys spread far apart.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
/// Hash multipliers tried for a program's wrapper table.
const MULTIPLIERS_TRIED: u64 = 64;

/// The offsets from the runtime's type descriptors (see `gotypes`): the
/// socket's path from `*net.TCPConn`'s type (`tcp_type`), `tls.Conn`'s
/// members from the type in the itab that holds a `*tls.Conn` as a
/// `net.Conn` (found by its methods). The read-ahead buffers are optional,
/// as with DWARF.
fn type_layout(t: &Types<'_, '_>, tab: &FuncTab<'_>, tcp_type: u64) -> Option<GoTlsFile> {
    let (tcp_fd, sysfd) = socket_offsets(t, tcp_type)?;
    let tls = t.elem(t.itab_type(t.itab_of(tab, &TLS_CONN_METHODS)?))?;
    let read_ahead = || -> Option<(u32, u32, u32)> {
        let (raw, _) = t.field(tls, "rawInput")?;
        let (input, input_type) = t.field(tls, "input")?;
        let i = t.offset(input_type, &["i"])?;
        Some((
            u32::try_from(raw).ok()?,
            u32::try_from(input).ok()?,
            u32::try_from(i).ok()?,
        ))
    };
    let conn = u32::try_from(t.offset(tls, &["conn"])?).ok()?;
    Some(tls_layout(conn, tcp_fd, sysfd, read_ahead()))
}

/// `*net.TCPConn` (type `tcp_type`) -> its `*netFD` (`conn.fd`), and
/// `netFD` -> `pfd.Sysfd`, from the type descriptors.
fn socket_offsets(t: &Types<'_, '_>, tcp_type: u64) -> Option<(u32, u32)> {
    let (conn, conn_type) = t.field(t.elem(tcp_type)?, "conn")?;
    let (fd, fd_type) = t.field(conn_type, "fd")?;
    let sysfd = t.offset(t.elem(fd_type)?, &["pfd", "Sysfd"])?;
    Some((
        u32::try_from(conn.checked_add(fd)?).ok()?,
        u32::try_from(sysfd).ok()?,
    ))
}

/// `go1.19.8` -> 19 (None for anything else, e.g. `devel`).
fn go_minor(v: &str) -> Option<u32> {
    let rest = v.strip_prefix("go1.")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The Go version from `.go.buildinfo`: inline since Go 1.18, behind a
/// pointer to a string header before.
fn build_version(obj: &object::File<'_>, d: &[u8]) -> Option<String> {
    if d.len() < 32 || &d[..14] != b"\xff Go buildinf:" {
        return None;
    }
    let ptr_size = usize::from(d[14]);
    let flags = d[15];
    if flags & 2 != 0 {
        let (len, used) = uvarint(&d[32..])?;
        let s = d.get(32 + used..32 + used + usize::try_from(len).ok()?)?;
        return String::from_utf8(s.to_vec()).ok();
    }
    if flags & 1 != 0 || ptr_size != 8 {
        return None;
    }
    let hdr_addr = u64::from_le_bytes(d.get(16..24)?.try_into().ok()?);
    let hdr = read_vaddr(obj, hdr_addr, 16)?;
    let ptr = u64::from_le_bytes(hdr.get(..8)?.try_into().ok()?);
    let len = u64::from_le_bytes(hdr.get(8..16)?.try_into().ok()?);
    let s = read_vaddr(obj, ptr, len.min(64))?;
    String::from_utf8(s.to_vec()).ok()
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// A function's code and the file offset of its first byte.
fn code_of<'d>(obj: &object::File<'d>, addr: u64, size: u64) -> Option<(&'d [u8], u64)> {
    let section = obj.sections().find(|s| {
        s.kind() == SectionKind::Text && addr >= s.address() && addr < s.address() + s.size()
    })?;
    let (file_start, _) = section.file_range()?;
    let code = section.data_range(addr, size).ok().flatten()?;
    Some((code, file_start + (addr - section.address())))
}

/// A function's instructions: (offset from its start, mnemonic).
fn decode(code: &[u8], addr: u64) -> Vec<(u64, Mnemonic)> {
    Decoder::with_ip(64, code, addr, DecoderOptions::NONE)
        .into_iter()
        .map(|insn| (insn.ip() - addr, insn.mnemonic()))
        .collect()
}

/// The offset (from the function's start) of the one direct call to
/// `target` in a function's code; None when there is none or more than
/// one. Read's call to `runtime.memmove` copies the record's plaintext to
/// the caller's buffer: a probe on that `call` (an instruction the kernel
/// emulates: one trap) sees the plaintext and its length in the call's
/// argument registers, where a probe on each RET is single-stepped (two
/// traps, ~10 µs each on a VM).
fn only_call_to(code: &[u8], addr: u64, target: u64) -> Option<u64> {
    let mut calls = Decoder::with_ip(64, code, addr, DecoderOptions::NONE)
        .into_iter()
        .filter(|i| i.mnemonic() == Mnemonic::Call && i.near_branch_target() == target)
        .map(|i| i.ip() - addr);
    let first = calls.next()?;
    calls.next().is_none().then_some(first)
}

/// The offsets of a function's RET instructions (from its start).
fn ret_offsets(insns: &[(u64, Mnemonic)]) -> Vec<u64> {
    insns
        .iter()
        .filter(|(_, m)| *m == Mnemonic::Ret)
        .map(|(off, _)| *off)
        .collect()
}

/// Where an entry probe goes, with its cookie bits: on the prologue's
/// stack check branch (`cmp` of the stack pointer, or of R12 after `lea`,
/// with the goroutine's stack guard, then `jbe` to `morestack`), a branch
/// the kernel emulates where the instruction after it (`sub rsp`) would be
/// single-stepped: one trap per call instead of two. A goroutine whose
/// stack must grow passes the branch twice (morestack restarts the
/// function on the new stack): [`GO_AT_STACK_CHECK`] tells the programs to
/// pass over the first. The argument registers and the stack pointer are
/// those of the entry. The entry when no check is found (no bits).
fn entry_point(insns: &[(u64, Mnemonic)]) -> (u64, u64) {
    insns
        .iter()
        .take(6)
        .find(|(_, m)| *m == Mnemonic::Jbe)
        .map_or((0, 0), |(off, _)| (*off, GO_AT_STACK_CHECK))
}

/// The offsets that have held since Go 1.12; the read-ahead buffers' place
/// in `tls.Conn` changes between releases, and is known only for the
/// releases checked against their DWARF (amd64).
fn fallback_layout(minor: u32) -> GoTlsFile {
    // go1.19.8 (Debian 12's golang-1.19).
    let read_ahead = (minor == 19).then_some((632, 672, 24));
    tls_layout(0, 0, 16, read_ahead)
}

/// A debug section, decompressed when the linker compressed it (Go
/// compresses DWARF with zlib by default).
fn debug_section<'d>(obj: &object::File<'d>, name: &str) -> Option<Cow<'d, [u8]>> {
    let Some(s) = obj.section_by_name(name) else {
        return Some(Cow::Borrowed(&[]));
    };
    let c = s.compressed_data().ok()?;
    match c.format {
        CompressionFormat::None => Some(Cow::Borrowed(c.data)),
        CompressionFormat::Zlib => {
            use std::io::Read;
            let mut out = Vec::with_capacity(usize::try_from(c.uncompressed_size).ok()?);
            flate2::read::ZlibDecoder::new(c.data)
                .read_to_end(&mut out)
                .ok()?;
            Some(Cow::Owned(out))
        }
        _ => None,
    }
}

/// The offsets of struct members `wanted` ((struct, member) pairs), from
/// the program's DWARF; None without DWARF.
fn dwarf_members(obj: &object::File<'_>, wanted: &[(&str, &str)]) -> Option<Vec<Option<u64>>> {
    if obj.kind() != ObjectKind::Executable && obj.kind() != ObjectKind::Dynamic {
        return None;
    }
    obj.section_by_name(".debug_info")?;
    let mut sections = Vec::new();
    for id in [
        gimli::SectionId::DebugInfo,
        gimli::SectionId::DebugAbbrev,
        gimli::SectionId::DebugStr,
    ] {
        sections.push((id, debug_section(obj, id.name())?));
    }
    let dwarf = gimli::Dwarf::load(
        |id| -> Result<EndianSlice<'_, LittleEndian>, gimli::Error> {
            let data = sections
                .iter()
                .find(|(s, _)| *s == id)
                .map_or(&[][..], |(_, d)| &d[..]);
            Ok(EndianSlice::new(data, LittleEndian))
        },
    )
    .ok()?;
    let mut found: Vec<Option<u64>> = vec![None; wanted.len()];
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        // Not `dwarf.unit()`: that also parses the line program, which is
        // not needed (and not decompressed).
        let Ok(abbrevs) = dwarf.abbreviations(&header) else {
            continue;
        };
        let mut entries = header.entries(&abbrevs);
        // The struct being read and its depth.
        let mut current: Option<(String, isize)> = None;
        while let Ok(Some(e)) = entries.next_dfs() {
            let depth = e.depth();
            if current.as_ref().is_some_and(|(_, d)| depth <= *d) {
                current = None;
            }
            let name = || {
                e.attr_value(gimli::DW_AT_name)
                    .and_then(|v| match v {
                        gimli::AttributeValue::String(s) => Some(s),
                        _ => None,
                    })
                    .map(|s| s.to_string_lossy().into_owned())
            };
            match e.tag() {
                gimli::DW_TAG_structure_type => {
                    if let Some(n) = name() {
                        if wanted.iter().any(|(s, _)| *s == n) {
                            current = Some((n, depth));
                        }
                    }
                }
                gimli::DW_TAG_member => {
                    let Some((s, d)) = current.as_ref() else {
                        continue;
                    };
                    if depth != d + 1 {
                        continue;
                    }
                    let Some(m) = name() else { continue };
                    let off = e
                        .attr_value(gimli::DW_AT_data_member_location)
                        .and_then(|v| v.udata_value());
                    for (i, (ws, wm)) in wanted.iter().enumerate() {
                        if ws == s && *wm == m {
                            found[i] = found[i].or(off);
                        }
                    }
                }
                _ => {}
            }
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    Some(found)
}

/// Member offsets of the structs the TLS probes walk, from DWARF.
fn dwarf_layout(m: &Members) -> Option<GoTlsFile> {
    // The socket's path must be complete; the read-ahead buffers are
    // optional (reads then carry no sequence number of their own).
    let (tcp_fd, sysfd) = m.socket()?;
    let read_ahead = match (m.get(TLS_RAW_INPUT), m.get(TLS_INPUT), m.get(READER_I)) {
        (Some(r), Some(i), Some(ri)) => Some((r, i, ri)),
        _ => None,
    };
    Some(tls_layout(m.get(TLS_CONN)?, tcp_fd, sysfd, read_ahead))
}

/// The offsets of `GoTlsFile`: `tls.Conn.conn`, the socket's path, and the
/// read-ahead buffers (`rawInput`, `input`, `bytes.Reader.i`) when known.
fn tls_layout(
    conn: u32,
    tcp_fd: u32,
    sysfd: u32,
    read_ahead: Option<(u32, u32, u32)>,
) -> GoTlsFile {
    let (raw_input, input, reader_i) = read_ahead.unwrap_or((GO_OFF_UNKNOWN, GO_OFF_UNKNOWN, 24));
    GoTlsFile {
        conn,
        tcp_fd,
        sysfd,
        raw_input,
        input,
        reader_i,
        ..GoTlsFile::default()
    }
}

/// Struct members the probes read, as (struct, member) in DWARF.
const TCP_CONN_CONN: (&str, &str) = ("net.TCPConn", "conn");
const CONN_FD: (&str, &str) = ("net.conn", "fd");
const NETFD_PFD: (&str, &str) = ("net.netFD", "pfd");
const FD_SYSFD: (&str, &str) = ("internal/poll.FD", "Sysfd");
const TLS_CONN: (&str, &str) = ("crypto/tls.Conn", "conn");
const TLS_RAW_INPUT: (&str, &str) = ("crypto/tls.Conn", "rawInput");
const TLS_INPUT: (&str, &str) = ("crypto/tls.Conn", "input");
const READER_I: (&str, &str) = ("bytes.Reader", "i");
const RESPONSE_CONN: (&str, &str) = ("net/http.response", "conn");
const CONN_RWC: (&str, &str) = ("net/http.conn", "rwc");
const PCONN_CONN: (&str, &str) = ("net/http.persistConn", "conn");
/// The socket's path, which the TLS probes and the hooks both walk.
const SOCKET_MEMBERS: [(&str, &str); 4] = [TCP_CONN_CONN, CONN_FD, NETFD_PFD, FD_SYSFD];
/// What the TLS probes walk besides (the read-ahead buffers optional).
const TLS_MEMBERS: [(&str, &str); 4] = [TLS_CONN, TLS_RAW_INPUT, TLS_INPUT, READER_I];
/// What the net/http hooks walk besides.
const HOOK_MEMBERS: [(&str, &str); 3] = [RESPONSE_CONN, CONN_RWC, PCONN_CONN];

/// net/http's functions the runtime hooks probe.
const SERVE: &str = "net/http.serverHandler.ServeHTTP";
const NEWPROC: &str = "runtime.newproc1";
const ROUND_TRIP: &str = "net/http.(*persistConn).roundTrip";
/// The itab of `*net/http.response` as a `ResponseWriter` (the linker's
/// name changed in Go 1.22).
const RESPONSE_ITABS: [&str; 2] = [
    "go.itab.*net/http.response,net/http.ResponseWriter",
    "go:itab.*net/http.response,net/http.ResponseWriter",
];

/// `*net/http.response`'s methods of `ResponseWriter`, in the order of
/// their names.
const RESPONSE_METHODS: [&str; 3] = [
    "net/http.(*response).Header",
    "net/http.(*response).Write",
    "net/http.(*response).WriteHeader",
];
/// `*net/http.persistConn`'s method of `io.Reader` (its `bufio.Reader`
/// reads through it): the itab that leads to its type.
const PERSIST_CONN_READ: [&str; 1] = ["net/http.(*persistConn).Read"];

/// The members the hooks read, where they were found.
struct HookOffsets {
    response_conn: Option<u32>,
    conn_rwc: Option<u32>,
    pconn_conn: Option<u32>,
    tcp_fd: Option<u32>,
    sysfd: Option<u32>,
}

/// [`HookOffsets`] from the runtime's type descriptors (see `gotypes`):
/// `response` from its itab's type, `conn` from `response.conn`'s,
/// `persistConn` from the itab holding one as an `io.Reader`.
fn hook_type_offsets(
    t: &Types<'_, '_>,
    tab: &FuncTab<'_>,
    response_itab: u64,
    tcp_type: u64,
) -> HookOffsets {
    let response = t.elem(t.itab_type(response_itab));
    let conn = response.and_then(|r| t.field(r, "conn"));
    let rwc = conn.and_then(|(_, c)| t.field(t.elem(c)?, "rwc"));
    let pconn = t
        .itab_of(tab, &PERSIST_CONN_READ)
        .and_then(|i| t.elem(t.itab_type(i)))
        .and_then(|p| t.offset(p, &["conn"]));
    let socket = socket_offsets(t, tcp_type);
    let small = |v: u64| u32::try_from(v).ok();
    HookOffsets {
        response_conn: conn.and_then(|(o, _)| small(o)),
        conn_rwc: rwc.and_then(|(o, _)| small(o)),
        pconn_conn: pconn.and_then(small),
        tcp_fd: socket.map(|s| s.0),
        sysfd: socket.map(|s| s.1),
    }
}

/// What a Go executable offers the net/http runtime hooks.
#[derive(Debug)]
pub struct GoHooks {
    /// The Go release that built it.
    pub version: String,
    /// Addresses and offsets for the probes (`GO_HOOK_FILES`).
    pub layout: GoHookFile,
    /// Entries and every RET.
    pub probes: Vec<Probe>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::gotls::GO_WRAPPERS_MAX;

    const TLS: Wanted = Wanted {
        tls: true,
        hooks: false,
    };
    const HOOKS: Wanted = Wanted {
        tls: false,
        hooks: true,
    };
    const BOTH: Wanted = Wanted {
        tls: true,
        hooks: true,
    };

    fn inspect(obj: &object::File<'_>) -> GoFile {
        read(obj, TLS).tls()
    }

    fn http_hooks(obj: &object::File<'_>) -> Result<Option<GoHooks>, &'static str> {
        read(obj, HOOKS).http_hooks()
    }

    /// `tests/go/PROGRAM.go` built with the host's Go and `ldflags`, in
    /// `dir`; None (a printed skip) without Go outside CI.
    fn built(dir: &std::path::Path, program: &str, ldflags: &str) -> Option<Vec<u8>> {
        built_as(dir, program, &["-ldflags", ldflags])
    }

    /// `tests/go/PROGRAM.go` built with `go build ARGS`.
    fn built_as(dir: &std::path::Path, program: &str, args: &[&str]) -> Option<Vec<u8>> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = dir.join(format!("{program}{}", args.join("")));
        let status = std::process::Command::new("go")
            .arg("build")
            .args(args)
            .arg("-o")
            .arg(&out)
            .arg(root.join(format!("tests/go/{program}.go")))
            .env("GO111MODULE", "off")
            .env("GOPATH", dir.join("gopath"))
            .env("GOCACHE", root.join("target/go-cache"))
            .status();
        match status {
            Ok(s) if s.success() => std::fs::read(&out).ok(),
            _ if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("go build failed in CI: {status:?}")
            }
            _ => {
                eprintln!("SKIP: no Go toolchain to build a test program");
                None
            }
        }
    }

    /// `tests/go/PROGRAM.go` built as is and stripped (`-s -w`).
    fn with_and_without_symbols(program: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        let dir = std::env::temp_dir().join(format!("tracer-go-{program}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let full = built(&dir, program, "");
        let stripped = built(&dir, program, "-s -w");
        let _ = std::fs::remove_dir_all(&dir);
        Some((full?, stripped?))
    }

    /// `program` with and without symbols: the function table names what
    /// the symbol table does, the itab is found, both probed alike.
    fn stripped_alike(dir: &std::path::Path, program: &str) -> Option<()> {
        let full = built(dir, program, "")?;
        let stripped = built(dir, program, "-s -w")?;
        let full = object::File::parse(&*full).unwrap();
        let stripped = object::File::parse(&*stripped).unwrap();
        assert_eq!(stripped.symbols().count(), 0);
        let tab = FuncTab::parse(&full).unwrap();
        let mut names = vec![WRITE, READ, "runtime.unreachableMethod"];
        names.extend(TCP_CONN_METHODS);
        let found = tab.find(&names);
        for (name, got) in names.iter().zip(&found) {
            // A method the program never calls is not linked in.
            let Some(sym) = full.symbols().find(|s| s.name() == Ok(name)) else {
                assert!(got.is_none(), "{program}: {name}");
                continue;
            };
            let (addr, size) = got.unwrap_or_else(|| panic!("{program}: {name} not in the table"));
            assert_eq!(addr, sym.address(), "{program}: {name}");
            // Sizes reach the next function.
            assert!(
                size >= sym.size() && size < sym.size() + 64,
                "{name}: {size}"
            );
        }
        let itab = full
            .symbols()
            .find(|s| s.name().is_ok_and(|n| TCP_ITABS.contains(&n)))
            .unwrap()
            .address();
        assert_eq!(
            Types::new(&full, 19).itab_of(&tab, &TCP_CONN_METHODS),
            Some(itab),
            "{program}"
        );
        // The same build lays code and data out alike with or without
        // symbols: the same probes.
        let (GoFile::Covered(a), GoFile::Covered(b)) = (inspect(&full), inspect(&stripped)) else {
            panic!("{program} not covered: {:?}", inspect(&stripped));
        };
        assert!(a.symbols && !b.symbols);
        assert_eq!(a.probes, b.probes, "{program}");
        // The type descriptors give the offsets DWARF gives.
        assert_eq!(
            (a.offsets, b.offsets),
            (Offsets::Dwarf, Offsets::TypeDescriptors)
        );
        assert_eq!(a.layout, b.layout, "{program}");
        assert_ne!(b.layout.raw_input, GO_OFF_UNKNOWN);
        assert_ne!(b.layout.tcp_type, 0);
        // A table of a layout this reader does not know: reported, not
        // guessed at.
        let mut odd = built(dir, program, "-s -w")?;
        let at = stripped
            .section_by_name(".gopclntab")
            .unwrap()
            .file_range()
            .unwrap()
            .0 as usize;
        odd[at..at + 4].copy_from_slice(&0xffff_fffbu32.to_le_bytes());
        match inspect(&object::File::parse(&*odd).unwrap()) {
            GoFile::NotCovered { reason, version } => {
                assert!(reason.contains("function table"), "{reason}");
                assert!(version.is_some_and(|v| v.starts_with("go1.")));
            }
            other => panic!("{other:?}"),
        }
        Some(())
    }

    #[test]
    fn stripped_programs_are_probed_where_their_symbols_say() {
        let dir = std::env::temp_dir().join(format!("tracer-gofunctab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The client's linker dropped methods of the itab the server keeps.
        for program in ["tls_server", "tls_client"] {
            if stripped_alike(&dir, program).is_none() {
                break;
            }
        }
        // Position-independent: the pointers are in the relocations, the
        // tables under .data.rel.ro; the offsets are the same.
        let full = built(&dir, "tls_server", "");
        let pie = built_as(&dir, "tls_server", &["-buildmode=pie", "-ldflags=-s -w"]);
        let _ = std::fs::remove_dir_all(&dir);
        let (Some(full), Some(pie)) = (full, pie) else {
            return;
        };
        let (GoFile::Covered(a), GoFile::Covered(b)) = (
            inspect(&object::File::parse(&*full).unwrap()),
            inspect(&object::File::parse(&*pie).unwrap()),
        ) else {
            panic!("PIE not covered");
        };
        assert_eq!((b.offsets, b.symbols), (Offsets::TypeDescriptors, false));
        // The server's PROXY-protocol wrapper holds its connection after
        // fields of its own: followed through the field DWARF names.
        let obj = object::File::parse(&*full).unwrap();
        let itab = obj
            .symbols()
            .find(|s| {
                s.name()
                    .is_ok_and(|n| n.ends_with("itab.*main.proxied,main.writeCloser"))
            })
            .expect("the wrapper's itab")
            .address();
        let proxied = Types::new(&obj, 19).itab_type(itab);
        let conn = dwarf_members(&obj, &[("main.proxied", "conn")]).unwrap()[0].unwrap();
        let GoFile::Covered(full_probes) = inspect(&obj) else {
            panic!("not covered");
        };
        let w = full_probes.layout.wrappers;
        let i = w.slot(proxied);
        assert_ne!(conn, 0);
        assert_eq!((w.types[i], u64::from(w.offsets[i])), (proxied, conn));
        let offsets = |l: &GoTlsFile| (l.conn, l.tcp_fd, l.sysfd, l.raw_input, l.input, l.reader_i);
        assert_eq!(offsets(&a.layout), offsets(&b.layout));
        assert!(b.layout.tcp_itab != 0 && b.layout.tcp_type != 0);
        // Read's end at its copy, which the probes are told.
        for p in [&a, &b] {
            assert!(p.probes.iter().any(|x| x.0 == programs::COPY));
            assert_eq!(p.layout.read_end_at_copy, 1);
        }
    }

    #[test]
    fn stripped_programs_get_the_runtime_hooks_their_symbols_give() {
        let Some((full, stripped)) = with_and_without_symbols("timer_proxy") else {
            return;
        };
        let full = object::File::parse(&*full).unwrap();
        let stripped = object::File::parse(&*stripped).unwrap();
        let a = http_hooks(&full).unwrap().unwrap();
        let b = http_hooks(&stripped).unwrap().unwrap();
        // Functions, itabs and offsets (DWARF's against the type
        // descriptors') alike, the client's roundTrip included.
        assert_eq!(a.layout, b.layout);
        assert_eq!(a.probes, b.probes);
        assert!(b.layout.pconn_conn != 0 && b.layout.round_trip_entry != 0);
        assert!(b
            .probes
            .iter()
            .any(|(p, _, _)| *p == programs_hook::GO_ROUND_TRIP));
    }

    /// A program read once for both gets the probes and hooks it gets read
    /// for each alone: the one DWARF search for both finds each's members.
    #[test]
    fn one_read_serves_the_tls_probes_and_the_hooks() {
        let Some((full, stripped)) = with_and_without_symbols("tls_server") else {
            return;
        };
        for (data, offsets) in [(full, Offsets::Dwarf), (stripped, Offsets::TypeDescriptors)] {
            let obj = object::File::parse(&*data).unwrap();
            let both = read(&obj, BOTH);
            let (GoFile::Covered(a), GoFile::Covered(b)) = (both.tls(), inspect(&obj)) else {
                panic!("not covered");
            };
            assert_eq!(a.offsets, offsets);
            assert_eq!(
                (a.layout, a.probes, a.offsets),
                (b.layout, b.probes, b.offsets)
            );
            let a = both.http_hooks().unwrap().expect("a net/http server");
            let b = http_hooks(&obj).unwrap().unwrap();
            assert_eq!((a.layout, a.probes), (b.layout, b.probes));
        }
    }

    #[test]
    fn wrapper_types_get_entries_of_their_own() {
        // traefik 3.7.15's three: two shared an entry of the fixed hash.
        let traefik = [(0x6edf1a0, 30), (0x6bb69c0, 28), (0x6bbe360, 8)];
        let mut many: Vec<(u64, u32)> = (0..12).map(|i| (0x6b0_0000 + i * 0x1e0, 8)).collect();
        for found in [&traefik[..], &many[..]] {
            let (w, placed) = place_wrappers(found);
            assert_eq!(placed, found.len());
            for &(typ, offset) in found {
                let i = w.slot(typ);
                assert_eq!((w.types[i], w.offsets[i]), (typ, offset));
            }
            // A type not in the table finds no entry.
            assert!(w.types[w.slot(0x6c0_0008)] != 0x6c0_0008);
        }
        // More than the table holds: it is full, each entry right.
        many.extend((0..10).map(|i| (0x700_0000 + i * 0x40, 16)));
        let (w, placed) = place_wrappers(&many);
        assert_eq!(placed, GO_WRAPPERS_MAX);
        for &(typ, offset) in &many {
            let i = w.slot(typ);
            if w.types[i] == typ {
                assert_eq!(w.offsets[i], offset);
            }
        }
        assert_eq!(place_wrappers(&[]).1, 0);
    }

    #[test]
    fn go_versions() {
        assert_eq!(go_minor("go1.19.8"), Some(19));
        assert_eq!(go_minor("go1.17"), Some(17));
        assert_eq!(go_minor("go1.22rc1"), Some(22));
        assert_eq!(go_minor("devel +abc"), None);
    }

    #[test]
    fn uvarints() {
        assert_eq!(uvarint(&[0x08, 0xff]), Some((8, 1)));
        assert_eq!(uvarint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(uvarint(&[0x80]), None);
    }

    #[test]
    fn the_one_call_to_a_function_is_found() {
        // nop; call 0x2000; call 0x3000; call 0x3000; ret (at 0x1000)
        let code = [
            0x90, 0xe8, 0xfa, 0x0f, 0x00, 0x00, 0xe8, 0xf5, 0x1f, 0x00, 0x00, 0xe8, 0xf0, 0x1f,
            0x00, 0x00, 0xc3,
        ];
        assert_eq!(only_call_to(&code, 0x1000, 0x2000), Some(1));
        // Two calls: which one copies is not known.
        assert_eq!(only_call_to(&code, 0x1000, 0x3000), None);
        assert_eq!(only_call_to(&code, 0x1000, 0x4000), None);
    }

    #[test]
    fn rets_are_found_and_not_bytes_inside_other_instructions() {
        // mov eax, 0xc3c3c3c3; ret; nop; ret
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3, 0x90, 0xc3];
        assert_eq!(ret_offsets(&decode(&code, 0x1000)), vec![5, 7]);
    }

    #[test]
    fn entry_probes_sit_on_the_stack_checks_branch() {
        // lea r12,[rsp-0x68]; cmp r12,[r14+0x10]; jbe +0x10; sub rsp,0xe8
        let code = [
            0x4c, 0x8d, 0x64, 0x24, 0x98, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x10, 0x00, 0x00,
            0x00, 0x48, 0x81, 0xec, 0xe8, 0x00, 0x00, 0x00,
        ];
        assert_eq!(
            entry_point(&decode(&code, 0x5a2fc0)),
            (9, GO_AT_STACK_CHECK)
        );
        // No check (a leaf): the entry, no bits.
        assert_eq!(entry_point(&decode(&[0x90, 0xc3], 0)), (0, 0));
    }
}
