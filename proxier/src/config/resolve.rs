//! Flags + file -> [`ProxierSettings`]: precedence, defaults, validation, warnings.
//!
//! Both sources are first brought to one shape, [`Raw`], together with the names their
//! settings go by ([`Names`]: flag names or field paths), so that one validation pass can
//! name whichever flag or field a bad value came from.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use netlink::ipvs::Scheduler;

use super::cli::Cli;
use super::duration::GoDuration;
use super::file::{self, KubeProxyConfiguration};
use super::{
    Action, ApiSettings, ConfigError, IpvsTimeouts, Problem, ProxierSettings, Source, Warning,
};
use crate::plan::{LocalDetector, LocalPolicyFallback, NodePortAddresses};

const DEFAULT_SYNC_PERIOD: GoDuration = GoDuration::from_secs(30);
const DEFAULT_CONFIG_SYNC_PERIOD: GoDuration = GoDuration::from_secs(15 * 60);
const DEFAULT_MASQUERADE_BIT: i32 = 14;
const DEFAULT_QPS: f32 = 5.0;
const DEFAULT_BURST: i32 = 10;
const HEALTHZ_PORT: u16 = 10256;
const METRICS_PORT: u16 = 10249;

/// Settings before defaulting and validation. `None` means "not given": the default applies.
/// A zero in the file is `None` too (v1alpha1 defaulting treats zero as unset), while a flag
/// explicitly set to zero is `Some(0)` and validated as such, as kube-proxy does.
#[derive(Debug, Default)]
struct Raw {
    mode: String,
    kubeconfig: String,
    qps: Option<f32>,
    burst: Option<i32>,
    hostname_override: String,
    bind_address: String,
    /// `Some("")` disables the server (flags only; an empty file field means the default).
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    /// The deprecated `--healthz-port` / `--metrics-port`.
    healthz_port: Option<i32>,
    metrics_port: Option<i32>,
    bind_address_hard_fail: bool,
    scheduler: String,
    strict_arp: bool,
    exclude_cidrs: Vec<String>,
    sync_period: Option<GoDuration>,
    min_sync_period: GoDuration,
    tcp_timeout: GoDuration,
    tcp_fin_timeout: GoDuration,
    udp_timeout: GoDuration,
    masquerade_all: bool,
    masquerade_bit: Option<i32>,
    cluster_cidr: String,
    detect_local_mode: String,
    bridge_interface: String,
    interface_name_prefix: String,
    node_port_addresses: Vec<String>,
    config_sync_period: Option<GoDuration>,
    oom_score_adj: Option<i32>,
    conntrack_counts: [Option<i32>; 2],
    conntrack_timeouts: [Option<GoDuration>; 4],
    feature_gates: BTreeMap<String, bool>,
    verbosity: u32,
    log_format: String,
}

/// What each setting is called in the source it came from.
struct Names {
    mode: &'static str,
    burst: &'static str,
    bind_address: &'static str,
    healthz_bind_address: &'static str,
    metrics_bind_address: &'static str,
    healthz_port: &'static str,
    metrics_port: &'static str,
    scheduler: &'static str,
    exclude_cidrs: &'static str,
    sync_period: &'static str,
    min_sync_period: &'static str,
    tcp_timeout: &'static str,
    tcp_fin_timeout: &'static str,
    udp_timeout: &'static str,
    masquerade_bit: &'static str,
    cluster_cidr: &'static str,
    detect_local_mode: &'static str,
    bridge_interface: &'static str,
    interface_name_prefix: &'static str,
    node_port_addresses: &'static str,
    config_sync_period: &'static str,
    oom_score_adj: &'static str,
    conntrack_counts: [&'static str; 2],
    conntrack_timeouts: [&'static str; 4],
    feature_gates: &'static str,
    log_format: &'static str,
    /// File lists name their elements (`ipvs.excludeCIDRs[1]`); a flag's list is one value.
    indexed: bool,
}

const FLAG_NAMES: Names = Names {
    mode: "--proxy-mode",
    burst: "--kube-api-burst",
    bind_address: "--bind-address",
    healthz_bind_address: "--healthz-bind-address",
    metrics_bind_address: "--metrics-bind-address",
    healthz_port: "--healthz-port",
    metrics_port: "--metrics-port",
    scheduler: "--ipvs-scheduler",
    exclude_cidrs: "--ipvs-exclude-cidrs",
    sync_period: "--ipvs-sync-period",
    min_sync_period: "--ipvs-min-sync-period",
    tcp_timeout: "--ipvs-tcp-timeout",
    tcp_fin_timeout: "--ipvs-tcpfin-timeout",
    udp_timeout: "--ipvs-udp-timeout",
    masquerade_bit: "--iptables-masquerade-bit",
    cluster_cidr: "--cluster-cidr",
    detect_local_mode: "--detect-local-mode",
    bridge_interface: "--pod-bridge-interface",
    interface_name_prefix: "--pod-interface-name-prefix",
    node_port_addresses: "--nodeport-addresses",
    config_sync_period: "--config-sync-period",
    oom_score_adj: "--oom-score-adj",
    conntrack_counts: ["--conntrack-max-per-core", "--conntrack-min"],
    conntrack_timeouts: [
        "--conntrack-tcp-timeout-established",
        "--conntrack-tcp-timeout-close-wait",
        "--conntrack-udp-timeout",
        "--conntrack-udp-timeout-stream",
    ],
    feature_gates: "--feature-gates",
    log_format: "--logging-format",
    indexed: false,
};

const FILE_NAMES: Names = Names {
    mode: "mode",
    burst: "clientConnection.burst",
    bind_address: "bindAddress",
    healthz_bind_address: "healthzBindAddress",
    metrics_bind_address: "metricsBindAddress",
    healthz_port: "healthzBindAddress",
    metrics_port: "metricsBindAddress",
    scheduler: "ipvs.scheduler",
    exclude_cidrs: "ipvs.excludeCIDRs",
    sync_period: "ipvs.syncPeriod",
    min_sync_period: "ipvs.minSyncPeriod",
    tcp_timeout: "ipvs.tcpTimeout",
    tcp_fin_timeout: "ipvs.tcpFinTimeout",
    udp_timeout: "ipvs.udpTimeout",
    masquerade_bit: "iptables.masqueradeBit",
    cluster_cidr: "clusterCIDR",
    detect_local_mode: "detectLocalMode",
    bridge_interface: "detectLocal.bridgeInterface",
    interface_name_prefix: "detectLocal.interfaceNamePrefix",
    node_port_addresses: "nodePortAddresses",
    config_sync_period: "configSyncPeriod",
    oom_score_adj: "oomScoreAdj",
    conntrack_counts: ["conntrack.maxPerCore", "conntrack.min"],
    conntrack_timeouts: [
        "conntrack.tcpEstablishedTimeout",
        "conntrack.tcpCloseWaitTimeout",
        "conntrack.udpTimeout",
        "conntrack.udpStreamTimeout",
    ],
    feature_gates: "featureGates",
    log_format: "logging.format",
    indexed: true,
};

const CONNTRACK_WARNING: &str =
    "accepted but not applied: ipvs-proxier leaves conntrack sysctls to the node";

fn invalid(setting: impl Into<String>, problem: Problem) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        problem,
    }
}

fn warn(warnings: &mut Vec<Warning>, setting: &str, message: impl Into<String>) {
    warnings.push(Warning {
        setting: setting.to_owned(),
        message: message.into(),
    });
}

fn nonzero(d: GoDuration) -> Option<GoDuration> {
    (!d.is_zero()).then_some(d)
}

/// Resolves `cli` and the text of its `--config` file (read by the caller) into settings.
/// `hostname` is asked only when neither `--hostname-override` nor `hostnameOverride` names
/// the node.
pub fn resolve(
    cli: &Cli,
    config_text: Option<&str>,
    hostname: impl FnOnce() -> Result<String, ConfigError>,
) -> Result<(ProxierSettings, Vec<Warning>), ConfigError> {
    let mut warnings = Vec::new();
    let (mut raw, names) = match config_text {
        Some(text) => {
            let parsed = file::parse(text)?;
            for path in &parsed.unknown_fields {
                warn(
                    &mut warnings,
                    path,
                    "unknown field, ignored (kube-proxy's lenient v1alpha1 decoding ignores it \
                     too): check its spelling",
                );
            }
            ignored_flags(cli, &mut warnings);
            (from_file(parsed.config, &mut warnings), &FILE_NAMES)
        }
        None => (from_flags(cli, &mut warnings), &FLAG_NAMES),
    };
    // Logging flags win over the file (kube-proxy's copyLogsFromFlags).
    let mut log_format_name = names.log_format;
    if let Some(v) = cli.verbosity {
        raw.verbosity = v;
    }
    if let Some(format) = &cli.logging_format {
        raw.log_format = format.clone();
        log_format_name = "--logging-format";
    }
    if cli.vmodule.as_deref().is_some_and(|v| !v.is_empty()) {
        warn(
            &mut warnings,
            "--vmodule",
            "accepted but not applied: per-file verbosity is not supported",
        );
    }
    if cli.log_flush_frequency.is_some() {
        warn(
            &mut warnings,
            "--log-flush-frequency",
            "accepted but not applied: logs are not buffered",
        );
    }
    let settings = validate(cli, raw, names, log_format_name, hostname, &mut warnings)?;
    Ok((settings, warnings))
}

/// Flags kube-proxy ignores when `--config` is given.
fn ignored_flags(cli: &Cli, warnings: &mut Vec<Warning>) {
    let given = [
        ("--feature-gates", !cli.feature_gates.is_empty()),
        ("--kubeconfig", cli.kubeconfig.is_some()),
        (
            "--kube-api-content-type",
            cli.kube_api_content_type.is_some(),
        ),
        ("--kube-api-burst", cli.kube_api_burst.is_some()),
        ("--kube-api-qps", cli.kube_api_qps.is_some()),
        ("--bind-address", cli.bind_address.is_some()),
        ("--healthz-bind-address", cli.healthz_bind_address.is_some()),
        ("--metrics-bind-address", cli.metrics_bind_address.is_some()),
        (
            "--bind-address-hard-fail",
            cli.bind_address_hard_fail.is_some(),
        ),
        ("--profiling", cli.profiling.is_some()),
        (
            "--show-hidden-metrics-for-version",
            cli.show_hidden_metrics_for_version.is_some(),
        ),
        ("--proxy-mode", cli.proxy_mode.is_some()),
        (
            "--iptables-masquerade-bit",
            cli.iptables_masquerade_bit.is_some(),
        ),
        ("--masquerade-all", cli.masquerade_all.is_some()),
        (
            "--iptables-localhost-nodeports",
            cli.iptables_localhost_nodeports.is_some(),
        ),
        ("--iptables-sync-period", cli.iptables_sync_period.is_some()),
        (
            "--iptables-min-sync-period",
            cli.iptables_min_sync_period.is_some(),
        ),
        ("--ipvs-sync-period", cli.ipvs_sync_period.is_some()),
        ("--ipvs-min-sync-period", cli.ipvs_min_sync_period.is_some()),
        ("--ipvs-scheduler", cli.ipvs_scheduler.is_some()),
        ("--ipvs-exclude-cidrs", cli.ipvs_exclude_cidrs.is_some()),
        ("--ipvs-strict-arp", cli.ipvs_strict_arp.is_some()),
        ("--ipvs-tcp-timeout", cli.ipvs_tcp_timeout.is_some()),
        ("--ipvs-tcpfin-timeout", cli.ipvs_tcpfin_timeout.is_some()),
        ("--ipvs-udp-timeout", cli.ipvs_udp_timeout.is_some()),
        ("--detect-local-mode", cli.detect_local_mode.is_some()),
        ("--pod-bridge-interface", cli.pod_bridge_interface.is_some()),
        (
            "--pod-interface-name-prefix",
            cli.pod_interface_name_prefix.is_some(),
        ),
        ("--cluster-cidr", cli.cluster_cidr.is_some()),
        ("--nodeport-addresses", cli.nodeport_addresses.is_some()),
        ("--oom-score-adj", cli.oom_score_adj.is_some()),
        (
            "--conntrack-max-per-core",
            cli.conntrack_max_per_core.is_some(),
        ),
        ("--conntrack-min", cli.conntrack_min.is_some()),
        (
            "--conntrack-tcp-timeout-established",
            cli.conntrack_tcp_timeout_established.is_some(),
        ),
        (
            "--conntrack-tcp-timeout-close-wait",
            cli.conntrack_tcp_timeout_close_wait.is_some(),
        ),
        (
            "--conntrack-tcp-be-liberal",
            cli.conntrack_tcp_be_liberal.is_some(),
        ),
        (
            "--conntrack-udp-timeout",
            cli.conntrack_udp_timeout.is_some(),
        ),
        (
            "--conntrack-udp-timeout-stream",
            cli.conntrack_udp_timeout_stream.is_some(),
        ),
        ("--config-sync-period", cli.config_sync_period.is_some()),
        ("--healthz-port", cli.healthz_port.is_some()),
        ("--metrics-port", cli.metrics_port.is_some()),
    ];
    for (flag, _) in given.iter().filter(|(_, set)| *set) {
        warn(
            warnings,
            flag,
            "ignored because --config is given (the file wins, as in kube-proxy)",
        );
    }
}

fn from_flags(cli: &Cli, warnings: &mut Vec<Warning>) -> Raw {
    // Flags that configure other proxy modes or node tuning ipvs-proxier does not do.
    if cli.iptables_sync_period.is_some() {
        warn(
            warnings,
            "--iptables-sync-period",
            "not used in IPVS mode (use --ipvs-sync-period)",
        );
    }
    if cli.iptables_min_sync_period.is_some() {
        warn(
            warnings,
            "--iptables-min-sync-period",
            "not used in IPVS mode (use --ipvs-min-sync-period)",
        );
    }
    if cli.iptables_localhost_nodeports == Some(true) {
        warn(
            warnings,
            "--iptables-localhost-nodeports",
            "not used in IPVS mode: NodePorts are never served on localhost",
        );
    }
    if cli.conntrack_tcp_be_liberal.is_some() {
        warn(warnings, "--conntrack-tcp-be-liberal", CONNTRACK_WARNING);
    }
    if cli.profiling == Some(true) {
        warn(
            warnings,
            "--profiling",
            "accepted but not applied: there is no /debug/pprof",
        );
    }
    if let Some(v) = cli
        .show_hidden_metrics_for_version
        .as_deref()
        .filter(|v| !v.is_empty())
    {
        warn(
            warnings,
            "--show-hidden-metrics-for-version",
            format!("accepted but not applied ({v}): ipvs-proxier has no hidden metrics"),
        );
    }
    for (port, name) in [
        (cli.healthz_port, "--healthz-port"),
        (cli.metrics_port, "--metrics-port"),
    ] {
        if port.is_some() {
            let instead = name.replace("-port", "-bind-address");
            warn(warnings, name, format!("deprecated, use {instead}"));
        }
    }
    Raw {
        mode: cli.proxy_mode.clone().unwrap_or_else(|| "ipvs".to_owned()),
        kubeconfig: cli
            .kubeconfig
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        qps: cli.kube_api_qps,
        burst: cli.kube_api_burst,
        hostname_override: String::new(),
        bind_address: cli.bind_address.clone().unwrap_or_default(),
        healthz_bind_address: cli.healthz_bind_address.clone(),
        metrics_bind_address: cli.metrics_bind_address.clone(),
        healthz_port: cli.healthz_port,
        metrics_port: cli.metrics_port,
        bind_address_hard_fail: cli.bind_address_hard_fail.unwrap_or(false),
        scheduler: cli.ipvs_scheduler.clone().unwrap_or_default(),
        strict_arp: cli.ipvs_strict_arp.unwrap_or(false),
        exclude_cidrs: cli.ipvs_exclude_cidrs.clone().unwrap_or_default(),
        sync_period: cli.ipvs_sync_period,
        min_sync_period: cli.ipvs_min_sync_period.unwrap_or_default(),
        tcp_timeout: cli.ipvs_tcp_timeout.unwrap_or_default(),
        tcp_fin_timeout: cli.ipvs_tcpfin_timeout.unwrap_or_default(),
        udp_timeout: cli.ipvs_udp_timeout.unwrap_or_default(),
        masquerade_all: cli.masquerade_all.unwrap_or(false),
        masquerade_bit: cli.iptables_masquerade_bit,
        cluster_cidr: cli.cluster_cidr.clone().unwrap_or_default(),
        detect_local_mode: cli.detect_local_mode.clone().unwrap_or_default(),
        bridge_interface: cli.pod_bridge_interface.clone().unwrap_or_default(),
        interface_name_prefix: cli.pod_interface_name_prefix.clone().unwrap_or_default(),
        node_port_addresses: cli.nodeport_addresses.clone().unwrap_or_default(),
        config_sync_period: cli.config_sync_period,
        oom_score_adj: cli.oom_score_adj,
        conntrack_counts: [cli.conntrack_max_per_core, cli.conntrack_min],
        conntrack_timeouts: [
            cli.conntrack_tcp_timeout_established,
            cli.conntrack_tcp_timeout_close_wait,
            cli.conntrack_udp_timeout,
            cli.conntrack_udp_timeout_stream,
        ],
        feature_gates: cli.feature_gates.iter().cloned().collect(),
        verbosity: 0,
        log_format: String::new(),
    }
}

fn from_file(f: KubeProxyConfiguration, warnings: &mut Vec<Warning>) -> Raw {
    file_warnings(&f, warnings);
    let nonempty = |s: String| (!s.is_empty()).then_some(s);
    Raw {
        mode: f.mode,
        kubeconfig: f.client_connection.kubeconfig,
        qps: (f.client_connection.qps != 0.0).then_some(f.client_connection.qps),
        burst: (f.client_connection.burst != 0).then_some(f.client_connection.burst),
        hostname_override: f.hostname_override,
        bind_address: f.bind_address,
        healthz_bind_address: nonempty(f.healthz_bind_address),
        metrics_bind_address: nonempty(f.metrics_bind_address),
        healthz_port: None,
        metrics_port: None,
        bind_address_hard_fail: f.bind_address_hard_fail,
        scheduler: f.ipvs.scheduler,
        strict_arp: f.ipvs.strict_arp,
        exclude_cidrs: f.ipvs.exclude_cidrs,
        sync_period: nonzero(f.ipvs.sync_period),
        min_sync_period: f.ipvs.min_sync_period,
        tcp_timeout: f.ipvs.tcp_timeout,
        tcp_fin_timeout: f.ipvs.tcp_fin_timeout,
        udp_timeout: f.ipvs.udp_timeout,
        masquerade_all: f.iptables.masquerade_all,
        masquerade_bit: f.iptables.masquerade_bit,
        cluster_cidr: f.cluster_cidr,
        detect_local_mode: f.detect_local_mode,
        bridge_interface: f.detect_local.bridge_interface,
        interface_name_prefix: f.detect_local.interface_name_prefix,
        node_port_addresses: f.node_port_addresses,
        config_sync_period: nonzero(f.config_sync_period),
        oom_score_adj: f.oom_score_adj,
        conntrack_counts: [f.conntrack.max_per_core, f.conntrack.min],
        conntrack_timeouts: [
            f.conntrack.tcp_established_timeout,
            f.conntrack.tcp_close_wait_timeout,
            nonzero(f.conntrack.udp_timeout),
            nonzero(f.conntrack.udp_stream_timeout),
        ],
        feature_gates: f.feature_gates,
        verbosity: f.logging.verbosity,
        log_format: f.logging.format,
    }
}

/// Warnings for file fields that configure other modes, other platforms or features
/// ipvs-proxier does not have. Only non-zero values warn, so kubeadm's all-zero ConfigMap
/// is quiet.
fn file_warnings(f: &KubeProxyConfiguration, warnings: &mut Vec<Warning>) {
    let not_ipvs = "not used in IPVS mode";
    let checks = [
        (
            "iptables.syncPeriod",
            !f.iptables.sync_period.is_zero(),
            "not used in IPVS mode (use ipvs.syncPeriod)",
        ),
        (
            "iptables.minSyncPeriod",
            !f.iptables.min_sync_period.is_zero(),
            "not used in IPVS mode (use ipvs.minSyncPeriod)",
        ),
        (
            "iptables.localhostNodePorts",
            f.iptables.localhost_node_ports == Some(true),
            "not used in IPVS mode: NodePorts are never served on localhost",
        ),
        (
            "iptables.snatNodeInternalIP",
            f.iptables.snat_node_internal_ip == Some(true),
            not_ipvs,
        ),
        ("nftables", f.nftables != Default::default(), not_ipvs),
        (
            "winkernel",
            f.winkernel != Default::default(),
            "Windows only, not used on Linux",
        ),
        (
            "windowsRunAsService",
            f.windows_run_as_service,
            "Windows only, not used on Linux",
        ),
        (
            "enableProfiling",
            f.enable_profiling,
            "accepted but not applied: there is no /debug/pprof",
        ),
        (
            "showHiddenMetricsForVersion",
            !f.show_hidden_metrics_for_version.is_empty(),
            "accepted but not applied: ipvs-proxier has no hidden metrics",
        ),
        (
            "portRange",
            !f.port_range.is_empty(),
            "unused since the userspace proxy was removed",
        ),
        (
            "conntrack.tcpBeLiberal",
            f.conntrack.tcp_be_liberal,
            CONNTRACK_WARNING,
        ),
        (
            "logging.flushFrequency",
            matches!(
                f.logging.flush_frequency,
                Some(super::file::FlushFrequency::Nanos(n)) if n != 0
            ) || matches!(
                f.logging.flush_frequency,
                Some(super::file::FlushFrequency::Text(d)) if !d.is_zero()
            ),
            "accepted but not applied: logs are not buffered",
        ),
        (
            "logging.vmodule",
            !f.logging.vmodule.is_empty(),
            "accepted but not applied: per-file verbosity is not supported",
        ),
        (
            "logging.options",
            f.logging.options.json.split_stream || f.logging.options.text.split_stream,
            "accepted but not applied: logs go to stderr",
        ),
        (
            "clientConnection.acceptContentTypes",
            !f.client_connection.accept_content_types.is_empty(),
            "accepted but not applied: the API client always speaks JSON",
        ),
        (
            "clientConnection.contentType",
            !f.client_connection.content_type.is_empty()
                && f.client_connection.content_type != "application/json"
                && f.client_connection.content_type != "application/vnd.kubernetes.protobuf",
            "accepted but not applied: the API client always speaks JSON",
        ),
    ];
    for (field, set, message) in checks {
        if set {
            warn(warnings, field, message);
        }
    }
}

fn validate(
    cli: &Cli,
    raw: Raw,
    names: &Names,
    log_format_name: &str,
    hostname: impl FnOnce() -> Result<String, ConfigError>,
    warnings: &mut Vec<Warning>,
) -> Result<ProxierSettings, ConfigError> {
    // Mode: kubeadm writes `mode: ""` unless told otherwise, and upstream reads that as
    // iptables. Refusing it would make the stock ConfigMap unusable, and running IPVS is the
    // point of deploying ipvs-proxier, so it is accepted with a warning.
    match raw.mode.as_str() {
        "ipvs" => {}
        "" => warn(
            warnings,
            names.mode,
            "empty (kube-proxy would run iptables); ipvs-proxier runs ipvs",
        ),
        other => return Err(invalid(names.mode, Problem::Mode(other.to_owned()))),
    }

    let node_name = node_name(cli, &raw.hostname_override, hostname)?;

    // bindAddress: an IP; 0.0.0.0 / :: mean "not set". Its family picks the server defaults.
    let bind_address = if raw.bind_address.is_empty() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        raw.bind_address
            .parse::<IpAddr>()
            .map_err(|_| invalid(names.bind_address, Problem::Ip(raw.bind_address.clone())))?
    };
    let (healthz_host, metrics_host): (IpAddr, IpAddr) = match bind_address {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED.into(), Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED.into(), Ipv6Addr::LOCALHOST.into()),
    };
    let healthz_bind_address = server_address(
        raw.healthz_bind_address.as_deref(),
        raw.healthz_port,
        SocketAddr::new(healthz_host, HEALTHZ_PORT),
        names.healthz_bind_address,
        names.healthz_port,
    )?;
    let metrics_bind_address = server_address(
        raw.metrics_bind_address.as_deref(),
        raw.metrics_port,
        SocketAddr::new(metrics_host, METRICS_PORT),
        names.metrics_bind_address,
        names.metrics_port,
    )?;
    let node_ips = if !cli.node_ips.is_empty() {
        cli.node_ips.clone()
    } else if bind_address.is_unspecified() {
        Vec::new()
    } else {
        vec![bind_address]
    };

    let scheduler = if raw.scheduler.is_empty() {
        Scheduler::rr()
    } else {
        Scheduler::new(&raw.scheduler)
            .map_err(|e| invalid(names.scheduler, Problem::Scheduler(e)))?
    };
    let exclude_cidrs = raw
        .exclude_cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            parse_cidr(c).ok_or_else(|| {
                invalid(
                    element(names, names.exclude_cidrs, i),
                    Problem::Cidr(c.clone()),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let sync_period = raw.sync_period.unwrap_or(DEFAULT_SYNC_PERIOD);
    let sync_period_std = positive(sync_period, names.sync_period)?;
    let min_sync_period = not_negative(raw.min_sync_period, names.min_sync_period)?;
    if raw.min_sync_period > sync_period {
        return Err(invalid(
            names.sync_period,
            Problem::BelowMinimum {
                value: sync_period,
                other: names.min_sync_period.to_owned(),
                min: raw.min_sync_period,
            },
        ));
    }
    let ipvs_timeouts = IpvsTimeouts {
        tcp: not_negative(raw.tcp_timeout, names.tcp_timeout)?,
        tcp_fin: not_negative(raw.tcp_fin_timeout, names.tcp_fin_timeout)?,
        udp: not_negative(raw.udp_timeout, names.udp_timeout)?,
    };

    let bit = raw.masquerade_bit.unwrap_or(DEFAULT_MASQUERADE_BIT);
    let masquerade_bit = u8::try_from(bit).ok().filter(|b| *b <= 31).ok_or_else(|| {
        invalid(
            names.masquerade_bit,
            Problem::OutOfRange {
                value: bit.into(),
                range: "0..=31",
            },
        )
    })?;

    let cluster_cidrs = cluster_cidrs(&raw.cluster_cidr, names.cluster_cidr)?;
    let local_detector = local_detector(&raw, names, &cluster_cidrs, warnings)?;
    let node_port_addresses = node_port_addresses(&raw.node_port_addresses, names, warnings)?;

    let config_sync_period = positive(
        raw.config_sync_period.unwrap_or(DEFAULT_CONFIG_SYNC_PERIOD),
        names.config_sync_period,
    )?;
    let burst = raw.burst.unwrap_or(DEFAULT_BURST);
    let burst = u32::try_from(burst).map_err(|_| {
        invalid(
            names.burst,
            Problem::OutOfRange {
                value: burst.into(),
                range: "0..=2147483647",
            },
        )
    })?;

    // Settings kube-proxy validates and applies but ipvs-proxier only validates.
    if let Some(adj) = raw.oom_score_adj {
        if !(-1000..=1000).contains(&adj) {
            return Err(invalid(
                names.oom_score_adj,
                Problem::OutOfRange {
                    value: adj.into(),
                    range: "-1000..=1000",
                },
            ));
        }
        warn(
            warnings,
            names.oom_score_adj,
            "accepted but not applied: set the pod's priority class instead",
        );
    }
    for (value, name) in raw.conntrack_counts.iter().zip(names.conntrack_counts) {
        if let Some(n) = *value {
            if n < 0 {
                return Err(invalid(
                    name,
                    Problem::OutOfRange {
                        value: n.into(),
                        range: "0..=2147483647",
                    },
                ));
            }
            warn(warnings, name, CONNTRACK_WARNING);
        }
    }
    for (value, name) in raw.conntrack_timeouts.iter().zip(names.conntrack_timeouts) {
        if let Some(d) = *value {
            not_negative(d, name)?;
            warn(warnings, name, CONNTRACK_WARNING);
        }
    }
    if !raw.feature_gates.is_empty() {
        let gates: Vec<String> = raw
            .feature_gates
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        warn(
            warnings,
            names.feature_gates,
            format!("accepted but not interpreted: {}", gates.join(",")),
        );
    }
    match raw.log_format.as_str() {
        "" | "text" => {}
        "json" => warn(
            warnings,
            log_format_name,
            "json is not supported; logging as text",
        ),
        other => {
            return Err(invalid(
                log_format_name,
                Problem::LogFormat(other.to_owned()),
            ));
        }
    }

    let action = if cli.cleanup == Some(true) {
        Action::Cleanup
    } else if cli.init_only == Some(true) {
        Action::InitOnly
    } else {
        Action::Run
    };
    let source = match &cli.manifests {
        Some(dir) => Source::Manifests(dir.clone()),
        None => Source::ApiServer(ApiSettings {
            kubeconfig: (!raw.kubeconfig.is_empty()).then(|| PathBuf::from(&raw.kubeconfig)),
            master: cli.master.clone().filter(|m| !m.is_empty()),
            qps: raw.qps.unwrap_or(DEFAULT_QPS),
            burst,
            config_sync_period,
        }),
    };
    let local_policy_fallback = if cli.strict_local_traffic_policy == Some(true) {
        LocalPolicyFallback::Strict
    } else {
        LocalPolicyFallback::ClusterEndpoints
    };
    let max_drain_time = match cli.max_drain_time {
        None => None,
        Some(d) => Some(not_negative(d, "--max-drain-time")?).filter(|d| !d.is_zero()),
    };

    Ok(ProxierSettings {
        action,
        node_name,
        source,
        node_ips,
        scheduler,
        strict_arp: raw.strict_arp,
        exclude_cidrs,
        sync_period: sync_period_std,
        min_sync_period,
        ipvs_timeouts,
        masquerade_all: raw.masquerade_all,
        masquerade_bit,
        cluster_cidrs,
        local_detector,
        node_port_addresses,
        local_policy_fallback,
        healthz_bind_address,
        metrics_bind_address,
        bind_address_hard_fail: raw.bind_address_hard_fail,
        iptables_backend: cli.iptables_backend,
        max_drain_time,
        verbosity: raw.verbosity,
        config_file: cli.config.clone(),
    })
}

/// `name[i]` for file lists, `name` for flags.
fn element(names: &Names, name: &str, index: usize) -> String {
    if names.indexed {
        format!("{name}[{index}]")
    } else {
        name.to_owned()
    }
}

/// kube-proxy's `GetHostname`: the override (flag first, then file) or the host name, trimmed
/// and lower-cased; an override that is all blanks is an error.
fn node_name(
    cli: &Cli,
    file_override: &str,
    hostname: impl FnOnce() -> Result<String, ConfigError>,
) -> Result<String, ConfigError> {
    if let Some(flag) = cli.hostname_override.as_deref().filter(|f| !f.is_empty()) {
        let name = flag.trim();
        if name.is_empty() {
            return Err(invalid("--hostname-override", Problem::Empty));
        }
        return Ok(name.to_lowercase());
    }
    let from_file = file_override.trim();
    if !from_file.is_empty() {
        return Ok(from_file.to_lowercase());
    }
    let host = hostname()?;
    let host = host.trim();
    if host.is_empty() {
        return Err(ConfigError::Hostname("the host name is empty".to_owned()));
    }
    Ok(host.to_lowercase())
}

/// Health/metrics address: `IP:port`, or a bare IP that gets the default port (kube-proxy's
/// `AppendPortIfNeeded`). Not given: the default; given empty (flags only) or port 0 via the
/// deprecated port flag: disabled.
fn server_address(
    given: Option<&str>,
    deprecated_port: Option<i32>,
    default: SocketAddr,
    name: &str,
    port_name: &str,
) -> Result<Option<SocketAddr>, ConfigError> {
    let port = match deprecated_port {
        None => default.port(),
        Some(0) => return Ok(None),
        Some(p) => u16::try_from(p).map_err(|_| {
            invalid(
                port_name,
                Problem::OutOfRange {
                    value: p.into(),
                    range: "0..=65535",
                },
            )
        })?,
    };
    let Some(text) = given else {
        return Ok(Some(default));
    };
    if text.is_empty() {
        return Ok(None);
    }
    let bad = || invalid(name, Problem::HostPort(text.to_owned()));
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Some(SocketAddr::new(ip, port)));
    }
    let addr = text.parse::<SocketAddr>().map_err(|_| bad())?;
    if addr.port() == 0 {
        return Err(bad());
    }
    Ok(Some(addr))
}

fn positive(d: GoDuration, name: &str) -> Result<Duration, ConfigError> {
    match d.to_std() {
        Some(std) if !std.is_zero() => Ok(std),
        _ => Err(invalid(name, Problem::NotPositive(d))),
    }
}

fn not_negative(d: GoDuration, name: &str) -> Result<Duration, ConfigError> {
    d.to_std()
        .ok_or_else(|| invalid(name, Problem::Negative(d)))
}

/// Go's `net.ParseCIDR`: address/prefix, host bits allowed (and dropped here).
fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>().ok().map(|n| n.trunc())
}

/// `clusterCIDR`: empty, one CIDR, or a comma-separated pair of different families.
fn cluster_cidrs(text: &str, name: &str) -> Result<Vec<IpNet>, ConfigError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let cidrs = text
        .split(',')
        .map(|c| parse_cidr(c).ok_or_else(|| invalid(name, Problem::Cidr(c.to_owned()))))
        .collect::<Result<Vec<_>, _>>()?;
    let dual = |a: &IpNet, b: &IpNet| {
        matches!(
            (a, b),
            (IpNet::V4(_), IpNet::V6(_)) | (IpNet::V6(_), IpNet::V4(_))
        )
    };
    match cidrs.as_slice() {
        [_] => Ok(cidrs),
        [a, b] if dual(a, b) => Ok(cidrs),
        _ => Err(invalid(name, Problem::ClusterCidrs(text.to_owned()))),
    }
}

fn local_detector(
    raw: &Raw,
    names: &Names,
    cluster_cidrs: &[IpNet],
    warnings: &mut Vec<Warning>,
) -> Result<LocalDetector, ConfigError> {
    match raw.detect_local_mode.as_str() {
        "" | "ClusterCIDR" => {
            if cluster_cidrs.is_empty() {
                warn(
                    warnings,
                    names.cluster_cidr,
                    "empty: with detect-local mode ClusterCIDR no traffic is recognised as \
                     coming from pods (as in kube-proxy)",
                );
            }
            Ok(LocalDetector::ClusterCidr)
        }
        "NodeCIDR" => Ok(LocalDetector::NodeCidr),
        "BridgeInterface" => interface(
            &raw.bridge_interface,
            names.bridge_interface,
            "BridgeInterface",
        )
        .map(LocalDetector::BridgeInterface),
        "InterfaceNamePrefix" => interface(
            &raw.interface_name_prefix,
            names.interface_name_prefix,
            "InterfaceNamePrefix",
        )
        .map(LocalDetector::InterfaceNamePrefix),
        other => Err(invalid(
            names.detect_local_mode,
            Problem::DetectLocalMode(other.to_owned()),
        )),
    }
}

/// A Linux interface name (or prefix): 1..=15 bytes, no '/', no whitespace, not "." or "..".
fn interface(name: &str, setting: &str, mode: &'static str) -> Result<String, ConfigError> {
    if name.is_empty() {
        return Err(invalid(setting, Problem::RequiredBy(mode)));
    }
    let ok = name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(name.to_owned())
    } else {
        Err(invalid(setting, Problem::Interface(name.to_owned())))
    }
}

/// `nodePortAddresses`: empty (all node IPs), `primary` alone, or CIDRs; the newer keywords
/// `all` and `localhost` expand to their CIDRs.
fn node_port_addresses(
    items: &[String],
    names: &Names,
    warnings: &mut Vec<Warning>,
) -> Result<NodePortAddresses, ConfigError> {
    if items.is_empty() {
        return Ok(NodePortAddresses::All);
    }
    if let Some(i) = items.iter().position(|a| a == "primary") {
        if items.len() != 1 {
            return Err(invalid(
                element(names, names.node_port_addresses, i),
                Problem::PrimaryWithOthers,
            ));
        }
        return Ok(NodePortAddresses::Primary);
    }
    let mut cidrs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            "all" => cidrs.extend(["0.0.0.0/0", "::/0"].into_iter().filter_map(parse_cidr)),
            "localhost" => {
                warn(
                    warnings,
                    &element(names, names.node_port_addresses, i),
                    "IPVS never serves NodePorts on loopback addresses",
                );
                cidrs.extend(
                    ["127.0.0.0/8", "::1/128"]
                        .into_iter()
                        .filter_map(parse_cidr),
                );
            }
            text => cidrs.push(parse_cidr(text).ok_or_else(|| {
                invalid(
                    element(names, names.node_port_addresses, i),
                    Problem::Cidr(text.to_owned()),
                )
            })?),
        }
    }
    Ok(NodePortAddresses::Cidrs(cidrs))
}
