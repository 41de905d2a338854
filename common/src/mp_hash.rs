//! The kernel's multipath hash, for `fib_multipath_hash_policy` 0, 2 and 3, as the kernel
//! computes it once `net.ipv4.fib_multipath_hash_seed` is set (Linux 6.11+; it keys both
//! families): SipHash-2-4 of the `struct flow_keys` that `fib_multipath_hash` /
//! `rt6_multipath_hash` fill (the fields the policy names: addresses, IPv6's flow label,
//! protocol, ports), from its `basic` member to the end of the addresses and the struct's
//! tail padding, after `__flow_hash_consistentify` has put the smaller address first and,
//! on its own, the smaller port; the hash's low 32 bits (1 for 0). Policies 0 and 2 shift
//! that right by one; policy 3 mixes it with the inner header's hash (`jhash_2words`) first.
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

/// The kernel's flow hash (`flow_hash_from_keys_seed`) from the 64-bit SipHash of its
/// keys: the low 32 bits, 1 for 0.
#[inline(always)]
const fn nonzero(h: u64) -> u32 {
    let h = h as u32;
    if h == 0 { 1 } else { h }
}

/// The SipHash key of `seed` (`fib_multipath_hash_construct_key`).
#[inline(always)]
const fn key(seed: u32) -> u64 {
    (seed as u64) << 32 | seed as u64
}

/// The word of `flow_keys.ports` for ports `sport` and `dport`: their bytes in network
/// order, as the kernel keeps them.
#[inline(always)]
pub const fn ports_word(sport: u16, dport: u16) -> u32 {
    sport.to_be() as u32 | (dport.to_be() as u32) << 16
}

/// `__flow_hash_consistentify`'s order of the ports: the smaller raw 16-bit word first,
/// whatever it did with the addresses.
#[inline(always)]
const fn consistent_ports(ports: u32) -> u32 {
    if ports >> 16 < ports & 0xffff { ports.rotate_left(16) } else { ports }
}

/// The kernel's flow hash of IPv4 keys: the addresses (`src`, `dst`: the address bytes as a
/// native `u32`), the protocol and the ports ([`ports_word`]), each 0 where the hash policy
/// leaves it out.
#[inline(always)]
pub const fn flow_hash_v4(seed: u32, src: u32, dst: u32, proto: u8, ports: u32) -> u32 {
    let (src, dst) = ([src as u64, 0], [dst as u64, 0]);
    Keys { src, dst, label: 0, ports, proto, v6: false }.flow_hash(seed)
}

/// The kernel's flow hash of IPv6 keys: the addresses (as two native words each), the flow
/// label, the next header and the ports ([`ports_word`]), each 0 where the hash policy
/// leaves it out. `label` is the flow label's word as the kernel keeps it in `flow_keys`:
/// its bytes in network order from the header (`ip6_flowlabel`), so `label.swap_bytes()`
/// of its value, except where the kernel's flow dissector supplied it, in host order (its
/// value itself: policies 2 and 3, and ICMPv6 with port or protocol policy rules,
/// `FibWord::dissect`).
#[inline(always)]
pub const fn flow_hash_v6(
    seed: u32,
    src: [u64; 2],
    dst: [u64; 2],
    label: u32,
    proto: u8,
    ports: u32,
) -> u32 {
    Keys { src, dst, label, ports, proto, v6: true }.flow_hash(seed)
}

/// The fields of `struct flow_keys` that the multipath hash covers, as the kernel keeps them
/// (0 where the hash policy leaves a field out): the addresses (IPv4's in the first word's
/// low half), the flow label and ports as [`flow_hash_v6`] and [`ports_word`] take them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keys {
    pub src: [u64; 2],
    pub dst: [u64; 2],
    pub label: u32,
    pub ports: u32,
    pub proto: u8,
    pub v6: bool,
}

impl Keys {
    /// The kernel's flow hash of the keys (`fib_multipath_hash_from_keys`): one SipHash for
    /// both families, which differ in the words of addresses only, each word fed as it is
    /// computed (in registers: the XDP program's stack has no room for them).
    #[inline(always)]
    pub const fn flow_hash(self, seed: u32) -> u32 {
        // `__flow_hash_consistentify`: IPv4 compares the raw 32-bit words, IPv6 the bytes in
        // order (`memcmp(dst, src) < 0`). IPv4's two addresses then sit where IPv6's first
        // word does.
        let (s, d) = if self.v6 {
            if less_be(self.dst, self.src) { (self.dst, self.src) } else { (self.src, self.dst) }
        } else {
            let (a, b) = (self.src[0] as u32, self.dst[0] as u32);
            let (a, b) = if b < a { (b, a) } else { (a, b) };
            ([a as u64 | (b as u64) << 32, 0], [0, 0])
        };
        let k = key(seed);
        // basic.ip_proto at byte 2, the flow label at 4..8; vlan, cvlan, keyid 0; the ports
        // at 28..32; icmp 0; then the addresses and the struct's tail.
        let sip = Sip::new(k, k).word((self.proto as u64) << 16 | (self.label as u64) << 32);
        let sip = sip.word(0).word(0).word((consistent_ports(self.ports) as u64) << 32);
        let sip = sip.word((s[0] & 0xffff_ffff) << 32).word(s[0] >> 32 | s[1] << 32);
        let (sip, words) = if self.v6 {
            let sip = sip.word(s[1] >> 32 | (d[0] & 0xffff_ffff) << 32);
            (sip.word(d[0] >> 32 | d[1] << 32).word(d[1] >> 32), 9)
        } else {
            (sip, 6)
        };
        nonzero(sip.finish(words))
    }
}

/// Policy 0, IPv4: the path hash of the addresses.
#[inline(always)]
pub const fn kernel_l3_hash_v4(seed: u32, src: u32, dst: u32) -> u32 {
    flow_hash_v4(seed, src, dst, 0, 0) >> 1
}

/// Policy 0, IPv6: the path hash of the addresses, the flow label (as [`flow_hash_v6`]
/// takes it) and the next header.
#[inline(always)]
pub const fn kernel_l3_hash_v6(
    seed: u32,
    src: [u64; 2],
    dst: [u64; 2],
    label: u32,
    proto: u8,
) -> u32 {
    flow_hash_v6(seed, src, dst, label, proto, 0) >> 1
}

/// Policy 3: the path hash of the outer header's flow hash (0 where no outer field is
/// hashed), for a packet whose inner header is not hashed (no encapsulation, or no inner
/// field): `jhash_2words(outer, 0, 0)` (`fib_multipath_custom_hash_skb`,
/// `rt6_multipath_custom_hash_skb`).
#[inline(always)]
pub const fn custom_path_hash(outer: u32) -> u32 {
    jhash_2words(outer, 0, 0) >> 1
}

/// The kernel's `jhash_2words` (`include/linux/jhash.h`).
#[inline(always)]
pub const fn jhash_2words(a: u32, b: u32, initval: u32) -> u32 {
    let init = initval.wrapping_add(0xdead_beef).wrapping_add(2 << 2);
    let (mut a, mut b, mut c) = (a.wrapping_add(init), b.wrapping_add(init), init);
    // `__jhash_final`
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

/// Whether address `a` sorts before `b`, byte by byte.
#[inline(always)]
const fn less_be(a: [u64; 2], b: [u64; 2]) -> bool {
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

    /// `struct flow_keys` as the kernel fills it, byte for byte (80 bytes,
    /// `control.addr_type` at 2: 3 for IPv4 addresses, 4 for IPv6), its addresses and ports
    /// already in `__flow_hash_consistentify`'s order (`s` first, `ports` as they go).
    fn flow_keys(proto: u8, label: [u8; 4], ports: [u8; 4], s: &[u8], d: &[u8]) -> [u8; 80] {
        let mut k = [0u8; 80];
        k[2] = if s.len() == 16 { 4 } else { 3 };
        k[8 + 2] = proto;
        k[12..16].copy_from_slice(&label);
        k[36..40].copy_from_slice(&ports);
        k[44..44 + s.len()].copy_from_slice(s);
        k[44 + s.len()..44 + 2 * s.len()].copy_from_slice(d);
        k
    }

    /// Policy 0's keys: the addresses (IPv6 also the flow label and next header).
    fn l3_keys(v6: Option<([u8; 4], u8)>, s: &[u8], d: &[u8]) -> [u8; 80] {
        let (label, proto) = v6.unwrap_or(([0; 4], 0));
        flow_keys(proto, label, [0; 4], s, d)
    }

    /// The kernel's flow hash of those bytes, with an independent SipHash.
    fn flow_hash(seed: u32, keys: &[u8; 80]) -> u32 {
        let len = if keys[2] == 4 { 72 } else { 48 };
        let k = u64::from(seed) << 32 | u64::from(seed);
        let mut h = SipHasher24::new_with_keys(k, k);
        h.write(&keys[8..8 + len]);
        nonzero(h.finish())
    }

    fn kernel(seed: u32, keys: &[u8; 80]) -> u32 {
        flow_hash(seed, keys) >> 1
    }

    /// The ports' bytes in the order `__flow_hash_consistentify` leaves them: the smaller
    /// raw (native) 16-bit word first.
    fn ordered_ports(sport: u16, dport: u16) -> [u8; 4] {
        let (s, d) = (sport.to_be_bytes(), dport.to_be_bytes());
        let (a, b) = if u16::from_ne_bytes(d) < u16::from_ne_bytes(s) { (d, s) } else { (s, d) };
        [a[0], a[1], b[0], b[1]]
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
        let keys = l3_keys(None, &s, &d);
        assert!(u32::from_ne_bytes(s) < u32::from_ne_bytes(d), "already in the kernel's order");
        assert_eq!(&keys[44..52], &[198, 18, 1, 2, 198, 19, 70, 7]);
        let ours = kernel_l3_hash_v4(1, u32::from_ne_bytes(s), u32::from_ne_bytes(d));
        assert_eq!(ours, kernel(1, &keys));
        assert!(ours < 1 << 31);
    }

    #[test]
    fn jhash_matches_the_kernels() {
        // `jhash_2words` as include/linux/jhash.h has it, compiled with gcc.
        assert_eq!(jhash_2words(0, 0, 0), 0x58c1_84bf);
        assert_eq!(jhash_2words(1, 0, 0), 0x5543_253f);
        assert_eq!(jhash_2words(0x1234_5678, 0, 0), 0xd134_ea9a);
        assert_eq!(jhash_2words(u32::MAX, 0, 0), 0x05e7_a47a);
        assert_eq!(jhash_2words(0xdead_beef, 0x0102_0304, 7), 0x1a1c_6ce0);
        assert_eq!(custom_path_hash(0), 0x58c1_84bf >> 1, "no outer field");
    }

    #[test]
    fn ports_go_in_network_order() {
        assert_eq!(ports_word(0x1234, 0xabcd).to_ne_bytes(), [0x12, 0x34, 0xab, 0xcd]);
        // Swapped on their own: 0x0100 (raw 0x0001) sorts before 0x0002 (raw 0x0200).
        assert_eq!(consistent_ports(ports_word(2, 0x100)), ports_word(0x100, 2));
        assert_eq!(consistent_ports(ports_word(0x100, 2)), ports_word(0x100, 2));
    }

    proptest! {
        #[test]
        fn ipv4_with_ports_is_the_kernels(seed: u32, s: [u8; 4], d: [u8; 4], proto: u8, sport: u16, dport: u16) {
            let ports = ports_word(sport, dport);
            let ours = flow_hash_v4(seed, u32::from_ne_bytes(s), u32::from_ne_bytes(d), proto, ports);
            let (a, b) = if u32::from_ne_bytes(d) < u32::from_ne_bytes(s) { (d, s) } else { (s, d) };
            let keys = flow_keys(proto, [0; 4], ordered_ports(sport, dport), &a, &b);
            prop_assert_eq!(ours, flow_hash(seed, &keys));
            // The reply's keys are the same (addresses and ports swapped).
            let reply = flow_hash_v4(seed, u32::from_ne_bytes(d), u32::from_ne_bytes(s), proto, ports_word(dport, sport));
            prop_assert_eq!(ours, reply);
        }

        #[test]
        fn ipv6_with_ports_is_the_kernels(
            seed: u32,
            s: [u8; 16],
            d: [u8; 16],
            label in 0u32..1 << 20,
            proto: u8,
            sport: u16,
            dport: u16,
        ) {
            let ours = flow_hash_v6(seed, native(&s), native(&d), label, proto, ports_word(sport, dport));
            let (a, b) = if d < s { (d, s) } else { (s, d) };
            let keys = flow_keys(proto, label.to_ne_bytes(), ordered_ports(sport, dport), &a, &b);
            prop_assert_eq!(ours, flow_hash(seed, &keys));
        }

        #[test]
        fn ipv4_is_the_kernels(seed: u32, s: [u8; 4], d: [u8; 4]) {
            let ours = kernel_l3_hash_v4(seed, u32::from_ne_bytes(s), u32::from_ne_bytes(d));
            // The kernel compares the addresses as raw (native) words.
            let (a, b) = if u32::from_ne_bytes(d) < u32::from_ne_bytes(s) { (d, s) } else { (s, d) };
            prop_assert_eq!(ours, kernel(seed, &l3_keys(None, &a, &b)));
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
            let ours = kernel_l3_hash_v6(seed, native(&s), native(&d), word, proto);
            // `memcmp`: the bytes in order.
            let (a, b) = if d < s { (d, s) } else { (s, d) };
            prop_assert_eq!(ours, kernel(seed, &l3_keys(Some((bytes, proto)), &a, &b)));
            prop_assert_eq!(ours, kernel_l3_hash_v6(seed, native(&d), native(&s), word, proto));
        }
    }
}
