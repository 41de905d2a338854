//! Invalid invocations of `xdpfwd run` fail at once with a message that names the problem,
//! and leave nothing attached.

use xdpfwd_tests::{Forwarder, Topology, run_to_exit};

fn refused(topo: &Topology, wrapper: &[&str], args: &[&str], expect: &[&str]) {
    let done = run_to_exit(&topo.fwd, wrapper, args).unwrap();
    assert!(!done.success, "xdpfwd {args:?} must fail: {done:?}");
    for e in expect {
        assert!(done.stderr.contains(e), "xdpfwd {args:?}: stderr lacks {e:?}: {}", done.stderr);
    }
    assert!(!topo.xdp_attached(), "nothing left attached after {args:?}");
}

#[test]
fn unknown_interface_is_named() {
    let topo = Topology::new("e", false).unwrap();
    refused(&topo, &[], &["run", &topo.f0, "nosuch0"], &["'nosuch0' does not exist"]);
}

#[test]
fn interface_in_another_namespace_is_pointed_at() {
    let topo = Topology::new("n", false).unwrap();
    let expect = format!("exists in network namespace '{}'", topo.client);
    refused(
        &topo,
        &[],
        &["run", &topo.f0, &topo.c0],
        &[&format!("'{}' does not exist", topo.c0), &expect],
    );
}

#[test]
fn second_instance_is_refused_and_names_the_first() {
    let topo = Topology::new("a", false).unwrap();
    let mut first = Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1]).unwrap();
    let done = run_to_exit(&topo.fwd, &[], &["run", &topo.f0, &topo.f1]).unwrap();
    assert!(!done.success);
    assert!(
        done.stderr.contains("already has an XDP program attached: 'xdpfwd'"),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains("another xdpfwd"), "{}", done.stderr);
    assert!(
        done.stderr.contains(&format!("pid {}", first.pid())),
        "names the running one: {}",
        done.stderr
    );
    assert!(first.stop().unwrap().success, "the first instance is unharmed");
}

#[test]
fn missing_capabilities_are_named() {
    let topo = Topology::new("c", false).unwrap();
    let wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ];
    refused(
        &topo,
        &wrapper,
        &["run", &topo.f0, &topo.f1],
        &["lacks capabilities", "CAP_NET_ADMIN", "CAP_BPF"],
    );
}

#[test]
fn invalid_flags_are_named() {
    let topo = Topology::new("f", false).unwrap();
    refused(
        &topo,
        &[],
        &["run", &topo.f0, &topo.f1, "--ring-size", "1000"],
        &["--ring-size must be a power of two"],
    );
    refused(
        &topo,
        &[],
        &["run", &topo.f0, &topo.f1, "--mode", "turbo"],
        &["invalid value 'turbo'"],
    );
    refused(&topo, &[], &["run", &topo.f0, &topo.f0], &["listed twice"]);
}

#[test]
fn flags_out_of_range_are_refused_by_name() {
    let topo = Topology::new("fl", false).unwrap();
    // Each of these aborted on allocation, panicked or spun before it was checked.
    for (flag, value) in [
        ("--batch", "100000000000"),
        ("--batch", "0"),
        ("--stats-interval", "inf"),
        ("--stats-interval", "-1"),
        ("--workers", "0"),
        ("--cpus", "4096"),
    ] {
        let arg = format!("{flag}={value}");
        refused(&topo, &[], &["run", &topo.f0, &topo.f1, &arg], &[flag]);
    }
    for interval in ["inf", "NaN", "0"] {
        let done = run_to_exit(&topo.fwd, &[], &["stats", "--interval", interval]).unwrap();
        assert_eq!(done.code, Some(1), "a clear error, not a panic: {done:?}");
        assert!(done.stderr.contains("--interval"), "{done:?}");
    }
}
