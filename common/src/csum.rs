//! Incremental internet checksum updates (RFC 1624), shared by the XDP program and the unit
//! tests that pin them against full recomputation.
//!
//! Checksums and the words they cover are handled as they sit in the packet: big-endian
//! 16-bit words, passed here as `u16` values read with `from_be_bytes`.

/// Folds a 32-bit one's complement sum to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Whether an IPv4 header without options carries a valid checksum, its 20 bytes read as
/// five native-endian 32-bit words (five loads rather than ten): the one's complement sum
/// of a valid header is all ones. A sum of 32-bit words folds to the sum of its 16-bit
/// halves, and all ones reads the same in either byte order (RFC 1071, 2.(B)).
#[inline(always)]
pub const fn ipv4_header_valid(words: [u32; 5]) -> bool {
    let sum =
        words[0] as u64 + words[1] as u64 + words[2] as u64 + words[3] as u64 + words[4] as u64;
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    fold(sum as u32) == 0xffff
}

/// The checksum `check` after one covered 16-bit word changed from `old` to `new`
/// (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`).
#[inline(always)]
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u32 + !old as u32 + new as u32)
}

/// The checksum `check` after the covered bytes `old` (an even number, 16-bit aligned in the
/// checksummed data) became `new`.
#[inline(always)]
pub fn replace_bytes<const N: usize>(check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    let mut sum = !check as u32;
    let mut i = 0;
    while i + 1 < N {
        sum += !u16::from_be_bytes([old[i], old[i + 1]]) as u32;
        sum += u16::from_be_bytes([new[i], new[i + 1]]) as u32;
        i += 2;
    }
    !fold(sum)
}

/// The value to store in a UDP checksum field: a computed zero is sent as `0xffff`, since zero
/// means "no checksum" (RFC 768).
#[inline(always)]
pub const fn udp_wire(check: u16) -> u16 {
    if check == 0 { 0xffff } else { check }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn header_words(h: &[u8; 20]) -> [u32; 5] {
        core::array::from_fn(|i| u32::from_ne_bytes(h[4 * i..4 * i + 4].try_into().unwrap()))
    }

    #[test]
    fn ipv4_header_checksum_is_checked_in_words() {
        // 198.18.0.2 → 198.18.1.2, UDP, TTL 64, DF: checksum 0xad96.
        let mut h: [u8; 20] =
            [0x45, 0, 0, 0x2e, 0, 0, 0x40, 0, 0x40, 0x11, 0xad, 0x96, 198, 18, 0, 2, 198, 18, 1, 2];
        assert!(ipv4_header_valid(header_words(&h)));
        for i in 0..20 {
            let mut bad = h;
            bad[i] ^= 0x10;
            assert!(!ipv4_header_valid(header_words(&bad)), "byte {i} changed");
        }
        // Against the 16-bit sum, over headers with every checksum value.
        for check in 0..=u16::MAX {
            h[10..12].copy_from_slice(&check.to_be_bytes());
            let mut sum = 0u32;
            for c in h.chunks(2) {
                sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
            }
            assert_eq!(ipv4_header_valid(header_words(&h)), fold(sum) == 0xffff, "{check:#x}");
        }
    }

    /// The full internet checksum of `data`.
    fn full(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for c in data.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        !fold(sum)
    }

    /// An IPv4 header (RFC 1071 style example values) with its checksum filled in.
    fn header() -> [u8; 20] {
        let mut h = [
            0x45, 0x00, 0x00, 0x54, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 198, 18, 1, 2,
            198, 18, 2, 2,
        ];
        let c = full(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn byte_exact_ipv4_address_rewrite() {
        let mut h = header();
        assert_eq!(h[10..12], [0x8f, 0x3a], "fixture checksum");
        let check = u16::from_be_bytes([h[10], h[11]]);
        let new = replace_bytes(check, &[198, 18, 2, 2], &[198, 18, 2, 100]);
        h[16..20].copy_from_slice(&[198, 18, 2, 100]);
        h[10..12].copy_from_slice(&new.to_be_bytes());
        assert_eq!(h[10..12], [0x8e, 0xd8], "as computed from scratch");
        assert_eq!(full(&h), 0, "the header verifies");
    }

    #[test]
    fn incremental_equals_full_recomputation() {
        // A deterministic sweep over words and replacements (including 0x0000 / 0xffff).
        let mut data: Vec<u8> = (0..64u32).map(|i| (i * 37 + 11) as u8).collect();
        let words = [0x0000u16, 0xffff, 0x0001, 0xfffe, 0x8000, 0x1234, 0xabcd];
        for at in (0..data.len()).step_by(2) {
            for &w in &words {
                let before = full(&data);
                let old = u16::from_be_bytes([data[at], data[at + 1]]);
                data[at..at + 2].copy_from_slice(&w.to_be_bytes());
                let inc = replace16(before, old, w);
                // One's complement has two zeros: compare through verification.
                let mut check = data.clone();
                check.extend_from_slice(&inc.to_be_bytes());
                assert_eq!(full(&check), 0, "at {at} word {w:#06x}");
            }
        }
    }

    #[test]
    fn udp_zero_goes_out_as_ffff() {
        assert_eq!(udp_wire(0), 0xffff);
        assert_eq!(udp_wire(0x1234), 0x1234);
    }
}
