//! What an agent sees of its worker's processes, and the one rule that turns every rank's view
//! into a verdict when a synchronous job stalls.
//!
//! When one rank of a synchronous job stops, every rank stops with it: they wait on each other
//! at every step, so progress alone cannot tell which rank hung. The agents report each
//! worker's process state, how busy its CPU is and how long its output has been quiet; on a
//! stall [`single_out`] blames the odd one out — a rank whose process is stopped, or one that
//! spins while the others wait — or says that nothing singles one out. Only a blamed rank's
//! node has the fault counted against it.

use serde::{Deserialize, Serialize};

use crate::{Generation, JobId};

/// A worker's process state as `/proc/<pid>/stat` shows it, the most telling one over the
/// worker's process tree (a stopped child wins over its waiting parent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ProcessState {
    /// `R`: on a CPU or ready to run.
    Running,
    /// `S` (and `I`): waiting for an event, the state of a rank blocked in a collective.
    Sleeping,
    /// `D`: uninterruptible wait (I/O, a driver call).
    Uninterruptible,
    /// `T`/`t`: stopped by a signal (SIGSTOP) or a tracer; it will not move until resumed.
    Stopped,
    /// `Z`: exited, not reaped.
    Zombie,
    /// Not read (no process, an unreadable `/proc`).
    #[default]
    Unknown,
}

impl ProcessState {
    /// The lower-case name operators read.
    pub fn name(self) -> &'static str {
        match self {
            ProcessState::Running => "running",
            ProcessState::Sleeping => "sleeping",
            ProcessState::Uninterruptible => "uninterruptible",
            ProcessState::Stopped => "stopped",
            ProcessState::Zombie => "zombie",
            ProcessState::Unknown => "unknown",
        }
    }
}

/// One worker as its agent saw it at its last sample (every heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WorkerEvidence {
    /// The job the worker trains.
    pub job_id: JobId,
    /// Its generation: evidence of an older generation says nothing about this one.
    pub generation: Generation,
    /// The most telling process state over the worker's process tree.
    pub state: ProcessState,
    /// CPU time (user + system, whole tree) used per second of wall time since the previous
    /// sample, in thousandths of one core: ~1000 for a thread spinning, ~0 for one waiting.
    pub cpu_permille: u32,
    /// How long before the sample the worker printed its last output line; `None` before its
    /// first line.
    pub output_quiet_ms: Option<u64>,
}

/// A CPU this busy (under a third of a core, so a spinning rank on a loaded host still counts)
/// counts as spinning.
pub const BUSY_PERMILLE: u32 = 300;
/// A CPU below this (a tenth of a core) counts as waiting.
pub const IDLE_PERMILLE: u32 = 100;
/// A rank's output must have been quiet this much longer than every other's to single it out
/// by its output alone (ranks print at about the same time at every step).
pub const QUIET_MARGIN_MS: u64 = 1_000;

/// The rank a stall is blamed on, or why none is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The odd one out: its index and why.
    Blamed {
        /// Index into the ranks given to [`single_out`].
        rank: usize,
        /// What singled it out, in a phrase ("process stopped (SIGSTOP?)").
        reason: String,
    },
    /// Nothing singles out one rank: no fault is counted against any node.
    Undecided {
        /// Why, in a phrase.
        reason: String,
    },
}

/// Picks the rank that stalled a synchronous job from every rank's latest evidence (`None`
/// where a rank's agent sent none for the current generation). In order: the one rank whose
/// process is stopped (or a zombie); the one rank spinning while all others wait; the one rank
/// whose output has been quiet [`QUIET_MARGIN_MS`] longer than every other's. Anything else —
/// a rank without evidence, two suspects, nothing odd — is [`Verdict::Undecided`].
pub fn single_out(ranks: &[Option<&WorkerEvidence>]) -> Verdict {
    let undecided = |reason: String| Verdict::Undecided { reason };
    if let Some(missing) = ranks.iter().position(Option::is_none) {
        return undecided(format!("no evidence from rank {missing}"));
    }
    let seen: Vec<&WorkerEvidence> = ranks.iter().flatten().copied().collect();
    if seen.len() < 2 {
        return undecided("a single rank has no peers to compare with".into());
    }
    let only = |pick: &dyn Fn(&WorkerEvidence) -> bool| -> Vec<usize> {
        (0..seen.len()).filter(|&i| pick(seen[i])).collect()
    };

    let stopped = only(&|e| matches!(e.state, ProcessState::Stopped | ProcessState::Zombie));
    match stopped.as_slice() {
        [rank] => {
            return Verdict::Blamed {
                rank: *rank,
                reason: format!(
                    "its process is {} while the others' are not",
                    seen[*rank].state.name()
                ),
            }
        }
        [] => {}
        several => return undecided(format!("ranks {several:?} are all stopped")),
    }

    let busy = only(&|e| e.cpu_permille >= BUSY_PERMILLE);
    let idle = only(&|e| e.cpu_permille < IDLE_PERMILLE);
    if let [rank] = busy.as_slice() {
        if idle.len() == seen.len() - 1 {
            return Verdict::Blamed {
                rank: *rank,
                reason: format!(
                    "it spins ({}% of a core) while the others wait",
                    seen[*rank].cpu_permille / 10
                ),
            };
        }
    }

    let quiet: Vec<Option<u64>> = seen.iter().map(|e| e.output_quiet_ms).collect();
    if quiet.iter().all(Option::is_some) {
        let mut order: Vec<usize> = (0..seen.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(quiet[i]));
        let (first, second) = (quiet[order[0]], quiet[order[1]]);
        if let (Some(a), Some(b)) = (first, second) {
            if a >= b + QUIET_MARGIN_MS {
                return Verdict::Blamed {
                    rank: order[0],
                    reason: format!(
                        "its output has been quiet longest ({:.1} s, next {:.1} s)",
                        a as f64 / 1000.0,
                        b as f64 / 1000.0
                    ),
                };
            }
        }
    }
    undecided("could not single out a rank: every rank waits alike".into())
}

/// One rank's evidence in a line, as an incident shows it.
pub fn describe(e: &WorkerEvidence) -> String {
    let quiet = e.output_quiet_ms.map_or("no output yet".to_string(), |ms| {
        format!("last output {:.1} s ago", ms as f64 / 1000.0)
    });
    format!(
        "process {}, cpu {}% of a core, {quiet}",
        e.state.name(),
        e.cpu_permille / 10
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(state: ProcessState, cpu_permille: u32, quiet: u64) -> WorkerEvidence {
        WorkerEvidence {
            job_id: "job".into(),
            generation: Generation(1),
            state,
            cpu_permille,
            output_quiet_ms: Some(quiet),
        }
    }

    fn verdict(ranks: &[WorkerEvidence]) -> Verdict {
        single_out(&ranks.iter().map(Some).collect::<Vec<_>>())
    }

    fn blamed(v: &Verdict) -> Option<usize> {
        match v {
            Verdict::Blamed { rank, .. } => Some(*rank),
            Verdict::Undecided { .. } => None,
        }
    }

    use ProcessState::*;

    #[test]
    fn a_stopped_rank_is_blamed_over_sleeping_ones() {
        for stuck in 0..3 {
            let mut ranks = vec![seen(Sleeping, 5, 2_000); 3];
            ranks[stuck] = seen(Stopped, 0, 2_000);
            assert_eq!(blamed(&verdict(&ranks)), Some(stuck));
        }
    }

    #[test]
    fn a_spinning_rank_is_blamed_over_waiting_ones() {
        for stuck in 0..3 {
            let mut ranks = vec![seen(Sleeping, 20, 2_000); 3];
            ranks[stuck] = seen(Running, 990, 2_000);
            let v = verdict(&ranks);
            assert_eq!(blamed(&v), Some(stuck), "{v:?}");
        }
    }

    #[test]
    fn every_rank_spinning_or_waiting_alike_blames_none() {
        assert_eq!(blamed(&verdict(&vec![seen(Sleeping, 10, 2_000); 3])), None);
        assert_eq!(
            blamed(&verdict(&vec![seen(Running, 1_000, 2_000); 3])),
            None
        );
        // One busy rank is not odd when another is half busy too.
        let ranks = [
            seen(Running, 900, 2_000),
            seen(Sleeping, 300, 2_000),
            seen(Sleeping, 10, 2_000),
        ];
        assert_eq!(blamed(&verdict(&ranks)), None);
    }

    #[test]
    fn two_stopped_ranks_blame_none() {
        let mut ranks = vec![seen(Stopped, 0, 2_000); 3];
        ranks[2] = seen(Sleeping, 10, 2_000);
        assert_eq!(blamed(&verdict(&ranks)), None);
    }

    #[test]
    fn no_evidence_blames_none() {
        let stopped = seen(Stopped, 0, 2_000);
        let v = single_out(&[Some(&stopped), None, None]);
        assert!(matches!(&v, Verdict::Undecided { reason } if reason.contains("rank 1")));
        assert_eq!(blamed(&single_out(&[])), None);
    }

    #[test]
    fn with_nothing_else_odd_the_longest_quiet_output_is_blamed_past_a_margin() {
        let ranks = [
            seen(Sleeping, 10, 2_000),
            seen(Sleeping, 10, 4_000),
            seen(Sleeping, 10, 2_100),
        ];
        assert_eq!(blamed(&verdict(&ranks)), Some(1));
        let close = [
            seen(Sleeping, 10, 2_000),
            seen(Sleeping, 10, 2_500),
            seen(Sleeping, 10, 2_100),
        ];
        assert_eq!(blamed(&verdict(&close)), None);
    }
}
