//! `cargo xtask package`: the Debian package, built by cargo-deb (installed here if missing)
//! from `userspace/Cargo.toml`'s `[package.metadata.deb]`, with man pages and shell
//! completions generated from the binary itself.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{cargo, cmd, cmd_output, root};

/// The cargo-deb release xtask installs.
const CARGO_DEB: &str = "3.8.0";

/// The integration test that installs the package (`tests/tests/packaging.rs`).
pub const TEST: &str = "the_debian_package_installs_upgrades_and_purges_cleanly";

/// Installs cargo-deb unless this release is there.
fn ensure_cargo_deb() -> anyhow::Result<()> {
    let version = cargo().args(["deb", "--version"]).output();
    if version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_DEB)) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deb {CARGO_DEB} (once)");
    cmd(cargo().args(["install", "cargo-deb", "--locked", "--version", CARGO_DEB]))
        .context("cargo install cargo-deb")
}

/// Man pages (gzipped) and completion scripts from `bin`, into `target/package/`.
fn generate(bin: &Path) -> anyhow::Result<()> {
    let out = root().join("target/package");
    let _ = fs::remove_dir_all(&out);
    let man = out.join("man");
    cmd(Command::new(bin).arg("man").arg(&man))?;
    for page in fs::read_dir(&man)? {
        // -n: no name or time stamp inside, so the package is the same for the same sources.
        cmd(Command::new("gzip").args(["-9", "-n", "-f"]).arg(page?.path()))?;
    }
    let completions = out.join("completions");
    fs::create_dir_all(&completions)?;
    for (shell, file) in [("bash", "xdpfwd.bash"), ("zsh", "_xdpfwd"), ("fish", "xdpfwd.fish")] {
        let script = cmd_output(Command::new(bin).args(["completions", shell]))?;
        fs::write(completions.join(file), script)?;
    }
    Ok(())
}

/// Builds the package around the release binary `bin` (already built); returns its path.
pub fn build_deb(bin: &Path) -> anyhow::Result<PathBuf> {
    ensure_cargo_deb()?;
    generate(bin)?;
    eprintln!("xtask: building the Debian package");
    let out = cmd_output(cargo().args(["deb", "-p", "xdpfwd", "--no-build", "--strip"]))?;
    let deb =
        out.lines().rev().find(|l| l.trim_end().ends_with(".deb")).context("no .deb built")?;
    Ok(PathBuf::from(deb.trim()))
}
