//! The SQLite store's key index, kept in memory as etcd keeps its own: for every key, the
//! revisions of its writes since the last compaction. The file then needs one row per write
//! (`log`, keyed by revision) and no key-ordered table or index beside it, so a write appends
//! one row instead of updating three B-trees.
//!
//! Readers see a revision `R` no higher than the store's published revision, and the writer
//! only ever appends revisions above that, so a reader can share the index with a writer that
//! is mid-batch: whatever it finds at or below `R` is committed. Compaction is the one change
//! to history below `R`; see [`KeyIndex::compact`].

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::Revision;

/// One write of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Version {
    /// The revision of the write (its `log` row).
    pub revision: Revision,
    /// The revision that created the key's incarnation this write belongs to.
    pub create_revision: Revision,
    pub deleted: bool,
}

/// Every key's writes, oldest first.
#[derive(Default)]
pub(super) struct KeyIndex {
    keys: BTreeMap<Box<str>, Vec<Version>>,
}

impl KeyIndex {
    /// Records a write; revisions must rise.
    pub fn push(&mut self, key: &str, version: Version) {
        match self.keys.get_mut(key) {
            Some(versions) => versions.push(version),
            None => {
                self.keys.insert(key.into(), vec![version]);
            }
        }
    }

    /// Forgets the writes above `revision` (those of a transaction that did not commit).
    pub fn truncate_after(&mut self, revision: Revision) {
        self.keys.retain(|_, versions| {
            versions.retain(|v| v.revision <= revision);
            !versions.is_empty()
        });
    }

    /// The key's live version at `at`: its latest write at or before it, unless a delete.
    pub fn live_at(&self, key: &str, at: Revision) -> Option<Version> {
        live_at(self.keys.get(key)?, at)
    }

    /// Live keys under `prefix` from `low` on (inclusive) at `at`, in key order, at most
    /// `limit` of them (`None`: all).
    pub fn range_at(
        &self,
        prefix: &str,
        low: &str,
        at: Revision,
        limit: Option<usize>,
    ) -> Vec<(Box<str>, Version)> {
        let mut found = Vec::new();
        let from = low.max(prefix);
        for (key, versions) in self
            .keys
            .range::<str, _>((Bound::Included(from), Bound::Unbounded))
        {
            if !key.starts_with(prefix) || limit.is_some_and(|limit| found.len() >= limit) {
                break;
            }
            if let Some(version) = live_at(versions, at) {
                found.push((key.clone(), version));
            }
        }
        found
    }

    /// The revisions a compaction to `revision` removes (see [`compacted_len`]).
    pub fn compactable(&self, revision: Revision) -> Vec<Revision> {
        self.keys
            .values()
            .flat_map(|versions| &versions[..compacted_len(versions, revision)])
            .map(|v| v.revision)
            .collect()
    }

    /// Removes what [`compactable`](Self::compactable) named. Called only once the store
    /// refuses reads below `revision`, so no reader can miss what goes.
    pub fn compact(&mut self, revision: Revision) {
        self.keys.retain(|_, versions| {
            versions.drain(..compacted_len(versions, revision));
            !versions.is_empty()
        });
    }
}

/// How many of a key's oldest writes a compaction to `revision` removes: every write before
/// its latest one below `revision`, and that one too if it is a delete (what a read at
/// `revision` or later, or a later event's previous value, still needs stays).
fn compacted_len(versions: &[Version], revision: Revision) -> usize {
    let below = versions.partition_point(|v| v.revision < revision);
    match below.checked_sub(1) {
        Some(latest) if !versions[latest].deleted => latest,
        _ => below,
    }
}

fn live_at(versions: &[Version], at: Revision) -> Option<Version> {
    let upto = versions.partition_point(|v| v.revision <= at);
    let latest = versions[..upto].last()?;
    (!latest.deleted).then_some(*latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: Revision, create_revision: Revision) -> Version {
        Version {
            revision,
            create_revision,
            deleted: false,
        }
    }

    fn delete(revision: Revision, create_revision: Revision) -> Version {
        Version {
            revision,
            create_revision,
            deleted: true,
        }
    }

    fn sample() -> KeyIndex {
        let mut index = KeyIndex::default();
        index.push("/a", put(1, 1));
        index.push("/b", put(2, 2));
        index.push("/a", put(3, 1));
        index.push("/b", delete(4, 2));
        index.push("/c", put(5, 5));
        index.push("/b", put(6, 6));
        index
    }

    #[test]
    fn reads_see_the_latest_write_at_their_revision() {
        let index = sample();
        assert_eq!(index.live_at("/a", 2), Some(put(1, 1)));
        assert_eq!(index.live_at("/a", 3), Some(put(3, 1)));
        assert_eq!(index.live_at("/b", 4), None);
        assert_eq!(index.live_at("/b", 6), Some(put(6, 6)));
        assert_eq!(index.live_at("/c", 4), None);
        assert_eq!(index.live_at("/z", 6), None);
        let keys = |found: Vec<(Box<str>, Version)>| {
            found
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.revision))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(index.range_at("/", "", 5, None)),
            [("/a".into(), 3), ("/c".into(), 5)]
        );
        assert_eq!(
            keys(index.range_at("/", "/b", 6, Some(1))),
            [("/b".into(), 6)]
        );
    }

    #[test]
    fn compaction_keeps_what_later_reads_need() {
        let mut index = sample();
        // Below 5: /a's write at 1 is superseded, /b's delete at 4 ends its first incarnation.
        assert_eq!(index.compactable(5), [1, 2, 4]);
        index.compact(5);
        assert_eq!(index.live_at("/a", 5), Some(put(3, 1)));
        assert_eq!(index.live_at("/b", 6), Some(put(6, 6)));
        assert_eq!(index.compactable(5), Vec::<Revision>::new());
        index.push("/c", delete(7, 5));
        index.compact(8);
        assert_eq!(index.live_at("/c", 8), None);
        assert_eq!(
            index.keys.len(),
            2,
            "a key deleted before the compaction is forgotten"
        );
    }

    #[test]
    fn an_undone_transaction_leaves_no_trace() {
        let mut index = sample();
        index.push("/d", put(7, 7));
        index.push("/a", put(8, 1));
        index.truncate_after(6);
        assert_eq!(index.live_at("/d", 8), None);
        assert_eq!(index.live_at("/a", 8), Some(put(3, 1)));
    }
}
