//! Copies frames to a running `xdpfwd capture` through the `CAPTURE_RING` ring buffer: as they
//! arrive, as the fast path sends them, and as they are left to the kernel or dropped, with
//! the counter that says why. With no capture running (`CAPTURE` empty) it costs two array
//! reads per frame and copies nothing.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_RB_NO_WAKEUP, xdp_action},
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_loop, bpf_ringbuf_output, bpf_xdp_load_bytes},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use xdpfwd_common::{
    CAPTURE_RING_BYTES, CaptureCtl, CaptureFlags, CaptureHeader, CaptureKind, CapturePath, Counter,
    MAX_CAPLEN, MAX_IFACES,
    cbpf::{self, CbpfInsn, MAX_INSNS, Machine},
};

use crate::{decision::Verdict, wire::frame_len};

/// The switch: what captures want, and how much of a frame.
#[map]
pub static CAPTURE: Array<CaptureCtl> = Array::with_max_entries(1, 0);
/// Interfaces a capture watches: ifindex → the `CaptureFlags` wanted there.
#[map]
pub static CAPTURE_IFACES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_IFACES, 0);
/// The capture's tcpdump filter as libpcap compiled it (`CaptureCtl::filter_len` long).
#[map]
pub static CAPTURE_FILTER: Array<CbpfInsn> = Array::with_max_entries(MAX_INSNS, 0);
/// Captured frames, each behind a `CaptureHeader`: one ring all CPUs share, read by polling.
#[map]
pub static CAPTURE_RING: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);
/// Frames a capture wanted that did not fit into `CAPTURE_RING`, per CPU.
#[map]
pub static CAPTURE_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Where a record is put together before it goes into the ring (one per CPU).
#[map]
static CAPTURE_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
/// The filter interpreter's registers and scratch memory (one per CPU): in a map, which
/// keeps the capture's stack frames small enough to sit under the stages' (the program's
/// call chain has 512 bytes).
#[map]
static CAPTURE_MACHINE: PerCpuArray<Machine> = PerCpuArray::with_max_entries(1, 0);

const HEADER_LEN: usize = size_of::<CaptureHeader>();

/// A record: header, then up to `MAX_CAPLEN` bytes of the frame.
#[repr(C, align(8))]
struct Scratch([u8; HEADER_LEN + MAX_CAPLEN as usize]);

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
        emit(ctx, CaptureKind::In as u32, INGRESS);
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
        emit(ctx, kind as u32 | reason << 8, egress);
    }
}

/// Writes a `CaptureHeader` and the first `snaplen` bytes of the frame into the ring,
/// if a capture watches the interface for `kind` (the low byte of `what`; the reason above)
/// and its filter accepts the frame.
///
/// Out of line (a BPF subprogram): its stack frame is not added to the stages'.
#[inline(never)]
fn emit(ctx: &XdpContext, what: u32, egress: u32) {
    let Some(ctl) = CAPTURE.get(0) else { return };
    let (snaplen, filter_len) = (ctl.snaplen, ctl.filter_len);
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
    if filter_len != 0 && !accepts(ctx, filter_len, len) {
        return;
    }
    let caplen = if len < snaplen { len } else { snaplen };
    let caplen = if caplen < MAX_CAPLEN { caplen } else { MAX_CAPLEN };
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
    if record(ctx, &header).is_err()
        && let Some(lost) = CAPTURE_LOST.get_ptr_mut(0)
    {
        // SAFETY: a per-CPU slot only this CPU writes while this program runs.
        unsafe { *lost += 1 };
    }
}

/// Puts the header and the first `header.caplen` bytes of the frame into `CAPTURE_RING`,
/// through this CPU's scratch record (the ring's records have a size the verifier must
/// know; a copy from the scratch may have any size it can bound). No wakeup: the reader
/// polls, so a frame costs no interrupt.
#[inline(always)]
fn record(ctx: &XdpContext, header: &CaptureHeader) -> Result<(), ()> {
    let scratch = CAPTURE_SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: a per-CPU value only this CPU uses while this program runs.
    let bytes = unsafe { &mut (*scratch).0 };
    bytes[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    if header.caplen == 0 {
        return Err(());
    }
    // The same number for 1..=MAX_CAPLEN (a power of two), bounded by arithmetic: the
    // verifier keeps the bound on every copy LLVM makes of the register, which a compare
    // would give only to one of them.
    let caplen = ((header.caplen - 1) & (MAX_CAPLEN - 1)) + 1;
    // SAFETY: `ctx.ctx` is the live `xdp_md`; the scratch has `MAX_CAPLEN` bytes after the
    // header, and `caplen` is at most that.
    let copied = unsafe {
        bpf_xdp_load_bytes(ctx.ctx, 0, bytes.as_mut_ptr().add(HEADER_LEN).cast(), caplen)
    };
    if copied != 0 {
        return Err(());
    }
    // SAFETY: the scratch holds `HEADER_LEN + caplen` written bytes; the map is a ring buffer.
    let sent = unsafe {
        bpf_ringbuf_output(
            (&raw const CAPTURE_RING).cast_mut().cast(),
            scratch.cast(),
            u64::from(caplen) + HEADER_LEN as u64,
            u64::from(BPF_RB_NO_WAKEUP),
        )
    };
    if sent == 0 { Ok(()) } else { Err(()) }
}

/// Whether the capture's filter accepts the frame: one instruction per `bpf_loop` turn, so
/// the verifier checks an instruction once, not once per step of every program.
///
/// Out of line: the loop's state gets a stack frame of its own.
#[inline(never)]
fn accepts(ctx: &XdpContext, filter_len: u32, len: u32) -> bool {
    let Some(m) = CAPTURE_MACHINE.get_ptr_mut(0) else { return false };
    // SAFETY: a per-CPU value only this CPU uses while this program runs.
    let m = unsafe { &mut *m };
    *m = Machine::default();
    let mut run = Run { ctx, filter: Filter { len: filter_len }, len, m, verdict: 0 };
    // SAFETY: `step` is a callback of the `bpf_loop` signature; `run` outlives the call.
    unsafe {
        bpf_loop(MAX_INSNS, step as *mut c_void, (&raw mut run).cast(), 0);
    }
    run.verdict == ACCEPTED
}

const ACCEPTED: u32 = 1;

/// What `bpf_loop` hands `step`.
struct Run<'a> {
    ctx: &'a XdpContext,
    filter: Filter,
    len: u32,
    m: &'a mut Machine,
    /// [`ACCEPTED`] once the program accepted the frame.
    verdict: u32,
}

/// One instruction of the filter; 1 ends the loop.
unsafe extern "C" fn step(_index: u64, run: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` passes the `Run` `accepts` gave it, alive on its stack.
    let run = unsafe { &mut *run.cast::<Run>() };
    let packet = Packet(run.ctx);
    match run.m.step(&run.filter, &packet, run.len) {
        None => 0,
        Some(accepted) => {
            run.verdict = u32::from(accepted);
            1
        }
    }
}

/// The filter's instructions in `CAPTURE_FILTER`.
struct Filter {
    len: u32,
}

impl cbpf::Insns for Filter {
    #[inline(always)]
    fn get(&self, pc: u32) -> Option<CbpfInsn> {
        if pc >= self.len {
            return None;
        }
        CAPTURE_FILTER.get(pc).copied()
    }
}

/// The frame, read with `bpf_xdp_load_bytes` (bounds checked by the kernel).
struct Packet<'a>(&'a XdpContext);

impl cbpf::Frame for Packet<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: u32) -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        // SAFETY: `ctx` is the live `xdp_md`; `buf` is `N` writable bytes on the stack.
        let r =
            unsafe { bpf_xdp_load_bytes(self.0.ctx, offset, buf.as_mut_ptr().cast(), N as u32) };
        (r == 0).then_some(buf)
    }
}
