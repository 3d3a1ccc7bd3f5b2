//! holdfast's native launcher: the launch's command started once per local rank, each with
//! torchrun's environment contract, so a script written for `torchrun` (`init_process_group`
//! with `env://`) runs unchanged — with no rendezvous round and no launcher process between
//! the agent and the ranks.
//!
//! The ranks share one process group (the first rank leads it), so a stop's SIGTERM → grace →
//! SIGKILL reaches all of them; they write to one log, followed as one worker's. The worker has
//! failed as soon as one rank fails (the others are then killed with the group, as torchrun
//! tears down its local workers), and succeeded once every rank exited 0.

use std::process::ExitStatus;

use holdfast_proto::v1 as pb;

/// torchrun's variables for local rank `local_rank` of `launch` (see torch's
/// `torch/distributed/run.py`): global rank, world, this node's group, the rendezvous address
/// (node rank 0's host and the generation's fresh port) and the run id.
pub(super) fn rank_env(launch: &pb::Launch, local_rank: u32) -> Vec<(String, String)> {
    let nproc = launch.nproc_per_node.max(1);
    let rank = launch.node_rank * nproc + local_rank;
    let world = launch.nnodes * nproc;
    let mut env: Vec<(String, String)> = [
        ("RANK", rank.to_string()),
        ("LOCAL_RANK", local_rank.to_string()),
        ("WORLD_SIZE", world.to_string()),
        ("LOCAL_WORLD_SIZE", nproc.to_string()),
        ("GROUP_RANK", launch.node_rank.to_string()),
        ("GROUP_WORLD_SIZE", launch.nnodes.to_string()),
        ("ROLE_NAME", "default".to_string()),
        ("ROLE_RANK", rank.to_string()),
        ("ROLE_WORLD_SIZE", world.to_string()),
        ("MASTER_ADDR", launch.master_addr.clone()),
        ("MASTER_PORT", launch.master_port.to_string()),
        ("TORCHELASTIC_RUN_ID", launch.rdzv_id.clone()),
        ("TORCHELASTIC_RESTART_COUNT", "0".to_string()),
        ("TORCHELASTIC_MAX_RESTARTS", "0".to_string()),
        // Rank 0 hosts the store itself (there is no torchrun agent store to join).
        ("TORCHELASTIC_USE_AGENT_STORE", "False".to_string()),
        ("HOLDFAST_LOCAL_RANK", local_rank.to_string()),
        ("HOLDFAST_NPROC_PER_NODE", nproc.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // As torchrun does: several ranks on one host would oversubscribe its cores otherwise.
    if nproc > 1 && !launch.env.contains_key("OMP_NUM_THREADS") {
        env.push(("OMP_NUM_THREADS".into(), "1".into()));
    }
    env
}

/// How the worker ended, from its ranks' exits as they come: the first failure decides (the
/// rest are killed with the group); otherwise the last success. While the agent stops the
/// worker every rank is waited for (within the stop's grace), so each can finish its SIGTERM
/// handling — a checkpoint on the way out — before the group is killed.
#[derive(Debug, Default)]
pub(super) struct RankExits {
    /// Ranks still running.
    running: usize,
    /// The first rank to fail, which names the worker's end.
    first_failure: Option<ExitStatus>,
}

impl RankExits {
    pub(super) fn new(ranks: usize) -> RankExits {
        RankExits {
            running: ranks,
            first_failure: None,
        }
    }

    /// Records one rank's exit; `Some` once the worker as a whole has ended. `stopping`: the
    /// agent is stopping the worker, so a failure does not end it before the other ranks.
    pub(super) fn exited(&mut self, status: ExitStatus, stopping: bool) -> Option<ExitStatus> {
        self.running = self.running.saturating_sub(1);
        if !status.success() && self.first_failure.is_none() {
            self.first_failure = Some(status);
        }
        let end = self.first_failure.unwrap_or(status);
        (self.running == 0 || (self.first_failure.is_some() && !stopping)).then_some(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn env_of(launch: &pb::Launch, local_rank: u32) -> std::collections::HashMap<String, String> {
        rank_env(launch, local_rank).into_iter().collect()
    }

    #[test]
    fn every_rank_gets_torchruns_environment_contract() {
        let launch = pb::Launch {
            node_rank: 1,
            nnodes: 2,
            nproc_per_node: 4,
            master_addr: "10.0.0.1".into(),
            master_port: 29517,
            rdzv_id: "j-g3".into(),
            ..Default::default()
        };
        let env = env_of(&launch, 2);
        for (key, value) in [
            ("RANK", "6"),
            ("LOCAL_RANK", "2"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("GROUP_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29517"),
            ("TORCHELASTIC_RUN_ID", "j-g3"),
            ("OMP_NUM_THREADS", "1"),
        ] {
            assert_eq!(env.get(key).map(String::as_str), Some(value), "{key}");
        }
        // The job's own OMP_NUM_THREADS wins; one rank per node leaves it alone.
        let mut own = launch.clone();
        own.env.insert("OMP_NUM_THREADS".into(), "4".into());
        assert!(!env_of(&own, 0).contains_key("OMP_NUM_THREADS"));
        let single = pb::Launch {
            nproc_per_node: 1,
            ..launch
        };
        assert!(!env_of(&single, 0).contains_key("OMP_NUM_THREADS"));
        assert_eq!(env_of(&single, 0)["RANK"], "1");
    }

    #[test]
    fn the_first_failing_rank_ends_the_worker_and_success_needs_every_rank() {
        let ok = ExitStatus::from_raw(0);
        let failed = ExitStatus::from_raw(1 << 8);
        let mut exits = RankExits::new(3);
        assert_eq!(exits.exited(ok, false), None);
        assert_eq!(exits.exited(failed, false), Some(failed));
        let mut exits = RankExits::new(2);
        assert_eq!(exits.exited(ok, false), None);
        assert_eq!(exits.exited(ok, false), Some(ok));
        // While the agent stops the worker, every rank is waited for; the first failure names it.
        let terminated = ExitStatus::from_raw(15);
        let mut exits = RankExits::new(2);
        assert_eq!(exits.exited(terminated, true), None);
        assert_eq!(exits.exited(ok, true), Some(terminated));
    }
}
