//! The stats socket of a running forwarder: it serves its [`Snapshot`] as one JSON line to
//! whoever connects to `/run/xdpfwd/<netns inode>/<pid>.sock` (`xdpfwd stats` and `xdpfwd
//! reload` are the clients, in `stats_client`).
//!
//! The directories are checked before use: real directories (not symlinks), writable by
//! nobody but their owner, who must be root or the instance's user (under systemd,
//! `RuntimeDirectory=xdpfwd` makes `/run/xdpfwd` the service user's); so a socket found
//! there was put there by an instance.

use std::{
    fs,
    io::{self, Write},
    os::{
        linux::fs::MetadataExt,
        unix::{
            fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::snapshot::StatsSource;

/// Where every instance's directory lives.
pub const BASE: &str = "/run/xdpfwd";

/// The directory of this network namespace's sockets.
pub fn dir() -> anyhow::Result<PathBuf> {
    let ino = fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?.st_ino();
    Ok(Path::new(BASE).join(ino.to_string()))
}

/// The pid of the instance serving `conn`, from the kernel (`SO_PEERCRED`), if it runs as
/// root, this user or `owner` (the directory's owner, the service's user); clients trust
/// nothing else.
pub fn trusted_peer(conn: &UnixStream, owner: u32) -> anyhow::Result<u32> {
    let cred = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
        .context("SO_PEERCRED")?;
    let me = nix::unistd::geteuid().as_raw();
    if ![0, me, owner].contains(&cred.uid()) {
        bail!("served by uid {}, not root, uid {me} or the directory's owner", cred.uid());
    }
    u32::try_from(cred.pid()).context("peer pid")
}

/// Refuses a directory that is a symlink or writable by group or others; returns its owner.
pub fn check_dir(path: &Path) -> anyhow::Result<u32> {
    let meta = fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.file_type().is_dir() {
        bail!("{} is not a directory (a symlink?): refusing it", path.display());
    }
    if meta.permissions().mode() & 0o022 != 0 {
        bail!("{} is writable by group or others: refusing it", path.display());
    }
    Ok(meta.st_uid())
}

/// Creates `path` (mode `mode`) unless it exists, then checks it: this instance writes
/// there, so it must be root's or its own user's.
fn make_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    }
    let owner = check_dir(path)?;
    let me = nix::unistd::geteuid().as_raw();
    if owner != 0 && owner != me {
        bail!("{} is owned by uid {owner}, not root or uid {me}: refusing it", path.display());
    }
    Ok(())
}

/// Removes sockets in `dir` that nobody listens on any more (left by killed instances): a
/// connection is refused there. Anything else is left alone.
fn sweep_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let is_socket = entry.file_type().is_ok_and(|t| t.is_socket());
        if is_socket
            && let Err(e) = UnixStream::connect(entry.path())
            && e.kind() == io::ErrorKind::ConnectionRefused
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Takes over the directory of a namespace that an instance of another user left behind (it
/// cannot remove it from `/run/xdpfwd`; a later namespace may reuse the inode number): when
/// nothing in it answers any more, it is removed. Returns whether it was.
fn reclaim(dir: &Path) -> bool {
    if !fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_dir()) {
        return false;
    }
    sweep_stale(dir);
    let empty = fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none());
    if empty && fs::remove_dir(dir).is_ok() {
        tracing::info!(dir = %dir.display(), "took over a stats directory left by another user");
        return true;
    }
    false
}

/// Serves snapshots until `stop`; removes the socket when done.
pub fn serve(
    source: Arc<StatsSource>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<thread::JoinHandle<()>> {
    make_dir(Path::new(BASE), 0o755)?;
    let dir = dir()?;
    if let Err(err) = make_dir(&dir, 0o755) {
        if !reclaim(&dir) {
            return Err(err);
        }
        make_dir(&dir, 0o755)?;
    }
    sweep_stale(&dir);
    let path = dir.join(format!("{}.sock", std::process::id()));
    let _ = fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(thread::Builder::new().name("xdpfwd-stats".into()).spawn(move || {
        while !stop.load(Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => answer(conn, &source),
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
        let _ = fs::remove_file(&path);
        // The namespace's directory goes too when this was its last instance.
        let _ = fs::remove_dir(&dir);
    })?)
}

/// Writes one snapshot; a client that does not read within a second is dropped.
fn answer(mut conn: UnixStream, source: &StatsSource) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
    if let Ok(json) = serde_json::to_string(&source.snapshot()) {
        let _ = writeln!(conn, "{json}");
    }
}
