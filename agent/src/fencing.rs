//! Fencing: whether a coordinator's command still counts.
//!
//! Each coordinator that becomes leader has a higher term than the one before, and each launch
//! of a job a higher generation. A command of an older term (a deposed leader still serving, a
//! stale copy) or a launch of a generation the node already ran would start a second copy of
//! the job beside the real one, so the agent refuses them. The highest term and the highest
//! generation per job are kept across agent restarts ([`store`]).
//!
//! [`Fencing`] only decides: no clock, no files. [`store::SharedFencing`] is the one instance
//! the session (welcomes, scripts, restarts) and the supervisor (launches, stops, fences) both
//! decide through, persisted after every change.

pub mod store;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The highest coordinator term and the highest generation per job seen; the content of
/// `fencing.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fencing {
    term: u64,
    generations: HashMap<String, u64>,
}

/// A command of a coordinator term older than one already seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("term {term} is older than term {current}, already seen")]
pub struct OlderTerm {
    pub term: u64,
    pub current: u64,
}

/// Why a command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    OlderTerm(#[from] OlderTerm),
    /// A launch of a generation not newer than one the node already ran (or was told to stop).
    #[error(
        "generation {generation} of job {job} is not newer than generation {seen}, already seen"
    )]
    StaleGeneration {
        job: String,
        generation: u64,
        seen: u64,
    },
}

impl Fencing {
    /// The highest coordinator term seen.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The highest generation of `job` seen (0: none).
    pub fn generation(&self, job: &str) -> u64 {
        self.generations.get(job).copied().unwrap_or(0)
    }

    /// Whether a command of `term` may be carried out; changes nothing (scripts, restarts).
    pub fn admit_term(&self, term: u64) -> Result<(), OlderTerm> {
        if term < self.term {
            return Err(OlderTerm {
                term,
                current: self.term,
            });
        }
        Ok(())
    }

    /// A coordinator of `term` speaks (a welcome, a fence): refused if older than one already
    /// seen, else older terms are refused from now on.
    pub fn observe(&mut self, term: u64) -> Result<(), OlderTerm> {
        self.admit_term(term)?;
        self.term = term;
        Ok(())
    }

    /// A launch of `job`'s `generation` by a coordinator of `term`: refused for an older term
    /// (nothing changes) or for a generation not newer than the job's last (the term, valid,
    /// still counts); admitted, the generation is the job's last.
    pub fn admit_launch(&mut self, job: &str, generation: u64, term: u64) -> Result<(), Refusal> {
        self.observe(term)?;
        let seen = self.generation(job);
        if generation <= seen {
            return Err(Refusal::StaleGeneration {
                job: job.to_string(),
                generation,
                seen,
            });
        }
        self.generations.insert(job.to_string(), generation);
        Ok(())
    }

    /// A stop of `job`'s `generation` by a coordinator of `term`: refused for an older term;
    /// admitted, no launch of that generation or an older one is admitted afterwards (a late
    /// launch must not restart what was stopped).
    pub fn admit_stop(&mut self, job: &str, generation: u64, term: u64) -> Result<(), Refusal> {
        self.observe(term)?;
        self.observe_generation(job, generation);
        Ok(())
    }

    /// `job`'s `generation` was seen running (a worker adopted after an agent restart): no
    /// launch of it or an older one is admitted.
    pub fn observe_generation(&mut self, job: &str, generation: u64) {
        let seen = self.generations.entry(job.to_string()).or_insert(0);
        *seen = (*seen).max(generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_term_is_refused_and_a_newer_one_becomes_the_floor() {
        let mut f = Fencing::default();
        assert_eq!(f.observe(5), Ok(()));
        assert_eq!(f.admit_term(5), Ok(()));
        assert_eq!(
            f.admit_term(4),
            Err(OlderTerm {
                term: 4,
                current: 5
            })
        );
        assert_eq!(
            f.observe(4),
            Err(OlderTerm {
                term: 4,
                current: 5
            })
        );
        assert_eq!(f.term(), 5);
        f.admit_term(9).unwrap();
        assert_eq!(f.term(), 5, "admitting does not raise the term");
        f.observe(9).unwrap();
        assert_eq!(f.term(), 9);
    }

    #[test]
    fn launches_of_an_older_term_or_a_generation_already_run_are_refused() {
        let mut f = Fencing::default();
        f.admit_launch("j", 2, 5).unwrap();
        assert_eq!(f.generation("j"), 2);
        let before = f.clone();
        assert_eq!(
            f.admit_launch("j", 9, 4),
            Err(Refusal::OlderTerm(OlderTerm {
                term: 4,
                current: 5
            }))
        );
        assert_eq!(f, before, "a refused term changes nothing");
        for generation in [1, 2] {
            assert_eq!(
                f.admit_launch("j", generation, 6),
                Err(Refusal::StaleGeneration {
                    job: "j".into(),
                    generation,
                    seen: 2
                })
            );
        }
        assert_eq!(
            (f.term(), f.generation("j")),
            (6, 2),
            "a stale generation's term still counts"
        );
        f.admit_launch("j", 3, 6).unwrap();
        f.admit_launch("other", 1, 6).unwrap();
        assert_eq!((f.generation("j"), f.generation("other")), (3, 1));
    }

    #[test]
    fn a_stop_closes_its_generation_and_older_stops_are_carried_out() {
        let mut f = Fencing::default();
        f.admit_stop("j", 4, 2).unwrap();
        assert_eq!((f.term(), f.generation("j")), (2, 4));
        assert!(
            f.admit_launch("j", 4, 2).is_err(),
            "a stopped generation stays stopped"
        );
        f.admit_stop("j", 1, 2).unwrap();
        assert_eq!(f.generation("j"), 4, "generations only go up");
        assert_eq!(
            f.admit_stop("j", 5, 1),
            Err(Refusal::OlderTerm(OlderTerm {
                term: 1,
                current: 2
            }))
        );
        assert_eq!(f.generation("j"), 4);
    }

    #[test]
    fn an_adopted_generation_is_never_launched_again() {
        let mut f = Fencing::default();
        f.observe_generation("j", 3);
        f.observe_generation("j", 1);
        assert_eq!((f.term(), f.generation("j")), (0, 3));
        assert!(matches!(
            f.admit_launch("j", 3, 0),
            Err(Refusal::StaleGeneration { seen: 3, .. })
        ));
    }

    #[test]
    fn refusals_say_why() {
        let older = Refusal::from(OlderTerm {
            term: 4,
            current: 5,
        });
        assert_eq!(
            older.to_string(),
            "term 4 is older than term 5, already seen"
        );
        let stale = Refusal::StaleGeneration {
            job: "j".into(),
            generation: 2,
            seen: 3,
        };
        assert_eq!(
            stale.to_string(),
            "generation 2 of job j is not newer than generation 3, already seen"
        );
    }
}
