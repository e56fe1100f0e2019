//! The one seam around the kernel: load the programs, attach them, hand out
//! the ring buffer, read the drop counters. Dropping [`Kernel`] detaches
//! everything (aya owns the links).
use std::{fs::File, path::Path};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        cgroup_skb::CgroupSkbAttachType, BtfTracePoint, CgroupAttachMode, CgroupSkb, ProgramError,
    },
    Btf as AyaBtf, Ebpf, EbpfLoader,
};
use thiserror::Error;
use tracer_common::{globals, DropReason, MAP_DROPS, MAP_EVENTS, MAX_SNAP_LEN};

use crate::btf::{Btf, BtfError};

static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf.o"));

/// What loading or attaching can fail on, with the step that failed.
#[derive(Debug, Error)]
pub enum KernelError {
    /// A struct offset the programs need is not in this kernel's BTF.
    #[error("kernel layout: {0}")]
    Layout(#[from] BtfError),
    /// aya could not read the kernel's BTF.
    #[error("reading kernel BTF for loading: {0}")]
    Btf(#[from] aya::BtfError),
    /// Creating maps or relocating the object failed.
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program failed to load or attach (the verifier log is in here).
    #[error("{step} {program}: {source}")]
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
    #[error("map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    /// Opening the cgroup failed.
    #[error("opening cgroup {path}: {source}")]
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
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Pending bytes before the kernel wakes the reader.
    pub wakeup_bytes: u64,
}

/// Programs loaded and attached.
pub struct Kernel {
    ebpf: Ebpf,
    drops: PerCpuArray<MapData, u64>,
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

impl Kernel {
    /// Loads the programs with the offsets of this kernel and attaches them:
    /// the three socket tracepoints and cgroup_skb on `cgroup_root`.
    pub fn load(cfg: &KernelConfig, btf: &Btf, cgroup_root: &Path) -> Result<Kernel, KernelError> {
        let sock = |path: &[&str]| btf.offset_of("sock", path);
        let offsets: [(&str, u32); 9] = [
            (
                globals::OFF_WRITE_SEQ,
                btf.offset_of("tcp_sock", &["write_seq"])?,
            ),
            (
                globals::OFF_COPIED_SEQ,
                btf.offset_of("tcp_sock", &["copied_seq"])?,
            ),
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
        ];
        let aya_btf = AyaBtf::from_sys_fs()?;
        let snap = cfg.snap_len.min(MAX_SNAP_LEN as u32);
        let enabled = u32::from(cfg.enabled);
        let pid = std::process::id();
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&aya_btf))
            .override_global(globals::SNAP_LEN, &snap, true)
            .override_global(globals::ENABLED, &enabled, true)
            .override_global(globals::AGENT_PID, &pid, true)
            .override_global(globals::WAKEUP_BYTES, &cfg.wakeup_bytes, true)
            .map_max_entries(MAP_EVENTS, cfg.ring_bytes);
        for (name, off) in &offsets {
            loader.override_global(name, off, true);
        }
        let mut ebpf = loader.load(PROGRAMS)?;

        for name in [
            "sock_send_length",
            "sock_recv_length",
            "inet_sock_set_state",
        ] {
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or(KernelError::MissingMap(name))?
                .try_into()
                .map_err(program_err("loading", name))?;
            prog.load(name, &aya_btf)
                .map_err(program_err("loading", name))?;
            prog.attach().map_err(program_err("attaching", name))?;
        }
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
        let drops = ebpf
            .take_map(MAP_DROPS)
            .ok_or(KernelError::MissingMap(MAP_DROPS))?;
        let drops = PerCpuArray::try_from(drops).map_err(|e| KernelError::Map(MAP_DROPS, e))?;
        Ok(Kernel { ebpf, drops })
    }

    /// Takes the ring buffer (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        let map = self
            .ebpf
            .take_map(MAP_EVENTS)
            .ok_or(KernelError::MissingMap(MAP_EVENTS))?;
        RingBuf::try_from(map).map_err(|e| KernelError::Map(MAP_EVENTS, e))
    }

    /// Kernel-side drops so far, per reason, summed over CPUs.
    pub fn drops(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL
            .iter()
            .map(|&r| {
                let n = self
                    .drops
                    .get(&(r as u32), 0)
                    .map(|v| v.iter().sum::<u64>())
                    .unwrap_or(0);
                (r, n)
            })
            .collect()
    }

    /// Ids of the programs this agent loaded (for the exit check).
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok().map(|i| i.id()))
            .collect()
    }
}
