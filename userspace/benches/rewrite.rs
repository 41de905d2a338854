//! Nanoseconds per packet of the per-packet user-space work: read the XDP metadata, rewrite
//! the frame in place (MACs, TTL + checksum or hop limit, padding trimmed).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use xdpfwd::rewrite::{parse_meta, route_frame};
use xdpfwd_common::{META_LEN, META_MAGIC};

fn frame_v4(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f
}

fn meta() -> [u8; META_LEN] {
    let mut m = [0u8; META_LEN];
    m[0..4].copy_from_slice(&3u32.to_ne_bytes());
    m[6..8].copy_from_slice(&14u16.to_ne_bytes());
    m[8..20].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
    m[24..28].copy_from_slice(&META_MAGIC.to_ne_bytes());
    m
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_packet");
    group.throughput(Throughput::Elements(1));
    for len in [60usize, 1514] {
        let mut frame = frame_v4(len);
        let m = meta();
        group.bench_function(format!("meta+rewrite ipv4 {len}B"), |b| {
            b.iter(|| {
                let meta = parse_meta(black_box(&m)).expect("meta");
                let mut dst = [0u8; 6];
                dst.copy_from_slice(&meta.addr[0..6]);
                let mut src = [0u8; 6];
                src.copy_from_slice(&meta.addr[6..12]);
                // Restore the TTL so every iteration does the same work.
                frame[22] = 64;
                black_box(route_frame(black_box(&mut frame), 14, false, &dst, &src))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
