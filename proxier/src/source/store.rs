//! The object store both sources write and the sync engine reads.
//!
//! One mutex guards the snapshot and the pending changes together, so a reader's
//! [`Objects::take`] always gets a snapshot and exactly the changes that lead to it. The
//! snapshot is an `Arc` swapped copy-on-write: readers hold it as long as they like without
//! blocking writers (a writer clones it only while a reader still holds the old one).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Node;
use netlink::AddressFamily;
use tokio::sync::watch;

use crate::model::objects::Meta;
use crate::model::{ServiceName, ServiceObject, SliceObject};
use crate::plan::incremental::UnitObjects;

/// `namespace/name` of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// The key of an object; `None` if it has no name (the API never sends one). Without a
    /// namespace (manifests may leave it out) it is `default`, as the model names it.
    pub fn of(meta: &Meta) -> Option<Self> {
        Some(Self {
            namespace: meta.namespace_or_default().to_owned(),
            name: meta.name.clone()?,
        })
    }
}

/// The objects the proxier acts on, as last seen (in their compact form: only what the
/// model reads).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub services: BTreeMap<ObjectKey, ServiceObject>,
    pub endpoint_slices: BTreeMap<ObjectKey, SliceObject>,
    /// Our own Node, once seen (topology labels, pod CIDRs).
    pub node: Option<Node>,
    /// The slices of each Service (by their service-name label, the empty name for none),
    /// kept by the store's writes, so a change finds its Service's objects without a scan.
    /// Only the slice names, sorted: a slice's namespace is its Service's (a set per Service
    /// was 6.8 MB of the daemon's peak at 10,000 Services, nearly all of it empty room).
    slices_of: BTreeMap<ServiceName, Vec<String>>,
}

impl Snapshot {
    /// The objects of each named Service (the incremental planner's units), found by key:
    /// the Service object of that name and the slices labelled with it. A name without
    /// objects maps to none (removed).
    pub fn units(&self, names: &BTreeSet<ServiceName>) -> BTreeMap<ServiceName, UnitObjects<'_>> {
        names
            .iter()
            .map(|name| {
                let key = ObjectKey {
                    namespace: name.namespace.clone(),
                    name: name.name.clone(),
                };
                let unit = UnitObjects {
                    services: self.services.get(&key).into_iter().collect(),
                    slices: self
                        .slices_of
                        .get(name)
                        .into_iter()
                        .flatten()
                        .filter_map(|slice| {
                            self.endpoint_slices.get(&ObjectKey {
                                namespace: name.namespace.clone(),
                                name: slice.clone(),
                            })
                        })
                        .collect(),
                };
                (name.clone(), unit)
            })
            .collect()
    }

    fn index_slice(&mut self, key: &ObjectKey, slice: &SliceObject) {
        if let Some(service) = slice_service(slice) {
            let names = self.slices_of.entry(service).or_default();
            if let Err(at) = names.binary_search(&key.name) {
                names.insert(at, key.name.clone());
            }
        }
    }

    fn unindex_slice(&mut self, key: &ObjectKey, slice: &SliceObject) {
        if let Some(service) = slice_service(slice)
            && let Some(names) = self.slices_of.get_mut(&service)
        {
            if let Ok(at) = names.binary_search(&key.name) {
                names.remove(at);
            }
            if names.is_empty() {
                self.slices_of.remove(&service);
            }
        }
    }

    fn reindex_slices(&mut self) {
        let mut pairs: Vec<(ServiceName, String)> = self
            .endpoint_slices
            .iter()
            .filter_map(|(key, slice)| Some((slice_service(slice)?, key.name.clone())))
            .collect();
        pairs.sort_unstable();
        // Grouped in order, so collecting bulk-builds the map with full nodes.
        let mut grouped: Vec<(ServiceName, Vec<String>)> = Vec::new();
        for (service, name) in pairs {
            match grouped.last_mut() {
                Some((last, names)) if *last == service => names.push(name),
                _ => grouped.push((service, vec![name])),
            }
        }
        self.slices_of = grouped.into_iter().collect();
    }
}

/// What changed between two [`Objects::take`] calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Services whose Service object, or one of whose EndpointSlices, was added, changed or
    /// removed. A slice counts for the Service named by its `kubernetes.io/service-name`
    /// label (both the old and the new one if the label changed).
    pub services: BTreeSet<ServiceName>,
    /// Our Node appeared, disappeared, or changed its labels or spec.
    pub node: bool,
    /// Service add, update and delete events that changed a Service (a re-list counts one
    /// per Service it added, changed or removed): kube-proxy's Service changes.
    pub service_events: u64,
    /// The same for EndpointSlices: kube-proxy's Endpoint changes.
    pub endpoint_events: u64,
    /// The `last-change-trigger-time` of every added or changed slice that carries one newer
    /// than the store (deletions carry none, as upstream), for the network programming
    /// latency once a sync has applied them.
    pub trigger_times: Vec<TriggerTime>,
}

/// When the change a slice event carries was triggered (its
/// [`crate::model::objects::LAST_CHANGE_TRIGGER_TIME`] annotation), for the slice's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerTime {
    pub family: AddressFamily,
    pub at: SystemTime,
}

/// A slice's trigger time, if it has a known family and a valid annotation later than
/// `after` (upstream ignores triggers older than the proxier: they measure nothing it did).
pub fn slice_trigger_time(slice: &SliceObject, after: SystemTime) -> Option<TriggerTime> {
    let family = match slice.address_type.as_str() {
        "IPv4" => AddressFamily::Inet,
        "IPv6" => AddressFamily::Inet6,
        _ => return None,
    };
    let at = slice.trigger_time.filter(|at| *at > after)?;
    Some(TriggerTime { family, at })
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && !self.node
    }

    fn merge(&mut self, other: Changes) {
        self.services.extend(other.services);
        self.node |= other.node;
        self.service_events += other.service_events;
        self.endpoint_events += other.endpoint_events;
        self.trigger_times.extend(other.trigger_times);
    }

    fn service_changed(&mut self, key: &ObjectKey) {
        self.services.insert(service_name(key));
        self.service_events += 1;
    }

    /// One slice event that changed something: `old` before, `new` after (`None`: absent).
    fn slice_changed(
        &mut self,
        old: Option<&SliceObject>,
        new: Option<&SliceObject>,
        started: SystemTime,
    ) {
        self.services.extend(old.and_then(slice_service));
        self.services.extend(new.and_then(slice_service));
        self.endpoint_events += 1;
        self.trigger_times
            .extend(new.and_then(|s| slice_trigger_time(s, started)));
    }
}

/// Changes recorded but not yet taken (see [`Objects::pending`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    pub service_events: u64,
    pub endpoint_events: u64,
}

/// The result of [`Objects::take`].
#[derive(Debug, Clone)]
pub struct Update {
    pub snapshot: Arc<Snapshot>,
    /// Changes since the previous `take` (everything is new on the first one).
    pub changes: Changes,
    /// The generation the snapshot belongs to (see [`Objects::subscribe`]).
    pub generation: u64,
}

#[derive(Debug, Default)]
struct State {
    snapshot: Arc<Snapshot>,
    pending: Changes,
    generation: u64,
    services_listed: bool,
    slices_listed: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// When the store was created: older trigger times are ignored.
    started: SystemTime,
    generation: watch::Sender<u64>,
    ready: watch::Sender<bool>,
}

/// Handle on the store: cheap to clone, shared by the source tasks and the sync engine.
#[derive(Debug, Clone)]
pub struct Objects {
    shared: Arc<Shared>,
}

impl Default for Objects {
    fn default() -> Self {
        Self::new()
    }
}

impl Objects {
    /// An empty, not-ready store.
    pub fn new() -> Self {
        Self::started_at(SystemTime::now())
    }

    /// An empty store that ignores trigger times not after `started`.
    pub fn started_at(started: SystemTime) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                started,
                generation: watch::Sender::new(0),
                ready: watch::Sender::new(false),
            }),
        }
    }

    // A panic while holding the lock cannot leave the state half-written in a way that
    // matters more than stopping would: every writer replaces whole entries.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.lock().snapshot)
    }

    /// How many changes wait for the next [`Self::take`].
    pub fn pending(&self) -> Pending {
        let state = self.lock();
        Pending {
            service_events: state.pending.service_events,
            endpoint_events: state.pending.endpoint_events,
        }
    }

    /// The current snapshot and the changes since the previous call (which it clears).
    pub fn take(&self) -> Update {
        let mut state = self.lock();
        Update {
            snapshot: Arc::clone(&state.snapshot),
            changes: std::mem::take(&mut state.pending),
            generation: state.generation,
        }
    }

    /// The generation counter: bumped (and the receiver woken) whenever the snapshot
    /// changes in a way the proxier cares about. Use `changed().await` to wait for work.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// Whether both initial lists (Services and EndpointSlices) are in.
    pub fn is_ready(&self) -> bool {
        *self.shared.ready.borrow()
    }

    /// Waits until [`Self::is_ready`]. Returns at once if it already is.
    pub async fn ready(&self) {
        let mut rx = self.shared.ready.subscribe();
        // The sender lives in `self.shared`, which `self` keeps alive, so this cannot fail.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Upserts a Service (a watch ADDED/MODIFIED event).
    pub(crate) fn apply_service(&self, service: ServiceObject) {
        let Some(key) = ObjectKey::of(&service.metadata) else {
            return;
        };
        self.write(|s, changes| {
            if s.services.get(&key) == Some(&service) {
                return;
            }
            changes.service_changed(&key);
            s.services.insert(key, service);
        });
    }

    /// Removes a Service (a watch DELETED event).
    pub(crate) fn delete_service(&self, key: &ObjectKey) {
        self.write(|s, changes| {
            if s.services.remove(key).is_some() {
                changes.service_changed(key);
            }
        });
    }

    pub(crate) fn apply_slice(&self, slice: SliceObject) {
        let Some(key) = ObjectKey::of(&slice.metadata) else {
            return;
        };
        let started = self.shared.started;
        self.write(|s, changes| {
            let old = s.endpoint_slices.get(&key);
            if old == Some(&slice) {
                return;
            }
            changes.slice_changed(old, Some(&slice), started);
            if let Some(old) = s.endpoint_slices.get(&key).cloned() {
                s.unindex_slice(&key, &old);
            }
            s.index_slice(&key, &slice);
            s.endpoint_slices.insert(key, slice);
        });
    }

    pub(crate) fn delete_slice(&self, key: &ObjectKey) {
        self.write(|s, changes| {
            if let Some(old) = s.endpoint_slices.remove(key) {
                s.unindex_slice(key, &old);
                changes.slice_changed(Some(&old), None, SystemTime::UNIX_EPOCH);
            }
        });
    }

    pub(crate) fn set_node(&self, node: Option<Node>) {
        self.write(|s, changes| {
            changes.node |= !same_node(s.node.as_ref(), node.as_ref());
            s.node = node;
        });
    }

    /// Replaces every Service (a completed re-list): removed ones disappear, only real
    /// differences are reported.
    pub(crate) fn replace_services(&self, services: BTreeMap<ObjectKey, ServiceObject>) {
        self.write(|s, changes| {
            diff_maps(&s.services, &services, |k, _, _| {
                changes.service_changed(k);
            });
            s.services = services;
        });
    }

    pub(crate) fn replace_slices(&self, slices: BTreeMap<ObjectKey, SliceObject>) {
        let started = self.shared.started;
        self.write(|s, changes| {
            diff_maps(&s.endpoint_slices, &slices, |_, old, new| {
                changes.slice_changed(old, new, started);
            });
            s.endpoint_slices = slices;
            s.reindex_slices();
        });
    }

    /// Replaces the whole snapshot at once (the manifests source).
    pub(crate) fn replace_all(&self, snapshot: Snapshot) {
        let Snapshot {
            services,
            endpoint_slices,
            node,
            ..
        } = snapshot;
        let started = self.shared.started;
        self.write(|s, changes| {
            diff_maps(&s.services, &services, |k, _, _| {
                changes.service_changed(k);
            });
            diff_maps(&s.endpoint_slices, &endpoint_slices, |_, old, new| {
                changes.slice_changed(old, new, started)
            });
            changes.node |= !same_node(s.node.as_ref(), node.as_ref());
            s.services = services;
            s.endpoint_slices = endpoint_slices;
            s.node = node;
            s.reindex_slices();
        });
    }

    /// Records that the initial Service list is in.
    pub(crate) fn mark_services_listed(&self) {
        self.mark_listed(|s| s.services_listed = true);
    }

    pub(crate) fn mark_slices_listed(&self) {
        self.mark_listed(|s| s.slices_listed = true);
    }

    fn mark_listed(&self, set: impl FnOnce(&mut State)) {
        let ready = {
            let mut state = self.lock();
            set(&mut state);
            state.services_listed && state.slices_listed
        };
        if ready {
            self.shared
                .ready
                .send_if_modified(|r| !std::mem::replace(r, true));
        }
    }

    /// Runs one write; bumps the generation only if it changed something that matters.
    fn write(&self, f: impl FnOnce(&mut Snapshot, &mut Changes)) {
        let generation = {
            let mut state = self.lock();
            let mut changes = Changes::default();
            f(Arc::make_mut(&mut state.snapshot), &mut changes);
            if changes.is_empty() {
                return;
            }
            state.pending.merge(changes);
            state.generation += 1;
            state.generation
        };
        self.shared.generation.send_replace(generation);
    }
}

fn service_name(key: &ObjectKey) -> ServiceName {
    ServiceName {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

/// The Service a slice counts for, from its `kubernetes.io/service-name` label; a slice
/// without the label counts for the empty name of its namespace (the incremental planner's
/// unit of label-less slices: their diagnostics).
fn slice_service(slice: &SliceObject) -> Option<ServiceName> {
    Some(ServiceName {
        namespace: slice.metadata.namespace_or_default().to_owned(),
        name: slice
            .metadata
            .labels
            .service_name
            .clone()
            .unwrap_or_default(),
    })
}

// Services and slices are "the same" when their compact forms are equal: those hold only
// what the model reads, so a new resourceVersion or managedFields entry alone (status
// heartbeats, metadata churn) is no change and does not wake the sync engine.

/// kube-proxy reacts to Node label changes (topology); pod CIDRs feed the NodeCIDR local
/// detector.
fn same_node(a: Option<&Node>, b: Option<&Node>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.metadata.labels == b.metadata.labels && a.spec == b.spec,
        _ => false,
    }
}

/// Calls `changed` once for every key added, removed or different between `old` and `new`,
/// with the object before and after (`None` where absent).
fn diff_maps<T: PartialEq>(
    old: &BTreeMap<ObjectKey, T>,
    new: &BTreeMap<ObjectKey, T>,
    mut changed: impl FnMut(&ObjectKey, Option<&T>, Option<&T>),
) {
    for (key, old_obj) in old {
        match new.get(key) {
            None => changed(key, Some(old_obj), None),
            Some(new_obj) if old_obj != new_obj => changed(key, Some(old_obj), Some(new_obj)),
            Some(_) => {}
        }
    }
    for (key, new_obj) in new {
        if !old.contains_key(key) {
            changed(key, None, Some(new_obj));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LABEL_SERVICE_NAME;
    use crate::model::objects::{Interner, LAST_CHANGE_TRIGGER_TIME, parse_trigger_time};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(ns: &str, name: &str, rv: &str, ip: &str) -> ServiceObject {
        ServiceObject::from_api(Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                cluster_ip: Some(ip.into()),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn key(ns: &str, name: &str) -> ObjectKey {
        ObjectKey {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn slice(ns: &str, name: &str, service: &str) -> SliceObject {
        SliceObject::from_api(api_slice(ns, name, service), &mut Interner::default())
    }

    fn api_slice(ns: &str, name: &str, service: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: Some([(LABEL_SERVICE_NAME.to_owned(), service.to_owned())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![],
            ports: None,
        }
    }

    fn names(changes: &Changes) -> Vec<String> {
        changes.services.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn ready_needs_both_lists() {
        let o = Objects::new();
        o.mark_services_listed();
        assert!(!o.is_ready());
        o.mark_slices_listed();
        assert!(o.is_ready());
    }

    #[test]
    fn resource_version_only_updates_do_not_wake() {
        let o = Objects::new();
        let rx = o.subscribe();
        o.apply_service(svc("ns", "a", "1", "10.0.0.1"));
        assert_eq!(*rx.borrow(), 1);
        assert_eq!(names(&o.take().changes), ["ns/a"]);
        o.apply_service(svc("ns", "a", "2", "10.0.0.1"));
        assert_eq!(*rx.borrow(), 1);
        assert!(o.take().changes.is_empty());
        let stored: Vec<ServiceObject> = o.snapshot().services.values().cloned().collect();
        assert_eq!(stored, [svc("ns", "a", "2", "10.0.0.1")]);
    }

    #[test]
    fn slice_changes_name_their_service_and_relist_reports_only_differences() {
        let o = Objects::new();
        o.apply_slice(slice("ns", "a-1", "a"));
        o.apply_slice(slice("ns", "b-1", "b"));
        o.apply_service(svc("ns", "c", "1", "10.0.0.3"));
        let _ = o.take();
        // Relabelled slice: both Services are affected.
        o.apply_slice(slice("ns", "a-1", "z"));
        assert_eq!(names(&o.take().changes), ["ns/a", "ns/z"]);
        // Re-list: b-1 gone, a-1 unchanged, c unchanged, d new.
        o.replace_slices(
            [(
                ObjectKey {
                    namespace: "ns".into(),
                    name: "a-1".into(),
                },
                slice("ns", "a-1", "z"),
            )]
            .into(),
        );
        o.replace_services(
            [
                (
                    ObjectKey {
                        namespace: "ns".into(),
                        name: "c".into(),
                    },
                    svc("ns", "c", "9", "10.0.0.3"),
                ),
                (
                    ObjectKey {
                        namespace: "ns".into(),
                        name: "d".into(),
                    },
                    svc("ns", "d", "9", "10.0.0.4"),
                ),
            ]
            .into(),
        );
        assert_eq!(names(&o.take().changes), ["ns/b", "ns/d"]);
        assert_eq!(o.snapshot().endpoint_slices.len(), 1);
    }

    #[test]
    fn a_service_finds_its_slices_by_label_through_every_kind_of_write() {
        let names = |o: &Objects, service: &str| -> Vec<String> {
            let name = ServiceName {
                namespace: "ns".into(),
                name: service.into(),
            };
            let snapshot = o.snapshot();
            let units = snapshot.units(&BTreeSet::from([name.clone()]));
            let unit = &units[&name];
            let mut out: Vec<String> = unit
                .services
                .iter()
                .map(|s| format!("svc {}", s.metadata.name.as_deref().unwrap_or_default()))
                .collect();
            out.extend(
                unit.slices
                    .iter()
                    .map(|s| format!("slice {}", s.metadata.name.as_deref().unwrap_or_default())),
            );
            out
        };
        let o = Objects::new();
        o.apply_service(svc("ns", "a", "1", "10.0.0.1"));
        o.apply_slice(slice("ns", "a-1", "a"));
        o.apply_slice(slice("ns", "a-2", "a"));
        o.apply_slice(slice("ns", "b-1", "b"));
        assert_eq!(names(&o, "a"), ["svc a", "slice a-1", "slice a-2"]);
        // Relabelled: it moves; deleted: it goes.
        o.apply_slice(slice("ns", "a-2", "b"));
        o.delete_slice(&key("ns", "a-1"));
        assert_eq!(names(&o, "a"), ["svc a"]);
        assert_eq!(names(&o, "b"), ["slice a-2", "slice b-1"]);
        // A label-less slice belongs to the empty name of its namespace.
        let mut bare = slice("ns", "x-1", "x");
        bare.metadata.labels.service_name = None;
        o.apply_slice(bare);
        assert_eq!(names(&o, ""), ["slice x-1"]);
        // A re-list replaces the index with the listed slices'.
        o.replace_slices([(key("ns", "c-1"), slice("ns", "c-1", "a"))].into());
        assert_eq!(names(&o, "a"), ["svc a", "slice c-1"]);
        assert!(names(&o, "b").is_empty() && names(&o, "").is_empty());
        // The index is exactly what a rebuild from the slices gives.
        let mut rebuilt = (*o.snapshot()).clone();
        rebuilt.reindex_slices();
        assert_eq!(*o.snapshot(), rebuilt);
    }

    #[test]
    fn held_snapshots_are_not_mutated() {
        let o = Objects::new();
        o.apply_service(svc("ns", "a", "1", "10.0.0.1"));
        let held = o.snapshot();
        o.delete_service(&key("ns", "a"));
        assert_eq!(held.services.len(), 1);
        assert!(o.snapshot().services.is_empty());
    }

    fn annotated(ns: &str, name: &str, service: &str, trigger: &str) -> SliceObject {
        let mut s = api_slice(ns, name, service);
        s.metadata.annotations =
            Some([(LAST_CHANGE_TRIGGER_TIME.to_owned(), trigger.to_owned())].into());
        SliceObject::from_api(s, &mut Interner::default())
    }

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    #[test]
    fn trigger_times_parse_rfc3339_only() {
        let t = parse_trigger_time("2024-05-01T10:00:00Z").map(secs);
        assert_eq!(t, Some(1_714_557_600));
        assert_eq!(
            parse_trigger_time("2024-05-01T12:00:00+02:00").map(secs),
            Some(1_714_557_600)
        );
        let frac = parse_trigger_time("2024-05-01T10:00:00.5Z")
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
        assert_eq!(frac.map(|d| d.subsec_millis()), Some(500));
        for bad in ["", "yesterday", "2024-05-01", "1714557600"] {
            assert_eq!(parse_trigger_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn slice_trigger_time_needs_a_family_and_a_time_after_the_start() {
        let start = parse_trigger_time("2024-05-01T10:00:00Z").unwrap();
        let s = annotated("ns", "a-1", "a", "2024-05-01T10:00:05Z");
        let t = slice_trigger_time(&s, start).unwrap();
        assert_eq!((t.family, secs(t.at)), (AddressFamily::Inet, 1_714_557_605));
        let mut v6 = s.clone();
        v6.address_type = "IPv6".into();
        assert_eq!(
            slice_trigger_time(&v6, start).map(|t| t.family),
            Some(AddressFamily::Inet6)
        );
        let mut fqdn = s.clone();
        fqdn.address_type = "FQDN".into();
        assert_eq!(slice_trigger_time(&fqdn, start), None);
        let old = annotated("ns", "a-1", "a", "2024-05-01T09:59:59Z");
        assert_eq!(slice_trigger_time(&old, start), None);
        assert_eq!(slice_trigger_time(&slice("ns", "a-1", "a"), start), None);
        let bad = annotated("ns", "a-1", "a", "soon");
        assert_eq!(slice_trigger_time(&bad, start), None);
    }

    #[test]
    fn service_and_slice_events_are_counted_separately_until_taken() {
        let start = parse_trigger_time("2024-05-01T10:00:00Z").unwrap();
        let o = Objects::started_at(start);
        o.apply_service(svc("ns", "a", "1", "10.0.0.1"));
        o.apply_service(svc("ns", "a", "2", "10.0.0.2"));
        o.apply_service(svc("ns", "a", "3", "10.0.0.2")); // no change: not counted
        o.apply_slice(annotated("ns", "a-1", "a", "2024-05-01T10:00:01Z"));
        o.apply_slice(annotated("ns", "a-1", "a", "2024-05-01T10:00:01Z")); // same
        let pending = o.pending();
        assert_eq!(
            pending,
            Pending {
                service_events: 2,
                endpoint_events: 1
            }
        );
        let changes = o.take().changes;
        assert_eq!((changes.service_events, changes.endpoint_events), (2, 1));
        assert_eq!(changes.trigger_times.len(), 1);
        assert_eq!(o.pending(), Pending::default());

        // Deletions count but carry no trigger time; re-lists count one per changed key.
        o.delete_slice(&key("ns", "a-1"));
        o.delete_service(&key("ns", "a"));
        o.replace_slices(
            [(
                ObjectKey {
                    namespace: "ns".into(),
                    name: "b-1".into(),
                },
                annotated("ns", "b-1", "b", "2024-05-01T10:00:09Z"),
            )]
            .into(),
        );
        let changes = o.take().changes;
        assert_eq!((changes.service_events, changes.endpoint_events), (1, 2));
        assert_eq!(
            changes
                .trigger_times
                .iter()
                .map(|t| secs(t.at))
                .collect::<Vec<_>>(),
            [1_714_557_609]
        );
        // A manifests reload: one changed slice (b-1 relabelled), one new Service.
        o.replace_all(Snapshot {
            services: [(
                ObjectKey {
                    namespace: "ns".into(),
                    name: "c".into(),
                },
                svc("ns", "c", "1", "10.0.0.3"),
            )]
            .into(),
            endpoint_slices: [(
                ObjectKey {
                    namespace: "ns".into(),
                    name: "b-1".into(),
                },
                slice("ns", "b-1", "c"),
            )]
            .into(),
            node: None,
            ..Snapshot::default()
        });
        let changes = o.take().changes;
        assert_eq!((changes.service_events, changes.endpoint_events), (1, 1));
        assert!(changes.trigger_times.is_empty());
    }
}
