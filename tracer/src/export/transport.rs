//! OTLP on the wire: ready `ExportTraceServiceRequest` bytes to a
//! collector, as the [`Deliver`] of the export worker.
//!
//! - gRPC: a unary call of `TraceService/Export` through tonic with a
//!   pass-through codec (the bytes are the message), on one channel (one
//!   HTTP/2 connection); gzip by tonic when configured.
//! - HTTP: `POST` of the bytes as `application/x-protobuf` (gzip-compressed
//!   once, before the first attempt, when configured) with a pooled client.
//!
//! Headers from the configuration are set on every request. Outcomes
//! follow the OTLP specification: retryable are gRPC CANCELLED,
//! DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS (and
//! RESOURCE_EXHAUSTED when the server sent RetryInfo), HTTP 429, 502, 503,
//! 504, network errors and timeouts, with the server's delay (RetryInfo,
//! `Retry-After`) when it gave one; a success may be partial
//! (`ExportTracePartialSuccess`), its rejected spans are counted.
use std::{
    future::Future,
    io::Write,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use bytes::{Buf, BufMut, Bytes};
use prost::Message;

use super::config::{Compression, ExportConfig, Protocol};
use super::encode::TraceRequest;
use super::worker::{Attempt, Deliver, Job};
use crate::error::chain;

/// The gRPC method of OTLP trace export.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Most bytes of an answer read (a success's partial-success message, an
/// error's explanation).
const MAX_ANSWER: usize = 64 << 10;
/// Longest error text quoted in a log line.
const MAX_ERROR_TEXT: usize = 512;
/// Request bodies kept for the encoder to reuse.
const SPARE_BODIES: usize = 2;

impl Job for TraceRequest {
    fn items(&self) -> u64 {
        self.spans
    }

    fn bytes(&self) -> usize {
        self.body.len()
    }
}

// The few OTLP and google.rpc messages read from answers.

#[derive(Clone, PartialEq, prost::Message)]
struct ExportTraceServiceResponse {
    #[prost(message, optional, tag = "1")]
    partial_success: Option<ExportTracePartialSuccess>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExportTracePartialSuccess {
    #[prost(int64, tag = "1")]
    rejected_spans: i64,
    #[prost(string, tag = "2")]
    error_message: String,
}

/// `google.rpc.Status`: gRPC's `grpc-status-details-bin`, and the body of
/// an OTLP/HTTP error.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The delay a `google.rpc.Status` asks for in its `RetryInfo`, if any.
fn retry_info(status_details: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(status_details).ok()?;
    status
        .details
        .iter()
        .find(|d| d.type_url.ends_with("/google.rpc.RetryInfo"))
        .and_then(|d| RetryInfo::decode(d.value.as_slice()).ok())
        .and_then(|r| r.retry_delay)
        .map(|d| {
            Duration::from_secs(d.seconds.max(0) as u64)
                + Duration::from_nanos(d.nanos.max(0) as u64)
        })
}

/// Spans the receiver refused, and why, from an `ExportTraceServiceResponse`.
fn partial_success(body: &[u8]) -> (u64, String) {
    match ExportTraceServiceResponse::decode(body) {
        Ok(ExportTraceServiceResponse {
            partial_success: Some(p),
        }) => (p.rejected_spans.max(0) as u64, p.error_message),
        _ => (0, String::new()),
    }
}

/// The `Retry-After` of an HTTP answer: seconds, or an HTTP date.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The start of an answer's body, at most `max` bytes.
pub(crate) async fn read_answer(resp: &mut reqwest::Response, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < max {
        match resp.chunk().await {
            Ok(Some(c)) => out.extend_from_slice(&c[..c.len().min(max - out.len())]),
            _ => break,
        }
    }
    out
}

/// Whether an HTTP status is worth retrying (OTLP/HTTP and Pyroscope).
pub(crate) fn retryable_http(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// The bytes as the gRPC message, both ways.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A request on its way: the bytes as sent.
pub(super) struct Ready {
    body: Bytes,
    /// The encoder's buffer (not a compressed copy): worth giving back.
    reusable: bool,
}

enum Wire {
    Grpc {
        client: tonic::client::Grpc<tonic::transport::Channel>,
        metadata: tonic::metadata::MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: reqwest::Url,
        headers: reqwest::header::HeaderMap,
    },
}

/// Why the OTLP client could not be made, or a request prepared.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A header name that is not gRPC metadata.
    #[error("header {name:?}")]
    MetadataKey {
        /// The header.
        name: String,
        /// tonic's reason.
        #[source]
        source: tonic::metadata::errors::InvalidMetadataKey,
    },
    /// A header value that is not gRPC metadata.
    #[error("header {name:?}")]
    MetadataValue {
        /// The header.
        name: String,
        /// tonic's reason.
        #[source]
        source: tonic::metadata::errors::InvalidMetadataValue,
    },
    /// An endpoint tonic cannot connect to.
    #[error("gRPC endpoint")]
    GrpcEndpoint(#[source] tonic::transport::Error),
    /// An endpoint that is not a URL.
    #[error("URL")]
    Url(#[source] url::ParseError),
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
}

/// OTLP export to one endpoint.
pub(super) struct OtlpDeliver {
    wire: Wire,
    compression: Compression,
    /// Bodies sent, for the encoder to reuse.
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl OtlpDeliver {
    /// Must run inside the runtime (tonic spawns the channel's task).
    pub(super) fn new(
        cfg: &ExportConfig,
        spare: Arc<Mutex<Vec<Vec<u8>>>>,
    ) -> Result<OtlpDeliver, TransportError> {
        let connect_timeout = cfg.timeout.min(Duration::from_secs(5));
        let wire = match cfg.protocol {
            Protocol::Grpc => {
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &cfg.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes()).map_err(
                        |source| TransportError::MetadataKey {
                            name: k.clone(),
                            source,
                        },
                    )?;
                    let value = v.parse().map_err(|source| TransportError::MetadataValue {
                        name: k.clone(),
                        source,
                    })?;
                    metadata.insert(key, value);
                }
                let channel = tonic::transport::Endpoint::from_shared(cfg.endpoint.clone())
                    .map_err(TransportError::GrpcEndpoint)?
                    .timeout(cfg.timeout)
                    .connect_timeout(connect_timeout)
                    .connect_lazy();
                let mut client = tonic::client::Grpc::new(channel);
                if cfg.compression == Compression::Gzip {
                    client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                Wire::Grpc { client, metadata }
            }
            Protocol::HttpProtobuf => {
                use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
                let url = reqwest::Url::parse(&cfg.endpoint).map_err(TransportError::Url)?;
                let mut headers = HeaderMap::new();
                headers.insert(
                    reqwest::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-protobuf"),
                );
                if cfg.compression == Compression::Gzip {
                    headers.insert(
                        reqwest::header::CONTENT_ENCODING,
                        HeaderValue::from_static("gzip"),
                    );
                }
                for (k, v) in &cfg.headers {
                    let name = HeaderName::from_bytes(k.as_bytes()).map_err(|source| {
                        TransportError::HeaderName {
                            name: k.clone(),
                            source,
                        }
                    })?;
                    let value =
                        HeaderValue::from_str(v).map_err(|source| TransportError::HeaderValue {
                            name: k.clone(),
                            source,
                        })?;
                    headers.insert(name, value);
                }
                let client = reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .connect_timeout(connect_timeout)
                    .user_agent(concat!("tracer/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(TransportError::Client)?;
                Wire::Http {
                    client,
                    url,
                    headers,
                }
            }
        };
        Ok(OtlpDeliver {
            wire,
            compression: cfg.compression,
            spare,
        })
    }

    fn give_back(&self, body: Vec<u8>) {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE_BODIES {
            spare.push(body);
        }
    }
}

/// `raw` gzip-compressed at `level` (OTLP bodies, pprof profiles).
pub(crate) fn gzip(raw: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 4 + 64), level);
    // Writing to a Vec cannot fail.
    enc.write_all(raw)
        .and_then(|()| enc.finish())
        .unwrap_or_default()
}

async fn send_grpc(
    client: &tonic::client::Grpc<tonic::transport::Channel>,
    metadata: &tonic::metadata::MetadataMap,
    body: Bytes,
) -> Attempt {
    use tonic::Code;
    let mut client = client.clone();
    if let Err(e) = client.ready().await {
        return Attempt::Retry {
            error: chain(&e),
            after: None,
        };
    }
    let mut req = tonic::Request::new(body);
    *req.metadata_mut() = metadata.clone();
    let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
    match client.unary::<Bytes, Bytes, _>(req, path, RawCodec).await {
        Ok(resp) => {
            let (rejected, message) = partial_success(resp.get_ref());
            Attempt::Delivered { rejected, message }
        }
        Err(status) => {
            let after = retry_info(status.details());
            let error = format!(
                "gRPC status {:?}: {}",
                status.code(),
                status
                    .message()
                    .chars()
                    .take(MAX_ERROR_TEXT)
                    .collect::<String>()
            );
            let retry = match status.code() {
                Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::OutOfRange
                | Code::Unavailable
                | Code::DataLoss => true,
                Code::ResourceExhausted => after.is_some(),
                _ => false,
            };
            if retry {
                Attempt::Retry { error, after }
            } else {
                Attempt::Failed(error)
            }
        }
    }
}

async fn send_http(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: &reqwest::header::HeaderMap,
    body: Bytes,
) -> Attempt {
    let resp = client
        .post(url.clone())
        .headers(headers.clone())
        .body(body)
        .send()
        .await;
    let mut resp = match resp {
        Ok(r) => r,
        Err(e) if e.is_builder() => return Attempt::Failed(chain(&e)),
        Err(e) => {
            return Attempt::Retry {
                error: chain(&e),
                after: None,
            }
        }
    };
    let status = resp.status();
    let after = retry_after(resp.headers());
    let answer = read_answer(&mut resp, MAX_ANSWER).await;
    if status.is_success() {
        let (rejected, message) = partial_success(&answer);
        return Attempt::Delivered { rejected, message };
    }
    // An OTLP/HTTP error body is a google.rpc.Status; quote its message,
    // else the start of whatever came.
    let text = match RpcStatus::decode(answer.as_slice()) {
        Ok(s) if !s.message.is_empty() => s.message,
        _ => String::from_utf8_lossy(&answer[..answer.len().min(MAX_ERROR_TEXT)]).into_owned(),
    };
    let error = format!("HTTP status {}: {}", status.as_u16(), text.trim());
    if retryable_http(status.as_u16()) {
        Attempt::Retry { error, after }
    } else {
        Attempt::Failed(error)
    }
}

impl Deliver for OtlpDeliver {
    type Job = TraceRequest;
    type Ready = Ready;
    type Error = TransportError;

    fn prepare(&self, job: TraceRequest) -> Result<(Ready, usize), TransportError> {
        // gRPC compresses in tonic (per message); HTTP bodies once here.
        if self.compression == Compression::Gzip && matches!(self.wire, Wire::Http { .. }) {
            // Fast: the agent competes with the traced services for CPU.
            let packed = gzip(&job.body, flate2::Compression::fast());
            self.give_back(job.body);
            let n = packed.len();
            return Ok((
                Ready {
                    body: Bytes::from(packed),
                    reusable: false,
                },
                n,
            ));
        }
        let n = job.body.len();
        Ok((
            Ready {
                body: Bytes::from(job.body),
                reusable: true,
            },
            n,
        ))
    }

    fn send(&self, ready: &Ready) -> impl Future<Output = Attempt> + Send {
        let body = ready.body.clone();
        async move {
            match &self.wire {
                Wire::Grpc { client, metadata } => send_grpc(client, metadata, body).await,
                Wire::Http {
                    client,
                    url,
                    headers,
                } => send_http(client, url, headers, body).await,
            }
        }
    }

    fn recycle(&self, ready: Ready) {
        if ready.reusable {
            if let Ok(b) = ready.body.try_into_mut() {
                self.give_back(Vec::from(b));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read() {
        let ok = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        };
        assert_eq!(partial_success(&ok.encode_to_vec()), (3, "too old".into()));
        assert_eq!(partial_success(&[]), (0, String::new()));
        assert_eq!(partial_success(b"\xff\xff"), (0, String::new()));

        let delay = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: 2,
                nanos: 500_000_000,
            }),
        };
        let status = RpcStatus {
            code: 8,
            message: "slow down".into(),
            details: vec![
                ProtoAny {
                    type_url: "type.googleapis.com/google.rpc.DebugInfo".into(),
                    value: vec![],
                },
                ProtoAny {
                    type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                    value: delay.encode_to_vec(),
                },
            ],
        };
        assert_eq!(
            retry_info(&status.encode_to_vec()),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(retry_info(&[]), None);
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(30);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
        assert!(retryable_http(503) && retryable_http(429) && !retryable_http(400));
    }

    #[test]
    fn gzip_round_trips() {
        let body = b"spans ".repeat(1000);
        let packed = gzip(&body, flate2::Compression::fast());
        assert!(packed.len() < body.len() / 10);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&packed[..]), &mut out)
            .unwrap();
        assert_eq!(out, body);
    }
}
