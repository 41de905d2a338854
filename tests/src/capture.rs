//! A running `xdpfwd capture` and the pcapng it wrote, read back.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use pcap_file::pcapng::{Block, PcapNgReader};

use crate::{signal_and_wait, xdpfwd_bin};

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    pub iface: String,
    /// pcapng `epb_flags` (direction: 1 in, 2 out).
    pub flags: u32,
    pub comment: String,
    pub original_len: u32,
    pub data: Vec<u8>,
}

/// `xdpfwd capture -w FILE ARGS` in a namespace; killed on drop.
pub struct Capturing {
    child: Option<Child>,
    file: PathBuf,
    stderr: mpsc::Receiver<String>,
}

impl Capturing {
    /// Starts the capture and waits until the instance has turned it on.
    pub fn start(ns: &str, args: &[&str]) -> anyhow::Result<Self> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file =
            std::env::temp_dir().join(format!("xdpfwd-cap-{}-{n}.pcapng", std::process::id()));
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(xdpfwd_bin())
            .args(["capture", "-w"])
            .arg(&file)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting xdpfwd capture")?;
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().context("stderr")?;
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut capture = Capturing { child: Some(child), file, stderr: rx };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut said = String::new();
        while Instant::now() < deadline {
            match capture.stderr.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("capturing") => return Ok(capture),
                Ok(line) => said.push_str(&line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = capture.kill();
        bail!("xdpfwd capture did not start: {said}")
    }

    /// Sends `signal`, waits (at most 10 s); returns the exit status and what it said.
    fn end(&mut self, signal: i32) -> anyhow::Result<(bool, String)> {
        let mut child = self.child.take().context("already stopped")?;
        let status = signal_and_wait(&mut child, signal, Duration::from_secs(10))?;
        let said: Vec<String> = self.stderr.try_iter().collect();
        Ok((status.success(), said.join("\n")))
    }

    /// Waits for the capture to end by itself (`--count`), at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<Vec<Captured>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = &mut self.child
                && child.try_wait()?.is_some()
            {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.stop()
    }

    /// SIGINT (the capture writes out what it has and exits 0); the frames it wrote.
    pub fn stop(&mut self) -> anyhow::Result<Vec<Captured>> {
        let (ok, said) = self.end(libc::SIGINT)?;
        if !ok {
            bail!("xdpfwd capture failed: {said}");
        }
        read(&self.file)
    }

    /// SIGKILL: what an operator's `kill -9` does.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.end(libc::SIGKILL).map(|_| ())
    }
}

impl Drop for Capturing {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The frames of a pcapng file, with their interfaces' names.
pub fn read(path: &PathBuf) -> anyhow::Result<Vec<Captured>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = PcapNgReader::new(file)?;
    let mut names = Vec::new();
    let mut out = Vec::new();
    while let Some(block) = reader.next_block() {
        match block? {
            Block::InterfaceDescription(idb) => {
                let name = idb.options.iter().find_map(|o| match o {
                    pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                    _ => None,
                });
                names.push(name.unwrap_or_default());
            }
            Block::EnhancedPacket(epb) => {
                use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption as O;
                let mut captured = Captured {
                    iface: names.get(epb.interface_id as usize).cloned().unwrap_or_default(),
                    flags: 0,
                    comment: String::new(),
                    original_len: epb.original_len,
                    data: epb.data.to_vec(),
                };
                for option in &epb.options {
                    match option {
                        O::Flags(f) => captured.flags = *f,
                        O::Comment(c) => captured.comment = c.to_string(),
                        _ => {}
                    }
                }
                out.push(captured);
            }
            _ => {}
        }
    }
    Ok(out)
}
