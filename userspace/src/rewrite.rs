//! In-place header rewrite of a routed frame: what a Linux router changes, nothing else.
//!
//! Pure functions over byte slices; they never panic, never allocate and never touch the
//! payload. The worker calls them on frames that live in the UMEM.

use xdpfwd_common::{META_LEN, META_MAGIC, MetaFlags, XskMeta};

const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;

/// Why a frame could not be rewritten (it is then dropped and counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("frame shorter than its headers")]
    Truncated,
    #[error("IP header does not match the family the XDP program announced")]
    BadVersion,
    #[error("TTL or hop limit already at 1 or 0")]
    Expired,
}

/// Reads the [`XskMeta`] the XDP program put in front of a frame; `None` unless its magic is
/// there.
pub fn parse_meta(bytes: &[u8; META_LEN]) -> Option<XskMeta> {
    let word =
        |at: usize| u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let half = |at: usize| u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
    let magic = word(24);
    if magic != META_MAGIC {
        return None;
    }
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&bytes[8..24]);
    Some(XskMeta {
        oif: word(0),
        flags: MetaFlags::from_bits_retain(half(4)),
        l3_off: half(6),
        addr,
        magic,
    })
}

/// Rewrites a routed frame in place and returns its new length.
///
/// Sets the destination and source MACs, decrements the IPv4 TTL (updating the header
/// checksum incrementally, as the kernel does) or the IPv6 hop limit, and trims link-layer
/// padding beyond the IP length (the kernel trims it on receive).
pub fn route_frame(
    frame: &mut [u8],
    l3_off: usize,
    ipv6: bool,
    dst_mac: &[u8; 6],
    src_mac: &[u8; 6],
) -> Result<usize, RewriteError> {
    if frame.len() < l3_off + IPV4_MIN_HLEN || l3_off < 12 {
        return Err(RewriteError::Truncated);
    }
    let ip_len = if ipv6 {
        decrement_hop_limit(frame.get_mut(l3_off..).ok_or(RewriteError::Truncated)?)?
    } else {
        decrement_ttl(frame.get_mut(l3_off..).ok_or(RewriteError::Truncated)?)?
    };
    frame[0..6].copy_from_slice(dst_mac);
    frame[6..12].copy_from_slice(src_mac);
    Ok(l3_off + ip_len)
}

/// Rewrites the first buffer (`head`) of a routed frame `len` bytes long in all its buffers,
/// as [`route_frame`] does a frame in one: the headers lie in the head, the payload in the
/// rest. The frame must be whole: its IP length reaches its end (the XDP program steers only
/// such frames into more than one buffer), so nothing is trimmed.
pub fn route_head(
    head: &mut [u8],
    len: usize,
    l3_off: usize,
    ipv6: bool,
    (dst_mac, src_mac): (&[u8; 6], &[u8; 6]),
) -> Result<(), RewriteError> {
    if head.len() < l3_off + IPV4_MIN_HLEN || l3_off < 12 || len < head.len() {
        return Err(RewriteError::Truncated);
    }
    let ip = &mut head[l3_off..];
    let avail = len - l3_off;
    if ip_length(ip, ipv6) != Some(avail) {
        return Err(RewriteError::Truncated);
    }
    if ipv6 {
        decrement_hop_limit_in(ip, avail)?
    } else {
        decrement_ttl_in(ip, avail)?
    };
    head[0..6].copy_from_slice(dst_mac);
    head[6..12].copy_from_slice(src_mac);
    Ok(())
}

/// The IP length (header included) the header at the start of `ip` gives, if it holds one.
fn ip_length(ip: &[u8], ipv6: bool) -> Option<usize> {
    if ipv6 {
        let payload = u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]);
        Some(IPV6_HLEN + usize::from(payload))
    } else {
        Some(usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?])))
    }
}

/// Decrements the TTL of the IPv4 header at the start of `ip` and returns the IP total
/// length.
pub fn decrement_ttl(ip: &mut [u8]) -> Result<usize, RewriteError> {
    let avail = ip.len();
    decrement_ttl_in(ip, avail)
}

/// [`decrement_ttl`] of a packet `avail` bytes long, of which `ip` holds the header at least.
fn decrement_ttl_in(ip: &mut [u8], avail: usize) -> Result<usize, RewriteError> {
    if ip.len() < IPV4_MIN_HLEN {
        return Err(RewriteError::Truncated);
    }
    if ip[0] >> 4 != 4 {
        return Err(RewriteError::BadVersion);
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total < IPV4_MIN_HLEN || total > avail {
        return Err(RewriteError::Truncated);
    }
    if ip[8] <= 1 {
        return Err(RewriteError::Expired);
    }
    ip[8] -= 1;
    let check = ttl_decrement_checksum([ip[10], ip[11]]);
    ip[10..12].copy_from_slice(&check);
    Ok(total)
}

/// The IPv4 header checksum after a TTL decrement, computed exactly as the kernel's
/// `ip_decrease_ttl()` does (RFC 1624 incremental update, in memory byte order), so that a
/// frame forwarded by xdpfwd is bit for bit the frame the kernel would have sent.
pub fn ttl_decrement_checksum(check: [u8; 2]) -> [u8; 2] {
    let mut sum = u32::from(u16::from_ne_bytes(check));
    sum += u32::from(0x0100u16.to_be());
    sum += u32::from(sum >= 0xffff);
    (sum as u16).to_ne_bytes()
}

/// Decrements the hop limit of the IPv6 header at the start of `ip` and returns the IP
/// length (header and payload).
pub fn decrement_hop_limit(ip: &mut [u8]) -> Result<usize, RewriteError> {
    let avail = ip.len();
    decrement_hop_limit_in(ip, avail)
}

/// [`decrement_hop_limit`] of a packet `avail` bytes long, of which `ip` holds the header at
/// least.
fn decrement_hop_limit_in(ip: &mut [u8], avail: usize) -> Result<usize, RewriteError> {
    if ip.len() < IPV6_HLEN {
        return Err(RewriteError::Truncated);
    }
    if ip[0] >> 4 != 6 {
        return Err(RewriteError::BadVersion);
    }
    let total = IPV6_HLEN + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if total > avail {
        return Err(RewriteError::Truncated);
    }
    if ip[7] <= 1 {
        return Err(RewriteError::Expired);
    }
    ip[7] -= 1;
    Ok(total)
}

/// The Internet checksum (RFC 1071) of `data`: what a full recomputation gives.
#[cfg(test)]
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A 64-byte frame: UDP over IPv4 from 198.18.0.1 to 198.19.0.2, TTL 64, padded.
    const UDP4: [u8; 60] = [
        0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00, // Ethernet
        0x45, 0x00, 0x00, 0x20, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, // IPv4 ...
        198, 18, 0, 1, 198, 19, 0, 2, // ... addresses
        0x30, 0x39, 0x23, 0x28, 0x00, 0x0c, 0x00, 0x00, b'p', b'i', b'n', b'g', // UDP
        0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee,
        0xee, // padding
    ];

    fn with_checksum(mut frame: [u8; 60]) -> [u8; 60] {
        let check = internet_checksum(&frame[14..34]);
        frame[24..26].copy_from_slice(&check.to_be_bytes());
        frame
    }

    #[test]
    fn routes_ipv4_frame_byte_exact() {
        let mut frame = with_checksum(UDP4);
        let before = frame;
        let len = route_frame(&mut frame, 14, false, &[0xaa; 6], &[0xbb; 6]).unwrap();
        assert_eq!(len, 14 + 32, "padding trimmed to the IP total length");
        assert_eq!(
            &frame[0..12],
            &[0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb]
        );
        assert_eq!(frame[22], 63);
        assert_eq!(internet_checksum(&frame[14..34]), 0, "header checksum still valid");
        // Everything else is untouched, payload and padding included.
        assert_eq!(frame[12..22], before[12..22]);
        assert_eq!(frame[23], before[23]);
        assert_eq!(frame[26..], before[26..]);
    }

    #[test]
    fn routes_ipv6_frame() {
        let mut frame = [0u8; 14 + 40 + 8];
        frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        frame[14] = 0x60;
        frame[18..20].copy_from_slice(&8u16.to_be_bytes());
        frame[20] = 17;
        frame[21] = 2;
        let len = route_frame(&mut frame, 14, true, &[1; 6], &[2; 6]).unwrap();
        assert_eq!(len, frame.len());
        assert_eq!(frame[21], 1);
        assert_eq!(route_frame(&mut frame, 14, true, &[1; 6], &[2; 6]), Err(RewriteError::Expired));
    }

    #[test]
    fn rejects_short_and_mismatched_frames() {
        let mut frame = with_checksum(UDP4);
        assert_eq!(
            route_frame(&mut frame, 14, true, &[0; 6], &[0; 6]),
            Err(RewriteError::BadVersion)
        );
        assert_eq!(
            route_frame(&mut frame[..40], 14, false, &[0; 6], &[0; 6]),
            Err(RewriteError::Truncated),
            "IP length beyond the frame"
        );
        let mut v6 = frame;
        v6[14] = 0x65;
        assert_eq!(
            route_frame(&mut v6, 14, false, &[0; 6], &[0; 6]),
            Err(RewriteError::BadVersion)
        );
        for len in 0..34 {
            let mut short = with_checksum(UDP4);
            assert!(route_frame(&mut short[..len], 14, false, &[0; 6], &[0; 6]).is_err());
        }
        let mut ttl1 = UDP4;
        ttl1[22] = 1;
        assert_eq!(route_frame(&mut ttl1, 14, false, &[0; 6], &[0; 6]), Err(RewriteError::Expired));
    }

    /// A whole jumbo frame: UDP over IPv4 (or IPv6), `payload` bytes of UDP payload.
    fn jumbo(ipv6: bool, payload: usize) -> Vec<u8> {
        let mut frame = vec![0x5au8; 14 + if ipv6 { 40 } else { 20 } + 8 + payload];
        frame[0..14].copy_from_slice(&UDP4[0..14]);
        if ipv6 {
            frame[12..14].copy_from_slice(&[0x86, 0xdd]);
            frame[14] = 0x60;
            frame[18..20].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
            frame[21] = 64;
        } else {
            frame[14..34].copy_from_slice(&UDP4[14..34]);
            frame[16..18].copy_from_slice(&((28 + payload) as u16).to_be_bytes());
            frame[24..26].copy_from_slice(&[0, 0]);
            let check = internet_checksum(&frame[14..34]);
            frame[24..26].copy_from_slice(&check.to_be_bytes());
        }
        frame
    }

    /// The head of a frame in several buffers is rewritten byte for byte as the same frame in
    /// one: the MACs, the TTL with its checksum, the hop limit.
    #[test]
    fn the_head_of_a_multi_buffer_frame_is_rewritten_as_the_whole_frame() {
        for ipv6 in [false, true] {
            let mut whole = jumbo(ipv6, 8000);
            let len = whole.len();
            let mut head = whole[..3840].to_vec();
            route_head(&mut head, len, 14, ipv6, (&[0xaa; 6], &[0xbb; 6])).unwrap();
            assert_eq!(route_frame(&mut whole, 14, ipv6, &[0xaa; 6], &[0xbb; 6]), Ok(len));
            assert_eq!(head[..], whole[..3840], "ipv6 {ipv6}");
        }
    }

    /// Only a whole frame: an IP length short of the frame's end (padding) or beyond it, a
    /// head too short for the headers, and an expired TTL are refused, the head unchanged.
    #[test]
    fn the_head_of_a_frame_that_is_not_whole_is_refused() {
        let frame = jumbo(false, 8000);
        let len = frame.len();
        let macs = (&[0xaa; 6], &[0xbb; 6]);
        for (wrong, why) in [(len + 40, "padded"), (len - 1, "short")] {
            let mut head = frame[..3840].to_vec();
            assert_eq!(route_head(&mut head, wrong, 14, false, macs), Err(RewriteError::Truncated));
            assert_eq!(head[..], frame[..3840], "{why}");
        }
        let mut tiny = frame[..30].to_vec();
        assert_eq!(route_head(&mut tiny, len, 14, false, macs), Err(RewriteError::Truncated));
        let mut v6 = jumbo(true, 8000)[..50].to_vec();
        assert_eq!(route_head(&mut v6, len, 14, true, macs), Err(RewriteError::Truncated));
        let mut expired = frame[..3840].to_vec();
        expired[22] = 1;
        assert_eq!(route_head(&mut expired, len, 14, false, macs), Err(RewriteError::Expired));
    }

    #[test]
    fn kernel_checksum_edge_cases() {
        // 0xfeff + 0x0100 = 0xffff, which the kernel folds to 0x0000.
        assert_eq!(ttl_decrement_checksum(0xfeffu16.to_be_bytes()), [0x00, 0x00]);
        assert_eq!(ttl_decrement_checksum(0xff00u16.to_be_bytes()), [0x00, 0x01]);
        assert_eq!(ttl_decrement_checksum(0x1234u16.to_be_bytes()), [0x13, 0x34]);
    }

    #[test]
    fn meta_round_trip() {
        let mut bytes = [0u8; META_LEN];
        bytes[0..4].copy_from_slice(&7u32.to_ne_bytes());
        bytes[4..6].copy_from_slice(&1u16.to_ne_bytes());
        bytes[6..8].copy_from_slice(&14u16.to_ne_bytes());
        bytes[8..24].copy_from_slice(&[9; 16]);
        assert_eq!(parse_meta(&bytes), None, "no magic, no meta");
        bytes[24..28].copy_from_slice(&META_MAGIC.to_ne_bytes());
        let meta = parse_meta(&bytes).unwrap();
        assert_eq!(
            (meta.oif, meta.flags, meta.l3_off, meta.addr),
            (7, MetaFlags::IPV6, 14, [9; 16])
        );
    }

    proptest! {
        /// The incremental update equals a full recomputation for any valid IPv4 header.
        #[test]
        fn incremental_checksum_matches_full(
            mut header in proptest::collection::vec(any::<u8>(), 20),
            ttl in 2u8..=255,
        ) {
            header[0] = 0x45;
            header[2..4].copy_from_slice(&20u16.to_be_bytes());
            header[8] = ttl;
            header[10] = 0;
            header[11] = 0;
            let check = internet_checksum(&header);
            header[10..12].copy_from_slice(&check.to_be_bytes());
            decrement_ttl(&mut header).unwrap();
            let incremental = [header[10], header[11]];
            header[10] = 0;
            header[11] = 0;
            prop_assert_eq!(incremental, internet_checksum(&header).to_be_bytes());
        }

        /// Arbitrary bytes never make the rewrite panic.
        #[test]
        fn never_panics(mut frame in proptest::collection::vec(any::<u8>(), 0..200), l3 in 0usize..40, v6: bool) {
            let _ = route_frame(&mut frame, l3, v6, &[0; 6], &[0; 6]);
        }

        /// ... nor the rewrite of a head, whatever length the frame claims.
        #[test]
        fn never_panics_on_a_head(
            mut head in proptest::collection::vec(any::<u8>(), 0..200),
            len in 0usize..20_000,
            l3 in 0usize..40,
            v6: bool,
        ) {
            let _ = route_head(&mut head, len, l3, v6, (&[0; 6], &[0; 6]));
        }
    }
}
