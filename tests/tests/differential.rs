//! The router rule against random traffic: a seeded stream of frames of every kind, valid and
//! malformed (header fields, lengths, options, extension headers, fragments, special,
//! local, broadcast and multicast addresses, routes that refuse, an MTU smaller than the
//! link's, policy rules), goes through the kernel's own forwarding, then through xdpfwd on
//! each path. What arrives at the server and back at the client is compared frame for
//! frame:
//! - with the kernel's forwarding on, xdpfwd beside it must deliver exactly what the
//!   kernel alone delivers;
//! - with the kernel's forwarding off, xdpfwd is the router: every frame it delivers (and
//!   every ICMP error it sends) must be one the kernel's forwarding delivers, and what it
//!   leaves out is only counted (the kernel, not forwarding, drops it).
//!
//! `XDPFWD_DIFF_SEED=N` runs another stream (the default seed is fixed, so a failure
//! reproduces); `XDPFWD_DIFF_FRAMES` sets its length; `XDPFWD_DIFF_SHOW=KIND` prints the
//! frames of that kind (as the figures name them) that xdpfwd leaves to a kernel that does
//! not forward; `XDPFWD_DIFF_IDS=8ae7,...` keeps only the IPv4 frames with these
//! identifications; `XDPFWD_DIFF_VERBOSE` prints xdpfwd's report of each run.

use std::{collections::HashMap, thread, time::Duration};

use proptest::{
    prelude::Rng,
    test_runner::{RngAlgorithm, TestRng},
};
use xdpfwd_tests::{
    Finished, Forwarder, Topology, forwarded_packets, in_netns, ns_sh,
    packet::{RawSocket, checksum},
    xdp_counter,
};

/// Frames per stream, and the pause after each (the kernel's work for a frame, an ICMP error
/// from xdpfwd's user space, is done well within it, so runs see the same state).
const FRAMES: usize = 700;
const GAP: Duration = Duration::from_millis(3);

/// The forwarder's addresses (local: delivered, never forwarded).
const FWD_V4: [[u8; 4]; 2] = [[198, 18, 1, 1], [198, 18, 2, 1]];
/// IPv4 destinations whose routes refuse (`ip_error` answers) and the port the `ip rule`
/// sends to an unreachable route.
const V4_REFUSED: &[[u8; 4]] = &[[198, 19, 2, 1], [198, 19, 3, 1], [10, 1, 2, 3]];
const REFUSED_PORT: u16 = 7000;
/// Client addresses 198.18.1.100 and up, the source of every frame the route refuses (odd
/// sources included: the server's address would get the answers too): the kernel answers at
/// most five of them per source in a burst, then one a second (`ip_error`, not tunable in a
/// namespace), so each source is used once per run and the answers do not depend on timing.
const POOL: (u8, u8) = (100, 120);

/// A host on each link with a permanent neighbour entry (frames to it are forwarded with its
/// MAC; no resolution is ever waited for).
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x09];

/// Usual addresses (the first list of each pair) come in most frames, odd ones in a few.
const V4_SOURCES: &[[u8; 4]] = &[[198, 18, 1, 2]];
const V4_ODD_SOURCES: &[[u8; 4]] = &[
    [198, 18, 1, 3],
    [198, 19, 9, 9],
    [198, 18, 2, 2],
    [0, 0, 0, 0],
    [127, 0, 0, 1],
    [224, 0, 0, 5],
    [255, 255, 255, 255],
    [198, 18, 1, 1],
    [198, 18, 1, 255],
    [240, 0, 0, 1],
];

const V4_DESTINATIONS: &[[u8; 4]] = &[
    [198, 18, 2, 2],
    [198, 18, 2, 2],
    [198, 18, 2, 9],
    [198, 19, 0, 7],
    [198, 19, 0, 200],
    [198, 19, 4, 4],
    [198, 19, 5, 5],
];
const V4_ODD_DESTINATIONS: &[[u8; 4]] = &[
    [198, 19, 1, 1],
    [198, 19, 2, 1],
    [198, 19, 3, 1],
    [10, 1, 2, 3],
    [198, 18, 2, 1],
    [198, 18, 1, 1],
    [198, 18, 1, 9],
    [198, 18, 2, 255],
    [198, 18, 2, 0],
    [224, 0, 0, 1],
    [239, 1, 1, 1],
    [255, 255, 255, 255],
    [0, 0, 0, 0],
    [127, 0, 0, 1],
];

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

const V6_SOURCES: &[&str] = &["2001:2:0:1::2", "2001:2:0:1::2", "2001:2:0:1::3"];
const V6_ODD_SOURCES: &[&str] = &[
    "2001:2:0:9::9",
    "2001:2:0:2::2",
    "::",
    "::1",
    "fe80::1",
    "ff02::1",
    "::ffff:198.18.1.2",
    "2001:2:0:1::1",
    "2001:2:0:1::",
];

const V6_DESTINATIONS: &[&str] = &[
    "2001:2:0:2::2",
    "2001:2:0:2::2",
    "2001:2:0:2::9",
    "2001:2:0:10::7",
    "2001:2:0:14::4",
    "2001:2:0:15::5",
];
const V6_ODD_DESTINATIONS: &[&str] = &[
    "2001:2:0:11::1",
    "2001:2:0:12::1",
    "2001:2:0:13::1",
    "2001:2:0:99::1",
    "2001:2:0:2::1",
    "2001:2:0:2::",
    "2001:2:0:1::9",
    "ff02::1",
    "ff05::1",
    "ff0e::1",
    "fe80::99",
    "::1",
    "::",
    "::ffff:198.18.2.2",
];

/// The forwarder's routes, rules and neighbours that the stream's destinations meet.
const SETUP: &[&str] = &[
    "route add 198.19.0.0/24 via 198.18.2.2",
    "route add 198.19.4.0/24 via 198.18.2.2 mtu 1000",
    "route add blackhole 198.19.1.0/24",
    "route add unreachable 198.19.2.0/24",
    "route add prohibit 198.19.3.0/24",
    "route add 198.19.5.0/24 via 198.18.2.2 table 100",
    "rule add from 198.18.1.0/29 lookup 100 pref 100",
    "route add unreachable default table 200",
    "rule add ipproto udp dport 7000 lookup 200 pref 200",
    "-6 route add 2001:2:0:10::/64 via 2001:2:0:2::2",
    "-6 route add 2001:2:0:14::/64 via 2001:2:0:2::2 mtu 1300",
    "-6 route add blackhole 2001:2:0:11::/64",
    "-6 route add unreachable 2001:2:0:12::/64",
    "-6 route add prohibit 2001:2:0:13::/64",
    "-6 route add 2001:2:0:15::/64 via 2001:2:0:2::2 table 100",
    "-6 rule add from 2001:2:0:1::/125 lookup 100 pref 100",
];

/// A random frame source, seeded.
struct Gen {
    rng: TestRng,
    /// The next address of [`POOL`].
    pool: u8,
    c_mac: [u8; 6],
    f_mac: [u8; 6],
}

impl Gen {
    fn u32(&mut self) -> u32 {
        self.rng.next_u32()
    }

    fn below(&mut self, n: usize) -> usize {
        self.u32() as usize % n
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }

    /// From `usual` mostly, from `odd` in `percent` % of the picks.
    fn pick_odd<T: Copy>(&mut self, percent: usize, usual: &[T], odd: &[T]) -> T {
        if self.chance(percent) { self.pick(odd) } else { self.pick(usual) }
    }

    fn hop_limit(&mut self) -> u8 {
        self.pick_odd(10, &[64], &[2, 1, 0, 255])
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u32() as u8).collect()
    }

    fn frame(&mut self) -> Vec<u8> {
        let v6 = self.chance(45);
        let mut f = Vec::with_capacity(1514);
        let dst_mac = match self.below(100) {
            0..=91 => self.f_mac,
            92..=94 => [0xff; 6],
            95..=97 => [0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
            _ => [0x01, 0, 0x5e, 0, 0, 1],
        };
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&self.c_mac);
        if self.chance(3) {
            f.extend_from_slice(&[0x81, 0, 0, self.pick(&[1u8, 10, 0])]);
        }
        let ethertype: u16 = match (v6, self.chance(2)) {
            (false, false) | (true, true) => 0x0800,
            _ => 0x86dd,
        };
        f.extend_from_slice(&ethertype.to_be_bytes());
        let l3 = f.len();
        if v6 {
            self.ipv6(&mut f, l3)
        } else {
            self.ipv4(&mut f, l3)
        }
        if f.len() < 60 && self.chance(50) {
            f.resize(60, 0);
        }
        f
    }

    /// A payload length that keeps the frame within 1514 bytes.
    fn payload_len(&mut self, used: usize) -> usize {
        let room = 1514usize.saturating_sub(used);
        let n = match self.below(10) {
            0..=3 => self.below(64),
            4..=6 => 64 + self.below(600),
            _ => 600 + self.below(900),
        };
        n.min(room)
    }

    fn ipv4(&mut self, f: &mut Vec<u8>, l3: usize) {
        let options: Vec<u8> = match self.below(100) {
            0..=91 => vec![],
            92..=93 => vec![1, 1, 1, 0],
            94..=95 => vec![7, 7, 4, 0, 0, 0, 0, 0], // record route, room for one
            96 => vec![148, 4, 0, 0],                // router alert
            97 => vec![131, 7, 4, 198, 18, 2, 2, 0], // loose source route
            _ => {
                let n = 4 * (1 + self.below(10));
                self.bytes(n)
            }
        };
        let ihl = 5 + options.len() / 4;
        let proto = match self.below(100) {
            0..=34 => 17,
            35..=64 => 6,
            65..=84 => 1,
            _ => self.pick(&[0u8, 2, 4, 41, 47, 50, 51, 89, 103, 132, 136, 255]),
        };
        let ttl = self.hop_limit();
        let src = self.pick_odd(12, V4_SOURCES, V4_ODD_SOURCES);
        let dst = self.pick_odd(25, V4_DESTINATIONS, V4_ODD_DESTINATIONS);
        let frag: u16 = match self.below(100) {
            0..=74 => 0,
            75..=89 => 0x4000,
            90..=93 => 0x2000,
            94..=97 => (self.u32() as u16) & 0x3fff,
            _ => 0x8000,
        };
        let tos = if self.chance(30) { self.u32() as u8 } else { 0 };
        let version_ihl = if self.chance(1) {
            (self.u32() as u8 & 0xf0) | ihl as u8
        } else if self.chance(1) {
            0x40 | self.below(5) as u8
        } else {
            0x40 | ihl as u8
        };
        let id = self.u32() as u16;
        f.extend_from_slice(&[version_ihl, tos, 0, 0]);
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[ttl, proto, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&options);
        self.l4(f, proto, false);
        let ihl_end = l3 + 4 * ihl;
        let refused = V4_REFUSED.contains(&dst)
            || (proto == 17
                && f.get(ihl_end + 2..ihl_end + 4) == Some(&REFUSED_PORT.to_be_bytes()));
        if refused {
            f[l3 + 12..l3 + 16].copy_from_slice(&[198, 18, 1, POOL.0 + self.pool]);
            self.pool = (self.pool + 1) % POOL.1;
        }
        let ip_len = f.len() - l3;
        let total = match self.below(100) {
            0..=89 => ip_len,
            90..=94 => ip_len.saturating_sub(1 + self.below(40)),
            95..=97 => ip_len + 1 + self.below(40),
            _ => self.below(ip_len + 1),
        };
        f[l3 + 2..l3 + 4].copy_from_slice(&(total as u16).to_be_bytes());
        let c = checksum(&f[l3..l3 + 4 * ihl]);
        let c = if self.chance(2) { c ^ 0x0101 } else { c };
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }

    fn ipv6(&mut self, f: &mut Vec<u8>, l3: usize) {
        let first = if self.chance(1) { self.u32() as u8 } else { 0x60 };
        let tc = if self.chance(30) { self.u32() } else { 0 };
        let label = if self.chance(30) { self.u32() & 0xfffff } else { 0 };
        let word = (u32::from(first) << 24) | ((tc & 0xff) << 20) | label;
        f.extend_from_slice(&word.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        let upper = match self.below(100) {
            0..=34 => 17,
            35..=64 => 6,
            65..=84 => 58,
            _ => self.pick(&[0u8, 4, 41, 43, 44, 47, 50, 59, 60, 132, 255]),
        };
        // An extension header in front of the upper layer, sometimes.
        let ext = if self.chance(12) { Some(self.pick(&[0u8, 60, 43, 44])) } else { None };
        f.push(ext.unwrap_or(upper));
        f.push(self.hop_limit());
        let src = self.pick_odd(12, V6_SOURCES, V6_ODD_SOURCES);
        let dst = self.pick_odd(25, V6_DESTINATIONS, V6_ODD_DESTINATIONS);
        f.extend_from_slice(&v6(src));
        f.extend_from_slice(&v6(dst));
        if let Some(kind) = ext {
            match kind {
                // Fragment header: offset and M flag random.
                44 => {
                    f.extend_from_slice(&[upper, 0]);
                    f.extend_from_slice(&(self.u32() as u16 & 0xfff9).to_be_bytes());
                    f.extend_from_slice(&self.u32().to_be_bytes());
                }
                // Routing header: type 0 (deprecated) or 2, segments left random.
                43 => f.extend_from_slice(&[
                    upper,
                    0,
                    self.pick(&[0u8, 2, 4]),
                    self.below(3) as u8,
                    0,
                    0,
                    0,
                    0,
                ]),
                // Hop-by-hop or destination options: PadN, or an option of random type.
                _ => {
                    let opt = if self.chance(50) { 1 } else { self.u32() as u8 };
                    f.extend_from_slice(&[upper, 0, opt, 4, 0, 0, 0, 0]);
                }
            }
        }
        self.l4(f, upper, true);
        let payload = f.len() - l3 - 40;
        let len = match self.below(100) {
            0..=89 => payload,
            90..=94 => payload.saturating_sub(1 + self.below(40)),
            95..=97 => payload + 1 + self.below(40),
            _ => self.below(payload + 1),
        };
        f[l3 + 4..l3 + 6].copy_from_slice(&(len as u16).to_be_bytes());
    }

    /// The upper-layer header and a payload.
    fn l4(&mut self, f: &mut Vec<u8>, proto: u8, v6: bool) {
        let port = |g: &mut Self| g.pick(&[53u16, 80, 443, REFUSED_PORT, 9000, 33434, 0, 65535]);
        let start = f.len();
        match proto {
            17 => {
                let (s, d) = (port(self), port(self));
                f.extend_from_slice(&s.to_be_bytes());
                f.extend_from_slice(&d.to_be_bytes());
                f.extend_from_slice(&[0, 0]);
                let sum = if self.chance(50) { 0 } else { self.u32() as u16 };
                f.extend_from_slice(&sum.to_be_bytes());
            }
            6 => {
                let (s, d) = (port(self), port(self));
                f.extend_from_slice(&s.to_be_bytes());
                f.extend_from_slice(&d.to_be_bytes());
                let rest = self.bytes(16);
                f.extend_from_slice(&rest[..8]);
                f.push(if self.chance(90) { 0x50 } else { rest[8] });
                f.push(self.pick(&[0x02u8, 0x10, 0x18, 0x04, 0x11, rest[9]]));
                f.extend_from_slice(&rest[10..16]);
            }
            1 | 58 => {
                let types: &[u8] = if v6 {
                    &[128, 129, 1, 2, 3, 4, 135, 136, 200]
                } else {
                    &[8, 0, 3, 11, 12, 13, 5, 42]
                };
                f.push(self.pick(types));
                f.push(self.below(5) as u8);
                let rest = self.bytes(6);
                f.extend_from_slice(&rest);
            }
            _ => {}
        }
        let n = self.payload_len(f.len());
        let payload = self.bytes(n);
        f.extend_from_slice(&payload);
        if proto == 17 && self.chance(90) {
            let len = (f.len() - start) as u16;
            f[start + 4..start + 6].copy_from_slice(&len.to_be_bytes());
        }
    }
}

/// The seeded stream from the client's interface to the forwarder's MAC.
fn stream(seed: u64, c_mac: [u8; 6], f_mac: [u8; 6]) -> Vec<Vec<u8>> {
    let frames = std::env::var("XDPFWD_DIFF_FRAMES").ok().and_then(|n| n.parse().ok());
    let mut g = Gen {
        rng: TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(seed)),
        pool: 0,
        c_mac,
        f_mac,
    };
    let all = (0..frames.unwrap_or(FRAMES)).map(|_| g.frame());
    // `XDPFWD_DIFF_IDS=8ae7,63b4`: only the IPv4 frames with these identifications.
    let ids = std::env::var("XDPFWD_DIFF_IDS").unwrap_or_default();
    let ids: Vec<u16> = ids.split(',').filter_map(|i| u16::from_str_radix(i, 16).ok()).collect();
    all.filter(|f| {
        ids.is_empty()
            || f.get(18..20).is_some_and(|i| ids.contains(&u16::from_be_bytes([i[0], i[1]])))
    })
    .collect()
}

fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&seed.to_le_bytes());
    b
}

fn seed() -> u64 {
    let seed = std::env::var("XDPFWD_DIFF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    eprintln!("stream seed {seed} (XDPFWD_DIFF_SEED)");
    seed
}

/// What arrived at each end in one run.
struct Arrivals {
    server: Vec<Vec<u8>>,
    client: Vec<Vec<u8>>,
}

/// Frames the kernels send of their own accord, at times of their own (address resolution,
/// redirects, router solicitations, multicast reports): not part of the comparison.
fn own_accord(f: &[u8]) -> bool {
    let l3 = if f.get(12..14) == Some(&[0x81, 0]) { 18 } else { 14 };
    match f.get(l3 - 2..l3) {
        Some([0x08, 0x06]) => true,
        Some([0x86, 0xdd]) => {
            // Neighbour discovery, or a multicast listener report behind its hop-by-hop
            // header.
            let (next, l4) = match f.get(l3 + 6) {
                Some(0) => (
                    f.get(l3 + 40),
                    l3 + 48 + 8 * usize::from(f.get(l3 + 41).copied().unwrap_or(0)),
                ),
                next => (next, l3 + 40),
            };
            next == Some(&58) && f.get(l4).is_some_and(|t| (130..=143).contains(t))
        }
        Some([0x08, 0x00]) => {
            let ihl = usize::from(f.get(l3).copied().unwrap_or(0) & 0xf) * 4;
            match f.get(l3 + 9) {
                Some(2) => true,
                Some(1) => f.get(l3 + ihl) == Some(&5),
                _ => false,
            }
        }
        _ => false,
    }
}

/// A frame a kernel originated (its IPv4 identification and so its header checksum are the
/// kernel's choice, different from run to run) has both fields zeroed.
fn normalized(mut f: Vec<u8>, from_kernel: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    if f.len() >= 34 && f[12..14] == [8, 0] && from_kernel(&f[26..30]) {
        f[18..20].fill(0);
        f[24..26].fill(0);
    }
    f
}

/// Sends `frames` from the client and collects what arrived at both ends.
fn run(topo: &Topology, frames: &[Vec<u8>]) -> Arrivals {
    let s0 = topo.s0.clone();
    let at_server = in_netns(&topo.server, move || RawSocket::open(&s0)).unwrap().unwrap();
    let c0 = topo.c0.clone();
    let client = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    for frame in frames {
        // A frame the veth refuses (none should be) is simply not sent, in every run alike.
        let _ = client.send(frame);
        thread::sleep(GAP);
    }
    let quiet = Duration::from_millis(600);
    let keep = |frames: Vec<Vec<u8>>| frames.into_iter().filter(|f| !own_accord(f));
    // Every IPv4 packet reaching the client was sent by a kernel (the forwarder's or the
    // server's); at the server, only those from the forwarder's own addresses.
    let server = keep(at_server.drain(quiet, 10_000))
        .map(|f| normalized(f, |src| FWD_V4.iter().any(|a| a == src)))
        .collect();
    let client = keep(client.drain(quiet, 10_000)).map(|f| normalized(f, |_| true)).collect();
    Arrivals { server, client }
}

/// The frames of `ours` that are not in `reference` (as many times as they occur there).
fn surplus<'a>(ours: &'a [Vec<u8>], reference: &[Vec<u8>]) -> Vec<&'a Vec<u8>> {
    let mut left: HashMap<&[u8], usize> = HashMap::new();
    for f in reference {
        *left.entry(f.as_slice()).or_default() += 1;
    }
    ours.iter()
        .filter(|f| match left.get_mut(f.as_slice()) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .collect()
}

/// What kind of frame `f` is, for the figures of what a kernel that does not forward drops.
fn kind_of(f: &[u8]) -> &'static str {
    match (f.get(12..14), f.get(14).map(|v| v & 0x0f)) {
        (Some([8, 0]), Some(ihl)) if ihl > 5 => "IPv4 options",
        (Some([8, 0]), _) if f.len() > 34 && f[20..22] != [0, 0] && f[20..22] != [0x40, 0] => {
            "IPv4 fragment"
        }
        (Some([8, 0]), _)
            if f.get(23) == Some(&1) && f.get(34).is_some_and(|t| [3, 11, 12].contains(t)) =>
        {
            "ICMP error"
        }
        (Some([8, 0]), _) => "IPv4, other",
        (Some([0x86, 0xdd]), _) => match f.get(20) {
            Some(0) => "IPv6 hop-by-hop",
            Some(44) => "IPv6 fragment",
            Some(58) if f.get(54).is_some_and(|t| *t < 128) => "ICMPv6 error",
            _ => "IPv6, other",
        },
        _ => "other",
    }
}

/// Sets up the forwarder's namespace for the stream: routes, rules, neighbours, no ICMP rate
/// limits (errors must not depend on timing), GRO on the far ends (the fast path into veth).
fn topology(tag: &str) -> Topology {
    let topo = Topology::new(tag, true).unwrap();
    topo.enable_gro().unwrap();
    topo.static_neighbours().unwrap();
    let mac = xdpfwd_tests::fmt_mac(HOST_MAC);
    // Every unicast destination a frame can be forwarded to has one: the kernel answers a
    // next hop that never resolves with an error some 3 s later, in whichever run is on.
    for (addr, dev) in [
        ("198.18.2.9", &topo.f1),
        ("2001:2:0:2::9", &topo.f1),
        ("198.18.1.9", &topo.f0),
        ("2001:2:0:1::9", &topo.f0),
        ("198.18.2.0", &topo.f1),
        ("fe80::99", &topo.f0),
        ("fe80::99", &topo.f1),
    ] {
        topo.permanent_neighbour(addr, &mac, dev).unwrap();
    }
    let pool: String = (POOL.0..POOL.0 + POOL.1)
        .map(|i| format!("addr add 198.18.1.{i}/32 dev {}\n", topo.c0))
        .collect();
    let batch = std::env::temp_dir().join(format!("{}-pool", topo.prefix));
    std::fs::write(&batch, pool).unwrap();
    let added = ns_sh(&topo.client, &["ip", "-batch", &batch.to_string_lossy()]);
    let _ = std::fs::remove_file(&batch);
    added.unwrap();
    for line in SETUP {
        let mut args = vec!["ip"];
        args.extend(line.split_whitespace());
        ns_sh(&topo.fwd, &args).unwrap();
    }
    for ns in [&topo.fwd, &topo.server] {
        ns_sh(
            ns,
            &[
                "sysctl",
                "-qw",
                "net.ipv4.icmp_ratelimit=0",
                "net.ipv4.icmp_msgs_per_sec=1000000",
                "net.ipv4.icmp_msgs_burst=1000000",
                "net.ipv6.icmp.ratelimit=0",
                // No reassembly: a fragment's timeout (30 s) would answer in a later run.
                "net.ipv4.ipfrag_low_thresh=0",
                "net.ipv4.ipfrag_high_thresh=0",
                "net.ipv6.ip6frag_low_thresh=0",
                "net.ipv6.ip6frag_high_thresh=0",
            ],
        )
        .unwrap();
    }
    ns_sh(&topo.fwd, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1"]).unwrap();
    topo
}

/// Runs the stream through xdpfwd started with `args` on `topo`; returns what arrived and
/// how xdpfwd finished.
fn through_xdpfwd(topo: &Topology, frames: &[Vec<u8>], args: &[&str]) -> (Arrivals, Finished) {
    let mut full = vec![topo.f0.as_str(), topo.f1.as_str(), "--stats-interval", "0"];
    full.extend_from_slice(args);
    let mut fwd = Forwarder::start(&topo.fwd, &full).unwrap();
    thread::sleep(Duration::from_millis(300));
    let arrived = run(topo, frames);
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    (arrived, done)
}

/// Frames xdpfwd carried itself, both paths.
fn carried(done: &Finished) -> u64 {
    forwarded_packets(&done.stdout).unwrap_or(0) + xdp_counter(&done.stdout, "fast_forwarded")
}

fn hex(frames: &[&Vec<u8>]) -> String {
    frames.iter().take(5).map(|f| format!("{f:02x?}\n")).collect()
}

/// `frames`, each with the frame of `reference` that has the most bytes in common with it
/// (at the same places).
fn with_nearest(frames: &[&Vec<u8>], reference: &[Vec<u8>]) -> String {
    let common = |a: &[u8], b: &[u8]| a.iter().zip(b).filter(|(x, y)| x == y).count();
    frames
        .iter()
        .take(5)
        .map(|f| {
            let near = reference.iter().max_by_key(|r| common(f, r));
            let n = near.map_or(0, |r| common(f, r));
            format!("{f:02x?}\nnearest ({n} bytes in common): {near:02x?}\n")
        })
        .collect()
}

#[test]
fn random_frames_through_xdpfwd_arrive_as_through_the_kernel() {
    let topo = topology("df");
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let frames = stream(seed(), c_mac, f_mac);
    let kernel = run(&topo, &frames);
    assert!(kernel.server.len() > frames.len() / 5, "the kernel forwarded {}", kernel.server.len());
    // The comparison means something only if the kernel's own runs agree.
    let again = run(&topo, &frames);
    for (end, k, a) in
        [("server", &kernel.server, &again.server), ("client", &kernel.client, &again.client)]
    {
        let (extra, missing) = (surplus(a, k), surplus(k, a));
        assert!(
            extra.is_empty() && missing.is_empty(),
            "the kernel's two runs differ at the {end}\nsecond only:\n{}first only:\n{}",
            hex(&extra),
            hex(&missing)
        );
    }
    eprintln!(
        "the kernel delivered {} frames to the server, {} to the client",
        kernel.server.len(),
        kernel.client.len()
    );

    // The kernel forwards too: xdpfwd takes what it can do exactly, the kernel the rest.
    for path in ["af-xdp", "fast"] {
        let (ours, done) = through_xdpfwd(&topo, &frames, &["--default-path", path]);
        for (end, k, o) in
            [("server", &kernel.server, &ours.server), ("client", &kernel.client, &ours.client)]
        {
            let extra = surplus(o, k);
            let missing = surplus(k, o);
            assert!(
                extra.is_empty() && missing.is_empty(),
                "{path}, at the {end}: {} frames the kernel did not deliver, {} it did that \
                 did not arrive\nextra:\n{}missing:\n{}{}",
                extra.len(),
                missing.len(),
                hex(&extra),
                hex(&missing),
                done.stdout
            );
        }
        assert!(
            carried(&done) > frames.len() as u64 / 5,
            "{path}: xdpfwd carried little\n{}",
            done.stdout
        );
    }

    // The kernel does not forward: xdpfwd is the router.
    // What the kernel itself sends with its forwarding off (errors for IP options it checks
    // before it finds it would not forward, packets to addresses that are local only while
    // it forwards...) is the kernel's, not xdpfwd's: allowed too.
    topo.set_forwarding(false).unwrap();
    let kernel_off = run(&topo, &frames);
    for path in ["af-xdp", "fast"] {
        let (ours, done) = through_xdpfwd(&topo, &frames, &["--default-path", path]);
        for (end, k, o, off) in [
            ("server", &kernel.server, &ours.server, &kernel_off.server),
            ("client", &kernel.client, &ours.client, &kernel_off.client),
        ] {
            let beyond: Vec<Vec<u8>> = surplus(o, k).into_iter().cloned().collect();
            let extra = surplus(&beyond, off);
            assert!(
                extra.is_empty(),
                "{path}, forwarding off, at the {end}: {} frames the kernel's forwarding does \
                 not deliver:\n{}{}",
                extra.len(),
                with_nearest(&extra, k),
                done.stdout
            );
            if std::env::var_os("XDPFWD_DIFF_VERBOSE").is_some() {
                eprintln!("{}", done.stdout);
            }
            let mut left: Vec<(&str, usize)> = Vec::new();
            let show = std::env::var("XDPFWD_DIFF_SHOW").unwrap_or_default();
            for f in surplus(k, o) {
                if kind_of(f) == show {
                    eprintln!("left: {f:02x?}");
                }
                match left.iter_mut().find(|(kind, _)| *kind == kind_of(f)) {
                    Some((_, n)) => *n += 1,
                    None => left.push((kind_of(f), 1)),
                }
            }
            left.sort();
            eprintln!(
                "{path}, forwarding off, at the {end}: {} of the kernel's {} frames; left to a \
                 kernel that does not forward: {left:?}",
                o.len(),
                k.len(),
            );
        }
        assert!(
            carried(&done) > frames.len() as u64 / 5,
            "{path}: xdpfwd carried little\n{}",
            done.stdout
        );
    }
}
