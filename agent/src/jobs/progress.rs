//! `PROGRESS <0-100> [message]` lines, the mapping of a step's percent into the job's,
//! and the once-a-second limit on progress reports.

use std::time::{Duration, Instant};

/// Parses a `PROGRESS` line: the percent (clamped to 100) and the message, if any.
pub fn parse(line: &str) -> Option<(u8, Option<String>)> {
    let rest = line.trim_end().strip_prefix("PROGRESS")?;
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let (num, msg) = match rest.split_once(char::is_whitespace) {
        Some((n, m)) => (n, m.trim()),
        None => (rest, ""),
    };
    let pct: f64 = num.parse().ok().filter(|p: &f64| p.is_finite())?;
    let pct = pct.clamp(0.0, 100.0).round() as u8;
    let msg = (!msg.is_empty()).then(|| msg.chars().take(512).collect());
    Some((pct, msg))
}

/// Step `index` of `steps` at `pct` percent, as the job's overall percent.
pub fn overall(index: usize, steps: usize, pct: u8) -> u8 {
    if steps == 0 {
        return 100;
    }
    let total = (index * 100 + usize::from(pct.min(100))) / steps;
    u8::try_from(total.min(100)).unwrap_or(100)
}

/// Lets a report through at most once per `every`; the newest value waits for the next
/// slot.
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// Whether a report may go out at `now` (and records it if so).
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.last {
            Some(t) if now.duration_since(t) < self.every => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }

    /// When the next report may go out.
    pub fn next_slot(&self) -> Option<Instant> {
        self.last.map(|t| t + self.every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_progress_lines() {
        assert_eq!(parse("PROGRESS 40"), Some((40, None)));
        assert_eq!(
            parse("PROGRESS 40 writing GPT"),
            Some((40, Some("writing GPT".into())))
        );
        assert_eq!(parse("PROGRESS  7.6   x  "), Some((8, Some("x".into()))));
        assert_eq!(
            parse("PROGRESS 250 too far"),
            Some((100, Some("too far".into())))
        );
        assert_eq!(parse("PROGRESS -5"), Some((0, None)));
        for bad in [
            "progress 5",
            "PROGRESS",
            "PROGRESS abc",
            "PROGRESSION 5",
            "x PROGRESS 5",
            "PROGRESS NaN",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn steps_get_equal_shares() {
        assert_eq!(overall(0, 2, 0), 0);
        assert_eq!(overall(0, 2, 50), 25);
        assert_eq!(overall(1, 2, 50), 75);
        assert_eq!(overall(1, 2, 100), 100);
        assert_eq!(overall(2, 3, 100), 100);
        assert_eq!(overall(0, 0, 0), 100);
    }

    #[test]
    fn throttle_allows_one_per_period() {
        let mut t = Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(t.allow(t0));
        assert!(!t.allow(t0 + Duration::from_millis(500)));
        assert_eq!(t.next_slot(), Some(t0 + Duration::from_secs(1)));
        assert!(t.allow(t0 + Duration::from_millis(1000)));
    }
}
