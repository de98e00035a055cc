//! Health-check node port servers: one HTTP listener per Service with
//! `externalTrafficPolicy: Local` and a `healthCheckNodePort`, on each node-port address of
//! one IP family (or the family's wildcard address when node-port addresses are unset), so a
//! cloud load balancer only sends traffic to nodes that have local endpoints.
//!
//! Every request, whatever its method or path, gets kube-proxy's answer: 200 when the Service
//! has local endpoints and the proxy is healthy, else 503, a JSON body naming the Service, and
//! `X-Load-Balancing-Endpoint-Weight: <local endpoints>` for weighted load balancers.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::Method;
use netlink::AddressFamily;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::health::ProxyHealth;
use super::http::{self, JSON, Reply, Responder};
use crate::model::ServiceName;
use crate::plan::FamilyPlan;

/// How long closing waits for a listener to be released before moving on; the accept loop
/// stops as soon as it is polled, so this only matters on a starved runtime.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A health-check port that could not be opened this sync; it is retried on the next one.
#[derive(Debug)]
pub struct HcOpenError {
    pub service: ServiceName,
    pub port: u16,
    pub addr: SocketAddr,
    pub source: io::Error,
}

struct Instance {
    port: u16,
    endpoints: Arc<AtomicUsize>,
    cancel: CancellationToken,
    local_addrs: Vec<SocketAddr>,
    /// Fires when a listener socket has been closed (its port is free again).
    closed: Vec<oneshot::Receiver<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Instance {
    /// Stops accepting and waits until every listener of this instance is closed, so the
    /// port can be reopened (by another Service) in the same sync.
    async fn close(self) -> Vec<JoinHandle<()>> {
        self.cancel.cancel();
        for rx in self.closed {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, rx).await;
        }
        self.tasks
    }
}

struct HcResponder {
    service: ServiceName,
    endpoints: Arc<AtomicUsize>,
    health: Arc<ProxyHealth>,
}

impl Responder for HcResponder {
    fn respond(&self, _method: &Method, _path: &str) -> Reply {
        let n = self.endpoints.load(Ordering::Relaxed);
        let healthy = self.health.is_healthy();
        let status = if n > 0 && healthy { 200 } else { 503 };
        let mut reply = Reply::new(status, JSON, hc_body(&self.service, n, healthy));
        reply
            .headers
            .push(("x-load-balancing-endpoint-weight", n.to_string()));
        reply
    }
}

/// The reply body, laid out as kube-proxy lays it out (tab-indented, no trailing newline).
pub fn hc_body(service: &ServiceName, local_endpoints: usize, healthy: bool) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
        q(&service.namespace),
        q(&service.name),
    )
}

/// The health-check node port servers of one IP family.
pub struct HealthCheckServers {
    family: AddressFamily,
    addresses: Vec<IpAddr>,
    health: Arc<ProxyHealth>,
    cancel: CancellationToken,
    services: BTreeMap<ServiceName, Instance>,
    /// Tasks of closed instances still draining connections, awaited by `shutdown`.
    draining: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for HealthCheckServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthCheckServers")
            .field("family", &self.family)
            .field("addresses", &self.addresses)
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl HealthCheckServers {
    /// Servers for `family` listening on `addresses` (those of other families are ignored);
    /// when none are left, on the family's wildcard address. Every listener stops when
    /// `cancel` fires.
    pub fn new(
        family: AddressFamily,
        addresses: &[IpAddr],
        health: Arc<ProxyHealth>,
        cancel: CancellationToken,
    ) -> Self {
        let mut addresses: Vec<IpAddr> = addresses
            .iter()
            .filter(|a| AddressFamily::of(a) == family)
            .copied()
            .collect();
        addresses.sort();
        addresses.dedup();
        Self {
            family,
            addresses,
            health,
            cancel,
            services: BTreeMap::new(),
            draining: Vec::new(),
        }
    }

    fn bind_addresses(&self, port: u16) -> Vec<(SocketAddr, Option<bool>)> {
        if self.addresses.is_empty() {
            // The v6 wildcard is v6-only so the IPv4 family's 0.0.0.0 listener on the same
            // port can coexist in dual-stack.
            return vec![match self.family {
                AddressFamily::Inet => (SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port), None),
                AddressFamily::Inet6 => (
                    SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
                    Some(true),
                ),
            }];
        }
        self.addresses
            .iter()
            .map(|ip| (SocketAddr::new(*ip, port), None))
            .collect()
    }

    /// Makes the open listeners match `desired` (Service -> health-check node port): closes
    /// those no longer wanted or whose port changed, keeps the rest untouched, opens the new
    /// ones. A port that cannot be bound is logged with its Service and reported; the
    /// Service is left closed and retried on the next call, the others are unaffected.
    /// Must run on a Tokio runtime.
    pub async fn sync_services(
        &mut self,
        desired: &BTreeMap<ServiceName, u16>,
    ) -> Vec<HcOpenError> {
        let stale: Vec<ServiceName> = self
            .services
            .iter()
            .filter(|(name, inst)| desired.get(*name) != Some(&inst.port))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(inst) = self.services.remove(&name) {
                info!(service = %name, port = inst.port, "closing health check node port");
                let tasks = inst.close().await;
                self.draining.extend(tasks);
            }
        }
        self.draining.retain(|t| !t.is_finished());

        let mut errors = Vec::new();
        for (name, &port) in desired {
            if self.services.contains_key(name) {
                continue;
            }
            match self.open(name, port) {
                Ok(inst) => {
                    info!(service = %name, port, addresses = ?inst.local_addrs, "opened health check node port");
                    self.services.insert(name.clone(), inst);
                }
                Err(e) => {
                    warn!(service = %name, port, address = %e.addr, error = %e.source,
                        "failed to open health check node port, retrying next sync");
                    errors.push(e);
                }
            }
        }
        errors
    }

    fn open(&self, service: &ServiceName, port: u16) -> Result<Instance, HcOpenError> {
        let mut listeners = Vec::new();
        for (addr, only_v6) in self.bind_addresses(port) {
            let bound = http::bind(addr, only_v6).and_then(|l| Ok((l.local_addr()?, l)));
            match bound {
                Ok(l) => listeners.push(l),
                // Listeners bound so far drop here, releasing their ports.
                Err(source) => {
                    return Err(HcOpenError {
                        service: service.clone(),
                        port,
                        addr,
                        source,
                    });
                }
            }
        }
        let endpoints = Arc::new(AtomicUsize::new(0));
        let cancel = self.cancel.child_token();
        let responder: Arc<dyn Responder> = Arc::new(HcResponder {
            service: service.clone(),
            endpoints: endpoints.clone(),
            health: self.health.clone(),
        });
        let mut inst = Instance {
            port,
            endpoints,
            cancel: cancel.clone(),
            local_addrs: Vec::new(),
            closed: Vec::new(),
            tasks: Vec::new(),
        };
        for (local, listener) in listeners {
            let (tx, rx) = oneshot::channel();
            let (responder, cancel) = (responder.clone(), cancel.clone());
            inst.tasks.push(tokio::spawn(async move {
                let conns =
                    http::accept_until_cancelled(listener, responder, cancel, "health-check").await;
                let _ = tx.send(());
                http::drain(conns).await;
                debug!(address = %local, "health check listener stopped");
            }));
            inst.local_addrs.push(local);
            inst.closed.push(rx);
        }
        Ok(inst)
    }

    /// Sets each open Service's local endpoint count; Services missing from `counts` get 0.
    /// Listeners are not touched.
    pub fn sync_endpoints(&self, counts: &BTreeMap<ServiceName, usize>) {
        for (name, inst) in &self.services {
            let n = counts.get(name).copied().unwrap_or(0);
            inst.endpoints.store(n, Ordering::Relaxed);
        }
    }

    /// Both syncs from one family's plan: call after each successful sync of that family.
    pub async fn sync_plan(&mut self, plan: &FamilyPlan) -> Vec<HcOpenError> {
        let ports = plan
            .health_checks
            .iter()
            .map(|(s, hc)| (s.clone(), hc.node_port))
            .collect();
        let counts = plan
            .health_checks
            .iter()
            .map(|(s, hc)| (s.clone(), hc.local_endpoints))
            .collect();
        let errors = self.sync_services(&ports).await;
        self.sync_endpoints(&counts);
        errors
    }

    /// The addresses a Service's health check listens on (the real ports when bound to 0).
    pub fn local_addrs(&self, service: &ServiceName) -> Option<&[SocketAddr]> {
        self.services.get(service).map(|i| i.local_addrs.as_slice())
    }

    /// The Services whose health check is open, with their ports.
    pub fn open_services(&self) -> impl Iterator<Item = (&ServiceName, u16)> {
        self.services.iter().map(|(s, i)| (s, i.port))
    }

    /// Closes every listener and waits for in-flight requests (bounded).
    pub async fn shutdown(&mut self) {
        let all = std::mem::take(&mut self.services);
        for (_, inst) in all {
            let tasks = inst.close().await;
            self.draining.extend(tasks);
        }
        for t in self.draining.drain(..) {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_matches_upstream_layout() {
        let svc = ServiceName {
            namespace: "ns".into(),
            name: "web".into(),
        };
        assert_eq!(
            hc_body(&svc, 2, true),
            "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&hc_body(&svc, 0, false)).unwrap_or_default();
        assert_eq!(v["localEndpoints"], 0);
        assert_eq!(v["serviceProxyHealthy"], false);
        assert_eq!(v["service"]["name"], "web");
    }
}
