//! The API server source against a loopback list/watch server, through the real kube-rs
//! client: initial lists and readiness, following changes, label/field filtering,
//! outages, resumption from a resourceVersion (also one from a bookmark) and 410 re-lists.
//!
//! Waits are event-driven (the store's generation, the server's counters) with generous
//! bounds; kube's watcher backoff (0.8 s doubling, jittered) sets the pace of recoveries.

// Test helpers outside #[test] fns: a panic there is a test failure, which is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/apiserver.rs"]
mod apiserver;

use std::collections::BTreeMap;
use std::time::Duration;

use apiserver::{ApiServer, Kind};
use ipvs_proxier::source::{self, ObjectKey, Objects, Snapshot, SourceOptions};
use k8s_openapi::api::core::v1::{Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const TIMEOUT: Duration = Duration::from_secs(60);
const PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
const HEADLESS: &str = "service.kubernetes.io/headless";

fn meta(namespace: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        namespace: namespace.map(str::to_owned),
        name: Some(name.to_owned()),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        }),
        ..ObjectMeta::default()
    }
}

fn service(name: &str, ip: &str, labels: &[(&str, &str)]) -> Service {
    Service {
        metadata: meta(Some("default"), name, labels),
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.to_owned()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn slice(name: &str, service: &str, ips: &[&str], extra: &[(&str, &str)]) -> EndpointSlice {
    let mut labels = vec![("kubernetes.io/service-name", service)];
    labels.extend_from_slice(extra);
    EndpointSlice {
        metadata: meta(Some("default"), name, &labels),
        address_type: "IPv4".to_owned(),
        endpoints: ips
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![(*ip).to_owned()],
                ..Endpoint::default()
            })
            .collect(),
        ports: None,
    }
}

fn node(name: &str, zone: &str) -> Node {
    Node {
        metadata: meta(None, name, &[("topology.kubernetes.io/zone", zone)]),
        ..Node::default()
    }
}

fn key(name: &str) -> ObjectKey {
    ObjectKey {
        namespace: "default".to_owned(),
        name: name.to_owned(),
    }
}

fn names(s: &Snapshot) -> (Vec<String>, Vec<String>) {
    (
        s.services.keys().map(|k| k.name.clone()).collect(),
        s.endpoint_slices.keys().map(|k| k.name.clone()).collect(),
    )
}

fn cluster_ip(s: &Snapshot, name: &str) -> Option<String> {
    s.services
        .get(&key(name))?
        .spec
        .as_ref()?
        .cluster_ip
        .clone()
}

fn zone(s: &Snapshot) -> Option<String> {
    s.node
        .as_ref()?
        .metadata
        .labels
        .as_ref()?
        .get("topology.kubernetes.io/zone")
        .cloned()
}

/// Waits until `cond` holds for the store's snapshot, woken by its generation counter.
async fn wait_for(objects: &Objects, what: &str, cond: impl Fn(&Snapshot) -> bool) {
    let mut rx = objects.subscribe();
    let wait = async {
        loop {
            if cond(&objects.snapshot()) {
                return;
            }
            rx.changed().await.expect("store alive");
        }
    };
    if tokio::time::timeout(TIMEOUT, wait).await.is_err() {
        panic!(
            "timed out waiting for {what}; snapshot {:?}",
            names(&objects.snapshot())
        );
    }
}

fn options() -> SourceOptions {
    SourceOptions {
        node_name: "node-a".to_owned(),
        service_proxy_name: None,
    }
}

/// A server with a small cluster, including objects the selectors must keep out.
async fn cluster() -> ApiServer {
    let server = ApiServer::start().await;
    server.apply(&service("web", "10.96.0.10", &[]));
    server.apply(&service("db", "10.96.0.11", &[]));
    server.apply(&service(
        "other-proxy",
        "10.96.0.12",
        &[(PROXY_NAME, "other")],
    ));
    server.apply(&slice("web-1", "web", &["10.0.0.1"], &[]));
    server.apply(&slice("db-1", "db", &["10.0.0.2"], &[]));
    server.apply(&slice(
        "headless-1",
        "headless",
        &["10.0.0.3"],
        &[(HEADLESS, "")],
    ));
    server.apply(&slice(
        "other-1",
        "other-proxy",
        &["10.0.0.4"],
        &[(PROXY_NAME, "other")],
    ));
    server.apply(&node("node-a", "zone-1"));
    server.apply(&node("node-b", "zone-2"));
    server
}

async fn started(server: &ApiServer) -> source::Source {
    let src = source::api::start(server.client(), &options());
    tokio::time::timeout(TIMEOUT, src.objects().ready())
        .await
        .expect("source ready");
    src
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_longer_than_a_page_arrives_whole() {
    // kube asks for pages of 500; 1,201 Services take three.
    let server = ApiServer::start().await;
    for i in 0..1201 {
        server.apply(&service(
            &format!("svc-{i}"),
            &format!("10.96.{}.{}", i / 250, 1 + i % 250),
            &[],
        ));
    }
    let src = started(&server).await;
    let snap = src.objects().snapshot();
    assert_eq!(snap.services.len(), 1201);
    assert!(snap.services.contains_key(&key("svc-1200")));
    assert_eq!(server.stats().service_lists, 3, "one list request per page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_lists_make_it_ready_with_filtered_objects() {
    let server = cluster().await;
    let src = source::api::start(server.client(), &options());
    let objects = src.objects().clone();
    tokio::time::timeout(TIMEOUT, objects.ready())
        .await
        .expect("ready");
    assert!(objects.is_ready());
    // Ready means both lists are in, whole.
    let snap = objects.snapshot();
    assert_eq!(
        names(&snap),
        (
            vec!["db".to_owned(), "web".to_owned()],
            vec!["db-1".to_owned(), "web-1".to_owned()]
        )
    );
    assert_eq!(cluster_ip(&snap, "web").as_deref(), Some("10.96.0.10"));
    // The node is not part of readiness, but arrives from its own watch.
    wait_for(&objects, "own node", |s| {
        zone(s).as_deref() == Some("zone-1")
    })
    .await;
    assert_eq!(
        objects
            .snapshot()
            .node
            .as_ref()
            .and_then(|n| n.metadata.name.clone())
            .as_deref(),
        Some("node-a")
    );
    // The first take reports every Service that has objects.
    let update = objects.take();
    let changed: Vec<String> = update
        .changes
        .services
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(changed, ["db", "web"]);
    assert!(update.changes.node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_adds_modifications_and_deletions() {
    let server = cluster().await;
    let src = started(&server).await;
    let objects = src.objects().clone();
    wait_for(&objects, "own node", |s| s.node.is_some()).await;
    let _ = objects.take();

    // Service add / modify / delete.
    server.apply(&service("cache", "10.96.0.20", &[]));
    wait_for(&objects, "cache added", |s| {
        s.services.contains_key(&key("cache"))
    })
    .await;
    server.apply(&service("web", "10.96.0.99", &[]));
    wait_for(&objects, "web modified", |s| {
        cluster_ip(s, "web").as_deref() == Some("10.96.0.99")
    })
    .await;
    server.delete(Kind::Service, "default", "db");
    wait_for(&objects, "db deleted", |s| {
        !s.services.contains_key(&key("db"))
    })
    .await;
    let changed: Vec<String> = objects
        .take()
        .changes
        .services
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(changed, ["cache", "db", "web"]);

    // EndpointSlice add / modify / delete.
    server.apply(&slice("cache-1", "cache", &["10.0.1.1"], &[]));
    wait_for(&objects, "cache-1 added", |s| {
        s.endpoint_slices.contains_key(&key("cache-1"))
    })
    .await;
    server.apply(&slice("web-1", "web", &["10.0.0.1", "10.0.0.9"], &[]));
    wait_for(&objects, "web-1 modified", |s| {
        s.endpoint_slices
            .get(&key("web-1"))
            .is_some_and(|e| e.endpoints.len() == 2)
    })
    .await;
    server.delete(Kind::EndpointSlice, "default", "db-1");
    wait_for(&objects, "db-1 deleted", |s| {
        !s.endpoint_slices.contains_key(&key("db-1"))
    })
    .await;

    // Node: label change, deletion, re-creation; the other node never shows.
    server.apply(&node("node-a", "zone-9"));
    wait_for(&objects, "zone change", |s| {
        zone(s).as_deref() == Some("zone-9")
    })
    .await;
    assert!(objects.take().changes.node);
    server.apply(&node("node-b", "zone-3"));
    server.delete(Kind::Node, "", "node-a");
    wait_for(&objects, "node deleted", |s| s.node.is_none()).await;
    server.apply(&node("node-a", "zone-1"));
    wait_for(&objects, "node back", |s| {
        zone(s).as_deref() == Some("zone-1")
    })
    .await;

    // Objects handed to another proxy, or of headless Services, never appear; an object
    // relabelled away disappears (the server sends DELETED), and comes back when unlabelled.
    server.apply(&service("theirs", "10.96.0.30", &[(PROXY_NAME, "other")]));
    server.apply(&slice("hl-2", "hl", &["10.0.2.2"], &[(HEADLESS, "")]));
    server.apply(&service("web", "10.96.0.99", &[(PROXY_NAME, "other")]));
    server.apply(&slice("web-1", "web", &["10.0.0.1"], &[(HEADLESS, "")]));
    // Markers written after them, one per watch (the streams are independent): once both
    // are seen, so are the events before them.
    server.apply(&service("marker", "10.96.0.40", &[]));
    server.apply(&slice("marker-1", "marker", &["10.0.3.3"], &[]));
    wait_for(&objects, "markers", |s| {
        s.services.contains_key(&key("marker")) && s.endpoint_slices.contains_key(&key("marker-1"))
    })
    .await;
    let snap = objects.snapshot();
    assert_eq!(
        names(&snap),
        (
            vec!["cache".to_owned(), "marker".to_owned()],
            vec!["cache-1".to_owned(), "marker-1".to_owned()]
        )
    );
    server.apply(&service("web", "10.96.0.10", &[]));
    wait_for(&objects, "web back", |s| {
        s.services.contains_key(&key("web"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_keeps_the_snapshot_and_relist_catches_up() {
    let server = cluster().await;
    let src = started(&server).await;
    let objects = src.objects().clone();
    wait_for(&objects, "own node", |s| s.node.is_some()).await;
    let before = objects.snapshot();
    let lists = server.stats();

    // Every wake-up during and after the outage must see a whole snapshot: "web" (never
    // deleted) is always there.
    let monitor = {
        let objects = objects.clone();
        let mut rx = objects.subscribe();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let snap = objects.snapshot();
                assert!(snap.services.contains_key(&key("web")), "web vanished");
                assert!(
                    snap.endpoint_slices.contains_key(&key("web-1")),
                    "web-1 vanished"
                );
            }
        })
    };

    server.set_down(true);
    // The three watches were dropped; wait until each one has also failed to reconnect.
    server
        .wait_stats("watches dropped and reconnects refused", TIMEOUT, |s| {
            s.open_watches == 0 && s.refused >= 3
        })
        .await;
    // Meanwhile the cluster changes, and the server loses its history (as a restarted
    // API server would), so only a re-list can tell that "db" is gone.
    server.delete(Kind::Service, "default", "db");
    server.delete(Kind::EndpointSlice, "default", "db-1");
    server.apply(&service("cache", "10.96.0.20", &[]));
    server.apply(&node("node-a", "zone-7"));
    server.compact();
    assert_eq!(
        objects.snapshot(),
        before,
        "snapshot changed during the outage"
    );
    server
        .wait_stats("more refused reconnects", TIMEOUT, |s| s.refused >= 5)
        .await;
    assert_eq!(
        objects.snapshot(),
        before,
        "snapshot changed during the outage"
    );

    server.set_down(false);
    wait_for(&objects, "catch-up after the outage", |s| {
        s.services.contains_key(&key("cache"))
            && !s.services.contains_key(&key("db"))
            && !s.endpoint_slices.contains_key(&key("db-1"))
            && zone(s).as_deref() == Some("zone-7")
    })
    .await;
    let after = server.stats();
    assert!(after.expired_sent >= 1, "{after:?}");
    assert!(
        after.service_lists > lists.service_lists,
        "no service re-list: {after:?}"
    );
    assert!(
        after.slice_lists > lists.slice_lists,
        "no slice re-list: {after:?}"
    );
    // A finished monitor is a failed invariant: surface its panic.
    if monitor.is_finished() {
        monitor.await.expect("snapshot stayed whole");
    } else {
        monitor.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_resume_from_their_resource_version() {
    let server = cluster().await;
    let src = started(&server).await;
    let objects = src.objects().clone();
    server
        .wait_stats("three watches", TIMEOUT, |s| s.open_watches == 3)
        .await;
    let lists = server.stats();

    // A connection blip, with a deletion while the watches are down: the history is
    // kept, so the watches resume from their resourceVersion and see the deletion
    // without a re-list.
    server.set_down(true);
    server
        .wait_stats("watches dropped", TIMEOUT, |s| s.open_watches == 0)
        .await;
    server.delete(Kind::Service, "default", "db");
    server.set_down(false);
    wait_for(&objects, "db deleted", |s| {
        !s.services.contains_key(&key("db"))
    })
    .await;
    let after = server.stats();
    assert_eq!(after.service_lists, lists.service_lists, "{after:?}");
    assert_eq!(after.expired_sent, 0, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_forces_a_relist() {
    let server = cluster().await;
    let src = started(&server).await;
    let objects = src.objects().clone();
    server
        .wait_stats("three watches", TIMEOUT, |s| s.open_watches == 3)
        .await;
    let lists = server.stats();

    // The watches end (as at the server's watch timeout) and, before they come back, the
    // history including a deletion is compacted away: the resumed watch gets 410 Expired.
    server.set_down(true);
    server
        .wait_stats("watches dropped", TIMEOUT, |s| s.open_watches == 0)
        .await;
    server.delete(Kind::EndpointSlice, "default", "web-1");
    server.apply(&service("web", "10.96.0.77", &[]));
    server.compact();
    server.set_down(false);
    wait_for(&objects, "re-listed state", |s| {
        !s.endpoint_slices.contains_key(&key("web-1"))
            && cluster_ip(s, "web").as_deref() == Some("10.96.0.77")
    })
    .await;
    let after = server.stats();
    assert!(after.expired_sent >= 2, "{after:?}");
    assert!(after.service_lists > lists.service_lists, "{after:?}");
    assert!(after.slice_lists > lists.slice_lists, "{after:?}");
    // The store still holds what was not deleted.
    assert!(objects.snapshot().services.contains_key(&key("db")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_advance_the_resume_point() {
    let server = cluster().await;
    let src = started(&server).await;
    let objects = src.objects().clone();
    server
        .wait_stats("three watches", TIMEOUT, |s| s.open_watches == 3)
        .await;
    // A Service the selector filters out: the Service watch gets only a BOOKMARK for it.
    let bookmarks = server.stats().bookmarks_sent;
    let rv = server.apply(&service("theirs", "10.96.0.30", &[(PROXY_NAME, "other")]));
    server
        .wait_stats("a bookmark", TIMEOUT, |s| s.bookmarks_sent > bookmarks)
        .await;
    let lists = server.stats();
    // History up to the bookmark is compacted: only a watch that took the bookmark's
    // resourceVersion can resume without 410.
    server.compact_to(rv);
    server.close_watches();
    server
        .wait_stats("service watch resumed", TIMEOUT, |s| {
            s.open_watches == 3 && s.refused == 0
        })
        .await;
    server.apply(&service("after", "10.96.0.31", &[]));
    wait_for(&objects, "after added", |s| {
        s.services.contains_key(&key("after"))
    })
    .await;
    let after = server.stats();
    assert_eq!(
        after.service_lists, lists.service_lists,
        "service watch re-listed: {after:?}"
    );
    assert!(!objects.snapshot().services.contains_key(&key("theirs")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_name_selects_only_its_objects() {
    let server = cluster().await;
    let options = SourceOptions {
        service_proxy_name: Some("other".to_owned()),
        ..options()
    };
    let src = source::api::start(server.client(), &options);
    tokio::time::timeout(TIMEOUT, src.objects().ready())
        .await
        .expect("ready");
    assert_eq!(
        names(&src.objects().snapshot()),
        (vec!["other-proxy".to_owned()], vec!["other-1".to_owned()])
    );
}

#[test]
fn selectors_are_kube_proxys() {
    assert_eq!(
        source::api::service_selector(None),
        "!service.kubernetes.io/service-proxy-name"
    );
    assert_eq!(
        source::api::endpoint_slice_selector(None),
        "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
    );
    assert_eq!(
        source::api::endpoint_slice_selector(Some("x")),
        "!service.kubernetes.io/headless,service.kubernetes.io/service-proxy-name=x"
    );
}
