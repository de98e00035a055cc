//! Flags, the kubeadm ConfigMap, precedence, defaults, every validation error and the
//! warnings for settings IPVS does not use.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;
use netlink::AddressFamily;
use netlink::ipvs::Scheduler;
use pretty_assertions::assert_eq;

use super::*;

const KUBEADM_CONFIGMAP: &str =
    include_str!("../../tests/testdata/config/kubeadm-kube-proxy-configmap.yaml");
const TUNED: &str = include_str!("../../tests/testdata/config/tuned-dual-stack.yaml");

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("ipvs-proxier").chain(args.iter().copied())).unwrap()
}

fn host() -> Result<String, ConfigError> {
    Ok("Host-A\n".to_owned())
}

fn run(args: &[&str], file: Option<&str>) -> (ProxierSettings, Vec<Warning>) {
    resolve(&cli(args), file, host).unwrap()
}

fn error(args: &[&str], file: Option<&str>) -> String {
    resolve(&cli(args), file, host).unwrap_err().to_string()
}

fn warned(warnings: &[Warning]) -> Vec<&str> {
    warnings.iter().map(|w| w.setting.as_str()).collect()
}

fn kubeadm_config_conf() -> String {
    let map: serde_yaml::Value = serde_yaml::from_str(KUBEADM_CONFIGMAP).unwrap();
    map["data"]["config.conf"].as_str().unwrap().to_owned()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn sock(s: &str) -> Option<SocketAddr> {
    Some(s.parse().unwrap())
}

/// A minimal valid file plus `extra` top-level YAML.
fn file_with(extra: &str) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: \
         ipvs\n{extra}"
    )
}

// ---------------------------------------------------------------- the kubeadm ConfigMap

#[test]
fn kubeadm_configmap_parses_with_upstream_defaults_and_no_warnings() {
    let text = kubeadm_config_conf();
    let (s, warnings) = run(
        &[
            "--config=/var/lib/kube-proxy/config.conf",
            "--hostname-override=Node-1",
        ],
        Some(&text),
    );
    assert_eq!(warnings, vec![]);
    assert_eq!(
        s,
        ProxierSettings {
            action: Action::Run,
            node_name: "node-1".to_owned(),
            source: Source::ApiServer(ApiSettings {
                kubeconfig: Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf")),
                master: None,
                qps: 5.0,
                burst: 10,
                config_sync_period: Duration::from_secs(15 * 60),
            }),
            node_ips: vec![],
            scheduler: Scheduler::rr(),
            strict_arp: true,
            exclude_cidrs: vec![],
            sync_period: Duration::from_secs(30),
            min_sync_period: Duration::ZERO,
            ipvs_timeouts: IpvsTimeouts::default(),
            masquerade_all: false,
            masquerade_bit: 14,
            cluster_cidrs: vec![net("10.244.0.0/16")],
            local_detector: LocalDetector::ClusterCidr,
            node_port_addresses: NodePortAddresses::All,
            local_policy_fallback: LocalPolicyFallback::ClusterEndpoints,
            healthz_bind_address: sock("0.0.0.0:10256"),
            metrics_bind_address: sock("127.0.0.1:10249"),
            bind_address_hard_fail: false,
            iptables_backend: IptablesBackend::Auto,
            max_drain_time: None,
            verbosity: 0,
            config_file: Some(PathBuf::from("/var/lib/kube-proxy/config.conf")),
        }
    );
    assert!(!s.ipvs_timeouts.any_set());
}

#[test]
fn kubeadm_default_mode_is_accepted_with_a_warning() {
    let text = kubeadm_config_conf().replace("mode: ipvs", "mode: \"\"");
    let (_, warnings) = run(&["--config=c"], Some(&text));
    assert_eq!(warned(&warnings), vec!["mode"]);
    assert!(
        warnings[0]
            .message
            .contains("kube-proxy would run iptables")
    );
}

#[test]
fn node_name_falls_back_to_the_host_name_trimmed_and_lower_cased() {
    let (s, _) = run(&["--config=c"], Some(&kubeadm_config_conf()));
    assert_eq!(s.node_name, "host-a");
}

#[test]
fn plan_config_carries_what_the_planner_needs() {
    let (s, _) = run(&["--config=c", "--hostname-override=n1"], Some(TUNED));
    let plan = s.plan_config(vec![AddressFamily::Inet, AddressFamily::Inet6], true);
    assert_eq!(
        plan,
        PlanConfig {
            node_name: "n1".to_owned(),
            families: vec![AddressFamily::Inet, AddressFamily::Inet6],
            scheduler: Scheduler::new("lc").unwrap(),
            masquerade_all: true,
            masquerade_bit: 15,
            local_detector: LocalDetector::InterfaceNamePrefix("cali".to_owned()),
            cluster_cidrs: vec![net("10.244.0.0/16"), net("fd00:10:244::/56")],
            local_policy_fallback: LocalPolicyFallback::ClusterEndpoints,
            node_port_addresses: NodePortAddresses::Cidrs(vec![net("10.0.0.0/8"), net("fd00::/8")]),
            random_fully: true,
            service_proxy_name: None,
        }
    );
    assert_eq!(plan.masquerade_mark(), 0x8000);
}

#[test]
fn tuned_file_values_and_its_warnings() {
    let (s, warnings) = run(&["--config=c"], Some(TUNED));
    assert_eq!(s.node_name, "worker-7");
    assert_eq!(s.sync_period, Duration::from_secs(60));
    assert_eq!(s.min_sync_period, Duration::from_secs(2));
    assert_eq!(
        s.ipvs_timeouts,
        IpvsTimeouts {
            tcp: Duration::from_secs(900),
            tcp_fin: Duration::from_secs(30),
            udp: Duration::from_secs(300),
        }
    );
    assert_eq!(
        s.exclude_cidrs,
        vec![net("192.0.2.0/24"), net("2001:db8::/32")]
    );
    assert_eq!(s.metrics_bind_address, sock("0.0.0.0:10249"));
    assert_eq!(
        s.source,
        Source::ApiServer(ApiSettings {
            kubeconfig: Some(PathBuf::from("/etc/kubernetes/kube-proxy.kubeconfig")),
            master: None,
            qps: 20.0,
            burst: 40,
            config_sync_period: Duration::from_secs(900),
        })
    );
    assert_eq!(
        warned(&warnings),
        vec![
            "iptables.syncPeriod",
            "nftables",
            "enableProfiling",
            "conntrack.tcpBeLiberal",
            "conntrack.maxPerCore",
            "featureGates",
        ]
    );
    assert_eq!(
        warnings[5].to_string(),
        "featureGates: accepted but not interpreted: SomeAlphaGate=true"
    );
}

// ---------------------------------------------------------------- flags

#[test]
fn defaults_without_flags_or_file() {
    let (s, warnings) = run(&[], None);
    assert_eq!(warned(&warnings), vec!["--cluster-cidr"]);
    assert!(
        warnings[0]
            .message
            .contains("no traffic is recognised as coming from pods")
    );
    assert_eq!(s.node_name, "host-a");
    assert_eq!(s.scheduler, Scheduler::rr());
    assert_eq!(s.sync_period, Duration::from_secs(30));
    assert_eq!(s.min_sync_period, Duration::ZERO);
    assert_eq!(s.masquerade_bit, 14);
    assert_eq!(s.healthz_bind_address, sock("0.0.0.0:10256"));
    assert_eq!(s.metrics_bind_address, sock("127.0.0.1:10249"));
    assert_eq!(s.local_detector, LocalDetector::ClusterCidr);
    assert_eq!(s.cluster_cidrs, vec![]);
    assert_eq!(s.node_port_addresses, NodePortAddresses::All);
    assert_eq!(
        s.source,
        Source::ApiServer(ApiSettings {
            kubeconfig: None,
            master: None,
            qps: 5.0,
            burst: 10,
            config_sync_period: Duration::from_secs(900),
        })
    );
    assert_eq!(s.action, Action::Run);
    assert_eq!(s.config_file, None);
}

#[test]
fn every_ipvs_relevant_flag() {
    let (s, warnings) = run(
        &[
            "--kubeconfig=/etc/kp.conf",
            "--master",
            "https://10.0.0.1:6443",
            "--kube-api-qps=50",
            "--kube-api-burst=100",
            "--kube-api-content-type=application/json",
            "--hostname-override=  Node-9 ",
            "--bind-address=10.0.0.9",
            "--healthz-bind-address=10.0.0.9:12345",
            "--metrics-bind-address=[::1]:9999",
            "--bind-address-hard-fail",
            "--proxy-mode=ipvs",
            "--iptables-masquerade-bit=3",
            "--masquerade-all=true",
            "--ipvs-sync-period=1m30s",
            "--ipvs-min-sync-period=500ms",
            "--ipvs-scheduler=mh",
            "--ipvs-exclude-cidrs=192.0.2.0/24,198.51.100.0/24",
            "--ipvs-exclude-cidrs",
            "2001:db8::/32",
            "--ipvs-strict-arp",
            "--ipvs-tcp-timeout=1h",
            "--ipvs-tcpfin-timeout=0",
            "--ipvs-udp-timeout=45s",
            "--detect-local-mode=BridgeInterface",
            "--pod-bridge-interface=cbr0",
            "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
            "--nodeport-addresses=primary",
            "--config-sync-period=5m",
            "-v",
            "4",
            "--logging-format=text",
            "--manifests=/srv/objects",
            "--node-ip=10.0.0.9",
            "--node-ip=fd00::9",
            "--strict-local-traffic-policy",
            "--iptables-backend=nft",
            "--max-drain-time=10m",
            "--cleanup=false",
            "--init-only",
        ],
        None,
    );
    assert_eq!(warnings, vec![]);
    assert_eq!(
        s,
        ProxierSettings {
            action: Action::InitOnly,
            node_name: "node-9".to_owned(),
            source: Source::Manifests(PathBuf::from("/srv/objects")),
            node_ips: vec![
                "10.0.0.9".parse::<IpAddr>().unwrap(),
                "fd00::9".parse().unwrap()
            ],
            scheduler: Scheduler::new("mh").unwrap(),
            strict_arp: true,
            exclude_cidrs: vec![
                net("192.0.2.0/24"),
                net("198.51.100.0/24"),
                net("2001:db8::/32")
            ],
            sync_period: Duration::from_secs(90),
            min_sync_period: Duration::from_millis(500),
            ipvs_timeouts: IpvsTimeouts {
                tcp: Duration::from_secs(3600),
                tcp_fin: Duration::ZERO,
                udp: Duration::from_secs(45),
            },
            masquerade_all: true,
            masquerade_bit: 3,
            cluster_cidrs: vec![net("10.244.0.0/16"), net("fd00:10:244::/56")],
            local_detector: LocalDetector::BridgeInterface("cbr0".to_owned()),
            node_port_addresses: NodePortAddresses::Primary,
            local_policy_fallback: LocalPolicyFallback::Strict,
            healthz_bind_address: sock("10.0.0.9:12345"),
            metrics_bind_address: sock("[::1]:9999"),
            bind_address_hard_fail: true,
            iptables_backend: IptablesBackend::Nft,
            max_drain_time: Some(Duration::from_secs(600)),
            verbosity: 4,
            config_file: None,
        }
    );
}

#[test]
fn api_settings_from_flags() {
    let (s, _) = run(
        &[
            "--kubeconfig=/etc/kp.conf",
            "--master=https://10.0.0.1:6443",
            "--kube-api-qps=50",
            "--kube-api-burst=100",
            "--config-sync-period=5m",
        ],
        None,
    );
    assert_eq!(
        s.source,
        Source::ApiServer(ApiSettings {
            kubeconfig: Some(PathBuf::from("/etc/kp.conf")),
            master: Some("https://10.0.0.1:6443".to_owned()),
            qps: 50.0,
            burst: 100,
            config_sync_period: Duration::from_secs(300),
        })
    );
}

#[test]
fn interface_prefix_node_cidr_and_cleanup() {
    let (s, _) = run(
        &[
            "--detect-local-mode=InterfaceNamePrefix",
            "--pod-interface-name-prefix=veth",
            "--cleanup",
        ],
        None,
    );
    assert_eq!(
        s.local_detector,
        LocalDetector::InterfaceNamePrefix("veth".to_owned())
    );
    assert_eq!(s.action, Action::Cleanup);
    let (s, _) = run(&["--detect-local-mode=NodeCIDR"], None);
    assert_eq!(s.local_detector, LocalDetector::NodeCidr);
}

#[test]
fn go_bool_flag_syntax() {
    for (arg, want) in [
        ("--ipvs-strict-arp", true),
        ("--ipvs-strict-arp=true", true),
        ("--ipvs-strict-arp=1", true),
        ("--ipvs-strict-arp=T", true),
        ("--ipvs-strict-arp=false", false),
        ("--ipvs-strict-arp=0", false),
        ("--ipvs-strict-arp=False", false),
    ] {
        assert_eq!(run(&[arg], None).0.strict_arp, want, "{arg}");
    }
    let e = Cli::try_parse_from(["ipvs-proxier", "--ipvs-strict-arp=yes"]).unwrap_err();
    assert!(e.to_string().contains("--ipvs-strict-arp"), "{e}");
}

#[test]
fn bad_flag_syntax_is_a_clap_error_naming_the_flag() {
    for (args, flag) in [
        (vec!["--ipvs-sync-period=30"], "--ipvs-sync-period"),
        (vec!["--ipvs-udp-timeout=5d"], "--ipvs-udp-timeout"),
        (
            vec!["--iptables-masquerade-bit=x"],
            "--iptables-masquerade-bit",
        ),
        (vec!["--node-ip=10.0.0.300"], "--node-ip"),
        (vec!["--iptables-backend=ebpf"], "--iptables-backend"),
        (vec!["--feature-gates=Foo"], "--feature-gates"),
        (vec!["--no-such-flag"], "--no-such-flag"),
    ] {
        let e = Cli::try_parse_from(std::iter::once("ipvs-proxier").chain(args.clone()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(flag), "{args:?}: {e}");
    }
}

#[test]
fn non_ipvs_flags_are_accepted_with_warnings() {
    let (_, warnings) = run(
        &[
            "--cluster-cidr=10.0.0.0/16",
            "--iptables-sync-period=10s",
            "--iptables-min-sync-period=1s",
            "--iptables-localhost-nodeports=true",
            "--conntrack-max-per-core=0",
            "--conntrack-min=1000",
            "--conntrack-tcp-timeout-established=24h",
            "--conntrack-tcp-timeout-close-wait=1h",
            "--conntrack-tcp-be-liberal",
            "--conntrack-udp-timeout=30s",
            "--conntrack-udp-timeout-stream=2m",
            "--oom-score-adj=-999",
            "--profiling",
            "--show-hidden-metrics-for-version=1.33",
            "--feature-gates=A=true,B=false",
            "--feature-gates=C=true",
            "--vmodule=proxier*=5",
            "--log-flush-frequency=5s",
            "--logging-format=json",
            "--healthz-port=10256",
        ],
        None,
    );
    assert_eq!(
        warned(&warnings),
        vec![
            "--iptables-sync-period",
            "--iptables-min-sync-period",
            "--iptables-localhost-nodeports",
            "--conntrack-tcp-be-liberal",
            "--profiling",
            "--show-hidden-metrics-for-version",
            "--healthz-port",
            "--vmodule",
            "--log-flush-frequency",
            "--oom-score-adj",
            "--conntrack-max-per-core",
            "--conntrack-min",
            "--conntrack-tcp-timeout-established",
            "--conntrack-tcp-timeout-close-wait",
            "--conntrack-udp-timeout",
            "--conntrack-udp-timeout-stream",
            "--feature-gates",
            "--logging-format",
        ]
    );
    let gates = warnings
        .iter()
        .find(|w| w.setting == "--feature-gates")
        .unwrap();
    assert_eq!(
        gates.message,
        "accepted but not interpreted: A=true,B=false,C=true"
    );
}

#[test]
fn server_addresses_follow_kube_proxy_rules() {
    // A bare IP gets the default port.
    let (s, _) = run(
        &[
            "--healthz-bind-address=10.1.1.1",
            "--metrics-bind-address=::",
        ],
        None,
    );
    assert_eq!(s.healthz_bind_address, sock("10.1.1.1:10256"));
    assert_eq!(s.metrics_bind_address, sock("[::]:10249"));
    // Empty disables (flags only).
    let (s, _) = run(
        &["--healthz-bind-address=", "--metrics-bind-address="],
        None,
    );
    assert_eq!(
        (s.healthz_bind_address, s.metrics_bind_address),
        (None, None)
    );
    // The deprecated port flags: 0 disables, otherwise they only complete a bare IP.
    let (s, _) = run(
        &[
            "--healthz-port=0",
            "--metrics-bind-address=10.1.1.1",
            "--metrics-port=9100",
        ],
        None,
    );
    assert_eq!(s.healthz_bind_address, None);
    assert_eq!(s.metrics_bind_address, sock("10.1.1.1:9100"));
    // An IPv6 bindAddress moves the defaults to IPv6 and becomes the node IP.
    let (s, _) = run(&["--bind-address=fd00::5"], None);
    assert_eq!(s.healthz_bind_address, sock("[::]:10256"));
    assert_eq!(s.metrics_bind_address, sock("[::1]:10249"));
    assert_eq!(s.node_ips, vec!["fd00::5".parse::<IpAddr>().unwrap()]);
    // In the file an empty address means the default, and a bare IP gets the default port.
    let (s, _) = run(
        &["--config=c"],
        Some(&file_with(
            "healthzBindAddress: \"\"\nmetricsBindAddress: 0.0.0.0\n",
        )),
    );
    assert_eq!(s.healthz_bind_address, sock("0.0.0.0:10256"));
    assert_eq!(s.metrics_bind_address, sock("0.0.0.0:10249"));
}

#[test]
fn node_port_address_keywords() {
    let (s, warnings) = run(
        &["--nodeport-addresses=all", "--cluster-cidr=10.0.0.0/16"],
        None,
    );
    assert_eq!(
        s.node_port_addresses,
        NodePortAddresses::Cidrs(vec![net("0.0.0.0/0"), net("::/0")])
    );
    assert_eq!(warnings, vec![]);
    let (s, warnings) = run(
        &["--config=c"],
        Some(&file_with(
            "clusterCIDR: 10.0.0.0/16\nnodePortAddresses: [10.0.0.0/8, localhost]\n",
        )),
    );
    assert_eq!(
        s.node_port_addresses,
        NodePortAddresses::Cidrs(vec![net("10.0.0.0/8"), net("127.0.0.0/8"), net("::1/128")])
    );
    assert_eq!(warned(&warnings), vec!["nodePortAddresses[1]"]);
    let (s, _) = run(
        &["--config=c"],
        Some(&file_with("nodePortAddresses: [primary]\n")),
    );
    assert_eq!(s.node_port_addresses, NodePortAddresses::Primary);
}

// ---------------------------------------------------------------- precedence

#[test]
fn with_config_the_file_wins_and_given_flags_are_reported() {
    let text = file_with("ipvs:\n  scheduler: wrr\n");
    let (s, warnings) = run(
        &[
            "--config=/etc/kp.yaml",
            "--ipvs-scheduler=sh",
            "--ipvs-sync-period=5s",
            "--kubeconfig=/ignored",
            "--cluster-cidr=10.0.0.0/8",
            "--proxy-mode=iptables",
            "--iptables-masquerade-bit=99",
        ],
        Some(&text),
    );
    assert_eq!(s.scheduler, Scheduler::new("wrr").unwrap());
    assert_eq!(s.sync_period, Duration::from_secs(30));
    assert_eq!(s.cluster_cidrs, vec![]);
    assert_eq!(s.masquerade_bit, 14);
    match &s.source {
        Source::ApiServer(api) => assert_eq!(api.kubeconfig, None),
        other => panic!("{other:?}"),
    }
    let ignored: Vec<&str> = warnings
        .iter()
        .filter(|w| w.message.contains("--config is given"))
        .map(|w| w.setting.as_str())
        .collect();
    assert_eq!(
        ignored,
        vec![
            "--kubeconfig",
            "--proxy-mode",
            "--iptables-masquerade-bit",
            "--ipvs-sync-period",
            "--ipvs-scheduler",
            "--cluster-cidr",
        ]
    );
}

#[test]
fn with_config_these_flags_still_win() {
    let text = file_with(
        "clusterCIDR: 10.0.0.0/16\nhostnameOverride: from-file\nlogging:\n  verbosity: 2\nclientConnection:\n  kubeconfig: \
         /k\n",
    );
    let (s, warnings) = run(
        &[
            "--config=c",
            "--hostname-override=From-Flag",
            "-v=6",
            "--master=https://api:6443",
            "--node-ip=10.9.9.9",
            "--strict-local-traffic-policy=true",
            "--iptables-backend=legacy",
            "--max-drain-time=1h",
            "--cleanup",
        ],
        Some(&text),
    );
    assert_eq!(warnings, vec![]);
    assert_eq!(s.node_name, "from-flag");
    assert_eq!(s.verbosity, 6);
    assert_eq!(
        s.source,
        Source::ApiServer(ApiSettings {
            kubeconfig: Some(PathBuf::from("/k")),
            master: Some("https://api:6443".to_owned()),
            qps: 5.0,
            burst: 10,
            config_sync_period: Duration::from_secs(900),
        })
    );
    assert_eq!(s.node_ips, vec!["10.9.9.9".parse::<IpAddr>().unwrap()]);
    assert_eq!(s.local_policy_fallback, LocalPolicyFallback::Strict);
    assert_eq!(s.iptables_backend, IptablesBackend::Legacy);
    assert_eq!(s.max_drain_time, Some(Duration::from_secs(3600)));
    assert_eq!(s.action, Action::Cleanup);
    // Without the flags, the file's values stand.
    let (s, _) = run(&["--config=c"], Some(&text));
    assert_eq!((s.node_name.as_str(), s.verbosity), ("from-file", 2));
}

#[test]
fn zero_in_the_file_means_default_but_a_zero_flag_is_an_error() {
    let (s, _) = run(
        &["--config=c"],
        Some(&file_with(
            "ipvs:\n  syncPeriod: 0s\nconfigSyncPeriod: 0s\n",
        )),
    );
    assert_eq!(s.sync_period, Duration::from_secs(30));
    assert_eq!(
        error(&["--ipvs-sync-period=0"], None),
        "--ipvs-sync-period: 0s must be greater than 0"
    );
}

// ---------------------------------------------------------------- validation errors

#[test]
fn every_flag_validation_error_names_the_flag() {
    for (args, want) in [
        (
            vec!["--iptables-masquerade-bit=40"],
            "--iptables-masquerade-bit: 40 is out of range 0..=31",
        ),
        (
            vec!["--iptables-masquerade-bit=-1"],
            "--iptables-masquerade-bit: -1 is out of range 0..=31",
        ),
        (
            vec!["--proxy-mode=iptables"],
            "--proxy-mode: \"iptables\" is not supported: ipvs-proxier only implements the \
             \"ipvs\" proxy mode",
        ),
        (
            vec!["--ipvs-exclude-cidrs=10.0.0.0/8,10.0.0.0/33"],
            "--ipvs-exclude-cidrs: invalid CIDR \"10.0.0.0/33\"",
        ),
        (
            vec!["--ipvs-scheduler=round-robin"],
            "--ipvs-scheduler: invalid IPVS name \"round-robin\": expected 1 to 15 ASCII \
             letters, digits or '_'",
        ),
        (
            vec!["--ipvs-sync-period=-1s"],
            "--ipvs-sync-period: -1s must be greater than 0",
        ),
        (
            vec!["--ipvs-min-sync-period=-1s"],
            "--ipvs-min-sync-period: -1s must be greater than or equal to 0",
        ),
        (
            vec!["--ipvs-sync-period=1s", "--ipvs-min-sync-period=2s"],
            "--ipvs-sync-period: 1s must be greater than or equal to --ipvs-min-sync-period (2s)",
        ),
        (
            vec!["--ipvs-tcp-timeout=-5s"],
            "--ipvs-tcp-timeout: -5s must be greater than or equal to 0",
        ),
        (
            vec!["--ipvs-tcpfin-timeout=-5s"],
            "--ipvs-tcpfin-timeout: -5s must be greater than or equal to 0",
        ),
        (
            vec!["--ipvs-udp-timeout=-1m30s"],
            "--ipvs-udp-timeout: -1m30s must be greater than or equal to 0",
        ),
        (
            vec!["--cluster-cidr=10.244.0.0/16,10.245.0.0/16"],
            "--cluster-cidr: \"10.244.0.0/16,10.245.0.0/16\" must be one CIDR or a dual-stack \
             pair (one IPv4, one IPv6)",
        ),
        (
            vec!["--cluster-cidr=10.244.0.0"],
            "--cluster-cidr: invalid CIDR \"10.244.0.0\"",
        ),
        (
            vec!["--detect-local-mode=Magic"],
            "--detect-local-mode: \"Magic\" is not a detect-local mode (expected ClusterCIDR, \
             NodeCIDR, BridgeInterface or InterfaceNamePrefix)",
        ),
        (
            vec!["--detect-local-mode=BridgeInterface"],
            "--pod-bridge-interface: must be set when the detect-local mode is BridgeInterface",
        ),
        (
            vec!["--detect-local-mode=InterfaceNamePrefix"],
            "--pod-interface-name-prefix: must be set when the detect-local mode is \
             InterfaceNamePrefix",
        ),
        (
            vec![
                "--detect-local-mode=BridgeInterface",
                "--pod-bridge-interface=a/b",
            ],
            "--pod-bridge-interface: invalid interface name \"a/b\"",
        ),
        (
            vec!["--nodeport-addresses=primary,10.0.0.0/8"],
            "--nodeport-addresses: 'primary' cannot be combined with other values",
        ),
        (
            vec!["--nodeport-addresses=10.0.0.0/8,nope"],
            "--nodeport-addresses: invalid CIDR \"nope\"",
        ),
        (
            vec!["--healthz-bind-address=localhost:10256"],
            "--healthz-bind-address: \"localhost:10256\" is not IP or IP:port with a port in \
             1..=65535",
        ),
        (
            vec!["--metrics-bind-address=127.0.0.1:0"],
            "--metrics-bind-address: \"127.0.0.1:0\" is not IP or IP:port with a port in \
             1..=65535",
        ),
        (
            vec!["--healthz-port=70000"],
            "--healthz-port: 70000 is out of range 0..=65535",
        ),
        (
            vec!["--bind-address=node1"],
            "--bind-address: invalid IP address \"node1\"",
        ),
        (
            vec!["--hostname-override=   "],
            "--hostname-override: must not be empty",
        ),
        (
            vec!["--config-sync-period=0s"],
            "--config-sync-period: 0s must be greater than 0",
        ),
        (
            vec!["--kube-api-burst=-1"],
            "--kube-api-burst: -1 is out of range 0..=2147483647",
        ),
        (
            vec!["--oom-score-adj=-1001"],
            "--oom-score-adj: -1001 is out of range -1000..=1000",
        ),
        (
            vec!["--conntrack-min=-1"],
            "--conntrack-min: -1 is out of range 0..=2147483647",
        ),
        (
            vec!["--conntrack-udp-timeout=-1s"],
            "--conntrack-udp-timeout: -1s must be greater than or equal to 0",
        ),
        (
            vec!["--logging-format=xml"],
            "--logging-format: \"xml\" is not a supported log format (expected \"text\")",
        ),
        (
            vec!["--max-drain-time=-1s"],
            "--max-drain-time: -1s must be greater than or equal to 0",
        ),
    ] {
        assert_eq!(error(&args, None), want, "{args:?}");
    }
}

#[test]
fn every_file_validation_error_names_the_field() {
    for (extra, want) in [
        (
            "iptables:\n  masqueradeBit: 40\n",
            "iptables.masqueradeBit: 40 is out of range 0..=31",
        ),
        (
            "ipvs:\n  excludeCIDRs: [10.0.0.0/8, 10.0.0.0/33]\n",
            "ipvs.excludeCIDRs[1]: invalid CIDR \"10.0.0.0/33\"",
        ),
        (
            "ipvs:\n  scheduler: \"no such\"\n",
            "ipvs.scheduler: invalid IPVS name \"no such\": expected 1 to 15 ASCII letters, \
             digits or '_'",
        ),
        (
            "ipvs:\n  syncPeriod: -30s\n",
            "ipvs.syncPeriod: -30s must be greater than 0",
        ),
        (
            "ipvs:\n  minSyncPeriod: 1m\n",
            "ipvs.syncPeriod: 30s must be greater than or equal to ipvs.minSyncPeriod (1m0s)",
        ),
        (
            "ipvs:\n  tcpTimeout: -1s\n",
            "ipvs.tcpTimeout: -1s must be greater than or equal to 0",
        ),
        (
            "ipvs:\n  tcpFinTimeout: -1s\n",
            "ipvs.tcpFinTimeout: -1s must be greater than or equal to 0",
        ),
        (
            "ipvs:\n  udpTimeout: -1s\n",
            "ipvs.udpTimeout: -1s must be greater than or equal to 0",
        ),
        (
            "clusterCIDR: fd00::/48,fd01::/48\n",
            "clusterCIDR: \"fd00::/48,fd01::/48\" must be one CIDR or a dual-stack pair (one \
             IPv4, one IPv6)",
        ),
        (
            "detectLocalMode: BridgeInterface\n",
            "detectLocal.bridgeInterface: must be set when the detect-local mode is \
             BridgeInterface",
        ),
        (
            "detectLocalMode: InterfaceNamePrefix\ndetectLocal:\n  interfaceNamePrefix: \
             averyveryverylongprefix\n",
            "detectLocal.interfaceNamePrefix: invalid interface name \"averyveryverylongprefix\"",
        ),
        (
            "detectLocalMode: None\n",
            "detectLocalMode: \"None\" is not a detect-local mode (expected ClusterCIDR, \
             NodeCIDR, BridgeInterface or InterfaceNamePrefix)",
        ),
        (
            "nodePortAddresses: [10.0.0.0/8, primary]\n",
            "nodePortAddresses[1]: 'primary' cannot be combined with other values",
        ),
        (
            "nodePortAddresses: [10.0.0.0/8, 10.0.0.1]\n",
            "nodePortAddresses[1]: invalid CIDR \"10.0.0.1\"",
        ),
        (
            "healthzBindAddress: \"0.0.0.0:99999\"\n",
            "healthzBindAddress: \"0.0.0.0:99999\" is not IP or IP:port with a port in \
             1..=65535",
        ),
        (
            "metricsBindAddress: \"metrics:10249\"\n",
            "metricsBindAddress: \"metrics:10249\" is not IP or IP:port with a port in 1..=65535",
        ),
        (
            "bindAddress: \"10.0.0.1:80\"\n",
            "bindAddress: invalid IP address \"10.0.0.1:80\"",
        ),
        (
            "configSyncPeriod: -1s\n",
            "configSyncPeriod: -1s must be greater than 0",
        ),
        (
            "clientConnection:\n  burst: -5\n",
            "clientConnection.burst: -5 is out of range 0..=2147483647",
        ),
        (
            "oomScoreAdj: 2000\n",
            "oomScoreAdj: 2000 is out of range -1000..=1000",
        ),
        (
            "conntrack:\n  maxPerCore: -1\n",
            "conntrack.maxPerCore: -1 is out of range 0..=2147483647",
        ),
        (
            "conntrack:\n  tcpCloseWaitTimeout: -1h\n",
            "conntrack.tcpCloseWaitTimeout: -1h0m0s must be greater than or equal to 0",
        ),
        (
            "logging:\n  format: xml\n",
            "logging.format: \"xml\" is not a supported log format (expected \"text\")",
        ),
    ] {
        assert_eq!(
            error(&["--config=c"], Some(&file_with(extra))),
            want,
            "{extra}"
        );
    }
    let text = kubeadm_config_conf().replace("mode: ipvs", "mode: nftables");
    assert_eq!(
        error(&["--config=c"], Some(&text)),
        "mode: \"nftables\" is not supported: ipvs-proxier only implements the \"ipvs\" proxy \
         mode"
    );
}

#[test]
fn unknown_file_fields_are_dropped_with_a_warning_naming_each() {
    let text = file_with(
        "ipvs:\n  strictArp: true\n  strictARP: true\nmasqueradeAll: true\nlogging:\n  \
         options:\n    json:\n      bufferSize: 1\n  vmodule:\n  - filePattern: x\n    level: 2\n",
    );
    let (settings, warnings) = run(&["--config=c"], Some(&text));
    // The known field next to the typo still takes effect.
    assert!(settings.strict_arp);
    let unknown: Vec<String> = warnings
        .iter()
        .filter(|w| w.message.starts_with("unknown field"))
        .map(|w| w.setting.clone())
        .collect();
    assert_eq!(
        unknown,
        [
            "ipvs.strictArp",
            "masqueradeAll",
            "logging.options.json.bufferSize",
            "logging.vmodule[0].level",
        ]
    );
}

#[test]
fn file_format_errors() {
    for (text, want) in [
        (
            "apiVersion: kubeproxy.config.k8s.io/v1alpha2\nkind: KubeProxyConfiguration\n"
                .to_owned(),
            "config file: apiVersion kubeproxy.config.k8s.io/v1alpha2 is not supported yet; \
             write the file as kubeproxy.config.k8s.io/v1alpha1 (the version kubeadm writes)",
        ),
        (
            "kind: KubeProxyConfiguration\n".to_owned(),
            "config file: apiVersion is \"\", expected \"kubeproxy.config.k8s.io/v1alpha1\"",
        ),
        (
            KUBEADM_CONFIGMAP.to_owned(),
            "config file: kind is \"ConfigMap\", expected \"KubeProxyConfiguration\"",
        ),
    ] {
        assert_eq!(error(&["--config=c"], Some(&text)), want);
    }
    for (text, needle) in [
        (file_with("ipvs:\n  syncPeriod: 30\n"), "ipvs.syncPeriod"),
        (file_with("ipvs:\n  syncPeriod: 30x\n"), "ipvs.syncPeriod"),
        (
            file_with("iptables:\n  masqueradeBit: fourteen\n"),
            "iptables.masqueradeBit",
        ),
        (file_with("mode: ipvs\n"), "duplicate"),
        (file_with("ipvs: [\n"), "config file"),
    ] {
        let e = error(&["--config=c"], Some(&text));
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn non_ipvs_file_fields_warn_only_when_set() {
    let text = file_with(
        "clusterCIDR: 10.0.0.0/16\niptables:\n  syncPeriod: 30s\n  minSyncPeriod: 1s\n  localhostNodePorts: true\n  \
         snatNodeInternalIP: true\nnftables:\n  syncPeriod: 30s\nwinkernel:\n  networkName: \
         x\nwindowsRunAsService: true\nenableProfiling: true\nshowHiddenMetricsForVersion: \
         \"1.33\"\nportRange: 30000-32767\nconntrack:\n  maxPerCore: 32768\n  min: 131072\n  \
         tcpEstablishedTimeout: 24h\n  tcpCloseWaitTimeout: 1h\n  tcpBeLiberal: true\n  \
         udpTimeout: 30s\n  udpStreamTimeout: 2m\noomScoreAdj: -999\nlogging:\n  \
         flushFrequency: 5s\n  vmodule:\n  - filePattern: x\n    verbosity: 3\n  options:\n    \
         text:\n      splitStream: true\n  format: json\nclientConnection:\n  \
         acceptContentTypes: application/json\n  contentType: application/cbor\nfeatureGates:\n  \
         X: false\n",
    );
    let (_, warnings) = run(&["--config=c"], Some(&text));
    assert_eq!(
        warned(&warnings),
        vec![
            "iptables.syncPeriod",
            "iptables.minSyncPeriod",
            "iptables.localhostNodePorts",
            "iptables.snatNodeInternalIP",
            "nftables",
            "winkernel",
            "windowsRunAsService",
            "enableProfiling",
            "showHiddenMetricsForVersion",
            "portRange",
            "conntrack.tcpBeLiberal",
            "logging.flushFrequency",
            "logging.vmodule",
            "logging.options",
            "clientConnection.acceptContentTypes",
            "clientConnection.contentType",
            "oomScoreAdj",
            "conntrack.maxPerCore",
            "conntrack.min",
            "conntrack.tcpEstablishedTimeout",
            "conntrack.tcpCloseWaitTimeout",
            "conntrack.udpTimeout",
            "conntrack.udpStreamTimeout",
            "featureGates",
            "logging.format",
        ]
    );
}

#[test]
fn load_reads_the_file_and_reports_a_missing_one() {
    let dir = std::env::temp_dir().join(format!("ipvs-proxier-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.conf");
    std::fs::write(&path, kubeadm_config_conf()).unwrap();
    let arg = format!("--config={}", path.display());
    let (s, _) = load(cli(&[&arg, "--hostname-override=n"])).unwrap();
    assert_eq!(s.config_file, Some(path.clone()));
    std::fs::remove_file(&path).unwrap();
    let e = load(cli(&[&arg])).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("--config {}: ", path.display()))
    );
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn help_renders() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
    let help = Cli::command().render_long_help().to_string();
    for flag in [
        "--kubeconfig",
        "--ipvs-scheduler",
        "--nodeport-addresses",
        "--manifests",
        "--node-ip",
        "--strict-local-traffic-policy",
        "--iptables-backend",
        "--max-drain-time",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}
