//! Conversions from the core's records to the `holdfast.v1` messages operators see.

use std::collections::BTreeMap;

use holdfast_proto::v1 as pb;

use holdfast_core::cluster::{NodeRecord, Role};
use holdfast_core::incident::Incident;
use holdfast_core::job::{Job, JobState};
use holdfast_core::node::NodeState;

pub fn job(job: &Job) -> pb::Job {
    pb::Job {
        job_id: job.id.clone(),
        spec: Some(pb::JobSpec {
            job_id: job.id.clone(),
            command: job.spec.command.clone(),
            nodes: job.spec.nodes,
            checkpoint_uri: job.spec.checkpoint_uri.clone(),
            stall_timeout_s: job.spec.stall_timeout_ms as f64 / 1000.0,
            restart_budget: job.spec.restart_budget,
            progress_regex: job.spec.progress_regex.clone(),
            env: job.spec.env.clone().into_iter().collect(),
            total_steps: job.spec.total_steps,
            min_nodes: job.spec.min_nodes,
        }),
        state: job.state.name().into(),
        phase: job.phase().into(),
        generation: job.generation,
        step: job.step,
        nodes: job.nodes(),
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

pub fn node(node: &NodeRecord, jobs: &BTreeMap<String, Job>) -> pb::Node {
    let job = jobs
        .values()
        .find(|j| !j.state.is_terminal() && j.rank_of(&node.id).is_some());
    pb::Node {
        node_id: node.id.clone(),
        hostname: node.hostname.clone(),
        role: match node.role {
            Role::Worker => pb::NodeRole::Worker as i32,
            Role::Spare => pb::NodeRole::Spare as i32,
        },
        state: node.state.name().into(),
        connected: node.conn.is_some(),
        address: node.address.clone(),
        health: Some(crate::wire::health_pb(&node.health)),
        job_id: job.map(|j| j.id.clone()).unwrap_or_default(),
        generation: node.worker.as_ref().map_or(0, |w| w.1),
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
    }
}

pub fn incident(i: &Incident) -> pb::Incident {
    pb::Incident {
        id: i.id,
        job_id: i.job_id.clone(),
        node_id: i.node_id.clone(),
        cause: i.cause.clone(),
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
        replacement_node_id: i.replacement_node_id.clone().unwrap_or_default(),
        from_generation: i.from_generation,
        to_generation: i.to_generation.unwrap_or(0),
        resumed_from_step: i.resumed_from_step.unwrap_or(0),
        open: i.is_open(),
        fault_step: i.fault_step,
        rejected_candidates: i.rejected_candidates.clone(),
    }
}
