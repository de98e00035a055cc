//! Synthetic clusters for benchmarks: `count` Services with one TCP port each and one
//! EndpointSlice of `endpoints` ready endpoints each, built as API objects and kept in the
//! compact form the daemon's store keeps (each converted as soon as it is built, as the
//! sources do). Shared by the planner
//! bench (`proxier/benches/plan.rs`) and the sync bench (`tests/src/bin/sync-bench.rs`).
//!
//! Service `i` is `bench/svc-i` with ClusterIP `10.96.(i>>8).(i&255)`, port 80 -> 8080; its
//! endpoints are `10.244.x.y` (consecutive over all Services) on nodes `node-0`..`node-4`.
//! [`Mix`] decides which Services are NodePort (node port `30000 + i / node_port_every`) and
//! LoadBalancer (also a NodePort, ingress IP `203.0.(i>>8).(i&255)`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{Interner, ServiceObject, SliceObject};

/// Which Services get a node port or a load balancer (0 = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// Every Service whose index is a multiple of this is a NodePort.
    pub node_port_every: u32,
    /// Every Service whose index is a multiple of this is a LoadBalancer (with a node port).
    pub load_balancer_every: u32,
}

impl Mix {
    /// ClusterIP only.
    pub const CLUSTER_IP: Mix = Mix {
        node_port_every: 0,
        load_balancer_every: 0,
    };

    /// Whether Service `i` is a plain ClusterIP one (neither NodePort nor LoadBalancer).
    pub fn cluster_ip_only(&self, i: u32) -> bool {
        !Self::every(self.node_port_every, i) && !Self::every(self.load_balancer_every, i)
    }

    fn every(n: u32, i: u32) -> bool {
        n != 0 && i.is_multiple_of(n)
    }
}

/// `base.x.y` with `x.y` the low 16 bits of `n`.
pub fn ip(base: [u8; 2], n: u32) -> String {
    format!("{}.{}.{}.{}", base[0], base[1], (n >> 8) & 0xff, n & 0xff)
}

/// The Services and their EndpointSlices (one per Service, same order).
pub fn cluster(count: u32, endpoints: u32, mix: Mix) -> (Vec<ServiceObject>, Vec<SliceObject>) {
    let mut services = Vec::with_capacity(count as usize);
    let mut slices = Vec::with_capacity(count as usize);
    let mut interner = Interner::default();
    for i in 0..count {
        let name = format!("svc-{i}");
        let lb = Mix::every(mix.load_balancer_every, i);
        let node_port = (lb || Mix::every(mix.node_port_every, i)).then(|| {
            let step = mix.node_port_every.max(1);
            30000 + i32::try_from(i / step).unwrap_or(0)
        });
        services.push(ServiceObject::from_api(Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("bench".to_owned()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(
                    if lb {
                        "LoadBalancer"
                    } else if node_port.is_some() {
                        "NodePort"
                    } else {
                        "ClusterIP"
                    }
                    .to_owned(),
                ),
                cluster_ip: Some(ip([10, 96], i)),
                ports: Some(vec![ServicePort {
                    port: 80,
                    node_port,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: lb.then(|| ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        ip: Some(ip([203, 0], i)),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            }),
        }));
        slices.push(SliceObject::from_api(
            EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-abcde")),
                    namespace: Some("bench".to_owned()),
                    labels: Some(BTreeMap::from([(
                        "kubernetes.io/service-name".to_owned(),
                        name,
                    )])),
                    ..Default::default()
                },
                address_type: "IPv4".to_owned(),
                ports: Some(vec![EndpointPort {
                    name: Some(String::new()),
                    port: Some(8080),
                    protocol: Some("TCP".to_owned()),
                    ..Default::default()
                }]),
                endpoints: (0..endpoints)
                    .map(|e| Endpoint {
                        addresses: vec![ip([10, 244], i * endpoints + e)],
                        conditions: Some(EndpointConditions {
                            ready: Some(true),
                            ..Default::default()
                        }),
                        node_name: Some(format!("node-{}", e % 5)),
                        ..Default::default()
                    })
                    .collect(),
            },
            &mut interner,
        ));
    }
    (services, slices)
}
