//! The `ipvs-proxier` binary: argument parsing, logging and dispatch only.
//!
//! Without a subcommand it is kube-proxy (`--proxy-mode=ipvs`): kube-proxy's flags at the top
//! level, `--cleanup` / `--init-only` / run. The subcommands are ours: `plan` (no kernel
//! access) and `sync --once`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use ipvs_proxier::config::{self, Action, ProxierSettings};
use ipvs_proxier::sync::cleanup::{self, CleanupScope};
use ipvs_proxier::sync::cmd::{self, CommonArgs};
use ipvs_proxier::sync::daemon::{self, RunOptions};
use ipvs_proxier::sync::status;
use netlink::ipvs::Scheduler;

// The daemon allocates with jemalloc: see `ipvs_proxier::allocator`.
ipvs_proxier::jemalloc_global_allocator!();

#[derive(Debug, Parser)]
#[command(
    name = "ipvs-proxier",
    version,
    about = "kube-proxy --proxy-mode=ipvs, in Rust",
    args_conflicts_with_subcommands = true
)]
struct Invocation {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    proxy: config::Cli,
    /// Where the daemon records which Service port owns each virtual server, for
    /// `ipvs-proxier status`; empty: not recorded.
    #[arg(long, value_name = "PATH", default_value = status::DEFAULT_STATE_FILE)]
    state_file: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the planned IPVS table, VIPs, ipsets and iptables rules (no kernel access).
    Plan(Common),
    /// Program this node's kernel from the manifests.
    Sync {
        #[command(flatten)]
        common: Common,
        /// One sync, then exit (0 when no object failed).
        #[arg(long)]
        once: bool,
    },
    /// Print this node's IPVS table, each virtual server annotated with its Service port
    /// (as recorded by the running daemon's last sync).
    Status {
        #[arg(long, value_name = "PATH", default_value = status::DEFAULT_STATE_FILE)]
        state_file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// A manifest file, or a directory of *.yaml files.
    #[arg(long)]
    manifests: PathBuf,
    /// This node's name (default: the first Node of the manifests).
    #[arg(long)]
    node_name: Option<String>,
    /// Node IPs (default: the kernel's addresses for sync, the Node's InternalIPs for plan).
    #[arg(long, num_args = 1..)]
    node_ip: Vec<IpAddr>,
    /// Pod CIDRs (masquerade detection); their families are the families proxied.
    #[arg(long, value_delimiter = ',')]
    cluster_cidr: Vec<IpNet>,
    #[arg(long, default_value = "rr", value_parser = parse_scheduler)]
    ipvs_scheduler: Scheduler,
    #[arg(long)]
    masquerade_all: bool,
    #[arg(long, value_delimiter = ',')]
    ipvs_exclude_cidrs: Vec<IpNet>,
    #[arg(long)]
    ipvs_strict_arp: bool,
}

fn parse_scheduler(s: &str) -> Result<Scheduler, String> {
    Scheduler::new(s).map_err(|e| e.to_string())
}

impl From<Common> for CommonArgs {
    fn from(c: Common) -> Self {
        Self {
            manifests: c.manifests,
            node_name: c.node_name,
            node_ips: c.node_ip,
            cluster_cidrs: c.cluster_cidr,
            scheduler: c.ipvs_scheduler,
            masquerade_all: c.masquerade_all,
            exclude_cidrs: c.ipvs_exclude_cidrs,
            strict_arp: c.ipvs_strict_arp,
        }
    }
}

/// klog verbosity to a tracing level: 0-3 info (kube-proxy logs changes at 2), 4 debug,
/// 5+ trace. `RUST_LOG` wins when set.
fn init_logging(verbosity: u32) {
    let level = match verbosity {
        0..=3 => "info",
        4 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn runtime() -> Result<tokio::runtime::Runtime, std::io::Error> {
    // Two workers: the HTTP servers keep answering while a sync blocks one on iptables.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    ipvs_proxier::allocator::use_thread_cache_while_computing();
    let cli = Invocation::parse();
    match cli.command {
        Some(command) => {
            init_logging(0);
            subcommand(command)
        }
        None => {
            let options = RunOptions {
                state_file: (!cli.state_file.as_os_str().is_empty()).then_some(cli.state_file),
            };
            proxy(cli.proxy, &options)
        }
    }
}

fn proxy(cli: config::Cli, options: &RunOptions) -> ExitCode {
    let (settings, warnings) = match config::load(cli) {
        Ok(loaded) => loaded,
        Err(e) => {
            // Logging is configured by these very settings, so this one goes out plainly.
            eprintln!("ipvs-proxier: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(settings.verbosity);
    for w in &warnings {
        tracing::warn!(setting = %w.setting, "{}", w.message);
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(act(&settings, options))
}

async fn act(settings: &ProxierSettings, options: &RunOptions) -> ExitCode {
    match settings.action {
        Action::Cleanup => {
            let scope = CleanupScope {
                families: daemon::families(settings),
                exclude_cidrs: settings.exclude_cidrs.clone(),
                iptables_backend: daemon::backend_choice(settings.iptables_backend),
                dummy: daemon::DUMMY.to_owned(),
            };
            let report = cleanup::cleanup(&scope).await;
            if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Action::InitOnly => {
            match cleanup::init_only(
                std::path::Path::new("/proc/sys"),
                settings.strict_arp,
                &settings.ipvs_timeouts,
            )
            .await
            {
                Ok(written) => {
                    tracing::info!(sysctls_written = ?written, "init done");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(error = %e, "init failed");
                    ExitCode::FAILURE
                }
            }
        }
        Action::Run => match daemon::run(settings, options).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "ipvs-proxier failed");
                ExitCode::FAILURE
            }
        },
    }
}

fn subcommand(command: Command) -> ExitCode {
    match command {
        Command::Status { state_file } => print_status(&state_file),
        Command::Plan(common) => match cmd::plan(&common.into()) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "plan failed");
                ExitCode::FAILURE
            }
        },
        Command::Sync { common, once } => {
            if !once {
                tracing::error!("`sync` needs --once; run without a subcommand for the daemon");
                return ExitCode::from(2);
            }
            match cmd::sync_once(&common.into()) {
                Ok(report) => {
                    println!("{}", report.writes);
                    for f in &report.failures {
                        println!("FAILED {f}");
                    }
                    if report.failures.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "sync failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn print_status(state_file: &std::path::Path) -> ExitCode {
    let owners = match std::fs::read_to_string(state_file) {
        Ok(text) => status::parse_owners(&text),
        Err(e) => {
            tracing::warn!(path = %state_file.display(), error = %e,
                "no annotations (is the daemon running here?)");
            Default::default()
        }
    };
    let table = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                let mut ipvs = netlink::ipvs::IpvsHandle::connect().await?;
                ipvs.read_table().await
            })
            .map_err(|e| e.to_string())
        });
    match table {
        Ok(table) => {
            print!("{}", status::annotate(&table, &owners));
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the IPVS table");
            ExitCode::FAILURE
        }
    }
}

#[cfg(all(test, not(feature = "system-allocator")))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    /// The settings in `malloc_conf` are the ones jemalloc runs with (a misspelt one would
    /// only print a warning and be ignored).
    #[test]
    fn jemalloc_runs_with_our_settings() {
        assert_eq!(tikv_jemalloc_ctl::opt::narenas::read().unwrap(), 1);
        assert!(!tikv_jemalloc_ctl::opt::tcache::read().unwrap());
    }

    /// Planning runs with a thread cache, which is emptied and off again afterwards.
    #[test]
    fn thread_cache_only_while_computing() {
        use tikv_jemalloc_ctl::{Access, AsName};
        let enabled = || -> bool { b"thread.tcache.enabled\0".name().read().unwrap() };
        ipvs_proxier::allocator::use_thread_cache_while_computing();
        assert!(!enabled());
        let inside = ipvs_proxier::allocator::with_thread_cache(|| {
            let v: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
            (enabled(), v.len())
        });
        assert_eq!(inside, (true, 1000));
        assert!(!enabled());
    }

    /// Freed memory leaves the process at once, without a trim or a wait: 64 MiB of small
    /// objects, all but the first 1 MiB freed, then the RSS is back near where it started.
    #[test]
    fn freed_memory_goes_back_to_the_kernel_at_once() {
        let anon = || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        let before = anon();
        let mut blocks: Vec<Box<[u8; 1024]>> =
            (0..65_536).map(|i| Box::new([i as u8; 1024])).collect();
        let peak = anon();
        assert!(
            peak >= before + 60 * 1024,
            "not resident: {before} -> {peak} KiB"
        );
        // Keep whole slabs' worth together at the start, free the rest.
        let kept: Vec<_> = blocks.drain(..1024).collect();
        drop(blocks);
        let after = anon();
        assert!(
            after < before + 8 * 1024,
            "freed memory still resident: {before} -> {peak} -> {after} KiB"
        );
        assert_eq!(kept.len(), 1024);
    }
}
