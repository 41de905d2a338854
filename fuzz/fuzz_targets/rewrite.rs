//! User space's per-packet work on arbitrary metadata and frames: never panics, never grows a
//! frame, writes the MACs it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xdpfwd::rewrite::{parse_meta, route_frame};
use xdpfwd_common::META_LEN;

fuzz_target!(|data: &[u8]| {
    if data.len() < META_LEN + 1 {
        return;
    }
    let (meta, rest) = data.split_at(META_LEN);
    let meta: [u8; META_LEN] = meta.try_into().unwrap();
    let _ = parse_meta(&meta);
    let l3 = usize::from(rest[0] % 64);
    let mut frame = rest[1..].to_vec();
    let before = frame.clone();
    for ipv6 in [false, true] {
        let mut f = before.clone();
        if let Ok(len) = route_frame(&mut f, l3, ipv6, &[0xaa; 6], &[0xbb; 6]) {
            assert!(len <= f.len(), "the frame never grows");
            assert_eq!(&f[0..6], &[0xaa; 6]);
            assert_eq!(&f[6..12], &[0xbb; 6]);
            assert_eq!(f[len..], before[len..], "nothing beyond the IP length is touched");
        } else {
            assert_eq!(f, before, "a refused frame is left as it was");
        }
    }
    frame.clear();
});
