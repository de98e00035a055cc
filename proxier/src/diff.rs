//! Pure differences between a desired and an observed IPVS table, as the operations that turn
//! one into the other. No I/O: `dataplane` applies the result.
//!
//! Ownership follows kube-proxy: every virtual server of a managed family that is not desired
//! is ours to delete, except those whose address lies inside an excluded CIDR
//! (`--ipvs-exclude-cidrs`). Firewall-mark services have no address; kube-proxy never creates
//! them, so they are left alone (deleting an operator's fwmark service would be a surprise).

use std::collections::BTreeSet;

use ipnet::IpNet;
use netlink::AddressFamily;
use netlink::ipvs::{Operation, ServiceKey, Table, VirtualServer};

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
            ServiceKey::Inet { addr, .. } => {
                self.families.contains(&key.family())
                    && !self.exclude.iter().any(|net| net.contains(addr))
            }
            ServiceKey::Fwmark { .. } => false,
        }
    }
}

/// The operations that make `observed` equal `desired` for every service we own, in an order
/// the kernel accepts: services are added or updated before their real servers are touched,
/// and stale services are deleted last (which drops their real servers with them).
pub fn ipvs_operations(desired: &Table, observed: &Table, ownership: &Ownership) -> Vec<Operation> {
    let mut ops = Vec::new();
    for (key, want) in &desired.services {
        match observed.services.get(key) {
            None => {
                ops.push(Operation::AddService(want.service.clone()));
                ops.extend(
                    want.destinations
                        .values()
                        .map(|d| Operation::AddDestination(*key, d.clone())),
                );
            }
            Some(have) => {
                if have.service != want.service {
                    ops.push(Operation::UpdateService(want.service.clone()));
                }
                destination_operations(key, want, have, &mut ops);
            }
        }
    }
    ops.extend(
        observed
            .services
            .keys()
            .filter(|key| !desired.services.contains_key(key) && ownership.owns(key))
            .map(|key| Operation::DeleteService(*key)),
    );
    ops
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
    for (dkey, d) in &want.destinations {
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

    fn table(entries: &[(ServiceKey, &[(&str, u16, u32)])]) -> Table {
        let mut t = Table::default();
        for (k, dests) in entries {
            let vs = t.upsert_service(Service::new(*k, Scheduler::rr()));
            for (a, p, w) in *dests {
                let mut d = Destination::masq(ip(a), *p);
                d.weight = *w;
                vs.destinations.insert(d.key(), d);
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
                Operation::AddService(Service::new(k, Scheduler::rr())),
                Operation::AddDestination(k, Destination::masq(ip("10.0.0.2"), 6443)),
                Operation::AddDestination(k, Destination::masq(ip("10.0.0.3"), 6443)),
            ]
        );
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
                Operation::UpdateService(sticky),
                Operation::DeleteDestination(k, Destination::masq(ip("10.0.0.9"), 80).key()),
                Operation::UpdateDestination(k, Destination::masq(ip("10.0.0.2"), 80)),
                Operation::AddDestination(k, Destination::masq(ip("10.0.0.3"), 80)),
            ]
        );
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
