//! `PROGRESS <0-100> [message]` lines, the mapping of a step's percent into the job's,
//! and the once-a-second limit on progress reports.

use std::time::Duration;

use metalbus_protocol::report::Report;
use tokio::time::Instant;

/// Parses a `PROGRESS` line: the percent (clamped to 0..=100; decimals are rounded, a
/// trailing `%` is allowed) and the message, if any, cut to what a report may carry.
/// `None` for any other line.
pub fn parse(line: &str) -> Option<(u8, Option<String>)> {
    let rest = line.trim().strip_prefix("PROGRESS")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let (num, msg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let num = num.strip_suffix('%').unwrap_or(num);
    let pct: f64 = num.parse().ok().filter(|p: &f64| p.is_finite())?;
    // In range after the clamp, so the cast cannot wrap.
    let pct = pct.clamp(0.0, 100.0).round() as u8;
    let msg = msg.trim();
    let msg = (!msg.is_empty()).then(|| cut(msg, Report::MAX_TEXT).to_string());
    Some((pct, msg))
}

/// At most `max` bytes of `s`, cut on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Step `index` of `steps` at `pct` percent, as the job's overall percent: each step
/// gets an equal share.
pub fn overall(index: usize, steps: usize, pct: u8) -> u8 {
    if steps == 0 {
        return 100;
    }
    let total = index
        .saturating_mul(100)
        .saturating_add(usize::from(pct.min(100)))
        / steps;
    u8::try_from(total.min(100)).unwrap_or(100)
}

/// Lets a report through at most once per `every`.
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// Whether a report may go out at `now`; if so, it counts as sent.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }

    /// When the next report may go out (now, if none went out yet).
    pub fn next_slot(&self) -> Instant {
        self.last.map_or_else(Instant::now, |t| t + self.every)
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
        assert_eq!(
            parse("PROGRESS  7.6   x  y "),
            Some((8, Some("x  y".into())))
        );
        assert_eq!(parse("PROGRESS 40%\r"), Some((40, None)));
        assert_eq!(
            parse("PROGRESS 250 too far"),
            Some((100, Some("too far".into())))
        );
        assert_eq!(parse("PROGRESS -5"), Some((0, None)));
        assert_eq!(parse("PROGRESS 1e9"), Some((100, None)));
        for bad in [
            "progress 5",
            "PROGRESS",
            "PROGRESS ",
            "PROGRESS abc",
            "PROGRESS five percent",
            "PROGRESSION 5",
            "PROGRESS5",
            "x PROGRESS 5",
            "PROGRESS NaN",
            "PROGRESS inf",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let line = format!("PROGRESS 5 {}", "é".repeat(Report::MAX_TEXT));
        let (_, msg) = parse(&line).unwrap();
        let msg = msg.unwrap();
        assert_eq!(msg.len(), Report::MAX_TEXT);
        assert!(msg.chars().all(|c| c == 'é'));
    }

    #[test]
    fn steps_get_equal_shares() {
        assert_eq!(overall(0, 1, 40), 40);
        assert_eq!(overall(0, 2, 0), 0);
        assert_eq!(overall(0, 2, 50), 25);
        assert_eq!(overall(1, 2, 50), 75);
        assert_eq!(overall(1, 2, 100), 100);
        assert_eq!(overall(1, 3, 50), 50);
        assert_eq!(overall(2, 3, 100), 100);
        assert_eq!(overall(0, 0, 0), 100);
        assert_eq!(overall(usize::MAX, 1, 100), 100);
    }

    #[test]
    fn throttle_allows_one_per_period() {
        let mut t = Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(t.allow(t0));
        assert!(!t.allow(t0 + Duration::from_millis(500)));
        assert!(!t.allow(t0 + Duration::from_millis(999)));
        assert_eq!(t.next_slot(), t0 + Duration::from_secs(1));
        assert!(t.allow(t0 + Duration::from_millis(1000)));
        assert!(!t.allow(t0 + Duration::from_millis(1500)));
        assert_eq!(t.next_slot(), t0 + Duration::from_secs(2));
    }
}
