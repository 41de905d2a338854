//! Copies frames to a running `xdpfwd capture` through the `CAPTURE_EVENTS` perf ring: as they
//! arrive, as the fast path sends them, and as they are left to the kernel or dropped, with
//! the counter that says why. With no capture running (`CAPTURE` empty) it costs two array
//! reads per frame and copies nothing.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, PerfEventByteArray},
    programs::XdpContext,
};
use xdpfwd_common::{
    CaptureCtl, CaptureFlags, CaptureHeader, CaptureKind, CapturePath, Counter, MAX_IFACES,
};

use crate::{decision::Verdict, wire::frame_len};

/// The switch: what captures want, and how much of a frame.
#[map]
pub static CAPTURE: Array<CaptureCtl> = Array::with_max_entries(1, 0);
/// Interfaces a capture watches: ifindex → the `CaptureFlags` wanted there.
#[map]
pub static CAPTURE_IFACES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_IFACES, 0);
/// Captured frames, each behind a `CaptureHeader` (one perf buffer per CPU).
#[map]
pub static CAPTURE_EVENTS: PerfEventByteArray = PerfEventByteArray::new(0);

/// `emit`'s `egress` for a frame recorded on its ingress interface.
const INGRESS: u32 = 0;

/// What a running capture wants; `None` when none runs.
#[inline(always)]
fn wanted() -> Option<&'static CaptureCtl> {
    CAPTURE.get(0).filter(|ctl| !ctl.flags.is_empty())
}

/// The frame as it arrived, before any stage looks at it.
#[inline(always)]
pub fn arrived(ctx: &XdpContext) {
    if let Some(ctl) = wanted()
        && ctl.flags.contains(CaptureFlags::IN)
    {
        emit(ctx, CaptureKind::In as u32, INGRESS, ctl.snaplen);
    }
}

/// The frame as `verdict` leaves it: sent by the fast path (on `oif`), or left to the kernel
/// or dropped (on its ingress). AF_XDP frames are captured by the workers.
#[inline(always)]
pub fn decided(ctx: &XdpContext, verdict: Verdict, oif: u32) {
    let Some(ctl) = wanted() else { return };
    let reason = verdict.reason();
    let (kind, egress) = match verdict.action() {
        xdp_action::XDP_PASS => (CaptureKind::Kernel, INGRESS),
        xdp_action::XDP_DROP => (CaptureKind::Dropped, INGRESS),
        _ if reason == Counter::FastForwarded as u32 => (CaptureKind::Out, oif),
        // The ICMP answer is a worker's; the frame itself is not forwarded.
        _ if reason == Counter::SteeredIcmp as u32 => (CaptureKind::Dropped, INGRESS),
        _ => return,
    };
    if ctl.flags.contains(kind.flag()) {
        emit(ctx, kind as u32 | reason << 8, egress, ctl.snaplen);
    }
}

/// Writes a `CaptureHeader` and the first `snaplen` bytes of the frame into the perf ring,
/// if a capture watches the interface for `kind` (the low byte of `what`; the reason above).
///
/// Out of line (a BPF subprogram): its stack frame is not added to the stages'.
#[inline(never)]
fn emit(ctx: &XdpContext, what: u32, egress: u32, snaplen: u32) {
    // SAFETY: `ctx.ctx` is the live `xdp_md`. A volatile read stays where it is written:
    // the verifier refuses a context field read through a pointer computed in a branch.
    let ingress = unsafe { core::ptr::read_volatile(&(*ctx.ctx).ingress_ifindex) };
    let ifindex = if egress == INGRESS { ingress } else { egress };
    let kind = what & 0xff;
    // SAFETY: the value is a plain integer that user space replaces whole.
    let watched = unsafe { CAPTURE_IFACES.get(ifindex) }.copied().unwrap_or(0);
    let flag = match CaptureKind::from_u8(kind as u8) {
        Some(kind) => kind.flag().bits(),
        None => 0,
    };
    if watched & flag == 0 {
        return;
    }
    let len = frame_len(ctx) as u32;
    let caplen = if len < snaplen { len } else { snaplen };
    let header = CaptureHeader {
        // SAFETY: a helper without arguments.
        ts: unsafe { bpf_ktime_get_ns() },
        ifindex,
        len,
        caplen,
        kind: kind as u8,
        path: CapturePath::Xdp as u8,
        reason: (what >> 8) as u8,
        _pad: 0,
    };
    // The kernel appends `caplen` bytes of the frame behind the header (BPF_F_CTXLEN); a
    // full ring loses the record, which the reader counts.
    CAPTURE_EVENTS.output(ctx, &header.to_bytes(), caplen);
}
