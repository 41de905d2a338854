//! XDP programs for benchmarks and load tests, not used by xdpfwd itself:
//!
//! - `bench_gen`: run with `BPF_PROG_RUN` and `BPF_F_TEST_XDP_LIVE_FRAMES`; sends its input
//!   frame (IPv4/UDP) out of the interface with `XDP_TX`, cycling the UDP source port over
//!   `GEN_FLOWS[0]` flows so that RSS spreads them over queues; its headers are restored
//!   from `GEN_HDR` first.
//! - `bench_sink`: counts packets and bytes (`SINK[0]`, `SINK[1]`) and drops them.
//! - `bench_redirect`: the ceiling on a machine, a bare `XDP_REDIRECT` with MAC rewrite; the
//!   ingress ifindex selects, in `REDIRECT_CFG`, the MACs to write and the `REDIRECT_DEV`
//!   slot to send to.
//! - `bench_fib`: an xdp-forward-style router, as the kernel's `samples/bpf/xdp_fwd_kern.c`:
//!   `bpf_fib_lookup` (the kernel's FIB and neighbours; needs the kernel's forwarding on),
//!   TTL decrement with the checksum update, MACs from the lookup, `bpf_redirect_map` on a
//!   DEVMAP keyed by ifindex (`FIB_TX_PORTS`). IPv4 only (the bench sends IPv4); anything the
//!   lookup does not forward goes to the kernel.
#![no_std]
#![no_main]

#[path = "rt.rs"]
mod rt;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibLookup, xdp_action},
    helpers::generated::bpf_fib_lookup,
    macros::{map, xdp},
    maps::{Array, DevMap, HashMap, PerCpuArray},
    programs::XdpContext,
};

#[map]
static GEN_FLOWS: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static GEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
/// The Ethernet, IPv4 and UDP headers of the generated frame, written into every frame sent:
/// on veth, frames travel between peers without a copy and come back to the generator's page
/// pool with whatever a forwarder rewrote in them (MACs, TTL, checksum).
#[map]
static GEN_HDR: Array<[u8; 42]> = Array::with_max_entries(1, 0);
#[map]
static SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);
/// Per ingress ifindex: destination MAC (0..6), source MAC (6..12), `REDIRECT_DEV` slot
/// (12..16, little endian).
#[map]
static REDIRECT_CFG: HashMap<u32, [u8; 16]> = HashMap::with_max_entries(16, 0);
#[map]
static REDIRECT_DEV: DevMap = DevMap::with_max_entries(16, 0);

/// Egress devices of `bench_fib`, keyed by ifindex (as the sample's `xdp_tx_ports`).
#[map]
static FIB_TX_PORTS: DevMap = DevMap::with_max_entries(4096, 0);

#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 42 > ctx.data_end() {
        return xdp_action::XDP_TX;
    }
    if let Some(hdr) = GEN_HDR.get(0) {
        // In 2-byte words: a 42-byte assignment is a call to a byte-wise `memmove`, which
        // cost the generator a tenth of its time.
        let (dst, src) = (start as *mut u16, hdr.as_ptr().cast::<u16>());
        let mut i = 0;
        while i < 21 {
            // SAFETY: the 42 bytes were bounds-checked above; the map value holds 42.
            unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
            i += 1;
        }
    }
    let flows = GEN_FLOWS.get(0).copied().unwrap_or(1).max(1);
    let Some(seq) = GEN_SEQ.get_ptr_mut(0) else { return xdp_action::XDP_TX };
    // SAFETY: per-CPU array slot from a successful lookup; only this CPU writes it.
    let n = unsafe {
        *seq = (*seq).wrapping_add(1);
        *seq
    };
    let port = (10_000 + n % flows) as u16;
    let at = (start + 34) as *mut [u8; 2];
    // SAFETY: bytes 34..36 were bounds-checked above.
    unsafe { *at = port.to_be_bytes() };
    xdp_action::XDP_TX
}

#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    if let Some(p) = SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU array slot; only this CPU writes it.
        unsafe { *p += 1 };
    }
    if let Some(b) = SINK.get_ptr_mut(1) {
        // SAFETY: as above.
        unsafe { *b += len };
    }
    xdp_action::XDP_DROP
}

// `frags`: jumbo frames too (the TCP figures at MTU 9000), as xdpfwd.
#[xdp(frags)]
pub fn bench_redirect(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: copied out at once.
    let Some(cfg) = (unsafe { REDIRECT_CFG.get(ifindex) }).copied() else {
        return xdp_action::XDP_PASS;
    };
    let start = ctx.data();
    if start + 14 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let eth = start as *mut [u8; 12];
    let mut macs = [0u8; 12];
    macs.copy_from_slice(&cfg[0..12]);
    // SAFETY: the 12 bytes were bounds-checked above.
    unsafe { *eth = macs };
    let slot = u32::from_le_bytes([cfg[12], cfg[13], cfg[14], cfg[15]]);
    REDIRECT_DEV.redirect(slot, 0).unwrap_or(xdp_action::XDP_DROP)
}

/// `AF_INET`, `BPF_FIB_LKUP_RET_SUCCESS`.
const AF_INET: u8 = 2;
const FIB_SUCCESS: i64 = 0;

#[xdp(frags)]
pub fn bench_fib(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    // Ethernet and the IPv4 header without options.
    if start + 34 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let frame = start as *mut u8;
    // SAFETY: the 34 bytes were bounds-checked above (here and below).
    let at = |i: usize| unsafe { *frame.add(i) };
    if [at(12), at(13)] != [0x08, 0x00] || at(22) <= 1 {
        return xdp_action::XDP_PASS;
    }
    // Zeroed in words (`mem::zeroed` is a call to a byte-wise `memset` on BPF), in place.
    let mut fib = core::mem::MaybeUninit::<Aligned<FibLookup>>::uninit();
    let words = fib.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < size_of::<Aligned<FibLookup>>() / 8 {
        // SAFETY: within the value.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: all-zero is a valid `bpf_fib_lookup`.
    let fib = unsafe { &mut fib.assume_init_mut().0 };
    fib.family = AF_INET;
    fib.l4_protocol = at(23);
    fib.__bindgen_anon_1.tot_len = u16::from_be_bytes([at(16), at(17)]);
    fib.__bindgen_anon_2.tos = at(15);
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([at(26), at(27), at(28), at(29)]);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([at(30), at(31), at(32), at(33)]);
    fib.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the program's context and a lookup structure of the size passed.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), fib, size_of::<FibLookup>() as i32, 0) };
    if rc != FIB_SUCCESS || FIB_TX_PORTS.get(fib.ifindex).is_none() {
        return xdp_action::XDP_PASS;
    }
    // ip_decrease_ttl(): the checksum's incremental update for TTL - 1.
    let check =
        u32::from(u16::from_ne_bytes([at(24), at(25)])) + u32::from(u16::from_ne_bytes([1, 0]));
    let check = (check + u32::from(check >= 0xffff)) as u16;
    // SAFETY: within the checked 34 bytes.
    unsafe {
        *frame.add(22) = at(22) - 1;
        *(frame.add(24) as *mut [u8; 2]) = check.to_ne_bytes();
        *(frame as *mut [u8; 6]) = fib.dmac;
        *(frame.add(6) as *mut [u8; 6]) = fib.smac;
    }
    FIB_TX_PORTS.redirect(fib.ifindex, 0).unwrap_or(xdp_action::XDP_PASS)
}

/// A value on the stack, 8-aligned: the programs are compiled to access memory unaligned,
/// which the verifier refuses on the stack.
#[repr(C, align(8))]
struct Aligned<T>(T);
