//! Chunked transfer coding: following the framing without buffering the
//! data, and finding the end again once the framing is lost.

use super::detect::Likely;

/// Longest chunk-size line (with extensions) accepted.
const MAX_SIZE_LINE: usize = 1024;

/// The terminating chunk without trailers.
const TERMINATOR: &[u8] = b"0\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line.
    Size,
    /// Inside chunk data: bytes left.
    Data(u64),
    /// After chunk data: the CRLF (`true` once the CR was seen).
    DataEnd(bool),
    /// After the last chunk: trailer lines until an empty one (bytes of
    /// the current line).
    Trailer(usize),
}

/// Result of feeding bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// All bytes consumed, body goes on.
    More,
    /// The body ended after this many bytes.
    Done(usize),
    /// The framing is broken (at this many bytes).
    Error(usize),
}

/// Follows one chunked body.
#[derive(Debug)]
pub(crate) struct Decoder {
    state: State,
    line: Vec<u8>,
    trailer_bytes: usize,
    /// Decoded body bytes so far (captured or not).
    pub(crate) body: u64,
}

impl Decoder {
    pub(crate) fn new() -> Self {
        Decoder {
            state: State::Size,
            line: Vec::new(),
            trailer_bytes: 0,
            body: 0,
        }
    }

    /// Starts a new body, keeping the line buffer's allocation.
    pub(crate) fn reset(&mut self) {
        self.state = State::Size;
        self.line.clear();
        self.trailer_bytes = 0;
        self.body = 0;
    }

    /// Consumes captured bytes; `max_trailer` bounds the trailer section.
    pub(crate) fn data(&mut self, d: &[u8], max_trailer: usize) -> Step {
        let mut i = 0;
        while i < d.len() {
            match self.state {
                State::Size => match d[i..].iter().position(|b| *b == b'\n') {
                    None => {
                        if self.line.len() + (d.len() - i) > MAX_SIZE_LINE {
                            return Step::Error(i);
                        }
                        self.line.extend_from_slice(&d[i..]);
                        return Step::More;
                    }
                    Some(p) => {
                        if self.line.len() + p > MAX_SIZE_LINE {
                            return Step::Error(i);
                        }
                        self.line.extend_from_slice(&d[i..i + p]);
                        i += p + 1;
                        match parse_size_line(&self.line) {
                            Some(0) => self.state = State::Trailer(0),
                            Some(n) => self.state = State::Data(n),
                            None => return Step::Error(i),
                        }
                        self.line.clear();
                    }
                },
                State::Data(left) => {
                    let n = left.min((d.len() - i) as u64);
                    self.body += n;
                    i += n as usize;
                    self.state = if n == left {
                        State::DataEnd(false)
                    } else {
                        State::Data(left - n)
                    };
                }
                State::DataEnd(cr) => {
                    match d[i] {
                        b'\r' if !cr => self.state = State::DataEnd(true),
                        b'\n' => self.state = State::Size,
                        _ => return Step::Error(i),
                    }
                    i += 1;
                }
                State::Trailer(line_len) => {
                    let b = d[i];
                    i += 1;
                    self.trailer_bytes += 1;
                    match b {
                        b'\n' if line_len == 0 => return Step::Done(i),
                        b'\n' => self.state = State::Trailer(0),
                        b'\r' => {}
                        _ => self.state = State::Trailer(line_len + 1),
                    }
                    if self.trailer_bytes > max_trailer {
                        return Step::Error(i);
                    }
                }
            }
        }
        Step::More
    }

    /// Skips `len` uncaptured bytes: possible only inside chunk data.
    /// Returns how many were body bytes, and false when the missing range
    /// goes past the data (framing lost).
    pub(crate) fn missing(&mut self, len: u64) -> (u64, bool) {
        match self.state {
            State::Data(left) => {
                let n = left.min(len);
                self.body += n;
                self.state = if n == left {
                    State::DataEnd(false)
                } else {
                    State::Data(left - n)
                };
                (n, len <= left)
            }
            _ => (0, false),
        }
    }
}

/// Chunk size from a size line (without its LF): hex digits, optional
/// whitespace and extensions, optional CR.
fn parse_size_line(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = &line[digits..];
    let rest = rest.trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return None;
    }
    line[..digits].iter().try_fold(0u64, |n, b| {
        let d = (*b as char).to_digit(16)?;
        Some(n * 16 + u64::from(d))
    })
}

/// Looks for the end of a chunked body whose framing was lost: the
/// terminating chunk `0\r\n\r\n` at a line start, or the start of the next
/// message.
#[derive(Debug, Default)]
pub(crate) struct LostScanner {
    /// Bytes of the terminator matched at the end of the previous data.
    term: usize,
}

/// What the lost scanner found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// Nothing yet: all bytes consumed.
    Nothing,
    /// The body ends after this many bytes (terminator included).
    Terminator(usize),
    /// The next message starts at this index.
    NextMessage(usize),
}

impl LostScanner {
    /// Forgets a partial match (after a missing range).
    pub(crate) fn reset(&mut self) {
        self.term = 0;
    }

    pub(crate) fn scan(
        &mut self,
        d: &[u8],
        line_start: bool,
        classify: fn(&[u8]) -> Likely,
    ) -> Found {
        let mut line_start = line_start;
        if self.term > 0 {
            let matched = self.term;
            let want = &TERMINATOR[matched..];
            let n = want.len().min(d.len());
            self.term = if d[..n] == want[..n] { matched + n } else { 0 };
            if self.term == TERMINATOR.len() {
                self.term = 0;
                return Found::Terminator(n);
            }
            if self.term > 0 {
                return Found::Nothing;
            }
            // The partial match was not the terminator; its last byte
            // tells whether `d` starts a line.
            line_start = TERMINATOR[..matched].ends_with(b"\n");
        }
        let mut i = 0;
        while i < d.len() {
            let allowed = if i == 0 {
                line_start
            } else {
                d[i - 1] == b'\n'
            };
            if allowed {
                let rest = &d[i..];
                if rest.starts_with(TERMINATOR) {
                    return Found::Terminator(i + TERMINATOR.len());
                }
                if TERMINATOR.starts_with(rest) {
                    self.term = rest.len();
                    return Found::Nothing;
                }
                if classify(rest) == Likely::Yes {
                    return Found::NextMessage(i);
                }
            }
            match d[i..].iter().position(|b| *b == b'\n') {
                Some(p) => i += p + 1,
                None => break,
            }
        }
        Found::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::super::detect::classify_response;
    use super::*;

    #[test]
    fn size_lines() {
        assert_eq!(parse_size_line(b"1a\r"), Some(26));
        assert_eq!(parse_size_line(b"0"), Some(0));
        assert_eq!(parse_size_line(b"10;ext=1\r"), Some(16));
        assert_eq!(parse_size_line(b"10 ;ext\r"), Some(16));
        assert_eq!(parse_size_line(b"\r"), None);
        assert_eq!(parse_size_line(b"x\r"), None);
        assert_eq!(parse_size_line(b"10 x\r"), None);
        assert_eq!(parse_size_line(b"ffffffffffffffff\r"), None);
    }

    #[test]
    fn decodes_across_splits() {
        let body = b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\nT: v\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut d = Decoder::new();
            let (a, b) = body.split_at(split);
            let r = match d.data(a, 1000) {
                Step::More => match d.data(b, 1000) {
                    Step::Done(n) => split + n,
                    other => panic!("{split}: {other:?}"),
                },
                Step::Done(n) => n,
                Step::Error(_) => panic!("error"),
            };
            assert_eq!(r, body.len() - 4, "split {split}");
            assert_eq!(d.body, 9);
        }
    }

    #[test]
    fn missing_inside_data_only() {
        let mut d = Decoder::new();
        assert_eq!(d.data(b"10\r\nab", 100), Step::More);
        assert_eq!(d.missing(10), (10, true));
        assert_eq!(d.data(b"cdef\r\n0\r\n\r\n", 100), Step::Done(11));
        assert_eq!(d.body, 16);
        let mut d = Decoder::new();
        assert_eq!(d.data(b"4\r\nab", 100), Step::More);
        assert_eq!(d.missing(10), (2, false));
        let mut d = Decoder::new();
        assert_eq!(d.missing(1), (0, false));
    }

    #[test]
    fn broken_framing() {
        assert_eq!(Decoder::new().data(b"zz\r\n", 100), Step::Error(4));
        assert_eq!(Decoder::new().data(b"2\r\nabX", 100), Step::Error(5));
        assert!(matches!(
            Decoder::new().data(&[b'1'; 2000], 100),
            Step::Error(_)
        ));
        assert!(matches!(
            Decoder::new().data(b"0\r\nxxxxxxxxxxxxxxxxxxxx", 10),
            Step::Error(_)
        ));
    }

    #[test]
    fn lost_scanner() {
        let mut s = LostScanner::default();
        assert_eq!(
            s.scan(b"abc\r\n0\r\n\r\nHTTP", false, classify_response),
            Found::Terminator(10)
        );
        assert_eq!(
            s.scan(b"abc\r\n0\r", false, classify_response),
            Found::Nothing
        );
        assert_eq!(
            s.scan(b"\n\r\nX", false, classify_response),
            Found::Terminator(3)
        );
        assert_eq!(
            s.scan(b"abc\r\n0\r", false, classify_response),
            Found::Nothing
        );
        assert_eq!(s.scan(b"X\r\n", false, classify_response), Found::Nothing);
        assert_eq!(
            s.scan(b"xx\nHTTP/1.1 200 OK\r\n", false, classify_response),
            Found::NextMessage(3)
        );
        assert_eq!(
            s.scan(b"0\r\n\r\n", true, classify_response),
            Found::Terminator(5)
        );
        assert_eq!(
            s.scan(b"0\r\n\r\n", false, classify_response),
            Found::Nothing
        );
        assert_eq!(
            s.scan(b"x\n0\r\n", false, classify_response),
            Found::Nothing
        );
        assert_eq!(
            s.scan(b"HTTP/1.1 200 OK", false, classify_response),
            Found::NextMessage(0)
        );
    }
}
