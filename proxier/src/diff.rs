//! Pure differences between a desired and an observed IPVS table, as the operations that turn
//! one into the other. No I/O: `dataplane` applies the result.
//!
//! Ownership follows kube-proxy: every virtual server of a managed family that is not desired
//! is ours to delete, except those whose address lies inside an excluded CIDR
//! (`--ipvs-exclude-cidrs`). Firewall-mark services have no address; kube-proxy never creates
//! them, so they are left alone (deleting an operator's fwmark service would be a surprise).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use netlink::AddressFamily;
use netlink::ipset::{Member, SetSpec};
use netlink::ipvs::{Operation, ServiceKey, Table, VirtualServer};

use crate::plan::IpSets;

/// Which virtual servers found in the kernel belong to us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Families this proxier manages; services of other families are never touched.
    pub families: BTreeSet<AddressFamily>,
    /// Addresses whose services are never deleted even when not desired.
    pub exclude: Vec<IpNet>,
}

impl Ownership {
    fn owns(&self, key: &ServiceKey) -> bool {
        match key {
            ServiceKey::Inet { addr, .. } => self.owns_address(addr),
            ServiceKey::Fwmark { .. } => false,
        }
    }

    /// Whether an address (a VIP on the dummy link, a virtual server's address) is ours to
    /// remove: of a managed family and outside every excluded CIDR.
    pub fn owns_address(&self, addr: &IpAddr) -> bool {
        self.families.contains(&AddressFamily::of(addr))
            && !self.exclude.iter().any(|net| net.contains(addr))
    }
}

/// Addresses to bind on and unbind from the dummy link (`kube-ipvs0`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipChanges {
    /// Desired and not bound, sorted.
    pub bind: Vec<IpAddr>,
    /// Bound, not desired, ours (managed family, not excluded), sorted. IPv6 link-local
    /// addresses are the kernel's, never ours.
    pub unbind: Vec<IpAddr>,
}

impl VipChanges {
    pub fn is_empty(&self) -> bool {
        self.bind.is_empty() && self.unbind.is_empty()
    }
}

/// The bind/unbind difference between the desired VIPs and the addresses found on the link.
pub fn vip_changes(
    desired: &BTreeSet<IpAddr>,
    bound: &BTreeSet<IpAddr>,
    ownership: &Ownership,
) -> VipChanges {
    let link_local = |ip: &IpAddr| match ip {
        IpAddr::V4(_) => false,
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    };
    VipChanges {
        bind: desired.difference(bound).copied().collect(),
        unbind: bound
            .difference(desired)
            .filter(|ip| ownership.owns_address(ip) && !link_local(ip))
            .copied()
            .collect(),
    }
}

/// What one ipset needs: creating (it does not exist), members to delete, members to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetChange {
    pub spec: SetSpec,
    pub create: bool,
    /// Sorted.
    pub del: Vec<Member>,
    /// Sorted.
    pub add: Vec<Member>,
}

/// The changes that make every set of `desired` exist with exactly its members. `observed`
/// maps the name of each existing set to its members; sets that need nothing are left out.
pub fn ipset_changes(
    desired: &IpSets,
    observed: &BTreeMap<String, BTreeSet<Member>>,
) -> Vec<SetChange> {
    desired
        .iter()
        .filter_map(|(spec, want)| {
            let change = match observed.get(&spec.name) {
                None => SetChange {
                    create: true,
                    del: Vec::new(),
                    add: want.iter().copied().collect(),
                    spec,
                },
                Some(have) => SetChange {
                    create: false,
                    del: have.difference(want).copied().collect(),
                    add: want.difference(have).copied().collect(),
                    spec,
                },
            };
            (change.create || !change.del.is_empty() || !change.add.is_empty()).then_some(change)
        })
        .collect()
}

/// The operations that make `observed` equal `desired` for every service we own, in an order
/// the kernel accepts: services are added or updated before their real servers are touched,
/// and stale services are deleted last (which drops their real servers with them).
pub fn ipvs_operations(desired: &Table, observed: &Table, ownership: &Ownership) -> Vec<Operation> {
    ipvs_operations_of(&[desired], observed, ownership)
}

/// [`ipvs_operations`] with the desired state split over several tables with disjoint keys
/// (one per family), without merging them into a copy.
pub fn ipvs_operations_of(
    desired: &[&Table],
    observed: &Table,
    ownership: &Ownership,
) -> Vec<Operation> {
    let wanted = wanted(desired);
    // Sized up front for the virtual servers the kernel lacks: growing by doubling holds
    // the old and the new buffer at once.
    let missing: usize = wanted
        .iter()
        .filter(|(k, _)| !observed.services.contains_key(k))
        .map(|(_, vs)| 1 + vs.destinations.len())
        .sum();
    let mut ops = Vec::with_capacity(missing);
    operations_with(
        &wanted,
        desired,
        observed,
        ownership,
        &mut ops,
        creation_operations,
    );
    ops
}

/// [`ipvs_operations_of`] with the virtual servers the kernel lacks left whole: they are
/// returned apart (copies sharing the plan's real-server maps), the operations only for
/// the others. A caller writes the missing ones a slice at a time
/// ([`creation_operations`]): at a cold sync of 10,000 Services x 10 endpoints they are
/// ~110,000 operations (7.8 MB at the daemon's memory peak, heaptrack in the lab), as
/// virtual servers ~1 MB.
pub fn ipvs_changes_of(
    desired: &[&Table],
    observed: &Table,
    ownership: &Ownership,
) -> (Vec<VirtualServer>, Vec<Operation>) {
    let wanted = wanted(desired);
    let mut created = Vec::new();
    let mut ops = Vec::new();
    operations_with(&wanted, desired, observed, ownership, &mut ops, |vs, _| {
        created.push(vs.clone())
    });
    (created, ops)
}

/// The operations that create `vs` in a kernel without it: the service, then its real
/// servers.
pub fn creation_operations(vs: &VirtualServer, ops: &mut Vec<Operation>) {
    let key = vs.service.key;
    ops.push(Operation::AddService(Box::new(vs.service.clone())));
    ops.extend(
        vs.destinations
            .values()
            .map(|d| Operation::AddDestination(key, d.clone())),
    );
}

/// Every desired virtual server, in key order.
fn wanted<'t>(desired: &[&'t Table]) -> Vec<(&'t ServiceKey, &'t VirtualServer)> {
    let mut wanted: Vec<(&ServiceKey, &VirtualServer)> =
        desired.iter().flat_map(|t| t.services.iter()).collect();
    if desired.len() > 1 {
        wanted.sort_by_key(|(k, _)| **k);
    }
    wanted
}

/// The operations for the virtual servers of `wanted` the kernel has and for the stale ones
/// (deleted last); `missing` is called for each one it lacks.
fn operations_with(
    wanted: &[(&ServiceKey, &VirtualServer)],
    desired: &[&Table],
    observed: &Table,
    ownership: &Ownership,
    ops: &mut Vec<Operation>,
    mut missing: impl FnMut(&VirtualServer, &mut Vec<Operation>),
) {
    for (key, want) in wanted {
        match observed.services.get(key) {
            None => missing(want, ops),
            Some(have) => {
                if have.service != want.service {
                    ops.push(Operation::UpdateService(Box::new(want.service.clone())));
                }
                destination_operations(key, want, have, ops);
            }
        }
    }
    ops.extend(
        observed
            .services
            .keys()
            .filter(|key| {
                !desired.iter().any(|t| t.services.contains_key(key)) && ownership.owns(key)
            })
            .map(|key| Operation::DeleteService(*key)),
    );
}

fn destination_operations(
    key: &ServiceKey,
    want: &VirtualServer,
    have: &VirtualServer,
    ops: &mut Vec<Operation>,
) {
    // Deletions first: a real server whose forwarding method changes cannot be updated in
    // place by every kernel, and freeing slots first never hurts.
    ops.extend(
        have.destinations
            .keys()
            .filter(|k| !want.destinations.contains_key(k))
            .map(|k| Operation::DeleteDestination(*key, *k)),
    );
    for (dkey, d) in want.destinations.iter() {
        match have.destinations.get(dkey) {
            None => ops.push(Operation::AddDestination(*key, d.clone())),
            Some(current) if current != d => {
                ops.push(Operation::UpdateDestination(*key, d.clone()))
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use netlink::Protocol;
    use netlink::ipvs::{Destination, Scheduler, Service, ServiceFlags};
    use pretty_assertions::assert_eq;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn key(addr: &str, port: u16) -> ServiceKey {
        ServiceKey::Inet {
            protocol: Protocol::Tcp,
            addr: ip(addr),
            port,
        }
    }

    /// A service key with its real servers as `(address, port, weight)`.
    type Entry<'a> = (ServiceKey, &'a [(&'a str, u16, u32)]);

    fn table(entries: &[Entry<'_>]) -> Table {
        let mut t = Table::default();
        for (k, dests) in entries {
            let vs = t.upsert_service(Service::new(*k, Scheduler::rr()));
            for (a, p, w) in *dests {
                let mut d = Destination::masq(ip(a), *p);
                d.weight = *w;
                vs.destinations_mut().insert(d.key(), d);
            }
        }
        t
    }

    fn v4_only() -> Ownership {
        Ownership {
            families: [AddressFamily::Inet].into(),
            exclude: vec!["192.0.2.0/24".parse().unwrap()],
        }
    }

    #[test]
    fn equal_tables_need_nothing() {
        let t = table(&[(key("10.96.0.1", 443), &[("10.0.0.2", 6443, 1)])]);
        assert_eq!(ipvs_operations(&t, &t, &v4_only()), vec![]);
    }

    #[test]
    fn from_empty_adds_services_then_their_real_servers() {
        let want = table(&[(
            key("10.96.0.1", 443),
            &[("10.0.0.2", 6443, 1), ("10.0.0.3", 6443, 1)],
        )]);
        let k = key("10.96.0.1", 443);
        assert_eq!(
            ipvs_operations(&want, &Table::default(), &v4_only()),
            vec![
                Operation::AddService(Box::new(Service::new(k, Scheduler::rr()))),
                Operation::AddDestination(k, Destination::masq(ip("10.0.0.2"), 6443)),
                Operation::AddDestination(k, Destination::masq(ip("10.0.0.3"), 6443)),
            ]
        );
    }

    #[test]
    fn missing_virtual_servers_come_apart_whole_and_share_the_desired_maps() {
        let (new, kept, stale) = (
            key("10.96.0.1", 443),
            key("10.96.0.2", 80),
            key("10.96.0.3", 80),
        );
        let want = table(&[
            (new, &[("10.0.0.2", 6443, 1), ("10.0.0.3", 6443, 1)]),
            (kept, &[("10.0.0.4", 80, 1)]),
        ]);
        let have = table(&[(kept, &[("10.0.0.5", 80, 1)]), (stale, &[])]);
        let (created, ops) = ipvs_changes_of(&[&want], &have, &v4_only());
        assert_eq!(created, vec![want.services[&new].clone()]);
        assert!(std::sync::Arc::ptr_eq(
            &created[0].destinations,
            &want.services[&new].destinations
        ));
        assert_eq!(
            ops,
            vec![
                Operation::DeleteDestination(kept, Destination::masq(ip("10.0.0.5"), 80).key()),
                Operation::AddDestination(kept, Destination::masq(ip("10.0.0.4"), 80)),
                Operation::DeleteService(stale),
            ]
        );
        // Written out, the created ones are exactly the operations the whole diff has for them.
        let mut written = Vec::new();
        creation_operations(&created[0], &mut written);
        written.extend(ops);
        let mut all = ipvs_operations(&want, &have, &v4_only());
        let order = |op: &Operation| format!("{op:?}");
        written.sort_by_key(order);
        all.sort_by_key(order);
        assert_eq!(written, all);
    }

    #[test]
    fn changed_service_and_real_servers_are_updated_in_place() {
        let k = key("10.96.0.1", 80);
        let have = table(&[(k, &[("10.0.0.2", 80, 0), ("10.0.0.9", 80, 1)])]);
        let mut want = table(&[(k, &[("10.0.0.2", 80, 1), ("10.0.0.3", 80, 1)])]);
        let mut sticky = Service::new(k, Scheduler::rr());
        sticky.flags = ServiceFlags(ServiceFlags::PERSISTENT);
        sticky.timeout = 10800;
        want.upsert_service(sticky.clone());
        assert_eq!(
            ipvs_operations(&want, &have, &v4_only()),
            vec![
                Operation::UpdateService(Box::new(sticky)),
                Operation::DeleteDestination(k, Destination::masq(ip("10.0.0.9"), 80).key()),
                Operation::UpdateDestination(k, Destination::masq(ip("10.0.0.2"), 80)),
                Operation::AddDestination(k, Destination::masq(ip("10.0.0.3"), 80)),
            ]
        );
    }

    #[test]
    fn vips_are_bound_and_only_owned_stale_ones_unbound() {
        let desired: BTreeSet<IpAddr> = [ip("10.96.0.1"), ip("10.96.0.2")].into();
        let bound: BTreeSet<IpAddr> = [
            ip("10.96.0.2"),
            ip("10.96.0.9"),
            ip("192.0.2.7"),
            ip("fd00::9"),
        ]
        .into();
        assert_eq!(
            vip_changes(&desired, &bound, &v4_only()),
            VipChanges {
                bind: vec![ip("10.96.0.1")],
                unbind: vec![ip("10.96.0.9")],
            }
        );
        let bound = desired.clone();
        assert!(vip_changes(&desired, &bound, &v4_only()).is_empty());
    }

    #[test]
    fn ipsets_missing_sets_are_created_and_members_diffed() {
        use crate::plan::SetName;
        let mut want = IpSets::new(AddressFamily::Inet);
        let a = Member::Ip(ip("10.96.0.1"));
        let b = Member::Ip(ip("10.96.0.2"));
        let c = Member::Ip(ip("10.96.0.3"));
        want.insert(SetName::IpvsIps, a);
        want.insert(SetName::IpvsIps, b);
        // Every set exists and matches except KUBE-IPVS-IPS (b missing, c extra) and
        // KUBE-CLUSTER-IP (missing, empty).
        let mut observed: BTreeMap<String, BTreeSet<Member>> = want
            .iter()
            .map(|(spec, m)| (spec.name, m.clone()))
            .collect();
        observed.insert("KUBE-IPVS-IPS".into(), [a, c].into());
        observed.remove("KUBE-CLUSTER-IP");
        assert_eq!(
            ipset_changes(&want, &observed),
            vec![
                SetChange {
                    spec: SetName::ClusterIp.spec(AddressFamily::Inet),
                    create: true,
                    del: vec![],
                    add: vec![],
                },
                SetChange {
                    spec: SetName::IpvsIps.spec(AddressFamily::Inet),
                    create: false,
                    del: vec![c],
                    add: vec![b],
                },
            ]
        );
        observed.insert("KUBE-IPVS-IPS".into(), [a, b].into());
        observed.insert("KUBE-CLUSTER-IP".into(), BTreeSet::new());
        assert_eq!(ipset_changes(&want, &observed), vec![]);
    }

    #[test]
    fn stale_services_are_deleted_except_excluded_other_family_and_fwmark() {
        let stale = key("10.96.0.9", 80);
        let have = table(&[
            (stale, &[("10.0.0.2", 80, 1)]),
            (key("192.0.2.10", 80), &[]),
            (key("fd00::10", 80), &[]),
            (
                ServiceKey::Fwmark {
                    family: AddressFamily::Inet,
                    mark: 7,
                },
                &[],
            ),
        ]);
        assert_eq!(
            ipvs_operations(&Table::default(), &have, &v4_only()),
            vec![Operation::DeleteService(stale)]
        );
    }
}
