//! Faults, churn and least privilege for the real `ipvs-proxier` daemon (issue 9), run
//! against the loopback list/watch API server in fresh network namespaces of the lab guest.
//! Every case keeps a foreign virtual server + real server, a foreign VIP on `kube-ipvs0`
//! (inside `--ipvs-exclude-cidrs`) and a foreign ipset, and checks them at every whole-state
//! comparison: the daemon never touches them.
//!
//! 1. API server gone for 60 s: the dataplane is untouched (whole state equal, no write
//!    counted), `/healthz` stays 200 (nothing is queued, so kube-proxy stays healthy too);
//!    back with changes made meanwhile, the daemon catches up to exactly the plan.
//! 2. A real server the kernel refuses (a multicast endpoint address, which the API accepts
//!    but IPVS does not): only that real server is missing, every other object is the plan,
//!    the failure is counted under its kind only
//!    (`ipvs_proxier_operations_total{kind="ipvs_real_server_add",result="failed"}`) and
//!    logged with the object and its Service; fixing the slice converges.
//! 3. SIGKILL in the middle of a large first sync (2,000 Services: halfway through the VIPs),
//!    again once the IPVS batch has begun; a restart converges to exactly the plan, and a
//!    further restart writes nothing.
//! 4. Churn soak: 10,000 random API writes (seeded; `SOAK_SEED=N` replays one) on Services
//!    and EndpointSlices, in two rounds of 5,000 in steps of 50, with periodic full syncs
//!    interleaved; after each round the kernel equals the plan (nothing leaked), then the
//!    initial objects are restored exactly. Memory held (RssAnon: heap, stacks, anonymous
//!    mappings; the binary's file-backed pages are not) ends every round within 10 % of its
//!    level before the churn. Each is read once two full syncs have finished on the same
//!    objects, with the smaps breakdown and each `smaps` saved as an artifact. The baseline
//!    follows a warm-up of 500 writes that keeps to the initial 60 Services.
//! 5. Least privilege: the daemon as uid 65534 with only CAP_NET_ADMIN + CAP_NET_RAW programs
//!    exactly the plan and listens on exactly the configured sockets.

// Test helpers outside #[test] fns: a panic there fails the test, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../proxier/tests/support/apiserver.rs"]
mod apiserver;
mod daemon_harness;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use daemon_harness::*;
use ipvs_proxier::plan::NodePortAddresses;
use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceStatus,
};
use lab_tests::{NetnsCase, require_lab, run, write_artifact};
use netlink::link::Links;
use pretty_assertions::assert_eq;

/// Room for syncs and process starts on a loaded, emulated 2-CPU guest.
const SLACK: Duration = Duration::from_secs(90);

fn case() -> NetnsCase {
    NetnsCase::new().ip_batch(FOREIGN_LINKS)
}

fn svc_ip(i: u32) -> String {
    format!("10.96.{}.{}", 1 + i / 250, 1 + i % 250)
}

fn ep(i: u32) -> String {
    format!("10.244.{}.{}", i / 250, 1 + i % 250)
}

/// `count` ClusterIP Services `svc-i` with `eps` ready endpoints each.
fn populate(api: &Api, cluster: &mut Cluster, count: u32, eps: u32) {
    cluster.put_node(api, node());
    for i in 0..count {
        let name = format!("svc-{i}");
        cluster.put_service(api, cluster_ip_service(&name, &svc_ip(i), &[HTTP]));
        let addrs: Vec<(String, Conditions)> = (0..eps).map(|e| (ep(i * eps + e), READY)).collect();
        cluster.put_slice(api, slice(&format!("{name}-a"), &name, &[HTTP], &addrs));
    }
}

#[test]
fn api_server_outage_leaves_the_dataplane_then_the_daemon_catches_up() {
    require_lab();
    case().run(|| async {
        let (api, mut cluster) = start_case().await;
        populate(&api, &mut cluster, 20, 2);
        let dir = scratch("outage");
        let mut args = base_args(&api.url(), &dir);
        args.extend(["--ipvs-sync-period".to_owned(), "4s".to_owned()]);
        let mut daemon = Daemon::start(&args, dir.join("daemon.log"), Privilege::Root);

        let took = daemon.wait_table(&planned_table(&cluster, &[]), SLACK, "first sync");
        eprintln!("first sync visible after {took:?}");
        assert_exact(&cluster, options(NodePortAddresses::All), &[]).await;
        let before = kernel_state();
        let m0 = daemon.metrics();

        // The API server goes away: connections refused, open watches dropped.
        api.set_down(true);
        let down = Instant::now();
        // Only once every watch stream is closed: a stream still open would deliver what
        // follows.
        while api.stats().open_watches > 0 {
            assert!(down.elapsed() < SLACK, "watch streams stay open");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Changes made meanwhile, which the daemon will only see after the outage: a Service
        // deleted (with its slice), one slice's endpoints replaced, a Service added.
        cluster.delete_service(&api, "svc-3");
        cluster.delete_slice(&api, "svc-3-a");
        cluster.put_slice(
            &api,
            slice("svc-5-a", "svc-5", &[HTTP], &[("10.244.9.9".into(), READY)]),
        );
        cluster.put_service(
            &api,
            cluster_ip_service("svc-new", "10.96.9.9", &[HTTP, DNS]),
        );
        cluster.put_slice(
            &api,
            slice(
                "svc-new-a",
                "svc-new",
                &[HTTP, DNS],
                &[("10.244.9.10".into(), READY)],
            ),
        );

        let mut probes = 0;
        while down.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_secs(5));
            daemon.assert_running("API server down");
            let (code, body) = get(HEALTHZ_PORT, "/healthz");
            assert_eq!(code, 200, "/healthz during the outage: {body}");
            probes += 1;
        }
        let m1 = daemon.metrics();
        let refused = api.stats().refused;
        assert_eq!(
            kernel_state(),
            before,
            "the dataplane changed during the outage"
        );
        assert_eq!(
            applied_writes(&m1),
            applied_writes(&m0),
            "kernel writes counted during the outage"
        );
        assert_eq!(failed_writes(&m1), 0.0);
        // The periodic resync kept running (every 4 s) and found nothing to do.
        let resyncs = syncs(&m1) - syncs(&m0);
        assert!(resyncs >= 5.0, "only {resyncs} syncs in 60 s");
        assert!(
            refused > 0,
            "the daemon never tried to reach the API server"
        );
        eprintln!(
            "outage {:?}: {probes} /healthz probes all 200, {resyncs} resyncs with 0 writes, \
             {refused} connections refused",
            down.elapsed()
        );

        api.set_down(false);
        // kube's watcher retries with a jittered backoff capped at 30 s.
        let took = daemon.wait_table(&planned_table(&cluster, &[]), SLACK * 2, "catch-up");
        eprintln!("caught up {took:?} after the API server came back");
        assert_exact(&cluster, options(NodePortAddresses::All), &[]).await;
        assert_eq!(get(HEALTHZ_PORT, "/healthz").0, 200);
        stop_cleanly(&mut daemon);
    });
}

#[test]
fn a_refused_real_server_fails_only_its_service() {
    require_lab();
    case().run(|| async {
        let (api, mut cluster) = start_case().await;
        populate(&api, &mut cluster, 10, 2);
        // The API accepts a non-link-local multicast endpoint address; IPVS refuses it as a
        // real server (EINVAL: not unicast).
        const BAD: &str = "239.1.2.3";
        cluster.put_service(&api, cluster_ip_service("bad", "10.96.8.8", &[HTTP]));
        cluster.put_slice(
            &api,
            slice(
                "bad-a",
                "bad",
                &[HTTP],
                &[("10.244.8.1".into(), READY), (BAD.into(), READY)],
            ),
        );
        let dir = scratch("refused");
        let mut daemon = Daemon::start(
            &base_args(&api.url(), &dir),
            dir.join("daemon.log"),
            Privilege::Root,
        );
        daemon.wait_table(
            &planned_table(&cluster, &[BAD]),
            SLACK,
            "sync with a refusal",
        );
        assert_exact(&cluster, options(NodePortAddresses::All), &[BAD]).await;

        let page = daemon.metrics();
        let failed = failed_writes(&page);
        assert!(failed >= 1.0, "no failure counted:\n{page}");
        // Every failure (the first sync's and its retries') is that real server's add, counted
        // under its kind; none under kind="any".
        let failed_series: Vec<&str> = page
            .lines()
            .filter(|l| l.starts_with("ipvs_proxier_operations_total{"))
            .filter(|l| l.contains("result=\"failed\""))
            .collect();
        assert_eq!(
            failed_series,
            [format!(
                "ipvs_proxier_operations_total{{kind=\"ipvs_real_server_add\",result=\"failed\"}} \
                 {failed}"
            )]
        );
        let object = "add real server 239.1.2.3:8080 to 10.96.8.8:80/TCP";
        let log = daemon.log();
        // The Service port it belongs to is named too.
        let line = log
            .lines()
            .find(|l| l.contains(object) && l.contains("service=default/bad:http"))
            .unwrap_or_else(|| panic!("no log line names {object:?} and its Service:\n{log}"));
        eprintln!("failures counted: {failed}; log: {line}");

        // The slice is fixed (the bad address replaced, so the table shows when the daemon
        // has applied it): it converges and nothing is refused any more.
        cluster.put_slice(
            &api,
            slice(
                "bad-a",
                "bad",
                &[HTTP],
                &[("10.244.8.1".into(), READY), ("10.244.8.2".into(), READY)],
            ),
        );
        daemon.wait_table(&planned_table(&cluster, &[]), SLACK, "fixed slice");
        assert_exact(&cluster, options(NodePortAddresses::All), &[]).await;
        stop_cleanly(&mut daemon);
    });
}

#[test]
fn sigkill_mid_sync_then_restarts_converge_and_write_nothing() {
    require_lab();
    case().run(|| async {
        let (api, mut cluster) = start_case().await;
        const N: u32 = 2000;
        const EPS: u32 = 2;
        populate(&api, &mut cluster, N, EPS);
        let dir = scratch("sigkill");
        let args = base_args(&api.url(), &dir);
        let want_vs = N as usize + 1; // + the foreign one
        let want_rs = (N * EPS) as usize + 1;

        // Kill 1: halfway through binding the VIPs (one request each, so a wide window);
        // the sets, rules and IPVS table are not written yet.
        let links = Links::new().unwrap();
        let mut daemon = Daemon::start(&args, dir.join("daemon-1.log"), Privilege::Root);
        let started = Instant::now();
        let vips = loop {
            let vips = vip_count(&links).await;
            if vips >= N as usize / 2 {
                daemon.kill();
                break vips;
            }
            daemon.assert_running("first sync");
            // Listing thousands of objects (debug builds, emulated CPU) takes a while.
            assert!(
                started.elapsed() < SLACK * 3,
                "the first sync never started"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let vips_after = vip_count(&links).await;
        let (vs_after, _) = ip_vs_counts();
        eprintln!(
            "kill 1 after {:?} with {vips}/{N} VIPs bound (after the kill: {vips_after}, \
             {} virtual servers)",
            started.elapsed(),
            vs_after - 1
        );
        assert!(
            vips_after < N as usize,
            "the kill came after the VIPs were bound"
        );

        // Kill 2: once the IPVS batch has begun. It is written in a few large messages that
        // the kernel finishes even after the kill, so the table may end up nearly (rarely
        // exactly) complete; either way the restart below must converge.
        let mut daemon = Daemon::start(&args, dir.join("daemon-2.log"), Privilege::Root);
        let started = Instant::now();
        let (vs, rs) = loop {
            let (vs, rs) = ip_vs_counts();
            if vs > 1 {
                daemon.kill();
                break (vs, rs);
            }
            daemon.assert_running("second sync");
            assert!(
                started.elapsed() < SLACK * 3,
                "the IPVS batch never started"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let (vs_after, rs_after) = ip_vs_counts();
        eprintln!(
            "kill 2 after {:?} with {vs}/{want_vs} virtual servers, {rs}/{want_rs} real servers \
             (after the kill: {vs_after}, {rs_after}; partial: {})",
            started.elapsed(),
            vs_after < want_vs || rs_after < want_rs
        );

        let mut daemon = Daemon::start(&args, dir.join("daemon-3.log"), Privilege::Root);
        let took = daemon.wait_table(
            &planned_table(&cluster, &[]),
            SLACK * 2,
            "restart after SIGKILL",
        );
        eprintln!("restart converged {took:?} after start");
        assert_exact(&cluster, options(NodePortAddresses::All), &[]).await;
        stop_cleanly(&mut daemon);

        // A further restart over the programmed node: its first (full) sync writes nothing.
        let mut daemon = Daemon::start(&args, dir.join("daemon-4.log"), Privilege::Root);
        daemon.wait_syncs(1.0, SLACK * 2, "further restart");
        let page = daemon.metrics();
        assert_eq!(
            applied_writes(&page),
            0.0,
            "the further restart wrote:\n{page}"
        );
        assert_eq!(failed_writes(&page), 0.0);
        assert_eq!(kernel_table(), planned_table(&cluster, &[]));
        stop_cleanly(&mut daemon);
    });
}

/// Addresses on `kube-ipvs0` besides the foreign one, from one in-process address dump.
async fn vip_count(links: &Links) -> usize {
    let Some(index) = links.index_of("kube-ipvs0").await.unwrap() else {
        return 0;
    };
    let on_link = links
        .addresses()
        .await
        .unwrap()
        .iter()
        .filter(|a| a.ifindex == index)
        .count();
    on_link.saturating_sub(1)
}

/// splitmix64: a seeded, reproducible stream (no dependency for a handful of lines).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

const PORT_SETS: &[&[Port]] = &[&[HTTP], &[HTTP, DNS], &[HTTPS], &[HTTP, HTTPS, DNS], &[DNS]];

fn ports_of(svc: &Service) -> Vec<Port> {
    let names: Vec<String> = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| p.name.clone())
        .collect();
    [HTTP, HTTPS, DNS]
        .into_iter()
        .filter(|p| names.iter().any(|n| n == p.0))
        .collect()
}

fn random_endpoints(rng: &mut Rng) -> Vec<(String, Conditions)> {
    let n = rng.below(6);
    let mut seen = BTreeSet::new();
    (0..n)
        .filter_map(|_| {
            let ip = format!("10.244.{}.{}", rng.below(4), 1 + rng.below(250));
            let conditions = match rng.below(10) {
                0 => (false, true, true),   // terminating, still serving
                1 => (false, false, false), // not ready
                _ => READY,
            };
            seen.insert(ip.clone()).then_some((ip, conditions))
        })
        .collect()
}

/// One random API write (two when a Service is created or deleted with its slice); creates
/// only while there are fewer than `max_services` Services.
fn random_op(
    rng: &mut Rng,
    api: &Api,
    cluster: &mut Cluster,
    next_id: &mut u32,
    max_services: usize,
) {
    let services: Vec<String> = cluster.services.keys().cloned().collect();
    let slices: Vec<String> = cluster.slices.keys().cloned().collect();
    let roll = rng.below(100);
    if roll < 15 && services.len() < max_services || services.is_empty() {
        let id = *next_id;
        *next_id += 1;
        let name = format!("churn-{id}");
        let ports = *rng.pick(PORT_SETS).unwrap();
        // ClusterIPs from a pool of 1000, reused after deletes (as the allocator does).
        let used: BTreeSet<String> = cluster
            .services
            .values()
            .filter_map(|s| s.spec.as_ref()?.cluster_ip.clone())
            .collect();
        let ip = (0..)
            .map(|_| format!("10.96.{}.{}", 100 + rng.below(4), 1 + rng.below(250)))
            .find(|ip| !used.contains(ip))
            .unwrap();
        cluster.put_service(api, cluster_ip_service(&name, &ip, ports));
        let eps = random_endpoints(rng);
        cluster.put_slice(api, slice(&format!("{name}-a"), &name, ports, &eps));
    } else if roll < 27 {
        let name = rng.pick(&services).unwrap().clone();
        cluster.delete_service(api, &name);
        // Usually its slices go too; sometimes they linger (as before the GC runs).
        if rng.chance(80) {
            for s in slices.iter().filter(|s| s.starts_with(&format!("{name}-"))) {
                cluster.delete_slice(api, s);
            }
        }
    } else if roll < 40 {
        let name = rng.pick(&services).unwrap().clone();
        let mut svc = cluster.services[&name].clone();
        let ip = svc.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
        let ports = *rng.pick(PORT_SETS).unwrap();
        svc.spec = cluster_ip_service(&name, &ip, ports).spec;
        cluster.put_service(api, svc);
    } else if roll < 90 || slices.is_empty() {
        // An endpoint change: the most common event of a real cluster.
        let Some(name) = rng.pick(&services).cloned() else {
            return;
        };
        let ports = ports_of(&cluster.services[&name]);
        let slice_name = if rng.chance(15) {
            format!("{name}-b")
        } else {
            format!("{name}-a")
        };
        let eps = random_endpoints(rng);
        cluster.put_slice(api, slice(&slice_name, &name, &ports, &eps));
    } else {
        let name = rng.pick(&slices).unwrap().clone();
        cluster.delete_slice(api, &name);
    }
}

/// Makes the API server hold exactly `want` again.
fn restore(api: &Api, cluster: &mut Cluster, want: &Cluster) {
    let extra: Vec<String> = cluster
        .services
        .keys()
        .filter(|k| !want.services.contains_key(*k))
        .cloned()
        .collect();
    for name in extra {
        cluster.delete_service(api, &name);
    }
    let extra: Vec<String> = cluster
        .slices
        .keys()
        .filter(|k| !want.slices.contains_key(*k))
        .cloned()
        .collect();
    for name in extra {
        cluster.delete_slice(api, &name);
    }
    for (name, svc) in &want.services {
        if cluster.services.get(name) != Some(svc) {
            cluster.put_service(api, svc.clone());
        }
    }
    for (name, es) in &want.slices {
        if cluster.slices.get(name) != Some(es) {
            cluster.put_slice(api, es.clone());
        }
    }
}

#[test]
fn churn_soak_ten_thousand_writes_leaks_nothing() {
    require_lab();
    const OPS: usize = 10_000;
    const STEP: usize = 50;
    const ROUNDS: usize = 2;
    const WARM_UP: usize = 500;
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("churn soak seed {seed} (replay: SOAK_SEED={seed})");
    case().run(|| async move {
        let (api, mut cluster) = start_case().await;
        populate(&api, &mut cluster, 60, 3);
        let initial = cluster.clone();
        let dir = scratch("soak");
        let mut args = base_args(&api.url(), &dir);
        // Periodic full syncs interleave with the change-triggered incremental ones (a
        // shorter period than a sync takes here would make every sync full).
        args.extend(["--ipvs-sync-period".to_owned(), "8s".to_owned()]);
        let mut daemon = Daemon::start(&args, dir.join("daemon.log"), Privilege::Root);
        daemon.wait_table(&planned_table(&cluster, &[]), SLACK, "first sync");
        assert_exact(&cluster, options(NodePortAddresses::All), &[]).await;
        let cold = settled_memory(&mut daemon, "settle", "cold");
        // The baseline is a daemon that has run its change paths, as one in service has:
        // a warm-up of 500 writes that never takes the Services past the initial 60, then
        // back to the initial objects.
        let mut rng = Rng(seed);
        let mut next_id = 0;
        let w = cluster.writes;
        while cluster.writes - w < WARM_UP {
            let target = cluster.writes + STEP;
            while cluster.writes < target {
                random_op(&mut rng, &api, &mut cluster, &mut next_id, 60);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(cluster.services.len() <= 60);
        restore(&api, &mut cluster, &initial);
        daemon.wait_table(&planned_table(&cluster, &[]), SLACK, "warmed up");
        // Memory before the churn, then after each round.
        let mut memory = vec![settled_memory(
            &mut daemon,
            "settle after the warm-up",
            "before",
        )];

        let started = Instant::now();
        let writes0 = cluster.writes;
        let mut checks = 0;
        let mut step = 0;
        // Writes that restored the initial objects, not counted as churn.
        let mut restored = 0;
        let mut peak = (0, 0);
        for round in 1..=ROUNDS {
            while cluster.writes - writes0 - restored < OPS * round / ROUNDS {
                let target = (cluster.writes - writes0 - restored + STEP).min(OPS * round / ROUNDS);
                while cluster.writes - writes0 - restored < target {
                    random_op(&mut rng, &api, &mut cluster, &mut next_id, 150);
                }
                step += 1;
                peak = (
                    peak.0.max(cluster.services.len()),
                    peak.1.max(cluster.slices.len()),
                );
                if step % 25 == 0 {
                    // Every 1,250 writes: the kernel catches up with exactly the plan.
                    let took =
                        daemon.wait_table(&planned_table(&cluster, &[]), SLACK, "churn checkpoint");
                    checks += 1;
                    eprintln!(
                        "churn: {} writes after {:?}, {} services; caught up in {took:?}",
                        cluster.writes - writes0 - restored,
                        started.elapsed(),
                        cluster.services.len()
                    );
                } else {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            daemon.wait_table(&planned_table(&cluster, &[]), SLACK, "after a churn round");
            assert_exact(&cluster, options(NodePortAddresses::All), &[]).await;
            // Back to the initial objects: the same desired state as before the churn.
            let w = cluster.writes;
            restore(&api, &mut cluster, &initial);
            restored += cluster.writes - w;
            assert_eq!(cluster.services, initial.services);
            assert_eq!(cluster.slices, initial.slices);
            daemon.wait_table(&planned_table(&cluster, &[]), SLACK, "restored");
            memory.push(settled_memory(
                &mut daemon,
                "settle after",
                &format!("round{round}"),
            ));
            assert_exact(&cluster, options(NodePortAddresses::All), &[]).await;
        }
        let ops = cluster.writes - writes0;
        let page = daemon.metrics();
        let incremental = daemon
            .log()
            .lines()
            .filter(|l| l.contains("sync done incremental=true"))
            .count();
        let pct = |a: u64, b: u64| (b as f64 / a as f64 - 1.0) * 100.0;
        let held: Vec<u64> = memory.iter().map(|m| m.anon).collect();
        let summary = format!(
            "seed {seed}: {ops} API writes (incl. {} restoring the initial 60 services) in \
             {step} steps of <= {STEP} over {:?}; peak {} services / {} slices; {checks} \
             checkpoints + {} exact whole-state checks; daemon syncs {} ({incremental} \
             incremental), kernel writes {} applied, {} failed; leaked objects 0; memory held \
             (RssAnon, KiB) before / after each round: {held:?} ({:+.1} % after round 1, \
             {:+.1} % after round 2, {:+.1} % over round 1); VmRSS {:?}; cold start before the \
             warm-up: {cold:?}; before and after each round: {memory:#?}\n",
            restored,
            started.elapsed(),
            peak.0,
            peak.1,
            ROUNDS * 2,
            syncs(&page),
            applied_writes(&page),
            failed_writes(&page),
            pct(held[0], held[1]),
            pct(held[0], held[ROUNDS]),
            pct(held[1], held[ROUNDS]),
            memory.iter().map(|m| m.vm_rss).collect::<Vec<_>>(),
        );
        eprintln!("{summary}");
        let _ = write_artifact("daemon-faults/soak.txt", summary.as_bytes());
        assert_eq!(failed_writes(&page), 0.0);
        // Memory held by the daemon is its anonymous resident memory (RssAnon): the
        // allocator's pages, thread stacks, the private copies of data pages: what a leak
        // grows. VmRSS also counts the file-backed pages of the binary (RssFile, ~24 MiB in a
        // debug build) that the churn is first to run (+0.3..2.4 MiB measured): page cache
        // the kernel reclaims at will, not memory the daemon holds.
        //
        // After the churn's peak (up to 150 Services, 2.5x the initial objects) the daemon
        // holds the same objects as before, and so nearly the same memory: 100 bytes leaked
        // per write would add ~0.5 MiB a round (> 10 %). Measured with jemalloc as the
        // daemon's allocator: +1.7..+4.0 % (seeds 42 and 7); glibc's malloc kept +13..+34 %
        // here, pages of its heap pinned by a few live chunks each (BENCHMARKS.md).
        for (round, after) in held.iter().enumerate().skip(1) {
            assert!(
                *after as f64 <= held[0] as f64 * 1.10,
                "memory held (RssAnon) after round {round} more than 10 % above its level \
                 before the churn: {held:?} KiB"
            );
        }
        stop_cleanly(&mut daemon);
    });
}

/// Full syncs the daemon has logged.
fn full_syncs(daemon: &Daemon) -> usize {
    daemon
        .log()
        .lines()
        .filter(|l| l.contains("sync done incremental=false"))
        .count()
}

/// The daemon's memory, KiB, from `/proc/PID/status` and `/proc/PID/smaps`. The raw
/// `smaps` goes to the artifacts as `daemon-faults/soak-smaps-<label>.txt`.
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // The fields not asserted on are printed.
struct Memory {
    vm_rss: u64,
    /// RssAnon: everything below, the memory the daemon holds.
    anon: u64,
    /// RssFile: the binary's and libraries' pages in the page cache.
    file: u64,
    /// `Anonymous:` of the brk heap: glibc's malloc, which only the C libraries use (the
    /// daemon allocates with jemalloc, in the mappings below).
    heap: u64,
    /// ... of the unnamed mappings and the main stack: jemalloc's memory, thread stacks.
    anon_mmaps: u64,
    /// ... of file mappings: the private (relocated) data pages of the binary and libraries.
    file_private: u64,
    threads: usize,
}

fn memory(daemon: &Daemon, label: &str) -> Memory {
    let pid = daemon.pid();
    let status = daemon.proc_status();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let _ = write_artifact(
        &format!("daemon-faults/soak-smaps-{label}.txt"),
        smaps.as_bytes(),
    );
    let mut m = Memory {
        vm_rss: kib("VmRSS:"),
        anon: kib("RssAnon:"),
        file: kib("RssFile:"),
        heap: 0,
        anon_mmaps: 0,
        file_private: 0,
        threads: std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count(),
    };
    let mut name = String::new();
    for line in smaps.lines() {
        let mut cols = line.split_whitespace();
        let first = cols.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range perms offset dev inode [path].
            name = cols.nth(4).unwrap_or_default().to_owned();
        } else if first == "Anonymous:" {
            let kib: u64 = cols.next().unwrap().parse().unwrap();
            match name.as_str() {
                "[heap]" => m.heap += kib,
                "" | "[stack]" => m.anon_mmaps += kib,
                _ => m.file_private += kib,
            }
        }
    }
    // The daemon's age, to find this moment in a heaptrack trace (its `c` lines count ms
    // from the start): starttime (field 22 of stat, clock ticks of 1/100 s) against uptime.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start_ticks: f64 = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(19)?.parse().ok())
        .unwrap();
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap();
    eprintln!(
        "memory {label} at daemon age {:.1} s: {m:?}",
        uptime - start_ticks / 100.0
    );
    m
}

/// [`memory`] once two more full (periodic) syncs have finished on the same objects: a
/// daemon at rest, whose syncs' temporaries are freed (and, with jemalloc's zero decay,
/// returned at once). Read a second after the second is logged: its state file write is
/// then over too, and the next periodic sync is seconds away.
fn settled_memory(daemon: &mut Daemon, what: &str, label: &str) -> Memory {
    let want = full_syncs(daemon) + 2;
    let started = Instant::now();
    while full_syncs(daemon) < want {
        daemon.assert_running(what);
        assert!(
            started.elapsed() < SLACK,
            "{what}: fewer than 2 full syncs within {SLACK:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    memory(daemon, label)
}

/// The sysctls the sync wants on the lab's 6.1 kernel, as the privileged init container
/// sets them (uid 65534 cannot write /proc/sys).
const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.vs.conntrack", "1"),
    ("net.ipv4.vs.expire_nodest_conn", "1"),
    ("net.ipv4.vs.expire_quiescent_template", "1"),
    ("net.ipv4.ip_forward", "1"),
];

fn load_balancer(name: &str, ip: &str, node_port: i32, hc_port: i32, ingress: &str) -> Service {
    let mut svc = cluster_ip_service(name, ip, &[HTTP]);
    let spec = svc.spec.as_mut().unwrap();
    spec.type_ = Some("LoadBalancer".to_owned());
    spec.external_traffic_policy = Some("Local".to_owned());
    spec.health_check_node_port = Some(hc_port);
    spec.ports = Some(vec![ServicePort {
        node_port: Some(node_port),
        ..spec.ports.as_ref().unwrap()[0].clone()
    }]);
    svc.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some(ingress.to_owned()),
                ..LoadBalancerIngress::default()
            }]),
        }),
        ..ServiceStatus::default()
    });
    svc
}

/// `ss -Hltunp` rows: (netid, local address, owning pid if any).
fn listeners() -> Vec<(String, String, Option<u32>)> {
    let out = run("ss", &["-Hltunp"]).unwrap().stdout;
    out.lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let netid = (*cols.first()?).to_owned();
            let local = (*cols.get(4)?).to_owned();
            let pid = l
                .split("pid=")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse().ok());
            Some((netid, local, pid))
        })
        .collect()
}

#[test]
fn daemon_as_nobody_with_two_capabilities_listens_only_where_configured() {
    require_lab();
    case().run(|| async {
        let (api, mut cluster) = start_case().await;
        // IPVS's per-netns sysctls exist once the netns has used IPVS (the foreign service).
        for (k, v) in SYSCTLS {
            run("sysctl", &["-q", "-w", &format!("{k}={v}")]).unwrap();
        }
        populate(&api, &mut cluster, 5, 2);
        const HC_PORT: i32 = 32100;
        cluster.put_service(
            &api,
            load_balancer("lb", "10.96.7.7", 30100, HC_PORT, "203.0.113.10"),
        );
        cluster.put_slice(
            &api,
            slice("lb-a", "lb", &[HTTP], &[("10.244.7.1".into(), READY)]),
        );
        let dir = scratch("nobody");
        let mut args = base_args(&api.url(), &dir);
        args.extend([
            "--nodeport-addresses".to_owned(),
            "10.255.0.0/24".to_owned(),
        ]);
        let mut daemon = Daemon::start(&args, dir.join("daemon.log"), Privilege::Nobody);
        daemon.wait_syncs(1.0, SLACK, "first sync as nobody");
        let status = daemon.proc_status();
        let field = |k: &str| -> String {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(field("Uid:"), "65534 65534 65534 65534");
        assert_eq!(field("Gid:"), "65534 65534 65534 65534");
        // CAP_NET_ADMIN (12) and CAP_NET_RAW (13), nothing else, in every set.
        for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(set), "0000000000003000", "{set}");
        }
        let cidr = NodePortAddresses::Cidrs(vec!["10.255.0.0/24".parse().unwrap()]);
        let opts = options(cidr);
        // The whole state is the plan (a fresh root sync finds nothing to write).
        daemon.wait_table(
            &planned_table_with(&cluster, &opts, &[]),
            SLACK,
            "sync as nobody",
        );
        assert_exact(&cluster, opts, &[]).await;

        // The health-check node port answers for the local endpoint.
        let hc = format!("{NODE_IP}:{HC_PORT}");
        let (code, body) = get_from(&hc, "/").unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("\"localEndpoints\": 1") || body.contains("\"localEndpoints\":1"),
            "{body}"
        );

        // Listening sockets in the namespace: the daemon's are exactly the configured ones;
        // the only other one is this test's API server.
        let pid = daemon.pid();
        let mut ours: Vec<String> = Vec::new();
        let mut others: Vec<String> = Vec::new();
        for (netid, local, owner) in listeners() {
            let row = format!("{netid} {local}");
            if owner == Some(pid) {
                ours.push(row);
            } else {
                others.push(row);
            }
        }
        ours.sort();
        let mut want = vec![
            format!("tcp 127.0.0.1:{HEALTHZ_PORT}"),
            format!("tcp 127.0.0.1:{METRICS_PORT}"),
            format!("tcp {hc}"),
        ];
        want.sort();
        assert_eq!(ours, want, "the daemon's listening sockets");
        let api_addr = api.url().trim_start_matches("http://").to_owned();
        assert_eq!(others, vec![format!("tcp {api_addr}")], "other listeners");
        eprintln!("listening as uid 65534: {ours:?}");
        stop_cleanly(&mut daemon);
    });
}

/// Issue 8's memory figure for the daemon process itself (a benchmark, not run by default):
/// 10,000 ClusterIP Services x 10 ready endpoints served by the test API server; the daemon
/// lists them, programs an empty namespace, then runs two periodic full syncs. Prints its
/// peak RSS (VmHWM) and how long the first sync took to show. Build it in release, as
/// deployed: `LAB_CARGO_FLAGS=--release tests/lab/test daemon_peak_rss -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: minutes in the emulated guest; run on purpose"]
fn daemon_peak_rss_at_ten_thousand_services() {
    require_lab();
    case().run(|| async {
        const N: u32 = 10_000;
        const EPS: u32 = 10;
        // 100,000 distinct endpoint addresses: 10.244.0.1 upwards, into 10.245/16.
        let endpoint = |n: u32| {
            format!(
                "10.{}.{}.{}",
                244 + n / 62_500,
                (n / 250) % 250,
                1 + n % 250
            )
        };
        let (api, mut cluster) = start_case().await;
        cluster.put_node(&api, node());
        let listed = Instant::now();
        for i in 0..N {
            let name = format!("svc-{i}");
            cluster.put_service(&api, cluster_ip_service(&name, &svc_ip(i), &[HTTP]));
            let addrs: Vec<(String, Conditions)> =
                (0..EPS).map(|e| (endpoint(i * EPS + e), READY)).collect();
            let mut es = slice(&format!("{name}-a"), &name, &[HTTP], &addrs);
            // On other nodes, as in sync-bench: 100,000 endpoints local to one node would
            // be 100,000 hairpin set members, over ipset's maxelem (65,536).
            for (e, endpoint) in es.endpoints.iter_mut().enumerate() {
                endpoint.node_name = Some(format!("node-{}", 2 + e % 5));
            }
            cluster.put_slice(&api, es);
        }
        eprintln!(
            "API server holds {N} Services x {EPS} endpoints after {:?}",
            listed.elapsed()
        );
        let dir = scratch("scale");
        let mut args = base_args(&api.url(), &dir);
        args.extend(["--ipvs-sync-period".to_owned(), "20s".to_owned()]);
        if std::env::var_os("SCALE_NO_STATE_FILE").is_some() {
            // Profiling: without the status file (its owner map is built every sync).
            if let Some(at) = args.iter().position(|a| a == "--state-file") {
                args.drain(at..at + 2);
            }
        }
        let mut daemon = Daemon::start(&args, dir.join("daemon.log"), Privilege::Root);
        let started = Instant::now();
        // Where the peak is: the daemon's RSS parts every 100 ms, beside its log's timestamps.
        let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = {
            let status = format!("/proc/{}/status", daemon.pid());
            let sampling = sampling.clone();
            std::thread::spawn(move || {
                let mut out = String::from("ms VmRSS RssAnon RssFile (KiB)\n");
                while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(text) = std::fs::read_to_string(&status) else {
                        break;
                    };
                    let kib = |key: &str| {
                        text.lines()
                            .find_map(|l| l.strip_prefix(key))
                            .and_then(|v| v.split_whitespace().next())
                            .unwrap_or("?")
                            .to_owned()
                    };
                    out.push_str(&format!(
                        "{} {} {} {}\n",
                        started.elapsed().as_millis(),
                        kib("VmRSS:"),
                        kib("RssAnon:"),
                        kib("RssFile:")
                    ));
                    std::thread::sleep(Duration::from_millis(100));
                }
                out
            })
        };
        // + the foreign virtual server and real server.
        let want = (N as usize + 1, (N * EPS) as usize + 1);
        loop {
            if ip_vs_counts() == want {
                break;
            }
            daemon.assert_running("first sync");
            assert!(
                started.elapsed() < SLACK * 10,
                "the first sync never completed"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let first = started.elapsed();
        let status = |daemon: &Daemon, key: &str| -> u64 {
            daemon
                .proc_status()
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap()
        };
        let after_first = status(&daemon, "VmHWM:");
        // Two periodic full syncs (each re-reads all 111,000 real servers).
        let want_full = full_syncs(&daemon) + 2;
        let waited = Instant::now();
        while full_syncs(&daemon) < want_full && waited.elapsed() < SLACK * 4 {
            daemon.assert_running("periodic syncs");
            std::thread::sleep(Duration::from_secs(1));
        }
        let log = daemon.log();
        let syncs: Vec<&str> = log.lines().filter(|l| l.contains("sync done")).collect();
        eprintln!("{} syncs logged, the last ones:", syncs.len());
        for l in syncs.iter().rev().take(4).rev() {
            eprintln!("  {l}");
        }
        assert!(
            full_syncs(&daemon) >= want_full,
            "fewer than 2 periodic full syncs"
        );
        let rss = daemon.rss_kib();
        let peak = status(&daemon, "VmHWM:");
        let line = format!(
            "daemon at {N} Services x {EPS} endpoints: first sync visible after {first:?}; \
             VmHWM {:.1} MiB after it, {:.1} MiB after two more full syncs; VmRSS then \
             {:.1} MiB\n",
            after_first as f64 / 1024.0,
            peak as f64 / 1024.0,
            rss as f64 / 1024.0
        );
        eprint!("{line}");
        write_artifact("daemon-peak-rss.txt", line.as_bytes()).unwrap();
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", daemon.pid())).unwrap();
        write_artifact("daemon-smaps.txt", smaps.as_bytes()).unwrap();
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        let samples = sampler.join().unwrap();
        write_artifact("daemon-rss-samples.txt", samples.as_bytes()).unwrap();
        write_artifact("daemon.log", log.as_bytes()).unwrap();
        stop_cleanly(&mut daemon);
    });
}
