//! Which kernel hook serves each capture point, chosen at start-up from what
//! the running kernel offers (its BTF and tracefs), never from its version.
//!
//! Send and receive calls have three sources, cheapest first:
//! - `tracepoint`: tp_btf on `sock:sock_send_length`/`sock_recv_length`
//!   (Linux 6.3 on);
//! - `fentry`: fexit on `tcp_sendmsg`, `tcp_recvmsg` and, where the kernel
//!   has it, `tcp_sendpage` (sendfile and splice before 6.5);
//! - `kprobe`: kprobes and kretprobes on the same functions.
//!
//! A source is offered when BTF declares its hooks with the prototypes the
//! programs read (and, for the function hooks, tracefs lists them as
//! traceable); the kernel may still refuse to load or attach an offered
//! source (fentry is refused where lockdown forbids it), so the loader tries
//! the offered ones in order and keeps the first that attaches. Every source
//! emits the same records. Connection states (tp_btf
//! `inet_sock_set_state`), packets (cgroup_skb) and CPU samples (perf_event,
//! cpu-clock) have one source each on every kernel the agent runs on.
use std::{collections::HashSet, fmt, path::Path};

use clap::ValueEnum;

use crate::btf::Btf;

/// A source of send/receive calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum CallSource {
    /// tp_btf on the socket-layer tracepoints.
    Tracepoint,
    /// fexit on the TCP send/receive functions.
    Fentry,
    /// kprobes and kretprobes on the TCP send/receive functions.
    Kprobe,
}

impl CallSource {
    /// Every source, cheapest first.
    pub const ALL: [CallSource; 3] = [
        CallSource::Tracepoint,
        CallSource::Fentry,
        CallSource::Kprobe,
    ];

    /// The flag's spelling.
    pub fn name(self) -> &'static str {
        match self {
            CallSource::Tracepoint => "tracepoint",
            CallSource::Fentry => "fentry",
            CallSource::Kprobe => "kprobe",
        }
    }
}

impl fmt::Display for CallSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One program of a source and what it attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    /// The program's name in the eBPF object.
    pub program: &'static str,
    /// Tracepoint or kernel function.
    pub target: &'static str,
}

/// A traced function: its name, the parameter names the programs assume
/// (their positions are what the programs read), and whether a source can
/// do without it.
struct Function {
    name: &'static str,
    params: &'static [&'static str],
    required: bool,
}

const FUNCTIONS: [Function; 3] = [
    Function {
        name: "tcp_sendmsg",
        params: &["sk", "msg", "size"],
        required: true,
    },
    Function {
        name: "tcp_recvmsg",
        params: &["sk", "msg", "len", "flags", "addr_len"],
        required: true,
    },
    // sendfile/splice to a socket before 6.5; from 6.5 on they go through
    // tcp_sendmsg and this function is gone.
    Function {
        name: "tcp_sendpage",
        params: &["sk", "page", "offset", "size", "flags"],
        required: false,
    },
];

/// The eBPF programs of `source` for function `f`.
fn function_hooks(source: CallSource, f: &'static str) -> Vec<Hook> {
    let hook = |program| Hook { program, target: f };
    // A kprobe program's section says whether it is a kretprobe.
    match (source, f) {
        (CallSource::Fentry, "tcp_sendmsg") => vec![hook("fexit_tcp_sendmsg")],
        (CallSource::Fentry, "tcp_recvmsg") => vec![hook("fexit_tcp_recvmsg")],
        (CallSource::Fentry, "tcp_sendpage") => vec![hook("fexit_tcp_sendpage")],
        (CallSource::Kprobe, "tcp_sendmsg") => {
            vec![hook("kprobe_tcp_sendmsg"), hook("kretprobe_tcp_sendmsg")]
        }
        (CallSource::Kprobe, "tcp_recvmsg") => {
            vec![hook("kprobe_tcp_recvmsg"), hook("kretprobe_tcp_recvmsg")]
        }
        (CallSource::Kprobe, "tcp_sendpage") => {
            vec![hook("kprobe_tcp_sendpage"), hook("kretprobe_tcp_sendpage")]
        }
        _ => Vec::new(),
    }
}

/// No source of send/receive calls can serve.
#[derive(Debug, thiserror::Error)]
pub enum NoCallSource {
    /// The source forced with `--capture-source` is not offered.
    #[error("--capture-source {forced} is not available on this kernel: {why}")]
    Forced { forced: CallSource, why: NotOffered },
    /// None is offered: why, per source.
    #[error("this kernel offers no source of socket send/receive calls ({reasons})")]
    NoneOffered { reasons: String },
}

/// Why the running kernel cannot serve a source of calls.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotOffered {
    #[error("no sock:{0} tracepoint (Linux 6.3 on)")]
    NoTracepoint(&'static str),
    #[error(
        "the kernel preempts kernel code ({0}): fexit programs run preemptibly and two could \
         meet on one CPU's lane"
    )]
    Preemptible(String),
    #[error("the kernel has no kprobes (no kprobe_events in tracefs)")]
    NoKprobes,
    #[error("{0} is not in the kernel's BTF")]
    NotInBtf(&'static str),
    #[error("{name}({found}) is not the prototype the programs read ({expected})")]
    Prototype {
        name: &'static str,
        found: String,
        expected: String,
    },
    #[error("{0} is not traceable")]
    NotTraceable(&'static str),
    #[error("tracefs lists no traceable functions")]
    NoTraceableList,
}

/// What the running kernel offers, per call source: the hooks to attach,
/// or why the source cannot serve.
#[derive(Clone, Debug)]
pub struct Offers {
    offers: Vec<(CallSource, Result<Vec<Hook>, NotOffered>)>,
}

/// What tracefs says about kernel functions.
pub struct Tracefs {
    /// Functions ftrace can trace (fentry/fexit and ftrace-based kprobes
    /// attach to these); None when the list could not be read.
    pub traceable: Option<HashSet<String>>,
    /// Whether the kernel has kprobe events (CONFIG_KPROBE_EVENTS).
    pub kprobes: bool,
    /// The preemption model when the kernel preempts kernel code (full,
    /// lazy or real-time), which the lanes assume call programs never are.
    pub preemption: Option<String>,
}

impl Tracefs {
    /// Reads the mounted tracefs.
    pub fn read() -> Tracefs {
        let dir = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("events").is_dir());
        let Some(dir) = dir else {
            return Tracefs {
                traceable: None,
                kprobes: false,
                preemption: None,
            };
        };
        let traceable = std::fs::read_to_string(dir.join("available_filter_functions"))
            .ok()
            .map(|s| parse_traceable(&s));
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Tracefs {
            traceable,
            kprobes: dir.join("kprobe_events").exists(),
            preemption: preemptible(
                &read("/sys/kernel/debug/sched/preempt"),
                &read("/proc/cmdline"),
                &read("/proc/sys/kernel/version"),
            ),
        }
    }
}

/// The preemption model, when it preempts kernel code: from debugfs's
/// `sched/preempt` (the mode in parentheses) when it is there, else from
/// `preempt=` on the command line, else from the build (`uname -v` says
/// PREEMPT or PREEMPT_RT; PREEMPT_DYNAMIC kernels without either of the
/// first two run their build's default, voluntary on Debian and Ubuntu).
fn preemptible(debugfs: &str, cmdline: &str, version: &str) -> Option<String> {
    let kernel_preempts = |m: &str| matches!(m, "full" | "lazy" | "rt");
    if let Some(mode) = debugfs
        .split_whitespace()
        .find_map(|m| m.strip_prefix('(')?.strip_suffix(')'))
    {
        return kernel_preempts(mode).then(|| format!("preempt={mode}"));
    }
    if let Some(mode) = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("preempt="))
    {
        return kernel_preempts(mode).then(|| format!("preempt={mode}"));
    }
    version
        .split_whitespace()
        .find(|w| matches!(*w, "PREEMPT" | "PREEMPT_RT"))
        .map(str::to_owned)
}

/// Function names of `available_filter_functions` (`name [module]` lines).
fn parse_traceable(list: &str) -> HashSet<String> {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

impl Offers {
    /// What `btf` and `tracefs` offer.
    pub fn detect(btf: &Btf, tracefs: &Tracefs) -> Offers {
        let offers = CallSource::ALL
            .iter()
            .map(|&s| (s, offer(s, btf, tracefs)))
            .collect();
        Offers { offers }
    }

    /// The sources to try, in order: `forced` alone, else every offered
    /// one, cheapest first. Err: the forced source is not offered (with the
    /// reason), or none is.
    pub fn candidates(
        &self,
        forced: Option<CallSource>,
    ) -> Result<Vec<(CallSource, Vec<Hook>)>, NoCallSource> {
        let mut out = Vec::new();
        for (source, offer) in &self.offers {
            if forced.is_some_and(|f| f != *source) {
                continue;
            }
            match offer {
                Ok(hooks) => out.push((*source, hooks.clone())),
                Err(why) if forced.is_some() => {
                    return Err(NoCallSource::Forced {
                        forced: *source,
                        why: why.clone(),
                    })
                }
                Err(_) => {}
            }
        }
        if out.is_empty() {
            return Err(NoCallSource::NoneOffered {
                reasons: self.reasons(),
            });
        }
        Ok(out)
    }

    /// Why each source is not offered, on one line.
    pub fn reasons(&self) -> String {
        self.offers
            .iter()
            .filter_map(|(s, o)| o.as_ref().err().map(|why| format!("{s}: {why}")))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn offer(source: CallSource, btf: &Btf, tracefs: &Tracefs) -> Result<Vec<Hook>, NotOffered> {
    if source == CallSource::Tracepoint {
        for tp in ["sock_send_length", "sock_recv_length"] {
            if !btf.has_typedef(&format!("btf_trace_{tp}")) {
                return Err(NotOffered::NoTracepoint(tp));
            }
        }
        return Ok(["sock_send_length", "sock_recv_length"]
            .into_iter()
            .map(|tp| Hook {
                program: tp,
                target: tp,
            })
            .collect());
    }
    if source == CallSource::Fentry {
        if let Some(mode) = &tracefs.preemption {
            return Err(NotOffered::Preemptible(mode.clone()));
        }
    }
    if source == CallSource::Kprobe && !tracefs.kprobes {
        return Err(NotOffered::NoKprobes);
    }
    let mut hooks = Vec::new();
    for f in &FUNCTIONS {
        match usable(f, btf, tracefs) {
            Ok(()) => hooks.extend(function_hooks(source, f.name)),
            Err(why) if f.required => return Err(why),
            Err(_) => {}
        }
    }
    Ok(hooks)
}

/// Whether function `f` is in BTF with the expected prototype and
/// traceable.
fn usable(f: &Function, btf: &Btf, tracefs: &Tracefs) -> Result<(), NotOffered> {
    let params = btf
        .func_params(f.name)
        .ok_or(NotOffered::NotInBtf(f.name))?;
    if params != f.params {
        return Err(NotOffered::Prototype {
            name: f.name,
            found: params.join(", "),
            expected: f.params.join(", "),
        });
    }
    match &tracefs.traceable {
        Some(set) if !set.contains(f.name) => Err(NotOffered::NotTraceable(f.name)),
        None => Err(NotOffered::NoTraceableList),
        Some(_) => Ok(()),
    }
}

/// The one start-up line saying which hook serves each capture point.
pub fn describe(calls: CallSource, hooks: &[Hook], profiling: bool) -> String {
    let mut targets: Vec<&str> = hooks.iter().map(|h| h.target).collect();
    targets.dedup();
    let calls = match calls {
        CallSource::Tracepoint => format!("tp_btf {}", targets.join(", ")),
        CallSource::Fentry => format!("fexit {}", targets.join(", ")),
        CallSource::Kprobe => format!("kprobe+kretprobe {}", targets.join(", ")),
    };
    format!(
        "calls={calls}; connections=tp_btf inet_sock_set_state; packets=cgroup_skb ingress+egress; samples={}",
        if profiling {
            "perf_event cpu-clock"
        } else {
            "off"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceable_list_keeps_names_without_modules() {
        let set = parse_traceable("tcp_sendmsg\nfoo [nf_tables]\n\n");
        assert!(set.contains("tcp_sendmsg") && set.contains("foo"));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn preemption_model_from_debugfs_cmdline_or_build() {
        let dynamic = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3";
        assert_eq!(preemptible("none (voluntary) full\n", "", dynamic), None);
        assert_eq!(
            preemptible("none voluntary (full) lazy\n", "", dynamic).as_deref(),
            Some("preempt=full")
        );
        assert_eq!(
            preemptible("", "quiet preempt=full", dynamic).as_deref(),
            Some("preempt=full")
        );
        assert_eq!(preemptible("", "quiet preempt=none", dynamic), None);
        assert_eq!(preemptible("", "quiet", dynamic), None);
        assert_eq!(
            preemptible("", "", "#1 SMP PREEMPT_RT Fri").as_deref(),
            Some("PREEMPT_RT")
        );
        assert_eq!(
            preemptible("", "", "#1 SMP PREEMPT Fri").as_deref(),
            Some("PREEMPT")
        );
    }

    #[test]
    fn running_kernel_offers_what_it_has() {
        let Ok(Ok(btf)) = Btf::from_sys() else {
            return;
        };
        let tracefs = Tracefs::read();
        let offers = Offers::detect(&btf, &tracefs);
        let auto = offers.candidates(None);
        // Some source serves every kernel the agent supports; the cheapest
        // offered one comes first.
        let first = auto.as_ref().map(|c| c[0].0);
        if btf.has_typedef("btf_trace_sock_send_length") {
            assert_eq!(first.ok(), Some(CallSource::Tracepoint));
        }
        // Forcing a source that is not offered says why, naming the flag.
        for s in CallSource::ALL {
            match offers.candidates(Some(s)) {
                Ok(c) => assert!(c.len() == 1 && c[0].0 == s && !c[0].1.is_empty()),
                Err(e) => {
                    assert!(matches!(e, NoCallSource::Forced { forced, .. } if forced == s));
                    assert!(e.to_string().contains("--capture-source"), "{e}");
                }
            }
        }
    }
}
