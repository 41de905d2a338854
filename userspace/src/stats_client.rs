//! `xdpfwd stats` and `xdpfwd reload`: find the forwarders of this network namespace by their
//! stats sockets (`stats_server`), read their snapshots, print them or signal them.
//!
//! An instance is what answers on a socket in the checked directory with a snapshot; its pid
//! comes from the kernel (`SO_PEERCRED`), never from a file name. One instance that cannot be
//! read is reported and skipped; the others are still shown.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    os::unix::{fs::FileTypeExt, net::UnixStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{snapshot::Snapshot, stats_server};

/// Longest interval `stats` accepts between refreshes (a day).
const MAX_INTERVAL: f64 = 86_400.0;

/// An instance found in this namespace, or why a socket there could not be read.
pub type Found = Result<(u32, Snapshot), String>;

/// Reads one socket: its owner's pid and uid from the kernel (root, this user or the
/// directory's owner, the service's user), then a snapshot.
fn read_instance(path: &Path, owner: u32) -> anyhow::Result<(u32, Snapshot)> {
    let conn = UnixStream::connect(path).context("connecting")?;
    let pid = stats_server::trusted_peer(&conn, owner)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    // A snapshot line is far below 16 MiB; nothing reads more.
    let mut line = String::new();
    BufReader::new(conn.take(16 << 20)).read_line(&mut line)?;
    let snapshot = serde_json::from_str(&line).context("decoding its snapshot")?;
    Ok((pid, snapshot))
}

/// Every instance of this namespace, by pid, and the sockets that could not be read.
pub fn fetch_all() -> anyhow::Result<Vec<Found>> {
    let dir = stats_server::dir()?;
    if !dir.exists() {
        return Ok(Vec::new());
    }
    stats_server::check_dir(Path::new(stats_server::BASE))?;
    let owner = stats_server::check_dir(&dir)?;
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir)?.filter_map(Result::ok) {
        // `file_type` does not follow symlinks: only sockets themselves are read, and only
        // the stats sockets (`<pid>.sock`; `<pid>.capture` serves `xdpfwd capture`).
        let is_stats = entry.path().extension().is_some_and(|e| e == "sock");
        if !is_stats || !entry.file_type().is_ok_and(|t| t.is_socket()) {
            continue;
        }
        let path = entry.path();
        out.push(read_instance(&path, owner).map_err(|e| format!("{}: {e:#}", path.display())));
    }
    out.sort_by_key(|f| f.as_ref().map_or(0, |(pid, _)| *pid));
    Ok(out)
}

/// The instances that answered; the others are reported on stderr. Fails when none did.
fn answering() -> anyhow::Result<Vec<(u32, Snapshot)>> {
    let mut found = Vec::new();
    for f in fetch_all()? {
        match f {
            Ok(instance) => found.push(instance),
            Err(why) => eprintln!("xdpfwd: skipping a socket that does not answer: {why}"),
        }
    }
    if found.is_empty() {
        bail!(
            "no xdpfwd runs in this network namespace (no answering socket in {})",
            stats_server::dir()?.display()
        );
    }
    Ok(found)
}

/// `xdpfwd reload` and friends: sends `signal` to every forwarder of this namespace.
pub fn signal_all(signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
    for (pid, _) in answering()? {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("signalling pid {pid}"))?;
        println!("sent {signal:?} to xdpfwd pid {pid}");
    }
    Ok(())
}

/// `xdpfwd stats`: prints the counters of the forwarders in this namespace every `interval`
/// seconds (`count` times; 0: until interrupted), as text or JSON lines.
pub fn run(json: bool, interval: f64, count: u64) -> anyhow::Result<()> {
    if !(interval.is_finite() && interval > 0.0 && interval <= MAX_INTERVAL) {
        bail!("--interval {interval}: expected seconds above 0, at most {MAX_INTERVAL}");
    }
    let mut prev: Vec<(u32, Snapshot, Instant)> = Vec::new();
    let mut n = 0;
    loop {
        let now = answering()?;
        for (pid, snap) in &now {
            if json {
                let doc = serde_json::json!({ "pid": pid, "stats": snap, "paths": snap.paths() });
                println!("{}", serde_json::to_string(&doc)?);
            } else {
                print_text(*pid, snap, prev.iter().find(|(p, _, _)| p == pid));
            }
        }
        n += 1;
        if count != 0 && n >= count {
            return Ok(());
        }
        let at = Instant::now();
        prev = now.into_iter().map(|(p, s)| (p, s, at)).collect();
        thread::sleep(Duration::from_secs_f64(interval));
    }
}

fn print_text(pid: u32, snap: &Snapshot, before: Option<&(u32, Snapshot, Instant)>) {
    let attach: Vec<String> = snap.attach.iter().map(|(i, m)| format!("{i} ({m})")).collect();
    println!(
        "xdpfwd pid {pid}: {} | {} mode, frames up to {} B | up {:.0} s",
        attach.join(", "),
        snap.xsk_mode,
        snap.xsk_max_frame,
        snap.uptime
    );
    if let Some((_, before, at)) = before {
        println!("  {}", snap.line(before, at.elapsed().as_secs_f64()));
    }
    println!("{}", snap.report());
}
