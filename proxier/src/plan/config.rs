//! What the planner is told: [`PlanConfig`] (the proxier's configuration) and [`NodeFacts`]
//! (what the shell observed on the host, passed in as data because reading it is I/O).
//! Also the YAML form of both (`config.yaml` of the golden cases, later `plan --config`).

use std::net::IpAddr;

use ipnet::IpNet;
use netlink::AddressFamily;
use netlink::ipvs::Scheduler;
use serde::Deserialize;

/// How the ClusterIP masquerade rule tells pod traffic from the rest
/// (`detectLocalMode` + its parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalDetector {
    /// No detector: `src,dst` match (node-originated traffic from a VIP).
    None,
    /// `! -s <clusterCIDR of the family>`; no CIDR of the family means no detector.
    ClusterCidr,
    /// `! -s <Node.spec.podCIDRs of the family>`; no Node or CIDR means no detector.
    NodeCidr,
    /// `! -i <bridge>`.
    BridgeInterface(String),
    /// `! -i <prefix>+`.
    InterfaceNamePrefix(String),
}

/// What an `externalTrafficPolicy` / `internalTrafficPolicy: Local` virtual server gets when
/// this node has no usable local endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalPolicyFallback {
    /// Upstream IPVS behaviour (kubernetes PR #97081): fall back to the cluster-wide
    /// endpoints, so local pods still reach the service (external clients get no reply,
    /// since there is no SNAT). The default, for drop-in compatibility.
    ClusterEndpoints,
    /// What the API promises and iptables/nftables modes do: no real servers at all.
    Strict,
}

/// `nodePortAddresses`: which node addresses get NodePort virtual servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Empty setting: every node address (loopback and IPv6 link-local excluded).
    All,
    /// The node's primary IPs (`NodeFacts::primary_ips`).
    Primary,
    /// Node addresses inside these CIDRs (loopback excluded).
    Cidrs(Vec<IpNet>),
}

/// The proxier's configuration, as far as the planner is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanConfig {
    /// This node's name (endpoint locality, node hints, the Node object).
    pub node_name: String,
    /// The families this proxier programs (one for single-stack, both for dual-stack).
    pub families: Vec<AddressFamily>,
    pub scheduler: Scheduler,
    pub masquerade_all: bool,
    /// `iptables.masqueradeBit`, 0..=31 (kube-proxy default 14).
    pub masquerade_bit: u8,
    pub local_detector: LocalDetector,
    pub cluster_cidrs: Vec<IpNet>,
    pub local_policy_fallback: LocalPolicyFallback,
    pub node_port_addresses: NodePortAddresses,
    /// Whether the host's iptables supports `MASQUERADE --random-fully`.
    pub random_fully: bool,
    /// See [`crate::model::ModelOptions::service_proxy_name`].
    pub service_proxy_name: Option<String>,
}

impl PlanConfig {
    /// The masquerade mark, `1 << masquerade_bit`.
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << (self.masquerade_bit & 31)
    }

    /// The options the model build needs from this configuration.
    pub fn model_options(&self) -> crate::model::ModelOptions {
        crate::model::ModelOptions {
            node_name: self.node_name.clone(),
            service_proxy_name: self.service_proxy_name.clone(),
        }
    }
}

/// Host facts the shell reads and the planner consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// Every local address except those on `kube-ipvs0` (both families; the planner
    /// drops loopback and IPv6 link-local itself).
    pub addresses: Vec<IpAddr>,
    /// The node's primary IP per family (kube-proxy's `nodeIP`): used for
    /// `nodePortAddresses: [primary]` and to decide whether a `loadBalancerSourceRanges`
    /// entry lets the node itself reach the load balancer.
    pub primary_ips: Vec<IpAddr>,
}

/// A config file that does not describe a valid configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot parse config: {0}")]
    Syntax(String),
    #[error("invalid scheduler: {0}")]
    Scheduler(String),
    #[error("masqueradeBit {0} is outside 0..=31")]
    MasqueradeBit(u32),
    #[error("unknown IP family {0:?} (expected IPv4 or IPv6)")]
    Family(String),
    #[error("ipFamilies is empty")]
    NoFamily,
    #[error("invalid CIDR {0:?}")]
    Cidr(String),
    #[error("invalid IP address {0:?}")]
    Address(String),
    #[error("unknown detectLocalMode {0:?}")]
    DetectLocalMode(String),
    #[error("detectLocalMode {0} needs {1}")]
    DetectLocalParameter(&'static str, &'static str),
    #[error("unknown localPolicyFallback {0:?} (expected ClusterEndpoints or Strict)")]
    Fallback(String),
}

/// The YAML form of [`PlanConfig`] + [`NodeFacts`]. Optional fields take kube-proxy's
/// defaults, spelled out in the `default_*` functions.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    pub node_name: String,
    pub ip_families: Vec<String>,
    #[serde(default = "default_scheduler")]
    pub scheduler: String,
    #[serde(default)]
    pub masquerade_all: bool,
    #[serde(default = "default_masquerade_bit")]
    pub masquerade_bit: u32,
    #[serde(default = "default_detect_local_mode")]
    pub detect_local_mode: String,
    #[serde(default, rename = "clusterCIDRs")]
    pub cluster_cidrs: Vec<String>,
    #[serde(default)]
    pub bridge_interface: Option<String>,
    #[serde(default)]
    pub interface_name_prefix: Option<String>,
    #[serde(default = "default_fallback")]
    pub local_policy_fallback: String,
    #[serde(default)]
    pub node_port_addresses: Vec<String>,
    #[serde(default = "default_random_fully")]
    pub random_fully: bool,
    #[serde(default)]
    pub service_proxy_name: Option<String>,
    #[serde(rename = "nodeIPs")]
    pub node_ips: Vec<String>,
    #[serde(default, rename = "primaryNodeIPs")]
    pub primary_node_ips: Vec<String>,
}

/// kube-proxy: an empty `ipvs.scheduler` means `rr`.
fn default_scheduler() -> String {
    "rr".to_owned()
}
/// kube-proxy: `iptables.masqueradeBit` defaults to 14.
fn default_masquerade_bit() -> u32 {
    14
}
/// kube-proxy: `detectLocalMode` defaults to ClusterCIDR.
fn default_detect_local_mode() -> String {
    "ClusterCIDR".to_owned()
}
fn default_fallback() -> String {
    "ClusterEndpoints".to_owned()
}
/// Every iptables since 1.6.2 has it.
fn default_random_fully() -> bool {
    true
}

impl ConfigFile {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))
    }

    pub fn into_parts(self) -> Result<(PlanConfig, NodeFacts), ConfigError> {
        let mut families = Vec::new();
        for f in &self.ip_families {
            let fam = match f.as_str() {
                "IPv4" => AddressFamily::Inet,
                "IPv6" => AddressFamily::Inet6,
                other => return Err(ConfigError::Family(other.to_owned())),
            };
            if !families.contains(&fam) {
                families.push(fam);
            }
        }
        if families.is_empty() {
            return Err(ConfigError::NoFamily);
        }
        families.sort();
        let scheduler = Scheduler::new(if self.scheduler.is_empty() {
            "rr"
        } else {
            &self.scheduler
        })
        .map_err(|e| ConfigError::Scheduler(e.to_string()))?;
        let masquerade_bit = u8::try_from(self.masquerade_bit)
            .ok()
            .filter(|b| *b <= 31)
            .ok_or(ConfigError::MasqueradeBit(self.masquerade_bit))?;
        let local_detector = match self.detect_local_mode.as_str() {
            "ClusterCIDR" | "" => LocalDetector::ClusterCidr,
            "NodeCIDR" => LocalDetector::NodeCidr,
            "BridgeInterface" => LocalDetector::BridgeInterface(self.bridge_interface.ok_or(
                ConfigError::DetectLocalParameter("BridgeInterface", "bridgeInterface"),
            )?),
            "InterfaceNamePrefix" => {
                LocalDetector::InterfaceNamePrefix(self.interface_name_prefix.ok_or(
                    ConfigError::DetectLocalParameter("InterfaceNamePrefix", "interfaceNamePrefix"),
                )?)
            }
            "None" => LocalDetector::None,
            other => return Err(ConfigError::DetectLocalMode(other.to_owned())),
        };
        let cluster_cidrs = parse_cidrs(&self.cluster_cidrs)?;
        let local_policy_fallback = match self.local_policy_fallback.as_str() {
            "ClusterEndpoints" => LocalPolicyFallback::ClusterEndpoints,
            "Strict" => LocalPolicyFallback::Strict,
            other => return Err(ConfigError::Fallback(other.to_owned())),
        };
        let node_port_addresses = if self.node_port_addresses.is_empty() {
            NodePortAddresses::All
        } else if self.node_port_addresses.iter().any(|a| a == "primary") {
            NodePortAddresses::Primary
        } else {
            NodePortAddresses::Cidrs(parse_cidrs(&self.node_port_addresses)?)
        };
        let config = PlanConfig {
            node_name: self.node_name,
            families,
            scheduler,
            masquerade_all: self.masquerade_all,
            masquerade_bit,
            local_detector,
            cluster_cidrs,
            local_policy_fallback,
            node_port_addresses,
            random_fully: self.random_fully,
            service_proxy_name: self.service_proxy_name,
        };
        let facts = NodeFacts {
            addresses: parse_ips(&self.node_ips)?,
            primary_ips: parse_ips(&self.primary_node_ips)?,
        };
        Ok((config, facts))
    }
}

fn parse_cidrs(raw: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    raw.iter()
        .map(|c| {
            c.trim()
                .parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|_| ConfigError::Cidr(c.clone()))
        })
        .collect()
}

fn parse_ips(raw: &[String]) -> Result<Vec<IpAddr>, ConfigError> {
    raw.iter()
        .map(|a| {
            a.trim()
                .parse::<IpAddr>()
                .map_err(|_| ConfigError::Address(a.clone()))
        })
        .collect()
}
