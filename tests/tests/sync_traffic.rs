//! Real traffic through what one sync programs (guest kernel). In the case's namespace (the
//! "node"): a bridge `cni0` 10.244.0.1/24 with two pod namespaces running `busybox httpd`
//! on 8080 (10.244.0.11, .12 = the endpoints of `myweb-svc` 10.96.0.10:80 in the example
//! manifests), a client outside the cluster CIDR (192.168.50.2, own veth) and a client
//! inside it but on another /24 (10.244.1.50, own veth, so replies go back through the node).
//! A CGI answers with the pod's name and the source address it saw.
//!
//! - rr spreads new connections over both backends;
//! - the outside client is masqueraded (the backend sees the node's 10.244.0.1), the inside
//!   one is not (the backend sees 10.244.1.50);
//! - graceful termination: a backend removed while it serves a long request stays at weight
//!   0 (new connections go to the other one) and is deleted after the maximum drain time (15 s here).

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipvs_proxier::model::manifests::Manifests;
use ipvs_proxier::sync::cmd::{CommonArgs, sync_options};
use ipvs_proxier::sync::{Syncer, WriteCounts, manifests};
use lab_tests::{in_fresh_netns, ipvsadm_save, require_lab, sh};
use netlink::ipvs::Scheduler;
use pretty_assertions::assert_eq;

/// Long enough that the checks before it pass on a loaded emulated guest.
const MAX_DRAIN: Duration = Duration::from_secs(15);

const NS: [&str; 4] = ["tr-pod1", "tr-pod2", "tr-out", "tr-in"];

fn objects() -> Manifests {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seeds.yaml");
    manifests::load(&path).unwrap()
}

fn topology() {
    let www = "/tmp/sync-traffic";
    let mut script = String::from(
        "set -e\nip link add cni0 type bridge\nip addr add 10.244.0.1/24 dev cni0\nip link set cni0 up\n",
    );
    for (i, ns) in NS[..2].iter().enumerate() {
        let n = i + 1;
        script.push_str(&format!(
            "ip netns add {ns}\n\
             ip link add vp{n} type veth peer name eth0 netns {ns}\n\
             ip link set vp{n} master cni0 up\n\
             ip -n {ns} link set lo up\n\
             ip -n {ns} link set eth0 up\n\
             ip -n {ns} addr add 10.244.0.1{n}/24 dev eth0\n\
             ip -n {ns} route add default via 10.244.0.1\n\
             mkdir -p {www}/pod{n}/cgi-bin\n\
             printf '#!/bin/sh\\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\n\"\\necho \"pod{n} $REMOTE_ADDR\"\\n' > {www}/pod{n}/cgi-bin/who\n\
             printf '#!/bin/sh\\nsleep 60\\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\n\"\\necho \"pod{n} slow\"\\n' > {www}/pod{n}/cgi-bin/slow\n\
             chmod +x {www}/pod{n}/cgi-bin/who {www}/pod{n}/cgi-bin/slow\n\
             ip netns exec {ns} busybox httpd -p 8080 -h {www}/pod{n}\n"
        ));
    }
    for (ns, dev, node, client) in [
        ("tr-out", "vco", "192.168.50.1", "192.168.50.2"),
        ("tr-in", "vci", "10.244.1.1", "10.244.1.50"),
    ] {
        script.push_str(&format!(
            "ip netns add {ns}\n\
             ip link add {dev} type veth peer name eth0 netns {ns}\n\
             ip addr add {node}/24 dev {dev}\n\
             ip link set {dev} up\n\
             ip -n {ns} link set lo up\n\
             ip -n {ns} link set eth0 up\n\
             ip -n {ns} addr add {client}/24 dev eth0\n\
             ip -n {ns} route add default via {node}\n"
        ));
    }
    sh(&script).unwrap();
}

fn cleanup() {
    let mut script = String::new();
    for ns in NS {
        script.push_str(&format!(
            "for p in $(ip netns pids {ns} 2>/dev/null); do kill $p; done; ip netns del {ns} 2>/dev/null\n"
        ));
    }
    script.push_str("true\n");
    let _ = sh(&script);
}

fn get(ns: &str, path: &str) -> String {
    sh(&format!(
        "ip netns exec {ns} curl -s --max-time 10 http://10.96.0.10{path}"
    ))
    .unwrap()
    .trim()
    // busybox httpd listens on IPv6 and reports IPv4 clients as `[::ffff:a.b.c.d]`.
    .replace("[::ffff:", "")
    .replace(']', "")
}

#[test]
fn cluster_ip_traffic_rr_masquerade_and_graceful_drain() {
    require_lab();
    in_fresh_netns(|| async {
        cleanup();
        topology();
        let args = CommonArgs {
            manifests: "unused".into(),
            node_name: Some("node-1".into()),
            node_ips: vec![],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            scheduler: Scheduler::rr(),
            masquerade_all: false,
            exclude_cidrs: vec![],
            strict_arp: false,
        };
        let mut opts = sync_options(&args, "node-1".into());
        opts.max_drain = Some(MAX_DRAIN);
        let kernel = Syncer::default_kernel_options(&opts);
        let mut s = Syncer::new(opts, &kernel).await.unwrap();
        let mut objects = objects();
        let report = s.sync(&objects).await.unwrap();
        assert_eq!(report.failures, vec![]);

        // rr over both backends; the outside client is masqueraded to the node's cni0
        // address, the inside one keeps its address.
        let mut seen: Vec<String> = (0..4).map(|_| get("tr-out", "/cgi-bin/who")).collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                "pod1 10.244.0.1",
                "pod1 10.244.0.1",
                "pod2 10.244.0.1",
                "pod2 10.244.0.1"
            ]
        );
        let mut seen: Vec<String> = (0..2).map(|_| get("tr-in", "/cgi-bin/who")).collect();
        seen.sort();
        assert_eq!(seen, ["pod1 10.244.1.50", "pod2 10.244.1.50"]);

        // A long request, then its backend is removed from the Service.
        let mut slow = Command::new("ip")
            .args(["netns", "exec", "tr-out", "curl", "-s", "--max-time", "90"])
            .arg("http://10.96.0.10/cgi-bin/slow")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let busy = {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let table = sh("ipvsadm -Ln -t 10.96.0.10:80").unwrap();
                let active = table
                    .lines()
                    .filter(|l| l.contains("->") && l.contains(":8080"))
                    .find(|l| l.split_whitespace().nth(4) == Some("1"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .map(|rs| rs.trim_end_matches(":8080").to_owned());
                if let Some(a) = active {
                    break a;
                }
                assert!(Instant::now() < deadline, "no active connection:\n{table}");
                std::thread::sleep(Duration::from_millis(200));
            }
        };
        let other = if busy == "10.244.0.11" {
            "pod2"
        } else {
            "pod1"
        };
        let slice = objects
            .endpoint_slices
            .iter_mut()
            .find(|e| e.metadata.name.as_deref() == Some("myweb-svc-7x2lq"))
            .unwrap();
        slice.endpoints.retain(|e| e.addresses != [busy.clone()]);
        let drain_started = Instant::now();
        let report = s.sync(&objects).await.unwrap();
        assert_eq!(report.failures, vec![]);
        assert_eq!(report.writes.real_servers_updated, 1, "{:?}", report.writes);
        let saved = ipvsadm_save().unwrap();
        assert!(
            saved.contains(&format!("-a -t 10.96.0.10:80 -r {busy}:8080 -m -w 0\n")),
            "{saved}"
        );
        // While it drains, new connections go to the other backend only, and a resync
        // writes nothing.
        for _ in 0..2 {
            assert_eq!(get("tr-out", "/cgi-bin/who"), format!("{other} 10.244.0.1"));
        }
        let again = s.sync(&objects).await.unwrap();
        assert_eq!(again.writes, WriteCounts::default());
        assert!(
            drain_started.elapsed() < MAX_DRAIN,
            "guest too slow for this test"
        );
        assert_eq!(
            s.check_drains().await.unwrap().writes,
            WriteCounts::default()
        );

        // The maximum drain time passes with the connection still open: deleted.
        // (The drain list's clock started inside the sync, a little after `drain_started`.)
        std::thread::sleep(
            MAX_DRAIN.saturating_sub(drain_started.elapsed()) + Duration::from_secs(1),
        );
        let done = s.check_drains().await.unwrap();
        assert_eq!(done.writes.real_servers_deleted, 1);
        assert!(s.drains().draining().is_empty());
        let saved = ipvsadm_save().unwrap();
        assert!(
            !saved.contains(&format!("-r {busy}:8080 -m -w 0")),
            "{saved}"
        );
        let _ = slow.kill();
        let _ = slow.wait();
        cleanup();
    });
}
