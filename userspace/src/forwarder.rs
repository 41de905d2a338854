//! `xdpfwd run`: validates the interfaces, loads and attaches the XDP program, opens the AF_XDP
//! sockets, starts the control plane and the workers, prints counters, and tears everything
//! down on SIGINT/SIGTERM (the XDP program first, so no frame is steered to a closing socket).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{Array, DevMap, HashMap as BpfHashMap, LpmTrie, PerCpuArray, XskMap};
use xdpfwd_common::{MAX_IFACES, MAX_QUEUES, map_names, xsk_key};

use crate::{
    capture::{self, tap::Drain},
    config::{self, Config},
    control::{Control, IfaceMaps, Inputs, Maps, Tuning, watch},
    egress_path::{DefaultPath, features},
    flow_cache, icmp,
    iface::{self, Iface},
    loader::{self, ModeArg},
    metrics,
    nexthop::{self, Nexthops},
    policy::{ControlPolicy, PolicyMaps},
    privileges,
    shared::{Resolve, Shared},
    snapshot::{PortView, StatsSource},
    stats::WorkerStats,
    stats_server,
    worker::{self, Links, Worker},
    xsk::{self, BindMode, FrameLimits, XskConfig},
};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Interfaces to forward between (at least two, or one to route back out of itself is
    /// left to the kernel).
    #[arg(required_unless_present = "config", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// TOML configuration: interfaces, rules, defaults (docs/configuration.md). SIGHUP or
    /// `xdpfwd reload` re-reads it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// XDP attach mode (default: auto, or each interface's `mode` in the config).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Force copy-mode AF_XDP sockets.
    #[arg(long, conflicts_with = "zero_copy")]
    pub copy: bool,
    /// Force zero-copy AF_XDP sockets (fails where the driver lacks support).
    #[arg(long)]
    pub zero_copy: bool,
    /// Worker threads (default: one per rx queue, at most one per CPU).
    #[arg(long)]
    pub workers: Option<usize>,
    /// UMEM frame size in bytes (2048 or 4096).
    #[arg(long, default_value_t = 4096)]
    pub frame_size: u32,
    /// Back the UMEM with huge pages (reserved beforehand: `sysctl vm.nr_hugepages=N`), which
    /// saves TLB misses where the kernel or the NIC touches frames; the UMEM must be whole
    /// huge pages (ring size × 2 frames per socket).
    #[arg(long)]
    pub hugepages: bool,
    /// Size of every RX, TX, fill and completion ring (a power of two).
    #[arg(long, default_value_t = 2048)]
    pub ring_size: u32,
    /// Frames received or completed per ring operation.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Path of plain L3 forwarding: through AF_XDP sockets and user space, or the in-kernel
    /// fast path (the same rewrite in the XDP program, then XDP_REDIRECT to the egress
    /// device; on veth the egress peer needs an XDP program or GRO). `auto` (the default,
    /// unless the config's `[defaults] path` says otherwise): per egress, the fast path where
    /// the sockets run in copy mode and the device takes redirected frames, else AF_XDP.
    #[arg(long, value_enum)]
    pub default_path: Option<DefaultPath>,
    /// CPUs to pin the workers to, in order (e.g. `--cpus 2,3`); default: not pinned.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Microseconds a worker keeps polling its rings after its last frame before it sleeps in
    /// `poll()`. Waking a sleeping worker adds tens of microseconds to the frame that wakes it;
    /// polling takes a core while traffic keeps coming sooner than this (e.g. 20000 keeps a
    /// 100-packets-per-second stream at the latency of a polling forwarder). 0: sleep at once.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 200)]
    pub idle_spin: u32,
    /// Busy polling on the sockets (`SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL` µs,
    /// `SO_BUSY_POLL_BUDGET` = batch), for NICs whose driver supports it; 0: off.
    #[arg(long, default_value_t = 0)]
    pub busy_poll: u32,
    /// Serve Prometheus metrics on `http://ADDR/metrics` (ADDR: `PORT` for 127.0.0.1, or
    /// `HOST:PORT`).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Seconds between one-line counter reports (0: none).
    #[arg(long, default_value_t = 10.0)]
    pub stats_interval: f64,
    /// Receive buffer of the control plane's netlink sockets, in bytes (granted beyond
    /// `net.core.rmem_max`). Events a burst loses make xdpfwd read everything again, leaving
    /// transit traffic to the kernel meanwhile.
    #[arg(long, value_name = "BYTES", default_value_t = 32 << 20)]
    pub netlink_buffer: u32,
    /// Most IPv4 routes mirrored (all tables, plus one per local address). Memory is taken per
    /// route; beyond it, IPv4 transit is left to the kernel.
    #[arg(long, value_name = "ROUTES", default_value_t = 2 << 20)]
    pub max_routes_v4: u32,
    /// Most IPv6 routes mirrored, as `--max-routes-v4`.
    #[arg(long, value_name = "ROUTES", default_value_t = 1 << 20)]
    pub max_routes_v6: u32,
    /// Slots per CPU of the XDP program's flow cache, which reuses a flow's routing decision
    /// until anything it was made from changes (a power of two up to 1048576; 0: off).
    #[arg(long, value_name = "SLOTS", default_value_t = xdpfwd_common::DEFAULT_CACHE_SLOTS)]
    pub flow_cache: u32,
}

/// `xdpfwd run`, step by step: plan, attach, take the maps, open the sockets, start the
/// control plane, the workers and the reporters, supervise until a signal or a failure, shut
/// down.
pub fn run(mut args: RunArgs) -> anyhow::Result<()> {
    check_flags(&args)?;
    let mut plan = plan(&mut args)?;
    validate(&plan.ifaces, &plan.xsk)?;
    loader::check_free(&plan.ifaces)?;
    raise_memlock();
    let capacity = loader::Capacity {
        routes_v4: args.max_routes_v4,
        routes_v6: args.max_routes_v6,
        flow_cache: args.flow_cache,
    };
    let mut ebpf = loader::load(capacity)?;
    let modes = attach(&mut ebpf, &plan)?;
    let mut maps = TakenMaps::take(&mut ebpf, &plan, args.flow_cache)?;
    let ifaces: Vec<Arc<Iface>> =
        std::mem::take(&mut plan.ifaces).into_iter().map(Arc::new).collect();
    let sockets = open_sockets(&ifaces, &plan.xsk, &args, &mut maps.xsks)?;
    let copy_mode = if sockets.zero_copy { "zero-copy" } else { "copy" };
    let limits = FrameLimits::new(&plan.xsk, sockets.multi_buffer);
    warn_long_mtus(&ifaces, &limits, &plan.xsk);
    let shared = Arc::new(Shared::default());
    let path = (args.default_path, sockets.zero_copy);
    let control =
        start_control(maps.control, &ifaces, limits, (path, args.netlink_buffer), &shared)?;
    let Workers { threads, views, accounts, icmp: icmp_thread, drains } =
        start_workers(sockets, &args, &plan.xsk, &shared, &control.resolve)?;

    // Signals, stats and metrics before "ready": whoever reads it may use them at once.
    let signals = Signals::register()?;
    let attach = modes.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let source = Arc::new(StatsSource {
        ports: views,
        workers: accounts,
        counters: maps.counters,
        attach: ifaces.iter().zip(&modes).map(|(i, m)| (i.name.clone(), m.to_string())).collect(),
        xsk_mode: copy_mode.to_owned(),
        xsk_max_frame: limits.longest(),
        start: Instant::now(),
        shared: shared.clone(),
        hits: maps.policy.hits.clone(),
        cache: maps.cache_stats,
    });
    let capture = capture::server::Parts {
        interfaces: ifaces.iter().map(|i| (i.ifindex, i.name.clone())).collect(),
        maps: maps.capture,
        drains,
        switch: shared.capture.clone(),
    };
    let reporters = Reporters::start(&args, &source, capture)?;
    announce(&ifaces, &modes, &attach, (copy_mode, limits), threads.len(), &shared);
    let mut reload = Reloader {
        path: args.config.clone(),
        settings: plan.settings,
        maps: maps.policy,
        generations: maps.generations,
    };
    let failed =
        supervise(&args, &signals, &source, &shared, &mut reload, &ifaces, &control.policy);

    // Shutdown: detach first, let the workers flush what they hold, then stop them. The
    // sockets stay open until the final report has read their kernel statistics.
    drop(ebpf);
    thread::sleep(Duration::from_millis(100));
    shared.stop.store(true, Relaxed);
    let (ports, mut panicked) = join_all("worker", threads);
    if icmp_thread.is_some_and(|t| t.join().is_err()) {
        panicked.push("icmp".into());
    }
    let control_result = control.join(&mut panicked);
    reporters.stop(&mut panicked);
    let fin = source.snapshot();
    drop(ports);
    let (pkts, bytes) = fin.forwarded();
    let secs = source.start.elapsed().as_secs_f64();
    println!(
        "xdpfwd: final: forwarded {pkts} packets {bytes} bytes in {secs:.1} s ({:.0} pps avg) | attach {attach} | {copy_mode} mode",
        pkts as f64 / secs.max(1e-9)
    );
    println!("{}", fin.report());
    if !panicked.is_empty() {
        bail!("a thread panicked: {}", panicked.join(", "));
    }
    if failed {
        control_result?;
        bail!("stopped after a control plane failure");
    }
    Ok(())
}

/// Flags the data path cannot take, refused before anything is touched.
/// How long the control plane may take to mirror the kernel's tables at start (a full
/// Internet table takes seconds; a hung netlink socket must not stall the start for ever).
const CONTROL_READY: Duration = Duration::from_secs(300);

/// Bounds of `--max-routes-v4` and `--max-routes-v6`: a small router's, and 64 million
/// (beyond any table of today, and of this machine's memory at ~100 bytes a route).
const MIN_ROUTES: u32 = 1024;
const MAX_ROUTES: u32 = 1 << 26;
/// Bounds of `--netlink-buffer`: a page, and a gigabyte (the kernel's own limit is 1 GiB).
const MIN_NETLINK_BUFFER: u32 = 4096;
const MAX_NETLINK_BUFFER: u32 = 1 << 30;

fn check_flags(args: &RunArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.batch > args.ring_size as usize {
        bail!("--batch must be between 1 and --ring-size ({}), not {}", args.ring_size, args.batch);
    }
    let interval = args.stats_interval;
    if !(interval.is_finite() && (0.0..=86_400.0).contains(&interval)) {
        bail!("--stats-interval must be 0 (off) or seconds up to 86400, not {interval}");
    }
    if args.workers == Some(0) {
        bail!("--workers must be at least 1");
    }
    for (flag, n) in
        [("--max-routes-v4", args.max_routes_v4), ("--max-routes-v6", args.max_routes_v6)]
    {
        if !(MIN_ROUTES..=MAX_ROUTES).contains(&n) {
            bail!("{flag} must be {MIN_ROUTES} to {MAX_ROUTES} routes, not {n}");
        }
    }
    if args.flow_cache != 0 && xdpfwd_common::cache_mask(args.flow_cache).is_none() {
        bail!(
            "--flow-cache must be 0 (off) or a power of two up to {} slots, not {}",
            xdpfwd_common::MAX_CACHE_SLOTS,
            args.flow_cache
        );
    }
    if !(MIN_NETLINK_BUFFER..=MAX_NETLINK_BUFFER).contains(&args.netlink_buffer) {
        bail!(
            "--netlink-buffer must be {MIN_NETLINK_BUFFER} to {MAX_NETLINK_BUFFER} bytes, not {}",
            args.netlink_buffer
        );
    }
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(cpu) = args.cpus.iter().find(|c| **c >= cpus.max(nix::sched::CpuSet::count())) {
        bail!("--cpus: CPU {cpu} does not exist");
    }
    Ok(())
}

/// What the configuration and the interfaces say, before anything is touched.
struct Plan {
    settings: Config,
    ifaces: Vec<Iface>,
    attach_modes: Vec<ModeArg>,
    xsk: XskConfig,
}

/// Reads the configuration, finds the interfaces and applies their per-interface settings.
fn plan(args: &mut RunArgs) -> anyhow::Result<Plan> {
    let settings = match &args.config {
        Some(path) => config::load(path)?,
        None => Config::default(),
    };
    if args.interfaces.is_empty() {
        args.interfaces = settings.names();
    }
    if args.interfaces.is_empty() {
        bail!("no interfaces: give them on the command line or as [[interface]] in the config");
    }
    privileges::check()?;
    if args.interfaces.len() > MAX_IFACES as usize {
        bail!("at most {MAX_IFACES} interfaces");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut ifaces = runtime.block_on(iface::discover(&args.interfaces))?;
    let mut attach_modes = Vec::new();
    for iface in &mut ifaces {
        let spec = settings.interfaces.iter().find(|s| s.name == iface.name);
        if let Some(queues) = spec.and_then(|s| s.queues) {
            if queues > iface.rx_queues {
                bail!(
                    "interface '{}': the config asks for {queues} queues, but it has {}",
                    iface.name,
                    iface.rx_queues
                );
            }
            iface.rx_queues = queues;
        }
        attach_modes.push(args.mode.or(spec.and_then(|s| s.mode)).unwrap_or(ModeArg::Auto));
    }
    let bind = match (args.copy, args.zero_copy) {
        (true, _) => BindMode::Copy,
        (_, true) => BindMode::ZeroCopy,
        _ => BindMode::Auto,
    };
    let xsk = XskConfig {
        frame_size: args.frame_size,
        ring_size: args.ring_size,
        frames_per_socket: args.ring_size * 2,
        bind,
        huge_pages: args.hugepages,
    };
    Ok(Plan { settings, ifaces, attach_modes, xsk })
}

/// Attaches the loaded program to every interface; returns the modes it got.
fn attach(ebpf: &mut aya::Ebpf, plan: &Plan) -> anyhow::Result<Vec<loader::Attached>> {
    let mut modes = Vec::new();
    for (iface, mode) in plan.ifaces.iter().zip(&plan.attach_modes) {
        let (_link, mode) = loader::attach(ebpf, iface, *mode)?;
        modes.push(mode);
    }
    Ok(modes)
}

/// The program's maps, taken out of it: the policy (with the configuration applied), the
/// sockets' XSKMAP, the counters, and what the control plane writes.
struct TakenMaps {
    policy: PolicyMaps,
    /// For the capture server.
    capture: capture::server::Maps,
    xsks: XskMap<aya::maps::MapData>,
    counters: PerCpuArray<aya::maps::MapData, u64>,
    control: (Maps, Nexthops, ControlPolicy),
    generations: flow_cache::SharedGenerations,
    cache_stats: flow_cache::CacheStats,
}

impl TakenMaps {
    fn take(ebpf: &mut aya::Ebpf, plan: &Plan, cache_slots: u32) -> anyhow::Result<Self> {
        let mut policy = PolicyMaps::take(ebpf)?;
        let generations = flow_cache::Generations::take(ebpf, cache_slots)?;
        let cache_stats = flow_cache::CacheStats::take(ebpf, cache_slots, generations.clone())?;
        policy.apply(&plan.settings, &plan.ifaces)?;
        let control_policy = ControlPolicy::new(&plan.settings, &plan.ifaces)?;
        let capture = capture::server::Maps::take(ebpf)?;
        let mut take =
            |name: &str| ebpf.take_map(name).with_context(|| format!("map {name} missing"));
        let mut devmap = DevMap::try_from(take(map_names::DEVMAP)?)?;
        for iface in &plan.ifaces {
            devmap
                .set(iface.slot, iface.ifindex, None, 0)
                .with_context(|| format!("inserting {} into DEVMAP", iface.name))?;
        }
        let maps = Maps {
            ifaces: IfaceMaps {
                direct: Array::try_from(take(map_names::IFACES_DIRECT)?)?,
                hashed: BpfHashMap::try_from(take(map_names::IFACES)?)?,
            },
            routes_v4: LpmTrie::try_from(take(map_names::ROUTES_V4)?)?,
            routes_v6: LpmTrie::try_from(take(map_names::ROUTES_V6)?)?,
            neigh_v4: BpfHashMap::try_from(take(map_names::NEIGH_V4)?)?,
            neigh_v6: BpfHashMap::try_from(take(map_names::NEIGH_V6)?)?,
            fib_rules: Array::try_from(take(map_names::FIB_RULES)?)?,
            fib_ctl: Array::try_from(take(map_names::FIB_CTL)?)?,
            generations: generations.clone(),
        };
        let nexthops = Nexthops::new(
            Array::try_from(take(map_names::NH_SLOTS)?)?,
            Array::try_from(take(map_names::NH_GROUPS)?)?,
            Array::try_from(take(map_names::NH_BUCKETS)?)?,
        );
        Ok(TakenMaps {
            capture,
            xsks: XskMap::try_from(take(map_names::XSKS)?)?,
            counters: PerCpuArray::try_from(take(map_names::COUNTERS)?)?,
            policy,
            control: (maps, nexthops, control_policy),
            generations,
            cache_stats,
        })
    }
}

/// Opens a socket on every rx queue of every interface and puts them into the XSKMAP.
fn open_sockets(
    ifaces: &[Arc<Iface>],
    config: &XskConfig,
    args: &RunArgs,
    xsks: &mut XskMap<aya::maps::MapData>,
) -> anyhow::Result<xsk::Sockets> {
    let queues: Vec<(Arc<Iface>, u32)> =
        ifaces.iter().flat_map(|i| (0..i.rx_queues).map(move |q| (i.clone(), q))).collect();
    let sockets = xsk::open(&queues, config)?;
    for port in &sockets.ports {
        if args.busy_poll > 0 {
            xsk::busy_poll(port.raw_fd(), args.busy_poll, args.batch as u32)
                .with_context(|| format!("enabling busy polling on {}", port.iface.name))?;
        }
        let key = xsk_key(port.iface.slot, port.queue).context("queue beyond the XSKMAP")?;
        xsks.set(key, port.raw_fd(), 0).with_context(|| {
            format!("inserting the socket of {} queue {} into XSKS", port.iface.name, port.queue)
        })?;
    }
    Ok(sockets)
}

/// The control plane's threads and the channels into it.
struct ControlPlane {
    thread: thread::JoinHandle<anyhow::Result<()>>,
    nexthop_thread: thread::JoinHandle<()>,
    /// None where the kernel does not report XDP features.
    features_thread: Option<thread::JoinHandle<()>>,
    /// Sysctl and nftables notifications (None where no socket could be opened).
    watch_thread: Option<thread::JoinHandle<()>>,
    resolve: tokio::sync::mpsc::UnboundedSender<Resolve>,
    policy: tokio::sync::mpsc::UnboundedSender<ControlPolicy>,
}

impl ControlPlane {
    /// Waits for both threads; a panic is added to `panicked`.
    fn join(self, panicked: &mut Vec<String>) -> anyhow::Result<()> {
        let result = self.thread.join().unwrap_or_else(|_| {
            panicked.push("xdpfwd-control".into());
            Ok(())
        });
        if self.nexthop_thread.join().is_err() {
            panicked.push("xdpfwd-nexthops".into());
        }
        if self.features_thread.is_some_and(|t| t.join().is_err()) {
            panicked.push("xdpfwd-features".into());
        }
        if self.watch_thread.is_some_and(|t| t.join().is_err()) {
            panicked.push("xdpfwd-watch".into());
        }
        result
    }
}

/// Starts the control plane and waits until it mirrors the kernel (30 s at most).
fn start_control(
    (maps, nexthops, policy): (Maps, Nexthops, ControlPolicy),
    ifaces: &[Arc<Iface>],
    frames: FrameLimits,
    ((path_flag, zero_copy), netlink_buffer): ((Option<DefaultPath>, bool), u32),
    shared: &Arc<Shared>,
) -> anyhow::Result<ControlPlane> {
    let (resolve_tx, resolve_rx) = tokio::sync::mpsc::unbounded_channel();
    let (policy_tx, policy_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let redump = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = {
        let shared = shared.clone();
        move || shared.stop.load(Relaxed)
    };
    let (features_tx, features_rx) = tokio::sync::mpsc::unbounded_channel();
    // Without the watcher, `auto` takes the AF_XDP path (which works on every device).
    let features_thread =
        features::spawn_watcher(stopping.clone(), features_tx).unwrap_or_else(|err| {
            tracing::warn!("not following the devices' XDP features: {err:#}");
            None
        });
    let control = Control::new(
        maps,
        ifaces.iter().map(|i| (**i).clone()).collect(),
        Tuning {
            path_flag,
            zero_copy,
            reports_features: features_thread.is_some(),
            frames,
            netlink_buffer,
        },
        shared.clone(),
        policy,
        nexthops,
        redump.clone(),
    );
    let (changes_tx, changes_rx) = tokio::sync::mpsc::unbounded_channel();
    let watch_thread = watch::spawn(stopping.clone(), changes_tx)?;
    let (nh_tx, nh_rx) = tokio::sync::mpsc::unbounded_channel();
    let nexthop_thread = nexthop::spawn_reader(stopping, nh_tx, netlink_buffer, redump)?;
    let inputs = Inputs {
        resolve: resolve_rx,
        policies: policy_rx,
        nh_events: nh_rx,
        features: features_rx,
        changes: changes_rx,
    };
    let thread = thread::Builder::new().name("xdpfwd-control".into()).spawn({
        let shared = shared.clone();
        move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let result = runtime.block_on(control.run(inputs, ready_tx));
            if result.is_err() {
                shared.stop.store(true, Relaxed);
            }
            result
        }
    })?;
    match ready_rx.recv_timeout(CONTROL_READY) {
        Ok(Ok(())) => {}
        Ok(Err(err)) => bail!("control plane failed to start: {err}"),
        Err(_) => {
            bail!("control plane did not sync with the kernel within {} s", CONTROL_READY.as_secs())
        }
    }
    Ok(ControlPlane {
        thread,
        nexthop_thread,
        features_thread,
        watch_thread,
        resolve: resolve_tx,
        policy: policy_tx,
    })
}

/// The worker threads (each returns its sockets when it stops) and what the reports read.
struct Workers {
    threads: Vec<thread::JoinHandle<Vec<xsk::Port>>>,
    views: Vec<PortView>,
    accounts: Vec<Arc<WorkerStats>>,
    /// The thread that sends the router's ICMP errors (none without raw sockets).
    icmp: Option<thread::JoinHandle<()>>,
    /// The capture server's ends of the workers' capture rings.
    drains: Vec<Drain>,
}

/// Starts the workers: worker w owns queue q of every interface where q % workers == w, so
/// each worker has a socket on every interface to transmit on, and an equal share of frames.
fn start_workers(
    sockets: xsk::Sockets,
    args: &RunArgs,
    config: &XskConfig,
    shared: &Arc<Shared>,
    resolve: &tokio::sync::mpsc::UnboundedSender<Resolve>,
) -> anyhow::Result<Workers> {
    let min_queues = sockets.ports.iter().map(|p| p.iface.rx_queues).min().unwrap_or(1) as usize;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let count = args.workers.unwrap_or(min_queues.min(cpus)).clamp(1, min_queues);
    let views = sockets.ports.iter().map(PortView::of).collect();
    let mut per_worker: Vec<Vec<xsk::Port>> = (0..count).map(|_| Vec::new()).collect();
    for port in sockets.ports {
        per_worker[port.queue as usize % count].push(port);
    }
    let mut frames = sockets.frames;
    let stop = shared.clone();
    let (icmp, icmp_thread) = icmp::start(shared.icmp.clone(), move || stop.stop.load(Relaxed));
    let (mut threads, mut accounts, mut drains) = (Vec::new(), Vec::new(), Vec::new());
    for (w, ports) in per_worker.into_iter().enumerate() {
        let (tap, drain) = capture::tap::pair(shared.capture.clone());
        drains.push(drain);
        let share = ports.len() * config.frames_per_socket as usize;
        let mine: Vec<_> = frames.drain(..share.min(frames.len())).collect();
        let account = Arc::new(WorkerStats::default());
        accounts.push(account.clone());
        let worker = Worker::new(
            sockets.umem.clone(),
            ports,
            mine,
            worker::Tuning {
                batch: args.batch,
                ring_size: config.ring_size,
                frame_size: config.frame_size,
                idle_spin: Duration::from_micros(args.idle_spin.into()),
            },
            Links {
                shared: shared.clone(),
                resolve: resolve.clone(),
                account,
                icmp: icmp.clone(),
                tap,
            },
        );
        let cpu = (!args.cpus.is_empty()).then(|| args.cpus[w % args.cpus.len()]);
        threads.push(thread::Builder::new().name(format!("xdpfwd-w{w}")).spawn(move || {
            if let Some(cpu) = cpu {
                pin_to(cpu);
            }
            worker.run()
        })?);
    }
    Ok(Workers { threads, views, accounts, icmp: icmp_thread, drains })
}

/// Waits for `threads`; returns what they returned and the names of those that panicked.
fn join_all<T>(what: &str, threads: Vec<thread::JoinHandle<Vec<T>>>) -> (Vec<T>, Vec<String>) {
    let (mut out, mut panicked) = (Vec::new(), Vec::new());
    for (i, t) in threads.into_iter().enumerate() {
        match t.join() {
            Ok(v) => out.extend(v),
            Err(_) => panicked.push(format!("{what} {i}")),
        }
    }
    (out, panicked)
}

/// Logs and prints (for scripts and tests) that forwarding has begun.
fn announce(
    ifaces: &[Arc<Iface>],
    modes: &[loader::Attached],
    attach: &str,
    (copy_mode, limits): (&str, FrameLimits),
    workers: usize,
    shared: &Shared,
) {
    let buffers = match limits.multi {
        0 => String::new(),
        _ => format!(", multi-buffer (frames up to {} bytes)", limits.longest()),
    };
    let paths = shared.egress_paths.read().map(|p| p.clone()).unwrap_or_default();
    for (name, path) in &paths {
        println!("xdpfwd: out of {name}: {} path ({})", path.path.name(), path.reason);
    }
    let paths: Vec<String> =
        paths.iter().map(|(name, path)| format!("{name} {}", path.path.name())).collect();
    let names: Vec<_> = ifaces
        .iter()
        .zip(modes)
        .map(|(i, m)| format!("{} ({m} XDP, {} queues)", i.name, i.rx_queues))
        .collect();
    tracing::info!(
        "forwarding between {} with {workers} worker(s), AF_XDP {copy_mode} mode{buffers}",
        names.join(", ")
    );
    println!(
        "xdpfwd: ready: {} | attach {attach} | {copy_mode} mode | {workers} worker(s) | paths {}",
        ifaces.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(" "),
        paths.join(", "),
    );
}

/// The threads that show the counters: the stats socket and the metrics endpoint.
struct Reporters {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Reporters {
    fn start(
        args: &RunArgs,
        source: &Arc<StatsSource>,
        capture: capture::server::Parts,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        match stats_server::serve(source.clone(), stop.clone()) {
            Ok(handle) => {
                threads.push(handle);
                // In the directory the stats server checked.
                match capture::server::serve(capture, stop.clone()) {
                    Ok(handle) => threads.push(handle),
                    Err(err) => tracing::warn!("`xdpfwd capture` cannot run: {err:#}"),
                }
            }
            Err(err) => tracing::warn!("`xdpfwd stats` will not see this instance: {err:#}"),
        }
        if let Some(addr) = &args.metrics {
            threads.push(metrics::serve(parse_metrics_addr(addr)?, source.clone(), stop.clone())?);
        }
        Ok(Reporters { stop, threads })
    }

    fn stop(self, panicked: &mut Vec<String>) {
        self.stop.store(true, Relaxed);
        for t in self.threads {
            if t.join().is_err() {
                panicked.push("a reporter".into());
            }
        }
    }
}

/// SIGINT / SIGTERM (stop) and SIGHUP (reload), as flags.
struct Signals {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl Signals {
    fn register() -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, stop.clone())?;
        }
        let reload = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())?;
        Ok(Signals { stop, reload })
    }
}

/// Runs until SIGINT/SIGTERM or a control plane failure (then returns `true`): reloads on
/// SIGHUP and logs a counter line every `--stats-interval`.
fn supervise(
    args: &RunArgs,
    signals: &Signals,
    source: &StatsSource,
    shared: &Shared,
    reload: &mut Reloader,
    ifaces: &[Arc<Iface>],
    control: &tokio::sync::mpsc::UnboundedSender<ControlPolicy>,
) -> bool {
    let (stop_signal, reload_signal) = (&signals.stop, &signals.reload);
    let mut last = (Instant::now(), source.snapshot());
    let mut governor = (Instant::now(), flow_cache::Governor::new(Instant::now()));
    while !stop_signal.load(Relaxed) && !shared.stop.load(Relaxed) {
        thread::sleep(Duration::from_millis(50));
        if reload_signal.swap(false, Relaxed) {
            reload.reload(ifaces, control);
        }
        if governor.0.elapsed() >= flow_cache::GOVERNOR_TICK {
            governor.0 = Instant::now();
            flow_cache::govern(&mut governor.1, &source.cache, &reload.generations);
        }
        if args.stats_interval > 0.0 && last.0.elapsed().as_secs_f64() >= args.stats_interval {
            let now = source.snapshot();
            tracing::info!("{}", now.line(&last.1, last.0.elapsed().as_secs_f64()));
            last = (Instant::now(), now);
        }
    }
    shared.stop.load(Relaxed) && !stop_signal.load(Relaxed)
}

/// What a reload needs: the file, the running configuration, the policy maps.
struct Reloader {
    path: Option<std::path::PathBuf>,
    settings: Config,
    maps: PolicyMaps,
    /// The flow cache's: decisions made under the old rules are not reused.
    generations: flow_cache::SharedGenerations,
}

/// SIGHUP: re-reads the configuration. A valid one replaces the rules and rewrites atomically
/// and hands the interface settings and static routes to the control plane; an invalid one
/// is refused and the running configuration stays.
impl Reloader {
    fn reload(
        &mut self,
        ifaces: &[Arc<Iface>],
        control: &tokio::sync::mpsc::UnboundedSender<ControlPolicy>,
    ) {
        let (current, rules) = (&mut self.settings, &mut self.maps);
        let Some(path) = self.path.as_deref() else {
            tracing::warn!("SIGHUP: no --config to reload");
            return;
        };
        let fresh = match config::load(path) {
            Ok(c) => c,
            Err(err) => {
                tracing::error!("reload refused, the running configuration stays: {err}");
                return;
            }
        };
        let restart = |c: &Config| -> Vec<_> {
            c.interfaces.iter().map(|i| (i.name.clone(), i.mode, i.queues)).collect()
        };
        if restart(&fresh) != restart(current) {
            tracing::warn!(
                "reload: adding or removing an [[interface]], or changing its mode or queues, needs a restart; applying the rest"
            );
        }
        let ifaces: Vec<Iface> = ifaces.iter().map(|i| (**i).clone()).collect();
        let result = ControlPolicy::new(&fresh, &ifaces)
            .and_then(|policy| rules.apply(&fresh, &ifaces).map(|()| policy));
        match result {
            Ok(policy) => {
                flow_cache::next(&self.generations);
                let _ = control.send(policy);
                tracing::info!(
                    rules = fresh.rules.len(),
                    rewrites = fresh.rewrites.len(),
                    routes = fresh.routes.len(),
                    "reloaded {}",
                    path.display()
                );
                *current = fresh;
            }
            Err(err) => tracing::error!("reload refused, the running configuration stays: {err:#}"),
        }
    }
}

/// `PORT` → 127.0.0.1:PORT; `HOST:PORT` as given.
fn parse_metrics_addr(addr: &str) -> anyhow::Result<std::net::SocketAddr> {
    if let Ok(port) = addr.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    addr.parse().with_context(|| format!("--metrics {addr:?}: expected PORT or HOST:PORT"))
}

/// Refuses configurations the data path cannot carry.
fn validate(ifaces: &[Iface], config: &XskConfig) -> anyhow::Result<()> {
    if !matches!(config.frame_size, 2048 | 4096) {
        bail!("--frame-size must be 2048 or 4096, not {}", config.frame_size);
    }
    if !config.ring_size.is_power_of_two() || !(64..=16384).contains(&config.ring_size) {
        bail!("--ring-size must be a power of two between 64 and 16384, not {}", config.ring_size);
    }
    for iface in ifaces {
        if iface.rx_queues > MAX_QUEUES {
            bail!(
                "interface '{}' has {} rx queues; xdpfwd handles at most {MAX_QUEUES}",
                iface.name,
                iface.rx_queues
            );
        }
    }
    Ok(())
}

/// Warns of every interface whose MTU exceeds what the AF_XDP path carries.
fn warn_long_mtus(ifaces: &[Arc<Iface>], limits: &FrameLimits, config: &XskConfig) {
    let max_mtu = limits.max_mtu();
    let room = if limits.multi == 0 {
        format!("one {}-byte AF_XDP buffer", config.frame_size)
    } else {
        format!("{} {}-byte AF_XDP buffers", xsk::MAX_SEGMENTS, config.frame_size)
    };
    for iface in ifaces.iter().filter(|i| i.mtu > max_mtu) {
        tracing::warn!(
            "interface '{}' has MTU {}: packets longer than {max_mtu} bytes do not fit {room}; \
             they take the fast path out of devices that take frames in more than one buffer, \
             else go to the kernel (counted as pass_too_long), which forwards them only where \
             its own forwarding is on",
            iface.name,
            iface.mtu,
        );
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    let result = set
        .set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    match result {
        Ok(()) => tracing::info!(cpu, "worker pinned"),
        Err(err) => tracing::warn!(cpu, %err, "could not pin the worker"),
    }
}

/// Older kernels charge BPF maps and the UMEM to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK: {}", std::io::Error::last_os_error());
    }
}
