//! `xdpfwd capture`: the frames xdpfwd forwards, and those it leaves to the kernel or drops,
//! as pcapng, while it runs.
//!
//! A running instance serves captures on `/run/xdpfwd/<netns inode>/<pid>.capture`
//! (`server`). While one runs it sets the [`Switch`] the AF_XDP workers read and the XDP
//! program's `CAPTURE` map; the program copies frames into a perf ring (arrivals, the fast
//! path's, what it passes or drops), the workers into their own bounded rings (`tap`: what
//! they send and what they drop). Nothing blocks forwarding: what does not fit is counted as
//! lost. The server selects each client's frames (interfaces, kinds, the tcpdump filter of
//! `filter`) and streams them (`wire`); the client (`client`) writes pcapng.

pub mod client;
mod filter;
pub mod server;
pub mod tap;
mod wire;

use std::sync::{
    RwLock,
    atomic::{AtomicU32, Ordering::Relaxed},
};

use xdpfwd_common::CaptureFlags;

use self::filter::Filter;

/// What the running captures want of the workers; read by them per frame, set by the server.
#[derive(Default)]
pub struct Switch {
    flags: AtomicU32,
    snaplen: AtomicU32,
    /// The filter every capture shares (empty: none, or not one for all).
    filter: RwLock<Filter>,
}

impl Switch {
    /// The frames wanted now (empty: no capture runs).
    #[inline]
    pub fn flags(&self) -> CaptureFlags {
        CaptureFlags::from_bits_truncate(self.flags.load(Relaxed))
    }

    #[inline]
    pub fn snaplen(&self) -> u32 {
        self.snaplen.load(Relaxed)
    }

    /// Whether a frame of `len` bytes passes the shared filter. A worker never waits: while
    /// the server changes the filter, every frame passes (the server filters again).
    #[inline]
    pub fn passes(&self, frame: &[u8], len: u32) -> bool {
        self.filter.try_read().map_or(true, |f| f.matches(frame, len))
    }

    fn set(&self, flags: CaptureFlags, snaplen: u32, filter: Filter) {
        if let Ok(mut f) = self.filter.write() {
            *f = filter;
        }
        self.snaplen.store(snaplen, Relaxed);
        self.flags.store(flags.bits(), Relaxed);
    }
}
