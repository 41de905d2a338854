//! What every eBPF binary of this crate needs once: the panic handler and the licence.
//! Included by `main.rs` and `bench.rs` as a module (`#[path = "rt.rs"]`).

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL: `bpf_redirect_map`, `bpf_xdp_adjust_meta` and the other helpers this crate calls are
/// GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
