//! Pushes CPU profiles to a Pyroscope-compatible server, off the capture
//! thread.
//!
//! Each [`ServiceProfile`] becomes one `POST {url}/ingest` (Pyroscope's
//! ingest API) with the gzip-compressed pprof body ([`super::pprof`]) and
//! the query `name={service}{}&from=…&until=…&format=pprof&sampleRate={hz}&
//! spyName=tracer`. Pyroscope takes the `service_name` label from the
//! application name and the profile type (`process_cpu`) from the pprof
//! sample types, so the name carries neither a `.cpu` suffix (it would end
//! up in `service_name`) nor, normally, a `service_name` label: servers
//! before grafana/pyroscope#3951 (v1.13) refuse a profile whose name has
//! one ("duplicate label name"). Only when the service name has characters
//! Pyroscope refuses in application names (replaced by `_`) is the exact
//! value given as a `service_name` label, which newer servers prefer, so
//! that Grafana's trace-to-profiles link (by `service.name`) still finds
//! it. Span-attributed samples carry the pprof labels `span_id` and
//! `span_name`.
//!
//! [`PyroscopeExporter`] hands profiles to the export
//! [`Worker`] (its own thread and runtime, a queue bounded by
//! [`PyroscopeConfig::queue_profiles`] and [`PyroscopeConfig::queue_bytes`]
//! that never blocks, counters by outcome). Encoding happens on the export
//! thread. A failed push (connection refused, timeout, HTTP 429/502/503/504,
//! after the server's `Retry-After` when it gives one) is retried with
//! exponential backoff and jitter ([`RetryConfig`]); a permanent error
//! (another status) or an exhausted retry budget drops the profile
//! (counted).
use std::{future::Future, time::Duration};

use bytes::Bytes;

use super::aggregate::ServiceProfile;
use super::pprof;
use crate::error::chain;
use crate::export::{
    config::{self, parse_http_url, HeaderError, RetryConfig, UrlError},
    transport::{read_answer, retry_after, retryable_http},
    worker::{Attempt, Deliver, Job, Worker, WorkerConfig, WorkerCounters, WorkerError},
};

/// Default `--pyroscope-timeout-ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default bound on profiles waiting to be pushed.
pub const DEFAULT_QUEUE_PROFILES: usize = 256;
/// Default bound on the memory of profiles waiting to be pushed.
pub const DEFAULT_QUEUE_BYTES: usize = 8 << 20;
/// Pushes at the same time.
const IN_FLIGHT: usize = 2;
/// The `spyName` sent with every profile.
pub const SPY_NAME: &str = "tracer";
/// Port assumed when the URL names neither scheme nor port (Pyroscope's).
pub const DEFAULT_PORT: u16 = 4040;

/// Pyroscope flags of `tracer run`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct PyroscopeArgs {
    /// Push CPU profiles (pprof, with span_id/span_name labels) to this
    /// Pyroscope-compatible server, e.g. http://localhost:4040 (its
    /// /ingest API). Default: the PYROSCOPE_URL variable; with neither,
    /// profiles are not pushed.
    #[arg(long, value_name = "URL")]
    pub pyroscope_url: Option<String>,

    /// Header sent with every push, e.g. `X-Scope-OrgID=tenant1`
    /// (repeatable).
    #[arg(long = "pyroscope-header", value_name = "KEY=VALUE")]
    pub pyroscope_headers: Vec<String>,

    /// Time limit of one push in milliseconds. Default: 10000.
    #[arg(long, value_name = "MS")]
    pub pyroscope_timeout_ms: Option<u64>,
}

/// Pyroscope flags or variables that cannot work; `from` is the flag or
/// variable a value came from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PyroscopeConfigError {
    /// A bad server URL.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A URL with a query or fragment.
    #[error("{from}: {raw:?}: a query or fragment is not allowed (the agent sets the query)")]
    Query {
        /// The flag or variable.
        from: &'static str,
        /// The value.
        raw: String,
    },
    /// `--pyroscope-header` without `=`.
    #[error("--pyroscope-header {value:?} is not of the form KEY=VALUE")]
    HeaderForm {
        /// The value.
        value: String,
    },
    /// A header that cannot be sent.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// Push flags without a server.
    #[error(
        "--pyroscope-header and --pyroscope-timeout-ms need a server: \
         set --pyroscope-url or PYROSCOPE_URL"
    )]
    NoServer,
    /// `--pyroscope-timeout-ms` out of range.
    #[error("--pyroscope-timeout-ms must be between 1 and 600000")]
    Timeout,
}

/// Validated Pyroscope settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PyroscopeConfig {
    /// The server's base URL (no trailing `/`); pushes go to
    /// `{url}/ingest`.
    pub url: String,
    /// Headers sent with every push (names lower-case).
    pub headers: Vec<(String, String)>,
    /// Time limit of one push.
    pub timeout: Duration,
    /// Bound on profiles waiting to be pushed.
    pub queue_profiles: usize,
    /// Bound on the memory of profiles waiting to be pushed, in bytes.
    pub queue_bytes: usize,
    /// Retry policy.
    pub retry: RetryConfig,
}

impl PyroscopeConfig {
    /// A configuration for `url` (validated like the flag) with every other
    /// setting at its default.
    pub fn new(url: &str) -> Result<PyroscopeConfig, PyroscopeConfigError> {
        Ok(PyroscopeConfig {
            url: base_url(url, "pyroscope url")?,
            headers: Vec::new(),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            queue_profiles: DEFAULT_QUEUE_PROFILES,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            retry: RetryConfig::default(),
        })
    }
}

/// `http://host:port[/prefix]` from what the user gave: `http://` assumed
/// without a scheme (and port 4040 without a port as well); a trailing
/// `/ingest` is dropped.
fn base_url(raw: &str, from: &'static str) -> Result<String, PyroscopeConfigError> {
    let (mut url, schemeless) = parse_http_url(raw, from, "--pyroscope-header")?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(PyroscopeConfigError::Query {
            from,
            raw: raw.to_string(),
        });
    }
    if schemeless && url.port().is_none() {
        let _ = url.set_port(Some(DEFAULT_PORT));
    }
    let path = url.path().trim_end_matches('/');
    let path = path.strip_suffix("/ingest").unwrap_or(path).to_string();
    url.set_path(&path);
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn check_header(h: &str) -> Result<(String, String), PyroscopeConfigError> {
    let Some((name, value)) = h.split_once('=') else {
        return Err(PyroscopeConfigError::HeaderForm {
            value: h.to_string(),
        });
    };
    let checked = config::check_header(name, value, "--pyroscope-header", |n| {
        matches!(
            n,
            "content-type" | "content-length" | "host" | "transfer-encoding" | "connection"
        )
    })?;
    Ok(checked)
}

impl PyroscopeArgs {
    /// Validates the flags against the process environment; `Ok(None)`
    /// when no URL is configured.
    pub fn resolve(&self) -> Result<Option<PyroscopeConfig>, PyroscopeConfigError> {
        self.resolve_with(|k| std::env::var(k).ok())
    }

    /// [`PyroscopeArgs::resolve`] with the environment given as a function
    /// (tests).
    pub fn resolve_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<PyroscopeConfig>, PyroscopeConfigError> {
        let url = match &self.pyroscope_url {
            Some(u) => Some(base_url(u, "--pyroscope-url")?),
            None => match env("PYROSCOPE_URL").filter(|v| !v.trim().is_empty()) {
                Some(u) => Some(base_url(&u, "PYROSCOPE_URL")?),
                None => None,
            },
        };
        let Some(url) = url else {
            if !self.pyroscope_headers.is_empty() || self.pyroscope_timeout_ms.is_some() {
                return Err(PyroscopeConfigError::NoServer);
            }
            return Ok(None);
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        for h in &self.pyroscope_headers {
            let (name, value) = check_header(h)?;
            headers.retain(|(n, _)| *n != name);
            headers.push((name, value));
        }
        let timeout = self.pyroscope_timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout == 0 || timeout > 600_000 {
            return Err(PyroscopeConfigError::Timeout);
        }
        Ok(Some(PyroscopeConfig {
            url,
            headers,
            timeout: Duration::from_millis(timeout),
            queue_profiles: DEFAULT_QUEUE_PROFILES,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            retry: RetryConfig::default(),
        }))
    }
}

/// The application name Pyroscope accepts (`[A-Za-z0-9_./-]`) for a
/// service name.
pub fn app_name(service: &str) -> String {
    let s: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "unknown_service".into()
    } else {
        s
    }
}

/// A label value that survives Pyroscope's `name{k=v,…}` syntax: no `,`,
/// `{`, `}`, `=` or control characters, no surrounding blanks.
pub fn label_value(v: &str) -> String {
    let s: String = v
        .trim()
        .chars()
        .map(|c| {
            if matches!(c, ',' | '{' | '}' | '=') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() {
        "unknown_service".into()
    } else {
        s
    }
}

/// The `name` query parameter of a profile: `{app}{}`, or
/// `{app}{service_name=…}` when the application name had to differ from
/// the service name (see the module docs).
pub fn ingest_name(service: &str) -> String {
    let app = app_name(service);
    if app == service {
        format!("{app}{{}}")
    } else {
        format!("{app}{{service_name={}}}", label_value(service))
    }
}

/// The ingest endpoint, `{base}/ingest`, of a server's base URL.
pub fn ingest_endpoint(base: &str) -> Result<reqwest::Url, PushError> {
    reqwest::Url::parse(&format!("{}/ingest", base.trim_end_matches('/'))).map_err(|source| {
        PushError::IngestUrl {
            base: base.to_string(),
            source,
        }
    })
}

/// The URL a profile is pushed to: the `ingest` endpoint with the
/// profile's query.
pub fn ingest_url(ingest: &reqwest::Url, p: &ServiceProfile) -> reqwest::Url {
    let mut url = ingest.clone();
    let from = p.start_unix_ns / 1_000_000_000;
    let until = p.end_unix_ns.div_ceil(1_000_000_000).max(from + 1);
    url.query_pairs_mut()
        .append_pair("name", &ingest_name(&p.service))
        .append_pair("from", &from.to_string())
        .append_pair("until", &until.to_string())
        .append_pair("format", "pprof")
        .append_pair("sampleRate", &p.frequency_hz.to_string())
        .append_pair("spyName", SPY_NAME);
    url
}

/// A profile's memory while it waits, roughly (its frames' names are
/// shared with the symbolizer's cache and not counted).
fn profile_bytes(p: &ServiceProfile) -> usize {
    std::mem::size_of::<ServiceProfile>()
        + p.frames.len() * std::mem::size_of::<super::types::Frame>()
        + p.stacks
            .iter()
            .map(|s| std::mem::size_of::<super::aggregate::StackCount>() + s.frames.len() * 4)
            .sum::<usize>()
}

impl Job for ServiceProfile {
    fn items(&self) -> u64 {
        1
    }

    fn bytes(&self) -> usize {
        profile_bytes(self)
    }
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PyroscopeError(#[from] WorkerError);

/// Why pushes could not be set up, or a profile prepared.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A header name that is not HTTP.
    #[error("header {name:?}")]
    HeaderName {
        /// The header.
        name: String,
        /// The reason.
        #[source]
        source: reqwest::header::InvalidHeaderName,
    },
    /// A header value that is not HTTP.
    #[error("header {name:?}")]
    HeaderValue {
        /// The header.
        name: String,
        /// The reason.
        #[source]
        source: reqwest::header::InvalidHeaderValue,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The ingest URL could not be made from the base URL (only when the
    /// [`PyroscopeConfig`] was not made by [`PyroscopeArgs::resolve`]).
    #[error("{base:?}")]
    IngestUrl {
        /// The server's base URL.
        base: String,
        /// The URL parser's reason.
        #[source]
        source: url::ParseError,
    },
}

/// Pushes to one Pyroscope server: the export worker's [`Deliver`].
struct PyroscopeDeliver {
    client: reqwest::Client,
    /// `{url}/ingest`, parsed once.
    ingest: reqwest::Url,
}

impl PyroscopeDeliver {
    fn new(cfg: &PyroscopeConfig) -> Result<PyroscopeDeliver, PushError> {
        use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name =
                HeaderName::from_bytes(k.as_bytes()).map_err(|source| PushError::HeaderName {
                    name: k.clone(),
                    source,
                })?;
            let value = HeaderValue::from_str(v).map_err(|source| PushError::HeaderValue {
                name: k.clone(),
                source,
            })?;
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(cfg.timeout)
            .user_agent(concat!("tracer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(PushError::Client)?;
        Ok(PyroscopeDeliver {
            client,
            ingest: ingest_endpoint(&cfg.url)?,
        })
    }
}

/// Longest error body quoted in a log line.
const MAX_ERROR_BODY: usize = 512;

impl Deliver for PyroscopeDeliver {
    type Job = ServiceProfile;
    type Ready = (reqwest::Url, Bytes);
    type Error = PushError;

    /// The ingest URL and the gzip-compressed pprof body, made once.
    fn prepare(&self, p: ServiceProfile) -> Result<((reqwest::Url, Bytes), usize), PushError> {
        let url = ingest_url(&self.ingest, &p);
        let body = pprof::encode_gzip(&p);
        let n = body.len();
        Ok(((url, Bytes::from(body)), n))
    }

    fn send(&self, ready: &(reqwest::Url, Bytes)) -> impl Future<Output = Attempt> + Send {
        let (url, body) = (ready.0.clone(), ready.1.clone());
        async move {
            let resp = self
                .client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body)
                .send()
                .await;
            let mut resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    return Attempt::Retry {
                        error: chain(&e),
                        after: None,
                    }
                }
            };
            let status = resp.status();
            if status.is_success() {
                return Attempt::Delivered {
                    rejected: 0,
                    message: String::new(),
                };
            }
            let after = retry_after(resp.headers());
            // Quote the start of the server's answer.
            let text = read_answer(&mut resp, MAX_ERROR_BODY).await;
            let error = format!(
                "status code: {} {}",
                status.as_u16(),
                String::from_utf8_lossy(&text).trim()
            );
            if retryable_http(status.as_u16()) {
                Attempt::Retry { error, after }
            } else {
                Attempt::Failed(error)
            }
        }
    }
}

/// The Pyroscope exporter: profiles to the export worker; see the module
/// docs.
pub struct PyroscopeExporter {
    worker: Worker<ServiceProfile>,
}

impl PyroscopeExporter {
    /// Starts the export thread. Fails when the HTTP client cannot be
    /// built (a bad header); does not contact the server.
    pub fn start(cfg: PyroscopeConfig) -> Result<PyroscopeExporter, PyroscopeError> {
        let worker_cfg = WorkerConfig {
            thread: "tracer-profiles".into(),
            what: "profile push to Pyroscope",
            endpoint: cfg.url.clone(),
            queue_items: cfg.queue_profiles as u64,
            queue_bytes: cfg.queue_bytes as u64,
            in_flight: IN_FLIGHT,
            timeout: cfg.timeout,
            retry: cfg.retry,
        };
        let worker = Worker::start(worker_cfg, move || PyroscopeDeliver::new(&cfg))?;
        Ok(PyroscopeExporter { worker })
    }

    /// Queues a profile for pushing. Never blocks: when the queue is full
    /// the profile is dropped (counted). Empty profiles are not sent.
    pub fn submit(&self, profile: ServiceProfile) {
        if !profile.stacks.is_empty() {
            // A refused profile is counted by the worker.
            let _ = self.worker.submit(profile);
        }
    }

    /// The counters now (items are profiles).
    pub fn counters(&self) -> WorkerCounters {
        self.worker.counters()
    }

    /// Pushes what is queued, waiting at most `timeout` (what is left then
    /// is dropped and counted), stops the thread and returns the final
    /// counters ([`counters`](Self::counters) still reads them after).
    /// Blocks the calling thread for up to `timeout`.
    pub fn shutdown(&mut self, timeout: Duration) -> WorkerCounters {
        self.worker.shutdown(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{BufRead, BufReader},
        path::{Path, PathBuf},
        process::{Child, Command, Stdio},
        sync::Arc,
        time::Instant,
    };

    use correlate::SpanId;
    use serde_json::Value;

    use crate::clock::{monotonic_ns, Clock};
    use crate::export::console::tests::{res, span};
    use crate::export::resource::tests::TempDir;
    use crate::export::worker::tests::silent_receiver;
    use crate::profile::aggregate::{AggregateConfig, Profiles};
    use crate::profile::types::{Frame, StackSample};

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn args(url: Option<&str>) -> PyroscopeArgs {
        PyroscopeArgs {
            pyroscope_url: url.map(str::to_string),
            ..PyroscopeArgs::default()
        }
    }

    #[test]
    fn resolves_flags_and_environment() {
        assert_eq!(args(None).resolve_with(env(&[])), Ok(None));
        let url = |a: PyroscopeArgs, vars: &[(&str, &str)]| {
            a.resolve_with(env(vars)).map(|c| c.map(|c| c.url))
        };
        assert_eq!(
            url(args(None), &[("PYROSCOPE_URL", "http://p:4040/")]),
            Ok(Some("http://p:4040".into()))
        );
        assert_eq!(
            url(
                args(Some("http://flag:1")),
                &[("PYROSCOPE_URL", "http://env:2")]
            ),
            Ok(Some("http://flag:1".into())),
            "the flag wins"
        );
        assert_eq!(url(args(None), &[("PYROSCOPE_URL", " ")]), Ok(None));
        for (raw, want) in [
            ("pyroscope", "http://pyroscope:4040"),
            ("pyroscope:9999", "http://pyroscope:9999"),
            ("http://pyroscope", "http://pyroscope"),
            ("http://h:1/prefix/", "http://h:1/prefix"),
            ("http://h:1/prefix/ingest", "http://h:1/prefix"),
            ("http://[::1]:4040", "http://[::1]:4040"),
        ] {
            assert_eq!(url(args(Some(raw)), &[]), Ok(Some(want.into())), "{raw}");
        }
        for (raw, err) in [
            ("https://p", "https is not supported"),
            ("http://u:pw@p", "credentials"),
            ("http://p/?x=1", "query"),
            ("ftp://p", "unsupported scheme"),
            ("http://", "not a valid URL: empty host"),
            ("", "empty"),
        ] {
            let e = chain(&url(args(Some(raw)), &[]).unwrap_err());
            assert!(e.contains(err), "{raw}: {e}");
        }
        let e = url(args(None), &[("PYROSCOPE_URL", "https://x")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("PYROSCOPE_URL"), "{e}");

        let with = |headers: &[&str], timeout: Option<u64>| PyroscopeArgs {
            pyroscope_url: Some("p".into()),
            pyroscope_headers: headers.iter().map(|h| h.to_string()).collect(),
            pyroscope_timeout_ms: timeout,
        };
        let cfg = with(&["X-Scope-OrgID=t1", "x-scope-orgid = t2"], Some(500))
            .resolve_with(env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(
            cfg.headers,
            [("x-scope-orgid".to_string(), "t2".to_string())]
        );
        assert_eq!(cfg.timeout, Duration::from_millis(500));
        for (h, err) in [
            ("novalue", "KEY=VALUE"),
            ("bad name=1", "not a valid header name"),
            ("content-type=x", "set by the agent"),
            ("a=\u{1}", "visible ASCII"),
        ] {
            let e = with(&[h], None)
                .resolve_with(env(&[]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(err), "{h}: {e}");
        }
        assert!(with(&[], Some(0)).resolve_with(env(&[])).is_err());
        let e = PyroscopeArgs {
            pyroscope_timeout_ms: Some(5),
            ..PyroscopeArgs::default()
        }
        .resolve_with(env(&[]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("need a server"), "{e}");
    }

    #[test]
    fn names_and_labels_are_what_pyroscope_accepts() {
        assert_eq!(app_name("checkout-api.v2/x"), "checkout-api.v2/x");
        assert_eq!(app_name("my app{1}"), "my_app_1_");
        assert_eq!(app_name(""), "unknown_service");
        assert_eq!(label_value(" a,b{c}=d\n"), "a_b_c__d");
        assert_eq!(label_value("python3.11"), "python3.11");
        assert_eq!(ingest_name("python3.11"), "python3.11{}");
        assert_eq!(ingest_name("my svc,1"), "my_svc_1{service_name=my svc_1}");
    }

    fn frame(function: Option<&str>, module: &str, offset: u64) -> Frame {
        Frame {
            function: function.map(Arc::from),
            module: Arc::from(module),
            offset,
            kernel: false,
            line: None,
        }
    }

    /// A profile of service `svc`: 3 samples in span 1 (named), 2 outside
    /// any span.
    fn profile(svc: &str) -> (ServiceProfile, SpanId) {
        let mut p = Profiles::new(AggregateConfig::default(), Clock::new());
        let r = Arc::new(res(svc));
        let now = monotonic_ns();
        let s = span(1, 1, None, 0, now / 1_000_000);
        let hot = vec![
            frame(Some("sha256_block_data_order"), "libcrypto.so.3", 0x100),
            frame(Some("PKCS5_PBKDF2_HMAC"), "libcrypto.so.3", 0x200),
            frame(None, "python3.11", 0xabc),
            frame(Some("main"), "python3.11", 0x10),
        ];
        for i in 0..3 {
            let smp = StackSample {
                pid: 7,
                tid: 7,
                ts_ns: now - 1_000_000 * (10 - i),
                frames: hot.clone(),
                truncated: false,
            };
            p.add(&smp, r.clone(), Some(s.span_id));
        }
        for _ in 0..2 {
            let smp = StackSample {
                pid: 7,
                tid: 8,
                ts_ns: now - 1_000_000,
                frames: vec![frame(Some("poll"), "libc.so.6", 1), hot[3].clone()],
                truncated: false,
            };
            p.add(&smp, r.clone(), None);
        }
        p.span_finished(&s);
        let mut out = p.take(now);
        assert_eq!(out.len(), 1);
        (out.remove(0), s.span_id)
    }

    #[test]
    fn ingest_url_has_the_query_pyroscope_reads() {
        let (p, _) = profile("checkout");
        let url = ingest_url(&ingest_endpoint("http://h:4040/pfx").unwrap(), &p);
        assert_eq!(url.path(), "/pfx/ingest");
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["name"], "checkout{}");
        assert_eq!(q["format"], "pprof");
        assert_eq!(q["sampleRate"], "99");
        assert_eq!(q["spyName"], "tracer");
        let (from, until): (u64, u64) = (q["from"].parse().unwrap(), q["until"].parse().unwrap());
        assert!(until > from);
        assert_eq!(from, p.start_unix_ns / 1_000_000_000);
    }

    use std::collections::HashMap;

    // ------------------------------------------------ against a receiver

    struct Receiver {
        child: Child,
        port: u16,
        out: PathBuf,
    }

    impl Drop for Receiver {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port()
    }

    /// Starts tests/py/pyroscope_receiver.py, or returns None (after a
    /// SKIP line) when the venv is missing outside CI.
    fn receiver(dir: &Path, fail_file: Option<&Path>) -> Option<Receiver> {
        let python = root().join("target/pyenv/bin/python");
        if !python.exists() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{} is missing (scripts/setup creates it)", python.display());
            }
            eprintln!(
                "SKIP: {} is missing (scripts/setup creates it)",
                python.display()
            );
            return None;
        }
        let port = free_port();
        let out = dir.join(format!("profiles-{port}.jsonl"));
        let mut cmd = Command::new(python);
        cmd.arg(root().join("tests/py/pyroscope_receiver.py"))
            .arg("--port")
            .arg(port.to_string())
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::piped());
        if let Some(f) = fail_file {
            cmd.arg("--fail-until-file").arg(f);
        }
        let mut child = cmd.spawn().expect("starting the receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the receiver did not start");
        Some(Receiver { child, port, out })
    }

    fn received(r: &Receiver) -> Vec<Value> {
        std::fs::read_to_string(&r.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < timeout, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn config(port: u16) -> PyroscopeConfig {
        let mut cfg = PyroscopeConfig::new(&format!("http://127.0.0.1:{port}")).unwrap();
        cfg.retry = RetryConfig {
            initial: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            max_attempts: 50,
            max_elapsed: Duration::from_secs(20),
        };
        cfg.timeout = Duration::from_secs(5);
        cfg
    }

    #[test]
    fn pushes_pprof_the_receiver_decodes() {
        let t = TempDir::new("pyro");
        let Some(r) = receiver(&t.0, None) else {
            return;
        };
        let mut cfg = config(r.port);
        cfg.headers = vec![("x-scope-orgid".into(), "tenant-1".into())];
        let mut exp = PyroscopeExporter::start(cfg).unwrap();
        let (p, span_id) = profile("checkout");
        let (start, end) = (p.start_unix_ns, p.end_unix_ns);
        exp.submit(p);
        let c = exp.shutdown(Duration::from_secs(10));
        assert_eq!((c.submitted, c.exported, c.queued), (1, 1, 0), "{c:?}");
        assert!(c.bytes > 0);

        let got = received(&r);
        assert_eq!(got.len(), 1);
        let g = &got[0];
        assert_eq!(g["app"], "checkout");
        assert_eq!(g["labels"], serde_json::json!({}), "no service_name label");
        assert_eq!(g["query"]["format"], "pprof");
        assert_eq!(g["query"]["sampleRate"], "99");
        assert_eq!(g["query"]["spyName"], "tracer");
        assert_eq!(g["query"]["from"], (start / 1_000_000_000).to_string());
        assert!(g["query"]["until"].as_str().unwrap() > g["query"]["from"].as_str().unwrap());
        assert_eq!(g["tenant"], "tenant-1");
        assert_eq!(g["content_type"], "application/octet-stream");
        assert_eq!(
            g["sample_types"],
            serde_json::json!([["samples", "count"], ["cpu", "nanoseconds"]])
        );
        assert_eq!(g["period_type"], serde_json::json!(["cpu", "nanoseconds"]));
        assert_eq!(g["period"], 10_101_010);
        assert_eq!(g["time_nanos"], start);
        assert_eq!(g["duration_nanos"], end - start);
        assert_eq!(g["samples"], 2, "one pprof Sample per (stack, span)");
        assert_eq!(g["total"], serde_json::json!([5, 5 * 10_101_010]));

        let stacks = g["stacks"].as_array().unwrap();
        let in_span = stacks
            .iter()
            .find(|s| !s["labels"].as_object().unwrap().is_empty())
            .unwrap();
        assert_eq!(in_span["labels"]["span_id"], span_id.to_string());
        assert_eq!(in_span["labels"]["span_id"].as_str().unwrap().len(), 16);
        assert_eq!(in_span["labels"]["span_name"], "GET /s1");
        assert_eq!(in_span["values"], serde_json::json!([3, 3 * 10_101_010]));
        assert_eq!(
            in_span["functions"],
            serde_json::json!([
                "sha256_block_data_order",
                "PKCS5_PBKDF2_HMAC",
                "python3.11+0xabc",
                "main"
            ])
        );
        let outside = stacks
            .iter()
            .find(|s| s["labels"].as_object().unwrap().is_empty())
            .unwrap();
        assert_eq!(outside["functions"], serde_json::json!(["poll", "main"]));
        assert_eq!(outside["values"][0], 2);
        let mut mappings: Vec<&str> = g["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        mappings.sort();
        assert_eq!(mappings, ["libc.so.6", "libcrypto.so.3", "python3.11"]);
    }

    #[test]
    fn retries_through_an_outage() {
        let t = TempDir::new("pyro");
        let fail = t.0.join("fail");
        std::fs::write(&fail, "").unwrap();
        let Some(r) = receiver(&t.0, Some(&fail)) else {
            return;
        };
        let mut exp = PyroscopeExporter::start(config(r.port)).unwrap();
        exp.submit(profile("svc").0);
        wait_until("a failed attempt", Duration::from_secs(10), || {
            exp.counters().errors >= 2
        });
        assert!(received(&r).is_empty());
        std::fs::remove_file(&fail).unwrap();
        wait_until("the export", Duration::from_secs(10), || {
            exp.counters().exported == 1
        });
        let c = exp.shutdown(Duration::from_secs(5));
        assert!(c.retries >= 2, "{c:?}");
        assert_eq!((c.dropped_failed, c.queued), (0, 0), "{c:?}");
        assert_eq!(received(&r).len(), 1);
    }

    #[test]
    fn permanent_errors_drop_without_retrying() {
        let t = TempDir::new("pyro");
        let Some(r) = receiver(&t.0, None) else {
            return;
        };
        // The receiver answers 404 outside /ingest.
        let mut cfg = config(r.port);
        cfg.url.push_str("/elsewhere");
        let mut exp = PyroscopeExporter::start(cfg).unwrap();
        exp.submit(profile("svc").0);
        wait_until("the drop", Duration::from_secs(10), || {
            exp.counters().dropped_failed == 1
        });
        let c = exp.shutdown(Duration::from_secs(1));
        assert_eq!(
            (c.retries, c.errors, c.exported, c.queued),
            (0, 1, 0, 0),
            "{c:?}"
        );
        assert!(received(&r).is_empty());
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        // No attempt fails while the queue fills.
        let (_silent, port) = silent_receiver();
        let mut cfg = config(port);
        cfg.queue_profiles = 2;
        let mut exp = PyroscopeExporter::start(cfg).unwrap();
        let (p, _) = profile("svc");
        let t0 = Instant::now();
        for _ in 0..5 {
            exp.submit(p.clone());
        }
        assert!(t0.elapsed() < Duration::from_millis(200));
        let c = exp.counters();
        assert_eq!((c.submitted, c.dropped_queue_full), (5, 3), "{c:?}");
        // Empty profiles are not sent at all.
        exp.submit(ServiceProfile {
            stacks: Vec::new(),
            ..p
        });
        assert_eq!(exp.counters().submitted, 5);
        let t1 = Instant::now();
        let c = exp.shutdown(Duration::from_millis(300));
        assert!(t1.elapsed() < Duration::from_secs(3));
        assert_eq!(c.exported, 0);
        assert_eq!(c.dropped_failed + c.dropped_shutdown, 2, "{c:?}");
        assert_eq!(c.queued, 0, "{c:?}");
    }

    #[test]
    fn starts_and_stops_inside_another_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut exp = PyroscopeExporter::start(config(free_port())).unwrap();
            let c = exp.shutdown(Duration::from_millis(100));
            assert_eq!(c, WorkerCounters::default());
        });
    }
}
