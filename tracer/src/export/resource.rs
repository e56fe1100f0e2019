//! Per-process resource attributes (who produced a span), read from /proc.
//!
//! A traced process is described once, the first time the agent asks about
//! its pid, while it is still alive: its own `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` (from `/proc/PID/environ`, the environment it
//! was started with), its executable, command line, working directory and
//! cgroup. The answer is cached (bounded, least recently used goes first)
//! and kept after the process exits, since its last spans are finished
//! after that. A pid that was reused by another process is noticed by its
//! start time (`/proc/PID/stat`), checked again at most every
//! [`REVALIDATE_NS`].
//!
//! Merge order (later wins): the host name; the agent's own
//! `OTEL_RESOURCE_ATTRIBUTES` (except `service.name`, which would name the
//! agent, not the traced service); the process's `OTEL_RESOURCE_ATTRIBUTES`;
//! what /proc says (`process.*` exactly, the command line with credentials
//! redacted by [`super::cmdline`], `container.id` by
//! [`super::container`]); `service.name`, chosen by
//! [`super::service_name`], and the rule that chose it
//! ([`SERVICE_NAME_SOURCE`]); the `telemetry.*` attributes naming this
//! tracer.
use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
    sync::Arc,
};

use correlate::{AttrValue, Pid};

use super::{
    cmdline::redact_args,
    container::container_id,
    service_name::{self, Process, Rules, Source},
};

/// The resource attribute that says which rule chose `service.name`
/// (`OTEL_SERVICE_NAME`, `python_script`, `argv0`, `rule:PATTERN`...: see
/// [`Source`]).
pub const SERVICE_NAME_SOURCE: &str = "tracer.service.name.source";
/// How often a cached pid is checked for reuse (its start time read again).
pub const REVALIDATE_NS: u64 = 10_000_000_000;
/// Default number of pids kept.
pub const DEFAULT_CAPACITY: usize = 4096;
/// How soon a process described mid-exec (see `Entry::retries`) is read
/// again.
pub const RETRY_INCOMPLETE_NS: u64 = 10_000_000;
/// How many times a process without a command line is read again (one that
/// wiped its own never gets one).
const INCOMPLETE_RETRIES: u8 = 8;
/// Thread names remembered per process (see `Entry::thread_names`).
const MAX_THREAD_NAMES: usize = 32;
/// Longest `process.command_line` kept, in bytes.
const MAX_COMMAND_LINE: usize = 4096;
/// Most bytes of `/proc/PID/environ` read.
const MAX_ENVIRON: u64 = 1 << 20;
/// Longest attribute value taken from an environment variable.
const MAX_ENV_VALUE: usize = 1024;

/// The resource of a span: attributes of the process that produced it.
/// Shared as an `Arc<Resource>`, one per process described: the encoder
/// batches spans by that pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    attrs: Vec<(String, AttrValue)>,
}

impl Resource {
    /// A resource with these attributes, in this order; a repeated key keeps
    /// its first position and its last value.
    pub fn new(attrs: impl IntoIterator<Item = (String, AttrValue)>) -> Resource {
        let mut out: Vec<(String, AttrValue)> = Vec::new();
        for (k, v) in attrs {
            match out.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => out.push((k, v)),
            }
        }
        Resource { attrs: out }
    }

    /// The attributes, `service.name` first.
    pub fn attrs(&self) -> &[(String, AttrValue)] {
        &self.attrs
    }

    /// The value of attribute `key`.
    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `service.name` (`unknown_service` if absent).
    pub fn service_name(&self) -> &str {
        self.get("service.name")
            .and_then(AttrValue::as_str)
            .unwrap_or("unknown_service")
    }
}

/// A malformed `key=value` list.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    /// A member has no `=`.
    #[error("{member:?} is not of the form key=value")]
    NoEquals {
        /// The member.
        member: String,
    },
    /// A member's key is empty.
    #[error("{member:?} has an empty key")]
    EmptyKey {
        /// The member.
        member: String,
    },
    /// A `%` not followed by two hex digits.
    #[error(transparent)]
    Escape(#[from] EscapeError),
}

/// A `%` not followed by two hex digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{text:?} has a bad %-escape")]
pub struct EscapeError {
    /// The text with the escape.
    pub text: String,
}

/// The agent's own `OTEL_RESOURCE_ATTRIBUTES` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// The list is malformed.
    #[error("OTEL_RESOURCE_ATTRIBUTES")]
    Attributes(#[source] KvError),
    /// The value is not Unicode.
    #[error("OTEL_RESOURCE_ATTRIBUTES")]
    NotUnicode(#[source] std::env::VarError),
}

/// Parses a `key1=value1,key2=value2` list with percent-encoded values (the
/// format of `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS`).
/// Empty members are skipped; a member without `=` or with an empty key is
/// an error naming it.
pub fn parse_kv_list(s: &str) -> Result<Vec<(String, String)>, KvError> {
    let mut out = Vec::new();
    for member in s.split(',') {
        let member = member.trim();
        if member.is_empty() {
            continue;
        }
        let Some((k, v)) = member.split_once('=') else {
            return Err(KvError::NoEquals {
                member: member.to_string(),
            });
        };
        let k = percent_decode(k.trim())?;
        if k.is_empty() {
            return Err(KvError::EmptyKey {
                member: member.to_string(),
            });
        }
        out.push((k, percent_decode(v.trim())?));
    }
    Ok(out)
}

/// Decodes `%XX` escapes (UTF-8; invalid sequences are replaced).
pub fn percent_decode(s: &str) -> Result<String, EscapeError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                None => {
                    return Err(EscapeError {
                        text: s.to_string(),
                    })
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn truncate(mut s: String, max: usize) -> String {
    s.truncate(s.floor_char_boundary(max));
    s
}

/// Field `n` (1-based, `n` > 2) of a `/proc/PID/stat` line, parsed.
fn stat_field<T: std::str::FromStr>(stat: &str, n: usize) -> Option<T> {
    // comm (field 2) is in parentheses and may contain spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(n - 3)?.parse().ok()
}

/// What identifies one process over time: the start time in
/// `/proc/PID/stat` (field 22, clock ticks since boot).
fn start_time(stat: &str) -> Option<u64> {
    stat_field(stat, 22)
}

/// The parent's pid (field 4) of a /proc/PID/stat line.
fn parent_pid(stat: &str) -> Option<u32> {
    stat_field(stat, 4)
}

/// What /proc says about a live process.
#[derive(Default)]
struct ProcFacts {
    env: ProcEnv,
    /// `/proc/PID/exe`, without ` (deleted)`.
    exe: Option<String>,
    /// `/proc/PID/comm`.
    comm: Option<String>,
    /// `/proc/PID/cmdline`.
    argv: Vec<String>,
    /// `/proc/PID/cgroup`.
    cgroup: Option<String>,
    /// `/proc/PID/cwd`.
    cwd: Option<String>,
}

/// What a process says about itself in its environment.
#[derive(Default)]
struct ProcEnv {
    /// `OTEL_SERVICE_NAME`.
    service: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`.
    attrs: Vec<(String, String)>,
}

struct Entry {
    res: Arc<Resource>,
    /// The kernel's name of the process (its main thread's, as in
    /// /proc/PID/comm, else the hint) when it was described: another name
    /// there later means it called exec (a forked child that became curl)
    /// and is described again.
    comm: Option<Box<str>>,
    /// Other names hints gave that /proc showed to be threads' names
    /// (`HTTP-Dispatcher`, `bio_close_file`): not checked again (at most
    /// [`MAX_THREAD_NAMES`]).
    thread_names: Vec<Box<str>>,
    /// Start time of the process described; `None` when it could not be read.
    start: Option<u64>,
    /// Reads left while /proc showed the process alive with no command line
    /// or environment: it was caught inside exec (the new executable is
    /// mapped, its arguments not yet), so it is read again after
    /// [`RETRY_INCOMPLETE_NS`] instead of keeping a name without its
    /// `OTEL_SERVICE_NAME`.
    retries: u8,
    /// Described before the process's last exec: read again at the next
    /// lookup.
    stale: bool,
    /// The description before the process's last exec and when that exec
    /// was: the resource of spans that began before it (a launcher's
    /// request that finishes before it execs the service).
    before_exec: Option<Box<(u64, Arc<Resource>)>>,
    checked_ns: u64,
    used: u64,
}

impl Entry {
    /// The description before the process's last exec, for a span that
    /// began (`at_ns`) before it.
    fn before(&self, at_ns: Option<u64>) -> Option<&Arc<Resource>> {
        let (exec_ns, res) = self.before_exec.as_deref()?;
        at_ns.filter(|t| t < exec_ns).map(|_| res)
    }
}

/// Counters of the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceCounters {
    /// Processes described from /proc.
    pub described: u64,
    /// Lookups of pids that had no /proc entry and were never seen alive:
    /// they get a resource with only `process.pid` and `unknown_service`.
    pub unknown: u64,
    /// Cached pids found reused by another process.
    pub pid_reused: u64,
    /// Descriptions of a live process with an executable but neither
    /// command line nor environment (caught inside exec; read again).
    pub described_mid_exec: u64,
    /// Entries evicted at the capacity bound.
    pub evicted: u64,
    /// Described processes that started another program: described again
    /// at their next lookup (their spans that began before keep the
    /// description they had).
    pub execs: u64,
}

/// The kernel's name (`comm`) of the thread that made a record.
#[derive(Clone, Copy, Debug)]
pub struct KernelName<'a> {
    pub name: &'a str,
    /// The process's main thread (its tid is its pid): its name is the
    /// process's own, others' may be thread names.
    pub main_thread: bool,
}

/// Resources by pid, read from /proc once per process and kept (bounded)
/// after it exits.
pub struct ResourceCache {
    proc_root: PathBuf,
    host_name: Option<String>,
    agent_attrs: Vec<(String, String)>,
    rules: Rules,
    cap: usize,
    /// foldhash: looked up for every span and at every change of process
    /// in the records; pids are not chosen by the network.
    map: foldhash::HashMap<Pid, Entry>,
    tick: u64,
    counters: ResourceCounters,
}

impl ResourceCache {
    /// A cache reading `proc_root` (normally `/proc`; a host's /proc mounted
    /// elsewhere when the agent runs in a container), adding `agent_attrs`
    /// (the agent's own `OTEL_RESOURCE_ATTRIBUTES`, see
    /// [`agent_resource_attributes`]) to every resource, keeping at most
    /// `capacity` pids. The host name is read once, now.
    pub fn new(
        proc_root: impl Into<PathBuf>,
        agent_attrs: Vec<(String, String)>,
        capacity: usize,
    ) -> ResourceCache {
        let proc_root = proc_root.into();
        let host_name = std::fs::read_to_string(proc_root.join("sys/kernel/hostname"))
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty());
        ResourceCache {
            proc_root,
            host_name,
            agent_attrs: agent_attrs
                .into_iter()
                .filter(|(k, _)| k != "service.name")
                .collect(),
            rules: Rules::default(),
            cap: capacity.max(1),
            map: foldhash::HashMap::default(),
            tick: 0,
            counters: ResourceCounters::default(),
        }
    }

    /// A cache of [`DEFAULT_CAPACITY`] pids reading `/proc`, with the
    /// agent's own `OTEL_RESOURCE_ATTRIBUTES`; a malformed value is an error
    /// naming the variable.
    pub fn from_env() -> Result<ResourceCache, ResourceError> {
        Ok(ResourceCache::new(
            "/proc",
            agent_resource_attributes()?,
            DEFAULT_CAPACITY,
        ))
    }

    /// The same cache, naming processes that match one of `rules` (the
    /// user's `--service-name` rules) by that rule.
    pub fn with_service_names(mut self, rules: Rules) -> ResourceCache {
        self.rules = rules;
        self
    }

    /// The resource of `pid`, read from /proc if not cached (or if the pid
    /// was reused since). `now_ns` is any monotonic clock (it paces the
    /// reuse checks). Call it early for a new pid (e.g. on its first
    /// connection) so short-lived processes are described while alive.
    pub fn get(&mut self, pid: Pid, now_ns: u64) -> Arc<Resource> {
        self.get_hinted(pid, None, now_ns)
    }

    /// [`get`](Self::get), with the name the kernel reported for the
    /// thread that made a record (`comm`), to fall back on when the process
    /// is already gone from /proc (short-lived clients such as curl exit
    /// within milliseconds).
    pub fn get_hinted(
        &mut self,
        pid: Pid,
        hint: Option<KernelName<'_>>,
        now_ns: u64,
    ) -> Arc<Resource> {
        self.lookup(pid, hint, None, now_ns)
    }

    /// The resource of `pid` for a span that began at `at_ns`: the
    /// description it had then if it has started another program since,
    /// else [`get`](Self::get)'s.
    pub fn get_at(&mut self, pid: Pid, at_ns: u64, now_ns: u64) -> Arc<Resource> {
        self.lookup(pid, None, Some(at_ns), now_ns)
    }

    fn lookup(
        &mut self,
        pid: Pid,
        hint: Option<KernelName<'_>>,
        at_ns: Option<u64>,
        now_ns: u64,
    ) -> Arc<Resource> {
        self.tick += 1;
        let tick = self.tick;
        if hint.is_some_and(|h| self.hint_means_another_process(pid, h)) {
            self.map.remove(&pid);
            self.counters.pid_reused += 1;
        }
        let entry = self.map.get_mut(&pid);
        if let Some(r) = entry.as_deref().and_then(|e| e.before(at_ns)) {
            return r.clone();
        }
        // Reads left if this description is caught mid-exec too.
        let (start, retries_left) = match entry {
            Some(e) if e.stale => (self.read_start(pid), INCOMPLETE_RETRIES),
            Some(e) => {
                e.used = tick;
                let since = now_ns.saturating_sub(e.checked_ns);
                let retry = e.retries > 0 && since >= RETRY_INCOMPLETE_NS;
                if !retry && since < REVALIDATE_NS {
                    return e.res.clone();
                }
                e.checked_ns = now_ns;
                let (seen, res, left) = (e.start, e.res.clone(), e.retries);
                let current = self.read_start(pid);
                // Gone (None) keeps what was seen alive; same start: same
                // process, described again only if it was caught mid-exec.
                if current.is_none() || (current == seen && !retry) {
                    return res;
                }
                if current == seen {
                    (current, left - 1)
                } else {
                    self.counters.pid_reused += 1;
                    (current, INCOMPLETE_RETRIES)
                }
            }
            None => (self.read_start(pid), INCOMPLETE_RETRIES),
        };
        let comm = hint.map(|h| h.name);
        let (res, proc_comm, incomplete) = self.describe(pid, start.is_some(), comm);
        if incomplete {
            self.counters.described_mid_exec += 1;
        }
        let retries = if incomplete { retries_left } else { 0 };
        let res = Arc::new(res);
        // Same process (an exec, a mid-exec read again): what it was before
        // its exec stays, for its spans that began then.
        let before_exec = self
            .map
            .get_mut(&pid)
            .filter(|e| e.start == start)
            .and_then(|e| e.before_exec.take());
        if !self.map.contains_key(&pid) && self.map.len() >= self.cap {
            self.evict();
        }
        self.map.insert(
            pid,
            Entry {
                res: res.clone(),
                comm: proc_comm.or(comm.map(str::to_owned)).map(Box::from),
                thread_names: Vec::new(),
                start,
                retries,
                stale: false,
                before_exec,
                checked_ns: now_ns,
                used: tick,
            },
        );
        res
    }

    /// Whether the kernel's name `hint` for a cached `pid` shows it is no
    /// longer the process described: that one was described too late to be
    /// read from /proc (it gets its kernel name once one is known), or it
    /// called exec. Hints name the thread that ran: a name other than the
    /// process's is a thread's while /proc still shows the process's own
    /// (remembered, so /proc is read once per thread name); once the
    /// process is gone, a name never seen from its main thread is taken as
    /// an exec (a forked child that became curl and exited at once). Other
    /// threads' names never are: a multi-threaded client's threads often
    /// first show in the records of its exit (gRPC's "lifeguard" closing
    /// its channel), and all its spans were named after that thread.
    fn hint_means_another_process(&mut self, pid: Pid, h: KernelName<'_>) -> bool {
        let hint = h.name;
        let Some(e) = self.map.get(&pid) else {
            return false;
        };
        // A new name after an exec is the new program's, not a new process.
        if e.stale {
            return false;
        }
        if e.res.service_name() == "unknown_service" {
            return true;
        }
        let Some(old) = e.comm.as_deref() else {
            return false;
        };
        if old == hint || e.thread_names.iter().any(|t| &**t == hint) {
            return false;
        }
        let now = self.read_comm(pid);
        let Some(e) = self.map.get_mut(&pid) else {
            return false;
        };
        match now {
            Some(now) if Some(now.as_str()) == e.comm.as_deref() => {
                if e.thread_names.len() < MAX_THREAD_NAMES {
                    e.thread_names.push(Box::from(hint));
                }
                false
            }
            Some(_) => true,
            None => h.main_thread,
        }
    }

    /// `/proc/PID/comm`: the name of the process (its main thread).
    fn read_comm(&self, pid: Pid) -> Option<String> {
        std::fs::read_to_string(self.pid_path(pid, "comm"))
            .ok()
            .map(|c| c.trim_end_matches('\n').to_string())
            .filter(|c| !c.is_empty())
    }

    /// `pid` started another program at `at_ns` (the kernel's exec event,
    /// in record order): its next lookup reads the new program's
    /// description, and [`get_at`](Self::get_at) gives spans that began
    /// before `at_ns` the one it had. Its name alone cannot tell (a version
    /// manager's shim named `python3` that execs `python3`), nor its start
    /// time. Execs in a row before it is read again (a shim's `env`, then
    /// `bash`, then the program) keep the description of the first.
    pub fn exec(&mut self, pid: Pid, at_ns: u64) {
        if let Some(e) = self.map.get_mut(&pid) {
            if !e.stale {
                e.stale = true;
                e.before_exec = Some(Box::new((at_ns, e.res.clone())));
                self.counters.execs += 1;
            }
        }
    }

    /// The counters.
    pub fn counters(&self) -> ResourceCounters {
        self.counters
    }

    /// Drops the least recently used eighth of the entries (at least one).
    fn evict(&mut self) {
        let n = (self.map.len() / 8).max(1);
        let mut used: Vec<u64> = self.map.values().map(|e| e.used).collect();
        used.sort_unstable();
        let cutoff = used[n - 1];
        let before = self.map.len();
        self.map.retain(|_, e| e.used > cutoff);
        self.counters.evicted += (before - self.map.len()) as u64;
    }

    fn pid_path(&self, pid: Pid, file: &str) -> PathBuf {
        self.proc_root.join(pid.0.to_string()).join(file)
    }

    /// The command line and working directory of the process that started
    /// multiprocessing worker `pid`: its nearest ancestor that is not a
    /// worker itself (the forkserver is one), a few levels up at most.
    fn starter_of(&self, pid: Pid) -> Option<(Vec<String>, Option<String>)> {
        let mut pid = pid;
        for _ in 0..4 {
            let stat = std::fs::read_to_string(self.pid_path(pid, "stat")).ok()?;
            pid = Pid(parent_pid(&stat)?);
            if pid.0 <= 1 {
                return None;
            }
            let argv = self.read_argv(pid);
            if !argv.is_empty() && !service_name::is_multiprocessing_worker(&argv) {
                return Some((argv, self.read_link(pid, "cwd")));
            }
        }
        None
    }

    fn read_argv(&self, pid: Pid) -> Vec<String> {
        std::fs::read(self.pid_path(pid, "cmdline"))
            .map(|raw| {
                raw.split(|&b| b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn read_start(&self, pid: Pid) -> Option<u64> {
        let stat = std::fs::read_to_string(self.pid_path(pid, "stat")).ok()?;
        start_time(&stat)
    }

    /// What /proc says about a live `pid`.
    fn read_proc(&self, pid: Pid) -> ProcFacts {
        ProcFacts {
            env: self.read_env(pid).unwrap_or_default(),
            exe: self
                .read_link(pid, "exe")
                .map(|s| match s.strip_suffix(" (deleted)") {
                    Some(path) => path.to_string(),
                    None => s,
                }),
            comm: self.read_comm(pid),
            argv: self.read_argv(pid),
            cgroup: std::fs::read_to_string(self.pid_path(pid, "cgroup")).ok(),
            cwd: self.read_link(pid, "cwd"),
        }
    }

    /// The resource of `pid`, its name in /proc/PID/comm (if read), and
    /// whether /proc showed it alive with an executable but neither command
    /// line nor environment (mid-exec). /proc is read only when the process
    /// is `alive`.
    fn describe(
        &mut self,
        pid: Pid,
        alive: bool,
        comm: Option<&str>,
    ) -> (Resource, Option<String>, bool) {
        let mut attrs: Vec<(String, AttrValue)> = Vec::with_capacity(16);
        // service.name first; its value is settled below.
        attrs.push(("service.name".into(), AttrValue::Str(String::new())));
        if let Some(h) = &self.host_name {
            attrs.push(("host.name".into(), AttrValue::Str(h.clone())));
        }
        for (k, v) in &self.agent_attrs {
            attrs.push((k.clone(), AttrValue::Str(v.clone())));
        }
        let ProcFacts {
            env:
                ProcEnv {
                    service: env_service,
                    attrs: env_attrs,
                },
            exe,
            comm: proc_comm,
            argv,
            cgroup,
            cwd,
        } = if alive {
            self.read_proc(pid)
        } else {
            ProcFacts::default()
        };
        // A kernel thread has no executable: it never gets a command line.
        let incomplete = alive
            && exe.is_some()
            && argv.is_empty()
            && env_service.is_none()
            && env_attrs.is_empty();
        let mut env_resource_service = None;
        for (k, v) in env_attrs {
            if k == "service.name" {
                env_resource_service = Some(v);
            } else {
                attrs.push((k, AttrValue::Str(v)));
            }
        }
        attrs.push(("process.pid".into(), AttrValue::Int(pid.0 as i64)));
        let comm = proc_comm
            .clone()
            .or_else(|| comm.filter(|c| !c.is_empty()).map(str::to_owned));
        let exe_name = exe
            .as_deref()
            .and_then(|p| Path::new(p).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .or_else(|| comm.clone());
        if let Some(name) = &exe_name {
            attrs.push((
                "process.executable.name".into(),
                AttrValue::Str(name.clone()),
            ));
        }
        if let Some(path) = &exe {
            attrs.push((
                "process.executable.path".into(),
                AttrValue::Str(path.clone()),
            ));
        }
        if !argv.is_empty() {
            let line = truncate(redact_args(&argv), MAX_COMMAND_LINE);
            attrs.push(("process.command_line".into(), AttrValue::Str(line)));
        }
        if let Some(id) = cgroup.as_deref().and_then(container_id) {
            attrs.push(("container.id".into(), AttrValue::Str(id)));
        }
        // A multiprocessing worker is named by the program that started it.
        let starter = if alive && service_name::is_multiprocessing_worker(&argv) {
            self.starter_of(pid)
        } else {
            None
        };
        let (name_argv, name_cwd) = match &starter {
            Some((argv, cwd)) => (argv, cwd.as_deref()),
            None => (&argv, cwd.as_deref()),
        };
        let named = service_name::resolve(
            &Process {
                argv: name_argv,
                otel_service_name: env_service.as_deref(),
                otel_resource_service_name: env_resource_service.as_deref(),
                exe: exe.as_deref(),
                cwd: name_cwd,
                cgroup: cgroup.as_deref(),
                comm: comm.as_deref(),
            },
            &self.rules,
        );
        match named.source {
            Source::Unknown => self.counters.unknown += 1,
            _ => self.counters.described += 1,
        }
        attrs.push((
            SERVICE_NAME_SOURCE.into(),
            AttrValue::Str(named.source.to_string()),
        ));
        attrs[0].1 = AttrValue::Str(named.name);
        for (k, v) in telemetry_attributes() {
            attrs.push((k.into(), AttrValue::Str(v.into())));
        }
        (Resource::new(attrs), proc_comm, incomplete)
    }

    /// The target of a symbolic link under /proc/PID (`exe`, `cwd`).
    fn read_link(&self, pid: Pid, file: &str) -> Option<String> {
        std::fs::read_link(self.pid_path(pid, file))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
    }

    /// `OTEL_SERVICE_NAME` and the parsed `OTEL_RESOURCE_ATTRIBUTES` of a
    /// process (a malformed list is ignored, as the SDKs do).
    fn read_env(&self, pid: Pid) -> Option<ProcEnv> {
        let mut raw = Vec::new();
        File::open(self.pid_path(pid, "environ"))
            .and_then(|f| f.take(MAX_ENVIRON).read_to_end(&mut raw))
            .ok()?;
        let mut service = None;
        let mut attrs = Vec::new();
        for var in raw.split(|&b| b == 0) {
            if let Some(v) = var.strip_prefix(b"OTEL_SERVICE_NAME=") {
                let v = truncate(String::from_utf8_lossy(v).trim().to_string(), MAX_ENV_VALUE);
                service = Some(v).filter(|v| !v.is_empty());
            } else if let Some(v) = var.strip_prefix(b"OTEL_RESOURCE_ATTRIBUTES=") {
                attrs = parse_kv_list(&String::from_utf8_lossy(v))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (truncate(k, MAX_ENV_VALUE), truncate(v, MAX_ENV_VALUE)))
                    .filter(|(_, v)| !v.is_empty())
                    .collect();
            }
        }
        Some(ProcEnv { service, attrs })
    }
}

/// The attributes naming this tracer as the producer of the telemetry.
pub fn telemetry_attributes() -> [(&'static str, &'static str); 4] {
    [
        ("telemetry.sdk.name", "tracer"),
        ("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ("telemetry.distro.name", "tracer"),
        ("telemetry.distro.version", env!("CARGO_PKG_VERSION")),
    ]
}

/// The agent's own `OTEL_RESOURCE_ATTRIBUTES`, to be added to every traced
/// process's resource; a malformed value is an error naming the variable.
pub fn agent_resource_attributes() -> Result<Vec<(String, String)>, ResourceError> {
    match std::env::var("OTEL_RESOURCE_ATTRIBUTES") {
        Ok(v) => parse_kv_list(&v).map_err(ResourceError::Attributes),
        Err(std::env::VarError::NotPresent) => Ok(Vec::new()),
        Err(e) => Err(ResourceError::NotUnicode(e)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// The kernel's name from the main thread, and from another one.
    fn main(name: &str) -> KernelName<'_> {
        KernelName {
            name,
            main_thread: true,
        }
    }

    fn thread(name: &str) -> KernelName<'_> {
        KernelName {
            name,
            main_thread: false,
        }
    }

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);
    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "tracer-export-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn fake_proc(root: &Path, pid: u32, start: u64, env: &[&str], cgroup: &str) {
        let d = root.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("stat"),
            format!("{pid} (my prog) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0"),
        )
        .unwrap();
        let mut environ = env.join("\0").into_bytes();
        environ.push(0);
        std::fs::write(d.join("environ"), environ).unwrap();
        std::fs::write(d.join("cmdline"), b"/usr/bin/python3\0-m\0http.server\0").unwrap();
        std::fs::write(d.join("comm"), "python3\n").unwrap();
        std::fs::write(d.join("cgroup"), cgroup).unwrap();
        fake_exe(root, pid, "/usr/bin/python3.11 (deleted)");
    }

    /// Points a fake process's `exe` at `path`.
    fn fake_exe(root: &Path, pid: u32, path: &str) {
        let exe = root.join(pid.to_string()).join("exe");
        let _ = std::fs::remove_file(&exe);
        std::os::unix::fs::symlink(path, exe).unwrap();
    }

    fn host(root: &Path) {
        std::fs::create_dir_all(root.join("sys/kernel")).unwrap();
        std::fs::write(root.join("sys/kernel/hostname"), "node-1\n").unwrap();
    }

    fn s(r: &Resource, k: &str) -> Option<String> {
        r.get(k).map(|v| match v {
            AttrValue::Str(s) => s.clone(),
            AttrValue::Int(i) => i.to_string(),
        })
    }

    #[test]
    fn a_multiprocessing_worker_is_named_by_the_program_that_started_it() {
        let t = TempDir::new("res-mp");
        host(&t.0);
        // hypercorn (pid 40) -> its spawned worker (41), which serves.
        fake_proc(&t.0, 40, 100, &[], "0::/\n");
        std::fs::write(
            t.0.join("40/cmdline"),
            b"/venv/bin/python3\0/venv/bin/hypercorn\0billing:app\0",
        )
        .unwrap();
        fake_proc(&t.0, 41, 101, &[], "0::/\n");
        std::fs::write(
            t.0.join("41/stat"),
            "41 (python3) S 40 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 101 0 0",
        )
        .unwrap();
        std::fs::write(
            t.0.join("41/cmdline"),
            b"/venv/bin/python3\0-B\0-c\0from multiprocessing.spawn import spawn_main; \
              spawn_main(tracker_fd=5, pipe_handle=7)\0--multiprocessing-fork\0",
        )
        .unwrap();
        let mut c = ResourceCache::new(&t.0, Vec::new(), 16);
        let r = c.get(Pid(41), 0);
        assert_eq!(r.service_name(), "billing");
        assert_eq!(s(&r, "process.pid").as_deref(), Some("41"));
        // The starter itself, as before.
        assert_eq!(c.get(Pid(40), 0).service_name(), "billing");
    }

    #[test]
    fn describes_a_fake_process() {
        let t = TempDir::new("res");
        host(&t.0);
        fake_proc(
            &t.0,
            42,
            1000,
            &[
                "PATH=/bin",
                "OTEL_RESOURCE_ATTRIBUTES=deployment.environment=prod,team=a%2Cb",
            ],
            &format!("0::/system.slice/docker-{ID}.scope\n"),
        );
        let agent = vec![
            ("k8s.cluster.name".to_string(), "c1".to_string()),
            ("service.name".to_string(), "agent".to_string()),
            ("team".to_string(), "agent-team".to_string()),
        ];
        let mut c = ResourceCache::new(&t.0, agent, 16);
        let r = c.get(Pid(42), 0);
        assert_eq!(r.service_name(), "http.server");
        assert_eq!(s(&r, SERVICE_NAME_SOURCE).as_deref(), Some("python_module"));
        assert_eq!(r.attrs()[0].0, "service.name");
        assert_eq!(s(&r, "process.pid").as_deref(), Some("42"));
        assert_eq!(
            s(&r, "process.executable.name").as_deref(),
            Some("python3.11")
        );
        assert_eq!(
            s(&r, "process.executable.path").as_deref(),
            Some("/usr/bin/python3.11")
        );
        assert_eq!(
            s(&r, "process.command_line").as_deref(),
            Some("/usr/bin/python3 -m http.server")
        );
        assert_eq!(s(&r, "host.name").as_deref(), Some("node-1"));
        assert_eq!(s(&r, "container.id").as_deref(), Some(ID));
        assert_eq!(s(&r, "k8s.cluster.name").as_deref(), Some("c1"));
        assert_eq!(s(&r, "deployment.environment").as_deref(), Some("prod"));
        assert_eq!(s(&r, "team").as_deref(), Some("a,b"), "process env wins");
        assert_eq!(s(&r, "telemetry.distro.name").as_deref(), Some("tracer"));
        // Cached: the same Arc until the process changes.
        assert!(Arc::ptr_eq(&r, &c.get(Pid(42), 1)));
        assert_eq!(c.counters().described, 1);
    }

    /// Sets the command line (NUL-separated `args`) and working directory
    /// of a fake process.
    fn fake_cmdline(root: &Path, pid: u32, args: &[&str], cwd: &str) {
        let d = root.join(pid.to_string());
        let mut raw = args.join("\0").into_bytes();
        raw.push(0);
        std::fs::write(d.join("cmdline"), raw).unwrap();
        let _ = std::fs::remove_file(d.join("cwd"));
        std::os::unix::fs::symlink(cwd, d.join("cwd")).unwrap();
    }

    /// pyenv's `python3` is a shell script run by `env`: the process keeps
    /// its pid, start time and name (`python3`, the script's) while it
    /// becomes `env`, `bash`, then the real Python. Only the exec event
    /// says that it is not `env` any more.
    #[test]
    fn a_process_that_starts_another_program_of_its_name_is_described_again() {
        let t = TempDir::new("res-exec");
        host(&t.0);
        fake_proc(&t.0, 50, 7, &[], "0::/\n");
        fake_cmdline(
            &t.0,
            50,
            &[
                "/usr/bin/env",
                "bash",
                "/root/.pyenv/shims/python3",
                "app.py",
            ],
            "/srv",
        );
        fake_exe(&t.0, 50, "/usr/bin/env");
        let mut c = ResourceCache::new(&t.0, vec![], 16);
        assert_eq!(
            c.get_hinted(Pid(50), Some(main("python3")), 0)
                .service_name(),
            "env"
        );
        fake_cmdline(&t.0, 50, &["python3", "/srv/billing/app.py"], "/srv");
        fake_exe(&t.0, 50, "/usr/bin/python3.11");
        // Same pid, start time and name: the description stands.
        assert_eq!(
            c.get_hinted(Pid(50), Some(main("python3")), 1)
                .service_name(),
            "env"
        );
        // Its exec at 100, then bash's exec at 110 before it was read again.
        c.exec(Pid(50), 100);
        c.exec(Pid(50), 110);
        c.exec(Pid(51), 100);
        let r = c.get_hinted(Pid(50), Some(main("python3")), 120);
        assert_eq!(r.service_name(), "billing");
        assert_eq!(
            s(&r, "process.executable.path").as_deref(),
            Some("/usr/bin/python3.11")
        );
        // A span that began before the first exec is env's; later ones are
        // the program's.
        assert_eq!(c.get_at(Pid(50), 99, 130).service_name(), "env");
        assert_eq!(c.get_at(Pid(50), 100, 130).service_name(), "billing");
        assert_eq!(c.get_at(Pid(50), 125, 130).service_name(), "billing");
        // Only a described process counts, once per description.
        assert_eq!(c.counters().execs, 1);
        assert_eq!(c.counters().described, 2);
        assert_eq!(c.counters().pid_reused, 0);
    }

    #[test]
    fn names_from_the_command_line_and_user_rules() {
        let t = TempDir::new("res");
        host(&t.0);
        fake_proc(&t.0, 20, 5, &[], "0::/system.slice/billing.service\n");
        fake_cmdline(
            &t.0,
            20,
            &[
                "/usr/bin/python3",
                "app.py",
                "--password=hunter2",
                "-p",
                "s3cr3t",
            ],
            "/srv/billing",
        );
        fake_proc(
            &t.0,
            21,
            5,
            &["OTEL_SERVICE_NAME=own"],
            "0::/system.slice/orders.service\n",
        );
        let mut c = ResourceCache::new(&t.0, vec![], 16);
        let r = c.get(Pid(20), 0);
        assert_eq!(r.service_name(), "billing");
        assert_eq!(s(&r, SERVICE_NAME_SOURCE).as_deref(), Some("python_script"));
        assert_eq!(
            s(&r, "process.command_line").as_deref(),
            Some("/usr/bin/python3 app.py --password=REDACTED -p REDACTED")
        );
        assert_eq!(s(&r, "container.id"), None);
        let rules = Rules::parse(&[
            "cgroup:/system.slice/orders.service=orders",
            "exe:python3.*=py",
        ])
        .unwrap();
        let mut c = ResourceCache::new(&t.0, vec![], 16).with_service_names(rules);
        let r = c.get(Pid(21), 0);
        assert_eq!(r.service_name(), "orders");
        assert_eq!(
            s(&r, SERVICE_NAME_SOURCE).as_deref(),
            Some("rule:cgroup:/system.slice/orders.service")
        );
        assert_eq!(c.get(Pid(20), 0).service_name(), "py");
        // Seen only after it exited: the kernel's name.
        let r = c.get_hinted(Pid(30), Some(main("curl")), 0);
        assert_eq!(r.service_name(), "curl");
        assert_eq!(s(&r, SERVICE_NAME_SOURCE).as_deref(), Some("comm"));
        assert_eq!(c.counters().described, 3);
    }

    #[test]
    fn a_process_caught_inside_exec_is_read_again() {
        let t = TempDir::new("res");
        host(&t.0);
        // Inside exec: the new executable is mapped (exe, comm), its
        // arguments and environment are not there yet.
        fake_proc(&t.0, 40, 5, &["OTEL_SERVICE_NAME=billing"], "");
        let d = t.0.join("40");
        let (environ, cmdline) = (
            std::fs::read(d.join("environ")).unwrap(),
            std::fs::read(d.join("cmdline")).unwrap(),
        );
        std::fs::write(d.join("environ"), b"").unwrap();
        std::fs::write(d.join("cmdline"), b"").unwrap();
        let mut c = ResourceCache::new(&t.0, vec![], 16);
        assert_eq!(c.get(Pid(40), 0).service_name(), "python3.11");
        std::fs::write(d.join("environ"), environ).unwrap();
        std::fs::write(d.join("cmdline"), cmdline).unwrap();
        assert_eq!(
            c.get(Pid(40), RETRY_INCOMPLETE_NS / 2).service_name(),
            "python3.11"
        );
        let r = c.get(Pid(40), RETRY_INCOMPLETE_NS);
        assert_eq!(r.service_name(), "billing");
        assert_eq!(c.counters().described_mid_exec, 1);
        assert_eq!(c.counters().pid_reused, 0);
        // Complete now: kept until the next reuse check.
        assert_eq!(c.get(Pid(40), 5 * RETRY_INCOMPLETE_NS), r);
        assert_eq!(c.counters().described, 2);
        // A process that never shows a command line is read a bounded
        // number of times.
        fake_proc(&t.0, 41, 5, &[], "");
        let d = t.0.join("41");
        std::fs::write(d.join("environ"), b"").unwrap();
        std::fs::write(d.join("cmdline"), b"").unwrap();
        for i in 0..100 {
            c.get(Pid(41), i * RETRY_INCOMPLETE_NS);
        }
        assert_eq!(
            c.counters().described_mid_exec,
            2 + u64::from(INCOMPLETE_RETRIES)
        );
        // A kernel thread (no executable) is not mid-exec: read once.
        fake_proc(&t.0, 42, 5, &[], "");
        let d = t.0.join("42");
        std::fs::write(d.join("environ"), b"").unwrap();
        std::fs::write(d.join("cmdline"), b"").unwrap();
        std::fs::remove_file(d.join("exe")).unwrap();
        let described = c.counters().described;
        for i in 0..100 {
            c.get(Pid(42), i * RETRY_INCOMPLETE_NS);
        }
        assert_eq!(c.counters().described, described + 1);
        assert_eq!(
            c.counters().described_mid_exec,
            2 + u64::from(INCOMPLETE_RETRIES)
        );
    }

    #[test]
    fn service_name_precedence_and_exit() {
        let t = TempDir::new("res");
        host(&t.0);
        fake_proc(
            &t.0,
            7,
            5,
            &["OTEL_RESOURCE_ATTRIBUTES=service.name=from-attrs"],
            "",
        );
        fake_proc(
            &t.0,
            8,
            5,
            &[
                "OTEL_SERVICE_NAME=checkout",
                "OTEL_RESOURCE_ATTRIBUTES=service.name=from-attrs",
            ],
            "",
        );
        let mut c = ResourceCache::new(&t.0, vec![], 16);
        assert_eq!(c.get(Pid(7), 0).service_name(), "from-attrs");
        let r8 = c.get(Pid(8), 0);
        assert_eq!(r8.service_name(), "checkout");
        assert_eq!(s(&r8, "container.id"), None);
        // The process exits: the resource is kept, even after revalidation.
        std::fs::remove_dir_all(t.0.join("8")).unwrap();
        assert_eq!(c.get(Pid(8), REVALIDATE_NS * 2), r8);
        // The pid is reused by another process: described again.
        fake_proc(&t.0, 8, 99, &["OTEL_SERVICE_NAME=other"], "");
        assert_eq!(
            c.get(Pid(8), REVALIDATE_NS * 2 + 1).service_name(),
            "checkout"
        );
        assert_eq!(c.get(Pid(8), REVALIDATE_NS * 4).service_name(), "other");
        assert_eq!(c.counters().pid_reused, 1);
        // A pid never seen alive.
        let r = c.get(Pid(9), 0);
        assert_eq!(r.service_name(), "unknown_service");
        assert_eq!(s(&r, "process.pid").as_deref(), Some("9"));
        assert_eq!(c.counters().unknown, 1);
    }

    #[test]
    fn a_process_that_calls_exec_is_described_again() {
        let t = TempDir::new("res");
        host(&t.0);
        let set_comm =
            |name: &str| std::fs::write(t.0.join("11/comm"), format!("{name}\n")).unwrap();
        // A forked child, seen before its exec (same pid, same start time).
        fake_proc(&t.0, 11, 5, &["OTEL_SERVICE_NAME=parent"], "");
        set_comm("parent-bin");
        let mut c = ResourceCache::new(&t.0, vec![], 16);
        assert_eq!(
            c.get_hinted(Pid(11), Some(main("parent-bin")), 0)
                .service_name(),
            "parent"
        );
        // Hints name threads: another name while /proc still shows the
        // process's own is a thread's, not an exec.
        assert_eq!(
            c.get_hinted(Pid(11), Some(thread("worker-1")), 1)
                .service_name(),
            "parent"
        );
        assert_eq!(c.counters().described, 1);
        // After exec, /proc and the kernel report another name.
        fake_proc(&t.0, 11, 5, &["OTEL_SERVICE_NAME=child"], "");
        set_comm("curl");
        assert_eq!(
            c.get_hinted(Pid(11), Some(main("curl")), 2).service_name(),
            "child"
        );
        assert_eq!(c.get(Pid(11), 3).service_name(), "child");
        assert_eq!(
            c.get_hinted(Pid(11), Some(thread("curl-worker")), 4)
                .service_name(),
            "child"
        );
        assert_eq!(c.counters().described, 2);
        // Gone: a thread name seen alive keeps the name; one never seen is
        // taken for another exec (described from the kernel's name).
        std::fs::remove_dir_all(t.0.join("11")).unwrap();
        assert_eq!(
            c.get_hinted(Pid(11), Some(thread("curl-worker")), 5)
                .service_name(),
            "child"
        );
        // Nor is a thread's name never seen while it lived (gRPC's
        // "lifeguard" closing its channel at exit): only the main thread's.
        assert_eq!(
            c.get_hinted(Pid(11), Some(thread("lifeguard")), 6)
                .service_name(),
            "child"
        );
        assert_eq!(
            c.get_hinted(Pid(11), Some(main("wget")), 7).service_name(),
            "wget"
        );
    }

    #[test]
    fn bounded_lru() {
        let t = TempDir::new("res");
        let mut c = ResourceCache::new(&t.0, vec![], 8);
        for pid in 1..=8 {
            c.get(Pid(pid), 0);
        }
        c.get(Pid(1), 0); // 1 is now the most recent
        c.get(Pid(100), 0);
        assert_eq!(c.map.len(), 8);
        assert!(c.map.contains_key(&Pid(1)));
        assert!(!c.map.contains_key(&Pid(2)));
        assert_eq!(c.counters().evicted, 1);
    }

    #[test]
    fn describes_this_test_process() {
        let me = std::process::id();
        let mut c = ResourceCache::new("/proc", vec![], 4);
        let r = c.get(Pid(me), crate::clock::monotonic_ns());
        let exe = std::env::current_exe().unwrap();
        let exe_name = exe.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(s(&r, "process.executable.name"), Some(exe_name.clone()));
        assert_eq!(s(&r, "process.pid"), Some(me.to_string()));
        assert!(s(&r, "process.command_line").is_some());
        match std::env::var("OTEL_SERVICE_NAME") {
            Ok(name) if !name.trim().is_empty() => assert_eq!(r.service_name(), name.trim()),
            _ => assert_eq!(r.service_name(), exe_name),
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(s(&r, "host.name").as_deref(), Some(host.trim()));
    }

    #[test]
    fn kv_lists() {
        assert_eq!(
            parse_kv_list(" a=1, b = x%20y ,,c=").unwrap(),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "".into())
            ]
        );
        let err = |s: &str| parse_kv_list(s).unwrap_err().to_string();
        assert_eq!(err("a"), "\"a\" is not of the form key=value");
        assert_eq!(err("=1"), "\"=1\" has an empty key");
        assert_eq!(err("a=%zz"), "\"%zz\" has a bad %-escape");
        assert!(parse_kv_list("a=%4").is_err());
        assert_eq!(
            start_time("1 (a) b) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0"),
            Some(777)
        );
        assert_eq!(start_time("garbage"), None);
    }
}
