//! Bytes on the wire: named header lengths, ethertypes and protocol numbers, and the only
//! ways the program touches frame memory (bounds-checked pointers, the MAC move).
//!
//! Owns no decision; every other module reads and writes the frame through this one.

use core::mem::size_of;

use aya_ebpf::{helpers::bpf_xdp_get_buff_len, programs::XdpContext};
use xdpfwd_common::Counter;

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const NEXTHDR_HOP: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
/// An ICMP / ICMPv6 header: type, code, checksum and 4 bytes that depend on the type.
pub const ICMP_HLEN: usize = 8;

/// Byte offsets inside an IPv4 header (RFC 791).
pub mod ipv4 {
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CHECK: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

/// Byte offsets inside an IPv6 header (RFC 8200).
pub mod ipv6 {
    pub const NEXT: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

/// A bounds-checked pointer to a `T` at `offset` bytes into the frame.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Counter> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Counter::PassMalformed);
    }
    Ok((start + offset) as *const T)
}

/// A 16-bit big-endian field at `offset` of the frame, as a pointer for update.
#[inline(always)]
pub fn field16(ctx: &XdpContext, offset: usize) -> Result<*mut [u8; 2], Counter> {
    Ok(ptr_at::<[u8; 2]>(ctx, offset)? as *mut [u8; 2])
}

/// Copies `*src` to `dst` in 4-byte words, unrolled. A struct assignment on BPF becomes a
/// call to a byte-by-byte `memmove` (for a 48-byte route, about 250 instructions a frame);
/// volatile word loads and stores stay what they are.
///
/// # Safety
/// Both pointers valid for a `T` and 4-byte aligned, but for packet data, which the kernel
/// lets a program access unaligned on the architectures that allow it (x86-64, arm64).
#[inline(always)]
pub unsafe fn copy_words<T: Copy>(dst: *mut T, src: *const T) {
    const { assert!(size_of::<T>().is_multiple_of(4)) };
    let (d, s) = (dst.cast::<u32>(), src.cast::<u32>());
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: word `i` lies within both `T`s (the caller's promise).
        unsafe { d.add(i).write_volatile(s.add(i).read_volatile()) };
        i += 1;
    }
}

/// As [`copy_words`], in 8-byte words but for a last 4-byte one: half the loads and stores.
///
/// # Safety
/// Both pointers valid for a `T` and 8-byte aligned.
#[inline(always)]
pub unsafe fn copy_words8<T: Copy>(dst: *mut T, src: *const T) {
    const { assert!(size_of::<T>().is_multiple_of(4)) };
    let (d, s) = (dst.cast::<u64>(), src.cast::<u64>());
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: word `i` lies within both `T`s, aligned (the caller's promise).
        unsafe { d.add(i).write_volatile(s.add(i).read_volatile()) };
        i += 1;
    }
    if !size_of::<T>().is_multiple_of(8) {
        let at = size_of::<T>() / 4 - 1;
        let (d, s) = (dst.cast::<u32>(), src.cast::<u32>());
        // SAFETY: the last 4 bytes of both `T`s.
        unsafe { d.add(at).write_volatile(s.add(at).read_volatile()) };
    }
}

/// Zeroes `*dst` in 4-byte words, as [`copy_words`] copies (a zeroed array field otherwise
/// becomes a `memset` call).
///
/// # Safety
/// As [`copy_words`].
#[inline(always)]
pub unsafe fn zero_words<T: Copy>(dst: *mut T) {
    const { assert!(size_of::<T>().is_multiple_of(4)) };
    let d = dst.cast::<u32>();
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: as in `copy_words`.
        unsafe { d.add(i).write_volatile(0) };
        i += 1;
    }
}

/// The frame's length, every buffer of it. The program is attached with `frags`, so a frame
/// longer than a page (a jumbo frame) may arrive in more than one buffer, and `data_end`
/// bounds only the first ([`linear_len`]): headers are read there, lengths are checked
/// against this.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    // SAFETY: `ctx.ctx` is the live `xdp_md`; the helper only reads it.
    unsafe { bpf_xdp_get_buff_len(ctx.ctx) as usize }
}

/// The length of the frame's first buffer, which `ptr_at` reads (all of it unless the frame
/// came in more than one).
#[inline(always)]
pub fn linear_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// An address (IPv4 in the first 4 bytes) as two native-endian words, the form rules compare.
#[inline(always)]
pub fn words(a: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    ]
}

/// The bytes of an address kept as [`words`].
#[inline(always)]
pub fn bytes(w: &[u64; 2]) -> [u8; 16] {
    let a = w[0].to_ne_bytes();
    let b = w[1].to_ne_bytes();
    [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// IPv6 extension headers (and AH, which authenticates the addresses): the L4 header is not
/// right behind the IPv6 header.
#[inline(always)]
pub fn extension_header(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140)
}

/// Moves the 12 bytes of MAC addresses at `from` to `to` (4 bytes apart) as three 32-bit
/// words; volatile reads keep LLVM from turning this into a `memmove` call, which BPF lacks.
///
/// # Safety
///
/// `frame` must point to at least `max(from, to) + 12` writable bytes.
#[inline(always)]
pub unsafe fn move_macs(frame: *mut u8, from: usize, to: usize) {
    // SAFETY: the caller guarantees the bytes; unaligned accesses are explicit.
    unsafe {
        let a = core::ptr::read_volatile(frame.add(from) as *const [u8; 4]);
        let b = core::ptr::read_volatile(frame.add(from + 4) as *const [u8; 4]);
        let c = core::ptr::read_volatile(frame.add(from + 8) as *const [u8; 4]);
        (frame.add(to) as *mut [u8; 4]).write(a);
        (frame.add(to + 4) as *mut [u8; 4]).write(b);
        (frame.add(to + 8) as *mut [u8; 4]).write(c);
    }
}
