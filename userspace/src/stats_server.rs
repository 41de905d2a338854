//! `xdpfwd stats`: a running forwarder serves its [`Snapshot`] as one JSON line to whoever
//! connects to its unix socket, `/run/xdpfwd/<netns inode>/<pid>.sock`; the `stats` command
//! finds the forwarders of its own network namespace there and prints their counters.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::{
        linux::fs::MetadataExt,
        unix::net::{UnixListener, UnixStream},
    },
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{snapshot::StatsSource, stats::Snapshot};

/// The directory of this network namespace's sockets.
fn dir() -> anyhow::Result<PathBuf> {
    let ino = fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?.st_ino();
    Ok(PathBuf::from("/run/xdpfwd").join(ino.to_string()))
}

/// Removes sockets of processes that are gone (killed instances, in any namespace) and the
/// directories left empty.
fn sweep_stale() {
    let Ok(dirs) = fs::read_dir("/run/xdpfwd") else { return };
    for dir in dirs.filter_map(Result::ok) {
        if let Ok(entries) = fs::read_dir(dir.path()) {
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                let pid =
                    path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u32>().ok());
                if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        let _ = fs::remove_dir(dir.path());
    }
}

/// Serves snapshots until `stop`; removes the socket when done.
pub fn serve(
    source: Arc<StatsSource>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<thread::JoinHandle<()>> {
    sweep_stale();
    let dir = dir()?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.sock", std::process::id()));
    let socket_dir = dir.clone();
    let _ = fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(thread::Builder::new().name("xdpfwd-stats".into()).spawn(move || {
        while !stop.load(Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
                    if let Ok(json) = serde_json::to_string(&source.snapshot()) {
                        let _ = writeln!(conn, "{json}");
                    }
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
        let _ = fs::remove_file(&path);
        // The namespace's directory goes too when this was its last instance.
        let _ = fs::remove_dir(&socket_dir);
    })?)
}

/// Snapshots of every forwarder running in this namespace, by pid. Stale sockets (left by a
/// killed forwarder) are removed.
pub fn fetch_all() -> anyhow::Result<Vec<(u32, Snapshot)>> {
    let dir = dir()?;
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(&dir) else { return Ok(out) };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Some(pid) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok())
        else {
            continue;
        };
        match UnixStream::connect(&path) {
            Ok(conn) => {
                conn.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut line = String::new();
                BufReader::new(conn).read_line(&mut line)?;
                out.push((pid, serde_json::from_str(&line).context("decoding a snapshot")?));
            }
            Err(_) => {
                let _ = fs::remove_file(&path);
            }
        }
    }
    out.sort_by_key(|(pid, _)| *pid);
    Ok(out)
}

/// `xdpfwd reload` and friends: sends `signal` to every forwarder of this namespace.
pub fn signal_all(signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
    let found = fetch_all()?;
    if found.is_empty() {
        bail!("no xdpfwd runs in this network namespace (no socket in {})", dir()?.display());
    }
    for (pid, _) in found {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("signalling pid {pid}"))?;
        println!("sent {signal:?} to xdpfwd pid {pid}");
    }
    Ok(())
}

/// `xdpfwd stats`: prints the counters of the forwarders in this namespace every `interval`
/// seconds (`count` times; 0: until interrupted), as text or JSON lines.
pub fn run(json: bool, interval: f64, count: u64) -> anyhow::Result<()> {
    let mut prev: Vec<(u32, Snapshot, Instant)> = Vec::new();
    let mut n = 0;
    loop {
        let now = fetch_all()?;
        if now.is_empty() {
            bail!("no xdpfwd runs in this network namespace (no socket in {})", dir()?.display());
        }
        for (pid, snap) in &now {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&serde_json::json!({ "pid": pid, "stats": snap }))?
                );
                continue;
            }
            let attach: Vec<String> =
                snap.attach.iter().map(|(i, m)| format!("{i} ({m})")).collect();
            println!(
                "xdpfwd pid {pid}: {} | {} mode | up {:.0} s",
                attach.join(", "),
                snap.xsk_mode,
                snap.uptime
            );
            if let Some((_, before, at)) = prev.iter().find(|(p, _, _)| p == pid) {
                println!("  {}", snap.line(before, at.elapsed().as_secs_f64()));
            }
            println!("{}", snap.report());
        }
        n += 1;
        if count != 0 && n >= count {
            return Ok(());
        }
        let at = Instant::now();
        prev = now.into_iter().map(|(p, s)| (p, s, at)).collect();
        thread::sleep(Duration::from_secs_f64(interval.max(0.1)));
    }
}
