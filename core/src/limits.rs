//! Bounds on everything agents and operators send. Each decoded message is checked here before
//! the core keeps any of it, so a hostile or broken peer cannot make the coordinator store, log
//! or send on megabytes of its text. A refusal names the field (`CoreError::InvalidField`, or
//! `CoreError::InvalidJob` for job specs), which the coordinator answers with
//! `invalid_argument`.
//!
//! The numbers are generous for real clusters (a node id is a hostname, a GPU host has at most
//! a few dozen GPUs) and small enough that 10,000 nodes of maximal records stay within memory.

use crate::cluster::Hello;
use crate::error::CoreError;
use std::collections::BTreeSet;

use crate::protocol::{CommandResult, HealthSummary, JobRequest, Progress, WorkerEvent};
use crate::NodeId;

/// Longest node id, in bytes; ids are `[A-Za-z0-9._-]`.
pub const MAX_NODE_ID: usize = 128;
/// Longest hostname (RFC 1123 allows 253).
pub const MAX_HOSTNAME: usize = 253;
/// Longest advertise address (a hostname or IP literal with a port).
pub const MAX_ADDRESS: usize = 262;
/// Longest boot id, agent version, GPU uuid or name, health check name.
pub const MAX_SHORT_TEXT: usize = 128;
/// Most GPUs one hello may list.
pub const MAX_GPUS: usize = 64;
/// Most health checks one report may carry.
pub const MAX_HEALTH_CHECKS: usize = 64;
/// Longest health check reason, command result message.
pub const MAX_REASON: usize = 1024;
/// Longest job id (also used as a rendezvous id and in paths); `[A-Za-z0-9._-]`.
pub const MAX_JOB_ID: usize = 128;
/// Longest script output tail an agent may report.
pub const MAX_OUTPUT_TAIL: usize = 16 * 1024;
/// Longest command id.
pub const MAX_COMMAND_ID: usize = 128;
/// Most argv entries in a job command.
pub const MAX_COMMAND_ARGS: usize = 256;
/// Most environment variables in a job.
pub const MAX_ENV_VARS: usize = 256;
/// Most bytes of a job's command (all argv entries) or env (all names and values), each.
pub const MAX_JOB_TEXT: usize = 64 * 1024;
/// Longest checkpoint URI or progress regex.
pub const MAX_JOB_FIELD: usize = 4096;
/// Most nodes a job's `allowed_nodes` may name (a Slurm allocation of this many hosts).
pub const MAX_ALLOWED_NODES: usize = 10_000;
/// How much of an agent-supplied text goes into a log line or an event.
pub const MAX_LOGGED: usize = 2048;
/// Most ranks a memory-tier report may name per step (and the most ranks of a job it counts).
pub const MAX_MEMORY_RANKS: usize = 65_536;
/// Checkpoints passed over that one recovery records (the newest; the count says the rest).
pub const MAX_SKIPPED_CHECKPOINTS: usize = 16;

fn invalid(field: &'static str, reason: impl Into<String>) -> CoreError {
    CoreError::InvalidField {
        field,
        reason: reason.into(),
    }
}

/// Why `bytes` bytes are too many, if they are more than `max`.
fn at_most_bytes(bytes: usize, max: usize) -> Result<(), String> {
    if bytes > max {
        return Err(format!("is {bytes} bytes long; at most {max} are allowed"));
    }
    Ok(())
}

/// Why `count` `things` (the verb and noun: "lists GPUs") are too many, if more than `max`.
fn at_most(count: usize, max: usize, verb: &str, things: &str) -> Result<(), String> {
    if count > max {
        return Err(format!(
            "{verb} {count} {things}; at most {max} are allowed"
        ));
    }
    Ok(())
}

fn max_len(field: &'static str, value: &str, max: usize) -> Result<(), CoreError> {
    at_most_bytes(value.len(), max).map_err(|reason| invalid(field, reason))
}

fn max_count(
    field: &'static str,
    count: usize,
    max: usize,
    (verb, things): (&str, &str),
) -> Result<(), CoreError> {
    at_most(count, max, verb, things).map_err(|reason| invalid(field, reason))
}

/// A hostname or an address: one word, no control characters.
fn one_word(field: &'static str, value: &str, max: usize) -> Result<(), CoreError> {
    max_len(field, value, max)?;
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(field, "must not hold spaces or control characters"));
    }
    Ok(())
}

/// Whether `id` is a valid node or job id: 1 to `max` characters of `[A-Za-z0-9._-]`.
pub fn is_identifier(id: &str, max: usize) -> bool {
    !id.is_empty()
        && id.len() <= max
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn identifier(field: &'static str, id: &str, max: usize) -> Result<(), CoreError> {
    max_len(field, id, max)?;
    if !is_identifier(id, max) {
        return Err(invalid(
            field,
            "must be 1 or more characters of [A-Za-z0-9._-]",
        ));
    }
    Ok(())
}

/// An agent-supplied unix time must be a plausible one: 0 (unset) up to the year 3000, so that
/// differences of two of them never overflow.
fn unix_ms(field: &'static str, at: i64) -> Result<(), CoreError> {
    const YEAR_3000_MS: i64 = 32_503_680_000_000;
    if !(0..=YEAR_3000_MS).contains(&at) {
        return Err(invalid(
            field,
            format!("{at} is not a unix time in milliseconds"),
        ));
    }
    Ok(())
}

/// A hello's fields.
pub fn check_hello(hello: &Hello) -> Result<(), CoreError> {
    identifier("hello.node_id", &hello.node_id, MAX_NODE_ID)?;
    one_word("hello.hostname", &hello.hostname, MAX_HOSTNAME)?;
    one_word("hello.advertise_address", &hello.address, MAX_ADDRESS)?;
    max_len("hello.boot_id", &hello.boot_id, MAX_SHORT_TEXT)?;
    max_len("hello.agent_version", &hello.agent_version, MAX_SHORT_TEXT)?;
    max_count("hello.gpus", hello.gpus.len(), MAX_GPUS, ("lists", "GPUs"))?;
    for gpu in &hello.gpus {
        max_len("hello.gpus.uuid", &gpu.uuid, MAX_SHORT_TEXT)?;
        max_len("hello.gpus.name", &gpu.name, MAX_SHORT_TEXT)?;
    }
    unix_ms("hello.sent_unix_ms", hello.sent_at)?;
    unix_ms("hello.agent_started_unix_ms", hello.agent_started_at)?;
    if let Some((job_id, ..)) = &hello.worker {
        identifier("hello.worker.job_id", job_id, MAX_JOB_ID)?;
    }
    Ok(())
}

/// A heartbeat's send time.
pub fn check_sent_at(sent_at: i64) -> Result<(), CoreError> {
    unix_ms("heartbeat.sent_unix_ms", sent_at)
}

/// A health summary (heartbeat or immediate report).
pub fn check_health(health: &HealthSummary) -> Result<(), CoreError> {
    max_count(
        "health.checks",
        health.checks.len(),
        MAX_HEALTH_CHECKS,
        ("holds", "checks"),
    )?;
    for check in &health.checks {
        max_len("health.checks.check", &check.check, MAX_SHORT_TEXT)?;
        max_len("health.checks.reason", &check.reason, MAX_REASON)?;
        unix_ms("health.checks.observed_unix_ms", check.observed_at)?;
    }
    Ok(())
}

/// A worker event.
pub fn check_worker_event(event: &WorkerEvent) -> Result<(), CoreError> {
    max_len("worker_event.job_id", &event.job_id, MAX_JOB_ID)?;
    unix_ms("worker_event.at_unix_ms", event.at)
}

/// A progress report.
pub fn check_progress(progress: &Progress) -> Result<(), CoreError> {
    max_len("progress.job_id", &progress.job_id, MAX_JOB_ID)?;
    at_most(
        progress.memory.len(),
        crate::checkpoint::MAX_MEMORY_HOLDINGS,
        "lists",
        "memory-tier steps",
    )
    .map_err(|reason| invalid("progress.memory", reason))?;
    for held in &progress.memory {
        at_most(held.ranks.len(), MAX_MEMORY_RANKS, "lists", "ranks")
            .and_then(|()| at_most(held.world as usize, MAX_MEMORY_RANKS, "has", "ranks"))
            .map_err(|reason| invalid("progress.memory.ranks", reason))?;
    }
    Ok(())
}

/// A script's result.
pub fn check_command_result(result: &CommandResult) -> Result<(), CoreError> {
    max_len(
        "command_result.command_id",
        &result.command_id,
        MAX_COMMAND_ID,
    )?;
    max_len("command_result.message", &result.message, MAX_REASON)?;
    max_len("command_result.output", &result.output, MAX_OUTPUT_TAIL)
}

/// A job spec's sizes (its meaning is checked by `JobSpec::validate`).
pub fn check_job_request(request: &JobRequest) -> Result<(), CoreError> {
    let invalid = |field: &'static str, reason: String| CoreError::InvalidJob { field, reason };
    if !request.job_id.is_empty() && !is_identifier(&request.job_id, MAX_JOB_ID) {
        return Err(invalid(
            "job_id",
            format!("must be 1 to {MAX_JOB_ID} characters of [A-Za-z0-9._-]"),
        ));
    }
    let command_bytes: usize = request.command.iter().map(String::len).sum();
    let env_bytes: usize = request.env.iter().map(|(k, v)| k.len() + v.len()).sum();
    let sizes = [
        (
            "command",
            at_most(request.command.len(), MAX_COMMAND_ARGS, "has", "arguments"),
        ),
        ("command", at_most_bytes(command_bytes, MAX_JOB_TEXT)),
        (
            "env",
            at_most(request.env.len(), MAX_ENV_VARS, "has", "variables"),
        ),
        ("env", at_most_bytes(env_bytes, MAX_JOB_TEXT)),
        (
            "checkpoint_uri",
            at_most_bytes(request.checkpoint_uri.len(), MAX_JOB_FIELD),
        ),
        (
            "progress_regex",
            at_most_bytes(request.progress_regex.len(), MAX_JOB_FIELD),
        ),
        (
            "warm_imports",
            at_most(
                request.warm_imports.len(),
                MAX_COMMAND_ARGS,
                "has",
                "modules",
            ),
        ),
        (
            "warm_imports",
            at_most_bytes(
                request.warm_imports.iter().map(String::len).sum(),
                MAX_JOB_FIELD,
            ),
        ),
        (
            "allowed_nodes",
            at_most(
                request.allowed_nodes.len(),
                MAX_ALLOWED_NODES,
                "names",
                "nodes",
            ),
        ),
    ];
    for (field, size) in sizes {
        size.map_err(|reason| invalid(field, reason))?;
    }
    Ok(())
}

/// The set of nodes a job may use (`allowed_nodes`): each a node id, and at least as many as
/// the job's `nodes` (an allocation smaller than the job can never run it).
pub(crate) fn allowed_nodes(request: &JobRequest) -> Result<BTreeSet<NodeId>, CoreError> {
    let invalid = |reason: String| CoreError::InvalidJob {
        field: "allowed_nodes",
        reason,
    };
    if let Some(bad) = (request.allowed_nodes.iter()).find(|n| !is_identifier(n, MAX_NODE_ID)) {
        return Err(invalid(format!(
            "{:?} is not a node id (1 to {MAX_NODE_ID} characters of [A-Za-z0-9._-])",
            truncated(bad, MAX_SHORT_TEXT)
        )));
    }
    let set: BTreeSet<NodeId> = request.allowed_nodes.iter().map(NodeId::from).collect();
    if !set.is_empty() && set.len() < request.nodes as usize {
        return Err(invalid(format!(
            "names {} nodes but the job needs {}",
            set.len(),
            request.nodes
        )));
    }
    Ok(set)
}

/// `text` cut to at most `max` bytes (on a character boundary), marked when cut: for logging
/// agent-supplied text.
pub fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{GpuInfo, Role};
    use crate::protocol::{HealthCheck, HealthState};

    fn hello(node_id: &str) -> Hello {
        Hello {
            node_id: node_id.into(),
            hostname: "gpu-01.example".into(),
            role: Role::Worker,
            address: "10.0.0.1".into(),
            boot_id: "b".into(),
            agent_version: "0.1.0".into(),
            gpus: vec![],
            sent_at: 1_700_000_000_000,
            agent_started_at: 1_700_000_000_000,
            worker: None,
        }
    }

    fn field_of(e: CoreError) -> &'static str {
        match e {
            CoreError::InvalidField { field, .. } | CoreError::InvalidJob { field, .. } => field,
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn node_ids_are_short_plain_names() {
        assert!(check_hello(&hello("node-a_1.rack2")).is_ok());
        for bad in ["", "a b", "a/b", "a;rm -rf /", "ä", &"x".repeat(129)] {
            let e = check_hello(&hello(bad)).expect_err(bad);
            assert_eq!(field_of(e), "hello.node_id", "{bad:?}");
        }
        assert!(check_hello(&hello(&"x".repeat(128))).is_ok());
        let big = check_hello(&hello(&"x".repeat(3 << 20))).expect_err("3 MB id");
        assert!(big.to_string().contains("hello.node_id"), "{big}");
        assert!(
            big.to_string().len() < 200,
            "the refusal does not echo the id"
        );
    }

    #[test]
    fn hello_sizes_and_times_are_bounded() {
        let mut h = hello("n1");
        h.hostname = "host; reboot".into();
        assert_eq!(
            field_of(check_hello(&h).expect_err("space")),
            "hello.hostname"
        );
        let mut h = hello("n1");
        h.address = "a".repeat(MAX_ADDRESS + 1);
        assert_eq!(
            field_of(check_hello(&h).expect_err("long")),
            "hello.advertise_address"
        );
        let mut h = hello("n1");
        h.gpus = vec![
            GpuInfo {
                index: 0,
                uuid: "u".into(),
                name: "n".into(),
                memory_bytes: 1,
            };
            MAX_GPUS + 1
        ];
        assert_eq!(field_of(check_hello(&h).expect_err("gpus")), "hello.gpus");
        for at in [i64::MIN, -1, i64::MAX] {
            let mut h = hello("n1");
            h.sent_at = at;
            assert_eq!(
                field_of(check_hello(&h).expect_err("time")),
                "hello.sent_unix_ms"
            );
        }
        let mut h = hello("n1");
        h.worker = Some(("../../etc".into(), crate::Generation(1), 1, true));
        assert_eq!(
            field_of(check_hello(&h).expect_err("job")),
            "hello.worker.job_id"
        );
    }

    #[test]
    fn health_reports_and_results_are_bounded() {
        let check = HealthCheck {
            check: "xid".into(),
            state: HealthState::Healthy,
            reason: String::new(),
            action: Default::default(),
            observed_at: 0,
        };
        let health = HealthSummary {
            state: HealthState::Healthy,
            checks: vec![check.clone(); MAX_HEALTH_CHECKS + 1],
        };
        assert_eq!(
            field_of(check_health(&health).expect_err("many")),
            "health.checks"
        );
        let health = HealthSummary {
            state: HealthState::Healthy,
            checks: vec![HealthCheck {
                reason: "r".repeat(MAX_REASON + 1),
                ..check
            }],
        };
        assert_eq!(
            field_of(check_health(&health).expect_err("long")),
            "health.checks.reason"
        );
        let result = CommandResult {
            command_id: "c".into(),
            ok: true,
            message: String::new(),
            output: "o".repeat(MAX_OUTPUT_TAIL + 1),
            exit_code: None,
            duration_ms: 0,
        };
        assert_eq!(
            field_of(check_command_result(&result).expect_err("tail")),
            "command_result.output"
        );
        assert_eq!(
            field_of(check_sent_at(i64::MIN).expect_err("time")),
            "heartbeat.sent_unix_ms"
        );
    }

    #[test]
    fn job_requests_are_bounded() {
        let ok = JobRequest {
            job_id: "train-1".into(),
            command: vec!["python".into(), "train.py".into()],
            nodes: 1,
            ..Default::default()
        };
        assert!(check_job_request(&ok).is_ok());
        let mut r = ok.clone();
        r.job_id = "a/../b".into();
        assert_eq!(field_of(check_job_request(&r).expect_err("id")), "job_id");
        let mut r = ok.clone();
        r.command = vec!["x".repeat(MAX_JOB_TEXT + 1)];
        assert_eq!(field_of(check_job_request(&r).expect_err("cmd")), "command");
        let mut r = ok.clone();
        r.env = (0..=MAX_ENV_VARS)
            .map(|i| (format!("V{i}"), String::new()))
            .collect();
        assert_eq!(field_of(check_job_request(&r).expect_err("env")), "env");
        let mut r = ok;
        r.progress_regex = "x".repeat(MAX_JOB_FIELD + 1);
        assert_eq!(
            field_of(check_job_request(&r).expect_err("regex")),
            "progress_regex"
        );
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncated("short", 10), "short");
        let cut = truncated(&"é".repeat(10), 5);
        assert!(cut.starts_with("éé…"), "{cut}");
        assert!(cut.contains("bytes cut"));
    }
}
