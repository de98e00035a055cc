//! Real traffic through what the proxier programs (guest kernel), one fresh netns per case.
//! In the case's namespace (the "node"): a bridge `cni0` 10.244.0.1/24 with pod namespaces
//! (10.244.0.11, .12, ...) running `busybox httpd` on 8080 (a static `/who` naming the pod)
//! or a UDP responder on 5353 (answers each datagram with the pod's name), and client
//! namespaces outside the cluster CIDR (192.168.61.2, 192.168.62.2, ... each on its own veth).
//!
//! - UDP: removing the endpoint a client talks to deletes its conntrack entry in the same
//!   sync (read with the `conntrack` tool) and the client's next datagram, from the same
//!   socket, is answered by the remaining endpoint;
//! - wrr follows the real servers' weights exactly (wrr is deterministic), and a resync puts
//!   kube-proxy's weight 1 back;
//! - `sessionAffinity: ClientIP` pins each client to the backend of its persistence template;
//! - an endpoint that becomes not ready gets no new connections;
//! - the real daemon restarted under a request loop: no request fails and the new process
//!   writes nothing to the kernel.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipvs_proxier::model::manifests::{Manifests, parse_manifests};
use ipvs_proxier::sync::cmd::{CommonArgs, sync_options};
use ipvs_proxier::sync::{Syncer, WriteCounts};
use lab_tests::{in_fresh_netns, ipvsadm_save, proxier_binary, require_lab, run, sh};
use netlink::ipvs::Scheduler;
use nix::sched::{CloneFlags, setns};
use pretty_assertions::assert_eq;

/// Room for a sync and a process start on a loaded, emulated 2-CPU guest.
const SLACK: Duration = Duration::from_secs(30);

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n";

fn pod_ip(n: usize) -> String {
    format!("10.244.0.{}", 10 + n)
}

/// A Service with one port (`protocol` `port` -> 8080 for TCP, 5353 for UDP).
fn service(vip: &str, protocol: &str, port: u16, affinity: bool) -> String {
    let target = if protocol == "UDP" { 5353 } else { 8080 };
    let affinity = if affinity {
        "sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 10800}}"
    } else {
        "sessionAffinity: None"
    };
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: svc, namespace: default}}
spec:
  type: ClusterIP
  clusterIP: {vip}
  clusterIPs: [{vip}]
  ipFamilies: [IPv4]
  {affinity}
  ports:
  - {{name: p, protocol: {protocol}, port: {port}, targetPort: {target}}}
"
    )
}

/// The Service's slice: `(pod number, ready)` per endpoint.
fn slice(protocol: &str, endpoints: &[(usize, bool)]) -> String {
    let target = if protocol == "UDP" { 5353 } else { 8080 };
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-abc
  namespace: default
  labels: {{kubernetes.io/service-name: svc}}
addressType: IPv4
ports:
- {{name: p, protocol: {protocol}, port: {target}}}
endpoints:
"
    );
    for (n, ready) in endpoints {
        s.push_str(&format!(
            "- addresses: [{}]\n  conditions: {{ready: {ready}, serving: {ready}, terminating: false}}\n  nodeName: node-1\n",
            pod_ip(*n)
        ));
    }
    s
}

fn objects(parts: &[&str]) -> Manifests {
    let text = parts.join("---\n");
    let m = parse_manifests(&text);
    assert_eq!(m.diagnostics, vec![], "{text}");
    m
}

/// The case's pods and clients; named namespaces are global, so each case has its prefix.
struct Topology {
    prefix: &'static str,
    pods: usize,
    clients: usize,
    stop: Arc<AtomicBool>,
}

impl Topology {
    fn pod_ns(&self, n: usize) -> String {
        format!("{}-p{n}", self.prefix)
    }

    fn client_ns(&self, n: usize) -> String {
        format!("{}-c{n}", self.prefix)
    }

    /// Pods 1..=pods (httpd when `http`, else the UDP responder), clients 1..=clients.
    fn new(prefix: &'static str, pods: usize, clients: usize, http: bool) -> Self {
        let t = Self {
            prefix,
            pods,
            clients,
            stop: Arc::new(AtomicBool::new(false)),
        };
        t.cleanup();
        t.stop.store(false, Ordering::Relaxed);
        let www = format!("/tmp/{prefix}-www");
        let mut script = String::from(
            "set -e\nip link add cni0 type bridge\nip addr add 10.244.0.1/24 dev cni0\nip link set cni0 up\n",
        );
        for n in 1..=pods {
            let ns = t.pod_ns(n);
            let ip = pod_ip(n);
            script.push_str(&format!(
                "ip netns add {ns}\n\
                 ip link add vp{n} type veth peer name eth0 netns {ns}\n\
                 ip link set vp{n} master cni0 up\n\
                 ip -n {ns} link set lo up\n\
                 ip -n {ns} link set eth0 up\n\
                 ip -n {ns} addr add {ip}/24 dev eth0\n\
                 ip -n {ns} route add default via 10.244.0.1\n"
            ));
            if http {
                script.push_str(&format!(
                    "mkdir -p {www}/pod{n}\necho pod{n} > {www}/pod{n}/who\n\
                     ip netns exec {ns} busybox httpd -p 8080 -h {www}/pod{n}\n"
                ));
            }
        }
        for n in 1..=clients {
            let ns = t.client_ns(n);
            let net = 60 + n;
            script.push_str(&format!(
                "ip netns add {ns}\n\
                 ip link add vc{n} type veth peer name eth0 netns {ns}\n\
                 ip addr add 192.168.{net}.1/24 dev vc{n}\n\
                 ip link set vc{n} up\n\
                 ip -n {ns} link set lo up\n\
                 ip -n {ns} link set eth0 up\n\
                 ip -n {ns} addr add 192.168.{net}.2/24 dev eth0\n\
                 ip -n {ns} route add default via 192.168.{net}.1\n"
            ));
        }
        sh(&script).unwrap();
        if !http {
            for n in 1..=pods {
                t.udp_responder(n);
            }
        }
        t
    }

    /// Answers every datagram on 0.0.0.0:5353 of pod `n` with `pod<n>`.
    fn udp_responder(&self, n: usize) {
        let socket = in_netns(&self.pod_ns(n), || UdpSocket::bind("0.0.0.0:5353").unwrap());
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stop = Arc::clone(&self.stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(format!("pod{n}").as_bytes(), from);
                }
            }
        });
    }

    fn cleanup(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut script = String::new();
        let names = (1..=self.pods)
            .map(|n| self.pod_ns(n))
            .chain((1..=self.clients).map(|n| self.client_ns(n)));
        for ns in names {
            script.push_str(&format!(
                "for p in $(ip netns pids {ns} 2>/dev/null); do kill $p; done; ip netns del {ns} 2>/dev/null\n"
            ));
        }
        script.push_str("true\n");
        let _ = sh(&script);
    }

    /// `GET http://vip/who` from client `n`: the pod's name.
    fn get(&self, client: usize, vip: &str) -> String {
        sh(&format!(
            "ip netns exec {} curl -s --max-time 10 http://{vip}/who",
            self.client_ns(client)
        ))
        .unwrap()
        .trim()
        .to_owned()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Runs `f` on a thread inside the named network namespace (sockets it opens stay there).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

async fn syncer(scheduler: Scheduler) -> Syncer {
    let args = CommonArgs {
        manifests: "unused".into(),
        node_name: Some("node-1".into()),
        node_ips: vec![],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        scheduler,
        masquerade_all: false,
        exclude_cidrs: vec![],
        strict_arp: false,
    };
    let opts = sync_options(&args, "node-1".into());
    let kernel = Syncer::default_kernel_options(&opts);
    Syncer::new(opts, &kernel).await.unwrap()
}

fn sorted_table() -> Vec<String> {
    let mut v: Vec<String> = ipvsadm_save().unwrap().lines().map(str::to_owned).collect();
    v.sort();
    v
}

/// One datagram from `socket`, and the answer (None after a 5 s wait).
fn ask(socket: &UdpSocket) -> Option<String> {
    socket.send(b"ping").unwrap();
    let mut buf = [0u8; 64];
    socket
        .recv(&mut buf)
        .ok()
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `conntrack -L -p <protocol> --orig-dst VIP` as `orig src:sport (reply src)` per entry,
/// sorted.
fn flows_to(protocol: &str, vip: &str) -> Vec<String> {
    let out = run("conntrack", &["-L", "-p", protocol, "--orig-dst", vip]).unwrap();
    let mut flows: Vec<String> = out
        .stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let get = |key: &str, nth: usize| {
                f.iter()
                    .filter_map(|x| x.strip_prefix(key))
                    .nth(nth)
                    .unwrap_or_default()
                    .to_owned()
            };
            // The second `src=` is the reply direction's source.
            format!(
                "{}:{} ({})",
                get("src=", 0),
                get("sport=", 0),
                get("src=", 1)
            )
        })
        .collect();
    flows.sort();
    flows
}

/// A conntrack entry as a flow from `client:sport` to `vip:53` answered by `backend` would
/// leave it (what a proxier that was down during an endpoint change finds).
fn insert_flow(protocol: &str, client: &str, sport: u16, vip: &str, backend: &str) {
    let sport = sport.to_string();
    let mut args = vec![
        "-I",
        "-p",
        protocol,
        "-s",
        client,
        "-d",
        vip,
        "--sport",
        &sport,
        "--dport",
        "53",
        "-r",
        backend,
        "-q",
        client,
        "--reply-port-src",
        "53",
        "--reply-port-dst",
        &sport,
        "-t",
        "300",
    ];
    if protocol == "tcp" {
        args.extend(["--state", "ESTABLISHED"]);
    }
    run("conntrack", &args).unwrap();
}

#[test]
fn udp_endpoint_removal_cleans_conntrack_and_fails_over_at_once() {
    require_lab();
    in_fresh_netns(|| async {
        let topo = Topology::new("tu", 2, 1, false);
        let vip = "10.96.0.53";
        // Left from before this process: a UDP flow answered by a pod that is gone (stale),
        // one answered by a current endpoint, and a TCP flow (never touched).
        insert_flow("udp", "192.168.61.9", 41000, vip, "10.244.0.99");
        insert_flow("udp", "192.168.61.9", 41001, vip, &pod_ip(1));
        insert_flow("tcp", "192.168.61.9", 41002, vip, "10.244.0.99");

        // The first sync of a process reconciles the table: only the stale UDP entry goes.
        let mut s = syncer(Scheduler::rr()).await;
        let svc = service(vip, "UDP", 53, false);
        let both = objects(&[NODE, &svc, &slice("UDP", &[(1, true), (2, true)])]);
        let report = s.sync(&both).await.unwrap();
        assert_eq!(report.failures, vec![]);
        assert_eq!(report.writes.conntrack_entries_deleted, 1);
        assert_eq!(
            flows_to("udp", vip),
            ["192.168.61.9:41001 (10.244.0.11)"],
            "UDP entries after the first sync"
        );
        assert_eq!(
            flows_to("tcp", vip),
            ["192.168.61.9:41002 (10.244.0.99)"],
            "TCP entries after the first sync"
        );
        assert_eq!(
            sorted_table(),
            [
                "-A -u 10.96.0.53:53 -s rr",
                "-a -u 10.96.0.53:53 -r 10.244.0.11:5353 -m -w 1",
                "-a -u 10.96.0.53:53 -r 10.244.0.12:5353 -m -w 1",
            ]
        );
        run("conntrack", &["-D", "-s", "192.168.61.9"]).unwrap();

        // One client socket (fixed source port): every datagram is one IPVS connection,
        // so one backend answers them all.
        let client = in_netns(&topo.client_ns(1), || {
            let sock = UdpSocket::bind("192.168.61.2:40053").unwrap();
            sock.connect((vip, 53)).unwrap();
            sock
        });
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let first = ask(&client).expect("no answer from the service");
        for _ in 0..3 {
            assert_eq!(ask(&client).as_deref(), Some(first.as_str()));
        }
        let (gone, stays) = if first == "pod1" { (1, 2) } else { (2, 1) };
        // The flow's entry, NATed to the answering backend.
        assert_eq!(
            flows_to("udp", vip),
            [format!("192.168.61.2:40053 ({})", pod_ip(gone))],
            "conntrack before"
        );

        // Its backend goes away. The entry must be gone right after the sync: the kernel
        // (expire_nodest_conn=1 expires the connections of a deleted real server, and their
        // conntrack entries, from a work queued at the delete) or the cleanup, whichever
        // comes first; the cleanup counts only what it deleted itself.
        let one = objects(&[NODE, &svc, &slice("UDP", &[(stays, true)])]);
        let report = s.sync(&one).await.unwrap();
        assert_eq!(report.failures, vec![]);
        let by_cleanup = report.writes.conntrack_entries_deleted;
        eprintln!("entry deleted by the cleanup: {by_cleanup} (else by the kernel)");
        assert!(by_cleanup <= 1, "{:?}", report.writes);
        assert_eq!(
            report.writes,
            WriteCounts {
                set_members_deleted: 1,
                real_servers_deleted: 1,
                conntrack_entries_deleted: by_cleanup,
                ..WriteCounts::default()
            }
        );
        assert_eq!(
            flows_to("udp", vip),
            Vec::<String>::new(),
            "right after the sync"
        );

        // The next datagram from the same socket reaches the remaining backend.
        let started = Instant::now();
        let next = ask(&client);
        eprintln!(
            "first datagram after the removal: {next:?} after {:?}",
            started.elapsed()
        );
        assert_eq!(next, Some(format!("pod{stays}")));
        assert_eq!(
            flows_to("udp", vip),
            [format!("192.168.61.2:40053 ({})", pod_ip(stays))],
            "conntrack after"
        );
        // Nothing changed: no dump, no write.
        let again = s.sync(&one).await.unwrap();
        assert_eq!(again.writes, WriteCounts::default());
        drop(topo);
    });
}

#[test]
fn wrr_follows_weights_and_resync_restores_weight_one() {
    require_lab();
    in_fresh_netns(|| async {
        let topo = Topology::new("tw", 2, 1, true);
        let vip = "10.96.0.80";
        let mut s = syncer(Scheduler::new("wrr").unwrap()).await;
        let svc = service(vip, "TCP", 80, false);
        let objs = objects(&[NODE, &svc, &slice("TCP", &[(1, true), (2, true)])]);
        assert_eq!(s.sync(&objs).await.unwrap().failures, vec![]);

        // kube-proxy gives every real server weight 1; an operator sets 3:1.
        run(
            "ipvsadm",
            &[
                "-e",
                "-t",
                "10.96.0.80:80",
                "-r",
                "10.244.0.11:8080",
                "-m",
                "-w",
                "3",
            ],
        )
        .unwrap();
        // wrr picks pod1, pod1, pod1, pod2 in a cycle of 4: any 8 picks are exactly 6 and 2.
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..8 {
            *counts.entry(topo.get(1, vip)).or_default() += 1;
        }
        assert_eq!(
            counts,
            [("pod1".to_owned(), 6), ("pod2".to_owned(), 2)].into()
        );

        // The resync treats the weight as drift.
        let report = s.sync(&objs).await.unwrap();
        assert_eq!(
            report.writes,
            WriteCounts {
                real_servers_updated: 1,
                ..WriteCounts::default()
            }
        );
        assert_eq!(
            sorted_table(),
            [
                "-A -t 10.96.0.80:80 -s wrr",
                "-a -t 10.96.0.80:80 -r 10.244.0.11:8080 -m -w 1",
                "-a -t 10.96.0.80:80 -r 10.244.0.12:8080 -m -w 1",
            ]
        );
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..4 {
            *counts.entry(topo.get(1, vip)).or_default() += 1;
        }
        assert_eq!(
            counts,
            [("pod1".to_owned(), 2), ("pod2".to_owned(), 2)].into()
        );
        drop(topo);
    });
}

/// The persistence templates (`ipvsadm -Lnc`, client port 0): client address -> backend.
fn templates() -> BTreeMap<String, String> {
    let out = run("ipvsadm", &["-Lnc"]).unwrap().stdout;
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // A template has client port 0.
            if !f.get(3)?.ends_with(":0") {
                return None;
            }
            let ip = |s: &str| s.rsplit_once(':').map(|(a, _)| a.to_owned());
            Some((ip(f.get(3)?)?, ip(f.get(5)?)?))
        })
        .collect()
}

#[test]
fn session_affinity_pins_each_client_to_its_template() {
    require_lab();
    in_fresh_netns(|| async {
        let topo = Topology::new("ta", 2, 2, true);
        let vip = "10.96.0.81";
        let mut s = syncer(Scheduler::rr()).await;
        let svc = service(vip, "TCP", 80, true);
        let objs = objects(&[NODE, &svc, &slice("TCP", &[(1, true), (2, true)])]);
        assert_eq!(s.sync(&objs).await.unwrap().failures, vec![]);
        assert_eq!(
            sorted_table(),
            [
                "-A -t 10.96.0.81:80 -s rr -p 10800",
                "-a -t 10.96.0.81:80 -r 10.244.0.11:8080 -m -w 1",
                "-a -t 10.96.0.81:80 -r 10.244.0.12:8080 -m -w 1",
            ]
        );
        // Without persistence rr would alternate; with it every request of a client goes to
        // the backend its template names.
        let mut seen = BTreeMap::new();
        for client in [1, 2] {
            let answers: Vec<String> = (0..5).map(|_| topo.get(client, vip)).collect();
            seen.insert(client, answers);
        }
        let t = templates();
        eprintln!("templates {t:?}, answers {seen:?}");
        for (client, answers) in &seen {
            let backend = t
                .get(&format!("192.168.{}.2", 60 + client))
                .unwrap_or_else(|| panic!("no template for client {client}: {t:?}"));
            let pod = match backend.as_str() {
                "10.244.0.11" => "pod1",
                "10.244.0.12" => "pod2",
                other => panic!("template to {other}"),
            };
            assert_eq!(answers, &vec![pod.to_owned(); 5], "client {client}");
        }
        drop(topo);
    });
}

#[test]
fn a_not_ready_endpoint_gets_no_new_connections() {
    require_lab();
    in_fresh_netns(|| async {
        let topo = Topology::new("tn", 2, 1, true);
        let vip = "10.96.0.82";
        let mut s = syncer(Scheduler::rr()).await;
        let svc = service(vip, "TCP", 80, false);
        let objs = objects(&[NODE, &svc, &slice("TCP", &[(1, true), (2, true)])]);
        assert_eq!(s.sync(&objs).await.unwrap().failures, vec![]);
        let mut both: Vec<String> = (0..2).map(|_| topo.get(1, vip)).collect();
        both.sort();
        assert_eq!(both, ["pod1", "pod2"]);

        // pod1 fails its readiness probe (not ready, not serving, not terminating).
        let objs = objects(&[NODE, &svc, &slice("TCP", &[(1, false), (2, true)])]);
        let report = s.sync(&objs).await.unwrap();
        assert_eq!(report.failures, vec![]);
        // Its real server stays at weight 0 while the earlier connections linger (TIME_WAIT
        // counts as inactive): graceful termination, new connections go elsewhere.
        assert_eq!(
            sorted_table(),
            [
                "-A -t 10.96.0.82:80 -s rr",
                "-a -t 10.96.0.82:80 -r 10.244.0.11:8080 -m -w 0",
                "-a -t 10.96.0.82:80 -r 10.244.0.12:8080 -m -w 1",
            ]
        );
        for _ in 0..4 {
            assert_eq!(topo.get(1, vip), "pod2");
        }
        drop(topo);
    });
}

/// The daemon process; killed on drop if the test fails half-way.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(args: &[String], log: PathBuf) -> Self {
        let file = File::create(&log).unwrap();
        let child = Command::new(proxier_binary())
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the log holds `n` "sync done" lines.
    fn wait_syncs(&mut self, n: usize) {
        let started = Instant::now();
        while self.log().matches("sync done").count() < n {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the daemon exited ({status}); log:\n{}", self.log());
            }
            assert!(
                started.elapsed() < SLACK,
                "no sync within {SLACK:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        run("kill", &["-TERM".to_owned(), child.id().to_string()]).unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > SLACK {
                let _ = child.kill();
                panic!("no exit within {SLACK:?} of SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("daemon log:\n{}", self.log());
        }
    }
}

/// The `writes=N` of every "sync done" line of a daemon log.
fn sync_writes(log: &str) -> Vec<usize> {
    log.lines()
        .filter(|l| l.contains("sync done"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("writes="))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

#[test]
fn daemon_restart_under_load_drops_nothing_and_writes_nothing() {
    require_lab();
    in_fresh_netns(|| async {
        let topo = Topology::new("tr2", 2, 1, true);
        let vip = "10.96.0.83";
        let dir = std::env::temp_dir().join(format!("traffic-restart-{}", std::process::id()));
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(manifests.join("node.yaml"), NODE).unwrap();
        std::fs::write(manifests.join("svc.yaml"), service(vip, "TCP", 80, false)).unwrap();
        std::fs::write(
            manifests.join("slice.yaml"),
            slice("TCP", &[(1, true), (2, true)]),
        )
        .unwrap();
        let args: Vec<String> = [
            "--manifests",
            manifests.to_str().unwrap(),
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--healthz-bind-address",
            "127.0.0.1:10266",
            "--metrics-bind-address",
            "127.0.0.1:10259",
            "-v",
            "4",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut first = Daemon::start(&args, dir.join("first.log"));
        first.wait_syncs(1);
        let want = [
            "-A -t 10.96.0.83:80 -s rr",
            "-a -t 10.96.0.83:80 -r 10.244.0.11:8080 -m -w 1",
            "-a -t 10.96.0.83:80 -r 10.244.0.12:8080 -m -w 1",
        ];
        assert_eq!(sorted_table(), want);

        // A request loop in the client until told to stop: one line per request.
        let stop = dir.join("stop");
        let loop_log = dir.join("requests.log");
        let mut requests = Command::new("ip")
            .args(["netns", "exec", &topo.client_ns(1), "sh", "-c"])
            .arg(format!(
                "while [ ! -e {stop} ]; do \
                   if r=$(curl -s --max-time 5 http://{vip}/who); then echo \"ok $r\"; \
                   else echo FAIL; fi; done",
                stop = stop.display()
            ))
            .stdout(File::create(&loop_log).unwrap())
            .spawn()
            .unwrap();
        let count = |p: &Path| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .count()
        };
        let wait_more = |n: usize| {
            let started = Instant::now();
            let target = count(&loop_log) + n;
            while count(&loop_log) < target {
                assert!(started.elapsed() < SLACK, "request loop stalled");
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        wait_more(3);

        // Restart: SIGTERM leaves the dataplane, the new process finds it as it wants it.
        first.stop();
        let mut second = Daemon::start(&args, dir.join("second.log"));
        second.wait_syncs(1);
        wait_more(3);
        std::fs::write(&stop, "").unwrap();
        let status = requests.wait().unwrap();
        assert!(status.success());
        let log = std::fs::read_to_string(&loop_log).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!("{} requests across the restart", lines.len());
        assert!(lines.len() >= 6, "{log}");
        assert_eq!(
            lines.iter().filter(|l| !l.starts_with("ok pod")).count(),
            0,
            "failed requests:\n{log}"
        );

        // The new process wrote nothing: every sync it logged has writes=0, and its metrics
        // count no applied operation.
        let second_log = second.log();
        let writes = sync_writes(&second_log);
        assert!(!writes.is_empty(), "{second_log}");
        assert!(writes.iter().all(|w| *w == 0), "{writes:?}\n{second_log}");
        let metrics = sh("curl -s --max-time 10 http://127.0.0.1:10259/metrics").unwrap();
        let applied: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                l.starts_with("ipvs_proxier_operations_total") && l.contains("result=\"applied\"")
            })
            .collect();
        assert_eq!(applied, Vec::<&str>::new(), "{metrics}");
        assert_eq!(sorted_table(), want);
        second.stop();
        let _ = std::fs::remove_dir_all(&dir);
        drop(topo);
    });
}
