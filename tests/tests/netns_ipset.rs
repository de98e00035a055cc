//! The ipset netlink handle against a real kernel, in a fresh network namespace per case:
//! after each change the WHOLE `ipset save` output is compared with what was asked for.
//! Needs root and netns only (runs on the host and in the lab guest).

// Test helpers outside #[test] fns: a panic there fails the test, which is what we want.
#![allow(clippy::unwrap_used, clippy::panic)]

mod glue;

use std::collections::BTreeSet;
use std::net::IpAddr;

use glue::{cmd, in_netns, kube_sets, normalise_ipset_save};
use netlink::ipset::{IpsetError, IpsetHandle, Member, SetSpec, SetType};
use netlink::{AddressFamily, Protocol};
use pretty_assertions::assert_eq;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A membership for every kube-proxy set of a family; `round` shifts the values so two rounds
/// overlap partly (some members stay, some go, some arrive).
fn membership(spec: &SetSpec, round: u16) -> Vec<Member> {
    let v6 = spec.family == AddressFamily::Inet6;
    let addr = |i: u16| {
        if v6 {
            ip(&format!("fd00:96::{:x}", i + 1))
        } else {
            ip(&format!("10.96.{}.{}", i / 250, i % 250 + 1))
        }
    };
    let net = |i: u16| {
        if v6 {
            format!("fd00:{:x}::/64", i + 1).parse().unwrap()
        } else {
            format!("192.168.{i}.0/24").parse().unwrap()
        }
    };
    let protocol = |i: u16| match i % 3 {
        0 => Protocol::Tcp,
        1 => Protocol::Udp,
        _ => Protocol::Sctp,
    };
    (round * 3..round * 3 + 6)
        .map(|i| match spec.kind {
            SetType::HashIp => Member::Ip(addr(i)),
            SetType::HashIpPort => Member::IpPort {
                ip: addr(i),
                protocol: protocol(i),
                port: 80 + i,
            },
            SetType::HashIpPortIp => Member::IpPortIp {
                ip: addr(i),
                protocol: protocol(i),
                port: 8080,
                ip2: addr(i),
            },
            SetType::HashIpPortNet => Member::IpPortNet {
                ip: addr(i),
                protocol: Protocol::Tcp,
                port: 443,
                net: net(i),
            },
            SetType::HashNet => Member::Net(net(i)),
            SetType::BitmapPort => Member::Port(30000 + i),
        })
        .collect()
}

/// What `ipset save` should print for these sets and members, normalised.
fn expected_save(sets: &[(SetSpec, Vec<Member>)]) -> Vec<String> {
    let mut lines = Vec::new();
    for (spec, members) in sets {
        lines.push(spec.create_line());
        lines.extend(members.iter().map(|m| format!("add {} {m}", spec.name)));
    }
    lines.sort();
    lines
}

#[test]
fn all_kube_proxy_sets_of_both_families_are_created_and_synced() {
    in_netns(|| {
        let mut h = IpsetHandle::new().unwrap();
        assert!(h.protocol() >= 6);
        let specs: Vec<SetSpec> = [AddressFamily::Inet, AddressFamily::Inet6]
            .into_iter()
            .flat_map(kube_sets)
            .collect();
        assert_eq!(specs.len(), 34);
        assert!(
            specs
                .iter()
                .any(|s| s.name == "KUBE-6-LOAD-BALANCER-SOURCE-CID")
        );
        assert!(
            specs
                .iter()
                .any(|s| s.name == "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS")
        );

        for round in [0u16, 1, 0] {
            let desired: Vec<(SetSpec, Vec<Member>)> = specs
                .iter()
                .map(|s| (s.clone(), membership(s, round)))
                .collect();
            for (spec, members) in &desired {
                let report = h.sync_set(spec, members).unwrap();
                if round == 0 && report.deleted == 0 {
                    assert!(report.added == 6 || report.added == 3, "{report:?}");
                } else {
                    // Rounds overlap by three members: three go, three arrive.
                    assert_eq!((report.added, report.deleted), (3, 3), "{}", spec.name);
                }
            }
            let save = normalise_ipset_save(&cmd("ipset", &["save"], None));
            assert_eq!(save, expected_save(&desired), "round {round}");
        }

        // A second identical sync changes nothing.
        for spec in &specs {
            let report = h.sync_set(spec, &membership(spec, 0)).unwrap();
            assert_eq!((report.added, report.deleted), (0, 0));
        }
        // Listing reads back what was written.
        let listed = h.list("KUBE-6-LOAD-BALANCER-SOURCE-CID").unwrap();
        assert_eq!(listed.kind, Some(SetType::HashIpPortNet));
        let got: BTreeSet<Member> = listed.members.into_iter().collect();
        let spec = specs
            .iter()
            .find(|s| s.name == "KUBE-6-LOAD-BALANCER-SOURCE-CID")
            .unwrap();
        assert_eq!(got, membership(spec, 0).into_iter().collect());

        // Flush and destroy; destroying a missing set is success.
        h.flush("KUBE-IPVS-IPS").unwrap();
        assert!(h.list("KUBE-IPVS-IPS").unwrap().members.is_empty());
        for spec in &specs {
            h.destroy(&spec.name).unwrap();
        }
        h.destroy("KUBE-IPVS-IPS").unwrap();
        assert_eq!(cmd("ipset", &["save"], None), "");
        assert!(h.list_names().unwrap().is_empty());
    });
}

#[test]
fn one_bad_element_is_named_and_the_rest_of_the_batch_lands() {
    in_netns(|| {
        let mut h = IpsetHandle::new().unwrap();
        let spec = SetSpec::new("S", SetType::HashIp, AddressFamily::Inet);
        h.create(&spec).unwrap();
        // Same family checks are the kernel's: IPv6 members in an IPv4 set fail one by one.
        let members = [
            Member::Ip(ip("10.0.0.1")),
            Member::Ip(ip("fd00::1")),
            Member::Ip(ip("10.0.0.2")),
            Member::Ip(ip("fd00::2")),
            Member::Ip(ip("10.0.0.3")),
        ];
        let err = h.add("S", SetType::HashIp, &members).unwrap_err();
        let IpsetError::Elements { failures, .. } = &err else {
            panic!("expected element failures, got {err}");
        };
        let names: Vec<&str> = failures.iter().map(|f| f.element.as_str()).collect();
        assert_eq!(names, ["fd00::1", "fd00::2"], "{err}");
        assert_eq!(
            normalise_ipset_save(&cmd("ipset", &["save"], None)),
            [
                "add S 10.0.0.1",
                "add S 10.0.0.2",
                "add S 10.0.0.3",
                "create S hash:ip family inet hashsize 1024 maxelem 65536",
            ]
        );
        // A set-level problem is one error naming the set.
        let err = h
            .add("MISSING", SetType::HashIp, &members[..1])
            .unwrap_err();
        assert!(err.to_string().contains("MISSING"), "{err}");
        // A full set: the first element over maxelem fails by name and the rest is counted
        // as not tried (each would fail the same way, a round trip apiece); the others stay.
        let mut small = SetSpec::new("SMALL", SetType::HashIp, AddressFamily::Inet);
        small.max_elements = 2;
        let many: Vec<Member> = (1..=4)
            .map(|i| Member::Ip(ip(&format!("10.1.0.{i}"))))
            .collect();
        let err = h.sync_set(&small, &many).unwrap_err();
        let IpsetError::Elements { failures, .. } = &err else {
            panic!("expected element failures, got {err}");
        };
        let got: Vec<(&str, usize)> = failures
            .iter()
            .map(|f| (f.element.as_str(), f.not_tried))
            .collect();
        assert_eq!(got, [("10.1.0.3", 1)], "{err}");
        assert_eq!(h.list("SMALL").unwrap().members.len(), 2);
        // Thousands over the limit: one failure per message sent, every element accounted.
        let mut limited = SetSpec::new("LIMITED", SetType::HashIp, AddressFamily::Inet);
        limited.max_elements = 100;
        let lots: Vec<Member> = (0..5000u32)
            .map(|i| Member::Ip(ip(&format!("10.2.{}.{}", i / 250, 1 + i % 250))))
            .collect();
        let err = h.sync_set(&limited, &lots).unwrap_err();
        let IpsetError::Elements { failures, .. } = &err else {
            panic!("expected element failures, got {err}");
        };
        let accounted: usize = failures.iter().map(|f| 1 + f.not_tried).sum();
        assert_eq!(accounted, 4900, "{failures:?}");
        assert!(
            failures.len() <= 4,
            "one per message of the first send: {failures:?}"
        );
        assert_eq!(h.list("LIMITED").unwrap().members.len(), 100);
    });
}

#[test]
fn foreign_members_are_removed_by_sync() {
    in_netns(|| {
        let mut h = IpsetHandle::new().unwrap();
        let spec = SetSpec::new("KUBE-CLUSTER-IP", SetType::HashIpPort, AddressFamily::Inet);
        h.create(&spec).unwrap();
        // Put in entries with the tool, one of them not expressible as a Member (icmp).
        cmd(
            "ipset",
            &["restore"],
            Some(
                "add KUBE-CLUSTER-IP 10.96.0.1,tcp:443\n\
                 add KUBE-CLUSTER-IP 10.96.0.2,icmp:ping\n\
                 add KUBE-CLUSTER-IP 10.96.0.3,udp:53\n",
            ),
        );
        let keep = Member::IpPort {
            ip: ip("10.96.0.1"),
            protocol: Protocol::Tcp,
            port: 443,
        };
        let report = h.sync_set(&spec, &[keep]).unwrap();
        assert_eq!((report.added, report.deleted), (0, 2));
        assert_eq!(
            normalise_ipset_save(&cmd("ipset", &["save"], None)),
            [
                "add KUBE-CLUSTER-IP 10.96.0.1,tcp:443".to_owned(),
                spec.create_line(),
            ]
        );
    });
}

#[test]
fn ten_thousand_entries_and_back() {
    in_netns(|| {
        let mut h = IpsetHandle::new().unwrap();
        let spec = SetSpec::new("KUBE-CLUSTER-IP", SetType::HashIpPort, AddressFamily::Inet);
        let members: Vec<Member> = (0..10_000u32)
            .map(|i| Member::IpPort {
                ip: IpAddr::from([10, 96, (i / 250) as u8, (i % 250) as u8 + 1]),
                protocol: Protocol::Tcp,
                port: 80,
            })
            .collect();
        let report = h.sync_set(&spec, &members).unwrap();
        assert_eq!(report.added, 10_000);
        // The kernel grows the hash past the initial 1024 buckets: compare the rest.
        let without_hashsize = |lines: Vec<String>| -> Vec<String> {
            lines
                .into_iter()
                .map(|l| match l.find(" hashsize ") {
                    Some(i) if l.starts_with("create ") => {
                        let rest = &l[i + " hashsize ".len()..];
                        let after = rest.find(' ').map_or("", |j| &rest[j..]);
                        format!("{}{after}", &l[..i])
                    }
                    _ => l,
                })
                .collect()
        };
        let save = normalise_ipset_save(&cmd("ipset", &["save"], None));
        assert_eq!(save.len(), 10_001);
        assert_eq!(
            without_hashsize(save),
            without_hashsize(expected_save(&[(spec.clone(), members.clone())]))
        );
        // Keep every other member.
        let half: Vec<Member> = members.iter().step_by(2).copied().collect();
        let report = h.sync_set(&spec, &half).unwrap();
        assert_eq!((report.added, report.deleted), (0, 5_000));
        assert_eq!(
            without_hashsize(normalise_ipset_save(&cmd("ipset", &["save"], None))),
            without_hashsize(expected_save(&[(spec, half)]))
        );
    });
}
