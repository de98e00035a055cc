//! The planner: [`Model`] + [`PlanConfig`] + [`NodeFacts`] -> the desired dataplane, per IP
//! family. Pure: no I/O, no clock, no randomness; the same input gives the same [`Plan`]
//! whatever the order of the objects.
//!
//! Per family the plan holds the IPVS table (`netlink::ipvs::Table`), the addresses to bind
//! on `kube-ipvs0`, the members of the 17 ipsets, the iptables rules of the nat and filter
//! tables (typed, see [`iptables`]) and the health-check node ports. [`render`] prints them
//! in stable text forms: `ipvsadm -Sn`, `ipset save`-like and `iptables-restore` input.
//!
//! It follows the upstream IPVS proxier (`pkg/proxy/ipvs/proxier.go:syncProxyRules` and
//! `writeIptablesRules`; see `shared/reference/kube-proxy-ipvs.md` §1-§3). Deliberate
//! choices where upstream is silent or nondeterministic:
//!
//! - `externalTrafficPolicy` / `internalTrafficPolicy: Local` with no local endpoint falls
//!   back to the cluster endpoints, as upstream IPVS does (PR #97081); set
//!   [`LocalPolicyFallback::Strict`] for the API's promise (no real servers), which is what
//!   the iptables and nftables modes do.
//! - Two service ports claiming one NodePort, or producing one virtual server: the first in
//!   `namespace/name:port` order keeps it and a diagnostic names both (upstream's result
//!   depends on Go map order).
//! - The health-check node port is listed even when the Service's NodePort part is skipped
//!   for lack of node IPs (upstream's loop `continue`s past it in that case).
//! - `nodePortAddresses` CIDRs (or `primary`) with nothing of a family means "all
//!   addresses" for that family, like upstream's `NodePortAddresses`.
//!
//! # Feature coverage
//!
//! Rows of the reference's feature table (§1) that the planner owns, and the golden case
//! (`proxier/tests/testdata/<case>/`) that pins each down:
//!
//! | # | Feature | Golden case(s) |
//! |---|---|---|
//! | 2 | ClusterIP services | `clusterip-basic`, `examples` |
//! | 3 | NodePort (all node IPs, `nodePortAddresses`, no loopback) | `nodeport-basic`, `nodeport-addresses-cidr`, `nodeport-addresses-primary` |
//! | 4 | LoadBalancer ingress (VIP mode only; bind unless a node address) | `loadbalancer-basic`, `loadbalancer-ipmode-proxy`, `loadbalancer-ip-on-node` |
//! | 5 | ExternalIPs (ETP Cluster / Local sets and rules) | `externalips-cluster`, `externalips-local` |
//! | 6 | ExternalName, headless, service-proxy-name, headless slices ignored | `headless-externalname`, `service-proxy-name` |
//! | 7 | `sessionAffinity: ClientIP` + timeout, host netmask | `session-affinity` |
//! | 8 | `externalTrafficPolicy: Local` (+ fallback, + strict option) | `etp-local`, `etp-local-no-local-endpoints`, `etp-local-strict` |
//! | 9 | `internalTrafficPolicy: Local` (zero RS without local endpoints) | `itp-local` |
//! | 10 | Topology hints / trafficDistribution | `topology-same-zone`, `topology-same-node`, `topology-hints-ignored` |
//! | 11 | Terminating endpoints fallback | `terminating-fallback`, `readiness-gated` |
//! | 13 | `loadBalancerSourceRanges` (FW, CIDR, SOURCE-IP, OUT-FILTER) | `lb-source-ranges` |
//! | 14 | `healthCheckNodePort` | `etp-local` |
//! | 15 | IPVS scheduler (mh gets `mh-port`) | `scheduler-mh` |
//! | 19 | TCP / UDP / SCTP (SCTP NodePort hash set) | `protocols-udp-sctp` |
//! | 20 | IPv4 / IPv6 / dual-stack (`KUBE-6-` sets, `::1/128`) | `dual-stack`, `ipv6-only` |
//! | 21 | Masquerade rules (mark bit, `--random-fully`, detectors, masquerade-all) | `masquerade-all`, `detect-local-none`, `detect-local-bridge`, `detect-local-interface-prefix`, `detect-local-node-cidr`, `masquerade-bit-no-random-fully` |
//! | 22 | Hairpin (`KUBE-LOOP-BACK` for local endpoints) | `clusterip-basic`, `examples` |
//! | 23 | `KUBE-IPVS-FILTER` / `KUBE-IPVS-IPS` | every case (`clusterip-basic`) |
//! | 24 | `KUBE-FORWARD` | every case (`clusterip-basic`) |
//! | 33 | Services with zero endpoints keep a VS with no RS | `zero-endpoints` |
//! | — | Seeds: named port, multi-port, NodePort 31313, LB, affinity, headless, ExternalName, readiness | `examples`, `named-port`, `multi-port` |
//! | — | Bad input diagnostics | `bad-input`, `manifest-diagnostics` |
//!
//! Rows not owned here: #1, #12, #16-#18, #25-#32 belong to the dataplane, the sync loop or
//! the daemon.

pub mod config;
pub mod incremental;
pub mod ipsets;
pub mod iptables;
pub mod render;
pub mod topology;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, btree_map, hash_map};
use std::iter::Peekable;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink::ipset::Member;
use netlink::ipvs::{
    Destination, Service as IpvsService, ServiceFlags, ServiceKey, Table, VirtualServer,
};
use netlink::{AddressFamily, Protocol};

use crate::model::{
    Diagnostic, Endpoint, Model, Service, ServiceName, ServicePort, ServicePortName,
    SessionAffinity,
};

pub use config::{
    ConfigError, ConfigFile, LocalDetector, LocalPolicyFallback, NodeFacts, NodePortAddresses,
    PlanConfig,
};
pub use ipsets::{IpSets, IpSetsBuilder, SetName};
pub use iptables::RuleSet;

/// A Service's health-check node port and what it will report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub node_port: u16,
    /// Distinct local Ready endpoint addresses (the `localEndpoints` of the HC reply).
    pub local_endpoints: usize,
}

/// The desired dataplane of one IP family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPlan {
    pub family: AddressFamily,
    /// Virtual servers of this family with their real servers.
    pub ipvs: Table,
    /// Addresses to have on `kube-ipvs0` (also the `KUBE-IPVS-IPS` members).
    pub bind_addresses: BTreeSet<IpAddr>,
    /// The node addresses that carry NodePort virtual servers.
    pub node_port_addresses: Vec<IpAddr>,
    pub ipsets: IpSets,
    pub rules: RuleSet,
    pub health_checks: BTreeMap<ServiceName, HealthCheck>,
    /// Services of a Local traffic policy without a local endpoint (metric only).
    pub no_local_endpoints: NoLocalEndpoints,
}

/// Upstream's `serviceNoLocalEndpointsInternal` / `...External` sizes, the values of
/// `kubeproxy_sync_proxy_rules_no_local_endpoints_total`: distinct Services that have usable
/// endpoints somewhere but none on this node, with `internalTrafficPolicy: Local`
/// (`internal`) or with an externally accessible port and `externalTrafficPolicy: Local`
/// (`external`). Counted whatever the fallback does with their traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoLocalEndpoints {
    pub internal: usize,
    pub external: usize,
}

/// The desired dataplane: one [`FamilyPlan`] per configured family, plus what was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub families: Vec<FamilyPlan>,
    /// Sorted and without duplicates.
    pub diagnostics: Vec<Diagnostic>,
}

impl Plan {
    pub fn family(&self, family: AddressFamily) -> Option<&FamilyPlan> {
        self.families.iter().find(|f| f.family == family)
    }
}

/// Builds the model from API objects and plans it; model and plan diagnostics are merged.
pub fn plan_objects(
    services: &[crate::model::ServiceObject],
    slices: &[crate::model::SliceObject],
    nodes: &[k8s_openapi::api::core::v1::Node],
    config: &PlanConfig,
    facts: &NodeFacts,
) -> Plan {
    let services: Vec<_> = services.iter().collect();
    let slices: Vec<_> = slices.iter().collect();
    plan_objects_refs(&services, &slices, nodes, config, facts)
}

/// [`plan_objects`] over borrowed objects.
pub fn plan_objects_refs(
    services: &[&crate::model::ServiceObject],
    slices: &[&crate::model::SliceObject],
    nodes: &[k8s_openapi::api::core::v1::Node],
    config: &PlanConfig,
    facts: &NodeFacts,
) -> Plan {
    let (model, mut diags) = Model::build_refs(services, slices, nodes, &config.model_options());
    let mut plan = plan(&model, config, facts);
    diags.append(&mut plan.diagnostics);
    diags.sort();
    diags.dedup();
    plan.diagnostics = diags;
    plan
}

/// Plans `model` for every family of `config`.
pub fn plan(model: &Model, config: &PlanConfig, facts: &NodeFacts) -> Plan {
    let node = model.nodes.get(&config.node_name);
    let (parts, diagnostics) = plan_parts(model, node, config, facts);
    let families = parts
        .into_iter()
        .map(|p| {
            let rules = iptables::rules(
                &p.ipsets,
                &rule_inputs(config, node, p.family, p.lb_no_node_access.clone()),
            );
            p.into_family_plan(rules)
        })
        .collect();
    Plan {
        families,
        diagnostics,
    }
}

/// One family's plan without its iptables rules, plus what the rules need besides the sets
/// (the incremental planner assembles these per Service, then derives the rules once).
#[derive(Debug, Clone)]
pub(crate) struct FamilyParts {
    pub family: AddressFamily,
    pub ipvs: Table,
    pub bind_addresses: BTreeSet<IpAddr>,
    pub node_port_addresses: Vec<IpAddr>,
    pub ipsets: IpSets,
    /// Sorted, unique.
    pub lb_no_node_access: Vec<(IpAddr, Protocol, u16)>,
    pub health_checks: BTreeMap<ServiceName, HealthCheck>,
    pub no_local_internal: usize,
    pub no_local_external: usize,
    /// The port name (empty for an unnamed port) of the Service port behind each virtual
    /// server: the incremental planner keeps it to name owners without the model.
    pub port_names: HashMap<ServiceKey, String>,
}

impl FamilyParts {
    pub(crate) fn into_family_plan(self, rules: RuleSet) -> FamilyPlan {
        FamilyPlan {
            family: self.family,
            ipvs: self.ipvs,
            bind_addresses: self.bind_addresses,
            node_port_addresses: self.node_port_addresses,
            ipsets: self.ipsets,
            rules,
            health_checks: self.health_checks,
            no_local_endpoints: NoLocalEndpoints {
                internal: self.no_local_internal,
                external: self.no_local_external,
            },
        }
    }
}

/// [`plan`] without the rules, with our Node's model given (`model.nodes` is not read):
/// every family's parts and the sorted, unique diagnostics.
pub(crate) fn plan_parts(
    model: &Model,
    node: Option<&crate::model::NodeInfo>,
    config: &PlanConfig,
    facts: &NodeFacts,
) -> (Vec<FamilyParts>, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    wrong_family_diagnostics(model, config, &mut diagnostics);
    let lost_node_ports = node_port_clashes(model, &mut diagnostics);
    let zone = node.and_then(|n| n.zone());

    let families = config
        .families
        .iter()
        .map(|&family| {
            FamilyPlanner {
                family,
                config,
                facts,
                model,
                zone,
                lost_node_ports: &lost_node_ports,
                diagnostics: &mut diagnostics,
            }
            .run()
        })
        .collect();
    diagnostics.sort();
    diagnostics.dedup();
    (families, diagnostics)
}

/// What [`iptables::rules`] needs besides the sets, for `family` on our Node `node`.
pub(crate) fn rule_inputs(
    config: &PlanConfig,
    node: Option<&crate::model::NodeInfo>,
    family: AddressFamily,
    lb_no_node_access: Vec<(IpAddr, Protocol, u16)>,
) -> iptables::RuleInputs {
    iptables::RuleInputs {
        masquerade_mark: config.masquerade_mark(),
        random_fully: config.random_fully,
        cluster_ip_masquerade: cluster_ip_masquerade(
            config,
            family,
            node.map(|n| n.pod_cidrs.as_slice()).unwrap_or_default(),
        ),
        lb_no_node_access,
    }
}

fn cluster_ip_masquerade(
    config: &PlanConfig,
    family: AddressFamily,
    node_pod_cidrs: &[IpNet],
) -> iptables::ClusterIpMasquerade {
    use iptables::{ClusterIpMasquerade, Match};
    if config.masquerade_all {
        return ClusterIpMasquerade::All;
    }
    let first_of_family = |nets: &[IpNet]| {
        nets.iter().find(|n| family_of_net(n) == family).map(|net| {
            ClusterIpMasquerade::IfNotLocal(Match::SourceNet {
                negated: true,
                net: *net,
            })
        })
    };
    let detector = match &config.local_detector {
        LocalDetector::None => None,
        LocalDetector::ClusterCidr => first_of_family(&config.cluster_cidrs),
        LocalDetector::NodeCidr => first_of_family(node_pod_cidrs),
        LocalDetector::BridgeInterface(br) => Some(ClusterIpMasquerade::IfNotLocal(
            Match::NotInInterface(br.clone()),
        )),
        LocalDetector::InterfaceNamePrefix(p) => Some(ClusterIpMasquerade::IfNotLocal(
            Match::NotInInterface(format!("{p}+")),
        )),
    };
    detector.unwrap_or(ClusterIpMasquerade::SourceIsVip)
}

fn family_of_net(n: &IpNet) -> AddressFamily {
    AddressFamily::of(&n.addr())
}

/// Addresses of a family the node does not proxy. Reported once, whatever the families.
fn wrong_family_diagnostics(model: &Model, config: &PlanConfig, diags: &mut Vec<Diagnostic>) {
    let enabled = |f: AddressFamily| config.families.contains(&f);
    for svc in model.services.values() {
        // The address is formatted only when reported: nearly every address is of an
        // enabled family.
        let mut report = |field: &'static str, address: &dyn ToString, family: AddressFamily| {
            if !enabled(family) {
                diags.push(Diagnostic::WrongFamily {
                    service: svc.name.clone(),
                    field,
                    address: address.to_string(),
                    family,
                });
            }
        };
        for ip in &svc.cluster_ips {
            report("spec.clusterIPs", ip, AddressFamily::of(ip));
        }
        for ip in &svc.external_ips {
            report("spec.externalIPs", ip, AddressFamily::of(ip));
        }
        for ip in &svc.load_balancer_ips {
            report("status.loadBalancer.ingress", ip, AddressFamily::of(ip));
        }
        for net in &svc.load_balancer_source_ranges {
            report("spec.loadBalancerSourceRanges", net, family_of_net(net));
        }
    }
}

/// Service ports that lose their NodePort to an earlier (in name order) claimant.
fn node_port_clashes(model: &Model, diags: &mut Vec<Diagnostic>) -> HashSet<ServicePortName> {
    let mut owners: BTreeMap<(Protocol, u16), &ServicePortName> = BTreeMap::new();
    let mut lost = HashSet::new();
    for svc in model.services.values() {
        for port in sorted_ports(svc) {
            let Some(np) = port.node_port else { continue };
            match owners.get(&(port.name.protocol, np)) {
                None => {
                    owners.insert((port.name.protocol, np), &port.name);
                }
                Some(kept) => {
                    diags.push(Diagnostic::NodePortClash {
                        node_port: np,
                        protocol: port.name.protocol,
                        kept: (*kept).clone(),
                        lost: port.name.clone(),
                    });
                    lost.insert(port.name.clone());
                }
            }
        }
    }
    lost
}

fn sorted_ports(svc: &Service) -> Vec<&ServicePort> {
    let mut ports: Vec<&ServicePort> = svc.ports.iter().collect();
    ports.sort_by(|a, b| a.name.cmp(&b.name));
    ports
}

/// Loopback and IPv6 link-local addresses never carry NodePorts (upstream's
/// `GetAllLocalAddressesExcept` drops them).
fn usable_node_address(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback(),
        IpAddr::V6(a) => !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80,
    }
}

/// Finds the endpoints of the service ports in the order the planner visits them: Services
/// in name order, each one's ports in name order, which is the order of
/// [`Model::endpoints`]. So each lookup steps along the map (two comparisons) instead of a
/// string-keyed tree search. A port asked out of order falls back to that search, so the
/// answer never depends on the order.
struct EndpointCursor<'m> {
    map: &'m BTreeMap<ServicePortName, Vec<Endpoint>>,
    rest: Peekable<btree_map::Iter<'m, ServicePortName, Vec<Endpoint>>>,
    last: Option<&'m ServicePortName>,
}

impl<'m> EndpointCursor<'m> {
    fn new(map: &'m BTreeMap<ServicePortName, Vec<Endpoint>>) -> Self {
        Self {
            map,
            rest: map.iter().peekable(),
            last: None,
        }
    }

    fn get(&mut self, port: &'m ServicePortName) -> &'m [Endpoint] {
        if self.last.is_some_and(|last| port < last) {
            return self.map.get(port).map_or(&[], Vec::as_slice);
        }
        self.last = Some(port);
        while self.rest.next_if(|(key, _)| *key < port).is_some() {}
        match self.rest.peek() {
            Some(&(key, endpoints)) if key == port => endpoints,
            _ => &[],
        }
    }
}

struct FamilyPlanner<'a> {
    family: AddressFamily,
    config: &'a PlanConfig,
    facts: &'a NodeFacts,
    model: &'a Model,
    zone: Option<&'a str>,
    lost_node_ports: &'a HashSet<ServicePortName>,
    diagnostics: &'a mut Vec<Diagnostic>,
}

/// The per-family state being filled.
struct Output<'m> {
    /// Virtual servers in planning order; sorted into the [`Table`] at the end, which is
    /// cheaper than inserting 20,000 large values into a `BTreeMap` one by one.
    virtual_servers: Vec<(ServiceKey, VirtualServer)>,
    /// Which service port made each virtual server. Only looked up, never iterated, so a
    /// hash map keeps the result deterministic.
    owners: HashMap<ServiceKey, &'m ServicePortName>,
    bind: BTreeSet<IpAddr>,
    sets: IpSetsBuilder,
    lb_no_node_access: Vec<(IpAddr, Protocol, u16)>,
    health_checks: BTreeMap<ServiceName, HealthCheck>,
    no_local_internal: BTreeSet<&'m ServiceName>,
    no_local_external: BTreeSet<&'m ServiceName>,
    diagnostics: Vec<Diagnostic>,
}

impl<'a> FamilyPlanner<'a> {
    fn of_family(&self, ip: &IpAddr) -> bool {
        AddressFamily::of(ip) == self.family
    }

    fn run(self) -> FamilyParts {
        let family = self.family;
        let mut node_addresses: Vec<IpAddr> = self
            .facts
            .addresses
            .iter()
            .filter(|ip| self.of_family(ip) && usable_node_address(ip))
            .copied()
            .collect();
        node_addresses.sort();
        node_addresses.dedup();
        let node_port_addresses = self.node_port_addresses(&node_addresses);
        let primary_ip = self
            .facts
            .primary_ips
            .iter()
            .find(|ip| self.of_family(ip))
            .copied();

        let mut endpoints = EndpointCursor::new(&self.model.endpoints);
        let mut out = Output {
            virtual_servers: Vec::new(),
            // At least one virtual server per Service: fewer rehashes while it grows.
            owners: HashMap::with_capacity(self.model.services.len()),
            bind: BTreeSet::new(),
            sets: IpSetsBuilder::new(family),
            lb_no_node_access: Vec::new(),
            health_checks: BTreeMap::new(),
            no_local_internal: BTreeSet::new(),
            no_local_external: BTreeSet::new(),
            diagnostics: Vec::new(),
        };
        for svc in self.model.services.values() {
            let Some(cluster_ip) = svc.cluster_ips.iter().find(|ip| self.of_family(ip)) else {
                continue;
            };
            for port in sorted_ports(svc) {
                self.plan_port(
                    svc,
                    port,
                    endpoints.get(&port.name),
                    *cluster_ip,
                    &node_addresses,
                    &node_port_addresses,
                    primary_ip,
                    &mut out,
                );
            }
            if let Some(hc) = svc.health_check_node_port {
                out.sets
                    .insert(SetName::HealthCheckNodePort, Member::Port(hc));
                out.health_checks.insert(
                    svc.name.clone(),
                    HealthCheck {
                        node_port: hc,
                        local_endpoints: self.local_ready_addresses(svc),
                    },
                );
            }
        }
        for ip in &out.bind {
            out.sets.insert(SetName::IpvsIps, Member::Ip(*ip));
        }
        self.diagnostics.append(&mut out.diagnostics);
        out.lb_no_node_access.sort();
        out.lb_no_node_access.dedup();

        let sets = out.sets.build();
        // Keys are unique (`owners` admits each once), so the order of equal keys is moot.
        out.virtual_servers.sort_unstable_by_key(|(key, _)| *key);
        let ipvs = Table {
            services: out.virtual_servers.into_iter().collect(),
        };
        FamilyParts {
            family,
            ipvs,
            bind_addresses: out.bind,
            node_port_addresses,
            ipsets: sets,
            lb_no_node_access: out.lb_no_node_access,
            health_checks: out.health_checks,
            no_local_internal: out.no_local_internal.len(),
            no_local_external: out.no_local_external.len(),
            port_names: out
                .owners
                .into_iter()
                .map(|(key, spn)| (key, spn.port.clone()))
                .collect(),
        }
    }

    fn node_port_addresses(&self, node_addresses: &[IpAddr]) -> Vec<IpAddr> {
        let all = || node_addresses.to_vec();
        match &self.config.node_port_addresses {
            NodePortAddresses::All => all(),
            NodePortAddresses::Primary => {
                let mut ips: Vec<IpAddr> = self
                    .facts
                    .primary_ips
                    .iter()
                    .filter(|ip| self.of_family(ip) && usable_node_address(ip))
                    .copied()
                    .collect();
                if ips.is_empty() {
                    return all();
                }
                ips.sort();
                ips.dedup();
                ips
            }
            NodePortAddresses::Cidrs(cidrs) => {
                let cidrs: Vec<&IpNet> = cidrs
                    .iter()
                    .filter(|c| family_of_net(c) == self.family)
                    .collect();
                if cidrs.is_empty() {
                    return all();
                }
                node_addresses
                    .iter()
                    .filter(|ip| cidrs.iter().any(|c| c.contains(*ip)))
                    .copied()
                    .collect()
            }
        }
    }

    fn is_local(&self, e: &Endpoint) -> bool {
        e.node_name.as_deref() == Some(self.config.node_name.as_str())
    }

    fn local_ready_addresses(&self, svc: &Service) -> usize {
        let mut addrs = BTreeSet::new();
        for port in &svc.ports {
            for e in self.model.endpoints.get(&port.name).into_iter().flatten() {
                if self.of_family(&e.addr) && e.ready && self.is_local(e) {
                    addrs.insert(e.addr);
                }
            }
        }
        addrs.len()
    }

    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
    fn plan_port(
        &self,
        svc: &'a Service,
        port: &'a ServicePort,
        port_endpoints: &'a [Endpoint],
        cluster_ip: IpAddr,
        node_addresses: &[IpAddr],
        node_port_addresses: &[IpAddr],
        primary_ip: Option<IpAddr>,
        out: &mut Output<'a>,
    ) {
        let family = self.family;
        let spn = &port.name;
        let protocol = spn.protocol;
        let endpoints: Vec<&Endpoint> = port_endpoints
            .iter()
            .filter(|e| self.of_family(&e.addr))
            .collect();
        let external_ips: Vec<IpAddr> = svc
            .external_ips
            .iter()
            .filter(|ip| self.of_family(ip))
            .copied()
            .collect();
        let lb_ips: Vec<IpAddr> = svc
            .load_balancer_ips
            .iter()
            .filter(|ip| self.of_family(ip))
            .copied()
            .collect();
        let source_ranges: Vec<IpNet> = svc
            .load_balancer_source_ranges
            .iter()
            .filter(|n| family_of_net(n) == family)
            .copied()
            .collect();
        let node_port = port
            .node_port
            .filter(|_| self.lost_node_ports.is_empty() || !self.lost_node_ports.contains(spn));

        // Per-family accessibility, as upstream's ServicePort.ExternallyAccessible().
        let accessible = node_port.is_some() || !lb_ips.is_empty() || !external_ips.is_empty();
        let uses_cluster = !svc.internal_policy_local || accessible;
        let uses_local = svc.internal_policy_local || (svc.external_policy_local && accessible);
        let cat = topology::categorize(
            &endpoints,
            uses_cluster,
            uses_local,
            &self.config.node_name,
            self.zone,
        );
        let cluster: &[&Endpoint] = cat.cluster.as_deref().unwrap_or_default();
        let select = |only_local: bool| -> &[&Endpoint] {
            if !only_local {
                cluster
            } else if !cat.local.is_empty() {
                &cat.local
            } else {
                match self.config.local_policy_fallback {
                    LocalPolicyFallback::ClusterEndpoints => cluster,
                    LocalPolicyFallback::Strict => &[],
                }
            }
        };
        let internal = select(svc.internal_policy_local);
        let external = select(svc.external_policy_local);
        // Upstream counts in syncEndpoint's no-local-endpoints branch, reached when some
        // VS of the port is Local-only.
        if uses_local && cat.has_any && cat.local.is_empty() {
            if svc.internal_policy_local {
                out.no_local_internal.insert(&svc.name);
            }
            if svc.external_policy_local && accessible {
                out.no_local_external.insert(&svc.name);
            }
        }

        let mut flags = 0;
        let mut timeout = 0;
        if let SessionAffinity::ClientIp { timeout_seconds } = svc.session_affinity {
            flags |= ServiceFlags::PERSISTENT;
            timeout = timeout_seconds;
        }
        if self.config.scheduler.as_str() == "mh" {
            flags |= ServiceFlags::SCHED2;
        }
        let add_vs = |out: &mut Output<'a>, addr: IpAddr, vport: u16, dests: &[&Endpoint]| {
            let key = ServiceKey::Inet {
                protocol,
                addr,
                port: vport,
            };
            match out.owners.entry(key) {
                hash_map::Entry::Occupied(kept) => {
                    // The same port reaching one VS twice (an LB IP that is also an external
                    // IP) is one VS with the same real servers: nothing to report.
                    if *kept.get() != spn {
                        out.diagnostics.push(Diagnostic::VirtualServerClash {
                            virtual_server: key.to_string(),
                            kept: (*kept.get()).clone(),
                            lost: spn.clone(),
                        });
                    }
                    return false;
                }
                hash_map::Entry::Vacant(v) => {
                    v.insert(spn);
                }
            }
            let mut service = IpvsService::new(key, self.config.scheduler);
            service.flags = ServiceFlags(flags);
            service.timeout = timeout;
            let mut vs = VirtualServer::new(service);
            // Endpoints are sorted by (address, port), the destination key: collecting
            // bulk-builds the map.
            vs.destinations = std::sync::Arc::new(
                dests
                    .iter()
                    .map(|e| {
                        let d = Destination::masq(e.addr, e.port);
                        (d.key(), d)
                    })
                    .collect(),
            );
            out.virtual_servers.push((key, vs));
            true
        };

        // Hairpin: every local endpoint, whatever its readiness.
        for e in &endpoints {
            if self.is_local(e) {
                out.sets.insert(
                    SetName::LoopBack,
                    Member::IpPortIp {
                        ip: e.addr,
                        protocol,
                        port: e.port,
                        ip2: e.addr,
                    },
                );
            }
        }

        let ip_port = |ip: IpAddr, port: u16| Member::IpPort { ip, protocol, port };
        out.sets
            .insert(SetName::ClusterIp, ip_port(cluster_ip, port.port));
        if add_vs(out, cluster_ip, port.port, internal) {
            out.bind.insert(cluster_ip);
        }

        let is_node_address = |ip: &IpAddr| node_addresses.binary_search(ip).is_ok();
        for ip in external_ips {
            let set = if svc.external_policy_local {
                SetName::ExternalIpLocal
            } else {
                SetName::ExternalIp
            };
            out.sets.insert(set, ip_port(ip, port.port));
            if add_vs(out, ip, port.port, external) && !is_node_address(&ip) {
                out.bind.insert(ip);
            }
        }

        for ip in lb_ips {
            let entry = ip_port(ip, port.port);
            out.sets.insert(SetName::LoadBalancer, entry);
            if svc.external_policy_local {
                out.sets.insert(SetName::LoadBalancerLocal, entry);
            }
            if !source_ranges.is_empty() {
                out.sets.insert(SetName::LoadBalancerFw, entry);
                for net in &source_ranges {
                    out.sets.insert(
                        SetName::LoadBalancerSourceCidr,
                        Member::IpPortNet {
                            ip,
                            protocol,
                            port: port.port,
                            net: *net,
                        },
                    );
                }
                let node_allowed = primary_ip
                    .is_some_and(|node_ip| source_ranges.iter().any(|n| n.contains(&node_ip)));
                if node_allowed {
                    // Node-originated traffic to the LB IP is sourced from the LB IP itself
                    // (bound on kube-ipvs0).
                    out.sets.insert(
                        SetName::LoadBalancerSourceIp,
                        Member::IpPortIp {
                            ip,
                            protocol,
                            port: port.port,
                            ip2: ip,
                        },
                    );
                } else {
                    out.lb_no_node_access.push((ip, protocol, port.port));
                }
            }
            if add_vs(out, ip, port.port, external) && !is_node_address(&ip) {
                out.bind.insert(ip);
            }
        }

        if let Some(np) = node_port {
            if node_port_addresses.is_empty() {
                return;
            }
            let (set, local_set) = match protocol {
                Protocol::Tcp => (SetName::NodePortTcp, SetName::NodePortLocalTcp),
                Protocol::Udp => (SetName::NodePortUdp, SetName::NodePortLocalUdp),
                Protocol::Sctp => (SetName::NodePortSctp, SetName::NodePortLocalSctp),
            };
            let entries: Vec<Member> = match protocol {
                Protocol::Tcp | Protocol::Udp => vec![Member::Port(np)],
                // bitmap:port has no protocol, so SCTP uses hash:ip,port per node IP.
                Protocol::Sctp => node_port_addresses
                    .iter()
                    .map(|ip| ip_port(*ip, np))
                    .collect(),
            };
            for e in &entries {
                out.sets.insert(set, *e);
                if svc.external_policy_local {
                    out.sets.insert(local_set, *e);
                }
            }
            for ip in node_port_addresses {
                add_vs(out, *ip, np, external);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn port(service: &str, name: &str) -> ServicePortName {
        ServicePortName {
            service: ServiceName {
                namespace: "ns".to_owned(),
                name: service.to_owned(),
            },
            port: name.to_owned(),
            protocol: Protocol::Tcp,
        }
    }

    fn endpoint(last: u8) -> Endpoint {
        Endpoint {
            addr: Ipv4Addr::new(10, 0, 0, last).into(),
            port: 80,
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
            zone: None,
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
        }
    }

    #[test]
    fn endpoint_cursor_answers_like_the_map_in_any_order() {
        let map = BTreeMap::from([
            (port("a", ""), vec![endpoint(1)]),
            (port("b", "http"), vec![endpoint(2)]),
            (port("c", ""), vec![endpoint(3)]),
        ]);
        let asked = [
            port("a", ""),
            port("a", "x"),
            port("b", "http"),
            port("b", "http"),
            port("a", ""),
            port("c", ""),
            port("d", ""),
            port("b", "http"),
        ];
        let mut cursor = EndpointCursor::new(&map);
        for p in &asked {
            assert_eq!(
                cursor.get(p),
                map.get(p).map_or(&[][..], Vec::as_slice),
                "{p}"
            );
        }
    }
}

#[cfg(test)]
mod no_local_endpoints_tests {
    use super::*;
    use crate::model::manifests::parse_manifests;

    const CONFIG: &str = "nodeName: node-1\nipFamilies: [IPv4]\nnodeIPs: [10.255.0.1]\n";

    /// A Service with two ports; NodePort ones get node ports 30`n`0 and 30`n`1.
    fn service(name: &str, spec: &str, n: u8) -> String {
        let node_port = |i: u8| {
            if spec.contains("NodePort") {
                format!(", nodePort: 30{n}{i}")
            } else {
                String::new()
            }
        };
        let (a, b) = (node_port(0), node_port(1));
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\n\
             spec: {{{spec}, ports: [{{name: a, port: 80, targetPort: 80{a}}}, \
             {{name: b, port: 81, targetPort: 81{b}}}]}}\n---\n"
        )
    }

    fn slice(service: &str, node: &str) -> String {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {service}-1, namespace: ns, labels: \
             {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\n\
             ports: [{{name: a, port: 80, protocol: TCP}}, {{name: b, port: 81, protocol: TCP}}]\n\
             endpoints:\n- {{addresses: [10.244.1.1], conditions: {{ready: true}}, nodeName: {node}}}\n---\n"
        )
    }

    fn counts(input: &str, fallback: &str) -> NoLocalEndpoints {
        let config = format!("{CONFIG}localPolicyFallback: {fallback}\n");
        let Ok((config, facts)) = ConfigFile::parse(&config).and_then(ConfigFile::into_parts)
        else {
            panic!("bad test config");
        };
        let m = parse_manifests(input);
        assert!(m.diagnostics.is_empty(), "{:?}", m.diagnostics);
        let plan = plan_objects(&m.services, &m.endpoint_slices, &m.nodes, &config, &facts);
        plan.families[0].no_local_endpoints
    }

    #[test]
    fn counts_local_policy_services_without_local_endpoints_once_per_service() {
        let lb = "type: NodePort, clusterIP: 10.96.0.1, externalTrafficPolicy: Local";
        let itp = "clusterIP: 10.96.0.2, internalTrafficPolicy: Local";
        let both = "type: NodePort, clusterIP: 10.96.0.3, externalTrafficPolicy: Local, \
                    internalTrafficPolicy: Local";
        let local_lb = "type: NodePort, clusterIP: 10.96.0.4, externalTrafficPolicy: Local";
        let local_itp = "clusterIP: 10.96.0.5, internalTrafficPolicy: Local";
        let no_eps = "clusterIP: 10.96.0.6, internalTrafficPolicy: Local";
        // ETP Local on a ClusterIP Service: not externally accessible, never Local-only.
        let etp_cluster_ip = "clusterIP: 10.96.0.7, externalTrafficPolicy: Local";
        let plain = "clusterIP: 10.96.0.8";
        let input = [
            service("lb", lb, 1),
            slice("lb", "node-2"),
            service("itp", itp, 2),
            slice("itp", "node-2"),
            service("both", both, 3),
            slice("both", "node-3"),
            service("local-lb", local_lb, 4),
            slice("local-lb", "node-1"),
            service("local-itp", local_itp, 5),
            slice("local-itp", "node-1"),
            service("no-eps", no_eps, 6),
            service("etp-cip", etp_cluster_ip, 7),
            slice("etp-cip", "node-2"),
            service("plain", plain, 8),
            slice("plain", "node-2"),
        ]
        .concat();
        let expected = NoLocalEndpoints {
            internal: 2, // itp, both
            external: 2, // lb, both
        };
        assert_eq!(counts(&input, "ClusterEndpoints"), expected);
        assert_eq!(counts(&input, "Strict"), expected);
        assert_eq!(counts("", "ClusterEndpoints"), NoLocalEndpoints::default());
    }
}
