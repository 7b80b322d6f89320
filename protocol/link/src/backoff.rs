//! Reconnect pacing: [`Backoff`], shared by the agent and the controller's MQTT client,
//! and the agents' [`Reconnect`] policy on top of it (the CONNACK wait that grows with
//! failures, full jitter after a lost connection).

use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff with jitter: the n-th delay is drawn uniformly from
/// `[d/2, d]` where `d = min(cap, base * 2^n)`. Jitter keeps a rack of agents that lost
/// the broker together from reconnecting in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay, and one step up.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + Duration::from_secs_f64(rng.gen::<f64>() * half.as_secs_f64())
    }

    /// Back to the shortest delay, after a successful connect.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

/// `base` doubled `times` times, at most `cap`: how long an attempt waits for an answer
/// after `times` attempts in a row got none (a busy peer needs time, not more attempts).
pub(crate) fn doubled(base: Duration, times: u32, cap: Duration) -> Duration {
    let factor = 1u32.checked_shl(times.min(31)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(cap)
}

/// An agent's reconnect policy, so that a fleet that lost its broker together does not
/// come back as a storm (issue 13, docs/DECISIONS.md section 69). It decides two things
/// for each connection attempt:
///
/// - **How long to wait for the broker's CONNACK.** The first attempt waits
///   [`Reconnect::CONNACK_WAIT`] (rumqttc's own default); every attempt in a row that ends
///   without a CONNACK doubles it, up to [`Reconnect::CONNACK_WAIT_CAP`]. A broker busy
///   with a storm is then given the time it needs instead of a new connection to set up
///   next to the abandoned one.
/// - **How long to pause before the next attempt.** After a failed attempt, the
///   [`Backoff`]'s next delay. After a connection that was up is lost, a delay drawn
///   uniformly from `[0, scatter]` (full jitter): when the broker restarts, every agent
///   loses it at the same moment, and this spreads their first attempts over the window
///   instead of the backoff's first quarter-second.
///
/// A CONNACK ([`Reconnect::connected`]) starts both over.
#[derive(Debug, Clone)]
pub struct Reconnect {
    backoff: Backoff,
    connack_wait: Duration,
    connack_wait_cap: Duration,
    scatter: Duration,
    /// Attempts in a row that ended without a CONNACK.
    failures: u32,
    /// The last attempt was accepted: the next pause is the first after a loss.
    up: bool,
}

impl Reconnect {
    /// The first attempt's CONNACK wait: rumqttc's default, what agents always used.
    pub const CONNACK_WAIT: Duration = Duration::from_secs(5);
    /// The longest CONNACK wait, reached after four failed attempts in a row.
    pub const CONNACK_WAIT_CAP: Duration = Duration::from_secs(60);
    /// The full-jitter window of the first attempt after a lost connection.
    pub const SCATTER: Duration = Duration::from_secs(10);

    /// `backoff` paces failed attempts; the CONNACK wait starts at `connack_wait` and
    /// doubles up to `connack_wait_cap`; `scatter` is the full-jitter window after a loss.
    pub fn new(
        backoff: Backoff,
        connack_wait: Duration,
        connack_wait_cap: Duration,
        scatter: Duration,
    ) -> Self {
        Self {
            backoff,
            connack_wait,
            connack_wait_cap: connack_wait_cap.max(connack_wait),
            scatter,
            failures: 0,
            up: false,
        }
    }

    /// How long the next attempt waits for the broker to accept it.
    pub fn connack_wait(&self) -> Duration {
        doubled(self.connack_wait, self.failures, self.connack_wait_cap)
    }

    /// Attempts in a row that ended without a CONNACK.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The broker accepted the connection (CONNACK): waits and pauses start over.
    pub fn connected(&mut self) {
        self.failures = 0;
        self.up = true;
        self.backoff.reset();
    }

    /// The attempt, or the connection it made, ended (not by a clean stop): how long to
    /// pause before the next attempt.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        if std::mem::take(&mut self.up) {
            return Duration::from_secs_f64(rng.gen::<f64>() * self.scatter.as_secs_f64());
        }
        self.failures = self.failures.saturating_add(1);
        self.backoff.next_delay(rng)
    }
}

impl Default for Reconnect {
    /// The agents' policy: CONNACK waits of 5, 10, 20, 40, then 60 s; pauses after a
    /// failed attempt of [`Backoff::default`] (0.5 s doubling to 30 s); the first attempt
    /// after a lost connection somewhere in the next 10 s.
    fn default() -> Self {
        Self::new(
            Backoff::default(),
            Self::CONNACK_WAIT,
            Self::CONNACK_WAIT_CAP,
            Self::SCATTER,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::mock::StepRng;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_inside_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<u128> = (0..7)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay(&mut rng);
                assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
                c.as_millis()
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        // Many attempts never overflow.
        for _ in 0..100 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_agents_apart() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let delays: std::collections::BTreeSet<u128> = (0..20)
            .map(|_| Backoff::default().next_delay(&mut rng).as_micros())
            .collect();
        assert!(delays.len() > 15, "jitter produced too few distinct delays");
    }

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_connack_wait_doubles_per_failure_up_to_a_minute_and_a_connack_starts_it_over() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut r = Reconnect::default();
        let waits: Vec<u64> = (0..7)
            .map(|_| {
                let w = r.connack_wait().as_secs();
                r.next_delay(&mut rng);
                w
            })
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60, 60]);
        assert_eq!(r.failures(), 7);
        r.connected();
        assert_eq!((r.connack_wait(), r.failures()), (ms(5_000), 0));
        // Losing a connection that was up is no failed attempt: the next one waits 5 s.
        r.next_delay(&mut rng);
        assert_eq!(r.connack_wait(), ms(5_000));
        // Endless failures never overflow.
        for _ in 0..100 {
            r.next_delay(&mut rng);
        }
        assert_eq!(r.connack_wait(), Reconnect::CONNACK_WAIT_CAP);
    }

    #[test]
    fn only_the_first_pause_after_a_loss_is_full_jitter() {
        // The ends of a fake RNG's range: 0.0 ...
        let mut low = StepRng::new(0, 0);
        let mut r = Reconnect::default();
        // Before any connection: the backoff, whose floor is half its ceiling.
        assert_eq!(r.next_delay(&mut low), ms(250));
        assert_eq!(r.next_delay(&mut low), ms(500));
        r.connected();
        // Full jitter reaches down to no pause at all ...
        assert_eq!(r.next_delay(&mut low), Duration::ZERO);
        // ... once: the next failure is back on the backoff, from its start.
        assert_eq!(r.next_delay(&mut low), ms(250));
        assert_eq!(r.connack_wait(), ms(10_000));
        // ... and just under 1.0: up to the whole window.
        let mut high = StepRng::new(u64::MAX, 0);
        r.connected();
        let top = r.next_delay(&mut high);
        assert!(top > ms(9_999) && top <= Reconnect::SCATTER, "{top:?}");
        assert_eq!(r.next_delay(&mut high), ms(500));
    }

    /// What the daemon does with the policy, step by step, for one agent through a
    /// start against a slow broker and a controller restart.
    #[test]
    fn one_agent_through_a_slow_start_and_a_restart() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut r = Reconnect::default();
        let mut trace = Vec::new();
        // Two attempts time out (5 s, then 10 s), the third is accepted.
        for _ in 0..2 {
            let wait = r.connack_wait();
            let pause = r.next_delay(&mut rng);
            trace.push((wait.as_secs(), pause));
        }
        let wait = r.connack_wait();
        r.connected();
        trace.push((wait.as_secs(), Duration::ZERO));
        // The controller restarts: the connection is lost, the first attempt after it
        // waits 5 s again and is refused outright (the broker is not listening yet), the
        // next one waits 10 s and is accepted.
        let scattered = r.next_delay(&mut rng);
        trace.push((r.connack_wait().as_secs(), r.next_delay(&mut rng)));
        trace.push((r.connack_wait().as_secs(), Duration::ZERO));
        r.connected();

        let waits: Vec<u64> = trace.iter().map(|(w, _)| *w).collect();
        assert_eq!(waits, [5, 10, 20, 5, 10]);
        let within = |d: Duration, lo: u64, hi: u64| d >= ms(lo) && d <= ms(hi);
        assert!(within(trace[0].1, 250, 500), "{trace:?}");
        assert!(within(trace[1].1, 500, 1_000), "{trace:?}");
        assert!(within(scattered, 0, 10_000), "{scattered:?}");
        assert!(
            within(trace[3].1, 250, 500),
            "the backoff starts over: {trace:?}"
        );
        assert_eq!(r.connack_wait(), ms(5_000));
    }

    /// 10,000 agents lose the broker at the same moment: their first attempts spread
    /// evenly over the window, where the backoff alone put them all in a quarter second.
    #[test]
    fn a_fleet_that_lost_the_broker_together_comes_back_spread_over_the_window() {
        const AGENTS: u64 = 10_000;
        let mut per_second = [0u32; 10];
        let mut backoff_only = Vec::new();
        for seed in 0..AGENTS {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut r = Reconnect::default();
            r.connected();
            let d = r.next_delay(&mut rng);
            assert!(d <= Reconnect::SCATTER, "{d:?}");
            let slot = usize::try_from(d.as_secs()).unwrap_or(usize::MAX).min(9);
            per_second[slot] += 1;
            let mut b = Backoff::default();
            b.reset();
            backoff_only.push(b.next_delay(&mut rng));
        }
        // An even spread is 1,000 a second.
        for (s, n) in per_second.iter().enumerate() {
            assert!(
                (900..=1_100).contains(n),
                "second {s}: {n} agents; {per_second:?}"
            );
        }
        assert!(backoff_only.iter().all(|d| *d >= ms(250) && *d <= ms(500)));
    }
}
