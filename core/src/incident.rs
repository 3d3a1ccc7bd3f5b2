//! The incident lifecycle: opened at detection with a cause and a node, each recovery phase
//! stamped once, closed when the job makes progress past the step it resumed from.
//!
//! `Detected → Fenced → Replaced → Relaunched → Resumed`, or `Abandoned` when the job ends first.
//! Pure: the caller passes the time of each event.

use serde::{Deserialize, Serialize};

use crate::{Generation, JobId, NodeId, UnixMillis};

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
    /// The action's stable snake_case name: an incident's `action` as operators, the wire and
    /// the `action` label of the incident metric see it.
    pub fn code(self) -> &'static str {
        match self {
            RecoveryAction::RestartInPlace => "restart_in_place",
            RecoveryAction::ReplaceNode => "replace_node",
            RecoveryAction::None => "none",
        }
    }
}

/// Where an incident's fault time comes from: the evidence it was estimated from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum FaultTimeSource {
    /// Nothing earlier was known: the fault time is the detection time (zero detection latency
    /// by construction, so not an estimate).
    #[default]
    Detection,
    /// An event the agent stamped — the health check's observation (NVML, kernel log), the
    /// worker's exit — in agent time corrected by the node's clock offset.
    AgentEvent,
    /// The last sign of life from the agent: its last heartbeat (agent lost), or the heartbeat
    /// that should have followed it (heartbeat timeout).
    LastHeartbeat,
    /// The rank's last progress line (a stall).
    LastProgress,
}

impl FaultTimeSource {
    /// The source's stable snake_case name, as operators and the wire see it.
    pub fn code(self) -> &'static str {
        match self {
            FaultTimeSource::Detection => "detection",
            FaultTimeSource::AgentEvent => "agent_event",
            FaultTimeSource::LastHeartbeat => "last_heartbeat",
            FaultTimeSource::LastProgress => "last_progress",
        }
    }

    /// True when the fault time is estimated from evidence rather than set to the detection.
    pub fn is_estimate(self) -> bool {
        self != FaultTimeSource::Detection
    }
}

/// One recorded failure and its recovery. Timestamps are coordinator wall-clock unix ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Numbered from 1 in the order incidents open, across all jobs (stored as `incident/<id>`).
    pub id: u64,
    /// The job the fault interrupted; job events advance only its open incidents.
    pub job_id: JobId,
    /// The node the fault was seen on.
    pub node_id: NodeId,
    /// Machine-readable cause (`agent_lost`, `worker_exited`, …).
    pub cause: String,
    /// Human-readable detail (exit code, health reason, …).
    pub detail: String,
    /// What the job did about the fault, decided at detection.
    pub action: RecoveryAction,
    /// Best estimate of when the fault happened (agent time corrected for clock offset),
    /// or the detection time when nothing earlier is known.
    pub fault_at: UnixMillis,
    /// When the coordinator saw the fault; `detected_at - fault_at` is the detection latency.
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
    /// The node that completed the replacement; `None` for a restart in place or a shrink.
    pub replacement_node_id: Option<NodeId>,
    /// The generation the fault ended.
    pub from_generation: Generation,
    /// The generation that relaunched, once it did: resumption is judged on its progress only.
    pub to_generation: Option<Generation>,
    /// The checkpoint step the relaunch resumed from (0 when it started fresh); progress past
    /// it closes the incident.
    pub resumed_from_step: Option<u64>,
    /// The job's highest step when the fault was detected: work since the resumed checkpoint is
    /// redone, and reports count it as lost.
    #[serde(default)]
    pub fault_step: u64,
    /// Replacement candidates that failed their check during this recovery ("node: reason").
    #[serde(default)]
    pub rejected_candidates: Vec<String>,
    /// Newer checkpoints the relaunch did not resume from because they failed verification
    /// ("step-N: reason"): a truncated or corrupted file, a missing one.
    #[serde(default)]
    pub skipped_checkpoints: Vec<String>,
    /// The tier the relaunch took its state from (`None` until it resolved one): the memory
    /// tier when every rank's state at a newer step survived in host memory, else durable —
    /// durable too once the relaunched workers report they could not load the memory copy and
    /// fell back ([`IncidentEvent::StateFellBack`]).
    #[serde(default)]
    pub state_tier: Option<crate::checkpoint::StateTier>,
    /// Why that tier: the memory tier's step and the durable one's, or why the memory tier
    /// could not be used (a copy held only by a fenced node, a shrunk job, a copy the workers
    /// found missing or corrupt).
    #[serde(default)]
    pub state_note: String,
    /// For a stall: what each rank's agent saw of its worker when the stall was judged, one
    /// entry per rank in rank order (empty for other faults).
    #[serde(default)]
    pub ranks: Vec<RankEvidence>,
    /// What `fault_at` was estimated from; [`FaultTimeSource::Detection`] when it is simply the
    /// detection time.
    #[serde(default)]
    pub fault_time_source: FaultTimeSource,
}

/// One rank of a stalled generation as an incident records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankEvidence {
    /// The rank's index in the generation.
    pub rank: u32,
    /// The node that ran it.
    pub node_id: NodeId,
    /// Its worker's evidence in a line ([`crate::evidence::describe`]), or "no evidence".
    pub evidence: String,
    /// Its worker's Python stacks as its agent dumped them after the stall (at most
    /// [`STACKS_MAX_BYTES`]); empty until they come.
    #[serde(default)]
    pub stacks: String,
}

/// Bound of the stack text an incident keeps per rank (incidents are stored).
pub const STACKS_MAX_BYTES: usize = 16 * 1024;

/// What can happen to an open incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncidentEvent {
    /// Every worker of the failed generation is gone (or past the stop deadline): stamps
    /// `fenced_at`.
    Fenced,
    /// Every rank has a node again: stamps `replaced_at`.
    Replaced {
        /// The replacement that completed it; `None` for a restart in place or a shrink.
        node: Option<NodeId>,
    },
    /// Every rank of the new generation started: stamps `relaunched_at`.
    Relaunched {
        /// The new generation, whose progress will close the incident.
        generation: Generation,
        /// The step of the checkpoint it resumed from; 0 when it started fresh.
        resume_step: u64,
    },
    /// A rank reported progress: stamps `resumed_at` once it passes the resumed step.
    Progress {
        /// The generation it came from; another generation's progress proves nothing.
        generation: Generation,
        /// The step reached.
        step: u64,
    },
    /// The job ended (failed, stopped, or succeeded) before it recovered: closes the incident.
    Abandoned {
        /// The job's final message, kept as why.
        reason: String,
    },
    /// Newer checkpoints failed verification; the relaunch resumes from an older one.
    CheckpointsSkipped {
        /// One "step-N: reason" per checkpoint passed over, newest first.
        reasons: Vec<String>,
    },
    /// The relaunch's state was resolved across tiers.
    StateChosen {
        /// The tier it resumes from.
        tier: crate::checkpoint::StateTier,
        /// Why (see [`Incident::state_note`]).
        note: String,
    },
    /// The relaunched generation's workers could not use the memory tier chosen for them (a
    /// copy missing or corrupt) and loaded the durable checkpoint instead: the incident then
    /// says `durable`, why, and resumes from the durable step. Applies only to an incident
    /// whose relaunch is that generation and whose tier was the memory tier.
    StateFellBack {
        /// The generation whose workers fell back; another generation's report proves nothing.
        generation: Generation,
        /// The durable checkpoint's step they loaded (0: a fresh start).
        durable_step: u64,
        /// Why, as the workers said it.
        reason: String,
    },
    /// A replacement candidate failed its bootstrap/deep check; the next one is tried.
    CandidateRejected {
        /// The candidate, now fenced.
        node: NodeId,
        /// Its check's failure, as in its fence reason.
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
        generation: Generation,
        fault_at: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Incident {
        Incident {
            id,
            job_id: job_id.into(),
            node_id: node_id.into(),
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
            skipped_checkpoints: Vec::new(),
            state_tier: None,
            state_note: String::new(),
            ranks: Vec::new(),
            fault_time_source: FaultTimeSource::Detection,
        }
    }

    /// The fault this incident was opened for (a worker exit) followed from a fault on another
    /// node: the incident now names that node, its cause and what the job does about it, and
    /// keeps what it first saw in its detail. `evidence` is when the node's fault happened, if
    /// known; the fault time is the earlier of it and the first symptom's.
    pub fn hand_to(
        &mut self,
        node_id: &str,
        cause: &str,
        detail: &str,
        action: RecoveryAction,
        evidence: Option<(UnixMillis, FaultTimeSource)>,
    ) {
        let first = format!(
            "{detail}; {} on {} followed from it ({})",
            self.cause, self.node_id, self.detail
        );
        self.detail = crate::limits::truncated(&first, crate::limits::MAX_REASON);
        self.node_id = node_id.into();
        self.cause = cause.into();
        self.action = action;
        // A restart in place counts every rank as having a node at once, and may have
        // relaunched (or re-formed) on the lost node already: the handed-over fault's rank
        // needs a node again, and the replacement and relaunch that follow are stamped then.
        if self.resumed_at.is_none() {
            self.replaced_at = None;
            self.replacement_node_id = None;
            self.relaunched_at = None;
            self.to_generation = None;
        }
        if let Some((at, source)) = evidence.filter(|(at, _)| *at < self.fault_at) {
            self.fault_at = at;
            self.fault_time_source = source;
        }
    }

    /// Open until it resumed or was abandoned.
    pub fn is_open(&self) -> bool {
        self.resumed_at.is_none() && self.abandoned.is_none()
    }

    /// The phase the incident is in: the last one stamped.
    pub fn phase(&self) -> IncidentPhase {
        if self.abandoned.is_some() {
            IncidentPhase::Abandoned
        } else if self.resumed_at.is_some() {
            IncidentPhase::Resumed
        } else if self.relaunched_at.is_some() {
            IncidentPhase::Relaunched
        } else if self.replaced_at.is_some() {
            IncidentPhase::Replaced
        } else if self.fenced_at.is_some() {
            IncidentPhase::Fenced
        } else {
            IncidentPhase::Detected
        }
    }
}

/// Where an incident is. Each phase is stamped once, in this order; the stamps are the state
/// (a stored incident is its stamps), the phase is read off them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentPhase {
    /// Detected: the fault was seen; → Fenced when the failed generation is stopped everywhere
    /// reachable (and the node fenced when it must be replaced), → Abandoned if the job ends.
    Detected,
    /// Fenced: → Replaced when every rank has a node again.
    Fenced,
    /// Replaced: → Relaunched when every rank of the new generation started.
    Replaced,
    /// Relaunched: → Resumed at the first progress past the resumed checkpoint.
    Relaunched,
    /// Resumed: closed; the recovery is over.
    Resumed,
    /// Abandoned: closed; the job failed or was stopped before it recovered.
    Abandoned,
}

impl IncidentPhase {
    /// The lower-case name shown to operators.
    pub fn name(self) -> &'static str {
        match self {
            IncidentPhase::Detected => "detected",
            IncidentPhase::Fenced => "fenced",
            IncidentPhase::Replaced => "replaced",
            IncidentPhase::Relaunched => "relaunched",
            IncidentPhase::Resumed => "resumed",
            IncidentPhase::Abandoned => "abandoned",
        }
    }
}

impl std::fmt::Display for IncidentPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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
        IncidentEvent::CheckpointsSkipped { reasons } => {
            if next.relaunched_at.is_none() {
                next.skipped_checkpoints.extend(reasons.iter().cloned());
            }
        }
        IncidentEvent::StateChosen { tier, note } => {
            if next.relaunched_at.is_none() {
                next.state_tier = Some(*tier);
                next.state_note = crate::limits::truncated(note, crate::limits::MAX_REASON);
            }
        }
        IncidentEvent::StateFellBack {
            generation,
            durable_step,
            reason,
        } => {
            let memory = Some(crate::checkpoint::StateTier::Memory);
            if next.state_tier == memory && next.to_generation == Some(*generation) {
                let from = next.resumed_from_step.unwrap_or_default();
                let note = format!(
                    "memory tier not used: the workers could not load step {from} ({reason}); \
                     resumed from the durable checkpoint at step {durable_step}"
                );
                next.state_tier = Some(crate::checkpoint::StateTier::Durable);
                next.state_note = crate::limits::truncated(&note, crate::limits::MAX_REASON);
                next.resumed_from_step = Some(*durable_step);
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
            Generation(1),
            Some(900),
            1000,
        )
    }

    #[test]
    fn handed_to_another_node_it_names_that_node_and_keeps_the_first_symptom() {
        let exit = || {
            let mut i = opened();
            (i.node_id, i.cause, i.detail) = ("n2".into(), "worker_exited".into(), "code 1".into());
            i.action = RecoveryAction::RestartInPlace;
            i.fault_time_source = FaultTimeSource::AgentEvent;
            i
        };
        let mut i = exit();
        let heartbeat = Some((800, FaultTimeSource::LastHeartbeat));
        i.hand_to(
            "n1",
            "agent_lost",
            "stream closed",
            RecoveryAction::ReplaceNode,
            heartbeat,
        );
        assert_eq!((i.node_id.as_str(), i.cause.as_str()), ("n1", "agent_lost"));
        assert_eq!(i.action, RecoveryAction::ReplaceNode);
        assert_eq!(
            i.detail,
            "stream closed; worker_exited on n2 followed from it (code 1)"
        );
        assert_eq!(
            (i.fault_at, i.fault_time_source),
            (800, FaultTimeSource::LastHeartbeat)
        );
        assert_eq!(i.detected_at, 1000, "detected when the first symptom was");
        // Handed over after the restart in place counted its ranks placed: the replacement
        // of the lost node is still to come.
        let mut i = exit();
        i = step(&i, &IncidentEvent::Fenced, 1100);
        i = step(&i, &IncidentEvent::Replaced { node: None }, 1100);
        i.hand_to("n1", "agent_lost", "", RecoveryAction::ReplaceNode, None);
        assert_eq!(i.phase(), IncidentPhase::Fenced);
        let spare: Option<NodeId> = Some("spare".into());
        i = step(
            &i,
            &IncidentEvent::Replaced {
                node: spare.clone(),
            },
            1300,
        );
        assert_eq!((i.replaced_at, i.replacement_node_id), (Some(1300), spare));
        // Evidence later than the first symptom (or none) leaves its time.
        let mut i = exit();
        let late = Some((950, FaultTimeSource::LastHeartbeat));
        i.hand_to("n1", "agent_lost", "", RecoveryAction::ReplaceNode, late);
        assert_eq!(
            (i.fault_at, i.fault_time_source),
            (900, FaultTimeSource::AgentEvent)
        );
    }

    #[test]
    fn walks_every_phase_in_order() {
        let i = opened();
        assert_eq!(i.phase(), IncidentPhase::Detected);
        assert_eq!(i.fault_at, 900);
        let i = step(&i, &IncidentEvent::Fenced, 1100);
        assert_eq!(
            (i.phase(), i.fenced_at),
            (IncidentPhase::Fenced, Some(1100))
        );
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
                generation: Generation(2),
                resume_step: 30,
            },
            1300,
        );
        assert_eq!(
            (i.to_generation, i.resumed_from_step),
            (Some(Generation(2)), Some(30))
        );
        // Progress of the old generation or not past the resumed step does not close it.
        let i = step(
            &i,
            &IncidentEvent::Progress {
                generation: Generation(1),
                step: 99,
            },
            1400,
        );
        let i = step(
            &i,
            &IncidentEvent::Progress {
                generation: Generation(2),
                step: 30,
            },
            1400,
        );
        assert!(i.is_open());
        let i = step(
            &i,
            &IncidentEvent::Progress {
                generation: Generation(2),
                step: 31,
            },
            1500,
        );
        assert_eq!(
            (i.phase(), i.resumed_at),
            (IncidentPhase::Resumed, Some(1500))
        );
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
                generation: Generation(2),
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
            generation: Generation(generation),
            resume_step,
        };
        let i = step(&i, &relaunched(2, 30), 1300);
        // Generation 2 failed before its first step; generation 3 resumes from step 28.
        let i = step(&i, &relaunched(3, 28), 1500);
        assert_eq!(i.relaunched_at, Some(1300), "stamped once");
        assert_eq!(
            (i.to_generation, i.resumed_from_step),
            (Some(Generation(3)), Some(28))
        );
        let progress = |generation, step| IncidentEvent::Progress {
            generation: Generation(generation),
            step,
        };
        assert!(step(&i, &progress(2, 31), 1600).is_open());
        assert_eq!(step(&i, &progress(3, 29), 1600).resumed_at, Some(1600));
        // An older generation's relaunch changes nothing.
        assert_eq!(step(&i, &relaunched(2, 30), 1600), i);
    }

    #[test]
    fn a_fallback_from_the_memory_tier_is_taken_for_the_relaunched_generation_only() {
        use crate::checkpoint::StateTier;
        let fell_back = |generation| IncidentEvent::StateFellBack {
            generation: Generation(generation),
            durable_step: 30,
            reason: "rank 1's copy is corrupt".into(),
        };
        let i = step(&opened(), &IncidentEvent::Fenced, 1100);
        let i = step(&i, &IncidentEvent::Replaced { node: None }, 1200);
        let chosen = |tier| IncidentEvent::StateChosen {
            tier,
            note: "chosen".into(),
        };
        let memory = step(&i, &chosen(StateTier::Memory), 1250);
        let relaunched = IncidentEvent::Relaunched {
            generation: Generation(2),
            resume_step: 42,
        };
        let memory = step(&memory, &relaunched, 1300);
        // Not relaunched yet, another generation, or a durable relaunch: nothing changes.
        assert_eq!(step(&i, &fell_back(2), 1400), i);
        assert_eq!(step(&memory, &fell_back(3), 1400), memory);
        assert_eq!(step(&memory, &fell_back(1), 1400), memory);
        let durable = step(
            &step(&i, &chosen(StateTier::Durable), 1250),
            &relaunched,
            1300,
        );
        assert_eq!(step(&durable, &fell_back(2), 1400), durable);

        let after = step(&memory, &fell_back(2), 1400);
        assert_eq!(after.state_tier, Some(StateTier::Durable));
        assert_eq!(after.resumed_from_step, Some(30));
        assert_eq!(
            after.state_note,
            "memory tier not used: the workers could not load step 42 (rank 1's copy is \
             corrupt); resumed from the durable checkpoint at step 30"
        );
        assert_eq!(step(&after, &fell_back(2), 1500), after, "taken once");
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
        assert_eq!(i.phase(), IncidentPhase::Abandoned);
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
            Generation(1),
            Some(5000),
            1000,
        );
        assert_eq!(i.fault_at, 1000);
    }
}
