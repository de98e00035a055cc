//! Planner benchmark: 10,000 Services x 10 endpoints (half NodePort, a tenth LoadBalancer),
//! built as API objects, then modelled, planned and rendered. Prints the median of several
//! runs of each stage. Run with `cargo bench -p ipvs-proxier --bench plan`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use ipvs_proxier::model::Model;
use ipvs_proxier::plan::{ConfigFile, plan, render};
use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use netlink::AddressFamily;

const SERVICES: u32 = 10_000;
const ENDPOINTS: u32 = 10;
const RUNS: usize = 7;

fn ip(base: [u8; 2], n: u32) -> String {
    format!("{}.{}.{}.{}", base[0], base[1], (n >> 8) & 0xff, n & 0xff)
}

fn objects() -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..SERVICES {
        let name = format!("svc-{i}");
        let node_port = (i % 2 == 0).then(|| 30000 + i32::try_from(i / 2).unwrap_or(0));
        let lb = i % 10 == 0;
        services.push(Service {
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
        });
        slices.push(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-abcde")),
                namespace: Some("bench".to_owned()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".to_owned(),
                    name.clone(),
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
            endpoints: (0..ENDPOINTS)
                .map(|e| Endpoint {
                    addresses: vec![ip([10, 244], i * ENDPOINTS + e)],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..Default::default()
                    }),
                    node_name: Some(format!("node-{}", e % 5)),
                    ..Default::default()
                })
                .collect(),
        });
    }
    (services, slices)
}

/// (best, median) of `RUNS` runs: the best shows the cost on an idle core, the median how
/// a shared machine behaves.
struct Figure(Duration, Duration);

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "best {:?}, median {:?} of {RUNS}", self.0, self.1)
    }
}

fn time<T>(mut f: impl FnMut() -> T) -> Figure {
    let mut runs: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            black_box(f());
            start.elapsed()
        })
        .collect();
    runs.sort();
    Figure(runs[0], runs[runs.len() / 2])
}

fn main() {
    let (services, slices) = objects();
    let (config, facts) = ConfigFile::parse(
        "nodeName: node-0\nipFamilies: [IPv4]\nclusterCIDRs: [10.244.0.0/16]\n\
         nodeIPs: [10.255.0.1, 192.168.1.5]\nprimaryNodeIPs: [10.255.0.1]\n",
    )
    .and_then(ConfigFile::into_parts)
    .unwrap_or_else(|e| unreachable!("bench config: {e}"));
    let options = config.model_options();

    let model_time = time(|| Model::build(&services, &slices, &[], &options));
    let (model, _) = Model::build(&services, &slices, &[], &options);
    let plan_time = time(|| plan(&model, &config, &facts));
    let p = plan(&model, &config, &facts);
    let render_time = time(|| {
        (
            render::ipvs(&p),
            render::ipsets(&p),
            render::iptables(&p, AddressFamily::Inet),
        )
    });
    let f = &p.families[0];
    println!(
        "planner: {SERVICES} services x {ENDPOINTS} endpoints -> {} virtual servers, {} real servers, {} bound VIPs",
        f.ipvs.services.len(),
        f.ipvs.destination_count(),
        f.bind_addresses.len()
    );
    println!("  model build (k8s objects -> model): {model_time}");
    println!("  plan (model -> desired dataplane):  {plan_time}");
    println!("  render (ipvs + ipset + iptables):   {render_time}");
}
