//! The kernel/user ABI of the tracer: every record the eBPF programs write to
//! the ring buffer, the drop-counter indices and the tunables set before load.
//!
//! Both sides compile this one crate, so nothing is mirrored by hand. Every
//! record starts with a [`Tag`] byte so the reader can tell them apart; sizes
//! and offsets are pinned by compile-time asserts, and the host tests
//! round-trip bytes through [`Record::parse`].
#![no_std]
#![deny(missing_docs)]

use core::mem::size_of;

pub mod gotls;

/// Largest payload prefix a segment record can carry. The per-packet copy
/// length ([`SNAP_LEN_DEFAULT`], configurable at load) is clamped to this.
pub const MAX_SNAP_LEN: usize = 8192;

/// Default number of payload bytes copied per TCP packet.
///
/// 1 KiB holds the request line and headers of ordinary HTTP/1 requests and
/// responses (including `traceparent`, `b3`, `x-request-id` and a modest
/// cookie) and whole HTTP/2 HEADERS frames, while keeping the per-packet
/// copy and the ring-buffer traffic small: the kernel copies only what the
/// packet holds, so small messages cost no more than before.
pub const SNAP_LEN_DEFAULT: u32 = 1024;

/// First byte of every ring-buffer record.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// A [`SockOp`]: one send or receive call on a TCP socket.
    SockOp = 1,
    /// A [`ConnState`]: a TCP state change with the 4-tuple.
    ConnState = 2,
    /// A [`SegmentHeader`] followed by the captured payload prefix.
    Segment = 3,
    /// A [`SampleHeader`] followed by the copied top of the user stack.
    Sample = 4,
    /// A [`SockTotals`]: what the kernel counted for a socket it stopped
    /// reporting in detail, at the socket's close.
    SockTotals = 5,
    /// An empty record that only wakes the reader (never decoded).
    Wakeup = 6,
    /// A [`TlsData`] followed by the captured plaintext prefix.
    TlsData = 7,
    /// A [`Cause`]: what a runtime hook saw a process do for a request.
    Cause = 8,
    /// An [`Exec`]: a process started another program.
    Exec = 9,
}

/// A process replaced its program (`execve`), seen at the scheduler's
/// `sched_process_exec` tracepoint: from `ts_ns` on, its name, command
/// line and executable are the new program's (a shell wrapper or a
/// version manager's shim that execs the real program keeps its pid).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exec {
    /// [`Tag::Exec`].
    pub tag: u8,
    /// Padding, zero.
    pub _pad: [u8; 3],
    /// Process id (tgid).
    pub pid: u32,
    /// `bpf_ktime_get_ns` when the new program was in place.
    pub ts_ns: u64,
}

/// What a runtime hook (a uprobe inside a server program, see
/// [`hook_programs`]) saw: a thread starting and finishing the work that
/// sends one request upstream, and the connections it opened meanwhile.
/// Everything a thread does between [`CAUSE_ENTER`] and [`CAUSE_LEAVE`] is
/// for the request being served on connection `cookie`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cause {
    /// [`Tag::Cause`].
    pub tag: u8,
    /// [`CAUSE_ENTER`], [`CAUSE_LEAVE`] or [`CAUSE_CONNECT`].
    pub kind: u8,
    /// Padding, zero.
    pub _pad: [u8; 2],
    /// Process id (tgid).
    pub pid: u32,
    /// `bpf_ktime_get_ns` when it happened.
    pub ts_ns: u64,
    /// Thread id.
    pub tid: u32,
    /// Padding, zero.
    pub _pad2: u32,
    /// Enter: cookie of the TCP connection the request being served came
    /// on. Connect: cookie of the connection the thread opened.
    pub cookie: u64,
    /// Connect: cookie of the connection of the request being served.
    pub cause: u64,
    /// Connect: when the work for that request began (0: at `ts_ns`);
    /// the request was in flight then.
    pub since_ns: u64,
}

/// [`Cause::kind`]: the thread starts work for the request on `cookie`.
pub const CAUSE_ENTER: u8 = 1;
/// [`Cause::kind`]: the thread is done with that work.
pub const CAUSE_LEAVE: u8 = 2;
/// [`Cause::kind`]: inside that work, the thread opened connection
/// `cookie` (a `connect()`), or chose it for its next request (Go's
/// `persistConn.roundTrip`), for the request on `cause`: the next request
/// written on `cookie` is made for it.
pub const CAUSE_CONNECT: u8 = 3;

/// [`Cause::kind`]: the thread starts stepping asyncio task `cookie` (the
/// task object's address).
pub const CAUSE_TASK_ENTER: u8 = 4;
/// [`Cause::kind`]: the thread is done stepping it.
pub const CAUSE_TASK_LEAVE: u8 = 5;
/// [`Cause::kind`]: asyncio task `cookie` was created while task `cause`
/// was being stepped on the thread (0: outside any task).
pub const CAUSE_TASK_CREATE: u8 = 6;

/// Attach cookie of the asyncio task-entry probe: the task is the third
/// argument of `enter_task` (Python 3.12+: `state, loop, task`), not the
/// second (3.11: `loop, task`).
pub const PY_TASK_ARG3: u64 = 1;

/// Threads that can be inside a hooked function at once (an LRU map by
/// thread).
pub const CAUSE_THREADS_MAX: u32 = 16384;

/// Names of the runtime-hook programs.
pub mod hook_programs {
    /// nginx's `ngx_http_upstream_init(r)` entry: the request `r` (its
    /// client connection's socket) is about to be sent upstream.
    pub const NGX_UPSTREAM: &str = "ngx_upstream_init";
    /// Its return.
    pub const NGX_UPSTREAM_RET: &str = "ngx_upstream_init_ret";
    /// Go's `net/http.serverHandler.ServeHTTP` entry: the goroutine serves
    /// the request of its HTTP/1 connection.
    pub const GO_SERVE: &str = "go_serve";
    /// Every RET of it.
    pub const GO_SERVE_RET: &str = "go_serve_ret";
    /// `runtime.newproc1` entry: a goroutine is being created.
    pub const GO_SPAWN: &str = "go_spawn";
    /// Every RET of it: the new goroutine inherits its creator's request.
    pub const GO_SPAWN_RET: &str = "go_spawn_ret";
    /// `net/http.(*persistConn).roundTrip` entry: a client request is about
    /// to go out on that connection.
    pub const GO_ROUND_TRIP: &str = "go_round_trip";
    /// CPython `_asyncio`'s `enter_task` entry: a task is being stepped.
    pub const PY_TASK_ENTER: &str = "py_task_enter";
    /// Return of `task_step` and `TaskStepMethWrapper_call` (the two
    /// callers that step a task; `leave_task` itself is inlined).
    pub const PY_TASK_LEAVE: &str = "py_task_leave";
    /// `_asyncio.Task.__init__` entry: a task is created.
    pub const PY_TASK_CREATE: &str = "py_task_create";
}

/// Go executables with the net/http runtime hooks at once (slots of
/// `GO_HOOK_FILES`; a probe's attach cookie is its file's slot).
pub const GO_HOOK_FILES_MAX: u32 = 256;

/// Goroutines remembered as working for a request (an LRU map).
pub const GO_SERVING_MAX: u32 = 65536;

/// Where the net/http hooks find things in one Go executable: link-time
/// addresses and struct member offsets (from its symbols and DWARF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoHookFile {
    /// Link-time address where `serverHandler.ServeHTTP`'s probe sits.
    pub serve_entry: u64,
    /// Link-time address where `(*persistConn).roundTrip`'s probe sits.
    pub round_trip_entry: u64,
    /// Link-time address of the itab of `*net/http.response` as a
    /// `ResponseWriter` (HTTP/1 connections).
    pub response_itab: u64,
    /// Link-time address of the itab of `*net.TCPConn` as a `net.Conn`.
    pub tcp_itab: u64,
    /// Link-time address of `*net.TCPConn`'s type descriptor (see
    /// `GoTlsFile::tcp_type`).
    pub tcp_type: u64,
    /// `net/http.response.conn` (a `*conn`).
    pub response_conn: u32,
    /// `net/http.conn.rwc` (a `net.Conn`).
    pub conn_rwc: u32,
    /// `net/http.persistConn.conn` (a `net.Conn`).
    pub pconn_conn: u32,
    /// `net.TCPConn` -> its `*net.netFD`.
    pub tcp_fd: u32,
    /// `net.netFD` -> `poll.FD.Sysfd`.
    pub sysfd: u32,
    /// Padding, zero.
    pub _pad: u32,
    /// Wrappers between a `net.Conn` and the `*net.TCPConn`.
    pub wrappers: gotls::GoWrappers,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only integers, every bit pattern valid.
unsafe impl aya::Pod for GoHookFile {}

/// `ngx_http_request_t.signature` (`NGX_HTTP_MODULE`, "HTTP"): the first
/// field of every nginx HTTP request, checked before the request is read.
pub const NGX_HTTP_SIGNATURE: u32 = 0x5054_5448;

/// One call into a TLS library (`SSL_write`, `SSL_read` and their `_ex`
/// forms) that moved plaintext, from the uretprobe at its return;
/// `captured_len` bytes of the plaintext follow the header in the same
/// record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsData {
    /// [`Tag::TlsData`].
    pub tag: u8,
    /// [`Dir::Send`] for a write, [`Dir::Recv`] for a read.
    pub dir: u8,
    /// [`TLS_SEQ_KNOWN`], [`TLS_CONN_REMEMBERED`].
    pub flags: u8,
    /// Padding, zero.
    pub _pad: u8,
    /// Plaintext bytes the call moved.
    pub len: u32,
    /// `bpf_ktime_get_ns` when the call returned.
    pub ts_ns: u64,
    /// `bpf_ktime_get_ns` when the call was entered.
    pub start_ns: u64,
    /// Cookie of the TCP socket underneath (0: not known).
    pub cookie: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// With [`TLS_SEQ_KNOWN`]: TCP sequence number of the first ciphertext
    /// byte the call sent or received (the start of the TLS record that
    /// carried, or will carry, these bytes): the same number at both ends.
    pub seq: u32,
    /// Plaintext bytes following this header (`<= len`).
    pub captured_len: u32,
    /// `comm` of the calling thread's process.
    pub comm: [u8; 16],
    /// With [`TLS_RECV_CANDIDATE`]: bytes of the receive the read may have
    /// decrypted part of (`cookie` and `seq` are that receive's). With
    /// [`TLS_SEQ_KNOWN`] on a read: bytes of the receive the read made (its
    /// first), which later reads served from the library's buffer may have
    /// come from.
    pub recv_len: u32,
    /// Padding, zero.
    pub _pad2: u32,
}

/// [`TlsData::flags`]: the call moved ciphertext on its socket itself, and
/// `seq` is where that ciphertext started.
pub const TLS_SEQ_KNOWN: u8 = 1;
/// [`TlsData::flags`]: the call moved no ciphertext (a read served from the
/// library's buffer); the socket is the one this TLS object used last.
pub const TLS_CONN_REMEMBERED: u8 = 2;

/// [`TlsData::flags`]: the call moved no ciphertext on a socket (a memory
/// BIO, e.g. Node's `TLSWrap`); the socket and `seq` come from the
/// thread's receive just before a read, or its send just after a write.
pub const TLS_LINKED_OUTSIDE: u8 = 4;

/// [`TlsData::flags`]: a memory-BIO read that the thread's last receive
/// (`cookie`, first sequence number `seq`, `recv_len` bytes) holds more
/// than one record of. User space proves where it starts from the reads
/// that used that receive up together, or treats it as unproven: with
/// [`TLS_CONN_REMEMBERED`] too, the TLS object already used that socket;
/// without, its socket is not known.
pub const TLS_RECV_CANDIDATE: u8 = 8;

/// [`TlsData::flags`], with [`TLS_RECV_CANDIDATE`] and no plaintext: the
/// thread's next read of that TLS object moved nothing, so the reads that
/// shared the receive are all in.
pub const TLS_RECV_END: u8 = 16;

/// [`TlsData::flags`], on a read with no plaintext (`len` 0): plaintext
/// read on this connection before now was not seen (a Go Read entered
/// before the probes were attached). User space ends the requests waiting
/// for a response there, and counts a request read there as lost; it feeds
/// no hole to the parsers (see `tls::streams`).
pub const TLS_READ_LOST: u8 = 32;

/// Attach cookie of the TLS probes on a file whose TLS library reads and
/// writes memory BIOs (Node); other files' probes have none (0).
pub const TLS_COOKIE_MEMBIO: u64 = 1;

/// Attach cookie of the `SSL_set_bio` probes: where `struct bio_st` keeps
/// its method pointer in OpenSSL 3 (after the library context); 1.1 and
/// BoringSSL keep it first (cookie 0).
pub const TLS_BIO_METHOD_AT_OSSL3: u64 = 8;

/// Default plaintext bytes copied per TLS call (a request or response head).
pub const TLS_SNAP_DEFAULT: u32 = 4096;

/// Most plaintext bytes copied per TLS call: one less than the record's
/// room, so that the programs bound the copy with a mask (MAX_HEAD is a
/// power of two), which every verifier follows.
pub const TLS_SNAP_MAX: u32 = MAX_HEAD as u32 - 1;

/// Threads that can be inside a TLS call at once (slots by thread id).
pub const TLS_CALL_SLOTS: u32 = 16384;

/// TLS objects whose socket is remembered (an LRU map).
pub const TLS_CONNS_MAX: u32 = 65536;

/// Names of the TLS programs: entry probes (by function), and the return
/// probe shared by all of them.
pub mod tls_programs {
    /// `SSL_write` entry.
    pub const WRITE: &str = "ssl_write";
    /// `SSL_write_ex` entry.
    pub const WRITE_EX: &str = "ssl_write_ex";
    /// `SSL_read` entry.
    pub const READ: &str = "ssl_read";
    /// `SSL_read_ex` entry.
    pub const READ_EX: &str = "ssl_read_ex";
    /// The return of any of them.
    pub const RET: &str = "ssl_ret";
    /// `SSL_free` entry: the TLS object's remembered socket is forgotten.
    pub const FREE: &str = "ssl_free";
    /// `SSL_set_bio` and `SSL_set0_rbio` entry: a TLS object whose read BIO
    /// is not a socket is marked as doing its I/O outside the TLS calls.
    pub const SET_BIO: &str = "ssl_set_bio";
}

/// At a socket's close, what the programs counted for it in place of the
/// records they did not emit: calls and bytes of a silenced socket (see
/// [`SockCtl::silence`]), packets and bytes not copied because user space
/// said they were body bytes (see [`SockCtl::skip_to`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockTotals {
    /// [`Tag::SockTotals`].
    pub tag: u8,
    /// The [`Silence`] reason in force at the close (0: none).
    pub silence: u8,
    /// Padding, zero.
    pub _pad: [u8; 6],
    /// `bpf_ktime_get_ns` of the close.
    pub ts_ns: u64,
    /// Socket cookie.
    pub cookie: u64,
    /// Send and receive calls not reported, per [`Dir`].
    pub silenced_calls: [u64; 2],
    /// Bytes those calls moved, per [`Dir`].
    pub silenced_bytes: [u64; 2],
    /// Payload bytes of packets not copied (silenced or skipped), per [`Dir`].
    pub uncopied_bytes: [u64; 2],
}

/// Why user space told the kernel to stop reporting a socket's traffic
/// ([`SockCtl::silence`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Silence {
    /// Not silenced.
    None = 0,
    /// The bytes are not a protocol the agent parses.
    NotParsed = 1,
    /// TLS ciphertext (plaintext comes from elsewhere).
    Tls = 2,
    /// The receiving end, on this host, of the agent's own connection (its
    /// exports to a local collector): what it reads is the agent's output,
    /// whose packets the kernel never copies.
    AgentPeer = 3,
}

impl Silence {
    /// Decodes the byte.
    pub fn from_u8(v: u8) -> Option<Silence> {
        match v {
            0 => Some(Silence::None),
            1 => Some(Silence::NotParsed),
            2 => Some(Silence::Tls),
            3 => Some(Silence::AgentPeer),
            _ => None,
        }
    }

    /// Stable name for counters.
    pub fn name(self) -> &'static str {
        match self {
            Silence::None => "none",
            Silence::NotParsed => "not_parsed",
            Silence::Tls => "tls",
            Silence::AgentPeer => "agent_peer",
        }
    }
}

/// What user space asks the programs to do with one socket (value of the
/// `SOCK_CTL` hash map, keyed by socket cookie). The programs pick a changed
/// entry up at the socket's next packet or call after the agent bumps the
/// generation in `CTL_STATE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockCtl {
    /// A [`Silence`] reason: no send/receive record and no payload copy for
    /// this socket any more, only counts (reported in [`SockTotals`] at the
    /// close). 0 lifts it.
    pub silence: u8,
    /// Bit `1 << dir`: `skip_from`/`skip_to` of that direction are set.
    pub skip_dirs: u8,
    /// 1: the connection speaks HTTP/2: the packet programs walk its frames
    /// and copy every frame head and the payload of every frame but DATA
    /// (of DATA only the first bytes), beyond the snap length.
    pub h2: u8,
    /// Padding, zero.
    pub _pad: u8,
    /// Per [`Dir`]: first TCP sequence number of a range of body bytes the
    /// parser will count without looking at them: packets inside the range
    /// are not reported, a packet reaching past its end is reported from
    /// its end, which starts a message (a head window opens there).
    pub skip_from: [u32; 2],
    /// Per [`Dir`]: sequence number just past that range.
    pub skip_to: [u32; 2],
}

/// Index in the `CTL_STATE` array of the generation the agent bumps after
/// changing `SOCK_CTL`.
pub const CTL_GEN: u32 = 0;
/// Index in the `CTL_STATE` array of the number of `SOCK_CTL` entries (0:
/// the programs skip every per-socket lookup that only control needs).
pub const CTL_ENTRIES: u32 = 1;
/// Capacity of the `SOCK_CTL` map.
pub const SOCK_CTL_MAX: u32 = 16384;

/// Direction of bytes relative to the socket that moved them.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Bytes written by this socket (send call, egress packet).
    Send = 0,
    /// Bytes read by this socket (receive call, ingress packet).
    Recv = 1,
}

impl Dir {
    /// Decodes the byte written by the programs.
    pub fn from_u8(v: u8) -> Option<Dir> {
        match v {
            0 => Some(Dir::Send),
            1 => Some(Dir::Recv),
            _ => None,
        }
    }
}

/// One send or receive call on a TCP socket, from `sock:sock_send_length` /
/// `sock:sock_recv_length`, on the calling thread, after the call moved
/// `len` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOp {
    /// [`Tag::SockOp`].
    pub tag: u8,
    /// [`Dir`] as a byte.
    pub dir: u8,
    /// Padding, zero.
    pub _pad: [u8; 2],
    /// Bytes the call moved (always > 0).
    pub len: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the call returned.
    pub ts_ns: u64,
    /// Socket cookie (stable for the socket's lifetime, never reused).
    pub cookie: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// TCP sequence number just past the last byte this call moved:
    /// `write_seq` after a send, `copied_seq` after a receive. The call
    /// covers `[seq_end - len, seq_end)` of the stream, which lines it up
    /// with the captured packets exactly, even on connections that were
    /// open before the agent started.
    pub seq_end: u32,
    /// Padding, zero.
    pub _pad2: u32,
    /// `comm` of the calling thread's process.
    pub comm: [u8; 16],
}

/// A TCP state change (`sock:inet_sock_set_state`) with the 4-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnState {
    /// [`Tag::ConnState`].
    pub tag: u8,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u8,
    /// TCP state before (the kernel's `TCP_*` numbering), with
    /// [`STATE_AGENT_SOCKET`] set when the socket is the agent's own.
    pub old_state: u8,
    /// TCP state after.
    pub new_state: u8,
    /// Local port, host order (0 while a connect has not bound one yet).
    pub local_port: u16,
    /// Remote port, host order.
    pub remote_port: u16,
    /// `bpf_ktime_get_ns` of the change.
    pub ts_ns: u64,
    /// Socket cookie.
    pub cookie: u64,
    /// Current process id (the connecting process for `SYN_SENT`; for
    /// passive opens the change runs in softirq context and this is
    /// whoever was interrupted, so it is not used for attribution).
    pub pid: u32,
    /// Current thread id (same caveat as `pid`).
    pub tid: u32,
    /// Local address; IPv4 in the first 4 bytes.
    pub local_addr: [u8; 16],
    /// Remote address; IPv4 in the first 4 bytes.
    pub remote_addr: [u8; 16],
}

/// Set in [`ConnState::old_state`] for a socket the agent opened (TCP
/// states fit in the low bits; recordings from before it never set it).
pub const STATE_AGENT_SOCKET: u8 = 0x80;

/// Header of a captured TCP packet payload; `captured_len` bytes of payload
/// follow it in the same record. Packets without payload are not reported,
/// except those carrying a FIN ([`TCP_FIN`] in `tcp_flags`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// [`Tag::Segment`].
    pub tag: u8,
    /// [`Dir::Send`] for egress, [`Dir::Recv`] for ingress.
    pub dir: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub tcp_flags: u8,
    /// TCP sequence number of the first payload byte.
    pub seq: u32,
    /// Payload bytes in the packet (GSO packets count all their segments).
    pub payload_len: u32,
    /// Payload bytes copied after this header (`<= payload_len`).
    pub captured_len: u32,
    /// `bpf_ktime_get_ns` when the program ran.
    pub ts_ns: u64,
    /// Cookie of the socket the packet belongs to on this host.
    pub cookie: u64,
    /// Local port, host order.
    pub local_port: u16,
    /// Remote port, host order.
    pub remote_port: u16,
    /// [`SEG_LOOPBACK`] and future flags.
    pub seg_flags: u8,
    /// Padding, zero.
    pub _pad: [u8; 3],
    /// Local address; IPv4 in the first 4 bytes.
    pub local_addr: [u8; 16],
    /// Remote address; IPv4 in the first 4 bytes.
    pub remote_addr: [u8; 16],
}

/// [`SegmentHeader::seg_flags`]: an egress packet leaving through a loopback
/// device. Its receiving socket is on this host too, and the ingress program
/// does not copy loopback packets again: the agent feeds this record to the
/// receiving socket's stream as well (same TCP sequence numbers at both
/// ends), which halves the capture work of local traffic.
pub const SEG_LOOPBACK: u8 = 1;

/// `LOOPBACK_IFINDEX`: the loopback device of every network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// Largest payload a segment record carries: a head-start packet (see
/// [`HEAD_MAX_DEFAULT`]) is copied up to this many bytes.
pub const MAX_HEAD: usize = 16384;

/// Default head window: the bytes copied from the start of every HTTP/1
/// message the programs see begin (a packet whose first bytes are a request
/// method or `HTTP/`), across packets, so that whole request and response
/// heads up to this size reach user space. Beyond the window, packets are
/// copied up to the snap length.
pub const HEAD_MAX_DEFAULT: u32 = 16384;

// ---------------------------------------------------------------------------
// Lanes: the per-CPU transport of the capture records.
//
// Every CPU writes its records into lanes of its own, rings of chunks in
// mmapable array maps that the agent maps and reads in place; no lock and no
// shared cache line between CPUs. Each CPU has an op lane (send/receive
// calls), a packet lane (packets) and [`NESTED_PER_CPU`] small nested lanes
// for packet programs that interrupt another one on the same CPU (a softirq
// in the middle of an egress, say). Each record is preceded by a [`FRAME_HDR`]-byte frame
// (`u32` length of frame and record, 8-aligned; `u32` zero); a frame of
// length 0 means "the rest of this chunk is unused". Within a lane the
// records are in time order (the time is taken once the lane is held);
// the agent merges the lanes by time.

/// Bytes of one chunk of a packet or op lane. A lane is a power-of-two
/// number of chunks (set at load).
pub const LANE_CHUNK: usize = 256 << 10;
/// Bytes of a nested lane (a single chunk). Under a storm of short
/// connections programs nest often (a softirq in the middle of an egress),
/// and a nested lane must hold as much as a packet lane's reserve while the
/// agent is busy elsewhere: 64 KiB lost connection records, 256 KiB did not.
pub const NESTED_LANE: usize = 256 << 10;
/// Nested lanes per CPU (programs nested deeper are counted and dropped).
pub const NESTED_PER_CPU: u32 = 2;
/// Bytes of the frame before each record in a lane.
pub const FRAME_HDR: usize = 8;
/// Largest frame: a segment record with the largest payload.
pub const MAX_FRAME: usize = FRAME_HDR + core::mem::size_of::<SegmentHeader>() + MAX_HEAD;

/// Producer and consumer positions of one lane (byte counts since load; the
/// offset in the lane is the position modulo the lane size). The programs
/// write `prod`, the agent writes `cons`; they sit on separate cache lines.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LaneCtl {
    /// Position after the last published frame.
    pub prod: u64,
    /// Padding to a cache line.
    pub _pad: [u64; 7],
    /// Position of the first frame the agent has not consumed.
    pub cons: u64,
    /// Padding to a cache line.
    pub _pad2: [u64; 7],
}

/// Rounds a record length up to its frame size.
pub const fn frame_len(record_len: usize) -> usize {
    (FRAME_HDR + record_len + 7) & !7
}

/// Largest copy of the top of a user stack a sample record can carry. The
/// configured copy ([`STACK_COPY_DEFAULT`]) is clamped to this.
pub const MAX_STACK_COPY: usize = 32768;

/// Default number of user-stack bytes copied per CPU sample, from the
/// interrupted thread's stack pointer up. 16 KiB holds the frames of
/// ordinary native call chains and of an interpreter's C frames; what does
/// not fit is reported as a truncated stack, never guessed.
pub const STACK_COPY_DEFAULT: u32 = 16384;

/// Kernel stack frames a sample record carries at most.
pub const MAX_KSTACK_FRAMES: usize = 64;

/// Default sampling frequency per CPU. 99 rather than 100 so the sampling
/// does not run in lockstep with timers firing at round frequencies (which
/// would over- or under-sample periodic work).
pub const PROFILE_HZ_DEFAULT: u32 = 99;

/// Bytes of slack after the stack copy in [`SampleScratch`]: the program
/// copies the stack page by page (so a fault on the last page keeps the
/// pages before it), and the verifier bounds each page-sized copy
/// separately from its offset.
pub const STACK_COPY_SLACK: usize = 4096;

/// One CPU sample: who was running, the kernel stack, the user registers
/// the unwinder starts from, and `stack_len` bytes of the user stack from
/// `sp` up, which follow the header in the same record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleHeader {
    /// [`Tag::Sample`].
    pub tag: u8,
    /// [`SAMPLE_KERNEL_THREAD`], [`SAMPLE_STACK_SHORT`].
    pub flags: u8,
    /// Valid entries of `kstack` (at most [`MAX_KSTACK_FRAMES`]).
    pub kstack_len: u16,
    /// CPU the sample was taken on.
    pub cpu: u32,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the sample.
    pub ts_ns: u64,
    /// User instruction pointer (from the task's user `pt_regs`: where user
    /// code was, or will resume after the syscall or interrupt the sample
    /// hit). 0 for kernel threads.
    pub ip: u64,
    /// User stack pointer.
    pub sp: u64,
    /// User frame pointer (`rbp`).
    pub bp: u64,
    /// User-stack bytes following this header.
    pub stack_len: u32,
    /// Padding, zero.
    pub _pad: u32,
    /// `comm` of the sampled thread.
    pub comm: [u8; 16],
    /// Kernel return addresses, leaf first (empty when the sample
    /// interrupted user code).
    pub kstack: [u64; MAX_KSTACK_FRAMES],
}

/// [`SampleHeader::flags`]: a kernel thread (no user memory): the record
/// has only the kernel stack.
pub const SAMPLE_KERNEL_THREAD: u8 = 1;
/// [`SampleHeader::flags`]: the user stack was copied short of the
/// configured size because the read faulted (usually the top of the stack
/// was reached, so nothing is missing).
pub const SAMPLE_STACK_SHORT: u8 = 2;

/// Scratch buffer of the sampling program (one per CPU): the header and
/// the largest stack copy, written to the ring buffer as one variable-size
/// record.
#[repr(C)]
pub struct SampleScratch {
    /// The header.
    pub hdr: SampleHeader,
    /// Stack copy; only `hdr.stack_len` bytes are meaningful.
    pub data: [u8; MAX_STACK_COPY + STACK_COPY_SLACK],
}

/// FIN bit of [`SegmentHeader::tcp_flags`].
pub const TCP_FIN: u8 = 0x01;

/// Where the data a receive took ends, from the socket after it:
/// `copied_seq` counts the peer's FIN once a receive takes it (a receive
/// that reads up to a FIN takes it too), the data does not. Taken when
/// nothing is left to read (`copied_seq == rcv_nxt`, which counts a FIN
/// that came) in a state a FIN leads to: CLOSE_WAIT, LAST_ACK, CLOSING, or
/// CLOSE without an error (a FIN after our own one sends the socket to
/// TIME_WAIT, leaving it CLOSE; a reset also leaves it CLOSE, with
/// `sk_err` set). `state` and `err` are read only when needed.
#[inline(always)]
pub fn recv_data_end(
    copied: u32,
    rcv_nxt: u32,
    state: impl FnOnce() -> u8,
    err: impl FnOnce() -> i32,
) -> u32 {
    const TCP_CLOSE: u8 = 7;
    const TCP_CLOSE_WAIT: u8 = 8;
    const TCP_LAST_ACK: u8 = 9;
    const TCP_CLOSING: u8 = 11;
    let fin = copied == rcv_nxt
        && match state() {
            TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING => true,
            TCP_CLOSE => err() == 0,
            _ => false,
        };
    copied.wrapping_sub(u32::from(fin))
}

/// `AF_INET`.
pub const AF_INET: u8 = 2;
/// `AF_INET6`.
pub const AF_INET6: u8 = 10;

/// Indices into the per-CPU `DROPS` array: every place the kernel side can
/// lose something counts it here.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Lane full: a send/receive record was lost.
    RingFullOp = 0,
    /// Lane full, even the part kept for them: a connection state record
    /// was lost.
    RingFullConn = 1,
    /// Lane full: a packet payload record was lost.
    RingFullSegment = 2,
    /// A packet's headers could not be read (malformed or too short).
    BadPacket = 3,
    /// A kernel read (socket fields) failed.
    ReadFailed = 4,
    /// IPv6 packet whose next header is not TCP (extension headers are not
    /// walked).
    Ipv6ExtHeader = 5,
    /// Ring buffer full: a CPU sample was lost.
    RingFullSample = 6,
    /// A sample's user stack could not be read at all (its stack pointer
    /// was not readable): the sample carries the registers only.
    UserStackFailed = 7,
    /// A sample's kernel stack could not be taken.
    KernelStackFailed = 8,
    /// Programs nested more than [`NESTED_PER_CPU`] deep on a CPU: the
    /// innermost record was lost.
    NestedTooDeep = 9,
    /// Lane full, even the part kept for connection records: a
    /// [`SockTotals`] was lost.
    RingFullTotals = 10,
    /// Lane full: a TLS plaintext record was lost.
    RingFullTls = 11,
    /// A thread entered a TLS call while another thread held its slot (see
    /// [`TLS_CALL_SLOTS`]), or the call's slot was taken before it
    /// returned: the call's plaintext was lost.
    TlsSlotBusy = 12,
    /// The plaintext (or the length of an `_ex` call) could not be read
    /// from the process's memory.
    TlsReadFailed = 13,
    /// A Go `tls.Conn`'s connection could not be followed to a TCP socket
    /// (not a `*net.TCPConn`, or a read failed): the call's plaintext was
    /// lost.
    GoTlsNoSocket = 14,
    /// A return probe of Go's crypto/tls found no entry for its goroutine
    /// (entered before the probes, or the entry was evicted): lost.
    GoTlsNoEntry = 15,
    /// Lane full: a runtime hook's [`Cause`] record was lost.
    RingFullCause = 16,
    /// A runtime hook could not read what it hooks (an nginx request
    /// without its signature, a connection that is not a TCP socket): that
    /// request's upstream call gets no cause.
    CauseUnreadable = 17,
    /// Lane full: an [`Exec`] record was lost (the process keeps the
    /// description of the program it ran before).
    RingFullExec = 18,
}

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [DropReason; 19] = [
        DropReason::RingFullOp,
        DropReason::RingFullConn,
        DropReason::RingFullSegment,
        DropReason::BadPacket,
        DropReason::ReadFailed,
        DropReason::Ipv6ExtHeader,
        DropReason::RingFullSample,
        DropReason::UserStackFailed,
        DropReason::KernelStackFailed,
        DropReason::NestedTooDeep,
        DropReason::RingFullTotals,
        DropReason::RingFullTls,
        DropReason::TlsSlotBusy,
        DropReason::TlsReadFailed,
        DropReason::GoTlsNoSocket,
        DropReason::GoTlsNoEntry,
        DropReason::RingFullCause,
        DropReason::CauseUnreadable,
        DropReason::RingFullExec,
    ];

    /// Stable, human-readable name used in logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::RingFullOp => "ring_full_op",
            DropReason::RingFullConn => "ring_full_conn",
            DropReason::RingFullSegment => "ring_full_segment",
            DropReason::BadPacket => "bad_packet",
            DropReason::ReadFailed => "kernel_read_failed",
            DropReason::Ipv6ExtHeader => "ipv6_ext_header",
            DropReason::RingFullSample => "ring_full_sample",
            DropReason::UserStackFailed => "user_stack_failed",
            DropReason::KernelStackFailed => "kernel_stack_failed",
            DropReason::NestedTooDeep => "nested_too_deep",
            DropReason::RingFullTotals => "ring_full_totals",
            DropReason::RingFullTls => "ring_full_tls",
            DropReason::TlsSlotBusy => "tls_slot_busy",
            DropReason::TlsReadFailed => "tls_read_failed",
            DropReason::GoTlsNoSocket => "go_tls_no_socket",
            DropReason::GoTlsNoEntry => "go_tls_no_entry",
            DropReason::RingFullCause => "ring_full_cause",
            DropReason::CauseUnreadable => "cause_unreadable",
            DropReason::RingFullExec => "ring_full_exec",
        }
    }
}

/// Number of entries of the `DROPS` array.
pub const DROP_REASONS: u32 = DropReason::ALL.len() as u32;

/// Indices into the per-CPU `STATS` array: what the programs did instead of
/// emitting records (nothing here is lost: these bytes are accounted for).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelStat {
    /// Send/receive calls of silenced sockets, not reported.
    SilencedCalls = 0,
    /// Packets of silenced sockets, not copied.
    SilencedPackets = 1,
    /// Payload bytes of those packets.
    SilencedBytes = 2,
    /// Packets inside a skipped body range, not reported.
    SkippedPackets = 3,
    /// Payload bytes not copied because they were in a skipped range.
    SkippedBytes = 4,
    /// Packets whose first bytes start an HTTP/1 message (copied up to the
    /// head window).
    HeadStarts = 5,
    /// Packets copied past the snap length because they continue a head
    /// window opened by an earlier packet.
    HeadContinued = 6,
    /// Head-start packets longer than the head window: the copy stopped at
    /// the window (a head longer than that is cut there).
    HeadWindowFull = 7,
    /// Records written to a nested lane (their program interrupted another
    /// one on the same CPU).
    NestedRecords = 8,
    /// TLS calls that moved plaintext (one record each).
    TlsCalls = 9,
    /// Plaintext bytes those calls moved beyond what was copied.
    TlsBytesCut = 10,
    /// HTTP/2 packets whose frames were walked.
    H2Walked = 11,
    /// Extra records of HTTP/2 frame heads and header payloads beyond the
    /// packet's first record.
    H2Records = 12,
    /// HTTP/2 payload bytes not copied (DATA beyond its first bytes): length
    /// known, not a loss.
    H2Uncopied = 13,
    /// Times the frame walk of a direction lost sync (a packet missed, a
    /// budget ran out); user space sees the frames' bytes as truncated.
    H2SyncLost = 14,
    /// Times the frame walk of a direction found sync at a packet start.
    H2Synced = 15,
    /// Frames whose payload was copied only up to the per-frame bound.
    H2FrameCut = 16,
    /// Memory-BIO TLS calls given the socket and sequence number of the
    /// thread's receive before the read or send after the write.
    TlsLinkedOutside = 17,
    /// Memory-BIO TLS calls whose neighbouring send or receive could not be
    /// proven to carry them (another socket than the one the TLS object
    /// used, or a send that is not exactly one record): not stamped.
    TlsLinkRefused = 18,
    /// TLS objects given a read BIO that is not a socket or fd BIO (a
    /// memory BIO, a BIO pair, the application's own): their calls get
    /// the memory-BIO rules.
    TlsMembioObjects = 19,
    /// Go TLS Reads whose record was not found at their end (a cipher
    /// whose records are laid out otherwise): no sequence number, as a
    /// Read served from the plaintext buffer.
    GoTlsRecordNotFound = 20,
    /// Go TLS connections whose remembered socket was found closed (a new
    /// connection at a freed one's address): walked to their own again.
    GoTlsSockClosed = 21,
}

impl KernelStat {
    /// Every counter, in index order.
    pub const ALL: [KernelStat; 22] = [
        KernelStat::SilencedCalls,
        KernelStat::SilencedPackets,
        KernelStat::SilencedBytes,
        KernelStat::SkippedPackets,
        KernelStat::SkippedBytes,
        KernelStat::HeadStarts,
        KernelStat::HeadContinued,
        KernelStat::HeadWindowFull,
        KernelStat::NestedRecords,
        KernelStat::TlsCalls,
        KernelStat::TlsBytesCut,
        KernelStat::H2Walked,
        KernelStat::H2Records,
        KernelStat::H2Uncopied,
        KernelStat::H2SyncLost,
        KernelStat::H2Synced,
        KernelStat::H2FrameCut,
        KernelStat::TlsLinkedOutside,
        KernelStat::TlsLinkRefused,
        KernelStat::TlsMembioObjects,
        KernelStat::GoTlsRecordNotFound,
        KernelStat::GoTlsSockClosed,
    ];

    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            KernelStat::SilencedCalls => "silenced_calls",
            KernelStat::SilencedPackets => "silenced_packets",
            KernelStat::SilencedBytes => "silenced_bytes",
            KernelStat::SkippedPackets => "skipped_packets",
            KernelStat::SkippedBytes => "skipped_bytes",
            KernelStat::HeadStarts => "head_starts",
            KernelStat::HeadContinued => "head_continued",
            KernelStat::HeadWindowFull => "head_window_full",
            KernelStat::NestedRecords => "nested_records",
            KernelStat::TlsCalls => "tls_calls",
            KernelStat::TlsBytesCut => "tls_bytes_cut",
            KernelStat::H2Walked => "h2_walked_packets",
            KernelStat::H2Records => "h2_frame_records",
            KernelStat::H2Uncopied => "h2_uncopied_bytes",
            KernelStat::H2SyncLost => "h2_sync_lost",
            KernelStat::H2Synced => "h2_synced",
            KernelStat::H2FrameCut => "h2_frames_cut",
            KernelStat::TlsLinkedOutside => "tls_linked_outside",
            KernelStat::TlsLinkRefused => "tls_link_refused",
            KernelStat::TlsMembioObjects => "tls_membio_objects",
            KernelStat::GoTlsRecordNotFound => "go_tls_record_not_found",
            KernelStat::GoTlsSockClosed => "go_tls_sock_closed",
        }
    }

    /// One line on what it counts.
    pub fn help(self) -> &'static str {
        match self {
            KernelStat::SilencedCalls => "Send/receive calls of silenced sockets, not reported.",
            KernelStat::SilencedPackets => "Packets of silenced sockets, not copied.",
            KernelStat::SilencedBytes => "Payload bytes of silenced sockets' packets.",
            KernelStat::SkippedPackets => "Packets inside a skipped body, not reported.",
            KernelStat::SkippedBytes => "Payload bytes not copied: inside a skipped body.",
            KernelStat::HeadStarts => {
                "Packets starting an HTTP/1 head (copied up to the head window)."
            }
            KernelStat::HeadContinued => "Packets copied past the snap length to continue a head.",
            KernelStat::HeadWindowFull => "Heads longer than the head window: cut there.",
            KernelStat::NestedRecords => {
                "Records written by a program that interrupted another on its CPU."
            }
            KernelStat::TlsCalls => "TLS library calls that moved plaintext (one record each).",
            KernelStat::TlsBytesCut => "Plaintext bytes beyond the copied prefix of TLS calls.",
            KernelStat::H2Walked => "HTTP/2 packets whose frames were walked.",
            KernelStat::H2Records => "Extra records of HTTP/2 frame heads and header payloads.",
            KernelStat::H2Uncopied => "HTTP/2 DATA payload bytes not copied (length known).",
            KernelStat::H2SyncLost => "Times the HTTP/2 frame walk of a direction lost sync.",
            KernelStat::H2Synced => "Times the HTTP/2 frame walk of a direction found sync.",
            KernelStat::H2FrameCut => "HTTP/2 frames copied only up to the per-frame bound.",
            KernelStat::TlsLinkedOutside => {
                "Memory-BIO TLS calls stamped by the thread's neighbouring receive or send."
            }
            KernelStat::TlsLinkRefused => {
                "Memory-BIO TLS calls whose neighbouring send or receive was not proven theirs."
            }
            KernelStat::TlsMembioObjects => {
                "TLS objects given a read BIO that is not a socket: memory-BIO rules apply."
            }
            KernelStat::GoTlsRecordNotFound => {
                "Go TLS Reads whose record was not found: no sequence number."
            }
            KernelStat::GoTlsSockClosed => {
                "Go TLS connections whose remembered socket was closed: found again."
            }
        }
    }
}

/// Number of entries of the `STATS` array.
pub const KERNEL_STATS: u32 = KernelStat::ALL.len() as u32;

/// Names of the globals the agent sets before load (`EbpfLoader::override_global`).
pub mod globals {
    /// `u32`: payload bytes copied per packet (clamped to `MAX_SNAP_LEN`;
    /// 0 copies nothing and emits no segment records).
    pub const SNAP_LEN: &str = "SNAP_LEN";
    /// `u32`: 0 makes every program return at once (the "empty hooks"
    /// floor of the benchmark).
    pub const ENABLED: &str = "ENABLED";
    /// `u32`: the agent's own pid; its socket calls are not reported.
    pub const AGENT_PID: &str = "AGENT_PID";
    /// `u32`: 1 when the kprobe source of calls may serve: the packet
    /// programs then give a cookie to every socket that receives over
    /// loopback (kprobes can only read a cookie the socket already has),
    /// and a socket's close-time totals add the calls kprobes silenced.
    pub const KPROBE_CALLS: &str = "KPROBE_CALLS";
    /// `u32`: offset of `write_seq` in `struct tcp_sock` (from BTF).
    pub const OFF_WRITE_SEQ: &str = "OFF_WRITE_SEQ";
    /// `u32`: offset of `copied_seq` in `struct tcp_sock` (from BTF).
    pub const OFF_COPIED_SEQ: &str = "OFF_COPIED_SEQ";
    /// `u32`: offset of `rcv_nxt` in `struct tcp_sock`.
    pub const OFF_RCV_NXT: &str = "OFF_RCV_NXT";
    /// `u32`: offset of `skc_state` in `struct sock`.
    pub const OFF_STATE: &str = "OFF_STATE";
    /// `u32`: offset of `sk_err` in `struct sock`.
    pub const OFF_SK_ERR: &str = "OFF_SK_ERR";
    /// `u32`: offset of `skc_daddr` in `struct sock` (from BTF).
    pub const OFF_DADDR: &str = "OFF_DADDR";
    /// `u32`: offset of `skc_rcv_saddr` in `struct sock`.
    pub const OFF_RCV_SADDR: &str = "OFF_RCV_SADDR";
    /// `u32`: offset of `skc_dport` in `struct sock`.
    pub const OFF_DPORT: &str = "OFF_DPORT";
    /// `u32`: offset of `skc_num` in `struct sock`.
    pub const OFF_NUM: &str = "OFF_NUM";
    /// `u32`: offset of `skc_family` in `struct sock`.
    pub const OFF_FAMILY: &str = "OFF_FAMILY";
    /// `u32`: offset of `skc_v6_daddr` in `struct sock`.
    pub const OFF_V6_DADDR: &str = "OFF_V6_DADDR";
    /// `u32`: offset of `skc_v6_rcv_saddr` in `struct sock`.
    pub const OFF_V6_RCV_SADDR: &str = "OFF_V6_RCV_SADDR";
    /// `u32`: user-stack bytes copied per CPU sample (clamped to
    /// `MAX_STACK_COPY`; 0 copies none).
    pub const STACK_COPY: &str = "STACK_COPY";
    /// `u32`: offset of `ip` in `struct pt_regs` (from BTF).
    pub const OFF_REGS_IP: &str = "OFF_REGS_IP";
    /// `u32`: offset of `sp` in `struct pt_regs`.
    pub const OFF_REGS_SP: &str = "OFF_REGS_SP";
    /// `u32`: offset of `bp` in `struct pt_regs`.
    pub const OFF_REGS_BP: &str = "OFF_REGS_BP";
    /// `u32`: offset of `mm` in `struct task_struct` (NULL for kernel
    /// threads).
    pub const OFF_TASK_MM: &str = "OFF_TASK_MM";
    /// `u32`: offset of `comm` in `struct task_struct`.
    pub const OFF_TASK_COMM: &str = "OFF_TASK_COMM";
    /// `u32`: offset of `pid` (the thread id) in `struct task_struct`.
    pub const OFF_TASK_PID: &str = "OFF_TASK_PID";
    /// `u32`: offset of `tgid` (the process id) in `struct task_struct`.
    pub const OFF_TASK_TGID: &str = "OFF_TASK_TGID";
    /// `u32`: offset of `skc_cookie` in `struct sock`.
    pub const OFF_COOKIE: &str = "OFF_COOKIE";
    /// `u32`: offset of `tcp_clock_cache` in `struct tcp_sock` (the
    /// socket's TCP clock, CLOCK_MONOTONIC ns, refreshed as it sends and
    /// receives).
    pub const OFF_CLOCK: &str = "OFF_CLOCK";
    /// `u32`: chunks per packet lane minus one (a power of two minus one).
    pub const LANE_MASK: &str = "LANE_MASK";
    /// `u32`: chunks per op lane minus one.
    pub const OP_LANE_MASK: &str = "OP_LANE_MASK";
    /// `u32`: a packet lane wakes the reader each time its producer position
    /// crosses a multiple of `1 << WAKE_SHIFT` bytes.
    pub const WAKE_SHIFT: &str = "WAKE_SHIFT";
    /// `u32`: the same for op lanes.
    pub const OP_WAKE_SHIFT: &str = "OP_WAKE_SHIFT";
    /// `u32`: 1 to publish lane positions with an atomic exchange (a full
    /// barrier); 0 on x86, whose stores are not reordered with one another.
    pub const STRICT_PUBLISH: &str = "STRICT_PUBLISH";
    /// `u32`: number of CPU ids with lanes (possible CPUs).
    pub const NR_CPUS: &str = "NR_CPUS";
    /// `u32`: head window in bytes (clamped to `MAX_HEAD`).
    pub const HEAD_MAX: &str = "HEAD_MAX";
    /// `u32`: plaintext bytes copied per TLS call (clamped to `MAX_HEAD`);
    /// 0: the socket programs skip the TLS bookkeeping.
    pub const TLS_SNAP: &str = "TLS_SNAP";
}

/// Name of the per-CPU-id scratch array of the sampling program (its size
/// is the number of possible CPUs, set at load).
pub const MAP_SAMPLE_SCRATCH: &str = "SAMPLE_SCRATCH";

/// Name of the CPU sampling program (`perf_event`, software cpu-clock).
pub const PROG_PROFILE: &str = "profile_cpu";

/// Name of the ring buffer of CPU samples and reader wake-ups.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the per-CPU drop-counter array.
pub const MAP_DROPS: &str = "DROPS";
/// Name of the per-CPU counter array ([`KernelStat`]).
pub const MAP_STATS: &str = "STATS";
/// Name of the chunk array of the packet lanes, then the op lanes
/// (mmapable).
pub const MAP_LANES: &str = "LANES";
/// Name of the nested lanes' array (mmapable).
pub const MAP_NESTED: &str = "NESTED";
/// Name of the lanes' position array (mmapable): packet lanes, op lanes,
/// nested lanes.
pub const MAP_LANE_CTL: &str = "LANE_CTL";
/// Name of the per-socket control hash map ([`SockCtl`] by cookie).
pub const MAP_SOCK_CTL: &str = "SOCK_CTL";
/// Name of the control state array ([`CTL_GEN`], [`CTL_ENTRIES`]).
pub const MAP_CTL_STATE: &str = "CTL_STATE";
/// Name of the array of TLS calls in progress, by thread id.
pub const MAP_TLS_CALLS: &str = "TLS_CALLS";
/// Name of the LRU map of the socket each TLS object used last.
pub const MAP_TLS_CONNS: &str = "TLS_CONNS";

const _: () = assert!(size_of::<SockOp>() == 56);
const _: () = assert!(size_of::<ConnState>() == 64);
const _: () = assert!(size_of::<SegmentHeader>() == 72);
const _: () = assert!(size_of::<SampleHeader>() == 584);
const _: () = assert!(core::mem::offset_of!(SampleHeader, tag) == 0);
const _: () = assert!(core::mem::offset_of!(SampleHeader, ts_ns) == 16);
const _: () = assert!(core::mem::offset_of!(SampleHeader, comm) == 56);
const _: () = assert!(core::mem::offset_of!(SampleHeader, kstack) == 72);
const _: () = assert!(size_of::<SampleScratch>() == 584 + MAX_STACK_COPY + STACK_COPY_SLACK);
const _: () = assert!(core::mem::offset_of!(SockOp, tag) == 0);
const _: () = assert!(core::mem::offset_of!(ConnState, tag) == 0);
const _: () = assert!(core::mem::offset_of!(SegmentHeader, tag) == 0);
const _: () = assert!(size_of::<SockTotals>() == 72);
const _: () = assert!(size_of::<TlsData>() == 72);
const _: () = assert!(size_of::<Cause>() == 48);
const _: () = assert!(size_of::<Exec>() == 16);
const _: () = assert!(size_of::<GoHookFile>() == 64 + 200);
const _: () = assert!(core::mem::offset_of!(TlsData, ts_ns) == 8);
const _: () = assert!(core::mem::offset_of!(TlsData, seq) == 40);
const _: () = assert!(size_of::<TlsData>() + MAX_HEAD <= MAX_FRAME);
const _: () = assert!(size_of::<SockCtl>() == 20);
const _: () = assert!(size_of::<LaneCtl>() == 128);
const _: () = assert!(core::mem::offset_of!(LaneCtl, cons) == 64);
const _: () = assert!(MAX_FRAME.is_multiple_of(8));
const _: () = assert!(LANE_CHUNK.is_power_of_two() && NESTED_LANE.is_power_of_two());
const _: () = assert!(MAX_FRAME * 2 <= NESTED_LANE);

/// A record decoded from ring-buffer bytes.
// The sample header (584 bytes) makes one variant large; no_std has no Box,
// and a record is decoded once per ring-buffer item and moved at most once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A send/receive call.
    SockOp(SockOp),
    /// A TCP state change.
    ConnState(ConnState),
    /// A packet payload: header and the captured prefix.
    Segment(SegmentHeader, &'a [u8]),
    /// A CPU sample: header and the copied top of the user stack.
    Sample(SampleHeader, &'a [u8]),
    /// Counts of a socket the programs reported in summary only.
    SockTotals(SockTotals),
    /// Plaintext of a TLS call: header and the captured prefix.
    TlsData(TlsData, &'a [u8]),
    /// What a runtime hook saw.
    Cause(Cause),
    /// A process started another program.
    Exec(Exec),
}

/// Why ring-buffer bytes could not be decoded.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum ParseError {
    /// Empty record.
    Empty,
    /// Unknown tag byte.
    UnknownTag(u8),
    /// Shorter than the record type needs.
    Short,
    /// A length field is beyond what the programs can write.
    Invalid,
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked above; every record type is repr(C) plain old
    // data for which any bit pattern is valid; read_unaligned copes with the
    // ring buffer's 8-byte alignment not matching T's.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

impl<'a> Record<'a> {
    /// Decodes one ring-buffer record.
    pub fn parse(bytes: &'a [u8]) -> Result<Record<'a>, ParseError> {
        let tag = *bytes.first().ok_or(ParseError::Empty)?;
        match tag {
            t if t == Tag::SockOp as u8 => read(bytes).map(Record::SockOp).ok_or(ParseError::Short),
            t if t == Tag::ConnState as u8 => {
                read(bytes).map(Record::ConnState).ok_or(ParseError::Short)
            }
            t if t == Tag::Segment as u8 => {
                let hdr: SegmentHeader = read(bytes).ok_or(ParseError::Short)?;
                let start = size_of::<SegmentHeader>();
                let end = start + hdr.captured_len as usize;
                let data = bytes.get(start..end).ok_or(ParseError::Short)?;
                Ok(Record::Segment(hdr, data))
            }
            t if t == Tag::Sample as u8 => {
                let hdr: SampleHeader = read(bytes).ok_or(ParseError::Short)?;
                if hdr.stack_len as usize > MAX_STACK_COPY
                    || hdr.kstack_len as usize > MAX_KSTACK_FRAMES
                {
                    return Err(ParseError::Invalid);
                }
                let start = size_of::<SampleHeader>();
                let end = start + hdr.stack_len as usize;
                let data = bytes.get(start..end).ok_or(ParseError::Short)?;
                Ok(Record::Sample(hdr, data))
            }
            t if t == Tag::SockTotals as u8 => {
                read(bytes).map(Record::SockTotals).ok_or(ParseError::Short)
            }
            t if t == Tag::TlsData as u8 => {
                let hdr: TlsData = read(bytes).ok_or(ParseError::Short)?;
                if hdr.captured_len > hdr.len || hdr.captured_len as usize > MAX_HEAD {
                    return Err(ParseError::Invalid);
                }
                let start = size_of::<TlsData>();
                let end = start + hdr.captured_len as usize;
                let data = bytes.get(start..end).ok_or(ParseError::Short)?;
                Ok(Record::TlsData(hdr, data))
            }
            t if t == Tag::Cause as u8 => read(bytes).map(Record::Cause).ok_or(ParseError::Short),
            t if t == Tag::Exec as u8 => read(bytes).map(Record::Exec).ok_or(ParseError::Short),
            t => Err(ParseError::UnknownTag(t)),
        }
    }
}

/// The kernel timestamp of a record, read without decoding it (the lanes
/// reader merges records by it). `None` for records without one.
pub fn record_ts(bytes: &[u8]) -> Option<u64> {
    let off = match *bytes.first()? {
        t if t == Tag::SockOp as u8 => core::mem::offset_of!(SockOp, ts_ns),
        t if t == Tag::ConnState as u8 => core::mem::offset_of!(ConnState, ts_ns),
        t if t == Tag::Segment as u8 => core::mem::offset_of!(SegmentHeader, ts_ns),
        t if t == Tag::Sample as u8 => core::mem::offset_of!(SampleHeader, ts_ns),
        t if t == Tag::SockTotals as u8 => core::mem::offset_of!(SockTotals, ts_ns),
        t if t == Tag::TlsData as u8 => core::mem::offset_of!(TlsData, ts_ns),
        t if t == Tag::Cause as u8 => core::mem::offset_of!(Cause, ts_ns),
        t if t == Tag::Exec as u8 => core::mem::offset_of!(Exec, ts_ns),
        _ => return None,
    };
    let b = bytes.get(off..off + 8)?;
    Some(u64::from_le_bytes([
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
    ]))
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), no padding holes with undefined content that matter
    // for reading, every bit pattern valid.
    unsafe impl aya::Pod for super::SockOp {}
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::SegmentHeader {}
    unsafe impl aya::Pod for super::SampleHeader {}
    unsafe impl aya::Pod for super::SockCtl {}
    unsafe impl aya::Pod for super::LaneCtl {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: T is a repr(C) record; viewing it as bytes is sound.
        unsafe { core::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()).to_vec() }
    }

    #[test]
    fn a_receive_that_took_the_fin_ends_before_it() {
        let end = |copied, rcv_nxt, state, err| recv_data_end(copied, rcv_nxt, || state, || err);
        // ESTABLISHED: no FIN came.
        assert_eq!(end(1006, 1006, 1, 0), 1006);
        // CLOSE_WAIT, LAST_ACK, CLOSING, everything read: the FIN was taken.
        for state in [8, 9, 11] {
            assert_eq!(end(1006, 1006, state, 0), 1005);
        }
        // The FIN came but this receive stopped before it.
        assert_eq!(end(1005, 1006, 8, 0), 1005);
        // CLOSE after a FIN (from TIME_WAIT) and after a reset.
        assert_eq!(end(1006, 1006, 7, 0), 1005);
        assert_eq!(end(1006, 1006, 7, 104), 1006);
        // Sequence numbers wrap.
        assert_eq!(end(0, 0, 8, 0), u32::MAX);
    }

    #[test]
    fn sock_op_round_trips() {
        let op = SockOp {
            tag: Tag::SockOp as u8,
            dir: Dir::Recv as u8,
            _pad: [0; 2],
            len: 77,
            ts_ns: 123,
            cookie: 0xdead_beef,
            pid: 10,
            tid: 11,
            seq_end: 4_000_000_000,
            _pad2: 0,
            comm: *b"nginx\0\0\0\0\0\0\0\0\0\0\0",
        };
        assert_eq!(Record::parse(&bytes_of(&op)), Ok(Record::SockOp(op)));
    }

    #[test]
    fn segment_carries_its_payload() {
        let hdr = SegmentHeader {
            tag: Tag::Segment as u8,
            dir: Dir::Send as u8,
            family: AF_INET,
            tcp_flags: 0x18,
            seq: 1,
            payload_len: 100,
            captured_len: 5,
            ts_ns: 9,
            cookie: 3,
            local_port: 80,
            remote_port: 40000,
            seg_flags: SEG_LOOPBACK,
            _pad: [0; 3],
            local_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        let mut b = bytes_of(&hdr);
        b.extend_from_slice(b"GET /");
        b.extend_from_slice(b"pad"); // ring records are padded to 8 bytes
        assert_eq!(Record::parse(&b), Ok(Record::Segment(hdr, b"GET /")));
        b.truncate(size_of::<SegmentHeader>() + 2);
        assert_eq!(Record::parse(&b), Err(ParseError::Short));
    }

    fn sample_header(stack_len: u32, kstack_len: u16) -> SampleHeader {
        let mut kstack = [0u64; MAX_KSTACK_FRAMES];
        kstack[0] = 0xffff_ffff_8100_0000;
        kstack[1] = 0xffff_ffff_8100_1234;
        SampleHeader {
            tag: Tag::Sample as u8,
            flags: SAMPLE_STACK_SHORT,
            kstack_len,
            cpu: 1,
            pid: 42,
            tid: 43,
            ts_ns: 1_000_000,
            ip: 0x5555_5555_1000,
            sp: 0x7ffc_0000_1000,
            bp: 0x7ffc_0000_1100,
            stack_len,
            _pad: 0,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
            kstack,
        }
    }

    #[test]
    fn sample_carries_its_stack_copy() {
        let hdr = sample_header(16, 2);
        let mut b = bytes_of(&hdr);
        b.extend_from_slice(&[7u8; 16]);
        b.extend_from_slice(&[0u8; 4]); // ring padding
        assert_eq!(Record::parse(&b), Ok(Record::Sample(hdr, &[7u8; 16][..])));
        b.truncate(size_of::<SampleHeader>() + 15);
        assert_eq!(Record::parse(&b), Err(ParseError::Short));
        b.truncate(size_of::<SampleHeader>() - 1);
        assert_eq!(Record::parse(&b), Err(ParseError::Short));
    }

    #[test]
    fn sample_lengths_beyond_the_programs_limits_are_invalid() {
        let mut b = bytes_of(&sample_header(MAX_STACK_COPY as u32 + 1, 0));
        b.resize(b.len() + MAX_STACK_COPY + 8, 0);
        assert_eq!(Record::parse(&b), Err(ParseError::Invalid));
        let b = bytes_of(&sample_header(0, MAX_KSTACK_FRAMES as u16 + 1));
        assert_eq!(Record::parse(&b), Err(ParseError::Invalid));
        let hdr = sample_header(0, MAX_KSTACK_FRAMES as u16);
        assert_eq!(
            Record::parse(&bytes_of(&hdr)),
            Ok(Record::Sample(hdr, &[][..]))
        );
    }

    #[test]
    fn drop_reasons_are_indexed_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in KernelStat::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn sock_totals_round_trip_and_every_record_has_its_time() {
        let t = SockTotals {
            tag: Tag::SockTotals as u8,
            silence: Silence::NotParsed as u8,
            _pad: [0; 6],
            ts_ns: 77,
            cookie: 5,
            silenced_calls: [1, 2],
            silenced_bytes: [300, 400],
            uncopied_bytes: [5, 6],
        };
        let b = bytes_of(&t);
        assert_eq!(Record::parse(&b), Ok(Record::SockTotals(t)));
        assert_eq!(record_ts(&b), Some(77));
        let hdr = sample_header(0, 0);
        assert_eq!(record_ts(&bytes_of(&hdr)), Some(1_000_000));
        assert_eq!(record_ts(&[Tag::Wakeup as u8, 0, 0, 0]), None);
        assert_eq!(record_ts(&[Tag::SockOp as u8, 0]), None);
    }

    #[test]
    fn tls_data_carries_its_plaintext() {
        let hdr = TlsData {
            tag: Tag::TlsData as u8,
            dir: Dir::Send as u8,
            flags: TLS_SEQ_KNOWN,
            _pad: 0,
            len: 100,
            ts_ns: 50,
            start_ns: 40,
            cookie: 7,
            pid: 1,
            tid: 2,
            seq: 3,
            captured_len: 4,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            recv_len: 0,
            _pad2: 0,
        };
        let mut b = bytes_of(&hdr);
        b.extend_from_slice(b"GET ");
        assert_eq!(Record::parse(&b), Ok(Record::TlsData(hdr, b"GET ")));
        assert_eq!(record_ts(&b), Some(50));
        b.truncate(size_of::<TlsData>() + 3);
        assert_eq!(Record::parse(&b), Err(ParseError::Short));
        let bad = TlsData {
            captured_len: 101,
            ..hdr
        };
        let mut b = bytes_of(&bad);
        b.resize(b.len() + 101, 0);
        assert_eq!(Record::parse(&b), Err(ParseError::Invalid));
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert_eq!(Record::parse(&[]), Err(ParseError::Empty));
        assert_eq!(Record::parse(&[99, 0, 0]), Err(ParseError::UnknownTag(99)));
        assert_eq!(Record::parse(&[1, 0, 0]), Err(ParseError::Short));
        assert_eq!(Record::parse(&[2]), Err(ParseError::Short));
        assert_eq!(Record::parse(&[4, 0, 0]), Err(ParseError::Short));
    }
}
