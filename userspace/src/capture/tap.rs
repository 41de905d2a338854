//! A worker's side of a capture: copies frames into its own bounded ring, which the capture
//! server drains. Never blocks, never allocates: a frame that does not fit is counted lost.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use xdpfwd_common::{CaptureFlags, CaptureHeader, CaptureKind, CapturePath, WorkerDrop};

use super::Switch;

/// Bytes of each worker's ring: a few hundred full frames, while the server reads.
pub const RING_BYTES: usize = 4 << 20;

/// The worker's end.
pub struct Tap {
    switch: Arc<Switch>,
    ring: rtrb::Producer<u8>,
    /// Frames a capture wanted that did not fit into the ring.
    lost: Arc<AtomicU64>,
}

/// The server's end of a worker's ring.
pub struct Drain {
    pub ring: rtrb::Consumer<u8>,
    pub lost: Arc<AtomicU64>,
}

/// A tap for a worker and the server's end of it.
pub fn pair(switch: Arc<Switch>) -> (Tap, Drain) {
    let (producer, consumer) = rtrb::RingBuffer::new(RING_BYTES);
    let lost = Arc::new(AtomicU64::new(0));
    (Tap { switch, ring: producer, lost: lost.clone() }, Drain { ring: consumer, lost })
}

impl Tap {
    /// Whether a capture wants frames of `kind`: the one check a worker makes per frame.
    #[inline]
    pub fn wants(&self, flag: CaptureFlags) -> bool {
        self.switch.flags().contains(flag)
    }

    /// A frame the worker sends on `ifindex`, as it leaves.
    #[inline]
    pub fn sent(&mut self, ifindex: u32, frame: &[u8]) {
        self.sent_head(ifindex, frame, frame.len());
    }

    /// A frame the worker sends on `ifindex` in more than one UMEM frame: the first (`head`,
    /// which is what is captured) and the whole frame's length.
    #[inline]
    pub fn sent_head(&mut self, ifindex: u32, head: &[u8], len: usize) {
        if self.wants(CaptureFlags::OUT) {
            self.record(CaptureKind::Out, ifindex, 0, head, len);
        }
    }

    /// A frame the worker drops, that arrived on `ifindex`.
    #[inline]
    pub fn dropped(&mut self, ifindex: u32, why: WorkerDrop, frame: &[u8]) {
        self.dropped_head(ifindex, why, frame, frame.len());
    }

    /// A frame in more than one UMEM frame that the worker drops (see [`Tap::sent_head`]).
    #[inline]
    pub fn dropped_head(&mut self, ifindex: u32, why: WorkerDrop, head: &[u8], len: usize) {
        if self.wants(CaptureFlags::DROPS) {
            self.record(CaptureKind::Dropped, ifindex, why as u8, head, len);
        }
    }

    fn record(&mut self, kind: CaptureKind, ifindex: u32, reason: u8, head: &[u8], len: usize) {
        if !self.switch.selects(ifindex, kind.flag(), head) {
            return;
        }
        let caplen = head.len().min(self.switch.snaplen() as usize);
        let header = CaptureHeader {
            ts: monotonic_ns(),
            ifindex,
            len: len.max(head.len()) as u32,
            caplen: caplen as u32,
            kind: kind as u8,
            path: CapturePath::AfXdp as u8,
            reason,
            _pad: 0,
        };
        let bytes = header.to_bytes();
        let Ok(chunk) = self.ring.write_chunk_uninit(bytes.len() + caplen) else {
            self.lost.fetch_add(1, Relaxed);
            return;
        };
        chunk.fill_from_iter(bytes.iter().chain(&head[..caplen]).copied());
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds, the XDP program's `bpf_ktime_get_ns` clock.
pub fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_copies_only_what_a_capture_wants_and_counts_what_does_not_fit() {
        let switch = Arc::new(Switch::default());
        let (mut tap, mut drain) = pair(switch.clone());
        let frame = [0xabu8; 100];
        tap.sent(3, &frame);
        assert_eq!(drain.ring.slots(), 0, "nothing without a capture");
        switch.set(CaptureFlags::OUT, 64, Default::default(), vec![(3, CaptureFlags::OUT)]);
        tap.sent(4, &frame);
        assert_eq!(drain.ring.slots(), 0, "not an interface watched");
        tap.sent(3, &frame);
        tap.dropped(3, WorkerDrop::Held, &frame);
        let n = drain.ring.slots();
        assert_eq!(n, 24 + 64, "one record, cut to the snap length; drops not wanted");
        let chunk = drain.ring.read_chunk(n).unwrap();
        let (a, b) = chunk.as_slices();
        let bytes: Vec<u8> = a.iter().chain(b).copied().collect();
        let header = CaptureHeader::from_bytes(&bytes).unwrap();
        assert_eq!((header.ifindex, header.len, header.caplen), (3, 100, 64));
        assert_eq!(header.kind, CaptureKind::Out as u8);
        assert!(bytes[24..].iter().all(|&b| b == 0xab));
        chunk.commit_all();
        switch.set(CaptureFlags::OUT, u32::MAX, Default::default(), vec![(3, CaptureFlags::OUT)]);
        let big = vec![0u8; RING_BYTES];
        tap.sent(3, &big);
        assert_eq!(tap.lost.load(Relaxed), 1);
        assert_eq!(drain.ring.slots(), 0);
    }

    /// A frame in several UMEM frames is captured by its first, with its whole length.
    #[test]
    fn a_frame_in_several_buffers_keeps_its_whole_length() {
        let switch = Arc::new(Switch::default());
        let (mut tap, mut drain) = pair(switch.clone());
        switch.set(CaptureFlags::OUT, 9000, Default::default(), vec![(3, CaptureFlags::OUT)]);
        tap.sent_head(3, &[0xcd; 3812], 9014);
        let n = drain.ring.slots();
        assert_eq!(n, 24 + 3812, "what the first buffer holds");
        let chunk = drain.ring.read_chunk(n).unwrap();
        let (a, b) = chunk.as_slices();
        let bytes: Vec<u8> = a.iter().chain(b).copied().collect();
        let header = CaptureHeader::from_bytes(&bytes).unwrap();
        assert_eq!((header.len, header.caplen), (9014, 3812));
    }
}
