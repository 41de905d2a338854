//! Room in `NH_BUCKETS` for the bucket tables of published resilient groups.
//!
//! A table is written before its group is published and freed with the group; freed room is
//! reused as late as possible (the search starts after the last table placed), so a frame
//! still reading an old group does not meet a new group's buckets.

use std::collections::BTreeMap;

/// Free ranges (start → length) of a space of `size` entries.
#[derive(Debug)]
pub struct BucketSpace {
    free: BTreeMap<u32, u32>,
    /// Where the next search starts.
    cursor: u32,
}

impl BucketSpace {
    pub fn new(size: u32) -> Self {
        Self { free: BTreeMap::from([(0, size)]), cursor: 0 }
    }

    /// Room for `len` entries, searched from the cursor on, then from the start.
    pub fn alloc(&mut self, len: u32) -> Option<u32> {
        if len == 0 {
            return None;
        }
        let fits = |(&start, &free): (&u32, &u32)| (free >= len).then_some((start, free));
        let (start, free) = self
            .free
            .range(self.cursor..)
            .find_map(fits)
            .or_else(|| self.free.iter().find_map(fits))?;
        self.free.remove(&start);
        if free > len {
            self.free.insert(start + len, free - len);
        }
        self.cursor = start + len;
        Some(start)
    }

    /// Gives `len` entries from `start` back, joined with free neighbours.
    pub fn release(&mut self, start: u32, len: u32) {
        let (mut start, mut len) = (start, len);
        if let Some((&before, &n)) = self.free.range(..start).next_back()
            && before + n == start
        {
            self.free.remove(&before);
            (start, len) = (before, len + n);
        }
        if let Some(n) = self.free.remove(&(start + len)) {
            len += n;
        }
        self.free.insert(start, len);
    }

    /// Entries free in all.
    #[cfg(test)]
    pub fn free(&self) -> u32 {
        self.free.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_placed_after_the_last_and_freed_room_joins() {
        let mut space = BucketSpace::new(100);
        let a = space.alloc(40).unwrap();
        let b = space.alloc(40).unwrap();
        assert_eq!((a, b), (0, 40));
        space.release(a, 40);
        // Freed room is reused last: the end first, then the start.
        assert_eq!(space.alloc(20), Some(80));
        assert_eq!(space.alloc(30), Some(0));
        assert_eq!(space.alloc(20), None, "10 left");
        space.release(b, 40);
        space.release(0, 30);
        space.release(80, 20);
        assert_eq!(space.free(), 100);
        assert_eq!(space.alloc(100), Some(0), "all joined again");
        assert_eq!(space.alloc(0), None);
    }
}
