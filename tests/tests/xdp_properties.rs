//! Properties of the real XDP program under `BPF_PROG_RUN` (see `xdp_harness`): whatever the
//! frame, valid or mangled, the program returns a verdict and never modifies a frame it does
//! not forward; a capture's filter selects in the program exactly the frames libpcap's
//! compiled expression accepts.

use std::cell::RefCell;

use proptest::prelude::*;
use xdpfwd_tests::{
    packet::fix_ipv4_checksum,
    xdp_harness::{Harness, seed_frames},
};

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

/// Runs `frame` on this thread's harness (created on first use).
fn run(frame: &[u8], fast: bool) -> Option<(u32, Vec<u8>)> {
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        let h =
            h.get_or_insert_with(|| Harness::new().expect("loading the XDP harness (root needed)"));
        h.set_fast_path(fast).expect("map update");
        // The kernel refuses frames shorter than an Ethernet header: nothing to check.
        h.run(frame).ok()
    })
}

const XDP_PASS: u32 = 2;

/// A real frame with a few bytes of its headers changed, maybe truncated, maybe with the IPv4
/// checksum made valid again.
fn mangled() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seed_frames();
    (
        0..seeds.len(),
        proptest::collection::vec((0usize..70, any::<u8>()), 0..6),
        any::<bool>(),
        0usize..200,
    )
        .prop_map(move |(i, edits, fix, cut)| {
            let mut f = seeds[i].clone();
            for (at, b) in edits {
                if at < f.len() {
                    f[at] = b;
                }
            }
            if fix {
                fix_ipv4_checksum(&mut f);
            }
            if cut < f.len() && cut > 0 {
                f.truncate(f.len() - cut % (f.len() - 13).max(1));
            }
            f
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn passes_mangled_frames_untouched(frame in mangled(), fast: bool) {
        if let Some((action, out)) = run(&frame, fast) {
            prop_assert_eq!(action, XDP_PASS);
            prop_assert_eq!(out, frame);
        }
    }

    /// Every frame is counted in exactly one verdict counter, whatever the path, and with a
    /// capture of everything running as without.
    #[test]
    fn every_frame_is_counted_once(frame in mangled(), fast: bool, capturing: bool) {
        let counted = HARNESS.with(|h| {
            let mut h = h.borrow_mut();
            let h = h.get_or_insert_with(|| Harness::new().expect("loading the XDP harness"));
            h.set_fast_path(fast).expect("map update");
            let all = xdpfwd_common::CaptureFlags::all();
            let flags = if capturing { all } else { xdpfwd_common::CaptureFlags::empty() };
            h.capture(flags, &[]).expect("map update");
            let sum = |h: &Harness| h.counters().expect("counters").values().sum::<u64>();
            let before = sum(h);
            let ran = h.run(&frame).is_ok();
            let after = sum(h);
            h.capture(xdpfwd_common::CaptureFlags::empty(), &[]).expect("map update");
            h.captured().expect("ring");
            ran.then_some(after - before)
        });
        if let Some(counted) = counted {
            prop_assert_eq!(counted, 1);
        }
    }

    #[test]
    fn passes_random_bytes_untouched(frame in proptest::collection::vec(any::<u8>(), 14..300), fast: bool) {
        if let Some((action, out)) = run(&frame, fast) {
            prop_assert_eq!(action, XDP_PASS);
            prop_assert_eq!(out, frame);
        }
    }
}

thread_local! {
    /// With the egress in `DEVMAP`: fast-path frames come back rewritten (`XDP_REDIRECT`).
    static REDIRECTING: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

/// Runs `frame` on the redirecting harness, with the flow cache `cached` (a new generation)
/// or off, `times` times; returns each outcome.
fn run_cached(frame: &[u8], fast: bool, cached: bool, times: usize) -> Vec<Option<(u32, Vec<u8>)>> {
    REDIRECTING.with(|h| {
        let mut h = h.borrow_mut();
        let h = h.get_or_insert_with(|| {
            let mut h = Harness::new().expect("loading the XDP harness (root needed)");
            h.enable_redirect().expect("DEVMAP");
            h
        });
        h.set_fast_path(fast).expect("map update");
        h.set_flow_cache(cached).expect("map update");
        (0..times).map(|_| h.run(frame).ok()).collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The flow cache changes no decision: a frame run with the cache off, and twice with
    /// it on (the second time from the cache, where the decision is kept), gets the same
    /// verdict and leaves the same bytes, on either path.
    #[test]
    fn the_flow_cache_changes_no_outcome(frame in mangled(), fast: bool) {
        let plain = run_cached(&frame, fast, false, 1);
        let cached = run_cached(&frame, fast, true, 2);
        prop_assert_eq!(&cached[0], &plain[0]);
        prop_assert_eq!(&cached[1], &plain[0]);
    }
}

/// The seeds that are forwarded come from the cache the second time, with the outcome of
/// the first.
#[test]
fn forwarded_seeds_hit_the_flow_cache() {
    // One CPU: the cache is per CPU.
    let mut cpu0 = nix::sched::CpuSet::new();
    cpu0.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu0).unwrap();
    let hits = || REDIRECTING.with(|h| h.borrow().as_ref().map_or(0, |h| h.cache_hits().unwrap()));
    let (mut redirected, mut hit) = (0, 0);
    for f in seed_frames() {
        let before = hits();
        let outcomes = run_cached(&f, true, true, 2);
        assert_eq!(outcomes[0], outcomes[1]);
        let after = hits();
        // At most the second run hits (a rewritten or held frame is not kept).
        assert!(after - before <= 1);
        if outcomes[0].as_ref().is_some_and(|(action, _)| *action == XDP_REDIRECT) {
            redirected += 1;
            hit += after - before;
        }
    }
    assert!(redirected > 0, "some seeds are forwarded on the fast path");
    assert!(hit > 0, "forwarded seeds hit the cache the second time");
}

const XDP_REDIRECT: u32 = 4;

#[test]
fn seeds_reach_the_forwarding_decision() {
    // Sanity: the harness is set up so that real frames get as far as wanting a socket
    // (steered frames fall back to XDP_PASS without one), not rejected early.
    for f in seed_frames() {
        let (action, out) = run(&f, false).expect("test run");
        assert_eq!(action, XDP_PASS);
        assert_eq!(out, f);
    }
    let counters = HARNESS.with(|h| h.borrow().as_ref().unwrap().counters().unwrap());
    for (reason, why) in [
        ("pass_no_socket", "routed frames want an AF_XDP socket"),
        ("pass_route", "198.18.1.1 is local"),
        ("pass_special_addr", "link-local and multicast IPv6"),
        ("pass_egress", "198.18.1.0/24 routes back out of the ingress"),
        ("pass_rule", "TCP port 22 goes to the kernel by rule"),
    ] {
        assert!(counters[reason] > 0, "{reason}: {why}: {counters:?}");
    }
    assert_eq!(counters["pass_vlan"], 0, "the ingress pops VLAN tags: {counters:?}");
}

/// `tcpdump -ddd EXPR`: the classic BPF libpcap compiles for Ethernet.
fn compiled(expr: &str) -> Vec<xdpfwd_common::cbpf::CbpfInsn> {
    let out = std::process::Command::new("tcpdump")
        .args(["-ddd", "-y", "EN10MB", expr])
        .output()
        .expect("tcpdump");
    assert!(out.status.success(), "tcpdump -ddd {expr}");
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<u32> = l.split_whitespace().map(|w| w.parse().unwrap()).collect();
            xdpfwd_common::cbpf::CbpfInsn {
                code: f[0] as u16,
                jt: f[1] as u8,
                jf: f[2] as u8,
                k: f[3],
            }
        })
        .collect()
}

const EXPRESSIONS: [&str; 6] = [
    "udp dst port 7000",
    "host 198.19.1.1 or net 2001:2::/32",
    "tcp and not port 22",
    "icmp or icmp6",
    "greater 90 and ip",
    "ip[8] < 5",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The program copies a frame arriving into the capture ring exactly when libpcap's
    /// program accepts it (as `xdpfwd_common::cbpf` runs it, held to libpcap's own
    /// `bpf_filter` by the user-space tests), and copies it as it arrived.
    #[test]
    fn a_capture_filter_selects_in_the_program_as_libpcap_does(frame in mangled(), e in 0..EXPRESSIONS.len()) {
        let prog = compiled(EXPRESSIONS[e]);
        let want = xdpfwd_common::cbpf::accepts::<4096, _, _>(&prog[..], &frame[..], frame.len() as u32);
        let got = HARNESS.with(|h| {
            let mut h = h.borrow_mut();
            let h = h.get_or_insert_with(|| Harness::new().expect("loading the XDP harness"));
            h.capture(xdpfwd_common::CaptureFlags::IN, &prog).expect("map update");
            h.captured().expect("ring");
            let ran = h.run(&frame).is_ok();
            let got = h.captured().expect("ring");
            h.capture(xdpfwd_common::CaptureFlags::empty(), &[]).expect("map update");
            ran.then_some(got)
        });
        if let Some(got) = got {
            let ins: Vec<_> = got.iter().filter(|(h, _)| h.kind == 0).collect();
            prop_assert_eq!(ins.len(), usize::from(want), "{}: {:?}", EXPRESSIONS[e], frame);
            if want {
                prop_assert_eq!(&ins[0].1, &frame);
            }
        }
    }
}
