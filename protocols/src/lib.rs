//! Captured TCP segments → ordered byte streams → protocol messages.
//!
//! Pure library: no I/O, no threads, no clocks of its own (callers pass
//! `now`). Every input is bounded and no input makes it panic.
//!
//! - [`stream`]: per-direction reassembly of a TCP byte stream from
//!   captured segment prefixes and `send()`/`recv()` call records, with the
//!   call that moved each byte.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod stream;
