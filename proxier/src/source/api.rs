//! The API server source: list/watch of Services, EndpointSlices (discovery.k8s.io/v1) and
//! our own Node with `kube::runtime::watcher`, written into an [`Objects`] store.
//!
//! Owns the client construction from kube-proxy's settings and the informer selectors
//! kube-proxy uses (`cmd/kube-proxy/app/server.go`): objects handed to another proxy by
//! `service.kubernetes.io/service-proxy-name`, and slices of headless Services, are never
//! even fetched.
//!
//! Failure handling: `watcher` re-watches from the last resourceVersion after a dropped
//! connection and re-lists after `410 Gone`; `default_backoff` spaces retries (0.8 s
//! doubling to 30 s, as client-go's reflector). Errors are logged and never touch the
//! store. A re-list is buffered from `Init` to `InitDone` and swapped in at once, so
//! objects deleted while we were not watching disappear and nothing is emptied meanwhile.
//!
//! Every Service and EndpointSlice is converted to its compact form
//! ([`crate::model::objects`]) as it arrives, re-list buffer included: the API objects are
//! never held beyond their event.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::pin::pin;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::{ObjectKey, Objects, Source, SourceError, SourceOptions};
use crate::config::ApiSettings;
use crate::model::objects::Meta;
use crate::model::{
    Interner, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, ServiceObject, SliceObject,
};

/// Builds a client as kube-proxy does (client-go's `BuildConfigFromFlags`): the kubeconfig
/// file if given, with `--master` overriding its server; `--master` alone (no credentials);
/// neither: the in-cluster service account, falling back to kube's usual inference
/// (`KUBECONFIG`, `~/.kube/config`) so a developer can run it outside a cluster.
///
/// kube-rs has no client-side rate limiter, so `qps`/`burst` are not applied. That costs
/// little here: after the initial lists, three long-lived watches are the only requests.
/// `configSyncPeriod` (client-go informer resync) has no equivalent either; the sync
/// engine's own periodic full sync covers what it was for.
pub async fn client(settings: &ApiSettings) -> Result<Client, SourceError> {
    let master = settings
        .master
        .as_deref()
        .filter(|m| !m.is_empty())
        .map(|m| {
            m.parse::<http::Uri>()
                .map_err(|source| SourceError::MasterUrl {
                    url: m.to_owned(),
                    source,
                })
        })
        .transpose()?;
    let mut config = match (&settings.kubeconfig, master.clone()) {
        (Some(path), _) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                SourceError::Kubeconfig {
                    path: path.clone(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|source| SourceError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        (None, Some(url)) => kube::Config::new(url),
        (None, None) => match kube::Config::incluster() {
            Ok(config) => config,
            Err(incluster) => kube::Config::infer()
                .await
                .map_err(|infer| SourceError::NoConfig { incluster, infer })?,
        },
    };
    if let Some(url) = master {
        config.cluster_url = url;
    }
    tracing::debug!(
        server = %config.cluster_url,
        qps = settings.qps,
        burst = settings.burst,
        "API client (qps/burst are not enforced by kube-rs)"
    );
    Client::try_from(config).map_err(SourceError::Client)
}

/// kube-proxy's Service selector; with a proxy name, only that proxy's Services.
pub fn service_selector(service_proxy_name: Option<&str>) -> String {
    match service_proxy_name {
        None => format!("!{LABEL_SERVICE_PROXY_NAME}"),
        Some(name) => format!("{LABEL_SERVICE_PROXY_NAME}={name}"),
    }
}

/// kube-proxy's EndpointSlice selector: also no slices of headless Services.
pub fn endpoint_slice_selector(service_proxy_name: Option<&str>) -> String {
    format!("!{LABEL_HEADLESS},{}", service_selector(service_proxy_name))
}

/// Starts the three watches. Readiness ([`Objects::ready`]) comes with the first complete
/// Service and EndpointSlice lists; the Node is not waited for (it only refines topology).
pub fn start(client: Client, options: &SourceOptions) -> Source {
    let objects = Objects::new();
    let proxy_name = options.service_proxy_name.as_deref();

    let services = tokio::spawn(watch(
        Api::<Service>::all(client.clone()),
        watcher::Config::default().labels(&service_selector(proxy_name)),
        objects.clone(),
        Handlers {
            convert: ServiceObject::from_api,
            key: |s: &ServiceObject| ObjectKey::of(&s.metadata),
            apply: Objects::apply_service,
            delete: Objects::delete_service,
            replace: Objects::replace_services,
            listed: Objects::mark_services_listed,
        },
    ));
    // Node names and zones are shared across the slices this watch converts.
    let mut interner = Interner::default();
    let slices = tokio::spawn(watch(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&endpoint_slice_selector(proxy_name)),
        objects.clone(),
        Handlers {
            convert: move |s| SliceObject::from_api(s, &mut interner),
            key: |s: &SliceObject| ObjectKey::of(&s.metadata),
            apply: Objects::apply_slice,
            delete: Objects::delete_slice,
            replace: Objects::replace_slices,
            listed: Objects::mark_slices_listed,
        },
    ));
    let node = tokio::spawn(watch(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={}", options.node_name)),
        objects.clone(),
        Handlers {
            convert: |node: Node| node,
            key: |n: &Node| {
                let name = n.metadata.name.clone()?;
                Some(ObjectKey {
                    namespace: String::new(),
                    name,
                })
            },
            apply: |o, node| o.set_node(Some(node)),
            delete: |o, _| o.set_node(None),
            replace: |o, nodes| o.set_node(nodes.into_values().next()),
            listed: |_| {},
        },
    ));
    Source::new(objects, vec![services, slices, node])
}

/// What a watch of one kind does with its events: `convert` turns the API object into the
/// stored form `T`, `key` names a stored object.
struct Handlers<T, C> {
    convert: C,
    key: fn(&T) -> Option<ObjectKey>,
    apply: fn(&Objects, T),
    delete: fn(&Objects, &ObjectKey),
    replace: fn(&Objects, BTreeMap<ObjectKey, T>),
    listed: fn(&Objects),
}

async fn watch<K, T, C>(
    api: Api<K>,
    config: watcher::Config,
    objects: Objects,
    mut handlers: Handlers<T, C>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    C: FnMut(K) -> T,
{
    let kind = K::kind(&());
    let mut events = pin!(watcher::watcher(api, config).default_backoff());
    // `Some` between `Init` and `InitDone`: the re-list being collected.
    let mut relist: Option<Vec<(ObjectKey, T)>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => relist = Some(Vec::new()),
            Ok(Event::InitApply(obj)) => {
                if let Some(buffer) = relist.as_mut() {
                    let obj = (handlers.convert)(obj);
                    if let Some(key) = (handlers.key)(&obj) {
                        buffer.push((key, obj));
                    }
                }
            }
            Ok(Event::InitDone) => {
                // Without a preceding `Init` there is no complete list to swap in; an empty
                // map here would wipe the store.
                if let Some(listed) = relist.take() {
                    let listed = listed_map(listed);
                    tracing::info!(kind = %kind, count = listed.len(), "listed");
                    (handlers.replace)(&objects, listed);
                    (handlers.listed)(&objects);
                }
            }
            Ok(Event::Apply(obj)) => {
                tracing::trace!(kind = %kind, name = ?obj.meta().name, "applied");
                (handlers.apply)(&objects, (handlers.convert)(obj));
            }
            Ok(Event::Delete(obj)) => {
                tracing::trace!(kind = %kind, name = ?obj.meta().name, "deleted");
                let meta = obj.meta();
                let key = ObjectKey::of(&Meta {
                    namespace: meta.namespace.clone(),
                    name: meta.name.clone(),
                    ..Meta::default()
                });
                if let Some(key) = key {
                    (handlers.delete)(&objects, &key);
                }
            }
            Err(error) => {
                tracing::warn!(
                    kind = %kind,
                    %error,
                    "watch failed; keeping the last known objects, retrying with backoff"
                );
            }
        }
    }
    // `watcher` streams never end; if one does, the store just stops moving.
    tracing::error!(kind = %kind, "watch stream ended");
}

/// A re-list's objects as the store's map; of two with one key, the later one. Sorted before
/// collecting, so the map is bulk-built with full nodes: inserted one by one in key order
/// (as the API server lists), its nodes stay half empty, and the large values are inline
/// (~6 MB of room at 10,000 Services and their slices, heaptrack in the lab).
fn listed_map<T>(mut listed: Vec<(ObjectKey, T)>) -> BTreeMap<ObjectKey, T> {
    // Stable sort of the reversed list: the first of equal keys is the one listed last.
    listed.reverse();
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    listed.dedup_by(|later, first| later.0 == first.0);
    listed.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: "default".to_owned(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn a_relist_keeps_the_later_of_two_objects_with_one_key() {
        let listed = vec![
            (key("b"), 1),
            (key("a"), 2),
            (key("b"), 3),
            (key("c"), 4),
            (key("b"), 5),
        ];
        let want = BTreeMap::from([(key("a"), 2), (key("b"), 5), (key("c"), 4)]);
        assert_eq!(listed_map(listed), want);
    }
}
