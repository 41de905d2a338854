//! The `xdpfwd` command line; everything else lives in the library (`lib.rs`).

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use xdpfwd::{alloc_count::CountingAlloc, capture, forwarder, stats_client};

/// Counts heap allocations made by worker threads (reported at exit; must stay 0).
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// AF_XDP kernel-bypass packet forwarder: routes IPv4/IPv6 between interfaces as the kernel's
/// FIB says, rewriting frames in place in a shared UMEM.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// More logging (-v: debug, -vv: trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Forward between the given interfaces until SIGINT/SIGTERM.
    ///
    /// IPv4/IPv6 unicast that arrives on one interface and that the kernel's routes send out of
    /// another is forwarded through AF_XDP (next-hop MAC from the kernel's neighbour table,
    /// TTL / hop limit decremented). Everything else goes to the kernel untouched.
    Run(forwarder::RunArgs),
    /// Validate a configuration file without touching any interface.
    Check {
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
    },
    /// Make the instances running in this network namespace re-read their configuration
    /// (SIGHUP).
    Reload,
    /// Show the counters of the forwarders running in this network namespace, refreshed
    /// every interval (like xdp-bench): per interface and queue, drops by reason, XDP
    /// verdicts, kernel socket statistics, attach and copy modes, frame pool occupancy.
    Stats {
        /// One JSON object per forwarder and refresh, for scripts.
        #[arg(long)]
        json: bool,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Refreshes before exiting (0: until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Capture the frames a forwarder of this network namespace forwards (in and out, on
    /// both paths) and, with --drops, those it leaves to the kernel or drops, with the reason;
    /// as pcapng, e.g. `xdpfwd capture -w - | tcpdump -nr -`.
    Capture(capture::client::CaptureArgs),
    /// Print the completion script of a shell (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (xdpfwd.1 and one per command) into a directory.
    #[command(hide = true)]
    Man { dir: std::path::PathBuf },
}

/// The completion script of `shell` on standard output.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    clap_complete::generate(shell, &mut Cli::command(), "xdpfwd", &mut std::io::stdout());
    Ok(())
}

/// The man pages, written into `dir` (packaging).
fn man(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)?;
    Ok(())
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config = xdpfwd::config::load(path)?;
    println!(
        "{}: ok ({} interfaces, {} rules, {} routes, {} cross-connects, {} rewrites)",
        path.display(),
        config.interfaces.len(),
        config.rules.len(),
        config.routes.len(),
        config.xconnects.len(),
        config.rewrites.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let result = match cli.command {
        Command::Run(args) => forwarder::run(args),
        Command::Stats { json, interval, count } => stats_client::run(json, interval, count),
        Command::Check { config } => check(&config),
        Command::Reload => stats_client::signal_all(nix::sys::signal::Signal::SIGHUP),
        Command::Capture(args) => capture::client::run(args),
        Command::Completions { shell } => completions(shell),
        Command::Man { dir } => man(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xdpfwd: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
