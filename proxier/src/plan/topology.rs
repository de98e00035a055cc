//! Endpoint selection with upstream semantics (`CategorizeEndpoints` in kube-proxy's
//! `pkg/proxy/topology.go`), written from its documented behaviour:
//!
//! - Cluster endpoints: Ready endpoints, restricted by topology hints when the hints apply;
//!   if none, Serving and Terminating endpoints (ignoring topology).
//! - Local endpoints: local Ready endpoints, else local Serving and Terminating ones.
//! - Hints apply only if *every* Ready endpoint carries a hint of the kind and at least one
//!   names this node (node hints, `PreferSameNode`) or this node's zone (zone hints, used by
//!   `PreferClose` / `PreferSameZone` and topology-aware routing). Node hints win over zone
//!   hints. `trafficDistribution` itself is read by the EndpointSlice controller, which
//!   writes the hints; the proxier, like kube-proxy, looks only at the hints.

use crate::model::Endpoint;

/// The two endpoint lists of one service port, as seen from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Categorized<'a> {
    /// `None` when the service port never uses Cluster policy.
    pub cluster: Option<Vec<&'a Endpoint>>,
    /// Empty when there is no usable local endpoint (or the port never uses Local policy).
    pub local: Vec<&'a Endpoint>,
    /// Whether any usable endpoint exists anywhere in the cluster.
    pub has_any: bool,
}

/// The topology filter chosen from the hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    None,
    SameNode,
    SameZone,
}

/// Categorizes `endpoints` (already restricted to one family) for this node.
pub fn categorize<'a>(
    endpoints: &[&'a Endpoint],
    uses_cluster: bool,
    uses_local: bool,
    node_name: &str,
    zone: Option<&str>,
) -> Categorized<'a> {
    let is_local = |e: &Endpoint| e.node_name.as_deref() == Some(node_name);
    let serving_terminating = |e: &Endpoint| e.serving && e.terminating;
    let mut has_any = false;

    let cluster = if uses_cluster {
        let mode = topology_mode(endpoints, node_name, zone);
        let mut eps: Vec<&Endpoint> = endpoints
            .iter()
            .copied()
            .filter(|e| e.ready && available(e, mode, node_name, zone))
            .collect();
        if eps.is_empty() {
            // The mode is only chosen when a Ready endpoint matches it, so an empty list here
            // means no Ready endpoint anywhere: fall back to terminating-but-serving ones.
            eps = endpoints
                .iter()
                .copied()
                .filter(|e| serving_terminating(e))
                .collect();
        }
        has_any = !eps.is_empty();
        Some(eps)
    } else {
        None
    };

    let mut local = Vec::new();
    if uses_local {
        let mut local_ready = false;
        let mut local_serving_terminating = false;
        for e in endpoints {
            if e.ready {
                has_any = true;
                local_ready |= is_local(e);
            } else if serving_terminating(e) {
                has_any = true;
                local_serving_terminating |= is_local(e);
            }
        }
        if local_ready {
            local = endpoints
                .iter()
                .copied()
                .filter(|e| is_local(e) && e.ready)
                .collect();
        } else if local_serving_terminating {
            local = endpoints
                .iter()
                .copied()
                .filter(|e| is_local(e) && serving_terminating(e))
                .collect();
        }
    }

    Categorized {
        cluster,
        local,
        has_any,
    }
}

fn topology_mode(endpoints: &[&Endpoint], node_name: &str, zone: Option<&str>) -> TopologyMode {
    let mut any_ready = false;
    let mut all_node_hints = true;
    let mut hint_for_node = false;
    let mut all_zone_hints = true;
    let mut hint_for_zone = false;
    for e in endpoints.iter().filter(|e| e.ready) {
        any_ready = true;
        if e.node_hints.is_empty() {
            all_node_hints = false;
        } else if e.node_hints.contains(node_name) {
            hint_for_node = true;
        }
        if e.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if zone.is_some_and(|z| e.zone_hints.contains(z)) {
            hint_for_zone = true;
        }
    }
    if !any_ready {
        TopologyMode::None
    } else if all_node_hints && hint_for_node {
        TopologyMode::SameNode
    } else if all_zone_hints && hint_for_zone {
        TopologyMode::SameZone
    } else {
        TopologyMode::None
    }
}

fn available(e: &Endpoint, mode: TopologyMode, node_name: &str, zone: Option<&str>) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::SameNode => e.node_hints.contains(node_name),
        TopologyMode::SameZone => zone.is_some_and(|z| e.zone_hints.contains(z)),
    }
}
