//! Other sources of send/receive calls, for kernels without the
//! `sock:sock_send_length`/`sock_recv_length` tracepoints (before 6.3).
//! The agent picks one source at start-up from what the running kernel
//! offers (see the agent's `sources` module); every source emits the same
//! [`tracer_common::SockOp`] record, with the same `write_seq`/`copied_seq`
//! read after the call, so nothing past the kernel can tell them apart.
//!
//! Both hook the TCP layer rather than the socket layer: `tcp_sendmsg` and
//! `tcp_recvmsg` take the `struct sock` directly and only TCP goes through
//! them; `tcp_sendpage` is the path of sendfile and splice to a socket
//! before 6.5 (from 6.5 on they go through `tcp_sendmsg`).
pub mod fexit;
pub mod kprobe;
