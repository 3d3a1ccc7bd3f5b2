//! [`Rig`]: what a test does with a running cluster, whichever kind it is — the loopback one of
//! `holdfast demo` ([`LocalCluster`], real processes on this host) or the one on
//! network-namespace hosts ([`NetnsCluster`](crate::e2e::NetnsCluster)). And the operator-API
//! helpers written once against it: read a job or a node, wait until it is in some state,
//! follow a job to its end.
//!
//! On a netns rig, operator calls must come from the control host's namespace: await these
//! inside [`NetnsCluster::block_on`](crate::e2e::NetnsCluster::block_on) or
//! [`NetnsCluster::control`](crate::e2e::NetnsCluster::control).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use holdfast_cli::client::Client;
use holdfast_cli::demo::LocalCluster;
use holdfast_cli::follow;
use holdfast_proto::v1 as pb;
use nix::sys::signal::Signal;

use crate::wait_for;

/// A running cluster a test drives: a coordinator, the agents it started, their workers.
pub trait Rig {
    /// Where the rig keeps logs (`<name>.log`) and the agents' state directories.
    fn dir(&self) -> &Path;

    /// The coordinator's URL, as agents and operators are given it.
    fn coordinator_url(&self) -> &str;

    /// Starts the agent of `node` with `role` ("worker" or "spare") and `extra` flags.
    fn start_agent(&mut self, node: &str, role: &str, extra: &[&str]) -> anyhow::Result<()>;

    /// SIGKILLs everything of a host, as a power loss would: its agent and its workers.
    fn kill_host(&mut self, node: &str) -> anyhow::Result<()>;

    /// Sends `signal` to the training process on `node`; returns its pid.
    fn signal_worker(&self, node: &str, signal: Signal) -> anyhow::Result<u32>;

    /// An operator API client.
    fn client(&self) -> impl Future<Output = anyhow::Result<Client>> + Send;

    /// Waits until `count` nodes are connected and ready.
    fn wait_ready(
        &self,
        count: usize,
        within: Duration,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Stops every process the rig started, workers included.
    fn shutdown(&mut self);

    /// The state directory of `node`'s agent (holds `worker.json` and the inject file).
    fn state_dir(&self, node: &str) -> PathBuf {
        self.dir().join("nodes").join(node)
    }

    /// A node's memory state tier (its agent's `memory_tier_dir`): what its host would keep in
    /// RAM, gone with the host.
    fn memory_tier_dir(&self, node: &str) -> PathBuf {
        self.state_dir(node).join("memory")
    }

    /// The log of a process the rig started: `coordinator`, a node's agent (its workers'
    /// output included), …
    fn log_path(&self, name: &str) -> PathBuf {
        self.dir().join(format!("{name}.log"))
    }

    /// Appends one fault line to the node's inject file (its agent must run with
    /// `--enable-fault-injection`): `xid <code> [gpu <i>]`, `ecc-dbe [gpu <i>]`, …
    fn inject(&self, node: &str, fault: &str) -> anyhow::Result<()> {
        holdfast_cli::demo::inject(&self.state_dir(node), fault)
    }

    /// Starts `workers` worker agents `node-1`… and `spares` spare agents `spare-1`…, each with
    /// `extra` flags.
    fn start_nodes(&mut self, workers: usize, spares: usize, extra: &[&str]) -> anyhow::Result<()> {
        for i in 1..=workers {
            self.start_agent(&format!("node-{i}"), "worker", extra)?;
        }
        for i in 1..=spares {
            self.start_agent(&format!("spare-{i}"), "spare", extra)?;
        }
        Ok(())
    }

    /// The last `lines` lines of a log (see [`Rig::log_path`]).
    fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Prints the end of each named log to stderr: what to look at when a test failed.
    fn print_log_tails(&self, names: &[&str]) {
        for name in names {
            eprintln!("--- {name}.log (last lines)\n{}", self.log_tail(name, 30));
        }
    }
}

impl Rig for LocalCluster {
    fn dir(&self) -> &Path {
        &self.dir
    }

    fn coordinator_url(&self) -> &str {
        &self.addr
    }

    fn start_agent(&mut self, node: &str, role: &str, extra: &[&str]) -> anyhow::Result<()> {
        LocalCluster::start_agent(self, node, role, extra)
    }

    fn kill_host(&mut self, node: &str) -> anyhow::Result<()> {
        LocalCluster::kill_host(self, node)
    }

    fn signal_worker(&self, node: &str, signal: Signal) -> anyhow::Result<u32> {
        LocalCluster::signal_worker(self, node, signal)
    }

    fn client(&self) -> impl Future<Output = anyhow::Result<Client>> + Send {
        LocalCluster::client(self)
    }

    fn wait_ready(
        &self,
        count: usize,
        within: Duration,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        LocalCluster::wait_ready(self, count, within)
    }

    fn shutdown(&mut self) {
        LocalCluster::shutdown(self)
    }

    fn state_dir(&self, node: &str) -> PathBuf {
        LocalCluster::state_dir(self, node)
    }
}

/// A local cluster of `holdfast` processes (`exe`) in `dir`: the coordinator with
/// `coordinator_args`, `workers` worker and `spares` spare agents (see [`Rig::start_nodes`]),
/// all ready.
pub async fn local_cluster(
    exe: &Path,
    dir: &Path,
    coordinator_args: &[&str],
    workers: usize,
    spares: usize,
) -> LocalCluster {
    let mut cluster = LocalCluster::start(exe, dir, coordinator_args)
        .await
        .expect("the coordinator starts");
    cluster
        .start_nodes(workers, spares, &[])
        .expect("the agents start");
    cluster
        .wait_ready(workers + spares, Duration::from_secs(20))
        .await
        .expect("the agents are ready");
    cluster
}

/// A coordinator alone in `dir` (the test starts its agents) and `dir/agent.toml` holding
/// `agent_config` (fault injection, probe timings): the value of `--config` for the agents
/// that use it.
pub async fn coordinator_with_agent_config(
    exe: &Path,
    dir: &Path,
    agent_config: &str,
) -> (LocalCluster, String) {
    let cluster = LocalCluster::start(exe, dir, &[])
        .await
        .expect("the coordinator starts");
    let config = crate::write_file(dir, "agent.toml", agent_config);
    (cluster, config)
}

/// How many nodes are connected and ready; 0 while the coordinator cannot be asked (not
/// started yet, restarting).
pub async fn ready_count(rig: &impl Rig) -> usize {
    let Ok(mut client) = rig.client().await else {
        return 0;
    };
    match client.list_nodes(pb::ListNodesRequest::default()).await {
        Ok(reply) => reply
            .into_inner()
            .nodes
            .iter()
            .filter(|n| n.connected && n.state == "ready")
            .count(),
        Err(_) => 0,
    }
}

/// Every node the coordinator knows.
pub async fn nodes(rig: &impl Rig) -> Vec<pb::Node> {
    client_nodes(&rig.client().await.expect("an operator client")).await
}

/// Every node the coordinator knows, asked through `client` (one with a token, over TLS).
pub async fn client_nodes(client: &Client) -> Vec<pb::Node> {
    let request = pb::ListNodesRequest::default();
    let reply = client.clone().list_nodes(request).await;
    reply.expect("listing nodes").into_inner().nodes
}

/// Node `id`, if the coordinator knows it.
pub async fn find_node(rig: &impl Rig, id: &str) -> Option<pb::Node> {
    nodes(rig).await.into_iter().find(|n| n.node_id == id)
}

/// Node `id`; the coordinator must know it.
pub async fn node(rig: &impl Rig, id: &str) -> pb::Node {
    find_node(rig, id)
        .await
        .unwrap_or_else(|| panic!("the coordinator does not know node {id}"))
}

/// Waits until node `id` is known and satisfies `cond`; fails after `within` naming `what`
/// and showing the node.
pub async fn wait_node(
    rig: &impl Rig,
    id: &str,
    within: Duration,
    what: &str,
    cond: impl Fn(&pb::Node) -> bool,
) -> pb::Node {
    wait_for(within, || async {
        match find_node(rig, id).await {
            Some(n) if cond(&n) => Ok(n),
            Some(n) => Err(format!("{what} on {id}: {n:#?}")),
            None => Err(format!("{what}: no node {id}")),
        }
    })
    .await
}

/// Waits until `client` sees `node` ready, for a client of its own (a token, TLS)
/// rather than the rig's.
pub async fn wait_node_ready(client: &Client, node: &str, within: Duration) {
    wait_for(within, || async {
        let nodes = client_nodes(client).await;
        crate::check(
            nodes
                .iter()
                .any(|n| n.node_id == node && n.state == "ready"),
            || format!("{node} not ready: {nodes:?}"),
        )
    })
    .await
}

/// Submits `spec`; the coordinator must accept it.
pub async fn submit(rig: &impl Rig, spec: pb::JobSpec) -> pb::Job {
    let mut client = rig.client().await.expect("an operator client");
    follow::submit(&mut client, spec)
        .await
        .expect("the job is accepted")
}

/// Job `id` as the coordinator has it now.
pub async fn job(rig: &impl Rig, id: &str) -> pb::Job {
    let mut client = rig.client().await.expect("an operator client");
    client
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .unwrap_or_else(|s| panic!("reading job {id}: {s:?}"))
        .into_inner()
}

/// Waits until job `id` satisfies `cond`; fails after `within` showing the job.
pub async fn wait_job(
    rig: &impl Rig,
    id: &str,
    within: Duration,
    cond: impl Fn(&pb::Job) -> bool,
) -> pb::Job {
    wait_for(within, || async {
        let j = job(rig, id).await;
        if cond(&j) {
            Ok(j)
        } else {
            Err(format!("job {id}: {j:?}"))
        }
    })
    .await
}

/// The incidents recorded for job `id`.
pub async fn incidents(rig: &impl Rig, id: &str) -> Vec<pb::Incident> {
    let mut client = rig.client().await.expect("an operator client");
    holdfast_cli::client::incidents(&mut client, id)
        .await
        .expect("listing incidents")
}

/// Follows job `id` to its end (at most `within`) on one operator connection; returns it
/// with its incidents.
pub async fn finish(rig: &impl Rig, id: &str, within: Duration) -> (pb::Job, Vec<pb::Incident>) {
    let mut client = rig.client().await.expect("an operator client");
    let done = follow::follow(&mut client, id, within, |_| {}, false)
        .await
        .unwrap_or_else(|e| panic!("following job {id}: {e:#}"));
    (done, incidents(rig, id).await)
}
