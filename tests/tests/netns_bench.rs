//! Dataplane-glue timings, printed (not asserted): `cargo test -p lab-tests --release --test
//! netns_bench -- --ignored --nocapture` as root. Each figure is measured in a fresh network
//! namespace. Results go to BENCHMARKS.md ("Dataplane glue (issue 3)").

// Test helpers outside #[test] fns: a panic there fails the test, which is what we want.
#![allow(clippy::unwrap_used, clippy::panic)]

mod glue;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use glue::{cmd, in_netns, kube_proxy_rules, kube_sets};
use ipvs_proxier::dataplane::iptables::{BackendChoice, Iptables};
use netlink::AddressFamily;
use netlink::Protocol;
use netlink::ipset::{IpsetHandle, Member, SetSpec, SetType};

fn cluster_ips(n: u32) -> Vec<Member> {
    (0..n)
        .map(|i| Member::IpPort {
            ip: IpAddr::from([10, 96, (i / 250) as u8, (i % 250) as u8 + 1]),
            protocol: Protocol::Tcp,
            port: 80,
        })
        .collect()
}

fn best_of<F: FnMut() -> Duration>(runs: usize, mut f: F) -> Duration {
    (0..runs).map(|_| f()).min().unwrap()
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
fn dataplane_glue_timings() {
    let members = cluster_ips(10_000);
    let spec = SetSpec::new("KUBE-CLUSTER-IP", SetType::HashIpPort, AddressFamily::Inet);

    // 10,000 entries from empty over netlink (create + dump + batched adds).
    let netlink = best_of(5, || {
        let (members, spec) = (members.clone(), spec.clone());
        in_netns(move || {
            let mut h = IpsetHandle::new().unwrap();
            let t = Instant::now();
            let r = h.sync_set(&spec, &members).unwrap();
            let d = t.elapsed();
            assert_eq!(r.added, 10_000);
            d
        })
    });
    // The same with one `ipset restore` process (the best the tool can do).
    let restore_input: String = std::iter::once(format!("{} -exist\n", spec.create_line()))
        .chain(members.iter().map(|m| format!("add {} {m}\n", spec.name)))
        .collect();
    let restore = best_of(5, || {
        let input = restore_input.clone();
        in_netns(move || {
            let t = Instant::now();
            cmd("ipset", &["restore"], Some(&input));
            t.elapsed()
        })
    });
    // Upstream's way: one `ipset add` process per entry; 200 of them, extrapolated.
    let per_exec = {
        let (members, spec) = (members.clone(), spec.clone());
        in_netns(move || {
            let mut h = IpsetHandle::new().unwrap();
            h.create(&spec).unwrap();
            let t = Instant::now();
            for m in &members[..200] {
                cmd(
                    "ipset",
                    &["add", &spec.name, &m.to_string(), "-exist"],
                    None,
                );
            }
            t.elapsed() / 200
        })
    };
    // A steady-state resync with nothing to change (one dump of 10,000 entries).
    let noop = {
        let (members, spec) = (members.clone(), spec.clone());
        in_netns(move || {
            let mut h = IpsetHandle::new().unwrap();
            h.sync_set(&spec, &members).unwrap();
            let t = Instant::now();
            let r = h.sync_set(&spec, &members).unwrap();
            assert_eq!((r.added, r.deleted), (0, 0));
            t.elapsed()
        })
    };
    println!("ipset, 10,000 hash:ip,port entries from empty:");
    println!("  netlink sync_set:            {:>9.2} ms", ms(netlink));
    println!("  one `ipset restore` process: {:>9.2} ms", ms(restore));
    println!(
        "  one `ipset add` per entry:   {:>9.2} ms per entry -> {:.1} s for 10,000 (extrapolated)",
        ms(per_exec),
        per_exec.as_secs_f64() * 10_000.0
    );
    println!("  no-op resync (one dump):     {:>9.2} ms", ms(noop));

    for (family, backend) in [
        (AddressFamily::Inet, BackendChoice::Nft),
        (AddressFamily::Inet, BackendChoice::Legacy),
        (AddressFamily::Inet6, BackendChoice::Nft),
        (AddressFamily::Inet6, BackendChoice::Legacy),
    ] {
        let (first, again) = in_netns(move || {
            let mut ipset = IpsetHandle::new().unwrap();
            for s in kube_sets(family) {
                ipset.create(&s).unwrap();
            }
            let ipt = Iptables::detect(family, backend).unwrap();
            let rules = kube_proxy_rules(family);
            let t = Instant::now();
            ipt.apply(&rules).unwrap();
            let first = t.elapsed();
            let again = best_of(5, || {
                let t = Instant::now();
                ipt.apply(&rules).unwrap();
                t.elapsed()
            });
            (first, again)
        });
        println!(
            "iptables apply ({family:?}, {backend:?}; 1 save + 1 restore, 11 chains, 37 rules + 9 jumps): first {:.2} ms, steady {:.2} ms",
            ms(first),
            ms(again)
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
