//! The plan kept between syncs and replanned one Service at a time (pure).
//!
//! A *unit* is one Service name (namespace/name) with every object that can change its part
//! of the plan: the Service object(s) of that name and the EndpointSlices labelled with it
//! (slices without a service label form the unit of the empty name in their namespace: they
//! only yield diagnostics). Planning the units one by one and taking the union of their parts
//! gives exactly the plan of all objects ([`super::plan_objects`]) as long as no two units
//! claim the same virtual server, node port or slice name: those clashes are resolved by name
//! order *across* Services, so a clash anywhere makes [`PlanState`] hold the whole-objects
//! plan and refuse updates (the caller replans everything, as before).
//!
//! [`PlanState`] keeps, per unit, what it contributed (virtual server keys, bound addresses,
//! set members, out-filter entries, health check, counters, diagnostics) and the assembled
//! [`Plan`]. [`PlanState::update`] replans only the named units, removes their old parts and
//! adds the new ones, counting what several units share (an external IP bound for two
//! Services, a hairpin member), re-derives the iptables rules from the sets, and returns the
//! [`PlanDelta`]: the only virtual servers, addresses and set members that may differ from the
//! previous plan. The result equals [`super::plan_objects`] over all objects; the property
//! test below checks it over random object sets and random change sequences.

use std::borrow::Borrow;
use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, btree_map};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use netlink::Protocol;
use netlink::ipset::Member;
use netlink::ipvs::ServiceKey;

use super::{
    FamilyParts, HealthCheck, NodeFacts, Plan, PlanConfig, SetName, iptables, plan_objects_refs,
    plan_parts, rule_inputs,
};
use crate::model::{
    Diagnostic, Model, NodeInfo, ServiceName, ServiceObject, ServicePortName, SliceObject,
};

/// The objects of one unit, borrowed from the caller's collection.
#[derive(Debug, Default)]
pub struct UnitObjects<'a> {
    pub services: Vec<&'a ServiceObject>,
    pub slices: Vec<&'a SliceObject>,
}

/// The unit of a Service: its namespace and name.
pub fn service_unit(svc: &ServiceObject) -> (&str, &str) {
    (
        svc.metadata.namespace_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// The unit of an EndpointSlice: its namespace and the Service its label names ("" if none).
pub fn slice_unit(slice: &SliceObject) -> (&str, &str) {
    let name = slice.metadata.labels.service_name.as_deref().unwrap_or("");
    (slice.metadata.namespace_or_default(), name)
}

/// Groups `services` and `slices` by unit, keeping only the units `wanted` accepts.
pub fn group<'a, S: Borrow<ServiceObject>, E: Borrow<SliceObject>>(
    services: &'a [S],
    slices: &'a [E],
    mut wanted: impl FnMut((&str, &str)) -> bool,
) -> BTreeMap<(&'a str, &'a str), UnitObjects<'a>> {
    let mut units: BTreeMap<(&str, &str), UnitObjects<'a>> = BTreeMap::new();
    for s in services {
        let s: &'a ServiceObject = s.borrow();
        let key = service_unit(s);
        if wanted(key) {
            units.entry(key).or_default().services.push(s);
        }
    }
    for s in slices {
        let s: &'a SliceObject = s.borrow();
        let key = slice_unit(s);
        if wanted(key) {
            units.entry(key).or_default().slices.push(s);
        }
    }
    units
}

/// What may differ from the previous plan after an update, per family (in the plan's family
/// order). Everything else is unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanDelta {
    pub families: Vec<FamilyDelta>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyDelta {
    pub virtual_servers: BTreeSet<ServiceKey>,
    pub addresses: BTreeSet<IpAddr>,
    pub members: BTreeSet<(SetName, Member)>,
}

/// Why an update cannot be done unit by unit: the caller must rebuild the state from all
/// objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NeedFull {
    #[error("two Services clash (virtual server, node port or slice name)")]
    Clash,
    #[error("the node facts changed")]
    NodeFacts,
    #[error("our Node changed")]
    Node,
}

/// One unit's part of one family.
#[derive(Debug, Clone, Default)]
struct UnitFamily {
    /// With the name of the unit's port behind each (empty for an unnamed port).
    virtual_servers: Vec<(ServiceKey, String)>,
    /// Set members; the bound addresses are the `KUBE-IPVS-IPS` ones (the planner fills
    /// that set from exactly the bind set).
    members: Vec<(SetName, Member)>,
    lb_no_node_access: Vec<(IpAddr, Protocol, u16)>,
    health_checks: Vec<(ServiceName, HealthCheck)>,
    no_local_internal: usize,
    no_local_external: usize,
}

/// What one unit contributed, to take it out again.
#[derive(Debug, Clone, Default)]
struct Unit {
    families: Vec<UnitFamily>,
    diagnostics: Vec<Diagnostic>,
    node_ports: Vec<(Protocol, u16)>,
    /// Hashes of the slices' namespace/name (a collision only costs a full replan).
    slices: Vec<u64>,
}

/// Reference counts beyond the first, for what several units share.
#[derive(Debug, Clone, Default)]
struct Shared {
    members: HashMap<(SetName, Member), u32>,
    bind: HashMap<IpAddr, u32>,
    /// Every out-filter entry with its count (the rules need the sorted list).
    lb_no_node_access: BTreeMap<(IpAddr, Protocol, u16), u32>,
}

/// The plan of all objects, kept per unit (see the module docs).
#[derive(Debug, Clone)]
pub struct PlanState {
    config: PlanConfig,
    options: crate::model::ModelOptions,
    facts: NodeFacts,
    node: Option<NodeInfo>,
    node_diagnostics: Vec<Diagnostic>,
    units: HashMap<ServiceName, Unit>,
    shared: Vec<Shared>,
    diagnostics: BTreeMap<Diagnostic, u32>,
    node_ports: HashSet<(Protocol, u16)>,
    slices: HashSet<u64>,
    /// Two units clash: `plan` is the whole-objects plan and updates are refused.
    clashed: bool,
    /// Real servers of the plan, counted as they come and go (reports need the total).
    real_servers: usize,
    /// Names the owners ([`PlanState::owners`]) as they are: a fresh value whenever they may
    /// have changed, unique across states of the process.
    owners_generation: u64,
    plan: Plan,
}

/// Source of [`PlanState::owners_generation`] values.
static OWNERS_GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn next_owners_generation() -> u64 {
    OWNERS_GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn slice_hash(slice: &SliceObject) -> u64 {
    let mut h = DefaultHasher::new();
    slice.metadata.namespace_or_default().hash(&mut h);
    slice
        .metadata
        .name
        .as_deref()
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

fn unit_name((namespace, name): (&str, &str)) -> ServiceName {
    ServiceName {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

impl PlanState {
    /// Plans every object, unit by unit (or as a whole when two units clash). Takes owned
    /// or borrowed objects.
    pub fn build<S: Borrow<ServiceObject>, E: Borrow<SliceObject>>(
        services: &[S],
        slices: &[E],
        nodes: &[core::Node],
        config: &PlanConfig,
        facts: &NodeFacts,
    ) -> PlanState {
        let (node, node_diagnostics) = our_node(nodes, config);
        let (base, _) = plan_parts(&Model::default(), node.as_ref(), config, facts);
        let mut state = PlanState {
            config: config.clone(),
            options: config.model_options(),
            facts: facts.clone(),
            node,
            node_diagnostics,
            units: HashMap::new(),
            shared: base.iter().map(|_| Shared::default()).collect(),
            diagnostics: BTreeMap::new(),
            node_ports: HashSet::new(),
            slices: HashSet::new(),
            clashed: false,
            real_servers: 0,
            owners_generation: next_owners_generation(),
            plan: Plan {
                families: base
                    .into_iter()
                    .map(|p| {
                        let rules = iptables::RuleSet {
                            family: p.family,
                            nat: Vec::new(),
                            filter: Vec::new(),
                        };
                        p.into_family_plan(rules)
                    })
                    .collect(),
                diagnostics: Vec::new(),
            },
        };
        for d in state.node_diagnostics.clone() {
            *state.diagnostics.entry(d).or_default() += 1;
        }
        let mut scratch = PlanDelta::default();
        for (key, objects) in group(services, slices, |_| true) {
            if state
                .add(unit_name(key), &objects, &mut scratch, false)
                .is_err()
            {
                state.clashed = true;
                break;
            }
        }
        if state.clashed {
            state.units.clear();
            let services: Vec<&ServiceObject> = services.iter().map(Borrow::borrow).collect();
            let slices: Vec<&SliceObject> = slices.iter().map(Borrow::borrow).collect();
            state.plan = plan_objects_refs(&services, &slices, nodes, config, facts);
            state.real_servers = state
                .plan
                .families
                .iter()
                .map(|f| f.ipvs.destination_count())
                .sum();
        } else {
            state.finish();
        }
        state
    }

    /// The plan of all objects.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Virtual servers of the plan, all families.
    pub fn virtual_servers(&self) -> usize {
        self.plan
            .families
            .iter()
            .map(|f| f.ipvs.services.len())
            .sum()
    }

    /// Real servers of the plan, all families (without walking the table).
    pub fn real_servers(&self) -> usize {
        self.real_servers
    }

    /// The Service port (`namespace/name` or `namespace/name:port`, as kube-proxy names it)
    /// behind each virtual server of the plan, from what each unit keeps: no model is built
    /// and no Service searched. `None` when two units clash (the plan is then the
    /// whole-objects one and no unit is kept).
    pub fn owners(&self) -> Option<BTreeMap<ServiceKey, String>> {
        if self.clashed {
            return None;
        }
        let mut owners = BTreeMap::new();
        for (service, unit) in &self.units {
            for (key, port) in unit.families.iter().flat_map(|f| &f.virtual_servers) {
                let ServiceKey::Inet { protocol, .. } = *key else {
                    continue;
                };
                let owner = ServicePortName {
                    service: service.clone(),
                    port: port.clone(),
                    protocol,
                };
                owners.insert(*key, owner.to_string());
            }
        }
        Some(owners)
    }

    /// Whether updates are possible (no clash between units).
    pub fn updatable(&self) -> bool {
        !self.clashed
    }

    /// Replans the units of `changed` (each with ALL its current objects; a unit without
    /// objects is removed) and returns what may differ from the previous plan. On an error
    /// the state is unusable: rebuild it with [`PlanState::build`].
    pub fn update(
        &mut self,
        changed: &BTreeMap<ServiceName, UnitObjects<'_>>,
        nodes: &[core::Node],
        facts: &NodeFacts,
    ) -> Result<PlanDelta, NeedFull> {
        if self.clashed {
            return Err(NeedFull::Clash);
        }
        if *facts != self.facts {
            return Err(NeedFull::NodeFacts);
        }
        let (node, node_diagnostics) = our_node(nodes, &self.config);
        if node != self.node || node_diagnostics != self.node_diagnostics {
            return Err(NeedFull::Node);
        }
        let mut delta = PlanDelta {
            families: self.shared.iter().map(|_| FamilyDelta::default()).collect(),
        };
        let mut owners_changed = false;
        for (key, objects) in changed {
            let before = self.unit_owners(key);
            self.remove(key, &mut delta);
            if self.add(key.clone(), objects, &mut delta, true).is_err() {
                self.clashed = true;
                return Err(NeedFull::Clash);
            }
            owners_changed |= self.unit_owners(key) != before;
        }
        if owners_changed {
            self.owners_generation = next_owners_generation();
        }
        self.finish();
        Ok(delta)
    }

    /// The virtual servers of one unit with their port names.
    fn unit_owners(&self, key: &ServiceName) -> Vec<(ServiceKey, String)> {
        self.units
            .get(key)
            .into_iter()
            .flat_map(|u| {
                u.families
                    .iter()
                    .flat_map(|f| f.virtual_servers.iter().cloned())
            })
            .collect()
    }

    /// Equal values mean equal [`PlanState::owners`] (an endpoint change keeps it; a Service,
    /// port or address change makes a new one), so a caller can skip recomputing them.
    pub fn owners_generation(&self) -> u64 {
        self.owners_generation
    }

    /// Takes a unit's parts out of the plan.
    fn remove(&mut self, key: &ServiceName, delta: &mut PlanDelta) {
        let Some(unit) = self.units.remove(key) else {
            return;
        };
        for ((uf, fam), (shared, fd)) in unit
            .families
            .into_iter()
            .zip(self.plan.families.iter_mut())
            .zip(self.shared.iter_mut().zip(delta.families.iter_mut()))
        {
            for (k, _) in uf.virtual_servers {
                if let Some(vs) = fam.ipvs.services.remove(&k) {
                    self.real_servers -= vs.destinations.len();
                }
                fd.virtual_servers.insert(k);
            }
            for (set, m) in uf.members {
                if let (SetName::IpvsIps, Member::Ip(a)) = (set, m) {
                    if !release(&mut shared.bind, a) {
                        fam.bind_addresses.remove(&a);
                    }
                    fd.addresses.insert(a);
                }
                if !release(&mut shared.members, (set, m)) {
                    fam.ipsets.remove(set, &m);
                }
                fd.members.insert((set, m));
            }
            for e in uf.lb_no_node_access {
                if let btree_map::Entry::Occupied(mut o) = shared.lb_no_node_access.entry(e) {
                    *o.get_mut() -= 1;
                    if *o.get() == 0 {
                        o.remove();
                    }
                }
            }
            for (name, _) in uf.health_checks {
                fam.health_checks.remove(&name);
            }
            let n = &mut fam.no_local_endpoints;
            n.internal -= uf.no_local_internal;
            n.external -= uf.no_local_external;
        }
        for d in unit.diagnostics {
            if let btree_map::Entry::Occupied(mut o) = self.diagnostics.entry(d) {
                *o.get_mut() -= 1;
                if *o.get() == 0 {
                    o.remove();
                }
            }
        }
        for p in unit.node_ports {
            self.node_ports.remove(&p);
        }
        for s in unit.slices {
            self.slices.remove(&s);
        }
    }

    /// Plans one unit and adds its parts; `Err` on a clash with another unit (the state is
    /// then inconsistent). `track`: record the delta (not needed while building).
    fn add(
        &mut self,
        key: ServiceName,
        objects: &UnitObjects<'_>,
        delta: &mut PlanDelta,
        track: bool,
    ) -> Result<(), NeedFull> {
        if objects.services.is_empty() && objects.slices.is_empty() {
            return Ok(());
        }
        let (model, mut diagnostics) =
            Model::build_refs(&objects.services, &objects.slices, &[], &self.options);
        let (parts, mut plan_diagnostics) =
            plan_parts(&model, self.node.as_ref(), &self.config, &self.facts);
        diagnostics.append(&mut plan_diagnostics);
        diagnostics.sort();
        diagnostics.dedup();

        let mut node_ports: Vec<(Protocol, u16)> = model
            .services
            .values()
            .flat_map(|s| s.ports.iter())
            .filter_map(|p| p.node_port.map(|np| (p.name.protocol, np)))
            .collect();
        node_ports.sort();
        node_ports.dedup();
        let mut slices: Vec<u64> = objects.slices.iter().map(|s| slice_hash(s)).collect();
        slices.sort();
        slices.dedup();
        if node_ports.iter().any(|p| self.node_ports.contains(p))
            || slices.iter().any(|s| self.slices.contains(s))
        {
            return Err(NeedFull::Clash);
        }
        self.node_ports.extend(node_ports.iter().copied());
        self.slices.extend(slices.iter().copied());

        let mut unit = Unit {
            families: Vec::with_capacity(parts.len()),
            diagnostics,
            node_ports,
            slices,
        };
        for d in &unit.diagnostics {
            *self.diagnostics.entry(d.clone()).or_default() += 1;
        }
        let mut no_delta = FamilyDelta::default();
        for (i, (part, (fam, shared))) in parts
            .into_iter()
            .zip(self.plan.families.iter_mut().zip(self.shared.iter_mut()))
            .enumerate()
        {
            let fd = match delta.families.get_mut(i) {
                Some(fd) if track => fd,
                _ => &mut no_delta,
            };
            let FamilyParts {
                ipvs,
                bind_addresses,
                ipsets,
                lb_no_node_access,
                health_checks,
                no_local_internal,
                no_local_external,
                mut port_names,
                ..
            } = part;
            let mut uf = UnitFamily {
                no_local_internal,
                no_local_external,
                ..Default::default()
            };
            // Exact: a Vec grown by push starts at 4 entries (~1.4 MB of spare room at
            // 10,000 units of one virtual server each).
            uf.virtual_servers.reserve_exact(ipvs.services.len());
            for (k, vs) in ipvs.services {
                self.real_servers += vs.destinations.len();
                if fam.ipvs.services.insert(k, vs).is_some() {
                    return Err(NeedFull::Clash);
                }
                if track {
                    fd.virtual_servers.insert(k);
                }
                uf.virtual_servers
                    .push((k, port_names.remove(&k).unwrap_or_default()));
            }
            for a in bind_addresses {
                if !fam.bind_addresses.insert(a) {
                    *shared.bind.entry(a).or_default() += 1;
                }
                if track {
                    fd.addresses.insert(a);
                }
            }
            for (set, m) in ipsets.all_members() {
                if fam.ipsets.contains(set, m) {
                    *shared.members.entry((set, *m)).or_default() += 1;
                } else {
                    fam.ipsets.insert(set, *m);
                }
                if track {
                    fd.members.insert((set, *m));
                }
                uf.members.push((set, *m));
            }
            for e in lb_no_node_access {
                *shared.lb_no_node_access.entry(e).or_default() += 1;
                uf.lb_no_node_access.push(e);
            }
            for (name, hc) in health_checks {
                fam.health_checks.insert(name.clone(), hc.clone());
                uf.health_checks.push((name, hc));
            }
            let n = &mut fam.no_local_endpoints;
            n.internal += no_local_internal;
            n.external += no_local_external;
            uf.members.shrink_to_fit();
            unit.families.push(uf);
        }
        self.units.insert(key, unit);
        Ok(())
    }

    /// Re-derives what depends on the whole: the rules and the sorted diagnostics.
    fn finish(&mut self) {
        for (fam, shared) in self.plan.families.iter_mut().zip(&self.shared) {
            let inputs = rule_inputs(
                &self.config,
                self.node.as_ref(),
                fam.family,
                shared.lb_no_node_access.keys().copied().collect(),
            );
            fam.rules = iptables::rules(&fam.ipsets, &inputs);
        }
        self.plan.diagnostics = self.diagnostics.keys().cloned().collect();
    }
}

/// Drops one extra reference; `false` when there was none (the last holder is leaving).
fn release<K: Hash + Eq>(extra: &mut HashMap<K, u32>, key: K) -> bool {
    match extra.entry(key) {
        Entry::Occupied(mut o) => {
            *o.get_mut() -= 1;
            if *o.get() == 0 {
                o.remove();
            }
            true
        }
        Entry::Vacant(_) => false,
    }
}

/// Our Node's model and the diagnostics of converting every Node.
fn our_node(nodes: &[core::Node], config: &PlanConfig) -> (Option<NodeInfo>, Vec<Diagnostic>) {
    let (mut model, diagnostics) = Model::build_refs(&[], &[], nodes, &config.model_options());
    (model.nodes.remove(&config.node_name), diagnostics)
}

/// The units whose objects differ between two collections (added, removed or changed), for
/// callers that hold whole collections rather than a change feed (tests, benches).
pub fn changed_units<'a>(
    old: (&'a [ServiceObject], &'a [SliceObject]),
    new: (&'a [ServiceObject], &'a [SliceObject]),
) -> BTreeSet<ServiceName> {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum Object<'a> {
        Service(&'a ServiceObject),
        Slice(&'a SliceObject),
    }
    let objects = |(services, slices): (&'a [ServiceObject], &'a [SliceObject])| {
        let mut out: BTreeSet<(ServiceName, Object<'a>)> = BTreeSet::new();
        for s in services {
            out.insert((unit_name(service_unit(s)), Object::Service(s)));
        }
        for s in slices {
            out.insert((unit_name(slice_unit(s)), Object::Slice(s)));
        }
        out
    };
    let (a, b) = (objects(old), objects(new));
    a.symmetric_difference(&b).map(|(k, _)| k.clone()).collect()
}
