//! Export settings: flags and the standard `OTEL_EXPORTER_OTLP_*`
//! variables, validated once into an [`ExportConfig`].
//!
//! Precedence (first wins): the flag; the traces-specific variable
//! (`OTEL_EXPORTER_OTLP_TRACES_*`); the generic one
//! (`OTEL_EXPORTER_OTLP_*`); the default. With no endpoint anywhere there is
//! nothing to configure: the agent prints traces in the terminal instead.
//!
//! Endpoints: a URL `http://host:port[/path]`. For OTLP/HTTP, the generic
//! variable is a base URL to which `/v1/traces` is appended (the OTLP
//! specification's rule); the traces-specific variable is used as is; the
//! flag is used as is when it has a path and gets `/v1/traces` when it has
//! none. For gRPC the path is not used. Without a scheme (`collector` or
//! `collector:4317`) `http://` is assumed, and without a port as well the
//! protocol's default port is used (4317 gRPC, 4318 HTTP). `https` needs
//! TLS, which this build does not include: send to a collector on the node
//! or in the cluster that forwards with TLS.
use std::time::Duration;

use super::resource::{parse_kv_list, KvError};

/// Default `--export-queue-spans` (above what the byte bound holds, about
/// 400 bytes a span: the byte bound is the one that usually binds).
pub const DEFAULT_QUEUE_SPANS: usize = 65_536;
/// Default `--export-queue-bytes`: sixteen requests waiting or in flight,
/// a quarter of a second of spans at 150,000 spans/s, enough for a busy
/// collector's pauses, and a small part of the agent's memory.
pub const DEFAULT_QUEUE_BYTES: usize = 16 << 20;
/// Default `--export-batch-spans` (requests usually close by size first).
pub const DEFAULT_BATCH_SPANS: usize = super::encode::DEFAULT_BATCH_SPANS;
/// Default `--export-batch-bytes`.
pub const DEFAULT_BATCH_BYTES: usize = super::encode::DEFAULT_BATCH_BYTES;
/// Largest `--export-batch-bytes`.
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// Default `--export-interval-ms`.
pub const DEFAULT_INTERVAL_MS: u64 = 1000;
/// Default export timeout (the OTLP specification's 10 s).
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default bound on the resources (traced processes) whose encoded
/// attributes are kept.
pub const DEFAULT_MAX_RESOURCES: usize = super::encode::DEFAULT_MAX_RESOURCES;
/// Default number of requests sent at the same time.
pub const DEFAULT_IN_FLIGHT: usize = 4;

/// A URL given by the user that cannot be sent to; `from` is the flag or
/// variable it came from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// Nothing given.
    #[error("{from} is empty")]
    Empty {
        /// The flag or variable.
        from: &'static str,
    },
    /// Not a URL.
    #[error("{from}: {raw:?} is not a valid URL")]
    Invalid {
        /// The flag or variable.
        from: &'static str,
        /// The value.
        raw: String,
        /// What the URL parser said.
        #[source]
        source: url::ParseError,
    },
    /// `https`: no TLS in this build.
    #[error(
        "{from}: {raw:?}: https is not supported by this build (no TLS); \
         send over http to a collector or proxy that forwards with TLS"
    )]
    Https {
        /// The flag or variable.
        from: &'static str,
        /// The value.
        raw: String,
    },
    /// Another scheme than `http`.
    #[error("{from}: {raw:?}: unsupported scheme {scheme:?}, use http")]
    Scheme {
        /// The flag or variable.
        from: &'static str,
        /// The value.
        raw: String,
        /// Its scheme.
        scheme: String,
    },
    /// No host.
    #[error("{from}: {raw:?} has no host")]
    NoHost {
        /// The flag or variable.
        from: &'static str,
        /// The value.
        raw: String,
    },
    /// A user name or password in the URL.
    #[error("{from}: {raw:?}: credentials in the URL are not supported, use {hint}")]
    Credentials {
        /// The flag or variable.
        from: &'static str,
        /// The value.
        raw: String,
        /// Where credentials go instead.
        hint: &'static str,
    },
}

/// A header given by the user that cannot be sent; `from` is the flag or
/// variable it came from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Not an HTTP token.
    #[error("{from}: {name:?} is not a valid header name")]
    Name {
        /// The flag or variable.
        from: &'static str,
        /// The name (lower-cased).
        name: String,
    },
    /// A header the agent sets itself.
    #[error("{from}: header {name:?} is set by the agent")]
    Reserved {
        /// The flag or variable.
        from: &'static str,
        /// The name (lower-cased).
        name: String,
    },
    /// A value with control or non-ASCII characters.
    #[error("{from}: the value of header {name:?} has characters other than visible ASCII")]
    Value {
        /// The flag or variable.
        from: &'static str,
        /// The name (lower-cased).
        name: String,
    },
}

/// Export flags or `OTEL_EXPORTER_OTLP_*` variables that cannot work;
/// `from` is the flag or variable a value came from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportConfigError {
    /// `http/json`, which this build does not send.
    #[error("{from}: protocol \"http/json\" is not supported: use grpc or http/protobuf")]
    JsonProtocol {
        /// The flag or variable.
        from: &'static str,
    },
    /// Another protocol.
    #[error("{from}: unknown protocol {value:?}: use grpc or http/protobuf")]
    Protocol {
        /// The flag or variable.
        from: &'static str,
        /// The value.
        value: String,
    },
    /// Another compression.
    #[error("{from}: unknown compression {value:?}: use gzip or none")]
    Compression {
        /// The flag or variable.
        from: &'static str,
        /// The value.
        value: String,
    },
    /// A bad endpoint.
    #[error(transparent)]
    Endpoint(#[from] UrlError),
    /// Transport flags without an endpoint.
    #[error(
        "--otlp-protocol, --otlp-header, --otlp-timeout-ms and --otlp-compression \
         need an endpoint: set --otlp-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT"
    )]
    NoEndpoint,
    /// A malformed headers variable.
    #[error("{from}")]
    HeaderList {
        /// The variable.
        from: &'static str,
        /// What is wrong with the list.
        #[source]
        source: KvError,
    },
    /// `--otlp-header` without `=`.
    #[error("--otlp-header {value:?} is not of the form KEY=VALUE")]
    HeaderForm {
        /// The value.
        value: String,
    },
    /// A header that cannot be sent.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A timeout variable that is not a number.
    #[error("{from}: {value:?} is not a number of milliseconds")]
    TimeoutNotNumber {
        /// The variable.
        from: &'static str,
        /// The value.
        value: String,
    },
    /// A timeout out of range.
    #[error("{from}: the timeout must be between 1 and 600000 ms")]
    Timeout {
        /// The flag or variable.
        from: &'static str,
    },
    /// `--export-queue-spans` out of range.
    #[error("--export-queue-spans must be between 1 and 10000000")]
    QueueSpans,
    /// `--export-batch-spans` out of range.
    #[error("--export-batch-spans must be between 1 and --export-queue-spans ({queue_spans})")]
    BatchSpans {
        /// `--export-queue-spans`.
        queue_spans: usize,
    },
    /// `--export-batch-bytes` out of range.
    #[error("--export-batch-bytes must be between 1024 and {}", MAX_BATCH_BYTES)]
    BatchBytes,
    /// `--export-queue-bytes` out of range.
    #[error(
        "--export-queue-bytes must be between --export-batch-bytes ({batch_bytes}) and 1073741824"
    )]
    QueueBytes {
        /// `--export-batch-bytes`.
        batch_bytes: usize,
    },
    /// `--export-interval-ms` out of range.
    #[error("--export-interval-ms must be between 1 and 60000")]
    Interval,
}

/// OTLP export flags of `tracer run`. Each overrides the standard
/// environment variable named in its help.
#[derive(Clone, Debug, clap::Args)]
pub struct ExportArgs {
    /// Send spans over OTLP to this URL (e.g. http://localhost:4317 for
    /// gRPC, http://localhost:4318 for HTTP). Default: the
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT
    /// variable; with none, traces are printed in the terminal.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport. Default: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or
    /// OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf.
    #[arg(long, value_name = "PROTOCOL", value_parser = ["grpc", "http/protobuf"])]
    pub otlp_protocol: Option<String>,

    /// Header sent with every export, e.g. `authorization=Bearer x`
    /// (repeatable; taken literally). Added to, and overriding,
    /// OTEL_EXPORTER_OTLP_TRACES_HEADERS or OTEL_EXPORTER_OTLP_HEADERS
    /// (`k=v,k2=v2`, URL-encoded values).
    #[arg(long = "otlp-header", value_name = "KEY=VALUE")]
    pub otlp_headers: Vec<String>,

    /// Time limit of one export request in milliseconds. Default:
    /// OTEL_EXPORTER_OTLP_TRACES_TIMEOUT or OTEL_EXPORTER_OTLP_TIMEOUT, else
    /// 10000.
    #[arg(long, value_name = "MS")]
    pub otlp_timeout_ms: Option<u64>,

    /// Compression of export requests: gzip or none. Default:
    /// OTEL_EXPORTER_OTLP_TRACES_COMPRESSION or
    /// OTEL_EXPORTER_OTLP_COMPRESSION, else none (gzip costs the agent CPU
    /// and saves network bytes, about 5-10x on spans).
    #[arg(long, value_name = "ALGORITHM", value_parser = ["gzip", "none"])]
    pub otlp_compression: Option<String>,

    /// Spans waiting for export at most, queued or being sent (while the
    /// backend is slow or down they queue up to this or to
    /// --export-queue-bytes; more are dropped and counted).
    #[arg(long, value_name = "SPANS", default_value_t = DEFAULT_QUEUE_SPANS)]
    pub export_queue_spans: usize,

    /// Bytes of encoded spans waiting for export at most, queued or being
    /// sent.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_QUEUE_BYTES)]
    pub export_queue_bytes: usize,

    /// Spans per export request at most.
    #[arg(long, value_name = "SPANS", default_value_t = DEFAULT_BATCH_SPANS)]
    pub export_batch_spans: usize,

    /// Bytes per export request at most, before compression (OTLP
    /// receivers commonly refuse requests above 4 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BATCH_BYTES)]
    pub export_batch_bytes: usize,

    /// Longest time a finished span waits before it is exported, in
    /// milliseconds.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_INTERVAL_MS)]
    pub export_interval_ms: u64,
}

impl Default for ExportArgs {
    /// No flag given (the flags' own defaults).
    fn default() -> Self {
        ExportArgs {
            otlp_endpoint: None,
            otlp_protocol: None,
            otlp_headers: Vec::new(),
            otlp_timeout_ms: None,
            otlp_compression: None,
            export_queue_spans: DEFAULT_QUEUE_SPANS,
            export_queue_bytes: DEFAULT_QUEUE_BYTES,
            export_batch_spans: DEFAULT_BATCH_SPANS,
            export_batch_bytes: DEFAULT_BATCH_BYTES,
            export_interval_ms: DEFAULT_INTERVAL_MS,
        }
    }
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`grpc`).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`).
    HttpProtobuf,
}

impl Protocol {
    fn parse(s: &str, from: &'static str) -> Result<Protocol, ExportConfigError> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => Err(ExportConfigError::JsonProtocol { from }),
            other => Err(ExportConfigError::Protocol {
                from,
                value: other.to_string(),
            }),
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Protocol::Grpc => 4317,
            Protocol::HttpProtobuf => 4318,
        }
    }
}

/// Compression of export requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// None (the OTLP default).
    None,
    /// gzip (`Content-Encoding: gzip`, gRPC `grpc-encoding: gzip`).
    Gzip,
}

impl Compression {
    fn parse(s: &str, from: &'static str) -> Result<Compression, ExportConfigError> {
        match s.trim() {
            "gzip" => Ok(Compression::Gzip),
            "none" => Ok(Compression::None),
            other => Err(ExportConfigError::Compression {
                from,
                value: other.to_string(),
            }),
        }
    }
}

/// Retries of a failed export: exponential backoff from `initial` doubling
/// up to `max_delay`, at most `max_attempts` attempts and `max_elapsed` in
/// all; then the batch is dropped (counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max_delay: Duration,
    /// Attempts per batch, the first included.
    pub max_attempts: u32,
    /// Time from the first attempt after which no retry starts.
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_attempts: 8,
            max_elapsed: Duration::from_secs(30),
        }
    }
}

/// Validated export settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportConfig {
    /// Where spans go: for HTTP the full URL (path included), for gRPC
    /// `http://host:port`.
    pub endpoint: String,
    /// Transport.
    pub protocol: Protocol,
    /// Headers (gRPC metadata) sent with every request, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Time limit of one request.
    pub timeout: Duration,
    /// Request compression.
    pub compression: Compression,
    /// Bound on spans waiting for export (queued or being sent).
    pub queue_spans: usize,
    /// Bound on bytes waiting for export (queued or being sent).
    pub queue_bytes: usize,
    /// Spans per request at most.
    pub batch_spans: usize,
    /// Bytes per request at most (uncompressed).
    pub batch_bytes: usize,
    /// Longest wait of a span before export.
    pub interval: Duration,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Resources whose encoded attributes are kept.
    pub max_resources: usize,
    /// Requests sent at the same time.
    pub in_flight: usize,
}

impl ExportConfig {
    /// A configuration for `endpoint` with every other setting at its
    /// default (tests, embedding).
    pub fn new(endpoint: impl Into<String>, protocol: Protocol) -> ExportConfig {
        ExportConfig {
            endpoint: endpoint.into(),
            protocol,
            headers: Vec::new(),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            compression: Compression::None,
            queue_spans: DEFAULT_QUEUE_SPANS,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            batch_spans: DEFAULT_BATCH_SPANS,
            batch_bytes: DEFAULT_BATCH_BYTES,
            interval: Duration::from_millis(DEFAULT_INTERVAL_MS),
            retry: RetryConfig::default(),
            max_resources: DEFAULT_MAX_RESOURCES,
            in_flight: DEFAULT_IN_FLIGHT,
        }
    }
}

/// An HTTP header name: RFC 9110 token characters, not empty.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header to send with exports (OTLP, profiles): the name lower-cased
/// (as HTTP/2 and gRPC metadata want it) and a token, not one the agent
/// sets itself (`reserved`); the value visible ASCII or spaces/tabs.
pub fn check_header(
    name: &str,
    value: &str,
    from: &'static str,
    reserved: impl Fn(&str) -> bool,
) -> Result<(String, String), HeaderError> {
    let name = name.trim().to_ascii_lowercase();
    if !is_header_name(&name) {
        return Err(HeaderError::Name { from, name });
    }
    if reserved(&name) {
        return Err(HeaderError::Reserved { from, name });
    }
    let value = value.trim();
    if !value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(HeaderError::Value { from, name });
    }
    Ok((name, value.to_string()))
}

/// Headers the OTLP exporters set themselves.
fn otlp_reserved(name: &str) -> bool {
    name.starts_with("grpc-") || name == "content-type" || name == "te"
}

/// Parses an `http://` URL given by the user (`http://` assumed without a
/// scheme): no TLS in this build, a host, no credentials (`creds_hint` says
/// where they go instead). Returns the URL and whether the scheme was
/// missing (then a default port applies).
pub fn parse_http_url(
    raw: &str,
    from: &'static str,
    creds_hint: &'static str,
) -> Result<(reqwest::Url, bool), UrlError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(UrlError::Empty { from });
    }
    let (with_scheme, schemeless) = if raw.contains("://") {
        (raw.to_string(), false)
    } else {
        (format!("http://{raw}"), true)
    };
    let raw = raw.to_string();
    let url = match reqwest::Url::parse(&with_scheme) {
        Ok(url) => url,
        Err(source) => return Err(UrlError::Invalid { from, raw, source }),
    };
    match url.scheme() {
        "http" => {}
        "https" => return Err(UrlError::Https { from, raw }),
        s => {
            return Err(UrlError::Scheme {
                from,
                raw,
                scheme: s.to_string(),
            })
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost { from, raw });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials {
            from,
            raw,
            hint: creds_hint,
        });
    }
    Ok((url, schemeless))
}

/// Where an endpoint came from: its rule for the HTTP path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Flag,
    TracesVar,
    GenericVar,
}

fn endpoint_url(
    raw: &str,
    source: Source,
    protocol: Protocol,
    from: &'static str,
) -> Result<String, UrlError> {
    let (mut url, schemeless) = parse_http_url(raw, from, "a header")?;
    if schemeless && url.port().is_none() {
        let _ = url.set_port(Some(protocol.default_port()));
    }
    match protocol {
        Protocol::Grpc => Ok(format!("http://{}", url_authority(&url))),
        Protocol::HttpProtobuf => {
            let path = url.path().trim_end_matches('/').to_string();
            let append = match source {
                Source::GenericVar => true,
                Source::Flag => path.is_empty(),
                Source::TracesVar => false,
            };
            if append {
                url.set_path(&format!("{path}/v1/traces"));
            }
            Ok(url.to_string())
        }
    }
}

fn url_authority(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

impl ExportArgs {
    /// Validates the flags against the process environment; `Ok(None)` when
    /// no endpoint is configured anywhere.
    pub fn resolve(self) -> Result<Option<ExportConfig>, ExportConfigError> {
        self.resolve_with(|k| std::env::var(k).ok())
    }

    /// [`ExportArgs::resolve`] with the environment given as a function
    /// (tests).
    pub fn resolve_with(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ExportConfig>, ExportConfigError> {
        // An empty variable counts as unset (as in the SDKs).
        let var = |k: &'static str| env(k).filter(|v| !v.trim().is_empty()).map(|v| (k, v));
        let (proto_from, proto) = match &self.otlp_protocol {
            Some(p) => ("--otlp-protocol", Some(p.clone())),
            None => match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            {
                Some((k, v)) => (k, Some(v)),
                None => ("", None),
            },
        };
        let protocol = match proto {
            Some(p) => Protocol::parse(&p, proto_from)?,
            None => Protocol::HttpProtobuf,
        };
        let endpoint = match &self.otlp_endpoint {
            Some(e) if e.trim().is_empty() => {
                return Err(UrlError::Empty {
                    from: "--otlp-endpoint",
                }
                .into())
            }
            Some(e) => Some((Source::Flag, "--otlp-endpoint", e.clone())),
            None => var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .map(|(k, v)| (Source::TracesVar, k, v))
                .or_else(|| {
                    var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|(k, v)| (Source::GenericVar, k, v))
                }),
        };
        let Some((source, from, raw)) = endpoint else {
            if self.otlp_protocol.is_some()
                || !self.otlp_headers.is_empty()
                || self.otlp_timeout_ms.is_some()
                || self.otlp_compression.is_some()
            {
                return Err(ExportConfigError::NoEndpoint);
            }
            return Ok(None);
        };
        let endpoint = endpoint_url(&raw, source, protocol, from)?;

        let mut headers: Vec<(String, String)> = Vec::new();
        if let Some((k, v)) =
            var("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| var("OTEL_EXPORTER_OTLP_HEADERS"))
        {
            let list = parse_kv_list(&v)
                .map_err(|source| ExportConfigError::HeaderList { from: k, source })?;
            for (name, value) in list {
                headers.push(check_header(&name, &value, k, otlp_reserved)?);
            }
        }
        for h in &self.otlp_headers {
            let Some((name, value)) = h.split_once('=') else {
                return Err(ExportConfigError::HeaderForm { value: h.clone() });
            };
            let (name, value) = check_header(name, value, "--otlp-header", otlp_reserved)?;
            headers.retain(|(n, _)| *n != name);
            headers.push((name, value));
        }

        let timeout_ms = match self.otlp_timeout_ms {
            Some(t) => (t, "--otlp-timeout-ms"),
            None => match var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
                .or_else(|| var("OTEL_EXPORTER_OTLP_TIMEOUT"))
            {
                Some((k, v)) => match v.trim().parse() {
                    Ok(ms) => (ms, k),
                    Err(_) => {
                        return Err(ExportConfigError::TimeoutNotNumber { from: k, value: v })
                    }
                },
                None => (DEFAULT_TIMEOUT_MS, ""),
            },
        };
        if timeout_ms.0 == 0 || timeout_ms.0 > 600_000 {
            return Err(ExportConfigError::Timeout { from: timeout_ms.1 });
        }
        let compression = match &self.otlp_compression {
            Some(c) => Compression::parse(c, "--otlp-compression")?,
            None => match var("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
                .or_else(|| var("OTEL_EXPORTER_OTLP_COMPRESSION"))
            {
                Some((k, v)) => Compression::parse(&v, k)?,
                None => Compression::None,
            },
        };
        if self.export_queue_spans == 0 || self.export_queue_spans > 10_000_000 {
            return Err(ExportConfigError::QueueSpans);
        }
        if self.export_batch_spans == 0 || self.export_batch_spans > self.export_queue_spans {
            return Err(ExportConfigError::BatchSpans {
                queue_spans: self.export_queue_spans,
            });
        }
        if self.export_batch_bytes < 1024 || self.export_batch_bytes > MAX_BATCH_BYTES {
            return Err(ExportConfigError::BatchBytes);
        }
        if self.export_queue_bytes < self.export_batch_bytes || self.export_queue_bytes > 1 << 30 {
            return Err(ExportConfigError::QueueBytes {
                batch_bytes: self.export_batch_bytes,
            });
        }
        if self.export_interval_ms == 0 || self.export_interval_ms > 60_000 {
            return Err(ExportConfigError::Interval);
        }
        let mut cfg = ExportConfig::new(endpoint, protocol);
        cfg.headers = headers;
        cfg.timeout = Duration::from_millis(timeout_ms.0);
        cfg.compression = compression;
        cfg.queue_spans = self.export_queue_spans;
        cfg.queue_bytes = self.export_queue_bytes;
        cfg.batch_spans = self.export_batch_spans;
        cfg.batch_bytes = self.export_batch_bytes;
        cfg.interval = Duration::from_millis(self.export_interval_ms);
        Ok(Some(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        export: ExportArgs,
    }

    fn resolve(args: &[&str], env: &[(&str, &str)]) -> Result<Option<ExportConfig>, String> {
        let cli = Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.export
            .resolve_with(|k| {
                env.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
            .map_err(|e| crate::error::chain(&e))
    }

    fn cfg(args: &[&str], env: &[(&str, &str)]) -> ExportConfig {
        resolve(args, env).unwrap().unwrap()
    }

    #[test]
    fn default_is_no_flag() {
        let parsed = Cli::try_parse_from(["t"]).unwrap().export;
        let d = ExportArgs::default();
        assert_eq!(format!("{parsed:?}"), format!("{d:?}"));
    }

    #[test]
    fn nothing_configured_means_terminal() {
        assert_eq!(resolve(&[], &[]).unwrap(), None);
        assert_eq!(
            resolve(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap(),
            None
        );
        assert!(resolve(&["--otlp-header", "a=b"], &[])
            .unwrap_err()
            .contains("need an endpoint"));
    }

    #[test]
    fn endpoints_per_spec() {
        let c = cfg(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://col:4318")]);
        assert_eq!(c.endpoint, "http://col:4318/v1/traces");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        let c = cfg(
            &[],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://col:4318/base/")],
        );
        assert_eq!(c.endpoint, "http://col:4318/base/v1/traces");
        let c = cfg(
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:1"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://col:4318/custom",
                ),
            ],
        );
        assert_eq!(c.endpoint, "http://col:4318/custom");
        let c = cfg(
            &["--otlp-endpoint", "http://col:9999"],
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://x:1")],
        );
        assert_eq!(c.endpoint, "http://col:9999/v1/traces");
        let c = cfg(&["--otlp-endpoint", "http://col:9999/v1/traces"], &[]);
        assert_eq!(c.endpoint, "http://col:9999/v1/traces");
        let c = cfg(&["--otlp-endpoint", "collector"], &[]);
        assert_eq!(c.endpoint, "http://collector:4318/v1/traces");
        let c = cfg(
            &["--otlp-endpoint", "collector", "--otlp-protocol", "grpc"],
            &[],
        );
        assert_eq!(c.endpoint, "http://collector:4317");
        assert_eq!(c.protocol, Protocol::Grpc);
        let c = cfg(
            &[],
            &[
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "http://127.0.0.1:4317/ignored",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        );
        assert_eq!(c.endpoint, "http://127.0.0.1:4317");
        let c = cfg(
            &["--otlp-protocol", "http/protobuf"],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://[::1]:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        );
        assert_eq!(c.endpoint, "http://[::1]:4318/v1/traces");
    }

    #[test]
    fn bad_values_are_explained() {
        let e = |args: &[&str], env: &[(&str, &str)]| resolve(args, env).unwrap_err();
        assert!(e(&["--otlp-endpoint", "http://"], &[]).contains("not a valid URL"));
        assert!(e(&["--otlp-endpoint", "https://x:4318"], &[]).contains("https"));
        assert!(e(&["--otlp-endpoint", "ftp://x"], &[]).contains("scheme"));
        assert!(e(&["--otlp-endpoint", "http://u:p@x"], &[]).contains("credentials"));
        assert!(e(&["--otlp-endpoint", "x", "--otlp-protocol", "udp"], &[]).contains("udp"));
        assert!(e(
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ]
        )
        .contains("OTEL_EXPORTER_OTLP_PROTOCOL: protocol \"http/json\" is not supported"));
        assert!(
            e(&["--otlp-endpoint", "x", "--otlp-header", "novalue"], &[]).contains("KEY=VALUE")
        );
        assert!(e(&["--otlp-endpoint", "x", "--otlp-header", "a b=c"], &[]).contains("header name"));
        assert!(e(&["--otlp-endpoint", "x", "--otlp-header", "a=\u{7f}"], &[]).contains("ASCII"));
        assert_eq!(
            e(
                &["--otlp-endpoint", "x"],
                &[("OTEL_EXPORTER_OTLP_HEADERS", "a")]
            ),
            "OTEL_EXPORTER_OTLP_HEADERS: \"a\" is not of the form key=value"
        );
        assert_eq!(
            e(&["--otlp-endpoint", "http://"], &[]),
            "--otlp-endpoint: \"http://\" is not a valid URL: empty host"
        );
        assert!(e(
            &["--otlp-endpoint", "x"],
            &[("OTEL_EXPORTER_OTLP_TIMEOUT", "5s")]
        )
        .contains("milliseconds"));
        assert!(e(&["--otlp-endpoint", "x", "--otlp-timeout-ms", "0"], &[]).contains("timeout"));
        assert!(e(&["--otlp-endpoint", "x", "--export-batch-spans", "0"], &[]).contains("batch"));
        assert!(e(&["--otlp-endpoint", "x", "--export-queue-spans", "10"], &[]).contains("batch"));
        assert!(e(
            &["--otlp-endpoint", "x", "--export-batch-bytes", "100"],
            &[]
        )
        .contains("batch-bytes"));
        assert!(e(
            &["--otlp-endpoint", "x", "--export-queue-bytes", "2000"],
            &[]
        )
        .contains("--export-queue-bytes"));
        assert!(e(
            &["--otlp-endpoint", "x"],
            &[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]
        )
        .starts_with("OTEL_EXPORTER_OTLP_COMPRESSION: unknown compression"));
        assert!(e(&["--otlp-compression", "gzip"], &[]).contains("need an endpoint"));
        assert!(
            e(&["--otlp-endpoint", "x", "--export-interval-ms", "0"], &[]).contains("interval")
        );
    }

    #[test]
    fn headers_and_timeouts() {
        let c = cfg(
            &[
                "--otlp-header",
                "Authorization=Bearer flag",
                "--otlp-header",
                "x=a=b",
            ],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "authorization=Bearer%20env,tenant=t1",
                ),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ],
        );
        assert_eq!(
            c.headers,
            vec![
                ("tenant".to_string(), "t1".to_string()),
                ("authorization".to_string(), "Bearer flag".to_string()),
                ("x".to_string(), "a=b".to_string()),
            ]
        );
        assert_eq!(c.timeout, Duration::from_millis(2500));
        let c = cfg(
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "7"),
            ],
        );
        assert_eq!(c.headers, vec![("b".to_string(), "2".to_string())]);
        assert_eq!(c.timeout, Duration::from_millis(7));
        assert_eq!(c.queue_spans, DEFAULT_QUEUE_SPANS);
        assert_eq!(c.batch_spans, DEFAULT_BATCH_SPANS);
        assert_eq!(c.interval, Duration::from_millis(DEFAULT_INTERVAL_MS));
        assert_eq!(c.compression, Compression::None);
        assert_eq!((c.batch_bytes, c.queue_bytes), (1 << 20, 16 << 20));
    }

    #[test]
    fn compression_from_flag_or_environment() {
        let x = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318");
        assert_eq!(
            cfg(&[], &[x, ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")]).compression,
            Compression::Gzip
        );
        assert_eq!(
            cfg(
                &[],
                &[
                    x,
                    ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                    ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none")
                ]
            )
            .compression,
            Compression::None
        );
        assert_eq!(
            cfg(
                &["--otlp-compression", "gzip"],
                &[x, ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none")]
            )
            .compression,
            Compression::Gzip
        );
        let c = cfg(
            &[
                "--export-batch-bytes",
                "4194304",
                "--export-queue-bytes",
                "16777216",
            ],
            &[x],
        );
        assert_eq!((c.batch_bytes, c.queue_bytes), (4 << 20, 16 << 20));
    }
}
