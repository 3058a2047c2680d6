//! The bounded tail of a run's output.
//!
//! A run may print without limit, but a result is one NATS message, so only
//! the last bytes are kept: the end of a log usually says why it failed.

use std::collections::VecDeque;

/// Keeps the last `limit` bytes of everything pushed into it.
#[derive(Debug)]
pub struct Tail {
    buf: VecDeque<u8>,
    limit: usize,
    truncated: bool,
}

impl Tail {
    pub fn new(limit: usize) -> Tail {
        Tail {
            buf: VecDeque::new(),
            limit,
            truncated: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        let keep = if bytes.len() > self.limit {
            self.truncated = true;
            &bytes[bytes.len() - self.limit..]
        } else {
            bytes
        };
        self.buf.extend(keep);
        if self.buf.len() > self.limit {
            self.truncated = true;
            let excess = self.buf.len() - self.limit;
            self.buf.drain(..excess);
        }
    }

    /// Whether bytes were dropped from the front.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The kept bytes as text (invalid UTF-8 replaced), and whether bytes were
    /// dropped. A character cut in two by the bound is dropped whole rather
    /// than shown as a replacement character.
    pub fn into_text(self) -> (String, bool) {
        let bytes = Vec::from(self.buf);
        let start = if self.truncated {
            // At most three continuation bytes (10xxxxxx) follow a cut.
            bytes
                .iter()
                .take(3)
                .take_while(|b| (**b & 0b1100_0000) == 0b1000_0000)
                .count()
        } else {
            0
        };
        (
            String::from_utf8_lossy(&bytes[start..]).into_owned(),
            self.truncated,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_kept_whole() {
        let mut t = Tail::new(10);
        t.push(b"abc");
        t.push(b"def");
        assert_eq!(t.into_text(), ("abcdef".to_string(), false));
    }

    #[test]
    fn exactly_the_limit_is_not_truncated() {
        let mut t = Tail::new(4);
        t.push(b"ab");
        t.push(b"cd");
        assert_eq!(t.into_text(), ("abcd".to_string(), false));
    }

    #[test]
    fn keeps_the_last_bytes() {
        let mut t = Tail::new(4);
        t.push(b"abc");
        t.push(b"def");
        assert!(t.truncated());
        assert_eq!(t.into_text(), ("cdef".to_string(), true));
        let mut t = Tail::new(3);
        t.push(b"0123456789");
        assert_eq!(t.into_text(), ("789".to_string(), true));
    }

    #[test]
    fn zero_limit_keeps_nothing() {
        let mut t = Tail::new(0);
        t.push(b"x");
        assert_eq!(t.into_text(), (String::new(), true));
    }

    #[test]
    fn a_character_cut_by_the_bound_is_dropped_whole() {
        let mut t = Tail::new(4);
        // "é" is two bytes and "€" three; the bound keeps the last byte of "é".
        t.push("aaé€".as_bytes());
        let (text, truncated) = t.into_text();
        assert!(truncated);
        assert_eq!(text, "€");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut t = Tail::new(10);
        t.push(&[b'a', 0xff, b'b']);
        assert_eq!(t.into_text().0, "a\u{fffd}b");
    }
}
