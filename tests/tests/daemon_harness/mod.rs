//! The real `ipvs-proxier` daemon against the loopback list/watch API server
//! (`proxier/tests/support/apiserver.rs`, shared by path), in a lab network namespace: the
//! cluster the test keeps (what the API server holds), what the tests ask of the daemon
//! (`lab_tests::daemon`) and of its metrics, and whole-state checks of the kernel against
//! the planner.
//!
//! The API server runs on a runtime of its own whose worker thread is spawned from the case's
//! thread, so it lives in the case's namespace and keeps serving while the test body blocks
//! (in `ipvsadm`, `sleep`, ...).

// Test helpers: a panic is how a helper fails the test that called it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipvs_proxier::dataplane::canon::chains_up_to_date;
use ipvs_proxier::model::manifests::Manifests;
use ipvs_proxier::model::objects;
use ipvs_proxier::plan::{self, NodeFacts, NodePortAddresses, Plan, render};
use ipvs_proxier::sync::cmd::{CommonArgs, sync_options};
use ipvs_proxier::sync::{SyncOptions, Syncer, WriteCounts};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lab_tests::{ipvsadm_save, run, sh};
use netlink::AddressFamily;
use netlink::ipvs::Scheduler;
use pretty_assertions::assert_eq;

use crate::apiserver::{ApiServer, Kind};

pub const NODE: &str = "node-1";
pub const NODE_IP: &str = "10.255.0.1";
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const EXCLUDE_CIDR: &str = "10.97.0.0/16";
pub const HEALTHZ_PORT: u16 = 10256;
pub const METRICS_PORT: u16 = 10249;
const NS: &str = "default";

/// Foreign objects inside `--ipvs-exclude-cidrs` (and a foreign set) that the daemon must
/// never touch: `kube-ipvs0` is created before the daemon with a foreign VIP on it.
pub const FOREIGN_LINKS: &str =
    "link add kube-ipvs0 type dummy\naddr add 10.97.0.1/32 dev kube-ipvs0";
pub const FOREIGN_IPVS: &[&str] = &[
    "-A -t 10.97.0.1:80 -s wrr",
    "-a -t 10.97.0.1:80 -r 10.255.0.7:80 -m -w 3",
];
pub const FOREIGN_VIP: &str = "10.97.0.1/32";

/// Adds the foreign virtual server and set (run inside the case, before the daemon).
pub fn add_foreign_objects() {
    sh("ipvsadm -A -t 10.97.0.1:80 -s wrr && \
        ipvsadm -a -t 10.97.0.1:80 -r 10.255.0.7:80 -m -w 3 && \
        ipset create FOREIGN hash:ip && ipset add FOREIGN 10.97.0.9")
    .unwrap();
}

/// The usual start of a case: the foreign objects, then the API server.
pub async fn start_case() -> (Api, Cluster) {
    add_foreign_objects();
    (Api::start().await, Cluster::default())
}

/// The API server on its own runtime (see the module docs).
pub struct Api {
    server: Option<ApiServer>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Api {
    pub async fn start() -> Api {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.spawn(ApiServer::start()).await.unwrap();
        Api {
            server: Some(server),
            rt: Some(rt),
        }
    }
}

impl std::ops::Deref for Api {
    type Target = ApiServer;
    fn deref(&self) -> &ApiServer {
        self.server.as_ref().unwrap()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        drop(self.server.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(NS.to_owned()),
        name: Some(name.to_owned()),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        }),
        ..ObjectMeta::default()
    }
}

/// One Service port: (name, protocol, port, targetPort).
pub type Port = (&'static str, &'static str, i32, i32);

pub const HTTP: Port = ("http", "TCP", 80, 8080);
pub const HTTPS: Port = ("https", "TCP", 443, 8443);
pub const DNS: Port = ("dns", "UDP", 53, 5353);

pub fn cluster_ip_service(name: &str, ip: &str, ports: &[Port]) -> Service {
    Service {
        metadata: meta(name, &[]),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            cluster_ip: Some(ip.to_owned()),
            cluster_ips: Some(vec![ip.to_owned()]),
            ip_families: Some(vec!["IPv4".to_owned()]),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, proto, port, target)| ServicePort {
                        name: Some((*n).to_owned()),
                        protocol: Some((*proto).to_owned()),
                        port: *port,
                        target_port: Some(
                            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(*target),
                        ),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// An endpoint's conditions: (ready, serving, terminating).
pub type Conditions = (bool, bool, bool);
pub const READY: Conditions = (true, true, false);

pub fn slice(
    name: &str,
    service: &str,
    ports: &[Port],
    eps: &[(String, Conditions)],
) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(name, &[("kubernetes.io/service-name", service)]),
        address_type: "IPv4".to_owned(),
        ports: Some(
            ports
                .iter()
                .map(|(n, proto, _, target)| EndpointPort {
                    name: Some((*n).to_owned()),
                    protocol: Some((*proto).to_owned()),
                    port: Some(*target),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
        endpoints: eps
            .iter()
            .map(|(ip, (ready, serving, terminating))| Endpoint {
                addresses: vec![ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    serving: Some(*serving),
                    terminating: Some(*terminating),
                }),
                node_name: Some(NODE.to_owned()),
                ..Endpoint::default()
            })
            .collect(),
    }
}

pub fn node() -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(NODE.to_owned()),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".to_owned(),
                address: NODE_IP.to_owned(),
            }]),
            ..NodeStatus::default()
        }),
        ..Node::default()
    }
}

/// What the API server holds, kept by the test: every write goes through here.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub services: BTreeMap<String, Service>,
    pub slices: BTreeMap<String, EndpointSlice>,
    pub node: Option<Node>,
    /// API writes made (creates, updates, deletes).
    pub writes: usize,
}

impl Cluster {
    pub fn put_node(&mut self, api: &ApiServer, node: Node) {
        api.apply(&node);
        self.node = Some(node);
        self.writes += 1;
    }

    pub fn put_service(&mut self, api: &ApiServer, svc: Service) {
        api.apply(&svc);
        let name = svc.metadata.name.clone().unwrap();
        self.services.insert(name, svc);
        self.writes += 1;
    }

    pub fn put_slice(&mut self, api: &ApiServer, es: EndpointSlice) {
        api.apply(&es);
        let name = es.metadata.name.clone().unwrap();
        self.slices.insert(name, es);
        self.writes += 1;
    }

    pub fn delete_service(&mut self, api: &ApiServer, name: &str) {
        api.delete(Kind::Service, NS, name);
        self.services.remove(name);
        self.writes += 1;
    }

    pub fn delete_slice(&mut self, api: &ApiServer, name: &str) {
        api.delete(Kind::EndpointSlice, NS, name);
        self.slices.remove(name);
        self.writes += 1;
    }

    pub fn manifests(&self) -> Manifests {
        let (services, endpoint_slices) = objects::from_api(
            self.services.values().cloned(),
            self.slices.values().cloned(),
        );
        Manifests {
            services,
            endpoint_slices,
            nodes: self.node.iter().cloned().collect(),
            diagnostics: Vec::new(),
        }
    }
}

/// The daemon's flags that matter to the plan, shared by every run (and mirrored by
/// [`options`]).
pub fn base_args(master: &str, dir: &std::path::Path) -> Vec<String> {
    let state_file = dir.join("virtual-servers").display().to_string();
    [
        "--master",
        master,
        "--hostname-override",
        NODE,
        "--cluster-cidr",
        CLUSTER_CIDR,
        "--ipvs-exclude-cidrs",
        EXCLUDE_CIDR,
        "--healthz-bind-address",
        "127.0.0.1:10256",
        "--metrics-bind-address",
        "127.0.0.1:10249",
        "--state-file",
        &state_file,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The sync options the daemon runs with under [`base_args`], for the in-process checks.
pub fn options(node_port_addresses: NodePortAddresses) -> SyncOptions {
    let args = CommonArgs {
        manifests: "unused".into(),
        node_name: Some(NODE.into()),
        node_ips: vec![],
        cluster_cidrs: vec![CLUSTER_CIDR.parse().unwrap()],
        scheduler: Scheduler::rr(),
        masquerade_all: false,
        exclude_cidrs: vec![EXCLUDE_CIDR.parse().unwrap()],
        strict_arp: false,
    };
    let mut options = sync_options(&args, NODE.into());
    options.plan.node_port_addresses = node_port_addresses;
    options
}

/// The IPVS table the planner wants for `cluster` (ClusterIP services do not depend on the
/// node's addresses), minus real servers at the `refused` addresses, plus the foreign
/// virtual server; sorted `ipvsadm -Sn` lines.
pub fn planned_table(cluster: &Cluster, refused: &[&str]) -> Vec<String> {
    planned_table_with(cluster, &options(NodePortAddresses::All), refused)
}

/// [`planned_table`] under `opts`, with the lab namespace's node address.
pub fn planned_table_with(cluster: &Cluster, opts: &SyncOptions, refused: &[&str]) -> Vec<String> {
    let objects = cluster.manifests();
    let facts = NodeFacts {
        addresses: vec![NODE_IP.parse().unwrap()],
        primary_ips: vec![NODE_IP.parse().unwrap()],
    };
    let plan = plan::plan_objects(
        &objects.services,
        &objects.endpoint_slices,
        &objects.nodes,
        &opts.plan,
        &facts,
    );
    table_of(&plan, refused)
}

fn table_of(plan: &Plan, refused: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = render::ipvs(plan)
        .lines()
        .filter(|l| !refused.iter().any(|r| l.contains(&format!(" -r {r}:"))))
        .map(str::to_owned)
        .chain(FOREIGN_IPVS.iter().map(|s| (*s).to_owned()))
        .collect();
    v.sort();
    v
}

pub fn sorted_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text.lines().map(str::to_owned).collect();
    v.sort();
    v
}

pub fn kernel_table() -> Vec<String> {
    sorted_lines(&ipvsadm_save().unwrap())
}

/// Virtual servers and real servers in `/proc/net/ip_vs` of this thread's namespace: one
/// file read, much cheaper in the guest than `ipvsadm`.
pub fn ip_vs_counts() -> (usize, usize) {
    let text = std::fs::read_to_string("/proc/thread-self/net/ip_vs").unwrap();
    let vs = text
        .lines()
        .filter(|l| l.starts_with("TCP ") || l.starts_with("UDP ") || l.starts_with("FWM "))
        .count();
    let rs = text
        .lines()
        .filter(|l| l.trim_start().starts_with("-> ") && !l.contains("RemoteAddress"))
        .count();
    (vs, rs)
}

/// Everything of the dataplane a test compares before and after: sorted `ipvsadm -Sn`, the
/// addresses on `kube-ipvs0`, sorted `ipset save`, `iptables-save` without its comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelState {
    pub ipvs: Vec<String>,
    pub vips: Vec<String>,
    pub ipsets: Vec<String>,
    pub iptables: Vec<String>,
}

pub fn kernel_state() -> KernelState {
    KernelState {
        ipvs: kernel_table(),
        vips: vips(),
        ipsets: sorted_lines(&run("ipset", &["save"]).unwrap().stdout),
        iptables: run("iptables-save", &[] as &[&str])
            .unwrap()
            .stdout
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect(),
    }
}

fn vips() -> Vec<String> {
    sorted_lines(&sh("ip -o addr show dev kube-ipvs0 | awk '{print $4}'").unwrap())
}

/// The whole kernel state is exactly what the planner wants for `cluster` (plus the foreign
/// objects), and a fresh process's full sync (the in-process [`Syncer`], as a restarted
/// daemon would run it) finds nothing to write. `refused` are real server addresses the
/// kernel refuses: their adds are the only failures allowed and they are absent.
/// Returns the plan.
pub async fn assert_exact(cluster: &Cluster, opts: SyncOptions, refused: &[&str]) -> Plan {
    let objects = cluster.manifests();
    let kernel = Syncer::default_kernel_options(&opts);
    let mut fresh = Syncer::new(opts, &kernel).await.unwrap();
    let report = fresh.sync(&objects).await.unwrap();
    assert_eq!(
        report.writes,
        WriteCounts::default(),
        "a fresh full sync had to write: the kernel was not the plan"
    );
    for f in &report.failures {
        assert!(
            refused
                .iter()
                .any(|r| f.object.starts_with(&format!("add real server {r}:"))),
            "unexpected failure {f}"
        );
    }
    let plan = fresh.last_plan().unwrap().clone();

    assert_eq!(kernel_table(), table_of(&plan, refused), "ipvsadm -Sn");
    let mut want_vips: Vec<String> = plan
        .families
        .iter()
        .flat_map(|f| f.bind_addresses.iter())
        .map(|a| format!("{a}/32"))
        .chain([FOREIGN_VIP.to_owned()])
        .collect();
    want_vips.sort();
    assert_eq!(vips(), want_vips, "addresses on kube-ipvs0");

    let saved = run("ipset", &["save"]).unwrap().stdout;
    let want_sets = format!(
        "{}create FOREIGN hash:ip\nadd FOREIGN 10.97.0.9\n",
        render::ipsets(&plan)
    );
    let names = |text: &str| -> Vec<String> {
        sorted_lines(text)
            .into_iter()
            .filter_map(|l| {
                l.strip_prefix("create ")
                    .and_then(|l| l.split_whitespace().next())
                    .map(str::to_owned)
            })
            .collect()
    };
    let adds = |text: &str| -> Vec<String> {
        sorted_lines(text)
            .into_iter()
            .filter(|l| l.starts_with("add "))
            .collect()
    };
    assert_eq!(names(&saved), names(&want_sets), "ipset names");
    assert_eq!(adds(&saved), adds(&want_sets), "ipset members");

    let rules = render::iptables(&plan, AddressFamily::Inet).unwrap();
    let ipt = run("iptables-save", &[] as &[&str]).unwrap().stdout;
    assert!(
        chains_up_to_date(AddressFamily::Inet, &rules, &ipt),
        "iptables-save does not hold the planned rules:\n{ipt}\nwanted:\n{rules}"
    );
    plan
}

pub use lab_tests::daemon::{Daemon, Privilege, get, get_from};

/// What the fault tests ask of a running daemon besides [`Daemon`]'s basics.
pub trait DaemonExt {
    /// The `/metrics` page.
    fn metrics(&mut self) -> String;
    /// Polls until the IPVS table is `want`; returns how long that took.
    fn wait_table(&mut self, want: &[String], within: Duration, what: &str) -> Duration;
    /// Polls until the daemon has finished `n` syncs (`..._duration_seconds_count`).
    fn wait_syncs(&mut self, n: f64, within: Duration, what: &str);
}

impl DaemonExt for Daemon {
    fn metrics(&mut self) -> String {
        self.assert_running("metrics");
        let (code, body) = get(METRICS_PORT, "/metrics");
        assert_eq!(code, 200);
        body
    }

    fn wait_table(&mut self, want: &[String], within: Duration, what: &str) -> Duration {
        let started = Instant::now();
        loop {
            let got = kernel_table();
            if got == want {
                return started.elapsed();
            }
            self.assert_running(what);
            if started.elapsed() > within {
                assert_eq!(got, want, "{what}: not reached within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_syncs(&mut self, n: f64, within: Duration, what: &str) {
        let started = Instant::now();
        loop {
            if let Ok((200, page)) = get_from(&format!("127.0.0.1:{METRICS_PORT}"), "/metrics")
                && syncs(&page) >= n
            {
                return;
            }
            self.assert_running(what);
            assert!(
                started.elapsed() < within,
                "{what}: fewer than {n} syncs within {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// SIGTERM: a clean exit within a minute and a half.
pub fn stop_cleanly(daemon: &mut Daemon) {
    let status = daemon.stop("TERM", Duration::from_secs(90));
    assert!(status.success(), "exit {status}; log:\n{}", daemon.log());
}

/// Sum of the samples of `name` whose label set contains every one of `labels`
/// (`key="value"` strings); 0 if none.
pub fn metric_sum(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let label_text = match rest {
                "" => "",
                r => r.strip_prefix('{')?.strip_suffix('}')?,
            };
            labels
                .iter()
                .all(|want| label_text.split(',').any(|l| l == *want))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// Kernel writes the daemon counted as applied.
pub fn applied_writes(page: &str) -> f64 {
    metric_sum(
        page,
        "ipvs_proxier_operations_total",
        &["result=\"applied\""],
    )
}

/// Operations the kernel refused.
pub fn failed_writes(page: &str) -> f64 {
    metric_sum(
        page,
        "ipvs_proxier_operations_total",
        &["result=\"failed\""],
    )
}

/// Syncs finished (successful or not).
pub fn syncs(page: &str) -> f64 {
    metric_sum(
        page,
        "kubeproxy_sync_proxy_rules_duration_seconds_count",
        &["ip_family=\"IPv4\""],
    )
}

/// A scratch directory for logs, on the case's tmpfs.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
