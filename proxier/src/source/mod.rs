//! Where the Kubernetes objects come from: the API server (list/watch) or manifest files.
//!
//! Owns the [`Objects`] store: the latest [`Snapshot`] of the Services, EndpointSlices and
//! own Node this proxier acts on, the set of [`Changes`] since the consumer last looked, a
//! generation counter to wake the consumer, and the "ready" signal (kube-proxy's
//! `OnServiceSynced` + `OnEndpointSlicesSynced`: both initial lists are in). The two
//! sources ([`api`], [`manifests`]) only write to it; the sync engine only reads.
//!
//! How the daemon uses it:
//! 1. `let source = source::start(&settings.source, &options).await?;`
//! 2. `source.objects().ready().await` before the first sync (upstream never syncs with
//!    half the objects: that would delete every IPVS service of the missing half).
//! 3. `let mut wake = source.objects().subscribe();` then loop: `objects.take()` (snapshot
//!    plus what changed since the previous `take`), sync, `wake.changed().await`.
//!
//! No source ever clears the snapshot on an error: an API outage or an unreadable file
//! leaves the last known objects in place (kube-proxy's informers behave the same way).

pub mod api;
pub mod manifests;
mod store;

use std::path::PathBuf;

use tokio::task::JoinHandle;

pub use crate::model::objects::{LAST_CHANGE_TRIGGER_TIME, parse_trigger_time};
pub use store::{
    Changes, ObjectKey, Objects, Pending, Snapshot, TriggerTime, Update, slice_trigger_time,
};

use crate::config;

/// What both sources need to know about this proxier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOptions {
    /// Our Node's name: the only Node watched (API) or kept (manifests).
    pub node_name: String,
    /// `Some(name)`: watch only Services labelled `service.kubernetes.io/service-proxy-name=name`
    /// (and their slices). `None`, kube-proxy's behaviour: only Services without that label.
    pub service_proxy_name: Option<String>,
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no API server configuration: not in a cluster ({incluster}) and {infer}")]
    NoConfig {
        incluster: kube::config::InClusterError,
        infer: kube::config::InferConfigError,
    },
    #[error("invalid --master URL {url:?}: {source}")]
    MasterUrl {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("cannot create the API client: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot read manifests {path}: {source}")]
    Manifests {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running source: the store it fills and the tasks filling it. Dropping it stops them.
#[derive(Debug)]
pub struct Source {
    objects: Objects,
    tasks: Vec<JoinHandle<()>>,
}

impl Source {
    pub(crate) fn new(objects: Objects, tasks: Vec<JoinHandle<()>>) -> Self {
        Self { objects, tasks }
    }

    /// The store this source keeps up to date (cheap to clone).
    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// Stops the background tasks; the store keeps its last contents.
    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the source `settings` names: a watch on the API server, or a poll of manifest
/// files. Must be called inside a tokio runtime.
pub async fn start(
    settings: &config::Source,
    options: &SourceOptions,
) -> Result<Source, SourceError> {
    match settings {
        config::Source::ApiServer(api_settings) => {
            let client = api::client(api_settings).await?;
            Ok(api::start(client, options))
        }
        config::Source::Manifests(path) => {
            manifests::start(path.clone(), options, manifests::DEFAULT_POLL_INTERVAL)
        }
    }
}
