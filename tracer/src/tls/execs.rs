//! Programs started (exec) on the host, as the kernel reports them through
//! its process connector (netlink), so that their TLS library is probed
//! within milliseconds instead of at the next /proc scan: a client that
//! lives less than a scan period (a Node script, a program with its own
//! copy of OpenSSL) is otherwise over before it is looked at.
//!
//! The connector reports to the initial network namespace only and needs
//! `CONFIG_PROC_EVENTS`; where it cannot be opened the agent says so once
//! and the periodic scan alone finds new processes.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `CN_IDX_PROC` / `CN_VAL_PROC` (linux/connector.h).
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// `PROC_CN_MCAST_LISTEN` (linux/cn_proc.h).
const MCAST_LISTEN: u32 = 1;
/// `PROC_EVENT_EXEC`.
const EVENT_EXEC: u32 = 2;
const NLMSG_HDR: usize = 16;
/// `struct cn_msg` without its data: id (idx, val), seq, ack, len, flags.
const CN_MSG_HDR: usize = 20;
/// Where a `struct proc_event`'s union starts: what, cpu, timestamp_ns.
const EVENT_DATA: usize = 16;

/// A subscription to the kernel's process events.
pub struct ExecWatch {
    fd: OwnedFd,
    buf: Vec<u8>,
    /// Times the socket's buffer overflowed (events lost; the periodic
    /// scan finds those processes).
    overflows: u64,
}

impl ExecWatch {
    /// Subscribes (needs CAP_NET_ADMIN, the initial network namespace and
    /// a kernel with the process connector). Reads never block.
    pub fn open() -> io::Result<ExecWatch> {
        // SAFETY: plain socket(2); the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_CONNECTOR,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_nl is valid; fields set below.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: addr is a sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                raw,
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Read every few ms, not on wake-ups: the buffer holds the events
        // of what starts meanwhile (each under 1 KiB of it; events that do
        // not fit are counted).
        let size: libc::c_int = 1 << 20;
        // SAFETY: size is a c_int of the length given. Failing keeps the
        // default buffer (FORCE needs CAP_NET_ADMIN, which the agent has).
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        let msg = listen_message();
        // SAFETY: msg is a valid buffer of its length.
        let sent = unsafe { libc::send(raw, msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ExecWatch {
            fd,
            buf: vec![0; 16 << 10],
            overflows: 0,
        })
    }

    /// Appends the process ids (thread-group ids) that exec'd since the
    /// last call, reading until the socket is empty.
    pub fn read(&mut self, pids: &mut Vec<u32>) {
        loop {
            // SAFETY: buf is a writable buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::ENOBUFS) => {
                        self.overflows += 1;
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => return,
                }
            }
            if n == 0 {
                return;
            }
            exec_pids(&self.buf[..n as usize], pids);
        }
    }

    /// Times events were lost to a full socket buffer, so far.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }
}

/// A netlink message asking the connector for process events.
fn listen_message() -> Vec<u8> {
    let len = NLMSG_HDR + CN_MSG_HDR + 4;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&std::process::id().to_ne_bytes());
    m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // ack
    m.extend_from_slice(&4u16.to_ne_bytes()); // len
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&MCAST_LISTEN.to_ne_bytes());
    m
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The thread-group ids of the exec events in one datagram (one or more
/// netlink messages); other events and malformed messages are skipped.
fn exec_pids(mut b: &[u8], out: &mut Vec<u32>) {
    while let Some(len) = u32_at(b, 0) {
        let len = len as usize;
        if len < NLMSG_HDR || len > b.len() {
            return;
        }
        let msg = &b[NLMSG_HDR..len];
        let event = CN_MSG_HDR;
        if u32_at(msg, 0) == Some(CN_IDX_PROC) && u32_at(msg, event) == Some(EVENT_EXEC) {
            // exec_proc_event: process_pid, process_tgid.
            if let Some(tgid) = u32_at(msg, event + EVENT_DATA + 4) {
                out.push(tgid);
            }
        }
        // Messages are aligned to 4 bytes.
        let next = (len + 3) & !3;
        b = b.get(next..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connector message as the kernel lays it out, of event `what`.
    fn event(what: u32, pid: u32, tgid: u32) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(&what.to_ne_bytes());
        data.extend_from_slice(&1u32.to_ne_bytes()); // cpu
        data.extend_from_slice(&123u64.to_ne_bytes()); // timestamp
        data.extend_from_slice(&pid.to_ne_bytes());
        data.extend_from_slice(&tgid.to_ne_bytes());
        let len = NLMSG_HDR + CN_MSG_HDR + data.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&[0; 12]);
        m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&(data.len() as u16).to_ne_bytes());
        m.extend_from_slice(&[0; 2]);
        m.extend_from_slice(&data);
        m
    }

    #[test]
    fn exec_events_give_their_process_and_others_are_skipped() {
        let mut b = event(1, 50, 50); // fork
        b.extend(event(EVENT_EXEC, 71, 70));
        b.extend(event(0x8000_0000, 70, 70)); // exit
        b.extend(event(EVENT_EXEC, 90, 90));
        let mut pids = Vec::new();
        exec_pids(&b, &mut pids);
        assert_eq!(pids, [70, 90]);
    }

    #[test]
    fn truncated_or_garbage_datagrams_yield_nothing_and_never_panic() {
        let whole = event(EVENT_EXEC, 7, 7);
        for cut in 0..whole.len() {
            let mut pids = Vec::new();
            exec_pids(&whole[..cut], &mut pids);
            assert!(pids.is_empty(), "cut at {cut}");
        }
        let mut pids = Vec::new();
        exec_pids(&[0xff; 64], &mut pids);
        exec_pids(&[0; 64], &mut pids);
        assert!(pids.is_empty());
    }

    /// The real connector, when this test may open it (root): a program
    /// started now is reported.
    #[test]
    fn a_started_program_is_reported() {
        let mut w = match ExecWatch::open() {
            Ok(w) => w,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("skipped: the process connector cannot be opened here ({e})");
                return;
            }
            Err(e) => panic!("the process connector cannot be opened: {e}"),
        };
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let mut child = child;
        child.wait().unwrap();
        let mut pids = Vec::new();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !pids.contains(&pid) && std::time::Instant::now() < end {
            w.read(&mut pids);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(pids.contains(&pid), "exec of {pid} not reported: {pids:?}");
    }
}
