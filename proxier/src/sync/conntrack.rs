//! The sync's last step: delete stale UDP conntrack entries ([`crate::stale_flows`]) once the
//! IPVS operations are applied, when the serving endpoints of a UDP service port changed
//! since the last successful cleanup (always on the first sync of a process: anything may
//! have changed while it was down). A failed cleanup is retried by the next sync.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use netlink::AddressFamily;

use super::Syncer;
use crate::dataplane::kernel::{Outcome, family_name};
use crate::model::ServiceName;
use crate::model::manifests::ObjectRefs;
use crate::plan::incremental::UnitObjects;
use crate::stale_flows::{UdpServing, cleanup_needed, stale_entries};

/// One family's cleanup in a sync (upstream's reconciler metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackRun {
    pub family: AddressFamily,
    pub took: Duration,
    /// Entries this cleanup deleted (not those already gone).
    pub deleted: usize,
}

/// What the serving endpoints of the UDP service ports are computed from.
pub(super) enum FlowInput<'a, 'o> {
    /// Every object (a full sync).
    All(ObjectRefs<'a>),
    /// The objects of the Services that changed since the last sync; the others' part is
    /// the last sync's.
    Units(&'a BTreeMap<ServiceName, UnitObjects<'o>>),
}

impl Syncer {
    /// Runs the cleanup when needed; returns what each family's run did (empty when none ran).
    pub(super) fn clean_stale_flows(
        &mut self,
        input: FlowInput<'_, '_>,
        out: &mut Outcome,
    ) -> Vec<ConntrackRun> {
        let options = self.options.plan.model_options();
        match input {
            FlowInput::All(objects) => {
                self.udp_serving = UdpServing::by_service(objects, &options);
            }
            FlowInput::Units(units) => {
                for (name, unit) in units {
                    match UdpServing::of_unit(unit, &options) {
                        Some(serving) => self.udp_serving.insert(name.clone(), serving),
                        None => self.udp_serving.remove(name),
                    };
                }
            }
        }
        let serving = UdpServing::merged(self.udp_serving.values());
        if !cleanup_needed(self.conntrack_clean_for.as_ref(), &serving) {
            self.conntrack_clean_for = Some(serving);
            return Vec::new();
        }
        let mut runs = Vec::new();
        let failures = out.failures.len();
        let families: Vec<AddressFamily> = self.options.plan.families.clone();
        for family in families {
            let started = Instant::now();
            let entries = match self.kernel.conntrack_entries(family) {
                Ok(e) => e,
                Err(e) => {
                    out.fail(format!("conntrack dump {}", family_name(family)), e);
                    continue;
                }
            };
            let stale = stale_entries(&entries, &serving);
            let before = out.writes.conntrack_entries_deleted;
            self.kernel.delete_conntrack(&stale, out);
            let run = ConntrackRun {
                family,
                took: started.elapsed(),
                deleted: out.writes.conntrack_entries_deleted - before,
            };
            tracing::info!(
                family = family_name(family),
                entries = entries.len(),
                stale = stale.len(),
                deleted = run.deleted,
                took_ms = run.took.as_secs_f64() * 1e3,
                "conntrack cleanup of UDP service ports"
            );
            runs.push(run);
        }
        if out.failures.len() == failures {
            self.conntrack_clean_for = Some(serving);
        }
        runs
    }
}
