//! The incident lifecycle: opened at detection with a cause and a node, each recovery phase
//! stamped once, closed when the job makes progress past the step it resumed from.
//!
//! `Detected → Fenced → Replaced → Relaunched → Resumed`, or `Abandoned` when the job ends first.
//! Pure: the caller passes the time of each event.

use serde::{Deserialize, Serialize};

use crate::UnixMillis;

/// What the coordinator did about a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryAction {
    /// Workers restarted on the same nodes (healthy hardware, budget left).
    RestartInPlace,
    /// The failed node was fenced and its ranks moved to a replacement.
    ReplaceNode,
    /// Nothing could be done: the job failed or was stopped.
    None,
}

impl RecoveryAction {
    pub fn code(self) -> &'static str {
        match self {
            RecoveryAction::RestartInPlace => "restart_in_place",
            RecoveryAction::ReplaceNode => "replace_node",
            RecoveryAction::None => "none",
        }
    }
}

/// One recorded failure and its recovery. Timestamps are coordinator wall-clock unix ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: u64,
    pub job_id: String,
    /// The node the fault was seen on.
    pub node_id: String,
    /// Machine-readable cause (`agent_lost`, `worker_exited`, …).
    pub cause: String,
    /// Human-readable detail (exit code, health reason, …).
    pub detail: String,
    pub action: RecoveryAction,
    /// Best estimate of when the fault happened (agent time corrected for clock offset),
    /// or the detection time when nothing earlier is known.
    pub fault_at: UnixMillis,
    pub detected_at: UnixMillis,
    /// The failed generation's workers were stopped everywhere reachable and the node marked fenced.
    pub fenced_at: Option<UnixMillis>,
    /// Every rank had a node again (a warm spare, or the same nodes for a restart in place).
    pub replaced_at: Option<UnixMillis>,
    /// Every rank of the new generation reported its worker started.
    pub relaunched_at: Option<UnixMillis>,
    /// The job reported progress past `resumed_from_step` in the new generation.
    pub resumed_at: Option<UnixMillis>,
    /// Set when the job ended (failed, stopped) before the incident could close.
    pub abandoned: Option<String>,
    pub replacement_node_id: Option<String>,
    pub from_generation: u64,
    pub to_generation: Option<u64>,
    pub resumed_from_step: Option<u64>,
    /// The job's highest step when the fault was detected: work since the resumed checkpoint is
    /// redone, and reports count it as lost.
    #[serde(default)]
    pub fault_step: u64,
    /// Replacement candidates that failed their check during this recovery ("node: reason").
    #[serde(default)]
    pub rejected_candidates: Vec<String>,
}

/// What can happen to an open incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncidentEvent {
    Fenced,
    Replaced {
        node: Option<String>,
    },
    Relaunched {
        generation: u64,
        resume_step: u64,
    },
    Progress {
        generation: u64,
        step: u64,
    },
    Abandoned {
        reason: String,
    },
    /// A replacement candidate failed its bootstrap/deep check; the next one is tried.
    CandidateRejected {
        node: String,
        reason: String,
    },
}

impl Incident {
    /// Opens an incident at detection time `now`.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        id: u64,
        job_id: &str,
        node_id: &str,
        cause: &str,
        detail: &str,
        action: RecoveryAction,
        generation: u64,
        fault_at: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Incident {
        Incident {
            id,
            job_id: job_id.to_string(),
            node_id: node_id.to_string(),
            cause: cause.to_string(),
            detail: detail.to_string(),
            action,
            fault_at: fault_at.map_or(now, |t| t.min(now)),
            detected_at: now,
            fenced_at: None,
            replaced_at: None,
            relaunched_at: None,
            resumed_at: None,
            abandoned: None,
            replacement_node_id: None,
            from_generation: generation,
            to_generation: None,
            resumed_from_step: None,
            fault_step: 0,
            rejected_candidates: Vec::new(),
        }
    }

    /// Open until it resumed or was abandoned.
    pub fn is_open(&self) -> bool {
        self.resumed_at.is_none() && self.abandoned.is_none()
    }

    /// The phase the incident is in, for display.
    pub fn phase(&self) -> &'static str {
        if self.abandoned.is_some() {
            "abandoned"
        } else if self.resumed_at.is_some() {
            "resumed"
        } else if self.relaunched_at.is_some() {
            "relaunched"
        } else if self.replaced_at.is_some() {
            "replaced"
        } else if self.fenced_at.is_some() {
            "fenced"
        } else {
            "detected"
        }
    }
}

/// The incident lifecycle's step: stamps the phase the event ends, once, in order.
/// Events that do not apply (a phase already stamped, progress of an older generation,
/// anything after the incident closed) leave the incident unchanged.
pub fn step(incident: &Incident, event: &IncidentEvent, now: UnixMillis) -> Incident {
    let mut next = incident.clone();
    if !incident.is_open() {
        return next;
    }
    match event {
        IncidentEvent::Fenced => {
            next.fenced_at.get_or_insert(now);
        }
        IncidentEvent::CandidateRejected { node, reason } => {
            if next.replaced_at.is_none() {
                next.rejected_candidates.push(format!("{node}: {reason}"));
            }
        }
        IncidentEvent::Replaced { node } => {
            if next.fenced_at.is_some() && next.replaced_at.is_none() {
                next.replaced_at = Some(now);
                next.replacement_node_id = node.clone();
            }
        }
        IncidentEvent::Relaunched {
            generation,
            resume_step,
        } => {
            if next.replaced_at.is_some() && next.relaunched_at.is_none() {
                next.relaunched_at = Some(now);
                next.to_generation = Some(*generation);
                next.resumed_from_step = Some(*resume_step);
            } else if next.to_generation.is_some_and(|g| g < *generation) {
                // The generation it relaunched failed before it made progress: the recovery
                // goes on in this one, whose progress closes the incident.
                next.to_generation = Some(*generation);
                next.resumed_from_step = Some(*resume_step);
            }
        }
        IncidentEvent::Progress { generation, step } => {
            let past_resume = next.resumed_from_step.is_some_and(|from| *step > from);
            if next.relaunched_at.is_some()
                && next.to_generation == Some(*generation)
                && past_resume
            {
                next.resumed_at = Some(now);
            }
        }
        IncidentEvent::Abandoned { reason } => next.abandoned = Some(reason.clone()),
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened() -> Incident {
        Incident::open(
            1,
            "job",
            "n1",
            "agent_lost",
            "",
            RecoveryAction::ReplaceNode,
            1,
            Some(900),
            1000,
        )
    }

    #[test]
    fn walks_every_phase_in_order() {
        let i = opened();
        assert_eq!(i.phase(), "detected");
        assert_eq!(i.fault_at, 900);
        let i = step(&i, &IncidentEvent::Fenced, 1100);
        assert_eq!((i.phase(), i.fenced_at), ("fenced", Some(1100)));
        let i = step(
            &i,
            &IncidentEvent::Replaced {
                node: Some("spare".into()),
            },
            1200,
        );
        assert_eq!(i.replacement_node_id.as_deref(), Some("spare"));
        let i = step(
            &i,
            &IncidentEvent::Relaunched {
                generation: 2,
                resume_step: 30,
            },
            1300,
        );
        assert_eq!((i.to_generation, i.resumed_from_step), (Some(2), Some(30)));
        // Progress of the old generation or not past the resumed step does not close it.
        let i = step(
            &i,
            &IncidentEvent::Progress {
                generation: 1,
                step: 99,
            },
            1400,
        );
        let i = step(
            &i,
            &IncidentEvent::Progress {
                generation: 2,
                step: 30,
            },
            1400,
        );
        assert!(i.is_open());
        let i = step(
            &i,
            &IncidentEvent::Progress {
                generation: 2,
                step: 31,
            },
            1500,
        );
        assert_eq!((i.phase(), i.resumed_at), ("resumed", Some(1500)));
        assert!(!i.is_open());
        // Closed incidents do not change.
        let after = step(
            &i,
            &IncidentEvent::Abandoned {
                reason: "late".into(),
            },
            1600,
        );
        assert_eq!(after, i);
    }

    #[test]
    fn phases_are_stamped_once_and_not_out_of_order() {
        let i = opened();
        let skipped = step(&i, &IncidentEvent::Replaced { node: None }, 1100);
        assert_eq!(skipped.replaced_at, None);
        let skipped = step(
            &i,
            &IncidentEvent::Relaunched {
                generation: 2,
                resume_step: 0,
            },
            1100,
        );
        assert_eq!(skipped.relaunched_at, None);
        let i = step(&i, &IncidentEvent::Fenced, 1100);
        let i = step(&i, &IncidentEvent::Fenced, 1500);
        assert_eq!(i.fenced_at, Some(1100));
    }

    #[test]
    fn a_relaunch_that_failed_before_progress_is_followed_into_the_next_generation() {
        let i = step(&opened(), &IncidentEvent::Fenced, 1100);
        let i = step(&i, &IncidentEvent::Replaced { node: None }, 1200);
        let relaunched = |generation, resume_step| IncidentEvent::Relaunched {
            generation,
            resume_step,
        };
        let i = step(&i, &relaunched(2, 30), 1300);
        // Generation 2 failed before its first step; generation 3 resumes from step 28.
        let i = step(&i, &relaunched(3, 28), 1500);
        assert_eq!(i.relaunched_at, Some(1300), "stamped once");
        assert_eq!((i.to_generation, i.resumed_from_step), (Some(3), Some(28)));
        let progress = |generation, step| IncidentEvent::Progress { generation, step };
        assert!(step(&i, &progress(2, 31), 1600).is_open());
        assert_eq!(step(&i, &progress(3, 29), 1600).resumed_at, Some(1600));
        // An older generation's relaunch changes nothing.
        assert_eq!(step(&i, &relaunched(2, 30), 1600), i);
    }

    #[test]
    fn abandoned_closes_it() {
        let i = step(
            &opened(),
            &IncidentEvent::Abandoned {
                reason: "job failed".into(),
            },
            1100,
        );
        assert_eq!(i.phase(), "abandoned");
        assert!(!i.is_open());
    }

    #[test]
    fn fault_time_is_never_after_detection() {
        let i = Incident::open(
            1,
            "j",
            "n",
            "c",
            "",
            RecoveryAction::None,
            1,
            Some(5000),
            1000,
        );
        assert_eq!(i.fault_at, 1000);
    }
}
