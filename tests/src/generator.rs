//! Load for benchmarks and load tests, from the XDP programs in `xdp-prog/src/bench.rs`:
//! a generator that makes the kernel transmit millions of frames per second
//! (`BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`), a counting sink, a bare
//! `XDP_REDIRECT` forwarder and an xdp-forward-style router.

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread,
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, DevMap, HashMap, PerCpuArray},
    programs::{Xdp, XdpMode},
};

/// The bench object: `$XDPFWD_BENCH_OBJ`, or the one `cargo xtask build` leaves.
pub fn bench_obj() -> PathBuf {
    std::env::var_os("XDPFWD_BENCH_OBJ").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../xdp-prog/target/bpfel-unknown-none/release/xdp-bench")
    })
}

/// Runs `f` with the calling thread in network namespace `ns`, on a scoped thread.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    let path = format!("/run/netns/{ns}");
    thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
    })
}

fn load(obj: &Path, program: &str) -> anyhow::Result<Ebpf> {
    let mut ebpf = Ebpf::load_file(obj).with_context(|| format!("loading {}", obj.display()))?;
    let prog: &mut Xdp = ebpf.program_mut(program).context("program missing")?.try_into()?;
    prog.load()?;
    Ok(ebpf)
}

fn attach(ebpf: &mut Ebpf, program: &str, dev: &str) -> anyhow::Result<()> {
    let prog: &mut Xdp = ebpf.program_mut(program).context("program missing")?.try_into()?;
    prog.attach(dev, XdpMode::Driver).with_context(|| format!("attaching {program} to {dev}"))?;
    Ok(())
}

/// [`udp_frame`] from the client (198.18.1.2) to the server (198.18.2.2), addressed to the
/// forwarder's f0, as the generator sends it through `topo`.
pub fn client_to_server(topo: &crate::Topology, len: usize) -> anyhow::Result<Vec<u8>> {
    let (c_mac, f_mac) = (topo.mac(&topo.client, &topo.c0)?, topo.mac(&topo.fwd, &topo.f0)?);
    Ok(udp_frame(c_mac, f_mac, [198, 18, 1, 2], [198, 18, 2, 2], len))
}

/// An IPv4/UDP frame of `len` bytes (without FCS) with a valid IP checksum and no UDP
/// checksum.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    len: usize,
) -> Vec<u8> {
    let len = len.max(60);
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    let check = crate::packet::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&check.to_be_bytes());
    f[34..36].copy_from_slice(&10_000u16.to_be_bytes());
    f[36..38].copy_from_slice(&9u16.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

/// A generator sending from `dev` in `ns` until stopped (or `limit` frames).
pub struct Generator {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<anyhow::Result<()>>>,
    /// The sending thread, for the signal that ends its call (steady generators).
    thread_id: libc::pthread_t,
}

/// Ends a steady generator's `BPF_PROG_RUN` call: the kernel checks for a pending signal
/// between batches and returns `EINTR`.
const STOP_SIGNAL: libc::c_int = libc::SIGUSR1;

/// Makes [`STOP_SIGNAL`] interrupt rather than kill (once per process).
fn catch_stop_signal() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn nothing(_: libc::c_int) {}
    ONCE.call_once(|| {
        // SAFETY: a zeroed `sigaction` with a handler that does nothing (async-signal-safe)
        // and an empty mask.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = nothing as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(STOP_SIGNAL, &action, std::ptr::null_mut());
        }
    });
}

/// Pins the calling thread to CPU 0. A steady generator stays there: the forwarder's and
/// the sink's softirq work it sets off then runs on the same CPU throughout, instead of
/// following the thread when the scheduler moves it (after which the veth rings' locks
/// contend between CPUs and pages go back to their pools remotely: a candidate's figure
/// moved by a third from one run to the next).
fn pin_to_first_cpu() -> anyhow::Result<()> {
    let mut cpu0 = nix::sched::CpuSet::new();
    cpu0.set(0)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu0)
        .context("pinning the generator to CPU 0")
}

impl Generator {
    /// Starts sending `frame` out of `dev` (in `ns`) over `flows` UDP source ports until
    /// stopped or `limit` frames are sent. With a limit it sends runs of `chunk` frames and
    /// counts them ([`Self::sent`]); without one, a steady load from CPU 0: one call that runs
    /// until [`Self::stop`] interrupts it (each call costs tens of milliseconds of set-up
    /// during which nothing is sent), and `sent` stays 0.
    pub fn start(
        ns: &str,
        dev: &str,
        frame: Vec<u8>,
        flows: u32,
        chunk: u32,
        limit: Option<u64>,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (ns, dev, obj) = (ns.to_owned(), dev.to_owned(), bench_obj());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        catch_stop_signal();
        let thread = thread::Builder::new().name("generator".into()).spawn({
            let (stop, sent) = (stop.clone(), sent.clone());
            move || -> anyhow::Result<()> {
                let setup = || -> anyhow::Result<(Ebpf, u32)> {
                    let file = File::open(format!("/run/netns/{ns}"))?;
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                    let mut ebpf = load(&obj, "bench_gen")?;
                    let mut flows_map: Array<_, u32> =
                        Array::try_from(ebpf.map_mut("GEN_FLOWS").context("GEN_FLOWS")?)?;
                    flows_map.set(0, flows.max(1), 0)?;
                    let mut hdr_map: Array<_, [u8; 42]> =
                        Array::try_from(ebpf.map_mut("GEN_HDR").context("GEN_HDR")?)?;
                    let mut hdr = [0u8; 42];
                    hdr.copy_from_slice(&frame[..42]);
                    hdr_map.set(0, hdr, 0)?;
                    let ifindex = nix::net::if_::if_nametoindex(dev.as_str())?;
                    Ok((ebpf, ifindex))
                };
                let (ebpf, ifindex) = match setup() {
                    Ok(v) => {
                        // SAFETY: no preconditions.
                        let _ = ready_tx.send(Ok(unsafe { libc::pthread_self() }));
                        v
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e:#}")));
                        return Err(e);
                    }
                };
                let prog: &Xdp = ebpf.program("bench_gen").context("bench_gen")?.try_into()?;
                let fd = prog.fd()?;
                if limit.is_none() {
                    pin_to_first_cpu()?;
                    while !stop.load(Relaxed) {
                        let live = crate::prog_run::Mode::Live { repeat: u32::MAX };
                        match crate::prog_run::xdp(fd, &frame, ifindex, 0, live) {
                            Err(e) if e.raw_os_error() != Some(libc::EINTR) => {
                                return Err(e).context("BPF_PROG_RUN live frames");
                            }
                            _ => {}
                        }
                    }
                    return Ok(());
                }
                while !stop.load(Relaxed) {
                    let mut n = chunk;
                    if let Some(limit) = limit {
                        let left = limit.saturating_sub(sent.load(Relaxed));
                        if left == 0 {
                            break;
                        }
                        n = n.min(left as u32);
                    }
                    let live = crate::prog_run::Mode::Live { repeat: n };
                    match crate::prog_run::xdp(fd, &frame, ifindex, 0, live) {
                        Ok(_) => {
                            sent.fetch_add(u64::from(n), Relaxed);
                        }
                        // Stopped early: part of the run went out, uncounted.
                        Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                        Err(e) => return Err(e).context("BPF_PROG_RUN live frames"),
                    }
                }
                Ok(())
            }
        })?;
        match ready_rx.recv() {
            Ok(Ok(thread_id)) => Ok(Self { stop, sent, thread: Some(thread), thread_id }),
            Ok(Err(e)) => anyhow::bail!("generator setup failed: {e}"),
            Err(_) => anyhow::bail!("generator thread died: {:?}", thread.join()),
        }
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Relaxed)
    }

    /// Waits until a `limit` given at start is reached.
    pub fn wait(mut self) -> anyhow::Result<u64> {
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| anyhow::anyhow!("generator panicked"))??;
        }
        Ok(self.sent())
    }

    /// Stops and returns the frames sent.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        if let Some(t) = self.interrupt() {
            t.join().map_err(|_| anyhow::anyhow!("generator panicked"))??;
        }
        Ok(self.sent())
    }

    /// Sets the stop flag and signals the thread until its call has ended (5 s at most);
    /// returns the thread to join.
    fn interrupt(&mut self) -> Option<thread::JoinHandle<anyhow::Result<()>>> {
        self.stop.store(true, Relaxed);
        let t = self.thread.take()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !t.is_finished() && std::time::Instant::now() < deadline {
            // SAFETY: the thread has not been joined, so its id is valid.
            unsafe { libc::pthread_kill(self.thread_id, STOP_SIGNAL) };
            thread::sleep(std::time::Duration::from_millis(10));
        }
        Some(t)
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        if let Some(t) = self.interrupt() {
            let _ = t.join();
        }
    }
}

/// The counting sink attached to an interface; detached on drop.
pub struct Sink {
    ebpf: Ebpf,
}

impl Sink {
    pub fn attach(ns: &str, dev: &str) -> anyhow::Result<Self> {
        let obj = bench_obj();
        let ebpf = in_ns(ns, || {
            let mut ebpf = load(&obj, "bench_sink")?;
            attach(&mut ebpf, "bench_sink", dev)?;
            Ok(ebpf)
        })?;
        Ok(Self { ebpf })
    }

    /// (packets, bytes) counted so far.
    pub fn count(&self) -> anyhow::Result<(u64, u64)> {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("SINK").context("SINK")?)?;
        let p = map.get(&0, 0)?.iter().sum();
        let b = map.get(&1, 0)?.iter().sum();
        Ok((p, b))
    }
}

/// A bare XDP_REDIRECT forwarder between two interfaces of one namespace, rewriting MACs;
/// detached on drop.
pub struct BareRedirect {
    _ebpf: Ebpf,
}

impl BareRedirect {
    /// Forwards `a` → `b` (to MAC `b_peer`) and `b` → `a` (to MAC `a_peer`); `macs` are the
    /// MACs of `a` and `b` themselves.
    pub fn attach(
        ns: &str,
        (a, b): (&str, &str),
        (ma, mb): ([u8; 6], [u8; 6]),
        (a_peer, b_peer): ([u8; 6], [u8; 6]),
    ) -> anyhow::Result<Self> {
        let obj = bench_obj();
        let ebpf = in_ns(ns, || {
            let mut ebpf = load(&obj, "bench_redirect")?;
            let ia = nix::net::if_::if_nametoindex(a)?;
            let ib = nix::net::if_::if_nametoindex(b)?;
            {
                let mut dev: DevMap<_> =
                    DevMap::try_from(ebpf.map_mut("REDIRECT_DEV").context("REDIRECT_DEV")?)?;
                dev.set(0, ia, None, 0)?;
                dev.set(1, ib, None, 0)?;
            }
            {
                let mut cfg: HashMap<_, u32, [u8; 16]> =
                    HashMap::try_from(ebpf.map_mut("REDIRECT_CFG").context("REDIRECT_CFG")?)?;
                let entry = |dst: [u8; 6], src: [u8; 6], slot: u32| {
                    let mut v = [0u8; 16];
                    v[0..6].copy_from_slice(&dst);
                    v[6..12].copy_from_slice(&src);
                    v[12..16].copy_from_slice(&slot.to_le_bytes());
                    v
                };
                cfg.insert(ia, entry(b_peer, mb, 1), 0)?;
                cfg.insert(ib, entry(a_peer, ma, 0), 0)?;
            }
            attach(&mut ebpf, "bench_redirect", a)?;
            attach(&mut ebpf, "bench_redirect", b)?;
            Ok(ebpf)
        })?;
        Ok(Self { _ebpf: ebpf })
    }
}

/// An xdp-forward-style router on two interfaces of one namespace (`bench_fib`: the kernel's
/// FIB lookup, TTL, MACs, DEVMAP redirect); detached on drop. The kernel's forwarding must be
/// on in `ns` (the lookup refuses otherwise, and the frames go to the kernel).
pub struct FibForward {
    _ebpf: Ebpf,
}

impl FibForward {
    pub fn attach(ns: &str, (a, b): (&str, &str)) -> anyhow::Result<Self> {
        let obj = bench_obj();
        let ebpf = in_ns(ns, || {
            let mut ebpf = load(&obj, "bench_fib")?;
            {
                let mut ports: DevMap<_> =
                    DevMap::try_from(ebpf.map_mut("FIB_TX_PORTS").context("FIB_TX_PORTS")?)?;
                for dev in [a, b] {
                    let ifindex = nix::net::if_::if_nametoindex(dev)?;
                    ports.set(ifindex, ifindex, None, 0)?;
                }
            }
            attach(&mut ebpf, "bench_fib", a)?;
            attach(&mut ebpf, "bench_fib", b)?;
            Ok(ebpf)
        })?;
        Ok(Self { _ebpf: ebpf })
    }
}
