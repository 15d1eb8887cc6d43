//! Block allocator: a map of free extents, the single source of truth for
//! which blocks are in use (the on-disk bitmaps are derived from it at the end).

use std::collections::BTreeMap;

use super::layout::Layout;

/// Runs smaller than this are skipped while bigger ones remain, so a large
/// file is not shredded across the small holes left by freed files.
const SMALL_RUN: u64 = 256;

/// A run of blocks: (first block, length).
pub(crate) type Run = (u64, u64);

/// Free space as non-overlapping, non-adjacent extents keyed by first block.
#[derive(Debug, Clone)]
pub(crate) struct Allocator {
    free: BTreeMap<u64, u64>,
    free_total: u64,
}

impl Allocator {
    /// Everything free except each group's metadata.
    pub fn new(layout: &Layout) -> Self {
        let mut free = BTreeMap::new();
        let mut free_total = 0;
        for g in 0..layout.groups {
            let start = layout.group_start(g) + layout.overhead(g);
            let len = layout.group_blocks(g) - layout.overhead(g);
            if len > 0 {
                free.insert(start, len);
                free_total += len;
            }
        }
        Allocator { free, free_total }
    }

    /// Free blocks left.
    pub fn free_blocks(&self) -> u64 {
        self.free_total
    }

    /// Allocates `n` blocks, in one run if any free run is big enough (first
    /// fit), else from as few runs as practical. Returns runs sorted by block,
    /// or None (allocating nothing) when fewer than `n` blocks are free.
    pub fn alloc(&mut self, n: u64) -> Option<Vec<Run>> {
        if n == 0 {
            return Some(Vec::new());
        }
        if n > self.free_total {
            return None;
        }
        let fit = self
            .free
            .iter()
            .find(|&(_, &len)| len >= n)
            .map(|(&s, _)| s);
        let chosen = match fit {
            Some(start) => vec![(start, n)],
            None => self.gather(n),
        };
        for &(start, len) in &chosen {
            self.take(start, len);
        }
        Some(chosen)
    }

    /// Picks runs totalling `n` (which is no more than what is free): big
    /// runs first in address order, then small ones if still short.
    fn gather(&self, n: u64) -> Vec<Run> {
        let mut chosen = Vec::new();
        let mut need = n;
        for big_only in [true, false] {
            for (&start, &len) in &self.free {
                if need == 0 {
                    break;
                }
                if (len >= SMALL_RUN) != big_only {
                    continue;
                }
                let take = len.min(need);
                chosen.push((start, take));
                need -= take;
            }
        }
        chosen.sort_unstable();
        chosen
    }

    /// Removes blocks `start..start+len`, which lie at the start of one free extent.
    fn take(&mut self, start: u64, len: u64) {
        let have = self
            .free
            .remove(&start)
            .expect("allocated run starts a free extent");
        debug_assert!(have >= len);
        if have > len {
            self.free.insert(start + len, have - len);
        }
        self.free_total -= len;
    }

    /// Returns a run to the free pool, merging with its neighbours.
    pub fn free(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.free_total += len;
        let mut start = start;
        let mut len = len;
        if let Some((&ps, &pl)) = self.free.range(..start).next_back() {
            debug_assert!(ps + pl <= start, "double free of block {start}");
            if ps + pl == start {
                self.free.remove(&ps);
                start = ps;
                len += pl;
            }
        }
        if let Some(nl) = self.free.remove(&(start + len)) {
            len += nl;
        }
        self.free.insert(start, len);
    }

    /// Free runs intersecting `lo..hi`, clipped to it.
    pub fn free_in(&self, lo: u64, hi: u64) -> impl Iterator<Item = Run> + '_ {
        // A run starting before `lo` may still reach into the range.
        let before = self.free.range(..lo).next_back().map(|(&s, &l)| (s, l));
        before
            .into_iter()
            .chain(self.free.range(lo..hi).map(|(&s, &l)| (s, l)))
            .filter_map(move |(s, l)| {
                let a = s.max(lo);
                let b = (s + l).min(hi);
                (a < b).then_some((a, b - a))
            })
    }
}
