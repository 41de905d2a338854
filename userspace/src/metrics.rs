//! `--metrics ADDR`: the counters in Prometheus (OpenMetrics) text on `GET /metrics`, built
//! with prometheus-client from a fresh [`Snapshot`] at every scrape. Names follow Prometheus
//! conventions: `xdpfwd_` prefix, base units, `_total` counters, `iface` / `queue` /
//! `reason` labels, and `xdpfwd_build_info`. Served by hyper with bounded connections,
//! request heads and times.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread,
    time::Duration,
};

use anyhow::Context as _;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::snapshot::{Snapshot, StatsSource};

type Labels = Vec<(String, String)>;

fn counter_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family.clone()),
        None => registry.register(name, help, family.clone()),
    }
    family
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The OpenMetrics text for `snap`.
pub fn encode_snapshot(snap: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("xdpfwd");
    let info = Family::<Labels, Gauge>::default();
    registry.register("build_info", "Build and mode information (value 1)", info.clone());
    info.get_or_create(&labels(&[
        ("version", env!("CARGO_PKG_VERSION")),
        ("xsk_mode", &snap.xsk_mode),
    ]))
    .set(1);
    let attach = Family::<Labels, Gauge>::default();
    registry.register(
        "xdp_attached",
        "XDP program attached to a managed interface (value 1)",
        attach.clone(),
    );
    for (iface, mode) in &snap.attach {
        attach.get_or_create(&labels(&[("iface", iface), ("mode", mode)])).set(1);
    }
    let egress = Family::<Labels, Gauge>::default();
    registry.register(
        "egress_path",
        "The path plain forwarding takes out of a managed interface now, and why (value 1)",
        egress.clone(),
    );
    for e in &snap.egress_paths {
        egress
            .get_or_create(&labels(&[("iface", &e.iface), ("path", &e.path), ("reason", &e.cause)]))
            .set(1);
    }

    let rx_p =
        counter_family(&mut registry, "rx_packets", "Frames received on an AF_XDP socket", None);
    let rx_b = counter_family(
        &mut registry,
        "rx",
        "Bytes received on an AF_XDP socket",
        Some(Unit::Bytes),
    );
    let tx_p =
        counter_family(&mut registry, "tx_packets", "Frames transmitted on an AF_XDP socket", None);
    let tx_b = counter_family(
        &mut registry,
        "tx",
        "Bytes transmitted on an AF_XDP socket",
        Some(Unit::Bytes),
    );
    let drops = counter_family(&mut registry, "drops", "Frames dropped by xdpfwd, by reason", None);
    let held = counter_family(&mut registry, "held", "Frames held waiting for a neighbour", None);
    let resolved = counter_family(
        &mut registry,
        "held_resolved",
        "Held frames sent once their neighbour was resolved",
        None,
    );
    let kernel = counter_family(
        &mut registry,
        "xsk_kernel_events",
        "AF_XDP socket statistics from the kernel (XDP_STATISTICS), by event",
        None,
    );
    for p in &snap.ports {
        let q = p.queue.to_string();
        let l = labels(&[("iface", &p.iface), ("queue", &q)]);
        rx_p.get_or_create(&l).inc_by(p.rx_packets);
        rx_b.get_or_create(&l).inc_by(p.rx_bytes);
        tx_p.get_or_create(&l).inc_by(p.tx_packets);
        tx_b.get_or_create(&l).inc_by(p.tx_bytes);
        held.get_or_create(&l).inc_by(p.held);
        resolved.get_or_create(&l).inc_by(p.held_sent);
        for (reason, v) in [
            ("invalid_meta", p.drop_invalid),
            ("rewrite", p.drop_rewrite),
            ("tx_full", p.drop_tx_full),
            ("neighbour_timeout", p.held_dropped),
        ] {
            drops
                .get_or_create(&labels(&[("iface", &p.iface), ("queue", &q), ("reason", reason)]))
                .inc_by(v);
        }
        let k = p.kernel;
        for (event, v) in [
            ("rx_dropped", k.rx_dropped),
            ("rx_invalid_descs", k.rx_invalid_descs),
            ("tx_invalid_descs", k.tx_invalid_descs),
            ("rx_ring_full", k.rx_ring_full),
            ("rx_fill_ring_empty_descs", k.rx_fill_ring_empty_descs),
            ("tx_ring_empty_descs", k.tx_ring_empty_descs),
        ] {
            kernel
                .get_or_create(&labels(&[("iface", &p.iface), ("queue", &q), ("event", event)]))
                .inc_by(v);
        }
    }
    let xdp = counter_family(
        &mut registry,
        "xdp_verdicts",
        "Frames seen by the XDP program, by verdict and reason (rx is their sum)",
        None,
    );
    for (reason, v) in &snap.xdp {
        xdp.get_or_create(&labels(&[("reason", reason)])).inc_by(*v);
    }
    let paths = counter_family(
        &mut registry,
        "path_frames",
        "Frames seen by the XDP program, by the path they took (fast, af_xdp, kernel, icmp, \
         dropped)",
        None,
    );
    let p = snap.paths();
    for (path, v) in [
        ("fast", p.fast),
        ("af_xdp", p.af_xdp),
        ("kernel", p.kernel),
        ("icmp", p.icmp),
        ("dropped", p.dropped),
    ] {
        paths.get_or_create(&labels(&[("path", path)])).inc_by(v);
    }
    let frames = Family::<Labels, Gauge>::default();
    registry.register("umem_frames", "UMEM frames by owner", frames.clone());
    let f = snap.frames;
    for (state, v) in [
        ("total", f.total),
        ("free", f.free),
        ("fill", f.fill),
        ("tx", f.kernel_tx),
        ("held", f.held),
    ] {
        frames.get_or_create(&labels(&[("state", state)])).set(v as i64);
    }
    let syscalls = counter_family(
        &mut registry,
        "syscalls",
        "System calls made by the workers, by kind",
        None,
    );
    for (kind, v) in
        [("tx_kick", f.tx_kicks), ("fill_wakeup", f.fill_wakeups), ("idle_poll", f.idle_polls)]
    {
        syscalls.get_or_create(&labels(&[("kind", kind)])).inc_by(v);
    }
    let single = |registry: &mut Registry, name: &str, help: &str, v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        registry.register(name, help, c);
    };
    single(
        &mut registry,
        "frame_ownership_violations",
        "Ring operations on a frame in the wrong state (must stay 0)",
        f.violations,
    );
    single(
        &mut registry,
        "worker_heap_allocations",
        "Heap allocations by worker threads (0 in steady state)",
        snap.worker_allocs,
    );
    let c = snap.flow_cache;
    single(
        &mut registry,
        "flow_cache_hits",
        "Frames whose routing decision came from the XDP program's flow cache",
        c.hits,
    );
    single(
        &mut registry,
        "flow_cache_fills",
        "Routing decisions written into the XDP program's flow cache",
        c.fills,
    );
    let longest = Gauge::<i64>::default();
    longest.set(i64::from(snap.xsk_max_frame));
    registry.register(
        "af_xdp_max_frame_bytes",
        "Longest frame the AF_XDP path carries: one UMEM frame, or several with multi-buffer \
         sockets",
        longest,
    );
    let slots = Gauge::<i64>::default();
    slots.set(i64::from(c.slots));
    registry.register("flow_cache_slots", "Flow cache slots per CPU (0: off)", slots);
    let suspended = Gauge::<i64>::default();
    suspended.set(i64::from(c.suspended));
    registry.register(
        "flow_cache_suspended",
        "1 while the flow cache is suspended because nearly every frame is a new flow",
        suspended,
    );
    single(
        &mut registry,
        "flow_cache_suspensions",
        "Times the flow cache was suspended because nearly every frame was a new flow",
        c.suspensions,
    );
    let icmp = counter_family(
        &mut registry,
        "icmp_errors",
        "Packets the router answers with an ICMP error while the kernel's forwarding is off, \
         by outcome",
        None,
    );
    let i = snap.icmp;
    for (outcome, v) in [
        ("sent", i.sent),
        ("rate_limited", i.rate_limited),
        ("not_answered", i.not_answered),
        ("queue_full", i.queue_full),
        ("failed", i.failed),
    ] {
        icmp.get_or_create(&labels(&[("outcome", outcome)])).inc_by(v);
    }
    tables(&mut registry, &snap.tables);
    for (name, help, figures) in [
        (
            "rule_hits",
            "Frames each steering rule matched since its configuration was loaded",
            &snap.rules,
        ),
        (
            "rewrite_hits",
            "Frames each NAT rewrite matched since its configuration was loaded",
            &snap.rewrites,
        ),
    ] {
        let family = counter_family(&mut registry, name, help, None);
        for f in figures {
            let index = f.index.to_string();
            let label = f.name.as_deref().unwrap_or("");
            family.get_or_create(&labels(&[("index", &index), ("name", label)])).inc_by(f.hits);
        }
    }
    let up = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    up.set(snap.uptime);
    registry.register_with_unit("uptime", "Time since the forwarder started", Unit::Seconds, up);
    let notices = Family::<Labels, Gauge>::default();
    registry.register(
        "notice",
        "A condition the operator must know, by cause (value 1 while it holds): a fallback to \
         the kernel, netfilter hooks bypassed",
        notices.clone(),
    );
    for cause in snap.notices.keys() {
        notices.get_or_create(&labels(&[("cause", cause)])).set(1);
    }
    let fallbacks = counter_family(
        &mut registry,
        "fallbacks",
        "Times a fallback to the kernel began, by cause (see xdpfwd_notice)",
        None,
    );
    for (cause, n) in &snap.fallbacks {
        fallbacks.get_or_create(&labels(&[("cause", cause)])).inc_by(*n);
    }

    let mut out = String::new();
    let _ = encode(&mut out, &registry);
    out
}

/// Most scrapes served at once; a connection beyond them is closed at once.
const MAX_CONNECTIONS: usize = 8;
/// Time a client has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a connection may take in all, reading and writing included.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a request head buffered (hyper's minimum).
const MAX_HEAD: usize = 8192;

/// Serves `/metrics` on `addr` until `stop`, with hyper on a runtime of its own thread: at
/// most [`MAX_CONNECTIONS`] at once, each with a bounded request head and time, so no client
/// can hold the endpoint or the shutdown.
pub fn serve(
    addr: SocketAddr,
    source: Arc<StatsSource>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<thread::JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the metrics endpoint {addr}"))?;
    listener.set_nonblocking(true)?;
    tracing::info!("serving Prometheus metrics on http://{}/metrics", listener.local_addr()?);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(thread::Builder::new().name("xdpfwd-metrics".into()).spawn(move || {
        runtime.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => accept_loop(listener, source, &stop).await,
                Err(err) => tracing::error!(%err, "the metrics endpoint stopped"),
            }
        });
        // Dropping the runtime cancels the connections still open.
    })?)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    source: Arc<StatsSource>,
    stop: &AtomicBool,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Relaxed) {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = tick.tick() => continue,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // Busy: the connection is dropped, i.e. closed.
        };
        let source = source.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let source = source.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &source)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(permit);
        });
    }
}

type Body = http_body_util::Full<bytes::Bytes>;

/// `GET /metrics` (any query): the OpenMetrics text; anything else: 404 or 405.
fn respond<B>(req: &hyper::Request<B>, source: &StatsSource) -> hyper::Response<Body> {
    let status = if req.uri().path() != "/metrics" {
        hyper::StatusCode::NOT_FOUND
    } else if req.method() != hyper::Method::GET {
        hyper::StatusCode::METHOD_NOT_ALLOWED
    } else {
        let body = encode_snapshot(&source.snapshot());
        return hyper::Response::builder()
            .header(
                hyper::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Body::new(body.into()))
            .unwrap_or_default();
    };
    let mut response = hyper::Response::new(Body::default());
    *response.status_mut() = status;
    response
}

/// The mirrored tables: routes and capacity by family, the route tries' memory, nexthops and
/// neighbours.
fn tables(registry: &mut Registry, t: &crate::snapshot::TableFigures) {
    let gauges = |registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>| {
        let family = Family::<Labels, Gauge>::default();
        match unit {
            Some(unit) => registry.register_with_unit(name, help, unit, family.clone()),
            None => registry.register(name, help, family.clone()),
        }
        family
    };
    let routes =
        gauges(registry, "routes", "Routes mirrored into the XDP program, by family", None);
    let capacity = gauges(
        registry,
        "route_capacity",
        "Most routes the XDP program's tries hold, by family",
        None,
    );
    let memory = gauges(
        registry,
        "route_memory",
        "Memory the kernel charges for the route tries, by family",
        Some(Unit::Bytes),
    );
    for (family, n, max, bytes) in [
        ("ipv4", t.routes_v4, t.max_routes_v4, t.route_bytes_v4),
        ("ipv6", t.routes_v6, t.max_routes_v6, t.route_bytes_v6),
    ] {
        routes.get_or_create(&labels(&[("family", family)])).set(n as i64);
        capacity.get_or_create(&labels(&[("family", family)])).set(max as i64);
        memory.get_or_create(&labels(&[("family", family)])).set(bytes as i64);
    }
    let single = |registry: &mut Registry, name: &str, help: &str, v: u64| {
        let g = Gauge::<i64>::default();
        g.set(v as i64);
        registry.register(name, help, g);
    };
    single(registry, "nexthops", "Nexthop objects and multipath sets mirrored", t.nexthops);
    single(registry, "neighbours", "Usable neighbours of the managed interfaces", t.neighbours);
    let rereads = Family::<Labels, Counter<u64>>::default();
    registry.register(
        "netlink_rereads",
        "Times the kernel's tables were read again after netlink events were lost, by socket",
        rereads.clone(),
    );
    for (socket, v) in [("rtnetlink", t.rereads), ("nexthop", t.nexthop_rereads)] {
        rereads.get_or_create(&labels(&[("socket", socket)])).inc_by(v);
    }
}
