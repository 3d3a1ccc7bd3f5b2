//! Finding a job's rank by its node without a pass over the ranks: every heartbeat's evidence
//! and every progress report names a node, and at 100,000 nodes a linear search of a 256-rank
//! job per report was the largest cost of the decision core.

use super::{Job, Rank};

/// The ranks' nodes by hash, kept beside `Job::ranks` (never stored: it is rebuilt from them).
/// A hit is checked against the rank's node, so a hash collision never finds a wrong rank; a
/// miss is trusted only while the index covers every rank (built when the ranks were made or
/// changed). Debug builds check every answer against a pass over the ranks.
#[derive(Clone, Default)]
pub(crate) struct RankIndex {
    /// (hash of the node id, rank), sorted: ranks that share a node come in rank order.
    by_hash: Vec<(u64, u32)>,
    /// Each rank's node hash, in rank order (for the job's durable mark).
    by_rank: Vec<u64>,
}

impl RankIndex {
    /// The index of `ranks` as they are now.
    pub(crate) fn of(ranks: &[Rank]) -> RankIndex {
        let by_rank: Vec<u64> = ranks.iter().map(|r| node_hash(&r.node)).collect();
        let mut by_hash: Vec<(u64, u32)> = (by_rank.iter().enumerate())
            .map(|(i, &h)| (h, i as u32))
            .collect();
        by_hash.sort_unstable();
        RankIndex { by_hash, by_rank }
    }

    /// Each rank's node hash, in rank order, while the index covers `ranks`. A step that
    /// changes a rank's node rebuilds the index, so marks taken from these before and after a
    /// step see the change.
    pub(crate) fn node_hashes(&self, ranks: &[Rank]) -> Option<&[u64]> {
        self.covers(ranks).then_some(self.by_rank.as_slice())
    }

    /// Whether the index was built for ranks of this length (a restored or shrunk job's is
    /// not, until it is rebuilt).
    pub(crate) fn covers(&self, ranks: &[Rank]) -> bool {
        self.by_hash.len() == ranks.len()
    }

    /// The ranks of `ranks` that `node` runs, in rank order.
    pub(crate) fn all<'a>(
        &'a self,
        ranks: &'a [Rank],
        node: &'a str,
    ) -> impl Iterator<Item = usize> + 'a {
        let hash = node_hash(node);
        let from = self.by_hash.partition_point(|&(h, _)| h < hash);
        self.by_hash[from..]
            .iter()
            .take_while(move |&&(h, _)| h == hash)
            .map(|&(_, rank)| rank as usize)
            .filter(move |&rank| ranks.get(rank).is_some_and(|r| r.node == node))
    }

    /// The first rank of `ranks` that `node` runs, as a pass over them would find it.
    pub(crate) fn find(&self, ranks: &[Rank], node: &str) -> Option<usize> {
        self.all(ranks, node).next()
    }
}

impl Job {
    /// Rebuilds the index [`Job::rank_of`] looks ranks up in: after a rank's node changed, or
    /// when it does not cover the ranks (a job restored from its record).
    pub(crate) fn index_ranks(&mut self) {
        self.rank_index = RankIndex::of(&self.ranks);
    }

    /// Rebuilds the rank index when it does not cover the ranks (a restored job's is empty).
    pub(crate) fn ensure_rank_index(&mut self) {
        if !self.rank_index.covers(&self.ranks) {
            self.index_ranks();
        }
    }

    /// The ranks whose node is one of `nodes`, each once per time its node is named: looked
    /// up node by node when they are fewer than the ranks, else one pass over the ranks.
    pub(crate) fn ranks_on(&self, nodes: &[crate::NodeId]) -> Vec<usize> {
        if nodes.len() < self.ranks.len() && self.rank_index.covers(&self.ranks) {
            return (nodes.iter())
                .flat_map(|n| self.rank_index.all(&self.ranks, n))
                .collect();
        }
        let named: std::collections::HashSet<&str> = nodes.iter().map(|n| n.as_str()).collect();
        (0..self.ranks.len())
            .filter(|&i| named.contains(self.ranks[i].node.as_str()))
            .collect()
    }
}

impl PartialEq for RankIndex {
    /// Always equal: the index is derived from the ranks, which the job compares itself.
    fn eq(&self, _: &RankIndex) -> bool {
        true
    }
}

impl std::fmt::Debug for RankIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RankIndex({} ranks)", self.by_hash.len())
    }
}

/// FNV-1a over the id's bytes: fixed (no per-process seed) and cheap for short host names.
pub(crate) fn node_hash(node: &str) -> u64 {
    node.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::plain_spec;
    use super::*;
    use crate::NodeId;

    fn job_on(nodes: &[&str]) -> Job {
        let nodes = nodes.iter().copied().map(NodeId::from).collect();
        Job::new("j".into(), plain_spec(3), nodes, 0)
    }

    #[test]
    fn a_rank_is_found_as_a_pass_over_the_ranks_finds_it() {
        let mut job = job_on(&["a", "b", "a"]);
        assert_eq!(job.rank_of("a"), Some(0));
        assert_eq!(job.rank_of("b"), Some(1));
        assert_eq!(job.rank_of("c"), None);
        assert_eq!(job.ranks_on(&["a".into()]), [0, 2]);
        // Fewer names than ranks: looked up name by name; else one pass over the ranks.
        assert_eq!(job.ranks_on(&["b".into(), "a".into()]), [1, 0, 2]);
        assert_eq!(
            job.ranks_on(&["c".into(), "b".into(), "a".into()]),
            [0, 1, 2]
        );

        // A replaced node: found once the ranks are indexed again (the step does it).
        job.ranks[1].node = "c".into();
        job.index_ranks();
        assert_eq!(job.rank_of("c"), Some(1));
        assert_eq!(job.rank_of("b"), None);
    }

    #[test]
    fn a_restored_job_is_searched_until_it_is_indexed() {
        let job = job_on(&["a", "b"]);
        let stored = serde_json::to_string(&job).expect("encodes");
        assert!(!stored.contains("rank_index"), "{stored}");
        let mut back: Job = serde_json::from_str(&stored).expect("decodes");
        assert!(!back.rank_index.covers(&back.ranks));
        assert_eq!(back.rank_of("b"), Some(1));
        back.ensure_rank_index();
        assert!(back.rank_index.covers(&back.ranks));
        assert_eq!(back.rank_of("b"), Some(1));
        assert_eq!(back, job);
    }
}
