//! Keeps the last bytes of a stream (a step's stderr), cut on a UTF-8 boundary.

use std::collections::VecDeque;

/// How much of a step's stderr goes into a failure report (DESIGN section 5).
pub const STDERR_TAIL: usize = 4096;

pub struct Tail {
    max: usize,
    buf: VecDeque<u8>,
}

impl Tail {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            buf: VecDeque::with_capacity(max),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        let keep = &bytes[bytes.len().saturating_sub(self.max)..];
        let excess = (self.buf.len() + keep.len()).saturating_sub(self.max);
        self.buf.drain(..excess);
        self.buf.extend(keep);
    }

    /// The kept bytes as text, trimmed, starting at a character boundary; bytes that are
    /// not UTF-8 are replaced.
    pub fn text(&self) -> String {
        let (front, back) = self.buf.as_slices();
        let bytes = [front, back].concat();
        // A cut at the front may leave up to three continuation bytes of a character.
        let start = bytes
            .iter()
            .take(3)
            .take_while(|b| (*b & 0b1100_0000) == 0b1000_0000)
            .count();
        String::from_utf8_lossy(&bytes[start..]).trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_end() {
        let mut t = Tail::new(8);
        t.push(b"hello ");
        t.push(b"world, again");
        assert_eq!(t.text(), "d, again");
        t.push(b"!");
        assert_eq!(t.text(), ", again!");
        let mut big = Tail::new(4);
        big.push(&[b'x'; 100]);
        assert_eq!(big.text(), "xxxx");
        assert_eq!(Tail::new(4).text(), "");
    }

    #[test]
    fn never_starts_inside_a_character() {
        let mut t = Tail::new(5);
        t.push("aé€b".as_bytes()); // a(1) é(2) €(3) b(1) = 7 bytes
        assert_eq!(t.text(), "€b");
        let mut t = Tail::new(5);
        t.push("x€€".as_bytes()); // keeps 2 bytes of the first € and all of the second
        assert_eq!(t.text(), "€");
    }

    #[test]
    fn binary_garbage_is_replaced_not_dropped() {
        let mut t = Tail::new(8);
        t.push(&[0x80, 0x80, 0x80, 0x80, b'o', b'k']);
        assert_eq!(t.text(), "\u{fffd}ok");
    }
}
