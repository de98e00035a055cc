//! The real `ipvs-proxier` binary as kube-proxy runs it (no subcommand), in a fresh netns of
//! the lab guest, from a manifests directory:
//!
//! 1. it programs the expected IPVS table and leaves a foreign virtual server inside
//!    `--ipvs-exclude-cidrs` alone;
//! 2. an endpoint removed from the manifests disappears from the kernel within seconds;
//! 3. a real server deleted behind its back is restored by the periodic resync
//!    (`--ipvs-sync-period 3s`);
//! 4. `/healthz`, `/livez`, `/proxyMode` and `/metrics` answer, and `ipvs-proxier status`
//!    names the Service port of each virtual server;
//! 5. SIGTERM: exit status 0 and the dataplane stays in place;
//! 6. `--cleanup` removes our virtual servers, `kube-ipvs0`, chains and sets, and keeps the
//!    foreign virtual server and a foreign ipset.
//!
//! The binary is built by `tests/lab/test` next to the test binaries (`target/<profile>/`).

// Test helpers outside #[test] fns: a panic there fails the test, which is what we want.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::time::{Duration, Instant};

use lab_tests::daemon::{Daemon, Privilege, get};
use lab_tests::{
    in_fresh_netns, ipvsadm_save, proxier_binary, require_lab, run, run_unchecked, sh,
};
use pretty_assertions::assert_eq;

const SYNC_PERIOD_S: u64 = 3;
/// Room for a sync and a process start on a loaded, emulated 2-CPU guest.
const SLACK: Duration = Duration::from_secs(15);

const NODE: &str = "\
apiVersion: v1
kind: Node
metadata: {name: node-1}
";

/// A ClusterIP Service in `default` with one named TCP port.
fn service(name: &str, ip: &str, port_name: &str, port: u16, target: u16) -> String {
    format!(
        "\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: ClusterIP
  clusterIP: {ip}
  clusterIPs: [{ip}]
  ipFamilies: [IPv4]
  ports:
  - {{name: {port_name}, protocol: TCP, port: {port}, targetPort: {target}}}
"
    )
}

fn slice(ips: &[&str]) -> String {
    let mut s = String::from(
        "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, protocol: TCP, port: 8080}
endpoints:
",
    );
    for ip in ips {
        s.push_str(&format!(
            "- addresses: [{ip}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: node-1\n"
        ));
    }
    s
}

const FOREIGN_VS: &str = "-A -t 10.97.0.1:80 -s rr";

fn table(ips: &[&str]) -> Vec<String> {
    let mut v = vec![
        FOREIGN_VS.to_owned(),
        "-A -t 10.96.0.10:80 -s rr".to_owned(),
    ];
    v.extend(
        ips.iter()
            .map(|ip| format!("-a -t 10.96.0.10:80 -r {ip}:8080 -m -w 1")),
    );
    v.sort();
    v
}

fn kernel_table() -> Vec<String> {
    let mut v: Vec<String> = ipvsadm_save().unwrap().lines().map(str::to_owned).collect();
    v.sort();
    v
}

/// Polls `ipvsadm -Sn` until it equals `want`; returns how long that took.
fn wait_for_table(want: &[String], within: Duration, daemon: &mut Daemon, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let got = kernel_table();
        if got == want {
            return started.elapsed();
        }
        daemon.assert_running(what);
        if started.elapsed() > within {
            assert_eq!(got, want, "{what}: not reached within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ipvs-proxier status` with the daemon's state file.
fn status(state_file: &str) -> String {
    run(
        proxier_binary().to_str().unwrap(),
        &["status", "--state-file", state_file],
    )
    .unwrap()
    .stdout
}

/// The value of the unlabelled sample `name` in a Prometheus text page (0 if absent).
fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn daemon_runs_resyncs_stops_and_cleans_up() {
    require_lab();
    in_fresh_netns(|| async {
        let dir = std::env::temp_dir().join(format!("daemon-lifecycle-{}", std::process::id()));
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(manifests.join("node.yaml"), NODE).unwrap();
        std::fs::write(
            manifests.join("web.yaml"),
            service("web", "10.96.0.10", "http", 80, 8080),
        )
        .unwrap();
        std::fs::write(
            manifests.join("web-slice.yaml"),
            slice(&["10.244.1.2", "10.244.1.3"]),
        )
        .unwrap();
        // Foreign objects: a virtual server inside the excluded CIDR and an ipset.
        run("ipvsadm", &["-A", "-t", "10.97.0.1:80", "-s", "rr"]).unwrap();
        run("ipset", &["create", "FOREIGN", "hash:ip"]).unwrap();

        let manifests_arg = manifests.to_str().unwrap().to_owned();
        let sync_period = format!("{SYNC_PERIOD_S}s");
        let common = [
            "--manifests",
            manifests_arg.as_str(),
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--ipvs-exclude-cidrs",
            "10.97.0.0/16",
        ];
        let state_file = dir.join("virtual-servers");
        let state_arg = state_file.to_str().unwrap().to_owned();
        let mut args: Vec<&str> = common.to_vec();
        args.extend([
            "--state-file",
            state_arg.as_str(),
            "--ipvs-sync-period",
            sync_period.as_str(),
            "--healthz-bind-address",
            "127.0.0.1:10256",
            "--metrics-bind-address",
            "127.0.0.1:10249",
            "-v",
            "4",
        ]);
        let started = Instant::now();
        let mut daemon = Daemon::start(&args, dir.join("daemon.log"), Privilege::Root);

        // 1. The first sync.
        let want = table(&["10.244.1.2", "10.244.1.3"]);
        let first = wait_for_table(&want, SLACK, &mut daemon, "first sync");
        eprintln!("first sync visible {first:?} after start");
        let vips = sh("ip -o addr show dev kube-ipvs0").unwrap();
        assert!(vips.contains("10.96.0.10/32"), "{vips}");

        // 2. An endpoint goes away in the manifests (the source polls every second).
        std::fs::write(manifests.join("web-slice.yaml"), slice(&["10.244.1.2"])).unwrap();
        let want = table(&["10.244.1.2"]);
        let took = wait_for_table(&want, SLACK, &mut daemon, "endpoint removed");
        eprintln!("endpoint removal in the kernel after {took:?}");

        // 3. Drift: a real server deleted behind the daemon's back comes back with the
        //    periodic resync, within one sync period (plus slack for a loaded guest).
        run(
            "ipvsadm",
            &["-d", "-t", "10.96.0.10:80", "-r", "10.244.1.2:8080"],
        )
        .unwrap();
        let took = wait_for_table(
            &want,
            Duration::from_secs(SYNC_PERIOD_S) + SLACK,
            &mut daemon,
            "drift repaired",
        );
        eprintln!("deleted real server restored after {took:?}");
        assert!(
            took <= Duration::from_secs(SYNC_PERIOD_S) + Duration::from_secs(8),
            "drift repaired only after {took:?} (sync period {SYNC_PERIOD_S}s)"
        );

        // 4. Health and metrics.
        let (code, body) = get(10256, "/healthz");
        assert_eq!(code, 200, "/healthz: {body}");
        let (code, _) = get(10256, "/livez");
        assert_eq!(code, 200);
        assert_eq!(get(10249, "/proxyMode"), (200, "ipvs".to_owned()));
        let (code, metrics) = get(10249, "/metrics");
        assert_eq!(code, 200);
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}",
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"IPv4\"}",
            "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
        ] {
            assert!(
                metrics.contains(name),
                "{name} missing from /metrics:\n{metrics}"
            );
        }
        // The initial list (one Service, one slice) and the slice edit were counted.
        for name in [
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        ] {
            let value = sample(&metrics, name);
            assert!(value > 0.0, "{name} = {value}:\n{metrics}");
        }

        // `status`: the kernel's table with each virtual server's Service port.
        let out = status(&state_arg);
        assert!(
            out.contains("-A -t 10.96.0.10:80 -s rr  # default/web:http\n"),
            "status:\n{out}"
        );
        assert!(
            out.contains("-A -t 10.97.0.1:80 -s rr  # not ours\n"),
            "status:\n{out}"
        );
        // A new Service (a change synced incrementally): the status file names it too. An
        // endpoint change leaves the file as it is; a new virtual server must rewrite it.
        // A second Service, without endpoints.
        std::fs::write(
            manifests.join("api.yaml"),
            service("api", "10.96.0.11", "grpc", 81, 9090),
        )
        .unwrap();
        let mut want = want;
        want.push("-A -t 10.96.0.11:81 -s rr".to_owned());
        want.sort();
        wait_for_table(&want, SLACK, &mut daemon, "Service added");
        let out = status(&state_arg);
        assert!(
            out.contains("-A -t 10.96.0.11:81 -s rr  # default/api:grpc\n"),
            "status after a Service was added:\n{out}"
        );

        // 5. SIGTERM: a clean exit that leaves the dataplane in place.
        let status = daemon.stop("TERM", SLACK);
        assert!(status.success(), "exit {status}; log:\n{}", daemon.log());
        assert_eq!(kernel_table(), want, "dataplane after SIGTERM");
        let log = daemon.log();
        assert!(log.contains("the dataplane is left in place"), "{log}");
        eprintln!("run phase took {:?}", started.elapsed());

        // 6. --cleanup: ours gone, foreign objects kept.
        let mut cleanup_args: Vec<&str> = common.to_vec();
        cleanup_args.push("--cleanup");
        let out = run_unchecked(proxier_binary().to_str().unwrap(), &cleanup_args).unwrap();
        assert!(out.success(), "--cleanup failed: {}", out.stderr);
        assert_eq!(
            kernel_table(),
            vec![FOREIGN_VS.to_owned()],
            "after --cleanup"
        );
        let link = run_unchecked("ip", &["link", "show", "kube-ipvs0"]).unwrap();
        assert!(!link.success(), "kube-ipvs0 survived --cleanup");
        let sets = run("ipset", &["list", "-n"]).unwrap().stdout;
        let sets: Vec<&str> = sets.lines().collect();
        assert_eq!(sets, ["FOREIGN"], "ipsets after --cleanup");
        let rules = run("iptables-save", &[] as &[&str]).unwrap().stdout;
        assert!(
            !rules.contains("KUBE-"),
            "iptables after --cleanup:\n{rules}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}
