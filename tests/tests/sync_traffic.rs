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
//!   0 (new connections go to the other one) and is deleted after the maximum drain time (15 s
//!   here); a backend whose held connection is answered in full at weight 0 and then closed
//!   is deleted once IPVS counts no connection on it, well before the maximum drain time.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipvs_proxier::model::manifests::Manifests;
use ipvs_proxier::model::objects::RawAddress;
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
        slice
            .endpoints
            .retain(|e| e.address != Some(RawAddress::parse(&busy)));
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

        // Deleted once its connections reach 0, long before the maximum drain time: a new
        // process (maximum drain 120 s) adopts the node, the backend comes back, a client
        // holds an established connection to it, and the backend is removed again. The
        // connection keeps working at weight 0 (a whole answer, no reset); the client then
        // closes with a reset so that IPVS forgets the connection after its 10 s CLOSE state
        // instead of the 2 min of TIME_WAIT, and the drain check deletes the real server.
        drop(s);
        let mut opts = sync_options(&args, "node-1".into());
        opts.max_drain = Some(Duration::from_secs(120));
        let mut s = Syncer::new(opts, &kernel).await.unwrap();
        let mut objects = self::objects();
        assert_eq!(s.sync(&objects).await.unwrap().failures, vec![]);
        let mut client = Command::new("ip")
            .args(["netns", "exec", "tr-out", "python3", "-c", HOLD_THEN_RESET])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(client.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "connected");
        let (held_ip, held_pod, other_ip) = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let table = sh("ipvsadm -Ln -t 10.96.0.10:80").unwrap();
                if active_on(&table, "10.244.0.11") {
                    break ("10.244.0.11", "pod1", "10.244.0.12");
                }
                if active_on(&table, "10.244.0.12") {
                    break ("10.244.0.12", "pod2", "10.244.0.11");
                }
                assert!(Instant::now() < deadline, "no active connection:\n{table}");
                std::thread::sleep(Duration::from_millis(200));
            }
        };
        objects
            .endpoint_slices
            .iter_mut()
            .find(|e| e.metadata.name.as_deref() == Some("myweb-svc-7x2lq"))
            .unwrap()
            .endpoints
            .retain(|e| e.address != Some(RawAddress::parse(held_ip)));
        let removed = s.sync(&objects).await.unwrap();
        assert_eq!(
            removed.writes.real_servers_updated, 1,
            "{:?}",
            removed.writes
        );
        let removed_at = Instant::now();
        writeln!(client.stdin.as_mut().unwrap(), "go").unwrap();
        let answer = lines.next().unwrap().unwrap();
        assert_eq!(
            answer.replace("[::ffff:", "").replace(']', ""),
            format!("{held_pod} 10.244.0.1"),
            "the held connection was not answered in full"
        );
        assert!(client.wait().unwrap().success());
        let deleted = loop {
            let out = s.check_drains().await.unwrap();
            if out.writes.real_servers_deleted == 1 {
                break removed_at.elapsed();
            }
            assert_eq!(out.writes, WriteCounts::default());
            assert!(
                removed_at.elapsed() < Duration::from_secs(90),
                "not deleted 90 s after its last connection closed:\n{}",
                sh("ipvsadm -Ln -t 10.96.0.10:80").unwrap()
            );
            std::thread::sleep(Duration::from_secs(1));
        };
        eprintln!("real server with a reset connection deleted after {deleted:?}");
        let mut vs: Vec<String> = ipvsadm_save()
            .unwrap()
            .lines()
            .filter(|l| l.contains("10.96.0.10:80 "))
            .map(str::to_owned)
            .collect();
        vs.sort();
        assert_eq!(
            vs,
            [
                "-A -t 10.96.0.10:80 -s rr".to_owned(),
                format!("-a -t 10.96.0.10:80 -r {other_ip}:8080 -m -w 1"),
            ]
        );
        cleanup();
    });
}

/// Connects to the ClusterIP, says so, waits for a line on stdin, sends one request, prints
/// the answer's body and closes with a reset (SO_LINGER 0).
const HOLD_THEN_RESET: &str = r#"
import socket, struct, sys
s = socket.create_connection(("10.96.0.10", 80), timeout=60)
print("connected", flush=True)
sys.stdin.readline()
s.sendall(b"GET /cgi-bin/who HTTP/1.0\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
print(data.decode().split("\r\n\r\n", 1)[-1].strip(), flush=True)
"#;

/// Whether `table` (`ipvsadm -Ln` of one service) shows an active connection on `ip`:8080.
fn active_on(table: &str, ip: &str) -> bool {
    table
        .lines()
        .filter(|l| l.contains("->") && l.contains(&format!("{ip}:8080")))
        .any(|l| l.split_whitespace().nth(4) == Some("1"))
}
