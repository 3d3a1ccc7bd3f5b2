//! The agent's reconnect delays. A lost session is retried after a delay drawn at random
//! between 0 and a ceiling that starts at 100 ms and doubles up to the configured cap ("full
//! jitter"), so agents that lost the coordinator together do not come back together. A hello
//! the coordinator refused for admission (it is admitting other agents: `unavailable` with a
//! retry-after) is retried no earlier than the retry-after it named, plus a jitter whose
//! window doubles with each refusal in a row up to [`REFUSED_JITTER_MAX`]: a storm of
//! thousands of agents spreads out over tens of seconds instead of knocking again at once.

use std::time::Duration;

pub use holdfast_proto::RETRY_AFTER_KEY;
/// The widest jitter added to a retry-after after refusals in a row.
pub const REFUSED_JITTER_MAX: Duration = Duration::from_secs(30);
const FIRST: Duration = Duration::from_millis(100);
const REFUSED_JITTER_FIRST: Duration = Duration::from_secs(1);

/// Reconnect delays of one agent.
#[derive(Debug, Clone)]
pub struct Backoff {
    max: Duration,
    failures: u32,
    refusals: u32,
    rng: u64,
}

impl Backoff {
    /// Delays capped at `max` for lost sessions; `seed` makes each agent draw differently.
    pub fn new(max: Duration, seed: u64) -> Backoff {
        Backoff {
            max: max.max(FIRST),
            failures: 0,
            refusals: 0,
            // xorshift must not start at 0.
            rng: seed | 1,
        }
    }

    /// A seed from the node id and the clock.
    pub fn seed_for(node_id: &str) -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        node_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64 ^ nanos, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
    }

    /// A session was welcomed and lasted: the next loss starts from the first delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.refusals = 0;
    }

    /// The delay after a lost session or a failed connect: uniform in `[0, ceiling]`, the
    /// ceiling doubling from 100 ms up to the cap with each failure in a row.
    pub fn failed(&mut self) -> Duration {
        let ceiling = FIRST
            .saturating_mul(1 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        self.uniform(ceiling)
    }

    /// The delay after the coordinator refused the hello with `retry_after`: at least that,
    /// plus a jitter uniform in `[0, window]`, the window doubling from 1 s up to
    /// [`REFUSED_JITTER_MAX`] with each refusal in a row.
    pub fn refused(&mut self, retry_after: Duration) -> Duration {
        let window = REFUSED_JITTER_FIRST
            .saturating_mul(1 << self.refusals.min(20))
            .min(REFUSED_JITTER_MAX);
        self.refusals = self.refusals.saturating_add(1);
        retry_after.saturating_add(self.uniform(window))
    }

    fn uniform(&mut self, ceiling: Duration) -> Duration {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(self.rng % (ms + 1))
    }
}

/// The retry-after of a refusal for admission, when `status` is one.
pub fn retry_after(status: &tonic::Status) -> Option<Duration> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let ms: u64 = status
        .metadata()
        .get(RETRY_AFTER_KEY)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_sessions_draw_under_a_doubling_ceiling_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(2), 7);
        let delays: Vec<Duration> = (0..12).map(|_| b.failed()).collect();
        for (i, d) in delays.iter().enumerate() {
            let ceiling = (FIRST * (1 << i)).min(Duration::from_secs(2));
            assert!(*d <= ceiling, "{i}: {d:?}");
        }
        // Jittered: not all the same, and not all at the ceiling.
        assert!(delays[6..].iter().any(|d| *d < Duration::from_millis(1900)));
        b.reset();
        assert!(b.failed() <= FIRST);
    }

    #[test]
    fn refusals_honour_the_retry_after_and_spread_out_further_each_time() {
        let mut b = Backoff::new(Duration::from_secs(2), 11);
        let after = Duration::from_secs(3);
        let mut widest = Duration::ZERO;
        for i in 0..10 {
            let d = b.refused(after);
            assert!(d >= after, "never before the retry-after: {d:?}");
            let window = (REFUSED_JITTER_FIRST * (1 << i)).min(REFUSED_JITTER_MAX);
            assert!(d <= after + window, "{i}: {d:?}");
            widest = widest.max(d);
        }
        assert!(
            widest > Duration::from_secs(10),
            "tens of seconds: {widest:?}"
        );
        // Many agents refused together come back spread over the window.
        let draws: Vec<Duration> = (0..1000u64)
            .map(|seed| Backoff::new(Duration::from_secs(2), seed * 7919).refused(after))
            .collect();
        let early = draws
            .iter()
            .filter(|d| **d < after + Duration::from_millis(500))
            .count();
        assert!(
            (300..700).contains(&early),
            "{early} of 1000 in the first half"
        );
    }

    #[test]
    fn only_an_unavailable_with_the_key_is_a_refusal_for_admission() {
        let mut status = tonic::Status::unavailable("busy");
        assert_eq!(retry_after(&status), None);
        status
            .metadata_mut()
            .insert(RETRY_AFTER_KEY, "1500".parse().unwrap());
        assert_eq!(retry_after(&status), Some(Duration::from_millis(1500)));
        let other = tonic::Status::permission_denied("no");
        assert_eq!(retry_after(&other), None);
    }
}
