//! Protocol messages → spans and traces.
//!
//! Pure library: no I/O, no threads, no clock reads, no OS randomness (ids
//! come from an injected [`IdGen`]); time only moves when the caller passes
//! timestamps. Every structure is bounded and no input makes it panic.
//!
//! # Input and output
//! The agent converts what the protocol parsers produce into [`Message`]s:
//! a request or final response head, the connection ([`ConnId`], the socket
//! cookie) and [`Side`] it crossed, the process/thread that moved its first
//! byte, the TCP sequence number of that byte and kernel monotonic times.
//! Connection addresses come separately ([`Correlator::conn_open`]). Out
//! come [`Span`]s with OpenTelemetry ids, kind, name, times (kernel
//! monotonic: the agent converts to wall time), semantic-convention
//! attributes and status. Resource attributes (service name…) are the
//! agent's: a span carries its pid.
//!
//! # How a request becomes a span
//! *Pairing (rule 1).* Each connection keeps its outstanding requests: for
//! HTTP/1 a FIFO per direction (pipelining answers in order), for HTTP/2 a
//! map by stream id. A response pairs with the oldest outstanding request
//! moved the other way; one with none is counted and dropped. A request read
//! (`Inbound`) makes a SERVER span, a request written a CLIENT span (rule
//! 2); it starts at the request's first byte and ends at the response's
//! last head byte. A connection closing with requests outstanding ends them
//! as errors at the close time, after a grace window for late responses;
//! [`Correlator::conn_reset`] ends them at once when the stream layer
//! reports a gap it cannot fill (so later responses cannot pair with the
//! wrong request).
//!
//! *Parents.* Each span's parent is decided once, by the first rule that
//! has evidence; "no evidence" never means "guess":
//! - **Rule 3, across processes.** The client span that wrote a request and
//!   the server span that read it see the same TCP sequence number on
//!   mirrored 4-tuples, so a server span's parent is the client span with
//!   the same `seq` whose (local, remote) is the server's (remote, local).
//!   This works for any address, loopback included. Either end may be
//!   reported first: a server span whose peer is an address of this host
//!   ([`Correlator::set_local_addrs`]; loopback always) waits up to
//!   [`Config::window_ns`] for its client span; a server span whose peer is
//!   elsewhere does not wait. Optionally ([`Config::nat_matching`]) a client
//!   span with the same `seq`, method and target but translated addresses
//!   (Kubernetes service DNAT keeps sequence numbers) is accepted when it is
//!   the only one.
//! - **Rule 4, inside a process.** A client span (a call) is the child of
//!   the server span (a request) of its process that caused it, when the
//!   evidence proves which one did; "one request in flight" is no proof
//!   (timers, pollers and health checks call out too). The evidence, each
//!   item looking only at requests of the same process that were in flight
//!   when the call was written and answered no earlier than the call (the
//!   call *nests* in the request's time):
//!   - *the thread*: the one request in progress on the call's thread,
//!     where the process is known to serve one request per thread
//!     (`classify`: a pool that answered requests on the threads that read
//!     them, with no sign of multiplexing or hand-off);
//!   - *request ids*: the one request that carried one of the call's
//!     request-id values ([`Config::request_id_headers`]), or returned it
//!     in its response (a proxy that generates the id sends it upstream and
//!     echoes it downstream);
//!   - *forwarding*: the one request the call repeats (method, full target
//!     and declared body length; `Host` is not compared: proxies rewrite
//!     it);
//!   - *propagated context*: the one request in progress on the thread whose
//!     incoming trace id the call carries.
//!
//!   A rule with several candidates says nothing; rules naming different
//!   requests make no link (`evidence_conflict`). The decision waits the
//!   reorder window, and longer when it needs the call's end (to judge
//!   nesting) or an inbound response that may return the call's id (one
//!   window after the call's end, counted). Every refusal and every root is
//!   counted by reason ([`Counters`]).
//! - **Rule 5, propagated context.** A valid W3C `traceparent` (with
//!   `tracestate`) or B3 (`b3`, `X-B3-*`; 64-bit trace ids left-padded)
//!   puts the request's spans in that trace: when rules 3/4 found no parent,
//!   the header's span id is the parent; when they found one in a trace
//!   the agent made up, and no span of it was exported yet, the header's
//!   trace replaces it for all its spans and the rules' parent stays
//!   (`context_adopted`, see `adopt.rs`); in any other trace, the header
//!   wins (`context_conflict`). Invalid headers are counted and ignored.
//!
//! *Trace ids.* A span's trace is its parent's; a root gets a fresh one, or
//! the header's. Parents can be settled after their children exist, so a
//! span is held until its trace context is known: when a span's context is
//! set, it is pushed down to the children waiting for it, and each finished
//! span is emitted as soon as it has one. Spans of one trace are therefore
//! emitted at different times, the first about one window after they start.
//! Parent links always point to a span that started no later (rule 4 even
//! strictly earlier), so there are no cycles.
//!
//! *CPU samples (rule 6).* The per-thread index of server spans that rule 4
//! uses also answers [`Correlator::server_span_at`], for samples arriving
//! up to [`Config::sample_window_ns`] late.
//!
//! # Time
//! The correlator's clock is the latest timestamp it was given (message end
//! times, [`Correlator::poll`] and [`Correlator::conn_close`] times). A span
//! waiting for evidence is settled by `poll` once that clock passes its
//! arrival plus the window. The model: every message reaches the correlator
//! before the clock runs more than a window past its kernel timestamps. A
//! message later than that yields a missing parent (counted as
//! `mirror_expired`/`late_mirror`), not a wrong one. The window follows
//! how late inputs really arrive (twice the largest lateness of the last
//! second, between [`Config::min_window_ns`] and [`Config::window_ns`];
//! growth is at once), so that at line rate spans are held only as long as
//! the pipeline's real disorder requires. On traffic too sparse for holding
//! to cost (fewer than about 2,000 inputs per window), it stays at
//! `window_ns`: a stall that sparse lateness did not foretell finds the
//! whole window.
//!
//! # Bounds
//! Connections, outstanding requests per connection, span records and the
//! indexes are capped ([`Config`]); at a cap the oldest goes (an incomplete
//! request ends as an error, a waiting span is settled with what is known),
//! and [`Counters`] says how often. Emitted spans are kept
//! [`Config::retention_ns`] (scaled as the window is) for late children
//! (and their threads' entries [`Config::sample_window_ns`] for CPU
//! samples), then forgotten.
//!
//! # Attributes and names
//! See the `attributes` module docs: stable HTTP semantic conventions,
//! query values redacted by default, no credential-bearing header ever
//! copied, names `"{method} {path with ids templated}"` or
//! `"pkg.Service/Method"` for gRPC. Status: server spans are errors on 5xx,
//! client spans on 4xx and 5xx (gRPC: by `grpc-status`).
//!
//! ```
//! use correlate::*;
//! use std::net::SocketAddr;
//!
//! let mut c = Correlator::with_seed(Config::default(), 7);
//! let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:40000".parse().unwrap(), "127.0.0.1:80".parse().unwrap());
//! c.conn_open(ConnInfo { conn: ConnId(1), local: a, remote: b }); // the client's socket
//! c.conn_open(ConnInfo { conn: ConnId(2), local: b, remote: a }); // the server's socket
//! let host = [Header::new("Host", "api")];
//! let req = Request { method: "GET".into(), target: "/users/42".into(), version: HttpVersion::Http11,
//!                     scheme: Scheme::Http, headers: host[..].into(),
//!                     unknown: None };
//! let resp = Response { status: 200, version: HttpVersion::Http11, headers: [][..].into(), reset: false, grpc_messages: None, unknown: None };
//! let msg = |conn, side, pid, seq, t, kind| Message { conn: ConnId(conn), side, pid: Pid(pid), tid: Tid(pid),
//!     seq, start_ns: t, end_ns: t, stream_id: None, kind };
//! c.message(msg(1, Side::Outbound, 10, 1000, 1_000, MessageKind::Request(req.clone())));
//! c.message(msg(2, Side::Inbound, 20, 1000, 2_000, MessageKind::Request(req)));
//! c.message(msg(2, Side::Outbound, 20, 5000, 3_000, MessageKind::Response(resp.clone())));
//! c.message(msg(1, Side::Inbound, 10, 5000, 4_000, MessageKind::Response(resp)));
//! let spans = c.poll(1_000_000_000);
//! let client = spans.iter().find(|s| s.kind == SpanKind::Client).unwrap();
//! let server = spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
//! assert_eq!(server.parent_span_id, Some(client.span_id));
//! assert_eq!(server.trace_id, client.trace_id);
//! assert_eq!(server.name(), "GET /users/{id}");
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

mod adopt;
mod attr_key;
mod attributes;
mod causes;
mod classify;
mod config;
mod correlator;
mod index;
mod loss;
mod model;
mod prefetch;
mod propagation;
mod resolve;
mod span_table;
mod window;

pub use attr_key::Key;
pub use attributes::{reads_header, redact_query};
pub use causes::CauseEvent;
pub use config::{Config, Counters, IdGen, SplitMix64, DEFAULT_MAX_SPAN_BYTES};
pub use correlator::Correlator;
pub use model::{
    AttrRef, AttrValue, ConnId, ConnInfo, GrpcMessages, Header, HttpVersion, Message, MessageKind,
    ParentSource, Pid, Request, Response, Scheme, Side, Span, SpanId, SpanKind, Status, Tid,
    TraceId,
};

#[cfg(test)]
mod tests {
    #[test]
    fn correlator_can_move_between_threads() {
        fn send<T: Send + 'static>() {}
        send::<crate::Correlator>();
        send::<crate::Span>();
    }
}
