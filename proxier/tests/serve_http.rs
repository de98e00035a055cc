//! The health, metrics and health-check node port servers over real HTTP on 127.0.0.1
//! (ephemeral ports), with a plain HTTP/1.1 client on a tokio TcpStream.

// A test crate: its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipvs_proxier::model::ServiceName;
use ipvs_proxier::serve::{
    CancellationToken, FakeClock, HealthCheckServers, KernelObject, Metrics, OpResult, ProxyHealth,
    Server, TrafficPolicy,
};
use netlink::AddressFamily;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const V4: AddressFamily = AddressFamily::Inet;
const V6: AddressFamily = AddressFamily::Inet6;
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Generous: these tests share two cores with whole-workspace builds.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn get(addr: SocketAddr, path: &str) -> Resp {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .expect("request timed out")
        .expect("request failed");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header/body separator");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn refused(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

fn local0() -> SocketAddr {
    SocketAddr::new(LOOPBACK, 0)
}

fn svc(name: &str) -> ServiceName {
    ServiceName {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn fixture() -> (Arc<FakeClock>, Arc<ProxyHealth>, Arc<Metrics>) {
    let clock = Arc::new(FakeClock::at_unix(1_700_000_000));
    let health = Arc::new(ProxyHealth::with_clock(
        Duration::from_secs(60),
        clock.clone(),
    ));
    let metrics = Arc::new(Metrics::with_clock(clock.clone()));
    (clock, health, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_livez() {
    let (clock, health, metrics) = fixture();
    let server = Server::bind_health(local0(), health.clone(), metrics.clone()).expect("bind");
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(server.run(cancel.clone()));

    // Starting up: healthy, eligible.
    let r = get(addr, "/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["nodeEligible"], true);
    assert_eq!(v["currentTime"], "2023-11-14T22:13:20Z");
    assert_eq!(v["lastUpdated"], v["currentTime"]);

    health.updated(V4);
    health.updated(V6);
    health.queued_update(V4);
    clock.advance(Duration::from_secs(61));
    let r = get(addr, "/healthz").await;
    assert_eq!(r.status, 503);
    let v = r.json();
    assert_eq!(v["lastUpdated"], "2023-11-14T22:13:20Z");
    assert_eq!(v["currentTime"], "2023-11-14T22:14:21Z");
    assert_eq!(v["status"]["IPv4"]["healthy"], false);
    assert_eq!(v["status"]["IPv6"]["healthy"], true);
    let r = get(addr, "/livez").await;
    assert_eq!(r.status, 503);
    assert!(r.json().get("nodeEligible").is_none());

    health.updated(V4);
    assert_eq!(get(addr, "/healthz").await.status, 200);
    assert_eq!(get(addr, "/livez").await.status, 200);

    // Node going away: load balancers must drain it, kubelet must not restart us.
    health.set_node_eligible(false);
    let r = get(addr, "/healthz").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["nodeEligible"], false);
    assert_eq!(get(addr, "/livez").await.status, 200);
    assert_eq!(get(addr, "/metrics").await.status, 404);

    let text = metrics.render();
    assert!(
        text.contains("kubeproxy_proxy_healthz_total{code=\"200\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("kubeproxy_proxy_livez_total{code=\"200\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("kubeproxy_proxy_livez_total{code=\"503\"} 1\n"),
        "{text}"
    );

    cancel.cancel();
    tokio::time::timeout(IO_TIMEOUT, running)
        .await
        .expect("server did not stop")
        .expect("server task");
    assert!(refused(addr).await, "listener still open after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_proxy_mode_and_generic_healthz() {
    let (_clock, _health, metrics) = fixture();
    let server = Server::bind_metrics(local0(), metrics.clone()).expect("bind");
    let addr = server.local_addr();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(server.run(cancel.clone()));

    // One sync's worth of recording.
    metrics.record_queued(V4);
    metrics.set_changes_pending(3, 1);
    metrics.add_changes(3, 1);
    metrics.record_sync(V4, Duration::from_millis(12), true);
    metrics.set_changes_pending(0, 0);
    metrics.observe_network_programming(V4, Duration::from_millis(700));
    metrics.set_no_local_endpoints(V4, TrafficPolicy::External, 2);
    metrics.set_no_local_endpoints(V4, TrafficPolicy::Internal, 0);
    metrics.inc_iptables_restore_failures(V4);
    metrics.add_operations("ipvs_service_add", OpResult::Applied, 5);
    metrics.add_operations("ipset_entry_add", OpResult::Failed, 1);
    metrics.set_kernel_objects(KernelObject::VirtualServers, V4, 5);
    metrics.set_kernel_objects(KernelObject::RealServers, V4, 10);
    metrics.set_kernel_objects(KernelObject::Vips, V4, 3);
    metrics.set_kernel_objects(KernelObject::IpsetMembers, V4, 7);

    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.body;
    // Upstream names and types, spelled out here independently of the implementation.
    let expected = [
        ("kubeproxy_sync_proxy_rules_duration_seconds", "histogram"),
        (
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "gauge",
        ),
        ("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "gauge"),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "gauge",
        ),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "counter",
        ),
        (
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "gauge",
        ),
        (
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "counter",
        ),
        ("kubeproxy_proxy_healthz_total", "counter"),
        ("kubeproxy_proxy_livez_total", "counter"),
        (
            "kubeproxy_network_programming_duration_seconds",
            "histogram",
        ),
        (
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "gauge",
        ),
        (
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
            "counter",
        ),
        ("ipvs_proxier_operations_total", "counter"),
        ("ipvs_proxier_kernel_objects", "gauge"),
    ];
    for (name, kind) in expected {
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
    }
    for line in [
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.008\"} 0",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.016\"} 1",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"+Inf\"} 1",
        "kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family=\"IPv4\"} 0.012",
        "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1",
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"IPv4\"} 1700000000",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 1700000000",
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending 0",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total 3",
        "kubeproxy_sync_proxy_rules_service_changes_pending 0",
        "kubeproxy_sync_proxy_rules_service_changes_total 1",
        "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.5\"} 0",
        "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"1\"} 1",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"external\"} 2",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"internal\"} 0",
        "kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=\"IPv4\"} 1",
        "ipvs_proxier_operations_total{kind=\"ipvs_service_add\",result=\"applied\"} 5",
        "ipvs_proxier_operations_total{kind=\"ipset_entry_add\",result=\"failed\"} 1",
        "ipvs_proxier_kernel_objects{ip_family=\"IPv4\",kind=\"virtual_servers\"} 5",
        "ipvs_proxier_kernel_objects{ip_family=\"IPv4\",kind=\"real_servers\"} 10",
        "ipvs_proxier_kernel_objects{ip_family=\"IPv4\",kind=\"vips\"} 3",
        "ipvs_proxier_kernel_objects{ip_family=\"IPv4\",kind=\"ipset_members\"} 7",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    // Every sample line parses as `name{labels} value`.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = l.rsplit_once(' ').expect("sample line");
        assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{l}");
    }

    let r = get(addr, "/proxyMode").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ipvs"));
    let r = get(addr, "/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(get(addr, "/livez").await.status, 404);

    cancel.cancel();
    tokio::time::timeout(IO_TIMEOUT, running)
        .await
        .expect("server did not stop")
        .expect("server task");
    assert!(refused(addr).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_node_ports() {
    let (clock, health, _metrics) = fixture();
    let cancel = CancellationToken::new();
    let mut hc = HealthCheckServers::new(V4, &[LOOPBACK], health.clone(), cancel.clone());
    let (a, b) = (svc("a"), svc("b"));

    // Port 0 stands in for the allocated node port so the test never collides.
    let desired = BTreeMap::from([(a.clone(), 0), (b.clone(), 0)]);
    assert!(hc.sync_services(&desired).await.is_empty());
    let addr_a = hc.local_addrs(&a).expect("a open")[0];
    let addr_b = hc.local_addrs(&b).expect("b open")[0];
    assert_eq!(addr_a.ip(), LOOPBACK);
    assert_ne!(addr_a, addr_b);

    // No endpoints reported yet.
    let r = get(addr_a, "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-load-balancing-endpoint-weight"), Some("0"));

    hc.sync_endpoints(&BTreeMap::from([(a.clone(), 2)]));
    let r = get(addr_a, "/any/path?x=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-load-balancing-endpoint-weight"), Some("2"));
    let v = r.json();
    assert_eq!(v["service"]["namespace"], "default");
    assert_eq!(v["service"]["name"], "a");
    assert_eq!(v["localEndpoints"], 2);
    assert_eq!(v["serviceProxyHealthy"], true);
    let r = get(addr_b, "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["localEndpoints"], 0);
    assert_eq!(r.json()["service"]["name"], "b");

    // Counts change without reopening.
    hc.sync_endpoints(&BTreeMap::from([(a.clone(), 1), (b.clone(), 4)]));
    assert_eq!(hc.local_addrs(&a).expect("a")[0], addr_a);
    let r = get(addr_b, "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-load-balancing-endpoint-weight"), Some("4"));

    // An unhealthy proxy fails every health check, endpoints or not.
    health.updated(V4);
    health.queued_update(V4);
    clock.advance(Duration::from_secs(60));
    let r = get(addr_a, "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["serviceProxyHealthy"], false);
    assert_eq!(r.json()["localEndpoints"], 1);
    health.updated(V4);
    assert_eq!(get(addr_a, "/").await.status, 200);

    // Close b; a keeps its listener and its count.
    let errors = hc.sync_services(&BTreeMap::from([(a.clone(), 0)])).await;
    assert!(errors.is_empty());
    assert!(hc.local_addrs(&b).is_none());
    assert!(refused(addr_b).await, "b still listening");
    assert_eq!(hc.local_addrs(&a).expect("a")[0], addr_a);
    let r = get(addr_a, "/").await;
    assert_eq!(
        (r.status, r.json()["localEndpoints"].as_u64()),
        (200, Some(1))
    );

    hc.shutdown().await;
    assert!(refused(addr_a).await, "a still listening after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_port_taken_is_retried_next_sync() {
    let (_clock, health, _metrics) = fixture();
    let cancel = CancellationToken::new();
    let mut hc = HealthCheckServers::new(V4, &[LOOPBACK], health, cancel.clone());
    let (a, b) = (svc("a"), svc("b"));

    let blocker = std::net::TcpListener::bind(local0()).expect("blocker");
    let port = blocker.local_addr().expect("blocker addr").port();
    let desired = BTreeMap::from([(a.clone(), port), (b.clone(), 0)]);

    let errors = hc.sync_services(&desired).await;
    assert_eq!(errors.len(), 1);
    assert_eq!((&errors[0].service, errors[0].port), (&a, port));
    assert_eq!(errors[0].source.kind(), std::io::ErrorKind::AddrInUse);
    assert!(hc.local_addrs(&a).is_none());
    let addr_b = hc.local_addrs(&b).expect("b unaffected")[0];
    hc.sync_endpoints(&BTreeMap::from([(b.clone(), 1)]));
    assert_eq!(get(addr_b, "/").await.status, 200);

    drop(blocker);
    let errors = hc.sync_services(&desired).await;
    assert!(errors.is_empty(), "{errors:?}");
    let addr_a = hc.local_addrs(&a).expect("a opened on retry")[0];
    assert_eq!(addr_a, SocketAddr::new(LOOPBACK, port));
    assert_eq!(hc.local_addrs(&b).expect("b")[0], addr_b);
    hc.sync_endpoints(&BTreeMap::from([(a.clone(), 3), (b.clone(), 1)]));
    let r = get(addr_a, "/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-load-balancing-endpoint-weight"), Some("3"));

    // The daemon-wide token stops every health check listener.
    cancel.cancel();
    hc.shutdown().await;
    assert!(refused(addr_a).await);
    assert!(refused(addr_b).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_change_reopens_and_frees_old_port() {
    let (_clock, health, _metrics) = fixture();
    let mut hc = HealthCheckServers::new(V4, &[LOOPBACK], health, CancellationToken::new());
    let (a, b) = (svc("a"), svc("b"));

    // Find a free port for a, then move a to an ephemeral port and hand its old port to b
    // in the same sync: closing must release the port before opening.
    let probe = std::net::TcpListener::bind(local0()).expect("probe");
    let port = probe.local_addr().expect("probe addr").port();
    drop(probe);
    let errors = hc.sync_services(&BTreeMap::from([(a.clone(), port)])).await;
    assert!(errors.is_empty(), "{errors:?}");
    let errors = hc
        .sync_services(&BTreeMap::from([(a.clone(), 0), (b.clone(), port)]))
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hc.local_addrs(&b).expect("b")[0].port(), port);
    assert_ne!(hc.local_addrs(&a).expect("a")[0].port(), port);
    let r = get(SocketAddr::new(LOOPBACK, port), "/").await;
    assert_eq!(r.json()["service"]["name"], "b");
    hc.shutdown().await;
}
