//! The one mapping between the operator API's typed enums (`JobState`, `RecoveryPhase`,
//! `NodeState`, `IncidentCause`, `EventKind`) and the short strings the coordinator's core
//! names its states with ("running", "fenced", "gpu_fatal", "progress", …).
//!
//! The strings are still on the wire next to the enums for one release, so a client reads the
//! enum when it is set and maps the string otherwise: the accessors on the messages
//! ([`Job::job_state`], [`Node::node_state`], [`Incident::incident_cause`],
//! [`Event::event_kind`], …) do exactly that, and clients should match on what they return
//! rather than on string literals.

use crate::v1::{
    Event, EventKind, Incident, IncidentCause, Job, JobState, Node, NodeState, RecoveryPhase,
};

/// One table per enum gives both directions, so a name and its value cannot drift apart:
/// `name()` matches every variant (a value added to the .proto without a name here does not
/// compile), `from_name()` accepts those names plus older spellings, and anything else —
/// including "" and names from a newer peer — is `Unspecified`.
macro_rules! names {
    (
        $ty:ident {
            $($variant:ident => $name:literal,)*
        }
        $(aliases { $($alias:literal => $avariant:ident,)* })?
    ) => {
        impl $ty {
            /// Every value but `Unspecified`, in wire order.
            pub const KNOWN: &'static [$ty] = &[$($ty::$variant,)*];

            /// The short name used in the string field ("" for `Unspecified`).
            pub fn name(self) -> &'static str {
                match self {
                    $ty::Unspecified => "",
                    $($ty::$variant => $name,)*
                }
            }

            /// The value a short name stands for; `Unspecified` for "" and unknown names.
            pub fn from_name(name: &str) -> $ty {
                match name {
                    $($name => $ty::$variant,)*
                    $($($alias => $ty::$avariant,)*)?
                    _ => $ty::Unspecified,
                }
            }

            /// The typed field's value when it is set and known to this build, else `legacy`
            /// (the older string field) mapped by name: reads both older and newer peers.
            pub fn from_wire(value: i32, legacy: &str) -> $ty {
                match $ty::try_from(value) {
                    Ok(v) if v != $ty::Unspecified => v,
                    _ => $ty::from_name(legacy),
                }
            }
        }
    };
}

names! {
    JobState {
        Pending => "pending",
        Launching => "launching",
        Running => "running",
        Recovering => "recovering",
        Succeeded => "succeeded",
        Failed => "failed",
        Stopped => "stopped",
    }
}

names! {
    RecoveryPhase {
        Fencing => "fencing",
        Replacing => "replacing",
        Relaunching => "relaunching",
    }
}

names! {
    NodeState {
        Joining => "joining",
        Bootstrapping => "bootstrapping",
        Checking => "checking",
        Ready => "ready",
        Allocated => "allocated",
        Offline => "offline",
        Fenced => "fenced",
        Cordoned => "cordoned",
        Retired => "retired",
    }
}

names! {
    IncidentCause {
        AgentLost => "agent_lost",
        HeartbeatTimeout => "heartbeat_timeout",
        HealthFatal => "health_fatal",
        WorkerExited => "worker_exited",
        ProgressStalled => "progress_stalled",
        CheckFailed => "check_failed",
        RepeatedFaults => "repeated_faults",
        Operator => "operator",
        HealthRestart => "health_restart",
    }
    // The core names the same causes differently on incidents and on node fences; both
    // spellings must land on one value.
    aliases {
        "gpu_fatal" => HealthFatal,
        "repeated_worker_faults" => RepeatedFaults,
    }
}

names! {
    EventKind {
        NodeState => "node_state",
        JobState => "job_state",
        Incident => "incident",
        Progress => "progress",
        Log => "log",
        Alert => "alert",
    }
}

impl JobState {
    /// Succeeded, failed and stopped jobs never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Stopped
        )
    }
}

impl Job {
    /// The job's state: `state_enum`, or `state` from a coordinator that does not send it.
    pub fn job_state(&self) -> JobState {
        JobState::from_wire(self.state_enum, &self.state)
    }

    /// The recovery phase (`Unspecified` outside recovery): `phase_enum`, or `phase`.
    pub fn recovery_phase(&self) -> RecoveryPhase {
        RecoveryPhase::from_wire(self.phase_enum, &self.phase)
    }
}

impl Node {
    /// The node's state: `state_enum`, or `state` from a coordinator that does not send it.
    pub fn node_state(&self) -> NodeState {
        NodeState::from_wire(self.state_enum, &self.state)
    }
}

impl Incident {
    /// Why the incident opened: `cause_enum`, or `cause` from a coordinator that does not send it.
    pub fn incident_cause(&self) -> IncidentCause {
        IncidentCause::from_wire(self.cause_enum, &self.cause)
    }
}

impl Event {
    /// The event's kind: `kind_enum`, or `kind` from a coordinator that does not send it.
    pub fn event_kind(&self) -> EventKind {
        EventKind::from_wire(self.kind_enum, &self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name()` must be the proto spelling of the value without its prefix, lower-cased: the
    /// contract the .proto states for the string fields.
    fn check_names<T: Copy + std::fmt::Debug + PartialEq>(
        prefix: &str,
        known: &[T],
        name: fn(T) -> &'static str,
        proto: fn(&T) -> &'static str,
        from_name: fn(&str) -> T,
        unspecified: T,
    ) {
        assert!(!known.is_empty());
        for &v in known {
            assert_ne!(v, unspecified);
            assert_eq!(
                proto(&v),
                format!("{prefix}{}", name(v).to_ascii_uppercase()),
                "{v:?}"
            );
            assert_eq!(from_name(name(v)), v, "{v:?}");
        }
        assert_eq!(name(unspecified), "");
        assert_eq!(from_name(""), unspecified);
        assert_eq!(from_name("no_such_name"), unspecified);
        // Names are exact: the proto spelling and other cases are not names.
        assert_eq!(from_name(proto(&known[0])), unspecified);
        assert_eq!(from_name(&name(known[0]).to_ascii_uppercase()), unspecified);
    }

    #[test]
    fn names_match_the_proto_spellings_and_round_trip() {
        check_names(
            "JOB_STATE_",
            JobState::KNOWN,
            JobState::name,
            JobState::as_str_name,
            JobState::from_name,
            JobState::Unspecified,
        );
        check_names(
            "RECOVERY_PHASE_",
            RecoveryPhase::KNOWN,
            RecoveryPhase::name,
            RecoveryPhase::as_str_name,
            RecoveryPhase::from_name,
            RecoveryPhase::Unspecified,
        );
        check_names(
            "NODE_STATE_",
            NodeState::KNOWN,
            NodeState::name,
            NodeState::as_str_name,
            NodeState::from_name,
            NodeState::Unspecified,
        );
        check_names(
            "INCIDENT_CAUSE_",
            IncidentCause::KNOWN,
            IncidentCause::name,
            IncidentCause::as_str_name,
            IncidentCause::from_name,
            IncidentCause::Unspecified,
        );
        check_names(
            "EVENT_KIND_",
            EventKind::KNOWN,
            EventKind::name,
            EventKind::as_str_name,
            EventKind::from_name,
            EventKind::Unspecified,
        );
    }

    /// The strings the coordinator's core emits today (`JobState::name`, `RecoveryPhase::name`,
    /// `NodeState::name`, `FaultCause::code`, `FenceCause::code` and the events' `kind`s), listed
    /// by hand: each must map to a value. The coordinator's view tests check the same against
    /// the core's own enums.
    #[test]
    fn every_core_name_maps_to_a_value() {
        for n in [
            "pending",
            "launching",
            "running",
            "recovering",
            "succeeded",
            "failed",
            "stopped",
        ] {
            assert_ne!(JobState::from_name(n), JobState::Unspecified, "{n}");
        }
        for n in ["fencing", "replacing", "relaunching"] {
            assert_ne!(
                RecoveryPhase::from_name(n),
                RecoveryPhase::Unspecified,
                "{n}"
            );
        }
        for n in [
            "joining",
            "bootstrapping",
            "checking",
            "ready",
            "allocated",
            "offline",
            "fenced",
            "cordoned",
            "retired",
        ] {
            assert_ne!(NodeState::from_name(n), NodeState::Unspecified, "{n}");
        }
        for n in [
            // FaultCause::code
            "agent_lost",
            "heartbeat_timeout",
            "gpu_fatal",
            "worker_exited",
            "progress_stalled",
            "check_failed",
            "repeated_faults",
            // FenceCause::code
            "health_fatal",
            "repeated_worker_faults",
            "operator",
        ] {
            assert_ne!(
                IncidentCause::from_name(n),
                IncidentCause::Unspecified,
                "{n}"
            );
        }
        for n in [
            "node_state",
            "job_state",
            "incident",
            "progress",
            "log",
            "alert",
        ] {
            assert_ne!(EventKind::from_name(n), EventKind::Unspecified, "{n}");
        }
    }

    #[test]
    fn both_spellings_of_a_cause_are_one_value() {
        assert_eq!(
            IncidentCause::from_name("gpu_fatal"),
            IncidentCause::HealthFatal
        );
        assert_eq!(
            IncidentCause::from_name("health_fatal"),
            IncidentCause::HealthFatal
        );
        assert_eq!(
            IncidentCause::from_name("repeated_worker_faults"),
            IncidentCause::RepeatedFaults
        );
    }

    #[test]
    fn readers_take_the_enum_and_fall_back_to_the_string() {
        // An older coordinator: only the string.
        let old = Job {
            state: "recovering".into(),
            phase: "replacing".into(),
            ..Default::default()
        };
        assert_eq!(old.job_state(), JobState::Recovering);
        assert_eq!(old.recovery_phase(), RecoveryPhase::Replacing);
        // A coordinator without the strings: only the enum.
        let new = Job {
            state_enum: JobState::Running as i32,
            ..Default::default()
        };
        assert_eq!(new.job_state(), JobState::Running);
        assert_eq!(new.recovery_phase(), RecoveryPhase::Unspecified);
        // Both set: the enum wins.
        let node = |state: &str, state_enum| Node {
            state: state.into(),
            state_enum,
            ..Default::default()
        };
        assert_eq!(
            node("ready", NodeState::Fenced as i32).node_state(),
            NodeState::Fenced
        );
        // A value newer than this build: the string still says what it is.
        let newer = Incident {
            cause: "gpu_fatal".into(),
            cause_enum: 999,
            ..Default::default()
        };
        assert_eq!(newer.incident_cause(), IncidentCause::HealthFatal);
        let event = |kind: &str, kind_enum| Event {
            kind: kind.into(),
            kind_enum,
            ..Default::default()
        };
        assert_eq!(event("progress", 0).event_kind(), EventKind::Progress);
        // Neither known: unspecified, never a guess.
        assert_eq!(event("poll", 999).event_kind(), EventKind::Unspecified);
    }

    #[test]
    fn terminal_job_states() {
        let terminal: Vec<_> = JobState::KNOWN
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.name())
            .collect();
        assert_eq!(terminal, ["succeeded", "failed", "stopped"]);
        assert!(!JobState::Unspecified.is_terminal());
    }
}
