//! Go's crypto/tls: what the agent tells the probes about each Go
//! executable, and the program names.

/// Names of the Go TLS programs.
pub mod programs {
    /// `crypto/tls.(*Conn).Write` entry.
    pub const WRITE: &str = "go_tls_write";
    /// `crypto/tls.(*Conn).Read` entry.
    pub const READ: &str = "go_tls_read";
    /// Every RET instruction of Read (Go code gets no uretprobes: a
    /// goroutine's stack moves, and the return address with it), where
    /// [`COPY`] cannot be placed.
    pub const RET: &str = "go_tls_ret";
    /// Read's one call to `runtime.memmove`, which copies the plaintext to
    /// the caller's buffer (one trap; a RET is single-stepped).
    pub const COPY: &str = "go_tls_copy";
}

/// Go executables attached at once (slots of the `GO_TLS_FILES` array, one
/// per file; the attach cookie of each probe is its file's slot).
pub const GO_TLS_FILES_MAX: u32 = 256;

/// Set in the attach cookie of an entry probe that sits on the stack
/// check's `jbe` (a branch the kernel's uprobes emulate: one trap, no
/// single step), not at the body: the programs return at once when the
/// branch is going to `morestack` (CF or ZF set), which restarts the
/// function, so each call is seen once. The file's slot is the cookie's
/// low 32 bits.
pub const GO_AT_STACK_CHECK: u64 = 1 << 32;

/// Go TLS calls in progress (an LRU map keyed by process and goroutine).
pub const GO_TLS_CALLS_MAX: u32 = 16384;

/// Bytes of a `GO_TLS_CALLS` value (a call's state, private to the eBPF
/// side): user space removes the calls of processes that exited.
pub const GO_CALL_BYTES: usize = 56;

/// The byte of a `GO_TLS_CALLS` value that is 1 while its call runs, 0
/// once it ended: an entry stays after its call and the goroutine's next
/// Read rewrites it in place (a lookup, where an insert then a remove
/// took a node from the map's free list and gave it back: 270 ns of a
/// Read's entry here).
pub const GO_CALL_LIVE: usize = 55;

/// [`GO_CALL_LIVE`]'s byte while the call runs.
pub const GO_CALL_RUNNING: u8 = 1;

/// [`GO_CALL_LIVE`]'s byte once a Read ended that the probes did not see
/// begin (entered before they were attached: net/http parks a Read on every
/// idle connection) and that moved bytes: the goroutine's next Read says
/// so on its connection ([`crate::TLS_READ_LOST`]). Not a running call.
pub const GO_CALL_AFTER_LOSS: u8 = 2;

/// `*tls.Conn`s whose socket is remembered (an LRU map keyed by process
/// and connection: the walk from a connection to its socket costs a
/// dozen reads).
pub const GO_TLS_SOCKS_MAX: u32 = 8192;

/// Bytes of a `GO_TLS_SOCKS` value (private to the eBPF side, keyed like
/// `GO_TLS_CALLS`: process, then the `*tls.Conn`): user space removes the
/// connections of processes that exited.
pub const GO_SOCK_BYTES: usize = 24;

/// A struct offset the binary did not give (the value is then not read).
pub const GO_OFF_UNKNOWN: u32 = u32::MAX;

/// Connection wrappers followed per executable (see [`GoWrappers`]; a
/// power of two, the hash's range).
pub const GO_WRAPPERS_MAX: usize = 16;
const _: () = assert!(GO_WRAPPERS_MAX.is_power_of_two());

/// Connection types of one Go executable that hold the connection they
/// wrap in a field other than their first (a wrapper holding it first is
/// followed without an entry): link-time type descriptor addresses, 0 for
/// an unused entry, and that field's offset; each type at its
/// [`GoWrappers::slot`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoWrappers {
    /// Link-time addresses of the wrapper types' descriptors (0: unused).
    pub types: [u64; GO_WRAPPERS_MAX],
    /// Offset of the wrapped connection (an interface value) in each.
    pub offsets: [u32; GO_WRAPPERS_MAX],
    /// The hash's multiplier (odd), chosen per executable so that its
    /// wrapper types fall in entries of their own.
    pub mul: u64,
}

impl GoWrappers {
    /// The entry of type `typ` (a link-time address): a multiplicative
    /// hash, so the probes look at one entry per wrapper level.
    #[inline(always)]
    pub fn slot(&self, typ: u64) -> usize {
        let bits = GO_WRAPPERS_MAX.trailing_zeros();
        ((typ >> 3).wrapping_mul(self.mul) >> (64 - bits)) as usize & (GO_WRAPPERS_MAX - 1)
    }
}

/// Where the probes find things in one Go executable: link-time addresses
/// and struct member offsets, from its symbol table and DWARF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoTlsFile {
    /// Link-time address of `(*Conn).Write`'s entry.
    pub write_entry: u64,
    /// Link-time address of `(*Conn).Read`'s entry.
    pub read_entry: u64,
    /// Link-time address of the itab of `*net.TCPConn` as a `net.Conn`: a
    /// `tls.Conn` over anything else is not followed (0: none in the binary).
    pub tcp_itab: u64,
    /// Link-time address of `*net.TCPConn`'s type descriptor (the itab's
    /// concrete type): a connection type wrapping one is followed down to
    /// it (0: unknown).
    pub tcp_type: u64,
    /// `crypto/tls.Conn.conn` (a `net.Conn`: itab word, data word).
    pub conn: u32,
    /// `net.TCPConn` -> its `*net.netFD` (`TCPConn.conn.fd`).
    pub tcp_fd: u32,
    /// `net.netFD` -> `poll.FD.Sysfd` (`netFD.pfd.Sysfd`).
    pub sysfd: u32,
    /// `crypto/tls.Conn.rawInput` (a `bytes.Buffer`: ciphertext read from
    /// the socket, not yet decrypted), or [`GO_OFF_UNKNOWN`].
    pub raw_input: u32,
    /// `crypto/tls.Conn.input` (a `bytes.Reader`: plaintext decrypted, not
    /// yet returned), or [`GO_OFF_UNKNOWN`].
    pub input: u32,
    /// `bytes.Reader.i` (its `s` slice is at 0).
    pub reader_i: u32,
    /// 1: Read's end is probed at its copy ([`programs::COPY`]), which
    /// gives the plaintext's address: its entry need not note whether the
    /// caller's buffer is on the goroutine's stack (which moves when it
    /// grows). 0: at its RETs.
    pub read_end_at_copy: u32,
    /// Padding, zero.
    pub _pad: u32,
    /// Wrappers between `conn` and the `*net.TCPConn`.
    pub wrappers: GoWrappers,
}

/// Key of `GO_TLS_CALLS`: a process and one of its goroutines (the
/// address of its `g`); of `GO_TLS_SOCKS`: a process and one of its
/// `*tls.Conn`s.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoCallKey {
    /// Process id.
    pub pid: u64,
    /// The goroutine.
    pub g: u64,
}

/// Names of the globals the agent sets before load for the Go probes:
/// offsets from the running kernel's BTF, to go from a file descriptor to
/// its socket (current task -> files -> fdtable -> file -> socket -> sock).
pub mod globals {
    /// `u32`: `task_struct.files`.
    pub const OFF_TASK_FILES: &str = "OFF_TASK_FILES";
    /// `u32`: `files_struct.fdt`.
    pub const OFF_FILES_FDT: &str = "OFF_FILES_FDT";
    /// `u32`: `fdtable.max_fds`.
    pub const OFF_FDT_MAX_FDS: &str = "OFF_FDT_MAX_FDS";
    /// `u32`: `fdtable.fd`.
    pub const OFF_FDT_FD: &str = "OFF_FDT_FD";
    /// `u32`: `file.private_data`.
    pub const OFF_FILE_PRIVATE: &str = "OFF_FILE_PRIVATE";
    /// `u32`: `socket.file` (checked to point back: the file is a socket).
    pub const OFF_SOCKET_FILE: &str = "OFF_SOCKET_FILE";
    /// `u32`: `socket.sk`.
    pub const OFF_SOCKET_SK: &str = "OFF_SOCKET_SK";
    /// `u32`: `sock.sk_protocol`.
    pub const OFF_SK_PROTOCOL: &str = "OFF_SK_PROTOCOL";
}

const _: () = {
    assert!(core::mem::size_of::<GoTlsFile>() == 64 + 200);
};

#[cfg(feature = "user")]
// SAFETY: repr(C), only integers, every bit pattern valid.
unsafe impl aya::Pod for GoTlsFile {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for GoCallKey {}
