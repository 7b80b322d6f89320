//! Keeps the last bytes of a stream (a step's stderr), cut on a UTF-8 boundary.

use std::collections::VecDeque;

/// How much of a step's stderr goes into a failure report.
pub const STDERR_TAIL: usize = 4096;

pub struct Tail {
    max: usize,
    buf: VecDeque<u8>,
}

impl Tail {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            buf: VecDeque::with_capacity(max.min(64 * 1024)),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        let skip = bytes.len().saturating_sub(self.max);
        self.buf.extend(&bytes[skip..]);
        while self.buf.len() > self.max {
            self.buf.pop_front();
        }
    }

    /// The kept bytes as text: starting at a character boundary, trimmed.
    pub fn text(&self) -> String {
        let bytes: Vec<u8> = self.buf.iter().copied().collect();
        // Skip continuation bytes left by the cut at the front.
        let start = bytes
            .iter()
            .position(|b| (b & 0b1100_0000) != 0b1000_0000)
            .unwrap_or(bytes.len());
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
        let mut big = Tail::new(4);
        big.push(&[b'x'; 100]);
        assert_eq!(big.text(), "xxxx");
    }

    #[test]
    fn never_starts_inside_a_character() {
        let mut t = Tail::new(5);
        t.push("aé€b".as_bytes()); // a(1) é(2) €(3) b(1) = 7 bytes
        assert_eq!(t.text(), "€b");
    }
}
