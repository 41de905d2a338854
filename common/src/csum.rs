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
