//! What `xdpfwd capture` and the data path exchange: the switch user space sets while a
//! capture runs (`CAPTURE`), and the header in front of every captured frame, written alike
//! by the XDP program (into the `CAPTURE_RING` ring buffer) and by the AF_XDP workers.

use core::mem::size_of;

bitflags::bitflags! {
    /// Which frames a running capture wants (`CaptureCtl::flags`, and per interface in
    /// `CAPTURE_IFACES`). Empty: no capture runs, the program copies nothing.
    #[repr(transparent)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct CaptureFlags: u32 {
        /// Frames as they arrive on a managed interface, before anything changes them.
        const IN = 1;
        /// Frames as they leave, rewritten: the fast path's and the AF_XDP workers'.
        const OUT = 1 << 1;
        /// Frames xdpfwd does not forward: dropped, or left to the kernel; with the reason.
        const DROPS = 1 << 2;
    }
}

/// Most bytes of a frame the XDP program copies (a jumbo frame's; a power of two).
pub const MAX_CAPLEN: u32 = 16384;
const _: () = assert!(MAX_CAPLEN.is_power_of_two());
/// Size of the XDP program's capture ring (`CAPTURE_RING`, shared by all CPUs).
pub const CAPTURE_RING_BYTES: u32 = 8 << 20;

/// The capture switch: one entry of `CAPTURE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureCtl {
    pub flags: CaptureFlags,
    /// Bytes of each frame to copy at most.
    pub snaplen: u32,
    /// Instructions of the classic BPF filter in `CAPTURE_FILTER` a frame must pass before it
    /// is copied (0: none; at most [`crate::cbpf::MAX_INSNS`]).
    pub filter_len: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<CaptureCtl>() == 16);

/// Where a captured frame was seen (`CaptureHeader::kind`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureKind {
    /// Arriving (`CaptureFlags::IN`), on `ifindex`.
    In = 0,
    /// Leaving (`CaptureFlags::OUT`), on `ifindex`.
    Out = 1,
    /// Left to the kernel untouched, as it arrived on `ifindex`.
    Kernel = 2,
    /// Dropped by xdpfwd, as far as it had been changed; `ifindex` is its ingress, or for a
    /// frame a worker held for its next hop or could not queue, its egress.
    Dropped = 3,
}

impl CaptureKind {
    pub const fn from_u8(value: u8) -> Option<CaptureKind> {
        match value {
            0 => Some(CaptureKind::In),
            1 => Some(CaptureKind::Out),
            2 => Some(CaptureKind::Kernel),
            3 => Some(CaptureKind::Dropped),
            _ => None,
        }
    }

    /// The switch a capture sets to see frames of this kind.
    pub const fn flag(self) -> CaptureFlags {
        match self {
            CaptureKind::In => CaptureFlags::IN,
            CaptureKind::Out => CaptureFlags::OUT,
            CaptureKind::Kernel | CaptureKind::Dropped => CaptureFlags::DROPS,
        }
    }
}

/// Which part of xdpfwd saw a captured frame (`CaptureHeader::path`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapturePath {
    /// The XDP program: arrivals, the fast path, what it passes or drops.
    Xdp = 0,
    /// An AF_XDP worker: what it sends, and what it drops.
    AfXdp = 1,
}

/// In front of every captured frame. `reason` is a [`crate::Counter`] for frames of the XDP
/// program; for the workers' drops, one of [`WorkerDrop`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureHeader {
    /// `CLOCK_MONOTONIC`, nanoseconds.
    pub ts: u64,
    pub ifindex: u32,
    /// Length of the frame.
    pub len: u32,
    /// Bytes of it that follow the header.
    pub caplen: u32,
    pub kind: u8,
    pub path: u8,
    pub reason: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<CaptureHeader>() == 24);

impl CaptureHeader {
    /// The header as the bytes that go in front of the frame.
    pub fn to_bytes(&self) -> [u8; size_of::<CaptureHeader>()] {
        let mut out = [0u8; size_of::<CaptureHeader>()];
        out[0..8].copy_from_slice(&self.ts.to_ne_bytes());
        out[8..12].copy_from_slice(&self.ifindex.to_ne_bytes());
        out[12..16].copy_from_slice(&self.len.to_ne_bytes());
        out[16..20].copy_from_slice(&self.caplen.to_ne_bytes());
        out[20] = self.kind;
        out[21] = self.path;
        out[22] = self.reason;
        out
    }

    /// Reads a header from the start of `bytes` (`None`: too short).
    pub fn from_bytes(bytes: &[u8]) -> Option<CaptureHeader> {
        let b = bytes.get(..size_of::<CaptureHeader>())?;
        let u32_at = |at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[0..8]);
        Some(CaptureHeader {
            ts: u64::from_ne_bytes(ts),
            ifindex: u32_at(8),
            len: u32_at(12),
            caplen: u32_at(16),
            kind: b[20],
            path: b[21],
            reason: b[22],
            _pad: 0,
        })
    }
}

/// Why an AF_XDP worker dropped a frame (`CaptureHeader::reason` with
/// [`CapturePath::AfXdp`]), named as the per-port counters that count it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerDrop {
    /// No valid metadata, or an egress this worker has no socket for (`drop_invalid`).
    Invalid = 0,
    /// The rewrite found the frame malformed (`drop_rewrite`).
    Rewrite = 1,
    /// The egress's pending list was full (`drop_tx_full`).
    TxFull = 2,
    /// Waited for its next hop too long, or pushed out by newer frames (`held_dropped`).
    Held = 3,
}

impl WorkerDrop {
    pub const fn from_u8(value: u8) -> Option<WorkerDrop> {
        match value {
            0 => Some(WorkerDrop::Invalid),
            1 => Some(WorkerDrop::Rewrite),
            2 => Some(WorkerDrop::TxFull),
            3 => Some(WorkerDrop::Held),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            WorkerDrop::Invalid => "drop_invalid",
            WorkerDrop::Rewrite => "drop_rewrite",
            WorkerDrop::TxFull => "drop_tx_full",
            WorkerDrop::Held => "held_dropped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_their_bytes() {
        let h = CaptureHeader {
            ts: 0x0102_0304_0506_0708,
            ifindex: 7,
            len: 1514,
            caplen: 96,
            kind: CaptureKind::Dropped as u8,
            path: CapturePath::AfXdp as u8,
            reason: WorkerDrop::Held as u8,
            _pad: 0,
        };
        assert_eq!(CaptureHeader::from_bytes(&h.to_bytes()), Some(h));
        assert_eq!(CaptureHeader::from_bytes(&h.to_bytes()[..23]), None);
        for kind in [CaptureKind::In, CaptureKind::Out, CaptureKind::Kernel, CaptureKind::Dropped] {
            assert_eq!(CaptureKind::from_u8(kind as u8), Some(kind));
        }
        assert_eq!(CaptureKind::from_u8(4), None);
        assert_eq!(WorkerDrop::from_u8(4), None);
    }
}
