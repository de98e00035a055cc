//! The command line: kube-proxy's flags (same names, same value syntax) plus ipvs-proxier's
//! own.
//!
//! Every flag that kube-proxy binds to its configuration is an `Option` here, `None` when not
//! given, because kube-proxy's precedence depends on whether a flag was set (see
//! [`super::resolve`]). The default each one takes when neither the flag nor a config file
//! sets it is in its help text and applied in `resolve`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{ArgAction, Parser, ValueEnum};

use super::duration::{GoDuration, parse_go_duration};

/// ipvs-proxier: a drop-in replacement for `kube-proxy --proxy-mode=ipvs`.
///
/// Accepts kube-proxy's flags and its `--config` file (KubeProxyConfiguration v1alpha1). As in
/// kube-proxy, when --config is given the file wins over the flags it covers.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "ipvs-proxier", version, about, long_about = None)]
pub struct Cli {
    /// The path to the configuration file (KubeProxyConfiguration, v1alpha1).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// If true cleanup IPVS, ipset and iptables state and exit.
    #[arg(long, value_name = "BOOL", value_parser = parse_go_bool, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub cleanup: Option<bool>,

    /// If true, perform the initialization steps that need full root privileges (sysctls,
    /// IPVS timeouts), then exit.
    #[arg(long, value_name = "BOOL", value_parser = parse_go_bool, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub init_only: Option<bool>,

    /// A set of key=value pairs for feature gates (accepted, not interpreted). Ignored if
    /// --config is given.
    #[arg(long, value_name = "KEY=BOOL,...", value_parser = parse_feature_gate,
          value_delimiter = ',', action = ArgAction::Append)]
    pub feature_gates: Vec<(String, bool)>,

    /// Path to kubeconfig file with authorization information (the master location can be
    /// overridden by the master flag). Ignored if --config is given.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// The address of the Kubernetes API server (overrides any value in kubeconfig).
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,

    /// Content type of requests sent to apiserver [default: application/vnd.kubernetes.protobuf].
    /// Ignored if --config is given.
    #[arg(long, value_name = "TYPE")]
    pub kube_api_content_type: Option<String>,

    /// Burst to use while talking with the apiserver [default: 10]. Ignored if --config is
    /// given.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub kube_api_burst: Option<i32>,

    /// QPS to use while talking with the apiserver [default: 5]. Ignored if --config is given.
    #[arg(long, value_name = "QPS")]
    pub kube_api_qps: Option<f32>,

    /// If non-empty, used as the name of the Node ipvs-proxier runs on, instead of the
    /// hostname. Wins over hostnameOverride in --config.
    #[arg(long, value_name = "NAME")]
    pub hostname_override: Option<String>,

    /// Overrides the node's primary IP [default: 0.0.0.0, meaning unset]. Ignored if --config
    /// is given.
    #[arg(long, value_name = "IP")]
    pub bind_address: Option<String>,

    /// IP address and port for the health check server [default: 0.0.0.0:10256]; empty
    /// disables it. Ignored if --config is given.
    #[arg(long, value_name = "IP[:PORT]")]
    pub healthz_bind_address: Option<String>,

    /// IP address and port for the metrics server [default: 127.0.0.1:10249]; empty disables
    /// it. Ignored if --config is given.
    #[arg(long, value_name = "IP[:PORT]")]
    pub metrics_bind_address: Option<String>,

    /// If true, failing to bind the health or metrics port is fatal. Ignored if --config is
    /// given.
    #[arg(long, value_name = "BOOL", value_parser = parse_go_bool, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub bind_address_hard_fail: Option<bool>,

    /// Accepted for compatibility; ipvs-proxier has no /debug/pprof. Ignored if --config is
    /// given.
    #[arg(long, value_name = "BOOL", value_parser = parse_go_bool, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub profiling: Option<bool>,

    /// Accepted for compatibility; ipvs-proxier has no hidden metrics. Ignored if --config is
    /// given.
    #[arg(long, value_name = "VERSION")]
    pub show_hidden_metrics_for_version: Option<String>,

    /// Which proxy mode to use: only 'ipvs' is accepted. Ignored if --config is given.
    #[arg(long, value_name = "MODE")]
    pub proxy_mode: Option<String>,

    /// The bit of the fwmark space used to mark packets requiring SNAT, 0..=31 [default: 14].
    /// Ignored if --config is given.
    #[arg(long, value_name = "BIT", allow_negative_numbers = true)]
    pub iptables_masquerade_bit: Option<i32>,

    /// SNAT all traffic sent via Service cluster IPs. Ignored if --config is given.
    #[arg(long, value_name = "BOOL", value_parser = parse_go_bool, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub masquerade_all: Option<bool>,

    /// iptables mode only; accepted with a warning (IPVS never serves NodePorts on localhost).
    #[arg(long, value_name = "BOOL", value_parser = parse_go_bool, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub iptables_localhost_nodeports: Option<bool>,

    /// iptables mode only; accepted with a warning (use --ipvs-sync-period).
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    pub iptables_sync_period: Option<GoDuration>,

    /// iptables mode only; accepted with a warning (use --ipvs-min-sync-period).
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    pub iptables_min_sync_period: Option<GoDuration>,

    /// How often a full resync runs, e.g. '5s', '1m', '2h22m' [default: 30s]. Must be greater
    /// than 0. Ignored if --config is given.
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    pub ipvs_sync_period: Option<GoDuration>,

    /// The minimum period between resyncs [default: 0s, every change syncs at once]. Ignored if
    /// --config is given.
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    pub ipvs_min_sync_period: Option<GoDuration>,

    /// The IPVS scheduler [default: rr]. Ignored if --config is given.
    #[arg(long, value_name = "NAME")]
    pub ipvs_scheduler: Option<String>,

    /// Comma-separated CIDRs whose IPVS services are never cleaned up. Ignored if --config is
    /// given.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',', action = ArgAction::Append)]
    pub ipvs_exclude_cidrs: Option<Vec<String>>,

    /// Set arp_ignore=1 and arp_announce=2. Ignored if --config is given.
    #[arg(long, value_name = "BOOL", value_parser = parse_go_bool, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub ipvs_strict_arp: Option<bool>,

    /// Idle timeout for IPVS TCP connections, 0 to leave as-is [default: 0s]. Ignored if
    /// --config is given.
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    pub ipvs_tcp_timeout: Option<GoDuration>,

    /// Timeout for IPVS TCP connections after a FIN, 0 to leave as-is [default: 0s]. Ignored if
    /// --config is given.
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    pub ipvs_tcpfin_timeout: Option<GoDuration>,

    /// Timeout for IPVS UDP packets, 0 to leave as-is [default: 0s]. Ignored if --config is
    /// given.
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    pub ipvs_udp_timeout: Option<GoDuration>,

    /// How to detect pod traffic: ClusterCIDR, NodeCIDR, BridgeInterface or
    /// InterfaceNamePrefix [default: ClusterCIDR]. Ignored if --config is given.
    #[arg(long, value_name = "MODE")]
    pub detect_local_mode: Option<String>,

    /// The bridge of --detect-local-mode=BridgeInterface. Ignored if --config is given.
    #[arg(long, value_name = "NAME")]
    pub pod_bridge_interface: Option<String>,

    /// The interface prefix of --detect-local-mode=InterfaceNamePrefix. Ignored if --config is
    /// given.
    #[arg(long, value_name = "PREFIX")]
    pub pod_interface_name_prefix: Option<String>,

    /// The pod CIDR(s) of the cluster: one CIDR, or a comma-separated dual-stack pair. Ignored
    /// if --config is given.
    #[arg(long, value_name = "CIDR[,CIDR]")]
    pub cluster_cidr: Option<String>,

    /// CIDRs of the node IPs that serve NodePorts, or 'primary' [default: all local IPs].
    /// Ignored if --config is given.
    #[arg(long = "nodeport-addresses", value_name = "CIDR,...", value_delimiter = ',',
          action = ArgAction::Append)]
    pub nodeport_addresses: Option<Vec<String>>,

    /// Accepted with a warning: ipvs-proxier does not set its own oom_score_adj.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub oom_score_adj: Option<i32>,

    /// Accepted with a warning: conntrack sysctls are left to the node.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub conntrack_max_per_core: Option<i32>,

    /// Accepted with a warning: conntrack sysctls are left to the node.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub conntrack_min: Option<i32>,

    /// Accepted with a warning: conntrack sysctls are left to the node.
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    pub conntrack_tcp_timeout_established: Option<GoDuration>,

    /// Accepted with a warning: conntrack sysctls are left to the node.
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    pub conntrack_tcp_timeout_close_wait: Option<GoDuration>,

    /// Accepted with a warning: conntrack sysctls are left to the node.
    #[arg(long, value_name = "BOOL", value_parser = parse_go_bool, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub conntrack_tcp_be_liberal: Option<bool>,

    /// Accepted with a warning: conntrack sysctls are left to the node.
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    pub conntrack_udp_timeout: Option<GoDuration>,

    /// Accepted with a warning: conntrack sysctls are left to the node.
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    pub conntrack_udp_timeout_stream: Option<GoDuration>,

    /// How often configuration from the apiserver is refreshed [default: 15m]. Ignored if
    /// --config is given.
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    pub config_sync_period: Option<GoDuration>,

    /// Deprecated: the port of the health check server, 0 disables it. Use
    /// --healthz-bind-address.
    #[arg(long, value_name = "PORT", allow_negative_numbers = true, hide = true)]
    pub healthz_port: Option<i32>,

    /// Deprecated: the port of the metrics server, 0 disables it. Use --metrics-bind-address.
    #[arg(long, value_name = "PORT", allow_negative_numbers = true, hide = true)]
    pub metrics_port: Option<i32>,

    /// Log verbosity (klog levels: 2 = changes, 4 = debug, 5+ = trace). Wins over
    /// logging.verbosity in --config.
    #[arg(short = 'v', long = "v", value_name = "LEVEL")]
    pub verbosity: Option<u32>,

    /// Accepted with a warning: per-file verbosity is not supported.
    #[arg(long, value_name = "PATTERN=N,...")]
    pub vmodule: Option<String>,

    /// Log format: only 'text' is supported.
    #[arg(long, value_name = "FORMAT")]
    pub logging_format: Option<String>,

    /// Accepted with a warning: logs are written unbuffered.
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    pub log_flush_frequency: Option<GoDuration>,

    // ---- ipvs-proxier's own flags (no kube-proxy equivalent; always applied). ----
    /// Read Services, EndpointSlices and Nodes from the YAML files in DIR instead of the API
    /// server (static mode, for labs and tests).
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,

    /// This node's IP; repeat (or comma-separate) for dual-stack. Default: discovered from the
    /// Node object, else the host.
    #[arg(long = "node-ip", value_name = "IP", value_delimiter = ',', action = ArgAction::Append)]
    pub node_ips: Vec<IpAddr>,

    /// Follow the API for externalTrafficPolicy/internalTrafficPolicy: Local with no local
    /// endpoint (no real servers), instead of upstream IPVS's fallback to cluster endpoints.
    #[arg(long, value_name = "BOOL", value_parser = parse_go_bool, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub strict_local_traffic_policy: Option<bool>,

    /// Which iptables to drive: auto (detect like iptables-wrapper), legacy or nft.
    #[arg(long, value_name = "BACKEND", value_enum, default_value_t = IptablesBackend::Auto)]
    pub iptables_backend: IptablesBackend,

    /// Longest time a removed TCP real server is kept at weight 0 while connections drain
    /// [default: 0s, no limit, as upstream].
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    pub max_drain_time: Option<GoDuration>,
}

/// `--iptables-backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum IptablesBackend {
    /// Pick the backend whose tables already hold rules (as iptables-wrapper does).
    #[default]
    Auto,
    Legacy,
    Nft,
}

/// Go's `strconv.ParseBool`, which pflag uses for `--flag=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid boolean {0:?} (use true or false)")]
pub struct BoolError(String);

pub fn parse_go_bool(s: &str) -> Result<bool, BoolError> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(BoolError(other.to_owned())),
    }
}

/// One `--feature-gates` item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureGateError {
    #[error("missing bool value for {0:?} (expected KEY=true or KEY=false)")]
    MissingValue(String),
    #[error("invalid value of {key}: {source}")]
    Value { key: String, source: BoolError },
}

pub fn parse_feature_gate(s: &str) -> Result<(String, bool), FeatureGateError> {
    let s = s.trim();
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| FeatureGateError::MissingValue(s.to_owned()))?;
    let key = key.trim().to_owned();
    let value = parse_go_bool(value.trim()).map_err(|source| FeatureGateError::Value {
        key: key.clone(),
        source,
    })?;
    Ok((key, value))
}
