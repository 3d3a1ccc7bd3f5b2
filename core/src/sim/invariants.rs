//! What must hold of the core's state at every moment of a run, and the check that its durable
//! records round-trip through a restore.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde_json::Value;

use super::{Sim, START_MS};
use crate::cluster::Cluster;
use crate::incident::Incident;
use crate::job::JobState;
use crate::node::NodeState;

/// When the sim checks its invariants by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvariantChecks {
    /// The state invariants after every core step (every input and tick).
    pub every_input: bool,
    /// The state invariants after every tick (redundant with `every_input`).
    pub every_tick: bool,
    /// The records round-trip every this many ticks; 0: only in [`Sim::check_invariants`].
    pub records_every_ticks: u64,
}

impl Default for InvariantChecks {
    /// Everything, all the time: right for clusters of a few nodes.
    fn default() -> Self {
        InvariantChecks {
            every_input: true,
            every_tick: true,
            records_every_ticks: 1,
        }
    }
}

impl InvariantChecks {
    /// The state invariants after every tick and the records round-trip every
    /// `records_every_ticks`: for large clusters, where checking after each of the hundreds of
    /// thousands of inputs would cost more than the run.
    pub fn per_tick(records_every_ticks: u64) -> InvariantChecks {
        InvariantChecks {
            every_input: false,
            every_tick: true,
            records_every_ticks,
        }
    }

    /// No automatic checks.
    pub fn off() -> InvariantChecks {
        InvariantChecks {
            every_input: false,
            every_tick: false,
            records_every_ticks: 0,
        }
    }
}

impl Sim {
    /// Checks every invariant now, the records round-trip included; panics naming each one
    /// violated.
    pub fn check_invariants(&mut self) {
        let mut violations = self.state_violations();
        violations.extend(self.records_violations());
        self.stats.records_checks += 1;
        self.fail_on(violations);
    }

    /// Every invariant violated now (the records round-trip included), without panicking.
    pub fn violations(&mut self) -> Vec<String> {
        let mut violations = self.state_violations();
        violations.extend(self.records_violations());
        violations
    }

    pub(super) fn check_state(&mut self) {
        let violations = self.state_violations();
        self.fail_on(violations);
    }

    pub(super) fn check_records(&mut self) {
        self.stats.records_checks += 1;
        let violations = self.records_violations();
        self.fail_on(violations);
    }

    fn fail_on(&self, violations: Vec<String>) {
        if !violations.is_empty() {
            panic!(
                "sim invariant violated at t=+{} ms:\n  {}",
                self.now - START_MS,
                violations.join("\n  ")
            );
        }
    }

    /// The invariants of the state (cheap: linear in nodes, ranks and incidents). Updates the
    /// highest generation seen per job.
    fn state_violations(&mut self) -> Vec<String> {
        let c = &self.cluster;
        let mut v = Vec::new();
        // node → the live job one of whose ranks it holds. Hashed (the check runs every tick
        // over thousands of ranks); only membership is asked, so the order does not matter.
        let mut holders: FastMap<&str, &str> = FastMap::default();
        holders.reserve(c.nodes.len());
        for job in c.jobs.values().filter(|j| !j.state.is_terminal()) {
            for (i, rank) in job.ranks.iter().enumerate() {
                if rank.node.is_empty() {
                    v.push(format!("live job {} has rank {i} with no node", job.id));
                    continue;
                }
                if rank.needs_node {
                    continue;
                }
                if let Some(other) = holders.insert(&rank.node, &job.id) {
                    v.push(format!(
                        "node {} holds ranks in {other} and {} (rank {i})",
                        rank.node, job.id
                    ));
                }
            }
        }
        let mut rank_nodes_known = 0;
        for node in c.nodes.values() {
            let holds = holders.get(node.id.as_str()).copied();
            rank_nodes_known += usize::from(holds.is_some());
            match (&node.state, holds) {
                (NodeState::Allocated { job_id }, Some(job)) if job_id == job => {}
                // A cordoned node keeps running its job.
                (NodeState::Cordoned { .. }, Some(_)) => {}
                (state, Some(job)) => v.push(format!(
                    "node {} holds a rank of {job} but is {}{}",
                    node.id,
                    state.name(),
                    match state {
                        NodeState::Allocated { job_id } => format!(" to {job_id}"),
                        _ => String::new(),
                    }
                )),
                (NodeState::Allocated { job_id }, None) => match c.jobs.get(job_id) {
                    None => v.push(format!(
                        "node {} is allocated to unknown job {job_id}",
                        node.id
                    )),
                    Some(job) if job.state.is_terminal() => v.push(format!(
                        "node {} is allocated to {job_id}, which is {}",
                        node.id,
                        job.state.name()
                    )),
                    Some(_) => v.push(format!(
                        "node {} is allocated to {job_id} but holds none of its ranks",
                        node.id
                    )),
                },
                (_, None) => {}
            }
        }
        if rank_nodes_known != holders.len() {
            v.push(format!(
                "{} ranks of live jobs are on nodes the core does not know",
                holders.len() - rank_nodes_known
            ));
        }
        for incident in &c.incidents {
            incident_violations(c, incident, &mut v);
        }
        for job in c.jobs.values() {
            let seen = self.generations.entry(job.id.clone()).or_default();
            if job.generation < *seen {
                v.push(format!(
                    "job {} went back from generation {} to {}",
                    job.id, *seen, job.generation
                ));
            }
            *seen = (*seen).max(job.generation);
        }
        v
    }

    /// `to_records` → `restore` → `to_records` gives the same records, apart from what
    /// `restore` changes on purpose: the term (one more) and the ranks' progress clocks.
    fn records_violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let records = match self.cluster.to_records() {
            Ok(r) => r,
            Err(e) => return vec![format!("the state cannot be stored: {e}")],
        };
        let restored = match Cluster::restore(self.config.clone(), &records, self.now) {
            Ok(Some((cluster, _))) => cluster,
            Ok(None) => return vec!["the stored records restore to nothing".into()],
            Err(e) => return vec![format!("the stored records cannot be restored: {e}")],
        };
        let again = match restored.to_records() {
            Ok(r) => r,
            Err(e) => return vec![format!("the restored state cannot be stored: {e}")],
        };
        let keys: Vec<&String> = records.keys().collect();
        let keys_again: Vec<&String> = again.keys().collect();
        if keys != keys_again {
            v.push(format!(
                "restore changed the record keys: {} before, {} after",
                keys.len(),
                keys_again.len()
            ));
            return v;
        }
        for (key, bytes) in &records {
            if again[key] == *bytes && key != "meta" {
                continue;
            }
            let (Ok(mut before), Ok(mut after)) = (
                serde_json::from_slice::<Value>(bytes),
                serde_json::from_slice::<Value>(&again[key]),
            ) else {
                v.push(format!("record {key} is not JSON"));
                continue;
            };
            if key == "meta" {
                let term = |m: &Value| m.get("term").and_then(Value::as_u64);
                if term(&after) != term(&before).map(|t| t + 1) {
                    v.push(format!(
                        "restore took term {:?} to {:?}, not one more",
                        term(&before),
                        term(&after)
                    ));
                }
                for m in [&mut before, &mut after] {
                    if let Some(o) = m.as_object_mut() {
                        o.remove("term");
                    }
                }
            } else if key.starts_with("job/") {
                for j in [&mut before, &mut after] {
                    forget_progress_clocks(j);
                }
            }
            if before != after {
                v.push(format!(
                    "record {key} changed in a restore:\n    before {before}\n    after  {after}"
                ));
            }
        }
        v
    }
}

/// FNV-1a: a cheap hasher for the check's scratch maps of short ids.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

fn forget_progress_clocks(job: &mut Value) {
    if let Some(ranks) = job.get_mut("ranks").and_then(Value::as_array_mut) {
        for rank in ranks {
            if let Some(r) = rank.as_object_mut() {
                r.remove("last_progress_at");
            }
        }
    }
}

/// An incident's phases are stamped in order, and an open incident is explained by its job's
/// recovery: pending or recovering, launching once the incident is past its replacement,
/// running once it is past its relaunch (it closes with the first progress past the resumed
/// step) of the generation it relaunched.
fn incident_violations(c: &Cluster, i: &Incident, v: &mut Vec<String>) {
    let stamps = [
        ("detected", Some(i.detected_at)),
        ("fenced", i.fenced_at),
        ("replaced", i.replaced_at),
        ("relaunched", i.relaunched_at),
        ("resumed", i.resumed_at),
    ];
    let mut last: Option<(&str, i64)> = None;
    let mut gap: Option<&str> = None;
    for (name, at) in stamps {
        match (at, gap) {
            (Some(_), Some(missing)) => v.push(format!(
                "incident {} is stamped {name} but not {missing}",
                i.id
            )),
            (None, None) => gap = Some(name),
            _ => {}
        }
        if let Some(at) = at {
            if let Some((prev, t)) = last {
                if at < t {
                    v.push(format!("incident {} was {name} before it was {prev}", i.id));
                }
            }
            last = Some((name, at));
        }
    }
    if !i.is_open() {
        return;
    }
    let Some(job) = c.jobs.get(i.job_id.as_str()) else {
        v.push(format!("incident {} is of unknown job {}", i.id, i.job_id));
        return;
    };
    // Only progress of the generation it relaunched closes it: a running job at another
    // generation leaves it open for good.
    let explained = match &job.state {
        JobState::Pending | JobState::Recovering(_) => true,
        JobState::Launching => i.replaced_at.is_some(),
        JobState::Running => i.relaunched_at.is_some() && i.to_generation == Some(job.generation),
        JobState::Succeeded | JobState::Failed { .. } | JobState::Stopped => false,
    };
    if !explained {
        v.push(format!(
            "incident {} ({} on {}, {}) is open in phase {} while job {} is {} at generation {}",
            i.id,
            i.cause,
            i.node_id,
            i.action.code(),
            i.phase(),
            job.id,
            job.state.name(),
            job.generation
        ));
    }
}
