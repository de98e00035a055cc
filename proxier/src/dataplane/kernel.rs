//! The kernel as the sync engine sees it: one [`Kernel`] owns the IPVS, rtnetlink and ipset
//! sockets, the iptables tools of each family and the sysctl root. It observes the node's
//! state in as few reads as the protocols allow and applies changes decided elsewhere (the
//! pure `diff` and `sync` modules), with the batch APIs, counting every write by kind.
//!
//! A failure of one object (a virtual server, a VIP, a set, a family's restore) is logged with
//! the object's name and recorded as a [`Failure`]; it never stops the other objects.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use netlink::AddressFamily;
use netlink::conntrack::{ConntrackError, ConntrackHandle, Entry};
use netlink::ipset::{IpsetError, IpsetHandle, Member, SetType};
use netlink::ipvs::{
    DestinationKey, ErrorKind, IpvsError, IpvsHandle, Operation, ServiceEntry, ServiceKey, Table,
    VirtualServer,
};
use netlink::link::{LinkError, Links, LocalAddress};

use super::iptables::{BackendChoice, Iptables, IptablesError};
use super::sysctl::{SysctlError, Sysctls};
use crate::diff::SetChange;

/// A failure that leaves the kernel unobservable or unusable (as opposed to the failure of
/// one object, which is a [`Failure`]).
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("IPVS: {0}")]
    Ipvs(#[from] IpvsError),
    #[error("links: {0}")]
    Link(#[from] LinkError),
    #[error("ipset: {0}")]
    Ipset(#[from] IpsetError),
    #[error("iptables ({}): {source}", family_name(*.family))]
    Iptables {
        family: AddressFamily,
        #[source]
        source: IptablesError,
    },
    #[error("sysctl: {0}")]
    Sysctl(#[from] SysctlError),
    #[error("{0}")]
    Conntrack(#[from] ConntrackError),
}

/// Most IPVS service dumps one observation makes while they disagree
/// ([`Kernel::stable_service_dump`]).
const MAX_SERVICE_DUMPS: usize = 5;

/// `IPv4` or `IPv6`, as kube-proxy names families.
pub const fn family_name(family: AddressFamily) -> &'static str {
    match family {
        AddressFamily::Inet => "IPv4",
        AddressFamily::Inet6 => "IPv6",
    }
}

/// One object that could not be written, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What was being done to which object, e.g. `add real server 10.0.0.2:80 to
    /// 10.96.0.1:80/TCP`, `bind 10.96.0.1 on kube-ipvs0`, `ipset add KUBE-CLUSTER-IP`.
    pub object: String,
    pub error: String,
    /// The virtual server of a failed IPVS operation, so the daemon can name the Service
    /// behind it.
    pub virtual_server: Option<ServiceKey>,
    /// The failed IPVS operation, so the daemon can count the failure under its kind.
    pub ipvs: Option<Operation>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.error)
    }
}

/// Successful kernel writes of one sync, by kind. Reads are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounts {
    pub sysctls: usize,
    pub links_created: usize,
    pub addresses_bound: usize,
    pub addresses_unbound: usize,
    pub sets_created: usize,
    pub set_members_added: usize,
    pub set_members_deleted: usize,
    pub iptables_restores: usize,
    pub services_added: usize,
    pub services_updated: usize,
    pub services_deleted: usize,
    pub real_servers_added: usize,
    pub real_servers_updated: usize,
    pub real_servers_deleted: usize,
    /// Stale UDP conntrack entries deleted.
    pub conntrack_entries_deleted: usize,
}

impl WriteCounts {
    pub fn total(&self) -> usize {
        self.sysctls
            + self.links_created
            + self.addresses_bound
            + self.addresses_unbound
            + self.sets_created
            + self.set_members_added
            + self.set_members_deleted
            + self.iptables_restores
            + self.services_added
            + self.services_updated
            + self.services_deleted
            + self.real_servers_added
            + self.real_servers_updated
            + self.real_servers_deleted
            + self.conntrack_entries_deleted
    }

    fn count_ipvs(&mut self, op: &Operation) {
        match op {
            Operation::AddService(_) => self.services_added += 1,
            Operation::UpdateService(_) => self.services_updated += 1,
            Operation::DeleteService(_) => self.services_deleted += 1,
            Operation::AddDestination(..) => self.real_servers_added += 1,
            Operation::UpdateDestination(..) => self.real_servers_updated += 1,
            Operation::DeleteDestination(..) => self.real_servers_deleted += 1,
        }
    }
}

impl fmt::Display for WriteCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} writes: sysctls={} links={} bind={} unbind={} sets-created={} set-add={} \
             set-del={} iptables-restores={} vs-add={} vs-update={} vs-del={} rs-add={} \
             rs-update={} rs-del={} conntrack-del={}",
            self.total(),
            self.sysctls,
            self.links_created,
            self.addresses_bound,
            self.addresses_unbound,
            self.sets_created,
            self.set_members_added,
            self.set_members_deleted,
            self.iptables_restores,
            self.services_added,
            self.services_updated,
            self.services_deleted,
            self.real_servers_added,
            self.real_servers_updated,
            self.real_servers_deleted,
            self.conntrack_entries_deleted
        )
    }
}

/// What a sync's writes did: counts of what succeeded, and what failed by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub writes: WriteCounts,
    pub failures: Vec<Failure>,
    /// The kernel disagreed with what the sync observed (an add found the object there, an
    /// update or delete found it gone) and the write was redone as what the kernel holds
    /// needed. The observation is not a view to cache.
    pub observation_stale: bool,
}

impl Outcome {
    pub(crate) fn fail(&mut self, object: String, error: impl fmt::Display) {
        self.push_failure(object, error, None);
    }

    fn fail_ipvs(&mut self, op: &Operation, error: impl fmt::Display) {
        self.push_failure(op.describe(), error, Some(op));
    }

    fn push_failure(&mut self, object: String, error: impl fmt::Display, ipvs: Option<&Operation>) {
        let error = error.to_string();
        tracing::warn!(object = %object, error = %error, "kernel write failed");
        self.failures.push(Failure {
            object,
            error,
            virtual_server: ipvs.map(Operation::service_key),
            ipvs: ipvs.cloned(),
        });
    }

    /// No failure, and the observation matched the kernel: the state after this sync is the
    /// observation with the writes applied.
    pub fn clean(&self) -> bool {
        self.failures.is_empty() && !self.observation_stale
    }
}

/// A real server's connection counters, as IPVS reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Connections {
    pub active: u32,
    pub inactive: u32,
}

/// The node's state, read at the start of a sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Every virtual server with its real servers (all families; ownership is the diff's job).
    pub ipvs: Table,
    /// Connection counters of the real servers that have connections (absent = none).
    pub connections: BTreeMap<(ServiceKey, DestinationKey), Connections>,
    /// The dummy link's index, when it exists.
    pub dummy_index: Option<u32>,
    /// Addresses on the dummy link.
    pub bound: BTreeSet<IpAddr>,
    /// Every other address of the node.
    pub node_addresses: Vec<LocalAddress>,
    /// Members of each of the asked-for sets that exists.
    pub ipsets: BTreeMap<String, BTreeSet<Member>>,
}

/// Handles on the node's kernel. Its sockets live in the network namespace of the thread
/// that called [`Kernel::open`].
#[derive(Debug)]
pub struct Kernel {
    ipvs: IpvsHandle,
    links: Links,
    ipset: IpsetHandle,
    conntrack: ConntrackHandle,
    iptables: Vec<Iptables>,
    sysctls: Sysctls,
    dummy: String,
}

/// How to reach the kernel.
#[derive(Debug, Clone)]
pub struct KernelOptions {
    pub families: Vec<AddressFamily>,
    pub iptables_backend: BackendChoice,
    /// `/proc/sys` on a real node.
    pub sysctl_root: PathBuf,
    /// `kube-ipvs0`.
    pub dummy: String,
}

impl Kernel {
    /// Opens every handle (needs a tokio runtime) and detects each family's iptables.
    pub async fn open(options: &KernelOptions) -> Result<Self, KernelError> {
        let ipvs = IpvsHandle::connect().await?;
        let links = Links::new()?;
        let ipset = IpsetHandle::new()?;
        let conntrack = ConntrackHandle::new()?;
        let iptables = options
            .families
            .iter()
            .map(|&family| {
                Iptables::detect(family, options.iptables_backend)
                    .map_err(|source| KernelError::Iptables { family, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            ipvs,
            links,
            ipset,
            conntrack,
            iptables,
            sysctls: Sysctls::new(options.sysctl_root.clone()),
            dummy: options.dummy.clone(),
        })
    }

    /// Whether every family's iptables supports `MASQUERADE --random-fully`.
    pub fn random_fully(&self) -> bool {
        self.iptables.iter().all(Iptables::has_random_fully)
    }

    /// The dummy link's name.
    pub fn dummy(&self) -> &str {
        &self.dummy
    }

    /// Sets the sysctls IPVS mode needs (only those that differ).
    pub fn ensure_sysctls(&self, strict_arp: bool, out: &mut Outcome) -> Result<(), KernelError> {
        out.writes.sysctls += self.sysctls.ensure_ipvs(strict_arp)?.len();
        Ok(())
    }

    /// The IPVS service list, dumped until two dumps in a row list the same services. The
    /// kernel resumes a multi-part dump at an index that counts the services of every network
    /// namespace, so another namespace adding or deleting services meanwhile (other nodes of
    /// a kind cluster, other lab cases) makes one dump skip or repeat some of ours. A sync
    /// that trusted such a dump would re-add what exists (answered by the stale-view
    /// recovery, but with writes) or miss stale services. Small tables fit one message and
    /// agree at once: the cost is one extra service dump per full sync.
    async fn stable_service_dump(&mut self) -> Result<Vec<ServiceEntry>, KernelError> {
        let keys = |entries: &[ServiceEntry]| {
            let mut k: Vec<ServiceKey> = entries.iter().map(|e| e.service.key).collect();
            k.sort();
            k
        };
        let mut last = self.ipvs.dump_services().await?;
        for _ in 1..MAX_SERVICE_DUMPS {
            let again = self.ipvs.dump_services().await?;
            if keys(&again) == keys(&last) {
                return Ok(again);
            }
            tracing::debug!("IPVS service dumps differ (another namespace changed); reading again");
            last = again;
        }
        Ok(last)
    }

    /// Reads the state: one IPVS service dump plus one real-server dump per virtual server
    /// (the protocol has no "all real servers" dump), one link lookup, one address dump, one
    /// ipset name listing plus one listing per set of `sets` that exists.
    pub async fn observe(&mut self, sets: &[String]) -> Result<Observed, KernelError> {
        let mut observed = self.observe_node(sets).await?;
        self.observe_ipvs(&mut observed, &[]).await?;
        Ok(observed)
    }

    /// [`Self::observe`] without the IPVS table: the dummy link, the addresses and the sets.
    pub async fn observe_node(&mut self, sets: &[String]) -> Result<Observed, KernelError> {
        let mut observed = Observed {
            dummy_index: self.links.index_of(&self.dummy).await?,
            ..Observed::default()
        };
        let addresses = self.links.addresses().await?;
        for a in addresses {
            if Some(a.ifindex) == observed.dummy_index {
                observed.bound.insert(a.addr);
            } else {
                observed.node_addresses.push(a);
            }
        }

        let existing: BTreeSet<String> = self.ipset.list_names()?.into_iter().collect();
        for name in sets.iter().filter(|n| existing.contains(*n)) {
            let listing = self.ipset.list(name)?;
            observed
                .ipsets
                .insert(name.clone(), listing.members.into_iter().collect());
        }
        Ok(observed)
    }

    /// The IPVS part of [`Self::observe`], into `observed`. A virtual server whose real
    /// servers equal those of the same key in `desired` shares that map instead of keeping
    /// its own: a full sync reads back ~100,000 real servers the plan already holds, and a
    /// second copy would be its memory peak.
    pub async fn observe_ipvs(
        &mut self,
        observed: &mut Observed,
        desired: &[&Table],
    ) -> Result<(), KernelError> {
        for entry in self.stable_service_dump().await? {
            let key = entry.service.key;
            let mut vs = VirtualServer::new(entry.service);
            for d in self.ipvs.dump_destinations(&key).await? {
                let dkey = d.destination.key();
                // Only non-zero counters are kept: a missing entry reads as zero, and most
                // of 100,000 real servers are idle at any moment.
                if d.active_conns != 0 || d.inactive_conns != 0 {
                    observed.connections.insert(
                        (key, dkey),
                        Connections {
                            active: d.active_conns,
                            inactive: d.inactive_conns,
                        },
                    );
                }
                vs.destinations_mut().insert(dkey, d.destination);
            }
            if let Some(want) = desired.iter().find_map(|t| t.services.get(&key))
                && want.destinations == vs.destinations
            {
                vs.destinations = Arc::clone(&want.destinations);
            }
            observed.ipvs.services.insert(key, vs);
        }
        Ok(())
    }

    /// One virtual server as the kernel holds it now, with its real servers and their
    /// connection counters (one get and one dump), or `None` when it does not exist.
    pub async fn observe_service(
        &mut self,
        key: &ServiceKey,
    ) -> Result<Option<(VirtualServer, BTreeMap<DestinationKey, Connections>)>, KernelError> {
        let Some(entry) = self.ipvs.get_service(key).await? else {
            return Ok(None);
        };
        let entries = match self.ipvs.dump_destinations(key).await {
            Ok(e) => e,
            Err(e) if e.kind() == Some(netlink::ipvs::ErrorKind::NoSuchService) => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let mut vs = VirtualServer::new(entry.service);
        let mut connections = BTreeMap::new();
        for d in entries {
            let dkey = d.destination.key();
            if d.active_conns != 0 || d.inactive_conns != 0 {
                connections.insert(
                    dkey,
                    Connections {
                        active: d.active_conns,
                        inactive: d.inactive_conns,
                    },
                );
            }
            vs.destinations_mut().insert(dkey, d.destination);
        }
        Ok(Some((vs, connections)))
    }

    /// Connection counters of every real server of `services` (one dump each); a service
    /// that no longer exists contributes nothing.
    pub async fn connections_of(
        &mut self,
        services: &[ServiceKey],
    ) -> Result<BTreeMap<(ServiceKey, DestinationKey), Connections>, KernelError> {
        let mut out = BTreeMap::new();
        for key in services {
            let entries = match self.ipvs.dump_destinations(key).await {
                Ok(e) => e,
                Err(e) if e.kind() == Some(netlink::ipvs::ErrorKind::NoSuchService) => continue,
                Err(e) => return Err(e.into()),
            };
            for d in entries {
                out.insert(
                    (*key, d.destination.key()),
                    Connections {
                        active: d.active_conns,
                        inactive: d.inactive_conns,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Creates the dummy link if `index` is `None`; returns its index.
    pub async fn ensure_dummy(&self, index: Option<u32>, out: &mut Outcome) -> Option<u32> {
        if index.is_some() {
            return index;
        }
        match self.links.ensure_dummy(&self.dummy).await {
            Ok(i) => {
                out.writes.links_created += 1;
                tracing::info!(link = %self.dummy, ifindex = i, "created dummy link");
                Some(i)
            }
            Err(e) => {
                out.fail(format!("create link {}", self.dummy), e);
                None
            }
        }
    }

    /// Binds each address (host prefix) on the dummy link.
    pub async fn bind(&self, ifindex: u32, addrs: &[IpAddr], out: &mut Outcome) {
        for addr in addrs {
            match self.links.bind(ifindex, *addr).await {
                Ok(true) => out.writes.addresses_bound += 1,
                Ok(false) => {}
                Err(e) => out.fail(format!("bind {addr} on {}", self.dummy), e),
            }
        }
    }

    /// Removes each address from the dummy link.
    pub async fn unbind(&self, ifindex: u32, addrs: &[IpAddr], out: &mut Outcome) {
        for addr in addrs {
            match self.links.unbind(ifindex, *addr).await {
                Ok(true) => out.writes.addresses_unbound += 1,
                Ok(false) => {}
                Err(e) => out.fail(format!("unbind {addr} from {}", self.dummy), e),
            }
        }
    }

    /// Applies set changes: create, then one delete batch, then one add batch per set.
    /// Returns the names of the sets that could not be created.
    pub fn apply_ipsets(&mut self, changes: &[SetChange], out: &mut Outcome) -> Vec<String> {
        let mut missing = Vec::new();
        for c in changes {
            let name = &c.spec.name;
            if c.create {
                match self.ipset.create(&c.spec) {
                    Ok(()) => out.writes.sets_created += 1,
                    Err(e) => {
                        out.fail(format!("ipset create {name}"), e);
                        missing.push(name.clone());
                        continue;
                    }
                }
            }
            if !c.del.is_empty() {
                let failed = member_batch(&mut self.ipset, "del", name, c.spec.kind, &c.del, out);
                out.writes.set_members_deleted += c.del.len() - failed;
            }
            if !c.add.is_empty() {
                let failed = member_batch(&mut self.ipset, "add", name, c.spec.kind, &c.add, out);
                out.writes.set_members_added += c.add.len() - failed;
            }
        }
        missing
    }

    /// One `iptables-save` and, when the rules differ, one `iptables-restore` for `family`.
    /// Returns whether the family's rules are in place.
    pub fn apply_iptables(&self, family: AddressFamily, rules: &str, out: &mut Outcome) -> bool {
        let Some(ipt) = self.iptables.iter().find(|i| i.family() == family) else {
            out.fail(
                format!("iptables-restore {}", family_name(family)),
                "no iptables for this family",
            );
            return false;
        };
        match ipt.sync(rules) {
            Ok(o) => {
                if o.restored {
                    out.writes.iptables_restores += 1;
                }
                if !o.report.jumps_added.is_empty() || o.report.duplicates_removed > 0 {
                    tracing::info!(
                        family = family_name(family),
                        jumps_added = o.report.jumps_added.len(),
                        duplicates_removed = o.report.duplicates_removed,
                        "repaired jump rules"
                    );
                }
                true
            }
            Err(e) => {
                out.fail(format!("iptables-restore {}", family_name(family)), e);
                false
            }
        }
    }

    /// Applies IPVS operations in one batch (chunked by the handle), in order.
    pub async fn apply_ipvs(&mut self, ops: &[Operation], out: &mut Outcome) {
        if ops.is_empty() {
            return;
        }
        let results = self.ipvs.apply(ops).await;
        let mut redo = Vec::new();
        for (op, result) in ops.iter().zip(results) {
            match result {
                Ok(()) => out.writes.count_ipvs(op),
                Err(e) => match e.kind().and_then(|kind| stale_view_recovery(op, kind)) {
                    Some(Recovery::Done) => {
                        tracing::info!(object = %op.describe(), "already as desired in the kernel");
                        out.observation_stale = true;
                    }
                    Some(Recovery::Redo(again)) => {
                        tracing::info!(
                            object = %op.describe(), error = %e,
                            "the kernel differs from what this sync read; writing it again"
                        );
                        out.observation_stale = true;
                        redo.push(again);
                    }
                    None => out.fail_ipvs(op, e),
                },
            }
        }
        if redo.is_empty() {
            return;
        }
        // In order: a redone service add comes before the redone real servers under it.
        let results = self.ipvs.apply(&redo).await;
        for (op, result) in redo.iter().zip(results) {
            match result {
                Ok(()) => out.writes.count_ipvs(op),
                Err(e) => out.fail_ipvs(op, e),
            }
        }
    }
}

impl Kernel {
    /// Every conntrack entry of `family` (one dump).
    pub fn conntrack_entries(&mut self, family: AddressFamily) -> Result<Vec<Entry>, KernelError> {
        Ok(self.conntrack.dump(family)?)
    }

    /// Deletes conntrack entries (each by tuple and id, in batches); an entry already gone
    /// counts as neither a write nor a failure.
    pub fn delete_conntrack(&mut self, entries: &[Entry], out: &mut Outcome) {
        if entries.is_empty() {
            return;
        }
        match self.conntrack.delete(entries) {
            Ok(report) => {
                out.writes.conntrack_entries_deleted += report.deleted;
                for (e, errno) in report.failed {
                    out.fail(
                        describe_entry("delete conntrack entry", &e),
                        std::io::Error::from_raw_os_error(errno),
                    );
                }
            }
            Err(e) => out.fail(format!("delete {} conntrack entries", entries.len()), e),
        }
    }
}

/// `udp 10.0.0.1:40000 -> 10.96.0.10:53 (reply from 10.244.0.5:53)`.
pub fn describe_entry(what: &str, e: &Entry) -> String {
    let port = |p: Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{what} proto {} {}{} -> {}{} (reply from {}{})",
        e.orig.protocol,
        e.orig.src,
        port(e.orig.src_port),
        e.orig.dst,
        port(e.orig.dst_port),
        e.reply.src,
        port(e.reply.src_port)
    )
}

/// What to do about an IPVS write the kernel refused because its object is not in the state
/// the sync observed. The kernel's service dump is not a snapshot: its resume index counts
/// the services of every network namespace, so a change in another namespace between two
/// parts of a dump can repeat or skip a service. A skipped service is then added again
/// (EEXIST); redoing the write as an update converges in the same sync instead of a retry.
#[derive(Debug, PartialEq, Eq)]
enum Recovery {
    /// The kernel already holds what the write wanted.
    Done,
    /// Write this instead.
    Redo(Operation),
}

fn stale_view_recovery(op: &Operation, kind: ErrorKind) -> Option<Recovery> {
    use ErrorKind::{AlreadyExists, NoSuchService, NotFound};
    Some(match (op, kind) {
        (Operation::AddService(s), AlreadyExists) => {
            Recovery::Redo(Operation::UpdateService(s.clone()))
        }
        (Operation::UpdateService(s), NoSuchService) => {
            Recovery::Redo(Operation::AddService(s.clone()))
        }
        (Operation::AddDestination(k, d), AlreadyExists) => {
            Recovery::Redo(Operation::UpdateDestination(*k, d.clone()))
        }
        // Under a service that was gone too: its redone add precedes this in the redo batch.
        (Operation::UpdateDestination(k, d), NotFound | NoSuchService) => {
            Recovery::Redo(Operation::AddDestination(*k, d.clone()))
        }
        (Operation::DeleteService(_), NoSuchService)
        | (Operation::DeleteDestination(..), NotFound | NoSuchService) => Recovery::Done,
        _ => return None,
    })
}

/// One add or delete batch; returns how many members failed (each recorded by name).
fn member_batch(
    ipset: &mut IpsetHandle,
    op: &'static str,
    set: &str,
    kind: SetType,
    members: &[Member],
    out: &mut Outcome,
) -> usize {
    let result = match op {
        "del" => ipset.del(set, kind, members),
        _ => ipset.add(set, kind, members),
    };
    match result {
        Ok(()) => 0,
        Err(IpsetError::Elements { failures, .. }) => {
            let mut failed = 0;
            for f in &failures {
                let object = match f.not_tried {
                    0 => format!("ipset {op} {set} {}", f.element),
                    n => format!("ipset {op} {set} {} (and {n} more not tried)", f.element),
                };
                out.fail(object, &f.message);
                failed += 1 + f.not_tried;
            }
            failed.min(members.len())
        }
        Err(e) => {
            out.fail(format!("ipset {op} {set}"), e);
            members.len()
        }
    }
}

#[cfg(test)]
mod tests {
    use netlink::Protocol;
    use netlink::ipvs::{Destination, Scheduler, Service};

    use super::*;

    #[test]
    fn writes_refused_for_a_stale_read_are_redone_as_the_kernel_needs() {
        let key = ServiceKey::Inet {
            protocol: Protocol::Tcp,
            addr: [10, 96, 0, 1].into(),
            port: 80,
        };
        let service = Service::new(key, Scheduler::rr());
        let rs = Destination::masq([10, 244, 0, 2].into(), 8080);
        let redo = |op: Operation, kind| stale_view_recovery(&op, kind);
        use ErrorKind::*;
        assert_eq!(
            redo(
                Operation::AddService(Box::new(service.clone())),
                AlreadyExists
            ),
            Some(Recovery::Redo(Operation::UpdateService(Box::new(
                service.clone()
            ))))
        );
        assert_eq!(
            redo(
                Operation::UpdateService(Box::new(service.clone())),
                NoSuchService
            ),
            Some(Recovery::Redo(Operation::AddService(Box::new(
                service.clone()
            ))))
        );
        assert_eq!(
            redo(Operation::AddDestination(key, rs.clone()), AlreadyExists),
            Some(Recovery::Redo(Operation::UpdateDestination(
                key,
                rs.clone()
            )))
        );
        assert_eq!(
            redo(Operation::UpdateDestination(key, rs.clone()), NotFound),
            Some(Recovery::Redo(Operation::AddDestination(key, rs.clone())))
        );
        assert_eq!(
            redo(Operation::UpdateDestination(key, rs.clone()), NoSuchService),
            Some(Recovery::Redo(Operation::AddDestination(key, rs.clone())))
        );
        assert_eq!(
            redo(Operation::DeleteService(key), NoSuchService),
            Some(Recovery::Done)
        );
        assert_eq!(
            redo(Operation::DeleteDestination(key, rs.key()), NoSuchService),
            Some(Recovery::Done)
        );
        // Refusals that say nothing about a stale read stay failures.
        assert_eq!(
            redo(
                Operation::AddService(Box::new(service.clone())),
                UnknownScheduler
            ),
            None
        );
        assert_eq!(
            redo(Operation::AddDestination(key, rs.clone()), InvalidArgument),
            None
        );
        // A real server add under a service that is gone is a real failure: the service add
        // before it in the batch failed, or someone deleted it and it must be re-added first.
        assert_eq!(
            redo(Operation::AddDestination(key, rs), NoSuchService),
            None
        );
    }
}
