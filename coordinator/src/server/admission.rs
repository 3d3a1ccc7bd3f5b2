//! Admission control for new agent sessions: a token bucket of hellos (`hello_rate_per_s`,
//! `hello_burst`) whose rate follows the coordinator's own lag. When the detector's tick runs
//! late (the process cannot keep up with what it already carries: heartbeats of the agents
//! admitted, a loaded host) the rate is halved and no hello is admitted until a tick is on time
//! again; each tick on time gives back a tenth of the configured rate. So a storm is admitted
//! as fast as this coordinator on this host can take it, never faster. A hello beyond it is refused with `unavailable` and a retry-after that gives
//! it a place in line: each refusal takes the next free slot, one every `1 / rate` seconds, so
//! a storm of thousands of agents comes back spread over time, in the order it arrived,
//! instead of all at once again. The refused agents' node ids are handed to the core each
//! tick ([`holdfast_core::cluster::Input::AdmissionWait`]): an agent waiting its turn is
//! alive, so a known node among them is not declared lost for the wait.

use std::time::{Duration, Instant};

use holdfast_core::NodeId;

pub use holdfast_proto::RETRY_AFTER_KEY;
/// The longest retry-after given: a line longer than this is not promised a slot.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);
/// The shortest retry-after given.
const RETRY_AFTER_MIN: Duration = Duration::from_millis(200);
/// Refused node ids kept for the core between two ticks (more are not kept: they are
/// reported again at their next try).
const WAITING_MAX: usize = 100_000;

/// A tick later than this means the coordinator is behind: admission holds.
pub const BEHIND: Duration = Duration::from_millis(100);
/// The lowest rate admission falls to (hellos a second).
const RATE_MIN: f64 = 10.0;

/// The hello gate.
#[derive(Debug)]
pub struct Admission {
    /// The configured rate: the most it gives back to.
    max_rate: f64,
    /// The rate now.
    rate: f64,
    /// No hello is admitted while the coordinator is behind.
    behind: bool,
    burst: f64,
    tokens: f64,
    at: Instant,
    /// The next free slot in line for a refused hello.
    next_slot: Instant,
    /// Refused since the last [`Admission::take_waiting`], and the latest retry-after given.
    waiting: Vec<NodeId>,
    longest_wait: Duration,
    admitted: u64,
    refused: u64,
}

impl Admission {
    /// A gate admitting `rate` hellos a second after a burst of `burst` (both at least 1).
    pub fn new(rate: u32, burst: u32, now: Instant) -> Admission {
        let burst = f64::from(burst.max(1));
        Admission {
            max_rate: f64::from(rate.max(1)),
            behind: false,
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            at: now,
            next_slot: now,
            waiting: Vec::new(),
            longest_wait: Duration::ZERO,
            admitted: 0,
            refused: 0,
        }
    }

    /// Admits a hello of `node` now, or says when to come back.
    pub fn admit(&mut self, node: &NodeId, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 && !self.behind {
            self.tokens -= 1.0;
            self.admitted += 1;
            return Ok(());
        }
        self.refused += 1;
        let slot = Duration::from_secs_f64(1.0 / self.rate);
        self.next_slot = self.next_slot.max(now) + slot;
        let wait = self
            .next_slot
            .saturating_duration_since(now)
            .clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX);
        if self.next_slot > now + RETRY_AFTER_MAX {
            // The line is full: later refusals share the last slot's time (the agents' own
            // jitter spreads them) rather than being promised ever later ones.
            self.next_slot = now + RETRY_AFTER_MAX;
        }
        if self.waiting.len() < WAITING_MAX {
            self.waiting.push(node.clone());
        }
        self.longest_wait = self.longest_wait.max(wait);
        Err(wait)
    }

    /// How late the detector's last tick ran: later than [`BEHIND`] halves the rate and holds
    /// admission until a tick is on time; on time, the rate climbs back by a tenth of the
    /// configured one.
    pub fn tick_late(&mut self, late: Duration) {
        if late > BEHIND {
            if !self.behind {
                tracing::debug!(
                    ?late,
                    rate = self.rate,
                    "coordinator behind: admission holds"
                );
            }
            self.behind = true;
            self.rate = (self.rate / 2.0).max(RATE_MIN.min(self.max_rate));
            self.tokens = self.tokens.min(0.0);
        } else {
            self.behind = false;
            self.rate = (self.rate + self.max_rate / 10.0).min(self.max_rate);
        }
    }

    /// The node ids refused since the last call and the longest retry-after given them.
    pub fn take_waiting(&mut self) -> Option<(Vec<NodeId>, Duration)> {
        if self.waiting.is_empty() {
            return None;
        }
        let wait = std::mem::take(&mut self.longest_wait);
        Some((std::mem::take(&mut self.waiting), wait))
    }

    /// Hellos admitted and refused so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.admitted, self.refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: usize) -> NodeId {
        NodeId::from(format!("n{i}"))
    }

    #[test]
    fn a_burst_passes_then_the_rest_are_given_slots_in_order() {
        let start = Instant::now();
        let mut gate = Admission::new(100, 10, start);
        for i in 0..10 {
            assert_eq!(gate.admit(&node(i), start), Ok(()));
        }
        let waits: Vec<Duration> = (10..60)
            .map(|i| gate.admit(&node(i), start).unwrap_err())
            .collect();
        // Served in order: each later refusal is told to come back later, one slot (10 ms)
        // apart once past the minimum.
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(waits[49], Duration::from_millis(500));
        assert_eq!(waits[0], RETRY_AFTER_MIN);
        let (waiting, longest) = gate.take_waiting().unwrap();
        assert_eq!(waiting.len(), 50);
        assert_eq!(waiting[0], node(10));
        assert_eq!(longest, Duration::from_millis(500));
        assert!(gate.take_waiting().is_none());
        assert_eq!(gate.counts(), (10, 50));
    }

    #[test]
    fn the_rate_refills_and_the_line_is_bounded() {
        let start = Instant::now();
        let mut gate = Admission::new(10, 1, start);
        assert!(gate.admit(&node(0), start).is_ok());
        assert!(gate.admit(&node(1), start).is_err());
        // 100 ms later one more token is there.
        let later = start + Duration::from_millis(100);
        assert!(gate.admit(&node(1), later).is_ok());
        // A storm far beyond the rate is never told to wait longer than the cap.
        for i in 0..10_000 {
            let wait = gate.admit(&node(i), later).unwrap_err();
            assert!(wait <= RETRY_AFTER_MAX, "{wait:?}");
        }
        let (_, longest) = gate.take_waiting().unwrap();
        assert_eq!(longest, RETRY_AFTER_MAX);
        // A coordinator behind admits nothing, and less once on time again.
        let mut gate = Admission::new(100, 10, start);
        gate.tick_late(Duration::from_millis(500));
        assert!(gate.admit(&node(0), start).is_err(), "held while behind");
        gate.tick_late(Duration::ZERO);
        let after = start + Duration::from_secs(1);
        let admitted = (0..200)
            .filter(|i| gate.admit(&node(*i), after).is_ok())
            .count();
        assert_eq!(admitted, 10, "the burst, refilled at half the rate");
        let mut full = Admission::new(100, 1000, start);
        full.tick_late(Duration::from_millis(500));
        for _ in 0..20 {
            full.tick_late(Duration::ZERO);
        }
        assert_eq!(
            full.rate, 100.0,
            "on time again, back to the configured rate"
        );
        // A steady trickle under the rate is never refused.
        let mut steady = Admission::new(10, 1, start);
        for i in 0..1000u64 {
            let at = start + Duration::from_millis(100 * i);
            assert!(steady.admit(&node(0), at).is_ok());
        }
    }
}
