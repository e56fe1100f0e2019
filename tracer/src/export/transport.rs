//! The two OTLP transports, shared by all the per-resource exporters: one
//! gRPC channel (one HTTP/2 connection, multiplexed) or one HTTP client
//! (a connection pool). Headers from the configuration are set last on
//! every request, so flags win over what `opentelemetry-otlp` reads from
//! `OTEL_EXPORTER_OTLP_*HEADERS` itself.
use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::SpanExporter as _;

use super::config::{ExportConfig, Protocol};
use super::otlp::sdk_resource;
use super::resource::Resource;

/// Headers inserted into every gRPC request (replacing any of the same name
/// that `opentelemetry-otlp` took from the environment).
#[derive(Clone)]
pub(super) struct GrpcHeaders(Arc<tonic::metadata::MetadataMap>);

impl tonic::service::Interceptor for GrpcHeaders {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        for kv in self.0.iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                req.metadata_mut().insert(k.clone(), v.clone());
            }
        }
        Ok(req)
    }
}

/// The async reqwest client with our headers set last (so they win over
/// those `opentelemetry-otlp` took from the environment).
#[derive(Debug)]
struct HttpWithHeaders {
    inner: reqwest::Client,
    headers: reqwest::header::HeaderMap,
}

impl HttpClient for HttpWithHeaders {
    // What `#[async_trait]` expands `async fn send_bytes` to.
    fn send_bytes<'a, 'b>(
        &'a self,
        mut request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            for (k, v) in &self.headers {
                request.headers_mut().insert(k.clone(), v.clone());
            }
            self.inner.send_bytes(request).await
        })
    }
}

/// A gRPC channel or an HTTP client, with the headers to set.
pub(super) enum Transport {
    Grpc {
        channel: tonic::transport::Channel,
        headers: GrpcHeaders,
    },
    Http {
        client: Arc<dyn HttpClient>,
    },
}

impl Transport {
    /// Must run inside the runtime (tonic spawns the channel's task).
    pub(super) fn new(cfg: &ExportConfig) -> Result<Transport, String> {
        let connect_timeout = cfg.timeout.min(Duration::from_secs(5));
        match cfg.protocol {
            Protocol::Grpc => {
                let mut md = tonic::metadata::MetadataMap::new();
                for (k, v) in &cfg.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
                        .map_err(|e| format!("header {k:?}: {e}"))?;
                    let value = v.parse().map_err(|e| format!("header {k:?}: {e}"))?;
                    md.insert(key, value);
                }
                let channel = tonic::transport::Endpoint::from_shared(cfg.endpoint.clone())
                    .map_err(|e| e.to_string())?
                    .timeout(cfg.timeout)
                    .connect_timeout(connect_timeout)
                    .connect_lazy();
                Ok(Transport::Grpc {
                    channel,
                    headers: GrpcHeaders(Arc::new(md)),
                })
            }
            Protocol::HttpProtobuf => {
                let mut headers = reqwest::header::HeaderMap::new();
                for (k, v) in &cfg.headers {
                    let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|e| format!("header {k:?}: {e}"))?;
                    let value = reqwest::header::HeaderValue::from_str(v)
                        .map_err(|e| format!("header {k:?}: {e}"))?;
                    headers.insert(name, value);
                }
                let inner = reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .connect_timeout(connect_timeout)
                    .build()
                    .map_err(|e| e.to_string())?;
                Ok(Transport::Http {
                    client: Arc::new(HttpWithHeaders { inner, headers }),
                })
            }
        }
    }

    /// An OTLP exporter for spans of `res`.
    pub(super) fn exporter(
        &self,
        cfg: &ExportConfig,
        res: &Resource,
    ) -> Result<opentelemetry_otlp::SpanExporter, String> {
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let mut exporter = match self {
            Transport::Grpc { channel, headers } => builder
                .with_tonic()
                .with_channel(channel.clone())
                .with_interceptor(headers.clone())
                .with_timeout(cfg.timeout)
                .with_retry_policy(RetryPolicy::disabled())
                .build(),
            Transport::Http { client } => builder
                .with_http()
                .with_shared_http_client(client.clone())
                .with_endpoint(cfg.endpoint.clone())
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(cfg.timeout)
                .with_retry_policy(RetryPolicy::disabled())
                .build(),
        }
        .map_err(|e| e.to_string())?;
        exporter.set_resource(&sdk_resource(res));
        Ok(exporter)
    }
}
