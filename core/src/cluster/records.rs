//! The core's durable state as records, and back after a restart: what must survive a crash
//! (nodes, jobs with their generations, incidents, the term) and what a restarted coordinator
//! gives every node (a reconnect grace) instead of remembering it.

use super::*;

/// The stored header of the state: the term and the counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    term: Term,
    next_job: u64,
    /// The id the next incident gets. Absent in state saved before retention existed: then
    /// every incident ever opened is still stored, and the highest id tells it.
    #[serde(default)]
    next_incident: u64,
    /// The highest generation of an archived job (0 before retention existed).
    #[serde(default)]
    archived_generation: Generation,
}

/// A record the steps since the last save changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum RecordKey {
    Meta,
    Node(NodeId),
    Job(JobId),
    Incident(u64),
}

/// What changed since the last [`Cluster::take_changes`].
#[derive(Debug, Clone, Default)]
pub(super) struct Dirty {
    /// A change that did not name its records: everything is encoded.
    all: bool,
    keys: std::collections::BTreeSet<RecordKey>,
}

/// Encoded changes of the durable state (see [`Cluster::take_changes`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// `records` is the whole state: a stored record missing from it was deleted.
    pub complete: bool,
    /// Records by key: `Some(bytes)` written, `None` gone.
    pub records: Vec<(String, Option<Vec<u8>>)>,
}

impl Cluster {
    /// Changes when something that must survive a restart changed.
    pub fn durable_version(&self) -> u64 {
        self.durable_version
    }

    /// A durable change whose records are not named: the next [`Cluster::take_changes`]
    /// encodes the whole state (restores, term changes, rare operator actions).
    pub(super) fn touch(&mut self) {
        self.durable_version += 1;
        self.dirty.all = true;
    }

    /// A durable change of one node's record.
    pub(super) fn touch_node(&mut self, id: &str) {
        self.durable_version += 1;
        self.dirty.keys.insert(RecordKey::Node(id.into()));
    }

    /// A durable change of one job's record.
    pub(super) fn touch_job(&mut self, id: &str) {
        self.durable_version += 1;
        self.dirty.keys.insert(RecordKey::Job(id.into()));
    }

    /// A durable change of one incident's record.
    pub(super) fn touch_incident(&mut self, id: u64) {
        self.durable_version += 1;
        self.dirty.keys.insert(RecordKey::Incident(id));
    }

    /// A durable change of the header (term, job counter).
    pub(super) fn touch_meta(&mut self) {
        self.durable_version += 1;
        self.dirty.keys.insert(RecordKey::Meta);
    }

    /// Makes the next [`Cluster::take_changes`] encode the whole state: the shell's periodic
    /// full comparison, which catches a durable change made without naming its record.
    pub fn mark_all_changed(&mut self) {
        self.dirty.all = true;
    }

    /// The records changed since the last call, encoded: only the records the steps since
    /// then named (so a hello at 10,000 nodes encodes one node, not 10,000), or the whole
    /// state when a change did not name its records ([`Changes::complete`]). Clears the
    /// set. An encoding failure keeps the set, so the next call tries again.
    pub fn take_changes(&mut self) -> Result<Changes, crate::records::CorruptRecord> {
        if self.dirty.all {
            let records = self.to_records()?;
            self.dirty = Dirty::default();
            return Ok(Changes {
                complete: true,
                records: records.into_iter().map(|(k, v)| (k, Some(v))).collect(),
            });
        }
        let mut records = Vec::with_capacity(self.dirty.keys.len());
        for key in &self.dirty.keys {
            records.push(self.encode_one(key)?);
        }
        self.dirty.keys.clear();
        Ok(Changes {
            complete: false,
            records,
        })
    }

    /// Whether a durable change is waiting for [`Cluster::take_changes`].
    pub fn has_changes(&self) -> bool {
        self.dirty.all || !self.dirty.keys.is_empty()
    }

    fn encode_one(
        &self,
        key: &RecordKey,
    ) -> Result<(String, Option<Vec<u8>>), crate::records::CorruptRecord> {
        let (name, value) = match key {
            RecordKey::Meta => ("meta".to_string(), Some(serde_json::to_vec(&self.meta()))),
            RecordKey::Node(id) => (
                format!("node/{id}"),
                self.nodes.get(id).map(serde_json::to_vec),
            ),
            RecordKey::Job(id) => (
                format!("job/{id}"),
                self.jobs.get(id).map(serde_json::to_vec),
            ),
            RecordKey::Incident(id) => (
                format!("incident/{id:010}"),
                self.incident_by_id(*id).map(serde_json::to_vec),
            ),
        };
        match value {
            None => Ok((name, None)),
            Some(Ok(bytes)) => Ok((name, Some(bytes))),
            Some(Err(e)) => Err(crate::records::CorruptRecord {
                key: name,
                reason: e.to_string(),
            }),
        }
    }

    /// Incident `id` (ids are positions + 1; searched when they are not).
    fn incident_by_id(&self, id: u64) -> Option<&Incident> {
        let at = usize::try_from(id.saturating_sub(1)).ok();
        at.and_then(|at| self.incidents.get(at))
            .filter(|i| i.id == id)
            .or_else(|| self.incidents.iter().find(|i| i.id == id))
    }

    fn meta(&self) -> Meta {
        Meta {
            term: self.term,
            next_job: self.next_job,
            next_incident: self.next_incident,
            archived_generation: self.archived_generation,
        }
    }

    /// The state as stored records (see `holdfast_coordinator::store`).
    pub fn to_records(&self) -> Result<crate::records::Records, crate::records::CorruptRecord> {
        let encode = |key: &str, value: Result<Vec<u8>, serde_json::Error>| {
            value.map_err(|e| crate::records::CorruptRecord {
                key: key.to_string(),
                reason: e.to_string(),
            })
        };
        let mut records = crate::records::Records::new();
        records.insert(
            "meta".into(),
            encode("meta", serde_json::to_vec(&self.meta()))?,
        );
        for (id, node) in self.nodes.iter() {
            let key = format!("node/{id}");
            let value = encode(&key, serde_json::to_vec(node))?;
            records.insert(key, value);
        }
        for (id, job) in &self.jobs {
            let key = format!("job/{id}");
            let value = encode(&key, serde_json::to_vec(job))?;
            records.insert(key, value);
        }
        for incident in &self.incidents {
            let key = format!("incident/{:010}", incident.id);
            let value = encode(&key, serde_json::to_vec(incident))?;
            records.insert(key, value);
        }
        Ok(records)
    }

    /// Rebuilds the core from stored records after a restart (or a leader change): the term
    /// goes up so agents refuse whatever the previous coordinator still sends, every node counts
    /// as away with `reconnect_grace_ms` to come back before it is treated as lost, the
    /// training's stall clocks restart, and a checkpoint resolution that was in flight is asked
    /// for again. Nothing else is redone: a generation already launched is not launched anew.
    /// Returns `None` when the records are empty (a fresh store).
    pub fn restore(
        config: CoordinatorConfig,
        records: &crate::records::Records,
        now: UnixMillis,
    ) -> Result<Option<(Cluster, Vec<Command>)>, crate::records::CorruptRecord> {
        fn decode<T: serde::de::DeserializeOwned>(
            key: &str,
            bytes: &[u8],
        ) -> Result<T, crate::records::CorruptRecord> {
            serde_json::from_slice(bytes).map_err(|e| crate::records::CorruptRecord {
                key: key.to_string(),
                reason: e.to_string(),
            })
        }
        let Some(meta_bytes) = records.get("meta") else {
            return Ok(None);
        };
        let meta: Meta = decode("meta", meta_bytes)?;
        let mut cluster = Cluster::new(config);
        cluster.term = meta.term.next();
        cluster.next_job = meta.next_job;
        cluster.archived_generation = meta.archived_generation;
        let grace = cluster.config.reconnect_grace_ms as i64;
        for (key, bytes) in records {
            if let Some(id) = key.strip_prefix("node/") {
                let mut node: NodeRecord = decode(key, bytes)?;
                node.last_heartbeat_at = now;
                let gone_for_good = matches!(
                    node.state,
                    NodeState::Fenced { .. } | NodeState::Retired | NodeState::Offline
                );
                node.link = if gone_for_good {
                    Link::Down
                } else {
                    Link::Away { until: now + grace }
                };
                cluster.nodes.insert(id.into(), node);
            } else if let Some(id) = key.strip_prefix("job/") {
                let mut job: Job = decode(key, bytes)?;
                // The stall clock starts after the grace: a rank whose node has not come back
                // yet is judged by the grace (agent lost), not as a hang.
                for rank in &mut job.ranks {
                    rank.last_progress_at = now + grace;
                }
                cluster.jobs.insert(id.into(), job);
            } else if key.starts_with("incident/") {
                cluster.incidents.push(decode(key, bytes)?);
            }
        }
        cluster.incidents.sort_by_key(|i| i.id);
        // Never below an id still stored: ids are not reused after incidents are archived.
        let after_stored = cluster
            .incidents
            .last()
            .map_or(1, |i| i.id.saturating_add(1));
        cluster.next_incident = meta.next_incident.max(after_stored);
        let mut fx = Vec::new();
        let resolving: Vec<JobId> = cluster
            .jobs
            .values()
            .filter(|j| {
                matches!(
                    j.state,
                    JobState::Pending
                        | JobState::Recovering(job::RecoveryPhase::Relaunching {
                            retry_at: None,
                            ..
                        })
                )
            })
            .map(|j| j.id.clone())
            .collect();
        for job_id in resolving {
            fx.push(cluster.resolve_effect(&job_id));
        }
        let live: Vec<String> = cluster
            .jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .map(|j| {
                let phase = j.phase();
                let sep = if phase.is_empty() { "" } else { "/" };
                format!("{} {}{sep}{phase} g{}", j.id, j.state.name(), j.generation)
            })
            .collect();
        fx.push(cluster.log_event(
            "",
            "",
            format!(
                "coordinator restored: term {}, {} nodes, {} jobs, {} incidents; live jobs: {}",
                cluster.term,
                cluster.nodes.len(),
                cluster.jobs.len(),
                cluster.incidents.len(),
                if live.is_empty() {
                    "none".to_string()
                } else {
                    live.join(", ")
                }
            ),
            now,
        ));
        cluster.touch();
        Ok(Some((cluster, fx)))
    }

    /// Sets the term (an HA leader takes the term its election gave it).
    pub fn set_term(&mut self, term: Term) {
        if term != self.term {
            self.term = term;
            self.touch_meta();
        }
    }
}
