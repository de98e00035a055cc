//! The `ipvs-proxier` binary: flag parsing only; the commands live in `ipvs_proxier::sync::cmd`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use ipvs_proxier::sync::cmd::{self, CommonArgs};
use netlink::ipvs::Scheduler;

#[derive(Debug, Parser)]
#[command(
    name = "ipvs-proxier",
    version,
    about = "kube-proxy --proxy-mode=ipvs, in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
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
                tracing::error!("only `sync --once` exists so far");
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
