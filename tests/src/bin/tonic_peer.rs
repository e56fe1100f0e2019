//! gRPC peer for the end-to-end tests, written with tonic (Rust, on `h2`,
//! which sends `:path` as a literal that is never indexed). It speaks the
//! protocol of tests/py/grpc_calls.py, so that it pairs with the grpcio,
//! grpc-go and grpc-js peers: service `calls.Calls`, raw-bytes messages (a
//! codec that passes bytes through, no protobuf), methods dispatched by
//! path.
//!
//! ```text
//! tonic_peer server PORT   serves calls.Calls on 127.0.0.1:PORT; prints "ready"
//! tonic_peer client PORT   reads commands from stdin, one a line, over ONE
//!                          channel (one HTTP/2 connection), and answers each
//!                          with "ok STATUS[ STATUS...]" when done:
//!     unary METHOD [TIMEOUT_MS [SLEEP_MS]]   a unary call
//!     unary METHOD CONTENT                   a unary call with request CONTENT
//!                                            (the form of grpc_peer.go/.js)
//!     sstream N | cstream N | bidi N | many N | traced TRACEPARENT
//!     load SECONDS THREADS [BYTES]
//!     quit
//! ```
//!
//! The commands, the requests ("SLEEP_MS,REPLIES[,BYTES,padding]") and the
//! server's answers (NotFound*, sleeping, "reply:METHOD" and BYTES more) are
//! grpc_calls.py's; status names are printed as grpcio prints them. A unary
//! reply that is not the one the request asked for ends the client with an
//! error, as in grpc_peer.go.
//!
//! Deadlines are tonic's: the client sends `grpc-timeout` and times the call
//! out itself; both tonic ends report an expired deadline as CANCELLED
//! ("Timeout expired"), not DEADLINE_EXCEEDED, and that is printed as is.
use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    process::ExitCode,
    time::{Duration, Instant},
};

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use tokio_stream::{Stream, StreamExt};
use tonic::{
    body::Body,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataValue,
    transport::{server::TcpIncoming, Channel, Endpoint, Server},
    Code, Request, Response, Status, Streaming,
};
use tower::service_fn;

const SERVICE: &str = "calls.Calls";
/// Room for the 1 MiB messages of the large-message test (tonic's default
/// limit is 4 MiB for decoding only).
const MAX_MESSAGE: usize = 8 << 20;
/// A unary call's deadline when the command gives none (grpc_calls.py's).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Messages pass through as bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// What a request asks for: (sleep in ms, replies, extra reply bytes).
/// Empty is one reply at once.
fn parse(req: &[u8]) -> Result<(u64, usize, usize), Status> {
    if req.is_empty() {
        return Ok((0, 1, 0));
    }
    let bad = || Status::invalid_argument("request is not SLEEP_MS,REPLIES[,BYTES,...]");
    let mut fields = req.splitn(4, |b| *b == b',');
    let mut number = |required: bool| -> Result<u64, Status> {
        match fields.next() {
            Some(f) => std::str::from_utf8(f)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad),
            None if required => Err(bad()),
            None => Ok(0),
        }
    };
    let sleep = number(true)?;
    let replies = number(true)?;
    let size = number(false)?;
    let count = |n: u64| usize::try_from(n).map_err(|_| bad());
    Ok((sleep, count(replies)?, count(size)?))
}

/// The answer of unary `method` to a request of `size` extra bytes.
fn reply_of(method: &str, size: usize) -> Bytes {
    let mut v = format!("reply:{method}").into_bytes();
    v.resize(v.len() + size, b'x');
    v.into()
}

/// The status name as grpcio prints it: `NOT_FOUND`, not `NotFound`.
fn status_name(code: Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

// ---- server ----

async fn unary(method: String, req: Request<Bytes>) -> Result<Response<Bytes>, Status> {
    if method.starts_with("NotFound") {
        return Err(Status::not_found("no such thing"));
    }
    let (sleep, _, size) = parse(req.get_ref())?;
    if sleep > 0 {
        tokio::time::sleep(Duration::from_millis(sleep)).await;
    }
    Ok(Response::new(reply_of(&method, size)))
}

type Replies = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

async fn server_stream(req: Request<Bytes>) -> Result<Response<Replies>, Status> {
    let (_, replies, _) = parse(req.get_ref())?;
    let parts = (0..replies).map(|i| Ok(Bytes::from(format!("part{i}"))));
    Ok(Response::new(Box::pin(tokio_stream::iter(parts))))
}

async fn client_stream(req: Request<Streaming<Bytes>>) -> Result<Response<Bytes>, Status> {
    let mut reqs = req.into_inner();
    let mut n = 0;
    while reqs.message().await?.is_some() {
        n += 1;
    }
    Ok(Response::new(format!("got{n}").into()))
}

async fn bidi(req: Request<Streaming<Bytes>>) -> Result<Response<Replies>, Status> {
    let echoes = req.into_inner().map(|r| {
        r.map(|m| {
            let mut v = b"echo:".to_vec();
            v.extend_from_slice(&m);
            Bytes::from(v)
        })
    });
    Ok(Response::new(Box::pin(echoes)))
}

/// One call to the server: any unary method of [`SERVICE`], three fixed
/// streaming ones.
async fn dispatch(req: http::Request<Body>) -> Result<http::Response<Body>, Infallible> {
    let method = match req
        .uri()
        .path()
        .strip_prefix('/')
        .map(|p| p.split_once('/'))
    {
        Some(Some((SERVICE, m))) => m.to_string(),
        _ => {
            let why = format!("unknown service of {}", req.uri().path());
            return Ok(Status::unimplemented(why).into_http());
        }
    };
    let mut grpc = tonic::server::Grpc::new(Raw)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    Ok(match method.as_str() {
        "ServerStream" => grpc.server_streaming(service_fn(server_stream), req).await,
        "ClientStream" => grpc.client_streaming(service_fn(client_stream), req).await,
        "Bidi" => grpc.streaming(service_fn(bidi), req).await,
        _ => {
            let svc = service_fn(move |r| unary(method.clone(), r));
            grpc.unary(svc, req).await
        }
    })
}

async fn server(port: u16) -> Result<(), Error> {
    let incoming = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    println!("ready");
    let svc = service_fn(dispatch);
    Server::builder().serve_with_incoming(svc, incoming).await?;
    Ok(())
}

// ---- client ----

/// The client's one channel.
#[derive(Clone)]
struct Calls(tonic::client::Grpc<Channel>);

fn path(method: &str) -> Result<PathAndQuery, Status> {
    format!("/{SERVICE}/{method}")
        .parse()
        .map_err(|_| Status::invalid_argument(format!("method {method}")))
}

fn request<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(timeout);
    r
}

impl Calls {
    /// A copy to call on (tonic's client takes `&mut self`; copies share
    /// the channel), once the channel can take a call.
    async fn ready(&self) -> Result<tonic::client::Grpc<Channel>, Status> {
        let mut g = self.0.clone();
        g.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(g)
    }

    /// A unary call of `method`; checks the reply against the request.
    async fn unary(&self, method: &str, req: Request<Bytes>) -> Result<(), Status> {
        let (_, _, size) = parse(req.get_ref())?;
        let reply = self
            .ready()
            .await?
            .unary(req, path(method)?, Raw)
            .await?
            .into_inner();
        if reply != reply_of(method, size) {
            let head = &reply[..reply.len().min(64)];
            fail(&format!(
                "call {method} answered {head:?} ({} bytes)",
                reply.len()
            ));
        }
        Ok(())
    }

    /// Runs one command; returns what follows "ok ".
    async fn run(&self, words: &[&str]) -> Result<String, Status> {
        let (cmd, args) = words
            .split_first()
            .ok_or_else(|| Status::internal("empty"))?;
        let num = |i: usize| -> u64 {
            args.get(i)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| fail(&format!("{cmd}: argument {} is not a number", i + 1)))
        };
        match *cmd {
            "unary" => {
                let method = args.first().unwrap_or_else(|| fail("unary: no method"));
                let numeric = args
                    .get(1)
                    .is_some_and(|a| a.bytes().all(|b| b.is_ascii_digit()));
                let req = if numeric {
                    let sleep = if args.len() > 2 { num(2) } else { 0 };
                    let msg = Bytes::from(format!("{sleep},1"));
                    request(msg, Duration::from_millis(num(1)))
                } else {
                    let content = args.get(1).copied().unwrap_or("0,1");
                    request(Bytes::copy_from_slice(content.as_bytes()), DEFAULT_TIMEOUT)
                };
                self.unary(method, req).await?;
            }
            "traced" => {
                let value = args
                    .first()
                    .unwrap_or_else(|| fail("traced: no traceparent"));
                let mut req = request(Bytes::new(), DEFAULT_TIMEOUT);
                let value: MetadataValue<_> = value
                    .parse()
                    .unwrap_or_else(|_| fail("traced: not a metadata value"));
                req.metadata_mut().insert("traceparent", value);
                self.unary("Traced", req).await?;
            }
            "sstream" => {
                let n = num(0);
                let req = request(Bytes::from(format!("0,{n}")), DEFAULT_TIMEOUT);
                let mut g = self.ready().await?;
                let got = count(g.server_streaming(req, path("ServerStream")?, Raw).await?).await?;
                if got != n {
                    fail(&format!("sstream {n}: {got} replies"));
                }
            }
            "cstream" => {
                let reqs = vec![Bytes::from_static(b"m"); num(0) as usize];
                let req = request(tokio_stream::iter(reqs), DEFAULT_TIMEOUT);
                let mut g = self.ready().await?;
                g.client_streaming(req, path("ClientStream")?, Raw).await?;
            }
            "bidi" => {
                let n = num(0);
                let reqs: Vec<Bytes> = (0..n).map(|i| format!("m{i}").into()).collect();
                let req = request(tokio_stream::iter(reqs), DEFAULT_TIMEOUT);
                let mut g = self.ready().await?;
                let got = count(g.streaming(req, path("Bidi")?, Raw).await?).await?;
                if got != n {
                    fail(&format!("bidi {n}: {got} replies"));
                }
            }
            "many" => return Ok(self.many(num(0)).await),
            "load" => {
                let threads = num(1);
                let size = if args.len() > 2 { num(2) as usize } else { 0 };
                let secs: f64 = args[0]
                    .parse()
                    .unwrap_or_else(|_| fail("load: SECONDS is not a number"));
                return Ok(self
                    .load(Duration::from_secs_f64(secs), threads, size)
                    .await
                    .to_string());
            }
            _ => fail(&format!("unknown command {}", words.join(" "))),
        }
        Ok(status_name(Code::Ok))
    }

    /// `n` unary calls M0..M(n-1) started before any is waited for, so
    /// that they are multiplexed on the channel's one connection.
    async fn many(&self, n: u64) -> String {
        let calls: Vec<_> = (0..n)
            .map(|i| {
                let c = self.clone();
                tokio::spawn(async move {
                    let req = request(Bytes::from_static(b"20,1"), Duration::from_secs(60));
                    c.unary(&format!("M{i}"), req).await
                })
            })
            .collect();
        let mut codes = Vec::new();
        for call in calls {
            let code = match call.await {
                Ok(Ok(())) => Code::Ok,
                Ok(Err(status)) => status.code(),
                Err(e) => fail(&format!("many: a call panicked: {e}")),
            };
            codes.push(status_name(code));
        }
        codes.join(" ")
    }

    /// Unary calls of Load back to back from `threads` tasks for `time`,
    /// `size` bytes in each request and reply; returns how many were made.
    async fn load(&self, time: Duration, threads: u64, size: usize) -> u64 {
        let end = Instant::now() + time;
        let req = if size == 0 {
            Bytes::new()
        } else {
            let mut v = format!("0,1,{size},").into_bytes();
            v.resize(v.len() + size, b'x');
            Bytes::from(v)
        };
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (c, req) = (self.clone(), req.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while Instant::now() < end {
                        if let Err(e) = c.unary("Load", request(req.clone(), DEFAULT_TIMEOUT)).await
                        {
                            fail(&format!("load: {e}"));
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for w in workers {
            total += w.await.unwrap_or_else(|e| fail(&format!("load: {e}")));
        }
        total
    }
}

/// How many replies a streaming call's answer holds.
async fn count(reply: Response<Streaming<Bytes>>) -> Result<u64, Status> {
    let mut s = reply.into_inner();
    let mut n = 0;
    while s.message().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Ends the process with an error: the test reading its output sees it
/// stop answering.
fn fail(why: &str) -> ! {
    eprintln!("tonic_peer: {why}");
    std::process::exit(1)
}

async fn client(port: u16) -> Result<(), Error> {
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect()
        .await?;
    let calls = Calls(
        tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    );
    // Lines are read on a thread of their own, so that the connection's
    // task keeps running between commands.
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    println!("ready");
    while let Some(line) = lines.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first().is_none_or(|w| *w == "quit") {
            break;
        }
        match calls.run(&words).await {
            Ok(answer) => println!("ok {answer}"),
            Err(status) => println!("ok {}", status_name(status.code())),
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (role, port) = match (args.first(), args.get(1).and_then(|p| p.parse().ok())) {
        (Some(role), Some(port)) if args.len() == 2 => (role.as_str(), port),
        _ => {
            eprintln!("usage: tonic_peer server|client PORT");
            return ExitCode::from(2);
        }
    };
    let done = match role {
        "server" => server(port).await,
        "client" => client(port).await,
        _ => Err(format!("unknown role {role}").into()),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tonic_peer: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_as_grpc_calls_py_reads_them() {
        assert_eq!(parse(b"").unwrap(), (0, 1, 0));
        assert_eq!(parse(b"20,1").unwrap(), (20, 1, 0));
        assert_eq!(parse(b"0,1,3,xxx").unwrap(), (0, 1, 3));
        assert_eq!(parse(b"0,1,0,go-call-7").unwrap(), (0, 1, 0));
        assert_eq!(parse(b"0,1,2,a,b").unwrap(), (0, 1, 2));
        assert!(parse(b"x,1").is_err());
        assert!(parse(b"5").is_err());
    }

    #[test]
    fn status_names_are_grpcio_s() {
        assert_eq!(status_name(Code::Ok), "OK");
        assert_eq!(status_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(status_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(status_name(Code::Cancelled), "CANCELLED");
    }

    #[test]
    fn replies_carry_the_extra_bytes_asked_for() {
        assert_eq!(reply_of("M1", 0), Bytes::from_static(b"reply:M1"));
        assert_eq!(reply_of("Big", 3), Bytes::from_static(b"reply:Bigxxx"));
    }
}
