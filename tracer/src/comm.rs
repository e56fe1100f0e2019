//! The kernel's name of a task (`comm`), as records carry it: 16 bytes,
//! NUL-padded when shorter, chosen by the task itself (so not always
//! UTF-8).
use std::{borrow::Cow, fmt};

/// A task name from a kernel record.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Comm([u8; 16]);

impl Comm {
    pub const fn new(raw: [u8; 16]) -> Comm {
        Comm(raw)
    }

    /// The name's bytes: up to the first NUL, all 16 when it fills them.
    pub fn bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(self.0.len());
        &self.0[..end]
    }

    /// The name as text, bytes that are not UTF-8 replaced (borrowed when
    /// it is UTF-8, as names nearly always are).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.bytes())
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_end_at_the_first_nul_or_fill_the_array() {
        assert_eq!(Comm::new(*b"nginx\0\0\0\0\0\0\0\0\0\0\0").text(), "nginx");
        assert_eq!(Comm::new(*b"abcdefghijklmnop").text(), "abcdefghijklmnop");
        assert_eq!(Comm::default().text(), "");
        let mut raw = *b"x\xffy\0\0\0\0\0\0\0\0\0\0\0\0\0";
        assert_eq!(Comm::new(raw).text(), "x\u{fffd}y");
        assert_eq!(Comm::new(raw).bytes(), b"x\xffy");
        raw[1] = b'-';
        assert_eq!(
            format!("{} {:?}", Comm::new(raw), Comm::new(raw)),
            "x-y \"x-y\""
        );
    }
}
