//! Start-up checks: everything the kernel side needs, each failure one clear
//! line saying what is missing and how to fix it.
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::{
    btf::{Btf, BtfError},
    kernel::KernelLayout,
    sources::{NoCallSource, Offers, Tracefs},
};

/// The oldest kernel the agent supports, and why (see the README): BPF
/// helpers the programs call from tracing programs (socket cookies 5.12,
/// task registers 5.15) and the `tcp_recvmsg` prototype of 5.19 that the
/// fentry and kprobe sources read. Tested from 6.1.
pub const OLDEST_KERNEL: (u32, u32) = (5, 19);

/// A reason the agent cannot run on this machine.
#[derive(Debug, Error)]
pub enum PreflightError {
    /// Not root (or lacking the capabilities).
    #[error("the agent needs root (missing capabilities: {0}): run it with sudo, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN")]
    NotRoot(String),
    /// No /sys/kernel/btf/vmlinux.
    #[error("kernel BTF is missing (/sys/kernel/btf/vmlinux): use a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf,
    /// BTF present but unusable.
    #[error("kernel BTF could not be used")]
    BadBtf(#[from] BtfError),
    /// Kernel older than the oldest the agent supports.
    #[error("kernel {found} is older than {}.{}, the oldest this agent supports (it needs the BPF helpers of 5.15 in tracing programs and the tcp_recvmsg of 5.19)", OLDEST_KERNEL.0, OLDEST_KERNEL.1)]
    KernelTooOld {
        /// `uname -r`.
        found: String,
    },
    /// tracefs not mounted and mounting failed.
    #[error("tracefs is not mounted and could not be mounted ({0}): run `mount -t tracefs tracefs /sys/kernel/tracing`")]
    NoTracefs(String),
    /// No cgroup v2 hierarchy.
    #[error("no cgroup v2 hierarchy is mounted: mount one (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or boot with systemd.unified_cgroup_hierarchy=1")]
    NoCgroup2,
    /// No hook for send/receive calls (or the forced one is missing).
    #[error(transparent)]
    NoCallSource(#[from] NoCallSource),
    /// --cgroup-root is not a cgroup v2 directory.
    #[error("--cgroup-root {0} is not a cgroup v2 directory (no cgroup.procs in it)")]
    BadCgroupRoot(String),
}

/// What the loader needs from the environment.
pub struct Environment {
    /// The struct offsets the programs need, from the kernel's BTF (the
    /// parsed BTF itself is dropped once they are read).
    pub btf: KernelLayout,
    /// What the kernel offers as sources of send/receive calls.
    pub calls: Offers,
    /// Root of the cgroup v2 hierarchy.
    pub cgroup2_root: PathBuf,
    /// `uname -r`.
    pub kernel: String,
}

/// Capabilities the programs need: loading tracing programs and reading
/// kernel memory (BPF, PERFMON), attaching to the root cgroup (NET_ADMIN).
const REQUIRED_CAPS: [(u32, &str); 3] =
    [(39, "CAP_BPF"), (38, "CAP_PERFMON"), (12, "CAP_NET_ADMIN")];

/// Names of the required capabilities missing from a `CapEff:` hex mask.
pub fn missing_caps(cap_eff_hex: &str) -> Vec<&'static str> {
    let mask = u64::from_str_radix(cap_eff_hex.trim(), 16).unwrap_or(0);
    REQUIRED_CAPS
        .iter()
        .filter(|(bit, _)| mask & (1 << bit) == 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Runs every check, in the order a user would fix them. `cgroup_root`
/// overrides the cgroup v2 mount found in /proc/mounts.
pub fn check(cgroup_root: Option<&Path>) -> Result<Environment, PreflightError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap_or("0");
    let missing = missing_caps(cap_eff);
    if !missing.is_empty() {
        return Err(PreflightError::NotRoot(missing.join(", ")));
    }
    let kernel = kernel_release();
    if let Some((major, minor)) = parse_version(&kernel) {
        if (major, minor) < OLDEST_KERNEL {
            return Err(PreflightError::KernelTooOld { found: kernel });
        }
    }
    let parsed = match Btf::from_sys() {
        Ok(parsed) => parsed?,
        Err(_) => return Err(PreflightError::NoBtf),
    };
    let btf = KernelLayout::from_btf(&parsed)?;
    ensure_tracefs()?;
    let calls = Offers::detect(&parsed, &Tracefs::read());
    drop(parsed);
    calls.candidates(None)?;
    let cgroup2_root = match cgroup_root {
        Some(p) if p.join("cgroup.procs").exists() => p.to_path_buf(),
        Some(p) => return Err(PreflightError::BadCgroupRoot(p.display().to_string())),
        None => cgroup2_root(&std::fs::read_to_string("/proc/mounts").unwrap_or_default())
            .ok_or(PreflightError::NoCgroup2)?,
    };
    Ok(Environment {
        btf,
        calls,
        cgroup2_root,
        kernel,
    })
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `6.18.44-foo` -> (6, 18).
pub fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// tracefs must be mounted for aya to find tracepoint ids; mount it when it
/// is not (idempotent).
fn ensure_tracefs() -> Result<(), PreflightError> {
    let candidates = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
    if candidates
        .iter()
        .any(|p| Path::new(p).join("events").is_dir())
    {
        return Ok(());
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; null data is allowed.
    let r = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(PreflightError::NoTracefs(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    tracing::info!("mounted tracefs on /sys/kernel/tracing");
    Ok(())
}

/// The first cgroup2 mount in /proc/mounts (e.g. /sys/fs/cgroup or, on
/// hybrid hosts, /sys/fs/cgroup/unified).
pub fn cgroup2_root(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, path, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        assert!(missing_caps("000001ffffffffff").is_empty());
        assert_eq!(
            missing_caps("0000000000000000"),
            ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
        assert_eq!(missing_caps("000000c000000000"), ["CAP_NET_ADMIN"]);
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_version("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(cgroup2_root(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_root("proc /proc proc rw 0 0\n"), None);
    }
}
