//! Configuration: kube-proxy's command line and `--config` file in, one validated
//! [`ProxierSettings`] out, plus the planner's [`PlanConfig`] derived from it.
//!
//! Owns: flag parsing ([`Cli`]), the `KubeProxyConfiguration` v1alpha1 file format
//! ([`file`]), Go duration syntax ([`duration`]), kube-proxy's precedence between the two,
//! defaults, validation (every error names the flag or field at fault) and warnings for
//! settings that mean nothing to an IPVS-only proxier (returned as data; the caller logs
//! them).
//!
//! Precedence, as kube-proxy's `Options.Complete` (cmd/kube-proxy/app/options.go) does it:
//! - without `--config`, flags override the v1alpha1 defaults;
//! - with `--config`, the file replaces every setting the flags also cover; those flags are
//!   ignored (kube-proxy does so silently, we return a warning for each one given). The
//!   exceptions that still win over the file are `--hostname-override`, the logging flags
//!   (`-v`, `--vmodule`, `--logging-format`, `--log-flush-frequency`), and the flags that are
//!   not part of the file at all: `--master`, `--cleanup`, `--init-only`, and ipvs-proxier's
//!   own (`--manifests`, `--node-ip`, `--strict-local-traffic-policy`, `--iptables-backend`,
//!   `--max-drain-time`).
//!
//! Defaults follow v1alpha1's `SetDefaults_KubeProxyConfiguration`: a zero value in the file
//! means "default" (`ipvs.syncPeriod: 0s` becomes 30s), which is why kubeadm's all-zero
//! ConfigMap works.

pub mod cli;
pub mod duration;
pub mod file;
mod resolve;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use netlink::AddressFamily;
use netlink::ipvs::{InvalidName, Scheduler};

use crate::plan::{LocalDetector, LocalPolicyFallback, NodePortAddresses, PlanConfig};

pub use cli::{Cli, IptablesBackend};
pub use duration::{DurationError, GoDuration, parse_go_duration};
pub use resolve::resolve;

/// Everything the daemon needs to know from its command line and config file, validated and
/// defaulted.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxierSettings {
    /// What to do: run, or one of kube-proxy's one-shot modes.
    pub action: Action,
    /// This node's name: `--hostname-override`, else `hostnameOverride`, else the hostname
    /// (trimmed, lower-cased, as kube-proxy's `GetHostname`).
    pub node_name: String,
    /// Where Services, EndpointSlices and Nodes come from.
    pub source: Source,
    /// Explicit node IPs: `--node-ip`, else a specified `bindAddress`. Empty: discover them.
    pub node_ips: Vec<IpAddr>,
    pub scheduler: Scheduler,
    pub strict_arp: bool,
    /// IPVS services inside these are never garbage-collected.
    pub exclude_cidrs: Vec<IpNet>,
    /// Full resync interval (`ipvs.syncPeriod`, > 0).
    pub sync_period: Duration,
    /// Minimum interval between syncs (`ipvs.minSyncPeriod`, <= sync_period; 0 = none).
    pub min_sync_period: Duration,
    pub ipvs_timeouts: IpvsTimeouts,
    pub masquerade_all: bool,
    /// 0..=31.
    pub masquerade_bit: u8,
    /// `clusterCIDR`, at most one per family.
    pub cluster_cidrs: Vec<IpNet>,
    pub local_detector: LocalDetector,
    pub node_port_addresses: NodePortAddresses,
    pub local_policy_fallback: LocalPolicyFallback,
    /// `None`: the health server is disabled.
    pub healthz_bind_address: Option<SocketAddr>,
    /// `None`: the metrics server is disabled.
    pub metrics_bind_address: Option<SocketAddr>,
    /// Exit when a server port cannot be bound, instead of logging it.
    pub bind_address_hard_fail: bool,
    pub iptables_backend: IptablesBackend,
    /// `None`: a draining real server is kept until its connections end (upstream).
    pub max_drain_time: Option<Duration>,
    /// klog-style verbosity (`-v`, else `logging.verbosity`).
    pub verbosity: u32,
    /// The `--config` file: kube-proxy exits when it changes, so the daemon may watch it.
    pub config_file: Option<PathBuf>,
}

/// kube-proxy's one-shot modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Run,
    /// `--cleanup`: remove everything kube-proxy/ipvs-proxier created, then exit.
    Cleanup,
    /// `--init-only`: set sysctls and IPVS timeouts, then exit.
    InitOnly,
}

/// Where the Kubernetes objects come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    ApiServer(ApiSettings),
    /// `--manifests DIR`: static YAML files, no API server.
    Manifests(PathBuf),
}

/// How to reach the API server.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    /// `clientConnection.kubeconfig` / `--kubeconfig`; `None`: in-cluster config.
    pub kubeconfig: Option<PathBuf>,
    /// `--master`: overrides the kubeconfig's server URL.
    pub master: Option<String>,
    pub qps: f32,
    pub burst: u32,
    /// `configSyncPeriod`: informer resync period.
    pub config_sync_period: Duration,
}

/// IPVS connection timeouts (`IPVS_CMD_SET_CONFIG`); zero leaves the kernel's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpvsTimeouts {
    pub tcp: Duration,
    pub tcp_fin: Duration,
    pub udp: Duration,
}

impl IpvsTimeouts {
    /// kube-proxy calls `SET_CONFIG` only when one of them is set.
    pub fn any_set(&self) -> bool {
        !(self.tcp.is_zero() && self.tcp_fin.is_zero() && self.udp.is_zero())
    }

    /// Whole seconds as `IPVS_CMD_SET_CONFIG` takes them, saturating at `u32::MAX`.
    pub fn to_kernel(&self) -> netlink::ipvs::Timeouts {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        netlink::ipvs::Timeouts {
            tcp: secs(self.tcp),
            tcp_fin: secs(self.tcp_fin),
            udp: secs(self.udp),
        }
    }
}

/// A setting that was accepted but has no effect (or not the one kube-proxy gives it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The flag (`--conntrack-min`) or file field (`conntrack.min`).
    pub setting: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file: {0}")]
    Syntax(String),
    #[error("config file: kind is {0:?}, expected \"KubeProxyConfiguration\"")]
    Kind(String),
    #[error("config file: {}", api_version_message(.0))]
    ApiVersion(String),
    #[error("config file: unknown field \"{path}\"")]
    UnknownField { path: String },
    #[error("config file: {0}")]
    Decode(String),
    /// A value that parsed but is not acceptable; `setting` is the flag or field.
    #[error("{setting}: {problem}")]
    Invalid { setting: String, problem: Problem },
    #[error("cannot determine the node name: {0}")]
    Hostname(String),
}

fn api_version_message(api_version: &str) -> String {
    if api_version == file::V1ALPHA2 {
        format!(
            "apiVersion {api_version} is not supported yet; write the file as {} (the version \
             kubeadm writes)",
            file::V1ALPHA1
        )
    } else {
        format!(
            "apiVersion is {api_version:?}, expected {:?}",
            file::V1ALPHA1
        )
    }
}

/// What is wrong with a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{value} is out of range {range}")]
    OutOfRange { value: i64, range: &'static str },
    #[error("invalid CIDR {0:?}")]
    Cidr(String),
    #[error("invalid IP address {0:?}")]
    Ip(String),
    #[error("{0:?} is not IP or IP:port with a port in 1..=65535")]
    HostPort(String),
    #[error("{0} must be greater than 0")]
    NotPositive(GoDuration),
    #[error("{0} must be greater than or equal to 0")]
    Negative(GoDuration),
    #[error("{value} must be greater than or equal to {other} ({min})")]
    BelowMinimum {
        value: GoDuration,
        other: String,
        min: GoDuration,
    },
    #[error("{0:?} is not supported: ipvs-proxier only implements the \"ipvs\" proxy mode")]
    Mode(String),
    #[error("{0}")]
    Scheduler(InvalidName),
    #[error(
        "{0:?} is not a detect-local mode (expected ClusterCIDR, NodeCIDR, BridgeInterface or \
         InterfaceNamePrefix)"
    )]
    DetectLocalMode(String),
    #[error("must be set when the detect-local mode is {0}")]
    RequiredBy(&'static str),
    #[error("invalid interface name {0:?}")]
    Interface(String),
    #[error("{0:?} must be one CIDR or a dual-stack pair (one IPv4, one IPv6)")]
    ClusterCidrs(String),
    #[error("'primary' cannot be combined with other values")]
    PrimaryWithOthers,
    #[error("must not be empty")]
    Empty,
    #[error("{0:?} is not a supported log format (expected \"text\")")]
    LogFormat(String),
}

/// Reads `--config` (if any) and resolves the command line and file into settings.
/// The node name falls back to the host's name, read from `/proc/sys/kernel/hostname`.
pub fn load(cli: Cli) -> Result<(ProxierSettings, Vec<Warning>), ConfigError> {
    let text = match &cli.config {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let hostname = || {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_err(|e| ConfigError::Hostname(e.to_string()))
    };
    resolve(&cli, text.as_deref(), hostname)
}

impl ProxierSettings {
    /// The planner's view. `families` and `random_fully` are host facts the daemon probes
    /// (which of iptables/ip6tables work, whether MASQUERADE supports --random-fully).
    pub fn plan_config(&self, families: Vec<AddressFamily>, random_fully: bool) -> PlanConfig {
        PlanConfig {
            node_name: self.node_name.clone(),
            families,
            scheduler: self.scheduler,
            masquerade_all: self.masquerade_all,
            masquerade_bit: self.masquerade_bit,
            local_detector: self.local_detector.clone(),
            cluster_cidrs: self.cluster_cidrs.clone(),
            local_policy_fallback: self.local_policy_fallback,
            node_port_addresses: self.node_port_addresses.clone(),
            random_fully,
            // kube-proxy has no name: it skips every object carrying the
            // service.kubernetes.io/service-proxy-name label.
            service_proxy_name: None,
        }
    }
}
