//! Which UDP conntrack entries are stale (reference §1 #25). Pure: the sync reads the table
//! and deletes what [`stale_entries`] picks.
//!
//! UDP has no connection to end, so a client that keeps sending from one socket keeps its
//! conntrack entry (and with it the NAT to a backend) alive after that backend is gone. As
//! upstream's reconciler (`pkg/proxy/conntrack/cleanup.go`), for UDP service ports only:
//!
//! - an entry whose original destination is a service address (ClusterIP, external IP,
//!   load-balancer IP) and port, and whose reply source is not a *serving* endpoint of that
//!   port, is stale; this includes entries made while the port had no endpoint at all (the
//!   reply source is then the service address itself);
//! - an entry whose original destination port is a UDP NodePort and whose reply source is not
//!   a serving endpoint of it is stale.
//!
//! Serving endpoints count whatever the traffic policies, topology or terminating state (a
//! change of those must not cut existing flows, as for TCP). Unlike upstream, the service
//! address is matched with its port: upstream keys by address alone, so with two UDP ports of
//! one address whose endpoints differ, the last port in map order decides for both.
//!
//! SCTP and TCP entries are never touched (upstream neither): they end on their own.
//!
//! In IPVS mode the kernel does most of this itself: with `expire_nodest_conn=1` (which the
//! sysctl step sets) deleting a real server queues a work that expires its IPVS connections
//! and, with `vs/conntrack=1`, their conntrack entries (seen in the lab guest, 6.1: the entry
//! is gone before the next `conntrack -L`). With `expire_nodest_conn=0` the IPVS connection
//! keeps the flow on the deleted server and its datagrams are dropped until the IPVS UDP
//! timeout, whether or not the conntrack entry is deleted. What is left for this cleanup:
//! entries the kernel did not expire (made before this process ran, e.g. under other
//! sysctls), and parity with upstream.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use netlink::Protocol;
use netlink::conntrack::Entry;

use crate::model::manifests::ObjectRefs;
use crate::model::{Model, ModelOptions, ServiceName};
use crate::plan::incremental::{self, UnitObjects};

/// `IPPROTO_UDP` as conntrack tuples carry it.
const UDP: u8 = 17;

/// The serving endpoint addresses of every UDP service port: what a UDP entry's reply source
/// must be for the entry to stay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpServing {
    /// (service address, port) -> serving endpoint addresses.
    pub addresses: BTreeMap<(IpAddr, u16), BTreeSet<IpAddr>>,
    /// UDP NodePort -> serving endpoint addresses.
    pub node_ports: BTreeMap<u16, BTreeSet<IpAddr>>,
}

impl UdpServing {
    /// No UDP service port: no entry can be stale.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.node_ports.is_empty()
    }

    /// From a model.
    pub fn of_model(model: &Model) -> Self {
        let mut out = Self::default();
        for svc in model.services.values() {
            for port in svc
                .ports
                .iter()
                .filter(|p| p.name.protocol == Protocol::Udp)
            {
                let serving: BTreeSet<IpAddr> = model
                    .endpoints
                    .get(&port.name)
                    .into_iter()
                    .flatten()
                    .filter(|e| e.serving)
                    .map(|e| e.addr)
                    .collect();
                for ip in svc
                    .cluster_ips
                    .iter()
                    .chain(&svc.external_ips)
                    .chain(&svc.load_balancer_ips)
                {
                    out.addresses
                        .entry((*ip, port.port))
                        .or_default()
                        .extend(&serving);
                }
                if let Some(np) = port.node_port {
                    out.node_ports.entry(np).or_default().extend(&serving);
                }
            }
        }
        out
    }

    /// From the objects: only the Services with a UDP port (and their slices) are modelled,
    /// so the cost follows the number of UDP Services, not the cluster's size.
    pub fn of_objects(objects: ObjectRefs<'_>, options: &ModelOptions) -> Self {
        Self::merged(Self::by_service(objects, options).values())
    }

    /// Each Service's part ([`Self::of_unit`]), for the Services with a UDP port.
    pub fn by_service(
        objects: ObjectRefs<'_>,
        options: &ModelOptions,
    ) -> BTreeMap<ServiceName, Self> {
        let udp: BTreeSet<(&str, &str)> = objects
            .services
            .iter()
            .filter(|s| s.has_udp_port())
            .map(|s| incremental::service_unit(s))
            .collect();
        if udp.is_empty() {
            return BTreeMap::new();
        }
        incremental::group(objects.services, objects.endpoint_slices, |unit| {
            udp.contains(&unit)
        })
        .into_iter()
        .filter_map(|((namespace, name), unit)| {
            let serving = Self::of_unit(&unit, options)?;
            let name = ServiceName {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            };
            Some((name, serving))
        })
        .collect()
    }

    /// One Service's part, from its objects (a Service and its slices, as the incremental
    /// planner's unit); `None` when it has no UDP port. The whole is [`Self::merged`] over
    /// the parts: endpoints join a Service's ports only within the Service.
    pub fn of_unit(unit: &UnitObjects<'_>, options: &ModelOptions) -> Option<Self> {
        if !unit.services.iter().any(|s| s.has_udp_port()) {
            return None;
        }
        let (model, _) = Model::build_refs(&unit.services, &unit.slices, &[], options);
        Some(Self::of_model(&model))
    }

    /// The union of `parts` (two Services may share an address, e.g. an external IP).
    pub fn merged<'a>(parts: impl IntoIterator<Item = &'a Self>) -> Self {
        let mut out = Self::default();
        for part in parts {
            for (key, eps) in &part.addresses {
                out.addresses.entry(*key).or_default().extend(eps);
            }
            for (port, eps) in &part.node_ports {
                out.node_ports.entry(*port).or_default().extend(eps);
            }
        }
        out
    }
}

/// Whether a sync must look for stale entries: the serving endpoints of a UDP service port
/// changed since the last successful cleanup (`None`: none yet in this process, so anything
/// may have changed while it was down). Without UDP service ports nothing can be stale.
pub fn cleanup_needed(last: Option<&UdpServing>, now: &UdpServing) -> bool {
    last != Some(now) && !now.is_empty()
}

/// The UDP entries of `entries` that `serving` says are stale, each once, in input order.
pub fn stale_entries(entries: &[Entry], serving: &UdpServing) -> Vec<Entry> {
    entries
        .iter()
        .filter(|e| e.orig.protocol == UDP)
        .filter(|e| {
            let reply_src = e.reply.src;
            let stale = |eps: &BTreeSet<IpAddr>| !eps.contains(&reply_src);
            let by_address = e
                .orig
                .dst_port
                .and_then(|port| serving.addresses.get(&(e.orig.dst, port)))
                .is_some_and(stale);
            let by_node_port = e
                .orig
                .dst_port
                .and_then(|port| serving.node_ports.get(&port))
                .is_some_and(stale);
            by_address || by_node_port
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use netlink::conntrack::Tuple;
    use pretty_assertions::assert_eq;

    use super::*;
    use crate::model::manifests::{Manifests, parse_manifests};

    fn serving_of(objects: &Manifests) -> UdpServing {
        let services: Vec<_> = objects.services.iter().collect();
        let slices: Vec<_> = objects.endpoint_slices.iter().collect();
        UdpServing::of_objects(objects.refs(&services, &slices), &options())
    }

    const OBJECTS: &str = "
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  externalIPs: [192.0.2.10]
  ports:
  - {name: dns, protocol: UDP, port: 53, targetPort: 53, nodePort: 30053}
  - {name: dns-tcp, protocol: TCP, port: 53, targetPort: 53, nodePort: 30054}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-1
  namespace: kube-system
  labels: {kubernetes.io/service-name: dns}
addressType: IPv4
ports:
- {name: dns, protocol: UDP, port: 53}
- {name: dns-tcp, protocol: TCP, port: 53}
endpoints:
- addresses: [10.244.0.5]
  conditions: {ready: true}
- addresses: [10.244.0.6]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.244.0.7]
  conditions: {ready: false, serving: false}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.20
  ports:
  - {protocol: TCP, port: 80}
";

    fn options() -> ModelOptions {
        ModelOptions {
            node_name: "node-1".into(),
            service_proxy_name: None,
        }
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn entry(protocol: u8, client: &str, dst: &str, dport: u16, backend: &str) -> Entry {
        let t = |src: &str, dst: &str, sport, dport| Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol,
            src_port: Some(sport),
            dst_port: Some(dport),
            other_l4: Vec::new(),
        };
        Entry {
            orig: t(client, dst, 40000, dport),
            reply: t(backend, client, 53, 40000),
            id: Some(1),
            zone: None,
        }
    }

    #[test]
    fn the_per_service_parts_merge_to_the_whole_model() {
        // Two UDP Services sharing an external IP and port: their parts overlap.
        let text = format!(
            "{OBJECTS}\n---\n{}",
            OBJECTS
                .replace("name: dns,", "name: dns2,")
                .replace("name: dns-1", "name: dns2-1")
                .replace("service-name: dns}", "service-name: dns2}")
                .replace("10.96.0.10", "10.96.0.11")
                .replace("nodePort: 30053", "nodePort: 30063")
                .replace("nodePort: 30054", "nodePort: 30064")
                .replace("10.244.0.5", "10.244.1.5")
        );
        let m = parse_manifests(&text);
        assert_eq!(m.diagnostics, vec![]);
        let (model, _) = Model::build(&m.services, &m.endpoint_slices, &m.nodes, &options());
        let whole = UdpServing::of_model(&model);
        assert_eq!(whole.addresses.len(), 3, "{whole:?}");
        assert_eq!(serving_of(&m), whole);
        let services: Vec<_> = m.services.iter().collect();
        let slices: Vec<_> = m.endpoint_slices.iter().collect();
        let parts = UdpServing::by_service(m.refs(&services, &slices), &options());
        assert_eq!(parts.len(), 2);
    }

    #[test]
    fn serving_endpoints_of_udp_ports_only() {
        let serving = serving_of(&parse_manifests(OBJECTS));
        // The ready and the serving-terminating endpoint; not the unserving one; no TCP port.
        let eps = ips(&["10.244.0.5", "10.244.0.6"]);
        assert_eq!(
            serving,
            UdpServing {
                addresses: [
                    (("10.96.0.10".parse().unwrap(), 53), eps.clone()),
                    (("192.0.2.10".parse().unwrap(), 53), eps.clone()),
                ]
                .into(),
                node_ports: [(30053, eps)].into(),
            }
        );
        assert!(serving_of(&Manifests::default()).is_empty());
    }

    #[test]
    fn entries_not_answered_by_a_serving_endpoint_are_stale() {
        let serving = serving_of(&parse_manifests(OBJECTS));
        let entries = vec![
            // Kept: answered by a serving endpoint (ready, or terminating but serving).
            entry(UDP, "10.0.0.1", "10.96.0.10", 53, "10.244.0.5"),
            entry(UDP, "10.0.0.1", "192.0.2.10", 53, "10.244.0.6"),
            entry(UDP, "10.0.0.1", "10.0.0.2", 30053, "10.244.0.5"),
            // Stale: a removed or unserving backend, to the ClusterIP, an external IP and
            // the NodePort on a node address.
            entry(UDP, "10.0.0.1", "10.96.0.10", 53, "10.244.0.9"),
            entry(UDP, "10.0.0.1", "192.0.2.10", 53, "10.244.0.7"),
            entry(UDP, "10.0.0.3", "10.0.0.2", 30053, "10.244.0.9"),
            // Stale: made while the port had no endpoint (the VIP answered itself).
            entry(UDP, "10.0.0.1", "10.96.0.10", 53, "10.96.0.10"),
            // Kept: TCP and SCTP, another port of the address, a foreign address.
            entry(6, "10.0.0.1", "10.96.0.10", 53, "10.244.0.9"),
            entry(132, "10.0.0.1", "10.96.0.10", 53, "10.244.0.9"),
            entry(UDP, "10.0.0.1", "10.96.0.10", 5353, "10.244.0.9"),
            entry(UDP, "10.0.0.1", "10.96.0.20", 53, "10.244.0.9"),
        ];
        let stale = stale_entries(&entries, &serving);
        assert_eq!(stale, entries[3..7].to_vec());
    }

    #[test]
    fn cleanup_runs_first_and_on_changes_of_serving_endpoints() {
        let serving = serving_of(&parse_manifests(OBJECTS));
        let none = UdpServing::default();
        assert!(cleanup_needed(None, &serving));
        assert!(!cleanup_needed(Some(&serving), &serving));
        assert!(!cleanup_needed(None, &none));
        let mut fewer = serving.clone();
        fewer.node_ports.clear();
        assert!(cleanup_needed(Some(&serving), &fewer));
    }

    #[test]
    fn a_port_without_endpoints_makes_every_entry_to_it_stale() {
        let text = OBJECTS.replace(
            "kubernetes.io/service-name: dns",
            "kubernetes.io/service-name: other",
        );
        let serving = serving_of(&parse_manifests(&text));
        assert_eq!(
            serving.addresses.values().map(BTreeSet::len).sum::<usize>(),
            0
        );
        let e = entry(UDP, "10.0.0.1", "10.96.0.10", 53, "10.244.0.5");
        assert_eq!(stale_entries(std::slice::from_ref(&e), &serving), vec![e]);
    }
}
