//! fexit on the TCP send/receive functions. The traced function's
//! arguments are typed (BTF) pointers, as a tp_btf tracepoint's are, so the
//! tracepoint's own code runs on them. Argument positions are those of the
//! prototypes below; the agent checks the running kernel's prototypes in
//! its BTF before it loads these.
use aya_ebpf::{macros::fexit, programs::FExitContext};
use tracer_common::Dir;

use crate::sock::on_sock_op;

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`:
/// the return value follows the three arguments.
#[fexit(function = "tcp_sendmsg")]
pub fn fexit_tcp_sendmsg(ctx: FExitContext) -> i32 {
    on_sock_op(ctx.arg(0), ctx.arg(3), 0, Dir::Send);
    0
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len,
/// int flags, int *addr_len)` (5.19 on).
#[fexit(function = "tcp_recvmsg")]
pub fn fexit_tcp_recvmsg(ctx: FExitContext) -> i32 {
    on_sock_op(ctx.arg(0), ctx.arg(5), ctx.arg(3), Dir::Recv);
    0
}

/// `int tcp_sendpage(struct sock *sk, struct page *page, int offset,
/// size_t size, int flags)` (before 6.5).
#[fexit(function = "tcp_sendpage")]
pub fn fexit_tcp_sendpage(ctx: FExitContext) -> i32 {
    on_sock_op(ctx.arg(0), ctx.arg(5), 0, Dir::Send);
    0
}
