//! The agent as a library: the binary (`main.rs`) parses the command line and
//! calls [`pipeline::run`]; benchmarks and tests drive the same stages with
//! recorded events ([`replay`]).
pub mod btf;
pub mod cli;
pub mod clock;
pub mod conntrack;
pub mod export;
pub mod http_spans;
pub mod kernel;
pub mod lanes;
pub mod pipeline;
pub mod preflight;
pub mod print;
pub mod profile;
pub mod replay;
