//! Captured TCP segments → ordered byte streams → protocol messages.
//!
//! Pure library: no I/O, no threads, no clock of its own (callers pass
//! `now`). Every buffer is bounded and no input makes it panic; everything
//! it drops or cannot see is counted, never silently lost.
//!
//! # Layers
//! - [`stream`]: one [`StreamReassembler`](stream::StreamReassembler) per
//!   direction of a connection turns the kernel's records (packet payload
//!   prefixes with sequence numbers, and `send()`/`recv()` calls with the
//!   byte range they moved) into [`Chunk`](stream::Chunk)s delivered in
//!   stream order, normally one per call, each tagged with that call's
//!   thread and time.
//! - [`http1`]: one [`Http1Parser`](http1::Http1Parser) per direction
//!   (or an [`Http1Connection`](http1::Http1Connection) for both) turns
//!   chunks into requests and responses carrying the calls that moved
//!   their first and last bytes.
//!
//! # Design choices
//! - **Missing bytes are first-class.** The kernel copies only a prefix of
//!   each packet, and records can be lost. Rather than pretending the
//!   stream is complete, a chunk is a list of pieces: captured bytes, or a
//!   missing range of known length that is either *truncated* (covered by
//!   a packet, beyond its captured prefix) or a *hole* (no packet arrived).
//!   Parsers skip missing ranges by count where the framing allows it
//!   (`Content-Length` bodies, chunk data) and resynchronise where it does
//!   not, so a 1 KiB capture still yields every message's head and timing.
//! - **Calls, not packets, give time and thread.** Packets say which bytes
//!   exist; calls say who moved them and when. The reassembler joins the
//!   two by sequence range, so a message's first and last bytes map to the
//!   calls that sent or received them (span start and end), whatever the
//!   packetisation. Bytes no call record claims are still delivered, with
//!   `op: None`.
//! - **Waiting is bounded by time and memory, not by completeness.** A
//!   range is delivered as soon as it is complete, or after
//!   `hole_timeout_ns` without progress, or early when buffers near their
//!   limits; out-of-order and duplicated records are absorbed inside that
//!   window.
//! - **Sequence numbers are unwrapped once.** Records are placed at `u64`
//!   positions nearest to the delivery point, so wrap-around and
//!   connections that predate the agent need no special cases downstream:
//!   chunks carry both the TCP sequence number and a monotonic offset.
//! - **No copies of bodies, few allocations.** Segment bytes are copied once
//!   into pooled buffers; chunks borrow them; the per-chunk piece list is
//!   reused. Parsers buffer only heads (bounded) and small framing lines;
//!   a message owns its header vector and nothing else.
//! - **Incremental and split-independent.** Parsers are state machines fed
//!   piece by piece; the same stream yields the same messages however it
//!   is cut (property-tested), and one fuzz target per layer lives in
//!   `fuzz/`.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

/// `a += &b` for a struct of `u64` counters: sums over many connections.
/// The destructuring makes a field added to the struct a compile error
/// here until it is summed too.
macro_rules! sum_counters {
    ($ty:ty { $($f:ident),* $(,)? }) => {
        impl std::ops::AddAssign<&$ty> for $ty {
            fn add_assign(&mut self, o: &$ty) {
                let Self { $($f),* } = o;
                $(self.$f += *$f;)*
            }
        }
    };
}

/// List entries (queued operations, spans, pieces, request kinds) a
/// closed connection's reassembler or parser keeps room for when trimmed:
/// what a short connection's request and response use, so that a pooled
/// one serves the next connection without allocating.
const TRIM_KEEP_ENTRIES: usize = 4;

pub mod conn;
pub mod hpack;
pub mod http1;
pub mod http2;
pub mod stream;
