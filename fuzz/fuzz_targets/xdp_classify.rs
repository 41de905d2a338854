//! The real XDP program on arbitrary frames (`BPF_PROG_RUN`, in a private network namespace;
//! needs root): it must pass every frame it cannot forward, unchanged.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use xdpfwd_tests::xdp_harness::Harness;

static HARNESS: Mutex<Option<Harness>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, frame)) = data.split_first() else { return };
    let mut h = HARNESS.lock().unwrap();
    let h = h.get_or_insert_with(|| Harness::new().expect("XDP harness (root, built object)"));
    h.set_fast_path(mode & 1 == 1).expect("map update");
    if let Ok((action, out)) = h.run(frame) {
        assert_eq!(action, 2, "XDP_PASS expected: nothing can be redirected in the harness");
        assert_eq!(out, frame, "a passed frame must be untouched");
    }
});
