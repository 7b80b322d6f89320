//! A step's stdout cut into lines without trusting it: bytes that are not UTF-8 are
//! replaced, and a line longer than the limit keeps only its start, so a script that
//! writes binary data or never ends a line can neither stall the reader nor fill memory.

/// Longest stdout line kept; a PROGRESS line is far shorter.
pub const MAX_LINE: usize = 4096;

pub struct LineSplitter {
    max: usize,
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            partial: Vec::new(),
        }
    }

    /// Feeds bytes; returns the lines they complete, without their line ends.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            let (body, ended) = match chunk.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (chunk, false),
            };
            let room = self.max.saturating_sub(self.partial.len());
            self.partial
                .extend_from_slice(body.get(..room).unwrap_or(body));
            if ended {
                lines.push(self.take());
            }
        }
        lines
    }

    /// The last line, when the stream ended without a line end.
    pub fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let bytes = std::mem::take(&mut self.partial);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(&bytes);
        String::from_utf8_lossy(bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_across_reads() {
        let mut s = LineSplitter::new(100);
        assert_eq!(s.push(b"PROGRESS 1"), Vec::<String>::new());
        assert_eq!(
            s.push(b"0 a\r\nnext\n\nlast"),
            vec!["PROGRESS 10 a", "next", ""]
        );
        assert_eq!(s.finish().as_deref(), Some("last"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn long_lines_keep_their_start_and_bad_bytes_are_replaced() {
        let mut s = LineSplitter::new(4);
        assert_eq!(s.push(b"abcdefgh"), Vec::<String>::new());
        assert_eq!(s.push(b"ij\nxy\xff\n"), vec!["abcd", "xy\u{fffd}"]);
    }
}
