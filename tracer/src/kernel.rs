//! The one seam around the kernel: load the programs, attach them, hand out
//! the record reader ([`Events`]), read the drop counters. Dropping
//! [`Kernel`] detaches everything (aya owns the links).
//!
//! Memory the kernel shares with the agent (all of it counts in the agent's
//! RSS once touched): per CPU, a packet lane (`ring_bytes`, rounded up to a
//! power of two of 256 KiB chunks), an op lane (a quarter of that, at least
//! one chunk) and two 64 KiB nested lanes, mapped once; and the ring buffer
//! of CPU samples (see [`samples_ring_bytes`]), which the kernel maps twice
//! (its data pages appear at two addresses).
use std::{fs::File, path::Path};

use arrayvec::ArrayVec;

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        cgroup_skb::CgroupSkbAttachType,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        BtfTracePoint, CgroupAttachMode, CgroupSkb, FExit, KProbe, PerfEvent, ProgramError, UProbe,
    },
    Btf as AyaBtf, Ebpf, EbpfLoader,
};
use thiserror::Error;
use tracer_common::tls_programs;
use tracer_common::{
    globals, DropReason, KernelStat, SockCtl, CTL_ENTRIES, CTL_GEN, LANE_CHUNK, MAP_CTL_STATE,
    MAP_DROPS, MAP_EVENTS, MAP_LANES, MAP_LANE_CTL, MAP_NESTED, MAP_SAMPLE_SCRATCH, MAP_SOCK_CTL,
    MAP_STATS, MAX_HEAD, MAX_SNAP_LEN, MAX_STACK_COPY, NESTED_PER_CPU, PROG_PROFILE,
};

use crate::{
    btf::{Btf, BtfError},
    lanes::{Events, LaneLayout},
    sources::{CallSource, Hook},
};

/// Size of the ring buffer of CPU samples: room for about four samples of
/// every CPU (a sample is at most ~37 KiB, 99 a second per CPU, drained
/// every 10 ms); 64 KiB (wake-ups only) when profiling is off.
pub fn samples_ring_bytes(cpus: u32, profiling: bool) -> u32 {
    if !profiling {
        return 64 << 10;
    }
    (cpus.max(1) * (128 << 10))
        .next_power_of_two()
        .max(256 << 10)
}

/// Chunks per primary lane for a requested lane size: a power of two, at
/// least one.
pub fn lane_chunks(ring_bytes: u32) -> u32 {
    (ring_bytes as usize)
        .div_ceil(LANE_CHUNK)
        .max(1)
        .next_power_of_two() as u32
}

/// The reader is woken when a lane's producer crosses a multiple of the
/// returned power of two: `wakeup_bytes` rounded down, at most a quarter of
/// the lane.
fn wake_shift(wakeup_bytes: u64, lane_bytes: u64) -> u32 {
    let quarter = (lane_bytes / 4).max(8);
    wakeup_bytes.clamp(8, quarter).ilog2()
}

/// The TLS programs (entry probes, then the shared return probe).
const TLS_PROGRAMS: [&str; 7] = [
    tls_programs::WRITE,
    tls_programs::WRITE_EX,
    tls_programs::READ,
    tls_programs::READ_EX,
    tls_programs::RET,
    tls_programs::FREE,
    tls_programs::SET_BIO,
];

/// The Go crypto/tls programs (entries, then Read's copy or its RETs).
const GO_TLS_PROGRAMS: [&str; 4] = [
    tracer_common::gotls::programs::WRITE,
    tracer_common::gotls::programs::READ,
    tracer_common::gotls::programs::RET,
    tracer_common::gotls::programs::COPY,
];

static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf.o"));

/// What loading or attaching can fail on, with the step that failed.
#[derive(Debug, Error)]
pub enum KernelError {
    /// A struct offset the programs need is not in this kernel's BTF.
    #[error("kernel layout")]
    Layout(#[from] BtfError),
    /// aya could not read the kernel's BTF.
    #[error("reading kernel BTF for loading")]
    Btf(#[from] aya::BtfError),
    /// Creating maps or relocating the object failed.
    #[error("loading the eBPF object")]
    Load(#[from] aya::EbpfError),
    /// A program failed to load or attach (the verifier log is in here).
    #[error("{step} {program}")]
    Program {
        /// "loading" or "attaching".
        step: &'static str,
        /// Program name.
        program: &'static str,
        /// aya's error, with the verifier log when there is one.
        source: ProgramError,
    },
    /// A map is missing from the object (build mismatch).
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    /// A map has an unexpected type.
    #[error("map {0}")]
    Map(&'static str, #[source] aya::maps::MapError),
    /// The CPUs could not be listed (for the sampling program).
    #[error("listing CPUs ({0})")]
    Cpus(&'static str, #[source] std::io::Error),
    /// Sampling could not be attached to any CPU.
    #[error("attaching {program} to the cpu-clock of any CPU")]
    NoCpuAttached {
        /// Program name.
        program: &'static str,
        /// The error of the first CPU that failed.
        source: ProgramError,
    },
    /// Mapping the lanes into the agent failed.
    #[error("mapping the capture lanes")]
    Mmap(#[source] std::io::Error),
    /// Opening the cgroup failed.
    #[error("opening cgroup {path}")]
    Cgroup {
        /// The cgroup v2 root.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Tunables of the kernel side.
#[derive(Clone, Debug)]
pub struct KernelConfig {
    /// Payload bytes copied per packet.
    pub snap_len: u32,
    /// false = attach everything but return at once (benchmark floor).
    pub enabled: bool,
    /// Capture lane size per CPU in bytes (rounded up to a power of two of
    /// 256 KiB chunks).
    pub ring_bytes: u32,
    /// Pending bytes before the kernel wakes the reader.
    pub wakeup_bytes: u64,
    /// CPU sampling frequency per CPU in Hz (`tracer_common::PROFILE_HZ_DEFAULT`
    /// is the usual choice); `None` = profiling off: the sampling program
    /// is neither loaded into the kernel nor attached.
    pub profile_hz: Option<u32>,
    /// User-stack bytes copied per sample (`tracer_common::STACK_COPY_DEFAULT`;
    /// clamped to `MAX_STACK_COPY`).
    pub stack_copy: u32,
    /// Head window: bytes copied from the start of every HTTP/1 message
    /// (`tracer_common::HEAD_MAX_DEFAULT`; clamped to `MAX_HEAD`).
    pub head_max: u32,
    /// The source of send/receive calls, when forced (`--capture-source`);
    /// None: the cheapest the kernel offers and accepts.
    pub capture_source: Option<CallSource>,
    /// Plaintext bytes copied per TLS library call
    /// (`tracer_common::TLS_SNAP_DEFAULT`; clamped to `MAX_HEAD`); 0: the
    /// TLS programs are not loaded and the socket programs skip their
    /// bookkeeping.
    pub tls_snap: u32,
    /// Load the runtime-hook programs (nginx's upstream hook), attached per
    /// file by the agent.
    pub runtime_hooks: bool,
    /// Attach the Go goroutine-creation hooks too (`--go-goroutine-ancestry`).
    pub go_ancestry: bool,
}

/// The struct member offsets the programs read, from the running kernel's
/// BTF (aya-ebpf has no CO-RE relocations): resolved once at start-up, so
/// that the parsed BTF (megabytes) need not stay in memory.
#[derive(Clone, Debug)]
pub struct KernelLayout {
    /// Offsets every capture program needs.
    capture: [(&'static str, u32); 17],
    /// Offsets of the sampling program: pt_regs as saved at kernel entry
    /// (the user registers) and the task's mm (NULL for kernel threads).
    /// An error only matters when profiling is on.
    sampling: Result<[(&'static str, u32); 4], BtfError>,
    /// Offsets of the Go TLS probes (file descriptor -> socket); without
    /// them Go programs are not probed.
    go_tls: Result<[(&'static str, u32); 8], BtfError>,
}

impl KernelLayout {
    /// Looks every offset up.
    pub fn from_btf(btf: &Btf) -> Result<KernelLayout, BtfError> {
        let sock = |path: &[&str]| btf.offset_of("sock", path);
        let capture = [
            (
                globals::OFF_WRITE_SEQ,
                btf.offset_of("tcp_sock", &["write_seq"])?,
            ),
            (
                globals::OFF_COPIED_SEQ,
                btf.offset_of("tcp_sock", &["copied_seq"])?,
            ),
            (
                globals::OFF_RCV_NXT,
                btf.offset_of("tcp_sock", &["rcv_nxt"])?,
            ),
            (globals::OFF_STATE, sock(&["__sk_common", "skc_state"])?),
            (globals::OFF_SK_ERR, sock(&["sk_err"])?),
            (globals::OFF_DADDR, sock(&["__sk_common", "skc_daddr"])?),
            (
                globals::OFF_RCV_SADDR,
                sock(&["__sk_common", "skc_rcv_saddr"])?,
            ),
            (globals::OFF_DPORT, sock(&["__sk_common", "skc_dport"])?),
            (globals::OFF_NUM, sock(&["__sk_common", "skc_num"])?),
            (globals::OFF_FAMILY, sock(&["__sk_common", "skc_family"])?),
            (
                globals::OFF_V6_DADDR,
                sock(&["__sk_common", "skc_v6_daddr"])?,
            ),
            (
                globals::OFF_V6_RCV_SADDR,
                sock(&["__sk_common", "skc_v6_rcv_saddr"])?,
            ),
            (globals::OFF_COOKIE, sock(&["__sk_common", "skc_cookie"])?),
            (
                globals::OFF_CLOCK,
                btf.offset_of("tcp_sock", &["tcp_clock_cache"])?,
            ),
            (
                globals::OFF_TASK_COMM,
                btf.offset_of("task_struct", &["comm"])?,
            ),
            (
                globals::OFF_TASK_PID,
                btf.offset_of("task_struct", &["pid"])?,
            ),
            (
                globals::OFF_TASK_TGID,
                btf.offset_of("task_struct", &["tgid"])?,
            ),
        ];
        let sampling = (|| {
            Ok([
                (globals::OFF_REGS_IP, btf.offset_of("pt_regs", &["ip"])?),
                (globals::OFF_REGS_SP, btf.offset_of("pt_regs", &["sp"])?),
                (globals::OFF_REGS_BP, btf.offset_of("pt_regs", &["bp"])?),
                (globals::OFF_TASK_MM, btf.offset_of("task_struct", &["mm"])?),
            ])
        })();
        let go_tls = (|| {
            use tracer_common::gotls::globals as g;
            Ok([
                (g::OFF_TASK_FILES, btf.offset_of("task_struct", &["files"])?),
                (g::OFF_FILES_FDT, btf.offset_of("files_struct", &["fdt"])?),
                (g::OFF_FDT_MAX_FDS, btf.offset_of("fdtable", &["max_fds"])?),
                (g::OFF_FDT_FD, btf.offset_of("fdtable", &["fd"])?),
                (
                    g::OFF_FILE_PRIVATE,
                    btf.offset_of("file", &["private_data"])?,
                ),
                (g::OFF_SOCKET_FILE, btf.offset_of("socket", &["file"])?),
                (g::OFF_SOCKET_SK, btf.offset_of("socket", &["sk"])?),
                (g::OFF_SK_PROTOCOL, btf.offset_of("sock", &["sk_protocol"])?),
            ])
        })();
        Ok(KernelLayout {
            capture,
            sampling,
            go_tls,
        })
    }
}

/// Programs loaded and attached.
pub struct Kernel {
    ebpf: Ebpf,
    drops: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
    profiling_cpus: Vec<u32>,
    layout: LaneLayout,
    hooks_loaded: bool,
}

/// Loads uprobe program `name` (attached per file later, see tls::attach).
fn load_uprobe(ebpf: &mut Ebpf, name: &'static str) -> Result<(), KernelError> {
    let prog: &mut UProbe = ebpf
        .program_mut(name)
        .ok_or(KernelError::MissingMap(name))?
        .try_into()
        .map_err(program_err("loading", name))?;
    prog.load().map_err(program_err("loading", name))
}

/// Loads the Go crypto/tls programs, all or none: a kernel that refuses
/// one leaves Go programs uncovered (their files are then not attached and
/// their ciphertext is reported as not covered), not the agent stopped.
fn load_go_tls(ebpf: &mut Ebpf) {
    load_all(
        ebpf,
        &GO_TLS_PROGRAMS,
        "Go TLS programs not covered: the kernel refused them",
    );
}

/// The runtime-hook programs: nginx's, Go net/http's, CPython asyncio's.
const HOOK_PROGRAMS: [&str; 10] = [
    tracer_common::hook_programs::NGX_UPSTREAM,
    tracer_common::hook_programs::NGX_UPSTREAM_RET,
    tracer_common::hook_programs::GO_SERVE,
    tracer_common::hook_programs::GO_SERVE_RET,
    tracer_common::hook_programs::GO_SPAWN,
    tracer_common::hook_programs::GO_SPAWN_RET,
    tracer_common::hook_programs::GO_ROUND_TRIP,
    tracer_common::hook_programs::PY_TASK_ENTER,
    tracer_common::hook_programs::PY_TASK_LEAVE,
    tracer_common::hook_programs::PY_TASK_CREATE,
];

/// Loads the runtime-hook programs, all or none: a kernel that refuses one
/// leaves the hooks off (calls then link by the other rules), not the agent
/// stopped.
fn load_hooks(ebpf: &mut Ebpf) -> bool {
    load_all(
        ebpf,
        &HOOK_PROGRAMS,
        "runtime hooks off: the kernel refused them",
    )
}

/// Loads uprobe programs `names`, all or none (`refused` is logged when
/// one is refused); true when all loaded.
fn load_all(ebpf: &mut Ebpf, names: &[&'static str], refused: &str) -> bool {
    for &name in names {
        if let Err(e) = load_uprobe(ebpf, name) {
            tracing::warn!(error = %crate::error::chain(&e), "{refused}");
            for &name in names {
                if let Some(Ok(p)) = ebpf.program_mut(name).map(<&mut UProbe>::try_from) {
                    let _ = p.unload();
                }
            }
            return false;
        }
    }
    true
}

/// Takes map `name` out of the object as a `T`.
fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    T::try_from(map).map_err(|e| KernelError::Map(name, e))
}

/// The exec tracepoint, which tells user space when a process starts
/// another program (see `tracer-ebpf/src/procs.rs`). Without it the agent
/// still runs; a process that starts another program of the same name (a
/// version manager's shim) keeps the description of the first.
fn attach_exec(ebpf: &mut Ebpf, btf: &AyaBtf) {
    if let Err(e) = attach_tp_btf(ebpf, btf, "process_exec", "sched_process_exec") {
        tracing::warn!(
            error = %e,
            "exec tracepoint not attached: a process that starts another program of \
             the same name keeps the description (command line, executable) of the first"
        );
    }
}

/// Loads tp_btf program `program` on tracepoint `tracepoint` and attaches it.
fn attach_tp_btf(
    ebpf: &mut Ebpf,
    btf: &AyaBtf,
    program: &'static str,
    tracepoint: &str,
) -> Result<(), KernelError> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or(KernelError::MissingMap(program))?
        .try_into()
        .map_err(program_err("loading", program))?;
    prog.load(tracepoint, btf)
        .map_err(program_err("loading", program))?;
    prog.attach().map_err(program_err("attaching", program))?;
    Ok(())
}

/// Whether a drop may lose a request (see [`Kernel::request_drops`]): all
/// but those of CPU samples, socket totals and runtime-hook causes. A new
/// reason counts until shown harmless.
fn may_lose_request(r: DropReason) -> bool {
    !matches!(
        r,
        DropReason::RingFullSample
            | DropReason::UserStackFailed
            | DropReason::KernelStackFailed
            | DropReason::RingFullTotals
            | DropReason::RingFullCause
            | DropReason::CauseUnreadable
            | DropReason::RingFullExec
    )
}

/// Every key of `keys` with its counter (at `index(key)`) summed over CPUs
/// (0 when it cannot be read).
fn per_cpu_sums<K: Copy>(
    map: &PerCpuArray<MapData, u64>,
    keys: &[K],
    index: fn(K) -> u32,
) -> Vec<(K, u64)> {
    keys.iter()
        .map(|&k| {
            let n = map
                .get(&index(k), 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0);
            (k, n)
        })
        .collect()
}

fn program_err(
    step: &'static str,
    program: &'static str,
) -> impl FnOnce(ProgramError) -> KernelError {
    move |source| KernelError::Program {
        step,
        program,
        source,
    }
}

/// The verifier gives up on a program past this many instructions walked.
const VERIFIER_LIMIT: u32 = 1_000_000;

/// Logs how many instructions the verifier walked for each loaded program
/// (debug) and for the largest (info): that count moves with the kernel's
/// verifier, not only with the program (capture_egress passed one 6.18
/// kernel and went past the limit on a later one), so it is the figure to
/// watch when a program grows or a kernel is new.
fn log_verifier_work(ebpf: &Ebpf) {
    let mut largest = None;
    for (name, prog) in ebpf.programs() {
        let Some(n) = prog
            .info()
            .ok()
            .and_then(|i| i.verified_instruction_count())
        else {
            continue;
        };
        tracing::debug!(program = name, verified_instructions = n, "program loaded");
        if largest.is_none_or(|(_, m)| n > m) {
            largest = Some((name, n));
        }
    }
    if let Some((name, n)) = largest {
        tracing::info!(
            "verifier: the largest program, {name}, took {n} of its {VERIFIER_LIMIT} instructions"
        );
    }
}

impl Kernel {
    /// Loads the programs with the offsets of this kernel and attaches them:
    /// the first source of calls in `calls` (see `sources`) that loads and
    /// attaches, the connection-state tracepoint, cgroup_skb on
    /// `cgroup_root`, and, when `cfg.profile_hz` is set, the CPU sampling
    /// program on the cpu-clock of every online CPU.
    pub fn load(
        cfg: &KernelConfig,
        layout: &KernelLayout,
        calls: &[(CallSource, Vec<Hook>)],
        cgroup_root: &Path,
    ) -> Result<Kernel, KernelError> {
        let offsets = layout.capture;
        let go_layout = layout.go_tls.clone();
        // Needed only when sampling: profiling off must not depend on them.
        let sampling = match (cfg.profile_hz, &layout.sampling) {
            (Some(_), Ok(o)) => *o,
            (Some(_), Err(e)) => return Err(KernelError::Layout(e.clone())),
            (None, _) => [
                (globals::OFF_REGS_IP, 0),
                (globals::OFF_REGS_SP, 0),
                (globals::OFF_REGS_BP, 0),
                (globals::OFF_TASK_MM, 0),
            ],
        };
        let stack_copy = cfg.stack_copy.min(MAX_STACK_COPY as u32);
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| KernelError::Cpus(what, e))? as u32;
        // One ~37 KiB scratch entry per possible CPU, only when sampling.
        let scratch_entries = match cfg.profile_hz {
            Some(_) => cpus,
            None => 1,
        };
        let chunks = lane_chunks(cfg.ring_bytes);
        // Call records are 64 bytes; packets carry payload.
        let layout = LaneLayout {
            cpus,
            chunks,
            op_chunks: (chunks / 4).max(1),
        };
        let lane_mask = layout.chunks - 1;
        let op_lane_mask = layout.op_chunks - 1;
        let packet_wake = wake_shift(cfg.wakeup_bytes, u64::from(chunks) * LANE_CHUNK as u64);
        let op_wake = wake_shift(
            cfg.wakeup_bytes,
            u64::from(layout.op_chunks) * LANE_CHUNK as u64,
        );
        // Stores are not reordered with one another on x86 (see lane.rs).
        let strict_publish = u32::from(!cfg!(target_arch = "x86_64"));
        let aya_btf = AyaBtf::from_sys_fs()?;
        let snap = cfg.snap_len.min(MAX_SNAP_LEN as u32);
        let head_max = cfg.head_max.min(MAX_HEAD as u32);
        let enabled = u32::from(cfg.enabled);
        let tls_snap = cfg.tls_snap.min(MAX_HEAD as u32);
        let pid = std::process::id();
        // The kprobe source may be the one that attaches (see KPROBE_CALLS).
        let kprobe_calls = u32::from(calls.iter().any(|(s, _)| *s == CallSource::Kprobe));
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&aya_btf))
            .override_global(globals::SNAP_LEN, &snap, true)
            .override_global(globals::HEAD_MAX, &head_max, true)
            .override_global(globals::ENABLED, &enabled, true)
            .override_global(globals::AGENT_PID, &pid, true)
            .override_global(globals::KPROBE_CALLS, &kprobe_calls, true)
            .override_global(globals::STACK_COPY, &stack_copy, true)
            .override_global(globals::LANE_MASK, &lane_mask, true)
            .override_global(globals::OP_LANE_MASK, &op_lane_mask, true)
            .override_global(globals::WAKE_SHIFT, &packet_wake, true)
            .override_global(globals::OP_WAKE_SHIFT, &op_wake, true)
            .override_global(globals::STRICT_PUBLISH, &strict_publish, true)
            .override_global(globals::NR_CPUS, &cpus, true)
            .override_global(globals::TLS_SNAP, &tls_snap, true)
            .map_max_entries(
                MAP_EVENTS,
                samples_ring_bytes(cpus, cfg.profile_hz.is_some()),
            )
            .map_max_entries(MAP_LANES, cpus * (layout.chunks + layout.op_chunks))
            .map_max_entries(MAP_NESTED, cpus * NESTED_PER_CPU)
            .map_max_entries(MAP_LANE_CTL, layout.lanes())
            .map_max_entries(MAP_SAMPLE_SCRATCH, scratch_entries);
        for (name, off) in offsets.iter().chain(&sampling) {
            loader.override_global(name, off, true);
        }
        let go_tls = match &go_layout {
            Ok(o) => Some(*o),
            Err(e) => {
                tracing::warn!(error = %e, "Go TLS programs not covered: kernel offsets missing");
                None
            }
        };
        for (name, off) in go_tls.iter().flatten() {
            loader.override_global(name, off, true);
        }
        let mut ebpf = loader.load(PROGRAMS)?;

        let (source, hooks) = attach_calls(&mut ebpf, &aya_btf, calls)?;
        tracing::info!(
            "capture sources: {}",
            crate::sources::describe(source, &hooks, cfg.profile_hz.is_some())
        );
        attach_tp_btf(
            &mut ebpf,
            &aya_btf,
            "inet_sock_set_state",
            "inet_sock_set_state",
        )?;
        attach_exec(&mut ebpf, &aya_btf);
        let cgroup = File::open(cgroup_root).map_err(|source| KernelError::Cgroup {
            path: cgroup_root.display().to_string(),
            source,
        })?;
        for (name, attach) in [
            ("capture_egress", CgroupSkbAttachType::Egress),
            ("capture_ingress", CgroupSkbAttachType::Ingress),
        ] {
            let prog: &mut CgroupSkb = ebpf
                .program_mut(name)
                .ok_or(KernelError::MissingMap(name))?
                .try_into()
                .map_err(program_err("loading", name))?;
            prog.load().map_err(program_err("loading", name))?;
            // A bpf_link, which the kernel always treats as multi-attach:
            // other cgroup programs (systemd, runtimes) keep running.
            prog.attach(&cgroup, attach, CgroupAttachMode::Single)
                .map_err(program_err("attaching", name))?;
        }
        // Loaded now, attached per file later (see tls::attach).
        if tls_snap > 0 {
            for name in TLS_PROGRAMS {
                load_uprobe(&mut ebpf, name)?;
            }
            if go_tls.is_some() {
                load_go_tls(&mut ebpf);
            }
        }
        // The hooks read sockets through file descriptors (the Go TLS
        // offsets).
        let hooks_loaded = cfg.runtime_hooks && go_tls.is_some() && load_hooks(&mut ebpf);
        let profiling_cpus = match cfg.profile_hz {
            Some(hz) => attach_sampling(&mut ebpf, hz)?,
            None => Vec::new(),
        };
        log_verifier_work(&ebpf);
        let drops = take(&mut ebpf, MAP_DROPS)?;
        let stats = take(&mut ebpf, MAP_STATS)?;
        drop(aya_btf);
        release_freed_memory();
        Ok(Kernel {
            ebpf,
            drops,
            stats,
            profiling_cpus,
            layout,
            hooks_loaded,
        })
    }

    /// Whether the runtime-hook programs are loaded (to be attached per
    /// file).
    pub fn runtime_hooks(&self) -> bool {
        self.hooks_loaded
    }

    /// CPUs whose cpu-clock the sampling program is attached to (empty when
    /// profiling is off).
    pub fn profiling_cpus(&self) -> &[u32] {
        &self.profiling_cpus
    }

    /// Takes the record reader: the lanes, mapped, and the samples ring
    /// (once).
    pub fn take_events(&mut self) -> Result<Events, KernelError> {
        let data = |ebpf: &mut Ebpf, name: &'static str| -> Result<MapData, KernelError> {
            match ebpf.take_map(name).ok_or(KernelError::MissingMap(name))? {
                aya::maps::Map::Array(m) => Ok(m),
                _ => Err(KernelError::MissingMap(name)),
            }
        };
        let lanes = data(&mut self.ebpf, MAP_LANES)?;
        let nested = data(&mut self.ebpf, MAP_NESTED)?;
        let ctl = data(&mut self.ebpf, MAP_LANE_CTL)?;
        let samples: RingBuf<MapData> = take(&mut self.ebpf, MAP_EVENTS)?;
        Events::new(self.layout, lanes, nested, ctl, samples).map_err(KernelError::Mmap)
    }

    /// Takes the writer of per-socket requests (once).
    pub fn take_ctl(&mut self) -> Result<SockCtlMap, KernelError> {
        Ok(SockCtlMap {
            map: take(&mut self.ebpf, MAP_SOCK_CTL)?,
            state: take(&mut self.ebpf, MAP_CTL_STATE)?,
            gen: 0,
            errors: 0,
        })
    }

    /// What the programs counted instead of emitting records, summed over
    /// CPUs.
    pub fn stats(&self) -> Vec<(KernelStat, u64)> {
        per_cpu_sums(&self.stats, &KernelStat::ALL, |s| s as u32)
    }

    /// Kernel-side drops so far, per reason, summed over CPUs.
    pub fn drops(&self) -> Vec<(DropReason, u64)> {
        per_cpu_sums(&self.drops, &DropReason::ALL, |r| r as u32)
    }

    /// Records lost so far that may have carried a request's bytes, its
    /// call or its connection (full lanes, unreadable packets or
    /// plaintext), summed over CPUs: what makes the correlator's
    /// uniqueness rules unsafe for a while. CPU samples and runtime-hook
    /// causes are left out (their loss costs a profile or a link, never
    /// a request).
    pub fn request_drops(&self) -> u64 {
        let keys: ArrayVec<DropReason, { DropReason::ALL.len() }> = DropReason::ALL
            .into_iter()
            .filter(|&r| may_lose_request(r))
            .collect();
        per_cpu_sums(&self.drops, &keys, |r| r as u32)
            .iter()
            .map(|(_, n)| n)
            .sum()
    }

    /// A TLS or runtime-hook program, loaded (None when it is off):
    /// attached and detached per file by `tls::attach`.
    pub fn uprobe(&mut self, name: &str) -> Option<&mut UProbe> {
        let prog: &mut UProbe = self.ebpf.program_mut(name)?.try_into().ok()?;
        prog.fd().is_ok().then_some(prog)
    }

    /// Writes a Go executable's offsets to slot `slot` of `GO_TLS_FILES`.
    pub fn set_go_tls_file(
        &mut self,
        slot: u32,
        file: &tracer_common::gotls::GoTlsFile,
    ) -> Result<(), aya::maps::MapError> {
        self.set_slot("GO_TLS_FILES", slot, file)
    }

    /// Writes a Go executable's net/http hook offsets to slot `slot` of
    /// `GO_HOOK_FILES`.
    pub fn set_go_hook_file(
        &mut self,
        slot: u32,
        file: &tracer_common::GoHookFile,
    ) -> Result<(), aya::maps::MapError> {
        self.set_slot("GO_HOOK_FILES", slot, file)
    }

    /// Whether a program of the Go file in hook slot `slot` made a net/http
    /// client call its hooks can name since the slot was cleared
    /// (`GO_HOOK_WANTED`, set by the roundTrip probe).
    pub fn go_hook_wanted(&self, slot: u32) -> bool {
        let Some(map) = self.ebpf.map("GO_HOOK_WANTED") else {
            return false;
        };
        aya::maps::Array::<&MapData, u32>::try_from(map)
            .and_then(|a| a.get(&slot, 0))
            .is_ok_and(|v| v != 0)
    }

    /// Clears `GO_HOOK_WANTED` for a hook slot about to serve a file.
    pub fn clear_go_hook_wanted(&mut self, slot: u32) -> Result<(), aya::maps::MapError> {
        self.set_slot("GO_HOOK_WANTED", slot, &0u32)
    }

    fn set_slot<T: aya::Pod>(
        &mut self,
        name: &str,
        slot: u32,
        value: &T,
    ) -> Result<(), aya::maps::MapError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(aya::maps::MapError::InvalidName {
                name: name.to_string(),
            })?;
        let mut array: aya::maps::Array<&mut MapData, T> = aya::maps::Array::try_from(map)?;
        array.set(slot, *value, 0)
    }

    /// Removes what the Go TLS probes keep of process `pid`, which exited:
    /// its connections' sockets and its goroutines' calls: how many calls
    /// were still running (it exited inside them).
    pub fn forget_go_calls(&mut self, pid: u32) -> usize {
        use tracer_common::gotls::{GO_CALL_BYTES, GO_CALL_LIVE, GO_CALL_RUNNING, GO_SOCK_BYTES};
        self.forget_pid::<GO_SOCK_BYTES>("GO_TLS_SOCKS", pid, |_| false);
        self.forget_pid::<GO_CALL_BYTES>("GO_TLS_CALLS", pid, |v| {
            v[GO_CALL_LIVE] == GO_CALL_RUNNING
        })
    }

    /// Removes the entries of process `pid` from hash map `name`, keyed by
    /// a `GoCallKey` (the process first) with `N`-byte values: how many of
    /// them were `counted`.
    fn forget_pid<const N: usize>(
        &mut self,
        name: &str,
        pid: u32,
        counted: impl Fn(&[u8; N]) -> bool,
    ) -> usize {
        use tracer_common::gotls::GoCallKey;
        let Some(map) = self.ebpf.map_mut(name) else {
            return 0;
        };
        let Ok(mut entries) = aya::maps::HashMap::<&mut MapData, GoCallKey, [u8; N]>::try_from(map)
        else {
            return 0;
        };
        let gone: Vec<(GoCallKey, bool)> = entries
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.pid == u64::from(pid))
            .map(|(k, v)| (k, counted(&v)))
            .collect();
        gone.iter()
            .filter(|(k, c)| entries.remove(k).is_ok() && *c)
            .count()
    }

    /// Ids of the programs this agent loaded (for the exit check); the
    /// sampling program is among them only when profiling is on.
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok().map(|i| i.id()))
            .collect()
    }
}

/// Loads and attaches the hooks of the first source in `candidates` that
/// the kernel accepts; a source that fails is unloaded whole and logged,
/// and the next one tried. Err: the last source's error.
fn attach_calls(
    ebpf: &mut Ebpf,
    btf: &AyaBtf,
    candidates: &[(CallSource, Vec<Hook>)],
) -> Result<(CallSource, Vec<Hook>), KernelError> {
    let mut last = None;
    for (source, hooks) in candidates {
        let mut done = Vec::new();
        let mut failed = None;
        for hook in hooks {
            match attach_hook(ebpf, btf, *source, hook) {
                Ok(()) => done.push(hook.program),
                Err(e) => {
                    failed = Some((e, hook.program));
                    break;
                }
            }
        }
        let Some((e, program)) = failed else {
            return Ok((*source, hooks.clone()));
        };
        tracing::warn!(
            source = %source,
            error = %crate::error::chain(&e),
            "this source of calls cannot be used here; trying the next"
        );
        // The one that failed may have loaded (and failed to attach).
        for program in done.into_iter().chain([program]) {
            unload_hook(ebpf, *source, program);
        }
        last = Some(e);
    }
    Err(last.unwrap_or(KernelError::MissingMap("a source of calls")))
}

fn attach_hook(
    ebpf: &mut Ebpf,
    btf: &AyaBtf,
    source: CallSource,
    hook: &Hook,
) -> Result<(), KernelError> {
    let name = hook.program;
    let prog = ebpf
        .program_mut(name)
        .ok_or(KernelError::MissingMap(name))?;
    match source {
        CallSource::Tracepoint => attach_tp_btf(ebpf, btf, name, hook.target)?,
        CallSource::Fentry => {
            let p: &mut FExit = prog.try_into().map_err(program_err("loading", name))?;
            p.load(hook.target, btf)
                .map_err(program_err("loading", name))?;
            p.attach().map_err(program_err("attaching", name))?;
        }
        CallSource::Kprobe => {
            let p: &mut KProbe = prog.try_into().map_err(program_err("loading", name))?;
            p.load().map_err(program_err("loading", name))?;
            p.attach(hook.target, 0)
                .map_err(program_err("attaching", name))?;
        }
    }
    Ok(())
}

/// Detaches and unloads a hook of a source that could not be used whole.
fn unload_hook(ebpf: &mut Ebpf, source: CallSource, program: &'static str) {
    let Some(prog) = ebpf.program_mut(program) else {
        return;
    };
    let r = match source {
        CallSource::Tracepoint => <&mut BtfTracePoint>::try_from(prog).and_then(|p| p.unload()),
        CallSource::Fentry => <&mut FExit>::try_from(prog).and_then(|p| p.unload()),
        CallSource::Kprobe => <&mut KProbe>::try_from(prog).and_then(|p| p.unload()),
    };
    match r {
        Ok(()) | Err(ProgramError::NotLoaded) => {}
        Err(e) => tracing::warn!(program, error = %e, "unloading"),
    }
}

/// Loads the sampling program and attaches it to the software cpu-clock
/// event of every online CPU (/sys/devices/system/cpu/online), sampling at
/// `hz` per CPU. A CPU that refuses (going offline meanwhile) is logged and
/// skipped; none attached is an error. Returns the CPUs attached.
fn attach_sampling(ebpf: &mut Ebpf, hz: u32) -> Result<Vec<u32>, KernelError> {
    let name = PROG_PROFILE;
    let cpus = aya::util::online_cpus().map_err(|(what, e)| KernelError::Cpus(what, e))?;
    let prog: &mut PerfEvent = ebpf
        .program_mut(name)
        .ok_or(KernelError::MissingMap(name))?
        .try_into()
        .map_err(program_err("loading", name))?;
    prog.load().map_err(program_err("loading", name))?;
    let mut attached = Vec::with_capacity(cpus.len());
    let mut first_err = None;
    for cpu in cpus {
        match prog.attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Frequency(u64::from(hz.max(1))),
            false,
        ) {
            Ok(_) => attached.push(cpu),
            Err(e) => {
                tracing::warn!(cpu, error = %e, "cannot sample this CPU");
                first_err.get_or_insert(e);
            }
        }
    }
    match (attached.is_empty(), first_err) {
        (true, Some(source)) => Err(KernelError::NoCpuAttached {
            program: name,
            source,
        }),
        _ => Ok(attached),
    }
}

/// The agent's per-socket requests to the programs (`SOCK_CTL`, keyed by
/// socket cookie), and the generation that tells the programs to re-read
/// them.
pub struct SockCtlMap {
    map: aya::maps::HashMap<MapData, u64, SockCtl>,
    state: aya::maps::Array<MapData, u64>,
    gen: u64,
    /// Updates the kernel refused (the entry stays as it was).
    pub errors: u64,
}

impl SockCtlMap {
    /// Applies changes in order (`None` deletes the entry), then publishes
    /// the number of entries and a new generation. One map write per change
    /// and two per batch; nothing when there is no change.
    pub fn apply(&mut self, updates: &[(u64, Option<SockCtl>)], entries: usize) {
        if updates.is_empty() {
            return;
        }
        for (cookie, ctl) in updates {
            let r = match ctl {
                Some(c) => self.map.insert(cookie, c, 0),
                None => match self.map.remove(cookie) {
                    Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                    r => r,
                },
            };
            if r.is_err() {
                self.errors += 1;
            }
        }
        self.gen += 1;
        // Entries first: a program that sees the new generation also sees
        // them.
        if self
            .state
            .set(CTL_ENTRIES, entries as u64, 0)
            .and_then(|_| self.state.set(CTL_GEN, self.gen, 0))
            .is_err()
        {
            self.errors += 1;
        }
    }
}

/// Gives the heap the loader no longer needs back to the system: parsing
/// the kernel's BTF (aya's copy, ~24 MB here) leaves the allocator holding
/// pages the agent would otherwise carry in its RSS for its whole life.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
