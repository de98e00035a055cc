//! `netlink::link::Links` and the sysctls against a real kernel, in a fresh network namespace.
//! On the lab guest (dummy driver and IPVS present) everything is checked; on the build host
//! (no dummy driver, no IPVS) a veth named `kube-ipvs0` stands in for the dummy and the IPVS
//! sysctls must fail with an error naming the sysctl.

// Test helpers outside #[test] fns: a panic there fails the test, which is what we want.
#![allow(clippy::unwrap_used, clippy::panic)]

mod glue;

use std::net::IpAddr;

use glue::{cmd, in_netns};
use ipvs_proxier::dataplane::sysctl::Sysctls;
use netlink::link::{LinkError, Links};
use pretty_assertions::assert_eq;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `ip -o addr show dev DEV` as sorted `addr/prefix` strings.
fn ip_addrs(dev: &str) -> Vec<String> {
    let out = cmd("ip", &["-o", "addr", "show", "dev", dev], None);
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "inet" || *x == "inet6")?;
            Some(w[i + 1].to_owned())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn dummy_link_vips_and_one_dump_of_node_addresses() {
    // The lab fixture's eth0 (a dummy in the guest, a veth on the host) carries 10.255.0.1/24
    // and fd00:255::1/64.
    lab_tests::NetnsCase::new().run(|| async {
        let links = Links::new().unwrap();
        let has_dummy = match links.ensure_dummy("kube-ipvs0").await {
            Ok(_) => true,
            Err(LinkError::Netlink { .. }) => {
                eprintln!("no dummy driver in this kernel: using a veth as kube-ipvs0");
                cmd(
                    "ip",
                    &[
                        "link",
                        "add",
                        "kube-ipvs0",
                        "type",
                        "veth",
                        "peer",
                        "name",
                        "kip-peer",
                    ],
                    None,
                );
                false
            }
            Err(e) => panic!("{e}"),
        };
        let index = links.ensure_dummy("kube-ipvs0").await.unwrap();
        assert_eq!(links.index_of("kube-ipvs0").await.unwrap(), Some(index));
        // Left DOWN, as kube-proxy leaves it.
        let show = cmd("ip", &["-o", "link", "show", "kube-ipvs0"], None);
        assert!(show.contains("state DOWN"), "{show}");
        if has_dummy {
            assert!(show.contains("link/ether"), "{show}");
            let kind = cmd("ip", &["-d", "-o", "link", "show", "kube-ipvs0"], None);
            assert!(kind.contains("dummy"), "{kind}");
        }

        let vips = [ip("10.96.0.1"), ip("10.96.0.10"), ip("fd00:96::1")];
        for v in vips {
            assert!(links.bind(index, v).await.unwrap());
            // Again: EEXIST is success.
            assert!(!links.bind(index, v).await.unwrap());
        }
        assert_eq!(
            ip_addrs("kube-ipvs0"),
            ["10.96.0.1/32", "10.96.0.10/32", "fd00:96::1/128"]
        );

        let split = links.node_addresses(index).await.unwrap();
        let mut on: Vec<IpAddr> = split.on_link.clone();
        on.sort();
        assert_eq!(on, vips);
        let mut elsewhere: Vec<(IpAddr, bool)> = split
            .elsewhere
            .iter()
            .map(|a| (a.addr, a.host_or_link_scope))
            .collect();
        elsewhere.sort();
        // lo's addresses (host scope), eth0's; eth0's fe80:: may or may not be there yet.
        elsewhere.retain(|(a, _)| !matches!(a, IpAddr::V6(v) if v.segments()[0] == 0xfe80));
        assert_eq!(
            elsewhere,
            [
                (ip("10.255.0.1"), false),
                (ip("127.0.0.1"), true),
                (ip("::1"), true),
                (ip("fd00:255::1"), false),
            ]
        );

        assert!(links.unbind(index, ip("10.96.0.10")).await.unwrap());
        assert!(links.unbind(index, ip("fd00:96::1")).await.unwrap());
        // Again: EADDRNOTAVAIL is success.
        assert!(!links.unbind(index, ip("10.96.0.10")).await.unwrap());
        assert!(!links.unbind(index, ip("fd00:96::1")).await.unwrap());
        assert_eq!(ip_addrs("kube-ipvs0"), ["10.96.0.1/32"]);

        // --cleanup deletes only a dummy.
        if has_dummy {
            assert!(links.delete_dummy("kube-ipvs0").await.unwrap());
            assert_eq!(links.index_of("kube-ipvs0").await.unwrap(), None);
            assert!(!links.delete_dummy("kube-ipvs0").await.unwrap());
        } else {
            let err = links.delete_dummy("kube-ipvs0").await.unwrap_err();
            assert!(matches!(err, LinkError::NotDummy { .. }), "{err}");
            assert!(links.index_of("kube-ipvs0").await.unwrap().is_some());
        }
        // A link that is never a dummy (the fixture's eth0 is one in the guest).
        let err = links.delete_dummy("lo").await.unwrap_err();
        assert!(matches!(err, LinkError::NotDummy { .. }), "{err}");
        assert!(err.to_string().contains("lo"), "{err}");
    });
}

#[test]
fn ipvs_sysctls_in_a_fresh_namespace() {
    in_netns(|| {
        let s = Sysctls::default();
        // Per-namespace, 0 in a new one.
        assert_eq!(s.get("net/ipv4/ip_forward").unwrap(), 0);
        assert!(s.ensure("net/ipv4/ip_forward", 1).unwrap());
        assert!(!s.ensure("net/ipv4/ip_forward", 1).unwrap());
        let has_ipvs = std::path::Path::new("/proc/sys/net/ipv4/vs").exists();
        match s.ensure_ipvs(true) {
            Ok(_) => {
                assert!(has_ipvs);
                for (name, want) in [
                    ("net/ipv4/vs/conntrack", 1),
                    ("net/ipv4/vs/expire_nodest_conn", 1),
                    ("net/ipv4/vs/expire_quiescent_template", 1),
                    ("net/ipv4/ip_forward", 1),
                    ("net/ipv4/conf/all/arp_ignore", 1),
                    ("net/ipv4/conf/all/arp_announce", 2),
                ] {
                    assert_eq!(s.get(name).unwrap(), want, "{name}");
                }
                assert!(s.ensure_ipvs(true).unwrap().is_empty());
            }
            Err(e) => {
                assert!(!has_ipvs, "{e}");
                assert!(e.to_string().contains("net/ipv4/vs/conntrack"), "{e}");
            }
        }
    });
}
