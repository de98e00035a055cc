//! The sync engine against the guest kernel, asserting WHOLE state after every sync: the
//! sorted `ipvsadm -Sn` equals the plan's render, the addresses on `kube-ipvs0` equal the
//! plan's bind set, the members of every `KUBE-*` set (`ipset save`) equal the plan's sets,
//! and the KUBE chains of `iptables-save` hold exactly the planned rules. Scenarios: from
//! empty, no-op resync (zero writes), restart adoption, object changes, drift repair.
//! The objects are the example manifests (`examples/seeds.yaml`).

// Test helpers outside #[test] fns: a panic there fails the test, which is what we want.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::path::Path;

use ipvs_proxier::dataplane::canon::chains_up_to_date;
use ipvs_proxier::model::manifests::Manifests;
use ipvs_proxier::model::objects::RawAddress;
use ipvs_proxier::plan::incremental::changed_units;
use ipvs_proxier::plan::{Plan, render};
use ipvs_proxier::sync::cmd::{CommonArgs, sync_options};
use ipvs_proxier::sync::{SyncOptions, SyncReport, Syncer, WriteCounts, manifests};
use lab_tests::{in_fresh_netns, ipvsadm_save, require_lab, run, sh};
use netlink::AddressFamily;
use netlink::ipvs::Scheduler;
use pretty_assertions::assert_eq;

fn objects() -> Manifests {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seeds.yaml");
    manifests::load(&path).unwrap()
}

fn options() -> SyncOptions {
    let args = CommonArgs {
        manifests: "unused".into(),
        node_name: Some("node-1".into()),
        node_ips: vec![],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        scheduler: Scheduler::rr(),
        masquerade_all: false,
        exclude_cidrs: vec!["10.97.0.0/16".parse().unwrap()],
        strict_arp: false,
    };
    sync_options(&args, "node-1".into())
}

async fn syncer() -> Syncer {
    let opts = options();
    let kernel = Syncer::default_kernel_options(&opts);
    Syncer::new(opts, &kernel).await.unwrap()
}

async fn sync(s: &mut Syncer, objects: &Manifests) -> SyncReport {
    let report = s.sync(objects).await.unwrap();
    assert_eq!(report.failures, vec![], "{report:?}");
    report
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text.lines().map(str::to_owned).collect();
    v.sort();
    v
}

/// The kernel's state compared whole with `plan`; `extra_ipvs` / `extra_vips` are foreign
/// objects expected to survive (excluded CIDRs).
fn assert_state(plan: &Plan, extra_ipvs: &str, extra_vips: &[&str]) {
    let want_ipvs = sorted_lines(&format!("{}{extra_ipvs}", render::ipvs(plan)));
    assert_eq!(
        sorted_lines(&ipvsadm_save().unwrap()),
        want_ipvs,
        "ipvsadm -Sn"
    );

    let vips = sh("ip -o addr show dev kube-ipvs0 | awk '{print $4}'").unwrap();
    let mut want_vips: Vec<String> = plan
        .families
        .iter()
        .flat_map(|f| f.bind_addresses.iter())
        .map(|a| format!("{a}/{}", if a.is_ipv4() { 32 } else { 128 }))
        .chain(extra_vips.iter().map(|s| (*s).to_owned()))
        .collect();
    want_vips.sort();
    assert_eq!(sorted_lines(&vips), want_vips, "addresses on kube-ipvs0");

    let saved = run("ipset", &["save"]).unwrap().stdout;
    let names = |text: &str| -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("create "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    let adds = |text: &str| -> Vec<String> {
        sorted_lines(text)
            .into_iter()
            .filter(|l| l.starts_with("add "))
            .collect()
    };
    let want_sets = render::ipsets(plan);
    assert_eq!(names(&saved), names(&want_sets), "ipset names");
    assert_eq!(adds(&saved), adds(&want_sets), "ipset members");

    let rules = render::iptables(plan, AddressFamily::Inet).unwrap();
    let ipt = run("iptables-save", &[] as &[&str]).unwrap().stdout;
    assert!(
        chains_up_to_date(AddressFamily::Inet, &rules, &ipt),
        "iptables-save does not hold the planned rules:\n{ipt}\nwanted:\n{rules}"
    );
}

#[test]
fn from_empty_then_a_resync_writes_nothing() {
    require_lab();
    in_fresh_netns(|| async {
        let objects = objects();
        let mut s = syncer().await;
        let first = sync(&mut s, &objects).await;
        let plan = s.last_plan().unwrap().clone();
        assert_eq!(first.virtual_servers, 11);
        assert_eq!(first.writes.services_added, 11);
        assert_eq!(first.writes.real_servers_added, 20);
        assert_eq!(first.writes.iptables_restores, 1);
        assert_state(&plan, "", &[]);

        let second = sync(&mut s, &objects).await;
        assert_eq!(second.writes, WriteCounts::default(), "no-op resync wrote");
        assert_state(&plan, "", &[]);
        eprintln!(
            "from empty: observe {:?} plan {:?} apply {:?}; no-op: observe {:?} plan {:?} apply {:?}",
            first.observe, first.plan, first.apply, second.observe, second.plan, second.apply
        );
    });
}

#[test]
fn a_fresh_process_adopts_the_node_and_restores_zero_weights() {
    require_lab();
    in_fresh_netns(|| async {
        let objects = objects();
        {
            let mut s = syncer().await;
            sync(&mut s, &objects).await;
        }
        // A fresh process (new handles, nothing cached) over a programmed node: no writes.
        let mut fresh = syncer().await;
        let adopt = sync(&mut fresh, &objects).await;
        assert_eq!(adopt.writes, WriteCounts::default());
        drop(fresh);

        // A desired real server left at weight 0 (e.g. by a crash mid-drain) gets its
        // weight back (kubernetes#92019), and nothing else is touched.
        run(
            "ipvsadm",
            &[
                "-e",
                "-t",
                "10.96.0.10:80",
                "-r",
                "10.244.0.11:8080",
                "-m",
                "-w",
                "0",
            ],
        )
        .unwrap();
        let mut fresh = syncer().await;
        let repaired = sync(&mut fresh, &objects).await;
        assert_eq!(
            repaired.writes,
            WriteCounts {
                real_servers_updated: 1,
                ..WriteCounts::default()
            }
        );
        assert_state(fresh.last_plan().unwrap(), "", &[]);
    });
}

#[test]
fn endpoint_and_service_changes_are_applied_exactly() {
    require_lab();
    in_fresh_netns(|| async {
        let mut objects = objects();
        let mut s = syncer().await;
        sync(&mut s, &objects).await;

        let slice = |objects: &mut Manifests, name: &str| -> usize {
            objects
                .endpoint_slices
                .iter()
                .position(|e| e.metadata.name.as_deref() == Some(name))
                .unwrap()
        };
        // myweb-svc loses 10.244.0.12 (its slice only: the other services keep it).
        let i = slice(&mut objects, "myweb-svc-7x2lq");
        objects.endpoint_slices[i]
            .endpoints
            .retain(|e| e.address != Some(RawAddress::parse("10.244.0.12")));
        // named-port-svc gains 10.244.0.22.
        let i = slice(&mut objects, "named-port-svc-p4q7s");
        let mut extra = objects.endpoint_slices[i].endpoints[0].clone();
        extra.address = Some(RawAddress::parse("10.244.0.22"));
        objects.endpoint_slices[i].endpoints.push(extra);
        // sticky-svc is deleted.
        objects
            .services
            .retain(|svc| svc.metadata.name.as_deref() != Some("sticky-svc"));

        let report = sync(&mut s, &objects).await;
        assert_state(s.last_plan().unwrap(), "", &[]);
        assert_eq!(report.writes.real_servers_deleted, 1);
        assert_eq!(report.writes.real_servers_added, 1);
        assert_eq!(report.writes.services_deleted, 1);
        assert_eq!(report.writes.addresses_unbound, 1);
        assert!(!sh("ipvsadm -Sn").unwrap().contains("10.96.0.15"));

        let again = sync(&mut s, &objects).await;
        assert_eq!(again.writes, WriteCounts::default());
    });
}

#[test]
fn drift_behind_our_back_is_repaired_exactly() {
    require_lab();
    in_fresh_netns(|| async {
        let objects = objects();
        let mut s = syncer().await;
        sync(&mut s, &objects).await;

        // Someone deletes a real server, a VIP, a set member and a chain's rules, and adds
        // a stale VS + VIP of ours and a foreign VS + VIP inside the excluded 10.97.0.0/16.
        sh("ipvsadm -d -t 10.96.0.10:80 -r 10.244.0.11:8080 && \
            ip addr del 10.96.0.11/32 dev kube-ipvs0 && \
            ipset del KUBE-CLUSTER-IP 10.96.0.13,tcp:80 && \
            iptables -t nat -F KUBE-POSTROUTING && \
            ipvsadm -A -t 10.96.0.99:80 -s rr && \
            ip addr add 10.96.0.99/32 dev kube-ipvs0 && \
            ipvsadm -A -t 10.97.0.1:80 -s wrr && \
            ip addr add 10.97.0.1/32 dev kube-ipvs0")
        .unwrap();

        let report = sync(&mut s, &objects).await;
        assert_state(
            s.last_plan().unwrap(),
            "-A -t 10.97.0.1:80 -s wrr\n",
            &["10.97.0.1/32"],
        );
        assert_eq!(
            report.writes,
            WriteCounts {
                addresses_bound: 1,
                addresses_unbound: 1,
                set_members_added: 1,
                iptables_restores: 1,
                services_deleted: 1,
                real_servers_added: 1,
                ..WriteCounts::default()
            }
        );
    });
}

/// The incremental path (cached kernel view, only changed virtual servers re-read) against
/// the full one: after each change applied incrementally the WHOLE kernel state equals the
/// plan, a fresh process's full sync finds nothing to write, and at the end a full re-read
/// of the same syncer writes nothing either.
#[test]
fn incremental_syncs_equal_full_syncs() {
    require_lab();
    in_fresh_netns(|| async {
        let mut objects = objects();
        let mut s = syncer().await;
        let first = s
            .sync_incremental(&objects, &Default::default())
            .await
            .unwrap();
        assert!(!first.incremental, "the first sync must be full");
        assert_eq!(first.failures, vec![]);
        assert!(s.has_cache());

        let slice = |objects: &Manifests, name: &str| -> usize {
            objects
                .endpoint_slices
                .iter()
                .position(|e| e.metadata.name.as_deref() == Some(name))
                .unwrap()
        };
        type Change = Box<dyn Fn(&mut Manifests)>;
        let changes: Vec<(&str, Change, WriteCounts)> = vec![
            (
                "endpoint removed",
                Box::new(move |o: &mut Manifests| {
                    let i = slice(o, "myweb-svc-7x2lq");
                    o.endpoint_slices[i]
                        .endpoints
                        .retain(|e| e.address != Some(RawAddress::parse("10.244.0.12")));
                }),
                WriteCounts {
                    real_servers_deleted: 1,
                    ..WriteCounts::default()
                },
            ),
            (
                "endpoint added",
                Box::new(move |o: &mut Manifests| {
                    let i = slice(o, "named-port-svc-p4q7s");
                    let mut extra = o.endpoint_slices[i].endpoints[0].clone();
                    extra.address = Some(RawAddress::parse("10.244.0.22"));
                    o.endpoint_slices[i].endpoints.push(extra);
                }),
                WriteCounts {
                    set_members_added: 1,
                    real_servers_added: 1,
                    ..WriteCounts::default()
                },
            ),
            (
                "service added",
                Box::new(move |o: &mut Manifests| {
                    let mut svc = o
                        .services
                        .iter()
                        .find(|s| s.metadata.name.as_deref() == Some("myweb-svc"))
                        .unwrap()
                        .clone();
                    svc.metadata.name = Some("extra-svc".into());
                    let spec = svc.spec.as_mut().unwrap();
                    spec.cluster_ip = Some("10.96.0.77".into());
                    spec.cluster_ips = vec!["10.96.0.77".into()];
                    o.services.push(svc);
                    let mut es = o.endpoint_slices[slice(o, "myweb-svc-7x2lq")].clone();
                    es.metadata.name = Some("extra-svc-abcde".into());
                    es.metadata.labels.service_name = Some("extra-svc".to_owned());
                    o.endpoint_slices.push(es);
                }),
                WriteCounts {
                    addresses_bound: 1,
                    set_members_added: 2,
                    services_added: 1,
                    real_servers_added: 1,
                    ..WriteCounts::default()
                },
            ),
            (
                "service removed",
                Box::new(|o: &mut Manifests| {
                    o.services
                        .retain(|svc| svc.metadata.name.as_deref() != Some("sticky-svc"));
                }),
                WriteCounts {
                    addresses_unbound: 1,
                    set_members_deleted: 4,
                    services_deleted: 1,
                    ..WriteCounts::default()
                },
            ),
            (
                "nothing",
                Box::new(|_: &mut Manifests| {}),
                WriteCounts::default(),
            ),
        ];
        let mut wrong = Vec::new();
        for (what, change, want) in changes {
            let before = objects.clone();
            change(&mut objects);
            // What the daemon's source reports: the Services whose objects changed.
            let affected = changed_units(
                (&before.services, &before.endpoint_slices),
                (&objects.services, &objects.endpoint_slices),
            );
            let report = s.sync_incremental(&objects, &affected).await.unwrap();
            assert_eq!(report.failures, vec![], "{what}");
            assert!(report.incremental, "{what}: not incremental");
            eprintln!(
                "{what}: re-read {} virtual servers, {}",
                report.reread, report.writes
            );
            assert_state(s.last_plan().unwrap(), "", &[]);
            if report.writes != want {
                wrong.push(format!("{what}: {} (wanted {want})", report.writes));
            }
            // The full path (a fresh process, nothing cached) agrees: nothing to write.
            let mut fresh = syncer().await;
            let full = sync(&mut fresh, &objects).await;
            assert_eq!(
                full.writes,
                WriteCounts::default(),
                "{what}: full sync after"
            );
        }
        assert_eq!(
            wrong,
            Vec::<String>::new(),
            "writes of the incremental syncs"
        );
        // The same syncer, full re-read: nothing to write.
        let full = sync(&mut s, &objects).await;
        assert!(!full.incremental);
        assert_eq!(full.writes, WriteCounts::default(), "final full sync");
        assert_state(s.last_plan().unwrap(), "", &[]);
    });
}

/// The kernel's service dump can repeat or skip a service when another namespace changes
/// its table mid-dump, so a sync's writes may find the kernel other than it read it: each
/// such refused write is redone as the kernel needs (add <-> update, a delete of what is
/// gone is done), in the same sync, and the sync says its read was stale.
#[test]
fn writes_refused_for_a_stale_read_are_redone_in_the_same_sync() {
    use ipvs_proxier::dataplane::kernel::{Kernel, Outcome};
    use netlink::Protocol;
    use netlink::ipvs::{Destination, Operation, Service, ServiceKey};

    require_lab();
    in_fresh_netns(|| async {
        sh("ipvsadm -A -t 10.96.0.1:80 -s rr && \
            ipvsadm -a -t 10.96.0.1:80 -r 10.244.0.11:8080 -m -w 1")
        .unwrap();
        let tcp = |last: u8| ServiceKey::Inet {
            protocol: Protocol::Tcp,
            addr: [10, 96, 0, last].into(),
            port: 80,
        };
        let rs = Destination {
            weight: 3,
            ..Destination::masq([10, 244, 0, 11].into(), 8080)
        };
        let ops = [
            // Read as missing, but there: becomes an update.
            Operation::AddService(Box::new(Service::new(
                tcp(1),
                Scheduler::new("wrr").unwrap(),
            ))),
            Operation::AddDestination(tcp(1), rs.clone()),
            // Read as present, but gone: becomes an add, then its real server lands.
            Operation::UpdateService(Box::new(Service::new(tcp(2), Scheduler::rr()))),
            Operation::UpdateDestination(tcp(2), rs.clone()),
            // Already gone: nothing to do.
            Operation::DeleteService(tcp(3)),
        ];
        let mut kernel = Kernel::open(&Syncer::default_kernel_options(&options()))
            .await
            .unwrap();
        let mut out = Outcome::default();
        kernel.apply_ipvs(&ops, &mut out).await;

        assert_eq!(out.failures, vec![]);
        assert!(out.observation_stale);
        assert_eq!(
            out.writes,
            WriteCounts {
                services_added: 1,
                services_updated: 1,
                real_servers_added: 1,
                real_servers_updated: 1,
                ..WriteCounts::default()
            }
        );
        assert_eq!(
            sorted_lines(&ipvsadm_save().unwrap()),
            sorted_lines(
                "-A -t 10.96.0.1:80 -s wrr\n\
                 -a -t 10.96.0.1:80 -r 10.244.0.11:8080 -m -w 3\n\
                 -A -t 10.96.0.2:80 -s rr\n\
                 -a -t 10.96.0.2:80 -r 10.244.0.11:8080 -m -w 3\n"
            )
        );
    });
}
