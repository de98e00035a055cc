//! Health, metrics and health-check node ports: what the daemon serves over HTTP.
//!
//! - [`ProxyHealth`]: pure proxy health state (queued/updated per family, node eligibility)
//!   behind `/healthz` and `/livez` on `--healthz-bind-address`.
//! - [`Metrics`]: kube-proxy's IPVS-mode metrics plus ours, rendered for `/metrics` on
//!   `--metrics-bind-address`, which also answers `/proxyMode` and `/healthz`.
//! - [`Server`]: those two HTTP servers.
//! - [`HealthCheckServers`]: one listener per Service `healthCheckNodePort`.
//!
//! Everything stops on a [`CancellationToken`].
//!
//! Daemon wiring, per family `f`:
//! - on every Service/EndpointSlice change that queues a sync: `health.queued_update(f)` and
//!   `metrics.record_queued(f)`;
//! - at startup, before the first sync (upstream's startup grace): `health.updated(f)`;
//! - after each sync: `metrics.record_sync(f, took, ok)`, and when it succeeded
//!   `health.updated(f)`, then `hc[f].sync_plan(&family_plan).await`;
//! - on Node add/update: `health.sync_node(&node)`.

pub mod clock;
pub mod hc;
pub mod health;
pub mod http;
pub mod metrics;
pub mod servers;

use std::io;
use std::net::SocketAddr;

pub use clock::{Clock, FakeClock, SystemClock};
pub use hc::{HcOpenError, HealthCheckServers};
pub use health::{HealthReply, HealthSnapshot, ProxyHealth, node_eligible};
pub use metrics::{KernelObject, Metrics, OpResult, TrafficPolicy};
pub use servers::{PROXY_MODE, Server};
pub use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen for {server} on {addr}: {source}")]
    Bind {
        server: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}
