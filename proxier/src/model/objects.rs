//! The API objects as the proxier keeps them: only the fields the model reads, still
//! unvalidated (the model checks them and reports bad input exactly as it did on the API
//! types), in a compact form.
//!
//! Why not keep the `k8s-openapi` structs: at 10,000 Services x 10 endpoints they take ~66
//! MiB, most of it EndpointSlice endpoints (a ~340-byte struct each, plus a heap string per
//! address and node name) of which the proxier reads ~70 bytes. The sources convert every
//! object as it arrives ([`ServiceObject::from_api`], [`SliceObject::from_api`]) and drop
//! the original; fields the model never reads (managedFields, targetRef, hostname, most
//! labels and annotations, status conditions) are never stored, so a change to them alone
//! is no change at all.
//!
//! Node names and zones repeat across thousands of endpoints: an [`Interner`] shares one
//! copy of each. Our own Node stays a `k8s-openapi` object: there is only one.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME};

/// Set by the EndpointSlice controller: when the change behind a slice update happened.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Parses a [`LAST_CHANGE_TRIGGER_TIME`] value (RFC 3339); `None` if malformed.
pub fn parse_trigger_time(value: &str) -> Option<SystemTime> {
    value
        .trim()
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(SystemTime::from)
}

/// The metadata the proxier reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Meta {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub labels: Labels,
}

/// The three labels the proxier reads; every other label is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Labels {
    /// `kubernetes.io/service-name`: the Service an EndpointSlice belongs to.
    pub service_name: Option<String>,
    /// `service.kubernetes.io/service-proxy-name`: hands the object to another proxy.
    pub service_proxy_name: Option<String>,
    /// `service.kubernetes.io/headless` is present.
    pub headless: bool,
}

impl Meta {
    fn from_api(meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        let mut labels = meta.labels.unwrap_or_default();
        Self {
            namespace: meta.namespace,
            name: meta.name,
            labels: Labels {
                service_name: labels.remove(LABEL_SERVICE_NAME),
                service_proxy_name: labels.remove(LABEL_SERVICE_PROXY_NAME),
                headless: labels.contains_key(LABEL_HEADLESS),
            },
        }
    }

    /// The namespace the model gives an object without one (kubectl's default).
    pub fn namespace_or_default(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// What the proxier reads of a Service.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceObject {
    pub metadata: Meta,
    /// `None`: the object has no spec (the model leaves it out).
    pub spec: Option<ServiceSpec>,
    /// `status.loadBalancer.ingress`.
    pub load_balancer_ingress: Vec<LoadBalancerIngress>,
}

/// The Service spec fields the model reads; list fields are empty when absent (the model
/// treats both alike).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceSpec {
    pub type_: Option<String>,
    pub cluster_ip: Option<String>,
    pub cluster_ips: Vec<String>,
    pub external_ips: Vec<String>,
    pub load_balancer_source_ranges: Vec<String>,
    pub external_traffic_policy: Option<String>,
    pub internal_traffic_policy: Option<String>,
    pub session_affinity: Option<String>,
    /// `sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub session_affinity_timeout: Option<i32>,
    pub health_check_node_port: Option<i32>,
    pub ports: Vec<ServicePortObject>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePortObject {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: i32,
    pub node_port: Option<i32>,
    pub target_port: Option<TargetPortObject>,
}

/// `targetPort` as the API gives it (int-or-string).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TargetPortObject {
    Number(i32),
    Name(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LoadBalancerIngress {
    pub ip: Option<String>,
    pub ip_mode: Option<String>,
}

impl ServiceObject {
    /// Keeps what the model reads of `service`.
    pub fn from_api(service: core::Service) -> Self {
        let load_balancer_ingress = service
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default()
            .into_iter()
            .map(|i| LoadBalancerIngress {
                ip: i.ip,
                ip_mode: i.ip_mode,
            })
            .collect();
        let spec = service.spec.map(|spec| ServiceSpec {
            type_: spec.type_,
            cluster_ip: spec.cluster_ip,
            cluster_ips: spec.cluster_ips.unwrap_or_default(),
            external_ips: spec.external_ips.unwrap_or_default(),
            load_balancer_source_ranges: spec.load_balancer_source_ranges.unwrap_or_default(),
            external_traffic_policy: spec.external_traffic_policy,
            internal_traffic_policy: spec.internal_traffic_policy,
            session_affinity: spec.session_affinity,
            session_affinity_timeout: spec
                .session_affinity_config
                .and_then(|c| c.client_ip)
                .and_then(|c| c.timeout_seconds),
            health_check_node_port: spec.health_check_node_port,
            ports: spec
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| ServicePortObject {
                    name: p.name,
                    protocol: p.protocol,
                    port: p.port,
                    node_port: p.node_port,
                    target_port: p.target_port.map(|t| match t {
                        IntOrString::Int(n) => TargetPortObject::Number(n),
                        IntOrString::String(s) => TargetPortObject::Name(s),
                    }),
                })
                .collect(),
        });
        detached(Self {
            metadata: Meta::from_api(service.metadata),
            spec,
            load_balancer_ingress,
        })
    }

    /// Whether any port is UDP (the only protocol with conntrack entries to clean).
    pub fn has_udp_port(&self) -> bool {
        self.spec
            .as_ref()
            .is_some_and(|s| s.ports.iter().any(|p| p.protocol.as_deref() == Some("UDP")))
    }
}

/// What the proxier reads of an EndpointSlice.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SliceObject {
    pub metadata: Meta,
    /// The [`LAST_CHANGE_TRIGGER_TIME`] annotation, when present and valid.
    pub trigger_time: Option<SystemTime>,
    pub address_type: String,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<EndpointObject>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlicePort {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: Option<i32>,
}

/// One endpoint: ~70 bytes instead of the API struct's ~340 plus heap strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointObject {
    /// The first of `addresses`, the only one kube-proxy reads; `None` if there is none.
    pub address: Option<RawAddress>,
    /// `conditions.ready` / `serving` / `terminating` as given (`None`: not set).
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub node_name: Option<SharedName>,
    pub zone: Option<SharedName>,
    /// `hints`, when it names any zone or node (rare: boxed to keep endpoints small).
    pub hints: Option<Box<Hints>>,
}

/// An endpoint address: parsed when it parses (trimmed, as upstream), else kept as given so
/// the model can name it in its diagnostic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RawAddress {
    Ip(IpAddr),
    Invalid(Box<str>),
}

impl RawAddress {
    pub fn parse(text: &str) -> Self {
        text.trim()
            .parse()
            .map_or_else(|_| Self::Invalid(text.into()), Self::Ip)
    }
}

/// `hints.forZones[].name` and `hints.forNodes[].name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hints {
    pub for_zones: Vec<String>,
    pub for_nodes: Vec<String>,
}

impl SliceObject {
    /// Keeps what the model reads of `slice`, sharing node names and zones through
    /// `interner`.
    pub fn from_api(slice: discovery::EndpointSlice, interner: &mut Interner) -> Self {
        let trigger_time = slice
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LAST_CHANGE_TRIGGER_TIME))
            .and_then(|v| parse_trigger_time(v));
        let endpoints = slice
            .endpoints
            .into_iter()
            .map(|e| {
                let (ready, serving, terminating) = e
                    .conditions
                    .map_or((None, None, None), |c| (c.ready, c.serving, c.terminating));
                let hints = e.hints.and_then(|h| {
                    let hints = Hints {
                        for_zones: h.for_zones.into_iter().flatten().map(|z| z.name).collect(),
                        for_nodes: h.for_nodes.into_iter().flatten().map(|n| n.name).collect(),
                    };
                    (!hints.for_zones.is_empty() || !hints.for_nodes.is_empty())
                        .then(|| Box::new(hints))
                });
                EndpointObject {
                    address: e.addresses.first().map(|a| RawAddress::parse(a)),
                    ready,
                    serving,
                    terminating,
                    node_name: e.node_name.map(|n| interner.intern(&n)),
                    zone: e.zone.map(|z| interner.intern(&z)),
                    hints,
                }
            })
            .collect();
        detached(Self {
            metadata: Meta::from_api(slice.metadata),
            trigger_time,
            address_type: slice.address_type,
            ports: slice
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| SlicePort {
                    name: p.name,
                    protocol: p.protocol,
                    port: p.port,
                })
                .collect(),
            endpoints,
        })
    }
}

/// `kept` in allocations of its own. The fields it takes from the API object (names, labels,
/// addresses, the endpoint list reusing the API list's buffer in place) sit among that
/// object's allocations: kept, they pin its freed memory in small pieces that later objects
/// cannot reuse. Measured in the lab while listing 10,000 Services and their slices: the heap
/// grew to 60 MB for 16 MB in use; copying the compact object out leaves the API object's
/// memory free in whole runs, and the copy's Vecs have no spare capacity.
fn detached<T: Clone>(kept: T) -> T {
    kept.clone()
}

/// Converts whole collections (tests, tools and benches that hold API objects).
pub fn from_api(
    services: impl IntoIterator<Item = core::Service>,
    slices: impl IntoIterator<Item = discovery::EndpointSlice>,
) -> (Vec<ServiceObject>, Vec<SliceObject>) {
    let mut interner = Interner::default();
    (
        services.into_iter().map(ServiceObject::from_api).collect(),
        slices
            .into_iter()
            .map(|s| SliceObject::from_api(s, &mut interner))
            .collect(),
    )
}

/// A string many objects hold one copy of (node names, zones; see [`Interner`]). A thin
/// pointer: an `Arc<str>` is two words, and an endpoint holds two of these (1.6 MB at
/// 100,000 endpoints).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedName(Arc<String>);

impl SharedName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `a` and `b` are one allocation.
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl std::ops::Deref for SharedName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

// Hash and Eq agree with `str`'s (`String` hashes as its `str`), so a set of names can be
// looked up by `&str`.
impl std::borrow::Borrow<str> for SharedName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SharedName {
    fn from(s: &str) -> Self {
        Self(Arc::new(s.to_owned()))
    }
}

/// Shares one allocation per distinct string (node names, zones). Strings no object holds
/// any more are dropped whenever the set has doubled since the last sweep, so a cluster that
/// replaces its nodes does not grow it forever.
#[derive(Debug, Default)]
pub struct Interner {
    strings: HashSet<SharedName>,
    sweep_at: usize,
}

impl Interner {
    const MIN_SWEEP: usize = 1024;

    pub fn intern(&mut self, s: &str) -> SharedName {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        if self.strings.len() >= self.sweep_at {
            // Only the set holds a string whose count is 1.
            self.strings.retain(|s| Arc::strong_count(&s.0) > 1);
            self.sweep_at = (self.strings.len() * 2).max(Self::MIN_SWEEP);
        }
        let shared = SharedName::from(s);
        self.strings.insert(shared.clone());
        shared
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointHints, ForZone};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use pretty_assertions::assert_eq;
    use std::collections::BTreeMap;

    fn slice(endpoints: Vec<Endpoint>) -> discovery::EndpointSlice {
        discovery::EndpointSlice {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("prod".into()),
                labels: Some(BTreeMap::from([
                    (LABEL_SERVICE_NAME.to_owned(), "web".to_owned()),
                    ("app".to_owned(), "web".to_owned()),
                ])),
                annotations: Some(BTreeMap::from([(
                    LAST_CHANGE_TRIGGER_TIME.to_owned(),
                    "2026-11-30T10:00:00Z".to_owned(),
                )])),
                resource_version: Some("42".into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints,
            ports: None,
        }
    }

    #[test]
    fn a_slice_keeps_what_the_model_reads_and_shares_node_names() {
        let ep = |addr: &str, node: &str| Endpoint {
            addresses: vec![addr.into(), "10.0.0.99".into()],
            conditions: Some(EndpointConditions {
                ready: Some(false),
                ..Default::default()
            }),
            node_name: Some(node.into()),
            hostname: Some("pod".into()),
            ..Default::default()
        };
        let mut zoned = ep(" 10.0.0.2 ", "node-a");
        zoned.hints = Some(EndpointHints {
            for_zones: Some(vec![ForZone { name: "z1".into() }]),
            for_nodes: None,
        });
        let mut interner = Interner::default();
        let s = SliceObject::from_api(
            slice(vec![ep("10.0.0.1", "node-a"), zoned, ep("bad", "node-b")]),
            &mut interner,
        );
        let at = parse_trigger_time("2026-11-30T10:00:00Z");
        assert!(at.is_some());
        let node_a = SharedName::from("node-a");
        assert_eq!(
            s,
            SliceObject {
                metadata: Meta {
                    namespace: Some("prod".into()),
                    name: Some("web-1".into()),
                    labels: Labels {
                        service_name: Some("web".into()),
                        ..Default::default()
                    },
                },
                trigger_time: at,
                address_type: "IPv4".into(),
                ports: vec![],
                endpoints: vec![
                    EndpointObject {
                        address: Some(RawAddress::Ip("10.0.0.1".parse().unwrap())),
                        ready: Some(false),
                        node_name: Some(node_a.clone()),
                        ..Default::default()
                    },
                    EndpointObject {
                        address: Some(RawAddress::Ip("10.0.0.2".parse().unwrap())),
                        ready: Some(false),
                        node_name: Some(node_a),
                        hints: Some(Box::new(Hints {
                            for_zones: vec!["z1".into()],
                            for_nodes: vec![],
                        })),
                        ..Default::default()
                    },
                    EndpointObject {
                        address: Some(RawAddress::Invalid("bad".into())),
                        ready: Some(false),
                        node_name: Some(SharedName::from("node-b")),
                        ..Default::default()
                    },
                ],
            }
        );
        let (a, b) = (&s.endpoints[0].node_name, &s.endpoints[1].node_name);
        assert!(matches!((a, b), (Some(a), Some(b)) if SharedName::ptr_eq(a, b)));
        assert_eq!(interner.len(), 2);
    }

    #[test]
    fn the_interner_forgets_strings_nobody_holds() {
        let mut interner = Interner::default();
        let kept = interner.intern("kept");
        for i in 0..Interner::MIN_SWEEP * 3 {
            drop(interner.intern(&format!("node-{i}")));
        }
        // Swept at least once since the first MIN_SWEEP strings: never more than twice
        // the live set plus one sweep's worth.
        assert!(interner.len() <= Interner::MIN_SWEEP, "{}", interner.len());
        assert!(SharedName::ptr_eq(&kept, &interner.intern("kept")));
    }

    #[test]
    fn a_converted_slice_holds_no_allocation_of_the_api_object() {
        let mut endpoints = Vec::with_capacity(64);
        endpoints.extend((1..=10).map(|i| Endpoint {
            addresses: vec![format!("10.0.0.{i}")],
            ..Default::default()
        }));
        let api = slice(endpoints);
        let name = api.metadata.name.as_deref().unwrap_or_default().as_ptr();
        let label = api
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SERVICE_NAME));
        let label = label.map(|v| v.as_ptr());
        let kept = SliceObject::from_api(api, &mut Interner::default());
        assert_eq!(kept.endpoints.len(), 10);
        assert_eq!(kept.endpoints.capacity(), 10, "no spare room kept");
        // The API object is alive while the copy is made: a kept buffer has its address.
        assert_ne!(kept.metadata.name.as_deref().map(str::as_ptr), Some(name));
        assert_ne!(
            kept.metadata
                .labels
                .service_name
                .as_deref()
                .map(str::as_ptr),
            label
        );
    }

    #[test]
    fn the_api_size_is_what_the_store_saves() {
        // The reason this module exists; a regression here is a memory regression.
        assert!(std::mem::size_of::<EndpointObject>() <= 56);
        assert!(std::mem::size_of::<Endpoint>() >= 300);
    }
}
