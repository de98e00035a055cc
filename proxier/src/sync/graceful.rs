//! Graceful termination of real servers (reference §4.4), as a pure state machine: the caller
//! passes the time (`now`) and the observed connection counters, so tests drive it with a
//! fake clock.
//!
//! - A TCP real server that is no longer desired and still has connections goes to weight 0
//!   and joins the drain list; it is deleted once `active + inactive` reaches 0, or when it
//!   has drained for [`Drains::max_drain`] (when set; upstream waits forever, #81775).
//! - With no connections, and always for UDP and SCTP (#71514), it is deleted at once.
//! - A draining real server that becomes desired again leaves the list; the diff's update
//!   gives it its weight back.
//! - The list lives in memory. After a restart a weight-0 real server that is not desired is
//!   drained again from scratch; one that is desired gets its weight back from the diff.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use netlink::Protocol;
use netlink::ipvs::{DestinationKey, Operation, ServiceKey, Table};

use crate::dataplane::kernel::Connections;

/// A real server of a virtual server.
pub type RealServerKey = (ServiceKey, DestinationKey);

/// The drain list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drains {
    /// When each real server started draining.
    draining: BTreeMap<RealServerKey, Instant>,
    /// Delete a draining real server after this long even with connections left.
    pub max_drain: Option<Duration>,
}

fn drains_gracefully(service: &ServiceKey) -> bool {
    matches!(
        service,
        ServiceKey::Inet {
            protocol: Protocol::Tcp,
            ..
        }
    )
}

impl Drains {
    pub fn new(max_drain: Option<Duration>) -> Self {
        Self {
            draining: BTreeMap::new(),
            max_drain,
        }
    }

    /// The real servers draining now, with when they started.
    pub fn draining(&self) -> &BTreeMap<RealServerKey, Instant> {
        &self.draining
    }

    /// The virtual servers that have draining real servers (what a drain check must read).
    pub fn services(&self) -> Vec<ServiceKey> {
        let mut v: Vec<ServiceKey> = self.draining.keys().map(|(s, _)| *s).collect();
        v.dedup();
        v
    }

    /// Forgets draining real servers that are desired again (whatever the diff does with
    /// them), so a later check can never delete a desired one.
    pub fn retain_undesired(&mut self, desired: &Table) {
        self.retain_undesired_by(|svc, dest| {
            desired
                .services
                .get(svc)
                .is_some_and(|vs| vs.destinations.contains_key(dest))
        });
    }

    /// [`Drains::retain_undesired`] with the desired state as a lookup (no table to build).
    pub fn retain_undesired_by(&mut self, desired: impl Fn(&ServiceKey, &DestinationKey) -> bool) {
        self.draining.retain(|(svc, dest), _| !desired(svc, dest));
    }

    fn done(&self, since: Instant, conns: Connections, now: Instant) -> bool {
        conns.active + conns.inactive == 0
            || self
                .max_drain
                .is_some_and(|max| now.saturating_duration_since(since) >= max)
    }

    /// Rewrites a sync's IPVS operations (the diff of desired vs `observed`): deletions of
    /// TCP real servers with connections become weight-0 updates (or nothing, when already
    /// draining at weight 0), and real servers desired again leave the list.
    ///
    /// In place: a cold sync decides >100,000 operations, and a second buffer of them would
    /// be the sync's memory peak.
    pub fn filter(
        &mut self,
        mut ops: Vec<Operation>,
        observed: &Table,
        connections: &BTreeMap<RealServerKey, Connections>,
        now: Instant,
    ) -> Vec<Operation> {
        ops.retain_mut(|op| self.rewrite(op, observed, connections, now));
        ops
    }

    /// One operation of [`Self::filter`]: rewritten in place; `false` drops it.
    fn rewrite(
        &mut self,
        op: &mut Operation,
        observed: &Table,
        connections: &BTreeMap<RealServerKey, Connections>,
        now: Instant,
    ) -> bool {
        match op {
            Operation::DeleteDestination(svc, dest) if drains_gracefully(svc) => {
                let key = (*svc, *dest);
                let conns = connections.get(&key).copied().unwrap_or_default();
                let since = *self.draining.entry(key).or_insert(now);
                if self.done(since, conns, now) {
                    self.draining.remove(&key);
                    tracing::info!(virtual_server = %key.0, real_server = %key.1, "drained: deleting real server");
                    return true;
                }
                let current = observed
                    .services
                    .get(&key.0)
                    .and_then(|vs| vs.destinations.get(&key.1));
                let Some(d) = current.filter(|d| d.weight != 0) else {
                    return false;
                };
                tracing::info!(
                    virtual_server = %key.0,
                    real_server = %key.1,
                    active = conns.active,
                    inactive = conns.inactive,
                    "draining real server (weight 0)"
                );
                let mut zero = d.clone();
                zero.weight = 0;
                *op = Operation::UpdateDestination(key.0, zero);
                true
            }
            Operation::AddDestination(svc, d) | Operation::UpdateDestination(svc, d)
                if self.draining.remove(&(*svc, d.key())).is_some() =>
            {
                tracing::info!(virtual_server = %svc, real_server = %d.key(), "real server is back: no longer draining");
                *op = Operation::UpdateDestination(*svc, d.clone());
                true
            }
            Operation::DeleteService(svc) => {
                let svc = *svc;
                self.draining.retain(|(s, _), _| *s != svc);
                true
            }
            _ => true,
        }
    }

    /// The periodic check between syncs: deletes for draining real servers whose
    /// connections reached 0 or whose maximum drain time passed; real servers that are gone
    /// (`connections` has no entry) are forgotten. `connections` must cover every service of
    /// [`Drains::services`].
    pub fn check(
        &mut self,
        connections: &BTreeMap<RealServerKey, Connections>,
        now: Instant,
    ) -> Vec<Operation> {
        let mut ops = Vec::new();
        let mut keep = BTreeMap::new();
        for (key, since) in std::mem::take(&mut self.draining) {
            let Some(conns) = connections.get(&key) else {
                continue;
            };
            if self.done(since, *conns, now) {
                tracing::info!(virtual_server = %key.0, real_server = %key.1, "drained: deleting real server");
                ops.push(Operation::DeleteDestination(key.0, key.1));
            } else {
                keep.insert(key, since);
            }
        }
        self.draining = keep;
        ops
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use netlink::ipvs::{Destination, Scheduler, Service};
    use pretty_assertions::assert_eq;

    use super::*;

    fn svc(protocol: Protocol) -> ServiceKey {
        ServiceKey::Inet {
            protocol,
            addr: "10.96.0.1".parse::<IpAddr>().unwrap(),
            port: 80,
        }
    }

    fn dest(weight: u32) -> Destination {
        let mut d = Destination::masq("10.244.0.5".parse().unwrap(), 8080);
        d.weight = weight;
        d
    }

    fn table(key: ServiceKey, weight: u32) -> Table {
        let mut t = Table::default();
        let d = dest(weight);
        t.upsert_service(Service::new(key, Scheduler::rr()))
            .destinations_mut()
            .insert(d.key(), d);
        t
    }

    fn conns(key: ServiceKey, active: u32, inactive: u32) -> BTreeMap<RealServerKey, Connections> {
        [((key, dest(1).key()), Connections { active, inactive })].into()
    }

    fn delete(key: ServiceKey) -> Vec<Operation> {
        vec![Operation::DeleteDestination(key, dest(1).key())]
    }

    #[test]
    fn tcp_with_connections_drains_at_weight_zero_until_they_end() {
        let k = svc(Protocol::Tcp);
        let t0 = Instant::now();
        let mut drains = Drains::new(None);
        // The diff wants it gone; it has a connection: weight 0, listed.
        let ops = drains.filter(delete(k), &table(k, 1), &conns(k, 1, 0), t0);
        assert_eq!(ops, vec![Operation::UpdateDestination(k, dest(0))]);
        assert_eq!(drains.services(), vec![k]);
        // Next sync: already at weight 0 and still busy: no write at all.
        let later = t0 + Duration::from_secs(30);
        let ops = drains.filter(delete(k), &table(k, 0), &conns(k, 0, 2), later);
        assert_eq!(ops, vec![]);
        // The periodic check waits while connections remain, then deletes.
        assert_eq!(drains.check(&conns(k, 0, 1), later), vec![]);
        assert_eq!(drains.check(&conns(k, 0, 0), later), delete(k));
        assert!(drains.draining().is_empty());
    }

    #[test]
    fn idle_tcp_and_any_udp_or_sctp_are_deleted_at_once() {
        let t0 = Instant::now();
        let mut drains = Drains::new(None);
        let tcp = svc(Protocol::Tcp);
        assert_eq!(
            drains.filter(delete(tcp), &table(tcp, 1), &conns(tcp, 0, 0), t0),
            delete(tcp)
        );
        for p in [Protocol::Udp, Protocol::Sctp] {
            let k = svc(p);
            assert_eq!(
                drains.filter(delete(k), &table(k, 1), &conns(k, 5, 5), t0),
                delete(k)
            );
        }
        assert!(drains.draining().is_empty());
    }

    #[test]
    fn maximum_drain_time_bounds_the_wait() {
        let k = svc(Protocol::Tcp);
        let t0 = Instant::now();
        let mut drains = Drains::new(Some(Duration::from_secs(60)));
        drains.filter(delete(k), &table(k, 1), &conns(k, 3, 0), t0);
        let busy = conns(k, 3, 0);
        assert_eq!(drains.check(&busy, t0 + Duration::from_secs(59)), vec![]);
        assert_eq!(drains.check(&busy, t0 + Duration::from_secs(60)), delete(k));
    }

    #[test]
    fn a_real_server_that_comes_back_gets_its_weight_back() {
        let k = svc(Protocol::Tcp);
        let t0 = Instant::now();
        let mut drains = Drains::new(None);
        drains.filter(delete(k), &table(k, 1), &conns(k, 1, 0), t0);
        // Desired again: the diff sees weight 0 vs 1 and updates; the list forgets it.
        let back = vec![Operation::UpdateDestination(k, dest(1))];
        assert_eq!(
            drains.filter(back.clone(), &table(k, 0), &conns(k, 1, 0), t0),
            back
        );
        assert!(drains.draining().is_empty());

        // Desired again with the weight already right (no diff operation): forgotten too.
        drains.filter(delete(k), &table(k, 1), &conns(k, 1, 0), t0);
        drains.retain_undesired(&table(k, 1));
        assert!(drains.draining().is_empty());
    }

    #[test]
    fn gone_real_servers_and_deleted_services_are_forgotten() {
        let k = svc(Protocol::Tcp);
        let t0 = Instant::now();
        let mut drains = Drains::new(None);
        drains.filter(delete(k), &table(k, 1), &conns(k, 1, 0), t0);
        assert_eq!(drains.check(&BTreeMap::new(), t0), vec![]);
        assert!(drains.draining().is_empty());

        drains.filter(delete(k), &table(k, 1), &conns(k, 1, 0), t0);
        let ops = drains.filter(
            vec![Operation::DeleteService(k)],
            &table(k, 0),
            &conns(k, 1, 0),
            t0,
        );
        assert_eq!(ops, vec![Operation::DeleteService(k)]);
        assert!(drains.draining().is_empty());
    }
}
