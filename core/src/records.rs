//! The core's durable state as records: one per thing under a string key (`meta`,
//! `node/<id>`, `job/<id>`, `incident/<n>`). The coordinator's store keeps them; the core turns
//! itself into records ([`crate::cluster::Cluster::to_records`]) and back
//! ([`crate::cluster::Cluster::restore`]).

use std::collections::BTreeMap;

/// Records by key: the serialized state of the core.
pub type Records = BTreeMap<String, Vec<u8>>;

/// A record that cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state record {key} is corrupt: {reason}")]
pub struct CorruptRecord {
    /// The record's key.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}
