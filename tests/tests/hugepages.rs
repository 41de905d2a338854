//! `--hugepages`: the UMEM in huge pages. Without huge pages reserved xdpfwd refuses to start
//! and says how to reserve them; with them it forwards from a UMEM that takes them.
//!
//! Reserving huge pages is a setting of the whole machine (`vm.nr_hugepages`): the test puts
//! back what it found, also when it fails.

use std::{fs, net::IpAddr, time::Duration};

use xdpfwd_tests::{
    Forwarder, SERVER_V4, SERVER_V6, Topology, run_to_exit, traffic::udp_stream, wait_for,
    xdp_counter,
};

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Restores `vm.nr_hugepages` when dropped.
struct Reserved(String);

impl Reserved {
    fn set(pages: u64) -> Reserved {
        let before = fs::read_to_string(NR_HUGEPAGES).unwrap().trim().to_string();
        fs::write(NR_HUGEPAGES, pages.to_string()).unwrap();
        Reserved(before)
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let _ = fs::write(NR_HUGEPAGES, &self.0);
    }
}

/// `HugePages_Free` in /proc/meminfo.
fn free_huge_pages() -> u64 {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo.lines().find_map(|l| l.strip_prefix("HugePages_Free:")).unwrap();
    line.trim().parse().unwrap()
}

#[test]
fn umem_in_huge_pages_forwards_and_is_refused_without_them() {
    let topo = Topology::new("hp", false).unwrap();
    let args = ["run", &topo.f0, &topo.f1, "--stats-interval", "0", "--default-path", "af-xdp"];
    let mut with = args.to_vec();
    with.push("--hugepages");
    {
        let _none = Reserved::set(0);
        let done = run_to_exit(&topo.fwd, &[], &with).unwrap();
        assert!(!done.success, "{done:?}");
        assert!(done.stderr.contains("in huge pages failed"), "{}", done.stderr);
        assert!(done.stderr.contains("sysctl vm.nr_hugepages=16"), "{}", done.stderr);
        assert!(!topo.xdp_attached(), "nothing left attached");
    }
    // Two sockets of 2 × 2048 frames of 4096 bytes: 32 MiB, 16 pages of 2 MiB; a few spare.
    let _reserved = Reserved::set(20);
    assert_eq!(free_huge_pages(), 20, "the machine reserved the pages");
    let mut fwd = Forwarder::start(&topo.fwd, &with[1..]).unwrap();
    assert_eq!(free_huge_pages(), 4, "the UMEM took 16 pages");
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 2));
    assert!(topo.ping(&topo.client, IpAddr::V6(SERVER_V6), 2));
    let n = 5_000;
    udp_stream(&topo, &topo.client, &topo.server, &topo.s0, &topo.f1, IpAddr::V4(SERVER_V4), n);
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    assert!(xdp_counter(&done.stdout, "steered") >= n, "{}", done.stdout);
    // The kernel lets go of the UMEM a moment after its sockets close.
    let back = wait_for(Duration::from_secs(2), || free_huge_pages() == 20);
    assert!(back, "given back: {} free", free_huge_pages());
}
