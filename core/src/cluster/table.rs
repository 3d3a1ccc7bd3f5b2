//! The node registry's table: node records looked up by id in a hash map, and walked in id
//! order as a sorted map would walk them. Every heartbeat and progress report looks its node
//! up; at 100,000 nodes a sorted map of id strings costs a dozen string comparisons per
//! lookup, most of them cache misses. What is walked in order (the tick's pass, the records,
//! the operators' lists) sees the same order as before.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::NodeRecord;
use crate::NodeId;

/// Node records by id: looked up by hash, walked in id order. Nodes are added, never removed
/// (fenced and retired ones stay).
#[derive(Clone, Default)]
pub struct NodeTable {
    /// The records, in the order they were added.
    slots: Vec<NodeRecord>,
    /// Each id's slot.
    by_id: HashMap<NodeId, usize>,
    /// The slots in id order.
    order: BTreeMap<NodeId, usize>,
}

impl NodeTable {
    /// An empty table.
    pub fn new() -> NodeTable {
        NodeTable::default()
    }

    /// How many nodes it holds.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The record of node `id`.
    pub fn get<Q>(&self, id: &Q) -> Option<&NodeRecord>
    where
        NodeId: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.by_id.get(id).map(|&slot| &self.slots[slot])
    }

    /// The record of node `id`, to change.
    pub fn get_mut<Q>(&mut self, id: &Q) -> Option<&mut NodeRecord>
    where
        NodeId: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.by_id.get(id).map(|&slot| &mut self.slots[slot])
    }

    /// Whether node `id` is known.
    pub fn contains_key<Q>(&self, id: &Q) -> bool
    where
        NodeId: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.by_id.contains_key(id)
    }

    /// Adds or replaces the record of node `id`; the one it replaced.
    pub fn insert(&mut self, id: NodeId, record: NodeRecord) -> Option<NodeRecord> {
        if let Some(&slot) = self.by_id.get(&id) {
            return Some(std::mem::replace(&mut self.slots[slot], record));
        }
        let slot = self.slots.len();
        self.slots.push(record);
        self.by_id.insert(id.clone(), slot);
        self.order.insert(id, slot);
        None
    }

    /// The record of node `id`, added by `new` when there is none.
    pub fn get_or_insert_with(
        &mut self,
        id: NodeId,
        new: impl FnOnce() -> NodeRecord,
    ) -> &mut NodeRecord {
        let slot = match self.by_id.get(&id) {
            Some(&slot) => slot,
            None => {
                self.insert(id, new());
                self.slots.len() - 1
            }
        };
        &mut self.slots[slot]
    }

    /// The ids, in order.
    pub fn keys(&self) -> impl Iterator<Item = &NodeId> + '_ {
        self.order.keys()
    }

    /// The records, in id order.
    pub fn values(&self) -> impl Iterator<Item = &NodeRecord> + '_ {
        self.order.values().map(|&slot| &self.slots[slot])
    }

    /// The records, in id order, to change.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut NodeRecord> + '_ {
        let mut records: Vec<Option<&mut NodeRecord>> = self.slots.iter_mut().map(Some).collect();
        (self.order.values()).filter_map(move |&slot| records.get_mut(slot).and_then(Option::take))
    }

    /// Calls `f` with each record, in id order, to change: a pass over every node without
    /// the list of references `values_mut` builds (at 100,000 nodes, ten times a second).
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut NodeRecord)) {
        for &slot in self.order.values() {
            f(&mut self.slots[slot]);
        }
    }

    /// (id, record) pairs, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &NodeRecord)> + '_ {
        (self.order.iter()).map(|(id, &slot)| (id, &self.slots[slot]))
    }
}

impl<Q> std::ops::Index<&Q> for NodeTable
where
    NodeId: Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    type Output = NodeRecord;

    /// The record of a node that must be known (panics otherwise, as a map's index does).
    fn index(&self, id: &Q) -> &NodeRecord {
        match self.get(id) {
            Some(record) => record,
            None => panic!("no node record for the id"),
        }
    }
}

impl FromIterator<(NodeId, NodeRecord)> for NodeTable {
    fn from_iter<I: IntoIterator<Item = (NodeId, NodeRecord)>>(records: I) -> NodeTable {
        let mut table = NodeTable::new();
        for (id, record) in records {
            table.insert(id, record);
        }
        table
    }
}

impl PartialEq for NodeTable {
    fn eq(&self, other: &NodeTable) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for NodeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Stored as the map of records by id it replaced, in id order.
impl Serialize for NodeTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for NodeTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<NodeTable, D::Error> {
        let records = BTreeMap::<NodeId, NodeRecord>::deserialize(deserializer)?;
        Ok(records.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::workers;
    use super::*;
    use crate::CoordinatorConfig;

    #[test]
    fn nodes_added_in_any_order_are_walked_and_stored_in_id_order() {
        let mut c = workers(CoordinatorConfig::default(), &["w2", "a1", "w10", "b"]);
        let ids: Vec<String> = c.nodes.keys().map(|id| id.to_string()).collect();
        assert_eq!(ids, ["a1", "b", "w10", "w2"]);
        let walked: Vec<String> = c.nodes.values().map(|n| n.id.to_string()).collect();
        assert_eq!(walked, ids);
        let mut changed = Vec::new();
        c.nodes.for_each_mut(|n| changed.push(n.id.to_string()));
        assert_eq!(changed, ids);
        let mutably: Vec<String> = c.nodes.values_mut().map(|n| n.id.to_string()).collect();
        assert_eq!(mutably, ids);
        assert_eq!(c.nodes.get("w10").map(|n| n.id.as_str()), Some("w10"));
        assert!(c.nodes.get("w1").is_none() && !c.nodes.contains_key("w1"));

        // Stored exactly as the sorted map it replaced, and read back the same.
        let map: BTreeMap<NodeId, NodeRecord> = (c.nodes.iter())
            .map(|(id, n)| (id.clone(), n.clone()))
            .collect();
        let stored = serde_json::to_string(&c.nodes).expect("encodes");
        assert_eq!(stored, serde_json::to_string(&map).expect("encodes"));
        let back: NodeTable = serde_json::from_str(&stored).expect("decodes");
        assert_eq!(
            back.keys().collect::<Vec<_>>(),
            c.nodes.keys().collect::<Vec<_>>()
        );
    }
}
