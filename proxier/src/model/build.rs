//! API objects -> [`Model`], with upstream's filtering and defaulting.

use std::collections::{BTreeMap, BTreeSet, btree_map::Entry};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use netlink::{AddressFamily, Protocol};

use super::objects::{Meta, RawAddress, ServiceObject, SliceObject, TargetPortObject};
use super::{
    DEFAULT_STICKY_SECONDS, Diagnostic, Endpoint, Model, NodeInfo, ObjectName, Service,
    ServiceName, ServicePort, ServicePortName, SessionAffinity, TargetPort,
};

/// What the model build needs to know about this proxier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelOptions {
    /// Our Node's name: decides which of two duplicate endpoints is kept (the local one,
    /// as upstream does).
    pub node_name: String,
    /// Objects labelled `service.kubernetes.io/service-proxy-name` are ours only when the
    /// label equals this. `None` (kube-proxy's only behaviour) ignores every labelled object.
    pub service_proxy_name: Option<String>,
}

impl Model {
    /// Builds the model. Never fails: unusable parts are left out and reported.
    pub fn build(
        services: &[ServiceObject],
        slices: &[SliceObject],
        nodes: &[core::Node],
        options: &ModelOptions,
    ) -> (Model, Vec<Diagnostic>) {
        let services: Vec<&ServiceObject> = services.iter().collect();
        let slices: Vec<&SliceObject> = slices.iter().collect();
        Self::build_refs(&services, &slices, nodes, options)
    }

    /// [`Model::build`] over borrowed objects (the incremental planner builds one Service's
    /// model at a time from objects it does not own).
    pub fn build_refs(
        services: &[&ServiceObject],
        slices: &[&SliceObject],
        nodes: &[core::Node],
        options: &ModelOptions,
    ) -> (Model, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let mut model = Model::default();

        let services = dedup_by_name(services, |s| &s.metadata, "Service", &mut diags);
        // Borrowed (namespace, name) pairs: the slices only need to know the Service exists.
        let seen_services: BTreeSet<(&str, &str)> = services
            .iter()
            .map(|(o, _)| (o.namespace.as_str(), o.name.as_str()))
            .collect();
        // `services` is sorted by name, so collecting bulk-builds the map instead of
        // inserting 10,000 string keys one by one.
        model.services = services
            .iter()
            .filter(|(_, svc)| ours(&svc.metadata, options))
            .filter_map(|(name, svc)| convert_service(name, svc, &mut diags))
            .map(|s| (s.name.clone(), s))
            .collect();

        let slices = dedup_by_name(slices, |s| &s.metadata, "EndpointSlice", &mut diags);
        let mut collected = Collected::new();
        for (name, slice) in &slices {
            add_slice(
                name,
                slice,
                options,
                &seen_services,
                &mut collected,
                &mut diags,
            );
        }
        model.endpoints = collected
            .into_iter()
            .map(|(k, eps)| (k, eps.into_values().map(|(e, _)| e).collect()))
            .collect();

        for node in nodes {
            if let Some(n) = convert_node(node, &mut diags) {
                model.nodes.insert(n.name.clone(), n);
            }
        }
        (model, diags)
    }
}

/// The informers' label selector: no foreign proxy name, and no headless-service slices.
fn ours(meta: &Meta, options: &ModelOptions) -> bool {
    if meta.labels.headless {
        return false;
    }
    match &meta.labels.service_proxy_name {
        None => true,
        Some(v) => options.service_proxy_name.as_deref() == Some(v.as_str()),
    }
}

fn object_name(kind: &'static str, meta: &Meta) -> ObjectName {
    ObjectName {
        kind,
        // kubectl's default; manifests often leave it out.
        namespace: meta.namespace_or_default().to_owned(),
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// Indexes objects by namespace/name, sorted. On a duplicate, keeps the copy that sorts
/// first (by its fields, in declaration order), so the result does not depend on input
/// order.
///
/// A sorted `Vec` rather than a `BTreeMap`: one sort of 10,000 names costs a fraction of
/// 10,000 tree insertions with string keys.
fn dedup_by_name<'a, T: Ord>(
    objects: &[&'a T],
    meta: impl Fn(&T) -> &Meta,
    kind: &'static str,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(ObjectName, &'a T)> {
    let mut named: Vec<(ObjectName, &'a T)> = objects
        .iter()
        .map(|o| (object_name(kind, meta(o)), *o))
        .collect();
    // Every name has the same kind, so compare only namespace and name. A stable sort keeps
    // duplicates in input order, as the one-by-one insertion saw them.
    named.sort_by(|(a, _), (b, _)| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut out: Vec<(ObjectName, &'a T)> = Vec::with_capacity(named.len());
    for (name, o) in named {
        match out.last_mut() {
            Some((kept_name, kept)) if *kept_name == name => {
                diags.push(Diagnostic::DuplicateObject { object: name });
                if o < *kept {
                    *kept = o;
                }
            }
            _ => out.push((name, o)),
        }
    }
    out
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    text.trim().parse().ok()
}

fn usable_service_address(ip: &IpAddr) -> bool {
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

fn convert_service(
    object: &ObjectName,
    svc: &ServiceObject,
    diags: &mut Vec<Diagnostic>,
) -> Option<Service> {
    let spec = svc.spec.as_ref()?;
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    if type_ == "ExternalName" {
        return None;
    }
    let raw_cluster_ips: Vec<&str> = if spec.cluster_ips.is_empty() {
        spec.cluster_ip.as_deref().into_iter().collect()
    } else {
        spec.cluster_ips.iter().map(String::as_str).collect()
    };
    // Headless: upstream `IsServiceIPSet` looks at the primary cluster IP only.
    match raw_cluster_ips.first() {
        None | Some(&"") | Some(&"None") => return None,
        Some(_) => {}
    }
    let name = ServiceName {
        namespace: object.namespace.clone(),
        name: object.name.clone(),
    };
    let mut parse_list = |field: &'static str, values: &mut dyn Iterator<Item = &str>| {
        let mut out = Vec::new();
        for v in values {
            // A service address becomes a VIP bound on the node: 0.0.0.0, :: or a
            // multicast or broadcast address would be nonsense there (the API never
            // allocates one).
            match parse_ip(v).filter(usable_service_address) {
                Some(ip) => out.push(ip),
                None => diags.push(Diagnostic::InvalidAddress {
                    object: object.clone(),
                    field,
                    value: v.to_owned(),
                }),
            }
        }
        out
    };
    let cluster_ips = parse_list("spec.clusterIPs", &mut raw_cluster_ips.iter().copied());
    let external_ips = parse_list(
        "spec.externalIPs",
        &mut spec.external_ips.iter().map(String::as_str),
    );
    let load_balancer_ips = parse_list(
        "status.loadBalancer.ingress.ip",
        &mut svc
            .load_balancer_ingress
            .iter()
            // `ipMode: Proxy` load balancers deliver to the node, not to the VIP.
            .filter(|i| i.ip_mode.as_deref().is_none_or(|m| m == "VIP"))
            .filter_map(|i| i.ip.as_deref())
            .filter(|ip| !ip.is_empty()),
    );
    if cluster_ips.is_empty() {
        return None;
    }
    let mut load_balancer_source_ranges = Vec::new();
    for r in &spec.load_balancer_source_ranges {
        // Validation lets whitespace through; upstream trims too.
        match r.trim().parse::<IpNet>() {
            Ok(net) => load_balancer_source_ranges.push(net.trunc()),
            Err(_) => diags.push(Diagnostic::InvalidAddress {
                object: object.clone(),
                field: "spec.loadBalancerSourceRanges",
                value: r.clone(),
            }),
        }
    }

    let externally_accessible = type_ == "LoadBalancer"
        || type_ == "NodePort"
        || (type_ == "ClusterIP" && !spec.external_ips.is_empty());
    let external_policy_local =
        externally_accessible && spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");

    let session_affinity = if spec.session_affinity.as_deref() == Some("ClientIP") {
        let timeout_seconds = match spec.session_affinity_timeout {
            None => DEFAULT_STICKY_SECONDS,
            Some(t) if (1..=86400).contains(&t) => t.unsigned_abs(),
            Some(t) => {
                diags.push(Diagnostic::InvalidAffinityTimeout {
                    service: name.clone(),
                    value: t.into(),
                });
                DEFAULT_STICKY_SECONDS
            }
        };
        SessionAffinity::ClientIp { timeout_seconds }
    } else {
        SessionAffinity::None
    };

    let health_check_node_port = if type_ == "LoadBalancer" && external_policy_local {
        match spec.health_check_node_port {
            None | Some(0) => {
                diags.push(Diagnostic::MissingHealthCheckNodePort {
                    service: name.clone(),
                });
                None
            }
            Some(p) => port_number(p, object, "", "spec.healthCheckNodePort", diags),
        }
    } else {
        None
    };

    let mut ports = Vec::new();
    for p in &spec.ports {
        let port_name = p.name.clone().unwrap_or_default();
        let Some(protocol) = protocol(p.protocol.as_deref(), object, &port_name, diags) else {
            continue;
        };
        let Some(port) = port_number(p.port, object, &port_name, "port", diags) else {
            continue;
        };
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => match port_number(n, object, &port_name, "nodePort", diags) {
                Some(n) => Some(n),
                None => continue,
            },
        };
        let target_port = match &p.target_port {
            None => None,
            Some(TargetPortObject::Number(n)) => u16::try_from(*n).ok().map(TargetPort::Number),
            Some(TargetPortObject::Name(s)) => Some(TargetPort::Name(s.clone())),
        };
        ports.push(ServicePort {
            name: ServicePortName {
                service: name.clone(),
                port: port_name,
                protocol,
            },
            port,
            node_port,
            target_port,
        });
    }

    Some(Service {
        name,
        cluster_ips,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        session_affinity,
        external_policy_local,
        internal_policy_local,
        health_check_node_port,
        ports,
    })
}

/// The API default is TCP.
fn protocol(
    raw: Option<&str>,
    object: &ObjectName,
    port_name: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Protocol> {
    match raw.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        other => {
            diags.push(Diagnostic::UnknownProtocol {
                object: object.clone(),
                port_name: port_name.to_owned(),
                protocol: other.to_owned(),
            });
            None
        }
    }
}

fn port_number(
    value: i32,
    object: &ObjectName,
    port_name: &str,
    field: &'static str,
    diags: &mut Vec<Diagnostic>,
) -> Option<u16> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            diags.push(Diagnostic::PortOutOfRange {
                object: object.clone(),
                port_name: port_name.to_owned(),
                field,
                value: value.into(),
            });
            None
        }
    }
}

/// Endpoints per service port keyed by (address, port), with the name of the slice each came
/// from (borrowed from the deduplicated slice index, which outlives the collection).
type Collected<'a> = BTreeMap<ServicePortName, BTreeMap<(IpAddr, u16), (Endpoint, &'a str)>>;

fn add_slice<'a>(
    object: &'a ObjectName,
    slice: &SliceObject,
    options: &ModelOptions,
    seen_services: &BTreeSet<(&str, &str)>,
    collected: &mut Collected<'a>,
    diags: &mut Vec<Diagnostic>,
) {
    if !ours(&slice.metadata, options) {
        return;
    }
    let Some(service_name) = slice
        .metadata
        .labels
        .service_name
        .as_ref()
        .filter(|n| !n.is_empty())
    else {
        diags.push(Diagnostic::SliceWithoutServiceLabel {
            slice: object.clone(),
        });
        return;
    };
    let family = match slice.address_type.as_str() {
        "IPv4" => AddressFamily::Inet,
        "IPv6" => AddressFamily::Inet6,
        other => {
            diags.push(Diagnostic::UnsupportedAddressType {
                slice: object.clone(),
                address_type: other.to_owned(),
            });
            return;
        }
    };
    let service = ServiceName {
        namespace: object.namespace.clone(),
        name: service_name.clone(),
    };
    if !seen_services.contains(&(service.namespace.as_str(), service.name.as_str())) {
        diags.push(Diagnostic::SliceWithoutService {
            slice: object.clone(),
            service,
        });
        return;
    }

    let mut ports = Vec::new();
    for p in &slice.ports {
        let Some(name) = &p.name else {
            diags.push(Diagnostic::SlicePortWithoutName {
                slice: object.clone(),
            });
            continue;
        };
        let Some(protocol) = protocol(p.protocol.as_deref(), object, name, diags) else {
            continue;
        };
        let Some(number) = p
            .port
            .and_then(|n| port_number(n, object, name, "port", diags))
        else {
            continue;
        };
        ports.push((
            ServicePortName {
                service: service.clone(),
                port: name.clone(),
                protocol,
            },
            number,
        ));
    }

    // The endpoints are converted once per slice, then copied to each port (moved to the
    // last one: most slices have a single port).
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for ep in &slice.endpoints {
        // Like upstream, only the first address counts (the only one stored).
        let addr = match &ep.address {
            None => continue,
            Some(RawAddress::Ip(addr)) => *addr,
            Some(RawAddress::Invalid(raw)) => {
                diags.push(Diagnostic::InvalidAddress {
                    object: object.clone(),
                    field: "endpoints.addresses",
                    value: raw.to_string(),
                });
                continue;
            }
        };
        if AddressFamily::of(&addr) != family {
            diags.push(Diagnostic::EndpointWrongFamily {
                slice: object.clone(),
                address: addr,
            });
            continue;
        }
        let hints = ep.hints.as_deref();
        endpoints.push(Endpoint {
            addr,
            port: 0,
            ready: ep.ready.unwrap_or(true),
            serving: ep.serving.unwrap_or(true),
            terminating: ep.terminating.unwrap_or(false),
            node_name: ep.node_name.clone(),
            zone: ep.zone.clone(),
            zone_hints: hints
                .map(|h| h.for_zones.iter().cloned().collect())
                .unwrap_or_default(),
            node_hints: hints
                .map(|h| h.for_nodes.iter().cloned().collect())
                .unwrap_or_default(),
        });
    }

    let is_local = |e: &Endpoint| e.node_name.as_deref() == Some(options.node_name.as_str());
    let last_port = ports.len().saturating_sub(1);
    for (i, (spn, number)) in ports.into_iter().enumerate() {
        let port_endpoints = if i == last_port {
            std::mem::take(&mut endpoints)
        } else {
            endpoints.clone()
        };
        // One lookup of the (string-keyed) port per slice port, not per endpoint.
        let per_port = collected.entry(spn.clone()).or_default();
        for mut endpoint in port_endpoints {
            endpoint.port = number;
            let addr = endpoint.addr;
            match per_port.entry((addr, number)) {
                Entry::Vacant(v) => {
                    v.insert((endpoint, object.name.as_str()));
                }
                Entry::Occupied(mut o) => {
                    diags.push(Diagnostic::DuplicateEndpoint {
                        service_port: spn.clone(),
                        address: addr,
                        port: number,
                        slices: (o.get().1.to_owned(), object.name.clone()),
                    });
                    // Slices come in name order, so "keep the first" is order-independent;
                    // a local copy wins as upstream favours isLocal.
                    if is_local(&endpoint) && !is_local(&o.get().0) {
                        o.insert((endpoint, object.name.as_str()));
                    }
                }
            }
        }
    }
}

fn convert_node(node: &core::Node, diags: &mut Vec<Diagnostic>) -> Option<NodeInfo> {
    let name = node.metadata.name.clone()?;
    let spec = node.spec.as_ref();
    let raw: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(c) if !c.is_empty() => c.iter().collect(),
        _ => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
    };
    let mut pod_cidrs = Vec::new();
    for c in raw {
        match c.parse::<IpNet>() {
            Ok(n) => pod_cidrs.push(n.trunc()),
            Err(_) => diags.push(Diagnostic::InvalidAddress {
                object: ObjectName {
                    kind: "Node",
                    namespace: String::new(),
                    name: name.clone(),
                },
                field: "spec.podCIDRs",
                value: c.clone(),
            }),
        }
    }
    Some(NodeInfo {
        labels: node.metadata.labels.clone().unwrap_or_default(),
        name,
        pod_cidrs,
    })
}
