//! What the cluster tests share: agents, operators and the clock as inputs to
//! [`Cluster::step`], and readers of the commands it returns. Everything goes through `step`, so
//! the work it leaves for the end of a step (replacements) is done as in production.
//!
//! Agents' clocks agree with the coordinator's: every input an agent sends is stamped `now`.

use super::*;
use crate::checkpoint::FencedGeneration;
use crate::protocol::{CommandResult, HealthCheck, HealthState};

/// The job every test runs (the first id the coordinator hands out).
pub(super) const JOB: &str = "job-1";

/// The request id operator calls are made with.
const OPERATOR_REQUEST: u64 = 1_000;

/// The pid every started worker reports.
pub(super) const PID: u32 = 42;

// ----- building a cluster ------------------------------------------------------------------------

/// A cluster with `nodes` connected at t=0, on connections 1, 2, … in order.
pub(super) fn cluster_of(config: CoordinatorConfig, nodes: &[(&str, Role)]) -> Cluster {
    let mut c = Cluster::new(config);
    for (conn, (id, role)) in (1..).zip(nodes) {
        hello(&mut c, id, *role, conn, 0);
    }
    c
}

/// Workers `ids`, connected at t=0.
pub(super) fn workers(config: CoordinatorConfig, ids: &[&str]) -> Cluster {
    let nodes: Vec<(&str, Role)> = ids.iter().map(|id| (*id, Role::Worker)).collect();
    cluster_of(config, &nodes)
}

/// Two workers (a, b) and one spare (s), connected at t=0 with the default settings.
pub(super) fn three_nodes() -> Cluster {
    cluster_of(
        CoordinatorConfig::default(),
        &[("a", Role::Worker), ("b", Role::Worker), ("s", Role::Spare)],
    )
}

/// [`three_nodes`] running [`JOB`] on a and b (stall timeout 3 s), started at t=10.
pub(super) fn running_job() -> Cluster {
    let mut c = three_nodes();
    let request = JobRequest {
        stall_timeout_s: 3.0,
        ..job(2)
    };
    run_job(&mut c, request, 10);
    c
}

/// A job of `nodes` nodes running `train`.
pub(super) fn job(nodes: u32) -> JobRequest {
    JobRequest {
        command: vec!["train".into()],
        nodes,
        ..Default::default()
    }
}

/// Submits `request` at `now`, resolves it to a fresh start at `now + 10` and starts every rank
/// at `now + 20`: the job runs generation 1. Checks what every first launch must be: one per
/// rank, in rank order, on one rendezvous at rank 0's address.
pub(super) fn run_job(c: &mut Cluster, request: JobRequest, now: UnixMillis) -> Job {
    let (job, fx) = submit(c, request, now).unwrap();
    assert_eq!(resolves(&fx), [(job.id.as_str(), &[][..])], "{fx:?}");
    let fx = resolved(c, &job.id, Ok(None), now + 10);
    let launched = launches(&fx);
    let nodes: Vec<&str> = launched.iter().map(|(node, _)| *node).collect();
    assert_eq!(nodes, job.nodes(), "one launch per rank, in rank order");
    let master_addr = &c.nodes[&job.nodes()[0]].address;
    for (rank, (_, l)) in launched.iter().enumerate() {
        assert_eq!(
            (l.generation, l.node_rank as usize, l.nnodes as usize),
            (Generation(1), rank, nodes.len())
        );
        assert_eq!(&l.master_addr, master_addr);
        assert_eq!(l.master_port, launched[0].1.master_port);
        assert_eq!(l.rdzv_id, format!("{}-g1", job.id));
    }
    for node in job.nodes() {
        worker(c, &node, 1, Started, now + 20);
    }
    assert_eq!(c.jobs[&job.id].state, JobState::Running);
    c.jobs[&job.id].clone()
}

// ----- agents ------------------------------------------------------------------------------------

/// What the agent of node `id` says when it connects at `now`: it runs nothing.
pub(super) fn agent(id: &str, role: Role, now: UnixMillis) -> Hello {
    Hello {
        node_id: id.into(),
        hostname: format!("{id}.local"),
        role,
        address: format!("{id}.cluster"),
        boot_id: "boot".into(),
        agent_version: "test".into(),
        gpus: Vec::new(),
        sent_at: now,
        worker: None,
        agent_started_at: 0,
    }
}

/// An agent says `hello` on connection `conn`: the welcome and what follows it, or the refusal.
pub(super) fn connect(
    c: &mut Cluster,
    conn: u64,
    hello: Hello,
    now: UnixMillis,
) -> Answer<Welcome> {
    let input = |request| Input::Hello {
        request,
        conn,
        hello,
    };
    ask(c, conn, input, now).map(|(reply, fx)| match reply {
        Reply::Welcome(w) => (w, fx),
        other => panic!("a hello answered with {other:?}"),
    })
}

/// Node `id`'s agent connects on `conn`, running nothing, and is welcomed.
pub(super) fn hello(
    c: &mut Cluster,
    id: &str,
    role: Role,
    conn: u64,
    now: UnixMillis,
) -> Vec<Command> {
    connect(c, conn, agent(id, role, now), now).unwrap().1
}

/// Worker `id`'s agent connects on `conn` running generation `generation` of [`JOB`].
pub(super) fn hello_running(
    c: &mut Cluster,
    id: &str,
    conn: u64,
    generation: u64,
    now: UnixMillis,
) -> Vec<Command> {
    let hello = Hello {
        worker: Some((JOB.into(), Generation(generation), PID, true)),
        ..agent(id, Role::Worker, now)
    };
    connect(c, conn, hello, now).unwrap().1
}

/// A heartbeat from `node` sent at `sent_at` (agent clock), carrying `health` and `echo`,
/// arriving at `now`.
pub(super) fn heartbeat_with(
    c: &mut Cluster,
    node: &str,
    sent_at: UnixMillis,
    (health, echo): (Option<HealthSummary>, Option<ClockEcho>),
    now: UnixMillis,
) -> Vec<Command> {
    let input = Input::Heartbeat {
        node: node.into(),
        sent_at,
        health,
        echo,
    };
    c.step(input, now)
}

/// A heartbeat from `node`, without health news.
pub(super) fn heartbeat(c: &mut Cluster, node: &str, now: UnixMillis) -> Vec<Command> {
    heartbeat_with(c, node, now, (None, None), now)
}

/// A health summary of the one check `check` in `state`, asking for `action` for `reason`.
pub(super) fn one_check(
    check: &str,
    state: HealthState,
    reason: &str,
    action: HealthAction,
    observed_at: UnixMillis,
) -> HealthSummary {
    let check = HealthCheck {
        check: check.into(),
        state,
        reason: reason.into(),
        action,
        observed_at,
    };
    HealthSummary {
        state,
        checks: vec![check],
    }
}

/// `node`'s agent reporting `health` on its own, between heartbeats.
pub(super) fn health_report(node: &str, health: HealthSummary) -> Input {
    let node = node.into();
    Input::HealthReport { node, health }
}

/// The clock at `now`, after a heartbeat from each of `alive` (the others stay silent).
pub(super) fn tick_alive(c: &mut Cluster, alive: &[&str], now: UnixMillis) -> Vec<Command> {
    for node in alive {
        heartbeat(c, node, now);
    }
    tick(c, now)
}

/// The clock at `now`, the coordinator having observed all along: the ticks in between are
/// left out, and only the inputs a test shows happened in between (see [`tick_after_pause`]
/// for a coordinator that could not observe).
pub(super) fn tick(c: &mut Cluster, now: UnixMillis) -> Vec<Command> {
    c.last_tick_at = Some(now - c.config.tick_ms as i64);
    c.step(Input::Tick, now)
}

/// The first tick at `now` after the coordinator could not observe since its last tick.
pub(super) fn tick_after_pause(c: &mut Cluster, now: UnixMillis) -> Vec<Command> {
    c.step(Input::Tick, now)
}

/// `node`'s live stream closes (without goodbye).
pub(super) fn disconnect(c: &mut Cluster, node: &str, now: UnixMillis) -> Vec<Command> {
    let conn = c.nodes[node].link.conn().expect("the node is connected");
    c.step(
        Input::Disconnected {
            node: node.into(),
            conn,
        },
        now,
    )
}

/// `node`'s agent says goodbye, then its stream closes.
pub(super) fn leave(c: &mut Cluster, node: &str, restarting: bool, now: UnixMillis) {
    let input = Input::Goodbye {
        node: node.into(),
        restarting,
    };
    c.step(input, now);
    disconnect(c, node, now + 1);
}

/// What a worker of [`JOB`] reports.
#[derive(Debug, Clone, Copy)]
pub(super) enum Report {
    /// It started (pid [`PID`]).
    Started,
    /// Its agent stopped it (SIGTERM), as a `Stop` asked.
    Stopped,
    /// SIGKILL ended it, not its agent.
    Killed,
    /// It exited with code 1 on its own.
    Crashed,
    /// It reached this step.
    Step(u64),
}
pub(super) use Report::{Crashed, Killed, Started, Step, Stopped};

/// `node`'s worker of [`JOB`] generation `generation` reports `what`.
pub(super) fn worker(
    c: &mut Cluster,
    node: &str,
    generation: u64,
    what: Report,
    now: UnixMillis,
) -> Vec<Command> {
    let exited = |code, signal, stopped_by_agent| WorkerEventKind::Exited {
        code,
        signal,
        stopped_by_agent,
    };
    let kind = match what {
        Started => WorkerEventKind::Started { pid: PID },
        Stopped => exited(None, Some(15), true),
        Killed => exited(None, Some(9), false),
        Crashed => exited(Some(1), None, false),
        Step(step) => {
            let job_id = JOB.into();
            let progress = Progress {
                job_id,
                generation: Generation(generation),
                step,
                memory: Vec::new(),
                state_fallback: String::new(),
            };
            return c.step(
                Input::Progress {
                    node: node.into(),
                    progress,
                },
                now,
            );
        }
    };
    let event = WorkerEvent {
        job_id: JOB.into(),
        generation: Generation(generation),
        at: now,
        kind,
    };
    c.step(
        Input::Worker {
            node: node.into(),
            event,
        },
        now,
    )
}

/// `node`'s agent reports the result of script `command_id`: passed, or failed with `output`
/// (its message ends with the output's last line, as the agent writes it).
pub(super) fn answer(
    c: &mut Cluster,
    node: &str,
    command_id: &str,
    ok: bool,
    output: &str,
    now: UnixMillis,
) -> Vec<Command> {
    let result = CommandResult {
        command_id: command_id.into(),
        ok,
        message: if ok {
            "passed".into()
        } else {
            format!(
                "failed with exit code 1: {}",
                output.lines().last().unwrap_or("")
            )
        },
        output: output.into(),
        exit_code: Some(if ok { 0 } else { 1 }),
        duration_ms: 5,
    };
    let input = Input::ScriptResult {
        node: node.into(),
        result,
    };
    c.step(input, now)
}

/// Node `id` says hello and passes every lifecycle script it is sent: it ends ready.
pub(super) fn join(c: &mut Cluster, id: &str, role: Role, conn: u64, now: UnixMillis) {
    let mut fx = hello(c, id, role, conn, now);
    while let Some((command_id, _)) = scripts_sent(&fx, id).pop() {
        fx = answer(c, id, &command_id, true, "ok", now);
    }
    assert_eq!(c.nodes[id].state, NodeState::Ready);
}

// ----- the shell's answers -----------------------------------------------------------------------

/// The checkpoint store answered for `job_id`.
pub(super) fn resolved(
    c: &mut Cluster,
    job_id: &str,
    result: Result<Option<Checkpoint>, String>,
    now: UnixMillis,
) -> Vec<Command> {
    let input = Input::CheckpointResolved {
        job_id: job_id.into(),
        result,
        skipped: Vec::new(),
    };
    c.step(input, now)
}

// ----- operators ---------------------------------------------------------------------------------

/// A request's reply and the commands after it, or its refusal.
pub(super) type Answer<T> = Result<(T, Vec<Command>), CoreError>;

/// Steps request `request` (made by `input`), which is answered at once: the reply comes first
/// and once, and a refused request does nothing else.
fn ask(
    c: &mut Cluster,
    request: u64,
    input: impl FnOnce(u64) -> Input,
    now: UnixMillis,
) -> Answer<Reply> {
    let mut fx = c.step(input(request), now);
    assert!(!fx.is_empty(), "no reply to request {request}");
    let Command::Reply { request: to, reply } = fx.remove(0) else {
        panic!("the reply to request {request} is not first: {fx:?}")
    };
    assert_eq!(to, request);
    assert!(
        replies(&fx, request).is_empty(),
        "request {request} answered twice: {fx:?}"
    );
    if reply.is_err() {
        assert!(fx.is_empty(), "a refused request did something: {fx:?}");
    }
    reply.map(|reply| (reply, fx))
}

/// Steps an operator's call, answered at once (see [`ask`]).
fn operator(c: &mut Cluster, input: impl FnOnce(u64) -> Input, now: UnixMillis) -> Answer<Reply> {
    ask(c, OPERATOR_REQUEST, input, now)
}

fn job_reply((reply, fx): (Reply, Vec<Command>)) -> (Job, Vec<Command>) {
    let Reply::Job(job) = reply else {
        panic!("expected a job, got {reply:?}")
    };
    (*job, fx)
}

pub(super) fn submit(c: &mut Cluster, job: JobRequest, now: UnixMillis) -> Answer<Job> {
    operator(c, |request| Input::Submit { request, job }, now).map(job_reply)
}

pub(super) fn stop_job(c: &mut Cluster, job_id: &str, now: UnixMillis) -> Answer<Job> {
    let job_id = JobId::from(job_id);
    operator(c, |request| Input::StopJob { request, job_id }, now).map(job_reply)
}

fn node_reply((reply, fx): (Reply, Vec<Command>)) -> (NodeRecord, Vec<Command>) {
    match reply {
        Reply::Node(node) => (*node, fx),
        other => panic!("expected a node, got {other:?}"),
    }
}

pub(super) fn cordon(
    c: &mut Cluster,
    node: &str,
    why: &str,
    now: UnixMillis,
) -> Answer<NodeRecord> {
    let (node, reason) = (NodeId::from(node), why.to_string());
    let input = |request| Input::Cordon {
        request,
        node,
        reason,
    };
    operator(c, input, now).map(node_reply)
}

pub(super) fn uncordon(c: &mut Cluster, node: &str, now: UnixMillis) -> Answer<NodeRecord> {
    let node = NodeId::from(node);
    operator(c, |request| Input::Uncordon { request, node }, now).map(node_reply)
}

/// An operator asks for `node`'s deep check as request `request`; the report comes later.
pub(super) fn check_node(
    c: &mut Cluster,
    node: &str,
    request: u64,
    now: UnixMillis,
) -> Vec<Command> {
    let node = NodeId::from(node);
    c.step(Input::CheckNode { request, node }, now)
}

// ----- reading commands --------------------------------------------------------------------------

/// What `$items` holds that matches `$pat` (and `$guard`), as `$out`.
macro_rules! pick {
    ($items:expr, $pat:pat $(if $guard:expr)? => $out:expr) => {
        IntoIterator::into_iter($items)
            .filter_map(|item| match item {
                $pat $(if $guard)? => Some($out),
                _ => None,
            })
            .collect()
    };
}

/// The answers to `request`.
pub(super) fn replies(fx: &[Command], request: u64) -> Vec<&Result<Reply, CoreError>> {
    pick!(fx, Command::Reply { request: r, reply } if *r == request => reply)
}

/// Every command sent to an agent, with its node.
pub(super) fn sends(fx: &[Command]) -> Vec<(&str, &AgentCommand)> {
    pick!(fx, Command::Send { node, command } => (node.as_str(), command))
}

/// The commands sent to `node`'s agent.
pub(super) fn sent<'a>(fx: &'a [Command], node: &str) -> Vec<&'a AgentCommand> {
    pick!(sends(fx), (n, command) if n == node => command)
}

/// The launches, with their nodes.
pub(super) fn launches(fx: &[Command]) -> Vec<(&str, &Launch)> {
    pick!(sends(fx), (node, AgentCommand::Launch(l)) => (node, l))
}

/// The one launch sent to `node`, if any.
pub(super) fn launch_to<'a>(fx: &'a [Command], node: &str) -> Option<&'a Launch> {
    let mine: Vec<&Launch> = pick!(launches(fx), (n, l) if n == node => l);
    assert!(mine.len() <= 1, "two launches to {node}: {fx:?}");
    mine.first().copied()
}

/// The stops, as (node, generation).
pub(super) fn stops(fx: &[Command]) -> Vec<(&str, u64)> {
    pick!(sends(fx), (node, AgentCommand::Stop(s)) => (node, s.generation.get()))
}

/// The nodes told they are fenced.
pub(super) fn fences(fx: &[Command]) -> Vec<&str> {
    pick!(sends(fx), (node, AgentCommand::Fence { .. }) => node)
}

/// The scripts sent to `node`, as (command id, script).
pub(super) fn scripts_sent(fx: &[Command], node: &str) -> Vec<(String, String)> {
    pick!(sent(fx, node), AgentCommand::RunScript(r) => (r.command_id.clone(), r.script.clone()))
}

/// The checkpoint resolutions asked for, as (job, fenced generations).
pub(super) fn resolves(fx: &[Command]) -> Vec<(&str, &[FencedGeneration])> {
    pick!(fx, Command::ResolveCheckpoint { job_id, fenced, .. } => (job_id.as_str(), &fenced[..]))
}

/// The nodes whose streams the shell is told to close.
pub(super) fn disconnects(fx: &[Command]) -> Vec<&str> {
    pick!(fx, Command::Disconnect { node, .. } => node.as_str())
}

/// The hosts asked of the provider, as (job, count).
pub(super) fn provisions(fx: &[Command]) -> Vec<(&str, u32)> {
    pick!(fx, Command::Provision { job_id, count, .. } => (job_id.as_str(), *count))
}

/// The nodes handed to the provider's `fence`.
pub(super) fn fenced_hosts(fx: &[Command]) -> Vec<&str> {
    pick!(fx, Command::FenceHost { node, .. } => node.as_str())
}

/// The events of `kind` published.
pub(super) fn events(fx: &[Command], kind: EventKind) -> Vec<&Event> {
    pick!(fx, Command::Publish(event) if event.kind == kind => event)
}
