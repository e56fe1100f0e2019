//! The agent as a library: the binary (`main.rs`) parses the command line and
//! calls [`pipeline::run`]; benchmarks and tests drive the same stages with
//! recorded events ([`replay`]).
pub mod btf;
pub mod cli;
pub mod clock;
pub mod comm;
pub mod conntrack;
pub mod dispatch;
pub mod error;
pub mod export;
pub mod host;
pub mod http_spans;
pub mod kernel;
pub mod lanes;
pub mod metrics;
pub mod metrics_http;
pub mod pipeline;
pub mod preflight;
pub mod print;
pub mod profile;
pub mod replay;
pub mod sched;
pub mod sources;
pub mod tls;
