//! The hold queue's policy: which frame waiting for its next hop to be resolved gives way
//! when another arrives.
//!
//! As the kernel's per-neighbour queue (`unres_qlen`), at most [`PER_NEXT_HOP`] frames wait
//! for one next hop and the oldest of them gives way, so a flood to one unresolvable
//! address holds a few places, not all. When all [`CAPACITY`] places of a worker are taken,
//! the oldest frame gives way: a flood across many unresolvable addresses shortens every
//! frame's wait instead of shutting newcomers (real next hops) out for the whole timeout.

/// Most frames one worker holds.
pub const CAPACITY: usize = 256;
/// Most frames held for one next hop.
pub const PER_NEXT_HOP: usize = 32;

/// The index of the held frame to drop before a new one is held, if any: `same_hop` frames
/// already wait for the new frame's next hop, the oldest of them at `oldest_same`; `total`
/// frames are held, oldest first.
pub fn victim(same_hop: usize, oldest_same: Option<usize>, total: usize) -> Option<usize> {
    if same_hop >= PER_NEXT_HOP {
        oldest_same
    } else if total >= CAPACITY {
        Some(0)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_next_hop_keeps_its_newest_frames() {
        assert_eq!(victim(0, None, 0), None);
        assert_eq!(victim(PER_NEXT_HOP - 1, Some(3), 100), None);
        assert_eq!(victim(PER_NEXT_HOP, Some(3), 100), Some(3), "its own oldest gives way");
    }

    #[test]
    fn a_full_queue_admits_newcomers_by_dropping_the_oldest() {
        assert_eq!(victim(0, None, CAPACITY), Some(0), "a new next hop still gets in");
        assert_eq!(victim(2, Some(7), CAPACITY), Some(0));
        assert_eq!(victim(PER_NEXT_HOP, Some(7), CAPACITY), Some(7));
    }
}
