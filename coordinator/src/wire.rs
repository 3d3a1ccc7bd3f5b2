//! The wire layer: `holdfast.v1` protobuf messages ⇄ the core's inputs, commands and events.
//! The only place where the core's types and the protobuf types meet; the views of records
//! operators read are in [`crate::view`].

use std::collections::BTreeMap;

use holdfast_core::cluster::{CheckReport, GpuInfo, Hello, Role};
use holdfast_core::evidence::{ProcessState, WorkerEvidence};
use holdfast_core::job::{Job, Launcher};
use holdfast_core::protocol::{
    AgentCommand, ClockEcho, CommandResult, Event, HealthAction, HealthCheck, HealthState,
    HealthSummary, JobRequest, Progress, Subject, Welcome, WorkerEvent, WorkerEventKind,
};
use holdfast_core::JobId;
use holdfast_proto::v1 as pb;
use pb::coordinator_message::Body as ToAgent;

/// An agent's hello, decoded.
pub fn hello(h: pb::Hello) -> Hello {
    Hello {
        node_id: h.node_id.into(),
        hostname: h.hostname,
        role: if h.role == pb::NodeRole::Spare as i32 {
            Role::Spare
        } else {
            Role::Worker
        },
        address: h.advertise_address,
        boot_id: h.boot_id,
        agent_version: h.agent_version,
        gpus: h
            .gpus
            .into_iter()
            .map(|g| GpuInfo {
                index: g.index,
                uuid: g.uuid,
                name: g.name,
                memory_bytes: g.memory_bytes,
            })
            .collect(),
        sent_at: h.sent_unix_ms,
        agent_started_at: h.agent_started_unix_ms,
        worker: h
            .worker
            .filter(|w| !w.job_id.is_empty())
            .map(|w| (w.job_id.into(), w.generation.into(), w.pid, w.running)),
    }
}

/// The welcome an accepted hello is answered with.
pub fn welcome(w: Welcome) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage {
        body: Some(ToAgent::Welcome(pb::Welcome {
            node_id: w.node_id.into(),
            heartbeat_interval_ms: w.heartbeat_interval_ms,
            coordinator_unix_ms: w.coordinator_unix_ms,
            term: w.term.into(),
        })),
    }
}

/// Bound of the job id an agent's evidence may carry (longer ones are cut).
const EVIDENCE_JOB_ID_MAX: usize = 256;

/// An agent's sample of its worker, decoded; the job id is bounded.
pub fn worker_evidence(e: pb::WorkerEvidence) -> WorkerEvidence {
    let state = match pb::ProcessState::try_from(e.state) {
        Ok(pb::ProcessState::Running) => ProcessState::Running,
        Ok(pb::ProcessState::Sleeping) => ProcessState::Sleeping,
        Ok(pb::ProcessState::Uninterruptible) => ProcessState::Uninterruptible,
        Ok(pb::ProcessState::Stopped) => ProcessState::Stopped,
        Ok(pb::ProcessState::Zombie) => ProcessState::Zombie,
        Ok(pb::ProcessState::Unspecified) | Err(_) => ProcessState::Unknown,
    };
    let mut job_id = e.job_id;
    if job_id.len() > EVIDENCE_JOB_ID_MAX {
        let mut end = EVIDENCE_JOB_ID_MAX;
        while !job_id.is_char_boundary(end) {
            end -= 1;
        }
        job_id.truncate(end);
    }
    WorkerEvidence {
        job_id: job_id.into(),
        generation: e.generation.into(),
        state,
        cpu_permille: e.cpu_permille,
        output_quiet_ms: e.output_quiet_ms,
    }
}

/// A command for an agent, encoded.
pub fn agent_command(command: AgentCommand) -> pb::CoordinatorMessage {
    let body = match command {
        AgentCommand::Launch(l) => ToAgent::Launch(pb::Launch {
            job_id: l.job_id.into(),
            generation: l.generation.into(),
            command: l.command,
            env: l.env.into_iter().collect(),
            node_rank: l.node_rank,
            nnodes: l.nnodes,
            master_addr: l.master_addr,
            master_port: l.master_port,
            rdzv_id: l.rdzv_id,
            resume_from: l.resume_from,
            resume_step: l.resume_step,
            checkpoint_uri: l.checkpoint_uri,
            progress_regex: l.progress_regex,
            stop_grace_ms: l.stop_grace_ms,
            term: l.term.into(),
            nproc_per_node: match &l.launcher {
                Launcher::Command => 0,
                Launcher::Native { nproc_per_node, .. } => *nproc_per_node,
            },
            warm_imports: match l.launcher {
                Launcher::Command => Vec::new(),
                Launcher::Native { warm_imports, .. } => warm_imports,
            },
            reform: l.reform,
        }),
        AgentCommand::Stop(s) => ToAgent::Stop(pb::Stop {
            job_id: s.job_id.into(),
            generation: s.generation.into(),
            grace_ms: s.grace_ms,
            reason: s.reason,
            term: s.term.into(),
        }),
        AgentCommand::Fence { reason, term } => ToAgent::Fence(pb::Fence {
            reason,
            term: term.get(),
        }),
        AgentCommand::RunScript(r) => ToAgent::RunScript(pb::RunScript {
            command_id: r.command_id,
            script: r.script,
            args: r.args,
            timeout_ms: r.timeout_ms,
            env: r.env.into_iter().collect(),
            term: r.term.into(),
        }),
        AgentCommand::RestartAgent { reason, term } => ToAgent::RestartAgent(pb::RestartAgent {
            reason,
            term: term.get(),
        }),
        AgentCommand::DumpStacks {
            job_id,
            generation,
            incident_id,
            term,
        } => ToAgent::DumpStacks(pb::DumpStacks {
            job_id: job_id.into(),
            generation: generation.into(),
            incident_id,
            term: term.into(),
        }),
        AgentCommand::Ping {
            coordinator_unix_ms,
        } => ToAgent::Ping(pb::Ping {
            coordinator_unix_ms,
        }),
    };
    pb::CoordinatorMessage { body: Some(body) }
}

/// A core enum and its protobuf twin, variant for variant: `$decode` reads the protobuf number
/// (an unknown or unset one as `$fallback`), `$encode` writes it.
macro_rules! mirrored_enum {
    ($decode:ident, $encode:ident, $core:ident <=> pb::$pb:ident,
     $fallback:ident <= $unset:ident, [$($variant:ident),+ $(,)?]) => {
        fn $decode(value: i32) -> $core {
            match pb::$pb::try_from(value) {
                $(Ok(pb::$pb::$variant) => $core::$variant,)+
                Ok(pb::$pb::$unset) | Err(_) => $core::$fallback,
            }
        }

        fn $encode(value: $core) -> pb::$pb {
            match value {
                $($core::$variant => pb::$pb::$variant,)+
                $core::$fallback => pb::$pb::$unset,
            }
        }
    };
}

mirrored_enum!(health_state, health_state_pb, HealthState <=> pb::HealthState,
    Unspecified <= Unspecified, [Healthy, Degraded, Unhealthy, Unknown, NotApplicable]);
mirrored_enum!(health_action, health_action_pb, HealthAction <=> pb::HealthAction,
    None <= None, [RestartWorker, ResetGpu, Reboot, ReplaceNode]);

/// The clock echo a heartbeat carries; `None` from agents that do not echo (older agents) or
/// when no stamp arrived since the last heartbeat.
pub fn clock_echo(h: &pb::Heartbeat) -> Option<ClockEcho> {
    (h.echo_coordinator_unix_ms > 0 && h.echo_received_unix_ms > 0).then_some(ClockEcho {
        coordinator_sent_at: h.echo_coordinator_unix_ms,
        agent_received_at: h.echo_received_unix_ms,
    })
}

/// A node's health as its agent reported it.
pub fn health(h: pb::HealthSummary) -> HealthSummary {
    HealthSummary {
        state: health_state(h.state),
        checks: h
            .checks
            .into_iter()
            .map(|c| HealthCheck {
                check: c.check,
                state: health_state(c.state),
                reason: c.reason,
                action: health_action(c.action),
                observed_at: c.observed_unix_ms,
            })
            .collect(),
    }
}

/// A node's health as operators see it.
pub fn health_pb(h: &HealthSummary) -> pb::HealthSummary {
    pb::HealthSummary {
        state: health_state_pb(h.state) as i32,
        checks: h
            .checks
            .iter()
            .map(|c| pb::HealthCheck {
                check: c.check.clone(),
                state: health_state_pb(c.state) as i32,
                reason: c.reason.clone(),
                action: health_action_pb(c.action) as i32,
                observed_unix_ms: c.observed_at,
            })
            .collect(),
    }
}

/// A worker event; `None` when it says neither start nor exit.
pub fn worker_event(e: pb::WorkerEvent) -> Option<WorkerEvent> {
    let kind = match e.kind? {
        pb::worker_event::Kind::Started(s) => WorkerEventKind::Started { pid: s.pid },
        pb::worker_event::Kind::Exited(x) => WorkerEventKind::Exited {
            code: x.code,
            signal: x.signal,
            stopped_by_agent: x.stopped_by_agent,
        },
    };
    Some(WorkerEvent {
        job_id: e.job_id.into(),
        generation: e.generation.into(),
        at: e.at_unix_ms,
        kind,
    })
}

/// Training progress.
pub fn progress(p: pb::Progress) -> Progress {
    Progress {
        job_id: p.job_id.into(),
        generation: p.generation.into(),
        step: p.step,
        memory: p
            .memory
            .into_iter()
            .take(holdfast_core::checkpoint::MAX_MEMORY_HOLDINGS)
            .map(|m| holdfast_core::checkpoint::MemoryHolding {
                step: m.step,
                world: m.world,
                ranks: m.ranks,
            })
            .collect(),
        // Bounded again by the core; cut here first so a huge reason is not carried on.
        state_fallback: holdfast_core::limits::truncated(
            &p.state_fallback,
            holdfast_core::limits::MAX_REASON,
        ),
    }
}

/// A lifecycle script's result.
pub fn command_result(r: pb::CommandResult) -> CommandResult {
    CommandResult {
        command_id: r.command_id,
        ok: r.ok,
        message: r.message,
        output: r.output,
        exit_code: r.exit_code,
        duration_ms: r.duration_ms,
    }
}

/// A job as an operator submitted it.
pub fn job_request(spec: pb::JobSpec) -> JobRequest {
    JobRequest {
        job_id: spec.job_id,
        command: spec.command,
        nodes: spec.nodes,
        checkpoint_uri: spec.checkpoint_uri,
        stall_timeout_s: spec.stall_timeout_s,
        restart_budget: spec.restart_budget,
        progress_regex: spec.progress_regex,
        env: spec.env.into_iter().collect(),
        total_steps: spec.total_steps,
        min_nodes: spec.min_nodes,
        progress_vouches: spec.progress_vouches,
        nproc_per_node: spec.nproc_per_node,
        warm_imports: spec.warm_imports,
        allowed_nodes: spec.allowed_nodes,
        restart: spec.restart,
    }
}

/// A node's check report as operators see it.
pub fn check_report(report: &CheckReport, node_id: &str) -> pb::CheckReport {
    pb::CheckReport {
        node_id: node_id.to_string(),
        purpose: report.purpose.clone(),
        ok: report.ok,
        scripts: report
            .scripts
            .iter()
            .map(|s| pb::ScriptResult {
                script: s.script.clone(),
                ok: s.ok,
                exit_code: s.exit_code,
                duration_ms: s.duration_ms,
                output: s.output.clone(),
                message: s.message.clone(),
            })
            .collect(),
        started_unix_ms: report.started_at,
        duration_ms: report.duration_ms,
    }
}

/// An event for operators; `jobs` tells a node which job it runs.
pub fn event(e: &Event, jobs: &BTreeMap<JobId, Job>) -> pb::Event {
    let mut out = pb::Event {
        at_unix_ms: e.at,
        kind: e.kind.name().into(),
        kind_enum: crate::view::event_kind(e.kind.name()) as i32,
        job_id: e.job_id.clone(),
        node_id: e.node_id.clone(),
        message: e.message.clone(),
        ..Default::default()
    };
    match &e.subject {
        Some(Subject::Job(job)) => out.job = Some(crate::view::job(job)),
        Some(Subject::Node(node)) => out.node = Some(crate::view::node(node, jobs)),
        Some(Subject::Incident(incident)) => out.incident = Some(crate::view::incident(incident)),
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_without_an_echo_carries_none() {
        let old_agent = pb::Heartbeat {
            sent_unix_ms: 5_000,
            ..Default::default()
        };
        assert_eq!(clock_echo(&old_agent), None);
        let echoed = pb::Heartbeat {
            sent_unix_ms: 5_000,
            echo_coordinator_unix_ms: 4_000,
            echo_received_unix_ms: 4_900,
            ..Default::default()
        };
        assert_eq!(
            clock_echo(&echoed),
            Some(ClockEcho {
                coordinator_sent_at: 4_000,
                agent_received_at: 4_900,
            })
        );
    }

    #[test]
    fn a_ping_goes_out_with_the_coordinators_clock() {
        let message = agent_command(AgentCommand::Ping {
            coordinator_unix_ms: 1_234,
        });
        assert_eq!(
            message.body,
            Some(ToAgent::Ping(pb::Ping {
                coordinator_unix_ms: 1_234
            }))
        );
    }
}
