//! `holdfast upgrade-agents`: restarts agents batch by batch while jobs run (each agent
//! re-executes its binary, so a new one installed on disk takes over), checks every batch came
//! back healthy before the next, and stops at the first batch that did not.

use std::collections::BTreeMap;
use std::time::Duration;

use holdfast_proto::v1 as pb;

/// What a rolling upgrade did.
#[derive(Debug, Clone, Default)]
pub struct UpgradeReport {
    /// Nodes restarted and healthy again.
    pub upgraded: Vec<String>,
    /// Why the batch that failed is not healthy, per node (empty when all went well).
    pub problems: Vec<(String, String)>,
    /// Nodes not touched because an earlier batch failed.
    pub skipped: Vec<String>,
}

/// Nodes to restart, idle ones first (a bad build shows up before it touches training).
pub fn plan(nodes: &[pb::Node], only: &[String]) -> Vec<String> {
    let mut targets: Vec<&pb::Node> = nodes
        .iter()
        .filter(|n| n.connected && !matches!(n.state.as_str(), "fenced" | "retired"))
        .filter(|n| only.is_empty() || only.contains(&n.node_id))
        .collect();
    targets.sort_by_key(|n| (n.state == "allocated", n.node_id.clone()));
    targets.into_iter().map(|n| n.node_id.clone()).collect()
}

/// Why `after` is not (yet) a healthy restart of `before`; `None` when it is: a new agent
/// process, connected, not fenced, and still running the same worker of the same generation.
pub fn problem(before: &pb::Node, after: Option<&pb::Node>) -> Option<String> {
    let Some(after) = after else {
        return Some("the node disappeared".into());
    };
    if !after.connected {
        return Some("the agent has not reconnected".into());
    }
    if after.agent_started_unix_ms == before.agent_started_unix_ms {
        return Some("the agent has not restarted yet".into());
    }
    if matches!(after.state.as_str(), "fenced" | "retired" | "offline") {
        return Some(format!(
            "the node is {}: {}",
            after.state, after.fence_reason
        ));
    }
    if before.worker_pid != 0
        && (after.worker_pid != before.worker_pid || after.generation != before.generation)
    {
        return Some(format!(
            "its worker changed (pid {} gen {} → pid {} gen {}): the job was disturbed",
            before.worker_pid, before.generation, after.worker_pid, after.generation
        ));
    }
    let unhealthy = after
        .health
        .as_ref()
        .is_some_and(|h| h.state == pb::HealthState::Unhealthy as i32);
    unhealthy.then(|| "its health is unhealthy".to_string())
}

async fn nodes(client: &mut crate::client::Client) -> anyhow::Result<BTreeMap<String, pb::Node>> {
    let list = client
        .list_nodes(pb::ListNodesRequest::default())
        .await?
        .into_inner()
        .nodes;
    Ok(list.into_iter().map(|n| (n.node_id.clone(), n)).collect())
}

/// Restarts `batch_size` agents at a time, waiting up to `wait` for each batch.
pub async fn run(
    client: &mut crate::client::Client,
    batch_size: usize,
    wait: Duration,
    only: &[String],
    say: impl Fn(String),
) -> anyhow::Result<UpgradeReport> {
    let before = nodes(client).await?;
    let all: Vec<pb::Node> = before.values().cloned().collect();
    let targets = plan(&all, only);
    if targets.is_empty() {
        anyhow::bail!("no connected node to upgrade");
    }
    let mut report = UpgradeReport::default();
    let batches: Vec<&[String]> = targets.chunks(batch_size.max(1)).collect();
    for (i, batch) in batches.iter().enumerate() {
        say(format!(
            "batch {}/{}: restarting {}",
            i + 1,
            batches.len(),
            batch.join(", ")
        ));
        for node in batch.iter() {
            let request = pb::RestartAgentRequest {
                node_id: node.clone(),
                reason: format!("rolling upgrade, batch {}", i + 1),
            };
            if let Err(status) = client.restart_agent(request).await {
                report
                    .problems
                    .push((node.clone(), status.message().to_string()));
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = nodes(client).await?;
            let pending: Vec<(String, String)> = batch
                .iter()
                .filter_map(|n| problem(&before[n], now.get(n)).map(|p| (n.clone(), p)))
                .collect();
            if pending.is_empty() && report.problems.is_empty() {
                report.upgraded.extend(batch.iter().cloned());
                say(format!("batch {}/{}: healthy", i + 1, batches.len()));
                break;
            }
            if tokio::time::Instant::now() >= deadline || !report.problems.is_empty() {
                report.problems.extend(pending);
                report.skipped = batches[i + 1..]
                    .iter()
                    .flat_map(|b| b.iter().cloned())
                    .collect();
                return Ok(report);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, state: &str, started: i64, pid: u32) -> pb::Node {
        pb::Node {
            node_id: id.into(),
            state: state.into(),
            connected: true,
            agent_started_unix_ms: started,
            worker_pid: pid,
            generation: if pid == 0 { 0 } else { 1 },
            ..Default::default()
        }
    }

    #[test]
    fn idle_nodes_go_first_and_fenced_or_gone_ones_are_left_out() {
        let mut gone = node("e", "ready", 1, 0);
        gone.connected = false;
        let nodes = [
            node("a", "allocated", 1, 7),
            node("b", "ready", 1, 0),
            node("c", "fenced", 1, 0),
            node("d", "allocated", 1, 8),
            gone,
        ];
        assert_eq!(plan(&nodes, &[]), ["b", "a", "d"]);
        assert_eq!(plan(&nodes, &["d".into()]), ["d"]);
    }

    #[test]
    fn a_batch_is_healthy_only_with_a_new_agent_and_the_same_worker() {
        let before = node("a", "allocated", 1, 7);
        assert!(problem(&before, None).is_some());
        assert!(problem(&before, Some(&before))
            .unwrap()
            .contains("not restarted"));
        let restarted = node("a", "allocated", 2, 7);
        assert_eq!(problem(&before, Some(&restarted)), None);
        let relaunched = pb::Node {
            generation: 2,
            ..node("a", "allocated", 2, 9)
        };
        assert!(problem(&before, Some(&relaunched))
            .unwrap()
            .contains("disturbed"));
        let fenced = node("a", "fenced", 2, 0);
        assert!(problem(&before, Some(&fenced)).unwrap().contains("fenced"));
    }
}
