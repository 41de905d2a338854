//! Builds the eBPF crate (`xdp-prog`, nightly, `bpfel-unknown-none`) and leaves the object in
//! `OUT_DIR/xdp-prog`, where `loader.rs` embeds it.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root");
    let prog = root.join("xdp-prog");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    for path in [
        "xdp-prog/src",
        "xdp-prog/Cargo.toml",
        "xdp-prog/Cargo.lock",
        "xdp-prog/.cargo/config.toml",
        "common/src",
        "common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=XDPFWD_EBPF_OBJ");

    // A prebuilt object (cargo xtask builds it first) avoids a nested cargo.
    if let Some(obj) = env::var_os("XDPFWD_EBPF_OBJ") {
        println!("cargo:rerun-if-changed={}", Path::new(&obj).display());
        fs::copy(&obj, out.join("xdp-prog")).unwrap_or_else(|e| panic!("copying {obj:?}: {e}"));
        return;
    }
    let target_dir = out.join("xdp-prog-target");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&prog);
    // Cargo's variables for this build script must not leak into the nested build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUST")
                && !matches!(
                    key.as_ref(),
                    "RUSTUP_HOME" | "RUSTUP_DIST_SERVER" | "RUSTUP_UPDATE_ROOT"
                )
        {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "running `rustup run nightly cargo build` in {}: {e}; run `cargo xtask build`",
            prog.display()
        )
    });
    if !status.success() {
        panic!("building the eBPF program failed; `cargo xtask build` installs what it needs");
    }
    copy(&target_dir.join("bpfel-unknown-none/release/xdp-prog"), &out.join("xdp-prog"));
}

fn copy(from: &Path, to: &Path) {
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}
