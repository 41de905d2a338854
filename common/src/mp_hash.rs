//! The kernel's multipath hash, for `fib_multipath_hash_policy` 0, as the kernel computes it
//! once `net.ipv4.fib_multipath_hash_seed` is set (Linux 6.11+; it keys both families):
//! SipHash-2-4 of the `struct flow_keys` that `fib_multipath_hash` / `rt6_multipath_hash`
//! fill (addresses; IPv6 also the flow label and next header), from its `basic` member to
//! the end of the addresses and the struct's tail padding, after `__flow_hash_consistentify`
//! has put the smaller address first; the hash's low 32 bits (1 for 0), shifted right by one.
//! The key is the seed repeated in all four 32-bit words (`fib_multipath_hash_construct_key`).
//! Without a seed the kernel keys the hash with a random per-boot value nobody can read.
//!
//! The hashed bytes, as `struct flow_keys` lays them out (80 bytes; `basic` at 8):
//!
//! ```text
//!   offset from basic   0 basic (n_proto 2, ip_proto 1, pad 1)   4 tags (flow label)
//!                       8 vlan (8)  16 cvlan (8)  24 keyid (4)  28 ports (4)  32 icmp (4)
//!                      36 addrs: IPv4 src, dst (8) + 4 bytes of tail; IPv6 src, dst (32) + 4
//! ```
//!
//! Every function here works on little-endian 8-byte words of those bytes (the only byte
//! order xdpfwd runs on: x86-64 and arm64), with addresses as the XDP program keeps them:
//! the address's bytes loaded as native words (`wire::words`).

/// SipHash-2-4 fed one 8-byte word at a time, so that a caller can pass each word as it
/// computes it: the XDP program keeps the state in registers, the message nowhere.
#[derive(Clone, Copy)]
pub struct Sip([u64; 4]);

impl Sip {
    #[inline(always)]
    pub const fn new(k0: u64, k1: u64) -> Sip {
        Sip([
            0x736f_6d65_7073_6575 ^ k0,
            0x646f_7261_6e64_6f6d ^ k1,
            0x6c79_6765_6e65_7261 ^ k0,
            0x7465_6462_7974_6573 ^ k1,
        ])
    }

    /// The next word of the message.
    #[inline(always)]
    pub const fn word(self, m: u64) -> Sip {
        let mut v = self.0;
        v[3] ^= m;
        v = sip_round(sip_round(v));
        v[0] ^= m;
        Sip(v)
    }

    /// The hash of the `words` words fed.
    #[inline(always)]
    pub const fn finish(self, words: usize) -> u64 {
        let mut v = self.0;
        let b = ((words * 8) as u64) << 56;
        v[3] ^= b;
        v = sip_round(sip_round(v));
        v[0] ^= b;
        v[2] ^= 0xff;
        v = sip_round(sip_round(sip_round(sip_round(v))));
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }
}

#[inline(always)]
const fn sip_round([mut v0, mut v1, mut v2, mut v3]: [u64; 4]) -> [u64; 4] {
    v0 = v0.wrapping_add(v1);
    v1 = v1.rotate_left(13);
    v1 ^= v0;
    v0 = v0.rotate_left(32);
    v2 = v2.wrapping_add(v3);
    v3 = v3.rotate_left(16);
    v3 ^= v2;
    v0 = v0.wrapping_add(v3);
    v3 = v3.rotate_left(21);
    v3 ^= v0;
    v2 = v2.wrapping_add(v1);
    v1 = v1.rotate_left(17);
    v1 ^= v2;
    v2 = v2.rotate_left(32);
    [v0, v1, v2, v3]
}

/// The kernel's 31-bit path hash from the 64-bit SipHash of its keys, seeded with `seed`.
#[inline(always)]
const fn path_hash(h: u64) -> u32 {
    let h = h as u32;
    (if h == 0 { 1 } else { h }) >> 1
}

/// The SipHash key of `seed` (`fib_multipath_hash_construct_key`).
#[inline(always)]
const fn key(seed: u32) -> u64 {
    (seed as u64) << 32 | seed as u64
}

/// Policy 0, IPv4: the addresses (`src`, `dst`: the address bytes as a native `u32`).
#[inline(always)]
pub const fn kernel_l3_hash_v4(seed: u32, src: u32, dst: u32) -> u32 {
    // `__flow_hash_consistentify` compares the raw 32-bit words.
    let (s, d) = if dst < src { (dst, src) } else { (src, dst) };
    let k = key(seed);
    let sip = Sip::new(k, k).word(0).word(0).word(0).word(0);
    path_hash(sip.word((s as u64) << 32).word(d as u64).finish(6))
}

/// Policy 0, IPv6: the addresses (as two native words each), the flow label and the next
/// header. `label` is the flow label's word as the kernel keeps it in `flow_keys`: its bytes
/// in network order from the header (`ip6_flowlabel`), so `label.swap_bytes()` of its
/// value, except where the kernel's early flow dissection supplied it, in host order (its
/// value itself: ICMPv6 with port or protocol policy rules, `FibWord::dissect`).
#[inline(always)]
pub const fn kernel_l3_hash_v6(
    seed: u32,
    src: &[u64; 2],
    dst: &[u64; 2],
    label: u32,
    proto: u8,
) -> u32 {
    // `__flow_hash_consistentify`: `memcmp(dst, src) < 0`, the bytes in order.
    let (s, d) = if less_be(dst, src) { (dst, src) } else { (src, dst) };
    let k = key(seed);
    // basic.ip_proto at byte 2, the flow label's bytes (network order) at 4..8; then vlan,
    // cvlan, keyid, ports and icmp, all 0; then the addresses.
    let sip = Sip::new(k, k).word((proto as u64) << 16 | (label as u64) << 32);
    let sip = sip.word(0).word(0).word(0).word((s[0] & 0xffff_ffff) << 32);
    let sip = sip.word(s[0] >> 32 | s[1] << 32).word(s[1] >> 32 | (d[0] & 0xffff_ffff) << 32);
    path_hash(sip.word(d[0] >> 32 | d[1] << 32).word(d[1] >> 32).finish(9))
}

/// Whether address `a` sorts before `b`, byte by byte.
#[inline(always)]
const fn less_be(a: &[u64; 2], b: &[u64; 2]) -> bool {
    let (a0, b0) = (a[0].swap_bytes(), b[0].swap_bytes());
    a0 < b0 || (a0 == b0 && a[1].swap_bytes() < b[1].swap_bytes())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use core::hash::Hasher;
    use std::vec::Vec;

    use proptest::prelude::*;
    use siphasher::sip::SipHasher24;

    use super::*;

    /// SipHash-2-4 of a message of `N` 8-byte words (little-endian), keyed with `(k0, k1)`: the
    /// kernel's `siphash()` for a length that is a multiple of 8.
    fn siphash24<const N: usize>(k0: u64, k1: u64, words: &[u64; N]) -> u64 {
        let mut sip = Sip::new(k0, k1);
        let mut i = 0;
        while i < N {
            sip = sip.word(words[i]);
            i += 1;
        }
        sip.finish(N)
    }

    /// `struct flow_keys` as the kernel fills it for policy 0, byte for byte (80 bytes,
    /// `control.addr_type` at 2: 3 for IPv4 addresses, 4 for IPv6), its addresses already in
    /// `__flow_hash_consistentify`'s order (`s` first).
    fn flow_keys(v6: Option<([u8; 4], u8)>, s: &[u8], d: &[u8]) -> [u8; 80] {
        let mut k = [0u8; 80];
        k[2] = if v6.is_some() { 4 } else { 3 };
        if let Some((label, proto)) = v6 {
            k[8 + 2] = proto;
            k[12..16].copy_from_slice(&label);
        }
        k[44..44 + s.len()].copy_from_slice(s);
        k[44 + s.len()..44 + 2 * s.len()].copy_from_slice(d);
        k
    }

    /// The kernel's computation on those bytes, with an independent SipHash.
    fn kernel(seed: u32, keys: &[u8; 80], v6: bool) -> u32 {
        let len = if v6 { 72 } else { 48 };
        let k = u64::from(seed) << 32 | u64::from(seed);
        let mut h = SipHasher24::new_with_keys(k, k);
        h.write(&keys[8..8 + len]);
        path_hash(h.finish())
    }

    fn native(a: &[u8; 16]) -> [u64; 2] {
        [
            u64::from_ne_bytes(a[..8].try_into().unwrap()),
            u64::from_ne_bytes(a[8..].try_into().unwrap()),
        ]
    }

    #[test]
    fn siphash_matches_the_reference() {
        // The reference implementation's key 00..0f; messages of 0, 8 and 16 bytes 00, 01, ...
        let (k0, k1) = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        assert_eq!(siphash24::<0>(k0, k1, &[]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash24(k0, k1, &[0x0706_0504_0302_0100]), 0x93f5_f579_9a93_2462);
        let two = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
        let mut h = SipHasher24::new_with_keys(k0, k1);
        h.write(&(0..16).collect::<Vec<u8>>());
        assert_eq!(siphash24(k0, k1, &two), h.finish());
    }

    #[test]
    fn a_known_ipv4_flow() {
        // 198.18.1.2 -> 198.19.70.7, seed 1: the bytes the kernel hashes, spelled out.
        let (s, d) = ([198, 18, 1, 2], [198, 19, 70, 7]);
        let keys = flow_keys(None, &s, &d);
        assert!(u32::from_ne_bytes(s) < u32::from_ne_bytes(d), "already in the kernel's order");
        assert_eq!(&keys[44..52], &[198, 18, 1, 2, 198, 19, 70, 7]);
        let ours = kernel_l3_hash_v4(1, u32::from_ne_bytes(s), u32::from_ne_bytes(d));
        assert_eq!(ours, kernel(1, &keys, false));
        assert!(ours < 1 << 31);
    }

    proptest! {
        #[test]
        fn ipv4_is_the_kernels(seed: u32, s: [u8; 4], d: [u8; 4]) {
            let ours = kernel_l3_hash_v4(seed, u32::from_ne_bytes(s), u32::from_ne_bytes(d));
            // The kernel compares the addresses as raw (native) words.
            let (a, b) = if u32::from_ne_bytes(d) < u32::from_ne_bytes(s) { (d, s) } else { (s, d) };
            prop_assert_eq!(ours, kernel(seed, &flow_keys(None, &a, &b), false));
            prop_assert_eq!(ours, kernel_l3_hash_v4(seed, u32::from_ne_bytes(d), u32::from_ne_bytes(s)));
        }

        #[test]
        fn ipv6_is_the_kernels(
            seed: u32,
            s: [u8; 16],
            d: [u8; 16],
            label in 0u32..1 << 20,
            host: bool,
            proto: u8,
        ) {
            // The flow label as `ip6_flowlabel` leaves it (network order), or as the flow
            // dissector does (host order).
            let (bytes, word) =
                if host { (label.to_ne_bytes(), label) } else { (label.to_be_bytes(), label.swap_bytes()) };
            let ours = kernel_l3_hash_v6(seed, &native(&s), &native(&d), word, proto);
            // `memcmp`: the bytes in order.
            let (a, b) = if d < s { (d, s) } else { (s, d) };
            prop_assert_eq!(ours, kernel(seed, &flow_keys(Some((bytes, proto)), &a, &b), true));
            prop_assert_eq!(ours, kernel_l3_hash_v6(seed, &native(&d), &native(&s), word, proto));
        }
    }
}
