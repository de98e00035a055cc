//! Property: the incremental planner ([`PlanState`]) gives exactly the whole-objects plan
//! ([`plan_objects`]) after any sequence of changes, each replanning only the Services it
//! names; and its delta names every virtual server, address and set member that changed.
//! Inputs: each golden case's objects and config, changed at random with objects, names and
//! values drawn from all the cases (so clashes, duplicates, moves between Services and
//! slices without a Service all occur).

// A test crate: a panic here is a test failure with its message, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use ipvs_proxier::model::{Model, ServiceName, parse_manifests};
use ipvs_proxier::model::{ServiceObject as Service, SliceObject as EndpointSlice};
use ipvs_proxier::plan::incremental::{PlanDelta, PlanState, group, service_unit, slice_unit};
use ipvs_proxier::plan::{ConfigFile, NodeFacts, Plan, PlanConfig, plan_objects};
use ipvs_proxier::sync::status;
use k8s_openapi::api::core::v1::Node;
use netlink::ipvs::ServiceKey;
use proptest::prelude::*;

struct Case {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    nodes: Vec<Node>,
    config: PlanConfig,
    facts: NodeFacts,
}

fn cases() -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs: Vec<PathBuf> = fs::read_dir(root.join("tests/testdata"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.yaml").is_file())
        .collect();
    dirs.sort();
    dirs.iter()
        .map(|dir| {
            let input = match fs::read_to_string(dir.join("input-path")) {
                Ok(rel) => fs::read_to_string(root.join("..").join(rel.trim())).unwrap(),
                Err(_) => fs::read_to_string(dir.join("input.yaml")).unwrap(),
            };
            let config = fs::read_to_string(dir.join("config.yaml")).unwrap();
            let (config, facts) = ConfigFile::parse(&config).unwrap().into_parts().unwrap();
            let m = parse_manifests(&input);
            Case {
                services: m.services,
                slices: m.endpoint_slices,
                nodes: m.nodes,
                config,
                facts,
            }
        })
        .collect()
}

/// xorshift: a failing seed reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap()
    }
}

fn name(k: (&str, &str)) -> ServiceName {
    ServiceName {
        namespace: k.0.to_owned(),
        name: k.1.to_owned(),
    }
}

/// Applies one random change; returns the units it touched (before and after).
fn change(
    rng: &mut Rng,
    services: &mut Vec<Service>,
    slices: &mut Vec<EndpointSlice>,
    pool: &Case,
    names: &[String],
) -> BTreeSet<ServiceName> {
    let mut touched = BTreeSet::new();
    match rng.below(9) {
        0 if !services.is_empty() => {
            let i = rng.below(services.len());
            touched.insert(name(service_unit(&services.remove(i))));
        }
        1 if !slices.is_empty() => {
            let i = rng.below(slices.len());
            touched.insert(name(slice_unit(&slices.remove(i))));
        }
        2 if !pool.services.is_empty() => {
            let mut s = pool.services[rng.below(pool.services.len())].clone();
            if rng.below(2) == 0 {
                s.metadata.name = Some(names[rng.below(names.len())].clone());
            }
            touched.insert(name(service_unit(&s)));
            services.push(s);
        }
        3 if !pool.slices.is_empty() => {
            let mut s = pool.slices[rng.below(pool.slices.len())].clone();
            if rng.below(2) == 0 {
                let n = names[rng.below(names.len())].clone();
                s.metadata.labels.service_name = Some(n);
            }
            touched.insert(name(slice_unit(&s)));
            slices.push(s);
        }
        4 if !slices.is_empty() => {
            // An endpoint less, or one changes readiness.
            let i = rng.below(slices.len());
            let s = &mut slices[i];
            touched.insert(name(slice_unit(s)));
            if rng.below(2) == 0 {
                s.endpoints.pop();
            } else if let Some(e) = s.endpoints.first_mut() {
                e.ready = Some(!e.ready.unwrap_or(true));
            }
        }
        5 if !slices.is_empty() => {
            // The slice moves to another Service (or loses its label).
            let i = rng.below(slices.len());
            let s = &mut slices[i];
            touched.insert(name(slice_unit(s)));
            s.metadata.labels.service_name =
                (rng.below(4) != 0).then(|| names[rng.below(names.len())].clone());
            touched.insert(name(slice_unit(s)));
        }
        6 if !services.is_empty() => {
            // A port, node port or cluster IP changes (values from a small set: clashes).
            let i = rng.below(services.len());
            let s = &mut services[i];
            touched.insert(name(service_unit(s)));
            let spec = s.spec.get_or_insert_default();
            match rng.below(3) {
                0 => {
                    if let Some(p) = spec.ports.first_mut() {
                        p.port = [80, 443, 8080][rng.below(3)];
                    }
                }
                1 => {
                    spec.type_ = Some("NodePort".into());
                    if let Some(p) = spec.ports.first_mut() {
                        p.node_port = Some([30000, 30001, 31313][rng.below(3)]);
                    }
                }
                _ => {
                    if spec.cluster_ip.as_deref() != Some("None") {
                        let ip = ["10.96.0.10", "10.96.0.11", "10.96.0.12"][rng.below(3)];
                        spec.cluster_ip = Some(ip.into());
                        spec.cluster_ips = vec![ip.into()];
                    }
                }
            }
        }
        7 if !services.is_empty() => {
            // A Service renamed (its old unit loses it, its new one gains it).
            let i = rng.below(services.len());
            let s = &mut services[i];
            touched.insert(name(service_unit(s)));
            s.metadata.name = Some(names[rng.below(names.len())].clone());
            touched.insert(name(service_unit(s)));
        }
        _ => {}
    }
    touched
}

/// The units `touched` with all their current objects.
fn update(
    state: &mut PlanState,
    touched: &BTreeSet<ServiceName>,
    services: &[Service],
    slices: &[EndpointSlice],
    c: &Case,
) -> Option<PlanDelta> {
    let units = group(services, slices, |(ns, n)| {
        touched.contains(&ServiceName {
            namespace: ns.to_owned(),
            name: n.to_owned(),
        })
    });
    let mut changed: BTreeMap<ServiceName, _> = touched
        .iter()
        .map(|k| (k.clone(), Default::default()))
        .collect();
    for (k, objects) in units {
        changed.insert(name(k), objects);
    }
    state.update(&changed, &c.nodes, &c.facts).ok()
}

/// Every virtual server, address and member that differs between `old` and `new` is named
/// by `delta`.
fn delta_covers(old: &Plan, new: &Plan, delta: &PlanDelta) -> Result<(), String> {
    for ((o, n), d) in old.families.iter().zip(&new.families).zip(&delta.families) {
        for (a, b) in [(o, n), (n, o)] {
            for (k, vs) in &a.ipvs.services {
                if b.ipvs.services.get(k) != Some(vs) && !d.virtual_servers.contains(k) {
                    return Err(format!("virtual server {k} changed, not in the delta"));
                }
            }
            for ip in a.bind_addresses.difference(&b.bind_addresses) {
                if !d.addresses.contains(ip) {
                    return Err(format!("address {ip} changed, not in the delta"));
                }
            }
            for (set, m) in a.ipsets.all_members() {
                if !b.ipsets.contains(set, m) && !d.members.contains(&(set, *m)) {
                    return Err(format!("member {m:?} of {set:?} changed, not in the delta"));
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn incremental_plan_equals_full_plan(case in 0usize..64, seed in 1u64..u64::MAX, steps in 1usize..24) {
        let cases = cases();
        let c = &cases[case % cases.len()];
        // Objects, names and values of every case: changes mix them in.
        let pool = Case {
            services: cases.iter().flat_map(|c| c.services.clone()).collect(),
            slices: cases.iter().flat_map(|c| c.slices.clone()).collect(),
            nodes: Vec::new(),
            config: c.config.clone(),
            facts: c.facts.clone(),
        };
        let mut names: Vec<String> = pool
            .services
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names.truncate(12);

        let mut rng = Rng(seed);
        let mut services = c.services.clone();
        let mut slices = c.slices.clone();
        let full = |services: &[Service], slices: &[EndpointSlice]| {
            plan_objects(services, slices, &c.nodes, &c.config, &c.facts)
        };
        let mut state = PlanState::build(&services, &slices, &c.nodes, &c.config, &c.facts);
        prop_assert_eq!(state.plan(), &full(&services, &slices));
        let owners = state.updatable().then(|| owners_by_search(&services, state.plan(), c));
        prop_assert_eq!(state.owners(), owners.clone());
        let mut last_owners = (state.owners_generation(), owners.unwrap_or_default());
        let mut updated = 0;
        for step in 0..steps {
            let old = state.plan().clone();
            let touched = change(&mut rng, &mut services, &mut slices, &pool, &names);
            let want = full(&services, &slices);
            match update(&mut state, &touched, &services, &slices, c) {
                Some(delta) => {
                    updated += 1;
                    prop_assert_eq!(state.plan(), &want, "step {} touched {:?}", step, touched);
                    let real: usize = want.families.iter().map(|f| f.ipvs.destination_count()).sum();
                    prop_assert_eq!(state.real_servers(), real);
                    if let Err(e) = delta_covers(&old, &want, &delta) {
                        prop_assert!(false, "step {}: {}", step, e);
                    }
                    let owners = owners_by_search(&services, &want, c);
                    // An unchanged generation promises unchanged owners.
                    if state.owners_generation() == last_owners.0 {
                        prop_assert_eq!(&owners, &last_owners.1, "step {}: same generation", step);
                    }
                    prop_assert_eq!(state.owners(), Some(owners.clone()), "step {}", step);
                    last_owners = (state.owners_generation(), owners);
                }
                None => {
                    // A clash: rebuilt from all objects, as the sync engine does.
                    let generation = state.owners_generation();
                    state = PlanState::build(&services, &slices, &c.nodes, &c.config, &c.facts);
                    prop_assert_eq!(state.plan(), &want, "step {} rebuilt", step);
                    prop_assert_ne!(state.owners_generation(), generation);
                    last_owners = (state.owners_generation(), state.owners().unwrap_or_default());
                }
            }
        }
        prop_assert!(updated <= steps);
    }
}

/// The owner of each virtual server found as `ipvs-proxier status` did before the plan state
/// kept them: by searching every Service of a model for the virtual server's address and port.
fn owners_by_search(services: &[Service], plan: &Plan, c: &Case) -> BTreeMap<ServiceKey, String> {
    let services: Vec<&Service> = services.iter().collect();
    let (model, _) = Model::build_refs(&services, &[], &c.nodes, &c.config.model_options());
    plan.families
        .iter()
        .flat_map(|f| status::owners(&model, &f.ipvs))
        .collect()
}

/// The clash-free synthetic cluster of the benches updates unit by unit (never rebuilds).
#[test]
fn synthetic_cluster_updates_without_rebuilding() {
    use ipvs_proxier::synthetic::{self, Mix};
    let c = &cases()[0];
    let mix = Mix {
        node_port_every: 10,
        load_balancer_every: 100,
    };
    let (services, mut slices) = synthetic::cluster(300, 10, mix);
    let mut state = PlanState::build(&services, &slices, &c.nodes, &c.config, &c.facts);
    assert!(state.updatable());
    let generation = state.owners_generation();
    for k in [0, 7, 150, 299] {
        slices[k].endpoints.pop();
        let touched = BTreeSet::from([name(slice_unit(&slices[k]))]);
        let delta = update(&mut state, &touched, &services, &slices, c).expect("no clash");
        let want = plan_objects(&services, &slices, &c.nodes, &c.config, &c.facts);
        assert_eq!(state.plan(), &want);
        let vs: usize = delta.families.iter().map(|f| f.virtual_servers.len()).sum();
        // ClusterIP, plus a node IP per NodePort and the ingress IP per LoadBalancer.
        assert!(
            (1..=4).contains(&vs),
            "{k}: {vs} virtual servers in the delta"
        );
    }
    // Endpoint changes only: the owners are the same, and say so.
    assert_eq!(state.owners_generation(), generation);
    let owners = state.owners().expect("no clash");
    assert_eq!(owners.len(), state.virtual_servers());
    assert_eq!(owners, owners_by_search(&services, state.plan(), c));
}
