//! The sync's last step: delete stale UDP conntrack entries ([`crate::stale_flows`]) once the
//! IPVS operations are applied, when the serving endpoints of a UDP service port changed
//! since the last successful cleanup (always on the first sync of a process: anything may
//! have changed while it was down). A failed cleanup is retried by the next sync.

use std::time::{Duration, Instant};

use netlink::AddressFamily;

use super::Syncer;
use crate::dataplane::kernel::{Outcome, family_name};
use crate::model::manifests::ObjectRefs;
use crate::stale_flows::{UdpServing, cleanup_needed, stale_entries};

/// One family's cleanup in a sync (upstream's reconciler metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackRun {
    pub family: AddressFamily,
    pub took: Duration,
    /// Entries this cleanup deleted (not those already gone).
    pub deleted: usize,
}

impl Syncer {
    /// Runs the cleanup when needed; returns what each family's run did (empty when none ran).
    pub(super) fn clean_stale_flows(
        &mut self,
        objects: ObjectRefs<'_>,
        out: &mut Outcome,
    ) -> Vec<ConntrackRun> {
        let serving = UdpServing::of_objects(objects, &self.options.plan.model_options());
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
