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
    /// Which frames of which interfaces the captures want.
    wanted: RwLock<Wanted>,
}

/// What the workers select before they copy.
#[derive(Default)]
struct Wanted {
    /// Interfaces watched (ifindex) and the kinds wanted there.
    ifaces: Vec<(u32, CaptureFlags)>,
    /// The filter every capture shares (empty: none, or not one for all).
    filter: Filter,
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

    /// Whether a capture wants this frame of kind `flag` on interface `ifindex`. A worker
    /// never waits: while the server changes what is wanted, every frame is taken (the server
    /// selects again).
    #[inline]
    pub fn selects(&self, ifindex: u32, flag: CaptureFlags, frame: &[u8]) -> bool {
        self.wanted.try_read().map_or(true, |w| {
            w.ifaces.iter().any(|&(i, f)| i == ifindex && f.contains(flag))
                && w.filter.matches(frame, frame.len() as u32)
        })
    }

    fn set(
        &self,
        flags: CaptureFlags,
        snaplen: u32,
        filter: Filter,
        ifaces: Vec<(u32, CaptureFlags)>,
    ) {
        if let Ok(mut w) = self.wanted.write() {
            *w = Wanted { ifaces, filter };
        }
        self.snaplen.store(snaplen, Relaxed);
        self.flags.store(flags.bits(), Relaxed);
    }
}
