//! Command line: raw flags (clap) validated once into [`RunConfig`].
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracer_common::{MAX_SNAP_LEN, SNAP_LEN_DEFAULT};

use crate::kernel::{lane_chunks, KernelConfig};

/// Chunks of the largest lane (1 GiB): the lanes of every CPU are one
/// array map, which the kernel allocates in one piece.
const MAX_LANE_CHUNKS: u32 = (1 << 30) / tracer_common::LANE_CHUNK as u32;

/// Zero-code eBPF tracer: turns every HTTP request on this host into spans.
///
/// Run as root. `tracer run` attaches to the kernel's socket layer (socket
/// tracepoints and a cgroup_skb packet hook on the root cgroup v2), rebuilds
/// every TCP byte stream on the host and prints what it sees. Nothing in the
/// traced services changes.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the eBPF programs and trace every HTTP request on this host
    /// until SIGINT/SIGTERM (or --duration). Spans go to an OTLP endpoint
    /// when one is configured (--otlp-endpoint or OTEL_EXPORTER_OTLP_*),
    /// else finished traces are printed as trees. Counters on exit.
    Run(Box<RunArgs>),
    /// Check that this machine can run the agent (root, BTF, kernel version,
    /// tracefs, cgroup v2) and exit.
    Check {
        /// cgroup v2 directory to check instead of the first cgroup2 mount.
        #[arg(long, value_name = "DIR", env = "TRACER_CGROUP_ROOT")]
        cgroup_root: Option<std::path::PathBuf>,
    },
}

/// What `run` prints on stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Print {
    /// Finished traces: an indented tree per trace (text), or one JSON
    /// object per span (json). The default when no OTLP endpoint is set.
    Traces,
    /// One line per send/receive call: time, pid/comm, tid, direction,
    /// local and remote address, byte count, first line of the payload.
    Events,
    /// Nothing on stdout (capture still runs; counters on exit).
    None,
}

/// How much of the counters the exit summary shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Summary {
    /// The headline counters of each stage, and every anomaly that is not
    /// zero; bytes and seconds in units.
    Brief,
    /// Every counter and gauge of each stage, zero or not, as exact
    /// numbers (what `--metrics-addr` serves, once, at exit).
    Full,
}

/// Output format of what is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `tracer run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// What to print on stdout [default: traces, or none when spans are
    /// exported over OTLP].
    #[arg(long, value_enum)]
    pub print: Option<Print>,

    /// Format of what is printed.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,

    /// Only print calls of these process ids (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Only print calls of processes with this name (`comm`, at most 15
    /// characters, as in /proc/PID/comm; repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,

    /// Only print calls on connections with this local or remote port
    /// (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Payload bytes copied per TCP packet (0 to 8192). The default, 1024,
    /// holds the request line and headers of ordinary HTTP requests and
    /// responses; bytes beyond it are counted as truncated, not lost.
    #[arg(long, value_name = "BYTES", default_value_t = SNAP_LEN_DEFAULT)]
    pub snap_len: u32,

    /// Plaintext bytes copied per TLS library call (SSL_write, SSL_read and
    /// their _ex forms, probed in every OpenSSL library and executable with
    /// those symbols; 0 to 16383). 0 turns TLS capture off: no uprobe is
    /// attached and encrypted connections are only counted.
    #[arg(long, value_name = "BYTES", default_value_t = tracer_common::TLS_SNAP_DEFAULT)]
    pub tls_snap_len: u32,

    /// Do not attach runtime hooks: read-only uprobes that tell which
    /// inbound request an outbound call is made for, so that hops link even
    /// when identical requests are in flight. By default they go on nginx
    /// (`ngx_http_upstream_init`, entry and return), Go net/http programs
    /// with symbols and DWARF (`(*persistConn).roundTrip`; ServeHTTP's
    /// entry and RETs, two per request, only from the program's first
    /// net/http client call on, the only calls they serve) and CPython's
    /// `_asyncio` with symbols (task steps and creation). Each hook hit is
    /// a uprobe trap (tens of microseconds on some VMs; see
    /// bench/hooks_cost.py). Without them calls link by the other rules
    /// (forwarding, request ids, trace headers).
    #[arg(long)]
    pub no_runtime_hooks: bool,

    /// Also follow goroutine creation in Go net/http programs (uprobes on
    /// `runtime.newproc1`, entry and returns), so that calls a handler
    /// makes from goroutines it starts link to its request. Off by
    /// default: every goroutine created pays two uprobe hits (a service
    /// that starts several goroutines per request runs at a fraction of
    /// its speed; see bench/hooks_cost.py). Calls made on the handler's
    /// own goroutine link without it.
    #[arg(long, conflicts_with = "no_runtime_hooks")]
    pub go_goroutine_ancestry: bool,

    /// Capture buffer of each CPU in bytes (its "lane": calls and packets
    /// of that CPU; rounded up to a power of two of 256 KiB, at most
    /// 1 GiB). Bigger
    /// absorbs longer bursts or stalls of the agent before records are
    /// dropped (counted). Mapped into the agent once: it counts in its RSS.
    #[arg(long, value_name = "BYTES", default_value_t = 2 << 20)]
    pub ring_buffer_size: u32,

    /// Bytes a CPU's lane takes before it wakes the agent (rounded down to
    /// a power of two, at most a quarter of the lane); in between, the agent
    /// drains every --drain-interval-ms. Batching the wake-ups is what keeps
    /// the capture cheap.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 10)]
    pub wakeup_bytes: u64,

    /// How often the agent drains the ring buffer, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10)]
    pub drain_interval_ms: u64,

    /// Scheduling priority (nice value, -20 to 19) of the agent's threads.
    /// Below 0 the agent is preferred over ordinary processes when CPUs are
    /// contended, so it drains the capture before the kernel's buffers fill
    /// and records are lost; it still uses only the CPU its work needs
    /// (one thread reads and parses). The profiling worker, whose samples
    /// can wait, runs 10 levels below. 0 keeps the priority it was started
    /// with.
    #[arg(long, value_name = "N", default_value_t = -10, allow_hyphen_values = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: i32,

    /// Attach every program but make them return at once: measures the
    /// cost of the hooks alone (benchmarks).
    #[arg(long)]
    pub hooks_only: bool,

    /// Where send/receive calls come from: `tracepoint` (sock_send_length /
    /// sock_recv_length, Linux 6.3 on), `fentry` (fexit on tcp_sendmsg,
    /// tcp_recvmsg, tcp_sendpage) or `kprobe` (kprobes and kretprobes on
    /// those). Default: the cheapest this kernel offers and accepts. A
    /// forced source this kernel lacks is an error.
    #[arg(long, value_enum, value_name = "SOURCE", env = "TRACER_CAPTURE_SOURCE")]
    pub capture_source: Option<crate::sources::CallSource>,

    /// Log the counters every N seconds (0: only on exit).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub stats_interval: u64,

    /// What the counters table on exit shows.
    #[arg(long, value_enum, default_value_t = Summary::Brief)]
    pub summary: Summary,

    /// Serve the agent's own metrics (every counter, drops by reason,
    /// spans/s, CPU and memory) in the Prometheus text format on
    /// http://ADDR/metrics. ADDR is HOST:PORT, or a bare PORT for the
    /// loopback address only. Off by default.
    #[arg(long, value_name = "ADDR", env = "TRACER_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// cgroup v2 directory to attach the packet capture to (default: the
    /// first cgroup2 mount in /proc/mounts). In a container, point it at the
    /// host's hierarchy mounted in, e.g. /host/sys/fs/cgroup.
    #[arg(long, value_name = "DIR", env = "TRACER_CGROUP_ROOT")]
    pub cgroup_root: Option<std::path::PathBuf>,

    /// HTTP request-id headers that tie spans sharing a value into one trace
    /// (repeatable; default: x-request-id, as set by Envoy).
    #[arg(long = "request-id-header", value_name = "NAME")]
    pub request_id_headers: Vec<String>,

    /// Name the processes that match PATTERN as NAME (repeatable; the first
    /// matching rule wins, even over a process's own OTEL_SERVICE_NAME).
    /// PATTERN is `exe:GLOB` (the executable's path if GLOB has a `/`,
    /// else its file name), `cmd:GLOB` (the command line, arguments joined
    /// by spaces), `cgroup:GLOB` (one of the process's cgroup paths) or
    /// `name:GLOB` (the name the agent would choose); e.g.
    /// `exe:redis-*=cache`. In TRACER_SERVICE_NAMES (and here) `;`
    /// separates rules.
    #[arg(
        long = "service-name",
        value_name = "PATTERN=NAME",
        env = "TRACER_SERVICE_NAMES",
        value_delimiter = ';'
    )]
    pub service_names: Vec<String>,

    /// Keep query-string values in url.query (by default every value is
    /// replaced by REDACTED: tokens travel in query strings).
    #[arg(long)]
    pub keep_query_values: bool,

    /// CPU samples per second on each CPU for the profiles joined to spans;
    /// 0 turns profiling off (no sampling program is attached). 99 Hz, as
    /// most profilers use: often enough to show where a request of a few
    /// tens of milliseconds spends its CPU, rare enough to cost well under
    /// 1 % of a busy CPU, and off the kernel's 100/250/1000 Hz timer beats
    /// so samples do not fall in lock-step with periodic work.
    #[arg(long, value_name = "HZ", default_value_t = tracer_common::PROFILE_HZ_DEFAULT)]
    pub profile_hz: u32,

    /// Bytes of a sampled thread's user stack copied for unwinding (up to
    /// 32768): code built without frame pointers (most distribution
    /// libraries) is unwound from this copy with its .eh_frame.
    #[arg(long, value_name = "BYTES", default_value_t = tracer_common::STACK_COPY_DEFAULT)]
    pub stack_copy: u32,

    /// Bytes of DWARF (uncompressed) the symbolizer holds at once for
    /// source lines and inlined functions in profiles. DWARF is read
    /// whole and kept while its binary is in use (libc's debug file is
    /// ~10 MiB of it, a Go or Rust binary built with debug information
    /// tens of MiB), so this bounds the profiler's memory. A binary that
    /// does not fit is named from its symbol tables (its separate debug
    /// file's when one is installed, static functions included): function
    /// names without lines or inlined frames, counted in `dwarf_skipped`.
    #[arg(long, value_name = "BYTES", default_value_t = crate::profile::symbols::DWARF_BYTES_DEFAULT)]
    pub profile_dwarf_bytes: u64,

    /// Bytes of span records the correlator holds at once, their names and
    /// attributes included: spans in progress, spans waiting for their
    /// parent, and server spans kept a moment after export for late
    /// children. At full load this is most of the agent's heap. Reaching
    /// it forgets the oldest kept span first (`retained_evicted`), else
    /// settles the oldest waiting one at once with what is known
    /// (`span_overflow`): a smaller bound costs links under load, never a
    /// wrong parent.
    #[arg(long, value_name = "BYTES", default_value_t = correlate::DEFAULT_MAX_SPAN_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1 << 20..=1 << 30))]
    pub span_memory_bytes: usize,

    /// Profile aggregation.
    #[command(flatten)]
    pub profile: crate::profile::aggregate::AggregateArgs,

    /// Where profiles go (Pyroscope).
    #[command(flatten)]
    pub pyroscope: crate::profile::pyroscope::PyroscopeArgs,

    /// Local flame graphs.
    #[command(flatten)]
    pub flame: crate::profile::flame::FlameArgs,

    /// Capture and rebuild the byte streams only: no HTTP parsing, no spans
    /// (with --print events, or to measure the capture alone).
    #[arg(long)]
    pub no_spans: bool,

    /// Where spans go.
    #[command(flatten)]
    pub export: crate::export::config::ExportArgs,

    /// Also write every kernel record to FILE as it is read (for replays:
    /// benchmarks and bug reports). The file holds payload prefixes: treat
    /// it as sensitive.
    #[arg(long, value_name = "FILE")]
    pub record: Option<std::path::PathBuf>,

    /// Exit after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
}

/// A flag combination that cannot work, said plainly: the flag, its value
/// and the rule it breaks.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--tls-snap-len` above the kernel side's buffer.
    #[error("invalid option: --tls-snap-len {value} is above the maximum of {max} bytes", max = tracer_common::TLS_SNAP_MAX)]
    TlsSnapLen {
        /// The value given.
        value: u32,
    },
    /// `--snap-len` above the kernel side's buffer.
    #[error("invalid option: --snap-len {value} is above the maximum of {max} bytes", max = MAX_SNAP_LEN)]
    SnapLen {
        /// The value given.
        value: u32,
    },
    /// `--ring-buffer-size` zero or beyond the largest lane.
    #[error(
        "invalid option: --ring-buffer-size {value} must be between 1 byte and 1 GiB (it is \
         rounded up to a power of two of 256 KiB)"
    )]
    RingBufferSize {
        /// The value given.
        value: u32,
    },
    /// `--drain-interval-ms` out of range.
    #[error("invalid option: --drain-interval-ms must be between 1 and 10000")]
    DrainInterval,
    /// A `--comm` longer than the kernel's process names.
    #[error(
        "invalid option: --comm {comm:?} is longer than the kernel's 15-character process names"
    )]
    Comm {
        /// The name given.
        comm: String,
    },
    /// `--pid`, `--comm` or `--port` when no calls are printed: they
    /// select the calls `--print events` shows, never spans, so given for
    /// traces they would change nothing.
    #[error(
        "invalid option: --pid, --comm and --port choose the calls that `--print events` prints; \
         spans are never filtered (a span's parent may be in any process): add --print events, \
         or drop them"
    )]
    FilterWithoutEvents,
    /// `--profile-hz` above 1000.
    #[error("invalid option: --profile-hz {value} is above 1000")]
    ProfileHz {
        /// The value given.
        value: u32,
    },
    /// `--stack-copy` above the kernel side's buffer.
    #[error(
        "invalid option: --stack-copy {value} is above the maximum of {max} bytes",
        max = tracer_common::MAX_STACK_COPY
    )]
    StackCopy {
        /// The value given.
        value: u32,
    },
    /// A `--request-id-header` that is not a header name.
    #[error("invalid option: --request-id-header {header:?} is not a valid HTTP header name")]
    RequestIdHeader {
        /// The name given.
        header: String,
    },
    /// `--duration` not a positive number.
    #[error("invalid option: --duration must be a positive number of seconds")]
    Duration,
    /// `--metrics-addr` neither a port nor an address.
    #[error(
        "invalid option: --metrics-addr {value:?} is neither a port nor an address like \
         127.0.0.1:9464 or [::1]:9464"
    )]
    MetricsAddr {
        /// The value given.
        value: String,
    },
    /// OTLP export flags or variables.
    #[error("invalid option")]
    Export(#[from] crate::export::config::ExportConfigError),
    /// Profile aggregation flags.
    #[error("invalid option")]
    Profile(#[from] crate::profile::aggregate::AggregateError),
    /// Pyroscope flags or variables.
    #[error("invalid option")]
    Pyroscope(#[from] crate::profile::pyroscope::PyroscopeConfigError),
    /// Flame graph flags.
    #[error("invalid option")]
    Flame(#[from] crate::profile::flame::FlameError),
    /// `--service-name` rules.
    #[error("invalid option")]
    ServiceNames(#[from] crate::export::service_name::RulesError),
}

/// Filters on what is printed.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Process ids (empty: all).
    pub pids: Vec<u32>,
    /// Process names (empty: all).
    pub comms: Vec<String>,
    /// Ports (empty: all).
    pub ports: Vec<u16>,
}

impl Filter {
    /// Whether a call of `pid`/`comm` on a connection with these ports is shown.
    pub fn allows(&self, pid: u32, comm: &str, ports: Option<(u16, u16)>) -> bool {
        (self.pids.is_empty() || self.pids.contains(&pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| c == comm))
            && (self.ports.is_empty()
                || ports.is_some_and(|(l, r)| self.ports.contains(&l) || self.ports.contains(&r)))
    }
}

/// `--metrics-addr`: `HOST:PORT`, or a bare port on the loopback address.
fn metrics_addr(a: &str) -> Result<std::net::SocketAddr, ConfigError> {
    let a = a.trim();
    if let Ok(port) = a.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    a.parse().map_err(|_| ConfigError::MetricsAddr {
        value: a.to_string(),
    })
}

/// `run`'s validated settings.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Kernel tunables.
    pub kernel: KernelConfig,
    /// What to print.
    pub print: Print,
    /// How.
    pub output: Output,
    /// Print filters.
    pub filter: Filter,
    /// Ring-buffer drain period.
    pub drain_interval: Duration,
    /// The agent's nice value (0: unchanged).
    pub nice: i32,
    /// Counter log period.
    pub stats_interval: Option<Duration>,
    /// The exit summary's extent.
    pub summary: Summary,
    /// Where the metrics endpoint listens.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Stop after.
    pub duration: Option<Duration>,
    /// cgroup v2 root override.
    pub cgroup_root: Option<std::path::PathBuf>,
    /// Span export, when an endpoint is configured.
    pub export: Option<crate::export::config::ExportConfig>,
    /// Correlation settings.
    pub correlate: correlate::Config,
    /// `--service-name` rules.
    pub service_names: crate::export::service_name::Rules,
    /// Where to record raw records.
    pub record: Option<std::path::PathBuf>,
    /// Skip HTTP parsing and spans.
    pub no_spans: bool,
    /// Profiling, when on.
    pub profile: Option<crate::profile::stage::ProfileSettings>,
}

impl RunArgs {
    /// Validates the flags.
    pub fn resolve(self) -> Result<RunConfig, ConfigError> {
        if self.snap_len > MAX_SNAP_LEN as u32 {
            return Err(ConfigError::SnapLen {
                value: self.snap_len,
            });
        }
        if self.tls_snap_len > tracer_common::TLS_SNAP_MAX {
            return Err(ConfigError::TlsSnapLen {
                value: self.tls_snap_len,
            });
        }
        let ring = self.ring_buffer_size;
        if ring == 0 || lane_chunks(ring) > MAX_LANE_CHUNKS {
            return Err(ConfigError::RingBufferSize { value: ring });
        }
        // --wakeup-bytes needs no check: it is clamped to a quarter of the
        // lane, whose size is only known once rounded up.
        if self.drain_interval_ms == 0 || self.drain_interval_ms > 10_000 {
            return Err(ConfigError::DrainInterval);
        }
        if let Some(c) = self.comms.iter().find(|c| c.len() > 15) {
            return Err(ConfigError::Comm { comm: c.clone() });
        }
        let export = self.export.resolve()?;
        if self.profile_hz > 1000 {
            return Err(ConfigError::ProfileHz {
                value: self.profile_hz,
            });
        }
        if self.stack_copy > tracer_common::MAX_STACK_COPY as u32 {
            return Err(ConfigError::StackCopy {
                value: self.stack_copy,
            });
        }
        let profile = if self.profile_hz > 0 {
            let (aggregate, interval_ms) = self.profile.resolve(self.profile_hz)?;
            Some(crate::profile::stage::ProfileSettings {
                aggregate,
                interval: Duration::from_millis(interval_ms),
                pyroscope: self.pyroscope.resolve()?,
                flame: self.flame.resolve()?,
                max_dwarf_bytes: self.profile_dwarf_bytes,
            })
        } else {
            None
        };
        let print = self.print.unwrap_or(if export.is_some() {
            Print::None
        } else {
            Print::Traces
        });
        let filtered = !(self.pids.is_empty() && self.comms.is_empty() && self.ports.is_empty());
        if filtered && print != Print::Events {
            return Err(ConfigError::FilterWithoutEvents);
        }
        let mut correlate = correlate::Config::default();
        if !self.request_id_headers.is_empty() {
            if let Some(h) = self
                .request_id_headers
                .iter()
                .find(|h| !crate::export::config::is_header_name(h))
            {
                return Err(ConfigError::RequestIdHeader { header: h.clone() });
            }
            correlate.request_id_headers = self
                .request_id_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect();
        }
        correlate.redact_query = !self.keep_query_values;
        correlate.max_span_bytes = self.span_memory_bytes;
        let service_names = crate::export::service_name::Rules::parse(&self.service_names)?;
        let duration = match self.duration {
            Some(d) if !(d.is_finite() && d > 0.0) => return Err(ConfigError::Duration),
            d => d.map(Duration::from_secs_f64),
        };
        Ok(RunConfig {
            kernel: KernelConfig {
                snap_len: self.snap_len,
                head_max: tracer_common::HEAD_MAX_DEFAULT,
                tls_snap: self.tls_snap_len,
                runtime_hooks: !self.no_runtime_hooks,
                go_ancestry: self.go_goroutine_ancestry,
                enabled: !self.hooks_only,
                ring_bytes: ring,
                wakeup_bytes: self.wakeup_bytes,
                profile_hz: (self.profile_hz > 0).then_some(self.profile_hz),
                stack_copy: self.stack_copy,
                capture_source: self.capture_source,
            },
            print,
            output: self.output,
            filter: Filter {
                pids: self.pids,
                comms: self.comms,
                ports: self.ports,
            },
            drain_interval: Duration::from_millis(self.drain_interval_ms),
            nice: self.nice,
            stats_interval: (self.stats_interval > 0)
                .then(|| Duration::from_secs(self.stats_interval)),
            summary: self.summary,
            metrics_addr: match &self.metrics_addr {
                Some(a) => Some(metrics_addr(a)?),
                None => None,
            },
            duration,
            cgroup_root: self.cgroup_root,
            export,
            correlate,
            service_names,
            record: self.record,
            no_spans: self.no_spans,
            profile,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunConfig, String> {
        let cli =
            Cli::try_parse_from(["tracer", "run"].iter().chain(args)).map_err(|e| e.to_string())?;
        let Command::Run(r) = cli.command else {
            unreachable!()
        };
        r.resolve().map_err(|e| crate::error::chain(&e))
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.kernel.snap_len, 1024);
        assert!(c.kernel.enabled);
        assert_eq!(c.print, Print::Traces);
        assert!(c.export.is_none() || std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some());
        assert_eq!(c.correlate.request_id_headers, ["x-request-id"]);
        assert!(c.correlate.redact_query);
        assert_eq!(c.correlate.max_span_bytes, 24 << 20);
        assert_eq!(c.nice, -10);
    }

    #[test]
    fn bad_values_are_explained() {
        assert!(parse(&["--snap-len", "9000"])
            .unwrap_err()
            .contains("maximum"));
        assert!(parse(&["--ring-buffer-size", "0"])
            .unwrap_err()
            .contains("1 GiB"));
        assert!(
            parse(&["--ring-buffer-size", &((1u32 << 30) + 1).to_string()])
                .unwrap_err()
                .contains("1 GiB")
        );
        // Any size up to a lane of 1 GiB: it is rounded up to chunks.
        for ok in ["4096", "5000", &(1u32 << 30).to_string()] {
            assert!(parse(&["--ring-buffer-size", ok]).is_ok(), "{ok}");
        }
        assert!(parse(&["--comm", "a-very-long-process-name"])
            .unwrap_err()
            .contains("15"));
        assert!(parse(&["--duration", "0"])
            .unwrap_err()
            .contains("positive"));
        assert!(parse(&["--duration=-1"]).unwrap_err().contains("positive"));
        assert!(parse(&["--port", "70000"]).is_err());
        assert!(parse(&["--print", "events", "--port", "0"]).is_err());
        // The filters choose printed calls: asked of spans, they are refused.
        for args in [
            &["--port", "80"][..],
            &["--print", "traces", "--pid", "1"],
            &["--print", "none", "--comm", "nginx"],
            &["--otlp-endpoint", "http://x:1", "--port", "80"],
        ] {
            assert!(
                parse(args).unwrap_err().contains("--print events"),
                "{args:?}"
            );
        }
        let events = parse(&["--print", "events", "--port", "80", "--comm", "nginx"]).unwrap();
        assert_eq!(
            (events.filter.ports, events.filter.comms),
            (vec![80], vec!["nginx".into()])
        );
        assert!(parse(&["--nice", "-21"]).unwrap_err().contains("-20..=19"));
        assert!(parse(&["--nice", "20"]).is_err());
        assert_eq!(parse(&["--nice", "-20"]).unwrap().nice, -20);
        assert!(parse(&["--span-memory-bytes", "1000"])
            .unwrap_err()
            .contains("1048576"));
        assert_eq!(
            parse(&["--span-memory-bytes", "8388608"])
                .unwrap()
                .correlate
                .max_span_bytes,
            8 << 20
        );
        assert_eq!(parse(&["--nice", "0"]).unwrap().nice, 0);
        assert_eq!(
            parse(&["--service-name", "redis-*=cache"]).unwrap_err(),
            "invalid option: --service-name \"redis-*=cache\": \
             the pattern must start with exe:, cmd:, cgroup: or name:"
        );
        assert!(parse(&["--service-name", "exe:redis-*=cache;cmd:*x*=y"])
            .is_ok_and(|c| !c.service_names.is_empty()));
        assert!(parse(&["--request-id-header", "bad header"])
            .unwrap_err()
            .contains("header name"));
        assert!(parse(&[
            "--otlp-protocol",
            "carrier-pigeon",
            "--otlp-endpoint",
            "http://x:1"
        ])
        .is_err());
    }

    #[test]
    fn filter_semantics() {
        let f = Filter {
            pids: vec![1],
            comms: vec![],
            ports: vec![80],
        };
        assert!(f.allows(1, "x", Some((80, 5000))));
        assert!(f.allows(1, "x", Some((5000, 80))));
        assert!(!f.allows(2, "x", Some((80, 5000))));
        assert!(!f.allows(1, "x", None));
        assert!(Filter::default().allows(9, "y", None));
    }
}
