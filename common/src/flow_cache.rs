//! The flow cache's shared part: its key, the slot a key takes, and the control words.
//!
//! The XDP program keeps, per CPU, a direct-mapped table (`FLOW_CACHE`, a per-CPU array):
//! a flow's key selects one slot by its hash, and the slot holds the key, the generation it
//! was filled in and the decision. `CACHE_CTL` holds a [`CacheCtl`]: the current generation
//! (0: the cache is off) and the slot mask; user space sizes the table and starts a new
//! generation after every change of what a decision is made from.

/// The one entry of `CACHE_CTL` (one lookup per frame reads both).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCtl {
    /// The current generation (0: the cache is off). 64 bits, so that no generation comes
    /// back: at 32, a control plane busy with route churn could wrap it within months, and
    /// an entry left in a quiet slot since the generation of the same number would count
    /// again.
    pub generation: u64,
    /// The slot mask (slots − 1; slots are a power of two).
    pub mask: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CacheCtl>() == 16);
/// Slots per CPU by default (`--flow-cache`).
pub const DEFAULT_CACHE_SLOTS: u32 = 8192;
/// Most slots per CPU (`--flow-cache`).
pub const MAX_CACHE_SLOTS: u32 = 1 << 20;

/// What `FLOW_CACHE_STATS` counts (per CPU; its index).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStat {
    /// Frames whose decision came from the cache.
    Hits = 0,
    /// Decisions written into the cache.
    Fills = 1,
}

impl CacheStat {
    /// Entries of `FLOW_CACHE_STATS`.
    pub const COUNT: u32 = 2;
}

/// A flow as the cache tells flows apart: everything of a frame that the policy and route
/// stages read, in seven words without padding (so that a compare is seven word compares).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey(pub [u64; 7]);

/// The fields of a [`FlowKey`], as the XDP program's flow holds them.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowFields {
    /// Addresses as the program's words (`wire::words`).
    pub src: [u64; 2],
    pub dst: [u64; 2],
    pub ifindex: u32,
    pub label: u32,
    pub sport: u16,
    pub dport: u16,
    pub vlan: u16,
    pub proto: u8,
    /// The program's flow flags (family, ports, fragment).
    pub flags: u8,
    pub ds: u8,
    /// Offset of the IP header (where a tag is popped, 18; else 14).
    pub l3: u8,
}

impl FlowKey {
    #[inline(always)]
    pub const fn new(f: &FlowFields) -> FlowKey {
        FlowKey([
            f.src[0],
            f.src[1],
            f.dst[0],
            f.dst[1],
            key_iface(f.ifindex, f.label),
            key_ports(f.sport, f.dport, f.vlan, f.proto, f.flags),
            key_ds(f.ds, f.l3),
        ])
    }

    /// The slot of the key in a table of `mask + 1` slots.
    #[inline(always)]
    pub const fn slot(&self, mask: u32) -> u32 {
        let w = &self.0;
        key_hash([w[0], w[1], w[2], w[3]], [w[4], w[5], w[6]]) as u32 & mask
    }
}

// The words of a key one by one, for the XDP program, which builds none on its 512-byte
// stack: it hashes and compares the words as it computes them.

/// Word 4 of a key.
#[inline(always)]
pub const fn key_iface(ifindex: u32, label: u32) -> u64 {
    ifindex as u64 | (label as u64) << 32
}

/// Word 5 of a key.
#[inline(always)]
pub const fn key_ports(sport: u16, dport: u16, vlan: u16, proto: u8, flags: u8) -> u64 {
    sport as u64
        | (dport as u64) << 16
        | (vlan as u64) << 32
        | (proto as u64) << 48
        | (flags as u64) << 56
}

/// Word 6 of a key.
#[inline(always)]
pub const fn key_ds(ds: u8, l3: u8) -> u64 {
    ds as u64 | (l3 as u64) << 8
}

/// The slot hash of a key's words (addresses, then the other three; the slot is the low
/// bits): four products of independent word pairs, computed side by side rather than one
/// after another (a chain of seven took a tenth of the fast path's time), combined, then
/// folded and mixed once more so that high bits (the last bytes of an IPv6 address on a
/// little-endian machine) reach the slot bits too.
#[inline(always)]
pub const fn key_hash(addrs: [u64; 4], rest: [u64; 3]) -> u64 {
    let a = (addrs[0] ^ rest[0].rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let b = (addrs[1] ^ rest[1]).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    let c = (addrs[2] ^ rest[2].rotate_left(16)).wrapping_mul(0x1656_67b1_9e37_79f9);
    let d = addrs[3].wrapping_mul(0x85eb_ca77_c2b2_ae63);
    let h = a.wrapping_add(b) ^ c.wrapping_add(d);
    let h = (h ^ h >> 32).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ h >> 29
}

/// The slot mask for a table of `slots` slots, if `slots` is a valid size (a power of two
/// up to [`MAX_CACHE_SLOTS`]).
pub const fn cache_mask(slots: u32) -> Option<u32> {
    if slots.is_power_of_two() && slots <= MAX_CACHE_SLOTS { Some(slots - 1) } else { None }
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 56);

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(src: [u8; 4], dst: [u8; 4], sport: u16) -> FlowFields {
        FlowFields {
            src: [u32::from_ne_bytes(src) as u64, 0],
            dst: [u32::from_ne_bytes(dst) as u64, 0],
            ifindex: 7,
            sport,
            dport: 53,
            proto: 17,
            flags: 2,
            l3: 14,
            ..FlowFields::default()
        }
    }

    #[test]
    fn every_field_is_part_of_the_key() {
        let base = v4([198, 18, 0, 1], [198, 19, 0, 1], 1000);
        let key = FlowKey::new(&base);
        let variants: [fn(&mut FlowFields); 13] = [
            |f| f.src[0] ^= 1 << 24,
            |f| f.src[1] = 1,
            |f| f.dst[0] ^= 1,
            |f| f.dst[1] = 1 << 63,
            |f| f.ifindex = 8,
            |f| f.label = 1,
            |f| f.sport = 1001,
            |f| f.dport = 54,
            |f| f.vlan = 1,
            |f| f.proto = 6,
            |f| f.flags = 3,
            |f| f.ds = 0x10,
            |f| f.l3 = 18,
        ];
        for (i, change) in variants.iter().enumerate() {
            let mut f = base;
            change(&mut f);
            assert_ne!(FlowKey::new(&f), key, "field {i} left out of the key");
        }
        assert_eq!(FlowKey::new(&base), key);
    }

    #[test]
    fn the_key_packs_the_fields_into_words() {
        let f = FlowFields {
            src: [1, 2],
            dst: [3, 4],
            ifindex: 0x0102_0304,
            label: 0x000a_bcde,
            sport: 0x1111,
            dport: 0x2222,
            vlan: 0x0333,
            proto: 0x44,
            flags: 0x55,
            ds: 0x66,
            l3: 18,
        };
        assert_eq!(
            FlowKey::new(&f).0,
            [1, 2, 3, 4, 0x000a_bcde_0102_0304, 0x5544_0333_2222_1111, 0x1266]
        );
    }

    #[test]
    fn flows_spread_over_the_slots() {
        // 4096 flows differing in one address byte or one port into 1024 slots: a good hash
        // fills most slots (a uniform one leaves about e^-4 ≈ 2 % empty).
        let mask = cache_mask(1024).unwrap();
        let mut used = [false; 1024];
        for i in 0..4096u32 {
            let b = i.to_be_bytes();
            let mut f = v4([198, 18, b[2], b[3]], [198, 19, 0, 1], 1000);
            if i % 2 == 1 {
                f = v4([198, 18, 0, 1], [198, 19, 0, 1], i as u16);
            }
            used[FlowKey::new(&f).slot(mask) as usize] = true;
        }
        assert!(used.iter().filter(|u| **u).count() > 900);
        // IPv6 addresses differing only in their last byte (the top bits of a word).
        let mut used = [false; 1024];
        for i in 0..4096u64 {
            let f = FlowFields {
                src: [0x0200_0120, (i & 0xff) << 56 | (i >> 8) << 48],
                flags: 1,
                ..FlowFields::default()
            };
            used[FlowKey::new(&f).slot(mask) as usize] = true;
        }
        assert!(used.iter().filter(|u| **u).count() > 900);
    }

    #[test]
    fn sizes_are_powers_of_two_within_bounds() {
        assert_eq!(cache_mask(8192), Some(8191));
        assert_eq!(cache_mask(1), Some(0));
        assert_eq!(cache_mask(3000), None);
        assert_eq!(cache_mask(0), None);
        assert_eq!(cache_mask(MAX_CACHE_SLOTS * 2), None);
    }
}
