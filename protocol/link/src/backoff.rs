//! Reconnect backoff, shared by the agent and the controller's MQTT client.

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

#[cfg(test)]
mod tests {
    use super::*;
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
}
