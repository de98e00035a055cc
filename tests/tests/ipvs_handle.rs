#![allow(clippy::unwrap_used, clippy::panic)] // A test crate: its helpers fail the test by panicking.

//! `netlink::ipvs::IpvsHandle` against the real kernel (lab guest only), with `ipvsadm -Sn` as
//! the independent oracle: after every step the table we read over netlink, rendered by
//! `Table::to_ipvsadm_save`, must equal what `ipvsadm -Sn` prints (both sorted by line, since
//! the kernel lists in hash order). This also checks the renderer against the real tool.

use std::net::IpAddr;

use lab_tests::{in_fresh_netns, ipvsadm_save, require_lab, run};
use netlink::ipvs::{
    AddressFamily, BatchLimits, Destination, ErrorKind, ForwardMethod, IpvsError, IpvsHandle,
    Operation, Protocol, Scheduler, Service, ServiceFlags, ServiceKey, Timeouts, TunnelType,
};
use pretty_assertions::assert_eq;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sorted_lines(s: &str) -> String {
    let mut lines: Vec<&str> = s.lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}

/// Our view and the oracle's, sorted; panics with a diff when they differ.
async fn assert_matches_oracle(h: &mut IpvsHandle, step: &str) {
    // The kernel's service dump is not a snapshot: its resume index counts the services of
    // every network namespace, so when a case running in parallel in another namespace adds
    // or removes services between two parts of a dump, an entry can be repeated or skipped
    // (by ipvsadm and by us alike). Nothing changes in this namespace meanwhile, so re-read
    // a few times; a real difference persists and still fails.
    let mut last = (String::new(), String::new());
    for _ in 0..5 {
        let ours = sorted_lines(&h.read_table().await.unwrap().to_ipvsadm_save());
        let theirs = sorted_lines(&ipvsadm_save().unwrap());
        if ours == theirs {
            return;
        }
        last = (ours, theirs);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(last.0, last.1, "after {step}");
}

/// `read_table` until two reads agree: nothing changes in this namespace meanwhile, but a
/// case in another namespace can make one dump repeat or skip a service (see above).
async fn settled_table(h: &mut IpvsHandle) -> netlink::ipvs::Table {
    let mut last = h.read_table().await.unwrap();
    for _ in 0..5 {
        let again = h.read_table().await.unwrap();
        if again == last {
            break;
        }
        last = again;
    }
    last
}

fn tcp(addr: &str, port: u16) -> ServiceKey {
    ServiceKey::Inet {
        protocol: Protocol::Tcp,
        addr: ip(addr),
        port,
    }
}

#[test]
fn connect_info_and_timeouts() {
    require_lab();
    in_fresh_netns(|| async {
        let mut h = IpvsHandle::connect().await.unwrap();
        let info = h.get_info().await.unwrap();
        assert_eq!(info.version_string(), "1.2.1");
        assert!(info.conn_table_size > 0);
        h.set_timeouts(&Timeouts {
            tcp: 900,
            tcp_fin: 120,
            udp: 300,
        })
        .await
        .unwrap();
        let t = h.get_timeouts().await.unwrap();
        assert_eq!((t.tcp, t.tcp_fin, t.udp), (900, 120, 300));
        // 0 leaves a value as it is.
        h.set_timeouts(&Timeouts {
            tcp: 0,
            tcp_fin: 0,
            udp: 60,
        })
        .await
        .unwrap();
        let t = h.get_timeouts().await.unwrap();
        assert_eq!((t.tcp, t.tcp_fin, t.udp), (900, 120, 60));
        let shown = run("ipvsadm", &["-L", "--timeout"]).unwrap().stdout;
        assert!(
            shown.contains("Timeout (tcp tcpfin udp): 900 120 60"),
            "{shown}"
        );
    });
}

#[test]
fn single_requests_errors_and_get_service() {
    require_lab();
    in_fresh_netns(|| async {
        let mut h = IpvsHandle::connect().await.unwrap();
        let key = tcp("10.96.0.1", 80);
        let svc = Service::new(key, Scheduler::rr());
        h.add_service(&svc).await.unwrap();
        assert_matches_oracle(&mut h, "add service").await;

        let dup = h.add_service(&svc).await.unwrap_err();
        assert_eq!(dup.kind(), Some(ErrorKind::AlreadyExists));
        assert_eq!(
            dup.to_string(),
            "add service 10.96.0.1:80/TCP: already exists"
        );

        let missing = tcp("10.96.0.9", 80);
        let e = h
            .add_destination(&missing, &Destination::masq(ip("10.255.0.2"), 8080))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::NoSuchService), "{e}");
        assert_eq!(
            e.to_string(),
            "add real server 10.255.0.2:8080 to 10.96.0.9:80/TCP: no such service"
        );

        let bad = Service::new(tcp("10.96.0.3", 80), Scheduler::new("nosuch").unwrap());
        let e = h.add_service(&bad).await.unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::UnknownScheduler), "{e}");

        let e = h
            .delete_destination(&key, &Destination::masq(ip("10.255.0.7"), 1).key())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::NotFound), "{e}");

        let got = h.get_service(&key).await.unwrap().unwrap();
        assert_eq!(got.service, svc);
        assert_eq!(h.get_service(&missing).await.unwrap(), None);
        assert_matches_oracle(&mut h, "errors").await;

        h.flush().await.unwrap();
        assert_eq!(ipvsadm_save().unwrap(), "");
        assert!(h.read_table().await.unwrap().services.is_empty());
    });
}

/// Builds `services` services with `per_service` masqueraded real servers each, as one list
/// of operations.
fn bulk_ops(services: usize, per_service: usize) -> Vec<Operation> {
    let mut ops = Vec::with_capacity(services * (per_service + 1));
    for i in 0..services {
        let key = tcp(&format!("10.96.{}.{}", i / 250, i % 250 + 1), 80);
        ops.push(Operation::AddService(Box::new(Service::new(
            key,
            Scheduler::rr(),
        ))));
        for j in 0..per_service {
            let rs = ip(&format!("10.255.{}.{}", 1 + j / 250, j % 250 + 1));
            ops.push(Operation::AddDestination(key, Destination::masq(rs, 8080)));
        }
    }
    ops
}

#[test]
fn batch_of_10000_with_one_bad_operation_in_the_middle() {
    require_lab();
    in_fresh_netns(|| async {
        let mut h = IpvsHandle::connect().await.unwrap();
        // 1,000 services x 9 real servers = 10,000 operations.
        let mut ops = bulk_ops(1000, 9);
        assert_eq!(ops.len(), 10_000);
        let bad_index = 5003;
        let ghost = tcp("10.99.0.1", 80);
        ops[bad_index] = Operation::AddDestination(ghost, Destination::masq(ip("10.255.9.9"), 1));
        // Operation 5003 was the third real server of service 500: one fewer lands.
        assert!(matches!(
            bulk_ops(1000, 9)[bad_index],
            Operation::AddDestination(..)
        ));
        let replaced = 1;
        let results = h.apply(&ops).await;
        assert_eq!(results.len(), ops.len());
        for (i, r) in results.iter().enumerate() {
            if i == bad_index {
                let e = r.as_ref().unwrap_err();
                assert_eq!(e.kind(), Some(ErrorKind::NoSuchService), "{e}");
                assert!(e.to_string().contains("10.99.0.1:80/TCP"), "{e}");
            } else {
                assert!(
                    r.is_ok(),
                    "operation {i} ({}) failed: {r:?}",
                    ops[i].describe()
                );
            }
        }
        let table = settled_table(&mut h).await;
        assert_eq!(table.services.len(), 1000);
        assert_eq!(table.destination_count(), 9000 - replaced);
        let theirs = ipvsadm_save().unwrap();
        assert_eq!(
            sorted_lines(&table.to_ipvsadm_save()),
            sorted_lines(&theirs)
        );

        // Re-applying the same batch: every add now fails alone with AlreadyExists, except
        // the bad one (still no such service).
        let again = h.apply(&ops).await;
        for (i, r) in again.iter().enumerate() {
            let kind = r.as_ref().unwrap_err().kind();
            if i == bad_index {
                assert_eq!(kind, Some(ErrorKind::NoSuchService));
            } else {
                assert_eq!(kind, Some(ErrorKind::AlreadyExists), "operation {i}");
            }
        }
        h.flush().await.unwrap();
    });
}

#[test]
fn batch_split_into_many_small_sendmsgs_keeps_order_and_results() {
    require_lab();
    in_fresh_netns(|| async {
        let mut h = IpvsHandle::connect().await.unwrap();
        h.set_batch_limits(BatchLimits {
            max_bytes: 1000,
            max_messages: 7,
        });
        let mut ops = bulk_ops(20, 4);
        // A duplicate service and a delete of a missing real server, in different chunks.
        ops.insert(13, ops[0].clone());
        let k = tcp("10.96.0.2", 80);
        ops.insert(
            57,
            Operation::DeleteDestination(k, Destination::masq(ip("10.255.7.7"), 1).key()),
        );
        let results = h.apply(&ops).await;
        for (i, r) in results.iter().enumerate() {
            match i {
                13 => assert_eq!(
                    r.as_ref().unwrap_err().kind(),
                    Some(ErrorKind::AlreadyExists)
                ),
                57 => assert_eq!(r.as_ref().unwrap_err().kind(), Some(ErrorKind::NotFound)),
                _ => assert!(r.is_ok(), "{i}: {r:?}"),
            }
        }
        assert_matches_oracle(&mut h, "chunked batch").await;
        // Tear it down with one batch too.
        let table = settled_table(&mut h).await;
        let mut down = Vec::new();
        for (key, vs) in &table.services {
            for d in vs.destinations.keys() {
                down.push(Operation::DeleteDestination(*key, *d));
            }
            down.push(Operation::DeleteService(*key));
        }
        assert_eq!(h.apply(&down).await.failed(), 0);
        assert_eq!(ipvsadm_save().unwrap(), "");
    });
}

#[test]
fn unavailable_is_not_reported_on_a_kernel_with_ipvs() {
    require_lab();
    in_fresh_netns(|| async {
        match IpvsHandle::connect().await {
            Ok(h) => assert!(h.family_id() > 0),
            Err(IpvsError::IpvsUnavailable) => panic!("the lab kernel has IPVS"),
            Err(e) => panic!("{e}"),
        }
    });
}

// ---------------------------------------------------------------------------------------
// The matrix: {tcp, udp, sctp, fwmark} x {IPv4, IPv6} x {rr, wrr, lc, sh, mh}.

#[derive(Clone, Copy, Debug)]
enum Kind {
    Proto(Protocol),
    Fwmark,
}

fn service_key(kind: Kind, family: AddressFamily, n: u16) -> ServiceKey {
    let vip = match family {
        AddressFamily::Inet => ip(&format!("10.96.1.{n}")),
        AddressFamily::Inet6 => ip(&format!("fd00:96::{n:x}")),
    };
    match kind {
        Kind::Proto(protocol) => ServiceKey::Inet {
            protocol,
            addr: vip,
            port: 80,
        },
        Kind::Fwmark => ServiceKey::Fwmark {
            family,
            mark: u32::from(n),
        },
    }
}

fn real_server(family: AddressFamily, n: u8) -> IpAddr {
    match family {
        AddressFamily::Inet => ip(&format!("10.255.0.{n}")),
        AddressFamily::Inet6 => ip(&format!("fd00:255::{n:x}")),
    }
}

/// Scheduler flags worth setting for a scheduler (the sh / mh ones have names in ipvsadm).
fn sched_flags(sched: &str) -> u32 {
    match sched {
        "sh" | "mh" => ServiceFlags::SCHED1 | ServiceFlags::SCHED2,
        _ => 0,
    }
}

async fn matrix_case(h: &mut IpvsHandle, kind: Kind, family: AddressFamily, sched: &str, n: u16) {
    let key = service_key(kind, family, n);
    let label = format!("{kind:?} {family:?} {sched}");
    let mut svc = Service::new(key, Scheduler::new(sched).unwrap());
    h.add_service(&svc).await.unwrap();
    assert_matches_oracle(h, &format!("{label}: create")).await;
    let read = h.get_service(&key).await.unwrap().unwrap();
    assert_eq!(read.service, svc, "{label}: read back");

    // Change scheduler, flags, persistence timeout and netmask.
    let other = if sched == "rr" { "wrr" } else { "rr" };
    svc.scheduler = Scheduler::new(other).unwrap();
    svc.flags = ServiceFlags(ServiceFlags::PERSISTENT);
    svc.timeout = 300;
    svc.netmask = match family {
        AddressFamily::Inet => 0xffff_ff00,
        AddressFamily::Inet6 => 64,
    };
    h.update_service(&svc).await.unwrap();
    assert_matches_oracle(h, &format!("{label}: scheduler/persistence")).await;
    svc.scheduler = Scheduler::new(sched).unwrap();
    let mut flags = sched_flags(sched);
    if matches!(kind, Kind::Proto(Protocol::Udp)) {
        flags |= ServiceFlags::ONEPACKET;
    }
    svc.flags = ServiceFlags(flags);
    svc.timeout = 0;
    svc.netmask = family.host_netmask();
    h.update_service(&svc).await.unwrap();
    assert_matches_oracle(h, &format!("{label}: flags")).await;
    assert_eq!(h.get_service(&key).await.unwrap().unwrap().service, svc);

    // Real servers: one per forwarding method, various weights and thresholds.
    let port = match kind {
        Kind::Proto(_) => 80,
        Kind::Fwmark => 0,
    };
    let dests = [
        Destination {
            port: match kind {
                Kind::Proto(_) => 8080,
                Kind::Fwmark => 0,
            },
            weight: 3,
            upper_threshold: 100,
            lower_threshold: 10,
            ..Destination::masq(real_server(family, 2), 0)
        },
        Destination {
            forward: ForwardMethod::DirectRoute,
            ..Destination::masq(real_server(family, 3), port)
        },
        Destination {
            forward: ForwardMethod::Tunnel {
                kind: TunnelType::Ipip,
                port: 0,
                flags: 0,
            },
            weight: 0,
            ..Destination::masq(real_server(family, 4), port)
        },
        Destination {
            forward: ForwardMethod::Tunnel {
                kind: TunnelType::Gue,
                port: 6080,
                flags: 1, // checksum
            },
            weight: 7,
            ..Destination::masq(real_server(family, 5), port)
        },
    ];
    let ops: Vec<Operation> = dests
        .iter()
        .map(|d| Operation::AddDestination(key, d.clone()))
        .collect();
    for (r, op) in h.apply(&ops).await.into_iter().zip(&ops) {
        r.unwrap_or_else(|e| panic!("{label}: {}: {e}", op.describe()));
    }
    assert_matches_oracle(h, &format!("{label}: add real servers")).await;
    let read: Vec<Destination> = h
        .dump_destinations(&key)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.destination)
        .collect();
    for d in &dests {
        assert!(read.contains(d), "{label}: {d:?} not read back: {read:?}");
    }

    // Change: weights, a threshold, and a forwarding method.
    let mut changed = dests[0].clone();
    changed.weight = 9;
    // Thresholds off: the kernel refuses (ERANGE) a lower threshold above the upper one.
    changed.upper_threshold = 0;
    changed.lower_threshold = 0;
    let mut gre = dests[3].clone();
    gre.forward = ForwardMethod::Tunnel {
        kind: TunnelType::Gre,
        port: 0,
        flags: 0,
    };
    h.update_destination(&key, &changed).await.unwrap();
    h.update_destination(&key, &gre).await.unwrap();
    assert_matches_oracle(h, &format!("{label}: change real servers")).await;

    h.delete_destination(&key, &dests[1].key()).await.unwrap();
    assert_matches_oracle(h, &format!("{label}: remove a real server")).await;

    h.delete_service(&key).await.unwrap();
    assert_matches_oracle(h, &format!("{label}: delete service")).await;
    assert_eq!(h.get_service(&key).await.unwrap(), None);
}

fn matrix(kind: Kind) {
    require_lab();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        in_fresh_netns(|| async {
            let mut h = IpvsHandle::connect().await.unwrap();
            for (i, sched) in ["rr", "wrr", "lc", "sh", "mh"].into_iter().enumerate() {
                matrix_case(&mut h, kind, family, sched, 10 + i as u16).await;
            }
            // Leave something behind, then flush it.
            h.add_service(&Service::new(
                service_key(kind, family, 99),
                Scheduler::rr(),
            ))
            .await
            .unwrap();
            h.flush().await.unwrap();
            assert_eq!(ipvsadm_save().unwrap(), "");
        });
    }
}

#[test]
fn matrix_tcp() {
    matrix(Kind::Proto(Protocol::Tcp));
}

#[test]
fn matrix_udp() {
    matrix(Kind::Proto(Protocol::Udp));
}

#[test]
fn matrix_sctp() {
    matrix(Kind::Proto(Protocol::Sctp));
}

#[test]
fn matrix_fwmark() {
    matrix(Kind::Fwmark);
}
