//! The systemd watchdog (`WatchdogSec=` in the units), fed only while a daemon's main
//! loop makes progress. The loop calls [`Progress::beat`] on every turn (each has a
//! timer arm, so an idle loop turns too); a thread of its own sends `WATCHDOG=1` every
//! third of the period, but only while the last beat is younger than half the period.
//! A loop that hangs (a blocked call, a deadlock, a runaway batch) stops the
//! notifications, and systemd restarts the service.
//!
//! The feeder is a plain thread, not a task: a wedged async runtime must not keep it
//! from noticing, and it must not keep a wedged runtime looking alive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// When the process first asked for the time here: beats count milliseconds from it.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(base().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The last turn of a loop. Clones share it.
#[derive(Clone, Debug)]
pub struct Progress(Arc<AtomicU64>);

impl Progress {
    /// A progress that has just beaten.
    pub fn new() -> Self {
        Progress(Arc::new(AtomicU64::new(now_ms())))
    }

    /// The loop turned.
    pub fn beat(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    /// Beats every second for as long as it is polled: run it beside a loop in the same
    /// task (`select!`), and it beats while that task is polled, that is while nothing in
    /// it blocks the thread. It never returns.
    pub async fn beating(&self) -> std::convert::Infallible {
        loop {
            self.beat();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// How long ago the loop last turned.
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a loop whose last beat is `age` old may feed a watchdog of `period`: it must
/// have turned within half the period.
pub fn fresh(age: Duration, period: Duration) -> bool {
    age <= period / 2
}

/// Starts feeding the systemd watchdog from `progress` when the service has one
/// (`WATCHDOG_USEC` set for this process). `what` names the loop in the log. Returns
/// the period, or `None` when there is no watchdog.
pub fn feed(progress: Progress, what: &'static str) -> Option<Duration> {
    let period = sd_notify::watchdog_enabled()?;
    let spawned = std::thread::Builder::new()
        .name("metalbus-watchdog".into())
        .spawn(move || {
            let mut starving = false;
            loop {
                std::thread::sleep(period / 3);
                let age = progress.age();
                if fresh(age, period) {
                    if starving {
                        tracing::warn!(what, "progress again; feeding the watchdog");
                        starving = false;
                    }
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                } else if !starving {
                    tracing::error!(
                        what,
                        stalled_s = age.as_secs(),
                        watchdog_s = period.as_secs(),
                        "no progress: not feeding the watchdog; systemd restarts the service when it runs out"
                    );
                    starving = true;
                }
            }
        });
    match spawned {
        Ok(_) => {
            tracing::info!(
                what,
                period_s = period.as_secs_f64(),
                "feeding the systemd watchdog"
            );
            Some(period)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start the watchdog thread");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_makes_the_progress_young_again() {
        let p = Progress::new();
        std::thread::sleep(Duration::from_millis(30));
        assert!(p.age() >= Duration::from_millis(30));
        let shared = p.clone();
        shared.beat();
        assert!(p.age() < Duration::from_millis(30));
    }

    #[test]
    fn only_a_loop_that_turned_within_half_the_period_feeds() {
        let period = Duration::from_secs(30);
        assert!(fresh(Duration::ZERO, period));
        assert!(fresh(Duration::from_secs(15), period));
        assert!(!fresh(Duration::from_millis(15_001), period));
        assert!(!fresh(Duration::from_secs(3600), period));
    }
}
