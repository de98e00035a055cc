//! The long-running proxier: kube-proxy's `Run` for IPVS mode.
//!
//! Owns the wiring between the object source, the sync engine, the runner and the HTTP
//! servers, and the process lifecycle:
//!
//! 1. probe the host facts (families), set the IPVS timeouts, open the kernel handles;
//! 2. bind `/healthz` and `/metrics` (a taken port is fatal only with
//!    `--bind-address-hard-fail`, as upstream);
//! 3. start the source and wait until it is ready (both initial lists are in: a sync with
//!    half the objects would delete the other half's virtual servers);
//! 4. loop: the [`Runner`] decides, this module does what it says (sync, drain check, or
//!    sleep until a deadline or a change notification);
//! 5. on SIGTERM or SIGINT: finish the sync in progress, stop the servers, return. The
//!    dataplane is left as it is, so traffic keeps flowing across a restart or upgrade (the
//!    next process adopts it with zero writes).
//!
//! Health and metrics follow `serve`'s contract: every change notification is a queued
//! update; a sync whose iptables restores succeeded is an update (per-object IPVS failures do
//! not make the proxier unhealthy, as upstream, but they are retried with backoff).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use k8s_openapi::api::core::v1::Node;
use netlink::AddressFamily;
use netlink::ipvs::{Operation, ServiceKey};
use tokio::signal::unix::{SignalKind, signal};

use super::runner::{Outcome, Reason, Runner, RunnerConfig, Step};
use super::status;
use super::{Failure, SyncError, SyncOptions, SyncReport, Syncer};
use crate::config::{IptablesBackend, ProxierSettings};
use crate::dataplane::iptables::{BackendChoice, Iptables};
use crate::dataplane::kernel::{KernelOptions, family_name};
use crate::model::Model;
use crate::plan::NodePortAddresses;
use crate::plan::incremental::PlanState;
use crate::serve::{
    CancellationToken, HealthCheckServers, KernelObject, Metrics, OpResult, ProxyHealth,
    ServeError, Server, TrafficPolicy,
};
use crate::source::{self, Objects, Snapshot, SourceError, SourceOptions, TriggerTime};

/// The dummy link's name, as kube-proxy.
pub const DUMMY: &str = "kube-ipvs0";

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the object source: {0}")]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot set the IPVS timeouts: {0}")]
    Timeouts(#[source] netlink::ipvs::IpvsError),
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// `--iptables-backend` as the dataplane names it.
pub fn backend_choice(backend: IptablesBackend) -> BackendChoice {
    match backend {
        IptablesBackend::Auto => BackendChoice::Auto,
        IptablesBackend::Legacy => BackendChoice::Legacy,
        IptablesBackend::Nft => BackendChoice::Nft,
    }
}

/// The families to proxy: those of `--cluster-cidr` and the node IPs when given; otherwise
/// IPv4, plus IPv6 when the host has it (`/proc/net/if_inet6` and a working `ip6tables`),
/// as kube-proxy's dual-stack platform check.
pub fn families(settings: &ProxierSettings) -> Vec<AddressFamily> {
    let mut f: Vec<AddressFamily> = settings
        .cluster_cidrs
        .iter()
        .map(|c| AddressFamily::of(&c.addr()))
        .chain(settings.node_ips.iter().map(AddressFamily::of))
        .collect();
    if f.is_empty() {
        f.push(AddressFamily::Inet);
        let v6 = Path::new("/proc/net/if_inet6").exists()
            && Iptables::detect(
                AddressFamily::Inet6,
                backend_choice(settings.iptables_backend),
            )
            .is_ok();
        if v6 {
            f.push(AddressFamily::Inet6);
        }
    }
    f.sort();
    f.dedup();
    f
}

/// The sync engine's options from the settings and the probed families.
pub fn sync_options(settings: &ProxierSettings, families: Vec<AddressFamily>) -> SyncOptions {
    SyncOptions {
        // `Syncer::new` keeps random-fully only where iptables supports it.
        plan: settings.plan_config(families, true),
        exclude_cidrs: settings.exclude_cidrs.clone(),
        strict_arp: settings.strict_arp,
        node_ips: (!settings.node_ips.is_empty()).then(|| settings.node_ips.clone()),
        max_drain: settings.max_drain_time,
    }
}

pub fn kernel_options(settings: &ProxierSettings, families: Vec<AddressFamily>) -> KernelOptions {
    KernelOptions {
        families,
        iptables_backend: backend_choice(settings.iptables_backend),
        sysctl_root: "/proc/sys".into(),
        dummy: DUMMY.to_owned(),
    }
}

/// What the daemon needs besides kube-proxy's settings.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Where to write the virtual server annotations for `ipvs-proxier status`
    /// (`None`: not written).
    pub state_file: Option<PathBuf>,
}

/// Runs until SIGTERM/SIGINT. Needs a tokio runtime with I/O and time enabled.
pub async fn run(settings: &ProxierSettings, run_options: &RunOptions) -> Result<(), DaemonError> {
    let families = families(settings);
    tracing::info!(
        node = %settings.node_name,
        families = ?families.iter().map(|f| family_name(*f)).collect::<Vec<_>>(),
        sync_period = ?settings.sync_period,
        min_sync_period = ?settings.min_sync_period,
        "Using ipvs Proxier"
    );
    super::cleanup::set_timeouts(&settings.ipvs_timeouts)
        .await
        .map_err(DaemonError::Timeouts)?;
    let options = sync_options(settings, families.clone());
    let mut syncer = Syncer::new(options, &kernel_options(settings, families.clone())).await?;
    syncer.set_full_every(settings.sync_period);

    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let cancel = CancellationToken::new();
    let health = Arc::new(ProxyHealth::new(settings.sync_period));
    let metrics = Arc::new(Metrics::new());

    let mut servers = Vec::new();
    let binds = [
        settings
            .healthz_bind_address
            .map(|a| Server::bind_health(a, health.clone(), metrics.clone())),
        settings
            .metrics_bind_address
            .map(|a| Server::bind_metrics(a, metrics.clone())),
    ];
    for bound in binds.into_iter().flatten() {
        match bound {
            Ok(server) => servers.push(tokio::spawn(server.run(cancel.clone()))),
            Err(e) if settings.bind_address_hard_fail => return Err(e.into()),
            Err(e) => tracing::error!(error = %e, "server not started"),
        }
    }

    let mut source = source::start(
        &settings.source,
        &SourceOptions {
            node_name: settings.node_name.clone(),
            service_proxy_name: None,
        },
    )
    .await?;
    let objects = source.objects().clone();

    let mut daemon = Daemon {
        hc: families.iter().map(|_| None).collect(),
        cancel: cancel.clone(),
        explicit_hc_addresses: !matches!(settings.node_port_addresses, NodePortAddresses::All),
        state_file: run_options.state_file.clone(),
        state_written: None,
        syncer,
        objects,
        health,
        metrics,
        families,
    };

    let stopped = tokio::select! {
        () = daemon.objects.ready() => false,
        _ = terminate.recv() => true,
        _ = interrupt.recv() => true,
    };
    if stopped {
        tracing::info!("stopped before the source was ready");
    } else {
        tracing::info!("source ready; starting the sync loop");
        // Upstream's startup grace: healthy until the first queued update times out.
        for &f in &daemon.families {
            daemon.health.updated(f);
        }
        let config = RunnerConfig::from_periods(settings.min_sync_period, settings.sync_period);
        daemon
            .sync_loop(config, async {
                tokio::select! {
                    _ = terminate.recv() => "SIGTERM",
                    _ = interrupt.recv() => "SIGINT",
                }
            })
            .await;
    }

    cancel.cancel();
    for hc in daemon.hc.iter_mut().flatten() {
        hc.shutdown().await;
    }
    for s in servers {
        let _ = s.await;
    }
    source.stop();
    tracing::info!("stopped; the dataplane is left in place");
    Ok(())
}

struct Daemon {
    syncer: Syncer,
    objects: Objects,
    health: Arc<ProxyHealth>,
    metrics: Arc<Metrics>,
    /// One per family, in `families` order, once that family has synced.
    hc: Vec<Option<HealthCheckServers>>,
    cancel: CancellationToken,
    /// Health-check servers bind the node port addresses of the plan, not the wildcard.
    explicit_hc_addresses: bool,
    families: Vec<AddressFamily>,
    state_file: Option<PathBuf>,
    /// The plan state's owners generation the status file holds: an endpoint change does
    /// not rewrite it (O(virtual servers): 10,000 lines at 10,000 Services).
    state_written: Option<u64>,
}

impl Daemon {
    /// The runner's decisions, carried out until `stop` resolves. A sync in progress is
    /// finished first: an interrupted apply would leave a half-written change.
    async fn sync_loop(&mut self, config: RunnerConfig, stop: impl Future<Output = &'static str>) {
        let mut stop = std::pin::pin!(stop);
        let mut wake = self.objects.subscribe();
        let mut wake_open = true;
        let mut runner = Runner::new(config, Instant::now());
        loop {
            match runner.poll(Instant::now()) {
                Step::Sync(reason) => {
                    tracing::debug!(?reason, "sync");
                    let outcome = self.sync_once(reason).await;
                    let draining = !self.syncer.drains().draining().is_empty();
                    runner.sync_finished(Instant::now(), outcome, draining);
                    if outcome == Outcome::Failed {
                        tracing::info!(
                            consecutive_failures = runner.failures(),
                            "sync incomplete; retrying with backoff"
                        );
                    }
                }
                Step::CheckDrains => {
                    match self.syncer.check_drains().await {
                        Ok(out) => {
                            if out.writes.total() > 0 {
                                tracing::info!(
                                    real_servers_deleted = out.writes.real_servers_deleted,
                                    "drained real servers deleted"
                                );
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "drain check failed"),
                    }
                    let draining = !self.syncer.drains().draining().is_empty();
                    runner.drains_checked(Instant::now(), draining);
                }
                Step::Sleep(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until.into()) => {}
                        changed = wake.changed(), if wake_open => {
                            if changed.is_err() {
                                // The store is gone; only periodic syncs are left.
                                wake_open = false;
                                continue;
                            }
                            runner.request();
                            self.record_pending();
                            for &f in &self.families {
                                self.health.queued_update(f);
                                self.metrics.record_queued(f);
                            }
                        }
                        why = &mut stop => {
                            tracing::info!(signal = why, "stopping");
                            return;
                        }
                    }
                }
            }
        }
    }

    /// One sync of the current snapshot, with its health, metrics and health-check server
    /// updates: incremental for a requested change that does not touch the Node, full for
    /// the first sync, a retry, the periodic resync and Node changes.
    async fn sync_once(&mut self, reason: Reason) -> Outcome {
        let update = self.objects.take();
        self.metrics.add_changes(
            update.changes.endpoint_events,
            update.changes.service_events,
        );
        self.record_pending();
        if update.changes.node
            && let Some(node) = &update.snapshot.node
        {
            self.health.sync_node(node);
        }
        // The snapshot's objects are lent, not copied. A change finds its Services' objects
        // by key; every object is gathered only for a full sync, so a change costs nothing
        // per object it does not touch.
        let snapshot = &update.snapshot;
        let nodes = snapshot.node.as_slice();
        let all = || {
            let services: Vec<_> = snapshot.services.values().collect();
            let slices: Vec<_> = snapshot.endpoint_slices.values().collect();
            (services, slices)
        };
        let started = Instant::now();
        let result = if reason == Reason::Requested && !update.changes.node {
            let units = snapshot.units(&update.changes.services);
            self.syncer
                .sync_incremental_with(&units, nodes, 0, all)
                .await
        } else {
            self.syncer.sync_all(nodes, 0, &all).await
        };
        let took = started.elapsed();
        match result {
            Ok(report) => {
                self.record(&report, took, &update.changes.trigger_times)
                    .await;
                let refused = report.failures.iter().any(|f| f.virtual_server.is_some());
                // Unchanged owners are known only while no two Services clash.
                let generation = self
                    .syncer
                    .last_plan_state()
                    .filter(|s| s.updatable())
                    .map(PlanState::owners_generation);
                let state_stale = self.state_file.is_some()
                    && (generation.is_none() || generation != self.state_written);
                if (state_stale || refused)
                    && let Some(owners) = self.owners(snapshot, nodes)
                {
                    if state_stale {
                        let written = self.write_state(&owners);
                        self.state_written = if written { generation } else { None };
                    }
                    log_refusals(&report.failures, &owners);
                }
                // A stale read is retried like a failure: the retry is a full sync.
                if report.converged() {
                    Outcome::Ok
                } else {
                    Outcome::Failed
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "sync failed");
                for &f in &self.families {
                    self.metrics.record_sync(f, took, false);
                }
                Outcome::Failed
            }
        }
    }

    /// The Service port (`namespace/name:port`) behind each virtual server of the last plan:
    /// from the plan state's per-Service parts (O(virtual servers)); only when two Services
    /// clash, and no part is kept, from a model of every Service.
    fn owners(&self, snapshot: &Snapshot, nodes: &[Node]) -> Option<BTreeMap<ServiceKey, String>> {
        let state = self.syncer.last_plan_state()?;
        if let Some(owners) = state.owners() {
            return Some(owners);
        }
        let services: Vec<_> = snapshot.services.values().collect();
        let options = self.syncer.options().plan.model_options();
        let (model, _) = Model::build_refs(&services, &[], nodes, &options);
        Some(status::owners(&model, &super::desired_table(state.plan())))
    }

    /// The annotations `ipvs-proxier status` prints; best effort: `true` if written.
    fn write_state(&self, owners: &BTreeMap<ServiceKey, String>) -> bool {
        let Some(path) = &self.state_file else {
            return false;
        };
        match status::write_owners(path, owners) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot write the status file");
                false
            }
        }
    }

    /// `..._changes_pending`: what the store holds for the next sync.
    fn record_pending(&self) {
        let pending = self.objects.pending();
        self.metrics.set_changes_pending(
            usize::try_from(pending.endpoint_events).unwrap_or(usize::MAX),
            usize::try_from(pending.service_events).unwrap_or(usize::MAX),
        );
    }

    /// Health and metrics of a finished sync; `trigger_times` are those of the slice changes
    /// it applied (observed as network programming latency where the family synced).
    async fn record(
        &mut self,
        report: &SyncReport,
        took: std::time::Duration,
        trigger_times: &[TriggerTime],
    ) {
        let restore_failed = |f: AddressFamily| {
            let object = format!("iptables-restore {}", family_name(f));
            report.failures.iter().any(|x| x.object == object)
        };
        let w = &report.writes;
        for (kind, n) in [
            (IPVS_SERVICE_ADD, w.services_added),
            (IPVS_SERVICE_UPDATE, w.services_updated),
            (IPVS_SERVICE_DELETE, w.services_deleted),
            (IPVS_REAL_SERVER_ADD, w.real_servers_added),
            (IPVS_REAL_SERVER_UPDATE, w.real_servers_updated),
            (IPVS_REAL_SERVER_DELETE, w.real_servers_deleted),
            ("vip_bind", w.addresses_bound),
            ("vip_unbind", w.addresses_unbound),
            ("ipset_create", w.sets_created),
            ("ipset_entry_add", w.set_members_added),
            ("ipset_entry_del", w.set_members_deleted),
            ("iptables_restore", w.iptables_restores),
            ("conntrack_entry_delete", w.conntrack_entries_deleted),
        ] {
            self.metrics
                .add_operations(kind, OpResult::Applied, n as u64);
        }
        let mut failed = BTreeMap::<&str, u64>::new();
        for f in &report.failures {
            *failed.entry(failure_kind(f)).or_default() += 1;
        }
        for (kind, n) in failed {
            self.metrics.add_operations(kind, OpResult::Failed, n);
        }
        for run in &report.conntrack {
            self.metrics
                .record_conntrack_cleanup(run.family, run.took, run.deleted);
        }
        for (i, &f) in self.families.iter().enumerate() {
            let ok = !restore_failed(f);
            if !ok {
                self.metrics.inc_iptables_restore_failures(f);
            }
            self.metrics.record_sync(f, took, ok);
            if !ok {
                continue;
            }
            self.health.updated(f);
            let now = SystemTime::now();
            for t in trigger_times.iter().filter(|t| t.family == f) {
                let latency = now.duration_since(t.at).unwrap_or_default();
                self.metrics.observe_network_programming(f, latency);
            }
            let Some(plan) = self.syncer.last_plan().and_then(|p| p.family(f)) else {
                continue;
            };
            let no_local = plan.no_local_endpoints;
            self.metrics
                .set_no_local_endpoints(f, TrafficPolicy::Internal, no_local.internal);
            self.metrics
                .set_no_local_endpoints(f, TrafficPolicy::External, no_local.external);
            self.metrics.set_kernel_objects(
                KernelObject::VirtualServers,
                f,
                plan.ipvs.services.len(),
            );
            self.metrics.set_kernel_objects(
                KernelObject::RealServers,
                f,
                plan.ipvs.destination_count(),
            );
            self.metrics
                .set_kernel_objects(KernelObject::Vips, f, plan.bind_addresses.len());
            let Some(slot) = self.hc.get_mut(i) else {
                continue;
            };
            // Created at the first sync: the planner resolves --nodeport-addresses against
            // the node's addresses; unset, upstream listens on the wildcard.
            let hc = slot.get_or_insert_with(|| {
                let addresses = if self.explicit_hc_addresses {
                    plan.node_port_addresses.clone()
                } else {
                    Vec::new()
                };
                HealthCheckServers::new(f, &addresses, self.health.clone(), self.cancel.clone())
            });
            hc.sync_plan(plan).await;
        }
    }
}

// The `kind` labels of `ipvs_proxier_operations_total` for IPVS writes.
const IPVS_SERVICE_ADD: &str = "ipvs_service_add";
const IPVS_SERVICE_UPDATE: &str = "ipvs_service_update";
const IPVS_SERVICE_DELETE: &str = "ipvs_service_delete";
const IPVS_REAL_SERVER_ADD: &str = "ipvs_real_server_add";
const IPVS_REAL_SERVER_UPDATE: &str = "ipvs_real_server_update";
const IPVS_REAL_SERVER_DELETE: &str = "ipvs_real_server_delete";

/// The `kind` a failed write is counted under: its IPVS operation's; `any` for the other
/// writes (VIPs, ipsets, iptables-restore, conntrack, the dummy link), whose failures the
/// dataplane reports by name only.
fn failure_kind(f: &Failure) -> &'static str {
    match &f.ipvs {
        Some(Operation::AddService(_)) => IPVS_SERVICE_ADD,
        Some(Operation::UpdateService(_)) => IPVS_SERVICE_UPDATE,
        Some(Operation::DeleteService(_)) => IPVS_SERVICE_DELETE,
        Some(Operation::AddDestination(..)) => IPVS_REAL_SERVER_ADD,
        Some(Operation::UpdateDestination(..)) => IPVS_REAL_SERVER_UPDATE,
        Some(Operation::DeleteDestination(..)) => IPVS_REAL_SERVER_DELETE,
        None => "any",
    }
}

/// Each IPVS write the kernel refused, logged with the Service port it was for: the kernel
/// layer's warning names only the virtual server. The other Services are not affected; the
/// sync is retried with backoff.
fn log_refusals(failures: &[Failure], owners: &BTreeMap<ServiceKey, String>) {
    for f in failures {
        let Some(key) = f.virtual_server else {
            continue;
        };
        let service = owners
            .get(&key)
            .map_or("none (stale virtual server)", String::as_str);
        tracing::error!(
            service = %service,
            object = %f.object,
            error = %f.error,
            "the kernel refused a write for this Service; it is retried"
        );
    }
}
