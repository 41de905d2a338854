//! A global allocator that counts the heap allocations of threads that opt in (the workers),
//! so that "no allocation per packet" is measured, not assumed.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

/// Allocations (and reallocations) made by counting threads since start.
pub static COUNTED: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting.
pub struct CountingAlloc;

/// Starts (or stops) counting the allocations of the calling thread.
pub fn count_this_thread(on: bool) {
    COUNTING.with(|c| c.set(on));
}

/// Allocations counted so far.
pub fn counted() -> u64 {
    COUNTED.load(Relaxed)
}

#[inline]
fn note() {
    // `try_with`: never panic inside the allocator, even during thread teardown.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        COUNTED.fetch_add(1, Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees carry over; counting touches only an atomic and a const thread-local
// without destructor, neither of which allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded contract (see above).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}
