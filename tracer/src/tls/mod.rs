//! TLS plaintext: which files get the uprobes ([`attach`]) and how the
//! plaintext they copy joins the per-connection parsers ([`streams`]). See
//! docs/design/010-tls-plaintext.md.
pub mod attach;
pub mod execs;
pub mod go;
mod gofunctab;
mod gotypes;
mod inner;
pub mod streams;
mod worker;
