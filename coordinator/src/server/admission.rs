//! Admission control for new agent sessions: a token bucket of hellos (`hello_rate_per_s`,
//! `hello_burst`) whose rate follows the coordinator's own lag. When the detector's tick runs
//! late (the process cannot keep up with what it already carries: heartbeats of the agents
//! admitted, a loaded host) the rate is halved and no hello is admitted until a tick is on time
//! again; each tick on time gives back a tenth of the configured rate. So a storm is admitted
//! as fast as this coordinator on this host can take it, never faster. A hello whose turn
//! comes within `hello_hold_ms` waits for it on its open stream (its token is taken at once,
//! so the bucket runs into debt and later hellos queue behind it): a storm of thousands of
//! agents is served in order without each reconnecting — no second connection, handshake or
//! allocation of its buffers, which also left the coordinator's heap fragmented. A hello
//! further back is refused with `unavailable` and a retry-after that gives it a place in
//! line: each refusal takes the next free slot, one every `1 / rate` seconds, so
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
    held: u64,
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
            held: 0,
            refused: 0,
        }
    }

    /// Admits a hello of `node` now, or says when to come back (never holds it).
    #[cfg(test)]
    pub fn admit(&mut self, node: &NodeId, now: Instant) -> Result<(), Duration> {
        self.admit_within(node, now, Duration::ZERO).map(|_| ())
    }

    /// Admits a hello of `node` now (`Ok(ZERO)`), or after it waits its turn on its stream
    /// when that comes within `hold` (`Ok(wait)`: the turn is taken, so later hellos queue
    /// behind it), or says when to come back (`Err`). A held hello is counted as waiting
    /// ([`Admission::take_waiting`]) like a refused one.
    pub fn admit_within(
        &mut self,
        node: &NodeId,
        now: Instant,
        hold: Duration,
    ) -> Result<Duration, Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if !self.behind {
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                self.admitted += 1;
                return Ok(Duration::ZERO);
            }
            let turn = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
            if turn <= hold {
                // Its token is spent now (the bucket goes into debt), so it is not given to
                // a later hello meanwhile.
                self.tokens -= 1.0;
                self.admitted += 1;
                self.held += 1;
                self.note_waiting(node, turn);
                return Ok(turn);
            }
        }
        Err(self.refuse(node, now))
    }

    /// A held hello at the end of its wait: `Err` with a retry-after when the coordinator fell
    /// behind meanwhile (admission holds), so it is not served before the detector is on time.
    pub fn resume(&mut self, node: &NodeId, now: Instant) -> Result<(), Duration> {
        if self.behind {
            return Err(self.refuse(node, now));
        }
        Ok(())
    }

    /// Refuses a hello: its retry-after is the next free slot in line (after the turns
    /// already promised to held hellos).
    fn refuse(&mut self, node: &NodeId, now: Instant) -> Duration {
        self.refused += 1;
        let slot = Duration::from_secs_f64(1.0 / self.rate);
        let debt = Duration::from_secs_f64((-self.tokens).max(0.0) / self.rate);
        self.next_slot = self.next_slot.max(now + debt) + slot;
        let wait = self
            .next_slot
            .saturating_duration_since(now)
            .clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX);
        if self.next_slot > now + RETRY_AFTER_MAX {
            // The line is full: later refusals share the last slot's time (the agents' own
            // jitter spreads them) rather than being promised ever later ones.
            self.next_slot = now + RETRY_AFTER_MAX;
        }
        self.note_waiting(node, wait);
        wait
    }

    fn note_waiting(&mut self, node: &NodeId, wait: Duration) {
        if self.waiting.len() < WAITING_MAX {
            self.waiting.push(node.clone());
        }
        self.longest_wait = self.longest_wait.max(wait);
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

    /// Hellos admitted after waiting their turn on their stream, so far.
    pub fn held(&self) -> u64 {
        self.held
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

    #[test]
    fn a_near_turn_is_held_and_taken_and_later_hellos_queue_behind_it() {
        let start = Instant::now();
        let hold = Duration::from_millis(100);
        let mut gate = Admission::new(100, 1, start);
        assert_eq!(gate.admit_within(&node(0), start, hold), Ok(Duration::ZERO));
        // Each next hello's turn is one slot (10 ms) later: held up to 100 ms.
        for i in 1..=10 {
            let turn = gate.admit_within(&node(i), start, hold).unwrap();
            assert_eq!(turn, Duration::from_millis(10 * i as u64), "hello {i}");
        }
        // The 11th turn would be 110 ms away: refused, told to come after the held ones.
        let wait = gate.admit_within(&node(11), start, hold).unwrap_err();
        assert!(wait > Duration::from_millis(100), "{wait:?}");
        assert_eq!(gate.counts(), (11, 1));
        assert_eq!(gate.held(), 10);
        // Held and refused hellos alike are reported as waiting (alive) to the core.
        let (waiting, longest) = gate.take_waiting().unwrap();
        assert_eq!(waiting.len(), 11);
        assert_eq!(longest, wait);
        // Once the debt is paid, hellos pass at once again.
        let later = start + Duration::from_millis(120);
        assert_eq!(
            gate.admit_within(&node(12), later, hold),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn a_held_hello_is_refused_when_the_coordinator_fell_behind_meanwhile() {
        let start = Instant::now();
        let mut gate = Admission::new(100, 1, start);
        assert!(gate.admit(&node(0), start).is_ok());
        let hold = Duration::from_secs(1);
        assert!(gate.admit_within(&node(1), start, hold).is_ok());
        assert_eq!(gate.resume(&node(1), start), Ok(()));
        assert!(gate.admit_within(&node(2), start, hold).is_ok());
        gate.tick_late(BEHIND * 2);
        assert!(gate.resume(&node(2), start).is_err());
        // While behind, nothing is held either.
        assert!(gate.admit_within(&node(3), start, hold).is_err());
    }
}
