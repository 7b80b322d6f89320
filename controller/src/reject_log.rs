//! Logs refused messages without flooding: the first few per window in full, then a
//! count. The Prometheus counter has every one.

use std::time::{Duration, Instant};

use tracing::warn;

use crate::ingest::Rejection;

#[derive(Default)]
pub struct RejectLog {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RejectLog {
    const WINDOW: Duration = Duration::from_secs(10);
    const PER_WINDOW: u32 = 20;

    /// Logs `r` unless this window's quota is used up. Returns whether it was logged.
    pub fn record(&mut self, r: &Rejection) -> bool {
        self.record_at(r, Instant::now())
    }

    fn record_at(&mut self, r: &Rejection, now: Instant) -> bool {
        let expired = self
            .window_start
            .is_none_or(|s| now.duration_since(s) >= Self::WINDOW);
        if expired {
            if self.suppressed > 0 {
                warn!(
                    suppressed = self.suppressed,
                    "more messages were refused; see metalbus_ingest_rejected_total"
                );
            }
            self.window_start = Some(now);
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < Self::PER_WINDOW {
            self.logged += 1;
            warn!(topic = %r.reject.topic, reason = r.reason.as_str(), error = %r.reject.error, "message refused");
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::RejectReason;
    use metalbus_protocol::controller::Reject;

    #[test]
    fn logs_a_quota_per_window_then_counts() {
        let r = Rejection {
            reason: RejectReason::BadJson,
            reply_topic: None,
            reject: Reject {
                topic: "t".into(),
                error: "e".into(),
                seq: None,
            },
            place: None,
        };
        let mut log = RejectLog::default();
        let t0 = Instant::now();
        let logged = (0..25).filter(|_| log.record_at(&r, t0)).count();
        assert_eq!(logged, 20);
        assert_eq!(log.suppressed, 5);
        assert!(log.record_at(&r, t0 + Duration::from_secs(11)));
        assert_eq!(log.suppressed, 0);
    }
}
