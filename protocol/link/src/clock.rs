//! The daemons' clock, behind a trait so tests can set the time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use metalbus_protocol::Timestamp;

pub trait Clock: Send + Sync {
    /// Wall-clock time: for timestamps, expiry and stored deadlines.
    fn now(&self) -> Timestamp;
    /// Time since a fixed start that never goes back: for intervals in memory (resends).
    fn monotonic(&self) -> Duration;
}

/// The wall clock, and `Instant` for intervals.
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    fn monotonic(&self) -> Duration {
        self.start.elapsed()
    }
}

/// A clock that only moves when told to; both of its readings move together.
#[derive(Default)]
pub struct FakeClock {
    wall_ms: AtomicI64,
    moved_ms: AtomicI64,
}

impl FakeClock {
    /// A clock that reads `ms` (Unix milliseconds).
    pub fn at(ms: i64) -> Self {
        Self {
            wall_ms: AtomicI64::new(ms),
            moved_ms: AtomicI64::new(0),
        }
    }

    pub fn advance_ms(&self, ms: i64) {
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
        self.moved_ms.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        self.advance_ms(i64::try_from(by.as_millis()).unwrap_or(i64::MAX));
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.wall_ms.load(Ordering::SeqCst))
    }

    fn monotonic(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.moved_ms.load(Ordering::SeqCst)).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fake_clock_moves_only_when_told_and_both_readings_together() {
        let c = FakeClock::at(1_000);
        assert_eq!(c.now(), Timestamp::from_unix_millis(1_000));
        assert_eq!(c.monotonic(), Duration::ZERO);
        c.advance(Duration::from_secs(2));
        assert_eq!(c.now(), Timestamp::from_unix_millis(3_000));
        assert_eq!(c.monotonic(), Duration::from_secs(2));
    }
}
