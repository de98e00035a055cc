//! The sync engine: observe the kernel, plan, diff, apply.
//!
//! One sync ([`Syncer::sync`]) is:
//!
//! 1. ensure the sysctls (written only when they differ);
//! 2. **observe** ([`Kernel::observe`]): the IPVS table, the dummy link's addresses and the
//!    node's addresses from one address dump, the members of our ipsets, and (per family,
//!    inside the iptables step) one `iptables-save`;
//! 3. **plan** (pure, [`crate::plan::plan_objects`]) with the observed node addresses;
//! 4. **decide** (pure, [`decide`]): the dummy link, VIPs to bind and unbind, set changes,
//!    each family's restore input, IPVS operations and stale virtual servers;
//! 5. **apply**, in kube-proxy's order: dummy link, bind VIPs, ipsets, one iptables restore
//!    per family (skipped when the chains already hold the rules), the IPVS batch, then
//!    unbind stale VIPs and delete stale virtual servers; both only for families whose
//!    iptables step succeeded (upstream returns early on a failed restore).
//!
//! Every write is counted by kind ([`WriteCounts`]); a failure of one object is logged with
//! its name and reported, and never blocks the others. A full sync caches nothing it relies
//! on: a fresh process over a programmed node computes the same (empty) changes as a
//! long-lived one.
//!
//! [`Syncer::sync_incremental`] (the daemon's change-triggered syncs) replaces step 2 with a
//! cached view of the kernel ([`cache`]): the state after the last successful sync, in which
//! only the virtual servers whose desired state changed (and those draining) are re-read; the
//! iptables step is skipped when the rendered rules equal those last put in place. Any
//! failure drops the cache, so the next sync is full; the periodic resync is always full.

pub mod cache;
pub mod cleanup;
pub mod cmd;
mod conntrack;
pub mod daemon;
pub mod graceful;
pub mod manifests;
pub mod runner;
pub mod status;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netlink::AddressFamily;
use netlink::ipvs::{Operation, Table, VirtualServer};

use crate::dataplane::kernel::{Kernel, KernelError, KernelOptions, Observed};
use crate::diff::{self, Ownership, SetChange, VipChanges};
use crate::model::manifests::{Manifests, ObjectRefs};
use crate::model::{ServiceName, ServiceObject, SliceObject};
use crate::plan::incremental::{self, PlanState, UnitObjects};
use crate::plan::{self, NodeFacts, Plan, PlanConfig};
use cache::KernelCache;
use graceful::Drains;

pub use crate::dataplane::kernel::{Failure, Outcome, WriteCounts};
pub use conntrack::ConntrackRun;
use conntrack::FlowInput;

/// Virtual servers the kernel lacks written per IPVS apply: bounds the operations a cold
/// sync holds at once (~5,600 at 10 endpoints each, ~0.4 MB) while each apply still fills
/// about one of the handle's sends (up to 1 MiB of messages).
const CREATED_PER_APPLY: usize = 512;

/// What the sync engine is told besides the planner's configuration.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub plan: PlanConfig,
    /// `--ipvs-exclude-cidrs`: virtual servers and VIPs inside are never removed.
    pub exclude_cidrs: Vec<IpNet>,
    /// `--ipvs-strict-arp`.
    pub strict_arp: bool,
    /// Node IPs to use instead of the kernel's addresses (`--node-ip`).
    pub node_ips: Option<Vec<IpAddr>>,
    /// Longest a TCP real server drains before it is deleted with connections left; `None`
    /// waits for them forever, as upstream.
    pub max_drain: Option<Duration>,
}

impl SyncOptions {
    pub fn ownership(&self) -> Ownership {
        Ownership {
            families: self.plan.families.iter().copied().collect(),
            exclude: self.exclude_cidrs.clone(),
        }
    }
}

/// Why a sync could not run at all (per-object failures are in [`SyncReport::failures`]).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot open the kernel handles: {0}")]
    Open(#[source] KernelError),
    #[error("cannot ensure the IPVS sysctls: {0}")]
    Sysctls(#[source] KernelError),
    #[error("cannot observe the kernel state: {0}")]
    Observe(#[source] KernelError),
}

/// How long the stages of one sync took.
#[derive(Debug, Clone, Copy)]
struct Timings {
    observe: Duration,
    plan: Duration,
    apply: Duration,
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub writes: WriteCounts,
    pub failures: Vec<Failure>,
    /// Planner and manifest diagnostics (skipped objects).
    pub diagnostics: usize,
    /// Size of the desired state.
    pub virtual_servers: usize,
    pub real_servers: usize,
    pub observe: Duration,
    pub plan: Duration,
    pub apply: Duration,
    /// Whether the sync used the cached kernel view ([`Syncer::sync_incremental`]).
    pub incremental: bool,
    /// Virtual servers re-read from the kernel by an incremental sync.
    pub reread: usize,
    /// The kernel differed from what this sync read (see `Outcome::observation_stale`): the
    /// writes were redone, but what else the read missed waits for a full sync.
    pub observation_stale: bool,
    /// The stale UDP conntrack cleanup of each family, when one ran.
    pub conntrack: Vec<ConntrackRun>,
}

impl SyncReport {
    /// Whether the sync needs no follow-up: nothing failed and the read was accurate.
    pub fn converged(&self) -> bool {
        self.failures.is_empty() && !self.observation_stale
    }
}

/// Everything one sync will change, decided from the plan and the observed state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The dummy link is missing and must be created.
    pub create_dummy: bool,
    pub vips: VipChanges,
    /// Per family: the sets that need creating or members changed.
    pub ipsets: Vec<(AddressFamily, Vec<SetChange>)>,
    /// Per family: the `iptables-restore` input (applied only if the kernel differs).
    pub iptables: Vec<(AddressFamily, String)>,
    /// Virtual servers the kernel lacks, written whole (service, then real servers) a
    /// slice at a time by the apply, so a cold sync never holds all its operations at once;
    /// each shares the plan's real-server map.
    pub created: Vec<VirtualServer>,
    /// Updates of virtual servers the kernel has and their real-server changes, in a valid
    /// order.
    pub ipvs: Vec<Operation>,
    /// Stale virtual servers (owned, not desired), deleted last.
    pub stale_services: Vec<Operation>,
}

/// The node facts the planner needs: the observed addresses (or `--node-ip`), and as primary
/// IP per family the first global address of the dump (or the given one).
pub fn node_facts(observed: &Observed, node_ips: Option<&[IpAddr]>) -> NodeFacts {
    if let Some(ips) = node_ips {
        return NodeFacts {
            addresses: ips.to_vec(),
            primary_ips: ips.to_vec(),
        };
    }
    let addresses: Vec<IpAddr> = observed.node_addresses.iter().map(|a| a.addr).collect();
    let mut primary_ips = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        if let Some(a) = observed
            .node_addresses
            .iter()
            .find(|a| !a.host_or_link_scope && AddressFamily::of(&a.addr) == family)
        {
            primary_ips.push(a.addr);
        }
    }
    NodeFacts {
        addresses,
        primary_ips,
    }
}

/// The names of every set of the planned families.
pub fn set_names(config: &PlanConfig) -> Vec<String> {
    config
        .families
        .iter()
        .flat_map(|&f| plan::SetName::ALL.iter().map(move |s| s.name(f)))
        .collect()
}

/// Every family's virtual servers in one table.
pub fn desired_table(plan: &Plan) -> Table {
    let mut table = Table::default();
    for f in &plan.families {
        table
            .services
            .extend(f.ipvs.services.iter().map(|(k, v)| (*k, v.clone())));
    }
    table
}

/// Pure: the changes that turn `observed` into `plan`.
pub fn decide(plan: &Plan, observed: &Observed, ownership: &Ownership) -> Changes {
    let desired_vips = plan
        .families
        .iter()
        .flat_map(|f| f.bind_addresses.iter().copied())
        .collect();
    let desired_ipvs = desired_tables(plan);
    let (created, mut ipvs) = diff::ipvs_changes_of(&desired_ipvs, &observed.ipvs, ownership);
    let stale_services: Vec<Operation> = ipvs
        .extract_if(.., |op| matches!(op, Operation::DeleteService(_)))
        .collect();
    Changes {
        create_dummy: observed.dummy_index.is_none(),
        vips: diff::vip_changes(&desired_vips, &observed.bound, ownership),
        ipsets: plan
            .families
            .iter()
            .map(|f| (f.family, diff::ipset_changes(&f.ipsets, &observed.ipsets)))
            .collect(),
        iptables: plan
            .families
            .iter()
            .map(|f| (f.family, f.rules.to_restore_input()))
            .collect(),
        created,
        ipvs,
        stale_services,
    }
}

impl Changes {
    /// The IPVS writes these changes make (the created virtual servers' included).
    pub fn ipvs_operation_count(&self) -> usize {
        let created: usize = self
            .created
            .iter()
            .map(|vs| 1 + vs.destinations.len())
            .sum();
        created + self.ipvs.len() + self.stale_services.len()
    }
}

/// The IPVS tables of every family of `plan`.
fn desired_tables(plan: &Plan) -> Vec<&Table> {
    plan.families.iter().map(|f| &f.ipvs).collect()
}

/// The sync engine over one kernel.
#[derive(Debug)]
pub struct Syncer {
    kernel: Kernel,
    options: SyncOptions,
    /// The plan of the last sync, kept per Service for the incremental path.
    plan: Option<PlanState>,
    drains: Drains,
    /// The kernel as the last successful sync left it; `None` after any failure.
    cache: Option<KernelCache>,
    /// Start of the last full sync.
    last_full: Option<Instant>,
    /// Longest time between full syncs when only incremental ones are asked for.
    full_every: Option<Duration>,
    /// The UDP serving endpoints the last conntrack cleanup succeeded for.
    conntrack_clean_for: Option<crate::stale_flows::UdpServing>,
    /// Per Service with a UDP port, its part of the serving UDP endpoints (as of the last
    /// sync), so an incremental sync recomputes only the changed Services'.
    udp_serving: std::collections::BTreeMap<ServiceName, crate::stale_flows::UdpServing>,
}

impl Syncer {
    /// Opens the kernel handles (needs a tokio runtime; sockets live in the calling thread's
    /// network namespace). The planner's `random_fully` is kept only if iptables supports it.
    pub async fn new(mut options: SyncOptions, kernel: &KernelOptions) -> Result<Self, SyncError> {
        let kernel = Kernel::open(kernel).await.map_err(SyncError::Open)?;
        options.plan.random_fully &= kernel.random_fully();
        Ok(Self {
            kernel,
            drains: Drains::new(options.max_drain),
            options,
            plan: None,
            cache: None,
            last_full: None,
            full_every: None,
            conntrack_clean_for: None,
            udp_serving: std::collections::BTreeMap::new(),
        })
    }

    /// The kernel options matching `options`: its families, the default iptables backend,
    /// `/proc/sys` and `kube-ipvs0`.
    pub fn default_kernel_options(options: &SyncOptions) -> KernelOptions {
        KernelOptions {
            families: options.plan.families.clone(),
            iptables_backend: Default::default(),
            sysctl_root: "/proc/sys".into(),
            dummy: "kube-ipvs0".to_owned(),
        }
    }

    pub fn options(&self) -> &SyncOptions {
        &self.options
    }

    /// The plan of the last sync.
    pub fn last_plan(&self) -> Option<&Plan> {
        self.plan.as_ref().map(PlanState::plan)
    }

    /// The kept plan state of the last sync (its plan and each Service's part).
    pub fn last_plan_state(&self) -> Option<&PlanState> {
        self.plan.as_ref()
    }

    /// One full sync of `objects` into the kernel.
    pub async fn sync(&mut self, objects: &Manifests) -> Result<SyncReport, SyncError> {
        let (services, slices) = borrow_all(objects);
        self.sync_objects(objects.refs(&services, &slices)).await
    }

    /// [`Syncer::sync`] over borrowed objects.
    pub async fn sync_objects(&mut self, objects: ObjectRefs<'_>) -> Result<SyncReport, SyncError> {
        self.cache = None;
        // Freed before the new plan is built: two whole plans never coexist.
        self.plan = None;
        let mut out = Outcome::default();
        let started = Instant::now();
        self.last_full = Some(started);
        self.kernel
            .ensure_sysctls(self.options.strict_arp, &mut out)
            .map_err(SyncError::Sysctls)?;
        // The node first (the plan needs its addresses), then the plan, then the IPVS table,
        // whose real-server maps share the plan's where equal: the table read back is then
        // never a second copy of the plan's ~100,000 real servers.
        let mut observed = self
            .kernel
            .observe_node(&set_names(&self.options.plan))
            .await
            .map_err(SyncError::Observe)?;
        let mut observe = started.elapsed();

        let started = Instant::now();
        let facts = node_facts(&observed, self.options.node_ips.as_deref());
        let state = crate::allocator::with_thread_cache(|| {
            PlanState::build(
                objects.services,
                objects.endpoint_slices,
                objects.nodes,
                &self.options.plan,
                &facts,
            )
        });
        let mut plan_time = started.elapsed();

        let started = Instant::now();
        self.kernel
            .observe_ipvs(&mut observed, &desired_tables(state.plan()))
            .await
            .map_err(SyncError::Observe)?;
        observe += started.elapsed();

        let started = Instant::now();
        let changes = crate::allocator::with_thread_cache(|| {
            self.decide_with_drains(state.plan(), &observed)
        });
        plan_time += started.elapsed();

        let started = Instant::now();
        let ifindex = self.apply(&observed, &changes, &[], &mut out).await;
        let apply = started.elapsed();
        if out.clean() {
            let mut cache = KernelCache {
                observed,
                rules: Vec::new(),
            };
            let rules = changes.iptables.clone();
            cache.applied(changes, ifindex, rules, state.plan());
            self.cache = Some(cache);
        }

        let timings = Timings {
            observe,
            plan: plan_time,
            apply,
        };
        let conntrack = self.clean_stale_flows(FlowInput::All(objects), &mut out);
        Ok(self.finish(state, objects.diagnostics, conntrack, out, timings, None))
    }

    /// [`Syncer::sync_objects`] over every object, as `all` collects them (for callers that
    /// lend their objects, as [`Syncer::sync_incremental_with`]).
    pub async fn sync_all<'o>(
        &mut self,
        nodes: &'o [k8s_openapi::api::core::v1::Node],
        diagnostics: usize,
        all: &impl Fn() -> (Vec<&'o ServiceObject>, Vec<&'o SliceObject>),
    ) -> Result<SyncReport, SyncError> {
        let (services, slices) = all();
        let objects = ObjectRefs {
            services: &services,
            endpoint_slices: &slices,
            nodes,
            diagnostics,
        };
        self.sync_objects(objects).await
    }

    /// Makes [`Syncer::sync_incremental`] run a full sync when the last one started `every`
    /// ago or longer (the daemon's `syncPeriod`: a steady stream of changes must not hold
    /// off the drift repair of the periodic resync).
    pub fn set_full_every(&mut self, every: Duration) {
        self.full_every = Some(every);
    }

    /// Whether the next [`Syncer::sync_incremental`] can use a cached kernel view.
    pub fn has_cache(&self) -> bool {
        self.cache.is_some() && self.plan.is_some()
    }

    /// A change-triggered sync: like [`Syncer::sync`], but against the cached kernel view of
    /// the last successful sync, replanning only the Services named in `affected` (every
    /// Service whose Service object or EndpointSlices changed since the last sync, as the
    /// source's change set gives them; slices without a service label count for the empty
    /// name of their namespace) and re-reading only their virtual servers and those with
    /// draining real servers; the iptables step runs only when the rendered rules differ
    /// from those in place. Without a cache (first sync, or after any failure) it is a full
    /// sync. When two Services clash (see [`incremental`]) it replans all objects but still
    /// uses the cached view. Changes of the Node must use [`Syncer::sync`] (they change node
    /// facts this path takes from the cache).
    pub async fn sync_incremental(
        &mut self,
        objects: &Manifests,
        affected: &BTreeSet<ServiceName>,
    ) -> Result<SyncReport, SyncError> {
        let (services, slices) = borrow_all(objects);
        self.sync_incremental_objects(objects.refs(&services, &slices), affected)
            .await
    }

    /// [`Syncer::sync_incremental`] over borrowed objects.
    pub async fn sync_incremental_objects(
        &mut self,
        objects: ObjectRefs<'_>,
        affected: &BTreeSet<ServiceName>,
    ) -> Result<SyncReport, SyncError> {
        let units = affected_units(objects, affected);
        self.sync_incremental_units(objects, &units).await
    }

    /// [`Syncer::sync_incremental_objects`] with the changed Services' objects given by the
    /// caller (one entry per changed Service with ALL its current objects; none = removed),
    /// for callers that can find them without a scan of every object.
    pub async fn sync_incremental_units(
        &mut self,
        objects: ObjectRefs<'_>,
        units: &std::collections::BTreeMap<ServiceName, UnitObjects<'_>>,
    ) -> Result<SyncReport, SyncError> {
        self.sync_incremental_with(units, objects.nodes, objects.diagnostics, || {
            (objects.services.to_vec(), objects.endpoint_slices.to_vec())
        })
        .await
    }

    /// [`Syncer::sync_incremental_units`] for a caller that can find the changed Services'
    /// objects by key (the daemon's store): every object is collected, by `all`, only when
    /// the sync turns out to need them (a full sync, a whole replan on a clash), so a
    /// change costs nothing per object it does not touch.
    pub async fn sync_incremental_with<'o>(
        &mut self,
        units: &std::collections::BTreeMap<ServiceName, UnitObjects<'o>>,
        nodes: &'o [k8s_openapi::api::core::v1::Node],
        diagnostics: usize,
        all: impl Fn() -> (Vec<&'o ServiceObject>, Vec<&'o SliceObject>),
    ) -> Result<SyncReport, SyncError> {
        let due = cache::full_due(self.last_full, self.full_every, Instant::now());
        let (Some(mut cache), Some(mut state)) = (self.cache.take(), self.plan.take()) else {
            return self.sync_all(nodes, diagnostics, &all).await;
        };
        if due {
            // Dropped first: the full sync builds its own (two plans never coexist).
            drop((cache, state));
            return self.sync_all(nodes, diagnostics, &all).await;
        }
        let mut out = Outcome::default();
        let started = Instant::now();
        self.kernel
            .ensure_sysctls(self.options.strict_arp, &mut out)
            .map_err(SyncError::Sysctls)?;
        let sysctl_time = started.elapsed();

        let started = Instant::now();
        let facts = node_facts(&cache.observed, self.options.node_ips.as_deref());
        let delta = state.update(units, nodes, &facts);
        let delta = match delta {
            Ok(delta) => Some(delta),
            Err(why) => {
                tracing::debug!(reason = %why, "replanning every Service");
                drop(state);
                let (services, slices) = all();
                state = crate::allocator::with_thread_cache(|| {
                    PlanState::build(&services, &slices, nodes, &self.options.plan, &facts)
                });
                None
            }
        };
        let mut plan_time = started.elapsed();

        let started = Instant::now();
        // What to re-read: the virtual servers the change may touch (all of them when
        // replanned as a whole: those the decision would write) and those draining.
        let drains = self.drains.services();
        let mut reread: BTreeSet<_> = drains.iter().copied().collect();
        match &delta {
            Some(d) => reread.extend(d.families.iter().flat_map(|f| f.virtual_servers.iter())),
            None => {
                let c = decide(state.plan(), &cache.observed, &self.options.ownership());
                reread.extend(
                    c.ipvs
                        .iter()
                        .chain(&c.stale_services)
                        .map(cache::operation_service)
                        .chain(c.created.iter().map(|vs| vs.service.key)),
                );
            }
        }
        for key in &reread {
            let fresh = self
                .kernel
                .observe_service(key)
                .await
                .map_err(SyncError::Observe)?;
            cache.refresh(*key, fresh);
        }
        let observe = sysctl_time + started.elapsed();

        let started = Instant::now();
        let ownership = self.options.ownership();
        let decided = delta.as_ref().and_then(|d| {
            cache::decide_delta(state.plan(), &cache.observed, &ownership, d, &drains)
        });
        let mut changes = match decided {
            Some(c) => self.drain_filter(state.plan(), c, &cache.observed),
            None => crate::allocator::with_thread_cache(|| {
                self.decide_with_drains(state.plan(), &cache.observed)
            }),
        };
        let rules = changes.iptables.clone();
        let in_place = cache.rules_in_place(&rules);
        changes.iptables.retain(|(f, _)| !in_place.contains(f));
        plan_time += started.elapsed();

        let started = Instant::now();
        let ifindex = self
            .apply(&cache.observed, &changes, &in_place, &mut out)
            .await;
        let apply = started.elapsed();
        if out.clean() {
            cache.applied(changes, ifindex, rules, state.plan());
            // Re-read virtual servers were read from the kernel; after a whole replan the
            // plan holds new maps for all.
            cache.share_with(state.plan(), delta.is_some().then_some(&reread));
            self.cache = Some(cache);
        }

        let timings = Timings {
            observe,
            plan: plan_time,
            apply,
        };
        // Only the changed Services' objects differ from the last sync's, even when a clash
        // made the plan whole again: the other Services' parts of the check still hold.
        let conntrack = self.clean_stale_flows(FlowInput::Units(units), &mut out);
        Ok(self.finish(
            state,
            diagnostics,
            conntrack,
            out,
            timings,
            Some(reread.len()),
        ))
    }

    /// [`decide`] for `plan` against `observed`, with the removal of TCP real servers that
    /// still carry connections turned into draining at weight 0.
    fn decide_with_drains(&mut self, plan: &Plan, observed: &Observed) -> Changes {
        let changes = decide(plan, observed, &self.options.ownership());
        self.drain_filter(plan, changes, observed)
    }

    /// `changes` with the removal of TCP real servers that still carry connections turned
    /// into draining at weight 0.
    fn drain_filter(&mut self, plan: &Plan, mut changes: Changes, observed: &Observed) -> Changes {
        let now = Instant::now();
        self.drains.retain_undesired_by(|svc, dest| {
            plan.families.iter().any(|f| {
                f.ipvs
                    .services
                    .get(svc)
                    .is_some_and(|vs| vs.destinations.contains_key(dest))
            })
        });
        for ops in [&mut changes.ipvs, &mut changes.stale_services] {
            *ops = self.drains.filter(
                std::mem::take(ops),
                &observed.ipvs,
                &observed.connections,
                now,
            );
        }
        changes
    }

    /// The report of a sync of `state`'s plan (full when `reread` is `None`, else incremental
    /// with that many virtual servers re-read), logged; `state` becomes the last plan.
    fn finish(
        &mut self,
        state: PlanState,
        object_diagnostics: usize,
        conntrack: Vec<ConntrackRun>,
        out: Outcome,
        timings: Timings,
        reread: Option<usize>,
    ) -> SyncReport {
        let plan = state.plan();
        let report = SyncReport {
            writes: out.writes,
            failures: out.failures,
            observation_stale: out.observation_stale,
            diagnostics: plan.diagnostics.len() + object_diagnostics,
            virtual_servers: state.virtual_servers(),
            real_servers: state.real_servers(),
            observe: timings.observe,
            plan: timings.plan,
            apply: timings.apply,
            incremental: reread.is_some(),
            reread: reread.unwrap_or(0),
            conntrack,
        };
        tracing::info!(
            incremental = report.incremental,
            writes = report.writes.total(),
            failures = report.failures.len(),
            virtual_servers = report.virtual_servers,
            real_servers = report.real_servers,
            reread = report.reread,
            diagnostics = report.diagnostics,
            observe_ms = timings.observe.as_secs_f64() * 1e3,
            plan_ms = timings.plan.as_secs_f64() * 1e3,
            apply_ms = timings.apply.as_secs_f64() * 1e3,
            "sync done"
        );
        self.plan = Some(state);
        report
    }

    /// The drain list.
    pub fn drains(&self) -> &Drains {
        &self.drains
    }

    /// The periodic drain check (every few seconds, between syncs): reads the connection
    /// counters of the virtual servers with draining real servers and deletes those that
    /// are done. Reads nothing when nothing drains.
    pub async fn check_drains(&mut self) -> Result<Outcome, SyncError> {
        let mut out = Outcome::default();
        let services = self.drains.services();
        if services.is_empty() {
            return Ok(out);
        }
        let connections = match self.kernel.connections_of(&services).await {
            Ok(c) => c,
            Err(e) => {
                self.cache = None;
                return Err(SyncError::Observe(e));
            }
        };
        let ops = self.drains.check(&connections, Instant::now());
        self.kernel.apply_ipvs(&ops, &mut out).await;
        match (&mut self.cache, out.clean()) {
            (Some(cache), true) => cache.apply_ipvs(&ops),
            _ => self.cache = None,
        }
        Ok(out)
    }

    /// Applies `changes`; `rules_in_place` are families whose rules need no restore. Returns
    /// the dummy link's index.
    async fn apply(
        &mut self,
        observed: &Observed,
        changes: &Changes,
        rules_in_place: &[AddressFamily],
        out: &mut Outcome,
    ) -> Option<u32> {
        let ifindex = self.kernel.ensure_dummy(observed.dummy_index, out).await;
        if let Some(i) = ifindex {
            self.kernel.bind(i, &changes.vips.bind, out).await;
        }
        for (_, sets) in &changes.ipsets {
            self.kernel.apply_ipsets(sets, out);
        }
        let mut rules_ok: Vec<AddressFamily> = rules_in_place.to_vec();
        for (family, rules) in &changes.iptables {
            if self.kernel.apply_iptables(*family, rules, out) {
                rules_ok.push(*family);
            }
        }
        self.kernel.apply_ipvs(&changes.ipvs, out).await;
        // A few hundred virtual servers' operations at a time (~11 each at 10 endpoints).
        let mut ops = Vec::new();
        for chunk in changes.created.chunks(CREATED_PER_APPLY) {
            ops.clear();
            for vs in chunk {
                diff::creation_operations(vs, &mut ops);
            }
            self.kernel.apply_ipvs(&ops, out).await;
        }

        // Removals only for families whose rules are in place, as upstream.
        let removable = |addr: &IpAddr| rules_ok.contains(&AddressFamily::of(addr));
        if let Some(i) = ifindex {
            let unbind: Vec<IpAddr> = changes
                .vips
                .unbind
                .iter()
                .filter(|a| removable(a))
                .copied()
                .collect();
            self.kernel.unbind(i, &unbind, out).await;
        }
        let stale: Vec<Operation> = changes
            .stale_services
            .iter()
            .filter(|op| match op {
                Operation::DeleteService(k) => k.addr().is_some_and(|a| removable(&a)),
                _ => true,
            })
            .cloned()
            .collect();
        self.kernel.apply_ipvs(&stale, out).await;
        ifindex
    }
}

/// References to every Service and EndpointSlice of `objects` (cheap: pointers only).
fn borrow_all(
    objects: &Manifests,
) -> (
    Vec<&crate::model::ServiceObject>,
    Vec<&crate::model::SliceObject>,
) {
    (
        objects.services.iter().collect(),
        objects.endpoint_slices.iter().collect(),
    )
}

/// The objects of every unit in `affected` (an empty namespace, which the source uses for an
/// object without one, is the model's `default`), one scan of `objects`; units without
/// objects are in the map with none (removed).
fn affected_units<'a>(
    objects: ObjectRefs<'a>,
    affected: &BTreeSet<ServiceName>,
) -> std::collections::BTreeMap<ServiceName, UnitObjects<'a>> {
    let keys: Vec<(&str, &str)> = affected
        .iter()
        .map(|k| {
            let ns = if k.namespace.is_empty() {
                "default"
            } else {
                k.namespace.as_str()
            };
            (ns, k.name.as_str())
        })
        .collect();
    let mut units: std::collections::BTreeMap<ServiceName, UnitObjects<'a>> = keys
        .iter()
        .map(|(ns, name)| {
            let key = ServiceName {
                namespace: (*ns).to_owned(),
                name: (*name).to_owned(),
            };
            (key, UnitObjects::default())
        })
        .collect();
    // A set, not a list: a burst of thousands of changed Services must not make this scan
    // quadratic.
    let wanted: BTreeSet<(&str, &str)> = keys.iter().copied().collect();
    let grouped = incremental::group(objects.services, objects.endpoint_slices, |unit| {
        wanted.contains(&unit)
    });
    for ((ns, name), unit) in grouped {
        let key = ServiceName {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        };
        units.insert(key, unit);
    }
    units
}
