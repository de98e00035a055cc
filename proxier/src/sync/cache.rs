//! The cached kernel view of the incremental sync (pure).
//!
//! After a sync in which every write succeeded, the kernel holds what that sync observed with
//! every operation it decided applied on top. [`KernelCache`] keeps exactly that: the
//! [`Observed`] of the last full sync, rolled forward with [`KernelCache::applied`] after
//! every successful sync (full or incremental) and drain check. A sync with any failure drops
//! the cache; the next sync is then full.
//!
//! An incremental sync re-reads from the kernel only the virtual servers whose desired state
//! changed between the cached plan and the new one ([`touched`]), plus those with draining
//! real servers, and replaces them in the view ([`KernelCache::refresh`]); everything else
//! (the other virtual servers, VIPs, set members, the dummy link, node addresses) is taken
//! from the cache. Drift behind our back is repaired by the periodic full resync.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netlink::AddressFamily;
use netlink::ipvs::{DestinationKey, Operation, ServiceKey, Table, VirtualServer};

use super::Changes;
use crate::dataplane::kernel::{Connections, Observed};
use crate::diff::{self, Ownership, SetChange, VipChanges};
use crate::plan::incremental::PlanDelta;
use crate::plan::{Plan, SetName};

/// The kernel as the last successful sync left it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCache {
    pub observed: Observed,
    /// Per family, the `iptables-restore` input that is in place.
    pub rules: Vec<(AddressFamily, String)>,
}

/// One virtual server as read back from the kernel: `None` when it does not exist.
pub type FreshService = Option<(VirtualServer, BTreeMap<DestinationKey, Connections>)>;

impl KernelCache {
    /// Rolls the view forward with everything `changes` did (call only when every write
    /// succeeded). `dummy_index` is the dummy link's index after the sync; `rules` the
    /// restore input of every family now in place. Consumes `changes`, releasing its IPVS
    /// operations as the view takes them in, and makes each virtual server it writes share
    /// `plan`'s real-server map when equal ([`Self::share_with`]): after a cold sync the
    /// operations, the view and the plan would otherwise each hold every real server at
    /// once, the sync's memory peak.
    pub fn applied(
        &mut self,
        changes: Changes,
        dummy_index: Option<u32>,
        rules: Vec<(AddressFamily, String)>,
        plan: &Plan,
    ) {
        let Changes {
            vips,
            ipsets,
            created,
            ipvs,
            stale_services,
            ..
        } = changes;
        // Created whole from the plan: their real-server maps are the plan's already.
        for vs in created {
            self.observed.ipvs.services.insert(vs.service.key, vs);
        }
        // The IPVS operations first: the set members below then reuse their memory.
        self.take_ipvs(ipvs, plan);
        self.take_ipvs(stale_services, plan);
        let o = &mut self.observed;
        o.dummy_index = dummy_index;
        o.bound.extend(vips.bind.iter().copied());
        for addr in &vips.unbind {
            o.bound.remove(addr);
        }
        for (_, sets) in ipsets {
            for c in sets {
                let members = o.ipsets.entry(c.spec.name).or_default();
                for m in &c.del {
                    members.remove(m);
                }
                // Moved, not copied: a cold sync adds ~40,000 members at 10,000 Services.
                members.extend(c.add);
            }
        }
        self.rules = rules;
    }

    /// Makes the view share the real-server maps of the plan's virtual servers it equals
    /// (after a clean sync: all it owns but those draining), so each is held once. `keys`
    /// limits the pass to those virtual servers (`None`: all of the plan's).
    pub fn share_with(&mut self, plan: &Plan, keys: Option<&BTreeSet<ServiceKey>>) {
        match keys {
            None => {
                for family in &plan.families {
                    for (key, want) in &family.ipvs.services {
                        self.share(key, want);
                    }
                }
            }
            Some(keys) => {
                for key in keys {
                    self.share_key(key, plan);
                }
            }
        }
    }

    fn share_key(&mut self, key: &ServiceKey, plan: &Plan) {
        if let Some(want) = plan.families.iter().find_map(|f| f.ipvs.services.get(key)) {
            self.share(key, want);
        }
    }

    fn share(&mut self, key: &ServiceKey, want: &VirtualServer) {
        if let Some(have) = self.observed.ipvs.services.get_mut(key)
            && have.destinations == want.destinations
        {
            have.destinations = Arc::clone(&want.destinations);
        }
    }

    /// Rolls the IPVS view forward with `ops`, all of which succeeded.
    pub fn apply_ipvs(&mut self, ops: &[Operation]) {
        for op in ops {
            self.apply_one(op.clone());
        }
    }

    /// [`Self::apply_ipvs`] over owned operations, in order, shrinking their buffer as it
    /// goes so it is freed while the view grows; each virtual server, once its operations
    /// (consecutive, as the diff emits them) are in, shares `plan`'s map if equal.
    fn take_ipvs(&mut self, mut ops: Vec<Operation>, plan: &Plan) {
        const SHRINK_ABOVE: usize = 4096;
        ops.reverse();
        let mut current: Option<ServiceKey> = None;
        while let Some(op) = ops.pop() {
            let key = operation_service(&op);
            if let Some(done) = current.filter(|c| *c != key) {
                self.share_key(&done, plan);
            }
            current = Some(key);
            self.apply_one(op);
            if ops.capacity() > SHRINK_ABOVE && ops.len() < ops.capacity() / 2 {
                ops.shrink_to_fit();
            }
        }
        if let Some(done) = current {
            self.share_key(&done, plan);
        }
    }

    fn apply_one(&mut self, op: Operation) {
        let Observed {
            ipvs, connections, ..
        } = &mut self.observed;
        match op {
            Operation::AddService(s) => {
                ipvs.services.insert(s.key, VirtualServer::new(*s));
            }
            Operation::UpdateService(s) => match ipvs.services.get_mut(&s.key) {
                Some(vs) => vs.service = *s,
                None => {
                    ipvs.services.insert(s.key, VirtualServer::new(*s));
                }
            },
            Operation::DeleteService(k) => {
                ipvs.services.remove(&k);
                forget_connections(connections, &k);
            }
            Operation::AddDestination(k, d) | Operation::UpdateDestination(k, d) => {
                if let Some(vs) = ipvs.services.get_mut(&k) {
                    vs.destinations_mut().insert(d.key(), d);
                }
            }
            Operation::DeleteDestination(k, d) => {
                if let Some(vs) = ipvs.services.get_mut(&k) {
                    vs.destinations_mut().remove(&d);
                }
                connections.remove(&(k, d));
            }
        }
    }

    /// Replaces one virtual server of the view with what the kernel holds now.
    pub fn refresh(&mut self, key: ServiceKey, fresh: FreshService) {
        let Observed {
            ipvs, connections, ..
        } = &mut self.observed;
        forget_connections(connections, &key);
        match fresh {
            Some((vs, conns)) => {
                connections.extend(conns.into_iter().map(|(d, c)| ((key, d), c)));
                ipvs.services.insert(key, vs);
            }
            None => {
                ipvs.services.remove(&key);
            }
        }
    }

    /// The families whose rules `rules` are already in place.
    pub fn rules_in_place(&self, rules: &[(AddressFamily, String)]) -> Vec<AddressFamily> {
        rules
            .iter()
            .filter(|r| self.rules.contains(r))
            .map(|(f, _)| *f)
            .collect()
    }
}

/// Drops the counters of one virtual server's real servers: a range of the map, not a walk
/// over the counters of every virtual server (111,000 at 10,000 Services).
fn forget_connections(
    connections: &mut BTreeMap<(ServiceKey, DestinationKey), Connections>,
    key: &ServiceKey,
) {
    let first = DestinationKey {
        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        port: 0,
    };
    let gone: Vec<(ServiceKey, DestinationKey)> = connections
        .range((*key, first)..)
        .map(|(k, _)| *k)
        .take_while(|(s, _)| s == key)
        .collect();
    for k in gone {
        connections.remove(&k);
    }
}

/// Pure: the changes that turn `observed` into `plan` when only what `delta` names (and the
/// virtual servers `also`, e.g. those draining) can differ: [`super::decide`] restricted to
/// those, equal to it under that condition. `None` when a set of the plan is missing from
/// the view (the full decision creates it).
pub fn decide_delta(
    plan: &Plan,
    observed: &Observed,
    ownership: &Ownership,
    delta: &PlanDelta,
    also: &[ServiceKey],
) -> Option<Changes> {
    let mut keys: BTreeSet<ServiceKey> = also.iter().copied().collect();
    let mut addresses = BTreeSet::new();
    for d in &delta.families {
        keys.extend(d.virtual_servers.iter().copied());
        addresses.extend(d.addresses.iter().copied());
    }
    let find = |key: &ServiceKey| plan.families.iter().find_map(|f| f.ipvs.services.get(key));
    let pick = |lookup: &dyn Fn(&ServiceKey) -> Option<VirtualServer>| Table {
        services: keys.iter().filter_map(|k| Some((*k, lookup(k)?))).collect(),
    };
    let desired = pick(&|k| find(k).cloned());
    let have = pick(&|k| observed.ipvs.services.get(k).cloned());
    let (stale_services, ipvs): (Vec<Operation>, Vec<Operation>) =
        diff::ipvs_operations(&desired, &have, ownership)
            .into_iter()
            .partition(|op| matches!(op, Operation::DeleteService(_)));

    let wanted = |a: &IpAddr| plan.families.iter().any(|f| f.bind_addresses.contains(a));
    let link_local = |ip: &IpAddr| match ip {
        IpAddr::V4(_) => false,
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    };
    let mut vips = VipChanges::default();
    for a in &addresses {
        let bound = observed.bound.contains(a);
        if wanted(a) && !bound {
            vips.bind.push(*a);
        } else if !wanted(a) && bound && ownership.owns_address(a) && !link_local(a) {
            vips.unbind.push(*a);
        }
    }

    let mut ipsets = Vec::with_capacity(plan.families.len());
    for (f, d) in plan.families.iter().zip(&delta.families) {
        let mut changes: Vec<SetChange> = Vec::new();
        for set in SetName::ALL {
            let spec = set.spec(f.family);
            let have = observed.ipsets.get(&spec.name)?;
            let (mut del, mut add) = (Vec::new(), Vec::new());
            for (_, m) in d.members.iter().filter(|(s, _)| *s == set) {
                match (f.ipsets.contains(set, m), have.contains(m)) {
                    (true, false) => add.push(*m),
                    (false, true) => del.push(*m),
                    _ => {}
                }
            }
            if !del.is_empty() || !add.is_empty() {
                changes.push(SetChange {
                    spec,
                    create: false,
                    del,
                    add,
                });
            }
        }
        ipsets.push((f.family, changes));
    }
    Some(Changes {
        // The delta's operations are few: none is left to the apply to build.
        created: Vec::new(),
        create_dummy: observed.dummy_index.is_none(),
        vips,
        ipsets,
        iptables: plan
            .families
            .iter()
            .map(|f| (f.family, f.rules.to_restore_input()))
            .collect(),
        ipvs,
        stale_services,
    })
}

/// The virtual server an operation writes.
pub fn operation_service(op: &Operation) -> ServiceKey {
    match op {
        Operation::AddService(s) | Operation::UpdateService(s) => s.key,
        Operation::DeleteService(k)
        | Operation::AddDestination(k, _)
        | Operation::UpdateDestination(k, _)
        | Operation::DeleteDestination(k, _) => *k,
    }
}

/// Whether a full sync is due: none ran yet, or the last one started `every` ago or longer.
pub fn full_due(last_full: Option<Instant>, every: Option<Duration>, now: Instant) -> bool {
    match (last_full, every) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(at), Some(every)) => now.saturating_duration_since(at) >= every,
    }
}

/// The virtual servers whose desired state differs between two plans: added, removed, or
/// with other attributes or real servers.
pub fn touched(old: &Plan, new: &Plan) -> BTreeSet<ServiceKey> {
    fn find<'a>(plan: &'a Plan, key: &ServiceKey) -> Option<&'a VirtualServer> {
        plan.families.iter().find_map(|f| f.ipvs.services.get(key))
    }
    let mut out = BTreeSet::new();
    for (a, b) in [(old, new), (new, old)] {
        for f in &a.families {
            for (k, vs) in &f.ipvs.services {
                if find(b, k) != Some(vs) {
                    out.insert(*k);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::net::IpAddr;
    use std::path::Path;

    use netlink::ipvs::{Destination, Scheduler, Service};

    use super::*;
    use crate::model::manifests::Manifests;
    use crate::model::objects::RawAddress;
    use crate::sync::cmd::{CommonArgs, sync_options};
    use crate::sync::{SyncOptions, decide, manifests};

    fn options() -> SyncOptions {
        let args = CommonArgs {
            manifests: "unused".into(),
            node_name: Some("node-1".into()),
            node_ips: vec!["10.255.0.1".parse().unwrap()],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            scheduler: Scheduler::rr(),
            masquerade_all: false,
            exclude_cidrs: vec!["10.97.0.0/16".parse().unwrap()],
            strict_arp: false,
        };
        sync_options(&args, "node-1".into())
    }

    fn objects() -> Manifests {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seeds.yaml");
        manifests::load(&path).unwrap()
    }

    fn plan_of(objects: &Manifests, options: &SyncOptions) -> Plan {
        let ips = options.node_ips.clone().unwrap();
        let facts = crate::plan::NodeFacts {
            addresses: ips.clone(),
            primary_ips: ips,
        };
        crate::plan::plan_objects(
            &objects.services,
            &objects.endpoint_slices,
            &objects.nodes,
            &options.plan,
            &facts,
        )
    }

    fn rules(plan: &Plan) -> Vec<(AddressFamily, String)> {
        plan.families
            .iter()
            .map(|f| (f.family, f.rules.to_restore_input()))
            .collect()
    }

    /// Nothing left to do: what an equivalent full sync would decide against this view.
    fn assert_converged(plan: &Plan, cache: &KernelCache, options: &SyncOptions) {
        let c = decide(plan, &cache.observed, &options.ownership());
        assert!(!c.create_dummy);
        assert_eq!(c.vips, Default::default());
        assert!(c.ipsets.iter().all(|(_, s)| s.is_empty()), "{:?}", c.ipsets);
        assert_eq!(c.ipvs, vec![]);
        assert_eq!(c.stale_services, vec![]);
        assert_eq!(
            cache.rules_in_place(&rules(plan)).len(),
            plan.families.len()
        );
    }

    fn foreign() -> Service {
        let key = ServiceKey::Inet {
            protocol: netlink::Protocol::Tcp,
            addr: "10.97.0.1".parse().unwrap(),
            port: 80,
        };
        Service::new(key, Scheduler::rr())
    }

    #[test]
    fn rolling_forward_the_decided_changes_converges() {
        let options = options();
        let mut objects = objects();
        let plan = plan_of(&objects, &options);
        // An empty node but for a foreign virtual server inside the excluded CIDR.
        let mut cache = KernelCache::default();
        cache.apply_ipvs(&[Operation::AddService(Box::new(foreign()))]);
        let changes = decide(&plan, &cache.observed, &options.ownership());
        assert!(changes.create_dummy);
        // An empty kernel: every virtual server is created whole.
        assert_eq!(changes.created.len(), plan.families[0].ipvs.services.len());
        assert!(changes.ipvs.is_empty());
        cache.applied(changes.clone(), Some(7), rules(&plan), &plan);
        assert_eq!(cache.observed.dummy_index, Some(7));
        assert_converged(&plan, &cache, &options);
        assert!(
            cache.observed.ipvs.services.contains_key(&foreign().key),
            "foreign virtual server kept"
        );

        // One endpoint less: exactly its virtual server is touched; one delete converges.
        let i = objects
            .endpoint_slices
            .iter()
            .position(|e| e.metadata.name.as_deref() == Some("myweb-svc-7x2lq"))
            .unwrap();
        objects.endpoint_slices[i]
            .endpoints
            .retain(|e| e.address != Some(RawAddress::parse("10.244.0.12")));
        let next = plan_of(&objects, &options);
        let keys = touched(&plan, &next);
        assert_eq!(keys.len(), 1, "{keys:?}");
        let changes = decide(&next, &cache.observed, &options.ownership());
        assert_eq!(changes.ipvs.len(), 1, "{:?}", changes.ipvs);
        assert!(matches!(changes.ipvs[0], Operation::DeleteDestination(..)));
        cache.applied(changes.clone(), Some(7), rules(&next), &next);
        assert_converged(&next, &cache, &options);

        // A service removed: its virtual server, VIP and set members go; converges again.
        objects
            .services
            .retain(|s| s.metadata.name.as_deref() != Some("sticky-svc"));
        let last = plan_of(&objects, &options);
        assert!(!touched_is_empty(&next, &last));
        let changes = decide(&last, &cache.observed, &options.ownership());
        assert_eq!(changes.stale_services.len(), 1);
        assert_eq!(changes.vips.unbind.len(), 1);
        cache.applied(changes.clone(), Some(7), rules(&last), &last);
        assert_converged(&last, &cache, &options);
        assert_eq!(touched(&last, &last), BTreeSet::new());
    }

    fn touched_is_empty(a: &Plan, b: &Plan) -> bool {
        touched(a, b).is_empty()
    }

    #[test]
    fn a_full_sync_is_due_first_and_then_every_period() {
        let t0 = Instant::now();
        let period = Duration::from_secs(30);
        assert!(full_due(None, Some(period), t0));
        assert!(full_due(None, None, t0));
        assert!(!full_due(Some(t0), None, t0 + period * 10));
        assert!(!full_due(Some(t0), Some(period), t0 + period / 2));
        assert!(full_due(Some(t0), Some(period), t0 + period));
    }

    #[test]
    fn ipvs_operations_roll_the_view_forward() {
        let mut cache = KernelCache::default();
        let svc = foreign();
        let key = svc.key;
        let d = Destination::masq("10.244.0.1".parse::<IpAddr>().unwrap(), 80);
        cache.apply_ipvs(&[
            Operation::AddService(Box::new(svc.clone())),
            Operation::AddDestination(key, d.clone()),
        ]);
        assert_eq!(cache.observed.ipvs.services[&key].destinations.len(), 1);
        // A new real server has no connections: nothing to count.
        assert!(cache.observed.connections.is_empty());
        let mut zero = d.clone();
        zero.weight = 0;
        let mut updated = svc.clone();
        updated.timeout = 10;
        cache.apply_ipvs(&[
            Operation::UpdateDestination(key, zero.clone()),
            Operation::UpdateService(Box::new(updated.clone())),
        ]);
        let vs = &cache.observed.ipvs.services[&key];
        assert_eq!(vs.service, updated);
        assert_eq!(vs.destinations[&d.key()], zero, "update keeps real servers");
        cache.apply_ipvs(&[Operation::DeleteDestination(key, d.key())]);
        assert!(cache.observed.ipvs.services[&key].destinations.is_empty());
        assert!(cache.observed.connections.is_empty());
        cache.apply_ipvs(&[
            Operation::AddDestination(key, d.clone()),
            Operation::DeleteService(key),
        ]);
        assert!(cache.observed.ipvs.services.is_empty());
        assert!(cache.observed.connections.is_empty());
    }

    #[test]
    fn refresh_replaces_or_removes_one_virtual_server() {
        let mut cache = KernelCache::default();
        let svc = foreign();
        let key = svc.key;
        let d = Destination::masq("10.244.0.1".parse::<IpAddr>().unwrap(), 80);
        cache.apply_ipvs(&[
            Operation::AddService(Box::new(svc.clone())),
            Operation::AddDestination(key, d.clone()),
        ]);
        // The kernel lost the real server and has other counters: the view follows it.
        let mut vs = VirtualServer::new(svc.clone());
        let other = Destination::masq("10.244.0.2".parse::<IpAddr>().unwrap(), 80);
        vs.destinations_mut().insert(other.key(), other.clone());
        let conns = BTreeMap::from([(
            other.key(),
            Connections {
                active: 3,
                inactive: 1,
            },
        )]);
        cache.refresh(key, Some((vs.clone(), conns)));
        assert_eq!(cache.observed.ipvs.services[&key], vs);
        assert_eq!(
            cache.observed.connections.keys().collect::<Vec<_>>(),
            vec![&(key, other.key())]
        );
        cache.refresh(key, None);
        assert!(cache.observed.ipvs.services.is_empty());
        assert!(cache.observed.connections.is_empty());
    }
}
