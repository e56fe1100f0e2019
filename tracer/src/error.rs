//! Errors on one line. Each module's error type says what failed in its
//! own message and carries the cause as its `source`, not in the message
//! (so that no cause is printed twice); a line for a user or a log is the
//! message followed by every cause, `: `-separated, as `anyhow` prints
//! `{:#}` in `main`.
use std::{error::Error, fmt::Write};

/// `e`'s message and its causes, outermost first.
pub fn chain(e: &dyn Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let _ = write!(line, ": {c}");
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer {what}")]
    struct Outer {
        what: &'static str,
        #[source]
        source: Middle,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle {
        source: std::io::Error,
    }

    #[test]
    fn every_cause_once() {
        let e = Outer {
            what: "x",
            source: Middle {
                source: std::io::Error::other("disk on fire"),
            },
        };
        assert_eq!(chain(&e), "outer x: middle: disk on fire");
        assert_eq!(chain(&std::io::Error::other("alone")), "alone");
    }
}
