//! `--print events`: one line per send/receive call.
use std::io::Write;

use protocols::stream::{Chunk, MissingKind, Piece};
use tracer_common::Dir;

use crate::{
    cli::{Filter, Output},
    clock::Clock,
    conntrack::{ConnInfo, Sink},
};

/// Longest first line shown.
const MAX_LINE: usize = 200;

/// Writes events to `out`, filtered.
pub struct EventPrinter<W: Write> {
    out: W,
    format: Output,
    filter: Filter,
    clock: Clock,
    /// Write errors (e.g. a closed pipe) are counted, not fatal.
    pub write_errors: u64,
    line: String,
}

/// The bytes at the start of a chunk up to the end of the first line, or
/// what stands in their place.
fn first_line<'a>(chunk: &Chunk<'a>) -> Result<&'a [u8], (u32, MissingKind)> {
    match chunk.pieces.first() {
        Some(Piece::Data(d)) => {
            let end = d.iter().position(|&b| b == b'\n').unwrap_or(d.len());
            let line = &d[..end];
            Ok(line.strip_suffix(b"\r").unwrap_or(line))
        }
        Some(Piece::Missing { len, why }) => Err((*len, *why)),
        None => Ok(&[]),
    }
}

fn captured_prefix<'a>(chunk: &Chunk<'a>) -> &'a [u8] {
    match chunk.pieces.first() {
        Some(Piece::Data(d)) => d,
        _ => &[],
    }
}

fn escape(bytes: &[u8], out: &mut String) {
    for &b in bytes.iter().take(MAX_LINE) {
        match b {
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > MAX_LINE {
        out.push('…');
    }
}

impl<W: Write> EventPrinter<W> {
    /// A printer.
    pub fn new(out: W, format: Output, filter: Filter, clock: Clock) -> Self {
        EventPrinter {
            out,
            format,
            filter,
            clock,
            write_errors: 0,
            line: String::with_capacity(512),
        }
    }

    fn text(&mut self, conn: &ConnInfo, dir: Dir, chunk: &Chunk<'_>, pid: u32, tid: u32, ts: u64) {
        use std::fmt::Write as _;
        let l = &mut self.line;
        l.clear();
        let arrow = if dir == Dir::Send { "->" } else { "<-" };
        let _ = write!(
            l,
            "{} {}[{}/{}] {} {} {} {} {}B ",
            self.clock.format_wall(ts),
            conn.comm,
            pid,
            tid,
            if dir == Dir::Send { "send" } else { "recv" },
            fmt_addr(conn.local),
            arrow,
            fmt_addr(conn.remote),
            chunk.len
        );
        match first_line(chunk) {
            Ok(line) => {
                l.push('"');
                escape(line, l);
                l.push('"');
            }
            Err((n, why)) => {
                let _ = write!(l, "[{n} bytes not captured: {}]", missing_name(why));
            }
        }
        l.push('\n');
    }

    fn json(&mut self, conn: &ConnInfo, dir: Dir, chunk: &Chunk<'_>, pid: u32, tid: u32, ts: u64) {
        let first = first_line(chunk)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .ok();
        let v = serde_json::json!({
            "ts": self.clock.format_wall(ts),
            "ts_ns": ts,
            "pid": pid,
            "tid": tid,
            "comm": conn.comm.text(),
            "dir": if dir == Dir::Send { "send" } else { "recv" },
            "cookie": conn.cookie,
            "role": conn.role.name(),
            "local": conn.local.map(|a| a.to_string()),
            "remote": conn.remote.map(|a| a.to_string()),
            "seq": chunk.seq,
            "len": chunk.len,
            "captured": chunk.captured(),
            "truncated": chunk.missing(MissingKind::Truncated),
            "hole": chunk.missing(MissingKind::Hole),
            "skipped": chunk.missing(MissingKind::Skipped),
            "first_line": first,
            "data": String::from_utf8_lossy(captured_prefix(chunk)),
        });
        self.line.clear();
        self.line.push_str(&v.to_string());
        self.line.push('\n');
    }
}

fn missing_name(why: MissingKind) -> &'static str {
    match why {
        MissingKind::Truncated => "beyond the capture size",
        MissingKind::Hole => "stream hole",
        MissingKind::Skipped => "body not copied",
    }
}

fn fmt_addr(a: Option<std::net::SocketAddr>) -> String {
    a.map_or_else(|| "?".to_owned(), |a| a.to_string())
}

impl<W: Write> Sink for EventPrinter<W> {
    fn flush(&mut self) {
        if self.out.flush().is_err() {
            self.write_errors += 1;
        }
    }

    fn chunk(&mut self, conn: &ConnInfo, dir: Dir, chunk: &Chunk<'_>) {
        // Bytes no call record covers are not calls: counted by the stream.
        let Some(op) = chunk.op else { return };
        let ports = conn
            .local
            .zip(conn.remote)
            .map(|(l, r)| (l.port(), r.port()));
        if !self.filter.allows(op.pid, &conn.comm.text(), ports) {
            return;
        }
        match self.format {
            Output::Text => self.text(conn, dir, chunk, op.pid, op.tid, op.ts_ns),
            Output::Json => self.json(conn, dir, chunk, op.pid, op.tid, op.ts_ns),
        }
        if self.out.write_all(self.line.as_bytes()).is_err() {
            self.write_errors += 1;
        }
    }
}
