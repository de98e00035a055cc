//! The sync's last step: delete stale UDP conntrack entries ([`crate::stale_flows`]) once the
//! IPVS operations are applied, when the serving endpoints of a UDP service port changed
//! since the last successful cleanup (always on the first sync of a process: anything may
//! have changed while it was down). A failed cleanup is retried by the next sync.

use netlink::AddressFamily;

use super::Syncer;
use crate::dataplane::kernel::{Outcome, family_name};
use crate::model::manifests::Manifests;
use crate::stale_flows::{UdpServing, cleanup_needed, stale_entries};

impl Syncer {
    pub(super) fn clean_stale_flows(&mut self, objects: &Manifests, out: &mut Outcome) {
        let serving = UdpServing::of_objects(objects, &self.options.plan.model_options());
        if !cleanup_needed(self.conntrack_clean_for.as_ref(), &serving) {
            self.conntrack_clean_for = Some(serving);
            return;
        }
        let failures = out.failures.len();
        let families: Vec<AddressFamily> = self.options.plan.families.clone();
        for family in families {
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
            tracing::info!(
                family = family_name(family),
                entries = entries.len(),
                stale = stale.len(),
                deleted = out.writes.conntrack_entries_deleted - before,
                "conntrack cleanup of UDP service ports"
            );
        }
        if out.failures.len() == failures {
            self.conntrack_clean_for = Some(serving);
        }
    }
}
