//! Conversions from the core's records to the `holdfast.v1` messages operators see.
//!
//! Each typed enum field (`state_enum`, `phase_enum`, `cause_enum`, `kind_enum`) is derived
//! from the very string put beside it, through the one name table in
//! [`holdfast_proto::names`], so the two can never disagree on the wire.

use std::collections::BTreeMap;

use holdfast_proto::v1 as pb;

use holdfast_core::cluster::{NodeRecord, Role};
use holdfast_core::incident::Incident;
use holdfast_core::job::{Job, JobState, Launcher};
use holdfast_core::node::NodeState;
use holdfast_core::JobId;

/// What a viewer sees instead of a job's environment values (often secrets: tokens, keys).
pub const HIDDEN_FROM_VIEWERS: &str = "(hidden from viewers)";

/// [`job`] as the caller may see it: a viewer gets the names of the job's environment
/// variables, never their values.
pub fn job_for(job: &Job, viewer: bool) -> pb::Job {
    let mut view = self::job(job);
    if viewer {
        hide_env(&mut view);
    }
    view
}

/// Replaces every environment value of `job` with [`HIDDEN_FROM_VIEWERS`].
pub fn hide_env(job: &mut pb::Job) {
    if let Some(spec) = job.spec.as_mut() {
        for value in spec.env.values_mut() {
            *value = HIDDEN_FROM_VIEWERS.to_string();
        }
    }
}

pub fn job(job: &Job) -> pb::Job {
    pb::Job {
        job_id: job.id.to_string(),
        spec: Some(pb::JobSpec {
            job_id: job.id.to_string(),
            command: job.spec.command.clone(),
            nodes: job.spec.nodes,
            checkpoint_uri: job.spec.checkpoint_uri.clone(),
            stall_timeout_s: job.spec.stall_timeout_ms as f64 / 1000.0,
            restart_budget: job.spec.restart_budget,
            progress_regex: job.spec.progress_regex.clone(),
            env: job.spec.env.clone().into_iter().collect(),
            total_steps: job.spec.total_steps,
            min_nodes: job.spec.min_nodes,
            progress_vouches: Some(job.spec.progress_vouches),
            nproc_per_node: match &job.spec.launcher {
                Launcher::Command => None,
                Launcher::Native { nproc_per_node, .. } => Some(*nproc_per_node),
            },
            warm_imports: match &job.spec.launcher {
                Launcher::Command => Vec::new(),
                Launcher::Native { warm_imports, .. } => warm_imports.clone(),
            },
            allowed_nodes: job
                .spec
                .allowed_nodes
                .iter()
                .map(|n| n.to_string())
                .collect(),
            restart: job.spec.restart.name().into(),
        }),
        state: job.state.name().into(),
        state_enum: pb::JobState::from_name(job.state.name()) as i32,
        phase: job.phase().into(),
        phase_enum: pb::RecoveryPhase::from_name(job.phase()) as i32,
        generation: job.generation.into(),
        step: job.step,
        nodes: job.nodes().into_iter().map(String::from).collect(),
        message: match &job.state {
            JobState::Failed { reason } => reason.clone(),
            _ => job.message.clone(),
        },
        restarts: job.restarts,
        last_checkpoint_step: job.resumed_from.as_ref().map_or(0, |c| c.step),
        submitted_unix_ms: job.submitted_at,
        finished_unix_ms: job.finished_at.unwrap_or(0),
    }
}

pub fn node(node: &NodeRecord, jobs: &BTreeMap<JobId, Job>) -> pb::Node {
    let job = jobs
        .values()
        .find(|j| !j.state.is_terminal() && j.rank_of(&node.id).is_some());
    pb::Node {
        node_id: node.id.to_string(),
        hostname: node.hostname.clone(),
        role: match node.role {
            Role::Worker => pb::NodeRole::Worker as i32,
            Role::Spare => pb::NodeRole::Spare as i32,
        },
        state: node.state.name().into(),
        state_enum: pb::NodeState::from_name(node.state.name()) as i32,
        connected: node.link.is_connected(),
        address: node.address.clone(),
        health: Some(crate::wire::health_pb(&node.health)),
        job_id: job.map(|j| j.id.clone()).unwrap_or_default().into(),
        generation: node.worker.as_ref().map_or(0, |w| w.1.get()),
        worker_pid: node.worker.as_ref().map_or(0, |w| w.2),
        last_step: node.last_step,
        fence_reason: match &node.state {
            NodeState::Fenced { cause } => cause.to_string(),
            NodeState::Cordoned { reason } => reason.clone(),
            _ => String::new(),
        },
        last_heartbeat_unix_ms: node.last_heartbeat_at,
        clock_offset_ms: node.clock_offset_ms,
        gpus: node
            .gpus
            .iter()
            .map(|g| pb::Gpu {
                index: g.index,
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                memory_bytes: g.memory_bytes,
            })
            .collect(),
        agent_version: node.agent_version.clone(),
        last_check: node
            .last_check
            .as_ref()
            .map(|c| crate::wire::check_report(c, &node.id)),
        agent_started_unix_ms: node.agent_started_at,
        drained: node.drained.clone().unwrap_or_default(),
    }
}

pub fn incident(i: &Incident) -> pb::Incident {
    pb::Incident {
        id: i.id,
        job_id: i.job_id.to_string(),
        node_id: i.node_id.to_string(),
        cause: i.cause.clone(),
        cause_enum: pb::IncidentCause::from_name(&i.cause) as i32,
        detail: match &i.abandoned {
            Some(reason) => format!("{} (abandoned: {reason})", i.detail),
            None => i.detail.clone(),
        },
        fault_unix_ms: i.fault_at,
        detected_unix_ms: i.detected_at,
        fenced_unix_ms: i.fenced_at.unwrap_or(0),
        replaced_unix_ms: i.replaced_at.unwrap_or(0),
        relaunched_unix_ms: i.relaunched_at.unwrap_or(0),
        resumed_unix_ms: i.resumed_at.unwrap_or(0),
        action: i.action.code().into(),
        replacement_node_id: i.replacement_node_id.clone().unwrap_or_default().into(),
        from_generation: i.from_generation.into(),
        to_generation: i.to_generation.unwrap_or_default().into(),
        resumed_from_step: i.resumed_from_step.unwrap_or(0),
        open: i.is_open(),
        fault_step: i.fault_step,
        rejected_candidates: i.rejected_candidates.clone(),
        skipped_checkpoints: i.skipped_checkpoints.clone(),
        state_tier: i
            .state_tier
            .map(|t| t.code().to_string())
            .unwrap_or_default(),
        state_note: i.state_note.clone(),
        ranks: i
            .ranks
            .iter()
            .map(|r| pb::RankEvidence {
                rank: r.rank,
                node_id: r.node_id.to_string(),
                evidence: r.evidence.clone(),
                stacks: r.stacks.clone(),
            })
            .collect(),
        fault_time_source: i.fault_time_source.code().into(),
    }
}

/// The typed kind of an event whose string `kind` is `kind` ("progress", "job_state", …);
/// `Unspecified` for a kind the protocol does not know. Every event the coordinator sends
/// carries both (see [`crate::wire::event`]).
pub fn event_kind(kind: &str) -> pb::EventKind {
    pb::EventKind::from_name(kind)
}

/// How many items a page of `page_size` holds (0: all of them).
pub fn page_len(page_size: u32) -> usize {
    match page_size {
        0 => usize::MAX,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    }
}

/// Whether `node`'s id, hostname or job id contains `query` (lowercase), ignoring case.
fn found(node: &pb::Node, query: &str) -> bool {
    query.is_empty()
        || [&node.node_id, &node.hostname, &node.job_id]
            .iter()
            .any(|field| field.to_lowercase().contains(query))
}

/// `node` as a fleet map needs it ([`pb::ListNodesRequest::brief`]): its health state without
/// the checks, no GPUs, no last check report.
fn brief(mut node: pb::Node) -> pb::Node {
    if let Some(health) = node.health.as_mut() {
        health.checks.clear();
    }
    node.gpus.clear();
    node.last_check = None;
    node
}

/// One page of `views` (every node, in node-id order) under `filter`: the nodes matching its
/// state, job, health and search text, after its page token, at most its page size (brief when
/// asked); with the total that matched and every node counted by state.
pub fn node_page(
    views: impl Iterator<Item = pb::Node>,
    filter: &pb::ListNodesRequest,
) -> pb::ListNodesResponse {
    let mut page = pb::ListNodesResponse::default();
    let limit = page_len(filter.page_size);
    let query = filter.query.trim().to_lowercase();
    let mut more = false;
    for node in views {
        *page.counts_by_state.entry(node.state.clone()).or_default() += 1;
        let health = node.health.as_ref().map_or("unspecified", |h| {
            crate::metrics::health_state_name(h.state)
        });
        let matches = (filter.state.is_empty() || node.state == filter.state)
            && (filter.job_id.is_empty() || node.job_id == filter.job_id)
            && (filter.health.is_empty() || health == filter.health)
            && found(&node, &query);
        if !matches {
            continue;
        }
        page.total = page.total.saturating_add(1);
        if !filter.page_token.is_empty() && node.node_id.as_str() <= filter.page_token.as_str() {
            continue;
        }
        if page.nodes.len() < limit {
            page.nodes
                .push(if filter.brief { brief(node) } else { node });
        } else {
            more = true;
        }
    }
    if more {
        if let Some(last) = page.nodes.last() {
            page.next_page_token = last.node_id.clone();
        }
    }
    page
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use holdfast_core::job::{FaultCause, RecoveryPhase};

    // Built from the core's own enums rather than listed by hand, so a state renamed or added
    // in the core without a value on the wire fails here instead of reaching clients as
    // UNSPECIFIED.

    /// Every one of `names` has its own typed value on the wire (`from_name`), not `unset`.
    fn assert_typed<T: PartialEq + std::fmt::Debug>(
        names: impl IntoIterator<Item = &'static str>,
        from_name: fn(&str) -> T,
        unset: T,
    ) {
        for name in names {
            assert_ne!(from_name(name), unset, "{name:?}");
        }
    }

    #[test]
    fn every_job_state_and_phase_has_a_wire_value() {
        let phases = [
            RecoveryPhase::Fencing {
                pending: BTreeSet::new(),
                deadline: 0,
            },
            RecoveryPhase::Replacing { since: 0 },
            RecoveryPhase::Relaunching {
                attempts: 0,
                retry_at: None,
            },
        ];
        assert_typed(
            phases.iter().map(RecoveryPhase::name),
            pb::RecoveryPhase::from_name,
            pb::RecoveryPhase::Unspecified,
        );
        // Outside recovery the phase is "": no phase.
        assert_eq!(
            pb::RecoveryPhase::from_name(""),
            pb::RecoveryPhase::Unspecified
        );
        let states = [
            JobState::Pending,
            JobState::Launching,
            JobState::Running,
            JobState::Recovering(phases[1].clone()),
            JobState::Succeeded,
            JobState::Failed {
                reason: String::new(),
            },
            JobState::Stopped,
        ];
        for state in &states {
            let wire = pb::JobState::from_name(state.name());
            assert_ne!(wire, pb::JobState::Unspecified, "{state:?}");
            assert_eq!(wire.is_terminal(), state.is_terminal(), "{state:?}");
        }
    }

    #[test]
    fn every_node_state_has_a_wire_value() {
        let states = [
            NodeState::Joining,
            NodeState::Bootstrapping,
            NodeState::Checking,
            NodeState::Ready,
            NodeState::Allocated {
                job_id: JobId::default(),
            },
            NodeState::Offline,
            NodeState::Fenced {
                cause: FaultCause::AgentLost,
            },
            NodeState::Cordoned {
                reason: String::new(),
            },
            NodeState::Retired,
        ];
        assert_typed(
            states.iter().map(NodeState::name),
            pb::NodeState::from_name,
            pb::NodeState::Unspecified,
        );
    }

    #[test]
    fn every_fault_and_fence_cause_has_a_wire_value() {
        let faults = [
            FaultCause::AgentLost,
            FaultCause::HeartbeatTimeout,
            FaultCause::HealthFatal(String::new()),
            FaultCause::WorkerExited {
                code: None,
                signal: None,
            },
            FaultCause::stall(0, String::new()),
            FaultCause::CheckFailed(String::new()),
            FaultCause::HealthRestart(String::new()),
            FaultCause::RepeatedFaults {
                faults: 0,
                window_ms: 0,
                last: String::new(),
            },
        ];
        let operator = FaultCause::Operator(String::new());
        assert_typed(
            faults.iter().chain([&operator]).map(FaultCause::code),
            pb::IncidentCause::from_name,
            pb::IncidentCause::Unspecified,
        );
    }

    #[test]
    fn event_kinds_map_and_unknown_ones_stay_unspecified() {
        for (kind, want) in [
            ("node_state", pb::EventKind::NodeState),
            ("job_state", pb::EventKind::JobState),
            ("incident", pb::EventKind::Incident),
            ("progress", pb::EventKind::Progress),
            ("log", pb::EventKind::Log),
            ("alert", pb::EventKind::Alert),
        ] {
            assert_eq!(event_kind(kind), want);
        }
        assert_eq!(event_kind(""), pb::EventKind::Unspecified);
        assert_eq!(event_kind("Progress"), pb::EventKind::Unspecified);
        assert_eq!(event_kind("heartbeat"), pb::EventKind::Unspecified);
    }

    /// The dashboard decodes the typed fields itself, with its own copy of the names by wire
    /// number; it must be the proto's.
    #[test]
    fn the_dashboard_numbers_the_enums_like_the_proto() {
        let js = include_str!("dashboard/app.js");
        let table = |name: &str| -> Vec<String> {
            let start = format!("const {name} = [");
            let line = js
                .lines()
                .find_map(|l| l.strip_prefix(start.as_str()))
                .unwrap_or_else(|| panic!("no {start} in app.js"));
            let list = line.split(']').next().unwrap_or_default();
            list.split(',')
                .map(|n| n.trim().trim_matches('\'').to_string())
                .collect()
        };
        let want = |names: Vec<&str>| -> Vec<String> {
            std::iter::once("")
                .chain(names)
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            table("JOB_STATES"),
            want(pb::JobState::KNOWN.iter().map(|s| s.name()).collect())
        );
        assert_eq!(
            table("EVENT_KINDS"),
            want(pb::EventKind::KNOWN.iter().map(|k| k.name()).collect())
        );
        // KNOWN is in wire order and dense from 1, so a position is the wire number.
        for (k, s) in pb::JobState::KNOWN.iter().enumerate() {
            assert_eq!(*s as usize, k + 1);
        }
        for (k, s) in pb::EventKind::KNOWN.iter().enumerate() {
            assert_eq!(*s as usize, k + 1);
        }
    }

    #[test]
    fn views_carry_the_enum_beside_the_string() {
        let incident = holdfast_core::incident::Incident::open(
            1,
            "job-1",
            "node-1",
            FaultCause::HealthFatal("xid 79".into()).code(),
            "xid 79",
            holdfast_core::incident::RecoveryAction::ReplaceNode,
            holdfast_core::Generation(1),
            None,
            1_000,
        );
        let wire = super::incident(&incident);
        assert_eq!(wire.cause, "health_fatal");
        assert_eq!(wire.cause_enum, pb::IncidentCause::HealthFatal as i32);
        assert_eq!(wire.incident_cause(), pb::IncidentCause::HealthFatal);
    }

    #[test]
    fn node_pages_filter_count_and_continue_where_they_stopped() {
        let node = |id: &str, state: &str, job: &str| pb::Node {
            node_id: id.into(),
            state: state.into(),
            job_id: job.into(),
            ..Default::default()
        };
        let all = || {
            vec![
                node("a", "allocated", "j1"),
                node("b", "fenced", ""),
                node("c", "allocated", "j1"),
                node("d", "ready", ""),
                node("e", "allocated", "j2"),
            ]
            .into_iter()
        };
        let page = |filter: pb::ListNodesRequest| node_page(all(), &filter);
        let ids = |p: &pb::ListNodesResponse| {
            p.nodes
                .iter()
                .map(|n| n.node_id.clone())
                .collect::<Vec<_>>()
        };
        let everything = page(pb::ListNodesRequest::default());
        assert_eq!((ids(&everything).len(), everything.total), (5, 5));
        assert!(everything.next_page_token.is_empty());
        assert_eq!(everything.counts_by_state["allocated"], 3);
        let first = page(pb::ListNodesRequest {
            state: "allocated".into(),
            page_size: 2,
            ..Default::default()
        });
        assert_eq!(
            (ids(&first), first.total),
            (vec!["a".to_string(), "c".into()], 3)
        );
        assert_eq!(
            first.counts_by_state["fenced"], 1,
            "counts ignore the filters"
        );
        let second = page(pb::ListNodesRequest {
            state: "allocated".into(),
            page_size: 2,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        });
        assert_eq!(ids(&second), ["e"]);
        assert!(second.next_page_token.is_empty(), "the last page");
        let job = page(pb::ListNodesRequest {
            job_id: "j1".into(),
            ..Default::default()
        });
        assert_eq!(ids(&job), ["a", "c"]);
        let unknown_health = page(pb::ListNodesRequest {
            health: "healthy".into(),
            ..Default::default()
        });
        assert_eq!(unknown_health.total, 0);
        // The search matches ids and job ids, ignoring case, and pages like the other filters.
        let search = page(pb::ListNodesRequest {
            query: " J1 ".into(),
            page_size: 1,
            ..Default::default()
        });
        assert_eq!((ids(&search), search.total), (vec!["a".to_string()], 2));
        let search = page(pb::ListNodesRequest {
            query: "j1".into(),
            page_token: search.next_page_token.clone(),
            ..Default::default()
        });
        assert_eq!(ids(&search), ["c"]);
        assert_eq!(
            page(pb::ListNodesRequest {
                query: "D".into(),
                ..Default::default()
            })
            .total,
            1
        );
    }

    #[test]
    fn a_brief_page_keeps_the_health_state_and_drops_the_details() {
        let full = pb::Node {
            node_id: "a".into(),
            state: "ready".into(),
            health: Some(pb::HealthSummary {
                state: pb::HealthState::Unhealthy as i32,
                checks: vec![pb::HealthCheck::default()],
            }),
            gpus: vec![pb::Gpu::default(); 8],
            last_check: Some(pb::CheckReport::default()),
            ..Default::default()
        };
        let request = pb::ListNodesRequest {
            brief: true,
            ..Default::default()
        };
        let page = node_page(std::iter::once(full), &request);
        let node = &page.nodes[0];
        assert_eq!(
            node.health.as_ref().map(|h| (h.state, h.checks.len())),
            Some((pb::HealthState::Unhealthy as i32, 0))
        );
        assert!(node.gpus.is_empty() && node.last_check.is_none());
        assert_eq!(page.counts_by_state["ready"], 1);
    }
}
