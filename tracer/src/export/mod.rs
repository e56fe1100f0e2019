//! Where finished spans go: OTLP (gRPC or HTTP/protobuf) to a collector,
//! or, with no endpoint configured, the terminal.
//!
//! - [`resource`]: who produced a span. The correlator's spans carry a pid;
//!   [`ResourceCache`](resource::ResourceCache) turns it into the OpenTelemetry resource of that
//!   process (service name, process, host and container attributes), read
//!   from /proc once while the process lives and kept after it exits.
//! - [`service_name`]: which name users know a process by (its
//!   `OTEL_SERVICE_NAME`, the script or application an interpreter runs,
//!   `argv[0]`...), and the user's `--service-name` rules.
//! - [`cmdline`]: credentials out of exported command lines.
//! - [`container`]: `container.id` from a cgroup path.
//! - [`config`]: `--otlp-*`/`--export-*` flags over the standard
//!   `OTEL_EXPORTER_OTLP_*` variables, validated once into an
//!   [`ExportConfig`](config::ExportConfig) (`None`: print to the terminal).
//! - [`otlp`]: the [`Exporter`](otlp::Exporter): its own thread and runtime, a bounded
//!   queue that never blocks the capture loop, batches per resource,
//!   retries with backoff, counters for every span dropped.
//! - [`console`]: the [`ConsoleSink`](console::ConsoleSink): traces as indented trees once quiet,
//!   or one JSON object per span.
//! - [`sink`]: the [`SpanSink`](sink::SpanSink), all of the above as the
//!   pipeline's last stage.
//!
//! Wiring: flatten [`ExportArgs`](config::ExportArgs) into `run`'s flags
//! and resolve it with the others; in the pipeline, make one
//! `SpanSink::start(export, format, stdout, clock, ResourceCache::from_env()?)`,
//! call `saw_pid` on a new pid's first event (so short-lived processes are
//! described while alive), `span` for each finished span, `tick` from a
//! periodic timer, `counters` in the periodic report and `finish` at exit.
//! No item is re-exported: use the module paths.
pub mod cmdline;
pub mod config;
pub mod console;
pub mod container;
pub mod otlp;
pub mod resource;
pub mod service_name;
pub mod sink;
mod transport;

#[cfg(test)]
mod receiver_tests;
