//! The proxier's view of the cluster: service ports and their endpoints, built from
//! Services and EndpointSlices (discovery/v1) in their compact stored form
//! ([`objects`]) and from `k8s-openapi` Nodes.
//!
//! This module owns the translation from API objects to plain values and every check on
//! them that upstream kube-proxy does when it fills its `ServicePortMap` / `EndpointsMap`
//! (`pkg/proxy/serviceport.go`, `endpointslicecache.go`, `util.ShouldSkipService`, the
//! informers' label selector). It knows nothing about IP families being enabled or about
//! IPVS: addresses of both families are kept and the planner picks per family.
//!
//! Bad input never fails the build: a broken field yields a [`Diagnostic`] and only the
//! affected part (a port, an address, an endpoint) is left out.
//!
//! Everything is sorted (`BTreeMap`, sorted `Vec`s) so the model does not depend on the
//! order the objects arrived in.

mod build;
mod diagnostics;
pub mod manifests;
pub mod objects;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink::Protocol;

pub use build::ModelOptions;
pub use diagnostics::{Diagnostic, ObjectName, Severity};
pub use manifests::{Manifests, parse_manifests};
pub use objects::{Interner, ServiceObject, SharedName, SliceObject};

/// Label that hands a Service (and its EndpointSlices) to a non-default proxy.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label the EndpointSlice controller puts on slices of headless Services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label naming the Service an EndpointSlice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Node label carrying the zone, used for zone hints.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// The API default of `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_STICKY_SECONDS: u32 = 10800;

/// `namespace/name` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// kube-proxy's `ServicePortName`: what joins a Service port to its endpoints. The
/// EndpointSlice controller publishes endpoints under the Service port's *name* (and
/// protocol), so this key, not the target port, is the join.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub service: ServiceName,
    /// The port name; empty for the single unnamed port of a Service.
    pub port: String,
    pub protocol: Protocol,
}

/// `ns/name:port` (or `ns/name` for an unnamed port), as kube-proxy logs it.
impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}", self.service)
        } else {
            write!(f, "{}:{}", self.service, self.port)
        }
    }
}

/// `sessionAffinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAffinity {
    None,
    /// `ClientIP` with its timeout (API default 10800 s).
    ClientIp {
        timeout_seconds: u32,
    },
}

/// A Service's `targetPort`. Kept for reference only: like upstream, the proxier takes the
/// endpoint port from the EndpointSlice port that carries the Service port's name, which is
/// how a named target port (`web8080`) gets resolved per pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub port: u16,
    /// `None` when not allocated (ClusterIP services, `allocateLoadBalancerNodePorts: false`).
    pub node_port: Option<u16>,
    pub target_port: Option<TargetPort>,
}

/// A Service the proxier handles (headless, ExternalName and foreign-proxy ones are not in
/// the model). Addresses of every family; the planner filters by family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: ServiceName,
    /// `spec.clusterIPs` (or `spec.clusterIP`), in order.
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of VIP-mode entries (`ipMode: Proxy` excluded).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`, trimmed and normalised to their network address.
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub session_affinity: SessionAffinity,
    /// `externalTrafficPolicy: Local` on an externally accessible Service (upstream
    /// `apiservice.ExternalPolicyLocal`).
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// Set only when the Service needs one (type LoadBalancer with ETP=Local).
    pub health_check_node_port: Option<u16>,
    pub ports: Vec<ServicePort>,
}

/// One endpoint of a service port (one address of an EndpointSlice endpoint, with the
/// slice port's number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    /// `conditions.ready`, nil = true.
    pub ready: bool,
    /// `conditions.serving`, nil = true.
    pub serving: bool,
    /// `conditions.terminating`, nil = false.
    pub terminating: bool,
    /// Shared with the stored object (see [`objects::Interner`]).
    pub node_name: Option<SharedName>,
    pub zone: Option<SharedName>,
    /// `hints.forZones[].name`; empty = no zone hint.
    pub zone_hints: BTreeSet<String>,
    /// `hints.forNodes[].name`; empty = no node hint.
    pub node_hints: BTreeSet<String>,
}

/// What the planner needs of a Node: its topology labels and pod CIDRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.podCIDRs` (or `spec.podCIDR`), for the NodeCIDR local-traffic detector.
    pub pod_cidrs: Vec<IpNet>,
}

impl NodeInfo {
    pub fn zone(&self) -> Option<&str> {
        self.labels.get(LABEL_TOPOLOGY_ZONE).map(String::as_str)
    }
}

/// The whole input of the planner that comes from the API server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub services: BTreeMap<ServiceName, Service>,
    /// Endpoints per service port, sorted by (address, port), unique. May hold ports of
    /// Services that are not in `services`; the planner ignores those.
    pub endpoints: BTreeMap<ServicePortName, Vec<Endpoint>>,
    pub nodes: BTreeMap<String, NodeInfo>,
}
