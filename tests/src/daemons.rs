//! Routing daemons inside the namespaces the integration tests create: FRR (zebra with staticd,
//! bgpd, ...) and BIRD 2, run without systemd so that tests can check the routes they install
//! and that xdpfwd forwards along them.
//!
//! [`Frr`] owns `/etc/frr/NAME`, `/var/run/frr/NAME` and the FRR daemons it started; [`Bird`]
//! owns `/run/xdpfwd-bird-NAME` and the `bird` it started. NAME must be unique on the machine
//! (pass the topology prefix); a name in use is an error, never shared. The daemons run in the
//! foreground as children of the test process (not with `-d`): dropping a guard stops exactly
//! those processes, reaps them (a daemonised one would linger as a zombie until init reaps it)
//! and removes the guard's files, also when a test fails. Every wait is bounded.
//!
//! What setting them up taught (FRR 8.4 and BIRD 2.0.12 from Debian 12):
//! - zebra must answer before staticd or bgpd starts: a client that finds no zserv socket
//!   retries only 10 s later, so [`Frr::start`] starts zebra first and waits for each daemon's
//!   vty in turn.
//! - Every FRR daemon reads the whole `frr.conf` (`-f`) and logs "No such command" for the
//!   lines that belong to the others; harmless.
//! - zebra installs routes through nexthop objects (`ip route` shows `nhid N`; an ECMP route's
//!   object is a group, `ip nexthop` shows `group A/B`). After a link flap FRR 8.4 leaves the
//!   kernel's group with the surviving member only while zebra still shows two paths (fixed
//!   upstream after 8.4, FRR PR 13413): flap BGP paths with `neighbor X shutdown`, or add
//!   `no zebra nexthop kernel enable` to `frr.conf` to get plain `RTA_MULTIPATH` routes.
//! - Setting a veth down flushes its global IPv6 addresses unless
//!   `net.ipv6.conf.DEV.keep_addr_on_down=1`; IPv6 sessions over it do not come back.
//! - FRR installs IPv6 BGP routes via the peer's link-local address; BIRD via the global one.
//! - BIRD treats a closed session from FRR (which advertises graceful restart) as a restart and
//!   keeps the stale routes for seconds: `graceful restart off` in BIRD's `bgp` protocol.

use std::{
    fs::{self, File},
    os::unix::fs::{PermissionsExt as _, chown},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::{Group, Pid, User},
};

/// How long a daemon may take to answer after it is started (all of an instance's daemons
/// together).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemons of a guard may take to exit after SIGTERM, before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one `vtysh` or `birdc` command may take.
const COMMAND_TIMEOUT: &str = "10";

const FRR_ETC: &str = "/etc/frr";
const FRR_RUN: &str = "/var/run/frr";
const FRR_LIBEXEC: &str = "/usr/lib/frr";

/// FRR daemons running in one namespace under the pathspace `-N NAME`, stopped on drop.
#[derive(Debug)]
pub struct Frr {
    ns: String,
    name: String,
    etc: PathBuf,
    run: PathBuf,
    /// The directories this guard created (and removes).
    created: Vec<PathBuf>,
    /// The daemons in the order they were started.
    daemons: Vec<(String, Child)>,
}

impl Frr {
    /// Starts `daemons` (e.g. `["zebra", "staticd", "bgpd"]`; zebra is required and started
    /// first) in namespace `ns` with `config` as their `frr.conf`, and waits until each answers
    /// `vtysh`. Creates `/etc/frr/NAME` (`daemons`, `frr.conf`, an empty `vtysh.conf`) and
    /// `/var/run/frr/NAME` (pid files, vty sockets, `DAEMON.log` with each daemon's output),
    /// owned by `frr`.
    pub fn start(ns: &str, name: &str, daemons: &[&str], config: &str) -> anyhow::Result<Self> {
        check_name(name)?;
        if !daemons.contains(&"zebra") {
            bail!("FRR {name}: zebra is needed (the other daemons install routes through it)");
        }
        for d in daemons {
            let bin = Path::new(FRR_LIBEXEC).join(d);
            if !bin.exists() {
                bail!("{} missing: install frr (`cargo xtask bootstrap`)", bin.display());
            }
        }
        let uid = User::from_name("frr")
            .context("looking up user frr")?
            .context("no user frr: install frr (`cargo xtask bootstrap`)")?
            .uid;
        let gid = Group::from_name("frr")
            .context("looking up group frr")?
            .context("no group frr: install frr (`cargo xtask bootstrap`)")?
            .gid;
        let mut frr = Frr {
            ns: ns.to_owned(),
            name: name.to_owned(),
            etc: Path::new(FRR_ETC).join(name),
            run: Path::new(FRR_RUN).join(name),
            created: Vec::new(),
            daemons: Vec::new(),
        };
        // From here on, dropping `frr` removes whatever was created.
        let own = |path: &Path, mode: u32| -> anyhow::Result<()> {
            chown(path, Some(uid.as_raw()), Some(gid.as_raw()))
                .with_context(|| format!("chown frr {}", path.display()))?;
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {mode:o} {}", path.display()))
        };
        // /var/run/frr is created at boot by systemd-tmpfiles (or by the frr service); it is
        // the package's, shared by every instance, and stays.
        if !Path::new(FRR_RUN).exists() {
            fs::create_dir_all(FRR_RUN).with_context(|| format!("creating {FRR_RUN}"))?;
            own(Path::new(FRR_RUN), 0o755)?;
        }
        for (dir, mode) in [(frr.etc.clone(), 0o750), (frr.run.clone(), 0o755)] {
            fs::create_dir(&dir).with_context(|| {
                format!("creating {} (is FRR instance {name} already running?)", dir.display())
            })?;
            frr.created.push(dir.clone());
            own(&dir, mode)?;
        }
        let daemons_file = format!("{FRR_ETC}/daemons");
        let files = [
            (
                "daemons",
                fs::read(&daemons_file).with_context(|| format!("reading {daemons_file}"))?,
            ),
            ("frr.conf", config.as_bytes().to_vec()),
            ("vtysh.conf", Vec::new()),
        ];
        for (file, content) in files {
            let path = frr.etc.join(file);
            fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
            own(&path, 0o640)?;
        }
        // zebra first: the others connect to its zserv socket and, if it is not there yet,
        // retry only after 10 s.
        let order =
            std::iter::once("zebra").chain(daemons.iter().copied().filter(|d| *d != "zebra"));
        let deadline = Instant::now() + START_TIMEOUT;
        for daemon in order {
            frr.spawn(daemon)?;
            frr.wait_ready(daemon, deadline)?;
        }
        Ok(frr)
    }

    fn spawn(&mut self, daemon: &str) -> anyhow::Result<()> {
        let log_path = self.run.join(format!("{daemon}.log"));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(Path::new(FRR_LIBEXEC).join(daemon))
            .args(["-N", &self.name, "-f"])
            .arg(self.etc.join("frr.conf"))
            // No TCP vty (vtysh uses the unix sockets); log lines into DAEMON.log.
            .args(["-P", "0", "--log", "stdout"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {daemon} in {}", self.ns))?;
        self.daemons.push((daemon.to_owned(), child));
        Ok(())
    }

    /// Waits until `daemon` (the last one started) answers `show version`.
    fn wait_ready(&mut self, daemon: &str, deadline: Instant) -> anyhow::Result<()> {
        loop {
            if let Some((_, child)) = self.daemons.last_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("FRR {}: {daemon} exited ({status}):\n{}", self.name, self.logs());
            }
            let answered = self.run_vtysh(&["-d", daemon, "-c", "show version"]).is_ok();
            if answered {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "FRR {}: {daemon} did not answer vtysh within {START_TIMEOUT:?}:\n{}",
                    self.name,
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs one `vtysh` command (e.g. `show ip route`) and returns its output; fails when
    /// vtysh reports an error.
    pub fn vtysh(&self, cmd: &str) -> anyhow::Result<String> {
        self.run_vtysh(&["-c", cmd])
    }

    /// Applies configuration lines in `configure terminal` (e.g. `["router bgp 65001",
    /// "neighbor 198.18.3.2 shutdown"]`).
    pub fn configure(&self, lines: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["-c", "configure terminal"];
        for line in lines {
            args.extend_from_slice(&["-c", line]);
        }
        self.run_vtysh(&args)
    }

    fn run_vtysh(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["vtysh", "-N", &self.name];
        full.extend_from_slice(args);
        bounded(&full)
    }

    /// Process ids of the running daemons, in start order.
    pub fn pids(&self) -> Vec<u32> {
        self.daemons.iter().map(|(_, child)| child.id()).collect()
    }

    /// The namespace the daemons run in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Everything the daemons logged so far, each log under its daemon's name.
    pub fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(|(d, _)| {
                let log = fs::read_to_string(self.run.join(format!("{d}.log"))).unwrap_or_default();
                format!("--- {d}\n{log}")
            })
            .collect()
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        // bgpd and staticd before zebra, which removes its routes from the kernel on the way
        // out.
        let deadline = Instant::now() + STOP_TIMEOUT;
        for (_, child) in self.daemons.iter_mut().rev() {
            stop_child(child, deadline);
        }
        self.daemons.clear();
        for dir in self.created.drain(..).rev() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// A BIRD 2 daemon running in one namespace, stopped on drop.
#[derive(Debug)]
pub struct Bird {
    dir: PathBuf,
    sock: PathBuf,
    ns: String,
    /// Whether this guard created `dir` (and removes it).
    created: bool,
    child: Option<Child>,
}

impl Bird {
    /// Starts `bird` in namespace `ns` with `config`, its control socket, pid file and log
    /// (`bird.log`, whatever it writes to stderr: put `log stderr all;` in the config) under
    /// `/run/xdpfwd-bird-NAME/`, and waits until `birdc show status` says it is up.
    pub fn start(ns: &str, name: &str, config: &str) -> anyhow::Result<Self> {
        check_name(name)?;
        let dir = PathBuf::from(format!("/run/xdpfwd-bird-{name}"));
        let mut bird = Bird {
            sock: dir.join("bird.ctl"),
            dir,
            ns: ns.to_owned(),
            created: false,
            child: None,
        };
        fs::create_dir(&bird.dir).with_context(|| {
            format!("creating {} (is BIRD {name} already running?)", bird.dir.display())
        })?;
        bird.created = true;
        let conf = bird.dir.join("bird.conf");
        fs::write(&conf, config).with_context(|| format!("writing {}", conf.display()))?;
        let log = File::create(bird.dir.join("bird.log")).context("creating bird.log")?;
        bird.child = Some(
            Command::new("ip")
                .args(["netns", "exec", ns, "bird", "-f", "-c"])
                .arg(&conf)
                .arg("-s")
                .arg(&bird.sock)
                .arg("-P")
                .arg(bird.dir.join("bird.pid"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("log file")?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting bird in {ns} (install bird2?)"))?,
        );
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = bird.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("BIRD {name} exited ({status}):\n{}", bird.log());
            }
            if bird.birdc("show status").is_ok_and(|s| s.contains("Daemon is up and running")) {
                return Ok(bird);
            }
            if Instant::now() > deadline {
                bail!("BIRD {name} did not come up within {START_TIMEOUT:?}:\n{}", bird.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs one `birdc` command (e.g. `show route`, `disable b4a`) and returns its output
    /// without the greeting line; fails when BIRD reports an error.
    pub fn birdc(&self, cmd: &str) -> anyhow::Result<String> {
        let sock = self.sock.to_string_lossy();
        let out = bounded(&["birdc", "-s", &sock, cmd])?;
        Ok(out
            .lines()
            .filter(|l| !(l.starts_with("BIRD ") && l.ends_with(" ready.")))
            .map(|l| format!("{l}\n"))
            .collect())
    }

    /// Process id of `bird` (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The namespace `bird` runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// What `bird` logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `down` withdraws the routes from the kernel, removes socket and pid file and
            // exits; SIGTERM (then SIGKILL) if it does not.
            if matches!(child.try_wait(), Ok(None)) {
                let _ = self.birdc("down");
            }
            stop_child(&mut child, Instant::now() + STOP_TIMEOUT);
        }
        if self.created {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Instance names become paths and pathspaces.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !name.starts_with('-');
    if !ok {
        bail!("daemon instance name {name:?}: use 1 to 40 of [A-Za-z0-9_-]");
    }
    Ok(())
}

/// SIGTERM, then waits until `deadline` for the exit (SIGKILL past it) and reaps the process.
fn stop_child(child: &mut Child, deadline: Instant) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs a command for at most [`COMMAND_TIMEOUT`] seconds (`timeout`, then SIGKILL 2 s later);
/// fails with its output when it fails (vtysh and birdc print errors on stdout).
fn bounded(args: &[&str]) -> anyhow::Result<String> {
    let Output { status, stdout, stderr } = Command::new("timeout")
        .args(["-k", "2", COMMAND_TIMEOUT])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {args:?}"))?;
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    if !status.success() {
        bail!(
            "{args:?} failed ({status}): {} {}",
            stdout.trim(),
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(stdout)
}

/// The server (AS 65002) announces 198.19.70.0/24 and 2001:2:0:70::/64 (backed by blackhole
/// statics) to the forwarder over both links, one session per link and address family.
pub const FRR_BGP_SERVER: &str = "\
frr defaults traditional
!
ip route 198.19.70.0/24 blackhole
ipv6 route 2001:2:0:70::/64 blackhole
!
router bgp 65002
 bgp router-id 198.18.2.2
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 timers bgp 1 3
 coalesce-time 100
 neighbor 198.18.2.1 remote-as 65001
 neighbor 198.18.2.1 timers connect 1
 neighbor 198.18.3.1 remote-as 65001
 neighbor 198.18.3.1 timers connect 1
 neighbor 2001:2:0:2::1 remote-as 65001
 neighbor 2001:2:0:2::1 timers connect 1
 neighbor 2001:2:0:3::1 remote-as 65001
 neighbor 2001:2:0:3::1 timers connect 1
 !
 address-family ipv4 unicast
  network 198.19.70.0/24
  neighbor 198.18.2.1 activate
  neighbor 198.18.3.1 activate
 exit-address-family
 !
 address-family ipv6 unicast
  network 2001:2:0:70::/64
  neighbor 2001:2:0:2::1 activate
  neighbor 2001:2:0:3::1 activate
 exit-address-family
!
";

/// The forwarder (AS 65001) accepts both paths and installs them as one ECMP route.
pub const FRR_BGP_FWD: &str = "\
frr defaults traditional
!
router bgp 65001
 bgp router-id 198.18.2.1
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 timers bgp 1 3
 coalesce-time 100
 neighbor 198.18.2.2 remote-as 65002
 neighbor 198.18.2.2 timers connect 1
 neighbor 198.18.3.2 remote-as 65002
 neighbor 198.18.3.2 timers connect 1
 neighbor 2001:2:0:2::2 remote-as 65002
 neighbor 2001:2:0:2::2 timers connect 1
 neighbor 2001:2:0:3::2 remote-as 65002
 neighbor 2001:2:0:3::2 timers connect 1
 !
 address-family ipv4 unicast
  neighbor 198.18.2.2 activate
  neighbor 198.18.3.2 activate
  maximum-paths 2
 exit-address-family
 !
 address-family ipv6 unicast
  neighbor 2001:2:0:2::2 activate
  neighbor 2001:2:0:3::2 activate
  maximum-paths 2
 exit-address-family
!
";

/// BIRD on the forwarder (AS 65001) peering with [`FRR_BGP_SERVER`]: `merge paths on` in the
/// kernel protocols turns the two BGP routes into one multipath kernel route.
pub const BIRD_BGP_FWD: &str = "\
log stderr all;
router id 198.18.2.1;
protocol device { scan time 1; }
protocol kernel kernel4 {
  scan time 1;
  merge paths on;
  ipv4 { export all; import none; };
}
protocol kernel kernel6 {
  scan time 1;
  merge paths on;
  ipv6 { export all; import none; };
}
template bgp frr {
  local as 65001;
  hold time 3;
  keepalive time 1;
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 2;
  graceful restart off;
}
protocol bgp b4a from frr { neighbor 198.18.2.2 as 65002; ipv4 { import all; export none; }; }
protocol bgp b4b from frr { neighbor 198.18.3.2 as 65002; ipv4 { import all; export none; }; }
protocol bgp b6a from frr { neighbor 2001:2:0:2::2 as 65002; ipv6 { import all; export none; }; }
protocol bgp b6b from frr { neighbor 2001:2:0:3::2 as 65002; ipv6 { import all; export none; }; }
";
