//! Tables larger than a small router's: 327,680 IPv4 routes in five tables (beyond the
//! 262,144 the tries once held) are mirrored whole at start, followed as they change and
//! chosen by a rule added later; the tries' capacity is configurable, and a table beyond it
//! leaves that family's transit to the kernel, saying so.
//!
//! Topology: `xdpfwd_tests::routed`, the kernel's forwarding off.

use std::{fs, net::Ipv4Addr, time::Instant};

use xdpfwd_tests::{
    Forwarder, Topology,
    routed::{Capture, assert_forwarding_off, flows, ip, neighbours},
    run_to_exit, sh,
};

/// Tables of 65,536 host routes each: `main` (out of f1), then 1001.. (out of f2).
const TABLES: u32 = 5;
const PER_TABLE: u32 = 65_536;

fn table(t: u32) -> String {
    if t == 0 { "main".into() } else { (1000 + t).to_string() }
}

fn burst(f1: &str, f2: &str) -> String {
    let mut b = String::new();
    for t in 0..TABLES {
        let via =
            if t == 0 { format!("198.18.2.2 dev {f1}") } else { format!("198.18.3.2 dev {f2}") };
        for i in 0..PER_TABLE {
            b += &format!(
                "route add 198.19.{}.{}/32 via {via} table {}\n",
                i / 256,
                i % 256,
                table(t)
            );
        }
    }
    b
}

fn tables(ns: &str) -> serde_json::Value {
    let out = run_to_exit(ns, &[], &["stats", "--json", "--count", "1"]).unwrap();
    assert!(out.success, "{out:?}");
    let doc: serde_json::Value = serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    doc["stats"]["tables"].clone()
}

#[test]
fn a_large_table_is_mirrored_whole_and_a_full_trie_leaves_transit_to_the_kernel() {
    let topo = Topology::new("sc", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    let file = std::env::temp_dir().join(format!("xdpfwd-test-{}.batch", topo.fwd));
    fs::write(&file, burst(&topo.f1, &f2)).unwrap();
    let added = sh(&["ip", "-n", &topo.fwd, "-batch", &file.to_string_lossy()]);
    let _ = fs::remove_file(&file);
    added.unwrap();

    let started = Instant::now();
    let args = [topo.f0.as_str(), &topo.f1, &f2, "--stats-interval", "0"];
    let mut fwd = Forwarder::start(&topo.fwd, &args).unwrap();
    eprintln!("{} routes mirrored at start in {:?}", TABLES * PER_TABLE, started.elapsed());
    let t = tables(&topo.fwd);
    assert!(t["routes_v4"].as_u64().unwrap() >= u64::from(TABLES * PER_TABLE), "{t}");
    assert_eq!(t["max_routes_v4"].as_u64(), Some(2 << 20), "{t}");
    assert!(t["route_bytes_v4"].as_u64().unwrap() > u64::from(TABLES * PER_TABLE) * 40, "{t}");

    assert_forwarding_off(&topo);
    let capture = Capture::open(&topo, &s2);
    let on = |to: Ipv4Addr, link: u8, why: &str| {
        let (seen, total) = flows(&topo, &capture, to, (4, 5), false);
        assert_eq!(total, 20, "{to}: {why}: {seen:?}");
        assert!(seen.values().all(|l| l.len() == 1 && l.contains(&link)), "{to}: {why}: {seen:?}");
    };
    for last in [0u8, 77, 255] {
        on(Ipv4Addr::new(198, 19, 255, last), 0, "main's host route, out of f1");
    }
    // A rule added now chooses another of the large tables.
    ip(&topo, "rule add pref 100 from 198.18.1.0/24 lookup 1003");
    std::thread::sleep(std::time::Duration::from_millis(300));
    on(Ipv4Addr::new(198, 19, 3, 3), 2, "table 1003's host route, out of f2");
    ip(&topo, "route del 198.19.3.3/32 table 1003");
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Table 1003 has nothing else for it: the walk goes on to main.
    on(Ipv4Addr::new(198, 19, 3, 3), 0, "deleted from 1003, main's route");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
    assert!(done.stdout.contains("tables: routes v4"), "{}", done.stdout);

    // Tries too small for the table: IPv4 transit goes to the kernel (off: nothing arrives),
    // and stats say why.
    let args =
        [topo.f0.as_str(), &topo.f1, &f2, "--stats-interval", "0", "--max-routes-v4", "100000"];
    let mut fwd = Forwarder::start(&topo.fwd, &args).unwrap();
    let (seen, total) = flows(&topo, &capture, Ipv4Addr::new(198, 19, 255, 1), (4, 5), false);
    assert_eq!(total, 0, "a trie missing routes forwards nothing: {seen:?}");
    let done = fwd.stop().unwrap();
    assert!(done.stdout.contains("could not be mirrored"), "{}", done.stdout);
    assert!(done.stdout.contains("pass_fib="), "{}", done.stdout);
}
