//! Planner benchmark: 10,000 Services x 10 endpoints (half NodePort, a tenth LoadBalancer),
//! built as API objects, then modelled, planned and rendered. Prints the best and median of
//! several runs of each stage, their sum, and `plan_objects` end to end (model build + plan,
//! what a full resync runs). Run with `cargo bench -p ipvs-proxier --bench plan`.
//!
//! `PLAN_BENCH_SERVICES` and `PLAN_BENCH_RUNS` override the size and the number of runs, so
//! the same binary can run under `valgrind --tool=callgrind` at a size valgrind copes with
//! (`PLAN_BENCH_SERVICES=1000 PLAN_BENCH_RUNS=1`).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use ipvs_proxier::model::{Model, ServiceName};
use ipvs_proxier::plan::incremental::{self, PlanState};
use ipvs_proxier::plan::{ConfigFile, plan, plan_objects, render};
use ipvs_proxier::synthetic::{self, Mix};
use netlink::AddressFamily;

const SERVICES: u32 = 10_000;
const ENDPOINTS: u32 = 10;
const RUNS: usize = 7;

/// `name` from the environment, or `default` when unset or not a number.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (best, median) of some runs: the best shows the cost on an idle core, the median how a
/// shared machine behaves.
#[derive(Clone, Copy)]
struct Figure {
    best: Duration,
    median: Duration,
    runs: usize,
}

impl std::ops::Add for Figure {
    type Output = Figure;
    /// The sum of stages: best + best, median + median.
    fn add(self, other: Figure) -> Figure {
        Figure {
            best: self.best + other.best,
            median: self.median + other.median,
            runs: self.runs.min(other.runs),
        }
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "best {:8.1} ms, median {:8.1} ms of {}",
            ms(self.best),
            ms(self.median),
            self.runs
        )
    }
}

/// Runs `f` `runs` times (at least once) and returns the timings and the last result, so
/// each stage runs exactly `runs` times (instruction counts under callgrind divide evenly).
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Figure, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs.max(1) {
        // The previous result is dropped inside the timing, as a sync drops the last one.
        let start = Instant::now();
        last = Some(black_box(f()));
        times.push(start.elapsed());
    }
    times.sort();
    let figure = Figure {
        best: times[0],
        median: times[times.len() / 2],
        runs: times.len(),
    };
    match last {
        Some(last) => (figure, last),
        None => unreachable!("runs.max(1) ran at least once"),
    }
}

fn main() {
    let count = env_or("PLAN_BENCH_SERVICES", SERVICES);
    let runs = env_or("PLAN_BENCH_RUNS", RUNS);
    let (services, slices) = synthetic::cluster(
        count,
        ENDPOINTS,
        Mix {
            node_port_every: 2,
            load_balancer_every: 10,
        },
    );
    let (config, facts) = ConfigFile::parse(
        "nodeName: node-0\nipFamilies: [IPv4]\nclusterCIDRs: [10.244.0.0/16]\n\
         nodeIPs: [10.255.0.1, 192.168.1.5]\nprimaryNodeIPs: [10.255.0.1]\n",
    )
    .and_then(ConfigFile::into_parts)
    .unwrap_or_else(|e| unreachable!("bench config: {e}"));
    let options = config.model_options();

    let (model_time, (model, _)) = time(runs, || Model::build(&services, &slices, &[], &options));
    let (plan_time, p) = time(runs, || plan(&model, &config, &facts));
    let (render_time, _) = time(runs, || {
        (
            render::ipvs(&p),
            render::ipsets(&p),
            render::iptables(&p, AddressFamily::Inet),
        )
    });
    let (end_to_end, _) = time(runs, || {
        plan_objects(&services, &slices, &[], &config, &facts)
    });
    let (state_time, mut state) = time(runs, || {
        PlanState::build(&services, &slices, &[], &config, &facts)
    });
    assert!(state.updatable() && state.plan() == &p, "PlanState differs");
    // One slice loses an endpoint, replanned alone (what a change-triggered sync plans).
    let mut slices = slices;
    let mut k = 0usize;
    let (update_time, _) = time(runs * 10, || {
        k = (k + 7919) % slices.len();
        slices[k].endpoints.pop();
        let (ns, name) = incremental::slice_unit(&slices[k]);
        let key = ServiceName {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        };
        let objects = incremental::UnitObjects {
            services: services
                .iter()
                .filter(|s| incremental::service_unit(s) == (ns, name))
                .collect(),
            slices: vec![&slices[k]],
        };
        let changed = BTreeMap::from([(key, objects)]);
        state
            .update(&changed, &[], &facts)
            .map(|d| d.families.len())
    });
    let f = &p.families[0];
    println!(
        "planner: {count} services x {ENDPOINTS} endpoints -> {} virtual servers, {} real servers, {} bound VIPs",
        f.ipvs.services.len(),
        f.ipvs.destination_count(),
        f.bind_addresses.len()
    );
    println!("  model build (k8s objects -> model):  {model_time}");
    println!("  plan (model -> desired dataplane):   {plan_time}");
    println!("  render (ipvs + ipset + iptables):    {render_time}");
    println!(
        "  model build + plan (sum of stages):  {}",
        model_time + plan_time
    );
    println!(
        "  all three stages (sum):              {}",
        model_time + plan_time + render_time
    );
    println!("  plan_objects (model + plan, e2e):    {end_to_end}");
    println!("  PlanState::build (per Service):      {state_time}");
    println!("  PlanState::update (one slice; scan): {update_time}");
}
