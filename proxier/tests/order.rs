//! Property: the plan depends on the set of input objects, not on their order (objects
//! and Service ports shuffled), and planning is deterministic. Inputs are the golden cases.

// A test crate: a panic here is a test failure with its message, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use ipvs_proxier::model::parse_manifests;
use ipvs_proxier::model::{ServiceObject, SliceObject};
use ipvs_proxier::plan::{ConfigFile, NodeFacts, Plan, PlanConfig, plan_objects};
use k8s_openapi::api::core::v1::Node;
use proptest::prelude::*;

struct Case {
    services: Vec<ServiceObject>,
    slices: Vec<SliceObject>,
    nodes: Vec<Node>,
    config: PlanConfig,
    facts: NodeFacts,
}

fn cases() -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs: Vec<PathBuf> = fs::read_dir(root.join("tests/testdata"))
        .unwrap()
        .map(|e| e.unwrap().path())
        // Other tests keep their own data under testdata/ too; a case has a config.yaml.
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

/// Fisher-Yates driven by a xorshift generator, so a failing seed reproduces.
fn shuffle<T>(items: &mut [T], state: &mut u64) {
    for i in (1..items.len()).rev() {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let j = usize::try_from(*state % (i as u64 + 1)).unwrap();
        items.swap(i, j);
    }
}

fn plan(c: &Case, services: &[ServiceObject], slices: &[SliceObject], nodes: &[Node]) -> Plan {
    plan_objects(services, slices, nodes, &c.config, &c.facts)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn plan_does_not_depend_on_input_order(case in 0usize..64, seed in 1u64..u64::MAX) {
        let cases = cases();
        let c = &cases[case % cases.len()];
        let reference = plan(c, &c.services, &c.slices, &c.nodes);
        // Deterministic: the same input twice gives the same plan.
        prop_assert_eq!(&reference, &plan(c, &c.services, &c.slices, &c.nodes));

        let mut state = seed;
        let mut services = c.services.clone();
        let mut slices = c.slices.clone();
        let mut nodes = c.nodes.clone();
        shuffle(&mut services, &mut state);
        shuffle(&mut slices, &mut state);
        shuffle(&mut nodes, &mut state);
        for s in &mut services {
            if let Some(spec) = s.spec.as_mut() {
                shuffle(&mut spec.ports, &mut state);
            }
        }
        let shuffled = plan(c, &services, &slices, &nodes);
        prop_assert_eq!(&reference.families, &shuffled.families);
        prop_assert_eq!(
            reference.diagnostics.clone(),
            shuffled.diagnostics.clone()
        );
    }
}
