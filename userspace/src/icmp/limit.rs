//! The kernel's limits on ICMP errors, so that xdpfwd answers no more often than the
//! kernel's forwarding would: the global token bucket (`icmp_msgs_per_sec`,
//! `icmp_msgs_burst`, `icmp_global_allow` / `icmp_global_consume`), the per-destination bucket
//! (`inet_peer_xrlim_allow` with `icmp_ratelimit`, or IPv6's `ratelimit` scaled by the route's
//! prefix length), the types they apply to (`icmp_ratemask`, IPv6 `ratemask`), and the extra
//! bucket `ip_error` puts in front of "destination unreachable" (`route/error_cost`,
//! `route/error_burst`).
//!
//! Time is in milliseconds; the kernel counts jiffies, so its figures are a jiffy coarser.

use std::{collections::HashMap, fs, net::IpAddr};

/// `XRLIM_BURST_FACTOR`: a destination may receive this many errors in a burst.
const BURST_FACTOR: u64 = 6;
/// Destinations remembered at most (the kernel's `inet_peer` cache is bounded too).
const PEERS: usize = 4096;
/// A destination not heard of for this long starts afresh (as an expired `inet_peer`).
const PEER_TTL_MS: u64 = 600_000;

/// The sysctls that govern the limits, as the kernel reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `net.ipv4.icmp_ratelimit` (ms).
    pub v4_ratelimit: u64,
    /// `net.ipv4.icmp_ratemask`: bit N set limits ICMP type N.
    pub v4_ratemask: u32,
    /// `net.ipv6.icmp.ratelimit` (ms).
    pub v6_ratelimit: u64,
    /// `net.ipv6.icmp.ratemask`: ICMPv6 types limited (bit N of word N / 64).
    pub v6_ratemask: [u64; 4],
    /// `net.ipv4.icmp_msgs_per_sec`.
    pub msgs_per_sec: u64,
    /// `net.ipv4.icmp_msgs_burst`.
    pub msgs_burst: u64,
    /// `net.ipv4.route.error_burst` over `error_cost`: how many `ip_error` answers a
    /// destination may receive in a burst (one per `error_cost`, one second by default).
    pub error_burst: u64,
    /// `net.ipv4.icmp_errors_use_inbound_ifaddr`.
    pub inbound_ifaddr: bool,
}

impl Default for Settings {
    /// The kernel's defaults.
    fn default() -> Self {
        Settings {
            v4_ratelimit: 1000,
            v4_ratemask: 6168,
            v6_ratelimit: 1000,
            v6_ratemask: parse_mask("0-1,3-127").unwrap_or_default(),
            msgs_per_sec: 1000,
            msgs_burst: 50,
            error_burst: 5,
            inbound_ifaddr: false,
        }
    }
}

impl Settings {
    /// Reads the sysctls of this network namespace; a missing or unreadable one keeps its
    /// default.
    pub fn read() -> Settings {
        let d = Settings::default();
        let text = |path: &str| fs::read_to_string(format!("/proc/sys/net/{path}")).ok();
        let num = |path: &str| text(path).and_then(|s| s.trim().parse::<u64>().ok());
        let cost = num("ipv4/route/error_cost").filter(|c| *c > 0);
        Settings {
            v4_ratelimit: num("ipv4/icmp_ratelimit").unwrap_or(d.v4_ratelimit),
            v4_ratemask: num("ipv4/icmp_ratemask").map_or(d.v4_ratemask, |m| m as u32),
            v6_ratelimit: num("ipv6/icmp/ratelimit").unwrap_or(d.v6_ratelimit),
            v6_ratemask: text("ipv6/icmp/ratemask")
                .and_then(|s| parse_mask(s.trim()))
                .unwrap_or(d.v6_ratemask),
            msgs_per_sec: num("ipv4/icmp_msgs_per_sec").unwrap_or(d.msgs_per_sec),
            msgs_burst: num("ipv4/icmp_msgs_burst").unwrap_or(d.msgs_burst),
            error_burst: match (num("ipv4/route/error_burst"), cost) {
                (Some(burst), Some(cost)) => burst / cost,
                _ => d.error_burst,
            },
            inbound_ifaddr: num("ipv4/icmp_errors_use_inbound_ifaddr").is_some_and(|v| v != 0),
        }
    }

    /// Whether the limits apply to ICMP `icmp_type`/`code` of the family (`icmpv4_mask_allow`,
    /// `icmpv6_mask_allow`): types in the ratemask, never IPv4 "fragmentation needed".
    pub fn limited(&self, v6: bool, icmp_type: u8, code: u8) -> bool {
        if v6 {
            self.v6_ratemask[usize::from(icmp_type / 64)] & 1 << (icmp_type % 64) != 0
        } else if icmp_type > 18 || (icmp_type == 3 && code == 4) {
            false
        } else {
            self.v4_ratemask & 1 << icmp_type != 0
        }
    }

    /// The per-destination interval of an IPv6 error sent over a route of `prefix_len`
    /// bits: wider prefixes get more (`icmpv6_xrlim_allow`).
    pub fn v6_interval(&self, prefix_len: u8) -> u64 {
        if prefix_len < 128 {
            self.v6_ratelimit >> ((128 - u32::from(prefix_len)) >> 5)
        } else {
            self.v6_ratelimit
        }
    }
}

/// Parses a bitmap list as the kernel prints `net.ipv6.icmp.ratemask` ("0-1,3-127").
pub fn parse_mask(text: &str) -> Option<[u64; 4]> {
    let mut mask = [0u64; 4];
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u8>().ok()?, b.trim().parse::<u8>().ok()?),
            None => {
                let a = part.trim().parse::<u8>().ok()?;
                (a, a)
            }
        };
        for bit in a..=b {
            mask[usize::from(bit / 64)] |= 1 << (bit % 64);
        }
    }
    Some(mask)
}

/// One destination's bucket (`inet_peer::rate_tokens`, `rate_last`), in ms.
#[derive(Clone, Copy, Debug)]
struct Peer {
    tokens: u64,
    last: u64,
}

/// The global and per-destination buckets.
pub struct Limiter {
    credit: u64,
    stamp: u64,
    peers: HashMap<IpAddr, Peer>,
    random: u64,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter { credit: 0, stamp: 0, peers: HashMap::with_capacity(PEERS), random: seed() }
    }
}

/// A seed for the global bucket's random cost.
fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    t | 1
}

impl Limiter {
    /// `icmp_global_allow`: may an error be sent at `now` (ms)? Refills the bucket with
    /// `msgs_per_sec` per second (at most `msgs_burst`), at most every 20 ms; a positive
    /// credit allows. Nothing is taken until [`Limiter::consume`].
    pub fn global_allow(&mut self, s: &Settings, now: u64) -> bool {
        if self.credit > 0 {
            return true;
        }
        let delta = now.saturating_sub(self.stamp).min(1000);
        if delta < 20 {
            return false;
        }
        let incr = s.msgs_per_sec * delta / 1000;
        if incr == 0 {
            return false;
        }
        self.stamp = now;
        self.credit = (self.credit + incr).min(s.msgs_burst);
        true
    }

    /// `icmp_global_consume`: an error was sent; it costs 0, 1 or 2 credits at random (1 on
    /// average), so that the bucket's state cannot be probed exactly.
    pub fn consume(&mut self) {
        // xorshift64
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        self.credit = self.credit.saturating_sub(self.random % 3);
    }

    /// `inet_peer_xrlim_allow`: the destination's bucket holds up to 6 intervals, an error
    /// takes one; a new destination starts full.
    pub fn peer_allow(&mut self, peer: IpAddr, interval: u64, now: u64) -> bool {
        self.take(peer, interval, BURST_FACTOR * interval, now)
    }

    /// `ip_error`'s own bucket in front of "destination unreachable": one answer per second
    /// to a destination, `error_burst` in a burst. It shares the destination's tokens with
    /// [`Limiter::peer_allow`], as the kernel's `inet_peer` does.
    pub fn route_error_allow(&mut self, s: &Settings, peer: IpAddr, now: u64) -> bool {
        self.take(peer, 1000, s.error_burst * 1000, now)
    }

    fn take(&mut self, peer: IpAddr, cost: u64, cap: u64, now: u64) -> bool {
        if self.peers.len() >= PEERS && !self.peers.contains_key(&peer) {
            self.peers.retain(|_, p| now.saturating_sub(p.last) < PEER_TTL_MS);
            if self.peers.len() >= PEERS {
                // Still full: forget one (it starts afresh, as an evicted `inet_peer`).
                if let Some(k) = self.peers.keys().next().copied() {
                    self.peers.remove(&k);
                }
            }
        }
        let p =
            self.peers.entry(peer).or_insert(Peer { tokens: 0, last: now.saturating_sub(60_000) });
        if now.saturating_sub(p.last) >= PEER_TTL_MS {
            *p = Peer { tokens: 0, last: now.saturating_sub(60_000) };
        }
        let tokens = (p.tokens + now.saturating_sub(p.last)).min(cap);
        p.last = now;
        if tokens >= cost {
            p.tokens = tokens - cost;
            true
        } else {
            p.tokens = tokens;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 1, 2));

    #[test]
    fn a_destination_gets_six_then_one_per_interval() {
        let mut l = Limiter::default();
        let now = 1_000_000;
        let sent = (0..20).filter(|_| l.peer_allow(PEER, 1000, now)).count();
        assert_eq!(sent, 6);
        assert!(!l.peer_allow(PEER, 1000, now + 999));
        assert!(l.peer_allow(PEER, 1000, now + 1000));
        let other = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 1, 3));
        assert!(l.peer_allow(other, 1000, now), "destinations are apart");
    }

    #[test]
    fn route_errors_share_the_destinations_tokens() {
        // ip_error takes a second, then icmp_send's check takes another: two answers from
        // a fresh destination with the defaults, then one every two seconds.
        let s = Settings::default();
        let mut l = Limiter::default();
        let now = 1_000_000;
        let mut sent = 0;
        for _ in 0..10 {
            if l.route_error_allow(&s, PEER, now) && l.peer_allow(PEER, 1000, now) {
                sent += 1;
            }
        }
        assert_eq!(sent, 2);
    }

    #[test]
    fn the_global_bucket_refills_per_second_up_to_the_burst() {
        let s = Settings::default();
        let mut l = Limiter::default();
        let mut now = 10_000;
        let mut sent = 0;
        for _ in 0..200 {
            if l.global_allow(&s, now) {
                sent += 1;
                l.consume();
            }
        }
        // 50 credits at 0-2 each: about 50, never fewer than 25.
        assert!((25..=200).contains(&sent), "{sent}");
        assert!(!l.global_allow(&s, now + 1), "empty within 20 ms");
        now += 1000;
        assert!(l.global_allow(&s, now), "refilled");
    }

    #[test]
    fn masks_are_the_kernels() {
        let s = Settings::default();
        assert!(s.limited(false, 11, 0), "time exceeded");
        assert!(s.limited(false, 3, 0), "unreachable");
        assert!(!s.limited(false, 3, 4), "fragmentation needed never");
        assert!(!s.limited(false, 0, 0), "echo reply");
        assert!(s.limited(true, 3, 0) && s.limited(true, 1, 0));
        assert!(!s.limited(true, 2, 0), "packet too big");
        assert!(!s.limited(true, 129, 0));
        assert_eq!(parse_mask("0-1,3-127").unwrap(), [!0 ^ 4, u64::MAX, 0, 0]);
        assert_eq!(parse_mask("").unwrap(), [0; 4]);
        assert!(parse_mask("x").is_none());
        assert_eq!(s.v6_interval(64), 250);
        assert_eq!(s.v6_interval(128), 1000);
        assert_eq!(s.v6_interval(0), 1000 >> 4);
    }
}
